//! One client connection: the thin shell around a [`ServerSession`].
//!
//! The reader side feeds frames and timers into the session and carries out
//! its events against the router; everything addressed to the client, the
//! session's own replies included, goes through the client's [`Outbox`],
//! which a writer task drains in priority order, several frames per write.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use convene_protocol::auth::{Claims, Grant};
use convene_protocol::v1::server_message::Msg as ServerMsg;
use convene_protocol::v1::{self, ClientKind, GoodbyeReason, Participant, Role, TrackKind};
use convene_protocol::{
    CloseReason, ErrorCode, ProtocolError, RoomRequest, ServerEvent, ServerSession,
    ServerSessionConfig, Timestamp,
};
use tokio::sync::Notify;
use tracing::{debug, info};

use crate::accept::EvictSignal;
use crate::auth::VerifyError;
use crate::events::LeaveReason;
use crate::mailbox::{Admission, Kick, Mailbox};
use crate::outbox::{Drained, Outbox, OutboxLimits, Wake};
use crate::room::{JoinOutcome, Local, Room, lock};
use crate::slots::{Handshake, SessionSlot};
#[cfg(feature = "test-hooks")]
use crate::state::Tapped;
use crate::state::{AppState, ConnectionGuard};

/// Wakes a connection's writer when frames are queued, and its reader when
/// the outbox is closed from outside or the room decides on its session.
#[derive(Debug, Default)]
pub struct Wakers {
    /// The writer waits on this.
    pub writer: Notify,
    /// The reader waits on this for the room's decisions and slowness.
    pub reader: Notify,
}

/// The outbox's waker: the writer task's `Notify`, or a writer outside the
/// connection's tasks (the WebTransport engine) that drains the outbox itself.
struct ArcWake {
    wakers: Arc<Wakers>,
    external: Option<Arc<dyn Wake>>,
}

impl Wake for ArcWake {
    fn wake(&self) {
        match &self.external {
            Some(w) => w.wake(),
            None => self.wakers.writer.notify_one(),
        }
    }
    fn wake_closed(&self) {
        self.wake();
        self.wakers.reader.notify_one();
    }
}

/// The mailbox's waker: the room's decisions are the reader's to act on.
struct ReaderWake(Arc<Wakers>);

impl Wake for ReaderWake {
    fn wake(&self) {
        self.0.reader.notify_one();
    }
}

/// What the reader gets from the transport.
#[derive(Debug)]
pub enum Incoming {
    /// A whole frame.
    Frame(Bytes),
    /// Something the transport says is a protocol error (e.g. a WebSocket text message).
    Violation(ProtocolError),
    /// The transport closed or failed.
    Closed,
}

/// The protocol side of one connection, independent of the transport.
pub struct Connection {
    state: Arc<AppState>,
    session: ServerSession,
    outbox: Arc<Outbox>,
    /// The room's decisions on this session (removal, a held Join's answer).
    mailbox: Arc<Mailbox>,
    wakers: Arc<Wakers>,
    room: Option<Arc<Mutex<Room>>>,
    /// The request id of the last Join, for answering it later.
    join_request_id: u32,
    transport: &'static str,
    peer: IpAddr,
    handshake_done: bool,
    /// The verified token's claims, when the server requires tokens.
    claims: Option<Claims>,
    /// The client said CLIENT_KIND_RECORDER in Hello (§5.10): everyone sees
    /// it as recording, and it may not publish.
    recorder: bool,
    /// A Hello's token waiting for the issuer's keys to be fetched again.
    pending_hello: Option<String>,
    /// Changes when the issuer's keys were fetched (JWKS configured).
    keys: Option<tokio::sync::watch::Receiver<u64>>,
    /// The connection's place among those still in their handshake, until Hello is accepted.
    handshake: Option<Handshake>,
    /// Fires if a newer connection takes the handshaking place.
    evicted: Option<Arc<EvictSignal>>,
    /// The session's place, once Hello is accepted.
    session_slot: Option<SessionSlot>,
    /// Where the transport reads the largest frame accepted now (the
    /// WebTransport engine parses frames outside this task).
    frame_limit: Option<Arc<std::sync::atomic::AtomicUsize>>,
    /// Counts this connection among the open ones until it drops (after
    /// `Drop::drop` left the room and gave back the participant id).
    _counted: ConnectionGuard,
}

impl Connection {
    /// A connection from `peer` over `transport` (`ws` or `wt`).
    pub fn new(state: Arc<AppState>, transport: &'static str, peer: IpAddr) -> Self {
        Self::with_writer(state, transport, peer, None)
    }

    /// A connection whose outbox is drained by `writer` (woken when frames
    /// are queued) instead of a writer task of its own; run it with
    /// [`drive_external`].
    pub fn with_external_writer(
        state: Arc<AppState>,
        transport: &'static str,
        peer: IpAddr,
        writer: Arc<dyn Wake>,
    ) -> Self {
        Self::with_writer(state, transport, peer, Some(writer))
    }

