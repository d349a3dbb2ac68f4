//! Media routing (PROTOCOL.md §6.3–§6.5): a publisher's frame to its
//! track's subscribers' queues, key-frame requests on their behalf, and
//! congestion hints back to the publisher. Per-subscriber forwarding
//! decisions belong here.

use std::sync::Arc;
use std::time::Duration;

use convene_protocol::v1::{self, TrackInfo, TrackKind, server_message::Msg};
use convene_protocol::{ErrorCode, Layer, MediaFrame, MediaHeader, ProtocolError, Timestamp};

use crate::bus::{BusMessage, NodeId};
use crate::outbox::{DropReason, MediaClass, Outbox};

use super::forward::speakers::Activity;
use super::forward::{Demand, Layers, Prefs, Selector, Verdict};
use super::{Room, frame};

/// A subscriber's queue whose oldest media has waited this long is behind
/// its path: a selective track moves it one encoding down (§6.6.3).
pub(super) const BEHIND_AFTER: Duration = Duration::from_millis(400);

/// One subscriber of a track.
#[derive(Debug)]
pub(super) struct Subscription {
    /// The subscriber.
    pub(super) pid: u32,
    /// Its queue.
    pub(super) outbox: Arc<Outbox>,
    /// It negotiated `sfu.1`: it gets frames as the publisher sent them.
    pub(super) sfu: bool,
    /// Its loudest-N (§6.6.4), 0 for all: audio tracks only.
    pub(super) audio_n: u8,
    /// What it gets of a selective track (several encodings or layers).
    pub(super) sel: Selector,
}

impl Subscription {
    /// A new subscription of `pid` through `local`, with its preferences.
    pub(super) fn new(pid: u32, local: &super::Local, prefs: Prefs, audio_n: u32) -> Self {
        Subscription {
            pid,
            outbox: local.outbox.clone(),
            sfu: local.sfu,
            audio_n: audio_n.min(u8::MAX as u32) as u8,
            sel: Selector::new(local.sfu, prefs),
        }
    }
}

/// A node that told a publisher's node what its subscribers want of a track
/// says it again this often while frames of the track arrive (the bus may
/// lose a message; the publisher's node must not keep an encoding off that
/// someone here wants).
pub const DEMAND_REPEAT: Duration = Duration::from_secs(2);

/// Key-frame requests the server makes on subscribers' behalf, at most one per track per this long.
pub(super) const KEY_FRAME_REQUEST_INTERVAL: Duration = Duration::from_secs(1);

/// Subscribers' key-frame requests for one track reach its publisher at most
/// once per this interval (PROTOCOL.md §6.5); one arriving sooner waits for
/// the end of the interval, and is dropped if a key frame passes meanwhile.
/// Each key frame costs every subscriber a burst; one member asking in a
/// loop once had 240 a second forwarded.
pub const KEY_FRAME_COALESCE: Duration = Duration::from_millis(500);

/// Counts from routing one media frame, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RouteStats {
    /// Subscribers the frame was queued for.
    pub delivered: u32,
    /// Frames dropped from subscribers' queues, by reason: video delta, video key, audio.
    pub dropped: [u32; 3],
    /// Subscribers found too slow and disconnected.
    pub slow: u32,
}

/// Checks a frame's layer against what its track announced (§6.6.2).
fn check_layer(p: &Publication, layer: Option<Layer>, track: u32) -> Result<(), ProtocolError> {
    let Some(l) = layer else {
        return Ok(());
    };
    let why = if l.level.is_some() && !(p.audio && p.info.audio_levels) {
        "an audio level on a track that did not announce audio_levels"
    } else if !p.layers.has(l) {
        "an encoding or temporal layer the track did not announce"
    } else {
        return Ok(());
    };
    Err(ProtocolError::new(
        ErrorCode::MalformedFrame,
        format!("LAYERED frame on track {track}: {why}"),
    ))
}

impl Publication {
    /// A new publication of `info` at `now`.
    pub(super) fn new(now: Timestamp, info: TrackInfo, subscribers: Vec<Subscription>) -> Self {
        let layers = Layers::of(&info);
        let audio = info.kind == TrackKind::Audio as i32;
        Publication {
            key_mask: 0,
            audio,
            camera: info.kind == TrackKind::Video as i32,
            demand: (layers.count > 1).then(|| Demand::new(now, layers.count)),
            layers,
            info,
            subscribers,
            activity: Activity::default(),
            last_key_request: None,
            key_wanted: false,
            congestion: Congestion::default(),
            remote_demand: Vec::new(),
            demand_said: None,
        }
    }

