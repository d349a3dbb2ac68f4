//! Rooms and the router (PROTOCOL.md §5.3–§5.8, §6.3–§6.5), sans-IO: they
//! never touch a socket or a clock, and are tested without either.
//!
//! A media frame is routed by one lookup of its track and a walk over that
//! track's subscriber list, pushing the same reference-counted `Bytes` into
//! each subscriber's [`Outbox`]: one serialization per frame, no allocation
//! per delivery. Control messages to a room are encoded once and shared the
//! same way.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use convene_protocol::v1::{
    self, Participant, Role, ServerMessage, TrackInfo, TrackKind, server_message::Msg,
};
use convene_protocol::{
    ErrorCode, MediaFrame, MediaHeader, ProtocolError, RoomRequest, Timestamp, TokenBucket,
    encode_control,
};

use crate::bus::{Bus, BusMessage, NoBus, NodeId, PARTICIPANT_BITS, RosterEntry};
use crate::ids::IdAllocator;
use crate::outbox::{Admission, DropReason, Kick, MediaClass, Outbox};

/// Longest a Join waits while a room just opened on one node of a cluster
/// hears from the other nodes who is in the meeting.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(1);

/// Key-frame requests the server makes on subscribers' behalf, at most one per track per this long.
const KEY_FRAME_REQUEST_INTERVAL: Duration = Duration::from_secs(1);
/// Subscribers' key-frame requests for one track reach its publisher at most
/// once per this interval (PROTOCOL.md §6.5); one arriving sooner waits for
/// the end of the interval, and is dropped if a key frame passes meanwhile.
/// Each key frame costs every subscriber a burst; one member asking in a
/// loop once had 240 a second forwarded.
pub const KEY_FRAME_COALESCE: Duration = Duration::from_millis(500);

/// Capacity settings of rooms.
#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    /// Most participants per room.
    pub max_participants: u32,
    /// Most tracks per participant.
    pub max_tracks: u32,
    /// Most rooms on this server.
    pub max_rooms: usize,
    /// Bytes of chat text and E2EE payload a room relays to everyone per second.
    pub room_relay_bytes_per_second: u32,
}

impl Default for RoomLimits {
    fn default() -> Self {
        use convene_protocol::limits::default;
        RoomLimits {
            max_participants: default::MAX_PARTICIPANTS_PER_ROOM,
            max_tracks: default::MAX_TRACKS_PER_PARTICIPANT,
            max_rooms: 10_000,
            room_relay_bytes_per_second: default::ROOM_RELAY_BYTES_PER_SECOND,
        }
    }
}

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

/// One published track.
#[derive(Debug)]
struct Publication {
    /// As announced.
    info: TrackInfo,
    /// Audio or video, for queue priorities.
    audio: bool,
    /// Who receives it: (participant id, their outbox).
    subscribers: Vec<(u32, Arc<Outbox>)>,
    /// When the server last asked for a key frame on subscribers' behalf.
    last_key_request: Option<Timestamp>,
    /// A subscriber's request arrived within [`KEY_FRAME_COALESCE`] of the
    /// last one: it goes out when the interval is over, unless a key frame
    /// passes first.
    key_wanted: bool,
    /// How fast the track arrives, and what the publisher was told about it.
    congestion: Congestion,
}

/// Congestion hints for one track (PROTOCOL.md §6.5): while subscribers'
/// queues drop its frames the publisher is asked, at most once a
/// [`HINT_INTERVAL`], for 70 % of the rate it sends; after [`RECOVERY`]
/// without drops, for its announced rate again.
#[derive(Debug, Default)]
struct Congestion {
    /// Start of the current measuring window and the bytes seen in it.
    window: Option<(Timestamp, u64)>,
    /// The rate measured over the last whole window, kbit/s.
    kbps: u32,
    /// The last frame a subscriber's queue dropped.
    last_drop: Option<Timestamp>,
    /// The last hint sent.
    last_hint: Option<Timestamp>,
    /// Set while the publisher has been asked to go lower.
    lowered: bool,
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

/// One participant in a room.
#[derive(Debug)]
struct Member {
    /// As others see it (tracks are filled in when sent).
    info: Participant,
    /// Where frames for this participant go; `None` for a participant
    /// connected to another node.
    outbox: Option<Arc<Outbox>>,
    /// The node the participant is connected to.
    node: NodeId,
    /// Subscribed to everything, now and later.
    subscribe_all: bool,
    /// Published tracks by id.
    tracks: BTreeMap<u32, Publication>,
}

impl Member {
    fn participant(&self) -> Participant {
        Participant {
            tracks: self.tracks.values().map(|p| p.info.clone()).collect(),
            ..self.info.clone()
        }
    }
}

/// A room: the participants of one meeting on this server.
#[derive(Debug)]
pub struct Room {
    /// The meeting id.
    id: String,
    /// Participants by id.
    members: BTreeMap<u32, Member>,
    /// Locked rooms refuse joins.
    locked: bool,
    /// Capacity.
    limits: RoomLimits,
    /// The other nodes.
    bus: Arc<dyn Bus>,
    /// Members connected to this node.
    local: usize,
    /// Joins wait for a moderator (PROTOCOL.md §5.8).
    waiting_room: bool,
    /// Who waits, on this node.
    waiting: BTreeMap<u32, Waiter>,
    /// Who waits on other nodes, and where: moderators here hear of them
    /// and can admit or deny them.
    remote_waiting: BTreeMap<u32, (NodeId, Participant)>,
    /// Set while the room, just opened here, waits for the other nodes to
    /// say who is in the meeting: Joins are held until then.
    syncing: Option<Syncing>,
    /// Chat and E2EE bytes the room may still relay to everyone (made at first use).
    relay_budget: Option<TokenBucket>,
}

/// A room learning who is in its meeting on the other nodes.
#[derive(Debug)]
struct Syncing {
    /// Nodes that have not answered yet.
    waiting_for: std::collections::HashSet<NodeId>,
    /// When the room opened.
    since: Timestamp,
    /// Joins held until then, in arrival order.
    held: Vec<Waiter>,
}

/// The participant id moderation requests carry when they come from the
/// node's operator (the admin API) rather than from a participant: never a
/// participant's id, and allowed every moderator action.
pub const OPERATOR: u32 = 0;

/// One meeting as the admin API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct MeetingSummary {
    /// The meeting id.
    pub meeting_id: String,
    /// Locked meetings refuse joins.
    pub locked: bool,
    /// Participants waiting on this node.
    pub waiting: usize,
    /// Everyone in the meeting, on every node, by participant id, with their node.
    pub members: Vec<(Participant, NodeId)>,
}

