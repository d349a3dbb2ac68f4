//! `--e2ee` as a user runs it: `convene stream` and `convene receive` in one
//! encrypted meeting on a real server, with the server's tap recording what
//! it routed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

mod common;

use common::{DEADLINE, Running, json, n, server_args, track, words};
use convene_protocol::MediaFrame;
use convene_protocol::e2ee;
use convene_protocol::sframe::{Header, KeyContext};
use convene_server::config::{Config, Fault};
use convene_server::state::Tapped;

async fn server(fault: Option<Fault>) -> convene_server::Server {
    convene_server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        test_fault: fault,
        ..Config::default()
    })
    .await
    .expect("server starts")
}

/// Collects what the tap saw so far.
fn drain(
    tap: &mut tokio::sync::mpsc::UnboundedReceiver<Tapped>,
    frames: &mut Vec<MediaFrame>,
    keys: &mut Vec<(u32, Vec<u8>)>,
) {
    while let Ok(t) = tap.try_recv() {
        match t {
            Tapped::Media(b) => frames.push(MediaFrame::parse(b).expect("routed frames parse")),
            Tapped::E2ee { from, payload } => keys.push((from, payload.to_vec())),
        }
    }
}

fn generation(f: &MediaFrame) -> u32 {
    Header::parse(&f.payload()).expect("an SFrame header").0.kid as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_meeting_decodes_for_members_only_and_the_server_sees_ciphertext() {
    let s = server(None).await;
    let mut tap = s.state.tap().expect("first tap");
    let meeting = "e2ee-native";
    let base = server_args(&s);
    let with = |extra: &str| {
        let mut a = base.clone();
        a.extend(words(extra));
        a
    };
    // A member who stays, one who leaves early, and someone without the keys.
    let stays = Running::start(
        "receive",
        &with(&format!(
            "--meeting-id {meeting} --user-id stays --e2ee --json --duration 60 --frames 60"
        )),
    );
    let leaves = Running::start(
        "receive",
        &with(&format!(
            "--meeting-id {meeting} --user-id leaves --e2ee --json --frames 5 --duration 60"
        )),
    );
    let outsider = Running::start(
        "receive",
        &with(&format!(
            "--meeting-id {meeting} --user-id outsider --json --duration 15"
        )),
    );
    for r in [&stays, &leaves, &outsider] {
        r.wait_for_line("watching").await;
    }
    let stream = Running::start(
        "stream",
        &with(&format!(
            "--meeting-id {meeting} --user-id cam --source test-pattern --resolution 320x240 \
             --fps 15 --bitrate-kbps 300 --audio tone --e2ee --json --duration 60"
        )),
    );
    stream
        .wait_for_line("end-to-end encrypted; safety code")
        .await;

    let (mut frames, mut keys) = (Vec::new(), Vec::new());
    // `leaves` stops after 5 pictures; the key in use then must be retired.
    let (ok, out, err) = leaves.finish().await;
    let left = json(ok, &out, &err);
    assert!(n(track(&left, "video"), "frames_decoded") >= 5, "{left}");
    drain(&mut tap, &mut frames, &mut keys);
    let cam = frames.last().expect("frames were routed").header().sender;
    let before: u32 = frames
        .iter()
        .filter(|f| f.header().sender == cam)
        .map(generation)
        .max()
        .unwrap();
    let until = Instant::now() + DEADLINE;
    loop {
        drain(&mut tap, &mut frames, &mut keys);
        if frames
            .iter()
            .any(|f| f.header().sender == cam && generation(f) > before)
        {
            break;
        }
        assert!(Instant::now() < until, "no new key after a member left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (ok, out, err) = stays.finish().await;
    let stayed = json(ok, &out, &err);
    let video = track(&stayed, "video");
    assert!(n(video, "frames_decoded") >= 60, "{stayed}");
    assert_eq!(n(video, "decode_errors"), 0, "{stayed}");
    assert!(
        n(track(&stayed, "audio"), "frames_received") > 0,
        "{stayed}"
    );
    assert!(n(&stayed["e2ee"], "decrypted") >= 60, "{stayed}");
    assert_eq!(n(&stayed["e2ee"], "rejected"), 0, "{stayed}");
    // The streamer showed the same safety code as the member who stayed.
    let code = stayed["e2ee"]["safety_code"].as_str().unwrap();
    assert_eq!(code.len(), 23, "{code}");
    assert!(
        stream.count_lines(code) > 0,
        "stream never showed {code}: {:?}",
        stream.stderr.lock().unwrap()
    );

    // Without the keys: frames arrive, nothing decodes.
    let (ok, out, err) = outsider.finish().await;
    let outside = json(ok, &out, &err);
    let v = track(&outside, "video");
    assert!(n(v, "frames_received") > 10, "{outside}");
    assert_eq!(n(v, "frames_decoded"), 0, "{outside}");
    drop(stream);
    drain(&mut tap, &mut frames, &mut keys);

    // What the server routed: SFrame with the sender's own KID, never the
    // plaintext's Annex B start codes, and no key anywhere in the E2EE
    // payloads it carried (every 16-byte window tried as the base key).
    let cams: Vec<&MediaFrame> = frames.iter().filter(|f| f.header().sender == cam).collect();
    assert!(cams.len() > 60);
    let mut kids = BTreeSet::new();
    for f in &cams {
        let p = f.payload();
        let (h, len) = Header::parse(&p).unwrap();
        assert_eq!((h.kid >> 32) as u32, cam, "KID names the sender");
        kids.insert(h.kid);
        assert!(
            !p[len..].windows(4).any(|w| w == [0, 0, 0, 1]),
            "an H.264 start code in the ciphertext of track {} frame {}",
            f.header().track_id,
            f.header().sequence
        );
    }
    assert!(kids.len() >= 2, "keys rotated: {kids:?}");
    let sample: Vec<&MediaFrame> = cams.iter().rev().step_by(7).take(8).copied().collect();
    let mut tried = 0;
    for (_, payload) in &keys {
        for w in payload.windows(e2ee::BASE_KEY_LEN) {
            for f in &sample {
                let p = f.payload();
                let (h, len) = Header::parse(&p).unwrap();
                let meta = e2ee::media_metadata(f.header(), f.config());
                assert!(
                    KeyContext::derive(e2ee::SUITE, h.kid, w)
                        .decrypt(&p, h, len, &meta)
                        .is_err()
                );
                tried += 1;
            }
        }
    }
    assert!(
        tried > 1000,
        "the key exchange went through the server: {tried}"
    );
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_frames_are_refused_and_counted_and_never_decoded() {
    let s = server(Some(Fault::TamperMedia)).await;
    let meeting = "e2ee-tamper";
    let base = server_args(&s);
    let mut rx = base.clone();
    rx.extend(words(&format!(
        "--meeting-id {meeting} --e2ee --json --frames 40 --duration 60"
    )));
    let receiver = Running::start("receive", &rx);
    receiver.wait_for_line("watching").await;
    let mut tx = base.clone();
    tx.extend(words(&format!(
        "--meeting-id {meeting} --source test-pattern --resolution 320x240 --fps 15 --e2ee --duration 60"
    )));
    let stream = Running::start("stream", &tx);
    let (ok, out, err) = receiver.finish().await;
    drop(stream);
    let r = json(ok, &out, &err);
    let stats = &r["e2ee"];
    assert!(
        n(stats, "rejected") >= 2,
        "every tenth frame was altered: {r}"
    );
    assert!(n(stats, "decrypted") >= 40, "{r}");
    // Refused frames never reach the decoder: it sees gaps (and asks for key
    // frames), not garbage.
    assert_eq!(n(track(&r, "video"), "decode_errors"), 0, "{r}");
    assert!(n(track(&r, "video"), "frames_decoded") >= 40, "{r}");
}