    /// The encodings subscribers on other nodes want, for a track published
    /// here: what each node with members in the meeting said, everything for
    /// a node that has not said (§6.6.5).
    fn wanted_elsewhere(&self, nodes: &std::collections::BTreeMap<NodeId, u32>) -> u8 {
        nodes.keys().fold(0, |w, n| {
            w | self
                .remote_demand
                .iter()
                .find(|(m, _)| m == n)
                .map_or(u8::MAX, |&(_, mask)| mask)
        })
    }
}

/// One published track.
#[derive(Debug)]
pub(super) struct Publication {
    /// The encodings the publisher was asked for in key-frame requests
    /// still held back by the coalescing interval (bit per encoding).
    pub(super) key_mask: u8,
    /// As announced.
    pub(super) info: TrackInfo,
    /// Audio or video, for queue priorities.
    pub(super) audio: bool,
    /// Who receives it.
    pub(super) subscribers: Vec<Subscription>,
    /// Its encodings and temporal layers (§6.6.1).
    pub(super) layers: Layers,
    /// Video: which encodings anyone wants (§6.6.5), for several encodings.
    pub(super) demand: Option<Demand>,
    /// Audio: the last second's speech (§6.6.4).
    pub(super) activity: Activity,
    /// Camera video, the kind last-N applies to (§6.6.4).
    pub(super) camera: bool,
    /// When the server last asked for a key frame on subscribers' behalf.
    pub(super) last_key_request: Option<Timestamp>,
    /// A subscriber's request arrived within [`KEY_FRAME_COALESCE`] of the
    /// last one: it goes out when the interval is over, unless a key frame
    /// passes first.
    pub(super) key_wanted: bool,
    /// How fast the track arrives, and what the publisher was told about it.
    pub(super) congestion: Congestion,
    /// A track published here: the encodings each other node's subscribers
    /// want, as those nodes said (§6.6.5); at most one entry per node.
    pub(super) remote_demand: Vec<(NodeId, u8)>,
    /// A track published on another node: when this node last told that
    /// node what its subscribers want.
    pub(super) demand_said: Option<Timestamp>,
}

/// Congestion hints for one track (PROTOCOL.md §6.5): while subscribers'
/// queues drop its frames the publisher is asked, at most once a
/// [`HINT_INTERVAL`], for 70 % of the rate it sends; after [`RECOVERY`]
/// without drops, for its announced rate again.
#[derive(Debug, Default)]
pub(super) struct Congestion {
    /// Start of the current measuring window and the bytes seen in it.
    pub(super) window: Option<(Timestamp, u64)>,
    /// The rate measured over the last whole window, kbit/s.
    pub(super) kbps: u32,
    /// The last frame a subscriber's queue dropped.
    pub(super) last_drop: Option<Timestamp>,
    /// The last hint sent.
    pub(super) last_hint: Option<Timestamp>,
    /// Set while the publisher has been asked to go lower.
    pub(super) lowered: bool,
}

/// Shortest time between two congestion hints for one track.
pub const HINT_INTERVAL: Duration = Duration::from_secs(1);

/// Time without drops after which a lowered track is told it may go back up.
pub const RECOVERY: Duration = Duration::from_secs(5);

/// Lowest bitrate a hint asks for, kbit/s.
pub const MIN_HINT_KBPS: u32 = 64;

impl Congestion {
    /// Counts a frame of `bytes`; the rate is measured over windows of a second.
    fn measure(&mut self, now: Timestamp, bytes: usize) {
        let (since, total) = self.window.get_or_insert((now, 0));
        *total += bytes as u64;
        let elapsed = now.saturating_since(*since);
        if elapsed >= Duration::from_secs(1) {
            self.kbps = (*total * 8 / elapsed.as_millis().max(1) as u64) as u32;
            self.window = Some((now, 0));
        }
    }

