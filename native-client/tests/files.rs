//! `convene stream --source FILE` as a user runs it: clips made by ffmpeg
//! (an MP4 with H.264 and an Opus tone, a Y4M file), streamed by the real
//! binary to a real server on loopback and watched by `convene receive`:
//! the pictures arrive at the clip's size and frame rate, the sound at the
//! clip's pitch, `--loop` goes on past the end, and without it the stream
//! ends, successfully, when the clip does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{Running, json, n, server_args, server_on, track, words};

/// A directory of its own for each test's clips.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("convene-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs ffmpeg quietly with `args`, writing `out` in `dir`.
fn ffmpeg(dir: &Path, args: &str, out: &str) -> PathBuf {
    let status = Command::new("ffmpeg")
        .current_dir(dir)
        .args(words("-hide_banner -loglevel error -nostdin -y"))
        .args(words(args))
        .arg(out)
        .status();
    match status {
        Ok(s) => assert!(s.success(), "ffmpeg {args} {out} failed: {s}"),
        Err(e) => panic!(
            "cannot run ffmpeg ({e}): these tests make their clips with it. \
             `cargo xtask test` installs it (the Debian package ffmpeg); or run \
             `sudo apt-get install -y ffmpeg`"
        ),
    }
    dir.join(out)
}

/// An MP4 of `seconds` of ffmpeg's test picture at 320x240 and 15 fps in
/// H.264 (libx264's defaults: High profile with B frames) and a 440 Hz
/// tone in Opus.
fn mp4_clip(dir: &Path, seconds: u32) -> PathBuf {
    ffmpeg(
        dir,
        &format!(
            "-f lavfi -i testsrc=size=320x240:rate=15 -f lavfi -i sine=frequency=440:sample_rate=48000 \
             -t {seconds} -c:v libx264 -pix_fmt yuv420p -c:a libopus"
        ),
        "clip.mp4",
    )
}

