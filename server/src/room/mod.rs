//! Rooms (PROTOCOL.md §5.3–§5.8, §6.3–§6.5), sans-IO: a room never touches
//! a socket or a clock; every call that depends on time is given `now`.
//!
//! The room is split by concern, each part an `impl Room` block of its own:
//!
//! - this file: the room's state and what every part uses (sending to members);
//! - [`membership`]: joining, the waiting room, leaving;
//! - [`requests`]: one function per room request kind (§5.4–§5.8);
//! - [`media`]: routing media frames to subscribers, key-frame requests and
//!   congestion hints (§6.3–§6.5), where per-subscriber forwarding grows;
//! - [`bandwidth`]: sharing each subscriber's bandwidth among its
//!   subscriptions (§6.6.3), now and then rather than per frame;
//! - [`cluster`]: what the other nodes of a cluster say and are told;
//! - [`router`]: every room of the node, and participant ids.
//!
//! A media frame is routed by one lookup of its track and a walk over that
//! track's subscriber list, pushing the same reference-counted `Bytes` into
//! each subscriber's [`Outbox`]: one serialization per frame, no allocation
//! per delivery. Control messages to a room are encoded once and shared the
//! same way.

mod bandwidth;
mod cluster;
pub mod forward;
mod media;
mod membership;
mod requests;
mod router;
#[cfg(test)]
mod test_util;

pub use cluster::SYNC_TIMEOUT;
pub use media::{
    DEMAND_REPEAT, HINT_INTERVAL, KEY_FRAME_COALESCE, MIN_HINT_KBPS, RECOVERY, RouteStats,
};
pub use router::{Router, lock};

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use convene_protocol::v1::{self, Participant, Role, ServerMessage, server_message::Msg};
use convene_protocol::{ErrorCode, ProtocolError, Timestamp, TokenBucket, encode_control};

use crate::bus::{Bus, NoBus, NodeId};
use crate::events::{EventKind, Events, Who};
use crate::mailbox::{Admission, Mailbox};
use crate::outbox::Outbox;

use bandwidth::Stale;
use cluster::Syncing;
use media::Publication;

/// The participant id moderation requests carry when they come from the
/// node's operator (the admin API) rather than from a participant: never a
/// participant's id, and allowed every moderator action.
pub const OPERATOR: u32 = 0;

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

/// One participant in a room.
#[derive(Debug)]
struct Member {
    /// As others see it (tracks are filled in when sent).
    info: Participant,
    /// How the room reaches the participant; `None` for a participant
    /// connected to another node.
    local: Option<Local>,
    /// The node the participant is connected to.
    node: NodeId,
    /// Subscribed to everything, now and later.
    subscribe_all: bool,
    /// Published tracks by id.
    tracks: BTreeMap<u32, Publication>,
    /// What the participant wants of the whole room (§6.6.4).
    settings: v1::ReceiverSettings,
    /// How its bandwidth was last shared among its subscriptions (§6.6.3).
    budget: forward::budget::Budget,
    /// It announced an identity key (§14.1): in a meeting that requires
    /// encryption, its media is forwarded only from then on.
    announced: bool,
    /// It was told once that its media is held back for want of encryption.
    told_e2ee: bool,
    /// When it entered the room (on this node; 0 for members elsewhere).
    entered: Timestamp,
}

impl Member {
    /// Where frames for this participant go, if it is connected to this node.
    fn outbox(&self) -> Option<&Arc<Outbox>> {
        self.local.as_ref().map(|l| &l.outbox)
    }

    /// Whether the participant is connected to this node.
    fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// The member as events describe it.
    fn who(&self) -> Who {
        Who {
            participant_id: self.info.participant_id,
            user_id: self.info.user_id.clone(),
            display_name: self.info.display_name.clone(),
            node_id: u32::from(self.node),
        }
    }

    fn participant(&self) -> Participant {
        Participant {
            tracks: self.tracks.values().map(|p| p.info.clone()).collect(),
            ..self.info.clone()
        }
    }

