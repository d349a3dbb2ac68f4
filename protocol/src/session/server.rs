//! The server's side of one connection (PROTOCOL.md §4, §5.1, §7, §9).
//!
//! It owns everything that concerns one connection alone: the handshake, the
//! state machine, field checks, rate limits, heartbeats and timeouts, sender
//! stamping. Room decisions (who is in which room, who receives what) belong
//! to the caller, which answers the session's events with [`ServerSession::joined`],
//! [`ServerSession::refuse`] and friends.
//!
//! A driver calls, in a loop:
//! 1. [`ServerSession::handle_frame`] for each frame read, and
//!    [`ServerSession::handle_timeout`] when [`ServerSession::poll_timeout`] is due;
//! 2. [`ServerSession::poll_event`] until `None`, acting on each event;
//! 3. [`ServerSession::poll_transmit`] until `None`, writing each frame;
//! 4. [`ServerSession::close_reason`]: once `Some`, close the transport with it.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use crate::ErrorCode;
use crate::error::ProtocolError;
use crate::frame::{
    FEATURE_REACTIONS, FEATURE_RECORDING, FEATURE_SFU, Frame, decode_frame_with, encode_control,
};
use crate::limits::{default, max};
use crate::media::MediaFrame;
use crate::session::CloseReason;
use crate::states::server_session::{self as sm, Event as SmEvent, State};
use crate::time::{Timestamp, TokenBucket};
use crate::v1::{
    self, ClientMessage, GoodbyeReason, ServerLimits, ServerMessage, client_message::Msg,
    server_message,
};
use crate::validate;

/// The protocol versions this implementation speaks.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];

/// Settings of a server session.
#[derive(Debug, Clone)]
pub struct ServerSessionConfig {
    /// Limits announced in Welcome and enforced.
    pub limits: ServerLimits,
    /// Time allowed from connection to Hello.
    pub handshake_timeout: Duration,
    /// Interval between the server's Pings.
    pub heartbeat_interval: Duration,
    /// Silence after which the connection is closed.
    pub idle_timeout: Duration,
    /// Sent in Welcome.
    pub server_version: String,
    /// Features enabled for every session, sent in Welcome.
    pub features: Vec<String>,
}

impl Default for ServerSessionConfig {
    fn default() -> Self {
        ServerSessionConfig {
            limits: default_limits(),
            handshake_timeout: Duration::from_millis(default::HANDSHAKE_TIMEOUT_MS as u64),
            heartbeat_interval: Duration::from_millis(default::HEARTBEAT_INTERVAL_MS as u64),
            idle_timeout: Duration::from_millis(default::IDLE_TIMEOUT_MS as u64),
            server_version: concat!("convene-server/", env!("CARGO_PKG_VERSION")).into(),
            features: Vec::new(),
        }
    }
}

/// Media frames a session may send per second, whatever their size
/// (BITRATE_EXCEEDED beyond, §7): video at 60 fps and audio at 50 on
/// several tracks stay far below it.
pub const MAX_MEDIA_FRAMES_PER_SECOND: u32 = 1000;

/// The limits of `spec/v1/limits.toml` at their default values.
pub fn default_limits() -> ServerLimits {
    ServerLimits {
        max_frame_bytes: default::MAX_FRAME_BYTES,
        max_display_name_bytes: default::MAX_DISPLAY_NAME_BYTES,
        max_tracks_per_participant: default::MAX_TRACKS_PER_PARTICIPANT,
        max_participants_per_room: default::MAX_PARTICIPANTS_PER_ROOM,
        max_chat_bytes: default::MAX_CHAT_BYTES,
        max_e2ee_bytes: default::MAX_E2EE_BYTES,
        control_messages_per_second: default::CONTROL_MESSAGES_PER_SECOND,
        control_burst: default::CONTROL_BURST,
        max_ingress_kbps: default::MAX_INGRESS_KBPS,
        max_concurrent_streams: default::MAX_CONCURRENT_STREAMS,
        relay_bytes_per_second: default::RELAY_BYTES_PER_SECOND,
        room_relay_bytes_per_second: default::ROOM_RELAY_BYTES_PER_SECOND,
        subscriber_queue_bytes: default::SUBSCRIBER_QUEUE_BYTES,
        max_last_n: default::MAX_LAST_N,
        max_loudest_audio: default::MAX_LOUDEST_AUDIO,
    }
}

/// A request the room layer must act on.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerEvent {
    // ----- handshake -----
    /// A valid Hello: authenticate if needed, then call
    /// [`ServerSession::accept_hello`] or [`ServerSession::refuse`].
    Hello {
        /// The version chosen.
        version: u32,
        /// The Hello as received.
        hello: v1::Hello,
    },

    // ----- room -----
    /// A valid Join: answer with [`ServerSession::joined`],
    /// [`ServerSession::held`] or [`ServerSession::refuse`].
    Join {
        /// The request id, for errors.
        request_id: u32,
        /// The Join.
        join: v1::Join,
    },
    /// The session left its room (Leave received; `Left` already sent).
    Left,
    /// A room message, already checked for field limits; the room checks the rest.
    Room {
        /// The request id, for errors.
        request_id: u32,
        /// The message.
        msg: RoomRequest,
    },
    /// A media frame, validated and stamped with this session's participant id.
    Media(MediaFrame),

    // ----- session -----
    /// The peer reported an error.
    PeerError(v1::Error),
    /// This session sent the peer an Error with this code (for metrics and
    /// logs); [`ServerEvent::Closed`] follows when it is fatal.
    ErrorSent(ErrorCode),
    /// A round-trip time was measured from a Pong.
    Rtt(Duration),
    /// The session ended; [`ServerSession::close_reason`] says why. If it was
    /// in a room, the room must remove it.
    Closed,
}

