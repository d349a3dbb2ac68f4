//! Moving Convene frames over WebTransport (PROTOCOL.md §3.3) or WebSocket
//! (§3.2), behind one interface.
//!
//! Reading and writing run in tasks of their own, so [`Transport::send`]
//! never waits and [`Transport::recv`] is cancel-safe: a caller can `select!`
//! on it next to its own timers without losing frames.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use convene_protocol::frame::{FRAME_CONTROL, is_media_frame, length_prefix, stream_priority};
use convene_protocol::{CloseReason, MediaFrame, StreamDecoder};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use url::Url;

use crate::tls;

/// Largest frame the transport accepts before the session knows the negotiated limit.
const MAX_TRANSPORT_FRAME: usize = (1 << 20) + 64 * 1024;

/// Outgoing frames waiting for the writer; media beyond this is dropped, not queued.
const OUTGOING_QUEUE: usize = 512;

/// Which transport to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportChoice {
    /// WebTransport when the server offers it, else WebSocket.
    #[default]
    Auto,
    /// WebTransport only.
    WebTransport,
    /// WebSocket only.
    WebSocket,
}

impl std::str::FromStr for TransportChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(TransportChoice::Auto),
            "wt" | "webtransport" => Ok(TransportChoice::WebTransport),
            "ws" | "websocket" => Ok(TransportChoice::WebSocket),
            other => Err(format!("unknown transport {other:?}: use auto, wt or ws")),
        }
    }
}

/// The transport a connection ended up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// HTTP/3 WebTransport over QUIC.
    WebTransport,
    /// WebSocket over TCP.
    WebSocket,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::WebTransport => "WebTransport",
            TransportKind::WebSocket => "WebSocket",
        })
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The server's base URL: `http://host:port` (WebSocket only) or
    /// `https://host:port` (WebTransport and secure WebSocket).
    pub server: Url,
    /// Trust exactly the certificate with this SHA-256 (a `--dev-tls`
    /// server's published hash) instead of the system's roots.
    pub cert_sha256: Option<Vec<u8>>,
    /// The WebTransport port when it differs from the HTTPS port.
    pub wt_port: Option<u16>,
}

impl Endpoint {
    /// An endpoint from a base URL such as `https://127.0.0.1:8443`.
    pub fn new(server: &str) -> Result<Endpoint, ConnectError> {
        let server = Url::parse(server).map_err(|e| ConnectError::BadUrl {
            url: server.into(),
            why: e.to_string(),
        })?;
        match server.scheme() {
            "http" | "https" | "ws" | "wss" => {}
            other => {
                return Err(ConnectError::BadUrl {
                    url: server.to_string(),
                    why: format!("scheme {other:?} is not http, https, ws or wss"),
                });
            }
        }
        if server.host_str().is_none() {
            return Err(ConnectError::BadUrl {
                url: server.to_string(),
                why: "no host".into(),
            });
        }
        Ok(Endpoint {
            server,
            cert_sha256: None,
            wt_port: None,
        })
    }

    /// Pins the certificate by its SHA-256, given in hex (colons allowed).
    pub fn with_cert_sha256_hex(mut self, hex_hash: &str) -> Result<Endpoint, ConnectError> {
        let clean: String = hex_hash.chars().filter(|c| *c != ':').collect();
        match hex::decode(&clean) {
            Ok(h) if h.len() == 32 => {
                self.cert_sha256 = Some(h);
                Ok(self)
            }
            _ => Err(ConnectError::BadHash(hex_hash.into())),
        }
    }

    fn secure(&self) -> bool {
        matches!(self.server.scheme(), "https" | "wss")
    }

    fn host(&self) -> &str {
        self.server.host_str().unwrap_or("localhost")
    }

    fn port(&self) -> u16 {
        self.server
            .port_or_known_default()
            .unwrap_or(if self.secure() { 443 } else { 80 })
    }

