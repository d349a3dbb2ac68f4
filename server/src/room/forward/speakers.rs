//! Who speaks (PROTOCOL.md §6.6.4), from the levels publishers put beside
//! their audio frames, never from the audio itself.
//!
//! - [`Activity`], per audio track: which 20 ms slots of the last second
//!   held speech, by the server's clock, so a flood of frames in one slot
//!   counts once;
//! - [`Loudest`], per room: the loudest few tracks right now, updated on
//!   every audio frame in O(entries), for loudest-N audio;
//! - [`Board`], per room: the dominant speaker with hysteresis, and the
//!   order in which people last took the floor, for last-N video.

use std::time::Duration;

use convene_protocol::{AudioLevel, Timestamp};

/// Length of one activity slot.
const SLOT: Duration = Duration::from_millis(20);
/// Slots in the window (one second).
const WINDOW: u64 = 50;
/// A level at or below this many −dBov counts as speech even without V.
const SPEECH_DBOV: u8 = 50;
/// Active slots in the window that make a speaker (200 ms of the last second).
pub const MIN_ACTIVE_SLOTS: u32 = 10;
/// A challenger takes the dominant place with this many more active slots
/// in the window (300 ms more speech in the last second): a cough does not.
pub const TAKEOVER_MARGIN: u32 = 15;
/// Speakers are re-evaluated and announced at most this often.
pub const EVALUATE_EVERY: Duration = Duration::from_millis(300);
/// Entries of the loudest list and of the recent-speaker list.
pub const LIST_LEN: usize = 16;
/// A track silent for this long leaves the loudest list.
const LOUDEST_EXPIRY: Duration = Duration::from_millis(400);

/// The last second of one audio track's speech, in 20 ms slots.
#[derive(Debug, Clone, Copy, Default)]
pub struct Activity {
    /// Bit `i` set: slot `head - i` held speech.
    bits: u64,
    /// The newest slot number.
    head: u64,
    /// Smoothed loudness, 0 (silence) to 127.
    pub loudness: u8,
}

impl Activity {
    /// Records one frame's level at `now`.
    pub fn observe(&mut self, now: Timestamp, level: Option<AudioLevel>) {
        let slot = now.0 / SLOT.as_micros() as u64;
        self.advance(slot);
        // Without a level a frame still says its sender is not silent
        // (silence suppression sends few frames): a quiet, steady guess.
        let (speech, loud) = match level {
            Some(l) => (l.voice || l.dbov <= SPEECH_DBOV, 127 - l.dbov.min(127)),
            None => (true, 40),
        };
        if speech {
            self.bits |= 1;
        }
        self.loudness = ((self.loudness as u16 + loud as u16) / 2) as u8;
    }

    fn advance(&mut self, slot: u64) {
        if slot > self.head {
            let shift = slot - self.head;
            self.bits = if shift >= 64 { 0 } else { self.bits << shift };
            self.head = slot;
        }
    }

    /// Slots of speech within the last second before `now`.
    pub fn score(&self, now: Timestamp) -> u32 {
        let slot = now.0 / SLOT.as_micros() as u64;
        let age = slot.saturating_sub(self.head);
        if age >= WINDOW {
            return 0;
        }
        let window = (1u64 << (WINDOW - age)) - 1;
        (self.bits & window).count_ones()
    }
}

/// The loudest audio tracks of a room right now.
#[derive(Debug, Clone, Default)]
pub struct Loudest {
    /// (publisher, track, loudness, last frame), loudest first.
    entries: Vec<(u32, u32, u8, Timestamp)>,
}