/// A participant in the waiting room.
#[derive(Debug)]
struct Waiter {
    info: Participant,
    subscribe_all: bool,
    outbox: Arc<Outbox>,
}

/// What a Join led to.
#[derive(Debug, Clone, PartialEq)]
pub enum JoinOutcome {
    /// In the room: queue this `Joined` for the newcomer.
    Joined(v1::Joined),
    /// In the waiting room until a moderator decides.
    Held,
    /// Held while the room learns who is in the meeting on other nodes;
    /// answered through the outbox ([`crate::outbox::Admission`]).
    Syncing,
}

fn frame(msg: Msg) -> Bytes {
    encode_control(&ServerMessage { msg: Some(msg) })
}

fn unknown_track(pid: u32, track: u32) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::UnknownTrack,
        format!("participant {pid} publishes no track {track} in your room"),
    )
}

impl Room {
    /// An empty room on a single node.
    pub fn new(id: &str, limits: RoomLimits) -> Self {
        Room::with_bus(id, limits, Arc::new(NoBus))
    }

    /// An empty room whose changes are shared with other nodes over `bus`.
    pub fn with_bus(id: &str, limits: RoomLimits, bus: Arc<dyn Bus>) -> Self {
        Room {
            id: id.to_string(),
            members: BTreeMap::new(),
            locked: false,
            limits,
            bus,
            local: 0,
            waiting_room: false,
            waiting: BTreeMap::new(),
            remote_waiting: BTreeMap::new(),
            syncing: None,
            relay_budget: None,
        }
    }

    /// Gives the room a waiting room (or takes it away).
    pub fn set_waiting_room(&mut self, on: bool) {
        self.waiting_room = on;
    }

    /// The meeting id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Number of participants connected to this node.
    pub fn len(&self) -> usize {
        self.local
    }

