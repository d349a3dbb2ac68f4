//! The client's side of a connection (PROTOCOL.md §4, §5.2, §9).
//!
//! It sends Hello, checks Welcome, answers Pings, keeps the connection alive,
//! measures the round trip, and tells the application what the server says.
//! The driver loop is the same as for [`super::server::ServerSession`]:
//! feed frames and timeouts in, then drain events, transmits and the close
//! reason.

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
use crate::states::client_session::{self as sm, Event as SmEvent, State};
use crate::time::Timestamp;
use crate::v1::{
    self, ClientKind, ClientMessage, GoodbyeReason, ServerMessage, client_message,
    server_message::Msg,
};

/// Settings of a client session.
#[derive(Debug, Clone)]
pub struct ClientSessionConfig {
    /// Versions listed in Hello.
    pub versions: Vec<u32>,
    /// What kind of client this is.
    pub client_kind: ClientKind,
    /// Software name and version.
    pub client_version: String,
    /// Bearer token, empty for none.
    pub auth_token: String,
    /// Resume token from an earlier Welcome, empty for none.
    pub resume_token: Bytes,
    /// Features the client supports.
    pub features: Vec<String>,
    /// How long to wait for Welcome.
    pub handshake_timeout: Duration,
}

impl Default for ClientSessionConfig {
    fn default() -> Self {
        ClientSessionConfig {
            versions: vec![1],
            client_kind: ClientKind::Unspecified,
            client_version: String::new(),
            auth_token: String::new(),
            resume_token: Bytes::new(),
            features: Vec::new(),
            handshake_timeout: Duration::from_millis(default::HANDSHAKE_TIMEOUT_MS as u64),
        }
    }
}

/// Something the server said or did, for the application.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The handshake completed.
    Welcome(v1::Welcome),
    /// The Join succeeded.
    Joined(v1::Joined),
    /// The Join is held in the waiting room.
    Waiting(v1::Waiting),
    /// The Join was refused with a non-fatal error.
    JoinRefused(v1::Error),
    /// The Leave is confirmed.
    Left(v1::Left),
    /// A room message: roster and track changes, chat, E2EE, key-frame
    /// requests, congestion hints, moderation.
    Room(Msg),
    /// A media frame, attributed by its sender field.
    Media(MediaFrame),
    /// A non-fatal error from the server.
    Error(v1::Error),
    /// A round-trip time measured from a Pong.
    Rtt(Duration),
    /// The session ended; see [`ClientSession::close_reason`].
    Closed,
}

/// The client's sans-IO state for one connection.
#[derive(Debug)]
pub struct ClientSession {
    /// Settings.
    config: ClientSessionConfig,
    /// Where the session is in the spec's machine.
    state: State,
    /// From Welcome.
    welcome: Option<v1::Welcome>,
    /// When Hello was sent.
    hello_sent: Timestamp,
    /// When anything was last received.
    last_rx: Timestamp,
    /// When anything was last sent.
    last_tx: Timestamp,
    /// The last round-trip time measured.
    rtt: Option<Duration>,
    /// Next request id.
    next_request_id: u32,
    /// Frames to send.
    transmit: VecDeque<Bytes>,
    /// Events for the application.
    events: VecDeque<ClientEvent>,
    /// Why the session ended.
    close: Option<CloseReason>,
}

impl ClientSession {
    /// A session whose transport is about to open.
    pub fn new(now: Timestamp, config: ClientSessionConfig) -> Self {
        ClientSession {
            config,
            state: sm::INITIAL,
            welcome: None,
            hello_sent: now,
            last_rx: now,
            last_tx: now,
            rtt: None,
            next_request_id: 1,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            close: None,
        }
    }

    /// The transport is open: sends Hello.
    pub fn connected(&mut self, now: Timestamp) {
        if let Ok(s) = sm::next(self.state, SmEvent::SendHello) {
            self.state = s;
            self.hello_sent = now;
            self.last_rx = now;
            let hello = v1::Hello {
                versions: self.config.versions.clone(),
                client_kind: self.config.client_kind as i32,
                client_version: self.config.client_version.clone(),
                auth_token: self.config.auth_token.clone(),
                resume_token: self.config.resume_token.clone(),
                features: self.config.features.clone(),
            };
            self.push(now, 0, client_message::Msg::Hello(hello));
        }
    }

