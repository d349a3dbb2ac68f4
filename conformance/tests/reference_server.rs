//! The runner against our own server, over real WebSocket connections on
//! loopback: every server case passes, and a deliberately broken server
//! fails the cases that check what it broke.

use convene_conformance::{Outcome, Report, ServerTarget, run_server_cases};
use convene_protocol::cases::{CASES, Target};
use convene_server::config::{Config, Fault};

async fn server(fault: Option<Fault>) -> convene_server::Server {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        // Short timers keep the timer cases quick; the runner reads them from Welcome.
        handshake_timeout_ms: 2_000,
        heartbeat_interval_ms: 1_000,
        idle_timeout_ms: 3_000,
        test_fault: fault,
        ..Config::default()
    };
    convene_server::start(config).await.expect("server starts")
}

async fn run(
    server: &convene_server::Server,
    filter: Option<&str>,
    step_timeout_ms: u64,
) -> Report {
    let target = ServerTarget {
        step_timeout: std::time::Duration::from_millis(step_timeout_ms),
        url: format!("ws://{}/convene/ws", server.addr),
        filter: filter.map(str::to_string),
        capabilities: vec![],
    };
    run_server_cases(&target, |r| println!("{}", r.line())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_server_passes_every_server_case() {
    let s = server(None).await;
    let report = run(&s, None, 10_000).await;
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
                assert!(
                    !case.requires.is_empty(),
                    "{} skipped without a requirement: {why}",
                    r.id
                );
            }
        }
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_forgets_to_stamp_the_sender_is_caught() {
    let s = server(Some(Fault::ForgetSenderStamp)).await;
    // Failing steps wait out the step timeout; keep it short here.
    let report = run(&s, Some("media."), 1_500).await;
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
