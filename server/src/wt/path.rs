//! The slow-subscriber rule's view of a subscriber's path (PROTOCOL.md
//! §6.5): QUIC's counters sampled now and then, whether the path between
//! two samples looks congested, and what it carries (the budget the room
//! shares among the subscriber's tracks, §6.6.3).
//!
//! Sans-IO: no sockets, no clock; the caller says what time it is.

use std::time::{Duration, Instant};

use super::session::Session;

/// QUIC's counters for the path to a subscriber at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct PathSample {
    /// When the counters were read.
    at: std::time::Instant,
    /// Packets sent so far.
    sent_packets: u64,
    /// Packets declared lost so far.
    lost_packets: u64,
    /// UDP payload bytes sent so far.
    sent_bytes: u64,
    /// The smoothed round-trip time.
    rtt: Duration,
    /// The congestion window, in bytes.
    cwnd: u64,
}

/// Whether the path between two samples looks congested (PROTOCOL.md §6.5):
/// it lost [`CONGESTED_LOSS`] of its packets, its round trip reached
/// [`CONGESTED_RTT`], or what we sent used [`WINDOW_FULL`] of what the
/// congestion window lets through in a round trip (the window, not the
/// media, sets the pace: the next burst waits).
fn path_congested(before: &PathSample, now: &PathSample) -> bool {
    let sent = now.sent_packets.saturating_sub(before.sent_packets);
    let lost = now.lost_packets.saturating_sub(before.lost_packets);
    let lossy = convene_protocol::rate::loss_share(sent, lost).is_some_and(|l| l >= CONGESTED_LOSS);
    let elapsed = now.at.saturating_duration_since(before.at).as_secs_f64();
    let window_bound = elapsed > 0.0 && {
        let rate = now.sent_bytes.saturating_sub(before.sent_bytes) as f64 / elapsed;
        // Round trips below a millisecond (loopback) say nothing about the window.
        let allowed = now.cwnd as f64 / now.rtt.as_secs_f64().max(0.001);
        rate >= WINDOW_FULL * allowed
    };
    lossy || now.rtt >= CONGESTED_RTT || window_bound
}

/// How often the path statistics are looked at.
const PATH_SAMPLE: std::time::Duration = crate::estimate::SAMPLE_EVERY;
/// Share of packets lost over a sample beyond which the path counts as
/// congested: where a publisher's own controller stops raising its rate.
const CONGESTED_LOSS: f64 = convene_protocol::rate::LOSS_CLEAN;
/// Round-trip time beyond which the path counts as congested (the same a
/// publisher's controller lowers its rate at).
const CONGESTED_RTT: std::time::Duration = convene_protocol::rate::RTT_HIGH;
/// Share of the congestion window's rate (window / round trip) in use
/// beyond which the path counts as congested.
const WINDOW_FULL: f64 = 0.8;

/// QUIC's view of the path, sampled for the slow-subscriber rule and the
/// subscriber's budget; returns the new estimate, kbit/s, when it made one.
pub(super) fn sample_path(
    q: &quinn_proto::Connection,
    s: &mut Session,
    now: Instant,
) -> Option<u32> {
    let outbox = s.outbox.as_ref()?;
    if s.sampled
        .is_some_and(|p| now.duration_since(p.at) < PATH_SAMPLE)
    {
        return None;
    }
    let stats = q.stats();
    let sample = PathSample {
        at: now,
        sent_packets: stats.path.sent_packets,
        lost_packets: stats.path.lost_packets,
        sent_bytes: stats.udp_tx.bytes,
        rtt: stats.path.rtt,
        cwnd: stats.path.cwnd,
    };
    let mut estimate = None;
    if let Some(before) = &s.sampled {
        outbox.set_congested(path_congested(before, &sample));
        // The first samples' round trip is quinn's guess until it measures one.
        if !sample.rtt.is_zero() && before.sent_packets > 0 {
            s.min_rtt = Some(s.min_rtt.map_or(sample.rtt, |m| m.min(sample.rtt)));
        }
        let raw = path_kbps(before, &sample, s.min_rtt.unwrap_or_default());
        let kbps = s.estimate.update(raw);
        outbox.set_path_kbps(kbps);
        tracing::trace!(
            raw_kbps = raw,
            kbps,
            cwnd = sample.cwnd,
            rtt_us = sample.rtt.as_micros() as u64,
            lost = sample.lost_packets.saturating_sub(before.lost_packets),
            "QUIC path estimate"
        );
        estimate = Some(kbps);
    }
    s.sampled = Some(sample);
    estimate
}

