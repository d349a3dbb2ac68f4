//! An async Convene session: the sans-IO [`ClientSession`] driven over a
//! [`Transport`], with a clock.
//!
//! The application owns one [`Client`] and calls [`Client::next_event`] in a
//! loop (it is cancel-safe, so it can sit in a `select!` beside a frame
//! timer); everything it sends goes out without waiting.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use convene_protocol::v1::{self, TrackInfo, TrackKind, client_message::Msg as C};
use convene_protocol::{
    ClientEvent, ClientSession, ClientSessionConfig, CloseReason, MediaFrame, ProtocolError,
    Timestamp,
};

use crate::transport::{
    ConnectError, Endpoint, PathCounters, Received, SendClass, SendError, Transport,
    TransportChoice, TransportKind,
};

/// Why a call on a [`Client`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The protocol does not allow this now (e.g. publishing before Joined).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The transport refused the frame.
    #[error(transparent)]
    Send(#[from] SendError),
}

/// One session with a server.
pub struct Client {
    transport: Option<Transport>,
    kind: TransportKind,
    session: ClientSession,
    start: Instant,
    /// Our published tracks: track id → audio?, to pick each frame's send class.
    tracks: HashMap<u32, bool>,
    /// Set once `Closed` has been handed to the application.
    finished: bool,
    /// Media frames the transport dropped because it was behind.
    congested_drops: u64,
    /// The QUIC path's counters at the last [`Client::path_report`].
    reported: Option<PathCounters>,
}

