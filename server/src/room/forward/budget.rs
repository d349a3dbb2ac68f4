//! A subscriber's bandwidth budget (PROTOCOL.md §6.6.3): given what its
//! path is estimated to carry and what it asked for (`max_receive_kbps`,
//! §6.6.4), the highest encoding each of its subscriptions may receive.
//!
//! Sans-IO and run now and then (when the estimate, settings,
//! subscriptions or speakers change, or every [`ALLOCATE_EVERY`]), never per
//! frame: its result is a cap per subscription, which each frame's
//! [`super::Selector`] decision reads as one more bound.
//!
//! The order in which the budget is spent:
//!
//! 1. audio (small, and what a meeting cannot do without);
//! 2. the lowest encoding of every shown video and screen track, in the
//!    order below: no track gets a higher encoding before every shown
//!    track has its lowest;
//! 3. higher encodings, screen shares first, then cameras of the most
//!    recent speakers (the dominant one first), then the rest by
//!    participant id; each track as high as it wants and fits before the
//!    next is looked at.
//!
//! Paused tracks and tracks left out by last-N cost nothing. The lowest
//! encoding is the floor: a budget too small even for those does not take
//! a shown track away (the subscriber's last-N and preferences are the
//! tools for that); what its path cannot carry of them is the queue's to
//! drop (§6.4).
//!
//! Against flapping: keeping an encoding needs its cost to fit, moving
//! above the encoding held before needs [`RAISE_HEADROOM_PERCENT`] more,
//! and no track is raised within a hold after one was lowered:
//! [`RAISE_HOLD`], doubled (up to [`MAX_RAISE_HOLD`]) each time a raise is
//! undone within [`RAISE_FAILED_WITHIN`], since a path whose estimate swings
//! with what is sent on it (a queue that fills and drains) would otherwise
//! move pictures up and down every few seconds.

use std::time::Duration;

use convene_protocol::Timestamp;

/// How often a subscriber's allocation is looked at again when nothing
/// else asked for it: the transport estimates move at about this pace.
pub const ALLOCATE_EVERY: Duration = Duration::from_millis(500);
/// Extra share of a step's cost that must fit for a track to move above
/// the encoding it had: an estimate near a threshold does not flip it.
pub const RAISE_HEADROOM_PERCENT: u32 = 25;
/// No track is raised within this long of one being lowered: an estimate
/// that dips and recovers moves pictures once, not back and forth.
pub const RAISE_HOLD: Duration = Duration::from_secs(3);
/// The longest hold after raises kept failing.
pub const MAX_RAISE_HOLD: Duration = Duration::from_secs(30);
/// A lowering this soon after a raise means the raise failed.
pub const RAISE_FAILED_WITHIN: Duration = Duration::from_secs(5);
/// An audio track that announced no bitrate is counted at this (Opus
/// speech with some room).
pub const DEFAULT_AUDIO_KBPS: u32 = 40;

/// Where a subscription stands in the order its budget is spent; lower
/// first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// An audio track.
    Audio,
    /// A screen share.
    Screen,
    /// A camera of a recent speaker: 0 the most recent (the dominant one).
    Speaker(u32),
    /// Any other camera, by its publisher's participant id.
    Other(u32),
}

/// One subscription of a subscriber, as the allocation sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    /// Its place in the order.
    pub priority: Priority,
    /// Kbit/s of each encoding, lowest first (only the first `count` count).
    pub kbps: [u32; 3],
    /// Encodings of the track.
    pub count: u8,
    /// The highest encoding the subscriber's preferences ask for; `None`
    /// for a track it does not receive now (paused, last-N, muted), which
    /// costs nothing.
    pub wanted: Option<u8>,
    /// The cap it had from the allocation before (2: not bounded).
    pub cap: u8,
}

/// The allocation state of one subscriber.
#[derive(Debug, Clone, Copy, Default)]
pub struct Budget {
    /// When a track of this subscriber was last moved down for the budget.
    lowered_at: Option<Timestamp>,
    /// When a track of this subscriber was last moved up.
    raised_at: Option<Timestamp>,
    /// How long after a lowering nothing is raised; zero until a raise
    /// failed (then [`RAISE_HOLD`] applies).
    hold: Duration,
    /// The last allocation had a budget: caps may be below the top.
    active: bool,
}

