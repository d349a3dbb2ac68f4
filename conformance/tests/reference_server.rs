//! The runner against our own server, over real WebSocket connections on
//! loopback: every server case passes, and a deliberately broken server
//! fails the cases that check what it broke.

use convene_conformance::{Outcome, Report, ServerTarget, run_server_cases};
use convene_protocol::cases::{CASES, Target, Transport};
use convene_server::config::{Config, Fault};

/// The token secret of the authenticated run.
const SECRET: &str = "conformance-test-secret-0123456789abcdef";

async fn server(fault: Option<Fault>, secret: Option<&str>) -> convene_server::Server {
    server_with(fault, secret, false).await
}

async fn server_with(
    fault: Option<Fault>,
    secret: Option<&str>,
    dev_tls: bool,
) -> convene_server::Server {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        // Short timers keep the timer cases quick; the runner reads them from Welcome.
        handshake_timeout_ms: 2_000,
        heartbeat_interval_ms: 1_000,
        idle_timeout_ms: 3_000,
        test_fault: fault,
        auth_secret: secret.map(str::to_string),
        waiting_rooms: vec!["conf-wait*".into()],
        dev_tls,
        ..Config::default()
    };
    convene_server::start(config).await.expect("server starts")
}

async fn run(
    server: &convene_server::Server,
    filter: Option<&str>,
    step_timeout_ms: u64,
    secret: Option<&str>,
) -> Report {
    run_on(server, &[], filter, step_timeout_ms, secret).await
}

/// Runs the cases with clients spread over `server` and the `more` nodes.
async fn run_on(
    server: &convene_server::Server,
    more: &[&convene_server::Server],
    filter: Option<&str>,
    step_timeout_ms: u64,
    secret: Option<&str>,
) -> Report {
    // The reference server always knows recorders (PROTOCOL.md §5.10).
    let mut capabilities = vec!["recording".to_string()];
    if secret.is_some() {
        capabilities.extend(["auth", "moderation", "waiting_room"].map(String::from));
    }
    let wt = server.cert_sha256.is_some();
    let target = ServerTarget {
        step_timeout: std::time::Duration::from_millis(step_timeout_ms),
        auth_secret: secret.map(str::to_string),
        token: None,
        transport: if wt { Transport::Wt } else { Transport::Ws },
        cert_sha256: server.cert_sha256.clone(),
        more_urls: more
            .iter()
            .map(|s| format!("ws://{}/convene/ws", s.addr))
            .collect(),
        url: if wt {
            format!("https://127.0.0.1:{}/convene/wt", server.addr.port())
        } else {
            format!("ws://{}/convene/ws", server.addr)
        },
        filter: filter.map(str::to_string),
        capabilities,
    };
    run_server_cases(&target, |r| println!("{}", r.line())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_server_with_tokens_passes_every_server_case() {
    // With tokens the runner can also play the moderator and check the
    // authentication cases; everything else is the same.
    let s = server(None, Some(SECRET)).await;
    passes_every_case(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_server_passes_every_server_case_over_webtransport() {
    let s = server_with(None, Some(SECRET), true).await;
    passes_every_case(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_of_one_cluster_pass_every_server_case_together() {
    // Each case's clients alternate between the nodes, so every
    // multi-client case crosses the bus (in-process here; over NATS in
    // `cargo xtask conformance`).
    let hub = convene_server::bus::InProcessHub::new();
    let mut nodes = Vec::new();
    for id in [1, 2] {
        let (bus, inbound) = hub.attach(id);
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            handshake_timeout_ms: 2_000,
            heartbeat_interval_ms: 1_000,
            idle_timeout_ms: 3_000,
            auth_secret: Some(SECRET.to_string()),
            waiting_rooms: vec!["conf-wait*".into()],
            ..Config::default()
        };
        nodes.push(
            convene_server::start_node(config, bus, Some(inbound))
                .await
                .expect("node starts"),
        );
    }
    let report = run_on(&nodes[0], &[&nodes[1]], None, 10_000, Some(SECRET)).await;
    println!("{}", report.summary());
    check_every_case(&report, Transport::Ws);
    for n in nodes {
        n.shutdown().await;
    }
}

async fn passes_every_case(s: convene_server::Server) {
    let transport = if s.cert_sha256.is_some() {
        Transport::Wt
    } else {
        Transport::Ws
    };
    let report = run(&s, None, 10_000, Some(SECRET)).await;
    println!("{}", report.summary());
    check_every_case(&report, transport);
    s.shutdown().await;
}

/// Every server case reported, and each passed or was skipped for a reason
/// the runner could not help.
fn check_every_case(report: &Report, transport: Transport) {
    let server_cases = CASES.iter().filter(|c| c.target == Target::Server).count();
    assert_eq!(
        report.results.len(),
        server_cases,
        "every server case is reported"
    );
    for r in &report.results {
        match &r.outcome {
            Outcome::Pass => {}
            Outcome::Fail(why) => panic!("{} failed: {why}", r.id),
            Outcome::NotApplicable(why) => {
                let case = CASES.iter().find(|c| c.id == r.id).unwrap();
                if !case.transports.contains(&transport) {
                    continue; // e.g. WebSocket text messages have no WebTransport form
                }
                assert!(
                    !case.requires.is_empty(),
                    "{} skipped without a requirement: {why}",
                    r.id
                );
                assert!(
                    !case
                        .requires
                        .iter()
                        .any(|c| *c == "auth" || *c == "moderation" || *c == "waiting_room"),
                    "{} skipped although the runner has a token secret: {why}",
                    r.id
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_forgets_to_stamp_the_sender_is_caught() {
    let s = server(Some(Fault::ForgetSenderStamp), None).await;
    // Failing steps wait out the step timeout; keep it short here.
    let report = run(&s, Some("media."), 1_500, None).await;
    let failed: Vec<&str> = report
        .results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
        .map(|r| r.id)
        .collect();
    for id in [
        "media.routed-to-subscriber",
        "media.own-id-accepted",
        "media.subscribe-all-later-tracks",
    ] {
        assert!(
            failed.contains(&id),
            "{id} should fail against the broken server; failed: {failed:?}"
        );
    }
    // Cases that do not look at the sender still pass: the failures point at the defect.
    assert!(
        report
            .results
            .iter()
            .any(|r| r.id == "media.unknown-track" && r.outcome == Outcome::Pass)
    );
    s.shutdown().await;
}