impl Loudest {
    /// Notes a frame of `track` at `loudness` and returns its rank among
    /// the tracks heard within the expiry (0 the loudest; `u8::MAX` when
    /// not among the first [`LIST_LEN`]).
    pub fn observe(&mut self, now: Timestamp, track: (u32, u32), loudness: u8) -> u8 {
        self.entries
            .retain(|e| now.saturating_since(e.3) < LOUDEST_EXPIRY && (e.0, e.1) != track);
        let at = self
            .entries
            .iter()
            .position(|e| e.2 < loudness)
            .unwrap_or(self.entries.len());
        if at >= LIST_LEN {
            return u8::MAX;
        }
        // The list is bounded, so it never reallocates past its first growth.
        self.entries.insert(at, (track.0, track.1, loudness, now));
        self.entries.truncate(LIST_LEN);
        at as u8
    }
}

/// One change of the speakers to announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speakers {
    /// (participant, loudness 0–127), loudest first; the dominant one is flagged apart.
    pub speakers: Vec<(u32, u8)>,
    /// The dominant speaker, if anyone speaks.
    pub dominant: Option<u32>,
}

/// The room's speakers: the dominant one, and who last took the floor.
#[derive(Debug, Clone, Default)]
pub struct Board {
    /// The dominant speaker.
    dominant: Option<u32>,
    /// Participants in the order they last became dominant, newest first.
    recent: Vec<u32>,
    /// When the board was last evaluated.
    evaluated: Option<Timestamp>,
    /// What was last announced.
    announced: Option<Speakers>,
}

impl Board {
    /// True when an evaluation is due at `now`.
    pub fn due(&self, now: Timestamp) -> bool {
        self.evaluated
            .is_none_or(|t| now.saturating_since(t) >= EVALUATE_EVERY)
    }

    /// Evaluates the room from each participant's best (score, loudness)
    /// and returns what to announce if it changed; `recent_changed` is set
    /// when the recent-speaker order moved (last-N must follow).
    pub fn evaluate(
        &mut self,
        now: Timestamp,
        candidates: &[(u32, u32, u8)],
        recent_changed: &mut bool,
    ) -> Option<Speakers> {
        self.evaluated = Some(now);
        let score_of = |pid: u32| candidates.iter().find(|c| c.0 == pid).map_or(0, |c| c.1);
        let best = candidates
            .iter()
            .filter(|c| c.1 >= MIN_ACTIVE_SLOTS)
            .max_by_key(|c| (c.1, c.2, std::cmp::Reverse(c.0)));
        let held = self.dominant.map_or(0, score_of);
        let next = match (self.dominant, best) {
            (_, None) => self.dominant.filter(|_| held > 0),
            (None, Some(b)) => Some(b.0),
            (Some(d), Some(b)) if b.0 != d && (held == 0 || b.1 >= held + TAKEOVER_MARGIN) => {
                Some(b.0)
            }
            (d, _) => d,
        };
        *recent_changed = false;
        if next != self.dominant {
            if let Some(n) = next
                && self.recent.first() != Some(&n)
            {
                self.recent.retain(|p| *p != n);
                self.recent.insert(0, n);
                self.recent.truncate(LIST_LEN * 4);
                *recent_changed = true;
            }
            self.dominant = next;
        }
        let mut speakers: Vec<(u32, u8)> = candidates
            .iter()
            .filter(|c| c.1 >= MIN_ACTIVE_SLOTS || Some(c.0) == self.dominant)
            .map(|c| (c.0, c.2))
            .collect();
        speakers.sort_by_key(|s| (std::cmp::Reverse(s.1), s.0));
        speakers.truncate(LIST_LEN);
        // Loudness moves all the time: only who speaks and who leads is news.
        let announce = Speakers {
            speakers,
            dominant: self.dominant,
        };
        let same = self.announced.as_ref().is_some_and(|a| {
            a.dominant == announce.dominant
                && a.speakers.len() == announce.speakers.len()
                && a.speakers
                    .iter()
                    .zip(&announce.speakers)
                    .all(|(x, y)| x.0 == y.0)
        });
        if same {
            return None;
        }
        self.announced = Some(announce.clone());
        Some(announce)
    }

    /// Participants by when they last took the floor, newest first.
    pub fn recent(&self) -> &[u32] {
        &self.recent
    }

