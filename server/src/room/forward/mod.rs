//! Selective forwarding (PROTOCOL.md §6.6), sans-IO: what each subscriber
//! receives of a track with several encodings or temporal layers
//! ([`selector`]), who speaks and whose audio is among the loudest
//! ([`speakers`]), which encodings anyone wants ([`Demand`], "dynacast"),
//! and how much of each track a subscriber's bandwidth allows ([`budget`]).
//!
//! Everything here is decided per frame in O(1) without allocating, or on
//! the room's speaker evaluation (at most every [`speakers::EVALUATE_EVERY`])
//! and budget allocation (at most every [`budget::ALLOCATE_EVERY`] unless
//! something it depends on changed).

pub mod budget;
pub mod selector;
pub mod speakers;

use std::time::Duration;

use convene_protocol::Timestamp;

pub use selector::{Layers, Prefs, Selector, Verdict};

/// An encoding nobody has wanted for this long leaves the demand (§6.6.5):
/// a tile's resize must not switch a publisher's encoder off and on.
pub const DEMAND_OFF_AFTER: Duration = Duration::from_secs(5);

/// Which encodings of one track anyone receives (PROTOCOL.md §6.6.5).
#[derive(Debug, Clone, Copy)]
pub struct Demand {
    /// When each encoding was last wanted.
    wanted_at: [Timestamp; 3],
    /// The mask the publisher was last told; `None` before the first.
    sent: Option<u8>,
    /// Encodings of the track.
    count: u8,
}

impl Demand {
    /// The demand of a track published at `now` with `count` encodings: all
    /// of them count as wanted at first, so that subscribers have time to
    /// arrive before anything is turned off.
    pub fn new(now: Timestamp, count: u8) -> Self {
        Demand {
            wanted_at: [now; 3],
            sent: None,
            count,
        }
    }

    /// Notes the encodings wanted now (bit `i` for encoding `i`) and returns
    /// the mask to send the publisher when it changed: an encoding enters at
    /// once, leaves after [`DEMAND_OFF_AFTER`] without being wanted.
    pub fn update(&mut self, now: Timestamp, wanted: u8) -> Option<u8> {
        self.update_with(now, wanted, 0)
    }

    /// As [`Demand::update`], with `settled` encodings wanted as they are,
    /// without a grace of their own: what other nodes said their subscribers
    /// want, which those nodes' own grace already smoothed.
    pub fn update_with(&mut self, now: Timestamp, wanted: u8, settled: u8) -> Option<u8> {
        let mut mask = settled & ((1 << self.count) - 1);
        for i in 0..self.count as usize {
            if wanted & (1 << i) != 0 {
                self.wanted_at[i] = now;
            }
            if now.saturating_since(self.wanted_at[i]) < DEMAND_OFF_AFTER {
                mask |= 1 << i;
            }
        }
        // Before the first message the publisher sends everything: only a
        // change from that is worth saying.
        let before = self.sent.unwrap_or((1 << self.count) - 1);
        (mask != before).then(|| {
            self.sent = Some(mask);
            mask
        })
    }

    /// The mask in force: what the publisher was last told, or everything.
    pub fn mask(&self) -> u8 {
        self.sent.unwrap_or((1 << self.count) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp(1_000_000 + ms * 1000)
    }

    #[test]
    fn an_encoding_leaves_the_demand_after_five_seconds_and_returns_at_once() {
        let mut d = Demand::new(t(0), 3);
        // Only the lowest wanted: nothing changes until the grace is over.
        assert_eq!(d.update(t(1000), 0b001), None);
        assert_eq!(d.update(t(4999), 0b001), None);
        assert_eq!(d.update(t(5000), 0b001), Some(0b001));
        assert_eq!(d.update(t(6000), 0b001), None, "said once");
        // Someone wants the top one: at once.
        assert_eq!(d.update(t(6100), 0b101), Some(0b101));
        assert_eq!(d.mask(), 0b101);
        // A moment without it is not enough to drop it.
        assert_eq!(d.update(t(7000), 0b001), None);
        assert_eq!(d.update(t(11_099), 0b001), None);
        assert_eq!(d.update(t(11_100), 0b001), Some(0b001));
    }

    #[test]
    fn what_other_nodes_settled_counts_without_a_second_grace() {
        let mut d = Demand::new(t(0), 3);
        // Another node wants everything until it says otherwise.
        assert_eq!(d.update_with(t(4000), 0, 0b111), None);
        // At five seconds it says the smallest: nobody here wants more,
        // and the grace here is over, so that is what the publisher hears.
        assert_eq!(d.update_with(t(5000), 0, 0b001), Some(0b001));
        // Back to the top: at once; and a local want still has its grace.
        assert_eq!(d.update_with(t(6000), 0b010, 0b101), Some(0b111));
        assert_eq!(d.update_with(t(7000), 0, 0b101), None);
        assert_eq!(d.update_with(t(11_000), 0, 0b101), Some(0b101));
    }

    #[test]
    fn nobody_subscribed_turns_everything_off() {
        let mut d = Demand::new(t(0), 2);
        assert_eq!(d.update(t(5000), 0), Some(0));
        assert_eq!(d.update(t(5100), 0b01), Some(0b01));
    }
}