/// A room message from a client.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RoomRequest {
    /// UpdateSelf.
    UpdateSelf(v1::UpdateSelf),
    /// Publish, with a valid track.
    Publish(v1::TrackInfo),
    /// Unpublish.
    Unpublish(v1::Unpublish),
    /// SetTrackMuted.
    SetTrackMuted(v1::SetTrackMuted),
    /// Subscribe.
    Subscribe(v1::Subscribe),
    /// Unsubscribe.
    Unsubscribe(v1::Unsubscribe),
    /// KeyFrameRequest.
    KeyFrameRequest(v1::KeyFrameRequest),
    /// ReceiverReport.
    ReceiverReport(v1::ReceiverReport),
    /// ChatSend, within the length limit.
    Chat(v1::ChatSend),
    /// E2eeSend, within the size limit.
    E2ee(v1::E2eeSend),
    /// MuteRequest (moderation).
    MuteRequest(v1::MuteRequest),
    /// RemoveParticipant (moderation).
    RemoveParticipant(v1::RemoveParticipant),
    /// LockRoom (moderation).
    LockRoom(v1::LockRoom),
    /// Admit (moderation).
    Admit(v1::Admit),
    /// Deny (moderation).
    Deny(v1::Deny),
    /// EndMeeting (moderation).
    EndMeeting(v1::EndMeeting),
    /// UpdateSubscription (extension sfu.1).
    UpdateSubscription(v1::UpdateSubscription),
    /// ReceiverSettings (extension sfu.1), within the limits.
    ReceiverSettings(v1::ReceiverSettings),
    /// RaiseHand (extension reactions.1).
    RaiseHand(v1::RaiseHand),
    /// SendReaction (extension reactions.1), of a kind other than 0.
    SendReaction(v1::SendReaction),
    /// StartRecording (extension recording.1).
    StartRecording(v1::StartRecording),
    /// StopRecording (extension recording.1).
    StopRecording(v1::StopRecording),
}

/// What one RaiseHand or SendReaction costs of the relay budgets, bytes
/// (PROTOCOL.md §5.9): every member receives it, as with chat.
pub const REACTION_RELAY_BYTES: u32 = 1024;

impl RoomRequest {
    /// The room request a client message makes, unchecked (the session
    /// checks it; a cluster node trusts the node that did), or `None` when
    /// the message is not a room request. A Publish without a track becomes
    /// an empty track, which the checks refuse.
    pub fn from_message(msg: Msg) -> Option<Self> {
        Some(match msg {
            Msg::UpdateSelf(m) => RoomRequest::UpdateSelf(m),
            Msg::Publish(p) => RoomRequest::Publish(p.track.unwrap_or_default()),
            Msg::Unpublish(m) => RoomRequest::Unpublish(m),
            Msg::SetTrackMuted(m) => RoomRequest::SetTrackMuted(m),
            Msg::Subscribe(m) => RoomRequest::Subscribe(m),
            Msg::Unsubscribe(m) => RoomRequest::Unsubscribe(m),
            Msg::KeyFrameRequest(m) => RoomRequest::KeyFrameRequest(m),
            Msg::ReceiverReport(m) => RoomRequest::ReceiverReport(m),
            Msg::Chat(m) => RoomRequest::Chat(m),
            Msg::E2ee(m) => RoomRequest::E2ee(m),
            Msg::MuteRequest(m) => RoomRequest::MuteRequest(m),
            Msg::RemoveParticipant(m) => RoomRequest::RemoveParticipant(m),
            Msg::LockRoom(m) => RoomRequest::LockRoom(m),
            Msg::Admit(m) => RoomRequest::Admit(m),
            Msg::Deny(m) => RoomRequest::Deny(m),
            Msg::EndMeeting(m) => RoomRequest::EndMeeting(m),
            Msg::UpdateSubscription(m) => RoomRequest::UpdateSubscription(m),
            Msg::ReceiverSettings(m) => RoomRequest::ReceiverSettings(m),
            Msg::RaiseHand(m) => RoomRequest::RaiseHand(m),
            Msg::SendReaction(m) => RoomRequest::SendReaction(m),
            Msg::StartRecording(m) => RoomRequest::StartRecording(m),
            Msg::StopRecording(m) => RoomRequest::StopRecording(m),
            Msg::Hello(_)
            | Msg::Goodbye(_)
            | Msg::Ping(_)
            | Msg::Pong(_)
            | Msg::Join(_)
            | Msg::Leave(_)
            | Msg::Error(_) => return None,
        })
    }