    fn with_writer(
        state: Arc<AppState>,
        transport: &'static str,
        peer: IpAddr,
        external: Option<Arc<dyn Wake>>,
    ) -> Self {
        let c = &state.config;
        let mut limits = convene_protocol::session::server::default_limits();
        limits.max_frame_bytes = c.max_frame_bytes;
        limits.max_tracks_per_participant = c.max_tracks_per_participant;
        limits.max_concurrent_streams = c.max_concurrent_streams;
        limits.max_participants_per_room = c.max_participants_per_room;
        limits.max_ingress_kbps = c.max_ingress_kbps;
        limits.control_messages_per_second = c.control_messages_per_second;
        limits.control_burst = c.control_burst;
        limits.relay_bytes_per_second = c.relay_bytes_per_second;
        limits.room_relay_bytes_per_second = c.room_relay_bytes_per_second;
        limits.subscriber_queue_bytes = c.max_queue_bytes.min(u32::MAX as usize) as u32;
        let config = ServerSessionConfig {
            limits,
            handshake_timeout: Duration::from_millis(c.handshake_timeout_ms as u64),
            heartbeat_interval: Duration::from_millis(c.heartbeat_interval_ms as u64),
            idle_timeout: Duration::from_millis(c.idle_timeout_ms as u64),
            // Selective forwarding (PROTOCOL.md §6.6), for clients that offer it.
            features: vec![
                convene_protocol::FEATURE_SFU.to_string(),
                convene_protocol::FEATURE_REACTIONS.to_string(),
                convene_protocol::FEATURE_RECORDING.to_string(),
            ],
            ..ServerSessionConfig::default()
        };
        let wakers = Arc::new(Wakers::default());
        let outbox = Arc::new(Outbox::new(
            OutboxLimits {
                max_media_bytes: c.max_queue_bytes,
                slow_consumer: Duration::from_millis(c.slow_consumer_ms as u64),
                ..OutboxLimits::default()
            },
            Box::new(ArcWake {
                wakers: wakers.clone(),
                external,
            }),
        ));
        let mailbox = Arc::new(Mailbox::new(Box::new(ReaderWake(wakers.clone()))));
        let session = ServerSession::new(state.now(), config);
        let keys = state
            .verifier
            .as_ref()
            .and_then(|v| v.jwks())
            .map(|j| j.changes());
        let counted = state.count_connection();
        state
            .metrics
            .connections
            .get_or_create(&label(transport))
            .inc();
        state
            .metrics
            .connections_total
            .get_or_create(&label(transport))
            .inc();
        Connection {
            state,
            session,
            outbox,
            mailbox,
            wakers,
            room: None,
            join_request_id: 0,
            transport,
            peer,
            handshake_done: false,
            claims: None,
            recorder: false,
            pending_hello: None,
            keys,
            handshake: None,
            evicted: None,
            session_slot: None,
            frame_limit: None,
            _counted: counted,
        }
    }

    /// Keeps `limit` at the largest frame the session accepts now, for a
    /// transport that parses frames outside this task. It changes before
    /// Welcome is queued, so no frame sent after Welcome meets the old limit.
    pub fn with_frame_limit(mut self, limit: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        limit.store(
            self.session.max_frame_bytes(),
            std::sync::atomic::Ordering::Release,
        );
        self.frame_limit = Some(limit);
        self
    }

    /// Gives the connection its handshaking slot (taken at accept) and the
    /// signal that closes it if a newer connection needs the slot first.
    pub fn with_handshake(mut self, slot: Option<Handshake>, evicted: Arc<EvictSignal>) -> Self {
        self.handshake = slot;
        self.evicted = Some(evicted);
        self
    }

    /// The signal that fires if the connection loses its handshaking slot;
    /// none once Hello is accepted.
    pub(crate) fn eviction(&self) -> Option<Arc<EvictSignal>> {
        self.evicted.clone().filter(|_| !self.handshake_done)
    }

    /// Closes a connection that lost its handshaking slot to a newer one.
    pub(crate) fn evict(&mut self) {
        let now = self.state.now();
        self.evicted = None;
        self.state.metrics.refused("handshaking_evicted");
        self.session.close_with(ProtocolError::new(
            ErrorCode::TooManyConnections,
            "the server has its most connections in their handshake and closed the oldest; connect again",
        ));
        self.process(now);
    }

    /// The outbox the writer drains.
    pub fn outbox(&self) -> Arc<Outbox> {
        self.outbox.clone()
    }

    /// The wakers shared with the writer.
    pub fn wakers(&self) -> Arc<Wakers> {
        self.wakers.clone()
    }

    /// The largest frame the transport should accept now.
    pub fn max_frame_bytes(&self) -> usize {
        self.session.max_frame_bytes()
    }

