//! The room's side of a cluster: replicating members, tracks and requests
//! to and from the other nodes (PROTOCOL.md §10), and holding Joins while a
//! room just opened here learns who is in the meeting elsewhere.

use std::collections::BTreeMap;
use std::time::Duration;

use convene_protocol::v1::{self, Participant, TrackInfo, TrackKind, server_message::Msg};
use convene_protocol::{MediaFrame, RoomRequest, Timestamp};

use crate::bus::{BusMessage, NodeId, PARTICIPANT_BITS, RosterEntry};
use crate::mailbox::Admission;

use super::{JoinOutcome, Member, OPERATOR, Room, Waiter, frame};

/// Longest a Join waits while a room just opened on one node of a cluster
/// hears from the other nodes who is in the meeting.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(1);

/// A room learning who is in its meeting on the other nodes.
#[derive(Debug)]
pub(super) struct Syncing {
    /// Nodes that have not answered yet.
    pub(super) waiting_for: std::collections::HashSet<NodeId>,
    /// When the room opened.
    pub(super) since: Timestamp,
    /// Joins held until then, in arrival order.
    pub(super) held: Vec<Waiter>,
}

impl Room {
    /// Holds Joins until every node in `peers` has said who it has in the
    /// meeting (or [`SYNC_TIMEOUT`] passed), so a newcomer's `Joined` lists
    /// everyone, as on a single node.
    pub fn start_sync(&mut self, now: Timestamp, peers: Vec<NodeId>) {
        if !peers.is_empty() {
            self.syncing = Some(Syncing {
                waiting_for: peers.into_iter().collect(),
                since: now,
                held: Vec::new(),
            });
        }
    }

    /// True while Joins are held for the other nodes' answers.
    pub fn is_syncing(&self) -> bool {
        self.syncing.is_some()
    }

    /// `node` answered (or is gone): once all have, the held Joins go through.
    pub(super) fn synced_from(&mut self, now: Timestamp, node: NodeId) {
        if let Some(s) = &mut self.syncing {
            s.waiting_for.remove(&node);
            if s.waiting_for.is_empty() {
                self.finish_sync(now);
            }
        }
    }

    /// Lets the held Joins through if the other nodes took too long.
    pub fn finish_sync_if_due(&mut self, now: Timestamp) {
        if self
            .syncing
            .as_ref()
            .is_some_and(|s| now.saturating_since(s.since) >= SYNC_TIMEOUT)
        {
            self.finish_sync(now);
        }
    }

    /// Answers every held Join as it would have been answered on arrival.
    pub(super) fn finish_sync(&mut self, now: Timestamp) {
        let Some(s) = self.syncing.take() else {
            return;
        };
        for w in s.held {
            let pid = w.info.participant_id;
            let local = w.local.clone();
            match self.enter(now, w.info, w.subscribe_all, w.local) {
                Ok(JoinOutcome::Joined(joined)) => {
                    // Joined goes first into the newcomer's queue.
                    local.admit(frame(Msg::Joined(joined)));
                    self.tell_waiters_to(pid);
                }
                Ok(JoinOutcome::Held) => local.mailbox.settle(Admission::Held),
                Ok(JoinOutcome::Syncing) => {}
                Err(e) => local.mailbox.settle(Admission::Refused(e)),
            }
        }
    }

