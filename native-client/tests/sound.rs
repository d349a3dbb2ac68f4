//! The CLI's sound as a user runs it: a microphone read through ALSA,
//! Opus over a real server on loopback, decoded by `convene receive` at the
//! pitch it was sent. The "microphone" is an ALSA device defined in the
//! test's own `~/.asoundrc` that records from a file, so no sound card is
//! needed.

use std::path::{Path, PathBuf};

mod common;

use common::{Running, json, n, server_args, server_on, track, words};

/// A home directory whose `.asoundrc` defines the capture device `testmic`,
/// recording `seconds` of a sine of `hz` at -12 dBFS, 48 kHz mono.
fn home_with_a_microphone(name: &str, hz: f64, seconds: u32) -> PathBuf {
    let home = std::env::temp_dir().join(format!("convene-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let raw = home.join("voice.raw");
    let amplitude = 32_767.0 * 10f64.powf(-12.0 / 20.0);
    let samples: Vec<u8> = (0..48_000 * seconds)
        .flat_map(|i| {
            {
                let t = f64::from(i) / 48_000.0;
                ((std::f64::consts::TAU * hz * t).sin() * amplitude) as i16
            }
            .to_le_bytes()
        })
        .collect();
    std::fs::write(&raw, samples).unwrap();
    std::fs::write(
        home.join(".asoundrc"),
        format!(
            "pcm.testmic {{\n  type file\n  slave.pcm \"null\"\n  file \"/dev/null\"\n  infile \"{}\"\n  format \"raw\"\n}}\n",
            raw.display()
        ),
    )
    .unwrap();
    home
}

fn as_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_microphone_goes_out_in_opus_and_is_heard_at_its_pitch() {
    let s = server_on(0, false).await;
    let home = home_with_a_microphone("mic", 660.0, 60);
    let mut stream_args = server_args(&s);
    stream_args.extend(words(
        "--meeting-id mic --user-id singer --source test-pattern --resolution 160x120 --fps 5 \
         --audio mic --audio-device testmic --duration 60",
    ));
    let stream = Running::start_with_env("stream", &stream_args, &[("HOME", as_str(&home))]);
    stream.wait_for_line("streaming 160x120@5").await;

    let mut recv_args = server_args(&s);
    recv_args.extend(words("--meeting-id mic --duration 3 --json"));
    let (ok, out, err) = Running::start("receive", &recv_args).finish().await;
    let report = json(ok, &out, &err);
    let audio = track(&report, "audio");
    assert_eq!(audio["display_name"], "singer");
    assert_eq!(audio["codec"], "opus");
    let frames = n(audio, "frames_received");
    // Paced by the device's clock: 50 frames a second, not as fast as the
    // file can be read (the receiver's 3 s, with a second of slack each side).
    assert!((100..=200).contains(&frames), "{frames} frames in 3 s");
    assert_eq!(n(audio, "frames_decoded"), frames);
    assert_eq!(n(audio, "decode_errors"), 0);
    let hz = audio["audio_hz"].as_f64().unwrap();
    assert!(
        (hz - 660.0).abs() < 6.6,
        "the 660 Hz voice was heard at {hz} Hz"
    );
    let level = audio["audio_level_dbfs"].as_f64().unwrap();
    assert!(
        (level + 15.0).abs() < 1.5,
        "the voice arrived at {level} dBFS"
    );
    drop(stream);
    let _ = std::fs::remove_dir_all(home);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_microphone_the_stream_says_so_in_one_line_and_stops() {
    let s = server_on(0, false).await;
    let home = home_with_a_microphone("no-mic", 440.0, 1);
    let mut args = server_args(&s);
    args.extend(words(
        "--meeting-id no-mic --source test-pattern --audio mic --audio-device no-such-microphone",
    ));
    let (ok, _, err) = Running::start_with_env("stream", &args, &[("HOME", as_str(&home))])
        .finish()
        .await;
    assert!(!ok);
    let ours: Vec<_> = err.iter().filter(|l| l.starts_with("convene:")).collect();
    assert_eq!(ours.len(), 1, "{err:?}");
    assert!(
        ours[0].contains("no microphone") && ours[0].contains("--audio-device"),
        "{err:?}"
    );
    let _ = std::fs::remove_dir_all(home);
}