impl Budget {
    /// True when the last allocation had a budget, so caps may bound
    /// subscriptions: one more allocation lifts them when it goes.
    pub fn active(&self) -> bool {
        self.active
    }

    /// Forgets the hold: the subscriber changed what it asked for itself
    /// (`max_receive_kbps`), so a higher cap applies at once.
    pub fn reset(&mut self) {
        self.lowered_at = None;
        self.hold = Duration::ZERO;
    }

    /// The cap of each of `items` (same order) within `kbps` at `now`;
    /// without a budget, every encoding.
    pub fn allocate(&mut self, now: Timestamp, kbps: Option<u32>, items: &[Item]) -> Vec<u8> {
        self.active = kbps.is_some();
        let Some(kbps) = kbps else {
            self.lowered_at = None;
            return items.iter().map(|_| 2).collect();
        };
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| items[i].priority);
        let mut left = i64::from(kbps);
        // Audio and every shown track's lowest encoding, whatever is left.
        for &i in &order {
            if items[i].wanted.is_some() {
                left -= i64::from(items[i].kbps[0]);
            }
        }
        let mut caps: Vec<u8> = items.iter().map(|it| it.cap).collect();
        for &i in &order {
            let it = &items[i];
            let Some(wanted) = it.wanted else {
                // Costs nothing now; when it is shown again, the next
                // allocation (which that change asks for) sets its cap.
                continue;
            };
            let wanted = wanted.min(it.count.saturating_sub(1));
            let mut level = 0u8;
            while level < wanted {
                let next = level + 1;
                let step =
                    i64::from(it.kbps[next as usize].saturating_sub(it.kbps[level as usize]));
                let need = if next <= it.cap {
                    step
                } else {
                    step * i64::from(100 + RAISE_HEADROOM_PERCENT) / 100
                };
                if need > left {
                    break;
                }
                left -= step;
                level = next;
            }
            // Everything wanted fits: the budget does not bound the track
            // (2, the highest there is), so a later wish for more from its
            // preferences is not taken for a raise.
            caps[i] = if level == wanted { 2 } else { level };
        }
        let shown = |i: usize| items[i].wanted.is_some();
        let lowered = (0..items.len()).any(|i| shown(i) && caps[i] < items[i].cap);
        let since = |t: Option<Timestamp>| t.map(|t| now.saturating_since(t));
        let hold = self.hold.max(RAISE_HOLD);
        if lowered {
            if since(self.raised_at).is_some_and(|d| d < RAISE_FAILED_WITHIN) {
                self.hold = (hold * 2).min(MAX_RAISE_HOLD);
            }
            self.lowered_at = Some(now);
        } else if since(self.lowered_at).is_some_and(|d| d < hold) {
            // Too soon after a lowering: nothing goes up yet.
            for (c, it) in caps.iter_mut().zip(items) {
                *c = (*c).min(it.cap);
            }
        } else {
            if (0..items.len()).any(|i| shown(i) && caps[i] > items[i].cap) {
                self.raised_at = Some(now);
            }
            // Long enough without trouble: the hold is short again.
            if since(self.lowered_at).is_none_or(|d| d >= MAX_RAISE_HOLD * 2) {
                self.hold = Duration::ZERO;
            }
        }
        caps
    }
}