    /// Adds a participant connected to another node.
    pub(super) fn join_remote(
        &mut self,
        now: Timestamp,
        node: NodeId,
        mut info: Participant,
        subscribe_all: bool,
    ) {
        let pid = info.participant_id;
        self.remote_waiting.remove(&pid);
        if self.members.contains_key(&pid) {
            return;
        }
        let tracks = std::mem::take(&mut info.tracks);
        *self.nodes.entry(node).or_default() += 1;
        // A snapshot may carry a raised hand: kept, but told only to those
        // that negotiated reactions.1 (§5.9).
        self.broadcast(
            Msg::ParticipantJoined(v1::ParticipantJoined {
                participant: Some(v1::Participant {
                    hand_raised: false,
                    ..info.clone()
                }),
            }),
            None,
        );
        if info.hand_raised {
            self.tell_reactions(Msg::HandRaised(v1::HandRaised {
                participant_id: pid,
                raised: true,
            }));
        }
        self.members.insert(
            pid,
            Member {
                info,
                local: None,
                node,
                subscribe_all,
                tracks: BTreeMap::new(),
                settings: Default::default(),
                budget: Default::default(),
                announced: false,
                told_e2ee: false,
                entered: Timestamp::default(),
            },
        );
        // A snapshot carries the tracks already published: as if published
        // now, and (unlike a fresh publication, which starts with a key
        // frame) our subscribers need a key frame to start from.
        let watching = self.someone_watches_everything();
        for t in tracks {
            self.publish_remote_track(now, pid, t, watching);
        }
    }

    /// True when a participant of this node receives every track.
    pub(super) fn someone_watches_everything(&self) -> bool {
        self.members
            .values()
            .any(|m| m.is_local() && m.subscribe_all)
    }

    /// Adds a track a remote participant already publishes (from a snapshot
    /// or a roster). Unlike a fresh publication, which starts with a key
    /// frame, our subscribers need one asked for when `watching`.
    pub(super) fn publish_remote_track(
        &mut self,
        now: Timestamp,
        pid: u32,
        t: TrackInfo,
        watching: bool,
    ) {
        let (tid, video) = (t.track_id, t.kind != TrackKind::Audio as i32);
        if self
            .apply_request(now, pid, RoomRequest::Publish(t), 0)
            .is_ok()
            && video
            && watching
        {
            self.request_key_frame(now, pid, tid, 0, true, 0);
        }
    }

