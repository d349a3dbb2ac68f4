//! The WebTransport endpoint: the QUIC and TLS configuration, the UDP
//! socket with its kernel buffers, and the task that runs each accepted
//! session's protocol ([`crate::connection::drive_external`]).
//!
//! The I/O side: it binds the socket, starts the engine ([`super::run`])
//! and spawns a task per session.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tracing::debug;

use super::{Command, EngineConfig, NewSession};
use crate::connection::{Connection, ExternalClose, drive_external};
use crate::state::AppState;
use crate::tls::Identity;

/// The WebTransport endpoint path.
pub const PATH: &str = "/convene/wt";

/// Unidirectional streams an HTTP/3 client opens for itself: control, QPACK encoder and decoder.
const H3_UNI_STREAMS: u32 = 3;

/// The QUIC server configuration: TLS 1.3 with the HTTP/3 ALPN, and room
/// for one client stream more than `--max-concurrent-streams` besides
/// HTTP/3's own (control and the two QPACK streams), so that one too many
/// reaches us and gets TOO_MANY_STREAMS (PROTOCOL.md §7) instead of waiting
/// for credit the transport never gives.
fn quic_config(
    identity: &Identity,
    max_streams: u32,
    max_frame: u32,
) -> Result<quinn_proto::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        })
        .map_err(|e| format!("cannot set up TLS for WebTransport: {e}"))?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| format!("cannot set up QUIC: {e}"))?;
    let mut config = quinn_proto::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn_proto::TransportConfig::default();
    transport.max_concurrent_uni_streams(quinn_proto::VarInt::from_u32(
        max_streams + H3_UNI_STREAMS + 1,
    ));
    // The CONNECT request, the control stream, and one more that gets WRONG_STREAM.
    transport.max_concurrent_bidi_streams(quinn_proto::VarInt::from_u32(BIDI_STREAMS));
    transport.send_window(SEND_WINDOW);
    // What a client may send ahead of what the engine has read: small until
    // its Hello is accepted, when the engine raises it to the session's
    // budget (session.rs, BUDGET_FRAMES); one frame per stream.
    transport.receive_window(quinn_proto::VarInt::from_u32(INITIAL_RECEIVE_WINDOW));
    transport.stream_receive_window(quinn_proto::VarInt::from_u32(max_frame + 64));
    transport.datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER));
    transport.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    transport.ack_frequency_config(Some(ack_frequency()));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// What the server asks of subscribers that support the QUIC ACK-frequency
