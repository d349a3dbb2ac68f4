//! The WebSocket transport (PROTOCOL.md §3.2): one binary message per frame.
//!
//! The upgrade is answered here rather than by a framework extractor so that
//! memory before Hello stays small (§11.5): the first message is read by
//! [`first_message`], which checks each WebSocket frame's length from its
//! header against `max_hello_frame_bytes` before reading its body, and only
//! then is the connection handed to tungstenite, whose limit is the
//! configured `max_frame_bytes`. A frame over either limit is refused from
//! its header, never buffered.
//!
//! When the server closes, it sends the Error frame and the close frame,
//! then stops writing and reads (and discards) what the client still sends,
//! for a moment: closing a socket with unread data resets it, and a reset
//! can destroy the close frame before the client reads it.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use convene_protocol::{CloseReason, ErrorCode, ProtocolError, encode_control};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, Stream, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::accept::{EvictSignal, PendingSlot};
use crate::connection::{Connection, FrameSink, Incoming, drive};
use crate::estimate::{SAMPLE_EVERY, Smoothed, TcpSample, tcp_kbps};
use crate::slots::Handshake;
use crate::state::AppState;

/// Read chunk size per connection; larger messages still arrive whole.
const READ_BUFFER: usize = 8 * 1024;
/// Bytes a writer gathers before it writes; a batch of queued frames goes out in about one write.
const WRITE_BUFFER: usize = 32 * 1024;
/// WebSocket frame headers and control frames (pings) allowed before the
/// first message, beyond the message itself.
const FIRST_MESSAGE_SLACK: usize = 1024;
/// How long a closing connection keeps reading so that its close frame is read.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes discarded while lingering.
const LINGER_BYTES: u64 = 8 << 20;

/// The upgraded connection.
type Io = TokioIo<hyper::upgrade::Upgraded>;

