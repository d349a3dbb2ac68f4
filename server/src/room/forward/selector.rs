//! What one subscriber receives of one video track with several encodings
//! or temporal layers (PROTOCOL.md §6.6.3): one encoding at a time, moved
//! only at a key frame that is ahead in sequence and time, temporal layers
//! up to a frame-rate cap, nothing while paused or left out by last-N, and
//! no more than the subscriber's path carries.

use std::time::Duration;

use convene_protocol::v1::{SubscriptionPreferences, TrackInfo};
use convene_protocol::{Layer, Timestamp};

/// First wait before trying a higher encoding again after the path could
/// not carry one; doubled each time a raise fails soon after it was tried.
pub const RAISE_WAIT: Duration = Duration::from_secs(8);
/// Longest wait before trying a higher encoding again.
pub const MAX_RAISE_WAIT: Duration = Duration::from_secs(30);
/// A raise undone within this long counts as failed.
const RAISE_FAILED_WITHIN: Duration = Duration::from_secs(5);
/// Congestion signals closer than this lower the encoding only once.
const LOWER_AT_MOST_EVERY: Duration = Duration::from_secs(1);
/// A v1 subscriber waiting to switch gets nothing of its old encoding for
/// up to this long, so that the new encoding's key frame is a later picture
/// than anything it received (it would discard a repeated sequence number).
const V1_HOLD: Duration = Duration::from_secs(1);
/// A hold that found no key frame is tried again after this long.
const V1_HOLD_RETRY: Duration = Duration::from_secs(3);

/// The layers a track announced (§6.6.1), in the form routing reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layers {
    /// Spatial encodings, 1 to 3.
    pub count: u8,
    /// Temporal layers per encoding, 1 to 4.
    pub temporal: [u8; 3],
    /// Width and height per encoding.
    pub sizes: [(u32, u32); 3],
    /// Frame rate per encoding, all temporal layers together.
    pub fps: [u32; 3],
    /// Kbit/s per encoding: as announced, or guessed from its size (for
    /// the subscriber's budget, [`super::budget`]).
    pub kbps: [u32; 3],
}

impl Layers {
    /// The layers of a published track: its encodings, or one encoding.
    pub fn of(info: &TrackInfo) -> Self {
        let announced = |kbps: u32, w, h, fps| {
            if kbps > 0 {
                kbps
            } else {
                super::budget::guess_kbps(w, h, fps)
            }
        };
        let mut l = Layers {
            count: 1,
            temporal: [1; 3],
            sizes: [(info.width, info.height); 3],
            fps: [info.frame_rate; 3],
            kbps: [announced(
                info.target_bitrate_kbps,
                info.width,
                info.height,
                info.frame_rate,
            ); 3],
        };
        if !info.encodings.is_empty() {
            l.count = info.encodings.len().min(3) as u8;
            for (i, e) in info.encodings.iter().take(3).enumerate() {
                l.temporal[i] = e.temporal_layers.clamp(1, 4) as u8;
                l.sizes[i] = (e.width, e.height);
                l.fps[i] = e.frame_rate;
                l.kbps[i] = announced(e.target_bitrate_kbps, e.width, e.height, e.frame_rate);
            }
        }
        l
    }

    /// True when a subscriber may be given less than everything: several
    /// encodings, or temporal layers to drop.
    pub fn selective(&self) -> bool {
        self.count > 1 || self.temporal[0] > 1
    }

    /// The top encoding's index.
    pub fn top(&self) -> u8 {
        self.count - 1
    }

    /// True when `layer` exists on the track (else the frame is malformed).
    pub fn has(&self, layer: Layer) -> bool {
        layer.encoding < self.count && layer.temporal < self.temporal[layer.encoding as usize]
    }
}

/// A subscription's preferences (§6.6.3); zero means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prefs {
    /// Widest picture wanted.
    pub max_width: u32,
    /// Tallest picture wanted.
    pub max_height: u32,
    /// Highest frame rate wanted.
    pub max_frame_rate: u32,
    /// Nothing wanted for now.
    pub paused: bool,
}

impl From<&SubscriptionPreferences> for Prefs {
    fn from(p: &SubscriptionPreferences) -> Self {
        Prefs {
            max_width: p.max_width,
            max_height: p.max_height,
            max_frame_rate: p.max_frame_rate,
            paused: p.paused,
        }
    }
}