    /// The hint to send now, if any: `dropped` says whether this frame was
    /// dropped for some subscriber; `announced` is the track's own target.
    fn hint(
        &mut self,
        now: Timestamp,
        dropped: bool,
        announced: u32,
    ) -> Option<(u32, v1::CongestionReason)> {
        let due = |t: Option<Timestamp>| t.is_none_or(|t| now.saturating_since(t) >= HINT_INTERVAL);
        if dropped {
            self.last_drop = Some(now);
            if self.kbps > 0 && due(self.last_hint) {
                self.last_hint = Some(now);
                self.lowered = true;
                return Some((
                    (self.kbps * 7 / 10).max(MIN_HINT_KBPS),
                    v1::CongestionReason::SubscriberLoss,
                ));
            }
        } else if self.lowered
            && self
                .last_drop
                .is_some_and(|t| now.saturating_since(t) >= RECOVERY)
        {
            self.lowered = false;
            self.last_hint = Some(now);
            let back = if announced > 0 {
                announced
            } else {
                (self.kbps * 13 / 10).max(MIN_HINT_KBPS)
            };
            return Some((back, v1::CongestionReason::Recovered));
        }
        None
    }
}

impl Room {
    /// A frame the room does not forward because the meeting requires
    /// encryption and it is not sealed, or its sender has not announced a
    /// key: the sender is told once (a client that did not know turns
    /// encryption on), and the rest are dropped quietly.
    fn held_for_encryption(
        &mut self,
        sender: u32,
        track: u32,
    ) -> Result<RouteStats, ProtocolError> {
        let Some(m) = self.members.get_mut(&sender) else {
            return Ok(RouteStats::default());
        };
        if std::mem::replace(&mut m.told_e2ee, true) {
            return Ok(RouteStats::default());
        }
        Err(ProtocolError::new(
            ErrorCode::E2eeRequired,
            format!(
                "this meeting requires end-to-end encryption: track {track}'s frames are not forwarded until you announce an identity key and seal every frame with SFrame (PROTOCOL.md §14)"
            ),
        ))
    }