    /// When the session's next timer fires.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.session.poll_timeout().map(|t| self.state.instant(t))
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.session.close_reason()
    }

    /// Handles one thing from the transport.
    pub fn handle(&mut self, incoming: Incoming) {
        let now = self.state.now();
        match incoming {
            Incoming::Frame(f) => {
                // The room may have let a held Join in a moment ago and the
                // client already be answering its Joined: the session must
                // know it joined before it reads that answer.
                self.settle_admission();
                self.state.metrics.frames_in.inc();
                self.state.metrics.bytes_in.inc_by(f.len() as u64);
                self.session.handle_frame(now, f);
            }
            Incoming::Violation(e) => self.session.close_with(e),
            Incoming::Closed => self.session.handle_transport_closed(),
        }
        self.process(now);
    }

    /// Fires due timers.
    pub fn handle_timeout(&mut self) {
        let now = self.state.now();
        self.session.handle_timeout(now);
        self.process(now);
    }

    /// Reacts to what happened outside the connection's tasks: the room's
    /// decisions in the mailbox (removal, a held Join's answer), or the
    /// outbox closed for slowness.
    pub fn handle_outside(&mut self) {
        let now = self.state.now();
        self.settle_admission();
        if let Some(kick) = self.mailbox.kicked() {
            let (reason, text) = match kick {
                Kick::Removed => (GoodbyeReason::Removed, "a moderator removed you"),
                Kick::MeetingEnded => {
                    (GoodbyeReason::MeetingEnded, "a moderator ended the meeting")
                }
                Kick::NoKey => (
                    GoodbyeReason::Removed,
                    "this meeting requires end-to-end encryption, and you announced no key in time: join with encryption on",
                ),
            };
            self.session.goodbye(reason, text);
        } else if self.outbox.is_slow() {
            self.state.metrics.drop("slow_consumer", 1);
            self.session.close_with(ProtocolError::new(
                ErrorCode::SlowConsumer,
                "you did not read your frames for too long",
            ));
        }
        self.process(now);
    }

    /// Applies a decision the room made on a held Join (sync over, admitted,
    /// denied, refused), once.
    fn settle_admission(&mut self) {
        match self.mailbox.take_admission() {
            // The room queued Joined already, first in line.
            Some(Admission::Admitted) => {
                let answered = self.session.admitted_by_room();
                self.report_misuse(answered);
            }
            Some(Admission::Denied) => {
                self.room = None;
                self.session.refuse(
                    0,
                    ProtocolError::new(
                        ErrorCode::AdmissionDenied,
                        "a moderator did not let you in",
                    ),
                );
            }
            Some(Admission::Held) => {
                let answered = self.session.held();
                self.report_misuse(answered);
            }
            Some(Admission::Refused(e)) => {
                self.room = None;
                self.session.refuse(self.join_request_id, e);
            }
            None => {}
        }
    }

    /// Server shutdown: Goodbye(SHUTDOWN).
    pub fn shutdown(&mut self) {
        let now = self.state.now();
        if !self.handshake_done {
            self.session.close_with(ProtocolError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down",
            ));
        } else {
            self.session
                .goodbye(GoodbyeReason::Shutdown, "the server is shutting down");
        }
        self.process(now);
    }

    fn process(&mut self, now: Timestamp) {
        while let Some(ev) = self.session.poll_event() {
            match ev {
                ServerEvent::Hello { hello, .. } => {
                    self.recorder = hello.client_kind == ClientKind::Recorder as i32;
                    let verified = match &self.state.verifier {
                        Some(v) => match v.check(&hello.auth_token) {
                            Ok(c) => Ok(Some(c)),
                            Err(VerifyError::Refused(e)) => Err(e),
                            Err(VerifyError::UnknownKey(kid)) => match v.jwks() {
                                // A key the issuer may have just added: fetch
                                // the keys again and retry once they arrive.
                                Some(jwks) if self.keys.is_some() => {
                                    if let Some(rx) = &mut self.keys {
                                        rx.borrow_and_update();
                                    }
                                    jwks.wanted.notify_one();
                                    self.pending_hello = Some(hello.auth_token);
                                    continue;
                                }
                                _ => Err(crate::auth::unknown_key(&kid)),
                            },
                        },
                        None => Ok(None),
                    };
                    self.answer_hello(now, verified);
                }
                ServerEvent::Join { request_id, join } => self.join(now, request_id, join),
                ServerEvent::Left => self.leave_room_because(LeaveReason::Left),
                ServerEvent::Room { request_id, msg } => {
                    if let Err(e) = self.permitted(&msg) {
                        self.session.refuse(request_id, e);
                    } else if matches!(
                        msg,
                        RoomRequest::StartRecording(_) | RoomRequest::StopRecording(_)
                    ) {
                        self.recording(request_id, &msg);
                    } else if let Some(room) = &self.room {
                        #[cfg(feature = "test-hooks")]
                        if let RoomRequest::E2ee(e) = &msg {
                            let from = self.session.participant_id();
                            self.state.tapped(|| Tapped::E2ee {
                                from,
                                payload: e.payload.clone(),
                            });
                        }
                        let result = lock(room).handle(
                            now,
                            self.session.participant_id(),
                            msg,
                            unix_micros(),
                        );
                        if let Err(e) = result {
                            self.session.refuse(request_id, e);
                        }
                    }
                }
                ServerEvent::Media(frame) => {
                    #[cfg(feature = "test-hooks")]
                    let frame = test_fault(self.state.config.test_fault, frame);
                    if let Some(room) = &self.room {
                        let started = std::time::Instant::now();
                        let result = lock(room).route(now, self.session.participant_id(), &frame);
                        self.state
                            .metrics
                            .fanout_seconds
                            .observe(started.elapsed().as_secs_f64());
                        match result {
                            Ok(stats) => {
                                #[cfg(feature = "test-hooks")]
                                self.state.tapped(|| {
                                    Tapped::Media(
                                        frame
                                            .clone()
                                            .stamp_sender(self.session.participant_id())
                                            .into_bytes(),
                                    )
                                });
                                let m = &self.state.metrics;
                                m.media_deliveries.inc_by(stats.delivered as u64);
                                m.drop("video_delta", stats.dropped[0] as u64);
                                m.drop("video_key", stats.dropped[1] as u64);
                                m.drop("audio", stats.dropped[2] as u64);
                            }
                            Err(e) => self.session.refuse(0, e),
                        }
                    }
                }
                ServerEvent::PeerError(e) => {
                    debug!(pid = self.session.participant_id(), code = e.code, text = %e.text, "client reported an error")
                }
                ServerEvent::ErrorSent(code) => {
                    let handshake = self.session.participant_id() == 0;
                    self.state.metrics.error(handshake, code.name());
                }
                ServerEvent::Rtt(_) => {}
                ServerEvent::Closed => {
                    self.leave_room();
                    if let Some(reason) = self.session.close_reason()
                        && let Some(code) = reason.error
                    {
                        debug!(pid = self.session.participant_id(), code = code.name(), text = %reason.text, "session closed with an error");
                    }
                }
                _ => {}
            }
        }
        self.flush();
    }

    /// Accepts or refuses a Hello once its token has been checked.
    fn answer_hello(&mut self, now: Timestamp, verified: Result<Option<Claims>, ProtocolError>) {
        if self.state.is_shutting_down() {
            self.session.refuse(
                0,
                ProtocolError::new(ErrorCode::ShuttingDown, "the server is shutting down"),
            );
        } else if let Err(e) = verified {
            debug!(transport = self.transport, peer = %self.peer, code = e.code.name(), "token refused");
            self.session.refuse(0, e);
        } else {
            // A session slot, leaving the handshaking pool either way.
            let slot = match self.handshake.take() {
                Some(h) => h.establish(),
                None => self.state.slots.session(self.peer),
            };
            match slot {
                Ok(s) => self.session_slot = Some(s),
                Err(e) => {
                    self.state.metrics.refused("sessions");
                    self.session.refuse(0, e);
                    return;
                }
            }
            let Some(pid) = self.state.router.allocate_participant_id() else {
                self.session.refuse(
                    0,
                    ProtocolError::new(
                        ErrorCode::ServerBusy,
                        "this server has no participant ids left; try another server or later",
                    ),
                );
                return;
            };
            self.claims = verified.ok().flatten();
            let session_id = format!("{:016x}", session_id_for(pid));
            let answered = self
                .session
                .accept_hello(now, pid, session_id, Bytes::new());
            self.report_misuse(answered);
            self.handshake_done = true;
            debug!(pid, transport = self.transport, peer = %self.peer, "session established");
        }
    }

    /// Resolves when the issuer's keys were fetched while a Hello waits for them.
    pub(crate) async fn keys_fetched(&mut self) {
        match (&self.pending_hello, &mut self.keys) {
            (Some(_), Some(rx)) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            _ => std::future::pending().await,
        }
    }

    /// Checks the waiting Hello's token again, now with the fresh keys; a key
    /// still unknown is refused.
    pub(crate) fn retry_hello(&mut self) {
        let Some(token) = self.pending_hello.take() else {
            return;
        };
        let now = self.state.now();
        let verified = match &self.state.verifier {
            Some(v) => v.verify(&token).map(Some),
            None => Ok(None),
        };
        self.answer_hello(now, verified);
        self.process(now);
    }

    /// StartRecording or StopRecording from a moderator (§5.10): this node
    /// starts or stops the recorder, and answers with RecordingAnswer.
    fn recording(&mut self, request_id: u32, msg: &RoomRequest) {
        let Some(room) = &self.room else {
            return;
        };
        let meeting = lock(room).id().to_string();
        let pid = self.session.participant_id();
        let answer = match msg {
            RoomRequest::StartRecording(_) => crate::recording::start_in(&self.state, &meeting)
                .map(|s| {
                    info!(pid, meeting = %meeting, name = %s.name, "recording started by a moderator");
                    v1::RecordingAnswer {
                        request_id,
                        recording: true,
                        name: s.name,
                    }
                }),
            _ => crate::recording::stop_in(&self.state, &meeting).map(|_| {
                info!(pid, meeting = %meeting, "recording stopped by a moderator");
                v1::RecordingAnswer {
                    request_id,
                    recording: false,
                    name: String::new(),
                }
            }),
        };
        match answer {
            Ok(a) => self.session.send(ServerMsg::RecordingAnswer(a)),
            Err(e) => self.session.refuse(request_id, e),
        }
    }

    /// Whether the token (if tokens are required) grants a room request.
    fn permitted(&self, msg: &RoomRequest) -> Result<(), ProtocolError> {
        if self.recorder && matches!(msg, RoomRequest::Publish(_)) {
            return Err(recorder_publishes());
        }
        if matches!(
            msg,
            RoomRequest::StartRecording(_) | RoomRequest::StopRecording(_)
        ) && !self
            .claims
            .as_ref()
            .is_some_and(|c| c.grants(Grant::Moderate))
        {
            // Moderators only; without tokens nobody moderates (§5.8).
            return Err(ProtocolError::new(
                ErrorCode::PermissionDenied,
                "starting and stopping a recording needs the moderator role, which comes from your token",
            ));
        }
        let Some(claims) = &self.claims else {
            return Ok(());
        };
        let need = match msg {
            RoomRequest::Publish(_) if self.recorder => {
                return Err(recorder_publishes());
            }
            RoomRequest::Publish(t) => match TrackKind::try_from(t.kind) {
                Ok(TrackKind::Audio) => Some((Grant::PublishAudio, "publish an audio track")),
                Ok(TrackKind::Screen) => Some((Grant::PublishScreen, "share a screen")),
                _ => Some((Grant::PublishVideo, "publish a video track")),
            },
            RoomRequest::Subscribe(_) => Some((Grant::Subscribe, "subscribe")),
            RoomRequest::Chat(_) => Some((Grant::Chat, "chat")),
            RoomRequest::MuteRequest(_)
            | RoomRequest::RemoveParticipant(_)
            | RoomRequest::LockRoom(_)
            | RoomRequest::Admit(_)
            | RoomRequest::Deny(_)
            | RoomRequest::EndMeeting(_) => Some((Grant::Moderate, "moderate")),
            RoomRequest::UpdateSelf(_) if !claims.name.is_empty() => {
                return Err(ProtocolError::new(
                    ErrorCode::PermissionDenied,
                    "your display name comes from your token",
                ));
            }
            _ => None,
        };
        match need {
            Some((g, what)) if !claims.grants(g) => Err(crate::auth::denied(what, g)),
            _ => Ok(()),
        }
    }

    fn join(&mut self, now: Timestamp, request_id: u32, join: convene_protocol::v1::Join) {
        self.join_request_id = request_id;
        let pid = self.session.participant_id();
        // Admission control: a loaded node takes no newcomers (those already
        // in keep their place); they try another node.
        if let Some(why) = self.state.load.busy() {
            self.state.metrics.error(false, "SERVER_BUSY");
            self.session.refuse(
                request_id,
                ProtocolError::new(
                    ErrorCode::ServerBusy,
                    format!("this server is busy ({why}); try another server or later"),
                ),
            );
            return;
        }
        if let Some(claims) = &self.claims {
            if !claims.admits(&join.meeting_id) {
                self.session.refuse(
                    request_id,
                    ProtocolError::new(
                        ErrorCode::PermissionDenied,
                        format!(
                            "your token does not admit you to meeting `{}`",
                            join.meeting_id
                        ),
                    ),
                );
                return;
            }
            if self.recorder && !claims.grants(Grant::Record) {
                self.session.refuse(
                    request_id,
                    crate::auth::denied("join as a recorder", Grant::Record),
                );
                return;
            }
            if join.subscribe_all && !claims.grants(Grant::Subscribe) {
                self.session.refuse(
                    request_id,
                    crate::auth::denied("subscribe_all", Grant::Subscribe),
                );
                return;
            }
        }
        // With tokens, who you are is the token's word, not yours.
        let (display_name, user_id) = match &self.claims {
            Some(c) => (
                if c.name.is_empty() {
                    join.display_name.clone()
                } else {
                    c.name.clone()
                },
                c.sub.clone(),
            ),
            None => (join.display_name.clone(), String::new()),
        };
        let info = Participant {
            participant_id: pid,
            display_name,
            user_id,
            // Moderation is the token's to grant; without tokens nobody moderates.
            role: if self
                .claims
                .as_ref()
                .is_some_and(|c| c.grants(Grant::Moderate))
            {
                Role::Moderator as i32
            } else {
                Role::Participant as i32
            },
            tracks: Vec::new(),
            hand_raised: false,
            recording: self.recorder,
        };
        // The expiry is wall-clock time, which the sans-IO router does not
        // read: checked here, in the shell.
        if let crate::meetings::Policy::Managed(m) =
            self.state.meetings.cache().policy(&join.meeting_id)
            && m.expired(crate::meetings::unix_now())
        {
            self.session.refuse(
                request_id,
                ProtocolError::new(
                    ErrorCode::MeetingExpired,
                    format!("meeting `{}` has expired", join.meeting_id),
                ),
            );
            return;
        }
        let session = &mut self.session;
        let outbox = &self.outbox;
        let local = Local {
            outbox: outbox.clone(),
            mailbox: self.mailbox.clone(),
            sfu: session.sfu(),
            reactions: session.reactions(),
        };
        let mut answered = Ok(());
        let result = self.state.router.join(
            now,
            &join.meeting_id,
            info,
            join.subscribe_all,
            local,
            |outcome| {
                answered = match outcome {
                    JoinOutcome::Joined(joined) => session.joined(joined),
                    JoinOutcome::Held => session.held(),
                    // Answered later, through the mailbox.
                    JoinOutcome::Syncing => Ok(()),
                };
                // Queue Joined before releasing the room, so nothing else reaches the newcomer first.
                flush_session(session, outbox);
            },
        );
        self.report_misuse(answered);
        match result {
            Ok(room) => {
                info!(pid, meeting = %join.meeting_id, "joined");
                self.room = Some(room);
            }
            Err(e) => self.session.refuse(request_id, e),
        }
    }

    /// An answer the session had not asked for. The one way it happens is a
    /// race the session already settled (e.g. a moderator's admission
    /// arriving after the client left the waiting room), so it is logged,
    /// not treated as a failure.
    fn report_misuse(&self, answered: Result<(), convene_protocol::ApiMisuse>) {
        if let Err(e) = answered {
            debug!(pid = self.session.participant_id(), error = %e, "answer not applied");
        }
    }

    fn leave_room(&mut self) {
        if self.room.is_some() {
            self.leave_room_because(self.leave_reason());
        }
    }

    fn leave_room_because(&mut self, reason: LeaveReason) {
        if let Some(room) = self.room.take() {
            // The room's word (a removal, the end of the meeting) wins over
            // how the session then ended.
            let reason = match self.mailbox.kicked() {
                Some(Kick::Removed | Kick::NoKey) => LeaveReason::Removed,
                Some(Kick::MeetingEnded) => LeaveReason::MeetingEnded,
                None => reason,
            };
            self.state.router.leave_because(
                self.state.now(),
                &room,
                self.session.participant_id(),
                reason,
            );
        }
    }

    /// Why the participant is leaving, from how the session ended.
    fn leave_reason(&self) -> LeaveReason {
        let Some(r) = self.session.close_reason() else {
            // The connection went without the session ending (its task ended).
            return LeaveReason::ConnectionLost;
        };
        match (r.goodbye, r.error) {
            (Some(GoodbyeReason::Shutdown), _) if self.state.is_shutting_down() => {
                LeaveReason::ServerShutdown
            }
            (Some(_), _) => LeaveReason::Left,
            (None, Some(ErrorCode::SlowConsumer)) => LeaveReason::SlowConsumer,
            (None, Some(ErrorCode::ShuttingDown)) => LeaveReason::ServerShutdown,
            // A peer that stopped answering is a lost connection, not a misbehaving one.
            (None, Some(ErrorCode::IdleTimeout)) => LeaveReason::ConnectionLost,
            (None, Some(_)) => LeaveReason::Error,
            (None, None) => LeaveReason::ConnectionLost,
        }
    }

    fn flush(&mut self) {
        if let Some(limit) = &self.frame_limit {
            limit.store(
                self.session.max_frame_bytes(),
                std::sync::atomic::Ordering::Release,
            );
        }
        flush_session(&mut self.session, &self.outbox);
        if self.session.is_closed() {
            // Wake the writer so it sees the end and closes the transport.
            self.wakers.writer.notify_one();
        }
    }
}