/// The frame rate a receiver saw: pictures after the first over the time
/// from the first to the end (a receiver stopped by --frames ends at its
/// last picture).
fn fps(video: &serde_json::Value, report: &serde_json::Value) -> f64 {
    let first = n(video, "first_picture_ms") as f64 / 1000.0;
    let seconds = report["seconds"].as_f64().unwrap();
    (n(video, "frames_decoded") - 1) as f64 / (seconds - first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_mp4_plays_at_its_size_rate_and_pitch_past_its_end() {
    let s = server_on(0, false).await;
    let dir = scratch("loop");
    let clip = mp4_clip(&dir, 3);
    let mut stream_args = server_args(&s);
    stream_args.extend(words(
        "--meeting-id mp4-loop --user-id talk --loop --source",
    ));
    stream_args.push(clip.display().to_string());
    let mut stream = Running::start("stream", &stream_args);
    stream.wait_for_line("streaming 320x240@15").await;
    assert_eq!(
        stream.count_lines("with its sound"),
        1,
        "{:?}",
        stream.stderr
    );

    // 75 pictures take 5 s: past the 3 s clip, which loops.
    let mut recv_args = server_args(&s);
    recv_args.extend(words(
        "--meeting-id mp4-loop --frames 75 --duration 60 --json",
    ));
    let (ok, out, err) = Running::start("receive", &recv_args).finish().await;
    let report = json(ok, &out, &err);
    let video = track(&report, "video");
    assert_eq!(video["display_name"], "talk");
    assert_eq!((n(video, "width"), n(video, "height")), (320, 240));
    assert!(
        n(video, "frames_decoded") >= 75,
        "past the clip's 45 pictures"
    );
    assert_eq!(n(video, "decode_errors"), 0);
    let rate = fps(video, &report);
    assert!(
        (rate - 15.0).abs() <= 1.5,
        "the 15 fps clip arrived at {rate:.2} fps"
    );

    let audio = track(&report, "audio");
    assert_eq!(audio["codec"], "opus");
    // Sound went on past the clip's 150 frames of 20 ms too.
    let frames = n(audio, "frames_decoded");
    assert!(frames > 160, "{frames} frames of sound");
    let hz = audio["audio_hz"].as_f64().unwrap();
    assert!(
        (hz - 440.0).abs() <= 4.4,
        "the 440 Hz tone was heard at {hz} Hz"
    );
    assert!(
        stream.child.try_wait().unwrap().is_none(),
        "a looping stream goes on: {:?}",
        stream.stderr
    );
    drop(stream);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_loop_the_stream_ends_successfully_with_the_clip() {
    let s = server_on(0, false).await;
    let dir = scratch("end");
    let clip = mp4_clip(&dir, 3);
    let mut stream_args = server_args(&s);
    stream_args.extend(words("--meeting-id mp4-end --json --source"));
    stream_args.push(clip.display().to_string());
    let stream = Running::start("stream", &stream_args);
    stream.wait_for_line("streaming 320x240@15").await;
    let playing = Instant::now();
    let (ok, out, err) = stream.finish().await;
    let played = playing.elapsed();
    let summary = json(ok, &out, &err);
    // The clip lasts 3 s from the join: the stream neither stops early nor
    // lingers (the upper bound is generous for a busy machine).
    assert!(
        played >= Duration::from_millis(2_800) && played < Duration::from_secs(20),
        "a 3 s clip played for {played:?}"
    );
    let pictures = n(&summary, "frames_encoded");
    assert!(
        (36..=45).contains(&pictures),
        "{pictures} of the clip's 45 pictures"
    );
    let sound = n(&summary, "audio_frames_sent") + n(&summary, "audio_frames_silent");
    assert!(
        (120..=150).contains(&sound),
        "{sound} of the clip's 150 frames of sound"
    );
    assert_eq!(summary["audio_codec"], "opus");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_y4m_file_plays_at_its_own_size_and_rate_and_ends() {
    let s = server_on(0, false).await;
    let dir = scratch("y4m");
    let clip = ffmpeg(
        &dir,
        "-f lavfi -i testsrc=size=176x144:rate=10 -t 6 -pix_fmt yuv420p",
        "clip.y4m",
    );
    let mut stream_args = server_args(&s);
    stream_args.extend(words("--meeting-id y4m --user-id raw --json --source"));
    stream_args.push(clip.display().to_string());
    let stream = Running::start("stream", &stream_args);
    stream.wait_for_line("streaming 176x144@10").await;

    let mut recv_args = server_args(&s);
    recv_args.extend(words("--meeting-id y4m --frames 20 --duration 60 --json"));
    let (ok, out, err) = Running::start("receive", &recv_args).finish().await;
    let report = json(ok, &out, &err);
    let video = track(&report, "video");
    assert_eq!((n(video, "width"), n(video, "height")), (176, 144));
    let rate = fps(video, &report);
    assert!(
        (rate - 10.0).abs() <= 1.0,
        "the 10 fps clip arrived at {rate:.2} fps"
    );
    assert!(
        report["tracks"].as_array().unwrap().len() == 1,
        "a Y4M file has no sound: {report}"
    );

    let (ok, out, err) = stream.finish().await;
    let summary = json(ok, &out, &err);
    let pictures = n(&summary, "frames_encoded");
    assert!(
        (48..=60).contains(&pictures),
        "{pictures} of the clip's 60 pictures"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clip_with_aac_sound_is_refused_in_one_line_that_says_how_to_convert() {
    let s = server_on(0, false).await;
    let dir = scratch("aac");
    let clip = ffmpeg(
        &dir,
        "-f lavfi -i testsrc=size=320x240:rate=15 -f lavfi -i sine=frequency=440 -t 1 \
         -c:v libx264 -pix_fmt yuv420p -c:a aac",
        "aac.mp4",
    );
    let mut args = server_args(&s);
    args.extend(words("--meeting-id aac --source"));
    args.push(clip.display().to_string());
    let (ok, _, err) = Running::start("stream", &args.clone()).finish().await;
    assert!(!ok);
    let ours: Vec<_> = err.iter().filter(|l| l.starts_with("convene:")).collect();
    assert_eq!(ours.len(), 1, "{err:?}");
    assert!(
        ours[0].contains("AAC")
            && ours[0].contains("-c:a libopus")
            && ours[0].contains("--audio none"),
        "{err:?}"
    );
    // With a tone instead of its sound the same clip plays, here scaled.
    args.extend(words(
        "--audio tone --duration 1 --resolution 160x120 --json",
    ));
    let (ok, out, err) = Running::start("stream", &args).finish().await;
    let summary = json(ok, &out, &err);
    assert_eq!((n(&summary, "width"), n(&summary, "height")), (160, 120));
    assert!(n(&summary, "frames_encoded") > 0, "{summary}");
    assert!(
        err.iter()
            .any(|l| l.contains("scaled to 160x120") && l.contains("with a tone")),
        "{err:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