    /// Routes a media frame of `publisher`, already stamped, to the track's
    /// subscribers (PROTOCOL.md §6.3, §6.4, §6.6).
    pub fn route(
        &mut self,
        now: Timestamp,
        publisher: u32,
        frame: &MediaFrame,
    ) -> Result<RouteStats, ProtocolError> {
        let h = MediaHeader {
            sender: publisher,
            ..*frame.header()
        };
        let mut stats = RouteStats::default();
        // Now and then, not per frame: each subscriber's bandwidth shared
        // among its subscriptions, so this frame's decisions see it.
        if self.budget_due(now) {
            self.allocate_budgets(now);
        }
        let remote_nodes = self.members.len() > self.local;
        let plain = self.e2ee_required
            && !(self.members.get(&h.sender).is_some_and(|m| m.announced)
                && convene_protocol::e2ee::looks_sealed_by(&frame.payload(), h.sender));
        let Some((local_publisher, p)) = self
            .members
            .get_mut(&h.sender)
            .and_then(|m| Some((m.is_local(), m.tracks.get_mut(&h.track_id)?)))
        else {
            return Err(ProtocolError::new(
                ErrorCode::UnknownTrack,
                format!("you publish no track {}", h.track_id),
            ));
        };
        if p.info.muted {
            return Ok(stats);
        }
        if plain {
            return self.held_for_encryption(h.sender, h.track_id);
        }
        // Audio goes ahead of everything in every subscriber's queue: a frame
        // no audio encoder makes is refused, so an audio grant cannot carry video.
        let max_audio = convene_protocol::limits::max::MAX_AUDIO_FRAME_BYTES as usize;
        if p.audio && frame.as_wire().len() > max_audio {
            return Err(ProtocolError::new(
                ErrorCode::FrameTooLarge,
                format!(
                    "a frame of {} bytes on audio track {}: audio frames are at most {max_audio}",
                    frame.as_wire().len(),
                    h.track_id
                ),
            ));
        }
        let layer = frame.layer().unwrap_or_default();
        check_layer(p, frame.layer(), h.track_id)?;
        // A subscriber's request held back by the coalescing interval: a key
        // frame answers it; once the interval is over, it goes out.
        let mut deferred_key = false;
        if h.key {
            p.key_mask &= !(1 << layer.encoding);
            p.key_wanted &= p.key_mask != 0;
        } else if p.key_wanted
            && p.last_key_request
                .is_none_or(|t| now.saturating_since(t) >= KEY_FRAME_COALESCE)
        {
            deferred_key = true;
        }
        let class = if p.audio {
            MediaClass::Audio
        } else if h.key {
            MediaClass::Key
        } else {
            MediaClass::Delta
        };
        // Loudest-N: this frame's rank among the room's audio right now.
        let rank = if p.audio {
            p.activity.observe(now, layer.level);
            self.loudest
                .observe(now, (h.sender, h.track_id), p.activity.loudness)
        } else {
            0
        };
        let selective = p.layers.selective();
        let (mut need_key, mut key_mask) = (false, 0u8);
        let (mut congested, mut wanted) = (false, 0u8);
        for sub in p.subscribers.iter_mut() {
            if p.audio && sub.audio_n > 0 && rank >= sub.audio_n {
                continue;
            }
            if selective {
                let verdict = sub.sel.decide(
                    now,
                    &p.layers,
                    layer,
                    h.key,
                    h.sequence,
                    h.capture_timestamp_us,
                );
                if let Some(t) = sub.sel.wanted() {
                    wanted |= 1 << t;
                }
                match verdict {
                    Verdict::Forward => {}
                    Verdict::Drop => continue,
                    Verdict::NeedKey(e) => {
                        key_mask |= 1 << e;
                        continue;
                    }
                }
            } else if sub.sel.last_n_out || sub.sel.prefs.paused {
                continue;
            }
            let path_congested = sub.outbox.is_congested();
            let bytes = if sub.sfu {
                frame.as_wire()
            } else {
                frame.as_bytes()
            };
            let out = sub
                .outbox
                .push_media(now, class, (h.sender, h.track_id), bytes.clone());
            stats.delivered += out.queued as u32;
            for d in &out.dropped {
                stats.dropped[match d {
                    DropReason::VideoDelta => 0,
                    DropReason::VideoKey => 1,
                    DropReason::Audio => 2,
                }] += 1;
            }
            let behind = !out.dropped.is_empty() || path_congested || out.waited >= BEHIND_AFTER;
            if selective {
                // The path does not carry this encoding: a lower one for
                // this subscriber instead of a lower picture for everyone.
                // The publisher is not hinted: the lowest encoding is the
                // floor, and the others are what subscribers choose among.
                if behind {
                    sub.sel.congested(now);
                }
            } else {
                congested |= path_congested || !out.dropped.is_empty();
            }
            need_key |= out.needs_key_frame.is_some();
            stats.slow += out.slow as u32;
        }
        // Dynacast (§6.6.5): what anyone here wants, and for a track
        // published here what the other nodes said their subscribers want;
        // a track published elsewhere tells its node what is wanted here.
        let wanted = wanted | u8::from(!p.subscribers.is_empty());
        let elsewhere = if local_publisher && remote_nodes {
            p.wanted_elsewhere(&self.nodes)
        } else {
            0
        };
        let demand = match &mut p.demand {
            Some(d) => d.update_with(now, wanted, elsewhere).or_else(|| {
                let repeat = !local_publisher
                    && p.demand_said
                        .is_some_and(|t| now.saturating_since(t) >= DEMAND_REPEAT);
                repeat.then(|| d.mask())
            }),
            None => None,
        };
        if let Some(mask) = demand {
            self.send_demand(now, h.sender, h.track_id, mask);
        }
        if deferred_key {
            self.request_key_frame(now, h.sender, h.track_id, 0, true, key_mask);
        } else if need_key || key_mask != 0 {
            self.request_key_frame(now, h.sender, h.track_id, 0, key_mask != 0, key_mask);
        }
        // A frame dropped for a subscriber, or one whose path is congested.
        self.congestion(now, h.sender, h.track_id, congested, frame.as_wire().len());
        if class == MediaClass::Audio && self.board.due(now) {
            self.evaluate_speakers(now);
        }
        // One copy per frame for the other nodes, only while someone is there.
        if remote_nodes && self.members.get(&h.sender).is_some_and(|m| m.is_local()) {
            self.bus.publish(BusMessage::Media {
                meeting: self.id.clone(),
                frame: frame.as_wire().clone(),
            });
        }
        Ok(stats)
    }

