//! Joining a room, its waiting room (PROTOCOL.md §5.8) and leaving (§5.3).

use std::collections::BTreeMap;
use std::sync::Arc;

use convene_protocol::v1::{self, Participant, Role, server_message::Msg};
use convene_protocol::{ErrorCode, ProtocolError, Timestamp};

use crate::bus::BusMessage;
use crate::events::{EventKind, LeaveReason};

use super::forward::Prefs;
use super::media::Subscription;
use super::{JoinOutcome, Local, Member, Room, Waiter, frame};

impl Room {
    /// Adds a participant and tells the others. Returns the `Joined` answer,
    /// which the caller must queue for the newcomer before releasing the room.
    pub fn join(
        &mut self,
        now: Timestamp,
        info: Participant,
        subscribe_all: bool,
        local: Local,
    ) -> Result<v1::Joined, ProtocolError> {
        self.check_entry()?;
        Ok(self.admit_member(now, info, subscribe_all, local))
    }

    /// A Join: into the room, or, when the room has a waiting room and the
    /// newcomer is not a moderator, into the waiting room; its moderators are
    /// asked with `AdmissionRequest`.
    pub fn enter(
        &mut self,
        now: Timestamp,
        info: Participant,
        subscribe_all: bool,
        local: Local,
    ) -> Result<JoinOutcome, ProtocolError> {
        if let Some(s) = &mut self.syncing {
            s.held.push(Waiter {
                info,
                subscribe_all,
                local,
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
                    local,
                },
            );
            return Ok(JoinOutcome::Held);
        }
        Ok(JoinOutcome::Joined(self.admit_member(
            now,
            info,
            subscribe_all,
            local,
        )))
    }

