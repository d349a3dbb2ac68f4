//! `convene admin` against a real server's admin API: stats and the meeting
//! list with the right token; a clear refusal with a wrong one; managed
//! meetings created, changed, listed and deleted; a meeting's attendance;
//! an admin API over mutual TLS reached with the CA and a client certificate.

mod common;

use common::convene;
use convene_server::config::Config;

const ADMIN: &str = "admin-token-for-the-cli-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convene_admin_reads_a_nodes_stats_and_meetings() {
    let s = convene_server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: Some(ADMIN.into()),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    })
    .await
    .unwrap();
    let url = format!("http://{}", s.admin_addr.unwrap());
    let (ok, out, err) =
        convene(&["admin", "--url", &url, "--token", ADMIN, "stats", "--json"]).await;
    assert!(ok, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["accepting"], true, "{stats}");
    assert_eq!(stats["meetings"], 0, "{stats}");

    let (ok, out, err) = convene(&["admin", "--url", &url, "--token", ADMIN, "meetings"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "no meetings");

    let (ok, _, err) = convene(&[
        "admin",
        "--url",
        &url,
        "--token",
        "not-the-token-at-all",
        "meetings",
    ])
    .await;
    assert!(!ok);
    assert!(
        err.contains("PermissionDenied") && err.contains("wrong admin token"),
        "{err}"
    );

    let (ok, _, err) = convene(&["admin", "--url", &url, "--token", ADMIN, "end", "nope"]).await;
    assert!(!ok);
    assert!(err.contains("NotFound"), "{err}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convene_admin_meeting_creates_changes_and_deletes_a_managed_meeting() {
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
        let mut args = vec![
            "admin", "--url", &url, "--token", ADMIN, "--json", "meeting",
        ];
        args.extend_from_slice(rest);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        convene(&refs).await
    };
    let (ok, out, err) = run(admin(&[
        "create",
        "class-3b",
        "--waiting-room",
        "--max-participants",
        "30",
        "--metadata",
        "{\"teacher\":\"ana\"}",
    ]))
    .await;
    assert!(ok, "{err}");
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["waiting_room"], true, "{m}");
    assert_eq!(m["max_participants"], 30, "{m}");

    // Update changes what is given and keeps the rest.
    let (ok, out, err) = run(admin(&["update", "class-3b", "--locked"])).await;
    assert!(ok, "{err}");
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["locked"], true, "{m}");
    assert_eq!(m["waiting_room"], true, "{m}");
    assert_eq!(m["metadata"], "{\"teacher\":\"ana\"}", "{m}");

    let (ok, _, err) = run(admin(&[
        "update",
        "class-3b",
        "--metadata",
        &"x".repeat(4097),
    ]))
    .await;
    assert!(!ok);
    assert!(
        err.contains("InvalidArgument") && err.contains("4096"),
        "{err}"
    );

    let (ok, out, err) = run(admin(&["list"])).await;
    assert!(ok, "{err}");
    let all: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(all[0]["meeting_id"], "class-3b", "{all}");
    assert_eq!(all[0]["locked"], true, "{all}");

    let (ok, _, err) = run(admin(&["delete", "class-3b"])).await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(admin(&["get", "class-3b"])).await;
    assert!(!ok);
    assert!(err.contains("NotFound"), "{err}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convene_admin_reaches_a_tls_admin_api_with_mutual_tls() {
    let pki = convene_testkit::pki::TestPki::new("cli-admin-tls");
    let path = |f: &str| pki.path(f).display().to_string();
    let s = convene_server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: Some(ADMIN.into()),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        admin_tls_cert: Some(pki.path("server.pem")),
        admin_tls_key: Some(pki.path("server-key.pem")),
        admin_client_ca: Some(pki.path("ca.pem")),
        ..Config::default()
    })
    .await
    .unwrap();
    let url = format!("https://127.0.0.1:{}", s.admin_addr.unwrap().port());
    let (ca, cert, key) = (path("ca.pem"), path("client.pem"), path("client-key.pem"));
    let (ok, out, err) = convene(&[
        "admin",
        "--server",
        &url,
        "--ca-cert",
        &ca,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
        "--token",
        ADMIN,
        "--json",
        "meeting",
        "create",
        "over-tls",
    ])
    .await;
    assert!(ok, "{err}");
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["meeting_id"], "over-tls", "{m}");

    // Without the client certificate the server ends the handshake.
    let (ok, _, err) = convene(&[
        "admin",
        "--server",
        &url,
        "--ca-cert",
        &ca,
        "--token",
        ADMIN,
        "stats",
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("cannot reach the admin API"), "{err}");
    // Without the CA the server's certificate is not trusted.
    let (ok, _, err) = convene(&[
        "admin",
        "--server",
        &url,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
        "--token",
        ADMIN,
        "stats",
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("cannot reach the admin API"), "{err}");
    // TLS files with an http:// URL are a mistake, said as such.
    let plain = format!("http://127.0.0.1:{}", s.admin_addr.unwrap().port());
    let (ok, _, err) = convene(&[
        "admin",
        "--url",
        &plain,
        "--ca-cert",
        &ca,
        "--token",
        ADMIN,
        "stats",
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("https://"), "{err}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convene_admin_meeting_attendance_shows_who_came_and_left() {
    use convene_server::events::{EventKind, LeaveReason, Who};
    let s = convene_server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: Some(ADMIN.into()),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    })
    .await
    .unwrap();
    let url = format!("http://{}", s.admin_addr.unwrap());
    // What a room hands over when two join and one is removed.
    let who = |pid: u32, user: &str| Who {
        participant_id: pid,
        user_id: user.into(),
        display_name: format!("{user} (name)"),
        node_id: 0,
    };
    let events = &s.state.events;
    events.emit("standup", EventKind::ParticipantJoined(who(7, "ana")));
    events.emit("standup", EventKind::ParticipantJoined(who(8, "ben")));
    events.emit(
        "standup",
        EventKind::ParticipantLeft(who(7, "ana"), LeaveReason::Removed),
    );
    let base = [
        "admin",
        "--url",
        &url,
        "--token",
        ADMIN,
        "meeting",
        "attendance",
    ];

    let (ok, out, err) = convene(&[&base[..], &["standup", "--json"]].concat()).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["user_id"], "ana", "{v}");
    assert_eq!(v[0]["display_name"], "ana (name)", "{v}");
    assert_eq!(v[0]["reason"], "removed", "{v}");
    assert!(v[0]["left_at_ms"].as_u64().is_some(), "{v}");
    assert_eq!(v[1]["participant_id"], 8, "{v}");
    assert_eq!(v[1]["left_at_ms"], serde_json::Value::Null, "{v}");

    let (ok, out, err) = convene(&[&base[..], &["standup"]].concat()).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].contains("JOINED (UTC)"), "{out}");
    assert!(
        lines[1].contains("ana") && lines[1].ends_with("removed"),
        "{out}"
    );
    assert!(
        lines[2].contains("ben") && lines[2].ends_with("(in the meeting)"),
        "{out}"
    );

    let (ok, out, err) = convene(&[&base[..], &["nobody"]].concat()).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "no attendance recorded for nobody");
    let (ok, _, err) = convene(&[&base[..], &["bad id!"]].concat()).await;
    assert!(!ok);
    assert!(err.contains("InvalidArgument"), "{err}");
    s.shutdown().await;
}