    /// Re-evaluates which encodings of `publisher`'s `track` anyone wants,
    /// outside the frame path (§6.6.5): after a subscription or its
    /// preferences change. A publisher whose encodings are all out of demand
    /// (nobody subscribed) sends no frame that would bring them back.
    pub(super) fn refresh_demand(&mut self, now: Timestamp, publisher: u32, track: u32) {
        let Some((local_publisher, p)) = self
            .members
            .get_mut(&publisher)
            .and_then(|m| Some((m.is_local(), m.tracks.get_mut(&track)?)))
        else {
            return;
        };
        let wanted = p
            .subscribers
            .iter()
            .filter_map(|s| s.sel.target(&p.layers))
            .fold(u8::from(!p.subscribers.is_empty()), |w, t| w | (1 << t));
        let elsewhere = if local_publisher {
            p.wanted_elsewhere(&self.nodes)
        } else {
            0
        };
        let Some(d) = p.demand.as_mut() else {
            return;
        };
        if let Some(mask) = d.update_with(now, wanted, elsewhere) {
            self.send_demand(now, publisher, track, mask);
        }
    }

    /// What another node said its subscribers want of a track published
    /// here (§6.6.5); a node without members in the meeting is not heard.
    pub(super) fn demand_from(
        &mut self,
        now: Timestamp,
        node: NodeId,
        publisher: u32,
        track: u32,
        mask: u8,
    ) {
        if !self.nodes.contains_key(&node) {
            return;
        }
        let Some(p) = self
            .members
            .get_mut(&publisher)
            .filter(|m| m.is_local())
            .and_then(|m| m.tracks.get_mut(&track))
        else {
            return;
        };
        match p.remote_demand.iter_mut().find(|(n, _)| *n == node) {
            Some(e) => e.1 = mask,
            None => p.remote_demand.push((node, mask)),
        }
        self.refresh_demand(now, publisher, track);
    }

    /// Tells a publisher which encodings anyone wants (it starts an encoding
    /// that comes back with a key frame, §6.6.5): directly when it is
    /// connected here, else through its node, which adds what the other
    /// nodes want.
    fn send_demand(&mut self, now: Timestamp, publisher: u32, track: u32, mask: u8) {
        let Some(m) = self.members.get_mut(&publisher) else {
            return;
        };
        if !m.is_local() {
            let node = m.node;
            if let Some(p) = m.tracks.get_mut(&track) {
                p.demand_said = Some(now);
            }
            self.bus.send_to(
                node,
                BusMessage::Demand {
                    meeting: self.id.clone(),
                    node: self.bus.node(),
                    publisher,
                    track,
                    encodings: mask,
                },
            );
            return;
        }
        let Some(local) = m.local.as_ref().filter(|l| l.sfu) else {
            return;
        };
        local
            .outbox
            .push_control(frame(Msg::EncodingDemand(v1::EncodingDemand {
                track_id: track,
                active_mask: mask as u32,
            })));
    }

    /// Finds who speaks, announces it to those who negotiated `sfu.1`, and
    /// moves last-N when the order of recent speakers changed (§6.6.4).
    pub(super) fn evaluate_speakers(&mut self, now: Timestamp) {
        let candidates: Vec<(u32, u32, u8)> = self
            .members
            .iter()
            .filter_map(|(pid, m)| {
                m.tracks
                    .values()
                    .filter(|p| p.audio && !p.info.muted)
                    .map(|p| (p.activity.score(now), p.activity.loudness_at(now)))
                    .max()
                    .map(|(score, loud)| (*pid, score, loud))
            })
            .collect();
        let mut moved = false;
        let change = self.board.evaluate(now, &candidates, &mut moved);
        if moved {
            self.apply_last_n();
            // Who is shown, and who comes first, changed for everyone.
            self.budget_stale.all();
        }
        let Some(change) = change else {
            return;
        };
        let msg = frame(Msg::ActiveSpeakers(v1::ActiveSpeakers {
            speakers: change
                .speakers
                .iter()
                .map(|&(pid, loud)| v1::Speaker {
                    participant_id: pid,
                    level: loud as u32,
                    dominant: change.dominant == Some(pid),
                })
                .collect(),
        }));
        for m in self.members.values() {
            if let Some(l) = m.local.as_ref().filter(|l| l.sfu) {
                l.outbox.push_control(msg.clone());
            }
        }
    }