/// What a publisher's rate controller (`convene_protocol::rate`) needs to
/// know of its own path, since the last report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PathReport {
    /// The round trip now (QUIC's on WebTransport, else Ping/Pong's).
    pub rtt: Option<Duration>,
    /// The share of packets lost since the last report, on WebTransport
    /// once enough were sent to say.
    pub loss: Option<f64>,
    /// Bytes queued here that the connection has not taken yet.
    pub backlog_bytes: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("kind", &self.kind)
            .field("state", &self.session.state())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects and sends Hello; the first event is `Welcome` (or `Closed`).
    pub async fn connect(
        endpoint: &Endpoint,
        choice: TransportChoice,
        config: ClientSessionConfig,
    ) -> Result<Client, ConnectError> {
        let transport = Transport::connect(endpoint, choice).await?;
        let start = Instant::now();
        let kind = transport.kind();
        let mut session = ClientSession::new(Timestamp(0), config);
        session.connected(Timestamp(0));
        let mut c = Client {
            transport: Some(transport),
            kind,
            session,
            start,
            tracks: HashMap::new(),
            finished: false,
            congested_drops: 0,
            reported: None,
        };
        c.flush();
        Ok(c)
    }

    fn now(&self) -> Timestamp {
        Timestamp(self.start.elapsed().as_micros() as u64)
    }

    /// The transport in use.
    pub fn transport(&self) -> TransportKind {
        self.kind
    }

    /// True when the session negotiated the selective-forwarding extension
    /// `sfu.1` (offered through `ClientSessionConfig::features`).
    pub fn sfu(&self) -> bool {
        self.session.sfu()
    }

    /// Our participant id, once welcomed.
    pub fn participant_id(&self) -> u32 {
        self.session.participant_id()
    }

    /// The last round-trip time: the QUIC path's on WebTransport, else from Ping/Pong.
    pub fn rtt(&self) -> Option<Duration> {
        self.transport
            .as_ref()
            .and_then(Transport::path_rtt)
            .or(self.session.rtt())
    }

    /// Media frames received so far by QUIC datagram and by stream.
    pub fn media_counts(&self) -> (u64, u64) {
        self.transport
            .as_ref()
            .map_or((0, 0), Transport::media_counts)
    }

    /// The path since the last call: round trip, loss and local backlog.
    pub fn path_report(&mut self) -> PathReport {
        let Some(t) = &self.transport else {
            return PathReport::default();
        };
        let now = t.path_counters();
        let loss = match (self.reported, now) {
            (Some(before), Some(now)) => {
                let sent = now.sent_packets.saturating_sub(before.sent_packets);
                let lost = now.lost_packets.saturating_sub(before.lost_packets);
                convene_protocol::rate::loss_share(sent, lost)
            }
            _ => None,
        };
        // A sample too small to judge carries over to the next one.
        if loss.is_some() || self.reported.is_none() {
            self.reported = now;
        }
        PathReport {
            rtt: self.rtt(),
            loss,
            backlog_bytes: t.backlog_bytes(),
        }
    }

    /// Media frames dropped locally because the connection could not keep up.
    pub fn congested_drops(&self) -> u64 {
        self.congested_drops
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.session.close_reason()
    }

    /// The next event. After `Closed` it returns `None`. Cancel-safe.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        loop {
            if let Some(ev) = self.session.poll_event() {
                self.flush();
                if matches!(ev, ClientEvent::Closed) {
                    self.finish().await;
                }
                return Some(ev);
            }
            if self.finished {
                return None;
            }
            self.flush();
            let deadline = self
                .session
                .poll_timeout()
                .map(|t| tokio::time::Instant::from_std(self.start + Duration::from_micros(t.0)));
            let Some(transport) = self.transport.as_mut() else {
                self.session.handle_transport_closed();
                continue;
            };
            tokio::select! {
                r = transport.recv() => {
                    let now = self.now();
                    match r {
                        Some(Received::Frame(f)) => self.session.handle_frame(now, f),
                        Some(Received::Violation(why)) => {
                            tracing::warn!("the server broke the transport mapping: {why}");
                            self.session.handle_transport_closed();
                        }
                        None => self.session.handle_transport_closed(),
                    }
                }
                _ = sleep_until(deadline) => {
                    let now = self.now();
                    self.session.handle_timeout(now);
                }
            }
        }
    }

    /// Sends Join.
    pub fn join(
        &mut self,
        meeting_id: &str,
        display_name: &str,
        subscribe_all: bool,
    ) -> Result<u32, ClientError> {
        let now = self.now();
        let rid = self
            .session
            .join(now, meeting_id, display_name, subscribe_all)?;
        self.flush();
        Ok(rid)
    }

    /// Publishes a track; its media frames are then sent with its kind's priority.
    pub fn publish(&mut self, track: TrackInfo) -> Result<u32, ClientError> {
        let audio = track.kind == TrackKind::Audio as i32;
        let id = track.track_id;
        let rid = self.send(C::Publish(v1::Publish { track: Some(track) }))?;
        self.tracks.insert(id, audio);
        Ok(rid)
    }

    /// Sends a Ping stamped with the session's clock; its Pong updates
    /// [`Client::rtt`] where QUIC does not say (WebSocket). PROTOCOL.md §9.2
    /// lets a client do this at most once a second.
    pub fn ping(&mut self) -> Result<u32, ClientError> {
        let now = self.now();
        let rid = self.session.send(
            now,
            C::Ping(v1::Ping {
                timestamp_us: now.as_micros(),
            }),
        )?;
        self.flush();
        Ok(rid)
    }

    /// Sends a room message (Subscribe, ChatSend, KeyFrameRequest, …).
    pub fn send(&mut self, msg: C) -> Result<u32, ClientError> {
        let now = self.now();
        let rid = self.session.send(now, msg)?;
        self.flush();
        Ok(rid)
    }

    /// Sends a media frame of one of our tracks.
    pub fn send_media(&mut self, frame: MediaFrame) -> Result<(), ClientError> {
        let now = self.now();
        self.session.send_media(now, frame)?;
        let before = self.congested_drops;
        self.flush();
        if self.congested_drops > before {
            return Err(SendError::Congested.into());
        }
        Ok(())
    }

    /// Says Goodbye and closes the connection.
    pub async fn close(&mut self, text: &str) {
        let now = self.now();
        self.session.goodbye(now, text);
        while self.next_event().await.is_some() {}
    }

    fn flush(&mut self) {
        let Some(transport) = &self.transport else {
            while self.session.poll_transmit().is_some() {}
            return;
        };
        while let Some(f) = self.session.poll_transmit() {
            let class = self.class_of(&f);
            match transport.send(f, class) {
                Ok(()) => {}
                Err(SendError::Congested) => self.congested_drops += 1,
                Err(SendError::Closed) => {}
            }
        }
    }

    fn class_of(&self, f: &Bytes) -> SendClass {
        let Some(h) = convene_protocol::MediaHeader::peek(f) else {
            return SendClass::Control;
        };
        match self.tracks.get(&h.track_id) {
            Some(true) => SendClass::Audio,
            _ if h.key => SendClass::VideoKey,
            _ => SendClass::VideoDelta,
        }
    }

    async fn finish(&mut self) {
        self.finished = true;
        if let Some(t) = self.transport.take() {
            let reason = self
                .session
                .close_reason()
                .cloned()
                .unwrap_or_else(CloseReason::transport_lost);
            t.close(reason).await;
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
