//! `convene record` as an operator runs it: a real server on loopback, a
//! real `convene stream` (H.264 and an Opus tone), and the files read back
//! by Debian's `ffprobe` and `ffmpeg` (which `cargo xtask test` installs),
//! the way a person would open them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{DEADLINE, Running, json, server_args, server_on, words};

/// `ffprobe` on `path`: its streams, packets counted.
fn probe(path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_packets",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs (Debian's ffmpeg; `cargo xtask test` installs it)");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The one stream of a recorded file, with its codec, start and length.
fn stream_of(path: &Path) -> (String, f64, f64, u64) {
    let p = probe(path);
    let streams = p["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1, "one track a file: {p}");
    let s = &streams[0];
    let f = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (
        s["codec_name"].as_str().unwrap().to_string(),
        f(&s["start_time"]),
        // ffprobe's duration of a fragmented track counts from 0, not from its start.
        f(&s["duration"]) - f(&s["start_time"]),
        s["nb_read_packets"].as_str().unwrap().parse().unwrap(),
    )
}

/// The pitch of a file's sound, decoded by ffmpeg: rises through zero a
/// second, over its 20 ms stretches of sound (not the silence between).
fn pitch_of(path: &Path) -> f64 {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "s16le", "-ac", "1", "-ar", "48000", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<i16> = out
        .stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let (mut rises, mut seconds) = (0, 0.0);
    for frame in samples.chunks_exact(960) {
        let power = frame.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / 960.0;
        if power.sqrt() < 300.0 {
            continue;
        }
        rises += frame.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
        seconds += 959.0 / 48_000.0;
    }
    rises as f64 / seconds
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("convene-record-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The recorded files of `kind` in `dir`.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// A 3 s clip made by ffmpeg: its test picture at 320x240 and 15 fps in
/// H.264, and a 440 Hz tone in Opus.
fn clip(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("clip.mp4");
    let status = Command::new("ffmpeg")
        .args(words("-hide_banner -loglevel error -nostdin -y -f lavfi -i testsrc=size=320x240:rate=15 -f lavfi -i sine=frequency=440:sample_rate=48000 -t 3 -c:v libx264 -pix_fmt yuv420p -c:a libopus"))
        .arg(&path)
        .status()
        .expect("ffmpeg runs (Debian's ffmpeg; `cargo xtask test` installs it)");
    assert!(status.success());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_clip_holds_its_h264_and_opus_in_step_at_their_lengths() {
    let s = server_on(0, false).await;
    let out = out_dir("sync");
    let clip = clip(&out_dir("sync-clip"));
    let mut rec_args = server_args(&s);
    rec_args.extend(words("--meeting-id rec --json --hls alice --out"));
    rec_args.push(out.display().to_string());
    let recorder = Running::start("record", &rec_args);
    recorder.wait_for_line("recording `rec`").await;

    // The clip, played once at its own pace; the stream ends with it.
    let mut stream_args = server_args(&s);
    stream_args.extend(words("--meeting-id rec --user-id alice --json --source"));
    stream_args.push(clip.display().to_string());
    let (ok, sent, err) = Running::start("stream", &stream_args).finish().await;
    let sent = json(ok, &sent, &err);
    let audio_sent = sent["audio_frames_sent"].as_u64().unwrap();
    let video_sent = sent["video_frames_sent"].as_u64().unwrap();
    // The publisher left: the recorder finishes its files, then stops on SIGTERM.
    recorder.wait_for_lines("finished ", 2).await;
    recorder.terminate();
    let (ok, report, err) = recorder.finish().await;
    let report = json(ok, &report, &err);

    let video = files(&out, "-alice-video.mp4");
    let audio = files(&out, "-alice-audio.mp4");
    assert_eq!((video.len(), audio.len()), (1, 1), "{report}");
    let (vcodec, vstart, vlen, vpackets) = stream_of(&video[0]);
    let (acodec, astart, alen, apackets) = stream_of(&audio[0]);
    assert_eq!((vcodec.as_str(), acodec.as_str()), ("h264", "opus"));
    // Every frame sent is in the files (those sent as the publisher left
    // may come after its leaving), and silence where the sender's clock
    // let more than a frame go by.
    let silence = listed_silence(&report);
    assert!(
        (video_sent - 1..=video_sent).contains(&vpackets),
        "{vpackets} of {video_sent} pictures: {report}"
    );
    let sound = audio_sent + silence;
    assert!(
        (sound - 1..=sound).contains(&apackets),
        "{apackets} of {sound} sound frames: {report}"
    );
    // The clip's 3 s, in both files: within 2 %.
    assert!(
        (alen - 3.0).abs() <= 0.06,
        "sound {alen} s of a 3 s clip: {report}"
    );
    assert!(
        (vlen - 3.0).abs() <= 0.06,
        "pictures {vlen} s of a 3 s clip: {report}"
    );
    // Sound and pictures start together, as in the clip.
    assert!(
        (vstart - astart).abs() <= 0.040,
        "video starts at {vstart} s, audio at {astart} s"
    );
    // The tone is in the sound.
    let hz = pitch_of(&audio[0]);
    assert!((hz - 440.0).abs() < 4.4, "the recording's tone is {hz} Hz");
    // The pictures decode from the first.
    let decode = Command::new("ffmpeg")
        .args(["-v", "error", "-xerror", "-i"])
        .arg(&video[0])
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        decode.status.success(),
        "{}",
        String::from_utf8_lossy(&decode.stderr)
    );
    // The summary and recording.json list both files, and the meeting's
    // sound mixed.
    let listed = report["files"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{report}");
    assert!(out.join("meeting-audio.mp4").exists());
    assert!(n_of(&report, "mix_frames") >= audio_sent - 1, "{report}");
    assert_eq!(n_of(&report, "mix_left_out"), 0, "{report}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("recording.json")).unwrap()).unwrap();
    assert_eq!(manifest["files"], report["files"]);

    // The HLS stream of alice: both tracks, whole, ended.
    let live = probe(&out.join("live.m3u8"));
    let mut codecs: Vec<&str> = live["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["codec_name"].as_str().unwrap())
        .collect();
    codecs.sort();
    assert_eq!(codecs, ["h264", "opus"], "{live}");
    let length: f64 = live["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (length - alen).abs() <= 0.1 * alen,
        "HLS {length} s, recorded {alen} s"
    );
    let video_playlist = std::fs::read_to_string(out.join("live-video.m3u8")).unwrap();
    assert!(
        video_playlist.contains("#EXT-X-ENDLIST"),
        "{video_playlist}"
    );
    assert!(video_playlist.contains("#EXTINF"), "{video_playlist}");
    let _ = std::fs::remove_dir_all(out);
    let _ = std::fs::remove_dir_all(out_dir("sync-clip"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_killed_mid_meeting_leaves_files_that_play_up_to_its_last_fragment() {
    let s = server_on(0, false).await;
    let out = out_dir("kill");
    let mut stream_args = server_args(&s);
    stream_args.extend(words(
        "--meeting-id kill --user-id bob --source test-pattern --resolution 320x240 --fps 15 \
         --audio tone --duration 120",
    ));
    let stream = Running::start("stream", &stream_args);
    stream.wait_for_line("streaming 320x240@15").await;
    let mut rec_args = server_args(&s);
    rec_args.extend(words("--meeting-id kill --out"));
    rec_args.push(out.display().to_string());
    let mut recorder = Running::start("record", &rec_args);
    recorder.wait_for_line("recording audio").await;

    // Wait until the sound file holds 3 s of fragments (a second each),
    // copy both files as they are, and kill the recorder without warning.
    let until = Instant::now() + DEADLINE;
    let audio = loop {
        if let Some(a) = files(&out, "-audio.mp4").first()
            && stream_of_len(a) >= 3.0
        {
            break a.clone();
        }
        assert!(
            Instant::now() < until,
            "no 3 s of sound recorded in {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let video = files(&out, "-video.mp4")[0].clone();
    let before_audio = out.join("before-audio.mp4.snapshot");
    let before_video = out.join("before-video.mp4.snapshot");
    std::fs::copy(&audio, &before_audio).unwrap();
    std::fs::copy(&video, &before_video).unwrap();
    recorder.child.kill().unwrap();
    recorder.child.wait().unwrap();
    drop(stream);

    for (after, before) in [(&audio, &before_audio), (&video, &before_video)] {
        let (_, _, _, had) = stream_of(before);
        let (codec, _, length, has) = stream_of(after);
        assert!(
            has >= had && had > 0,
            "{codec}: {has} packets after the kill, {had} before it"
        );
        assert!(length >= 2.0, "{codec}: {length} s");
    }
    let _ = std::fs::remove_dir_all(out);
}

fn n_of(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

/// Silence frames the recorder wrote, from its summary.
fn listed_silence(report: &serde_json::Value) -> u64 {
    report["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["silence_frames"].as_u64())
        .sum()
}

/// The length ffprobe gives a file, 0 when it cannot read one yet.
fn stream_of_len(path: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_meeting_is_recorded_by_a_recorder_that_takes_the_keys_and_by_no_other() {
    let s = server_on(0, false).await;
    let (keyed, keyless) = (out_dir("keyed"), out_dir("keyless"));
    let start = |out: &Path, extra: &str| {
        let mut a = server_args(&s);
        a.extend(words(&format!("--meeting-id secret --json {extra} --out")));
        a.push(out.display().to_string());
        Running::start("record", &a)
    };
    let recorder = start(&keyed, "");
    let outsider = start(&keyless, "--user-id Outsider --e2ee off");
    recorder.wait_for_line("recording `secret`").await;
    outsider.wait_for_line("recording `secret`").await;
    let mut stream_args = server_args(&s);
    stream_args.extend(words(
        "--meeting-id secret --user-id alice --source test-pattern --resolution 320x240 --fps 15 \
         --audio tone --e2ee --duration 4",
    ));
    let stream = Running::start("stream", &stream_args);
    recorder.wait_for_lines("finished ", 2).await;
    let (ok, _, stream_err) = stream.finish().await;
    assert!(ok, "{stream_err:?}");
    recorder.terminate();
    outsider.terminate();
    let (ok, out, err) = recorder.finish().await;
    let report = json(ok, &out, &err);
    let (ok, out, outsider_err) = outsider.finish().await;
    let refused = json(ok, &out, &outsider_err);

    // The recorder that took part in the key exchange recorded the
    // decrypted sound and pictures.
    let audio = files(&keyed, "-alice-audio.mp4");
    let video = files(&keyed, "-alice-video.mp4");
    assert_eq!((audio.len(), video.len()), (1, 1), "{report}");
    let hz = pitch_of(&audio[0]);
    assert!((hz - 440.0).abs() < 4.4, "the recording's tone is {hz} Hz");
    let (codec, _, _, pictures) = stream_of(&video[0]);
    assert_eq!(codec, "h264");
    assert!(pictures >= 30, "{pictures} pictures");
    // It was a member like any other: the streamer's last safety code (the
    // members it held keys for) is one the recorder showed too.
    let code_in = |l: &String| {
        l.split("safety code").nth(1).map(|c| {
            c.trim_start_matches(" now")
                .trim()
                .chars()
                .take(23)
                .collect::<String>()
        })
    };
    let streamer_code = stream_err
        .iter()
        .rev()
        .find_map(code_in)
        .expect("the streamer showed a safety code");
    assert!(report["e2ee"]["safety_code"].is_string(), "{report}");
    assert!(
        err.iter().filter_map(code_in).any(|c| c == streamer_code),
        "the recorder never showed the streamer's code {streamer_code}: {err:?}"
    );
    // The one without keys recorded nothing, and said who and why.
    assert!(files(&keyless, ".mp4").is_empty(), "{refused}");
    assert!(
        outsider_err
            .iter()
            .any(|l| l.contains("(alice) encrypts end to end: not recorded")),
        "{outsider_err:?}"
    );
    assert_eq!(
        refused["not_recorded"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| *n == "alice")
            .count(),
        1,
        "{refused}"
    );
    let _ = std::fs::remove_dir_all(keyed);
    let _ = std::fs::remove_dir_all(keyless);
}

/// Goertzel power of `hz` in 48 kHz samples, normalised by their number.
fn power(pcm: &[i16], hz: f64) -> f64 {
    let c = 2.0 * (std::f64::consts::TAU * hz / 48_000.0).cos();
    let (mut a, mut b) = (0.0, 0.0);
    for &x in pcm {
        let n = f64::from(x) + c * a - b;
        b = a;
        a = n;
    }
    (a * a + b * b - c * a * b) / (pcm.len() as f64).powi(2)
}

/// A file's sound decoded by ffmpeg, 48 kHz mono, from its own start.
fn decoded(path: &Path) -> Vec<i16> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "s16le", "-ac", "1", "-ar", "48000", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_speaker_stream_follows_who_speaks_and_carries_everyones_sound() {
    let s = server_on(0, false).await;
    let out = out_dir("speaker");
    let mut rec_args = server_args(&s);
    rec_args.extend(words("--meeting-id talk --json --hls active-speaker --out"));
    rec_args.push(out.display().to_string());
    let recorder = Running::start("record", &rec_args);
    recorder.wait_for_line("recording `talk`").await;
    let stream = |name: &str, extra: &str| {
        let mut a = server_args(&s);
        a.extend(words(&format!(
            "--meeting-id talk --user-id {name} --source test-pattern --resolution 320x240 --fps 15 \
             --key-interval 1 --audio tone {extra}"
        )));
        Running::start("stream", &a)
    };
    // A quiet 440 Hz voice all along; a loud 660 Hz one for 6 s of it.
    let quiet = stream("quiet", "--tone-dbfs -30 --duration 11");
    quiet.wait_for_line("streaming").await;
    let loud = stream("loud", "--tone-hz 660 --tone-dbfs -6 --duration 6");
    let (ok, _, err) = loud.finish().await;
    assert!(ok, "{err:?}");
    let (ok, _, err) = quiet.finish().await;
    assert!(ok, "{err:?}");
    recorder.wait_for_lines("finished ", 4).await;
    recorder.terminate();
    let (ok, report, err) = recorder.finish().await;
    let report = json(ok, &report, &err);

    // The pictures: the quiet one's or the first, then the loud one's while
    // they speak, then the quiet one's again, with a discontinuity at each
    // change of file.
    let playlist = std::fs::read_to_string(out.join("live-video.m3u8")).unwrap();
    let files_in_order: Vec<&str> = playlist.lines().filter(|l| l.ends_with(".mp4")).collect();
    let loud_at = files_in_order
        .iter()
        .position(|f| f.contains("-loud-"))
        .expect(&playlist);
    assert!(
        files_in_order[loud_at..]
            .iter()
            .any(|f| f.contains("-quiet-")),
        "{playlist}"
    );
    assert!(
        files_in_order.last().unwrap().contains("-quiet-"),
        "{playlist}"
    );
    assert!(playlist.contains("#EXT-X-DISCONTINUITY"), "{playlist}");
    assert!(playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
    let live = probe(&out.join("live.m3u8"));
    let mut codecs: Vec<&str> = live["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["codec_name"].as_str().unwrap())
        .collect();
    codecs.sort();
    assert_eq!(codecs, ["h264", "opus"], "{live}");

    // The meeting's sound holds both voices while both speak, then the
    // quiet one alone.
    let listed = report["files"].as_array().unwrap();
    let file = |needle: &str| {
        listed
            .iter()
            .find(|f| f["path"].as_str().unwrap().contains(needle))
            .expect(needle)
    };
    let (mix, loud) = (file("meeting-audio.mp4"), file("-loud-audio.mp4"));
    let at = |f: &serde_json::Value, k: &str| f[k].as_f64().unwrap();
    let pcm = decoded(&out.join("meeting-audio.mp4"));
    let window = |from: f64| {
        let i = ((from - at(mix, "start_seconds")) * 48_000.0) as usize;
        &pcm[i..i + 24_000]
    };
    let both = window(at(loud, "start_seconds") + 1.0);
    let after = window(at(loud, "start_seconds") + at(loud, "seconds") + 1.0);
    let (a, b, none) = (power(both, 440.0), power(both, 660.0), power(both, 550.0));
    assert!(
        a > 100.0 * none && b > 100.0 * none,
        "together: 440 {a}, 660 {b}, 550 {none}"
    );
    let (a, b) = (power(after, 440.0), power(after, 660.0));
    assert!(a > 100.0 * b, "after: 440 {a}, 660 {b}");
    let _ = std::fs::remove_dir_all(out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_stopped_through_the_admin_api_finishes_its_files_and_exits_cleanly() {
    const ADMIN: &str = "admin-token-for-the-record-test";
    let s = convene_server::start(convene_server::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: Some(ADMIN.into()),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let out = out_dir("stopped");
    let mut stream_args = server_args(&s);
    stream_args.extend(words(
        "--meeting-id stop-me --user-id ann --source test-pattern --resolution 160x120 --fps 10 \
         --audio tone --duration 60",
    ));
    let stream = Running::start("stream", &stream_args);
    stream.wait_for_line("streaming").await;
    let mut rec_args = server_args(&s);
    rec_args.extend(words("--meeting-id stop-me --json --out"));
    rec_args.push(out.display().to_string());
    let recorder = Running::start("record", &rec_args);
    recorder.wait_for_line("recording video").await;
    recorder.wait_for_line("recording audio").await;

    // The operator stops it on a node that did not start it: the node
    // removes it from the meeting.
    let url = format!("http://{}", s.admin_addr.unwrap());
    let stop = Command::new(env!("CARGO_BIN_EXE_convene"))
        .args([
            "admin",
            "--url",
            &url,
            "--token",
            ADMIN,
            "record",
            "stop",
            "--meeting-id",
            "stop-me",
        ])
        .output()
        .unwrap();
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let (ok, report, err) = recorder.finish().await;
    let report = json(ok, &report, &err);
    assert!(
        err.iter().any(|l| l.starts_with("recording stopped")),
        "{err:?}"
    );
    // Its files are whole and listed.
    let listed: Vec<&str> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&"video") && listed.contains(&"audio"),
        "{report}"
    );
    assert!(out.join("recording.json").exists());
    let (codec, _, length, _) = stream_of(&files(&out, "-ann-audio.mp4")[0]);
    assert_eq!(codec, "opus");
    assert!(length > 0.0);
    drop(stream);
    let _ = std::fs::remove_dir_all(out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_that_loses_its_server_finishes_its_files_and_goes_on_in_new_ones() {
    let s = server_on(0, false).await;
    let port = s.addr.port();
    let out = out_dir("comeback");
    let mut stream_args = server_args(&s);
    stream_args.extend(words(
        "--meeting-id comeback --user-id ann --source test-pattern --resolution 160x96 --fps 10 \
         --audio tone --duration 120",
    ));
    let stream = Running::start("stream", &stream_args);
    stream.wait_for_line("streaming").await;
    let mut rec_args = server_args(&s);
    rec_args.extend(words("--meeting-id comeback --json --out"));
    rec_args.push(out.display().to_string());
    let recorder = Running::start("record", &rec_args);
    recorder.wait_for_line("recording video").await;
    s.shutdown().await;
    recorder.wait_for_line("lost the server").await;
    // The same address again, as a restarted server would be; the stream
    // and the recorder both come back.
    let s = server_on(port, false).await;
    recorder.wait_for_lines("recording video", 2).await;
    recorder.wait_for_lines("recording audio", 2).await;
    recorder.terminate();
    let (ok, report, err) = recorder.finish().await;
    let report = json(ok, &report, &err);
    // Two files of each kind, the first finished when the server went.
    let videos = files(&out, "-ann-video.mp4");
    assert_eq!(videos.len(), 2, "{report}");
    for v in &videos {
        let (codec, _, _, pictures) = stream_of(v);
        assert_eq!(codec, "h264");
        assert!(pictures >= 1, "{}: {pictures}", v.display());
    }
    assert_eq!(files(&out, "-ann-audio.mp4").len(), 2, "{report}");
    drop(stream);
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_screen_is_recorded_and_takes_the_active_speaker_stream_while_shared() {
    let s = server_on(0, false).await;
    let out = out_dir("screen");
    let mut rec_args = server_args(&s);
    rec_args.extend(words(
        "--meeting-id slides --json --hls active-speaker --out",
    ));
    rec_args.push(out.display().to_string());
    let recorder = Running::start("record", &rec_args);
    recorder.wait_for_line("recording `slides`").await;
    let mut a = server_args(&s);
    a.extend(words(
        "--meeting-id slides --user-id host --source test-pattern --resolution 320x240 --fps 15 \
         --key-interval 1 --audio tone --duration 10",
    ));
    let host = Running::start("stream", &a);
    host.wait_for_line("streaming").await;
    // The live stream shows the host's camera (a first segment is out)...
    let until = Instant::now() + DEADLINE;
    while !out.join("live-video.m3u8").exists() {
        assert!(
            Instant::now() < until,
            "{:?}",
            recorder.stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...when slides are shared for 4 s.
    let mut a = server_args(&s);
    a.extend(words(
        "--meeting-id slides --user-id slides --screen --source test-pattern --resolution 640x360 \
         --fps 5 --key-interval 1 --duration 4",
    ));
    let (ok, _, err) = Running::start("stream", &a).finish().await;
    assert!(ok, "{err:?}");
    let (ok, _, err) = host.finish().await;
    assert!(ok, "{err:?}");
    recorder.wait_for_lines("finished ", 3).await;
    recorder.terminate();
    let (ok, report, err) = recorder.finish().await;
    let report = json(ok, &report, &err);

    // The screen has a file of its own, at its size.
    let screen = files(&out, "-slides-screen.mp4");
    assert_eq!(screen.len(), 1, "{report}");
    let p = probe(&screen[0]);
    assert_eq!(p["streams"][0]["codec_name"], "h264", "{p}");
    assert_eq!(
        (
            p["streams"][0]["width"].as_u64(),
            p["streams"][0]["height"].as_u64()
        ),
        (Some(640), Some(360)),
        "{p}"
    );
    // The live pictures: the host's camera, the slides while shared, then
    // the camera again.
    let playlist = std::fs::read_to_string(out.join("live-video.m3u8")).unwrap();
    let order: Vec<&str> = playlist
        .lines()
        .filter(|l| l.ends_with(".mp4"))
        .map(|l| {
            if l.contains("-screen") {
                "screen"
            } else {
                "camera"
            }
        })
        .fold(Vec::new(), |mut v, k| {
            if v.last() != Some(&k) {
                v.push(k);
            }
            v
        });
    assert_eq!(order, ["camera", "screen", "camera"], "{playlist}");
    let _ = std::fs::remove_dir_all(out);
}