    /// The WebSocket URL (PROTOCOL.md §3.2).
    pub fn websocket_url(&self) -> String {
        let scheme = if self.secure() { "wss" } else { "ws" };
        format!(
            "{scheme}://{}:{}/convene/ws",
            host_for_url(&self.server),
            self.port()
        )
    }

    /// The WebTransport URL (PROTOCOL.md §3.3), when the server is reached over TLS.
    pub fn webtransport_url(&self) -> Option<String> {
        self.secure().then(|| {
            format!(
                "https://{}:{}/convene/wt",
                host_for_url(&self.server),
                self.wt_port.unwrap_or(self.port())
            )
        })
    }

    /// Asks the server which UDP port its WebTransport is on: the `h3`
    /// entry of the `Alt-Svc` header it sends with every HTTPS response
    /// (PROTOCOL.md §3.3), read from a request for the discovery document.
    /// `None` when the server is not reached over TLS or names no port.
    pub async fn advertised_webtransport_port(&self) -> std::io::Result<Option<u16>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if !self.secure() {
            return Ok(None);
        }
        let addr = resolve(self.host(), self.port()).await?;
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = tls::connect(tcp, self.host(), self.cert_sha256.clone()).await?;
        let request = format!(
            "GET /.well-known/convene.json HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\n\r\n",
            host_for_url(&self.server),
            self.port()
        );
        tls.write_all(request.as_bytes()).await?;
        // Only the response's head is needed; it is small.
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_RESPONSE_HEAD {
            let n = tls.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(alt_svc_h3_port(&String::from_utf8_lossy(&head)))
    }
}

/// The most of a discovery response read while looking for its headers.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// The port of the first `h3` alternative in an HTTP response head's
/// `Alt-Svc` header (`h3=":4433"` or `h3="host:4433"`).
fn alt_svc_h3_port(head: &str) -> Option<u16> {
    head.lines()
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("alt-svc"))
        .flat_map(|(_, value)| value.split(','))
        .find_map(|alt| {
            let authority = alt.trim().strip_prefix("h3=\"")?.split('"').next()?;
            authority.rsplit_once(':')?.1.parse().ok()
        })
}

fn host_for_url(url: &Url) -> String {
    match url.host() {
        Some(url::Host::Ipv6(a)) => format!("[{a}]"),
        Some(h) => h.to_string(),
        None => "localhost".into(),
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server URL does not parse or has the wrong scheme.
    #[error("bad server URL {url:?}: {why}; give one like https://127.0.0.1:8080")]
    BadUrl {
        /// As given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The certificate hash is not 32 bytes of hex.
    #[error("bad certificate hash {0:?}: give the 64 hex digits the server prints at start")]
    BadHash(String),
    /// WebTransport was asked for on a plain-text URL.
    #[error(
        "WebTransport needs TLS: use an https:// server URL (start the server with --dev-tls or a certificate)"
    )]
    NeedsTls,
    /// The WebSocket connection failed.
    #[error("WebSocket connection to {url} failed: {why}")]
    WebSocket {
        /// Where to.
        url: String,
        /// What failed.
        why: String,
    },
    /// The WebTransport session failed.
    #[error("WebTransport session to {url} failed: {why}")]
    WebTransport {
        /// Where to.
        url: String,
        /// What failed.
        why: String,
    },
    /// Both transports failed (auto).
    #[error("{wt}; falling back to WebSocket also failed: {ws}")]
    Both {
        /// The WebTransport failure.
        wt: Box<ConnectError>,
        /// The WebSocket failure.
        ws: Box<ConnectError>,
    },
}

/// How a frame should be sent: control on the reliable ordered channel,
/// media by its priority (PROTOCOL.md §3.3 "Priorities").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendClass {
    /// A CONTROL frame.
    Control,
    /// An audio MEDIA frame: a datagram when it fits, else the highest-priority stream.
    Audio,
    /// A video key frame.
    VideoKey,
    /// A video delta frame: the lowest priority.
    VideoDelta,
}

