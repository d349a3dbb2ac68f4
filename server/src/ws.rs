//! The WebSocket transport (PROTOCOL.md §3.2): one binary message per frame.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use bytes::Bytes;
use convene_protocol::{CloseReason, ErrorCode, ProtocolError, encode_control};
use futures_util::{SinkExt, StreamExt};

use crate::connection::{Connection, Incoming, log_close};
use crate::state::AppState;

/// Read chunk size per connection; larger messages still arrive whole.
const READ_BUFFER: usize = 8 * 1024;
/// Bytes a writer gathers before it writes; a batch of queued frames goes out in about one write.
const WRITE_BUFFER: usize = 32 * 1024;

/// `GET /convene/ws`: upgrades to WebSocket and runs a connection.
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    // Big enough that any frame up to the protocol maximum, and a little
    // over, reaches the session, which answers FRAME_TOO_LARGE; small enough
    // to bound memory per connection.
    let max = convene_protocol::limits::max::MAX_FRAME_BYTES as usize + 64 * 1024;
    ws.max_message_size(max)
        .max_frame_size(max)
        // Small per-connection buffers: most frames are small, and a thousand
        // idle participants should not cost a thousand 128 KiB buffers.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .protocols(["convene.v1"])
        .on_upgrade(move |socket| run(state, socket, peer.ip()))
}

async fn run(state: Arc<AppState>, socket: WebSocket, peer: IpAddr) {
    if let Err(e) = state.acquire_connection(peer) {
        refuse(socket, e).await;
        return;
    }
    let mut conn = Connection::new(state.clone(), "ws", peer);
    let outbox = conn.outbox();
    let wakers = conn.wakers();
    let (mut sink, mut stream) = socket.split();
    let close: Arc<Mutex<Option<CloseReason>>> = Arc::new(Mutex::new(None));
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
                loop {
                    let (more, waited) = outbox.drain_timed(&mut batch, 256 * 1024);
                    if batch.is_empty() {
                        break;
                    }
                    if let Some(w) = waited {
                        state.metrics.queue_delay_seconds.observe(w.as_secs_f64());
                    }
                    state.metrics.queue_depth.observe(batch.len() as f64);
                    state.metrics.frames_out.inc_by(batch.len() as u64);
                    for f in batch.drain(..) {
                        state.metrics.bytes_out.inc_by(f.len() as u64);
                        if sink.feed(Message::Binary(f)).await.is_err() {
                            return;
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                    if !more {
                        break;
                    }
                }
                let reason = close.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(reason) = reason {
                    let frame = CloseFrame {
                        code: reason.websocket_code(),
                        reason: reason.transport_reason().into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    let _ = sink.close().await;
                    return;
                }
            }
        })
    };

    let mut shutdown = state.shutdown_signal();
    if *shutdown.borrow() {
        conn.shutdown();
    }
    loop {
        if let Some(reason) = conn.close_reason() {
            *close.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
            wakers.writer.notify_one();
            break;
        }
        let deadline = conn.deadline();
        tokio::select! {
            msg = stream.next() => {
                let incoming = match msg {
                    Some(Ok(Message::Binary(b))) => Incoming::Frame(b),
                    Some(Ok(Message::Text(_))) => Incoming::Violation(ProtocolError::new(
                        ErrorCode::TextFrame, "WebSocket text messages are not allowed; send binary frames")),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => Incoming::Closed,
                    Some(Err(e)) => {
                        let text = e.to_string();
                        if text.contains("too long") || text.contains("Space limit") || text.contains("capacity") {
                            Incoming::Violation(ProtocolError::new(ErrorCode::FrameTooLarge, "frame exceeds the maximum frame size"))
                        } else {
                            Incoming::Closed
                        }
                    }
                };
                conn.handle(incoming);
            }
            _ = sleep_until(deadline) => conn.handle_timeout(),
            _ = wakers.reader.notified() => conn.handle_outbox_closed(),
            _ = shutdown.changed() => conn.shutdown(),
        }
    }
    log_close("ws", peer, conn.close_reason());
    // Let the writer flush what the session said last, within the drain
    // deadline; a writer stuck on a peer that does not read is cut off.
    let grace = Duration::from_millis(state.config.shutdown_grace_ms as u64);
    let mut writer = writer;
    if tokio::time::timeout(grace, &mut writer).await.is_err() {
        writer.abort();
    }
    drop(conn);
}

/// Sleeps until `deadline`, or forever when there is none.
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Sends a fatal error to a connection refused before it has a session.
async fn refuse(mut socket: WebSocket, e: ProtocolError) {
    let msg = convene_protocol::v1::ServerMessage {
        msg: Some(convene_protocol::v1::server_message::Msg::Error(
            e.to_message(0),
        )),
    };
    let _ = socket.send(Message::Binary(encode_control(&msg))).await;
    let reason = CloseReason::error(e);
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: reason.websocket_code(),
            reason: reason.transport_reason().into(),
        })))
        .await;
}