    /// Marks each camera subscription of a member with a last-N in or out
    /// of it: the `video_n` most recent speakers (those speaking now first,
    /// the dominant one ahead), then by participant id.
    pub(super) fn apply_last_n(&mut self) {
        use std::collections::BTreeMap;
        let limits: BTreeMap<u32, usize> = self
            .members
            .iter()
            .filter(|(_, m)| m.local.as_ref().is_some_and(|l| l.sfu))
            .map(|(pid, m)| (*pid, m.settings.video_n as usize))
            .collect();
        // Every camera publisher's place: recent speakers first, then by id.
        let cameras = |m: &super::Member| m.tracks.values().any(|p| p.camera);
        let mut rank: BTreeMap<u32, usize> = BTreeMap::new();
        let recent = self.board.recent().iter().copied();
        let by_id = self.members.keys().copied();
        for pid in recent.chain(by_id) {
            if !rank.contains_key(&pid) && self.members.get(&pid).is_some_and(cameras) {
                rank.insert(pid, rank.len());
            }
        }
        // A subscriber sees the first `n` of that order, itself aside: one
        // place fewer for those after it.
        for (pid, m) in self.members.iter_mut() {
            let Some(&at) = rank.get(pid) else {
                continue;
            };
            for p in m.tracks.values_mut().filter(|p| p.camera) {
                for s in p.subscribers.iter_mut() {
                    let Some(&n) = limits.get(&s.pid) else {
                        continue;
                    };
                    let ahead = at - rank.get(&s.pid).is_some_and(|&r| r < at) as usize;
                    s.sel.last_n_out = n > 0 && ahead >= n;
                }
            }
        }
    }

    /// Measures a track's rate and sends its publisher, if connected here,
    /// the congestion hint due (a publisher elsewhere is hinted by its node).
    pub(super) fn congestion(
        &mut self,
        now: Timestamp,
        publisher: u32,
        track: u32,
        dropped: bool,
        bytes: usize,
    ) {
        let Some(m) = self.members.get_mut(&publisher) else {
            return;
        };
        let Some(outbox) = m.outbox().cloned() else {
            return;
        };
        // Audio is small and already first in every queue: lowering it helps
        // nobody, so only video and screen tracks are hinted.
        let Some(p) = m.tracks.get_mut(&track).filter(|p| !p.audio) else {
            return;
        };
        p.congestion.measure(now, bytes);
        if let Some((kbps, reason)) = p.congestion.hint(now, dropped, p.info.target_bitrate_kbps) {
            outbox.push_control(frame(Msg::CongestionHint(v1::CongestionHint {
                track_id: track,
                target_bitrate_kbps: kbps,
                reason: reason as i32,
                ..Default::default()
            })));
        }
    }

