//! Capacity governance: how loaded this node is, and whether it still takes
//! new joins. Existing participants are never dropped for load; newcomers get
//! `SERVER_BUSY` (PROTOCOL.md §7) and try another node.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Thresholds past which the node refuses new joins; 0 turns one off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Thresholds {
    /// Process CPU, in percent of the cores the server runs on.
    pub cpu_percent: u32,
    /// Longest a frame waited in a subscriber's queue over the last sample, in ms.
    pub queue_delay_ms: u32,
    /// Bytes written to clients, in Mbit/s.
    pub egress_mbps: u32,
}

/// One measurement of the node's load.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Process CPU in percent of the cores the server runs on.
    pub cpu_percent: f64,
    /// Longest queue wait seen, in ms.
    pub queue_delay_ms: f64,
    /// Egress to clients, in Mbit/s.
    pub egress_mbps: f64,
}

/// The node's load as last sampled, and whether it is busy.
#[derive(Debug, Default)]
pub struct Load {
    thresholds: Thresholds,
    /// Longest queue wait since the last sample, in µs (writers raise it).
    delay_us: AtomicU64,
    last: Mutex<(Sample, Option<String>)>,
}

impl Load {
    /// Load tracking with these thresholds.
    pub fn new(thresholds: Thresholds) -> Self {
        Load {
            thresholds,
            ..Load::default()
        }
    }

    /// The thresholds in force.
    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// A writer saw a frame wait this long in a subscriber's queue.
    pub fn note_queue_delay(&self, waited: Duration) {
        self.delay_us
            .fetch_max(waited.as_micros() as u64, Ordering::Relaxed);
    }

    /// Takes the longest queue wait since the last call, in ms.
    pub fn take_queue_delay_ms(&self) -> f64 {
        self.delay_us.swap(0, Ordering::Relaxed) as f64 / 1000.0
    }

    /// Records a sample and decides whether the node is busy.
    pub fn record(&self, sample: Sample) {
        let t = self.thresholds;
        let over = |limit: u32, value: f64| limit > 0 && value > f64::from(limit);
        let reason = if over(t.cpu_percent, sample.cpu_percent) {
            Some(format!(
                "CPU at {:.0}% (limit {}%)",
                sample.cpu_percent, t.cpu_percent
            ))
        } else if over(t.queue_delay_ms, sample.queue_delay_ms) {
            Some(format!(
                "frames waiting {:.0} ms in queues (limit {} ms)",
                sample.queue_delay_ms, t.queue_delay_ms
            ))
        } else if over(t.egress_mbps, sample.egress_mbps) {
            Some(format!(
                "sending {:.1} Mbit/s (limit {} Mbit/s)",
                sample.egress_mbps, t.egress_mbps
            ))
        } else {
            None
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = (sample, reason);
    }

    /// Why the node refuses new joins, if it does.
    pub fn busy(&self) -> Option<String> {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// The last sample.
    pub fn sample(&self) -> Sample {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

/// This process's CPU time so far (user + system), from `/proc/self/stat`;
/// `None` where there is no procfs.
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // Linux reports clock ticks of 1/100 s on every common configuration.
    Some(Duration::from_millis(ticks * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_threshold_makes_the_node_busy_and_zero_turns_it_off() {
        let l = Load::new(Thresholds {
            cpu_percent: 80,
            queue_delay_ms: 0,
            egress_mbps: 100,
        });
        l.record(Sample {
            cpu_percent: 50.0,
            queue_delay_ms: 900.0,
            egress_mbps: 10.0,
        });
        assert_eq!(l.busy(), None, "the delay threshold is off");
        l.record(Sample {
            cpu_percent: 85.0,
            ..Sample::default()
        });
        assert!(l.busy().unwrap().contains("CPU at 85%"));
        l.record(Sample {
            egress_mbps: 150.0,
            ..Sample::default()
        });
        assert!(l.busy().unwrap().contains("150.0 Mbit/s"));
        l.record(Sample::default());
        assert_eq!(l.busy(), None, "busy ends when the load drops");
    }

    #[test]
    fn the_longest_queue_wait_is_kept_until_taken() {
        let l = Load::default();
        l.note_queue_delay(Duration::from_millis(3));
        l.note_queue_delay(Duration::from_millis(12));
        l.note_queue_delay(Duration::from_millis(5));
        assert_eq!(l.take_queue_delay_ms(), 12.0);
        assert_eq!(l.take_queue_delay_ms(), 0.0);
    }

    #[test]
    fn this_process_has_a_cpu_time_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu().is_some());
        }
    }
}
