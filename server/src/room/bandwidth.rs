//! Each subscriber's bandwidth shared among its subscriptions (PROTOCOL.md
//! §6.6.3): for every member connected here with a budget (its transport's
//! estimate, bounded by its `max_receive_kbps`), the room lists what each
//! of its subscriptions costs and where it stands, and gives each
//! subscription's selector the cap [`Budget::allocate`] chose.
//!
//! Run from [`Room::route`] when something it depends on changed or every
//! [`ALLOCATE_EVERY`], so a frame pays one comparison for it. The walk is
//! over every subscription of the room; a change of one member's own
//! subscriptions or settings (the frequent kind: a tile resized) shares out
//! only that member's budget, a change for everyone (a track, the
//! speakers) and the periodic run everyone's.
//!
//! [`Budget::allocate`]: super::forward::budget::Budget::allocate

use std::collections::BTreeMap;

use convene_protocol::Timestamp;

use super::Room;
use super::forward::budget::{ALLOCATE_EVERY, DEFAULT_AUDIO_KBPS, Item, Priority};
use super::media::{Publication, Subscription};

/// Whose budgets are to be shared out again before the next frame.
#[derive(Debug, Default)]
pub(super) struct Stale {
    /// Everyone's.
    all: bool,
    /// These members' (one entry each, so at most one per member).
    only: Vec<u32>,
}

impl Stale {
    /// Something changed for everyone.
    pub(super) fn all(&mut self) {
        self.all = true;
    }

    /// Something changed for `pid`'s own subscriptions or settings.
    pub(super) fn add(&mut self, pid: u32) {
        if !self.all && !self.only.contains(&pid) {
            self.only.push(pid);
        }
    }

    fn any(&self) -> bool {
        self.all || !self.only.is_empty()
    }
}

impl Room {
    /// True when the budgets are to be shared out again: something they
    /// depend on changed, or [`ALLOCATE_EVERY`] passed (estimates move).
    pub(super) fn budget_due(&self, now: Timestamp) -> bool {
        self.budget_stale.any()
            || self
                .budget_at
                .is_none_or(|t| now.saturating_since(t) >= ALLOCATE_EVERY)
    }

    /// Shares out budgeted subscribers' bandwidth among their subscriptions
    /// as of `now`: everyone's when due or changed for everyone, else only
    /// the members whose own subscriptions or settings changed.
    pub(super) fn allocate_budgets(&mut self, now: Timestamp) {
        let stale = std::mem::take(&mut self.budget_stale);
        let periodic = self
            .budget_at
            .is_none_or(|t| now.saturating_since(t) >= ALLOCATE_EVERY);
        let everyone = periodic || stale.all;
        if everyone {
            self.budget_at = Some(now);
        }
        let mut budgets: BTreeMap<u32, Option<u32>> = BTreeMap::new();
        for (pid, m) in &self.members {
            let Some(l) = &m.local else {
                continue;
            };
            if !everyone && !stale.only.contains(pid) {
                continue;
            }
            let asked =
                (l.sfu && m.settings.max_receive_kbps > 0).then_some(m.settings.max_receive_kbps);
            let kbps = match (l.outbox.path_kbps(), asked) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // A member that lost its budget is visited once more, to lift its caps.
            if kbps.is_some() || m.budget.active() {
                budgets.insert(*pid, kbps);
            }
        }
        if budgets.is_empty() {
            return;
        }
        let recent: BTreeMap<u32, u32> = self
            .board
            .recent()
            .iter()
            .enumerate()
            .map(|(i, p)| (*p, i as u32))
            .collect();
        let mut items: BTreeMap<u32, Vec<Item>> =
            budgets.keys().map(|p| (*p, Vec::new())).collect();
        // Audio first: each subscriber's sound is one item, what it may
        // receive at once. Audio is most of a large room's subscriptions
        // (every member hears every other), so it is counted from the
        // publications, not walked subscription by subscription, except for
        // members who chose their subscriptions one by one.
        let mut audio: Vec<(u32, u32)> = self
            .members
            .iter()
            .flat_map(|(pid, m)| {
                m.tracks
                    .values()
                    .filter(|p| p.audio && !p.info.muted)
                    .map(move |p| (*pid, audio_kbps(p)))
            })
            .collect();
        audio.sort_by_key(|a| std::cmp::Reverse(a.1));
        let total: u64 = audio.iter().map(|a| u64::from(a.1)).sum();
        let chosen: Vec<u32> = budgets
            .keys()
            .copied()
            .filter(|pid| self.members.get(pid).is_some_and(|m| !m.subscribe_all))
            .collect();
        let mut chosen_kbps: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        if !chosen.is_empty() {
            for m in self.members.values() {
                for p in m.tracks.values().filter(|p| p.audio && !p.info.muted) {
                    for s in p.subscribers.iter().filter(|s| chosen.contains(&s.pid)) {
                        chosen_kbps.entry(s.pid).or_default().push(audio_kbps(p));
                    }
                }
            }
        }
        for (pid, list) in items.iter_mut() {
            let Some(m) = self.members.get(pid) else {
                continue;
            };
            let n = match m.settings.audio_n {
                0 => usize::MAX,
                n => n as usize,
            };
            let kbps: u64 = if let Some(mut own) = chosen_kbps.remove(pid) {
                own.sort_unstable_by(|a, b| b.cmp(a));
                own.iter().take(n).map(|k| u64::from(*k)).sum()
            } else if !m.subscribe_all {
                0
            } else if n == usize::MAX {
                let mine: u64 = audio
                    .iter()
                    .filter(|a| a.0 == *pid)
                    .map(|a| u64::from(a.1))
                    .sum();
                total - mine
            } else {
                // The loudest may be anyone's: the dearest n, ours aside.
                audio
                    .iter()
                    .filter(|a| a.0 != *pid)
                    .take(n)
                    .map(|a| u64::from(a.1))
                    .sum()
            };
            if kbps > 0 {
                list.push(Item {
                    priority: Priority::Audio,
                    kbps: [u32::try_from(kbps).unwrap_or(u32::MAX), 0, 0],
                    count: 1,
                    wanted: Some(0),
                    cap: 2,
                });
            }
        }
        let audio_items: BTreeMap<u32, usize> = items.iter().map(|(p, l)| (*p, l.len())).collect();
        for (publisher, m) in &self.members {
            for p in m.tracks.values().filter(|p| !p.audio) {
                let priority = priority(p, *publisher, &recent);
                for s in &p.subscribers {
                    if let Some(list) = items.get_mut(&s.pid) {
                        list.push(item(p, s, priority));
                    }
                }
            }
        }
        let mut caps: BTreeMap<u32, std::vec::IntoIter<u8>> = BTreeMap::new();
        for (pid, list) in &items {
            if let Some(m) = self.members.get_mut(pid) {
                let mut c = m.budget.allocate(now, budgets[pid], list);
                // The audio item's cap is no selector's.
                c.drain(..audio_items[pid]);
                caps.insert(*pid, c.into_iter());
            }
        }
        // The same walk in the same order: each subscription takes its cap.
        for m in self.members.values_mut() {
            for p in m.tracks.values_mut().filter(|p| !p.audio) {
                for s in p.subscribers.iter_mut() {
                    if let Some(c) = caps.get_mut(&s.pid).and_then(Iterator::next) {
                        s.sel.budget_cap = c;
                    }
                }
            }
        }
    }
}