    /// As told to sessions that may not have negotiated `reactions.1`
    /// (PROTOCOL.md §5.9): without the raised hand.
    fn public(&self) -> Participant {
        Participant {
            hand_raised: false,
            ..self.participant()
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
    /// The meeting has an empty-room timeout: the room outlives its last
    /// member, and the meeting ends (as events tell) only when it closes.
    linger: bool,
    /// MeetingStarted was told (by this node) and MeetingEnded not yet.
    started: bool,
    /// Empty, and kept for the meeting's empty-room timeout: a join goes on
    /// with the same meeting.
    kept: bool,
    /// Only sealed media is forwarded, and only after its sender's
    /// announcement (§14): the meeting requires end-to-end encryption.
    e2ee_required: bool,
    /// What members who are not moderators may publish.
    guest_publish: crate::meetings::GuestPublish,
    /// Since when the room has required encryption, as its checks saw it
    /// (set at the first check after it was turned on).
    e2ee_since: Option<Timestamp>,
    /// Capacity.
    limits: RoomLimits,
    /// The other nodes.
    bus: Arc<dyn Bus>,
    /// Members connected to this node.
    local: usize,
    /// Members connected to each other node (nodes without any are absent).
    nodes: BTreeMap<NodeId, u32>,
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
    /// The loudest audio tracks right now (§6.6.4).
    loudest: forward::speakers::Loudest,
    /// The dominant speaker and who last took the floor (§6.6.4).
    board: forward::speakers::Board,
    /// Whose budgets something they depend on changed for (settings,
    /// subscriptions, preferences, speakers): the next frame shares them
    /// out again.
    budget_stale: Stale,
    /// When the budgets were last shared out.
    budget_at: Option<Timestamp>,
    /// Where what happens to this node's members is told (attendance,
    /// webhooks): a queue, never waited on.
    events: Arc<Events>,
}

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
    local: Local,
}

/// How the room reaches a participant connected to this node: the queue its
/// frames go to, and the mailbox for the room's decisions on its session.
#[derive(Debug, Clone)]
pub struct Local {
    /// Frames for the participant, drained by its connection's writer.
    pub outbox: Arc<Outbox>,
    /// Removal, end of meeting and answers to a held Join, read by its connection.
    pub mailbox: Arc<Mailbox>,
    /// The session negotiated `sfu.1` (§6.6): it gets LAYERED frames and
    /// the extension's messages.
    pub sfu: bool,
    /// The session negotiated `reactions.1` (§5.9): it hears of raised
    /// hands and reactions.
    pub reactions: bool,
}

impl Local {
    /// Admits a participant whose Join was held: `joined` goes first in its
    /// queue, and the decision is recorded before that frame can be written,
    /// so whatever the client sends after reading it finds the session admitted.
    fn admit(&self, joined: Bytes) {
        self.mailbox.settle_then(Admission::Admitted, || {
            self.outbox.push_control(joined);
        });
    }
}

/// What a Join led to.
#[derive(Debug, Clone, PartialEq)]
pub enum JoinOutcome {
    /// In the room: queue this `Joined` for the newcomer.
    Joined(v1::Joined),
    /// In the waiting room until a moderator decides.
    Held,
    /// Held while the room learns who is in the meeting on other nodes;
    /// answered through the mailbox ([`Admission`]).
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
            linger: false,
            started: false,
            kept: false,
            e2ee_required: false,
            guest_publish: crate::meetings::GuestPublish::ALL,
            e2ee_since: None,
            limits,
            bus,
            local: 0,
            nodes: BTreeMap::new(),
            waiting_room: false,
            waiting: BTreeMap::new(),
            remote_waiting: BTreeMap::new(),
            syncing: None,
            relay_budget: None,
            loudest: Default::default(),
            board: Default::default(),
            budget_stale: Stale::default(),
            budget_at: None,
            events: Events::disabled(),
        }
    }

    /// Tells what happens to this node's members to `events`.
    pub fn set_events(&mut self, events: Arc<Events>) {
        self.events = events;
    }

    /// Members of this node who have not announced an identity key `grace`
    /// after they entered, or after the room came to require encryption:
    /// in a meeting that requires it, they are to be removed (§14.7).
    pub fn unannounced(&mut self, now: Timestamp, grace: std::time::Duration) -> Vec<u32> {
        if !self.e2ee_required {
            return Vec::new();
        }
        let since = *self.e2ee_since.get_or_insert(now);
        self.members
            .iter()
            .filter(|(_, m)| m.is_local() && !m.announced)
            .filter(|(_, m)| now.saturating_since(m.entered.max(since)) >= grace)
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// Ends the session of `pid`, a member of this node, as `why` says (its
    /// connection says Goodbye and leaves); false when it is not one.
    pub fn kick(&mut self, pid: u32, why: crate::mailbox::Kick) -> bool {
        match self.members.get_mut(&pid).and_then(|m| m.local.as_ref()) {
            Some(l) => {
                l.mailbox.kick(why);
                true
            }
            None => false,
        }
    }

    /// The room, empty, is kept for the meeting's empty-room timeout.
    pub fn keep(&mut self) {
        self.kept = true;
    }

    /// The room closes for good: a meeting its empty-room timeout kept
    /// going ends now, as far as events tell.
    pub fn closing(&mut self) {
        if std::mem::take(&mut self.started) && self.events_on() {
            self.emit(EventKind::MeetingEnded);
        }
    }

    /// Emits an event about this meeting.
    pub(super) fn emit(&self, kind: EventKind) {
        self.events.emit(&self.id, kind);
    }

    /// Whether events are recorded (so that building one can be skipped).
    pub(super) fn events_on(&self) -> bool {
        self.events.enabled()
    }

    /// Gives the room a waiting room (or takes it away).
    pub fn set_waiting_room(&mut self, on: bool) {
        self.waiting_room = on;
    }

    /// Follows a managed meeting's settings (server limit `server_max`
    /// participants): the waiting room and the limit hold from the next
    /// join; a change of lock is told to everyone in the room, as a
    /// moderator's LockRoom is (§5.8). Nobody in the room is removed.
    pub fn apply_settings(&mut self, s: &crate::meetings::MeetingSettings, server_max: u32) {
        self.waiting_room = s.waiting_room;
        if s.e2ee_required && !self.e2ee_required {
            // Everyone sending plain media is told again, once.
            for m in self.members.values_mut() {
                m.told_e2ee = false;
            }
        }
        if !s.e2ee_required {
            self.e2ee_since = None;
        }
        self.e2ee_required = s.e2ee_required;
        self.linger = s.empty_timeout_s > 0;
        self.guest_publish = s.guest_publish;
        self.limits.max_participants = s.room_limit(server_max);
        if self.locked != s.locked {
            self.locked = s.locked;
            self.broadcast(Msg::RoomLocked(v1::RoomLocked { locked: s.locked }), None);
        }
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

    /// Bytes queued for this node's members now.
    pub fn queued_bytes(&self) -> usize {
        self.members
            .values()
            .filter_map(Member::outbox)
            .map(|o| o.bytes())
            .sum()
    }

    /// Number of participants on all nodes.
    pub fn total(&self) -> usize {
        self.members.len()
    }

    pub(super) fn broadcast(&self, msg: Msg, except: Option<u32>) {
        let f = frame(msg);
        for (pid, m) in &self.members {
            if let (true, Some(o)) = (Some(*pid) != except, m.outbox()) {
                o.push_control(f.clone());
            }
        }
    }

    pub(super) fn send_to(&self, pid: u32, msg: Msg) {
        if let Some(o) = self.members.get(&pid).and_then(Member::outbox) {
            o.push_control(frame(msg));
        }
    }

    /// Relays a chat or E2EE message to `to` (everyone but `except` when
    /// None): in the recipients' relay lanes, behind their audio.
    pub(super) fn relay(&self, msg: Msg, to: Option<u32>, except: Option<u32>) {
        let f = frame(msg);
        match to {
            Some(pid) => {
                if let Some(o) = self.members.get(&pid).and_then(Member::outbox) {
                    o.push_relay(f);
                }
            }
            None => {
                for (pid, m) in &self.members {
                    if let (true, Some(o)) = (Some(*pid) != except, m.outbox()) {
                        o.push_relay(f.clone());
                    }
                }
            }
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

    pub(super) fn require_moderator(&self, pid: u32) -> Result<(), ProtocolError> {
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

    pub(super) fn require_member(&self, pid: u32) -> Result<(), ProtocolError> {
        if self.members.contains_key(&pid) {
            Ok(())
        } else {
            Err(ProtocolError::new(
                ErrorCode::UnknownParticipant,
                format!("participant {pid} is not in your room"),
            ))
        }
    }

    /// The node where `pid` waits, when that is not this one.
    pub(super) fn waits_elsewhere(&self, pid: u32) -> Option<NodeId> {
        if self.waiting.contains_key(&pid) {
            return None;
        }
        self.remote_waiting.get(&pid).map(|(n, _)| *n)
    }
}
