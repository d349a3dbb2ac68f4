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
/// Slots a track may send nothing in and still be loud ([`QUIET_AFTER`]).
const QUIET_SLOTS: u64 = QUIET_AFTER.as_micros() as u64 / SLOT.as_micros() as u64;
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
/// A track that sent nothing for this long has no loudness now (longer
/// than the pauses between words, which silence suppression does not send).
const QUIET_AFTER: Duration = Duration::from_millis(400);
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

    /// The smoothed loudness, or 0 when the track has sent nothing for
    /// [`QUIET_AFTER`]: a voice that stopped is not loud now, and a level
    /// is only updated by frames.
    pub fn loudness_at(&self, now: Timestamp) -> u8 {
        let slot = now.0 / SLOT.as_micros() as u64;
        if slot.saturating_sub(self.head) > QUIET_SLOTS {
            0
        } else {
            self.loudness
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

/// A challenger as active as the dominant speaker takes the place when it is
/// this much louder (0–127 scale, about dB): two people talking at once, one
/// clearly the main voice.
pub const LOUDER_MARGIN: u8 = 12;
/// Slots of speech two speakers may differ by and still count as equally
/// active (a count taken in the middle of a slot sees some frames of it).
pub const SCORE_SLACK: u32 = 2;
/// Two current speakers trade places in the recent order only when the one
/// behind is this much louder, so voices of about one level do not make
/// last-N flicker.
pub const REORDER_MARGIN: u8 = 6;

/// The room's speakers: the dominant one, and the order of recency last-N
/// follows.
#[derive(Debug, Clone, Default)]
pub struct Board {
    /// The dominant speaker.
    dominant: Option<u32>,
    /// Participants by how recently they spoke: the dominant speaker, the
    /// others speaking now (louder first, with hysteresis), then those who
    /// spoke before, latest first.
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
        let of = |pid: u32| {
            candidates
                .iter()
                .find(|c| c.0 == pid)
                .map_or((0, 0), |c| (c.1, c.2))
        };
        let (held, held_loud) = self.dominant.map_or((0, 0), of);
        let next = match self.dominant {
            Some(d) if held > 0 => {
                // A challenger needs clearly more speech, or as much (a slot
                // or two either way is where in a slot the count fell) and a
                // clearly louder voice.
                let challenger = candidates
                    .iter()
                    .filter(|c| c.0 != d && c.1 >= MIN_ACTIVE_SLOTS)
                    .filter(|c| {
                        c.1 >= held + TAKEOVER_MARGIN
                            || (c.1 + SCORE_SLACK >= held
                                && c.2 >= held_loud.saturating_add(LOUDER_MARGIN))
                    })
                    .max_by_key(|c| (c.1 / (SCORE_SLACK + 1), c.2, std::cmp::Reverse(c.0)));
                Some(challenger.map_or(d, |c| c.0))
            }
            _ => candidates
                .iter()
                .filter(|c| c.1 >= MIN_ACTIVE_SLOTS)
                .max_by_key(|c| (c.1, c.2, std::cmp::Reverse(c.0)))
                .map(|c| c.0),
        };
        self.dominant = next;
        let speaking = |pid: u32| of(pid).0 >= MIN_ACTIVE_SLOTS || Some(pid) == self.dominant;
        // Those speaking now, in their previous order, newcomers by loudness;
        // then adjacent pairs swapped only past the margin.
        let mut now_speaking: Vec<u32> = self
            .recent
            .iter()
            .copied()
            .filter(|p| speaking(*p) && Some(*p) != self.dominant)
            .collect();
        let mut newcomers: Vec<(u32, u8)> = candidates
            .iter()
            .filter(|c| speaking(c.0) && Some(c.0) != self.dominant && !self.recent.contains(&c.0))
            .map(|c| (c.0, c.2))
            .collect();
        newcomers.sort_by_key(|c| (std::cmp::Reverse(c.1), c.0));
        now_speaking.extend(newcomers.iter().map(|c| c.0));
        for i in 1..now_speaking.len() {
            let mut j = i;
            while j > 0
                && of(now_speaking[j]).1 >= of(now_speaking[j - 1]).1.saturating_add(REORDER_MARGIN)
            {
                now_speaking.swap(j, j - 1);
                j -= 1;
            }
        }
        let mut recent: Vec<u32> = self.dominant.into_iter().chain(now_speaking).collect();
        let before: Vec<u32> = self
            .recent
            .iter()
            .copied()
            .filter(|p| !recent.contains(p))
            .collect();
        recent.extend(before);
        recent.truncate(LIST_LEN * 4);
        *recent_changed = recent != self.recent;
        self.recent = recent;
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

    /// Participants by how recently they spoke, the dominant speaker first.
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

    #[test]
    fn voices_of_about_one_level_keep_their_order_and_a_clearly_louder_one_moves_ahead() {
        let mut b = Board::default();
        let mut moved = false;
        // 1 leads; 2 and 3 speak too, 3 a little louder than 2.
        b.evaluate(t(0), &[(1, 50, 100), (2, 50, 80), (3, 50, 83)], &mut moved);
        assert!(moved);
        assert_eq!(b.recent(), &[1, 3, 2]);
        // 2 is now a little louder: within the margin, nothing moves.
        b.evaluate(
            t(300),
            &[(1, 50, 100), (2, 50, 86), (3, 50, 83)],
            &mut moved,
        );
        assert!(!moved);
        assert_eq!(b.recent(), &[1, 3, 2]);
        // Clearly louder: 2 moves ahead of 3 (not of the dominant 1).
        b.evaluate(
            t(600),
            &[(1, 50, 100), (2, 50, 95), (3, 50, 83)],
            &mut moved,
        );
        assert!(moved);
        assert_eq!(b.recent(), &[1, 2, 3]);
        // As active and clearly louder than the dominant: 2 leads; 3, who
        // stopped, stays behind those speaking.
        b.evaluate(t(900), &[(1, 49, 90), (2, 50, 110), (3, 5, 0)], &mut moved);
        assert!(moved);
        assert_eq!(b.recent(), &[2, 1, 3]);
    }
}