    /// Tells a moderator who just joined who is waiting (called once its
    /// `Joined` is queued, so that comes first).
    pub fn tell_waiters_to(&self, pid: u32) {
        let Some(m) = self.members.get(&pid) else {
            return;
        };
        let (Some(o), true) = (m.outbox(), m.info.role == Role::Moderator as i32) else {
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

    pub(super) fn local_moderators(&self) -> Vec<Arc<crate::outbox::Outbox>> {
        self.members
            .values()
            .filter(|m| m.info.role == Role::Moderator as i32)
            .filter_map(|m| m.outbox().cloned())
            .collect()
    }

    pub(super) fn check_entry(&self) -> Result<(), ProtocolError> {
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
    pub(super) fn admit_member(
        &mut self,
        now: Timestamp,
        info: Participant,
        subscribe_all: bool,
        local: Local,
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
        // The meeting starts with its first member on any node (a node
        // opening a room waits to hear who is already in, §5.3), and a room
        // kept through its empty-room timeout goes on with the same meeting.
        let first = self.members.is_empty() && !self.started && !self.kept;
        self.kept = false;
        self.local += 1;
        let member = Member {
            info,
            local: Some(local.clone()),
            node: self.bus.node(),
            subscribe_all,
            tracks: BTreeMap::new(),
            settings: Default::default(),
            budget: Default::default(),
            announced: false,
            told_e2ee: false,
            entered: now,
        };
        if self.events_on() {
            // Emitted with the room locked: a meeting's events are queued in
            // the order they happened.
            if first {
                self.emit(EventKind::MeetingStarted);
                self.started = true;
            }
            let who = member.who();
            if member.info.recording {
                self.emit(EventKind::RecordingStarted(who.clone()));
            }
            self.emit(EventKind::ParticipantJoined(who));
        }
        self.members.insert(pid, member);
        self.budget_stale.add(pid);
        if subscribe_all {
            let mut requests = Vec::new();
            for (ppid, m) in self.members.iter_mut() {
                if *ppid == pid {
                    continue;
                }
                for (tid, p) in m.tracks.iter_mut() {
                    p.subscribers
                        .push(Subscription::new(pid, &local, Prefs::default(), 0));
                    if !p.audio {
                        requests.push((*ppid, *tid));
                    }
                }
            }
            for (ppid, tid) in requests {
                self.refresh_demand(now, ppid, tid);
                self.request_key_frame(now, ppid, tid, 0, true, 0);
            }
        }
        // Raised hands only for a newcomer that negotiated reactions.1 (§5.9).
        let view = if local.reactions {
            Member::participant
        } else {
            Member::public
        };
        v1::Joined {
            meeting_id: self.id.clone(),
            participants: self.members.values().map(view).collect(),
            locked: self.locked,
            e2ee_required: self.e2ee_required,
        }
    }

    /// Removes a participant: unpublishes its tracks, drops its subscriptions,
    /// and tells the others (PROTOCOL.md §5.3, §9.3).
    pub fn leave(&mut self, pid: u32) {
        self.leave_because(pid, LeaveReason::Left);
    }

    /// [`Room::leave`], recording `reason` for a member of this node.
    pub fn leave_because(&mut self, pid: u32, reason: LeaveReason) {
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
        if self.members.get(&pid).is_some_and(Member::is_local) {
            self.bus.publish(BusMessage::Leave {
                meeting: self.id.clone(),
                participant_id: pid,
            });
        }
        let gone = self
            .members
            .get(&pid)
            .filter(|m| m.is_local() && self.events_on())
            .map(|m| {
                (
                    m.who(),
                    m.info.recording,
                    m.tracks.keys().copied().collect::<Vec<_>>(),
                )
            });
        self.remove_member(pid);
        if let Some((who, recording, tracks)) = gone {
            for track_id in tracks {
                self.emit(EventKind::TrackUnpublished {
                    participant_id: pid,
                    track_id,
                });
            }
            if recording {
                self.emit(EventKind::RecordingEnded(who.clone()));
            }
            self.emit(EventKind::ParticipantLeft(who, reason));
            // Ended by the last member of the meeting, on whichever node.
            if self.members.is_empty() && !self.linger {
                self.emit(EventKind::MeetingEnded);
                self.started = false;
            }
        }
    }

    pub(super) fn remove_member(&mut self, pid: u32) {
        let Some(member) = self.members.remove(&pid) else {
            return;
        };
        if member.is_local() {
            self.local -= 1;
        } else if let Some(n) = self.nodes.get_mut(&member.node) {
            *n -= 1;
            if *n == 0 {
                // Its node has nobody left here: what it wanted goes too,
                // and if it comes back it wants everything until it says.
                self.nodes.remove(&member.node);
                for m in self.members.values_mut().filter(|m| m.is_local()) {
                    for p in m.tracks.values_mut() {
                        p.remote_demand.retain(|(n, _)| *n != member.node);
                    }
                }
            }
        }
        self.board.forget(pid);
        // Its tracks and subscriptions go: what others receive is shared anew.
        self.budget_stale.all();
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
                p.subscribers.retain(|s| s.pid != pid);
            }
        }
        // Its place in everyone's last-N goes to the next.
        self.apply_last_n();
        self.broadcast(
            Msg::ParticipantLeft(v1::ParticipantLeft {
                participant_id: pid,
            }),
            None,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use convene_protocol::RoomRequest;
    use convene_protocol::v1::{self, Participant, TrackKind};
    use prometheus_client::metrics::counter::Counter;

    use super::super::test_util::{NoWake, join_sfu, t};
    use super::super::{Local, Room, RoomLimits};
    use crate::events::{EventKind, Events, LeaveReason, Queued};
    use crate::mailbox::Mailbox;
    use crate::outbox::{Outbox, OutboxLimits};

    /// Every event queued so far, as `name:participant` (tracks as `name:pid/track`).
    fn drain(rx: &mut tokio::sync::mpsc::Receiver<Queued>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Queued::Event(e)) = rx.try_recv() {
            assert_eq!(e.meeting_id, "m");
            out.push(match &e.kind {
                EventKind::ParticipantJoined(w)
                | EventKind::RecordingStarted(w)
                | EventKind::RecordingEnded(w) => format!("{}:{}", e.kind.name(), w.participant_id),
                EventKind::ParticipantLeft(w, r) => {
                    format!("{}:{}:{}", e.kind.name(), w.participant_id, r.as_str())
                }
                EventKind::TrackPublished {
                    participant_id,
                    track_id,
                    kind,
                } => format!("{}:{participant_id}/{track_id}:{kind}", e.kind.name()),
                EventKind::TrackUnpublished {
                    participant_id,
                    track_id,
                } => format!("{}:{participant_id}/{track_id}", e.kind.name()),
                k => k.name().to_string(),
            });
        }
        out
    }

    #[test]
    fn members_of_this_node_are_told_as_events_in_the_order_they_happen() {
        let (events, mut rx) = Events::new(0, Counter::default());
        let mut room = Room::new("m", RoomLimits::default());
        room.set_events(events);
        join_sfu(&mut room, 1, true);
        // A recorder joins.
        let local = Local {
            outbox: Arc::new(Outbox::new(OutboxLimits::default(), Box::new(NoWake))),
            mailbox: Arc::new(Mailbox::new(Box::new(NoWake))),
            sfu: true,
            reactions: true,
        };
        let recorder = Participant {
            participant_id: 2,
            recording: true,
            ..Default::default()
        };
        room.join(t(0), recorder, true, local).unwrap();
        let track = v1::TrackInfo {
            track_id: 5,
            kind: TrackKind::Audio as i32,
            codec: "opus".into(),
            ..Default::default()
        };
        room.handle(t(1), 1, RoomRequest::Publish(track), 0)
            .unwrap();
        assert_eq!(
            drain(&mut rx),
            [
                "meeting_started",
                "participant_joined:1",
                "recording_started:2",
                "participant_joined:2",
                "track_published:1/5:audio",
            ]
        );
        // Removed while publishing: the track goes first.
        room.leave_because(1, LeaveReason::Removed);
        room.leave(2);
        assert_eq!(
            drain(&mut rx),
            [
                "track_unpublished:1/5",
                "participant_left:1:removed",
                "recording_ended:2",
                "participant_left:2:left",
                "meeting_ended",
            ]
        );
        // Leaving twice tells nothing twice.
        room.leave(2);
        assert!(drain(&mut rx).is_empty());
    }

    #[test]
    fn a_meeting_kept_through_its_empty_room_timeout_ends_once_when_the_room_closes() {
        let (events, mut rx) = Events::new(0, Counter::default());
        let mut room = Room::new("m", RoomLimits::default());
        room.set_events(events);
        let settings = crate::meetings::MeetingSettings {
            empty_timeout_s: 60,
            ..Default::default()
        };
        room.apply_settings(&settings, 100);
        join_sfu(&mut room, 1, true);
        room.leave(1);
        // Back within the timeout: the same meeting goes on.
        join_sfu(&mut room, 2, true);
        room.leave(2);
        assert_eq!(
            drain(&mut rx),
            [
                "meeting_started",
                "participant_joined:1",
                "participant_left:1:left",
                "participant_joined:2",
                "participant_left:2:left",
            ]
        );
        room.closing();
        room.closing();
        assert_eq!(drain(&mut rx), ["meeting_ended"]);
    }
}
