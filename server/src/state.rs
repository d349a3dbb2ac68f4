//! State shared by every connection of a server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use convene_protocol::Timestamp;
use tokio::sync::watch;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::room::{RoomLimits, Router};
use crate::slots::{SlotLimits, Slots};

/// Everything connections share.
#[derive(Debug)]
pub struct AppState {
    /// Settings in force.
    pub config: Config,
    /// Rooms.
    pub router: Router,
    /// Metrics.
    pub metrics: Metrics,
    /// The zero of the sans-IO clock.
    start: tokio::time::Instant,
    /// Flips to true when shutdown begins.
    shutdown: watch::Sender<bool>,
    /// Open connections with a session object (before or after Hello).
    connections: Arc<OpenConnections>,
    /// Handshaking and session slots: who may hold a connection open.
    pub slots: Arc<Slots>,
    /// SHA-256 of the TLS certificate, hex, when TLS is on.
    pub cert_sha256: Option<String>,
    /// Checks tokens, when the server requires them.
    pub verifier: Option<crate::auth::Verifier>,
    /// The WebTransport address, once bound.
    wt_addr: Mutex<Option<std::net::SocketAddr>>,
    /// This node's load, and whether it takes new joins.
    pub load: crate::load::Load,
    /// The recorders this node runs (PROTOCOL.md §5.10).
    pub recorders: Arc<crate::recording::Recorders>,
    /// Managed meetings: their settings, stored and cached for joins.
    pub meetings: crate::meetings::Meetings,
    /// Where rooms hand what happens in meetings (attendance, webhooks).
    pub events: Arc<crate::events::Events>,
    /// The queue of `events`, until the server starts its writer.
    events_rx: Mutex<Option<tokio::sync::mpsc::Receiver<crate::events::Queued>>>,
    /// Where routed payloads are copied once a test asks (see [`AppState::tap`]).
    #[cfg(feature = "test-hooks")]
    tap: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Tapped>>,
}

/// A payload the server routed, as a test's tap records it.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone)]
pub enum Tapped {
    /// A media frame as forwarded (header stamped, payload untouched).
    Media(bytes::Bytes),
    /// An E2EE payload and who sent it.
    E2ee {
        /// The sender's participant id.
        from: u32,
        /// The payload, as routed.
        payload: bytes::Bytes,
    },
}

impl AppState {
    /// State for a server with `config`, whose managed meetings are `meetings`
    /// (opened with [`crate::meetings::Meetings::open`]).
    pub fn new(
        config: Config,
        cert_sha256: Option<String>,
        verifier: Option<crate::auth::Verifier>,
        bus: Arc<dyn crate::bus::Bus>,
        meetings: crate::meetings::Meetings,
    ) -> Self {
        let metrics = Metrics::new();
        let (events, events_rx) =
            crate::events::Events::new(u32::from(bus.node()), metrics.events_dropped.clone());
        let router = Router::with_bus(
            RoomLimits {
                max_participants: config.max_participants_per_room,
                max_tracks: config.max_tracks_per_participant,
                max_rooms: config.max_rooms,
                room_relay_bytes_per_second: config.room_relay_bytes_per_second,
            },
            bus,
        )
        .with_meetings(meetings.cache().clone())
        .with_events(events.clone());
        let thresholds = crate::load::Thresholds {
            cpu_percent: config.busy_cpu_percent,
            queue_delay_ms: config.busy_queue_delay_ms,
            egress_mbps: config.busy_egress_mbps,
        };
        let slots = Slots::new(SlotLimits {
            max_handshaking: config.max_handshaking_connections,
            max_handshaking_per_addr: config.max_handshaking_per_ip,
            max_sessions: config.max_connections,
            max_sessions_per_addr: config.max_connections_per_ip,
        });
        // The sans-IO clock starts at 0 now.
        let recorders = Arc::new(crate::recording::Recorders::new(
            Timestamp(0),
            config.recorder_command.clone(),
            config.recordings_dir.clone(),
            config.max_recorders,
            config.recorder_starts_per_minute,
        ));
        AppState {
            config,
            router,
            metrics,
            start: tokio::time::Instant::now(),
            shutdown: watch::channel(false).0,
            connections: Arc::new(OpenConnections::default()),
            slots,
            cert_sha256,
            verifier,
            wt_addr: Mutex::new(None),
            load: crate::load::Load::new(thresholds),
            recorders,
            meetings,
            events,
            events_rx: Mutex::new(Some(events_rx)),
            #[cfg(feature = "test-hooks")]
            tap: std::sync::OnceLock::new(),
        }
    }