/// `GET /convene/ws`: upgrades to WebSocket and runs a connection.
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let (accept, protocol) = match check_upgrade(req.headers()) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let (slot, signal, fd) = match req.extensions().get::<PendingSlot>() {
        Some(p) => {
            let (slot, signal) = p.take();
            (slot, signal, Some(p.tcp_fd()))
        }
        None => (None, EvictSignal::new(), None),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                run(state, io, peer.ip(), slot, signal, fd.map(TcpPath::new)).await
            }
            Err(e) => tracing::debug!(%peer, error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(p) = protocol {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    response
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Checks an upgrade request (RFC 6455 §4.2.1); returns the accept key and
/// the subprotocol to select, or the answer to a bad request.
fn check_upgrade(h: &HeaderMap) -> Result<(String, Option<HeaderValue>), Box<Response>> {
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let bad = |text: &'static str| Box::new((StatusCode::BAD_REQUEST, text).into_response());
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(bad(
            "this is the Convene WebSocket endpoint: connect with a WebSocket client\n",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(Box::new(
            (
                StatusCode::UPGRADE_REQUIRED,
                [(header::SEC_WEBSOCKET_VERSION, "13")],
                "only WebSocket version 13 is spoken\n",
            )
                .into_response(),
        ));
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(bad("Sec-WebSocket-Key is missing\n"));
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let protocol = has_token(header::SEC_WEBSOCKET_PROTOCOL, "convene.v1")
        .then(|| HeaderValue::from_static("convene.v1"));
    Ok((accept, protocol))
}

/// What [`first_message`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum First {
    /// The bytes read, which end with (at least) the whole first message.
    Complete(Vec<u8>),
    /// The first message is over the limit: its length so far, from frame headers.
    TooLarge(u64),
    /// Not a WebSocket frame sequence (reserved opcode, oversized control frame).
    Malformed,
    /// The connection ended first.
    Closed,
}

/// Where scanning a buffer of WebSocket frames from a client got to.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// The first data message (or a close frame) ends within the buffer.
    Complete,
    /// More bytes are needed.
    More,
    /// The data frames' lengths add up past the limit.
    TooLarge(u64),
    /// Not valid framing.
    Malformed,
}

/// Scans `buf` from its start for the end of the first data message, from
/// frame headers alone: a frame's declared length counts before its body
/// has arrived.
fn scan(buf: &[u8], limit: usize) -> Scan {
    let mut pos = 0usize;
    let mut data = 0u64;
    loop {
        let (Some(&b0), Some(&b1)) = (buf.get(pos), buf.get(pos + 1)) else {
            return Scan::More;
        };
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let masked = b1 & 0x80 != 0;
        let (len, ext) = match b1 & 0x7f {
            126 => match buf.get(pos + 2..pos + 4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
                None => return Scan::More,
            },
            127 => match buf.get(pos + 2..pos + 10) {
                Some(b) => (u64::from_be_bytes(b.try_into().unwrap_or([0xff; 8])), 8),
                None => return Scan::More,
            },
            n => (u64::from(n), 0),
        };
        match opcode {
            0..=2 => {
                data = data.saturating_add(len);
                if data > limit as u64 {
                    return Scan::TooLarge(data);
                }
            }
            8..=10 if len <= 125 && fin => {}
            _ => return Scan::Malformed,
        }
        let end = (pos + 2 + ext + if masked { 4 } else { 0 }) as u64 + len;
        if (buf.len() as u64) < end {
            return Scan::More;
        }
        pos = end as usize;
        if (opcode <= 2 && fin) || opcode == 8 {
            return Scan::Complete;
        }
    }
}

/// Reads a client's first WebSocket message, refusing it from its frame
/// headers if its body would exceed `limit`: before Hello the server holds
/// at most `limit` plus a little for headers and pings.
pub async fn first_message<R: AsyncRead + Unpin>(io: &mut R, limit: usize) -> First {
    let cap = limit + FIRST_MESSAGE_SLACK;
    let mut buf = Vec::with_capacity(1024);
    loop {
        match scan(&buf, limit) {
            Scan::Complete => return First::Complete(buf),
            Scan::TooLarge(n) => return First::TooLarge(n),
            Scan::Malformed => return First::Malformed,
            Scan::More if buf.len() >= cap => return First::TooLarge(buf.len() as u64),
            Scan::More => {}
        }
        let room = (cap - buf.len()) as u64;
        match (&mut *io).take(room).read_buf(&mut buf).await {
            Ok(0) | Err(_) => return First::Closed,
            Ok(_) => {}
        }
    }
}

async fn run(
    state: Arc<AppState>,
    mut io: Io,
    peer: IpAddr,
    slot: Option<Handshake>,
    signal: Arc<EvictSignal>,
    path: Option<TcpPath>,
) {
    let limit = convene_protocol::limits::max::MAX_HELLO_FRAME_BYTES as usize;
    let timeout = Duration::from_millis(state.config.handshake_timeout_ms as u64);
    let first = tokio::select! {
        r = tokio::time::timeout(timeout, first_message(&mut io, limit)) => r,
        _ = signal.evicted() => {
            state.metrics.refused("handshaking_evicted");
            return;
        }
    };
    let part = match first {
        Ok(First::Complete(part)) => part,
        Ok(First::Closed) => return,
        Ok(First::Malformed) => {
            refuse(
                &state,
                io,
                ProtocolError::new(
                    ErrorCode::MalformedFrame,
                    "the first WebSocket frames are not valid WebSocket framing",
                ),
            )
            .await;
            return;
        }
        Ok(First::TooLarge(n)) => {
            refuse(
                &state,
                io,
                ProtocolError::new(
                    ErrorCode::FrameTooLarge,
                    format!(
                        "the first frame ({n} bytes or more) exceeds max_hello_frame_bytes ({limit})"
                    ),
                ),
            )
            .await;
            return;
        }
        Err(_) => {
            refuse(
                &state,
                io,
                ProtocolError::new(
                    ErrorCode::HandshakeTimeout,
                    format!("no Hello within {} ms", state.config.handshake_timeout_ms),
                ),
            )
            .await;
            return;
        }
    };
    let socket =
        WebSocketStream::from_partially_read(io, part, Role::Server, Some(config(&state))).await;
    let conn = Connection::new(state.clone(), "ws", peer).with_handshake(slot, signal);
    let (sink, stream) = socket.split();
    let sink = WsSink { sink, path };
    let (sink, incoming) = drive(conn, sink, WsIncoming(stream), state, peer).await;
    // Both halves back: stop writing, and read what the client still sends
    // until it closes, so the close frame is not lost to a reset.
    if let Some(WsSink { sink, .. }) = sink
        && let Ok(socket) = incoming.0.reunite(sink)
    {
        linger(socket.into_inner()).await;
    }
}

/// tungstenite's settings: the configured frame limit, small buffers.
fn config(state: &AppState) -> WebSocketConfig {
    let max = state.config.max_frame_bytes as usize;
    WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        // Small per-connection buffers: most frames are small, and a thousand
        // idle participants should not cost a thousand 128 KiB buffers.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
}

/// Stops writing, then reads and discards until the client closes, for at
/// most [`LINGER`] and [`LINGER_BYTES`].
async fn linger<T: AsyncRead + AsyncWrite + Unpin>(mut io: T) {
    let _ = tokio::time::timeout(LINGER, async {
        let _ = io.shutdown().await;
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut (&mut io).take(LINGER_BYTES), &mut sink).await;
    })
    .await;
}

/// The reading half of a WebSocket, as what the session reads.
struct WsIncoming(SplitStream<WebSocketStream<Io>>);

impl Stream for WsIncoming {
    type Item = Incoming;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        loop {
            let msg = match Pin::new(&mut self.0).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(m)) => m,
            };
            return Poll::Ready(Some(match msg {
                Ok(Message::Binary(b)) => Incoming::Frame(b),
                Ok(Message::Text(_)) => Incoming::Violation(ProtocolError::new(
                    ErrorCode::TextFrame,
                    "WebSocket text messages are not allowed; send binary frames",
                )),
                // tungstenite answers pings itself; they are not protocol traffic (§3.2).
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Close(_)) => Incoming::Closed,
                Err(tungstenite::Error::Capacity(_)) => Incoming::Violation(ProtocolError::new(
                    ErrorCode::FrameTooLarge,
                    "frame exceeds the maximum frame size",
                )),
                Err(_) => Incoming::Closed,
            }));
        }
    }
}

