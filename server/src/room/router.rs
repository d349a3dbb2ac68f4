//! The router: every room of this node, by meeting id, and the participant
//! ids in use. Lock order: the room map, then one room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use convene_protocol::v1::Participant;
use convene_protocol::{ErrorCode, ProtocolError, RoomRequest, Timestamp};

use crate::bus::{Bus, BusMessage, NoBus, PARTICIPANT_BITS};
use crate::events::{Events, LeaveReason};
use crate::ids::IdAllocator;
use crate::meetings::{MeetingCache, Policy};

use super::{JoinOutcome, Local, MeetingSummary, OPERATOR, Room, RoomLimits};

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
    /// What each meeting asks of its room: managed settings, or the ad-hoc defaults.
    meetings: Arc<MeetingCache>,
    /// Empty rooms of managed meetings with an empty-room timeout, kept
    /// (still hearing the meeting from other nodes) since when they emptied.
    /// Lock order: after the room map.
    lingering: Mutex<HashMap<String, Timestamp>>,
    /// Where rooms tell what happens to their members.
    events: Arc<Events>,
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
            meetings: Arc::new(MeetingCache::ad_hoc(Vec::new())),
            lingering: Mutex::new(HashMap::new()),
            events: Events::disabled(),
        }
    }

    /// Rooms tell what happens to their members (joins, leaves, tracks) to `events`.
    pub fn with_events(mut self, events: Arc<Events>) -> Self {
        self.events = events;
        self
    }

    /// Ad-hoc meetings that get a waiting room: ids, or prefixes ending in `*`.
    pub fn with_waiting_rooms(mut self, patterns: Vec<String>) -> Self {
        self.meetings = Arc::new(MeetingCache::ad_hoc(patterns));
        self
    }

    /// Rooms follow the managed meetings in `meetings`, and its ad-hoc defaults otherwise.
    pub fn with_meetings(mut self, meetings: Arc<MeetingCache>) -> Self {
        self.meetings = meetings;
        self
    }

    /// Applies `meeting`'s managed settings, as the cache holds them now, to
    /// its live room at once, if this node has one: the lock (told to
    /// everyone in it), the waiting room and the participant limit, for the
    /// next join. Reading the cache here, rather than taking the settings,
    /// means two updates racing each other leave the room with the later one.
    pub fn apply_settings(&self, meeting: &str) {
        let Policy::Managed(settings) = self.meetings.policy(meeting) else {
            return;
        };
        let room = self
            .rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(meeting)
            .cloned();
        if let Some(room) = room {
            lock(&room).apply_settings(&settings, self.limits.max_participants);
        }
    }

    /// Forgets a room and stops hearing its meeting from the other nodes
    /// (the two go together: a node hears a meeting while it has its room).
    fn close_room(&self, rooms: &mut HashMap<String, Arc<Mutex<Room>>>, id: &str) {
        rooms.remove(id);
        self.lingering().remove(id);
        self.bus.interest(id, false);
    }

    /// A room just found empty: closed, unless its meeting has an empty-room
    /// timeout; then it is kept, so a join here or on another node within
    /// the timeout goes on with the same meeting, and [`Router::end_idle`]
    /// ends the meeting once the timeout has passed.
    fn emptied(&self, now: Timestamp, rooms: &mut HashMap<String, Arc<Mutex<Room>>>, id: &str) {
        match self.meetings.policy(id) {
            Policy::Managed(s) if s.empty_timeout_s > 0 => {
                self.lingering().entry(id.to_string()).or_insert(now);
                if let Some(r) = rooms.get(id) {
                    lock(r).keep();
                }
            }
            _ => self.close_room(rooms, id),
        }
    }

    /// Closes the rooms of managed meetings that have been empty for their
    /// timeout, and returns those meetings: they have ended (the caller
    /// records it, so later joins are refused). A room whose meeting lost
    /// its timeout meanwhile is closed without ending anything.
    pub fn end_idle(&self, now: Timestamp) -> Vec<String> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let due: Vec<(String, bool)> = self
            .lingering()
            .iter()
            .filter_map(|(id, since)| match self.meetings.policy(id) {
                Policy::Managed(s) if s.empty_timeout_s > 0 => (now.saturating_since(*since)
                    >= std::time::Duration::from_secs(u64::from(s.empty_timeout_s)))
                .then(|| (id.clone(), true)),
                _ => Some((id.clone(), false)),
            })
            .collect();
        let mut ended = Vec::new();
        for (id, ends) in due {
            let still_empty = rooms.get(&id).is_none_or(|r| lock(r).is_empty());
            if still_empty {
                if let Some(r) = rooms.get(&id) {
                    lock(r).closing();
                }
                self.close_room(&mut rooms, &id);
                if ends {
                    ended.push(id);
                }
            } else {
                self.lingering().remove(&id);
            }
        }
        ended
    }

    /// Removes, in meetings that require encryption, members of this node
    /// that have not announced an identity key within `grace` (§14.7), as
    /// the operator would; returns them as (meeting, participant).
    pub fn remove_unannounced(
        &self,
        now: Timestamp,
        grace: std::time::Duration,
    ) -> Vec<(String, u32)> {
        let rooms: Vec<Arc<Mutex<Room>>> = self
            .rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut removed = Vec::new();
        for room in rooms {
            let mut guard = lock(&room);
            for pid in guard.unannounced(now, grace) {
                if guard.kick(pid, crate::mailbox::Kick::NoKey) {
                    removed.push((guard.id().to_string(), pid));
                }
            }
        }
        removed
    }

    fn lingering(&self) -> MutexGuard<'_, HashMap<String, Timestamp>> {
        self.lingering.lock().unwrap_or_else(|p| p.into_inner())
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
            let (emptied, id) = {
                let mut guard = lock(&room);
                guard.apply_bus(now, msg.clone());
                (guard.is_empty(), guard.id().to_string())
            };
            if !emptied {
                // Someone came back on another node: the meeting goes on.
                self.lingering().remove(&id);
                continue;
            }
            // Held Joins that were all refused, or the last member (on
            // another node) gone, leave an empty room behind.
            let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            let guard = lock(&room);
            if guard.is_empty() && rooms.get(&id).is_some_and(|r| Arc::ptr_eq(r, &room)) {
                drop(guard);
                self.emptied(now, &mut rooms, &id);
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
            self.emptied(now, &mut rooms, &id);
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
        local: Local,
        on_joined: impl FnOnce(JoinOutcome),
    ) -> Result<Arc<Mutex<Room>>, ProtocolError> {
        let policy = self.meetings.policy(meeting);
        if policy == Policy::Refused {
            return Err(ProtocolError::new(
                ErrorCode::UnknownMeeting,
                format!(
                    "meeting {meeting:?} was not created, and this server serves only created meetings"
                ),
            ));
        }
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
                match &policy {
                    Policy::Managed(s) => room.apply_settings(s, self.limits.max_participants),
                    Policy::AdHoc { waiting_room } => room.set_waiting_room(*waiting_room),
                    Policy::Refused => {}
                }
                room.set_events(self.events.clone());
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
        let joined = guard.enter(now, info, subscribe_all, local);
        match joined {
            Ok(j) => {
                on_joined(j);
                guard.tell_waiters_to(pid);
                if !guard.is_empty() {
                    self.lingering().remove(meeting);
                }
                drop(guard);
                Ok(room)
            }
            Err(e) => {
                if guard.is_empty() {
                    drop(guard);
                    self.emptied(now, &mut rooms, meeting);
                }
                Err(e)
            }
        }
    }

    /// Takes `pid` out of `room` at `now`, and drops the room when it is
    /// empty (or keeps it for its meeting's empty-room timeout).
    pub fn leave(&self, now: Timestamp, room: &Arc<Mutex<Room>>, pid: u32) {
        self.leave_because(now, room, pid, LeaveReason::Left);
    }

    /// [`Router::leave`], recording why.
    pub fn leave_because(
        &self,
        now: Timestamp,
        room: &Arc<Mutex<Room>>,
        pid: u32,
        reason: LeaveReason,
    ) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let mut guard = lock(room);
        guard.leave_because(pid, reason);
        if guard.is_empty() {
            let id = guard.id().to_string();
            drop(guard);
            if rooms.get(&id).is_some_and(|r| Arc::ptr_eq(r, room)) {
                self.emptied(now, &mut rooms, &id);
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

    /// One meeting as the admin API shows it, when this node serves it.
    pub fn meeting(&self, meeting: &str) -> Option<MeetingSummary> {
        let room = self
            .rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(meeting)
            .cloned()?;
        Some(lock(&room).summary())
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
