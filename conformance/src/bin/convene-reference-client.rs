//! A minimal Convene client over WebSocket, built on the sans-IO
//! `ClientSession`: it joins a meeting, publishes a synthetic video track
//! (a key frame every 2 s and whenever asked), and reconnects after
//! Goodbye(SHUTDOWN). It is the client the conformance suite's client mode is
//! checked against until the native client exists.
//!
//! It speaks v1 only (no extension), so it also stands for a client written
//! from the v1 spec alone in rooms where others use extensions: with
//! `--seconds N` it leaves after N seconds and prints, as JSON, what it
//! received per track (frames, key frames, sequence numbers that did not
//! move forward).
//!
//! Usage: `convene-reference-client URL [MEETING] [--ignore-key-frame-requests]
//! [--no-publish] [--seconds N]` (the first flag breaks it on purpose, to show
//! the suite notices).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use convene_protocol::v1::{
    self, ClientKind, GoodbyeReason, TrackInfo, TrackKind, client_message::Msg as C,
    server_message::Msg as S,
};
use convene_protocol::{
    ClientEvent, ClientSession, ClientSessionConfig, MediaFrame, MediaHeader, Timestamp,
};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const TRACK: u32 = 1;

const USAGE: &str = "usage: convene-reference-client URL [MEETING] [--ignore-key-frame-requests] [--no-publish] [--seconds N]";

/// What the command line asked for.
struct Options {
    /// Ignore key-frame requests (a broken client, on purpose).
    broken: bool,
    /// Publish the synthetic video track.
    publish: bool,
    /// Leave after this long and print what was received.
    seconds: Option<u64>,
}

