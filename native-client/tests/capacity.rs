//! Capacity governance with real servers: a node driven past its egress,
//! CPU or fan-out delay threshold by `convene load` refuses newcomers with
//! SERVER_BUSY while every participant already in keeps receiving, reports it
//! on `/load`, and `convene stream` given several servers moves on to one
//! that takes it (or that it can reach at all).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use convene_server::config::Config;
use tokio::io::AsyncReadExt;

const DEADLINE: Duration = Duration::from_secs(30);

async fn server(tweak: impl FnOnce(&mut Config)) -> convene_server::Server {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    tweak(&mut config);
    convene_server::start(config).await.expect("server starts")
}

/// `/load` of a server, as JSON.
async fn load_of(s: &convene_server::Server) -> serde_json::Value {
    use tokio::io::AsyncWriteExt;
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /load HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).await.unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("/load is not JSON ({e}): {text}"))
}

fn convene(args: &[String]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_convene"));
    c.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_node_turns_newcomers_away_to_the_next_server_and_keeps_its_own() {
    // Node A refuses newcomers once it sends more than 1 Mbit/s; B has no limit.
    let a = server(|c| c.busy_egress_mbps = 1).await;
    let b = server(|_| {}).await;
    assert_eq!(load_of(&a).await["accepting"], true);

    // Ten participants on A, one publishing ~2 Mbit/s of video to nine: ~17 Mbit/s out.
    let mut args = common::server_args(&a);
    args.extend(
        "load -n 10 --video-bytes 8000 --ramp-up 0.5 --duration 8 --json"
            .split(' ')
            .map(String::from),
    );
    args.rotate_left(2); // the subcommand first
    let load = convene(&args).spawn().expect("convene load starts");

    let until = Instant::now() + DEADLINE;
    let report = loop {
        let r = load_of(&a).await;
        if r["accepting"] == false {
            break r;
        }
        assert!(Instant::now() < until, "A never became busy: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        report["busy"].as_str().unwrap().contains("Mbit/s"),
        "{report}"
    );
    assert!(report["egress_mbps"].as_f64().unwrap() > 1.0, "{report}");

    // A newcomer given A then B is refused by A (SERVER_BUSY) and streams to B.
    let a_url = format!("http://{}", a.addr);
    let b_url = format!("http://{}", b.addr);
    let stream_args: Vec<String> = [
        "stream",
        "--server",
        &format!("{a_url},{b_url}"),
        "--meeting-id",
        "elsewhere",
        "--source",
        "test-pattern",
        "--resolution",
        "160x96",
        "--fps",
        "10",
        "--duration",
        "1.5",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = convene(&stream_args).output().await.unwrap();
    moved_on(&out, "SERVER_BUSY", &b_url);

    // Nobody already on A was dropped for it: the load run lost nothing.
    let out = load.wait_with_output().await.unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "convene load printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(r["joined"], 10, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["received"], r["expected"], "{r}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_past_its_cpu_threshold_refuses_joins_with_server_busy() {
    // A threshold any real load passes: 1 % of the worker threads.
    refuses_newcomers_once_busy(|c| c.busy_cpu_percent = 1, "CPU at").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_frames_wait_in_queues_refuses_joins_with_server_busy() {
    // Writes coalesced for 5 ms make every frame wait at least that long in its
    // subscriber's queue: past a 1 ms fan-out delay threshold under any load.
    refuses_newcomers_once_busy(
        |c| {
            c.coalesce_ms = 5;
            c.busy_queue_delay_ms = 1;
        },
        "frames waiting",
    )
    .await;
}

/// Drives a server configured by `tweak` with `convene load` until `/load`
/// reports a busy reason containing `reason`, then checks a newcomer is
/// refused with it and that nobody already in lost a frame.
async fn refuses_newcomers_once_busy(tweak: impl FnOnce(&mut Config), reason: &str) {
    let a = server(tweak).await;
    let mut args = common::server_args(&a);
    args.extend(
        "load -n 20 --publishers 2 --video-bytes 8000 --ramp-up 0.5 --duration 6 --json"
            .split(' ')
            .map(String::from),
    );
    args.rotate_left(2);
    let load = convene(&args).spawn().expect("convene load starts");
    let until = Instant::now() + DEADLINE;
    loop {
        let r = load_of(&a).await;
        if r["busy"].as_str().is_some_and(|b| b.contains(reason)) {
            assert_eq!(r["accepting"], false, "{r}");
            break;
        }
        assert!(Instant::now() < until, "never busy for {reason:?}: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A newcomer with only this server is told why and keeps trying.
    let out = convene(
        &[
            "stream",
            "--server",
            &format!("http://{}", a.addr),
            "--meeting-id",
            "late",
            "--source",
            "test-pattern",
            "--resolution",
            "160x96",
            "--duration",
            "1.5",
        ]
        .map(String::from),
    )
    .output()
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SERVER_BUSY") && stderr.contains(reason),
        "{stderr}"
    );
    let out = load.wait_with_output().await.unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "convene load printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // Joins during the ramp-up may already have met the threshold; whoever
    // got in receives everything.
    assert!(r["joined"].as_u64().unwrap() >= 2, "{r}");
    assert_eq!(r["lost"], 0, "those already in lose nothing: {r}");
    assert_eq!(r["received"], r["expected"], "{r}");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moves_past_a_server_it_cannot_reach() {
    // A port nothing listens on: bound, then released.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let b = server(|_| {}).await;
    let b_url = format!("http://{}", b.addr);
    let out = convene(
        &[
            "stream",
            "--server",
            &format!("{dead_url},{b_url}"),
            "--meeting-id",
            "failover",
            "--source",
            "test-pattern",
            "--resolution",
            "160x96",
            "--fps",
            "10",
            "--duration",
            "1",
            "--json",
        ]
        .map(String::from),
    )
    .output()
    .await
    .unwrap();
    moved_on(&out, "cannot connect", &b_url);
    b.shutdown().await;
}

/// Checks a `convene stream --json` run left its first server for `why`,
/// said it was trying `b_url`, and streamed there.
fn moved_on(out: &std::process::Output, why: &str, b_url: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(why) && stderr.contains(&format!("trying {b_url}")),
        "{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["server"], b_url, "{summary}");
    assert!(
        summary["video_frames_sent"].as_u64().unwrap() > 0,
        "{summary}"
    );
}