/// The refusal of a recorder's Publish (§5.10).
fn recorder_publishes() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::PermissionDenied,
        "a recorder does not publish (it said CLIENT_KIND_RECORDER in Hello)",
    )
}

fn flush_session(session: &mut ServerSession, outbox: &Outbox) {
    while let Some(f) = session.poll_transmit() {
        // A queue closed for slowness was emptied; the session's last words
        // (SLOW_CONSUMER) still go out.
        if !outbox.push_control(f.clone()) && session.is_closed() {
            outbox.push_last(f);
        }
    }
}

/// Applies a deliberate defect to a media frame (test builds only), so that
/// tests can show the conformance suite and the clients notice it.
#[cfg(feature = "test-hooks")]
fn test_fault(
    fault: Option<crate::config::Fault>,
    frame: convene_protocol::MediaFrame,
) -> convene_protocol::MediaFrame {
    use crate::config::Fault;
    use convene_protocol::MediaFrame;
    match fault {
        Some(Fault::ForgetSenderStamp) => frame.stamp_sender(0),
        Some(Fault::TamperMedia)
            if frame.header().sequence % 10 == 5 && !frame.payload().is_empty() =>
        {
            // Only the payload changes: a LAYERED frame keeps its prefix
            // (without it, a simulcast track's frame would reach the room as
            // a plain one, and the fault would test selection, not clients).
            let layer = frame.layer();
            let mut bytes = bytes::BytesMut::from(frame.into_bytes());
            let last = bytes.len() - 1;
            bytes[last] ^= 0x01;
            let tampered = MediaFrame::parse(bytes.freeze()).expect("only the payload changed");
            match layer {
                Some(l) => tampered.with_layer(l),
                None => tampered,
            }
        }
        _ => frame,
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.leave_room();
        // Only now, with the session gone from its room, may its id be reissued.
        let pid = self.session.participant_id();
        if pid != 0 {
            self.state.router.release_participant_id(pid);
        }
        self.state
            .metrics
            .connections
            .get_or_create(&label(self.transport))
            .dec();
        self.outbox.close();
    }
}