/// What to do with one frame for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Queue it.
    Forward,
    /// Leave it out.
    Drop,
    /// Leave it out; the subscriber waits for a key frame of this encoding.
    NeedKey(u8),
}

/// The forwarding state of one subscription to a selective track.
#[derive(Debug, Clone, Copy)]
pub struct Selector {
    /// The subscriber negotiated `sfu.1`: temporal layers may be dropped.
    sfu: bool,
    /// What the subscriber asked for.
    pub prefs: Prefs,
    /// Left out by the subscriber's last-N (§6.6.4).
    pub last_n_out: bool,
    /// The encoding being forwarded; `None` until a key frame starts one.
    current: Option<u8>,
    /// The highest temporal layer being forwarded.
    temporal: u8,
    /// Sequence number and capture time of the last frame forwarded.
    last: Option<(u32, u64)>,
    /// The highest encoding the subscriber's path is thought to carry,
    /// from its queue's drops and waits.
    cap: u8,
    /// The highest encoding the subscriber's budget allows (its transport
    /// estimate and `max_receive_kbps`), set by [`super::budget`].
    pub budget_cap: u8,
    /// When the path last made the cap go down.
    lowered_at: Option<Timestamp>,
    /// When the cap was last raised.
    raised_at: Option<Timestamp>,
    /// How long after lowering before a higher encoding is tried.
    raise_wait: Duration,
    /// A v1 subscriber's switch is waiting for a key frame since then.
    hold_since: Option<Timestamp>,
    /// The target the last decision aimed at, for the track's demand.
    wanted: Option<u8>,
}

/// True when sequence number `a` comes after `b` (wrapping, §6.1).
fn seq_after(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 1 << 31
}

impl Selector {
    /// A new subscription's state: waiting for a key frame.
    pub fn new(sfu: bool, prefs: Prefs) -> Self {
        Selector {
            sfu,
            prefs,
            last_n_out: false,
            current: None,
            temporal: 0,
            last: None,
            cap: 2,
            budget_cap: 2,
            lowered_at: None,
            raised_at: None,
            raise_wait: RAISE_WAIT,
            hold_since: None,
            wanted: None,
        }
    }

    /// The encoding the last [`Selector::decide`] aimed at (`None`: nothing
    /// wanted): what the subscriber asks of the publisher (§6.6.5).
    pub fn wanted(&self) -> Option<u8> {
        self.wanted
    }

    /// The encoding being forwarded, if any.
    pub fn current(&self) -> Option<u8> {
        self.current
    }

    /// The encoding the subscriber should get now; `None` while it wants nothing.
    pub fn target(&self, layers: &Layers) -> Option<u8> {
        let wanted = self.preferred(layers)?;
        Some(wanted.min(self.cap).min(self.budget_cap))
    }

    /// The encoding the subscriber's preferences and last-N ask for, whatever
    /// its path carries; `None` while it wants nothing.
    pub fn preferred(&self, layers: &Layers) -> Option<u8> {
        if self.prefs.paused || self.last_n_out {
            return None;
        }
        let p = &self.prefs;
        Some(if p.max_width == 0 && p.max_height == 0 {
            layers.top()
        } else {
            (0..layers.count)
                .find(|&i| {
                    let (w, h) = layers.sizes[i as usize];
                    (p.max_width == 0 || w >= p.max_width)
                        && (p.max_height == 0 || h >= p.max_height)
                })
                .unwrap_or(layers.top())
        })
    }

    /// The highest temporal layer of encoding `e` to forward: all of them
    /// to a v1 subscriber, else the highest within the frame-rate cap.
    fn temporal_target(&self, layers: &Layers, e: u8) -> u8 {
        let n = layers.temporal[e as usize];
        if !self.sfu || self.prefs.max_frame_rate == 0 {
            return n - 1;
        }
        let fps = layers.fps[e as usize];
        // Each layer dropped halves the frame rate.
        (0..n)
            .rev()
            .find(|&t| fps >> (n - 1 - t) <= self.prefs.max_frame_rate)
            .unwrap_or(0)
    }