    /// The state in the spec's machine.
    pub fn state(&self) -> State {
        self.state
    }

    /// The Welcome, once received.
    pub fn welcome(&self) -> Option<&v1::Welcome> {
        self.welcome.as_ref()
    }

    /// True when the session negotiated the selective-forwarding extension
    /// (PROTOCOL.md §6.6): we offered `sfu.1` and Welcome lists it.
    pub fn sfu(&self) -> bool {
        self.config.features.iter().any(|f| f == FEATURE_SFU)
            && self
                .welcome
                .as_ref()
                .is_some_and(|w| w.features.iter().any(|f| f == FEATURE_SFU))
    }

    /// True when the session negotiated raised hands and reactions
    /// (PROTOCOL.md §5.9): we offered `reactions.1` and Welcome lists it.
    pub fn reactions(&self) -> bool {
        let named = |fs: &[String]| fs.iter().any(|f| f == FEATURE_REACTIONS);
        named(&self.config.features) && self.welcome.as_ref().is_some_and(|w| named(&w.features))
    }

    /// True when the session negotiated recording (PROTOCOL.md §5.10): we
    /// offered `recording.1` and Welcome lists it.
    pub fn recording(&self) -> bool {
        let named = |fs: &[String]| fs.iter().any(|f| f == FEATURE_RECORDING);
        named(&self.config.features) && self.welcome.as_ref().is_some_and(|w| named(&w.features))
    }

    /// Our participant id, 0 before Welcome.
    pub fn participant_id(&self) -> u32 {
        self.welcome.as_ref().map_or(0, |w| w.participant_id)
    }

    /// The last measured round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Why the session ended.
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

    /// The next event for the application.
    #[must_use = "what the session has to transmit, report or wait for is lost if not used"]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The largest frame the server accepts, once known.
    pub fn max_frame_bytes(&self) -> usize {
        self.welcome
            .as_ref()
            .and_then(|w| w.limits.as_ref())
            .map_or(max::MAX_HELLO_FRAME_BYTES, |l| l.max_frame_bytes) as usize
    }

    fn heartbeat(&self) -> Duration {
        let ms = self
            .welcome
            .as_ref()
            .map_or(default::HEARTBEAT_INTERVAL_MS, |w| w.heartbeat_interval_ms);
        Duration::from_millis(ms.max(100) as u64)
    }

    fn idle(&self) -> Duration {
        let ms = self
            .welcome
            .as_ref()
            .map_or(default::IDLE_TIMEOUT_MS, |w| w.idle_timeout_ms);
        Duration::from_millis(ms.max(200) as u64)
    }