/// Why sending failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The transport is closed.
    #[error("the connection is closed")]
    Closed,
    /// The writer is behind; the media frame was dropped.
    #[error("the connection is congested; the media frame was dropped")]
    Congested,
}

enum Outgoing {
    Frame(Bytes, SendClass),
    Close(CloseReason),
}

/// What the reader hands up.
#[derive(Debug)]
pub enum Received {
    /// A whole frame (control or media).
    Frame(Bytes),
    /// The transport broke a rule of §3 (e.g. a media frame on the control stream).
    Violation(String),
}

/// Counts of how media arrived, for status lines and tests.
#[derive(Debug, Default)]
pub struct MediaCounts {
    /// Media frames that arrived as QUIC datagrams.
    pub datagrams: AtomicU64,
    /// Media frames that arrived on streams (or WebSocket messages).
    pub streams: AtomicU64,
}

/// The QUIC path's packet counters so far (WebTransport only), for a
/// publisher's own loss estimate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathCounters {
    /// Packets sent.
    pub sent_packets: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
}

/// One connection to a server: frames in, frames out.
pub struct Transport {
    kind: TransportKind,
    counts: Arc<MediaCounts>,
    /// Bytes of frames given to [`Transport::send`] that the writer has not taken yet.
    queued: Arc<AtomicU64>,
    tx: mpsc::Sender<Outgoing>,
    rx: mpsc::Receiver<Received>,
    wt: Option<web_transport_quinn::Session>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Transport {
    /// Connects by `choice`; with [`TransportChoice::Auto`], WebTransport is
    /// tried first when the URL is https, then WebSocket.
    pub async fn connect(
        endpoint: &Endpoint,
        choice: TransportChoice,
    ) -> Result<Transport, ConnectError> {
        match choice {
            TransportChoice::WebSocket => Self::websocket(endpoint).await,
            TransportChoice::WebTransport => Self::webtransport(endpoint).await,
            TransportChoice::Auto if !endpoint.secure() => Self::websocket(endpoint).await,
            TransportChoice::Auto => {
                // A server that does not answer QUIC must not hold the user up for long.
                let wt = tokio::time::timeout(Duration::from_secs(3), Self::webtransport(endpoint))
                    .await
                    .unwrap_or_else(|_| {
                        Err(ConnectError::WebTransport {
                            url: endpoint.webtransport_url().unwrap_or_default(),
                            why: "no answer within 3 s (is UDP blocked?)".into(),
                        })
                    });
                match wt {
                    Ok(t) => Ok(t),
                    Err(wt) => {
                        tracing::warn!("{wt}; falling back to WebSocket");
                        Self::websocket(endpoint)
                            .await
                            .map_err(|ws| ConnectError::Both {
                                wt: Box::new(wt),
                                ws: Box::new(ws),
                            })
                    }
                }
            }
        }
    }

    /// The transport in use.
    pub fn kind(&self) -> TransportKind {
        self.kind
    }

    /// How many media frames arrived by datagram and by stream so far.
    pub fn media_counts(&self) -> (u64, u64) {
        (
            self.counts.datagrams.load(Ordering::Relaxed),
            self.counts.streams.load(Ordering::Relaxed),
        )
    }

    /// The QUIC path's smoothed round-trip time, on WebTransport.
    pub fn path_rtt(&self) -> Option<Duration> {
        self.wt.as_ref().map(|s| s.rtt())
    }

    /// The QUIC path's packet counters, on WebTransport.
    pub fn path_counters(&self) -> Option<PathCounters> {
        self.wt.as_ref().map(|s| {
            // The QUIC connection under the session (the session's own stats are fewer).
            let stats = std::ops::Deref::deref(s).stats();
            PathCounters {
                sent_packets: stats.path.sent_packets,
                lost_packets: stats.path.lost_packets,
            }
        })
    }

    /// Bytes of frames queued here that the connection has not taken yet:
    /// a WebSocket whose TCP connection is full, or a writer that is behind.
    pub fn backlog_bytes(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Queues a frame for sending without waiting. Control frames are
    /// never dropped here; media frames are, when the writer is behind.
    pub fn send(&self, frame: Bytes, class: SendClass) -> Result<(), SendError> {
        let len = frame.len() as u64;
        match self.tx.try_send(Outgoing::Frame(frame, class)) {
            Ok(()) => {
                self.queued.fetch_add(len, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
            Err(mpsc::error::TrySendError::Full(Outgoing::Frame(f, SendClass::Control))) => {
                // Control must arrive: wait for room, off the caller's path.
                self.queued.fetch_add(len, Ordering::Relaxed);
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(Outgoing::Frame(f, SendClass::Control)).await;
                });
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(SendError::Congested),
        }
    }

    /// The next frame from the server, or `None` once the transport is closed.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Option<Received> {
        self.rx.recv().await
    }

    /// Sends what is queued, then closes with `reason` (its code and name).
    pub async fn close(mut self, reason: CloseReason) {
        let _ = self.tx.send(Outgoing::Close(reason)).await;
        // The writer ends after closing; give it a bounded moment.
        if let Some(writer) = self.tasks.first_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        }
    }

    async fn websocket(endpoint: &Endpoint) -> Result<Transport, ConnectError> {
        let url = endpoint.websocket_url();
        let fail = |why: String| ConnectError::WebSocket {
            url: url.clone(),
            why,
        };
        let addr = resolve(endpoint.host(), endpoint.port())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| fail(format!("cannot reach {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if endpoint.secure() {
            Box::new(
                tls::connect(tcp, endpoint.host(), endpoint.cert_sha256.clone())
                    .await
                    .map_err(|e| fail(format!("TLS: {e}")))?,
            )
        } else {
            Box::new(tcp)
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_TRANSPORT_FRAME))
            .max_frame_size(Some(MAX_TRANSPORT_FRAME));
        let (ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), io, Some(config))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let (mut sink, mut stream) = ws.split();
        let (tx, mut out_rx) = mpsc::channel::<Outgoing>(OUTGOING_QUEUE);
        let (in_tx, rx) = mpsc::channel::<Received>(OUTGOING_QUEUE);
        let queued = Arc::new(AtomicU64::new(0));
        let writer_queued = queued.clone();
        let writer = tokio::spawn(async move {
            while let Some(first) = out_rx.recv().await {
                let mut next = Some(first);
                // Everything already queued goes out in one flush.
                while let Some(o) = next.take() {
                    match o {
                        Outgoing::Frame(f, _) => {
                            writer_queued.fetch_sub(f.len() as u64, Ordering::Relaxed);
                            if sink.feed(Message::Binary(f)).await.is_err() {
                                return;
                            }
                        }
                        Outgoing::Close(reason) => {
                            let _ = sink
                                .send(Message::Close(Some(CloseFrame {
                                    code: reason.websocket_code().into(),
                                    reason: reason.transport_reason().into(),
                                })))
                                .await;
                            return;
                        }
                    }
                    next = out_rx.try_recv().ok();
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        });
        let counts = Arc::new(MediaCounts::default());
        let reader_counts = counts.clone();
        let reader = tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                let r = match msg {
                    Ok(Message::Binary(b)) => {
                        if is_media_frame(&b) {
                            reader_counts.streams.fetch_add(1, Ordering::Relaxed);
                        }
                        Received::Frame(b)
                    }
                    Ok(Message::Text(_)) => Received::Violation(
                        "a text WebSocket message (§3.2 allows binary only)".into(),
                    ),
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => continue,
                };
                if in_tx.send(r).await.is_err() {
                    break;
                }
            }
        });
        Ok(Transport {
            kind: TransportKind::WebSocket,
            counts,
            queued,
            tx,
            rx,
            wt: None,
            tasks: vec![writer, reader],
        })
    }

    async fn webtransport(endpoint: &Endpoint) -> Result<Transport, ConnectError> {
        let url = endpoint.webtransport_url().ok_or(ConnectError::NeedsTls)?;
        let fail = |why: String| ConnectError::WebTransport {
            url: url.clone(),
            why,
        };
        let builder = web_transport_quinn::ClientBuilder::new();
        let client = match &endpoint.cert_sha256 {
            Some(h) => builder.with_server_certificate_hashes(vec![h.clone()]),
            None => builder.with_system_roots(),
        }
        .map_err(|e| fail(e.to_string()))?;
        let parsed = Url::parse(&url).map_err(|e| fail(e.to_string()))?;
        let session = client
            .connect(parsed)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let (control_send, control_recv) =
            session.open_bi().await.map_err(|e| fail(e.to_string()))?;
        let (tx, out_rx) = mpsc::channel::<Outgoing>(OUTGOING_QUEUE);
        let (in_tx, rx) = mpsc::channel::<Received>(OUTGOING_QUEUE);
        let queued = Arc::new(AtomicU64::new(0));
        let writer = tokio::spawn(wt_writer(
            session.clone(),
            control_send,
            out_rx,
            queued.clone(),
        ));
        let counts = Arc::new(MediaCounts::default());
        let reader = tokio::spawn(wt_reader(
            session.clone(),
            control_recv,
            in_tx,
            counts.clone(),
        ));
        Ok(Transport {
            kind: TransportKind::WebTransport,
            counts,
            queued,
            tx,
            rx,
            wt: Some(session),
            tasks: vec![writer, reader],
        })
    }
}