    /// Decides one frame of layer `layer`, seq `seq`, capture time `ts`.
    pub fn decide(
        &mut self,
        now: Timestamp,
        layers: &Layers,
        layer: Layer,
        key: bool,
        seq: u32,
        ts: u64,
    ) -> Verdict {
        self.maybe_raise(now, layers);
        self.wanted = self.target(layers);
        let Some(target) = self.wanted else {
            // Paused: whatever comes next starts at a key frame.
            self.current = None;
            return Verdict::Drop;
        };
        let e = layer.encoding;
        if self.current != Some(e) {
            // A key frame of an encoding on the way to the target, ahead
            // of everything forwarded so far (§6.6.3 rule 2).
            let toward = match self.current {
                None => e <= target,
                // A v1 receiver goes straight to the target: every switch
                // costs it a held-back moment.
                Some(_) if !self.sfu => e == target,
                Some(c) if c < target => c < e && e <= target,
                Some(c) => target <= e && e < c,
            };
            // For a subscriber that negotiated sfu.1 the same picture in
            // another encoding counts (a publisher may send a picture's
            // encodings in any order); a v1 receiver would discard it.
            let ahead = self
                .last
                .is_none_or(|(s, t)| (seq_after(seq, s) || (self.sfu && seq == s)) && ts >= t);
            if !(toward && key && ahead) {
                return if e == target && self.current != Some(target) {
                    if !self.sfu && self.current.is_some() {
                        let renew = self
                            .hold_since
                            .is_none_or(|t| now.saturating_since(t) >= V1_HOLD_RETRY);
                        if renew {
                            self.hold_since = Some(now);
                        }
                    }
                    Verdict::NeedKey(target)
                } else {
                    Verdict::Drop
                };
            }
            self.hold_since = None;
            self.current = Some(e);
            self.temporal = self.temporal_target(layers, e);
        }
        // A v1 subscriber about to switch: its old encoding pauses briefly
        // so the new one's key frame comes after everything it has.
        if self.current != Some(target)
            && self
                .hold_since
                .is_some_and(|t| now.saturating_since(t) < V1_HOLD)
        {
            return Verdict::Drop;
        }
        // Temporal layers: down at any frame, up at a key frame or switch point.
        let tt = self.temporal_target(layers, e);
        if key || tt < self.temporal {
            self.temporal = tt;
        } else if layer.temporal > self.temporal && layer.temporal <= tt && layer.switch_point {
            self.temporal = layer.temporal;
        }
        if layer.temporal > self.temporal {
            return Verdict::Drop;
        }
        self.last = Some((seq, ts));
        Verdict::Forward
    }

    /// The subscriber's queue dropped frames or waits too long: the path does
    /// not carry what it gets. Moves the cap one encoding below the current.
    pub fn congested(&mut self, now: Timestamp) {
        let Some(c) = self.current else {
            return;
        };
        if c == 0
            || self
                .lowered_at
                .is_some_and(|t| now.saturating_since(t) < LOWER_AT_MOST_EVERY)
        {
            return;
        }
        if self
            .raised_at
            .is_some_and(|t| now.saturating_since(t) < RAISE_FAILED_WITHIN)
        {
            self.raise_wait = (self.raise_wait * 2).min(MAX_RAISE_WAIT);
        }
        self.cap = c - 1;
        self.lowered_at = Some(now);
    }