/// What the path carries between two samples, kbit/s, given the lowest
/// round trip seen ([`crate::estimate::quic_kbps`]).
fn path_kbps(before: &PathSample, now: &PathSample, min_rtt: Duration) -> u32 {
    let sent = now.sent_packets.saturating_sub(before.sent_packets);
    let lost = now.lost_packets.saturating_sub(before.lost_packets);
    crate::estimate::quic_kbps(
        &crate::estimate::QuicInterval {
            elapsed: now.at.saturating_duration_since(before.at),
            sent_bytes: now.sent_bytes.saturating_sub(before.sent_bytes),
            loss: convene_protocol::rate::loss_share(sent, lost),
            cwnd: now.cwnd,
            rtt: now.rtt,
            min_rtt,
        },
        CONGESTED_LOSS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample `ms` after `base` with these counters.
    fn sample(
        base: std::time::Instant,
        ms: u64,
        (sent_packets, lost_packets, sent_bytes): (u64, u64, u64),
        rtt_ms: u64,
        cwnd: u64,
    ) -> PathSample {
        PathSample {
            at: base + Duration::from_millis(ms),
            sent_packets,
            lost_packets,
            sent_bytes,
            rtt: Duration::from_millis(rtt_ms),
            cwnd,
        }
    }

    #[test]
    fn a_clean_fast_path_is_not_congested() {
        let t = std::time::Instant::now();
        let a = sample(t, 0, (0, 0, 0), 20, 100_000);
        // 40 kB in 500 ms = 80 kB/s, against 100 kB per 20 ms = 5 MB/s allowed.
        let b = sample(t, 500, (60, 0, 40_000), 20, 100_000);
        assert!(!path_congested(&a, &b));
    }

    #[test]
    fn losses_a_long_round_trip_or_a_full_window_are_congestion() {
        let t = std::time::Instant::now();
        let a = sample(t, 0, (0, 0, 0), 20, 100_000);
        // 2 of 60 packets lost: 3.3 %.
        assert!(path_congested(
            &a,
            &sample(t, 500, (60, 2, 40_000), 20, 100_000)
        ));
        // Few packets: one loss says little.
        assert!(!path_congested(
            &a,
            &sample(t, 500, (10, 1, 8_000), 20, 100_000)
        ));
        assert!(path_congested(
            &a,
            &sample(t, 500, (60, 0, 40_000), 450, 100_000)
        ));
        // A 12 kB window over 100 ms allows 120 kB/s; 100 kB/s is 83 % of it.
        assert!(path_congested(
            &a,
            &sample(t, 500, (60, 0, 50_000), 100, 12_000)
        ));
        // The same window with half the traffic is fine.
        assert!(!path_congested(
            &a,
            &sample(t, 500, (60, 0, 25_000), 100, 12_000)
        ));
    }

    const MS20: Duration = Duration::from_millis(20);

    #[test]
    fn the_estimate_is_the_window_unless_the_path_loses() {
        let t = std::time::Instant::now();
        let a = sample(t, 0, (0, 0, 0), 20, 100_000);
        // 100 kB per 20 ms; 640 kbit/s sent.
        assert_eq!(
            path_kbps(&a, &sample(t, 500, (60, 0, 40_000), 20, 100_000), MS20),
            40_000
        );
        // 6 of 60 lost while sending little: the window, less a tenth.
        assert_eq!(
            path_kbps(&a, &sample(t, 500, (60, 6, 40_000), 20, 100_000), MS20),
            36_000
        );
        // The same losses with the window full (12 kB per 100 ms allows 960
        // kbit/s, 800 sent): what got through, less a tenth.
        assert_eq!(
            path_kbps(&a, &sample(t, 500, (60, 6, 50_000), 100, 12_000), MS20),
            648
        );
    }

    #[test]
    fn loopback_round_trips_do_not_make_the_window_look_full() {
        let t = std::time::Instant::now();
        let a = sample(t, 0, (0, 0, 0), 0, 12_000);
        // 50 µs round trips would allow 240 MB/s; counted as 1 ms: 12 MB/s.
        let b = sample(t, 500, (600, 0, 400_000), 0, 12_000);
        assert!(!path_congested(&a, &b));
    }
}
