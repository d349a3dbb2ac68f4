//! Client mode: the runner plays the server against a real client process
//! (our reference client, built on the sans-IO `ClientSession`) over
//! WebSocket on loopback; a deliberately broken client fails the case that
//! checks what it broke.

use std::time::Duration;

use convene_conformance::{Outcome, ServerTarget, run_client_cases};
use convene_protocol::cases::{CASES, Target};

fn target(step_timeout_ms: u64, filter: Option<&str>) -> ServerTarget {
    ServerTarget {
        url: String::new(),
        more_urls: Vec::new(),
        filter: filter.map(str::to_string),
        capabilities: vec!["reconnect".into(), "publishes_video".into()],
        step_timeout: Duration::from_millis(step_timeout_ms),
        auth_secret: None,
        token: None,
        transport: convene_protocol::cases::Transport::Ws,
        cert_sha256: None,
    }
}

fn client(extra: &[&str]) -> Vec<String> {
    let mut cmd = vec![
        env!("CARGO_BIN_EXE_convene-reference-client").to_string(),
        "{url}".to_string(),
    ];
    cmd.extend(extra.iter().map(|s| s.to_string()));
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_client_passes_every_client_case() {
    let report = run_client_cases(&target(10_000, None), "127.0.0.1:0", &client(&[]), |r| {
        println!("{}", r.line())
    })
    .await;
    println!("{}", report.summary());
    assert_eq!(
        report.results.len(),
        CASES.iter().filter(|c| c.target == Target::Client).count()
    );
    for r in &report.results {
        assert_eq!(r.outcome, Outcome::Pass, "{}", r.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_ignores_key_frame_requests_is_caught() {
    let report = run_client_cases(
        &target(2_000, Some("client.key-frame")),
        "127.0.0.1:0",
        &client(&["--ignore-key-frame-requests"]),
        |r| println!("{}", r.line()),
    )
    .await;
    assert_eq!(report.results.len(), 1);
    assert!(
        matches!(report.results[0].outcome, Outcome::Fail(_)),
        "{:?}",
        report.results[0]
    );
}