    /// Removes the participants of `node` that `keep` does not keep.
    pub(super) fn remove_remote_members(&mut self, node: NodeId, keep: impl Fn(u32) -> bool) {
        let gone: Vec<u32> = self
            .members
            .iter()
            .filter(|(pid, m)| !m.is_local() && m.node == node && !keep(**pid))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            self.remove_member(pid);
        }
    }

    /// Everyone this node has in the room, for the other nodes.
    pub(super) fn roster(&self) -> BusMessage {
        BusMessage::Roster {
            meeting: self.id.clone(),
            node: self.bus.node(),
            locked: self.locked,
            waiting: self.waiting.values().map(|w| w.info.clone()).collect(),
            members: self
                .members
                .values()
                .filter(|m| m.is_local())
                .map(|m| RosterEntry {
                    participant: m.participant(),
                    subscribe_all: m.subscribe_all,
                })
                .collect(),
        }
    }

    /// Tells the other nodes who is here and asks who is there (after the
    /// bus was down, when messages may have been lost both ways).
    pub fn resync(&self) {
        self.bus.publish(self.roster());
        self.bus.publish(BusMessage::SyncRequest {
            meeting: self.id.clone(),
            node: self.bus.node(),
        });
    }

    /// Removes every participant of `node` (it stopped answering).
    pub fn drop_node(&mut self, node: NodeId) {
        self.remote_waiting.retain(|_, (n, _)| *n != node);
        self.remove_remote_members(node, |_| false);
    }

    /// Makes our copy of `node`'s participants what its roster says.
    pub(super) fn apply_roster(&mut self, now: Timestamp, node: NodeId, members: Vec<RosterEntry>) {
        let listed: std::collections::HashSet<u32> = members
            .iter()
            .map(|e| e.participant.participant_id)
            .collect();
        self.remove_remote_members(node, |pid| listed.contains(&pid));
        for e in members {
            let pid = e.participant.participant_id;
            // A participant id's top bits name its node: a roster speaks
            // only for its own node's participants.
            if pid >> PARTICIPANT_BITS != u32::from(node) {
                continue;
            }
            match self.members.get(&pid) {
                None => self.join_remote(now, node, e.participant, e.subscribe_all),
                Some(m) if !m.is_local() => self.sync_tracks(now, pid, e.participant.tracks),
                Some(_) => {}
            }
        }
    }

    /// Brings a remote participant's tracks to `tracks`.
    pub(super) fn sync_tracks(&mut self, now: Timestamp, pid: u32, tracks: Vec<TrackInfo>) {
        let Some(m) = self.members.get(&pid) else {
            return;
        };
        let have: Vec<(u32, bool)> = m.tracks.iter().map(|(t, p)| (*t, p.info.muted)).collect();
        for (tid, _) in &have {
            if !tracks.iter().any(|t| t.track_id == *tid) {
                let _ = self.apply_request(
                    now,
                    pid,
                    RoomRequest::Unpublish(v1::Unpublish { track_id: *tid }),
                    0,
                );
            }
        }
        let watching = self.someone_watches_everything();
        for t in tracks {
            match have.iter().find(|(tid, _)| *tid == t.track_id) {
                Some((_, muted)) if *muted != t.muted => {
                    let _ = self.apply_request(
                        now,
                        pid,
                        RoomRequest::SetTrackMuted(v1::SetTrackMuted {
                            track_id: t.track_id,
                            muted: t.muted,
                        }),
                        0,
                    );
                }
                Some(_) => {}
                None => self.publish_remote_track(now, pid, t, watching),
            }
        }
    }

    /// Delivers a media frame another node received from its publisher.
    pub(super) fn route_remote(&mut self, now: Timestamp, frame: &MediaFrame) {
        let h = *frame.header();
        if self.members.get(&h.sender).is_none_or(|m| m.is_local()) {
            return; // unknown, or one of ours echoed back
        }
        if let Ok(stats) = self.route(now, h.sender, frame) {
            let _ = stats;
        }
    }

    /// Applies what another node says.
    pub(super) fn apply_bus(&mut self, now: Timestamp, msg: BusMessage) {
        match msg {
            BusMessage::Join {
                node,
                participant,
                subscribe_all,
                ..
            } => self.join_remote(now, node, participant, subscribe_all),
            BusMessage::Leave { participant_id, .. } => {
                if self
                    .members
                    .get(&participant_id)
                    .is_some_and(|m| !m.is_local())
                {
                    self.remove_member(participant_id);
                }
            }
            BusMessage::Request {
                participant_id,
                request,
                server_time_us,
                ..
            } => {
                if participant_id == OPERATOR
                    || self
                        .members
                        .get(&participant_id)
                        .is_some_and(|m| !m.is_local())
                {
                    // Accepted on its own node already; here it only updates our copy.
                    let _ = self.apply_request(now, participant_id, request, server_time_us);
                }
            }
            BusMessage::Media { frame, .. } => {
                if let Ok(f) = MediaFrame::parse_any(frame) {
                    self.route_remote(now, &f);
                }
            }
            BusMessage::KeyFrameRequest {
                publisher,
                track,
                requester,
                force,
                encodings,
                ..
            } => {
                if self.members.get(&publisher).is_some_and(|m| m.is_local()) {
                    self.request_key_frame(now, publisher, track, requester, force, encodings);
                }
            }
            BusMessage::Demand {
                node,
                publisher,
                track,
                encodings,
                ..
            } => self.demand_from(now, node, publisher, track, encodings),
            BusMessage::SyncRequest { .. } => self.bus.publish(self.roster()),
            BusMessage::Roster {
                node,
                members,
                locked,
                waiting,
                ..
            } => {
                if node != self.bus.node() {
                    self.remote_waiting.retain(|_, (n, _)| *n != node);
                    for p in waiting {
                        self.remote_waiting.insert(p.participant_id, (node, p));
                    }
                    // A room opening here takes the meeting's state from the others.
                    if self.syncing.is_some() && locked {
                        self.locked = true;
                    }
                    self.apply_roster(now, node, members);
                    self.synced_from(now, node);
                }
            }
            BusMessage::Waiting {
                node, participant, ..
            } => {
                let request = frame(Msg::AdmissionRequest(v1::AdmissionRequest {
                    participant: Some(participant.clone()),
                }));
                for m in self.local_moderators() {
                    m.push_control(request.clone());
                }
                self.remote_waiting
                    .insert(participant.participant_id, (node, participant));
            }
            BusMessage::WaitingGone { participant_id, .. } => {
                self.remote_waiting.remove(&participant_id);
            }
            BusMessage::NodeDown { node } => {
                self.drop_node(node);
                self.synced_from(now, node);
            }
            BusMessage::Resync => self.resync(),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use convene_protocol::v1::{
        Encoding, ServerMessage, Subscribe, SubscriptionPreferences, TrackInfo, TrackKind,
        UpdateSubscription, server_message::Msg as S,
    };
    use convene_protocol::{Layer, MediaFrame, MediaHeader, RoomRequest, Timestamp};
    use prost::Message;
    use tokio::sync::mpsc;

    use crate::bus::{BusMessage, InProcessHub};
    use crate::outbox::Outbox;
    use crate::room::test_util::{join_sfu, t};
    use crate::room::{DEMAND_REPEAT, Room, RoomLimits};

    const PUBLISHER: u32 = 1;
    const VIEWER: u32 = 2;

    /// Hands every message waiting on the bus to its room; returns the
    /// `Demand` messages among them.
    fn pump(now: Timestamp, rooms: &mut [(&mut Room, &mut mpsc::Receiver<BusMessage>)]) -> Vec<u8> {
        let mut demands = Vec::new();
        loop {
            let mut any = false;
            for (room, rx) in rooms.iter_mut() {
                while let Ok(msg) = rx.try_recv() {
                    if let BusMessage::Demand { encodings, .. } = &msg {
                        demands.push(*encodings);
                    }
                    room.apply_bus(now, msg);
                    any = true;
                }
            }
            if !any {
                return demands;
            }
        }
    }

    /// The `EncodingDemand` masks in a member's queue.
    fn demands(out: &Outbox) -> Vec<u32> {
        let mut got: Vec<Bytes> = Vec::new();
        out.drain(&mut got, usize::MAX);
        got.iter()
            .filter_map(|b| ServerMessage::decode(b.slice(1..)).ok()?.msg)
            .filter_map(|m| match m {
                S::EncodingDemand(d) => Some(d.active_mask),
                _ => None,
            })
            .collect()
    }

    fn prefs(max_height: u32) -> Option<SubscriptionPreferences> {
        Some(SubscriptionPreferences {
            max_height,
            ..Default::default()
        })
    }

    #[test]
    fn a_publisher_hears_what_subscribers_on_another_node_want() {
        let hub = InProcessHub::new();
        let (bus1, mut rx1) = hub.attach(1);
        let (bus2, mut rx2) = hub.attach(2);
        bus1.interest("m", true);
        bus2.interest("m", true);
        let mut n1 = Room::with_bus("m", RoomLimits::default(), bus1);
        let mut n2 = Room::with_bus("m", RoomLimits::default(), bus2);
        // The publisher on node 1, the viewer on node 2.
        let publisher = join_sfu(&mut n1, PUBLISHER, false);
        pump(t(0), &mut [(&mut n1, &mut rx1), (&mut n2, &mut rx2)]);
        let _viewer = join_sfu(&mut n2, VIEWER, false);
        pump(t(0), &mut [(&mut n1, &mut rx1), (&mut n2, &mut rx2)]);
        let camera = TrackInfo {
            track_id: 1,
            kind: TrackKind::Video as i32,
            codec: "vp8".into(),
            width: 640,
            height: 360,
            frame_rate: 30,
            encodings: [(160, 90), (320, 180), (640, 360)]
                .iter()
                .map(|&(width, height)| Encoding {
                    width,
                    height,
                    frame_rate: 30,
                    temporal_layers: 1,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        n1.handle(t(0), PUBLISHER, RoomRequest::Publish(camera), 0)
            .unwrap();
        pump(t(0), &mut [(&mut n1, &mut rx1), (&mut n2, &mut rx2)]);
        // The viewer wants the smallest picture only.
        let subscribe = Subscribe {
            participant_id: PUBLISHER,
            track_id: 1,
            preferences: prefs(90),
        };
        n2.handle(t(0), VIEWER, RoomRequest::Subscribe(subscribe), 0)
            .unwrap();
        pump(t(0), &mut [(&mut n1, &mut rx1), (&mut n2, &mut rx2)]);

        // Pictures every 40 ms: node 2 routes its copies, and after the
        // grace of five seconds says it wants only the smallest; node 1
        // then tells the publisher so, its own grace running meanwhile.
        let mut told = None;
        let mut said = Vec::new();
        let mut seq = 0u32;
        let mut picture = |n1: &mut Room, ms: u64| {
            seq += 1;
            for encoding in 0..3u8 {
                let h = MediaHeader {
                    key: seq % 25 == 1,
                    sender: 0,
                    track_id: 1,
                    sequence: seq,
                    capture_timestamp_us: ms * 1000,
                };
                let layer = Layer {
                    encoding,
                    ..Layer::default()
                };
                let f = MediaFrame::build_layered(layer, &h, None, &[encoding; 100])
                    .stamp_sender(PUBLISHER);
                n1.route(t(ms), PUBLISHER, &f).unwrap();
            }
        };
        for ms in (40..=16_000).step_by(40) {
            picture(&mut n1, ms);
            said.extend(pump(t(ms), &mut [(&mut n1, &mut rx1), (&mut n2, &mut rx2)]));
            if told.is_none() && demands(&publisher).contains(&0b001) {
                told = Some(ms);
            }
        }
        let told = told.expect("the publisher is told only the smallest encoding is wanted");
        assert!(
            (5_000..=5_200).contains(&told),
            "told at {told} ms, once both nodes' grace of five seconds was over"
        );
        // Node 2 said it when it changed, and again every two seconds after.
        assert!(said.iter().all(|&m| m == 0b001), "{said:?}");
        let expected = (16_000 - 5_000) / DEMAND_REPEAT.as_millis() as usize;
        assert!(
            said.len() >= expected,
            "{} Demand messages, at least {expected} expected",
            said.len()
        );

        // The viewer wants the top encoding: the publisher hears it at once.
        let update = UpdateSubscription {
            participant_id: PUBLISHER,
            track_id: 1,
            preferences: prefs(0),
        };
        n2.handle(
            t(16_020),
            VIEWER,
            RoomRequest::UpdateSubscription(update),
            0,
        )
        .unwrap();
        pump(t(16_020), &mut [(&mut n1, &mut rx1), (&mut n2, &mut rx2)]);
        let now = demands(&publisher);
        assert!(
            now.last().is_some_and(|m| m & 0b100 != 0),
            "the top encoding is back in demand at once: {now:?}"
        );

        // The viewer leaves: node 2 has nobody in the meeting, and with no
        // subscriber anywhere the publisher may stop everything.
        n2.leave(VIEWER);
        pump(t(16_040), &mut [(&mut n1, &mut rx1), (&mut n2, &mut rx2)]);
        let mut off = None;
        for ms in (16_080..=24_000).step_by(40) {
            picture(&mut n1, ms);
            pump(t(ms), &mut [(&mut n1, &mut rx1), (&mut n2, &mut rx2)]);
            if off.is_none() && demands(&publisher).contains(&0) {
                off = Some(ms);
            }
        }
        assert!(
            off.is_some(),
            "nobody anywhere wants the track: it goes off"
        );
    }
}