/// What arrived on one track.
#[derive(Default)]
struct Received {
    /// Audio or video, from the roster; empty for a track never announced.
    kind: &'static str,
    /// Media frames.
    frames: u64,
    /// Of which key frames.
    keys: u64,
    /// Frames whose sequence number was not after the previous one's: a v1
    /// receiver discards them, so a server must not send them (§6.4).
    not_ahead: u64,
    /// The last sequence number.
    last: Option<u32>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let mut opts = Options {
        broken: false,
        publish: true,
        seconds: None,
    };
    let mut positional = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ignore-key-frame-requests" => opts.broken = true,
            "--no-publish" => opts.publish = false,
            "--seconds" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => opts.seconds = Some(n),
                None => {
                    eprintln!("--seconds needs a whole number of seconds\n{USAGE}");
                    return std::process::ExitCode::from(2);
                }
            },
            "--help" | "-h" => {
                println!("{USAGE}");
                return std::process::ExitCode::SUCCESS;
            }
            f if f.starts_with("--") => {
                eprintln!("unknown option {f}\n{USAGE}");
                return std::process::ExitCode::from(2);
            }
            _ => positional.push(a),
        }
    }
    let mut positional = positional.into_iter();
    let Some(url) = positional.next() else {
        eprintln!("{USAGE}");
        return std::process::ExitCode::from(2);
    };
    let meeting = positional.next().unwrap_or_else(|| "reference".into());
    let start = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut received = HashMap::new();
    loop {
        let run = session(&url, &meeting, start, &opts, &mut received);
        let result = match opts.seconds {
            Some(n) => {
                let end = tokio::time::Instant::from_std(start + Duration::from_secs(n));
                match tokio::time::timeout_at(end, run).await {
                    Ok(r) => r,
                    Err(_) => {
                        report(&received);
                        return std::process::ExitCode::SUCCESS;
                    }
                }
            }
            None => run.await,
        };
        match result {
            Ok(true) => {
                // Told to go away for good, or closed normally.
                return std::process::ExitCode::SUCCESS;
            }
            Ok(false) => {
                eprintln!(
                    "reference-client: the server is shutting down; reconnecting in {backoff:?}"
                );
            }
            Err(e) => {
                eprintln!("reference-client: {e}; reconnecting in {backoff:?}");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn now(start: Instant) -> Timestamp {
    Timestamp(start.elapsed().as_micros() as u64)
}

/// Prints what arrived, one entry per `sender/track`.
fn report(received: &HashMap<(u32, u32), Received>) {
    let tracks: BTreeMap<String, serde_json::Value> = received
        .iter()
        .map(|((sender, track), r)| {
            (
                format!("{sender}/{track}"),
                serde_json::json!({
                    "kind": r.kind,
                    "frames": r.frames,
                    "keys": r.keys,
                    "not_ahead": r.not_ahead,
                }),
            )
        })
        .collect();
    println!("{}", serde_json::json!({ "tracks": tracks }));
}

/// Notes the kind of a track announced in the roster.
fn announce(received: &mut HashMap<(u32, u32), Received>, sender: u32, t: &TrackInfo) {
    let kind = if t.kind == TrackKind::Audio as i32 {
        "audio"
    } else {
        "video"
    };
    received.entry((sender, t.track_id)).or_default().kind = kind;
}

/// One connection. Ok(true): done for good; Ok(false): reconnect.
async fn session(
    url: &str,
    meeting: &str,
    start: Instant,
    opts: &Options,
    received: &mut HashMap<(u32, u32), Received>,
) -> Result<bool, String> {
    let broken = opts.broken;
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let (mut sink, mut stream) = ws.split();
    let config = ClientSessionConfig {
        client_kind: ClientKind::Native,
        client_version: concat!("convene-reference-client/", env!("CARGO_PKG_VERSION")).into(),
        ..ClientSessionConfig::default()
    };
    let mut s = ClientSession::new(now(start), config);
    s.connected(now(start));
    let mut seq = 0u32;
    let mut publishing = false;
    let mut key_wanted = true;
    let mut last_key = Instant::now();
    let mut next_frame = tokio::time::Instant::now();
    loop {
        while let Some(ev) = s.poll_event() {
            match ev {
                ClientEvent::Welcome(_) => {
                    s.join(now(start), meeting, "reference client", true)
                        .map_err(|e| e.to_string())?;
                }
                ClientEvent::Joined(j) => {
                    for p in &j.participants {
                        for t in &p.tracks {
                            announce(received, p.participant_id, t);
                        }
                    }
                    if !opts.publish {
                        continue;
                    }
                    let track = TrackInfo {
                        track_id: TRACK,
                        kind: TrackKind::Video as i32,
                        codec: "avc1.42E01F".into(),
                        width: 320,
                        height: 240,
                        frame_rate: 15,
                        ..Default::default()
                    };
                    s.send(now(start), C::Publish(v1::Publish { track: Some(track) }))
                        .map_err(|e| e.to_string())?;
                    publishing = true;
                }
                ClientEvent::Room(S::TrackPublished(p)) => {
                    if let Some(t) = &p.track {
                        announce(received, p.participant_id, t);
                    }
                }
                ClientEvent::Media(m) => {
                    let h = m.header();
                    let r = received.entry((h.sender, h.track_id)).or_default();
                    r.frames += 1;
                    r.keys += u64::from(h.key);
                    let d = r.last.map(|l| h.sequence.wrapping_sub(l));
                    if d.is_some_and(|d| d == 0 || d >= 1 << 31) {
                        r.not_ahead += 1;
                    } else {
                        r.last = Some(h.sequence);
                    }
                }
                ClientEvent::Room(S::KeyFrameRequest(k)) if k.track_id == TRACK && !broken => {
                    key_wanted = true
                }
                ClientEvent::Closed => {
                    while let Some(f) = s.poll_transmit() {
                        let _ = sink.send(Message::Binary(f)).await;
                    }
                    let reason = s.close_reason().cloned();
                    let code = reason.as_ref().map_or(1000, |r| r.websocket_code());
                    let _ = sink
                        .send(Message::Close(Some(
                            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                                code: code.into(),
                                reason: reason.as_ref().map_or("", |r| r.transport_reason()).into(),
                            },
                        )))
                        .await;
                    let shutdown = reason.and_then(|r| r.goodbye) == Some(GoodbyeReason::Shutdown);
                    return Ok(!shutdown);
                }
                _ => {}
            }
        }
        // Events may have queued frames (Join, Publish): send them before waiting.
        while let Some(f) = s.poll_transmit() {
            sink.send(Message::Binary(f))
                .await
                .map_err(|e| e.to_string())?;
        }
        let deadline = s
            .poll_timeout()
            .map(|t| tokio::time::Instant::from_std(start + Duration::from_micros(t.0)));
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => s.handle_frame(now(start), b),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    s.handle_transport_closed();
                    return Err("the connection closed".into());
                }
                Some(Ok(_)) => {}
            },
            _ = sleep_until(deadline) => s.handle_timeout(now(start)),
            _ = tokio::time::sleep_until(next_frame), if publishing => {
                next_frame += Duration::from_millis(66);
                let interval = if broken { Duration::from_secs(3600) } else { Duration::from_secs(2) };
                let key = key_wanted || last_key.elapsed() >= interval;
                if key {
                    key_wanted = false;
                    last_key = Instant::now();
                }
                let header = MediaHeader {
                    key,
                    sender: 0,
                    track_id: TRACK,
                    sequence: seq,
                    capture_timestamp_us: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_micros() as u64)
                        .unwrap_or(0),
                };
                seq = seq.wrapping_add(1);
                let payload = Bytes::from(vec![if key { 0x65 } else { 0x41 }; 200]);
                let _ = s.send_media(now(start), MediaFrame::build(&header, None, &payload));
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