/// extension (quinn does; a browser that does not keeps its own policy):
/// leave up to [`ACK_ELICITING_THRESHOLD`] packets unacknowledged, for at
/// most the usual 25 ms, but acknowledge at once when a packet arrives out
/// of order, as RFC 9000 has it. Acknowledgements are most of what a
/// subscriber sends, and each costs the server a decrypt and its loss
/// bookkeeping.
fn ack_frequency() -> quinn_proto::AckFrequencyConfig {
    let mut ack = quinn_proto::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(quinn_proto::VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    // quinn's default of 2 holds back the acknowledgement that reveals a gap
    // until two packets are missing; on a lossy path that delays every
    // retransmission by up to max_ack_delay, and the lossy-link test then
    // misses the last frames (it failed 2 runs of 4, and 5 of 6 before).
    ack.reordering_threshold(quinn_proto::VarInt::from_u32(1));
    // No max_ack_delay of ours, so quinn asks for the peer's 25 ms on every
    // path. Up to a round trip on long paths saved 12 % of the server's CPU
    // at 80 ms, but on the lossy link (100 ms) video then fell behind at the
    // end of a run and the first frames after a join waited for the initial
    // congestion window (benches/README.md, 2026-11-27, evening).
    ack
}

/// Ack-eliciting packets a subscriber may receive before it must acknowledge.
const ACK_ELICITING_THRESHOLD: u32 = 10;

/// Bidirectional streams a client may have open: the CONNECT request, the
/// control stream and one more, which is refused as WRONG_STREAM (quinn's
/// default of 100 would let a client hold 100 request buffers).
const BIDI_STREAMS: u32 = 4;

/// Bytes QUIC may hold for a session that the subscriber has not
/// acknowledged (quinn's default is 10 MB). A subscriber that stops
/// acknowledging costs at most this much here; after that its frames wait in
/// its queue, which overflows, and the slow-subscriber rule (PROTOCOL.md
/// §6.4) ends the session. Ample for media: 1 MiB in flight is 80 Mbit/s at
/// a 100 ms round trip.
const SEND_WINDOW: u64 = 1024 * 1024;

/// QUIC's connection receive window before Hello: the CONNECT request,
/// HTTP/3's streams and a Hello, with room to spare.
const INITIAL_RECEIVE_WINDOW: u32 = 64 * 1024;

/// Datagrams QUIC holds before the engine reads them (quinn's default is
/// 1.25 MB per connection); the engine reads them as they come.
const DATAGRAM_RECEIVE_BUFFER: usize = 64 * 1024;

/// Bytes of audio datagrams QUIC holds for a session before it drops the
/// oldest (quinn's default is 1 MiB, minutes of audio nobody wants late).
const DATAGRAM_SEND_BUFFER: usize = 64 * 1024;

/// Binds the UDP endpoint and runs the engine until shutdown.
pub fn start(
    state: Arc<AppState>,
    identity: &Identity,
    addr: SocketAddr,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    let socket = udp_socket(addr).map_err(|e| {
        format!("cannot bind UDP {addr} for WebTransport: {e}; give it another with --webtransport-listen")
    })?;
    let bound = socket.local_addr().map_err(|e| e.to_string())?;
    let server_config = Arc::new(quic_config(
        identity,
        state.config.max_concurrent_streams,
        state.config.max_frame_bytes,
    )?);
    let config = EngineConfig {
        path: PATH.to_string(),
        max_frame: state.config.max_frame_bytes as usize,
        max_streams: state.config.max_concurrent_streams as usize,
    };
    let stop = state.shutdown_signal();
    let handle = tokio::spawn(super::run(
        state.clone(),
        socket,
        server_config,
        config,
        stop,
        move |session: NewSession| {
            tokio::spawn(run(state.clone(), session));
        },
    ));
    Ok((bound, handle))
}

/// Kernel buffer asked for each direction of the UDP socket. Every
/// publisher's datagrams and every subscriber's acknowledgements arrive on
/// this one socket; Linux's default (208 KiB) overflowed at a few hundred
/// sessions while the server was busy, and a publisher's audio datagram
/// dropped there is lost for every subscriber. The kernel caps the request
/// at `net.core.rmem_max` / `wmem_max`.
const UDP_BUFFER_BYTES: usize = 8 << 20;

/// Below this the server says how to raise the kernel's cap.
const UDP_BUFFER_WARN: usize = 1 << 20;

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer still works, only with more loss under load.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let got = socket.recv_buffer_size().unwrap_or(0);
    if got < UDP_BUFFER_WARN {
        tracing::warn!(
            bytes = got,
            "the WebTransport UDP receive buffer is small; datagrams may be dropped under load \
             (raise it with: sysctl -w net.core.rmem_max={UDP_BUFFER_BYTES})"
        );
    } else {
        debug!(bytes = got, "WebTransport UDP receive buffer");
    }
    Ok(socket.into())
}

async fn run(state: Arc<AppState>, session: NewSession) {
    let NewSession {
        key,
        peer,
        incoming: mut rx,
        commands,
        writer,
        frame_limit,
        queued_bytes,
        handshake,
        evicted,
    } = session;
    let peer: IpAddr = peer.ip();
    // The engine drains this connection's outbox itself: no writer task.
    let conn = Connection::with_external_writer(state.clone(), "wt", peer, writer.clone())
        .with_handshake(handshake, evicted)
        .with_frame_limit(frame_limit);
    let close = Arc::new(ExternalClose::default());
    let _ = commands.send(Command::Attach {
        key,
        outbox: conn.outbox(),
        close: close.clone(),
    });
    let incoming = futures_util::stream::poll_fn(move |cx| {
        let next = rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(crate::connection::Incoming::Frame(f))) = &next {
            queued_bytes.fetch_sub(f.len(), std::sync::atomic::Ordering::AcqRel);
        }
        next
    });
    drive_external(conn, incoming, state, peer, close, writer).await;
}
