//! `convene stream` and `convene receive` as a user runs them: the real
//! binaries against a real server on loopback, H.264 through OpenH264, the
//! test pattern's counter and clock read back out of decoded pictures.

use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{DEADLINE, Running, json, n, server_args, server_on, track, words};
use convene_server::config::Config;
use convene_testkit::{Impairment, UdpRelay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_pattern_streamed_over_webtransport_decodes_with_its_counter_rising() {
    let s = server_on(0, true).await;
    let meeting = "pattern-wt";
    let mut stream_args = server_args(&s);
    stream_args.extend(words(&format!(
        "--transport wt --meeting-id {meeting} --user-id camera-1 --source test-pattern \
         --resolution 320x240 --fps 15 --bitrate-kbps 400 --frame-format YUYV --audio tone"
    )));
    let stream = Running::start("stream", &stream_args);
    stream.wait_for_line("streaming 320x240@15").await;

    let dump = std::env::temp_dir().join(format!("convene-dump-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dump);
    let mut recv_args = server_args(&s);
    recv_args.extend(words(&format!(
        "--transport wt --meeting-id {meeting} --frames 30 --duration 60 --json --dump-every 10 --y4m --dump-dir"
    )));
    recv_args.push(dump.display().to_string());
    let (ok, out, err) = Running::start("receive", &recv_args).finish().await;
    let report = json(ok, &out, &err);
    assert_eq!(report["transport"], "WebTransport");

    let video = track(&report, "video");
    assert_eq!(video["display_name"], "camera-1");
    assert_eq!(video["codec"], "avc1.42E01F");
    assert_eq!((n(video, "width"), n(video, "height")), (320, 240));
    let decoded = n(video, "frames_decoded");
    assert!(decoded >= 30, "decoded {decoded}");
    // Every decoded picture carried a readable stamp, in order.
    assert_eq!(n(video, "stamps_read"), decoded);
    assert_eq!(n(video, "counter_regressions"), 0);
    let (first, last) = (n(video, "first_counter"), n(video, "last_counter"));
    assert!(last >= first + 29, "counter went {first} -> {last}");
    assert_eq!(n(video, "lost"), 0);
    // Latency was measured from the clock drawn in the picture.
    let glass = n(video, "glass_latency_ms_p50");
    assert!(
        glass < 10_000,
        "a glass-to-glass latency of {glass} ms is not a reading"
    );

    // The tone, in Opus: decoded at its level and pitch, and written out.
    let audio = track(&report, "audio");
    assert_eq!(audio["codec"], "opus");
    let frames = n(audio, "frames_received");
    assert!(frames > 0);
    assert_eq!(n(audio, "frames_decoded"), frames);
    assert_eq!(n(audio, "decode_errors"), 0);
    let level = audio["audio_level_dbfs"].as_f64().unwrap();
    assert!(
        (level + 15.0).abs() < 1.5,
        "the tone arrived at {level} dBFS"
    );
    let hz = audio["audio_hz"].as_f64().unwrap();
    assert!(
        (hz - 440.0).abs() < 4.4,
        "the 440 Hz tone was heard at {hz} Hz"
    );
    let wav = dump.join(format!(
        "p{}-t{}.wav",
        n(audio, "participant_id"),
        n(audio, "track_id")
    ));
    let wav = std::fs::read(&wav).unwrap_or_else(|e| panic!("{}: {e}", wav.display()));
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 48_000);
    // 20 ms of 16-bit samples a frame, a frame of silence at most for the
    // odd late one.
    let samples = (wav.len() as u64 - 44) / 2;
    assert!(
        (frames * 960..=(frames + 2) * 960).contains(&samples),
        "{samples} samples for {frames} frames"
    );

    // Pictures a person can open: PNGs of the stream's size, and a Y4M file.
    let pngs: Vec<_> = std::fs::read_dir(&dump)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    assert_eq!(pngs.len() as u64, n(video, "pictures_written"));
    assert!(pngs.len() >= 3, "{pngs:?}");
    let png = std::fs::read(&pngs[0]).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[16..24], &[0, 0, 1, 64, 0, 0, 0, 240], "IHDR 320x240");
    let y4m = std::fs::read_dir(&dump)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "y4m"))
        .expect("a Y4M file");
    let y4m = std::fs::read(y4m).unwrap();
    assert!(y4m.starts_with(b"YUV4MPEG2 W320 H240 "));
    let frame_bytes = 6 + 320 * 240 * 3 / 2;
    let header = y4m.iter().position(|&b| b == b'\n').unwrap() + 1;
    assert_eq!((y4m.len() - header) % frame_bytes, 0);
    assert_eq!(
        ((y4m.len() - header) / frame_bytes) as u64,
        n(video, "pictures_written")
    );
    let _ = std::fs::remove_dir_all(&dump);
    drop(stream);
    s.shutdown().await;
}

