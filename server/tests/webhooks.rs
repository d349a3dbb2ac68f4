//! Webhooks through real sockets: a receiver inside the test (axum on
//! loopback) gets every event of a scripted meeting once (after removing
//! duplicates by id), in order, each signed with the secret; and events
//! that happen while the receiver is down, across a restart of the server
//! on the same --data-dir, all arrive once it is up.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::managed::{ADMIN, admin, join, node_with, temp_dir, token};
use common::{http_get, publish};
use convene_admin::EndMeetingRequest;
use convene_protocol::v1::{self, client_message::Msg as C, server_message::Msg as S};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;

const HOOK_SECRET: &str = "webhook-secret-0123456789abcdef";

/// Generous: under load a retry may wait its whole backoff.
const WAIT: Duration = Duration::from_secs(60);

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    timestamp: String,
    signature: String,
    body: serde_json::Value,
    raw: String,
}

/// A webhook receiver on `listener` answering 200 to every POST to /hook.
fn receiver(listener: tokio::net::TcpListener) -> mpsc::UnboundedReceiver<Delivery> {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = hook_app(tx);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    rx
}

/// The same receiver over TLS, with the server certificate of `pki` (its
/// CA is not one the system trusts).
fn tls_receiver(
    listener: tokio::net::TcpListener,
    pki: &convene_testkit::pki::TestPki,
) -> mpsc::UnboundedReceiver<Delivery> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.path("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.path("server-key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let (tx, rx) = mpsc::unbounded_channel();
    let app = hook_app(tx);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(tls),
                            hyper_util::service::TowerToHyperService::new(app),
                        )
                        .await;
                }
            });
        }
    });
    rx
}

/// The receiver's routes: every POST to /hook is passed on to `tx`.
fn hook_app(tx: mpsc::UnboundedSender<Delivery>) -> axum::Router {
    axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(tx): axum::extract::State<
                    mpsc::UnboundedSender<Delivery>,
                >,
                 headers: axum::http::HeaderMap,
                 raw: String| async move {
                    let h = |k: &str| {
                        headers
                            .get(k)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let _ = tx.send(Delivery {
                        id: h("convene-webhook-id"),
                        timestamp: h("convene-webhook-timestamp"),
                        signature: h("convene-webhook-signature"),
                        body: serde_json::from_str(&raw).unwrap_or_default(),
                        raw,
                    });
                    axum::http::StatusCode::OK
                },
            ),
        )
        .with_state(tx)
}

/// The webhook secret in a file of `dir`.
fn secret_file(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let f = dir.join("webhook.secret");
    std::fs::write(&f, format!("{HOOK_SECRET}\n")).unwrap();
    f
}

/// A node of `dir` POSTing events to `url`, retrying at least once a second.
async fn hooked(dir: &std::path::Path, url: String) -> convene_server::Server {
    let secret = secret_file(&dir.join("secrets"));
    node_with(dir, move |c| {
        c.webhook_urls = vec![url];
        c.webhook_secret_file = Some(secret);
        c.webhook_backoff_max_ms = 1_000;
    })
    .await
}

