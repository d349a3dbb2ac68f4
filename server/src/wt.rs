//! The WebTransport transport (PROTOCOL.md §3.3), on web-transport-quinn:
//! one client-opened bidirectional control stream with u32 length-prefixed
//! frames; media frames each on their own unidirectional stream, or in a
//! datagram.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use convene_protocol::frame::{FRAME_CONTROL, FRAME_MEDIA, length_prefix, stream_priority};
use convene_protocol::{CloseReason, ErrorCode, MediaFrame, ProtocolError, StreamDecoder};
use tokio::sync::mpsc;
use tracing::debug;
use web_transport_quinn::{RecvStream, SendStream, Session};

use crate::connection::{Connection, FrameSink, Incoming, drive};
use crate::outbox::Drained;
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
) -> Result<web_transport_quinn::quinn::ServerConfig, String> {
    use web_transport_quinn::quinn;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        })
        .map_err(|e| format!("cannot set up TLS for WebTransport: {e}"))?;
    tls.alpn_protocols = vec![web_transport_quinn::ALPN.as_bytes().to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| format!("cannot set up QUIC: {e}"))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(max_streams + H3_UNI_STREAMS + 1));
    transport.send_window(SEND_WINDOW);
    transport.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Bytes QUIC may hold for a session that the subscriber has not
/// acknowledged (quinn's default is 10 MB). A subscriber that stops
/// acknowledging costs at most this much here; after that its frames wait in
/// its queue, which overflows, and the slow-subscriber rule (PROTOCOL.md
/// §6.4) ends the session. Ample for media: 1 MiB in flight is 80 Mbit/s at
/// a 100 ms round trip.
const SEND_WINDOW: u64 = 1024 * 1024;

/// Bytes of audio datagrams QUIC holds for a session before it drops the
/// oldest (quinn's default is 1 MiB, minutes of audio nobody wants late).
const DATAGRAM_SEND_BUFFER: usize = 64 * 1024;

/// Binds the UDP endpoint and accepts sessions until shutdown.
pub fn start(
    state: Arc<AppState>,
    identity: &Identity,
    addr: SocketAddr,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    let socket = udp_socket(addr).map_err(|e| format!("cannot bind UDP {addr}: {e}"))?;
    // The builder binds its own socket; start it on a throwaway port and move
    // it onto ours, whose buffers are sized.
    let mut server = web_transport_quinn::ServerBuilder::new()
        .with_addr(SocketAddr::new(addr.ip(), 0))
        .with_certificate(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| format!("cannot start WebTransport on {addr}: {e}"))?;
    server
        .rebind(socket)
        .map_err(|e| format!("cannot start WebTransport on {addr}: {e}"))?;
    // Our own transport settings in place of the builder's defaults: quinn's
    // stream limit (100) would otherwise cap --max-concurrent-streams.
    server.set_server_config(Some(quic_config(
        identity,
        state.config.max_concurrent_streams,
    )?));
    let bound = server.local_addr().map_err(|e| e.to_string())?;
    let mut stop = state.shutdown_signal();
    let handle = tokio::spawn(async move {
        loop {
            let request = tokio::select! {
                r = server.accept() => match r { Some(r) => r, None => break },
                _ = stop.wait_for(|s| *s) => break,
            };
            let state = state.clone();
            tokio::spawn(async move {
                let peer = request.conn().remote_address().ip();
                if request.url.path() != PATH {
                    let _ = request
                        .reject(web_transport_quinn::http::StatusCode::NOT_FOUND)
                        .await;
                    return;
                }
                match request.ok().await {
                    Ok(session) => run(state, session, peer).await,
                    Err(e) => debug!(%peer, error = %e, "WebTransport session refused"),
                }
            });
        }
    });
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

async fn run(state: Arc<AppState>, session: Session, peer: IpAddr) {
    if let Err(e) = state.acquire_connection(peer) {
        let reason = CloseReason::error(e);
        session.close(
            reason.webtransport_code(),
            reason.transport_reason().as_bytes(),
        );
        return;
    }
    let conn = Connection::new(state.clone(), "wt", peer);
    let (tx, mut rx) = mpsc::channel::<Incoming>(256);
    let control: Arc<tokio::sync::Mutex<Option<SendStream>>> =
        Arc::new(tokio::sync::Mutex::new(None));
    let readers = tokio::spawn(read_all(
        session.clone(),
        tx,
        control.clone(),
        state.config.max_frame_bytes as usize,
        state.config.max_concurrent_streams as usize,
    ));
    let incoming = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let sink = WtSink {
        session: session.clone(),
        control,
        in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_MEDIA_IN_FLIGHT)),
        opened: 0,
        outbox: conn.outbox(),
        sampled: None,
    };
    drive(conn, sink, incoming, state, peer).await;
    readers.abort();
}