    /// True when nobody connected to this node is in the room or waits for it.
    pub fn is_empty(&self) -> bool {
        self.local == 0
            && self.waiting.is_empty()
            && self.syncing.as_ref().is_none_or(|s| s.held.is_empty())
    }

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
    fn synced_from(&mut self, now: Timestamp, node: NodeId) {
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
    fn finish_sync(&mut self, now: Timestamp) {
        let Some(s) = self.syncing.take() else {
            return;
        };
        for w in s.held {
            let pid = w.info.participant_id;
            let outbox = w.outbox.clone();
            match self.enter(now, w.info, w.subscribe_all, w.outbox) {
                Ok(JoinOutcome::Joined(joined)) => {
                    // Joined goes first into the newcomer's queue.
                    outbox.admit(frame(Msg::Joined(joined)));
                    self.tell_waiters_to(pid);
                }
                Ok(JoinOutcome::Held) => outbox.settle(Admission::Held),
                Ok(JoinOutcome::Syncing) => {}
                Err(e) => outbox.settle(Admission::Refused(e)),
            }
        }
    }

    /// Bytes queued for this node's members now.
    pub fn queued_bytes(&self) -> usize {
        self.members
            .values()
            .filter_map(|m| m.outbox.as_ref())
            .map(|o| o.bytes())
            .sum()
    }

    /// Number of participants on all nodes.
    pub fn total(&self) -> usize {
        self.members.len()
    }

    fn broadcast(&self, msg: Msg, except: Option<u32>) {
        let f = frame(msg);
        for (pid, m) in &self.members {
            if let (true, Some(o)) = (Some(*pid) != except, &m.outbox) {
                o.push_control(f.clone());
            }
        }
    }

    fn send_to(&self, pid: u32, msg: Msg) {
        if let Some(o) = self.members.get(&pid).and_then(|m| m.outbox.as_ref()) {
            o.push_control(frame(msg));
        }
    }

    /// Relays a chat or E2EE message to `to` (everyone but `except` when
    /// None): in the recipients' relay lanes, behind their audio.
    fn relay(&self, msg: Msg, to: Option<u32>, except: Option<u32>) {
        let f = frame(msg);
        match to {
            Some(pid) => {
                if let Some(o) = self.members.get(&pid).and_then(|m| m.outbox.as_ref()) {
                    o.push_relay(f);
                }
            }
            None => {
                for (pid, m) in &self.members {
                    if let (true, Some(o)) = (Some(*pid) != except, &m.outbox) {
                        o.push_relay(f.clone());
                    }
                }
            }
        }
    }

    /// Takes `bytes` from the room's budget for messages to everyone, or
    /// says RATE_LIMITED: what all members together make the room relay to
    /// each member is bounded (PROTOCOL.md §7), so no group of senders can
    /// fill someone's link.
    fn spend_relay_budget(&mut self, now: Timestamp, bytes: usize) -> Result<(), ProtocolError> {
        let rate = self.limits.room_relay_bytes_per_second as f64;
        let budget = self
            .relay_budget
            .get_or_insert_with(|| TokenBucket::new(now, rate, rate * 4.0));
        if budget.try_take(now, bytes as f64) {
            Ok(())
        } else {
            Err(ProtocolError::new(
                ErrorCode::RateLimited,
                format!(
                    "this room relays at most {} bytes of chat and E2EE messages to everyone per second; try again shortly",
                    self.limits.room_relay_bytes_per_second
                ),
            ))
        }
    }

    /// Adds a participant and tells the others. Returns the `Joined` answer,
    /// which the caller must queue for the newcomer before releasing the room.
    pub fn join(
        &mut self,
        now: Timestamp,
        info: Participant,
        subscribe_all: bool,
        outbox: Arc<Outbox>,
    ) -> Result<v1::Joined, ProtocolError> {
        self.check_entry()?;
        Ok(self.admit_member(now, info, subscribe_all, outbox))
    }

    /// A Join: into the room, or, when the room has a waiting room and the
    /// newcomer is not a moderator, into the waiting room; its moderators are
    /// asked with `AdmissionRequest`.
    pub fn enter(
        &mut self,
        now: Timestamp,
        info: Participant,
        subscribe_all: bool,
        outbox: Arc<Outbox>,
    ) -> Result<JoinOutcome, ProtocolError> {
        if let Some(s) = &mut self.syncing {
            s.held.push(Waiter {
                info,
                subscribe_all,
                outbox,
            });
            return Ok(JoinOutcome::Syncing);
        }
        self.check_entry()?;
        if self.waiting_room && info.role != Role::Moderator as i32 {
            let request = frame(Msg::AdmissionRequest(v1::AdmissionRequest {
                participant: Some(info.clone()),
            }));
            for m in self.local_moderators() {
                m.push_control(request.clone());
            }
            self.bus.publish(BusMessage::Waiting {
                meeting: self.id.clone(),
                node: self.bus.node(),
                participant: info.clone(),
            });
            self.waiting.insert(
                info.participant_id,
                Waiter {
                    info,
                    subscribe_all,
                    outbox,
                },
            );
            return Ok(JoinOutcome::Held);
        }
        Ok(JoinOutcome::Joined(self.admit_member(
            now,
            info,
            subscribe_all,
            outbox,
        )))
    }

    /// Tells a moderator who just joined who is waiting (called once its
    /// `Joined` is queued, so that comes first).
    pub fn tell_waiters_to(&self, pid: u32) {
        let Some(m) = self.members.get(&pid) else {
            return;
        };
        let (Some(o), true) = (&m.outbox, m.info.role == Role::Moderator as i32) else {
            return;
        };
        let here = self.waiting.values().map(|w| &w.info);
        let elsewhere = self.remote_waiting.values().map(|(_, p)| p);
        for info in here.chain(elsewhere) {
            o.push_control(frame(Msg::AdmissionRequest(v1::AdmissionRequest {
                participant: Some(info.clone()),
            })));
        }
    }

    fn local_moderators(&self) -> Vec<Arc<Outbox>> {
        self.members
            .values()
            .filter(|m| m.info.role == Role::Moderator as i32)
            .filter_map(|m| m.outbox.clone())
            .collect()
    }

    fn check_entry(&self) -> Result<(), ProtocolError> {
        if self.locked {
            return Err(ProtocolError::new(
                ErrorCode::RoomLocked,
                "the room is locked",
            ));
        }
        if self.members.len() >= self.limits.max_participants as usize {
            return Err(ProtocolError::new(
                ErrorCode::RoomFull,
                format!(
                    "the room has its maximum of {} participants",
                    self.limits.max_participants
                ),
            ));
        }
        Ok(())
    }

    /// Puts a participant of this node in the room and tells everyone.
    fn admit_member(
        &mut self,
        now: Timestamp,
        info: Participant,
        subscribe_all: bool,
        outbox: Arc<Outbox>,
    ) -> v1::Joined {
        let pid = info.participant_id;
        self.broadcast(
            Msg::ParticipantJoined(v1::ParticipantJoined {
                participant: Some(info.clone()),
            }),
            None,
        );
        self.bus.publish(BusMessage::Join {
            meeting: self.id.clone(),
            node: self.bus.node(),
            participant: info.clone(),
            subscribe_all,
        });
        self.local += 1;
        self.members.insert(
            pid,
            Member {
                info,
                outbox: Some(outbox.clone()),
                node: self.bus.node(),
                subscribe_all,
                tracks: BTreeMap::new(),
            },
        );
        if subscribe_all {
            let mut requests = Vec::new();
            for (ppid, m) in self.members.iter_mut() {
                if *ppid == pid {
                    continue;
                }
                for (tid, p) in m.tracks.iter_mut() {
                    p.subscribers.push((pid, outbox.clone()));
                    if !p.audio {
                        requests.push((*ppid, *tid));
                    }
                }
            }
            for (ppid, tid) in requests {
                self.request_key_frame(now, ppid, tid, 0, true);
            }
        }
        v1::Joined {
            meeting_id: self.id.clone(),
            participants: self.members.values().map(Member::participant).collect(),
            locked: self.locked,
        }
    }

    /// Removes a participant: unpublishes its tracks, drops its subscriptions,
    /// and tells the others (PROTOCOL.md §5.3, §9.3).
    pub fn leave(&mut self, pid: u32) {
        if self.waiting.remove(&pid).is_some() {
            self.bus.publish(BusMessage::WaitingGone {
                meeting: self.id.clone(),
                participant_id: pid,
            });
            return;
        }
        if let Some(s) = &mut self.syncing {
            s.held.retain(|w| w.info.participant_id != pid);
        }
        if self.members.get(&pid).is_some_and(|m| m.outbox.is_some()) {
            self.bus.publish(BusMessage::Leave {
                meeting: self.id.clone(),
                participant_id: pid,
            });
        }
        self.remove_member(pid);
    }

    fn remove_member(&mut self, pid: u32) {
        let Some(member) = self.members.remove(&pid) else {
            return;
        };
        if member.outbox.is_some() {
            self.local -= 1;
        }
        for tid in member.tracks.keys() {
            self.broadcast(
                Msg::TrackUnpublished(v1::TrackUnpublished {
                    participant_id: pid,
                    track_id: *tid,
                }),
                None,
            );
        }
        for m in self.members.values_mut() {
            for p in m.tracks.values_mut() {
                p.subscribers.retain(|(s, _)| *s != pid);
            }
        }
        self.broadcast(
            Msg::ParticipantLeft(v1::ParticipantLeft {
                participant_id: pid,
            }),
            None,
        );
    }

    /// Asks a publisher for a key frame, from `requester` (0: the server), at
    /// most once per interval unless `force`.
    fn request_key_frame(
        &mut self,
        now: Timestamp,
        publisher: u32,
        track: u32,
        requester: u32,
        force: bool,
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
            return;
        }
        p.last_key_request = Some(now);
        p.key_wanted = false;
        match &m.outbox {
            Some(o) => {
                o.push_control(frame(Msg::KeyFrameRequest(v1::KeyFrameRequest {
                    participant_id: requester,
                    track_id: track,
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
                },
            ),
        }
    }

    fn own_track(&mut self, pid: u32, track: u32) -> Result<&mut Publication, ProtocolError> {
        self.members
            .get_mut(&pid)
            .and_then(|m| m.tracks.get_mut(&track))
            .ok_or_else(|| {
                ProtocolError::new(
                    ErrorCode::UnknownTrack,
                    format!("you publish no track {track}"),
                )
            })
    }

    /// The node where `pid` waits, when that is not this one.
    fn waits_elsewhere(&self, pid: u32) -> Option<NodeId> {
        if self.waiting.contains_key(&pid) {
            return None;
        }
        self.remote_waiting.get(&pid).map(|(n, _)| *n)
    }

    fn require_moderator(&self, pid: u32) -> Result<(), ProtocolError> {
        if pid == OPERATOR {
            return Ok(());
        }
        match self.members.get(&pid) {
            Some(m) if m.info.role == Role::Moderator as i32 => Ok(()),
            _ => Err(ProtocolError::new(
                ErrorCode::PermissionDenied,
                "moderation needs the moderator role, which comes from your token",
            )),
        }
    }

    fn require_member(&self, pid: u32) -> Result<(), ProtocolError> {
        if self.members.contains_key(&pid) {
            Ok(())
        } else {
            Err(ProtocolError::new(
                ErrorCode::UnknownParticipant,
                format!("participant {pid} is not in your room"),
            ))
        }
    }

    /// The meeting as the admin API shows it.
    pub fn summary(&self) -> MeetingSummary {
        MeetingSummary {
            meeting_id: self.id.clone(),
            locked: self.locked,
            waiting: self.waiting.len(),
            members: self
                .members
                .values()
                .map(|m| (m.participant(), m.node))
                .collect(),
        }
    }

    /// Handles a room message from `pid`, a participant on this node, and
    /// tells the other nodes when it changes what they must know.
    pub fn handle(
        &mut self,
        now: Timestamp,
        pid: u32,
        req: RoomRequest,
        server_time_us: u64,
    ) -> Result<(), ProtocolError> {
        // Messages to everyone spend the room's relay budget where they are
        // sent from; other nodes trust that node's count.
        match &req {
            RoomRequest::Chat(c) if c.to_participant_id == 0 => {
                self.spend_relay_budget(now, c.text.len())?
            }
            RoomRequest::E2ee(e) if e.to_participant_id == 0 => {
                self.spend_relay_budget(now, e.payload.len())?
            }
            _ => {}
        }
        let copy = replicated(&req).then(|| req.clone());
        self.apply_request(now, pid, req, server_time_us)?;
        if let Some(request) = copy {
            self.bus.publish(BusMessage::Request {
                meeting: self.id.clone(),
                participant_id: pid,
                request,
                server_time_us,
            });
        }
        Ok(())
    }

    /// Applies a room message from `pid`, wherever `pid` is connected.
    fn apply_request(
        &mut self,
        now: Timestamp,
        pid: u32,
        req: RoomRequest,
        server_time_us: u64,
    ) -> Result<(), ProtocolError> {
        match req {
            RoomRequest::UpdateSelf(u) => {
                let m = self.members.get_mut(&pid).ok_or_else(|| self_gone(pid))?;
                m.info.display_name = u.display_name;
                let p = m.participant();
                self.broadcast(
                    Msg::ParticipantUpdated(v1::ParticipantUpdated {
                        participant: Some(p),
                    }),
                    None,
                );
            }
            RoomRequest::Publish(track) => {
                let max = self.limits.max_tracks;
                let m = self.members.get_mut(&pid).ok_or_else(|| self_gone(pid))?;
                if m.tracks.contains_key(&track.track_id) {
                    return Err(ProtocolError::new(
                        ErrorCode::DuplicateTrack,
                        format!("you already publish track {}", track.track_id),
                    ));
                }
                if m.tracks.len() >= max as usize {
                    return Err(ProtocolError::new(
                        ErrorCode::TooManyTracks,
                        format!("you already publish the maximum of {max} tracks"),
                    ));
                }
                let subscribers = self
                    .members
                    .iter()
                    .filter(|(other, m)| **other != pid && m.subscribe_all)
                    .filter_map(|(other, m)| Some((*other, m.outbox.clone()?)))
                    .collect();
                let audio = track.kind == TrackKind::Audio as i32;
                let tid = track.track_id;
                let m = self.members.get_mut(&pid).ok_or_else(|| self_gone(pid))?;
                m.tracks.insert(
                    tid,
                    Publication {
                        info: track.clone(),
                        audio,
                        subscribers,
                        last_key_request: None,
                        key_wanted: false,
                        congestion: Congestion::default(),
                    },
                );
                self.broadcast(
                    Msg::TrackPublished(v1::TrackPublished {
                        participant_id: pid,
                        track: Some(track),
                    }),
                    None,
                );
            }
            RoomRequest::Unpublish(u) => {
                self.own_track(pid, u.track_id)?;
                if let Some(m) = self.members.get_mut(&pid) {
                    m.tracks.remove(&u.track_id);
                }
                self.broadcast(
                    Msg::TrackUnpublished(v1::TrackUnpublished {
                        participant_id: pid,
                        track_id: u.track_id,
                    }),
                    None,
                );
            }
            RoomRequest::SetTrackMuted(s) => {
                let p = self.own_track(pid, s.track_id)?;
                p.info.muted = s.muted;
                self.broadcast(
                    Msg::TrackMuted(v1::TrackMuted {
                        participant_id: pid,
                        track_id: s.track_id,
                        muted: s.muted,
                    }),
                    None,
                );
            }
            RoomRequest::Subscribe(s) => {
                if s.participant_id == pid {
                    return Err(ProtocolError::new(
                        ErrorCode::UnknownTrack,
                        "you cannot subscribe to your own track",
                    ));
                }
                let outbox = self
                    .members
                    .get(&pid)
                    .and_then(|m| m.outbox.clone())
                    .ok_or_else(|| self_gone(pid))?;
                let p = self
                    .members
                    .get_mut(&s.participant_id)
                    .and_then(|m| m.tracks.get_mut(&s.track_id))
                    .ok_or_else(|| unknown_track(s.participant_id, s.track_id))?;
                let audio = p.audio;
                if !p.subscribers.iter().any(|(x, _)| *x == pid) {
                    p.subscribers.push((pid, outbox));
                }
                self.send_to(
                    pid,
                    Msg::Subscribed(v1::Subscribed {
                        participant_id: s.participant_id,
                        track_id: s.track_id,
                    }),
                );
                if !audio {
                    self.request_key_frame(now, s.participant_id, s.track_id, 0, true);
                }
            }
            RoomRequest::Unsubscribe(u) => {
                let p = self
                    .members
                    .get_mut(&u.participant_id)
                    .and_then(|m| m.tracks.get_mut(&u.track_id))
                    .ok_or_else(|| unknown_track(u.participant_id, u.track_id))?;
                p.subscribers.retain(|(x, _)| *x != pid);
            }
            RoomRequest::KeyFrameRequest(k) => {
                let p = (k.participant_id != pid)
                    .then(|| self.members.get(&k.participant_id))
                    .flatten()
                    .and_then(|m| m.tracks.get(&k.track_id))
                    .ok_or_else(|| unknown_track(k.participant_id, k.track_id))?;
                // Only a subscriber needs the track's key frames (§6.5).
                if !p.subscribers.iter().any(|(s, _)| *s == pid) {
                    return Err(ProtocolError::new(
                        ErrorCode::UnknownTrack,
                        format!(
                            "you are not subscribed to track {} of participant {}",
                            k.track_id, k.participant_id
                        ),
                    ));
                }
                self.request_key_frame(now, k.participant_id, k.track_id, pid, true);
            }
            RoomRequest::ReceiverReport(_) => {}
            RoomRequest::Chat(c) => {
                let msg = Msg::Chat(v1::ChatMessage {
                    from_participant_id: pid,
                    to_participant_id: c.to_participant_id,
                    text: c.text,
                    server_timestamp_us: server_time_us,
                });
                if c.to_participant_id == 0 {
                    self.relay(msg, None, None);
                } else {
                    self.require_member(c.to_participant_id)?;
                    let f = frame(msg);
                    let sender_too = (c.to_participant_id != pid).then_some(pid);
                    for to in std::iter::once(c.to_participant_id).chain(sender_too) {
                        if let Some(o) = self.members.get(&to).and_then(|m| m.outbox.as_ref()) {
                            o.push_relay(f.clone());
                        }
                    }
                }
            }
            RoomRequest::E2ee(e) => {
                let msg = Msg::E2ee(v1::E2eeMessage {
                    from_participant_id: pid,
                    to_participant_id: e.to_participant_id,
                    payload: e.payload,
                });
                if e.to_participant_id == 0 {
                    self.relay(msg, None, Some(pid));
                } else {
                    self.require_member(e.to_participant_id)?;
                    self.relay(msg, Some(e.to_participant_id), None);
                }
            }
            RoomRequest::MuteRequest(m) => {
                self.require_moderator(pid)?;
                self.require_member(m.participant_id)?;
                self.send_to(
                    m.participant_id,
                    Msg::MuteRequested(v1::MuteRequested {
                        by_participant_id: pid,
                        kind: m.kind,
                    }),
                );
            }
            RoomRequest::RemoveParticipant(r) => {
                self.require_moderator(pid)?;
                self.require_member(r.participant_id)?;
                if let Some(o) = self
                    .members
                    .get(&r.participant_id)
                    .and_then(|m| m.outbox.as_ref())
                {
                    o.kick(Kick::Removed);
                }
            }
            RoomRequest::LockRoom(l) => {
                self.require_moderator(pid)?;
                self.locked = l.locked;
                self.broadcast(Msg::RoomLocked(v1::RoomLocked { locked: l.locked }), None);
            }
            RoomRequest::Admit(a) => {
                self.require_moderator(pid)?;
                if let Some(node) = self.waits_elsewhere(a.participant_id) {
                    // The newcomer waits on another node: that node lets it in.
                    self.bus.send_to(
                        node,
                        BusMessage::Request {
                            meeting: self.id.clone(),
                            participant_id: pid,
                            request: RoomRequest::Admit(a),
                            server_time_us: 0,
                        },
                    );
                    return Ok(());
                }
                if !self.waiting.contains_key(&a.participant_id) {
                    return Err(nobody_waiting(a.participant_id));
                }
                self.check_entry()?;
                let w = self
                    .waiting
                    .remove(&a.participant_id)
                    .ok_or_else(|| nobody_waiting(a.participant_id))?;
                let outbox = w.outbox.clone();
                let joined = self.admit_member(now, w.info, w.subscribe_all, w.outbox);
                // Joined goes first into the newcomer's queue: nothing the
                // room sends it can overtake it.
                outbox.admit(frame(Msg::Joined(joined)));
            }
            RoomRequest::Deny(d) => {
                self.require_moderator(pid)?;
                if let Some(node) = self.waits_elsewhere(d.participant_id) {
                    self.bus.send_to(
                        node,
                        BusMessage::Request {
                            meeting: self.id.clone(),
                            participant_id: pid,
                            request: RoomRequest::Deny(d),
                            server_time_us: 0,
                        },
                    );
                    return Ok(());
                }
                let w = self
                    .waiting
                    .remove(&d.participant_id)
                    .ok_or_else(|| nobody_waiting(d.participant_id))?;
                w.outbox.deny();
                self.bus.publish(BusMessage::WaitingGone {
                    meeting: self.id.clone(),
                    participant_id: d.participant_id,
                });
            }
            RoomRequest::EndMeeting(_) => {
                self.require_moderator(pid)?;
                for o in self.members.values().filter_map(|m| m.outbox.as_ref()) {
                    o.kick(Kick::MeetingEnded);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Routes a media frame of `publisher`, already stamped, to the track's
    /// subscribers (PROTOCOL.md §6.3, §6.4).
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
        let Some(p) = self
            .members
            .get_mut(&h.sender)
            .and_then(|m| m.tracks.get_mut(&h.track_id))
        else {
            return Err(ProtocolError::new(
                ErrorCode::UnknownTrack,
                format!("you publish no track {}", h.track_id),
            ));
        };
        if p.info.muted {
            return Ok(stats);
        }
        // Audio goes ahead of everything in every subscriber's queue: a frame
        // no audio encoder makes is refused, so an audio grant cannot carry video.
        let max_audio = convene_protocol::limits::max::MAX_AUDIO_FRAME_BYTES as usize;
        if p.audio && frame.as_bytes().len() > max_audio {
            return Err(ProtocolError::new(
                ErrorCode::FrameTooLarge,
                format!(
                    "a frame of {} bytes on audio track {}: audio frames are at most {max_audio}",
                    frame.as_bytes().len(),
                    h.track_id
                ),
            ));
        }
        // A subscriber's request held back by the coalescing interval: a key
        // frame answers it; once the interval is over, it goes out.
        let mut deferred_key = false;
        if h.key {
            p.key_wanted = false;
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
        let mut need_key = false;
        let mut congested = false;
        let at = std::time::Instant::now();
        for (_, outbox) in &p.subscribers {
            congested |= outbox.is_congested();
            let out = outbox.push_media_at(
                now,
                at,
                class,
                (h.sender, h.track_id),
                frame.as_bytes().clone(),
            );
            stats.delivered += out.queued as u32;
            for d in &out.dropped {
                stats.dropped[match d {
                    DropReason::VideoDelta => 0,
                    DropReason::VideoKey => 1,
                    DropReason::Audio => 2,
                }] += 1;
            }
            need_key |= out.needs_key_frame.is_some();
            stats.slow += out.slow as u32;
        }
        if deferred_key {
            self.request_key_frame(now, h.sender, h.track_id, 0, true);
        } else if need_key {
            self.request_key_frame(now, h.sender, h.track_id, 0, false);
        }
        // A frame dropped for a subscriber, or one whose path is congested.
        let dropped = congested || stats.dropped.iter().any(|d| *d > 0);
        self.congestion(now, h.sender, h.track_id, dropped, frame.as_bytes().len());
        // One copy per frame for the other nodes, only while someone is there.
        if self.members.len() > self.local
            && self
                .members
                .get(&h.sender)
                .is_some_and(|m| m.outbox.is_some())
        {
            self.bus.publish(BusMessage::Media {
                meeting: self.id.clone(),
                frame: frame.as_bytes().clone(),
            });
        }
        Ok(stats)
    }

    /// Measures a track's rate and sends its publisher, if connected here,
    /// the congestion hint due (a publisher elsewhere is hinted by its node).
    fn congestion(
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
        let Some(outbox) = m.outbox.clone() else {
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
            })));
        }
    }

    /// Adds a participant connected to another node.
    fn join_remote(
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
        self.broadcast(
            Msg::ParticipantJoined(v1::ParticipantJoined {
                participant: Some(info.clone()),
            }),
            None,
        );
        self.members.insert(
            pid,
            Member {
                info,
                outbox: None,
                node,
                subscribe_all,
                tracks: BTreeMap::new(),
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
    fn someone_watches_everything(&self) -> bool {
        self.members
            .values()
            .any(|m| m.outbox.is_some() && m.subscribe_all)
    }

    /// Adds a track a remote participant already publishes (from a snapshot
    /// or a roster). Unlike a fresh publication, which starts with a key
    /// frame, our subscribers need one asked for when `watching`.
    fn publish_remote_track(&mut self, now: Timestamp, pid: u32, t: TrackInfo, watching: bool) {
        let (tid, video) = (t.track_id, t.kind != TrackKind::Audio as i32);
        if self
            .apply_request(now, pid, RoomRequest::Publish(t), 0)
            .is_ok()
            && video
            && watching
        {
            self.request_key_frame(now, pid, tid, 0, true);
        }
    }

    /// Removes the participants of `node` that `keep` does not keep.
    fn remove_remote_members(&mut self, node: NodeId, keep: impl Fn(u32) -> bool) {
        let gone: Vec<u32> = self
            .members
            .iter()
            .filter(|(pid, m)| m.outbox.is_none() && m.node == node && !keep(**pid))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            self.remove_member(pid);
        }
    }

    /// Everyone this node has in the room, for the other nodes.
    fn roster(&self) -> BusMessage {
        BusMessage::Roster {
            meeting: self.id.clone(),
            node: self.bus.node(),
            locked: self.locked,
            waiting: self.waiting.values().map(|w| w.info.clone()).collect(),
            members: self
                .members
                .values()
                .filter(|m| m.outbox.is_some())
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
    fn apply_roster(&mut self, now: Timestamp, node: NodeId, members: Vec<RosterEntry>) {
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
                Some(m) if m.outbox.is_none() => self.sync_tracks(now, pid, e.participant.tracks),
                Some(_) => {}
            }
        }
    }

    /// Brings a remote participant's tracks to `tracks`.
    fn sync_tracks(&mut self, now: Timestamp, pid: u32, tracks: Vec<TrackInfo>) {
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
    fn route_remote(&mut self, now: Timestamp, frame: &MediaFrame) {
        let h = *frame.header();
        if self
            .members
            .get(&h.sender)
            .is_none_or(|m| m.outbox.is_some())
        {
            return; // unknown, or one of ours echoed back
        }
        if let Ok(stats) = self.route(now, h.sender, frame) {
            let _ = stats;
        }
    }

    /// Applies what another node says.
    fn apply_bus(&mut self, now: Timestamp, msg: BusMessage) {
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
                    .is_some_and(|m| m.outbox.is_none())
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
                        .is_some_and(|m| m.outbox.is_none())
                {
                    // Accepted on its own node already; here it only updates our copy.
                    let _ = self.apply_request(now, participant_id, request, server_time_us);
                }
            }
            BusMessage::Media { frame, .. } => {
                if let Ok(f) = MediaFrame::parse(frame) {
                    self.route_remote(now, &f);
                }
            }
            BusMessage::KeyFrameRequest {
                publisher,
                track,
                requester,
                force,
                ..
            } => {
                if self
                    .members
                    .get(&publisher)
                    .is_some_and(|m| m.outbox.is_some())
                {
                    self.request_key_frame(now, publisher, track, requester, force);
                }
            }
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

/// Room requests other nodes must apply too (subscriptions stay local:
/// every node already receives the meeting's media).
fn replicated(req: &RoomRequest) -> bool {
    matches!(
        req,
        RoomRequest::UpdateSelf(_)
            | RoomRequest::Publish(_)
            | RoomRequest::Unpublish(_)
            | RoomRequest::SetTrackMuted(_)
            | RoomRequest::Chat(_)
            | RoomRequest::E2ee(_)
            | RoomRequest::MuteRequest(_)
            | RoomRequest::RemoveParticipant(_)
            | RoomRequest::LockRoom(_)
            | RoomRequest::EndMeeting(_)
    )
}

fn nobody_waiting(pid: u32) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::UnknownParticipant,
        format!("participant {pid} is not in this room's waiting room"),
    )
}

fn self_gone(pid: u32) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::NotJoined,
        format!("participant {pid} is not in the room"),
    )
}

/// All rooms of this server.
#[derive(Debug)]
pub struct Router {
    /// Rooms by meeting id. Lock order: this map, then a room.
    rooms: Mutex<HashMap<String, Arc<Mutex<Room>>>>,
    /// Capacity.
    limits: RoomLimits,
    /// Participant ids in use on this node.
    ids: Mutex<IdAllocator>,
    /// The other nodes.
    bus: Arc<dyn Bus>,
    /// Meetings with a waiting room: ids, or prefixes ending in `*`.
    waiting_rooms: Vec<String>,
}

/// Locks a room, recovering from a panic elsewhere rather than spreading it.
pub fn lock(room: &Mutex<Room>) -> MutexGuard<'_, Room> {
    room.lock().unwrap_or_else(|p| p.into_inner())
}

impl Router {
    /// An empty router for a single node.
    pub fn new(limits: RoomLimits) -> Self {
        Router::with_bus(limits, Arc::new(NoBus))
    }

    /// An empty router whose rooms span the nodes on `bus`.
    pub fn with_bus(limits: RoomLimits, bus: Arc<dyn Bus>) -> Self {
        Router {
            rooms: Mutex::new(HashMap::new()),
            limits,
            ids: Mutex::new(IdAllocator::new(u32::from(bus.node()), PARTICIPANT_BITS)),
            bus,
            waiting_rooms: Vec::new(),
        }
    }

    /// Meetings that get a waiting room: ids, or prefixes ending in `*`.
    pub fn with_waiting_rooms(mut self, patterns: Vec<String>) -> Self {
        self.waiting_rooms = patterns;
        self
    }

    fn has_waiting_room(&self, meeting: &str) -> bool {
        self.waiting_rooms
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => meeting.starts_with(prefix),
                None => p == meeting,
            })
    }

