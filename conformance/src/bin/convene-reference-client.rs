//! A minimal Convene client over WebSocket, built on the sans-IO
//! `ClientSession`: it joins a meeting, publishes a synthetic video track
//! (a key frame every 2 s and whenever asked), and reconnects after
//! Goodbye(SHUTDOWN). It is the client the conformance suite's client mode is
//! checked against until the native client exists.
//!
//! Usage: `convene-reference-client URL [MEETING] [--ignore-key-frame-requests]`
//! (the flag breaks it on purpose, to show the suite notices).

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

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let broken = std::env::args().any(|a| a == "--ignore-key-frame-requests");
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let Some(url) = args.next() else {
        eprintln!("usage: convene-reference-client URL [MEETING]");
        return std::process::ExitCode::from(2);
    };
    let meeting = args.next().unwrap_or_else(|| "reference".into());
    let start = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        match session(&url, &meeting, start, broken).await {
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

/// One connection. Ok(true): done for good; Ok(false): reconnect.
async fn session(url: &str, meeting: &str, start: Instant, broken: bool) -> Result<bool, String> {
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
                ClientEvent::Joined(_) => {
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