    /// The client message that makes this request: how a request travels
    /// to the node that answers it.
    pub fn into_message(self) -> Msg {
        match self {
            RoomRequest::UpdateSelf(m) => Msg::UpdateSelf(m),
            RoomRequest::Publish(t) => Msg::Publish(v1::Publish { track: Some(t) }),
            RoomRequest::Unpublish(m) => Msg::Unpublish(m),
            RoomRequest::SetTrackMuted(m) => Msg::SetTrackMuted(m),
            RoomRequest::Subscribe(m) => Msg::Subscribe(m),
            RoomRequest::Unsubscribe(m) => Msg::Unsubscribe(m),
            RoomRequest::KeyFrameRequest(m) => Msg::KeyFrameRequest(m),
            RoomRequest::ReceiverReport(m) => Msg::ReceiverReport(m),
            RoomRequest::Chat(m) => Msg::Chat(m),
            RoomRequest::E2ee(m) => Msg::E2ee(m),
            RoomRequest::MuteRequest(m) => Msg::MuteRequest(m),
            RoomRequest::RemoveParticipant(m) => Msg::RemoveParticipant(m),
            RoomRequest::LockRoom(m) => Msg::LockRoom(m),
            RoomRequest::Admit(m) => Msg::Admit(m),
            RoomRequest::Deny(m) => Msg::Deny(m),
            RoomRequest::EndMeeting(m) => Msg::EndMeeting(m),
            RoomRequest::UpdateSubscription(m) => Msg::UpdateSubscription(m),
            RoomRequest::ReceiverSettings(m) => Msg::ReceiverSettings(m),
            RoomRequest::RaiseHand(m) => Msg::RaiseHand(m),
            RoomRequest::SendReaction(m) => Msg::SendReaction(m),
            RoomRequest::StartRecording(m) => Msg::StartRecording(m),
            RoomRequest::StopRecording(m) => Msg::StopRecording(m),
        }
    }
}

/// What the session waits for the room layer to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Nothing: the session answers by itself.
    Nothing,
    /// A valid Hello: [`ServerSession::accept_hello`] or [`ServerSession::refuse`].
    Hello,
    /// A Join: [`ServerSession::joined`], [`ServerSession::held`],
    /// [`ServerSession::admitted_by_room`] or [`ServerSession::refuse`].
    Join,
}

/// An answer given when the session had not asked for it (a bug in the
/// caller): reported instead of ignored; the session is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{call} called while the session (in state {state}) waited for no answer to {expected}")]
pub struct ApiMisuse {
    /// The call made.
    pub call: &'static str,
    /// What it answers.
    pub expected: &'static str,
    /// The session's state then.
    pub state: &'static str,
}

/// The server's sans-IO state for one connection.
#[derive(Debug)]
pub struct ServerSession {
    /// Settings.
    config: ServerSessionConfig,
    /// Where the session is in the spec's machine.
    state: State,
    /// The question the room layer has yet to answer, if any.
    pending: Pending,
    /// Participant id given in Welcome; 0 before.
    participant_id: u32,
    /// The meeting joined or waited for, for `Left`.
    meeting_id: String,
    /// When the transport came up, for the handshake timer.
    created: Timestamp,
    /// When anything was last received, for the idle timer.
    last_rx: Timestamp,
    /// When the next heartbeat Ping is due.
    next_ping: Option<Timestamp>,
    /// Control messages allowed (PROTOCOL.md §7).
    control_bucket: TokenBucket,
    /// Media bits allowed (PROTOCOL.md §7).
    media_bucket: TokenBucket,
    /// Chat and E2EE payload bytes allowed (PROTOCOL.md §7).
    relay_bucket: TokenBucket,
    /// Media frames allowed, whatever their size (PROTOCOL.md §7).
    frame_bucket: TokenBucket,
    /// When a RATE_LIMITED error was last sent, so at most one goes out per second.
    last_rate_error: Option<Timestamp>,
    /// When a BITRATE_EXCEEDED error was last sent.
    last_bitrate_error: Option<Timestamp>,
    /// Frames to send.
    transmit: VecDeque<Bytes>,
    /// Events for the room layer.
    events: VecDeque<ServerEvent>,
    /// Why the session ended, once it has.
    close: Option<CloseReason>,
    /// The client listed `sfu.1` in its Hello.
    sfu_offered: bool,
    /// `sfu.1` is negotiated (§6.6): Welcome listed it.
    sfu: bool,
    /// The client listed `reactions.1` in its Hello.
    reactions_offered: bool,
    /// `reactions.1` is negotiated (§5.9): Welcome listed it.
    reactions: bool,
    /// The client listed `recording.1` in its Hello.
    recording_offered: bool,
    /// `recording.1` is negotiated (§5.10): Welcome listed it.
    recording: bool,
}

impl ServerSession {
    /// A session for a transport connection that came up at `now`.
    pub fn new(now: Timestamp, config: ServerSessionConfig) -> Self {
        let l = &config.limits;
        let control_bucket = TokenBucket::new(
            now,
            l.control_messages_per_second as f64,
            l.control_burst as f64,
        );
        let bits = l.max_ingress_kbps as f64 * 1000.0;
        let media_bucket = TokenBucket::new(now, bits, bits);
        // Four seconds' worth, and never less than one message of the largest size.
        let relay_rate = l.relay_bytes_per_second as f64;
        let relay_bucket = TokenBucket::new(
            now,
            relay_rate,
            (relay_rate * 4.0).max(l.max_chat_bytes.max(l.max_e2ee_bytes) as f64),
        );
        ServerSession {
            config,
            state: sm::INITIAL,
            pending: Pending::Nothing,
            participant_id: 0,
            meeting_id: String::new(),
            created: now,
            last_rx: now,
            next_ping: None,
            control_bucket,
            media_bucket,
            relay_bucket,
            frame_bucket: TokenBucket::new(
                now,
                MAX_MEDIA_FRAMES_PER_SECOND as f64,
                MAX_MEDIA_FRAMES_PER_SECOND as f64,
            ),
            last_rate_error: None,
            last_bitrate_error: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            close: None,
            sfu_offered: false,
            sfu: false,
            reactions_offered: false,
            reactions: false,
            recording_offered: false,
            recording: false,
        }
    }

    /// True when the session negotiated raised hands and reactions,
    /// `reactions.1` (PROTOCOL.md §5.9): it may receive their messages.
    pub fn reactions(&self) -> bool {
        self.reactions
    }