/// Kbit/s of a picture of `width` × `height` at `fps` when its publisher
/// announced none: about 0.05 bit per pixel, what H.264 and VP8 use for
/// meeting video.
pub fn guess_kbps(width: u32, height: u32, fps: u32) -> u32 {
    let fps = if fps == 0 { 30 } else { fps };
    (u64::from(width) * u64::from(height) * u64::from(fps) / 20_000).min(u32::MAX as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp(1_000_000_000 + ms * 1000)
    }

    /// A camera of three encodings at 100, 300 and 900 kbit/s.
    fn camera(priority: Priority) -> Item {
        Item {
            priority,
            kbps: [100, 300, 900],
            count: 3,
            wanted: Some(2),
            cap: 2,
        }
    }

    fn audio() -> Item {
        Item {
            priority: Priority::Audio,
            kbps: [40, 0, 0],
            count: 1,
            wanted: Some(0),
            cap: 2,
        }
    }

    /// Runs an allocation and carries its caps into the items, as the room does.
    fn run(b: &mut Budget, now: Timestamp, kbps: Option<u32>, items: &mut [Item]) -> Vec<u8> {
        let caps = b.allocate(now, kbps, items);
        for (it, c) in items.iter_mut().zip(&caps) {
            it.cap = *c;
        }
        caps
    }

    #[test]
    fn without_a_budget_nothing_is_capped() {
        let mut b = Budget::default();
        let items = [camera(Priority::Other(3)), audio()];
        assert_eq!(b.allocate(t(0), None, &items), vec![2, 2]);
    }

    #[test]
    fn a_budget_is_spent_on_audio_then_lowest_encodings_then_by_priority() {
        let mut b = Budget::default();
        // 40 audio + 3 × 100 lowest = 340; of the 460 left the screen
        // share takes 200 for its 300 (its top's 600 more does not fit),
        // the speaker 200 for its 300, and nothing is left for the other.
        let mut items = [
            camera(Priority::Other(7)),
            camera(Priority::Speaker(0)),
            audio(),
            camera(Priority::Screen),
        ];
        let caps = run(&mut b, t(0), Some(800), &mut items);
        assert_eq!(
            caps,
            vec![0, 1, 2, 1],
            "screen, then the speaker, then others"
        );
        // More room: the screen share goes to its top before the speaker
        // gets anything above its lowest encoding.
        let mut b = Budget::default();
        let mut items = [
            camera(Priority::Speaker(0)),
            camera(Priority::Screen),
            audio(),
        ];
        assert_eq!(run(&mut b, t(0), Some(1040), &mut items), vec![0, 2, 2]);
    }

    #[test]
    fn every_shown_track_keeps_its_lowest_encoding_even_over_budget() {
        let mut b = Budget::default();
        let mut items = [
            camera(Priority::Other(2)),
            camera(Priority::Other(3)),
            audio(),
        ];
        assert_eq!(run(&mut b, t(0), Some(50), &mut items), vec![0, 0, 2]);
    }

    #[test]
    fn paused_and_left_out_tracks_cost_nothing() {
        let mut b = Budget::default();
        let mut items = [
            Item {
                wanted: None,
                ..camera(Priority::Speaker(0))
            },
            camera(Priority::Other(4)),
        ];
        // 900 for the shown one's top; the paused one's 100 is not counted.
        assert_eq!(run(&mut b, t(0), Some(900), &mut items)[1], 2);
    }

    #[test]
    fn preferences_bound_what_the_budget_gives() {
        let mut b = Budget::default();
        let mut items = [
            Item {
                wanted: Some(0),
                ..camera(Priority::Speaker(0))
            },
            camera(Priority::Other(4)),
        ];
        // The small tile takes only its lowest encoding, the rest goes to
        // the other: neither is bounded by the budget.
        assert_eq!(run(&mut b, t(0), Some(1000), &mut items), vec![2, 2]);
    }

    #[test]
    fn raising_needs_headroom_and_waits_after_a_lowering() {
        let mut b = Budget::default();
        let mut items = [camera(Priority::Other(2))];
        // The path narrows to 500: down to encoding 1.
        assert_eq!(run(&mut b, t(0), Some(500), &mut items), vec![1]);
        // It recovers to 950, enough for 900 but not with headroom
        // (100 + 200 + 600 × 1.25 = 1050): it stays.
        for ms in [500, 4000, 10_000] {
            assert_eq!(run(&mut b, t(ms), Some(950), &mut items), vec![1]);
        }
        // With headroom, but within the hold of the last lowering: later.
        let mut b = Budget::default();
        let mut items = [camera(Priority::Other(2))];
        run(&mut b, t(0), Some(500), &mut items);
        assert_eq!(run(&mut b, t(1000), Some(2000), &mut items), vec![1]);
        assert_eq!(run(&mut b, t(2999), Some(2000), &mut items), vec![1]);
        assert_eq!(run(&mut b, t(3000), Some(2000), &mut items), vec![2]);
    }

    #[test]
    fn an_estimate_wobbling_around_a_threshold_does_not_flap() {
        let mut b = Budget::default();
        let mut items = [camera(Priority::Other(2))];
        // Settles at encoding 1 under 800...
        assert_eq!(run(&mut b, t(0), Some(800), &mut items), vec![1]);
        // ...then the estimate wanders 850–1000 for a minute: 900 would
        // fit now and then, but never with the headroom a raise needs.
        let mut changes = 0;
        let mut last = 1;
        for k in 0..120u64 {
            let kbps = 850 + ((k * 37) % 150) as u32;
            let c = run(&mut b, t(500 + k * 500), Some(kbps), &mut items)[0];
            changes += (c != last) as u32;
            last = c;
        }
        assert_eq!(changes, 0);
        // Holding the top needs only its cost: the same wobble above 900
        // keeps it there once it got there.
        let mut b = Budget::default();
        let mut items = [camera(Priority::Other(2))];
        assert_eq!(run(&mut b, t(0), Some(2000), &mut items), vec![2]);
        for k in 0..120u64 {
            let kbps = 900 + ((k * 37) % 150) as u32;
            assert_eq!(
                run(&mut b, t(500 + k * 500), Some(kbps), &mut items),
                vec![2]
            );
        }
    }

    #[test]
    fn a_lowered_subscriber_goes_back_up_after_the_estimate_recovers() {
        let mut b = Budget::default();
        let mut items = [camera(Priority::Speaker(0)), camera(Priority::Other(5))];
        assert_eq!(run(&mut b, t(0), Some(3000), &mut items), vec![2, 2]);
        // Congestion: 550 leaves the speaker at 300 and the other at its lowest.
        assert_eq!(run(&mut b, t(500), Some(550), &mut items), vec![1, 0]);
        // Recovered: after the hold both climb back, the speaker first.
        assert_eq!(run(&mut b, t(1000), Some(3000), &mut items), vec![1, 0]);
        assert_eq!(run(&mut b, t(3500), Some(3000), &mut items), vec![2, 2]);
    }

    #[test]
    fn raises_undone_at_once_make_the_hold_grow() {
        // A path whose estimate swings with what is sent on it: plenty
        // while the subscriber is low, too little once it is raised.
        let mut b = Budget::default();
        let mut items = [camera(Priority::Other(2))];
        let mut raises = Vec::new();
        let mut ms = 0;
        run(&mut b, t(ms), Some(500), &mut items);
        while ms < 120_000 {
            ms += 500;
            let kbps = if items[0].cap == 2 { 500 } else { 5000 };
            let before = items[0].cap;
            run(&mut b, t(ms), Some(kbps), &mut items);
            if items[0].cap > before {
                raises.push(ms);
            }
        }
        // Each failed raise doubles the wait before the next: 3, 6, 12,
        // 24, then 30 s, instead of one every 3.5 s.
        let gaps: Vec<u64> = raises.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(raises[0], 3000, "{raises:?}");
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
        assert!(raises.len() <= 7, "{raises:?}");
        assert!(gaps.last().is_some_and(|g| *g >= 30_000), "{gaps:?}");
    }

    #[test]
    fn a_reset_lets_a_higher_cap_apply_at_once() {
        let mut b = Budget::default();
        let mut items = [camera(Priority::Other(2))];
        assert_eq!(run(&mut b, t(0), Some(200), &mut items), vec![0]);
        b.reset();
        assert_eq!(run(&mut b, t(100), Some(5000), &mut items), vec![2]);
    }

    #[test]
    fn a_single_encoding_track_counts_but_is_never_capped() {
        let mut b = Budget::default();
        let plain = Item {
            priority: Priority::Other(1),
            kbps: [700, 0, 0],
            count: 1,
            wanted: Some(0),
            cap: 2,
        };
        let mut items = [plain, camera(Priority::Other(2))];
        // 700 + 100 leave 150: the simulcast one stays at its lowest.
        assert_eq!(run(&mut b, t(0), Some(950), &mut items), vec![2, 0]);
    }

    #[test]
    fn guessed_rates_grow_with_the_picture() {
        assert_eq!(guess_kbps(1280, 720, 30), 1382);
        assert_eq!(guess_kbps(320, 180, 0), 86);
    }
}
