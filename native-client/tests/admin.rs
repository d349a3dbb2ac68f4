//! `convene admin` against a real server's admin API: stats and the meeting
//! list with the right token; a clear refusal with a wrong one.

use std::process::Stdio;

use convene_server::config::Config;

const ADMIN: &str = "admin-token-for-the-cli-test";

async fn convene(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_convene"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("CONVENE_ADMIN_TOKEN")
        .output()
        .await
        .expect("convene runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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