/// The writing half of a WebSocket: one binary message per frame.
struct WsSink {
    /// The WebSocket's writing half; it keeps the TCP socket open.
    sink: SplitSink<WebSocketStream<Io>, Message>,
    /// The TCP socket's counters, when the connection came through the
    /// listener (which knows the socket under TLS and HTTP).
    path: Option<TcpPath>,
}

/// What the kernel says of the TCP socket under a WebSocket, sampled for
/// the subscriber's path estimate (PROTOCOL.md §6.6.3).
struct TcpPath {
    /// The socket; the [`WsSink`] holding this owns it (through the
    /// stream), so it stays this socket while it is read.
    fd: std::os::fd::RawFd,
    /// The last sample and when it was read.
    last: Option<(std::time::Instant, TcpSample)>,
    /// The estimate so far.
    estimate: Smoothed,
}

impl TcpPath {
    fn new(fd: std::os::fd::RawFd) -> Self {
        TcpPath {
            fd,
            last: None,
            estimate: Smoothed::default(),
        }
    }

    /// Reads the counters if [`SAMPLE_EVERY`] passed, and returns the new
    /// estimate once there are two samples to compare.
    fn sample(&mut self, now: std::time::Instant) -> Option<u32> {
        if self
            .last
            .is_some_and(|(at, _)| now.saturating_duration_since(at) < SAMPLE_EVERY)
        {
            return None;
        }
        let sample = crate::tcp_info::read(self.fd)?;
        let (at, before) = self.last.replace((now, sample))?;
        let raw = tcp_kbps(&before, &sample, now.saturating_duration_since(at));
        let kbps = self.estimate.update(raw);
        tracing::trace!(
            raw_kbps = raw,
            kbps,
            delivery_kbps = sample.delivery_rate * 8 / 1000,
            acked = sample.bytes_acked.saturating_sub(before.bytes_acked),
            cwnd_bytes = sample.cwnd_bytes,
            rtt_us = sample.rtt.as_micros() as u64,
            notsent = sample.notsent_bytes,
            "TCP path estimate"
        );
        Some(kbps)
    }
}