/// A counter or gauge of `/metrics`.
async fn metric(s: &convene_server::Server, name: &str) -> f64 {
    let (_, text) = http_get(s, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `name` in `/metrics` satisfies `ok`.
async fn until_metric(s: &convene_server::Server, name: &str, ok: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = metric(s, name).await;
        if ok(v) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed at {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deliveries until `n` distinct events arrived, each checked (signature,
/// timestamp, id); duplicates are counted and dropped, as a receiver does.
async fn distinct(rx: &mut mpsc::UnboundedReceiver<Delivery>, n: usize) -> Vec<Delivery> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while out.len() < n {
        let d = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} events arrived: {out:#?}", out.len()))
            .expect("the receiver runs");
        check(&d);
        if seen.insert(d.id.clone()) {
            out.push(d);
        }
    }
    out
}

/// The signature verifies with the secret, the timestamp is within five
/// minutes, and the header's id is the body's.
fn check(d: &Delivery) {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{}.{}", d.timestamp, d.raw).as_bytes());
    let want = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(d.signature, want, "signature of {}", d.raw);
    let ts: u64 = d.timestamp.parse().expect("a Unix time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(ts.abs_diff(now) <= 300, "timestamp {ts}, now {now}");
    assert_eq!(d.body["id"], d.id.as_str());
}

/// Each delivery as `event[:user][:reason|track kind]`, for comparing with a script.
fn summary(ds: &[Delivery]) -> Vec<String> {
    ds.iter()
        .map(|d| {
            let b = &d.body;
            let mut s = b["event"].as_str().unwrap_or("?").to_string();
            if let Some(u) = b["participant"]["user_id"].as_str() {
                s += &format!(":{u}");
            }
            if let Some(r) = b["reason"].as_str() {
                s += &format!(":{r}");
            }
            if let Some(t) = b["track"]["track_id"].as_u64() {
                s += &format!(":track{t}");
            }
            if let Some(k) = b["track"]["kind"].as_str() {
                s += &format!(":{k}");
            }
            s
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_a_meeting_arrives_once_in_order_and_signed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let mut rx = receiver(listener);
    let dir = temp_dir("webhooks-meeting");
    let s = hooked(&dir, url).await;
    let mut a = admin(&s, Some(ADMIN)).await;
    let alice_token = token(&mut a, "alice", &["publish_video", "subscribe"]).await;
    let bob_token = token(&mut a, "bob", &["subscribe"]).await;

    let (mut alice, first) = join(&s, &alice_token, "weekly").await;
    assert!(matches!(first, S::Joined(_)), "{first:?}");
    let (mut bob, first) = join(&s, &bob_token, "weekly").await;
    assert!(matches!(first, S::Joined(_)), "{first:?}");
    alice.send(publish(1, v1::TrackKind::Video)).await;
    bob.expect(|m| matches!(m, S::TrackPublished(_))).await;
    alice
        .send(C::Unpublish(v1::Unpublish { track_id: 1 }))
        .await;
    bob.expect(|m| matches!(m, S::TrackUnpublished(_))).await;
    alice.send(C::Leave(v1::Leave {})).await;
    bob.expect(|m| matches!(m, S::ParticipantLeft(_))).await;
    a.end_meeting(EndMeetingRequest {
        meeting_id: "weekly".into(),
    })
    .await
    .expect("ended");
    bob.expect(|m| matches!(m, S::Goodbye(_))).await;

    let got = distinct(&mut rx, 8).await;
    assert_eq!(
        summary(&got),
        [
            "meeting_started",
            "participant_joined:alice",
            "participant_joined:bob",
            "track_published:track1:video",
            "track_unpublished:track1",
            "participant_left:alice:left",
            "participant_left:bob:meeting_ended",
            "meeting_ended",
        ]
    );
    assert!(got.iter().all(|d| d.body["meeting_id"] == "weekly"));
    let times: Vec<u64> = got
        .iter()
        .map(|d| d.body["created_at_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // Nothing more is waiting, and nothing else arrives.
    until_metric(&s, "convene_webhook_pending", |v| v == 0.0).await;
    assert_eq!(
        metric(&s, "convene_webhook_delivered_total").await as usize,
        8
    );
    while let Ok(d) = rx.try_recv() {
        check(&d);
        assert!(
            got.iter().any(|g| g.id == d.id),
            "an event nobody scripted: {}",
            d.raw
        );
    }
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_for_a_receiver_that_is_down_across_a_restart() {
    // A port nobody listens on (yet): connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let down_since = Instant::now();
    let dir = temp_dir("webhooks-down");
    let s = hooked(&dir, url.clone()).await;
    let mut a = admin(&s, Some(ADMIN)).await;
    let alice_token = token(&mut a, "alice", &["subscribe"]).await;
    let bob_token = token(&mut a, "bob", &["subscribe"]).await;

    let (mut alice, first) = join(&s, &alice_token, "night").await;
    assert!(matches!(first, S::Joined(_)), "{first:?}");
    alice.send(C::Leave(v1::Leave {})).await;
    until_metric(&s, "convene_webhook_pending", |v| v == 4.0).await;
    until_metric(&s, "convene_webhook_failed_attempts_total", |v| v >= 1.0).await;
    drop(alice);

    // Restarted on the same store: the four are still waiting.
    s.shutdown().await;
    let s = hooked(&dir, url).await;
    until_metric(&s, "convene_webhook_pending", |v| v == 4.0).await;
    let mut a = admin(&s, Some(ADMIN)).await;
    let (mut bob, first) = join(&s, &bob_token, "night").await;
    assert!(matches!(first, S::Joined(_)), "{first:?}");
    bob.send(C::Leave(v1::Leave {})).await;
    until_metric(&s, "convene_webhook_pending", |v| v == 8.0).await;
    // Down for several seconds more, the server retrying all the while.
    until_metric(&s, "convene_webhook_failed_attempts_total", |v| v >= 8.0).await;
    assert_eq!(
        a.list_attendance(convene_admin::ListAttendanceRequest {
            meeting_id: "night".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records
        .len(),
        2
    );

    // The receiver stays down for at least 10 s in all (the scenario's
    // length, not a wait for something to happen).
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down_since.elapsed())).await;
    assert!(down_since.elapsed() >= Duration::from_secs(10));

    // The receiver comes up on that port: everything arrives, in order.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port is still free");
    let mut rx = receiver(listener);
    let got = distinct(&mut rx, 8).await;
    assert_eq!(
        summary(&got),
        [
            "meeting_started",
            "participant_joined:alice",
            "participant_left:alice:left",
            "meeting_ended",
            "meeting_started",
            "participant_joined:bob",
            "participant_left:bob:left",
            "meeting_ended",
        ]
    );
    until_metric(&s, "convene_webhook_pending", |v| v == 0.0).await;
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_receiver_with_a_private_ca_gets_events_once_its_ca_is_trusted() {
    let pki = convene_testkit::pki::TestPki::new("webhook-tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}/hook",
        listener.local_addr().unwrap().port()
    );
    let mut rx = tls_receiver(listener, &pki);
    let dir = temp_dir("webhooks-tls");
    let secret = secret_file(&dir.join("secrets"));
    let ca = pki.path("ca.pem");
    let s = node_with(&dir, move |c| {
        c.webhook_urls = vec![url];
        c.webhook_secret_file = Some(secret);
        c.webhook_ca_file = Some(ca);
        c.webhook_backoff_max_ms = 1_000;
    })
    .await;
    let mut a = admin(&s, Some(ADMIN)).await;
    let t = token(&mut a, "carol", &["subscribe"]).await;
    let (carol, first) = join(&s, &t, "secure").await;
    assert!(matches!(first, S::Joined(_)), "{first:?}");
    let got = distinct(&mut rx, 2).await;
    assert_eq!(
        summary(&got),
        ["meeting_started", "participant_joined:carol"]
    );
    drop(carol);
    s.shutdown().await;

    // Without the CA, the receiver's certificate is refused: nothing is
    // delivered and the attempts fail (and are counted).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}/hook",
        listener.local_addr().unwrap().port()
    );
    let mut rx = tls_receiver(listener, &pki);
    let dir2 = temp_dir("webhooks-tls-untrusted");
    let s = hooked(&dir2, url).await;
    let mut a = admin(&s, Some(ADMIN)).await;
    let t = token(&mut a, "dan", &["subscribe"]).await;
    let (_dan, _) = join(&s, &t, "insecure").await;
    until_metric(&s, "convene_webhook_failed_attempts_total", |v| v >= 2.0).await;
    assert!(
        rx.try_recv().is_err(),
        "nothing reached an untrusted receiver"
    );
    assert_eq!(metric(&s, "convene_webhook_delivered_total").await, 0.0);
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_across_two_nodes_starts_once_and_ends_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let mut rx = receiver(listener);
    let nats = common::nats::NatsServer::start();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for id in [1u16, 2] {
        let dir = temp_dir(&format!("webhooks-node-{id}"));
        let secret = secret_file(&dir.join("secrets"));
        let (url, bus) = (url.clone(), nats.url());
        let s = node_with(&dir, move |c| {
            c.webhook_urls = vec![url];
            c.webhook_secret_file = Some(secret);
            c.webhook_backoff_max_ms = 1_000;
            c.bus = Some(bus);
            c.node_id = Some(id);
            c.node_timeout_ms = 1_500;
        })
        .await;
        common::wait_ready(&s).await;
        nodes.push(s);
        dirs.push(dir);
    }
    let mut a = admin(&nodes[0], Some(ADMIN)).await;
    let alice_token = token(&mut a, "alice", &["subscribe"]).await;
    let bob_token = token(&mut a, "bob", &["subscribe"]).await;
    let (mut alice, first) = join(&nodes[0], &alice_token, "span").await;
    assert!(matches!(first, S::Joined(_)), "{first:?}");
    let (mut bob, first) = join(&nodes[1], &bob_token, "span").await;
    assert!(
        matches!(&first, S::Joined(j) if j.participants.len() == 2),
        "bob sees alice on the other node: {first:?}"
    );
    let bob_id = bob.id;
    alice
        .expect(|m| matches!(m, S::ParticipantJoined(j) if j.participant.as_ref().is_some_and(|p| p.participant_id == bob_id)))
        .await;
    alice.send(C::Leave(v1::Leave {})).await;
    bob.expect(|m| matches!(m, S::ParticipantLeft(_))).await;
    bob.send(C::Leave(v1::Leave {})).await;

    // Each node tells its own participants; the meeting starts and ends once.
    let got = distinct(&mut rx, 6).await;
    let mut events = summary(&got);
    events.sort();
    assert_eq!(
        events,
        [
            "meeting_ended",
            "meeting_started",
            "participant_joined:alice",
            "participant_joined:bob",
            "participant_left:alice:left",
            "participant_left:bob:left",
        ]
    );
    for s in &nodes {
        until_metric(s, "convene_webhook_pending", |v| v == 0.0).await;
    }
    let mut delivered = 0.0;
    for s in &nodes {
        delivered += metric(s, "convene_webhook_delivered_total").await;
    }
    assert_eq!(delivered, 6.0, "nothing more was sent");
    for s in nodes {
        s.shutdown().await;
    }
    for d in dirs {
        let _ = std::fs::remove_dir_all(&d);
    }
}