    /// The events' queue, for the one writer that reads it; `None` after the first call.
    pub fn take_events_queue(&self) -> Option<tokio::sync::mpsc::Receiver<crate::events::Queued>> {
        self.events_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// A test hook: from now on every media frame and E2EE payload this node
    /// routes is also copied here, to check what a server could see. Only
    /// the first call gets a receiver. Only in builds with the `test-hooks`
    /// feature; even there, off until asked for (one atomic load per frame).
    #[cfg(feature = "test-hooks")]
    pub fn tap(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Tapped>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.tap.set(tx).ok().map(|()| rx)
    }

    /// Copies a routed payload to the tap, if a test installed one.
    #[cfg(feature = "test-hooks")]
    pub fn tapped(&self, what: impl FnOnce() -> Tapped) {
        if let Some(tap) = self.tap.get() {
            let _ = tap.send(what());
        }
    }

    /// Cores the server's work runs on: its worker threads.
    pub fn cores(&self) -> usize {
        self.config.worker_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(1)
        })
    }

    /// Records where WebTransport listens, for discovery.
    pub fn set_wt_addr(&self, addr: std::net::SocketAddr) {
        *self.wt_addr.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
    }

    /// Where WebTransport listens, if it does.
    pub fn wt_addr(&self) -> Option<std::net::SocketAddr> {
        *self.wt_addr.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Now, on the sans-IO clock.
    pub fn now(&self) -> Timestamp {
        Timestamp(self.start.elapsed().as_micros() as u64)
    }

    /// A tokio instant as a sans-IO timestamp (the inverse of [`AppState::instant`]).
    pub fn timestamp_at(&self, at: tokio::time::Instant) -> Timestamp {
        Timestamp(at.saturating_duration_since(self.start).as_micros() as u64)
    }

    /// A sans-IO timestamp as a tokio instant.
    pub fn instant(&self, t: Timestamp) -> tokio::time::Instant {
        self.start + std::time::Duration::from_micros(t.0)
    }

    /// Starts shutdown: every connection says Goodbye.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// True once shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// A receiver that changes when shutdown begins.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Open connections with a session object, before or after Hello.
    pub fn open_connections(&self) -> usize {
        self.connections.count.load(Ordering::Acquire)
    }

    /// Counts a connection object into [`AppState::open_connections`] for
    /// as long as the returned guard lives.
    pub(crate) fn count_connection(&self) -> ConnectionGuard {
        self.connections.count.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.connections.clone())
    }

    /// Waits until no connection is open, or `deadline`; returns how many
    /// are still open. Woken by the last guard's drop, not by polling.
    pub async fn connections_closed(&self, deadline: tokio::time::Instant) -> usize {
        loop {
            let closed = self.connections.closed.notified();
            tokio::pin!(closed);
            // Registered before the count is read, so a drop in between still wakes it.
            closed.as_mut().enable();
            let open = self.open_connections();
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return self.open_connections();
            }
        }
    }
}

/// The count of open connections, and a signal when it reaches zero.
#[derive(Debug, Default)]
struct OpenConnections {
    count: AtomicUsize,
    closed: tokio::sync::Notify,
}

/// One open connection, counted while this lives (a drop guard, so that no
/// path out of a connection can forget to count it out).
#[derive(Debug)]
pub(crate) struct ConnectionGuard(Arc<OpenConnections>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}
