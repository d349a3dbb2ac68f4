//! The server runs the real `convene record` (PROTOCOL.md §5.10): a
//! moderator's StartRecording makes the node start it with a token of its
//! own; everyone sees it join recording; a second Start is refused; Stop
//! makes it finish and leave; the process is reaped and its files are on
//! disk under <recordings dir>/<meeting>/<UTC time>/.

use std::time::Duration;

mod common;

use common::{DEADLINE, Running, words};
use convene_client::Client;
use convene_protocol::auth::Claims;
use convene_protocol::v1::{self, client_message::Msg as C, server_message::Msg as S};
use convene_protocol::{ClientEvent, ClientSessionConfig, ErrorCode, FEATURE_RECORDING};
use convene_server::config::Config;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!";

fn token(meeting: &str, sub: &str, grants: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let c = Claims {
        sub: sub.into(),
        meeting: meeting.into(),
        grants: grants.iter().map(|g| g.to_string()).collect(),
        exp: now + 600,
        ..Claims::default()
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &c,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn joined(s: &convene_server::Server, meeting: &str, token: String) -> Client {
    let config = ClientSessionConfig {
        auth_token: token,
        features: vec![FEATURE_RECORDING.into()],
        ..ClientSessionConfig::default()
    };
    common::joined_client(s, meeting, "Mo", config).await.0
}

/// Waits for a room message or error matching `pred`.
async fn until(c: &mut Client, pred: impl Fn(&ClientEvent) -> bool) -> ClientEvent {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match c.next_event().await {
                Some(e) if pred(&e) => return e,
                Some(ClientEvent::Closed) | None => panic!("the session ended"),
                _ => {}
            }
        }
    })
    .await
    .expect("in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderator_starts_and_stops_the_real_recorder() {
    let dir = std::env::temp_dir().join(format!("convene-recorder-started-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = convene_server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        auth_secret: Some(SECRET.into()),
        recorder_command: Some(env!("CARGO_BIN_EXE_convene").into()),
        recordings_dir: Some(dir.clone()),
        max_recorders: 1,
        ..Config::default()
    })
    .await
    .unwrap();
    let meeting = "rec-real";
    // Something to record: the test pattern and a tone.
    let mut stream_args = vec!["--server".to_string(), format!("http://{}", s.addr)];
    stream_args.extend(words(&format!(
        "--transport ws --meeting-id {meeting} --user-id camera-1 --source test-pattern \
         --resolution 320x240 --fps 15 --bitrate-kbps 300 --frame-format YUYV --audio tone --token {}",
        token(meeting, "camera-1", &["publish_audio", "publish_video"])
    )));
    let stream = Running::start("stream", &stream_args);
    stream.wait_for_line("streaming 320x240@15").await;

    let mut m = joined(
        &s,
        meeting,
        token(meeting, "mo", &["subscribe", "moderate"]),
    )
    .await;
    let rid = m.send(C::StartRecording(v1::StartRecording {})).unwrap();
    let ClientEvent::Room(S::RecordingAnswer(a)) = until(&mut m, |e| {
        matches!(
            e,
            ClientEvent::Room(S::RecordingAnswer(_)) | ClientEvent::Error(_)
        )
    })
    .await
    else {
        panic!("StartRecording refused")
    };
    assert!(a.recording && a.request_id == rid, "{a:?}");
    let out = dir.join(meeting).join(&a.name);
    assert!(out.is_dir(), "{}", out.display());
    let ClientEvent::Room(S::ParticipantJoined(j)) = until(&mut m, |e| matches!(e, ClientEvent::Room(S::ParticipantJoined(p)) if p.participant.as_ref().is_some_and(|p| p.recording))).await else {
        unreachable!()
    };
    let recorder = j.participant.unwrap().participant_id;
    // One per meeting.
    let again = m.send(C::StartRecording(v1::StartRecording {})).unwrap();
    let ClientEvent::Error(e) = until(
        &mut m,
        |e| matches!(e, ClientEvent::Error(e) if e.request_id == again),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(e.code, ErrorCode::AlreadyRecording as i32);
    // The node's maximum is one: another meeting waits its turn.
    let mut other = joined(
        &s,
        "rec-other",
        token("rec-other", "mo", &["subscribe", "moderate"]),
    )
    .await;
    let busy = other
        .send(C::StartRecording(v1::StartRecording {}))
        .unwrap();
    let ClientEvent::Error(e) = until(
        &mut other,
        |e| matches!(e, ClientEvent::Error(e) if e.request_id == busy),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(e.code, ErrorCode::TooManyRecorders as i32);
    // Wait until the pattern's pictures and the tone are in files, then stop.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let written = |suffix: &str| {
        std::fs::read_dir(&out).unwrap().flatten().any(|f| {
            f.file_name().to_string_lossy().ends_with(suffix)
                && f.metadata().is_ok_and(|m| m.len() > 4096)
        })
    };
    while !(written("-video.mp4") && written("-audio.mp4")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pictures and sound written in {}",
            out.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    m.send(C::StopRecording(v1::StopRecording {})).unwrap();
    until(
        &mut m,
        |e| matches!(e, ClientEvent::Room(S::ParticipantLeft(l)) if l.participant_id == recorder),
    )
    .await;
    tokio::time::timeout(DEADLINE, s.state.recorders.idle())
        .await
        .expect("the recorder exits and is reaped");
    // It finished its files on SIGTERM: the list of them is written last.
    let listed = std::fs::read_to_string(out.join("recording.json")).expect("recording.json");
    eprintln!("recorded: {listed}");
    assert!(
        listed.contains("-video.mp4") && listed.contains("-audio.mp4"),
        "{listed}"
    );
    // Its place is free again.
    other
        .send(C::StartRecording(v1::StartRecording {}))
        .unwrap();
    let ClientEvent::Room(S::RecordingAnswer(a)) = until(&mut other, |e| {
        matches!(
            e,
            ClientEvent::Room(S::RecordingAnswer(_)) | ClientEvent::Error(_)
        )
    })
    .await
    else {
        panic!("the second StartRecording was refused")
    };
    assert!(a.recording);
    other.send(C::StopRecording(v1::StopRecording {})).unwrap();
    tokio::time::timeout(DEADLINE, async {
        while s.state.recorders.running() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the second recorder exits and is reaped");
    drop(stream);
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
