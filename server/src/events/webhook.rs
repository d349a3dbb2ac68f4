//! Webhooks: every event POSTed as signed JSON to each configured URL.
//!
//! Stored before sent: the event writer puts each event in the outbox of
//! every URL (a table of the store) in the transaction that records it;
//! one deliverer per URL then sends the outbox oldest first, one request at
//! a time, and forgets an event only after a 2xx. So delivery is at least
//! once (a crash between the 2xx and the delete sends it again), in order
//! (per meeting, and in fact overall per URL), and survives restarts.
//! A URL's outbox holds at most `--webhook-max-pending` events; beyond it
//! the oldest are dropped and counted. Nothing here is on the media path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use sha2::Sha256;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::{Event, EventKind, Who};
use crate::meetings::journal::Pending;
use crate::meetings::{Store, StoreError, lock};

/// How long one delivery attempt may take, connection included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The first wait after a failed attempt; it doubles up to the cap.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Events a deliverer reads from the store at a time.
const READ_BATCH: usize = 64;

/// How often an idle deliverer looks at its outbox without being told.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// The headers of a delivery.
pub const HEADER_ID: &str = "convene-webhook-id";
/// Unix seconds when the attempt was made; signed with the body.
pub const HEADER_TIMESTAMP: &str = "convene-webhook-timestamp";
/// `v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
pub const HEADER_SIGNATURE: &str = "convene-webhook-signature";

/// The webhook metrics, shared with `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct WebhookMetrics {
    /// Deliveries answered with a 2xx.
    pub delivered: Counter,
    /// Attempts that failed (no connection, timeout, not 2xx).
    pub failed: Counter,
    /// Events waiting for delivery, all URLs together.
    pub pending: Gauge,
    /// Events dropped from a full outbox (or of a URL no longer configured).
    pub dropped: Counter,
}

/// One URL events are delivered to.
#[derive(Debug)]
pub struct Target {
    /// The URL, also the key of its rows in the outbox.
    pub url: String,
    /// Events waiting for it (as far as this process knows).
    pending: AtomicU64,
    /// Rung when the writer stored more.
    more: Notify,
}

/// Every webhook URL of the node, and how to reach them.
#[derive(Debug)]
pub struct Webhooks {
    /// The URLs.
    pub targets: Vec<Arc<Target>>,
    /// This node's id, in every body.
    node: u32,
    /// Most events waiting per URL.
    max_pending: u64,
    /// Counters.
    metrics: WebhookMetrics,
}

impl Webhooks {
    /// The webhooks of node `node` delivering to `urls`, each holding at most `max_pending`.
    pub fn new(urls: &[String], node: u32, max_pending: u32, metrics: WebhookMetrics) -> Self {
        Webhooks {
            targets: urls
                .iter()
                .map(|u| {
                    Arc::new(Target {
                        url: u.clone(),
                        pending: AtomicU64::new(0),
                        more: Notify::new(),
                    })
                })
                .collect(),
            node,
            max_pending: u64::from(max_pending),
            metrics,
        }
    }