fn label(transport: &str) -> crate::metrics::TransportLabel {
    crate::metrics::TransportLabel {
        transport: transport.into(),
    }
}

/// Microseconds since the Unix epoch, for chat timestamps.
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A session id for logs and support: time and participant id, mixed. Not a secret.
fn session_id_for(pid: u32) -> u64 {
    let t = unix_micros();
    (t ^ ((pid as u64) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Logs the end of a connection.
pub fn log_close(transport: &str, peer: IpAddr, reason: Option<&CloseReason>) {
    match reason {
        Some(r) if r.error.is_some() => {
            debug!(transport, %peer, code = r.transport_reason(), text = %r.text, "connection closed")
        }
        Some(_) | None => debug!(transport, %peer, "connection closed"),
    }
}

/// Where a connection's writer puts frames: one implementation per transport
/// (public so that a program embedding the server can add a transport).
pub trait FrameSink: Send + 'static {
    /// Writes a batch of frames in order (`lanes` says which are control and
    /// audio); `Err` when the transport is gone.
    fn write_batch(
        &mut self,
        batch: &mut Vec<Bytes>,
        lanes: Drained,
    ) -> impl std::future::Future<Output = Result<(), ()>> + Send;
    /// Closes the transport with `reason`, after the last batch.
    fn close(&mut self, reason: &CloseReason) -> impl std::future::Future<Output = ()> + Send;
    /// A new estimate of what the path to the client carries, kbit/s, when
    /// one is due at `now` (the sink reads its transport's counters every
    /// [`crate::estimate::SAMPLE_EVERY`], not per batch); `None` otherwise.
    fn path_kbps(&mut self, now: std::time::Instant) -> Option<u32> {
        let _ = now;
        None
    }
}

/// Runs a connection to its end: a writer task drains the outbox into
/// `sink`, batch by batch, and this task feeds `incoming`, timers, outbox
/// closure and shutdown into the session until it ends. Gives both back
/// (the sink unless its writer had to be cut off), for a transport that
/// finishes its close itself.
pub async fn drive<S, I>(
    mut conn: Connection,
    mut sink: S,
    mut incoming: I,
    state: Arc<AppState>,
    peer: IpAddr,
) -> (Option<S>, I)
where
    S: FrameSink,
    I: futures_util::Stream<Item = Incoming> + Unpin,
{
    let outbox = conn.outbox();
    let wakers = conn.wakers();
    let close: Arc<OnceLock<CloseReason>> = Arc::new(OnceLock::new());
    let coalesce = Duration::from_millis(state.config.coalesce_ms as u64);
    let writer = {
        let (outbox, wakers, close, state) =
            (outbox.clone(), wakers.clone(), close.clone(), state.clone());
        tokio::spawn(async move {
            let mut batch: Vec<Bytes> = Vec::with_capacity(64);
            loop {
                wakers.writer.notified().await;
                if !coalesce.is_zero() {
                    tokio::time::sleep(coalesce).await;
                }
                // Read the close reason before draining: the session queues its
                // last words (Goodbye, Error) before setting the reason, so a
                // drain after this read sends them before the close. (Read
                // after the drain, a Goodbye queued in between was lost.)
                let closing = close.get().cloned();
                let mut tally = DrainTally::default();
                loop {
                    let now = std::time::Instant::now();
                    let lanes = drain_batch(&outbox, &mut batch, &state, now, &mut tally);
                    if batch.is_empty() {
                        break;
                    }
                    tally.record(&state);
                    if sink.write_batch(&mut batch, lanes).await.is_err() {
                        return Some(sink);
                    }
                    batch.clear();
                    // The room shares this estimate among the client's
                    // subscriptions (PROTOCOL.md §6.6.3).
                    if let Some(kbps) = sink.path_kbps(now) {
                        outbox.set_path_kbps(kbps);
                        state.metrics.path_estimate_kbps.observe(kbps as f64);
                    }
                    if !lanes.more {
                        break;
                    }
                }
                if let Some(reason) = closing {
                    sink.close(&reason).await;
                    return Some(sink);
                }
            }
        })
    };

    read_until_closed(&mut conn, &mut incoming, &state, &close, || {
        wakers.writer.notify_one()
    })
    .await;
    log_close(conn.transport, peer, conn.close_reason());
    // Let the writer flush what the session said last, within the drain
    // deadline; a writer stuck on a peer that does not read is cut off.
    let grace = Duration::from_millis(state.config.shutdown_grace_ms as u64);
    let mut writer = writer;
    let sink = match tokio::time::timeout(grace, &mut writer).await {
        Ok(done) => done.ok().flatten(),
        Err(_) => {
            writer.abort();
            None
        }
    };
    drop(conn);
    (sink, incoming)
}

/// How a connection drained by an outside writer ends: the reason is set
/// here when the session ends, the writer then sends what is left and
/// closes the transport, and notifies `done`.
#[derive(Debug, Default)]
pub struct ExternalClose {
    /// The reason, once the session has ended.
    pub reason: OnceLock<CloseReason>,
    /// Notified by the writer once it has closed the transport (or found it gone).
    pub done: Notify,
}

/// [`drive`] for a connection made with [`Connection::with_external_writer`]:
/// feeds `incoming`, timers, outbox closure and shutdown into the session
/// until it ends, then hands the close to the writer through `close`.
pub async fn drive_external<I>(
    mut conn: Connection,
    mut incoming: I,
    state: Arc<AppState>,
    peer: IpAddr,
    close: Arc<ExternalClose>,
    writer: Arc<dyn Wake>,
) where
    I: futures_util::Stream<Item = Incoming> + Unpin,
{
    let done = close.done.notified();
    tokio::pin!(done);
    // Registered before the close is asked for, so the writer's notice is not missed.
    done.as_mut().enable();
    read_until_closed(&mut conn, &mut incoming, &state, &close.reason, || {
        writer.wake()
    })
    .await;
    log_close(conn.transport, peer, conn.close_reason());
    let grace = Duration::from_millis(state.config.shutdown_grace_ms as u64);
    let _ = tokio::time::timeout(grace, done).await;
    drop(conn);
}

/// Runs the session's side of a connection until it has a close reason,
/// which it stores in `close` before calling `wake_writer`.
async fn read_until_closed<I>(
    conn: &mut Connection,
    incoming: &mut I,
    state: &AppState,
    close: &OnceLock<CloseReason>,
    wake_writer: impl Fn(),
) where
    I: futures_util::Stream<Item = Incoming> + Unpin,
{
    use futures_util::StreamExt;
    let wakers = conn.wakers();
    let mut shutdown = state.shutdown_signal();
    if *shutdown.borrow() {
        conn.shutdown();
    }
    loop {
        if let Some(reason) = conn.close_reason() {
            // Set once: the session ends once.
            let _ = close.set(reason.clone());
            wake_writer();
            break;
        }
        let deadline = conn.deadline();
        let eviction = conn.eviction();
        tokio::select! {
            // While a Hello waits for the issuer's keys, nothing more is read:
            // a client may send nothing before Welcome (§4.1), and an
            // unauthenticated connection gets no more buffered than its Hello.
            next = incoming.next(), if conn.pending_hello.is_none() => {
                conn.handle(next.unwrap_or(Incoming::Closed))
            }
            _ = sleep_until(deadline) => conn.handle_timeout(),
            _ = wakers.reader.notified() => conn.handle_outside(),
            _ = shutdown.changed() => conn.shutdown(),
            _ = conn.keys_fetched() => conn.retry_hello(),
            _ = evicted(eviction) => conn.evict(),
        }
    }
}

/// Takes the next batch from `outbox` (at most 256 KiB) as of `now`, and
/// records it in `tally` and the metrics: what every writer, task or not,
/// does before writing.
pub fn drain_batch(
    outbox: &Outbox,
    batch: &mut Vec<Bytes>,
    state: &AppState,
    now: std::time::Instant,
    tally: &mut DrainTally,
) -> Drained {
    // The outbox is sans-IO: the writer's clock reading becomes its time here.
    let at = tokio::time::Instant::from_std(now);
    let lanes = outbox.drain_timed(batch, 256 * 1024, state.timestamp_at(at));
    if batch.is_empty() {
        return lanes;
    }
    if let Some(w) = lanes.waited {
        state.metrics.queue_delay_seconds.observe(w.as_secs_f64());
        tally.longest_wait = tally.longest_wait.max(w);
    }
    state.metrics.queue_depth.observe(batch.len() as f64);
    tally.frames += batch.len() as u64;
    tally.bytes += batch.iter().map(|f| f.len() as u64).sum::<u64>();
    lanes
}

/// What a writer drained since it last told the metrics: counted locally
/// and recorded once per pass, because the counters are shared by every
/// writer and one update per delivered frame made them a contended line.
#[derive(Debug, Default)]
pub struct DrainTally {
    frames: u64,
    bytes: u64,
    longest_wait: std::time::Duration,
}

impl DrainTally {
    /// Adds the tally to the metrics and starts again from zero.
    pub fn record(&mut self, state: &AppState) {
        if self.frames == 0 {
            return;
        }
        state.metrics.frames_out.inc_by(self.frames);
        state.metrics.bytes_out.inc_by(self.bytes);
        state.load.note_queue_delay(self.longest_wait);
        *self = DrainTally::default();
    }
}

/// Resolves when `signal` fires; never without one.
async fn evicted(signal: Option<Arc<EvictSignal>>) {
    match signal {
        Some(s) => s.evicted().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever when there is none.
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::InProcessHub;
    use crate::config::Config;
    use convene_protocol::session::client::{ClientEvent, ClientSession, ClientSessionConfig};
    use convene_protocol::v1::{self, client_message};

    /// Moves everything the server queued for the client into the client.
    fn deliver(server: &Connection, client: &mut ClientSession, now: Timestamp) {
        let mut out = Vec::new();
        server.outbox().drain(&mut out, usize::MAX);
        for f in out {
            client.handle_frame(now, f);
        }
    }

    fn send(server: &mut Connection, client: &mut ClientSession) {
        while let Some(f) = client.poll_transmit() {
            server.handle(Incoming::Frame(f));
        }
    }

    /// On a cluster a Join can be held while the room learns who is on the
    /// other nodes; the room then queues Joined itself. A client that answers
    /// Joined at once must find its session joined, even before the
    /// connection's reader got round to the room's wake-up.
    #[test]
    fn a_request_right_after_a_held_joins_joined_is_served() {
        let hub = InProcessHub::new();
        let (bus, _rx1) = hub.attach(1);
        // Node 2 exists and never answers, so the room waits for it.
        let (_bus2, _rx2) = hub.attach(2);
        let cache = Arc::new(crate::meetings::MeetingCache::ad_hoc(Vec::new()));
        let meetings = crate::meetings::Meetings::open(None, cache).unwrap();
        let state = Arc::new(AppState::new(Config::default(), None, None, bus, meetings));
        let mut server = Connection::new(state.clone(), "test", IpAddr::from([127, 0, 0, 1]));
        let now = state.now();
        let mut client = ClientSession::new(now, ClientSessionConfig::default());
        client.connected(now);
        send(&mut server, &mut client);
        deliver(&server, &mut client, now);
        client.join(now, "held", "ada", false).unwrap();
        send(&mut server, &mut client);
        deliver(&server, &mut client, now);
        let mut events = std::iter::from_fn(|| client.poll_event()).collect::<Vec<_>>();
        assert!(
            !events.iter().any(|e| matches!(e, ClientEvent::Joined(_))),
            "the Join should be held while node 2 is asked: {events:?}"
        );

        // Node 2 never answers: the room lets the held Join in on its own.
        // (The room's clock started a moment after `now`.)
        state.router.tick(now + crate::room::SYNC_TIMEOUT * 2);
        deliver(&server, &mut client, now);
        events = std::iter::from_fn(|| client.poll_event()).collect();
        assert!(
            events.iter().any(|e| matches!(e, ClientEvent::Joined(_))),
            "{events:?}"
        );
        // The client answers before the connection handled the room's wake-up.
        client
            .send(
                now,
                client_message::Msg::Chat(v1::ChatSend {
                    text: "hello".into(),
                    ..Default::default()
                }),
            )
            .unwrap();
        send(&mut server, &mut client);
        deliver(&server, &mut client, now);
        let errors: Vec<_> = std::iter::from_fn(|| client.poll_event())
            .filter_map(|e| match e {
                ClientEvent::Error(e) => Some(e),
                _ => None,
            })
            .collect();
        assert!(errors.is_empty(), "the chat was refused: {errors:?}");
    }
}
