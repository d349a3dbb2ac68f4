//! Recording (PROTOCOL.md §5.10) as the CLI shows it: `convene receive`
//! says who is recording, on its status line and in its report, and
//! `convene admin record` reaches the node's admin API.

mod common;

use common::{Running, convene, joined_client, json, server_args, server_on, words};
use convene_client::Client;
use convene_protocol::ClientEvent;
use convene_protocol::v1::ClientKind;
use convene_protocol::{ClientSessionConfig, FEATURE_RECORDING};
use convene_server::config::Config;

const ADMIN: &str = "admin-token-for-the-cli-test";

/// A client that says it is a recorder, joined to `meeting` as `name`.
async fn recorder(s: &convene_server::Server, meeting: &str, name: &str) -> Client {
    joined(s, meeting, name, ClientKind::Recorder).await
}

/// A client of `kind` joined to `meeting` as `name`; it records when it
/// says it is a recorder, and not otherwise.
async fn joined(s: &convene_server::Server, meeting: &str, name: &str, kind: ClientKind) -> Client {
    let config = ClientSessionConfig {
        client_kind: kind,
        features: vec![FEATURE_RECORDING.into()],
        ..ClientSessionConfig::default()
    };
    let (c, j) = joined_client(s, meeting, name, config).await;
    let me = c.participant_id();
    let recording = j
        .participants
        .iter()
        .any(|p| p.participant_id == me && p.recording);
    assert_eq!(recording, kind == ClientKind::Recorder, "{j:?}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convene_receive_says_who_is_recording() {
    let s = server_on(0, false).await;
    let meeting = "rec-receive";
    let mut r = recorder(&s, meeting, "Tape").await;
    let id = r.participant_id();
    // Keep the recorder's session answered while receive runs.
    let pump = tokio::spawn(async move { while r.next_event().await.is_some() {} });
    let mut args = server_args(&s);
    args.extend(words(&format!(
        "--transport ws --meeting-id {meeting} --duration 1 --json"
    )));
    let (ok, out, err) = Running::start("receive", &args).finish().await;
    let report = json(ok, &out, &err);
    assert_eq!(report["recording"], serde_json::json!(["Tape"]), "{report}");
    let line = format!("participant {id} (Tape) is recording");
    assert!(err.iter().any(|l| l.contains(&line)), "{err:?}");
    pump.abort();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convene_receive_reports_no_recorder_when_there_is_none() {
    let s = server_on(0, false).await;
    let mut args = server_args(&s);
    args.extend(words(
        "--transport ws --meeting-id rec-none --duration 1 --json",
    ));
    let (ok, out, err) = Running::start("receive", &args).finish().await;
    let report = json(ok, &out, &err);
    assert_eq!(report["recording"], serde_json::json!([]), "{report}");
    assert!(!err.iter().any(|l| l.contains("is recording")), "{err:?}");
    s.shutdown().await;
}

/// A meeting with a recorder refuses another; the meeting list marks the
/// recorder, and stopping removes it; without --recorder-command the node
/// says it cannot record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convene_admin_record_reaches_the_admin_api() {
    let s = convene_server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: Some(ADMIN.into()),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    })
    .await
    .unwrap();
    let url = format!("http://{}", s.admin_addr.unwrap());
    let admin = |rest: &[&str]| {
        let mut a = vec!["admin", "--url", url.as_str(), "--token", ADMIN];
        a.extend_from_slice(rest);
        a.into_iter().map(String::from).collect::<Vec<String>>()
    };
    let run = |a: Vec<String>| async move {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        convene(&refs).await
    };
    let mut r = recorder(&s, "rec-admin", "Tape").await;
    let (ok, _, err) = run(admin(&["record", "start", "--meeting-id", "rec-admin"])).await;
    assert!(!ok);
    assert!(err.contains("AlreadyExists"), "{err}");
    let (ok, out, err) = run(admin(&["meetings", "--json"])).await;
    assert!(ok, "{err}");
    let meetings: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        meetings[0]["participants"][0]["recording"], true,
        "{meetings}"
    );
    let (ok, out, err) = run(admin(&["record", "stop", "--meeting-id", "rec-admin"])).await;
    assert!(ok, "{err}");
    assert!(out.contains("told to stop"), "{out}");
    // The recorder was removed.
    loop {
        match r.next_event().await {
            Some(ClientEvent::Closed) | None => break,
            _ => {}
        }
    }
    let (ok, _, err) = run(admin(&["record", "stop", "--meeting-id", "rec-admin"])).await;
    assert!(!ok);
    assert!(err.contains("NotFound"), "{err}");
    // A meeting without a recorder, on a node without a recorder command.
    let _other = joined(&s, "rec-admin-2", "Ada", ClientKind::Native).await;
    let (ok, _, err) = run(admin(&["record", "start", "--meeting-id", "rec-admin-2"])).await;
    assert!(!ok);
    assert!(
        err.contains("FailedPrecondition") && err.contains("--recorder-command"),
        "{err}"
    );
    s.shutdown().await;
}