    /// Asks a publisher for a key frame, from `requester` (0: the server), at
    /// most once per interval unless `force`.
    pub(super) fn request_key_frame(
        &mut self,
        now: Timestamp,
        publisher: u32,
        track: u32,
        requester: u32,
        force: bool,
        mask: u8,
    ) {
        let Some(m) = self.members.get_mut(&publisher) else {
            return;
        };
        let Some(p) = m.tracks.get_mut(&track) else {
            return;
        };
        // `force`: a subscriber asked, or a new subscriber needs a picture
        // to start from: coalesced within KEY_FRAME_COALESCE and sent when
        // it is over. Otherwise a queue dropped frames: at most one a
        // second, and never deferred (more drops will ask again).
        let interval = if force {
            KEY_FRAME_COALESCE
        } else {
            KEY_FRAME_REQUEST_INTERVAL
        };
        if p.last_key_request
            .is_some_and(|t| now.saturating_since(t) < interval)
        {
            p.key_wanted |= force;
            if force {
                p.key_mask |= if mask == 0 { 0b111 } else { mask };
            }
            return;
        }
        // Encodings asked for meanwhile go out with this one (0: all).
        let all = (1u8 << p.layers.count) - 1;
        let asked = if mask == 0 { all } else { mask | p.key_mask };
        let encoding_mask = if asked & all == all { 0 } else { asked & all };
        p.last_key_request = Some(now);
        p.key_wanted = false;
        p.key_mask = 0;
        let sfu = m.local.as_ref().is_some_and(|l| l.sfu);
        match m.outbox() {
            Some(o) => {
                o.push_control(frame(Msg::KeyFrameRequest(v1::KeyFrameRequest {
                    participant_id: requester,
                    track_id: track,
                    encoding_mask: if sfu { encoding_mask as u32 } else { 0 },
                })));
            }
            // The publisher is on another node: ask there.
            None => self.bus.send_to(
                m.node,
                BusMessage::KeyFrameRequest {
                    meeting: self.id.clone(),
                    publisher,
                    track,
                    requester,
                    force,
                    encodings: encoding_mask,
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::ops::Range;
    use std::sync::Arc;

    use bytes::Bytes;
    use convene_protocol::v1::{
        ReceiverSettings, ServerMessage, TrackInfo, TrackKind, server_message::Msg as S,
    };
    use convene_protocol::{
        AudioLevel, Layer, MediaFrame, MediaHeader, RoomRequest, frame::FRAME_CONTROL,
    };
    use prost::Message;

    use crate::outbox::Outbox;
    use crate::room::test_util::{join_sfu, t};
    use crate::room::{Room, RoomLimits};

    const AUDIO: u32 = 1;
    const CAMERA: u32 = 2;
    const VIEWER: u32 = 13;

    /// Twelve members (1–12) who each publish a microphone with levels and
    /// a camera, and a viewer (13) who receives the camera of the last 4.
    fn meeting() -> (Room, Vec<Arc<Outbox>>) {
        let mut room = Room::new("last-n", RoomLimits::default());
        let outs: Vec<_> = (1..=VIEWER)
            .map(|pid| join_sfu(&mut room, pid, pid == VIEWER))
            .collect();
        for pid in 1..VIEWER {
            let mic = TrackInfo {
                track_id: AUDIO,
                kind: TrackKind::Audio as i32,
                codec: "opus".into(),
                audio_levels: true,
                ..Default::default()
            };
            let camera = TrackInfo {
                track_id: CAMERA,
                kind: TrackKind::Video as i32,
                codec: "vp8".into(),
                width: 640,
                height: 360,
                frame_rate: 25,
                ..Default::default()
            };
            room.handle(t(0), pid, RoomRequest::Publish(mic), 0)
                .unwrap();
            room.handle(t(0), pid, RoomRequest::Publish(camera), 0)
                .unwrap();
        }
        let settings = RoomRequest::ReceiverSettings(ReceiverSettings {
            video_n: 4,
            ..Default::default()
        });
        room.handle(t(0), VIEWER, settings, 0).unwrap();
        (room, outs)
    }

    /// 40 ms of the meeting from `ms`: each member in `voices` speaks at its
    /// level (−dBov), the others send nothing; every camera sends a picture,
    /// a key picture when its publisher was asked for one (or every 50th).
    /// Returns the publishers whose video the viewer received.
    fn step(
        room: &mut Room,
        outs: &[Arc<Outbox>],
        ms: u64,
        picture: u32,
        voices: &[(u32, u8)],
    ) -> BTreeSet<u32> {
        for half in [0, 20] {
            for &(pid, dbov) in voices {
                let h = MediaHeader {
                    key: true,
                    sender: 0,
                    track_id: AUDIO,
                    sequence: picture * 2 + half as u32 / 20,
                    capture_timestamp_us: (ms + half) * 1000,
                };
                let layer = Layer {
                    level: Some(AudioLevel { voice: true, dbov }),
                    ..Layer::default()
                };
                let f = MediaFrame::build_layered(layer, &h, None, &[0; 40]).stamp_sender(pid);
                room.route(t(ms + half), pid, &f).unwrap();
            }
        }
        for pid in 1..VIEWER {
            let mut got = Vec::new();
            outs[pid as usize - 1].drain(&mut got, usize::MAX);
            let asked = got.iter().any(|b| {
                b[0] == FRAME_CONTROL
                    && matches!(
                        ServerMessage::decode(b.slice(1..)).map(|m| m.msg),
                        Ok(Some(S::KeyFrameRequest(_)))
                    )
            });
            let h = MediaHeader {
                key: asked || picture.is_multiple_of(50),
                sender: 0,
                track_id: CAMERA,
                sequence: picture,
                capture_timestamp_us: ms * 1000,
            };
            // The connection stamps the sender before the room sees a frame.
            let f = MediaFrame::build(&h, None, &[pid as u8; 200]).stamp_sender(pid);
            room.route(t(ms + 30), pid, &f).unwrap();
        }
        let mut got: Vec<Bytes> = Vec::new();
        outs[VIEWER as usize - 1].drain(&mut got, usize::MAX);
        got.iter()
            .filter_map(|b| MediaFrame::parse_any(b.clone()).ok())
            .filter(|m| m.header().track_id == CAMERA)
            .map(|m| m.header().sender)
            .collect()
    }

    #[test]
    fn last_n_shows_the_four_loudest_of_twelve_and_follows_a_new_speaker_within_a_second() {
        let (mut room, outs) = meeting();
        // Everyone speaks, each at another level: 12 the loudest (−4 dBov),
        // 1 the quietest (−48).
        let mut voices: Vec<(u32, u8)> = (1..VIEWER).map(|p| (p, 52 - 4 * p as u8)).collect();
        let mut ms = 0;
        let mut picture = 0;
        let mut shown = BTreeSet::new();
        for _ in 0..75 {
            shown = step(&mut room, &outs, ms, picture, &voices);
            ms += 40;
            picture += 1;
        }
        assert_eq!(
            shown,
            BTreeSet::from([9, 10, 11, 12]),
            "the four loudest: {:?}",
            room.board
        );
        // A second and a half with only those four's video, nobody else's.
        for _ in 0..38 {
            let got = step(&mut room, &outs, ms, picture, &voices);
            assert!(got.is_subset(&BTreeSet::from([9, 10, 11, 12])), "{got:?}");
            ms += 40;
            picture += 1;
        }
        // 12 falls silent and 1 speaks up loudest of all: within a second 1
        // is shown and 12 is not.
        voices.retain(|v| v.0 != 12);
        voices[0].1 = 2;
        let changed = ms;
        let mut followed = None;
        for _ in 0..100 {
            let got = step(&mut room, &outs, ms, picture, &voices);
            ms += 40;
            picture += 1;
            if got == BTreeSet::from([1, 9, 10, 11]) {
                followed = Some(ms - changed);
                break;
            }
        }
        let followed = followed.expect("last-N never showed the new speaker");
        assert!(followed <= 1000, "followed after {followed} ms");
        // And it holds.
        for _ in 0..50 {
            let got = step(&mut room, &outs, ms, picture, &voices);
            assert!(got.is_subset(&BTreeSet::from([1, 9, 10, 11])), "{got:?}");
            ms += 40;
            picture += 1;
        }
    }

    /// Routes the pictures numbered `numbers` (one every 40 ms, the first a
    /// key picture) of each camera of `publishers`; returns the publishers
    /// whose video `viewer` received.
    fn pictures(
        room: &mut Room,
        viewer: &Outbox,
        publishers: &[u32],
        numbers: Range<u32>,
    ) -> BTreeSet<u32> {
        let first = numbers.start;
        let mut got = BTreeSet::new();
        for picture in numbers {
            for &pid in publishers {
                let h = MediaHeader {
                    key: picture == first,
                    sender: 0,
                    track_id: CAMERA,
                    sequence: picture,
                    capture_timestamp_us: u64::from(picture) * 40_000,
                };
                let f = MediaFrame::build(&h, None, &[1; 50]).stamp_sender(pid);
                room.route(t(u64::from(picture) * 40), pid, &f).unwrap();
            }
            let mut frames: Vec<Bytes> = Vec::new();
            viewer.drain(&mut frames, usize::MAX);
            got.extend(
                frames
                    .iter()
                    .filter_map(|b| MediaFrame::parse_any(b.clone()).ok())
                    .map(|m| m.header().sender),
            );
        }
        got
    }

    #[test]
    fn a_camera_published_after_the_settings_has_its_place_in_last_n_at_once() {
        let mut room = Room::new("late", RoomLimits::default());
        let outs: Vec<_> = (1..=4)
            .map(|pid| join_sfu(&mut room, pid, pid == 4))
            .collect();
        // The viewer (4) wants one camera before anyone publishes one.
        let one = RoomRequest::ReceiverSettings(ReceiverSettings {
            video_n: 1,
            ..Default::default()
        });
        room.handle(t(0), 4, one, 0).unwrap();
        for pid in 1..=3 {
            let camera = TrackInfo {
                track_id: CAMERA,
                kind: TrackKind::Video as i32,
                codec: "vp8".into(),
                ..Default::default()
            };
            room.handle(t(0), pid, RoomRequest::Publish(camera), 0)
                .unwrap();
        }
        // Nobody has spoken: the first camera by participant id.
        let got = pictures(&mut room, &outs[3], &[1, 2, 3], 0..10);
        assert_eq!(got, BTreeSet::from([1]));
        // It goes: the next takes its place.
        room.handle(
            t(500),
            1,
            RoomRequest::Unpublish(convene_protocol::v1::Unpublish { track_id: CAMERA }),
            0,
        )
        .unwrap();
        let got = pictures(&mut room, &outs[3], &[2, 3], 10..20);
        assert_eq!(got, BTreeSet::from([2]));
    }
}