    /// When [`ClientSession::handle_timeout`] must next be called.
    #[must_use = "what the session has to transmit, report or wait for is lost if not used"]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match self.state {
            State::Closed | State::Connecting => None,
            State::HelloSent => Some(self.hello_sent + self.config.handshake_timeout),
            _ => Some((self.last_tx + self.heartbeat()).min(self.last_rx + self.idle())),
        }
    }

    /// Fires the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        match self.state {
            State::Closed | State::Connecting => {}
            State::HelloSent => {
                if now >= self.hello_sent + self.config.handshake_timeout {
                    self.fail(
                        SmEvent::HandshakeTimeout,
                        ProtocolError::new(
                            ErrorCode::HandshakeTimeout,
                            "no Welcome within the handshake timeout",
                        ),
                        false,
                    );
                }
            }
            _ => {
                if now >= self.last_rx + self.idle() {
                    self.fail(
                        SmEvent::IdleTimeout,
                        ProtocolError::new(
                            ErrorCode::IdleTimeout,
                            "nothing received from the server within the idle timeout",
                        ),
                        false,
                    );
                } else if now >= self.last_tx + self.heartbeat() {
                    self.push(
                        now,
                        0,
                        client_message::Msg::Ping(v1::Ping {
                            timestamp_us: now.as_micros(),
                        }),
                    );
                }
            }
        }
    }

    /// Records that the transport closed under the session.
    pub fn handle_transport_closed(&mut self) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.close.get_or_insert(CloseReason::transport_lost());
            self.events.push_back(ClientEvent::Closed);
        }
    }

    /// Handles one frame received from the server.
    pub fn handle_frame(&mut self, now: Timestamp, frame: Bytes) {
        if self.state == State::Closed {
            return;
        }
        self.last_rx = now;
        // A client accepts the protocol maximum: the server's limits bind what it sends, not us.
        let layered = self.sfu();
        match decode_frame_with::<ServerMessage>(frame, max::MAX_FRAME_BYTES as usize, layered) {
            Err(e) => {
                let fatal = e.is_fatal();
                if fatal {
                    self.fail(SmEvent::FatalError, e, true);
                } else {
                    self.push(now, 0, client_message::Msg::Error(e.to_message(0)));
                }
            }
            Ok(Frame::Extension(_)) => {}
            Ok(Frame::Media(m)) => match sm::next(self.state, SmEvent::Media) {
                Ok(_) => self.events.push_back(ClientEvent::Media(m)),
                Err(code) => self.report(now, code, "media frame before Welcome"),
            },
            Ok(Frame::Control(env)) => self.handle_control(now, env),
        }
    }

    fn handle_control(&mut self, now: Timestamp, env: ServerMessage) {
        let Some(msg) = env.msg else {
            return self.report(
                now,
                ErrorCode::UnknownMessage,
                "the message is unknown to this client",
            );
        };
        let ev = match &msg {
            Msg::Welcome(_) => SmEvent::Welcome,
            Msg::Goodbye(_) => SmEvent::Goodbye,
            Msg::Ping(_) | Msg::Pong(_) => SmEvent::Keepalive,
            Msg::Joined(_) => SmEvent::Joined,
            Msg::Waiting(_) => SmEvent::Waiting,
            Msg::Left(_) => SmEvent::Left,
            Msg::Error(e) => {
                let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
                if code.is_fatal() {
                    SmEvent::FatalError
                } else if self.state == State::Joining {
                    SmEvent::JoinRefused
                } else {
                    SmEvent::PeerError
                }
            }
            _ => SmEvent::RoomMessage,
        };
        let next = match sm::next(self.state, ev) {
            Ok(s) => s,
            Err(code) => return self.report(now, code, "message not expected in this state"),
        };
        match msg {
            Msg::Welcome(w) => {
                if !self.config.versions.contains(&w.version) {
                    let text = format!(
                        "Welcome chose version {}, which this client did not offer",
                        w.version
                    );
                    return self.fail(
                        SmEvent::FatalError,
                        ProtocolError::new(ErrorCode::UnsupportedVersion, text),
                        true,
                    );
                }
                self.state = next;
                self.welcome = Some(w.clone());
                self.events.push_back(ClientEvent::Welcome(w));
            }
            Msg::Goodbye(g) => {
                self.state = next;
                let reason = GoodbyeReason::try_from(g.reason).unwrap_or(GoodbyeReason::Normal);
                self.close = Some(CloseReason::goodbye(reason, &g.text));
                self.events.push_back(ClientEvent::Closed);
            }
            Msg::Ping(p) => self.push(
                now,
                0,
                client_message::Msg::Pong(v1::Pong {
                    timestamp_us: p.timestamp_us,
                }),
            ),
            Msg::Pong(p) => {
                let rtt = now.saturating_since(Timestamp(p.timestamp_us));
                self.rtt = Some(rtt);
                self.events.push_back(ClientEvent::Rtt(rtt));
            }
            Msg::Error(e) => {
                self.state = next;
                match ev {
                    SmEvent::FatalError => {
                        let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::InternalError);
                        self.close = Some(CloseReason::error(ProtocolError::new(code, e.text)));
                        self.events.push_back(ClientEvent::Closed);
                    }
                    SmEvent::JoinRefused => self.events.push_back(ClientEvent::JoinRefused(e)),
                    _ => self.events.push_back(ClientEvent::Error(e)),
                }
            }
            Msg::Joined(j) => {
                self.state = next;
                self.events.push_back(ClientEvent::Joined(j));
            }
            Msg::Waiting(w) => {
                self.state = next;
                self.events.push_back(ClientEvent::Waiting(w));
            }
            Msg::Left(l) => {
                self.state = next;
                self.events.push_back(ClientEvent::Left(l));
            }
            other => {
                self.state = next;
                self.events.push_back(ClientEvent::Room(other));
            }
        }
    }

    /// Sends Join.
    pub fn join(
        &mut self,
        now: Timestamp,
        meeting_id: &str,
        display_name: &str,
        subscribe_all: bool,
    ) -> Result<u32, ProtocolError> {
        let s = sm::next(self.state, SmEvent::SendJoin)
            .map_err(|c| ProtocolError::new(c, "cannot join now"))?;
        self.state = s;
        let rid = self.request_id();
        self.push(
            now,
            rid,
            client_message::Msg::Join(v1::Join {
                meeting_id: meeting_id.into(),
                display_name: display_name.into(),
                subscribe_all,
            }),
        );
        Ok(rid)
    }

    /// Sends Leave.
    pub fn leave(&mut self, now: Timestamp) -> Result<(), ProtocolError> {
        let s = sm::next(self.state, SmEvent::SendLeave)
            .map_err(|c| ProtocolError::new(c, "not in a room"))?;
        self.state = s;
        self.push(now, 0, client_message::Msg::Leave(v1::Leave {}));
        Ok(())
    }

    /// Sends a room message (Publish, Subscribe, ChatSend, …); returns its request id.
    /// Only allowed once joined.
    pub fn send(&mut self, now: Timestamp, msg: client_message::Msg) -> Result<u32, ProtocolError> {
        if self.state != State::Joined {
            return Err(ProtocolError::new(
                ErrorCode::NotJoined,
                "join a room first",
            ));
        }
        let rid = self.request_id();
        self.push(now, rid, msg);
        Ok(rid)
    }

    /// Sends a media frame (its sender field must be 0). Only allowed once joined.
    pub fn send_media(&mut self, now: Timestamp, frame: MediaFrame) -> Result<(), ProtocolError> {
        if self.state != State::Joined {
            return Err(ProtocolError::new(
                ErrorCode::NotJoined,
                "join a room first",
            ));
        }
        self.last_tx = now;
        // LAYERED only where sfu.1 was negotiated; elsewhere the MEDIA frame inside (§6.6).
        let bytes = if self.sfu() {
            frame.as_wire().clone()
        } else {
            frame.into_bytes()
        };
        self.transmit.push_back(bytes);
        Ok(())
    }

    /// Ends the session with Goodbye.
    pub fn goodbye(&mut self, now: Timestamp, text: &str) {
        if self.state == State::Closed || self.state == State::Connecting {
            return;
        }
        self.push(
            now,
            0,
            client_message::Msg::Goodbye(v1::Goodbye {
                reason: GoodbyeReason::Normal as i32,
                text: text.into(),
            }),
        );
        self.state = State::Closed;
        self.close = Some(CloseReason::goodbye(GoodbyeReason::Normal, text));
        self.events.push_back(ClientEvent::Closed);
    }

    fn request_id(&mut self) -> u32 {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        id
    }

    fn push(&mut self, now: Timestamp, request_id: u32, msg: client_message::Msg) {
        self.last_tx = now;
        self.transmit.push_back(encode_control(&ClientMessage {
            request_id,
            msg: Some(msg),
        }));
    }

    /// Reports a non-fatal problem to the server with an Error.
    fn report(&mut self, now: Timestamp, code: ErrorCode, text: &str) {
        if code.is_fatal() {
            return self.fail(SmEvent::FatalError, ProtocolError::new(code, text), true);
        }
        self.push(
            now,
            0,
            client_message::Msg::Error(ProtocolError::new(code, text).to_message(0)),
        );
    }

    fn fail(&mut self, ev: SmEvent, err: ProtocolError, tell_server: bool) {
        if self.state == State::Closed {
            return;
        }
        if tell_server {
            self.transmit.push_back(encode_control(&ClientMessage {
                request_id: 0,
                msg: Some(client_message::Msg::Error(err.to_message(0))),
            }));
        }
        self.state = sm::next(self.state, ev).unwrap_or(State::Closed);
        self.close = Some(CloseReason::error(err));
        self.events.push_back(ClientEvent::Closed);
    }
}
