//! The WebSocket transport (PROTOCOL.md §3.2): one binary message per frame.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use bytes::Bytes;
use convene_protocol::{CloseReason, ErrorCode, ProtocolError, encode_control};
use futures_util::{SinkExt, StreamExt};

use crate::connection::{Connection, FrameSink, Incoming, drive};
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
    let conn = Connection::new(state.clone(), "ws", peer);
    let (sink, stream) = socket.split();
    let incoming = stream.filter_map(|msg| async move {
        match msg {
            Ok(Message::Binary(b)) => Some(Incoming::Frame(b)),
            Ok(Message::Text(_)) => Some(Incoming::Violation(ProtocolError::new(
                ErrorCode::TextFrame,
                "WebSocket text messages are not allowed; send binary frames",
            ))),
            Ok(Message::Ping(_) | Message::Pong(_)) => None,
            Ok(Message::Close(_)) => Some(Incoming::Closed),
            Err(e) => {
                let text = e.to_string();
                Some(
                    if text.contains("too long")
                        || text.contains("Space limit")
                        || text.contains("capacity")
                    {
                        Incoming::Violation(ProtocolError::new(
                            ErrorCode::FrameTooLarge,
                            "frame exceeds the maximum frame size",
                        ))
                    } else {
                        Incoming::Closed
                    },
                )
            }
        }
    });
    drive(conn, WsSink(sink), Box::pin(incoming), state, peer).await;
}

/// The writing half of a WebSocket: one binary message per frame.
struct WsSink(futures_util::stream::SplitSink<WebSocket, Message>);

impl FrameSink for WsSink {
    async fn write_batch(
        &mut self,
        batch: &mut Vec<Bytes>,
        _lanes: crate::outbox::Drained,
    ) -> Result<(), ()> {
        for f in batch.drain(..) {
            self.0.feed(Message::Binary(f)).await.map_err(|_| ())?;
        }
        self.0.flush().await.map_err(|_| ())
    }

    async fn close(&mut self, reason: &CloseReason) {
        let frame = CloseFrame {
            code: reason.websocket_code(),
            reason: reason.transport_reason().into(),
        };
        let _ = self.0.send(Message::Close(Some(frame))).await;
        let _ = self.0.close().await;
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