    /// Tries one encoding higher once the path has been quiet for the wait.
    fn maybe_raise(&mut self, now: Timestamp, layers: &Layers) {
        if self.cap >= layers.top() {
            return;
        }
        let quiet =
            |t: Option<Timestamp>| t.is_none_or(|t| now.saturating_since(t) >= self.raise_wait);
        if quiet(self.lowered_at) && quiet(self.raised_at) {
            self.cap += 1;
            self.raised_at = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use convene_protocol::v1::Encoding;

    fn t(ms: u64) -> Timestamp {
        Timestamp(1_000_000_000 + ms * 1000)
    }

    fn simulcast(temporal: u32) -> Layers {
        Layers::of(&TrackInfo {
            width: 1280,
            height: 720,
            frame_rate: 30,
            encodings: [(320, 180), (640, 360), (1280, 720)]
                .iter()
                .map(|&(width, height)| Encoding {
                    width,
                    height,
                    frame_rate: 30,
                    target_bitrate_kbps: 0,
                    temporal_layers: temporal,
                })
                .collect(),
            ..Default::default()
        })
    }

    fn layer(encoding: u8, temporal: u8) -> Layer {
        Layer {
            encoding,
            temporal,
            ..Default::default()
        }
    }

    /// One picture, in every encoding: the verdict for each.
    fn picture(s: &mut Selector, l: &Layers, now: Timestamp, n: u32, key: bool) -> [Verdict; 3] {
        let ts = 1_000_000 + n as u64 * 33_333;
        [0, 1, 2].map(|e| s.decide(now, l, layer(e, 0), key, n, ts))
    }

    #[test]
    fn starts_at_a_key_frame_of_the_target_and_forwards_only_it() {
        let l = simulcast(1);
        let mut s = Selector::new(true, Prefs::default());
        use Verdict::*;
        assert_eq!(
            picture(&mut s, &l, t(0), 1, false),
            [Drop, Drop, NeedKey(2)]
        );
        // Each key frame on the way up starts the subscriber at once, and
        // the same picture's key frame of a higher encoding moves it on.
        assert_eq!(
            picture(&mut s, &l, t(33), 2, true),
            [Forward, Forward, Forward]
        );
        assert_eq!(s.current(), Some(2));
        assert_eq!(picture(&mut s, &l, t(66), 3, false), [Drop, Drop, Forward]);
        assert_eq!(picture(&mut s, &l, t(99), 4, true), [Drop, Drop, Forward]);
    }

    #[test]
    fn a_smaller_tile_moves_down_at_the_smaller_encodings_key_frame() {
        let l = simulcast(1);
        let mut s = Selector::new(true, Prefs::default());
        picture(&mut s, &l, t(0), 1, true);
        assert_eq!(s.current(), Some(2));
        s.prefs = Prefs {
            max_height: 180,
            ..Default::default()
        };
        use Verdict::*;
        // Until encoding 0 has a key frame, 2 keeps flowing: no gap.
        assert_eq!(
            picture(&mut s, &l, t(66), 3, false),
            [NeedKey(0), Drop, Forward]
        );
        assert_eq!(picture(&mut s, &l, t(99), 4, true), [Forward, Drop, Drop]);
        assert_eq!(s.current(), Some(0));
    }

    #[test]
    fn paused_receives_nothing_and_resumes_at_a_key_frame() {
        let l = simulcast(1);
        let mut s = Selector::new(true, Prefs::default());
        picture(&mut s, &l, t(0), 1, true);
        s.prefs.paused = true;
        assert_eq!(s.target(&l), None);
        assert_eq!(picture(&mut s, &l, t(33), 2, true), [Verdict::Drop; 3]);
        s.prefs.paused = false;
        assert_eq!(
            picture(&mut s, &l, t(66), 3, false),
            [Verdict::Drop, Verdict::Drop, Verdict::NeedKey(2)]
        );
    }

    #[test]
    fn a_frame_rate_cap_drops_the_upper_temporal_layers() {
        let l = simulcast(2); // 30 fps: layer 0 alone is 15
        let mut s = Selector::new(
            true,
            Prefs {
                max_frame_rate: 15,
                ..Default::default()
            },
        );
        let mut forwarded = Vec::new();
        for n in 1..=8u32 {
            let tid = (n % 2 == 0) as u8;
            let key = n == 1;
            let v = s.decide(
                t(n as u64 * 33),
                &l,
                layer(2, tid),
                key,
                n,
                n as u64 * 33_333,
            );
            if v == Verdict::Forward {
                forwarded.push(n);
            }
        }
        assert_eq!(forwarded, vec![1, 3, 5, 7]);
        // Lifting the cap takes layer 1 back at its next switch point only.
        s.prefs.max_frame_rate = 0;
        let plain = s.decide(t(400), &l, layer(2, 1), false, 10, 400_000);
        assert_eq!(plain, Verdict::Drop);
        let sp = Layer {
            switch_point: true,
            ..layer(2, 1)
        };
        assert_eq!(
            s.decide(t(433), &l, sp, false, 12, 433_000),
            Verdict::Forward
        );
    }

    #[test]
    fn a_v1_subscriber_switches_at_a_later_picture_after_a_short_hold() {
        let l = simulcast(1);
        let mut s = Selector::new(false, Prefs::default());
        use Verdict::*;
        // Smallest first, as a publisher may send them: the same picture's
        // key frame of a higher encoding does not count for a v1 receiver.
        assert_eq!(
            picture(&mut s, &l, t(0), 1, true),
            [Forward, Drop, NeedKey(2)]
        );
        assert_eq!(s.current(), Some(0));
        // While the key frame of 2 is awaited, 0 is held back...
        assert_eq!(
            picture(&mut s, &l, t(33), 2, false),
            [Drop, Drop, NeedKey(2)]
        );
        // ...so the next key frame of 2 is ahead of what was forwarded.
        assert_eq!(picture(&mut s, &l, t(66), 3, true), [Drop, Drop, Forward]);
        assert_eq!(s.current(), Some(2));
        // The path cannot carry it: the hold starts again, and without a
        // key frame within it the old encoding flows again.
        s.congested(t(100));
        assert_eq!(
            picture(&mut s, &l, t(133), 4, false),
            [Drop, NeedKey(1), Drop]
        );
        assert_eq!(
            picture(&mut s, &l, t(200), 5, false),
            [Drop, NeedKey(1), Drop]
        );
        assert_eq!(
            picture(&mut s, &l, t(1200), 6, false),
            [Drop, NeedKey(1), Forward]
        );
    }

    #[test]
    fn a_v1_subscriber_gets_every_temporal_layer() {
        let l = simulcast(2);
        let mut s = Selector::new(
            false,
            Prefs {
                max_frame_rate: 15,
                ..Default::default()
            },
        );
        for n in 1..=6u32 {
            let v = s.decide(t(0), &l, layer(2, (n % 2 == 0) as u8), n == 1, n, n as u64);
            assert_eq!(v, Verdict::Forward, "frame {n}");
        }
    }

    #[test]
    fn congestion_lowers_one_encoding_and_raises_after_a_growing_wait() {
        let l = simulcast(1);
        let mut s = Selector::new(true, Prefs::default());
        picture(&mut s, &l, t(0), 1, true);
        assert_eq!(s.current(), Some(2));
        s.congested(t(100));
        assert_eq!(s.target(&l), Some(1));
        s.congested(t(500)); // within a second: once
        assert_eq!(s.target(&l), Some(1));
        // At encoding 1's key frame the subscriber moves down.
        assert_eq!(picture(&mut s, &l, t(600), 3, true)[1], Verdict::Forward);
        assert_eq!(s.current(), Some(1));
        // After the wait, the top is tried again...
        picture(&mut s, &l, t(100 + 8000), 4, false);
        assert_eq!(s.target(&l), Some(2));
        picture(&mut s, &l, t(8200), 5, true);
        assert_eq!(s.current(), Some(2));
        // ...and fails at once: the next try waits twice as long.
        s.congested(t(8300));
        assert_eq!(s.target(&l), Some(1));
        picture(&mut s, &l, t(8300 + 8000), 6, false);
        assert_eq!(s.target(&l), Some(1), "the wait doubled");
        picture(&mut s, &l, t(8300 + 16_000), 7, false);
        assert_eq!(s.target(&l), Some(2));
    }

    #[test]
    fn never_goes_back_in_sequence_or_time_across_switches() {
        // Random frames of random encodings with random key flags and
        // random preference changes: what is forwarded is strictly
        // increasing in sequence, never earlier in time, and every encoding
        // change happens at a key frame.
        let l = simulcast(2);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for sfu in [true, false] {
            let mut s = Selector::new(sfu, Prefs::default());
            let mut last: Option<(u32, u64, u8)> = None;
            for n in 1..5000u32 {
                if next() % 50 == 0 {
                    s.prefs.max_height = [0, 180, 360, 720][(next() % 4) as usize];
                }
                if next() % 200 == 0 {
                    s.congested(t(n as u64 * 33));
                }
                for e in 0..3u8 {
                    let key = next() % 20 == 0;
                    let lay = Layer {
                        encoding: e,
                        temporal: (next() % 2) as u8,
                        switch_point: next() % 4 == 0,
                        level: None,
                    };
                    let lay = if key {
                        Layer { temporal: 0, ..lay }
                    } else {
                        lay
                    };
                    let ts = n as u64 * 33_333;
                    if s.decide(t(n as u64 * 33), &l, lay, key, n, ts) == Verdict::Forward {
                        if let Some((ls, lt, le)) = last {
                            assert!(n >= ls && ts >= lt, "frame {n} after {ls}");
                            assert!(n > ls || e != le, "frame {n} of encoding {e} twice");
                            assert!(sfu || n > ls, "a v1 subscriber got picture {n} twice");
                            assert!(le == e || key, "switched {le}->{e} at a delta frame {n}");
                        } else {
                            assert!(key, "started at a delta frame");
                        }
                        last = Some((n, ts, e));
                    }
                }
            }
            assert!(last.is_some());
        }
    }
}