/// Where a track stands in its subscribers' budgets: audio, screen shares,
/// cameras of recent speakers (most recent first), other cameras.
fn priority(p: &Publication, publisher: u32, recent: &BTreeMap<u32, u32>) -> Priority {
    if p.audio {
        Priority::Audio
    } else if !p.camera {
        Priority::Screen
    } else if let Some(&r) = recent.get(&publisher) {
        Priority::Speaker(r)
    } else {
        Priority::Other(publisher)
    }
}

/// What an audio track costs a subscriber, kbit/s.
fn audio_kbps(p: &Publication) -> u32 {
    match p.info.target_bitrate_kbps {
        0 => DEFAULT_AUDIO_KBPS,
        k => k,
    }
}

/// One video or screen subscription as the budget sees it.
fn item(p: &Publication, s: &Subscription, priority: Priority) -> Item {
    Item {
        priority,
        kbps: p.layers.kbps,
        count: p.layers.count,
        // Muted, paused or left out by last-N: nothing is sent.
        wanted: if p.info.muted {
            None
        } else {
            s.sel.preferred(&p.layers)
        },
        cap: s.sel.budget_cap,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use convene_protocol::v1::{Encoding, ReceiverSettings, TrackInfo, TrackKind};
    use convene_protocol::{Layer, MediaFrame, MediaHeader, RoomRequest, Timestamp};

    use crate::outbox::Outbox;
    use crate::room::forward::budget::RAISE_HOLD;
    use crate::room::test_util::{join_sfu, t};
    use crate::room::{Room, RoomLimits};

    /// A room where member 1 publishes a camera as 100, 300 and 900 kbit/s
    /// encodings and members 2 and 3 (sfu.1) receive it; their queues.
    fn room() -> (Room, Arc<Outbox>, Arc<Outbox>) {
        let mut room = Room::new("budget", RoomLimits::default());
        let outs: Vec<_> = (1..=3)
            .map(|pid| join_sfu(&mut room, pid, pid != 1))
            .collect();
        let track = TrackInfo {
            track_id: 1,
            kind: TrackKind::Video as i32,
            codec: "vp8".into(),
            width: 1280,
            height: 720,
            frame_rate: 30,
            encodings: [(320, 180, 100), (640, 360, 300), (1280, 720, 900)]
                .iter()
                .map(|&(width, height, kbps)| Encoding {
                    width,
                    height,
                    frame_rate: 30,
                    target_bitrate_kbps: kbps,
                    temporal_layers: 1,
                })
                .collect(),
            ..Default::default()
        };
        room.handle(t(0), 1, RoomRequest::Publish(track), 0)
            .unwrap();
        (room, outs[1].clone(), outs[2].clone())
    }

    /// Routes picture `n` at `now` (a key picture every tenth) and returns
    /// the encoding each queue received, if any.
    fn picture(room: &mut Room, now: Timestamp, n: u32, outs: [&Outbox; 2]) -> [Option<u8>; 2] {
        for e in 0..3u8 {
            let h = MediaHeader {
                key: n % 10 == 1,
                sender: 0,
                track_id: 1,
                sequence: n,
                capture_timestamp_us: n as u64 * 33_333,
            };
            let layer = Layer {
                encoding: e,
                ..Layer::default()
            };
            let f = MediaFrame::build_layered(layer, &h, None, &[e; 100]);
            room.route(now, 1, &f).unwrap();
        }
        outs.map(|o| {
            let mut got: Vec<Bytes> = Vec::new();
            o.drain(&mut got, usize::MAX);
            got.iter()
                .filter_map(|b| MediaFrame::parse_any(b.clone()).ok())
                .filter_map(|m| m.layer())
                .map(|l| l.encoding)
                .max()
        })
    }

    #[test]
    fn a_narrow_estimate_holds_a_subscriber_low_until_it_recovers() {
        let (mut room, narrow, wide) = room();
        // The transports' estimates: 350 kbit/s (the lowest two fit, the
        // top does not) and plenty.
        narrow.set_path_kbps(350);
        wide.set_path_kbps(50_000);
        let mut ms = 0;
        let mut last = [None; 2];
        for n in 1..=30 {
            last = picture(&mut room, t(ms), n, [&narrow, &wide]);
            ms += 33;
        }
        assert_eq!(last, [Some(1), Some(2)]);
        // The path recovers: the subscriber stays where it is until the
        // hold after its lowering is over, then climbs at a key picture.
        narrow.set_path_kbps(5000);
        let recovered_at = ms;
        let mut climbed = None;
        for n in 31..=300 {
            let got = picture(&mut room, t(ms), n, [&narrow, &wide]);
            if got[0] == Some(2) && climbed.is_none() {
                climbed = Some(ms);
            }
            ms += 33;
        }
        let climbed = climbed.expect("never climbed to the top");
        let hold = RAISE_HOLD.as_millis() as u64;
        assert!(climbed >= hold, "climbed at {climbed} ms, within the hold");
        assert!(
            climbed <= recovered_at + Duration::from_secs(1).as_millis() as u64 + hold,
            "climbed only at {climbed} ms"
        );
    }

    #[test]
    fn max_receive_kbps_bounds_the_estimate_and_zero_lifts_it() {
        let (mut room, capped, other) = room();
        capped.set_path_kbps(50_000);
        let settings = |kbps| {
            RoomRequest::ReceiverSettings(ReceiverSettings {
                max_receive_kbps: kbps,
                ..Default::default()
            })
        };
        room.handle(t(0), 2, settings(150), 0).unwrap();
        let mut ms = 0;
        for n in 1..=11 {
            let got = picture(&mut room, t(ms), n, [&capped, &other]);
            assert_eq!(got[0], Some(0), "picture {n}");
            ms += 33;
        }
        // No cap: the estimate alone, plenty; up at the next key picture.
        room.handle(t(ms), 2, settings(0), 0).unwrap();
        let mut top = false;
        for n in 12..=21 {
            top |= picture(&mut room, t(ms), n, [&capped, &other])[0] == Some(2);
            ms += 33;
        }
        assert!(top);
    }

    #[test]
    fn sound_is_paid_for_first_and_loudest_n_pays_only_for_what_it_hears() {
        let (mut room, narrow, wide) = room();
        wide.set_path_kbps(50_000);
        for pid in [1, 3] {
            let mic = TrackInfo {
                track_id: 9,
                kind: TrackKind::Audio as i32,
                codec: "opus".into(),
                target_bitrate_kbps: 64,
                ..Default::default()
            };
            room.handle(t(0), pid, RoomRequest::Publish(mic), 0)
                .unwrap();
        }
        // 420 kbit/s: the camera's 100 + 200 would fit, but two microphones
        // at 64 come first: the smallest encoding only.
        narrow.set_path_kbps(420);
        let mut last = [None; 2];
        for n in 1..=30 {
            last = picture(&mut room, t(n as u64 * 33), n, [&narrow, &wide]);
        }
        assert_eq!(last, [Some(0), Some(2)]);
        // Hearing only the loudest one, one microphone is paid for: the
        // middle encoding fits, with the headroom a raise needs (once the
        // hold after the lowering is over).
        let settings = RoomRequest::ReceiverSettings(ReceiverSettings {
            audio_n: 1,
            ..Default::default()
        });
        room.handle(t(1000), 2, settings, 0).unwrap();
        for n in 31..=300 {
            last = picture(&mut room, t(n as u64 * 33), n, [&narrow, &wide]);
        }
        assert_eq!(last, [Some(1), Some(2)]);
    }
}