    /// The URLs, as the writer stores them.
    pub fn urls(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.url.clone()).collect()
    }

    /// The JSON body of `e`.
    pub fn body(&self, e: &Event) -> String {
        body(e, self.node)
    }

    /// Blocking: after the writer stored `n` events for every URL, drops the
    /// oldest beyond the bound. Called on the writer's blocking thread.
    pub fn stored(&self, store: &Store, n: u64) {
        for t in &self.targets {
            let now = t.pending.fetch_add(n, Ordering::Relaxed) + n;
            self.metrics.pending.inc_by(n as i64);
            if now <= self.max_pending {
                continue;
            }
            match store.outbox_trim(&t.url, self.max_pending) {
                Ok(0) => {}
                Ok(dropped) => {
                    let d = dropped as u64;
                    t.pending
                        .fetch_sub(d.min(t.pending.load(Ordering::Relaxed)), Ordering::Relaxed);
                    self.metrics.pending.dec_by(d as i64);
                    let total = self.metrics.dropped.inc_by(d) + d;
                    warn!(url = %t.url, dropped, total, max = self.max_pending, "webhook outbox full: oldest events dropped");
                }
                Err(e) => warn!(url = %t.url, error = %e, "webhook outbox not trimmed"),
            }
        }
    }

    /// Tells every deliverer there is more to send.
    pub fn wake(&self) {
        for t in &self.targets {
            t.more.notify_one();
        }
    }

    /// Blocking, at start: forgets the outboxes of URLs no longer
    /// configured and counts what waits for the others.
    pub fn load(&self, store: &Store) -> Result<(), StoreError> {
        let forgotten = store.outbox_forget_others(&self.urls())?;
        if forgotten > 0 {
            self.metrics.dropped.inc_by(forgotten as u64);
            warn!(
                events = forgotten,
                "undelivered webhook events of URLs no longer configured dropped"
            );
        }
        for t in &self.targets {
            let n = store.outbox_count(&t.url)?;
            t.pending.store(n, Ordering::Relaxed);
            self.metrics.pending.inc_by(n as i64);
            if n > 0 {
                info!(url = %t.url, events = n, "webhook delivery resumes");
            }
        }
        Ok(())
    }
}

/// A participant in a body.
fn who(w: &Who) -> serde_json::Value {
    serde_json::json!({
        "participant_id": w.participant_id,
        "user_id": w.user_id,
        "display_name": w.display_name,
        "node_id": w.node_id,
    })
}

/// The JSON body of `e` on node `node`.
pub fn body(e: &Event, node: u32) -> String {
    let mut v = serde_json::json!({
        "id": e.id,
        "event": e.kind.name(),
        "meeting_id": e.meeting_id,
        "created_at_ms": e.at_ms,
        "node_id": node,
    });
    let extra = match &e.kind {
        EventKind::MeetingStarted | EventKind::MeetingEnded => serde_json::json!({}),
        EventKind::ParticipantJoined(w)
        | EventKind::RecordingStarted(w)
        | EventKind::RecordingEnded(w) => serde_json::json!({ "participant": who(w) }),
        EventKind::ParticipantLeft(w, reason) => {
            serde_json::json!({ "participant": who(w), "reason": reason.as_str() })
        }
        EventKind::TrackPublished {
            participant_id,
            track_id,
            kind,
        } => serde_json::json!({ "track": {
            "participant_id": participant_id, "track_id": track_id, "kind": kind,
        }}),
        EventKind::TrackUnpublished {
            participant_id,
            track_id,
        } => serde_json::json!({ "track": {
            "participant_id": participant_id, "track_id": track_id,
        }}),
    };
    if let (Some(o), serde_json::Value::Object(x)) = (v.as_object_mut(), extra) {
        o.extend(x);
    }
    v.to_string()
}

/// `v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &str) -> String {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The wait after `failures` failed attempts in a row: 1 s doubling up to
/// `cap`, then between 75 % and 100 % of that (`jitter` in 0..1), so many
/// servers do not retry in step after a receiver's outage.
pub fn backoff(failures: u32, cap: Duration, jitter: f64) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(cap);
    base.mul_f64(0.75 + 0.25 * jitter.clamp(0.0, 1.0))
}

/// A cheap generator for the jitter (xorshift64*); seeded per deliverer.
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How a deliverer of one URL runs.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The store with the outbox.
    pub store: Arc<Mutex<Store>>,
    /// The signing secret.
    pub secret: Arc<Vec<u8>>,
    /// The longest wait between attempts.
    pub backoff_cap: Duration,
    /// TLS for https:// receivers: the system's roots and --webhook-ca-file.
    pub tls: Arc<rustls::ClientConfig>,
    /// Counters.
    pub metrics: WebhookMetrics,
}

