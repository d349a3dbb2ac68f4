//! The WebTransport transport (PROTOCOL.md §3.3), on web-transport-quinn:
//! one client-opened bidirectional control stream with u32 length-prefixed
//! frames; media frames each on their own unidirectional stream, or in a
//! datagram.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use convene_protocol::frame::{FRAME_CONTROL, FRAME_MEDIA, length_prefix};
use convene_protocol::{CloseReason, ErrorCode, MediaFrame, ProtocolError, StreamDecoder};
use tokio::sync::mpsc;
use tracing::debug;
use web_transport_quinn::{RecvStream, SendStream, Session};

use crate::connection::{Connection, Incoming, log_close};
use crate::state::AppState;
use crate::tls::Identity;

/// The WebTransport endpoint path.
pub const PATH: &str = "/convene/wt";

/// Binds the UDP endpoint and accepts sessions until shutdown.
pub fn start(
    state: Arc<AppState>,
    identity: &Identity,
    addr: SocketAddr,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    let mut server = web_transport_quinn::ServerBuilder::new()
        .with_addr(addr)
        .with_certificate(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| format!("cannot start WebTransport on {addr}: {e}"))?;
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

async fn run(state: Arc<AppState>, session: Session, peer: IpAddr) {
    if let Err(e) = state.acquire_connection(peer) {
        let reason = CloseReason::error(e);
        session.close(
            reason.webtransport_code(),
            reason.transport_reason().as_bytes(),
        );
        return;
    }
    let mut conn = Connection::new(state.clone(), "wt", peer);
    let outbox = conn.outbox();
    let wakers = conn.wakers();
    let (tx, mut rx) = mpsc::channel::<Incoming>(256);
    let control_send: Arc<tokio::sync::Mutex<Option<SendStream>>> =
        Arc::new(tokio::sync::Mutex::new(None));
    let readers = tokio::spawn(read_all(
        session.clone(),
        tx,
        control_send.clone(),
        state.config.max_frame_bytes as usize,
    ));

    let close: Arc<Mutex<Option<CloseReason>>> = Arc::new(Mutex::new(None));
    let writer = {
        let (outbox, wakers, close, session, state) = (
            outbox.clone(),
            wakers.clone(),
            close.clone(),
            session.clone(),
            state.clone(),
        );
        tokio::spawn(async move {
            let mut batch: Vec<Bytes> = Vec::with_capacity(64);
            loop {
                wakers.writer.notified().await;
                loop {
                    let (more, waited) = outbox.drain_timed(&mut batch, 256 * 1024);
                    if batch.is_empty() {
                        break;
                    }
                    if let Some(w) = waited {
                        state.metrics.queue_delay_seconds.observe(w.as_secs_f64());
                    }
                    state.metrics.frames_out.inc_by(batch.len() as u64);
                    let mut control = Vec::new();
                    for f in batch.drain(..) {
                        state.metrics.bytes_out.inc_by(f.len() as u64);
                        match f.first() {
                            Some(&FRAME_MEDIA) => send_media(&session, f),
                            _ => {
                                control.push(Bytes::copy_from_slice(&length_prefix(f.len())));
                                control.push(f);
                            }
                        }
                    }
                    if !control.is_empty() {
                        let mut guard = control_send.lock().await;
                        if let Some(s) = guard.as_mut() {
                            if s.write_all_chunks(&mut control).await.is_err() {
                                return;
                            }
                        }
                    }
                    if !more {
                        break;
                    }
                }
                let reason = close.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(reason) = reason {
                    // Give the last frames a moment to leave before the session closes under them.
                    if let Some(s) = control_send.lock().await.as_mut() {
                        let _ = s.finish();
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    session.close(
                        reason.webtransport_code(),
                        reason.transport_reason().as_bytes(),
                    );
                    return;
                }
            }
        })
    };

    let mut shutdown = state.shutdown_signal();
    loop {
        if let Some(reason) = conn.close_reason() {
            *close.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
            wakers.writer.notify_one();
            break;
        }
        let deadline = conn.deadline();
        tokio::select! {
            incoming = rx.recv() => conn.handle(incoming.unwrap_or(Incoming::Closed)),
            _ = crate::ws::sleep_until(deadline) => conn.handle_timeout(),
            _ = wakers.reader.notified() => conn.handle_outbox_closed(),
            _ = shutdown.changed() => conn.shutdown(),
        }
    }
    log_close("wt", peer, conn.close_reason());
    let grace = Duration::from_millis(state.config.shutdown_grace_ms as u64);
    let mut writer = writer;
    if tokio::time::timeout(grace, &mut writer).await.is_err() {
        writer.abort();
        session.close(0, b"");
    }
    readers.abort();
    drop(conn);
}

/// Sends one media frame on a unidirectional stream of its own (PROTOCOL.md §3.3).
fn send_media(session: &Session, frame: Bytes) {
    let session = session.clone();
    tokio::spawn(async move {
        let priority = match MediaFrame::parse(frame.clone()) {
            Ok(m) if m.header().key => 1,
            Ok(_) => 0,
            Err(_) => 0,
        };
        if let Ok(mut s) = session.open_uni().await {
            let _ = s.set_priority(priority);
            if s.write_chunk(frame).await.is_ok() {
                let _ = s.finish();
            }
        }
    });
}

/// Reads the control stream, unidirectional streams and datagrams, and hands
/// every frame to the connection.
async fn read_all(
    session: Session,
    tx: mpsc::Sender<Incoming>,
    control_send: Arc<tokio::sync::Mutex<Option<SendStream>>>,
    max_frame: usize,
) {
    // The first bidirectional stream is the control stream.
    let (send, recv) = match session.accept_bi().await {
        Ok(s) => s,
        Err(_) => {
            let _ = tx.send(Incoming::Closed).await;
            return;
        }
    };
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
    while let Ok(stream) = session.accept_uni().await {
        tokio::spawn(read_uni(stream, tx.clone(), max_frame));
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
