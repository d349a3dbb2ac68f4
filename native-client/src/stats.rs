//! Small statistics helpers: percentiles over samples, and per-stream loss
//! from sequence numbers.

use std::collections::HashMap;

/// The `p`-th percentile (0–100) of `sorted`, nearest rank; `None` when empty.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Sequence numbers seen per (sender, track), to count duplicates and gaps.
#[derive(Debug, Default)]
pub(crate) struct SequenceTracker {
    streams: HashMap<(u32, u32), Stream>,
}

#[derive(Debug)]
struct Stream {
    first: u32,
    highest: u32,
    received: u64,
}

impl SequenceTracker {
    /// Records one frame; returns false for a frame at or below the first seen (late or duplicate).
    pub(crate) fn record(&mut self, sender: u32, track: u32, seq: u32) -> bool {
        match self.streams.get_mut(&(sender, track)) {
            None => {
                self.streams.insert(
                    (sender, track),
                    Stream {
                        first: seq,
                        highest: seq,
                        received: 1,
                    },
                );
                true
            }
            Some(s) => {
                if seq.wrapping_sub(s.first) > u32::MAX / 2 {
                    return false;
                }
                if seq.wrapping_sub(s.highest) < u32::MAX / 2 {
                    s.highest = seq;
                }
                s.received += 1;
                true
            }
        }
    }

    /// Frames missing between the first and the highest sequence of each stream.
    pub(crate) fn gaps(&self) -> u64 {
        self.streams
            .values()
            .map(|s| {
                let span = s.highest.wrapping_sub(s.first) as u64 + 1;
                span.saturating_sub(s.received)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn gaps_count_missing_frames_per_stream() {
        let mut t = SequenceTracker::default();
        for seq in [5, 6, 8, 9] {
            assert!(t.record(1, 2, seq));
        }
        for seq in [0, 1, 2] {
            t.record(7, 2, seq);
        }
        assert_eq!(t.gaps(), 1);
        // Out of order within the span is not a gap.
        t.record(1, 2, 7);
        assert_eq!(t.gaps(), 0);
        // Before the first seen: not counted.
        assert!(!t.record(1, 2, 3));
        // Wrapping sequence numbers.
        let mut w = SequenceTracker::default();
        w.record(1, 1, u32::MAX - 1);
        w.record(1, 1, 1);
        assert_eq!(w.gaps(), 2);
    }
}
