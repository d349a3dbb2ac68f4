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
    let capabilities = match secret {
        Some(_) => vec![
            "auth".to_string(),
            "moderation".to_string(),
            "waiting_room".to_string(),
        ],
        None => vec![],
    };
    let wt = server.cert_sha256.is_some();
    let target = ServerTarget {
        step_timeout: std::time::Duration::from_millis(step_timeout_ms),
        auth_secret: secret.map(str::to_string),
        token: None,
        transport: if wt { Transport::Wt } else { Transport::Ws },
        cert_sha256: server.cert_sha256.clone(),
        more_urls: Vec::new(),
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

async fn passes_every_case(s: convene_server::Server) {
    let transport = if s.cert_sha256.is_some() {
        Transport::Wt
    } else {
        Transport::Ws
    };
    let report = run(&s, None, 10_000, Some(SECRET)).await;
    println!("{}", report.summary());
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
    s.shutdown().await;
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
