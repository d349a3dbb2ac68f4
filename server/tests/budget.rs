//! A subscriber's bandwidth budget over real sockets (PROTOCOL.md §6.6.3,
//! §6.6.4): a publisher sends a track as three encodings; a subscriber whose
//! `max_receive_kbps` covers only the lowest receives only that one while a
//! subscriber without a cap receives the top one, and raising the cap moves
//! it up at the next key frame. The WebSocket connections' `TCP_INFO`
//! estimates show up in `/metrics`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Client, DEADLINE, Seen, http_get, server};
use convene_protocol::v1::{self, client_message::Msg as C, server_message::Msg as S};
use convene_protocol::{Layer, MediaFrame, MediaHeader};

/// The encodings: size and announced kbit/s, lowest first.
const ENCODINGS: [(u32, u32, u32); 3] = [(320, 180, 100), (640, 360, 300), (1280, 720, 900)];
/// Every tenth picture is a key picture (a third of a second at 30 fps).
const KEY_EVERY: u32 = 10;

fn publish_simulcast() -> C {
    C::Publish(v1::Publish {
        track: Some(v1::TrackInfo {
            track_id: 1,
            kind: v1::TrackKind::Video as i32,
            codec: "vp8".into(),
            width: 1280,
            height: 720,
            frame_rate: 30,
            encodings: ENCODINGS
                .iter()
                .map(|&(width, height, kbps)| v1::Encoding {
                    width,
                    height,
                    frame_rate: 30,
                    target_bitrate_kbps: kbps,
                    temporal_layers: 1,
                })
                .collect(),
            ..Default::default()
        }),
    })
}

/// Picture `seq` in each encoding, lowest first, as LAYERED frames.
fn picture(seq: u32) -> [Bytes; 3] {
    [0u8, 1, 2].map(|encoding| {
        let h = MediaHeader {
            key: seq % KEY_EVERY == 1,
            sender: 0,
            track_id: 1,
            sequence: seq,
            capture_timestamp_us: 1_000_000 + seq as u64 * 33_333,
        };
        let layer = Layer {
            encoding,
            ..Layer::default()
        };
        MediaFrame::build_layered(layer, &h, None, &[encoding; 200])
            .as_wire()
            .clone()
    })
}

/// Sends a picture every 33 ms until `stop`, answering the server's pings.
fn publish_pictures(mut p: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(33));
        let mut seq = 0u32;
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                _ = tick.tick() => {
                    seq += 1;
                    for f in picture(seq) {
                        p.feed_raw(f).await;
                    }
                    p.flush().await;
                }
                seen = p.next() => {
                    if matches!(seen, Some(Seen::Closed(_)) | None) {
                        return;
                    }
                }
            }
        }
    })
}

/// The encoding of the next media frame `c` receives.
async fn next_encoding(c: &mut Client) -> u8 {
    loop {
        match c.next().await {
            Some(Seen::Media(m)) => {
                return m.layer().expect("a LAYERED frame").encoding;
            }
            Some(Seen::Closed(code)) => panic!("closed ({code:?}) while waiting for media"),
            None => panic!("no media within {DEADLINE:?}"),
            Some(Seen::Control(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_receive_kbps_holds_a_subscriber_on_the_lowest_encoding_until_raised() {
    let s = server(|_| {}).await;
    let meeting = "budget";
    let mut capped = Client::joined_sfu(&s, meeting, false).await;
    let mut free = Client::joined_sfu(&s, meeting, true).await;
    let mut p = Client::joined_sfu(&s, meeting, false).await;
    // 250 kbit/s: the lowest encoding (100) fits, the next (300) does not.
    capped
        .send(C::ReceiverSettings(v1::ReceiverSettings {
            max_receive_kbps: 250,
            ..Default::default()
        }))
        .await;
    p.send(publish_simulcast()).await;
    capped.expect(|m| matches!(m, S::TrackPublished(_))).await;
    // Subscribed after the settings on the same connection: they apply first.
    capped
        .send(C::Subscribe(v1::Subscribe {
            participant_id: p.id,
            track_id: 1,
            preferences: None,
        }))
        .await;
    capped.expect(|m| matches!(m, S::Subscribed(_))).await;
    free.expect(|m| matches!(m, S::TrackPublished(_))).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish_pictures(p, stop.clone());

    // The free subscriber climbs to the top at the first key picture and stays.
    while next_encoding(&mut free).await != 2 {}
    for i in 0..30 {
        assert_eq!(
            next_encoding(&mut free).await,
            2,
            "free subscriber, frame {i}"
        );
    }
    // The capped one: the lowest encoding only, across several key pictures.
    for i in 0..45 {
        assert_eq!(
            next_encoding(&mut capped).await,
            0,
            "capped subscriber, frame {i}"
        );
    }

    // A higher cap: it moves up at the next key picture and stays at the top.
    capped
        .send(C::ReceiverSettings(v1::ReceiverSettings {
            max_receive_kbps: 5000,
            ..Default::default()
        }))
        .await;
    while next_encoding(&mut capped).await != 2 {}
    for i in 0..30 {
        assert_eq!(
            next_encoding(&mut capped).await,
            2,
            "raised subscriber, frame {i}"
        );
    }

    // The writers read their sockets' TCP_INFO while they sent all this.
    let (status, metrics) = http_get(&s, "/metrics").await;
    assert_eq!(status, 200);
    let samples: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("convene_path_estimate_kbps_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(samples >= 2, "no path estimates in /metrics:\n{metrics}");

    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(2), publisher).await;
    s.shutdown().await;
}