/// Delivers `target`'s outbox, oldest first, until `stop` turns true.
pub async fn run_deliverer(target: Arc<Target>, d: Delivery, mut stop: watch::Receiver<bool>) {
    let tls = d.tls.clone();
    let mut jitter = Jitter(super::unix_ms() | 1);
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let store = d.store.clone();
        let url = target.url.clone();
        let batch = tokio::task::spawn_blocking(move || lock(&store).outbox_next(&url, READ_BATCH))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                warn!(url = %target.url, error = %e, "webhook outbox not read");
                Vec::new()
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = target.more.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            continue;
        }
        let mut delivered = Vec::new();
        for p in &batch {
            loop {
                match attempt(&target.url, &tls, &d.secret, p).await {
                    Ok(()) => {
                        d.metrics.delivered.inc();
                        failures = 0;
                        break;
                    }
                    Err(e) => {
                        d.metrics.failed.inc();
                        failures = failures.saturating_add(1);
                        let wait = backoff(failures, d.backoff_cap, jitter.next());
                        if failures == 1 || failures.is_multiple_of(10) {
                            warn!(url = %target.url, event = %p.event_id, error = %e, failures, retry_in = ?wait, "webhook not delivered; retrying");
                        } else {
                            debug!(url = %target.url, event = %p.event_id, error = %e, failures, "webhook not delivered");
                        }
                        // What was delivered is forgotten before the wait, so
                        // a restart meanwhile sends it no more.
                        forget(&target, &d, &mut delivered).await;
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = stop.wait_for(|s| *s) => return,
                        }
                    }
                }
            }
            delivered.push(p.seq);
        }
        forget(&target, &d, &mut delivered).await;
    }
}

