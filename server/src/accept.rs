//! The HTTP(S) listener: accepts TCP connections, gives each a handshaking
//! slot ([`crate::slots`]), runs TLS and HTTP/1.1 on it with bounded
//! headers and time, and hands WebSocket upgrades on with their slot.
//!
//! Every stage has a bound (PROTOCOL.md §11.5): an address over its share of
//! handshaking connections is closed at accept; TLS must finish within the
//! handshake timeout; each request's headers (and the wait for the next
//! request on a kept-alive connection) within `http_header_timeout_ms` and
//! 16 KiB; only HTTP/1.1 is spoken (no cleartext HTTP/2). A connection that
//! loses its slot to a newer one is dropped. When accepting fails because
//! descriptors or memory ran out, the loop backs off instead of spinning, and
//! says so at most once every few seconds.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::slots::{Evict, Handshake};
use crate::state::AppState;

/// Unsent bytes the kernel holds for one TCP connection before a write
/// waits: about a quarter second at 4 Mbit/s.
const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Largest request head (request line and headers) read into memory.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header lines in a request.
const MAX_HEADERS: usize = 64;
/// Longest pause after accepting failed for want of descriptors or memory.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one warning about failing accepts per this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Closes a connection when its handshaking slot goes to a newer one.
#[derive(Debug)]
pub struct EvictSignal(watch::Sender<bool>);

impl EvictSignal {
    /// A signal nobody has fired yet.
    pub fn new() -> Arc<Self> {
        Arc::new(EvictSignal(watch::channel(false).0))
    }

    /// Resolves once the connection has been evicted.
    pub async fn evicted(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|e| *e).await;
    }
}

impl Evict for EvictSignal {
    fn evict(&self) {
        self.0.send_replace(true);
    }
}

/// A connection's handshaking slot, passed to the WebSocket upgrade in the
/// request's extensions: the HTTP connection ends at the upgrade, the
/// WebSocket session takes the slot over until its Hello is accepted.
#[derive(Debug, Clone)]
pub struct PendingSlot {
    slot: Arc<Mutex<Option<Handshake>>>,
    signal: Arc<EvictSignal>,
    /// The TCP socket under the connection, for reading `TCP_INFO` while
    /// the connection (which owns the socket) lives.
    fd: std::os::fd::RawFd,
}

impl PendingSlot {
    /// Takes the slot (once) and the signal that closes the connection if it is evicted.
    pub fn take(&self) -> (Option<Handshake>, Arc<EvictSignal>) {
        let slot = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        (slot, self.signal.clone())
    }

    /// The descriptor of the TCP socket under the connection: valid only
    /// while whoever owns the connection's stream keeps it.
    pub fn tcp_fd(&self) -> std::os::fd::RawFd {
        self.fd
    }
}

/// Counts failing accepts and says so at most once per [`WARN_EVERY`].
#[derive(Debug)]
struct AcceptErrors {
    backoff: Duration,
    last_warning: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    fn new() -> Self {
        AcceptErrors {
            backoff: Duration::ZERO,
            last_warning: None,
            suppressed: 0,
        }
    }

    /// Notes a failed accept; returns how long to wait before the next.
    fn failed(&mut self, e: &std::io::Error, state: &AppState) -> Duration {
        let exhausted = is_exhaustion(e);
        state
            .metrics
            .accept_error(if exhausted { "exhausted" } else { "other" });
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
        {
            warn!(
                error = %e,
                suppressed = self.suppressed,
                "accepting a connection failed{}",
                if exhausted {
                    " (out of file descriptors or memory: raise `ulimit -n`, or lower --max-connections / --max-handshaking-connections); backing off"
                } else {
                    ""
                }
            );
            self.last_warning = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        if exhausted {
            self.backoff = (self.backoff * 2).clamp(Duration::from_millis(5), MAX_BACKOFF);
            self.backoff
        } else {
            Duration::ZERO
        }
    }

    fn succeeded(&mut self) {
        self.backoff = Duration::ZERO;
    }
}

/// Errors that mean the process, not the peer, is out of something: retrying
/// at once would fail again at once.
fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Serves `app` on `listener` until shutdown, with TLS when `tls` is given.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut stop = state.shutdown_signal();
    let mut errors = AcceptErrors::new();
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(
            state.config.http_header_timeout_ms as u64,
        ))
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    let h1 = Arc::new(h1);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => {
                errors.succeeded();
                x
            }
            Err(e) => {
                let pause = errors.failed(&e, &state);
                if !pause.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
                continue;
            }
        };
        let signal = EvictSignal::new();
        let Some(slot) = state.slots.handshake(peer.ip(), signal.clone()) else {
            debug!(%peer, "refused: this address has its most connections in their handshake");
            state.metrics.refused("handshaking_per_address");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // What a subscriber's path cannot carry waits in its outbox, where
        // the room sees it and sends a smaller encoding (PROTOCOL.md §6.6.3),
        // rather than in a kernel send buffer that grows to megabytes.
        let _ = socket2::SockRef::from(&tcp).set_tcp_notsent_lowat(NOTSENT_LOWAT);
        let pending = PendingSlot {
            slot: Arc::new(Mutex::new(Some(slot))),
            signal: signal.clone(),
            fd: std::os::fd::AsRawFd::as_raw_fd(&tcp),
        };
        let app = app
            .clone()
            .layer(axum::Extension(ConnectInfo(peer)))
            .layer(axum::Extension(pending));
        let state = state.clone();
        let tls = tls.clone();
        let h1 = h1.clone();
        tokio::spawn(async move {
            let handshake = Duration::from_millis(state.config.handshake_timeout_ms as u64);
            let run = async {
                match tls {
                    None => serve_connection(&state, &h1, tcp, app, peer).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                serve_connection(&state, &h1, stream, app, peer).await
                            }
                            Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            };
            tokio::select! {
                _ = run => {}
                _ = signal.evicted() => {
                    debug!(%peer, "closed to make room for a newer connection");
                }
            }
        });
    }
}

/// Serves HTTP/1.1 on one connection until it closes or upgrades.
async fn serve_connection<IO>(
    state: &AppState,
    h1: &http1::Builder,
    io: IO,
    app: axum::Router,
    peer: SocketAddr,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = h1
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut stop = state.shutdown_signal();
    let stopping = tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "HTTP connection ended");
            }
            false
        }
        _ = stop.wait_for(|s| *s) => true,
    };
    if stopping {
        // Finish the request in flight, if any; take no more.
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    }
}