/// Media frames being written to QUIC at once per session. Beyond this the
/// writer waits, so frames stay in the outbox, where the spec's drop order
/// (video deltas first) and the slow-subscriber rule apply, instead of
/// piling up inside QUIC without bound.
const MAX_MEDIA_IN_FLIGHT: usize = 32;

/// The writing side of a WebTransport session: control frames length-prefixed
/// on the control stream, media frames each on a unidirectional stream.
struct WtSink {
    session: Session,
    control: Arc<tokio::sync::Mutex<Option<SendStream>>>,
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Media streams opened so far: older frames are sent first.
    opened: u32,
    /// The subscriber's queue, told when the path is congested.
    outbox: Arc<crate::outbox::Outbox>,
    /// The last path sample.
    sampled: Option<PathSample>,
}

/// QUIC's counters for the path to a subscriber at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
struct PathSample {
    /// When the counters were read.
    at: std::time::Instant,
    /// Packets sent so far.
    sent_packets: u64,
    /// Packets declared lost so far.
    lost_packets: u64,
    /// UDP payload bytes sent so far.
    sent_bytes: u64,
    /// The smoothed round-trip time.
    rtt: Duration,
    /// The congestion window, in bytes.
    cwnd: u64,
}

/// Whether the path between two samples looks congested (PROTOCOL.md §6.5):
/// it lost [`CONGESTED_LOSS`] of its packets, its round trip reached
/// [`CONGESTED_RTT`], or what we sent used [`WINDOW_FULL`] of what the
/// congestion window lets through in a round trip (the window, not the
/// media, sets the pace: the next burst waits).
fn path_congested(before: &PathSample, now: &PathSample) -> bool {
    let sent = now.sent_packets.saturating_sub(before.sent_packets);
    let lost = now.lost_packets.saturating_sub(before.lost_packets);
    let lossy = convene_protocol::rate::loss_share(sent, lost).is_some_and(|l| l >= CONGESTED_LOSS);
    let elapsed = now.at.saturating_duration_since(before.at).as_secs_f64();
    let window_bound = elapsed > 0.0 && {
        let rate = now.sent_bytes.saturating_sub(before.sent_bytes) as f64 / elapsed;
        // Round trips below a millisecond (loopback) say nothing about the window.
        let allowed = now.cwnd as f64 / now.rtt.as_secs_f64().max(0.001);
        rate >= WINDOW_FULL * allowed
    };
    lossy || now.rtt >= CONGESTED_RTT || window_bound
}

/// How often the path statistics are looked at.
const PATH_SAMPLE: std::time::Duration = std::time::Duration::from_millis(500);
/// Share of packets lost over a sample beyond which the path counts as
/// congested: where a publisher's own controller stops raising its rate.
const CONGESTED_LOSS: f64 = convene_protocol::rate::LOSS_CLEAN;
/// Round-trip time beyond which the path counts as congested (the same a
/// publisher's controller lowers its rate at).
const CONGESTED_RTT: std::time::Duration = convene_protocol::rate::RTT_HIGH;
/// Share of the congestion window's rate (window / round trip) in use
/// beyond which the path counts as congested.
const WINDOW_FULL: f64 = 0.8;

impl WtSink {
    /// QUIC's view of the path to the subscriber (PROTOCOL.md §6.5): losses,
    /// a long round trip or a full congestion window over the last sample
    /// mark it congested, which the room turns into congestion hints for the
    /// publishers it receives.
    fn sample_path(&mut self) {
        let at = std::time::Instant::now();
        if self
            .sampled
            .is_some_and(|s| at.duration_since(s.at) < PATH_SAMPLE)
        {
            return;
        }
        // The QUIC connection under the session (the session's own stats are fewer).
        let stats = std::ops::Deref::deref(&self.session).stats();
        let now = PathSample {
            at,
            sent_packets: stats.path.sent_packets,
            lost_packets: stats.path.lost_packets,
            sent_bytes: stats.udp_tx.bytes,
            rtt: stats.path.rtt,
            cwnd: stats.path.cwnd,
        };
        if let Some(before) = &self.sampled {
            self.outbox.set_congested(path_congested(before, &now));
        }
        self.sampled = Some(now);
    }

    async fn write_control(&mut self, chunks: &mut Vec<Bytes>) -> Result<(), ()> {
        if chunks.is_empty() {
            return Ok(());
        }
        if let Some(s) = self.control.lock().await.as_mut() {
            s.write_all_chunks(chunks).await.map_err(|_| ())?;
        }
        chunks.clear();
        Ok(())
    }
}

