//! Room requests (PROTOCOL.md §5.4–§5.8): [`Room::handle`] checks the room's
//! relay budget, hands each kind to a function of its own, and tells the
//! other nodes of what they must apply too.

use convene_protocol::v1::{self, TrackKind, server_message::Msg};
use convene_protocol::{ErrorCode, ProtocolError, RoomRequest, Timestamp, TokenBucket};

use crate::bus::{BusMessage, NodeId};
use crate::events::EventKind;
use crate::mailbox::{Admission, Kick};

use super::forward::Prefs;
use super::media::{Publication, Subscription};
use super::{Member, Room, frame, nobody_waiting, self_gone, unknown_track};

/// Room requests other nodes must apply too (subscriptions stay local:
/// every node already receives the meeting's media).
pub(super) fn replicated(req: &RoomRequest) -> bool {
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
            | RoomRequest::RaiseHand(_)
            | RoomRequest::SendReaction(_)
    )
}

impl Room {
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
            RoomRequest::RaiseHand(_) | RoomRequest::SendReaction(_) => {
                self.spend_relay_budget(now, convene_protocol::REACTION_RELAY_BYTES as usize)?
            }
            _ => {}
        }
        if let RoomRequest::Publish(t) = &req {
            self.check_guest_publish(pid, t.kind)?;
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
    pub(super) fn apply_request(
        &mut self,
        now: Timestamp,
        pid: u32,
        req: RoomRequest,
        server_time_us: u64,
    ) -> Result<(), ProtocolError> {
        // What subscribers receive, or want, changes: their budgets are
        // shared out again at the next frame (§6.6.3), only the sender's
        // when only its own subscriptions changed.
        match &req {
            RoomRequest::Subscribe(_)
            | RoomRequest::Unsubscribe(_)
            | RoomRequest::UpdateSubscription(_)
            | RoomRequest::ReceiverSettings(_) => self.budget_stale.add(pid),
            RoomRequest::Publish(_) | RoomRequest::Unpublish(_) | RoomRequest::SetTrackMuted(_) => {
                self.budget_stale.all()
            }
            _ => {}
        }
        match req {
            RoomRequest::UpdateSelf(u) => self.update_self(pid, u),
            RoomRequest::Publish(track) => self.publish(now, pid, track),
            RoomRequest::Unpublish(u) => self.unpublish(pid, u),
            RoomRequest::SetTrackMuted(s) => self.set_track_muted(pid, s),
            RoomRequest::Subscribe(s) => self.subscribe(now, pid, s),
            RoomRequest::Unsubscribe(u) => self.unsubscribe(pid, u),
            RoomRequest::KeyFrameRequest(k) => self.key_frame_request(now, pid, k),
            // Reports inform the sender's own congestion control; the room keeps no state from them.
            RoomRequest::ReceiverReport(_) => Ok(()),
            RoomRequest::Chat(c) => self.chat(pid, c, server_time_us),
            RoomRequest::E2ee(e) => self.e2ee(pid, e),
            RoomRequest::MuteRequest(m) => self.mute_request(pid, m),
            RoomRequest::RemoveParticipant(r) => self.remove_participant(pid, r),
            RoomRequest::LockRoom(l) => self.lock_room(pid, l),
            RoomRequest::Admit(a) => self.admit(now, pid, a),
            RoomRequest::Deny(d) => self.deny(pid, d),
            RoomRequest::EndMeeting(_) => self.end_meeting(pid),
            RoomRequest::UpdateSubscription(u) => self.update_subscription(now, pid, u),
            RoomRequest::ReceiverSettings(r) => self.receiver_settings(pid, r),
            RoomRequest::RaiseHand(r) => self.raise_hand(pid, r),
            RoomRequest::SendReaction(r) => self.send_reaction(pid, r),
            _ => Ok(()),
        }
    }

    /// RaiseHand: the sender's hand up or down, told to the sessions that
    /// negotiated `reactions.1` when it changes (§5.9).
    fn raise_hand(&mut self, pid: u32, r: v1::RaiseHand) -> Result<(), ProtocolError> {
        let m = self.members.get_mut(&pid).ok_or_else(|| self_gone(pid))?;
        if m.info.hand_raised == r.raised {
            return Ok(());
        }
        m.info.hand_raised = r.raised;
        self.tell_reactions(Msg::HandRaised(v1::HandRaised {
            participant_id: pid,
            raised: r.raised,
        }));
        Ok(())
    }

    /// SendReaction: relayed to the sessions that negotiated `reactions.1`,
    /// the sender's included, and not kept (§5.9).
    fn send_reaction(&mut self, pid: u32, r: v1::SendReaction) -> Result<(), ProtocolError> {
        if !self.members.contains_key(&pid) {
            return Err(self_gone(pid));
        }
        self.tell_reactions(Msg::Reaction(v1::Reaction {
            participant_id: pid,
            kind: r.kind,
        }));
        Ok(())
    }

    /// Sends `msg` to every member of this node that negotiated `reactions.1`.
    pub(super) fn tell_reactions(&self, msg: Msg) {
        let f = frame(msg);
        for m in self.members.values() {
            if let Some(l) = m.local.as_ref().filter(|l| l.reactions) {
                l.outbox.push_control(f.clone());
            }
        }
    }

    /// UpdateSelf: a new display name, told to everyone (§5.4).
    fn update_self(&mut self, pid: u32, u: v1::UpdateSelf) -> Result<(), ProtocolError> {
        let m = self.members.get_mut(&pid).ok_or_else(|| self_gone(pid))?;
        m.info.display_name = u.display_name;
        let p = m.public();
        self.broadcast(
            Msg::ParticipantUpdated(v1::ParticipantUpdated {
                participant: Some(p),
            }),
            None,
        );
        Ok(())
    }

    /// Refuses a Publish the meeting does not let `pid` make: a member who
    /// is not a moderator, a kind the meeting keeps from guests. Checked
    /// where the member is connected, so nodes never disagree.
    fn check_guest_publish(&self, pid: u32, kind: i32) -> Result<(), ProtocolError> {
        let moderator = self
            .members
            .get(&pid)
            .is_some_and(|m| m.info.role == v1::Role::Moderator as i32);
        if moderator || self.guest_publish.allows(kind) {
            return Ok(());
        }
        Err(ProtocolError::new(
            ErrorCode::PermissionDenied,
            format!(
                "in this meeting participants who are not moderators may publish {}; a moderator can share for you",
                self.guest_publish.names()
            ),
        ))
    }

    /// Publish: a new track, subscribed at once by members who take everything (§5.5).
    fn publish(
        &mut self,
        now: Timestamp,
        pid: u32,
        track: v1::TrackInfo,
    ) -> Result<(), ProtocolError> {
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
        let audio = track.kind == TrackKind::Audio as i32;
        let subscribers = self
            .members
            .iter()
            .filter(|(other, m)| **other != pid && m.subscribe_all)
            .filter_map(|(other, m)| {
                let audio_n = if audio { m.settings.audio_n } else { 0 };
                Some(Subscription::new(
                    *other,
                    m.local.as_ref()?,
                    Prefs::default(),
                    audio_n,
                ))
            })
            .collect();
        let tid = track.track_id;
        let camera = track.kind == TrackKind::Video as i32;
        let m = self.members.get_mut(&pid).ok_or_else(|| self_gone(pid))?;
        m.tracks
            .insert(tid, Publication::new(now, track.clone(), subscribers));
        if camera {
            // A new camera has its place in everyone's last-N at once.
            self.apply_last_n();
        }
        if self.events_on() && self.members.get(&pid).is_some_and(|m| m.is_local()) {
            self.emit(EventKind::TrackPublished {
                participant_id: pid,
                track_id: tid,
                kind: track_kind(track.kind),
            });
        }
        self.broadcast(
            Msg::TrackPublished(v1::TrackPublished {
                participant_id: pid,
                track: Some(track),
            }),
            None,
        );
        Ok(())
    }

    /// Unpublish: the track goes, with its subscriptions (§5.5).
    fn unpublish(&mut self, pid: u32, u: v1::Unpublish) -> Result<(), ProtocolError> {
        self.own_track(pid, u.track_id)?;
        let camera = self
            .members
            .get_mut(&pid)
            .and_then(|m| m.tracks.remove(&u.track_id))
            .is_some_and(|p| p.camera);
        if camera {
            // A camera gone leaves a place in last-N to the next.
            self.apply_last_n();
        }
        if self.events_on() && self.members.get(&pid).is_some_and(|m| m.is_local()) {
            self.emit(EventKind::TrackUnpublished {
                participant_id: pid,
                track_id: u.track_id,
            });
        }
        self.broadcast(
            Msg::TrackUnpublished(v1::TrackUnpublished {
                participant_id: pid,
                track_id: u.track_id,
            }),
            None,
        );
        Ok(())
    }

    /// SetTrackMuted: muted tracks are not routed (§5.5).
    fn set_track_muted(&mut self, pid: u32, s: v1::SetTrackMuted) -> Result<(), ProtocolError> {
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
        Ok(())
    }

    /// Subscribe: one track of another member; a video track is asked for a key frame (§5.6).
    fn subscribe(
        &mut self,
        now: Timestamp,
        pid: u32,
        s: v1::Subscribe,
    ) -> Result<(), ProtocolError> {
        if s.participant_id == pid {
            return Err(ProtocolError::new(
                ErrorCode::UnknownTrack,
                "you cannot subscribe to your own track",
            ));
        }
        let (local, audio_n) = self
            .members
            .get(&pid)
            .and_then(|m| Some((m.local.clone()?, m.settings.audio_n)))
            .ok_or_else(|| self_gone(pid))?;
        let prefs = s.preferences.as_ref().map(Prefs::from).unwrap_or_default();
        let p = self
            .members
            .get_mut(&s.participant_id)
            .and_then(|m| m.tracks.get_mut(&s.track_id))
            .ok_or_else(|| unknown_track(s.participant_id, s.track_id))?;
        let audio = p.audio;
        match p.subscribers.iter_mut().find(|x| x.pid == pid) {
            // Subscribing twice changes nothing but the preferences given.
            Some(x) => x.sel.prefs = prefs,
            None => {
                let audio_n = if audio { audio_n } else { 0 };
                p.subscribers
                    .push(Subscription::new(pid, &local, prefs, audio_n));
                if !audio {
                    self.apply_last_n();
                }
            }
        }
        self.send_to(
            pid,
            Msg::Subscribed(v1::Subscribed {
                participant_id: s.participant_id,
                track_id: s.track_id,
            }),
        );
        if !audio {
            self.refresh_demand(now, s.participant_id, s.track_id);
            self.request_key_frame(now, s.participant_id, s.track_id, 0, true, 0);
        }
        Ok(())
    }

    /// UpdateSubscription: new preferences for a track the sender receives (§6.6.3).
    fn update_subscription(
        &mut self,
        now: Timestamp,
        pid: u32,
        u: v1::UpdateSubscription,
    ) -> Result<(), ProtocolError> {
        let prefs = u.preferences.as_ref().map(Prefs::from).unwrap_or_default();
        let s = self
            .members
            .get_mut(&u.participant_id)
            .and_then(|m| m.tracks.get_mut(&u.track_id))
            .and_then(|p| p.subscribers.iter_mut().find(|s| s.pid == pid))
            .ok_or_else(|| {
                ProtocolError::new(
                    ErrorCode::UnknownTrack,
                    format!(
                        "you are not subscribed to track {} of participant {}",
                        u.track_id, u.participant_id
                    ),
                )
            })?;
        s.sel.prefs = prefs;
        self.refresh_demand(now, u.participant_id, u.track_id);
        Ok(())
    }

    /// ReceiverSettings: loudest-N audio, last-N video and the most it
    /// wants received, for the sender (§6.6.4).
    fn receiver_settings(
        &mut self,
        pid: u32,
        r: v1::ReceiverSettings,
    ) -> Result<(), ProtocolError> {
        let m = self.members.get_mut(&pid).ok_or_else(|| self_gone(pid))?;
        let audio_n = r.audio_n.min(u8::MAX as u32) as u8;
        if r.max_receive_kbps != m.settings.max_receive_kbps {
            // The subscriber's own choice: a higher cap applies at once,
            // without the hold that keeps estimates from flapping.
            m.budget.reset();
        }
        m.settings = r;
        for m in self.members.values_mut() {
            for p in m.tracks.values_mut().filter(|p| p.audio) {
                for s in p.subscribers.iter_mut().filter(|s| s.pid == pid) {
                    s.audio_n = audio_n;
                }
            }
        }
        self.apply_last_n();
        Ok(())
    }

    /// Unsubscribe (§5.6).
    fn unsubscribe(&mut self, pid: u32, u: v1::Unsubscribe) -> Result<(), ProtocolError> {
        let p = self
            .members
            .get_mut(&u.participant_id)
            .and_then(|m| m.tracks.get_mut(&u.track_id))
            .ok_or_else(|| unknown_track(u.participant_id, u.track_id))?;
        p.subscribers.retain(|x| x.pid != pid);
        Ok(())
    }

    /// KeyFrameRequest: only a subscriber may ask, coalesced per track (§6.5).
    fn key_frame_request(
        &mut self,
        now: Timestamp,
        pid: u32,
        k: v1::KeyFrameRequest,
    ) -> Result<(), ProtocolError> {
        let p = (k.participant_id != pid)
            .then(|| self.members.get(&k.participant_id))
            .flatten()
            .and_then(|m| m.tracks.get(&k.track_id))
            .ok_or_else(|| unknown_track(k.participant_id, k.track_id))?;
        // Only a subscriber needs the track's key frames (§6.5).
        if !p.subscribers.iter().any(|s| s.pid == pid) {
            return Err(ProtocolError::new(
                ErrorCode::UnknownTrack,
                format!(
                    "you are not subscribed to track {} of participant {}",
                    k.track_id, k.participant_id
                ),
            ));
        }
        self.request_key_frame(
            now,
            k.participant_id,
            k.track_id,
            pid,
            true,
            k.encoding_mask as u8,
        );
        Ok(())
    }

    /// Chat: to everyone or to one member (and back to its sender), behind audio (§5.7).
    fn chat(
        &mut self,
        pid: u32,
        c: v1::ChatSend,
        server_time_us: u64,
    ) -> Result<(), ProtocolError> {
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
                if let Some(o) = self.members.get(&to).and_then(Member::outbox) {
                    o.push_relay(f.clone());
                }
            }
        }
        Ok(())
    }

    /// E2ee: key exchange, relayed as is to everyone else or to one member (§5.7).
    fn e2ee(&mut self, pid: u32, e: v1::E2eeSend) -> Result<(), ProtocolError> {
        if e.to_participant_id == 0
            && convene_protocol::e2ee::is_announcement(&e.payload)
            && let Some(m) = self.members.get_mut(&pid)
        {
            m.announced = true;
        }
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
        Ok(())
    }

    /// MuteRequest: a moderator asks a member to mute (§5.8).
    fn mute_request(&mut self, pid: u32, m: v1::MuteRequest) -> Result<(), ProtocolError> {
        self.require_moderator(pid)?;
        self.require_member(m.participant_id)?;
        self.send_to(
            m.participant_id,
            Msg::MuteRequested(v1::MuteRequested {
                by_participant_id: pid,
                kind: m.kind,
            }),
        );
        Ok(())
    }

    /// RemoveParticipant: a moderator removes a member (§5.8).
    fn remove_participant(
        &mut self,
        pid: u32,
        r: v1::RemoveParticipant,
    ) -> Result<(), ProtocolError> {
        self.require_moderator(pid)?;
        self.require_member(r.participant_id)?;
        self.kick(r.participant_id, Kick::Removed);
        Ok(())
    }

    /// LockRoom: a locked room refuses joins (§5.8).
    fn lock_room(&mut self, pid: u32, l: v1::LockRoom) -> Result<(), ProtocolError> {
        self.require_moderator(pid)?;
        self.locked = l.locked;
        self.broadcast(Msg::RoomLocked(v1::RoomLocked { locked: l.locked }), None);
        Ok(())
    }

    /// Admit: a moderator lets someone in from the waiting room, wherever it waits (§5.8).
    fn admit(&mut self, now: Timestamp, pid: u32, a: v1::Admit) -> Result<(), ProtocolError> {
        self.require_moderator(pid)?;
        if let Some(node) = self.waits_elsewhere(a.participant_id) {
            self.forward_to(node, pid, RoomRequest::Admit(a));
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
        let local = w.local.clone();
        let joined = self.admit_member(now, w.info, w.subscribe_all, w.local);
        // Joined goes first into the newcomer's queue: nothing the
        // room sends it can overtake it.
        local.admit(frame(Msg::Joined(joined)));
        Ok(())
    }

    /// Hands a moderator's decision to the node where the newcomer waits:
    /// that node lets it in or turns it away.
    fn forward_to(&self, node: NodeId, moderator: u32, request: RoomRequest) {
        self.bus.send_to(
            node,
            BusMessage::Request {
                meeting: self.id.clone(),
                participant_id: moderator,
                request,
                server_time_us: 0,
            },
        );
    }

    /// Deny: a moderator turns someone in the waiting room away (§5.8).
    fn deny(&mut self, pid: u32, d: v1::Deny) -> Result<(), ProtocolError> {
        self.require_moderator(pid)?;
        if let Some(node) = self.waits_elsewhere(d.participant_id) {
            self.forward_to(node, pid, RoomRequest::Deny(d));
            return Ok(());
        }
        let w = self
            .waiting
            .remove(&d.participant_id)
            .ok_or_else(|| nobody_waiting(d.participant_id))?;
        w.local.mailbox.settle(Admission::Denied);
        self.bus.publish(BusMessage::WaitingGone {
            meeting: self.id.clone(),
            participant_id: d.participant_id,
        });
        Ok(())
    }

    /// EndMeeting: every member on this node is told the meeting ended (§5.8).
    fn end_meeting(&mut self, pid: u32) -> Result<(), ProtocolError> {
        self.require_moderator(pid)?;
        for l in self.members.values().filter_map(|m| m.local.as_ref()) {
            l.mailbox.kick(Kick::MeetingEnded);
        }
        Ok(())
    }

    /// Takes `bytes` from the room's budget for messages to everyone, or
    /// says RATE_LIMITED: what all members together make the room relay to
    /// each member is bounded (PROTOCOL.md §7), so no group of senders can
    /// fill someone's link.
    pub(super) fn spend_relay_budget(
        &mut self,
        now: Timestamp,
        bytes: usize,
    ) -> Result<(), ProtocolError> {
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

    pub(super) fn own_track(
        &mut self,
        pid: u32,
        track: u32,
    ) -> Result<&mut Publication, ProtocolError> {
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
}

/// A track kind's name in events.
fn track_kind(kind: i32) -> &'static str {
    match TrackKind::try_from(kind) {
        Ok(TrackKind::Audio) => "audio",
        Ok(TrackKind::Screen) => "screen",
        _ => "video",
    }
}