    /// Forgets a room and stops hearing its meeting from the other nodes
    /// (the two go together: a node hears a meeting while it has its room).
    fn close_room(&self, rooms: &mut HashMap<String, Arc<Mutex<Room>>>, id: &str) {
        rooms.remove(id);
        self.bus.interest(id, false);
    }

    /// The bus to the other nodes.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// A fresh participant id, never 0 and never one in use (see
    /// [`IdAllocator`]); `None` when the node's id space is half used.
    /// Give it back with [`Router::release_participant_id`] when the session ends.
    pub fn allocate_participant_id(&self) -> Option<u32> {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allocate()
    }

    /// Returns a participant id to the pool once its session has ended.
    pub fn release_participant_id(&self, id: u32) {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(id);
    }

    /// Applies a message from another node to the room it is about, if this
    /// node has one (a node without participants in a meeting ignores it).
    pub fn apply(&self, now: Timestamp, msg: BusMessage) {
        let targets: Vec<Arc<Mutex<Room>>> = {
            let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            match msg.meeting() {
                Some(m) => rooms.get(m).cloned().into_iter().collect(),
                // About every room: a node that went silent, or the bus coming back.
                None => rooms.values().cloned().collect(),
            }
        };
        if targets.is_empty()
            && let BusMessage::SyncRequest { meeting, node } = &msg
        {
            // Nobody here: say so, so a room opening there need not wait for us.
            self.bus.send_to(
                *node,
                BusMessage::Roster {
                    meeting: meeting.clone(),
                    node: self.bus.node(),
                    members: Vec::new(),
                    locked: false,
                    waiting: Vec::new(),
                },
            );
        }
        for room in targets {
            let emptied = {
                let mut guard = lock(&room);
                guard.apply_bus(now, msg.clone());
                guard.is_empty()
            };
            // Held Joins that were all refused leave an empty room behind.
            if emptied {
                let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
                let guard = lock(&room);
                let id = guard.id().to_string();
                if guard.is_empty() && rooms.get(&id).is_some_and(|r| Arc::ptr_eq(r, &room)) {
                    self.close_room(&mut rooms, &id);
                }
            }
        }
    }