/// A byte stream WebSocket runs over: TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host} has no address")))
}

/// The rank of each class in the QUIC send priority: higher goes first.
fn rank(class: SendClass) -> u8 {
    match class {
        SendClass::Control => 3,
        SendClass::Audio => 2,
        SendClass::VideoKey => 1,
        SendClass::VideoDelta => 0,
    }
}

async fn wt_writer(
    session: web_transport_quinn::Session,
    mut control: web_transport_quinn::SendStream,
    mut out_rx: mpsc::Receiver<Outgoing>,
    queued: Arc<AtomicU64>,
) {
    let _ = control.set_priority(stream_priority(rank(SendClass::Control), 0));
    let mut opened = 0u32;
    let mut chunks: Vec<Bytes> = Vec::new();
    while let Some(first) = out_rx.recv().await {
        let mut next = Some(first);
        while let Some(o) = next.take() {
            if let Outgoing::Frame(f, _) = &o {
                queued.fetch_sub(f.len() as u64, Ordering::Relaxed);
            }
            match o {
                Outgoing::Frame(f, SendClass::Control) => {
                    chunks.push(Bytes::copy_from_slice(&length_prefix(f.len())));
                    chunks.push(f);
                }
                Outgoing::Frame(f, class) => {
                    opened = opened.wrapping_add(1);
                    send_media(&session, f, class, opened);
                }
                Outgoing::Close(reason) => {
                    if !chunks.is_empty() {
                        let _ = control.write_all_chunks(&mut chunks).await;
                    }
                    let _ = control.finish();
                    session.close(
                        reason.webtransport_code(),
                        reason.transport_reason().as_bytes(),
                    );
                    return;
                }
            }
            next = out_rx.try_recv().ok();
        }
        if !chunks.is_empty() {
            if control.write_all_chunks(&mut chunks).await.is_err() {
                return;
            }
            chunks.clear();
        }
    }
}