impl FrameSink for WtSink {
    async fn write_batch(&mut self, batch: &mut Vec<Bytes>, lanes: Drained) -> Result<(), ()> {
        self.sample_path();
        let mut control = Vec::new();
        for (i, f) in batch.drain(..).enumerate() {
            let audio = i >= lanes.control && i < lanes.control + lanes.audio;
            match f.first() {
                Some(&FRAME_MEDIA) => {
                    // Control frames come first in a batch: send them before waiting on media.
                    if !control.is_empty() {
                        self.write_control(&mut control).await?;
                    }
                    let permit = self
                        .in_flight
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| ())?;
                    self.opened = self.opened.wrapping_add(1);
                    send_media(&self.session, f, audio, self.opened, permit);
                }
                _ => {
                    control.push(Bytes::copy_from_slice(&length_prefix(f.len())));
                    control.push(f);
                }
            }
        }
        self.write_control(&mut control).await
    }

    async fn close(&mut self, reason: &CloseReason) {
        if let Some(s) = self.control.lock().await.as_mut() {
            let _ = s.finish();
        }
        // Give the last frames a moment to leave before the session closes under them.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.session.close(
            reason.webtransport_code(),
            reason.transport_reason().as_bytes(),
        );
    }
}

/// Sends one media frame (PROTOCOL.md §3.3): audio as a datagram when it
/// fits, anything else on a unidirectional stream of its own, audio streams
/// first, then video key frames, then deltas.
fn send_media(
    session: &Session,
    frame: Bytes,
    audio: bool,
    order: u32,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    if audio && frame.len() <= session.max_datagram_size() {
        // Refused only when the peer takes no datagrams: then a stream carries it.
        if session.send_datagram(frame.clone()).is_ok() {
            return;
        }
    }
    let rank = if audio {
        2
    } else if frame.get(1).is_some_and(|flags| flags & 0x01 != 0) {
        1
    } else {
        0
    };
    let priority = stream_priority(rank, order);
    let session = session.clone();
    tokio::spawn(async move {
        if let Ok(mut s) = session.open_uni().await {
            let _ = s.set_priority(priority);
            if s.write_chunk(frame).await.is_ok() {
                let _ = s.finish();
            }
        }
        drop(permit);
    });
}

/// Reads the control stream, unidirectional streams and datagrams, and hands
/// every frame to the connection.
async fn read_all(
    session: Session,
    tx: mpsc::Sender<Incoming>,
    control_send: Arc<tokio::sync::Mutex<Option<SendStream>>>,
    max_frame: usize,
    max_streams: usize,
) {
    // The first bidirectional stream is the control stream.
    let (send, recv) = match session.accept_bi().await {
        Ok(s) => s,
        Err(_) => {
            let _ = tx.send(Incoming::Closed).await;
            return;
        }
    };
    // Control goes ahead of every media stream.
    let _ = send.set_priority(stream_priority(3, 0));
    *control_send.lock().await = Some(send);
    let control = tokio::spawn(read_control(recv, tx.clone(), max_frame));
    let extra_bi = {
        let (session, tx) = (session.clone(), tx.clone());
        tokio::spawn(async move {
            if session.accept_bi().await.is_ok() {
                let _ = tx
                    .send(Incoming::Violation(ProtocolError::new(
                        ErrorCode::WrongStream,
                        "only one bidirectional stream, the control stream, is allowed",
                    )))
                    .await;
            }
        })
    };
    let datagrams = {
        let (session, tx) = (session.clone(), tx.clone());
        tokio::spawn(async move {
            while let Ok(d) = session.read_datagram().await {
                // A datagram that is not a media frame is discarded: datagrams are too
                // unreliable to tie the session's fate to (PROTOCOL.md §3.3).
                if d.first() == Some(&FRAME_MEDIA)
                    && MediaFrame::parse(d.clone()).is_ok()
                    && tx.send(Incoming::Frame(d)).await.is_err()
                {
                    return;
                }
            }
        })
    };
    // Each media stream holds a permit until it has been read: one stream
    // more than `max_streams` at once is TOO_MANY_STREAMS (PROTOCOL.md §3.3).
    let permits = Arc::new(tokio::sync::Semaphore::new(max_streams));
    while let Ok(stream) = session.accept_uni().await {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let _ = tx
                .send(Incoming::Violation(ProtocolError::new(
                    ErrorCode::TooManyStreams,
                    format!("more than {max_streams} streams open at once"),
                )))
                .await;
            break;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            read_uni(stream, tx, max_frame).await;
            drop(permit);
        });
    }
    control.abort();
    extra_bi.abort();
    datagrams.abort();
    let _ = tx.send(Incoming::Closed).await;
}