    /// True when the session negotiated recording, `recording.1`
    /// (PROTOCOL.md §5.10): it may ask to start and stop a recorder.
    pub fn recording(&self) -> bool {
        self.recording
    }

    /// True when the session negotiated the selective-forwarding extension
    /// `sfu.1` (PROTOCOL.md §6.6): it may receive LAYERED frames and the
    /// extension's messages.
    pub fn sfu(&self) -> bool {
        self.sfu
    }

    /// The state in the spec's machine.
    pub fn state(&self) -> State {
        self.state
    }

    /// The participant id, 0 before Welcome.
    pub fn participant_id(&self) -> u32 {
        self.participant_id
    }

    /// The limits in force.
    pub fn limits(&self) -> &ServerLimits {
        &self.config.limits
    }

    /// The largest frame accepted in the current state: the Hello limit
    /// before Hello, none once closed (a transport then buffers nothing more).
    pub fn max_frame_bytes(&self) -> usize {
        match self.state {
            State::AwaitingHello => max::MAX_HELLO_FRAME_BYTES as usize,
            State::Closed => 0,
            _ => self.config.limits.max_frame_bytes as usize,
        }
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close.as_ref()
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The next frame to send.
    #[must_use = "what the session has to transmit, report or wait for is lost if not used"]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    /// The next event for the room layer.
    #[must_use = "what the session has to transmit, report or wait for is lost if not used"]
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// When [`ServerSession::handle_timeout`] must next be called.
    #[must_use = "what the session has to transmit, report or wait for is lost if not used"]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match self.state {
            State::Closed => None,
            State::AwaitingHello => Some(self.created + self.config.handshake_timeout),
            _ => {
                let idle = self.last_rx + self.config.idle_timeout;
                Some(self.next_ping.map_or(idle, |p| p.min(idle)))
            }
        }
    }

    /// Fires the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        match self.state {
            State::Closed => {}
            State::AwaitingHello => {
                if now >= self.created + self.config.handshake_timeout {
                    self.fail(
                        SmEvent::HandshakeTimeout,
                        ProtocolError::new(
                            ErrorCode::HandshakeTimeout,
                            "no Hello within the handshake timeout",
                        ),
                        0,
                    );
                }
            }
            _ => {
                if now >= self.last_rx + self.config.idle_timeout {
                    self.fail(
                        SmEvent::IdleTimeout,
                        ProtocolError::new(
                            ErrorCode::IdleTimeout,
                            "nothing received within the idle timeout",
                        ),
                        0,
                    );
                    return;
                }
                if let Some(due) = self.next_ping
                    && now >= due
                {
                    self.send(server_message::Msg::Ping(v1::Ping {
                        timestamp_us: now.as_micros(),
                    }));
                    self.next_ping = Some(now + self.config.heartbeat_interval);
                }
            }
        }
    }

    /// Handles one frame received from the client.
    pub fn handle_frame(&mut self, now: Timestamp, frame: Bytes) {
        if self.state == State::Closed {
            return;
        }
        self.last_rx = now;
        if self.state == State::AwaitingHello
            && frame
                .first()
                .is_some_and(|&t| t != crate::frame::FRAME_CONTROL)
        {
            return self.error(
                ProtocolError::new(
                    ErrorCode::HelloRequired,
                    "the first frame must be a control frame carrying Hello",
                ),
                0,
            );
        }
        // A LAYERED frame from a session that did not negotiate sfu.1 is an
        // unknown extension frame to it: discarded silently (§3.1, §6.6).
        let decoded =
            match decode_frame_with::<ClientMessage>(frame, self.max_frame_bytes(), self.sfu) {
                Ok(f) => f,
                Err(e) => {
                    // Each reserved frame type is answered with an error: such
                    // frames spend the control rate, so they cannot make the
                    // server send errors faster than it answers messages.
                    if e.code == ErrorCode::UnknownFrameType
                        && self.state != State::AwaitingHello
                        && !self.control_bucket.try_take(now, 1.0)
                    {
                        return;
                    }
                    // Before Hello, anything that is not a control frame is HELLO_REQUIRED.
                    let e = if self.state == State::AwaitingHello
                        && e.code == ErrorCode::UnknownFrameType
                    {
                        ProtocolError::new(
                            ErrorCode::HelloRequired,
                            "the first frame must be a control frame carrying Hello",
                        )
                    } else {
                        e
                    };
                    return self.error(e, 0);
                }
            };
        match decoded {
            Frame::Extension(_) if self.state != State::AwaitingHello => {}
            Frame::Extension(_) => self.error(
                ProtocolError::new(ErrorCode::HelloRequired, "the first frame must carry Hello"),
                0,
            ),
            Frame::Media(m) => self.handle_media(now, m),
            Frame::Control(msg) => self.handle_control(now, msg),
        }
    }

    /// Records a transport failure (connection reset, stream error): the session ends.
    pub fn handle_transport_closed(&mut self) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.close.get_or_insert(CloseReason::transport_lost());
            self.events.push_back(ServerEvent::Closed);
        }
    }

    fn handle_media(&mut self, now: Timestamp, m: MediaFrame) {
        if let Err(code) = sm::next(self.state, SmEvent::Media) {
            return self.error(
                ProtocolError::new(code, "media frame before joining a room"),
                0,
            );
        }
        let sender = m.header().sender;
        if sender != 0 && sender != self.participant_id {
            return self.error(
                ProtocolError::new(
                    ErrorCode::InvalidSender,
                    format!("sender field {sender} is neither 0 nor your participant id"),
                ),
                0,
            );
        }
        if !self.frame_bucket.try_take(now, 1.0) {
            // Tiny frames cost the server per frame, not per bit.
            if self
                .last_bitrate_error
                .is_none_or(|t| now.saturating_since(t) >= Duration::from_secs(1))
            {
                self.last_bitrate_error = Some(now);
                self.error(
                    ProtocolError::new(
                        ErrorCode::BitrateExceeded,
                        format!(
                            "more than {MAX_MEDIA_FRAMES_PER_SECOND} media frames per second are discarded"
                        ),
                    ),
                    0,
                );
            }
            return;
        }
        let bits = m.as_bytes().len() as f64 * 8.0;
        if !self.media_bucket.try_take(now, bits) {
            if self
                .last_bitrate_error
                .is_none_or(|t| now.saturating_since(t) >= Duration::from_secs(1))
            {
                self.last_bitrate_error = Some(now);
                let kbps = self.config.limits.max_ingress_kbps;
                self.error(
                    ProtocolError::new(
                        ErrorCode::BitrateExceeded,
                        format!("media above {kbps} kbit/s is discarded"),
                    ),
                    0,
                );
            }
            return;
        }
        let stamped = m.stamp_sender(self.participant_id);
        self.events.push_back(ServerEvent::Media(stamped));
    }

    fn handle_control(&mut self, now: Timestamp, env: ClientMessage) {
        let rid = env.request_id;
        let Some(msg) = env.msg else {
            let e = if self.state == State::AwaitingHello {
                ProtocolError::new(ErrorCode::HelloRequired, "the first message must be Hello")
            } else {
                ProtocolError::new(
                    ErrorCode::UnknownMessage,
                    "the message is unknown to this server",
                )
            };
            return self.error(e, rid);
        };
        if self.state != State::AwaitingHello && !self.control_bucket.try_take(now, 1.0) {
            // A Pong is itself an answer: over the rate it is dropped without
            // one (the idle timer has counted its frame already, §9.2).
            if matches!(msg, Msg::Pong(_)) {
                return;
            }
            if self
                .last_rate_error
                .is_none_or(|t| now.saturating_since(t) >= Duration::from_secs(1))
            {
                self.last_rate_error = Some(now);
                let rate = self.config.limits.control_messages_per_second;
                self.error(
                    ProtocolError::new(
                        ErrorCode::RateLimited,
                        format!("more than {rate} control messages per second"),
                    ),
                    rid,
                );
            }
            return;
        }
        let event = sm_event(&msg);
        let next = match sm::next(self.state, event) {
            Ok(s) => s,
            Err(code) => {
                let text = format!(
                    "{} is not allowed in state {}",
                    msg_name(&msg),
                    self.state.name()
                );
                return self.error(ProtocolError::new(code, text), rid);
            }
        };
        let busy = match self.pending {
            Pending::Hello => Some(ErrorCode::HelloRequired),
            Pending::Join if matches!(msg, Msg::Join(_)) => Some(ErrorCode::AlreadyJoined),
            _ => None,
        };
        if let Some(code) = busy {
            return self.error(
                ProtocolError::new(code, "the previous request is still being answered"),
                rid,
            );
        }
        match msg {
            Msg::Hello(h) => self.handle_hello(h),
            Msg::Goodbye(g) => {
                self.state = next;
                self.close = Some(CloseReason::goodbye(
                    GoodbyeReason::try_from(g.reason).unwrap_or(GoodbyeReason::Normal),
                    "client said goodbye",
                ));
                self.events.push_back(ServerEvent::Closed);
            }
            Msg::Ping(p) => self.send(server_message::Msg::Pong(v1::Pong {
                timestamp_us: p.timestamp_us,
            })),
            Msg::Pong(p) => {
                let rtt = now.saturating_since(Timestamp(p.timestamp_us));
                if p.timestamp_us != 0 && rtt < Duration::from_secs(600) {
                    self.events.push_back(ServerEvent::Rtt(rtt));
                }
            }
            Msg::Error(e) => self.events.push_back(ServerEvent::PeerError(e)),
            Msg::Join(j) => {
                let limits = &self.config.limits;
                if let Err(e) = validate::meeting_id(&j.meeting_id).and_then(|_| {
                    validate::display_name(&j.display_name, limits.max_display_name_bytes)
                }) {
                    return self.error(e, rid);
                }
                self.pending = Pending::Join;
                self.meeting_id = j.meeting_id.clone();
                self.events.push_back(ServerEvent::Join {
                    request_id: rid,
                    join: j,
                });
            }
            Msg::Leave(_) => {
                self.state = next;
                let meeting_id = std::mem::take(&mut self.meeting_id);
                self.send(server_message::Msg::Left(v1::Left { meeting_id }));
                self.events.push_back(ServerEvent::Left);
            }
            other => {
                if let Some(req) = self.room_request(now, other, rid) {
                    self.events.push_back(ServerEvent::Room {
                        request_id: rid,
                        msg: req,
                    });
                }
            }
        }
    }

    fn room_request(&mut self, now: Timestamp, msg: Msg, rid: u32) -> Option<RoomRequest> {
        let extension = match msg {
            Msg::UpdateSubscription(_) | Msg::ReceiverSettings(_) if !self.sfu => Some(FEATURE_SFU),
            Msg::RaiseHand(_) | Msg::SendReaction(_) if !self.reactions => Some(FEATURE_REACTIONS),
            Msg::StartRecording(_) | Msg::StopRecording(_) if !self.recording => {
                Some(FEATURE_RECORDING)
            }
            _ => None,
        };
        if let Some(feature) = extension {
            self.error(
                ProtocolError::new(
                    ErrorCode::UnexpectedMessage,
                    format!(
                        "{} belongs to the {feature} extension, which this session did not negotiate",
                        msg_name(&msg)
                    ),
                ),
                rid,
            );
            return None;
        }
        let checked = match RoomRequest::from_message(msg) {
            Some(req) => self.check(req),
            None => unreachable!("handled by handle_control"),
        };
        let relayed = match &checked {
            Ok(RoomRequest::Chat(c)) => c.text.len(),
            Ok(RoomRequest::E2ee(e)) => e.payload.len(),
            Ok(RoomRequest::RaiseHand(_) | RoomRequest::SendReaction(_)) => {
                REACTION_RELAY_BYTES as usize
            }
            _ => 0,
        };
        if relayed > 0 && !self.relay_bucket.try_take(now, relayed as f64) {
            // What one participant makes the server relay to others is
            // bounded in bytes too, not only in messages (§7).
            if self
                .last_rate_error
                .is_none_or(|t| now.saturating_since(t) >= Duration::from_secs(1))
            {
                self.last_rate_error = Some(now);
                let rate = self.config.limits.relay_bytes_per_second;
                self.error(
                    ProtocolError::new(
                        ErrorCode::RateLimited,
                        format!("more than {rate} bytes of chat and E2EE payload per second"),
                    ),
                    rid,
                );
            }
            return None;
        }
        match checked {
            Ok(r) => Some(r),
            Err(e) => {
                self.error(e, rid);
                None
            }
        }
    }

    /// Holds a room request to the limits and rules of §5 before the room sees it.
    fn check(&self, req: RoomRequest) -> Result<RoomRequest, ProtocolError> {
        let l = &self.config.limits;
        match req {
            RoomRequest::UpdateSelf(u) => {
                validate::display_name(&u.display_name, l.max_display_name_bytes)
                    .map(|_| RoomRequest::UpdateSelf(u))
            }
            RoomRequest::Publish(mut t) => {
                // The extension's fields mean nothing to a session without it (§6.6).
                if !self.sfu {
                    t.encodings.clear();
                    t.audio_levels = false;
                }
                validate::track(&t).map(|_| RoomRequest::Publish(t))
            }
            RoomRequest::Subscribe(mut s) => {
                if !self.sfu {
                    s.preferences = None;
                }
                Ok(RoomRequest::Subscribe(s))
            }
            RoomRequest::KeyFrameRequest(mut k) => {
                if !self.sfu {
                    k.encoding_mask = 0;
                }
                Ok(RoomRequest::KeyFrameRequest(k))
            }
            RoomRequest::ReceiverSettings(r) => {
                let n = |limit: u32, default: u32| if limit == 0 { default } else { limit };
                let video = n(l.max_last_n, crate::limits::default::MAX_LAST_N);
                let audio = n(
                    l.max_loudest_audio,
                    crate::limits::default::MAX_LOUDEST_AUDIO,
                );
                if r.video_n > video || r.audio_n > audio {
                    Err(ProtocolError::new(
                        ErrorCode::FieldTooLong,
                        format!(
                            "ReceiverSettings asks for video of {} and audio of {} speakers; \
                             this server allows at most {video} and {audio}",
                            r.video_n, r.audio_n
                        ),
                    ))
                } else {
                    Ok(RoomRequest::ReceiverSettings(r))
                }
            }
            RoomRequest::Chat(mut c) => {
                if let std::borrow::Cow::Owned(clean) = validate::clean_chat_text(&c.text) {
                    c.text = clean;
                }
                if c.text.is_empty() {
                    Err(ProtocolError::new(
                        ErrorCode::FieldTooLong,
                        "chat text is empty",
                    ))
                } else {
                    validate::text_len("chat text", c.text.len(), l.max_chat_bytes)
                        .map(|_| RoomRequest::Chat(c))
                }
            }
            RoomRequest::E2ee(e) => {
                validate::text_len("E2EE payload", e.payload.len(), l.max_e2ee_bytes)
                    .map(|_| RoomRequest::E2ee(e))
            }
            RoomRequest::RemoveParticipant(r) => {
                validate::text_len("removal reason", r.reason.len(), max::MAX_TEXT_BYTES)
                    .map(|_| RoomRequest::RemoveParticipant(r))
            }
            RoomRequest::SendReaction(r) if r.kind == 0 => Err(ProtocolError::new(
                ErrorCode::UnexpectedMessage,
                "SendReaction of kind 0 (REACTION_KIND_UNSPECIFIED) is not a reaction",
            )),
            other => Ok(other),
        }
    }

    fn handle_hello(&mut self, h: v1::Hello) {
        let malformed = |why: &str| ProtocolError::new(ErrorCode::MalformedMessage, why);
        if h.versions.len() > max::MAX_VERSIONS_IN_HELLO as usize {
            return self.error(malformed("Hello lists more than 16 versions"), 0);
        }
        if h.features.len() > max::MAX_FEATURES as usize || h.features.iter().any(|f| f.len() > 64)
        {
            return self.error(
                malformed("Hello lists more than 32 features or a feature name over 64 bytes"),
                0,
            );
        }
        if h.client_version.len() > max::MAX_TEXT_BYTES as usize {
            return self.error(malformed("client_version is over 256 bytes"), 0);
        }
        let Some(version) = h
            .versions
            .iter()
            .copied()
            .filter(|v| SUPPORTED_VERSIONS.contains(v))
            .max()
        else {
            let speaks: Vec<String> = SUPPORTED_VERSIONS.iter().map(u32::to_string).collect();
            return self.error(
                ProtocolError::new(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "server speaks {}; Hello listed {:?}",
                        speaks.join(", "),
                        h.versions
                    ),
                ),
                0,
            );
        };
        self.sfu_offered = h.features.iter().any(|f| f == FEATURE_SFU);
        self.reactions_offered = h.features.iter().any(|f| f == FEATURE_REACTIONS);
        self.recording_offered = h.features.iter().any(|f| f == FEATURE_RECORDING);
        self.pending = Pending::Hello;
        self.events
            .push_back(ServerEvent::Hello { version, hello: h });
    }

    /// Accepts the Hello: sends Welcome with this participant id and starts the heartbeat.
    /// Only an answer to [`ServerEvent::Hello`]; otherwise [`ApiMisuse`].
    pub fn accept_hello(
        &mut self,
        now: Timestamp,
        participant_id: u32,
        session_id: String,
        resume_token: Bytes,
    ) -> Result<(), ApiMisuse> {
        if self.state == State::Closed {
            return Ok(());
        }
        if self.pending != Pending::Hello || self.state != State::AwaitingHello {
            return Err(self.misuse("accept_hello", "a Hello"));
        }
        debug_assert_ne!(participant_id, 0, "participant id 0 is reserved");
        self.pending = Pending::Nothing;
        self.state = sm::next(self.state, SmEvent::Hello).unwrap_or(State::Established);
        self.participant_id = participant_id;
        self.next_ping = Some(now + self.config.heartbeat_interval);
        self.sfu = self.sfu_offered && self.config.features.iter().any(|f| f == FEATURE_SFU);
        self.reactions =
            self.reactions_offered && self.config.features.iter().any(|f| f == FEATURE_REACTIONS);
        self.recording =
            self.recording_offered && self.config.features.iter().any(|f| f == FEATURE_RECORDING);
        let welcome = v1::Welcome {
            version: 1,
            session_id,
            participant_id,
            limits: Some(self.config.limits),
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
            idle_timeout_ms: self.config.idle_timeout.as_millis() as u32,
            features: self.features(),
            resume_token,
            server_version: self.config.server_version.clone(),
        };
        self.send(server_message::Msg::Welcome(welcome));
        Ok(())
    }

    /// The features Welcome lists: the server's own, with `sfu.1` only when
    /// the client offered it (§6.6 is negotiated, not announced).
    fn features(&self) -> Vec<String> {
        self.config
            .features
            .iter()
            .filter(|f| {
                (*f != FEATURE_SFU || self.sfu)
                    && (*f != FEATURE_REACTIONS || self.reactions)
                    && (*f != FEATURE_RECORDING || self.recording)
            })
            .cloned()
            .collect()
    }

    /// Answers a pending Join (or a wait in the waiting room): the session
    /// is in the room; sends `Joined`.
    pub fn joined(&mut self, joined: v1::Joined) -> Result<(), ApiMisuse> {
        if self.state == State::Closed {
            return Ok(());
        }
        let from_waiting = self.state == State::Waiting;
        let ev = if from_waiting {
            SmEvent::Admitted
        } else {
            SmEvent::Join
        };
        match sm::next(self.state, ev) {
            Ok(s) if from_waiting || self.pending == Pending::Join => {
                self.state = s;
                self.pending = Pending::Nothing;
                self.send(server_message::Msg::Joined(joined));
                Ok(())
            }
            _ => Err(self.misuse("joined", "a Join")),
        }
    }

    /// The room has already queued this session's `Joined` (ahead of
    /// anything else the room sends it, which is why the room and not the
    /// session sends it): after a moderator admitted the waiting session, or
    /// once a room just opened on one node of a cluster has heard who is in
    /// the meeting on the others. The session is now joined and sends nothing.
    pub fn admitted_by_room(&mut self) -> Result<(), ApiMisuse> {
        if self.state == State::Closed {
            return Ok(());
        }
        if self.state == State::Waiting
            && let Ok(s) = sm::next(self.state, SmEvent::Admitted)
        {
            self.state = s;
            Ok(())
        } else if self.pending == Pending::Join
            && let Ok(s) = sm::next(self.state, SmEvent::Join)
        {
            self.state = s;
            self.pending = Pending::Nothing;
            Ok(())
        } else {
            Err(self.misuse("admitted_by_room", "a Join or an admission"))
        }
    }

    /// Answers a pending Join: the session waits for a moderator; sends `Waiting`.
    pub fn held(&mut self) -> Result<(), ApiMisuse> {
        if self.state == State::Closed {
            return Ok(());
        }
        match sm::next(self.state, SmEvent::JoinHeld) {
            Ok(s) if self.pending == Pending::Join => {
                self.state = s;
                self.pending = Pending::Nothing;
                let meeting_id = self.meeting_id.clone();
                self.send(server_message::Msg::Waiting(v1::Waiting { meeting_id }));
                Ok(())
            }
            _ => Err(self.misuse("held", "a Join")),
        }
    }

    fn misuse(&self, call: &'static str, expected: &'static str) -> ApiMisuse {
        ApiMisuse {
            call,
            expected,
            state: self.state.name(),
        }
    }

    /// Answers a pending Hello or Join, or any request, with an error. A fatal
    /// error closes the session; a refused Join returns it to `established`,
    /// and a denied admission takes it out of the waiting room.
    pub fn refuse(&mut self, request_id: u32, err: ProtocolError) {
        if self.pending == Pending::Join {
            self.meeting_id.clear();
        }
        if self.state == State::Waiting && err.code == ErrorCode::AdmissionDenied {
            self.state = sm::next(self.state, SmEvent::Denied).unwrap_or(State::Established);
            self.meeting_id.clear();
        }
        self.pending = Pending::Nothing;
        self.error(err, request_id);
    }

    /// Queues a control message.
    pub fn send(&mut self, msg: server_message::Msg) {
        if self.state == State::Closed {
            return;
        }
        self.transmit
            .push_back(encode_control(&ServerMessage { msg: Some(msg) }));
    }

    /// Queues an already encoded frame (e.g. a control frame shared by a whole room).
    pub fn send_frame(&mut self, frame: Bytes) {
        if self.state != State::Closed {
            self.transmit.push_back(frame);
        }
    }

    /// Ends the session with Goodbye (shutdown, removal, end of meeting).
    pub fn goodbye(&mut self, reason: GoodbyeReason, text: &str) {
        if self.state == State::Closed {
            return;
        }
        let ev = match reason {
            GoodbyeReason::Removed | GoodbyeReason::MeetingEnded
                if matches!(self.state, State::Joined | State::Waiting) =>
            {
                SmEvent::Removed
            }
            _ => SmEvent::FatalError,
        };
        self.send(server_message::Msg::Goodbye(v1::Goodbye {
            reason: reason as i32,
            text: crate::error::truncate_utf8(text, max::MAX_TEXT_BYTES as usize).into(),
        }));
        self.state = sm::next(self.state, ev).unwrap_or(State::Closed);
        self.close = Some(CloseReason::goodbye(reason, text));
        self.events.push_back(ServerEvent::Closed);
    }

    /// Closes the session with a fatal error decided outside it (slow consumer, shutdown).
    pub fn close_with(&mut self, err: ProtocolError) {
        self.fail(SmEvent::FatalError, err, 0);
    }

    fn error(&mut self, err: ProtocolError, request_id: u32) {
        if err.is_fatal() {
            self.fail(SmEvent::FatalError, err, request_id);
        } else {
            self.send(server_message::Msg::Error(err.to_message(request_id)));
            self.events.push_back(ServerEvent::ErrorSent(err.code));
        }
    }

    fn fail(&mut self, ev: SmEvent, err: ProtocolError, request_id: u32) {
        if self.state == State::Closed {
            return;
        }
        self.send(server_message::Msg::Error(err.to_message(request_id)));
        self.events.push_back(ServerEvent::ErrorSent(err.code));
        self.state = sm::next(self.state, ev).unwrap_or(State::Closed);
        self.close = Some(CloseReason::error(err));
        self.events.push_back(ServerEvent::Closed);
    }
}

