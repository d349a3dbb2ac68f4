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
        // Audio tracks counted per subscriber, for its loudest-N.
        let mut audio_seen: BTreeMap<u32, u8> = BTreeMap::new();
        for (publisher, m) in &self.members {
            for p in m.tracks.values() {
                let priority = priority(p, *publisher, &recent);
                for s in &p.subscribers {
                    let Some(list) = items.get_mut(&s.pid) else {
                        continue;
                    };
                    let mut it = item(p, s, priority);
                    if p.audio && s.audio_n > 0 {
                        let seen = audio_seen.entry(s.pid).or_default();
                        if *seen >= s.audio_n {
                            it.wanted = None;
                        }
                        *seen = seen.saturating_add(1);
                    }
                    list.push(it);
                }
            }
        }
        let mut caps: BTreeMap<u32, std::vec::IntoIter<u8>> = BTreeMap::new();
        for (pid, list) in &items {
            if let Some(m) = self.members.get_mut(pid) {
                let c = m.budget.allocate(now, budgets[pid], list);
                caps.insert(*pid, c.into_iter());
            }
        }
        // The same walk in the same order: each subscription takes its cap.
        for m in self.members.values_mut() {
            for p in m.tracks.values_mut() {
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

/// One subscription as the budget sees it.
fn item(p: &Publication, s: &Subscription, priority: Priority) -> Item {
    if p.audio {
        let kbps = match p.info.target_bitrate_kbps {
            0 => DEFAULT_AUDIO_KBPS,
            k => k,
        };
        return Item {
            priority,
            kbps: [kbps, 0, 0],
            count: 1,
            wanted: (!p.info.muted).then_some(0),
            cap: s.sel.budget_cap,
        };
    }
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
    use convene_protocol::v1::{Encoding, Participant, ReceiverSettings, TrackInfo, TrackKind};
    use convene_protocol::{Layer, MediaFrame, MediaHeader, RoomRequest, Timestamp};

    use crate::mailbox::Mailbox;
    use crate::outbox::{Outbox, OutboxLimits, Wake};
    use crate::room::forward::budget::RAISE_HOLD;
    use crate::room::{Local, Room, RoomLimits};

    struct NoWake;
    impl Wake for NoWake {
        fn wake(&self) {}
    }

    fn t(ms: u64) -> Timestamp {
        Timestamp(1_000_000_000 + ms * 1000)
    }

    /// A room where member 1 publishes a camera as 100, 300 and 900 kbit/s
    /// encodings and members 2 and 3 (sfu.1) receive it; their queues.
    fn room() -> (Room, Arc<Outbox>, Arc<Outbox>) {
        let mut room = Room::new("budget", RoomLimits::default());
        let mut outs = Vec::new();
        for pid in 1..=3u32 {
            let o = Arc::new(Outbox::new(OutboxLimits::default(), Box::new(NoWake)));
            let local = Local {
                outbox: o.clone(),
                mailbox: Arc::new(Mailbox::new(Box::new(NoWake))),
                sfu: true,
            };
            let p = Participant {
                participant_id: pid,
                display_name: format!("p{pid}"),
                ..Default::default()
            };
            room.join(t(0), p, pid != 1, local).unwrap();
            outs.push(o);
        }
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
}
