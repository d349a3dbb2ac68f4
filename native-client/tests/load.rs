//! `convene load` as a user runs it: the real binary against a real server
//! on loopback, its JSON parsed and its counts checked.

use std::process::Command;

mod common;

use common::{server_args, server_on, words};

async fn server(tls: bool) -> convene_server::Server {
    server_on(0, tls).await
}

/// Runs `convene load` off the async runtime (the server runs on it).
async fn load(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_convene"))
            .arg("load")
            .args(args)
            .output()
            .expect("convene runs")
    })
    .await
    .unwrap()
}

/// Runs `convene load` against `s` with the options in `options`.
async fn load_on(s: &convene_server::Server, options: &str) -> std::process::Output {
    let mut args = server_args(s);
    args.extend(words(options));
    load(args).await
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "convene load failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_participants_over_websocket_lose_nothing_and_the_counts_add_up() {
    let s = server(false).await;
    let r = json(
        &load_on(
            &s,
            "-n 50 --rooms 2 --publishers 2 --duration 2 --ramp-up 0.5 --json",
        )
        .await,
    );
    assert_eq!(n(&r, "joined"), 50);
    assert_eq!(n(&r, "failed"), 0);
    assert_eq!(r["transports"][0][0], "WebSocket");
    let sent = n(&r, "sent_audio") + n(&r, "sent_video");
    // Two rooms of 25 with 2 publishers each: every frame is owed to 24 others.
    assert_eq!(n(&r, "expected"), sent * 24);
    // The publishers sent through the window, not for a moment. Their rate
    // is not checked here: ticks are late (and skipped) on a busy machine,
    // and the rate is what `cargo xtask bench` measures. Nominally 4 x 100.
    assert!(
        n(&r, "sent_audio") >= 4 * 10,
        "four publishers sent audio through the 2 s window: {}",
        n(&r, "sent_audio")
    );
    assert_eq!(n(&r, "received"), n(&r, "expected"), "no loss on loopback");
    assert_eq!(
        n(&r, "received"),
        n(&r, "received_audio") + n(&r, "received_video")
    );
    assert_eq!(n(&r, "lost"), 0);
    assert_eq!(n(&r, "sequence_gaps"), 0);
    assert!(r["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(r["connect_ms"]["max"].as_f64().unwrap() > 0.0);
    s.shutdown().await;
}

/// With `--server-pid`, the report says what the server spent: CPU per
/// delivered frame and memory per connection (here the server is this test
/// process, which holds the 20 connections while `convene load` runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_cpu_and_memory_per_connection_are_reported() {
    let s = server(false).await;
    let options = format!(
        "-n 20 --duration 1 --ramp-up 0.2 --json --server-pid {}",
        std::process::id()
    );
    let r = json(&load_on(&s, &options).await);
    assert_eq!(n(&r, "joined"), 20);
    assert!(r["server_cpu_us_per_frame"].as_f64().unwrap() > 0.0, "{r}");
    let before = n(&r, "server_rss_kib_before");
    let after = n(&r, "server_rss_kib_after");
    assert!(before > 0 && after > 0, "{r}");
    let per = r["server_kib_per_connection"].as_f64().unwrap();
    assert!(
        (per - (after as f64 - before as f64) / 20.0).abs() < 1e-6,
        "{r}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_over_webtransport_delivers_every_video_frame() {
    let s = server(true).await;
    let r = json(&load_on(&s, "-n 10 --duration 2 --ramp-up 0.2 --transport wt --json").await);
    assert_eq!(r["transports"][0][0], "WebTransport");
    assert_eq!(n(&r, "joined"), 10);
    // Video travels on streams, which QUIC makes reliable: all of it arrives.
    assert_eq!(n(&r, "received_video"), n(&r, "sent_video") * 9);
    assert_eq!(
        n(&r, "expected"),
        (n(&r, "sent_audio") + n(&r, "sent_video")) * 9
    );
    assert_eq!(n(&r, "received") + n(&r, "lost"), n(&r, "expected"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webtransport_on_another_port_is_found_from_the_servers_alt_svc() {
    let s = convene_server::start(convene_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        dev_tls: true,
        // Another UDP port than the HTTPS one (both picked by the kernel).
        webtransport_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..convene_server::Config::default()
    })
    .await
    .expect("server starts");
    // No --webtransport-port: the client has to ask.
    let r = json(&load_on(&s, "-n 3 --duration 1 --ramp-up 0.2 --transport wt --json").await);
    assert_eq!(r["transports"][0][0], "WebTransport");
    assert_eq!(n(&r, "joined"), 3);
    assert!(n(&r, "received") > 0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_fail_the_run_and_errors_say_what_to_do() {
    let s = server(false).await;
    let out = load_on(&s, "-n 2 --duration 0.5 --ramp-up 0 --max-p99-ms 0.000001").await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "a p99 above --max-p99-ms exits 1"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exceeds --max-p99-ms"), "{err}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("latency") && table.contains("delivered"),
        "{table}"
    );

    // Nothing listens here.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let out = load(vec![
        "--server".into(),
        format!("http://127.0.0.1:{port}"),
        "-n".into(),
        "1".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no participant could join") && err.contains("cannot reach"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let out = load(vec!["--server".into(), "ftp://x".into()]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad server URL"));
    s.shutdown().await;
}

/// The meeting section of a report.
fn meeting(r: &serde_json::Value) -> &serde_json::Value {
    let m = &r["meeting"];
    assert!(m.is_object(), "a meeting report: {r}");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_forwards_every_speakers_audio_and_only_the_last_n_cameras() {
    let s = server(false).await;
    let shape = "-n 14 --shape meeting --speakers 2 --cameras 6 --last-n 3 --loudest-audio 3 \
                 --video-fps 15 --duration 3 --ramp-up 0.5 --json";
    let r = json(&load_on(&s, shape).await);
    assert_eq!(n(&r, "joined"), 14);
    assert_eq!(r["selective_forwarding"], true);
    let m = meeting(&r);
    // The speakers' audio is owed to all 13 others, whatever is selected.
    assert!(n(m, "sent_speech") >= 2 * 10, "two speakers spoke: {m}");
    assert_eq!(n(&r, "expected"), n(m, "sent_speech") * 13);
    assert_eq!(
        n(m, "received_speech"),
        n(&r, "expected"),
        "no speech lost: {m}"
    );
    assert_eq!(n(&r, "sequence_gaps"), 0);
    // Loudest three: the two speakers and at most one of the twelve quiet
    // microphones reach a member, never all of them.
    assert!(n(m, "sent_comfort") > 0, "{m}");
    assert!(
        n(m, "received_comfort") < n(m, "comfort_owed"),
        "comfort noise is selected away: {m}"
    );
    // Last-3 video: no member receives more than three cameras (of six),
    // and each receives some.
    assert!(n(m, "cameras_received_max") <= 3, "last-N holds: {m}");
    assert!(
        n(m, "cameras_received_min") >= 1,
        "everyone sees someone: {m}"
    );
    // Small tiles ask for 180 lines: the smallest encoding flows.
    assert!(m["video_by_encoding"][0].as_u64().unwrap() > 0, "{m}");

    // The same meeting without selective forwarding: every camera reaches
    // every member in its one encoding, and all comfort noise too.
    let r = json(&load_on(&s, &format!("{shape} --meeting plain --without-sfu")).await);
    assert_eq!(r["selective_forwarding"], false);
    let m = meeting(&r);
    assert_eq!(n(m, "received_speech"), n(&r, "expected"), "{m}");
    assert_eq!(n(m, "received_comfort"), n(m, "comfort_owed"), "{m}");
    assert_eq!(n(m, "cameras_received_max"), 6, "{m}");
    assert_eq!(
        n(m, "cameras_received_min"),
        5,
        "a camera sees the five others: {m}"
    );
    let by_encoding = &m["video_by_encoding"];
    assert_eq!(by_encoding[0], 0, "{m}");
    assert_eq!(
        by_encoding[2].as_u64(),
        Some(n(&r, "received_video")),
        "{m}"
    );
}