/// Deletes delivered events from the outbox.
async fn forget(target: &Target, d: &Delivery, delivered: &mut Vec<i64>) {
    if delivered.is_empty() {
        return;
    }
    let seqs = std::mem::take(delivered);
    let store = d.store.clone();
    let url = target.url.clone();
    match tokio::task::spawn_blocking(move || lock(&store).outbox_delete(&url, &seqs)).await {
        Ok(Ok(n)) => {
            let n = n as u64;
            target.pending.fetch_sub(
                n.min(target.pending.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            d.metrics.pending.dec_by(n as i64);
        }
        Ok(Err(e)) => {
            warn!(url = %target.url, error = %e, "delivered webhooks not forgotten: they will be sent again")
        }
        Err(e) => {
            warn!(url = %target.url, error = %e, "delivered webhooks not forgotten: they will be sent again")
        }
    }
}

/// One POST of `p` to `url`; Ok on a 2xx.
async fn attempt(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    secret: &[u8],
    p: &Pending,
) -> Result<(), String> {
    let timestamp = super::unix_ms() / 1_000;
    let signature = sign(secret, timestamp, &p.body);
    let headers = [
        (HEADER_ID, p.event_id.clone()),
        (HEADER_TIMESTAMP, timestamp.to_string()),
        (HEADER_SIGNATURE, signature),
    ];
    let status = tokio::time::timeout(
        ATTEMPT_TIMEOUT,
        post(url, tls, &headers, Bytes::from(p.body.clone())),
    )
    .await
    .map_err(|_| format!("no answer within {ATTEMPT_TIMEOUT:?}"))??;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP status {status}"))
    }
}

/// POSTs a JSON `body` with `headers` to `url`; the answer's status.
async fn post(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<u16, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let host = uri.host().ok_or("the URL has no host")?.to_string();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let authority = uri
        .authority()
        .map_or_else(|| host.clone(), |a| a.to_string());
    let mut request = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("convene-server/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in headers {
        request = request.header(*k, v);
    }
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = crate::fetch::exchange(&uri, Some(tls), request).await?;
    Ok(response.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::LeaveReason;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // As a receiver computes it (docs/API.md), here with Python:
        // hmac.new(b"0123456789abcdef", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
        let s = sign(b"0123456789abcdef", 1_700_000_000, r#"{"a":1}"#);
        assert_eq!(
            s,
            "v1=9eb18f493f8ec135d9eb2dad817c369bb4e9cbfa818657897a7437c1cd8c3a23"
        );
        assert_ne!(s, sign(b"0123456789abcdef", 1_700_000_001, r#"{"a":1}"#));
        assert_ne!(s, sign(b"0123456789abcdeF", 1_700_000_000, r#"{"a":1}"#));
    }

    #[test]
    fn backoff_doubles_from_a_second_to_the_cap_with_a_quarter_of_jitter() {
        let cap = Duration::from_secs(60);
        let full: Vec<u64> = (1..=9).map(|f| backoff(f, cap, 1.0).as_secs()).collect();
        assert_eq!(full, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(3, cap, 0.0), Duration::from_secs(3));
        assert_eq!(backoff(u32::MAX, cap, 0.5), Duration::from_millis(52_500));
        let mut j = Jitter(42);
        assert!((0..1000).map(|_| j.next()).all(|x| (0.0..1.0).contains(&x)));
    }

    #[test]
    fn a_full_outbox_drops_its_oldest_and_counts_them() {
        let metrics = WebhookMetrics::default();
        let urls = vec!["http://a/".to_string()];
        let hooks = Webhooks::new(&urls, 0, 3, metrics.clone());
        let mut store = Store::in_memory().unwrap();
        hooks.load(&store).unwrap();
        let events: Vec<Event> = (1..=5)
            .map(|n| Event {
                id: format!("0-x-{n}"),
                meeting_id: "m".into(),
                at_ms: n,
                kind: EventKind::MeetingStarted,
            })
            .collect();
        store
            .apply_events(&events, &urls, |e| hooks.body(e))
            .unwrap();
        hooks.stored(&store, 5);
        assert_eq!(metrics.dropped.get(), 2);
        assert_eq!(metrics.pending.get(), 3);
        let left: Vec<String> = store
            .outbox_next("http://a/", 10)
            .unwrap()
            .into_iter()
            .map(|p| p.event_id)
            .collect();
        assert_eq!(left, ["0-x-3", "0-x-4", "0-x-5"], "the newest stay");
        // At the next start, what waits is counted again; a URL gone is forgotten.
        let again = WebhookMetrics::default();
        Webhooks::new(&urls, 0, 3, again.clone())
            .load(&store)
            .unwrap();
        assert_eq!(again.pending.get(), 3);
        let other = WebhookMetrics::default();
        Webhooks::new(&["http://b/".into()], 0, 3, other.clone())
            .load(&store)
            .unwrap();
        assert_eq!((other.pending.get(), other.dropped.get()), (0, 3));
    }

    #[test]
    fn bodies_carry_the_event_and_what_it_is_about() {
        let w = Who {
            participant_id: 9,
            user_id: "u".into(),
            display_name: "N".into(),
            node_id: 2,
        };
        let e = Event {
            id: "2-a-1".into(),
            meeting_id: "m".into(),
            at_ms: 5,
            kind: EventKind::ParticipantLeft(w, LeaveReason::Removed),
        };
        let v: serde_json::Value = serde_json::from_str(&body(&e, 2)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "id": "2-a-1", "event": "participant_left", "meeting_id": "m",
                "created_at_ms": 5, "node_id": 2, "reason": "removed",
                "participant": {"participant_id": 9, "user_id": "u", "display_name": "N", "node_id": 2},
            })
        );
        let e = Event {
            kind: EventKind::TrackPublished {
                participant_id: 9,
                track_id: 3,
                kind: "video",
            },
            ..e
        };
        let v: serde_json::Value = serde_json::from_str(&body(&e, 2)).unwrap();
        assert_eq!(v["event"], "track_published");
        assert_eq!(
            v["track"],
            serde_json::json!({"participant_id": 9, "track_id": 3, "kind": "video"})
        );
    }
}
