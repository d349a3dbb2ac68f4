//! Selective forwarding as users run it (PROTOCOL.md §6.6): `convene stream
//! --simulcast` publishing three encodings, and `convene receive`s with
//! different wants and paths, through a real server on loopback; one
//! receiver behind a relay that carries 400 kbit/s.

mod common;

use common::{Running, json, n, server_args, server_on, track, words};
use convene_testkit::{Impairment, TcpImpairment, TcpRelay, UdpRelay};

/// 400 kbit/s, in bytes a second.
const NARROW: u64 = 50_000;

/// The video and audio tracks of a receive report.
fn tracks(report: &serde_json::Value) -> (&serde_json::Value, &serde_json::Value) {
    (track(report, "video"), track(report, "audio"))
}

/// Frames received of each encoding, smallest first.
fn by_encoding(video: &serde_json::Value) -> Vec<u64> {
    video["frames_by_encoding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// One simulcast publisher, three receivers: a v1 one and one that asks for
/// the full size, both on clean paths, and one that asks for the full size
/// behind a 400 kbit/s link.
async fn heterogeneous_meeting(wt: bool) {
    let s = server_on(0, wt).await;
    let meeting = if wt { "simulcast-wt" } else { "simulcast-ws" };
    let transport = if wt { "wt" } else { "ws" };
    let mut stream_args = server_args(&s);
    stream_args.extend(words(&format!(
        "--transport {transport} --meeting-id {meeting} --user-id camera --source test-pattern \
         --resolution 640x360 --fps 15 --bitrate-kbps 900 --simulcast --audio tone \
         --key-interval 4 --duration 24 --json"
    )));
    let stream = Running::start("stream", &stream_args);
    stream.wait_for_line("streaming 640x360@15").await;

    // The narrow path: the server's media to the receiver goes through it.
    let (_tcp, _udp, narrow_args) = if wt {
        let slow = Impairment {
            rate_bytes_per_sec: Some(NARROW),
            ..Impairment::NONE
        };
        let relay = UdpRelay::start(s.wt_addr.unwrap(), Impairment::NONE, slow, 11)
            .await
            .unwrap();
        let mut a = server_args(&s);
        a.extend(words(&format!(
            "--webtransport-port {}",
            relay.addr().port()
        )));
        (None, Some(relay), a)
    } else {
        let relay = TcpRelay::start(s.addr, TcpImpairment::NONE, TcpImpairment::rate(NARROW), 11)
            .await
            .unwrap();
        let a = words(&format!("--server http://{}", relay.local_addr()));
        (Some(relay), None, a)
    };
    let receive = |mut args: Vec<String>, extra: &str| {
        args.extend(words(&format!(
            "--transport {transport} --meeting-id {meeting} --duration 14 --json {extra}"
        )));
        Running::start("receive", &args)
    };
    let v1 = receive(server_args(&s), "--user-id v1");
    let full = receive(server_args(&s), "--user-id full --max-height 360");
    let narrow = receive(narrow_args, "--user-id narrow --max-height 360");
    let (v1, full, narrow) = (
        v1.finish().await,
        full.finish().await,
        narrow.finish().await,
    );
    let (v1, full, narrow) = (
        json(v1.0, &v1.1, &v1.2),
        json(full.0, &full.1, &full.2),
        json(narrow.0, &narrow.1, &narrow.2),
    );
    let (ok, out, err) = stream.finish().await;
    let published = json(ok, &out, &err);

    // The v1 receiver: one encoding, the top one, in plain frames, whole.
    let (video, _) = tracks(&v1);
    assert_eq!((n(video, "width"), n(video, "height")), (640, 360), "{v1}");
    assert_eq!(n(video, "decode_errors"), 0, "{v1}");
    assert_eq!(
        by_encoding(video),
        vec![0, 0, 0],
        "v1 gets MEDIA frames: {v1}"
    );
    assert!(n(video, "frames_decoded") >= 60, "{v1}");

    // The clean receiver that asked for 360 lines: the top encoding throughout.
    let (video, _) = tracks(&full);
    assert_eq!(
        (n(video, "width"), n(video, "height")),
        (640, 360),
        "{full}"
    );
    assert_eq!(n(video, "decode_errors"), 0, "{full}");
    let e = by_encoding(video);
    // A start may take one picture of a smaller encoding on the way up.
    assert!(e[2] >= 60 && e[0] + e[1] <= 2, "{e:?}: {full}");

    // The narrow receiver moved down, decoded everything it got, and lost
    // no sound.
    let (video, audio) = tracks(&narrow);
    let e = by_encoding(video);
    assert!(
        e[0] + e[1] >= 15,
        "never moved below the top encoding: {e:?} {narrow}"
    );
    assert!(n(video, "encoding_switches") >= 1, "{narrow}");
    assert_eq!(n(video, "decode_errors"), 0, "{narrow}");
    assert!(n(audio, "frames_received") >= 300, "{narrow}");
    if wt {
        // Over WebTransport audio travels in datagrams, and the relay
        // drops what overflows its queue before the server has moved the
        // receiver down: a few frames at most.
        let lost = n(audio, "lost");
        assert!(
            lost * 50 <= n(audio, "frames_received"),
            "{lost} audio frames lost: {narrow}"
        );
    } else {
        assert_eq!(n(audio, "lost"), 0, "{narrow}");
    }

    // The publisher was never hinted down for it, and every encoding was
    // encoded.
    assert_eq!(n(&published, "congestion_hints"), 0, "{published}");
    assert_eq!(n(&published, "min_bitrate_kbps"), 900, "{published}");
    let encodings = published["encodings"].as_array().unwrap();
    assert_eq!(encodings.len(), 3, "{published}");
    assert!(
        encodings.iter().all(|e| n(e, "frames_encoded") > 0),
        "{published}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrow_websocket_receiver_gets_a_smaller_encoding_and_the_others_the_top_one() {
    heterogeneous_meeting(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrow_webtransport_receiver_gets_a_smaller_encoding_and_the_others_the_top_one() {
    heterogeneous_meeting(true).await;
}

/// Dynacast (§6.6.5): with every receiver asking for the smallest size the
/// publisher stops encoding the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encodings_nobody_wants_are_not_encoded() {
    let s = server_on(0, false).await;
    let mut stream_args = server_args(&s);
    stream_args.extend(words(
        "--meeting-id dynacast --source test-pattern --resolution 640x360 --fps 15 \
         --bitrate-kbps 900 --simulcast --duration 16 --json",
    ));
    let stream = Running::start("stream", &stream_args);
    stream.wait_for_line("streaming 640x360@15").await;
    let mut args = server_args(&s);
    args.extend(words(
        "--meeting-id dynacast --max-height 90 --duration 13 --json",
    ));
    let (ok, out, err) = Running::start("receive", &args).finish().await;
    let small = json(ok, &out, &err);
    let (ok, out, err) = stream.finish().await;
    let published = json(ok, &out, &err);
    let video = track(&small, "video");
    assert_eq!(
        (n(video, "width"), n(video, "height")),
        (160, 90),
        "{small}"
    );
    assert_eq!(n(video, "decode_errors"), 0, "{small}");
    // Only the smallest encoding is wanted: the server says so (mask 1)
    // once the others have gone unwanted for five seconds, and the
    // publisher stops encoding them.
    assert_eq!(n(&published, "demand_mask"), 1, "{published}");
    let e = published["encodings"].as_array().unwrap();
    let (low, top) = (n(&e[0], "frames_encoded"), n(&e[2], "frames_encoded"));
    assert!(
        top + 60 < low,
        "the top encoding kept going: {top} of {low}: {published}"
    );
    s.shutdown().await;
}

/// Last-N and loudest-N over real sockets (§6.6.4): six `convene stream`s
/// with tones 10 dB apart (the quietest two below speech), a receiver with
/// `--last-n 2 --loudest-audio 2`: it decodes the cameras and hears the
/// sound of the two loudest, and of the others nothing once its settings
/// are in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_n_and_loudest_audio_follow_the_loudest_tones() {
    let s = server_on(0, false).await;
    let levels = [-26, -6, -46, -16, -56, -36];
    let mut streams = Vec::new();
    for db in levels {
        let mut a = server_args(&s);
        a.extend(words(&format!(
            "--meeting-id last-n --user-id tone{} --source test-pattern --resolution 160x120 \
             --fps 10 --key-interval 2 --audio tone --tone-dbfs {db} --duration 60",
            -db
        )));
        let stream = Running::start("stream", &a);
        stream.wait_for_line("streaming 160x120@10").await;
        streams.push(stream);
    }
    let mut args = server_args(&s);
    args.extend(words(
        "--meeting-id last-n --last-n 2 --loudest-audio 2 --duration 8 --json",
    ));
    let (ok, out, err) = Running::start("receive", &args).finish().await;
    let report = json(ok, &out, &err);
    let of = |name: &str, kind: &str, field: &str| -> u64 {
        report["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["display_name"] == name && t["kind"] == kind)
            .map_or(0, |t| n(t, field))
    };
    for loud in ["tone6", "tone16"] {
        assert!(
            of(loud, "video", "frames_decoded") >= 30,
            "{loud}'s camera: {report}"
        );
        assert_eq!(of(loud, "video", "decode_errors"), 0, "{report}");
        assert!(
            of(loud, "audio", "frames_received") >= 200,
            "{loud}'s sound: {report}"
        );
    }
    // The others: of their cameras only the first pictures, which answer
    // the key-frame requests of joining before the receiver's settings
    // (sent after Joined) reach the server, and of their sound at most the
    // odd frame, when a loud tone's frames came late enough (400 ms) to
    // leave the list of the loudest: not the 80 pictures and 400 frames
    // each that everyone would get without selection.
    for quiet in ["tone26", "tone36", "tone46", "tone56"] {
        assert!(
            of(quiet, "video", "frames_received") <= 10,
            "{quiet}'s camera: {report}"
        );
        assert!(
            of(quiet, "audio", "frames_received") <= 20,
            "{quiet}'s sound: {report}"
        );
    }
    drop(streams);
    s.shutdown().await;
}