/// The state-machine event a client message is.
fn sm_event(msg: &Msg) -> SmEvent {
    match msg {
        Msg::Hello(_) => SmEvent::Hello,
        Msg::Goodbye(_) => SmEvent::Goodbye,
        Msg::Ping(_) | Msg::Pong(_) => SmEvent::Keepalive,
        Msg::Error(_) => SmEvent::PeerError,
        Msg::Join(_) => SmEvent::Join,
        Msg::Leave(_) => SmEvent::Leave,
        Msg::MuteRequest(_)
        | Msg::RemoveParticipant(_)
        | Msg::LockRoom(_)
        | Msg::Admit(_)
        | Msg::Deny(_)
        | Msg::EndMeeting(_) => SmEvent::Moderation,
        Msg::UpdateSelf(_)
        | Msg::Publish(_)
        | Msg::Unpublish(_)
        | Msg::SetTrackMuted(_)
        | Msg::Subscribe(_)
        | Msg::Unsubscribe(_)
        | Msg::KeyFrameRequest(_)
        | Msg::ReceiverReport(_)
        | Msg::Chat(_)
        | Msg::E2ee(_)
        | Msg::UpdateSubscription(_)
        | Msg::ReceiverSettings(_)
        | Msg::RaiseHand(_)
        | Msg::SendReaction(_)
        | Msg::StartRecording(_)
        | Msg::StopRecording(_) => SmEvent::RoomMessage,
    }
}