impl FrameSink for WsSink {
    async fn write_batch(
        &mut self,
        batch: &mut Vec<Bytes>,
        _lanes: crate::outbox::Drained,
    ) -> Result<(), ()> {
        for f in batch.drain(..) {
            self.sink.feed(Message::Binary(f)).await.map_err(|_| ())?;
        }
        self.sink.flush().await.map_err(|_| ())
    }

    async fn close(&mut self, reason: &CloseReason) {
        let frame = CloseFrame {
            code: reason.websocket_code().into(),
            reason: reason.transport_reason().into(),
        };
        let _ = self.sink.send(Message::Close(Some(frame))).await;
        let _ = self.sink.flush().await;
    }

    fn path_kbps(&mut self, now: std::time::Instant) -> Option<u32> {
        self.path.as_mut()?.sample(now)
    }
}

/// Sends a fatal error to a connection refused before it has a session,
/// then closes it as every WebSocket close is done.
async fn refuse(state: &AppState, io: Io, e: ProtocolError) {
    state.metrics.error(true, e.code.name());
    let mut socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config(state))).await;
    let msg = convene_protocol::v1::ServerMessage {
        msg: Some(convene_protocol::v1::server_message::Msg::Error(
            e.to_message(0),
        )),
    };
    let _ = socket.feed(Message::Binary(encode_control(&msg))).await;
    let reason = CloseReason::error(e);
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: reason.websocket_code().into(),
            reason: reason.transport_reason().into(),
        })))
        .await;
    linger(socket.into_inner()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: FIN, `opcode`, masked with a zero key, `len` declared.
    fn header(opcode: u8, fin: bool, len: u64) -> Vec<u8> {
        let mut h = vec![opcode | if fin { 0x80 } else { 0 }];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xffff => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        h.extend_from_slice(&[0; 4]);
        h
    }

    fn frame(opcode: u8, fin: bool, body: &[u8]) -> Vec<u8> {
        let mut f = header(opcode, fin, body.len() as u64);
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_from_its_header_alone() {
        // Only the 14-byte header of a 1 MiB frame has arrived.
        assert_eq!(
            scan(&header(2, true, 1 << 20), 8192),
            Scan::TooLarge(1 << 20)
        );
        assert_eq!(scan(&header(2, true, 8193), 8192), Scan::TooLarge(8193));
        assert_eq!(scan(&header(2, true, 8192), 8192), Scan::More);
        // Fragments add up.
        let mut two = frame(2, false, &[0; 5000]);
        two.extend(header(0, true, 4000));
        assert_eq!(scan(&two, 8192), Scan::TooLarge(9000));
    }

    #[test]
    fn the_first_message_ends_at_its_last_fragment() {
        let mut buf = frame(9, true, b"ping");
        buf.extend(frame(2, false, &[1; 10]));
        assert_eq!(scan(&buf, 8192), Scan::More);
        buf.extend(frame(0, true, &[2; 10]));
        assert_eq!(scan(&buf, 8192), Scan::Complete);
        assert_eq!(scan(&frame(8, true, &[3, 232]), 8192), Scan::Complete);
        assert_eq!(scan(&frame(1, true, b"text"), 8192), Scan::Complete);
    }

    #[test]
    fn reserved_opcodes_and_long_control_frames_are_malformed() {
        assert_eq!(scan(&header(3, true, 1), 8192), Scan::Malformed);
        assert_eq!(scan(&header(9, true, 126), 8192), Scan::Malformed);
        assert_eq!(scan(&header(9, false, 1), 8192), Scan::Malformed);
    }

    #[tokio::test]
    async fn first_message_reads_no_further_than_the_limit_allows() {
        // A client that claims a 1 MiB frame and then sends its body slowly.
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        client.write_all(&header(2, true, 1 << 20)).await.unwrap();
        client.write_all(&[0; 4096]).await.unwrap();
        assert_eq!(
            first_message(&mut server, 8192).await,
            First::TooLarge(1 << 20)
        );
        // A flood of pings with no message is cut at the slack.
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        for _ in 0..200 {
            client.write_all(&frame(9, true, &[0; 100])).await.unwrap();
        }
        assert!(matches!(
            first_message(&mut server, 8192).await,
            First::TooLarge(_)
        ));
    }
}