    /// Lets through Joins held too long for other nodes' answers; called a
    /// few times a second on a node with a bus.
    pub fn tick(&self, now: Timestamp) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let mut emptied = Vec::new();
        for (id, room) in rooms.iter() {
            let mut guard = lock(room);
            if guard.is_syncing() {
                guard.finish_sync_if_due(now);
                if guard.is_empty() {
                    emptied.push(id.clone());
                }
            }
        }
        for id in emptied {
            self.close_room(&mut rooms, &id);
        }
    }

    /// Joins `meeting`, creating the room if needed. `on_joined` runs with
    /// the room locked, so the caller can queue `Joined` before anything else
    /// reaches the newcomer.
    pub fn join(
        &self,
        now: Timestamp,
        meeting: &str,
        info: Participant,
        subscribe_all: bool,
        outbox: Arc<Outbox>,
        on_joined: impl FnOnce(JoinOutcome),
    ) -> Result<Arc<Mutex<Room>>, ProtocolError> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let room = match rooms.get(meeting) {
            Some(r) => r.clone(),
            None => {
                if rooms.len() >= self.limits.max_rooms {
                    return Err(ProtocolError::new(
                        ErrorCode::TooManyRooms,
                        format!(
                            "the server has its maximum of {} rooms",
                            self.limits.max_rooms
                        ),
                    ));
                }
                let mut room = Room::with_bus(meeting, self.limits, self.bus.clone());
                room.set_waiting_room(self.has_waiting_room(meeting));
                room.start_sync(now, self.bus.peers());
                let r = Arc::new(Mutex::new(room));
                rooms.insert(meeting.to_string(), r.clone());
                // Hear this meeting from now on, and ask who is already in it.
                self.bus.interest(meeting, true);
                self.bus.publish(BusMessage::SyncRequest {
                    meeting: meeting.to_string(),
                    node: self.bus.node(),
                });
                r
            }
        };
        let mut guard = lock(&room);
        let pid = info.participant_id;
        let joined = guard.enter(now, info, subscribe_all, outbox);
        match joined {
            Ok(j) => {
                on_joined(j);
                guard.tell_waiters_to(pid);
                drop(guard);
                Ok(room)
            }
            Err(e) => {
                if guard.is_empty() {
                    self.close_room(&mut rooms, meeting);
                }
                Err(e)
            }
        }
    }

    /// Takes `pid` out of `room`, and drops the room when it is empty.
    pub fn leave(&self, room: &Arc<Mutex<Room>>, pid: u32) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let mut guard = lock(room);
        guard.leave(pid);
        if guard.is_empty() {
            let id = guard.id().to_string();
            if rooms.get(&id).is_some_and(|r| Arc::ptr_eq(r, room)) {
                self.close_room(&mut rooms, &id);
            }
        }
    }

    /// Every meeting this node serves, sorted by id.
    pub fn meetings(&self) -> Vec<MeetingSummary> {
        let rooms: Vec<Arc<Mutex<Room>>> = self
            .rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out: Vec<MeetingSummary> = rooms.iter().map(|r| lock(r).summary()).collect();
        out.sort_by(|a, b| a.meeting_id.cmp(&b.meeting_id));
        out
    }

    /// Carries out a moderator action of the node's operator in `meeting`,
    /// on every node; `None` when this node has no such meeting.
    pub fn moderate(
        &self,
        now: Timestamp,
        meeting: &str,
        req: RoomRequest,
        server_time_us: u64,
    ) -> Option<Result<MeetingSummary, ProtocolError>> {
        let room = self
            .rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(meeting)
            .cloned()?;
        let mut guard = lock(&room);
        let before = guard.summary();
        Some(
            guard
                .handle(now, OPERATOR, req, server_time_us)
                .map(|()| before),
        )
    }

    /// (rooms, participants) now.
    pub fn counts(&self) -> (usize, usize) {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let participants = rooms.values().map(|r| lock(r).len()).sum();
        (rooms.len(), participants)
    }

    /// Bytes queued for this node's participants now, in all their queues
    /// (for `/metrics`: what the server holds for subscribers, §11.5).
    pub fn queued_bytes(&self) -> usize {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.values().map(|r| lock(r).queued_bytes()).sum()
    }
}