/// The spec name of a client message, for error texts.
pub(crate) fn msg_name(msg: &Msg) -> &'static str {
    match msg {
        Msg::Hello(_) => "Hello",
        Msg::Goodbye(_) => "Goodbye",
        Msg::Ping(_) => "Ping",
        Msg::Pong(_) => "Pong",
        Msg::Error(_) => "Error",
        Msg::Join(_) => "Join",
        Msg::Leave(_) => "Leave",
        Msg::UpdateSelf(_) => "UpdateSelf",
        Msg::Publish(_) => "Publish",
        Msg::Unpublish(_) => "Unpublish",
        Msg::SetTrackMuted(_) => "SetTrackMuted",
        Msg::Subscribe(_) => "Subscribe",
        Msg::Unsubscribe(_) => "Unsubscribe",
        Msg::KeyFrameRequest(_) => "KeyFrameRequest",
        Msg::ReceiverReport(_) => "ReceiverReport",
        Msg::Chat(_) => "ChatSend",
        Msg::E2ee(_) => "E2eeSend",
        Msg::MuteRequest(_) => "MuteRequest",
        Msg::RemoveParticipant(_) => "RemoveParticipant",
        Msg::LockRoom(_) => "LockRoom",
        Msg::Admit(_) => "Admit",
        Msg::Deny(_) => "Deny",
        Msg::EndMeeting(_) => "EndMeeting",
        Msg::UpdateSubscription(_) => "UpdateSubscription",
        Msg::ReceiverSettings(_) => "ReceiverSettings",
        Msg::RaiseHand(_) => "RaiseHand",
        Msg::SendReaction(_) => "SendReaction",
        Msg::StartRecording(_) => "StartRecording",
        Msg::StopRecording(_) => "StopRecording",
    }
}