async fn read_control(mut recv: RecvStream, tx: mpsc::Sender<Incoming>, max_frame: usize) {
    let mut decoder = StreamDecoder::new(max_frame);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match recv.read(&mut buf).await {
            Ok(Some(n)) => decoder.push(&buf[..n]),
            Ok(None) | Err(_) => {
                let _ = tx.send(Incoming::Closed).await;
                return;
            }
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => {
                    let incoming = if f.first() == Some(&FRAME_CONTROL) {
                        Incoming::Frame(f)
                    } else if f.first() == Some(&FRAME_MEDIA) {
                        Incoming::Violation(ProtocolError::new(
                            ErrorCode::WrongStream,
                            "media frames do not travel on the control stream",
                        ))
                    } else {
                        Incoming::Frame(f)
                    };
                    if tx.send(incoming).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Incoming::Violation(e)).await;
                    return;
                }
            }
        }
    }
}

async fn read_uni(mut recv: RecvStream, tx: mpsc::Sender<Incoming>, max_frame: usize) {
    match recv.read_to_end(max_frame).await {
        Ok(bytes) if bytes.first() == Some(&FRAME_MEDIA) => {
            let _ = tx.send(Incoming::Frame(Bytes::from(bytes))).await;
        }
        Ok(bytes) if bytes.is_empty() => {}
        Ok(_) => {
            let _ = tx
                .send(Incoming::Violation(ProtocolError::new(
                    ErrorCode::WrongStream,
                    "a unidirectional stream must carry one media frame",
                )))
                .await;
        }
        Err(web_transport_quinn::ReadToEndError::TooLong) => {
            let _ = tx
                .send(Incoming::Violation(ProtocolError::new(
                    ErrorCode::FrameTooLarge,
                    "a media stream is longer than the maximum frame size",
                )))
                .await;
        }
        // A reset stream is not an error: the partial frame is discarded.
        Err(e) => debug!(error = %e, "media stream ended early"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample `ms` after `base` with these counters.
    fn sample(
        base: std::time::Instant,
        ms: u64,
        (sent_packets, lost_packets, sent_bytes): (u64, u64, u64),
        rtt_ms: u64,
        cwnd: u64,
    ) -> PathSample {
        PathSample {
            at: base + Duration::from_millis(ms),
            sent_packets,
            lost_packets,
            sent_bytes,
            rtt: Duration::from_millis(rtt_ms),
            cwnd,
        }
    }

    #[test]
    fn a_clean_fast_path_is_not_congested() {
        let t = std::time::Instant::now();
        let a = sample(t, 0, (0, 0, 0), 20, 100_000);
        // 40 kB in 500 ms = 80 kB/s, against 100 kB per 20 ms = 5 MB/s allowed.
        let b = sample(t, 500, (60, 0, 40_000), 20, 100_000);
        assert!(!path_congested(&a, &b));
    }

    #[test]
    fn losses_a_long_round_trip_or_a_full_window_are_congestion() {
        let t = std::time::Instant::now();
        let a = sample(t, 0, (0, 0, 0), 20, 100_000);
        // 2 of 60 packets lost: 3.3 %.
        assert!(path_congested(
            &a,
            &sample(t, 500, (60, 2, 40_000), 20, 100_000)
        ));
        // Few packets: one loss says little.
        assert!(!path_congested(
            &a,
            &sample(t, 500, (10, 1, 8_000), 20, 100_000)
        ));
        assert!(path_congested(
            &a,
            &sample(t, 500, (60, 0, 40_000), 450, 100_000)
        ));
        // A 12 kB window over 100 ms allows 120 kB/s; 100 kB/s is 83 % of it.
        assert!(path_congested(
            &a,
            &sample(t, 500, (60, 0, 50_000), 100, 12_000)
        ));
        // The same window with half the traffic is fine.
        assert!(!path_congested(
            &a,
            &sample(t, 500, (60, 0, 25_000), 100, 12_000)
        ));
    }

    #[test]
    fn loopback_round_trips_do_not_make_the_window_look_full() {
        let t = std::time::Instant::now();
        let a = sample(t, 0, (0, 0, 0), 0, 12_000);
        // 50 µs round trips would allow 240 MB/s; counted as 1 ms: 12 MB/s.
        let b = sample(t, 500, (600, 0, 400_000), 0, 12_000);
        assert!(!path_congested(&a, &b));
    }
}
