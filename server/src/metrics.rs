//! Prometheus metrics, served as text at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of transport-scoped metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// `ws` or `wt`.
    pub transport: String,
}

/// Labels of error metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The error code name.
    pub code: String,
}

/// Labels of drop metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why frames were dropped.
    pub reason: String,
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open connections by transport.
    pub connections: Family<TransportLabel, Gauge>,
    /// Connections accepted since start.
    pub connections_total: Family<TransportLabel, Counter>,
    /// Rooms now (set at scrape time).
    pub rooms: Gauge,
    /// Participants in rooms now (set at scrape time).
    pub participants: Gauge,
    /// 1 while the bus reaches the other nodes (set at scrape time).
    pub bus_up: Gauge,
    /// Bus messages dropped since start (set at scrape time).
    pub bus_dropped: Gauge,
    /// Frames received from clients.
    pub frames_in: Counter,
    /// Bytes received from clients.
    pub bytes_in: Counter,
    /// Frames written to clients.
    pub frames_out: Counter,
    /// Bytes written to clients.
    pub bytes_out: Counter,
    /// Media deliveries queued for subscribers.
    pub media_deliveries: Counter,
    /// Frames dropped, by reason.
    pub drops: Family<ReasonLabel, Counter>,
    /// Errors sent to clients during the handshake, by code.
    pub handshake_errors: Family<CodeLabel, Counter>,
    /// Errors sent to clients after the handshake, by code.
    pub protocol_errors: Family<CodeLabel, Counter>,
    /// Frames a writer found queued when it woke.
    pub queue_depth: Histogram,
    /// Time to queue one media frame for all its subscribers, in seconds.
    pub fanout_seconds: Histogram,
    /// How long the oldest frame of a batch waited in its subscriber's queue before the write, in seconds.
    pub queue_delay_seconds: Histogram,
    /// Transports' estimates of what subscribers' paths carry, kbit/s, one
    /// per connection every 500 ms (PROTOCOL.md §6.6.3).
    pub path_estimate_kbps: Histogram,
    /// Accepts that failed, by kind (`exhausted`: out of descriptors or memory).
    pub accept_errors: Family<ReasonLabel, Counter>,
    /// Connections refused or closed by a limit before their session, by reason.
    pub refused: Family<ReasonLabel, Counter>,
    /// Connections not yet past Hello (set at scrape time).
    pub handshaking: Gauge,
    /// Established sessions (set at scrape time).
    pub sessions: Gauge,
    /// Bytes queued for subscribers in all their queues (set at scrape time).
    pub queued_bytes: Gauge,
    /// Handshaking connections closed to make room, since start (set at scrape time).
    pub evicted: Gauge,
    /// Recorder processes this node runs, stopping ones included (set at scrape time).
    pub recorders: Gauge,
    /// Events (attendance, webhooks) dropped because the writer's queue was full.
    pub events_dropped: Counter,
    /// Webhook deliveries: delivered, failed attempts, pending, dropped.
    pub webhooks: crate::events::webhook::WebhookMetrics,
    /// Attendance shipped to PostgreSQL: waiting rows, failed rounds, shipped rows.
    pub attendance_shipping: crate::meetings::ship::ShipMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("convene");
        let m = Metrics {
            connections: Family::default(),
            connections_total: Family::default(),
            rooms: Gauge::default(),
            participants: Gauge::default(),
            bus_up: Gauge::default(),
            bus_dropped: Gauge::default(),
            frames_in: Counter::default(),
            bytes_in: Counter::default(),
            frames_out: Counter::default(),
            bytes_out: Counter::default(),
            media_deliveries: Counter::default(),
            drops: Family::default(),
            handshake_errors: Family::default(),
            protocol_errors: Family::default(),
            queue_depth: Histogram::new([
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ]),
            fanout_seconds: Histogram::new([1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2]),
            queue_delay_seconds: Histogram::new([
                1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25,
            ]),
            path_estimate_kbps: Histogram::new([
                64.0, 128.0, 256.0, 512.0, 1e3, 2e3, 4e3, 8e3, 16e3, 64e3, 1e6,
            ]),
            accept_errors: Family::default(),
            refused: Family::default(),
            handshaking: Gauge::default(),
            sessions: Gauge::default(),
            queued_bytes: Gauge::default(),
            evicted: Gauge::default(),
            recorders: Gauge::default(),
            events_dropped: Counter::default(),
            webhooks: Default::default(),
            attendance_shipping: Default::default(),
            registry: Registry::default(),
        };
        registry.register("connections", "Open connections", m.connections.clone());
        registry.register(
            "connections_accepted",
            "Connections accepted since start",
            m.connections_total.clone(),
        );
        registry.register("rooms", "Rooms now", m.rooms.clone());
        registry.register(
            "participants",
            "Participants in rooms now",
            m.participants.clone(),
        );
        registry.register(
            "bus_up",
            "1 while the bus reaches the other nodes (always 1 for a single node)",
            m.bus_up.clone(),
        );
        registry.register(
            "bus_dropped_messages",
            "Bus messages dropped since start: queue full, bus down, or a slow consumer",
            m.bus_dropped.clone(),
        );
        registry.register(
            "frames_in",
            "Frames received from clients",
            m.frames_in.clone(),
        );
        registry.register(
            "bytes_in",
            "Bytes received from clients",
            m.bytes_in.clone(),
        );
        registry.register(
            "frames_out",
            "Frames written to clients",
            m.frames_out.clone(),
        );
        registry.register("bytes_out", "Bytes written to clients", m.bytes_out.clone());
        registry.register(
            "media_deliveries",
            "Media frames queued for subscribers",
            m.media_deliveries.clone(),
        );
        registry.register(
            "frames_dropped",
            "Frames dropped, by reason",
            m.drops.clone(),
        );
        registry.register(
            "handshake_errors",
            "Errors sent before Welcome, by code",
            m.handshake_errors.clone(),
        );
        registry.register(
            "protocol_errors",
            "Errors sent after Welcome, by code",
            m.protocol_errors.clone(),
        );
        registry.register(
            "queue_depth_frames",
            "Frames queued for a subscriber when its writer woke",
            m.queue_depth.clone(),
        );
        registry.register(
            "fanout_seconds",
            "Time to queue one media frame for all its subscribers",
            m.fanout_seconds.clone(),
        );
        registry.register(
            "queue_delay_seconds",
            "How long the oldest frame of a write batch waited in its subscriber's queue",
            m.queue_delay_seconds.clone(),
        );
        registry.register(
            "path_estimate_kbps",
            "What the transport estimates a subscriber's path carries, kbit/s, sampled every 500 ms per connection",
            m.path_estimate_kbps.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accepts, by kind (exhausted: out of descriptors or memory, the listener backs off)",
            m.accept_errors.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused or closed by a limit before their session, by reason",
            m.refused.clone(),
        );
        registry.register(
            "handshaking_connections",
            "Connections not yet past Hello (TCP, TLS, HTTP, QUIC, WebTransport CONNECT, Hello)",
            m.handshaking.clone(),
        );
        registry.register(
            "sessions",
            "Established sessions (Hello accepted)",
            m.sessions.clone(),
        );
        registry.register(
            "recorders",
            "Recorder processes this node runs now (PROTOCOL.md §5.10), stopping ones included",
            m.recorders.clone(),
        );
        registry.register(
            "queued_bytes",
            "Bytes queued for subscribers now, all queues of this node together",
            m.queued_bytes.clone(),
        );
        registry.register(
            "handshaking_evicted",
            "Connections in their handshake closed to make room for newer ones, since start",
            m.evicted.clone(),
        );
        registry.register(
            "events_dropped",
            "Meeting events (attendance, webhooks) dropped because the store's writer fell 65536 behind",
            m.events_dropped.clone(),
        );
        registry.register(
            "webhook_delivered",
            "Webhook events delivered (answered with a 2xx), all URLs together",
            m.webhooks.delivered.clone(),
        );
        registry.register(
            "webhook_failed_attempts",
            "Webhook delivery attempts that failed (no connection, timeout, not 2xx); each is retried",
            m.webhooks.failed.clone(),
        );
        registry.register(
            "webhook_pending",
            "Webhook events stored and not yet delivered, all URLs together",
            m.webhooks.pending.clone(),
        );
        registry.register(
            "webhook_dropped",
            "Webhook events dropped undelivered: the oldest beyond --webhook-max-pending per URL, or of a URL no longer configured",
            m.webhooks.dropped.clone(),
        );
        registry.register(
            "attendance_unshipped",
            "Attendance rows of this node not yet in the shared PostgreSQL (--database-url), as of the last attempt",
            m.attendance_shipping.unshipped.clone(),
        );
        registry.register(
            "attendance_ship_failed",
            "Attempts to ship attendance to PostgreSQL that failed; the rows wait in this node's store and are retried",
            m.attendance_shipping.failed.clone(),
        );
        registry.register(
            "attendance_shipped",
            "Attendance rows (a join, then again at the leave) written to PostgreSQL",
            m.attendance_shipping.shipped.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a frame drop.
    pub fn drop(&self, reason: &str, n: u64) {
        if n > 0 {
            self.drops
                .get_or_create(&ReasonLabel {
                    reason: reason.into(),
                })
                .inc_by(n);
        }
    }

    /// Counts a failed accept.
    pub fn accept_error(&self, kind: &str) {
        self.accept_errors
            .get_or_create(&ReasonLabel {
                reason: kind.into(),
            })
            .inc();
    }

    /// Counts a connection refused or closed by a limit.
    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts an error sent to a client.
    pub fn error(&self, during_handshake: bool, code: &str) {
        let family = if during_handshake {
            &self.handshake_errors
        } else {
            &self.protocol_errors
        };
        family.get_or_create(&CodeLabel { code: code.into() }).inc();
    }
}