    /// Forgets a participant who left.
    pub fn forget(&mut self, pid: u32) {
        self.recent.retain(|p| *p != pid);
        if self.dominant == Some(pid) {
            self.dominant = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp(1_000_000_000 + ms * 1000)
    }

    fn voice(dbov: u8) -> Option<AudioLevel> {
        Some(AudioLevel { voice: true, dbov })
    }

    #[test]
    fn a_flood_of_frames_counts_once_per_slot() {
        let mut a = Activity::default();
        for i in 0..10_000u64 {
            a.observe(Timestamp(t(0).0 + i), voice(20));
        }
        assert_eq!(a.score(t(10)), 1);
        for ms in (0..1000).step_by(20) {
            a.observe(t(ms), voice(20));
        }
        assert_eq!(a.score(t(990)), 50);
        assert_eq!(
            a.score(t(1500)),
            24,
            "half a second later, about half the window"
        );
        assert_eq!(a.score(t(3000)), 0);
    }

    #[test]
    fn silence_and_quiet_noise_are_not_speech() {
        let mut a = Activity::default();
        for ms in (0..1000).step_by(20) {
            a.observe(
                t(ms),
                Some(AudioLevel {
                    voice: false,
                    dbov: 90,
                }),
            );
        }
        assert_eq!(a.score(t(990)), 0);
        assert!(a.loudness < 40);
    }

    #[test]
    fn loudest_ranks_and_expires() {
        let mut l = Loudest::default();
        assert_eq!(l.observe(t(0), (1, 1), 80), 0);
        assert_eq!(l.observe(t(5), (2, 1), 100), 0);
        assert_eq!(l.observe(t(10), (3, 1), 60), 2);
        assert_eq!(l.observe(t(20), (1, 1), 80), 1);
        // Track 2 falls silent: gone after the expiry.
        assert_eq!(l.observe(t(500), (1, 1), 80), 0);
    }

    /// Runs the board for `ms` with the given speakers talking (pid, dbov).
    fn talk(
        b: &mut Board,
        acts: &mut [(u32, Activity)],
        from: u64,
        ms: u64,
        talking: &[(u32, u8)],
    ) -> Vec<(u64, Option<u32>)> {
        let mut changes = Vec::new();
        for now in (from..from + ms).step_by(20) {
            for (pid, a) in acts.iter_mut() {
                if let Some((_, dbov)) = talking.iter().find(|x| x.0 == *pid) {
                    a.observe(t(now), voice(*dbov));
                }
            }
            if b.due(t(now)) {
                let c: Vec<_> = acts
                    .iter()
                    .map(|(p, a)| (*p, a.score(t(now)), a.loudness))
                    .collect();
                let mut moved = false;
                if let Some(s) = b.evaluate(t(now), &c, &mut moved) {
                    changes.push((now, s.dominant));
                }
            }
        }
        changes
    }

    #[test]
    fn the_floor_changes_hands_within_a_second_and_a_cough_does_not_take_it() {
        let mut b = Board::default();
        let mut acts = [(1, Activity::default()), (2, Activity::default())];
        let c = talk(&mut b, &mut acts, 0, 3000, &[(1, 20)]);
        assert_eq!(c.last().unwrap().1, Some(1));
        // A 200 ms cough from 2, louder: 1 keeps the floor.
        let c = talk(&mut b, &mut acts, 3000, 200, &[(1, 20), (2, 5)]);
        let after = talk(&mut b, &mut acts, 3200, 1000, &[(1, 20)]);
        assert!(
            c.iter().chain(&after).all(|x| x.1 == Some(1)),
            "{c:?} {after:?}"
        );
        // 1 stops, 2 starts: 2 leads within a second.
        let c = talk(&mut b, &mut acts, 4200, 2000, &[(2, 20)]);
        let (when, who) = c.iter().find(|x| x.1 == Some(2)).copied().unwrap();
        assert!(when - 4200 <= 1000, "took {} ms", when - 4200);
        assert_eq!(who, Some(2));
        assert_eq!(b.recent(), &[2, 1]);
    }
}