/// A publisher whose own path is slow (250 ms each way through a relay)
/// takes its camera's bitrate down by itself: it is alone in the meeting,
/// so no congestion hint from the server can be the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_lowers_its_bitrate_on_a_slow_path_by_itself() {
    let s = server_on(0, true).await;
    let slow = Impairment {
        delay: Duration::from_millis(250),
        ..Impairment::NONE
    };
    let relay = UdpRelay::start(s.wt_addr.unwrap(), slow, slow, 7)
        .await
        .unwrap();
    let mut args = server_args(&s);
    args.extend(words(&format!(
        "--webtransport-port {} --transport wt --meeting-id slow-path --source test-pattern \
         --resolution 160x96 --fps 10 --bitrate-kbps 800 --duration 20 --json",
        relay.addr().port()
    )));
    let (ok, out, err) = Running::start("stream", &args).finish().await;
    let summary = json(ok, &out, &err);
    // The relay carried the session: WebTransport, at the relay's port.
    assert_eq!(summary["transport"], "WebTransport", "{summary}");
    assert!(
        relay
            .stats()
            .forwarded
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    assert_eq!(n(&summary, "congestion_hints"), 0, "{summary}");
    assert!(n(&summary, "min_bitrate_kbps") < 800, "{summary}");
    assert!(n(&summary, "bitrate_changes") >= 1, "{summary}");
    assert_eq!(summary["path"], "congested", "{summary}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscriber_is_answered_with_a_key_frame() {
    let s = server_on(0, false).await;
    let meeting = "late-joiner";
    // Key frames only on request: the periodic one is ten minutes away.
    let mut stream_args = server_args(&s);
    stream_args.extend(words(&format!(
        "--meeting-id {meeting} --source test-pattern --resolution 256x144 --fps 15 \
         --key-interval 600 --frame-format MJPEG --duration 30 --json"
    )));
    let stream = Running::start("stream", &stream_args);
    stream.wait_for_line("streaming 256x144@15").await;
    // Let the stream's opening key frame go by with nobody there.
    stream.wait_for_line("fps").await;

    let mut recv_args = server_args(&s);
    recv_args.extend(words(&format!(
        "--meeting-id {meeting} --frames 10 --duration 30 --json"
    )));
    let (ok, out, err) = Running::start("receive", &recv_args).finish().await;
    let report = json(ok, &out, &err);
    let video = track(&report, "video");
    assert!(n(video, "frames_decoded") >= 10, "{video}");
    assert!(n(video, "key_frames_received") >= 1, "{video}");
    assert_eq!((n(video, "width"), n(video, "height")), (256, 144));
    assert_eq!(n(video, "counter_regressions"), 0);
    // The stream was already running: the first picture started from a key
    // frame sent because we subscribed, not from the stream's start.
    assert!(n(video, "first_counter") > 0, "{video}");

    let mut stream = stream;
    stream.child.kill().unwrap();
    let _ = stream.child.wait();
    assert!(stream.count_lines("streaming") >= 1);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_counts_key_frame_requests_in_its_summary() {
    let s = server_on(0, false).await;
    let meeting = "kfr-count";
    let mut stream_args = server_args(&s);
    stream_args.extend(words(&format!(
        "--meeting-id {meeting} --source test-pattern --resolution 160x96 --fps 10 \
         --key-interval 600 --duration 4 --json"
    )));
    let stream = Running::start("stream", &stream_args);
    stream.wait_for_line("streaming 160x96@10").await;
    let mut recv_args = server_args(&s);
    recv_args.extend(words(&format!(
        "--meeting-id {meeting} --frames 3 --duration 20 --json"
    )));
    let (ok, out, err) = Running::start("receive", &recv_args).finish().await;
    json(ok, &out, &err);
    let (ok, out, err) = stream.finish().await;
    let summary = json(ok, &out, &err);
    assert!(n(&summary, "key_frame_requests") >= 1, "{summary}");
    // Over WebSocket the stream pings for its round trip (QUIC gives it on WebTransport).
    assert_eq!(summary["transport"], "WebSocket");
    assert!(summary["rtt_ms"].as_f64().is_some(), "{summary}");
    // The opening key frame, and at least one more for the receiver.
    assert!(n(&summary, "key_frames") >= 2, "{summary}");
    assert!(n(&summary, "video_frames_sent") > 0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_reconnects_when_the_server_comes_back() {
    let s = server_on(0, false).await;
    let port = s.addr.port();
    let mut stream_args = server_args(&s);
    stream_args.extend(words(
        "--meeting-id comeback --source test-pattern --resolution 160x96 --fps 10 --duration 60 --json",
    ));
    let stream = Running::start("stream", &stream_args);
    stream.wait_for_line("streaming 160x96@10").await;
    s.shutdown().await;
    stream.wait_for_line("lost the server").await;
    // Same address again, as a restarted server would be.
    let s = server_on(port, false).await;
    let until = Instant::now() + DEADLINE;
    while stream.count_lines("streaming 160x96@10") < 2 {
        assert!(
            Instant::now() < until,
            "{:?}",
            stream.stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And it publishes again: a receiver decodes it.
    let mut recv_args = server_args(&s);
    recv_args.extend(words(
        "--meeting-id comeback --frames 3 --duration 30 --json",
    ));
    let (ok, out, err) = Running::start("receive", &recv_args).finish().await;
    let report = json(ok, &out, &err);
    assert!(n(track(&report, "video"), "frames_decoded") >= 3);
    drop(stream);
    s.shutdown().await;
}

/// Runs `convene` to the end, off the runtime.
async fn run_to_end(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_convene"))
            .args(args)
            .output()
            .expect("convene runs")
    })
    .await
    .unwrap()
}

fn one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, not {lines:?}");
    lines[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_one_line_that_says_what_to_do() {
    // Nothing listens on this port.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    for sub in ["stream", "receive"] {
        let mut args = words(&format!("{sub} --server {dead} --meeting-id m"));
        if sub == "stream" {
            args.extend(words("--source test-pattern"));
        }
        let out = run_to_end(args).await;
        let line = one_line_error(&out);
        assert!(line.contains("cannot connect"), "{line}");
        assert!(line.contains("--server"), "{line}");
    }

    // No such camera: the error points at the test pattern.
    let out = run_to_end(words(
        "stream --server http://127.0.0.1:1 --meeting-id m --source camera --video-device-index 99",
    ))
    .await;
    let line = one_line_error(&out);
    assert!(line.contains("--source test-pattern"), "{line}");
    assert!(line.contains("99"), "{line}");

    // The server refuses the join: said once, not retried.
    let s = server_on(0, false).await;
    let mut args = words("stream --meeting-id bad!id --source test-pattern");
    args.extend(server_args(&s));
    let out = run_to_end(args).await;
    let line = one_line_error(&out);
    assert!(line.contains("INVALID_MEETING_ID"), "{line}");
    s.shutdown().await;

    // A bad flag: clap's usage error, exit code 2.
    let out = run_to_end(words("stream --meeting-id m --resolution 100x100")).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_minted_by_convene_token_are_accepted_and_bad_ones_refused_in_one_line() {
    let secret = "a-shared-secret-for-this-test-0123456789";
    let s = {
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            auth_secret: Some(secret.into()),
            ..Config::default()
        };
        convene_server::start(config).await.expect("server starts")
    };
    let mint = |user: &str, grants: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_convene"))
            .args(words(&format!(
                "token --meeting tok-* --user {user} --grants {grants} --ttl 600"
            )))
            .env("CONVENE_AUTH_SECRET", secret)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };

    // No token, and a token signed with another secret.
    for token in [None, Some("eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjF9.c2lnbmF0dXJl")] {
        let mut args = words("stream --meeting-id tok-1 --source test-pattern");
        args.extend(server_args(&s));
        if let Some(t) = token {
            args.extend(["--token".to_string(), t.to_string()]);
        }
        let line = one_line_error(&run_to_end(args).await);
        assert!(line.contains("--token"), "{line}");
        assert!(line.contains("AUTH_"), "{line}");
    }
    // A token without publish_video: refused when publishing, said once.
    let watcher_only = mint("viewer", "subscribe");
    let mut args = words("stream --meeting-id tok-1 --source test-pattern --token");
    args.push(watcher_only.clone());
    args.extend(server_args(&s));
    let line = one_line_error(&run_to_end(args).await);
    assert!(line.contains("PERMISSION_DENIED"), "{line}");

    // Good tokens: the stream publishes, the receiver decodes, and the name
    // it reports is the token's user.
    let mut stream_args = words(
        "--meeting-id tok-1 --user-id not-my-name --source test-pattern --resolution 160x96 --fps 10 --token",
    );
    stream_args.push(mint("camera-7", "publish_video,subscribe"));
    stream_args.extend(server_args(&s));
    let stream = Running::start("stream", &stream_args);
    stream.wait_for_line("streaming 160x96@10").await;
    let mut recv_args = words("--meeting-id tok-1 --frames 3 --duration 30 --json --token");
    recv_args.push(watcher_only);
    recv_args.extend(server_args(&s));
    let (ok, out, err) = Running::start("receive", &recv_args).finish().await;
    let report = json(ok, &out, &err);
    let video = track(&report, "video");
    assert!(n(video, "frames_decoded") >= 3);
    assert_eq!(video["display_name"], "camera-7");
    drop(stream);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_waits_in_a_waiting_room_until_a_moderator_admits_it() {
    use convene_protocol::v1::{self, client_message::Msg as C, server_message::Msg as S};
    use convene_protocol::{ClientEvent, ClientSessionConfig};
    let secret = "a-shared-secret-for-the-waiting-room-0123";
    let s = {
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            auth_secret: Some(secret.into()),
            waiting_rooms: vec!["lobby".into()],
            ..Config::default()
        };
        convene_server::start(config).await.expect("server starts")
    };
    let mint = |user: &str, grants: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_convene"))
            .args(words(&format!(
                "token --meeting lobby --user {user} --grants {grants}"
            )))
            .env("CONVENE_AUTH_SECRET", secret)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    // The stream arrives first and waits; the join timeout does not apply there.
    let mut args =
        words("--meeting-id lobby --source test-pattern --resolution 160x96 --fps 10 --token");
    args.push(mint("camera", "publish_video"));
    args.extend(server_args(&s));
    let stream = Running::start("stream", &args);
    stream.wait_for_line("waiting for a moderator").await;

    // A moderator joins, hears who waits, and admits it.
    let endpoint = convene_client::Endpoint::new(&format!("http://{}", s.addr)).unwrap();
    let config = ClientSessionConfig {
        auth_token: mint("host", "moderate,subscribe"),
        ..ClientSessionConfig::default()
    };
    let mut host = convene_client::Client::connect(
        &endpoint,
        convene_client::TransportChoice::WebSocket,
        config,
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut waiting_pid = None;
    let mut streaming_seen = false;
    while !streaming_seen {
        let ev = tokio::time::timeout_at(deadline, host.next_event())
            .await
            .expect("the moderator hears the waiting stream and sees it publish");
        match ev {
            Some(ClientEvent::Welcome(_)) => {
                host.join("lobby", "host", true).unwrap();
            }
            Some(ClientEvent::Room(S::AdmissionRequest(r))) => {
                let pid = r.participant.unwrap().participant_id;
                waiting_pid = Some(pid);
                host.send(C::Admit(v1::Admit {
                    participant_id: pid,
                }))
                .unwrap();
            }
            Some(ClientEvent::Room(S::TrackPublished(p)))
                if Some(p.participant_id) == waiting_pid =>
            {
                streaming_seen = true;
            }
            Some(ClientEvent::Closed) | None => panic!("the moderator's session ended"),
            _ => {}
        }
    }
    stream.wait_for_line("streaming 160x96@10").await;
    drop(stream);
    s.shutdown().await;
}