/// Sends one media frame: audio as a datagram when it fits, anything else
/// on a unidirectional stream of its own with the class's priority.
fn send_media(session: &web_transport_quinn::Session, frame: Bytes, class: SendClass, order: u32) {
    if class == SendClass::Audio && frame.len() <= session.max_datagram_size() {
        // A datagram refused here (e.g. no room) is a lost audio frame, as on the wire.
        let _ = session.send_datagram(frame);
        return;
    }
    let session = session.clone();
    tokio::spawn(async move {
        if let Ok(mut s) = session.open_uni().await {
            let _ = s.set_priority(stream_priority(rank(class), order));
            if s.write_chunk(frame).await.is_ok() {
                let _ = s.finish();
            }
        }
    });
}

async fn wt_reader(
    session: web_transport_quinn::Session,
    mut control: web_transport_quinn::RecvStream,
    in_tx: mpsc::Sender<Received>,
    counts: Arc<MediaCounts>,
) {
    let control_task = {
        let in_tx = in_tx.clone();
        tokio::spawn(async move {
            let mut decoder = StreamDecoder::new(MAX_TRANSPORT_FRAME);
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match control.read(&mut buf).await {
                    Ok(Some(n)) => decoder.push(&buf[..n]),
                    _ => return,
                }
                loop {
                    let r = match decoder.next_frame() {
                        Ok(Some(f)) if is_media_frame(&f) => {
                            Received::Violation("a media frame on the control stream".into())
                        }
                        Ok(Some(f)) => Received::Frame(f),
                        Ok(None) => break,
                        Err(e) => Received::Violation(e.to_string()),
                    };
                    let fatal = matches!(r, Received::Violation(_));
                    if in_tx.send(r).await.is_err() || fatal {
                        return;
                    }
                }
            }
        })
    };
    let datagrams = {
        let (session, in_tx, counts) = (session.clone(), in_tx.clone(), counts.clone());
        tokio::spawn(async move {
            while let Ok(d) = session.read_datagram().await {
                // A bad datagram is discarded, never fatal (PROTOCOL.md §3.3).
                if MediaFrame::parse_any(d.clone()).is_err() {
                    continue;
                }
                counts.datagrams.fetch_add(1, Ordering::Relaxed);
                if in_tx.send(Received::Frame(d)).await.is_err() {
                    return;
                }
            }
        })
    };
    while let Ok(mut s) = session.accept_uni().await {
        let (in_tx, counts) = (in_tx.clone(), counts.clone());
        tokio::spawn(async move {
            match s.read_to_end(MAX_TRANSPORT_FRAME).await {
                Ok(b) if is_media_frame(&b) => {
                    counts.streams.fetch_add(1, Ordering::Relaxed);
                    let _ = in_tx.send(Received::Frame(Bytes::from(b))).await;
                }
                Ok(b) if b.first() == Some(&FRAME_CONTROL) || !b.is_empty() => {
                    let _ = in_tx
                        .send(Received::Violation(
                            "a unidirectional stream that is not one media frame".into(),
                        ))
                        .await;
                }
                // Empty or reset: the partial frame is discarded.
                _ => {}
            }
        });
    }
    // The session is over: the control reader ends with it; stop the rest.
    let _ = control_task.await;
    datagrams.abort();
}

/// Builds a shared client TLS config for secure WebSocket.
pub(crate) fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::alt_svc_h3_port;

    #[test]
    fn the_h3_port_is_read_from_alt_svc_and_nothing_else() {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nAlt-Svc: h2=\":443\", h3=\":4433\"; ma=86400\r\n\r\n";
        assert_eq!(alt_svc_h3_port(head), Some(4433));
        assert_eq!(
            alt_svc_h3_port("HTTP/1.1 200 OK\r\nalt-svc: h3=\"example.org:8443\"\r\n\r\n"),
            Some(8443)
        );
        // No header, another protocol only, or the header after the head.
        assert_eq!(alt_svc_h3_port("HTTP/1.1 200 OK\r\n\r\n"), None);
        assert_eq!(
            alt_svc_h3_port("HTTP/1.1 200 OK\r\nalt-svc: h2=\":443\"\r\n\r\n"),
            None
        );
        assert_eq!(
            alt_svc_h3_port("HTTP/1.1 200 OK\r\n\r\nalt-svc: h3=\":1\"\r\n"),
            None
        );
        assert_eq!(
            alt_svc_h3_port("HTTP/1.1 200 OK\r\nalt-svc: h3=\":x\"\r\n\r\n"),
            None
        );
    }
}
