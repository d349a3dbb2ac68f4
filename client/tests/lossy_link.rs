//! WebTransport over a bad link: 5% loss, 50 ms delay and some reordering in
//! each direction, made by a seeded user-space UDP relay (the kernel here has
//! no netem). Audio keeps flowing, video starts and recovers through
//! key-frame requests, the publisher is hinted to lower its video bitrate,
//! and a participant on a good link loses nothing.
//!
//! Replay a failure with `CONVENE_RELAY_SEED=<seed printed by the run>`.

use std::time::{Duration, Instant};

mod common;

use common::{DEADLINE, joined, wait_for};
use convene_client::{Endpoint, TransportChoice};
use convene_protocol::v1::{
    KeyFrameRequest, TrackInfo, TrackKind, client_message::Msg as C, server_message::Msg as S,
};
use convene_protocol::{ClientEvent, MediaFrame, MediaHeader};
use convene_server::config::Config;
use convene_testkit::{Impairment, UdpRelay};

const AUDIO: u32 = 1;
const VIDEO: u32 = 2;
/// About 240 kbit/s at 30 fps: a low-rate video a 5%-loss, 100 ms-RTT path can carry.
const VIDEO_BYTES: usize = 1000;

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn frame(track: u32, seq: u32, key: bool, len: usize) -> MediaFrame {
    MediaFrame::build(
        &MediaHeader {
            key,
            sender: 0,
            track_id: track,
            sequence: seq,
            capture_timestamp_us: now_us(),
        },
        None,
        &vec![0x42; len],
    )
}

/// A `--dev-tls` server on a free loopback port with `config`'s other
/// settings, and the endpoint that reaches it directly (its certificate pinned).
async fn tls_server(config: Config) -> (convene_server::Server, Endpoint) {
    let server = convene_server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        dev_tls: true,
        ..config
    })
    .await
    .unwrap();
    let hash = server.cert_sha256.clone().unwrap();
    let direct = Endpoint::new(&format!("https://127.0.0.1:{}", server.addr.port()))
        .unwrap()
        .with_cert_sha256_hex(&hash)
        .unwrap();
    (server, direct)
}

/// How long a missing video frame is waited for before it counts as lost:
/// frames travel on streams of their own and may overtake each other.
const REORDER_WINDOW: Duration = Duration::from_millis(500);

/// What a subscriber that decodes video would see: it needs a key frame to
/// start, and a new one after a frame is lost.
#[derive(Debug, Default)]
struct Receiver {
    audio: Vec<(u32, Instant)>,
    video: Vec<(u32, bool)>,
    highest: Option<u32>,
    /// Video frames not (yet) seen below the highest, since when.
    missing: std::collections::BTreeMap<u32, Instant>,
    decodable: bool,
    decodable_frames: u32,
    key_requests_sent: u32,
    last_request: Option<Instant>,
    losses: u32,
    /// Times a key frame made undecodable video decodable again.
    recoveries: u32,
}

impl Receiver {
    /// Records a frame; returns true when a key frame should be requested.
    fn on_media(&mut self, m: &MediaFrame) -> bool {
        let h = m.header();
        let now = Instant::now();
        if h.track_id == AUDIO {
            self.audio.push((h.sequence, now));
            return false;
        }
        self.video.push((h.sequence, h.key));
        self.missing.remove(&h.sequence);
        match self.highest {
            Some(top) if h.sequence > top => {
                for s in top + 1..h.sequence {
                    self.missing.insert(s, now);
                }
                self.highest = Some(h.sequence);
            }
            None => self.highest = Some(h.sequence),
            _ => {}
        }
        let lost: Vec<u32> = self
            .missing
            .iter()
            .filter(|(_, t)| now - **t > REORDER_WINDOW)
            .map(|(s, _)| *s)
            .collect();
        for s in &lost {
            self.missing.remove(s);
        }
        if !lost.is_empty() {
            self.losses += 1;
            self.decodable = false;
        }
        if h.key && !self.decodable {
            self.decodable = true;
            self.recoveries += 1;
        }
        if self.decodable {
            self.decodable_frames += 1;
            return false;
        }
        // Undecodable until a key frame: ask, but not more than twice a second.
        let ask = self
            .last_request
            .is_none_or(|t| now - t > Duration::from_millis(500));
        if ask {
            self.last_request = Some(now);
        }
        ask
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_link_keeps_audio_flowing_and_video_recovers_through_key_frame_requests() {
    let seed: u64 = std::env::var("CONVENE_RELAY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED);
    println!("relay seed {seed} (set CONVENE_RELAY_SEED to replay)");
    let (server, direct) = tls_server(Config::default()).await;
    // 5% loss, 50 ms (±5 ms) one-way delay, 3% of datagrams overtaken, each way.
    let bad = Impairment {
        loss: 0.05,
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(5),
        reorder: 0.03,
        reorder_by: Duration::from_millis(15),
        ..Impairment::NONE
    };
    let relay = UdpRelay::start(server.wt_addr.unwrap(), bad, bad, seed)
        .await
        .unwrap();
    let mut lossy_ep = direct.clone();
    lossy_ep.wt_port = Some(relay.addr().port());

    let meeting = "lossy";
    let mut publisher = joined(&direct, TransportChoice::WebTransport, meeting).await;
    let mut healthy = joined(&direct, TransportChoice::WebSocket, meeting).await;
    for (id, kind) in [(AUDIO, TrackKind::Audio), (VIDEO, TrackKind::Video)] {
        publisher
            .publish(TrackInfo {
                track_id: id,
                kind: kind as i32,
                codec: if id == AUDIO { "opus" } else { "avc1.42E01F" }.into(),
                ..Default::default()
            })
            .unwrap();
        let me = publisher.participant_id();
        wait_for(&mut publisher, |e| {
            matches!(e, ClientEvent::Room(S::TrackPublished(t))
                if t.participant_id == me && t.track.as_ref().is_some_and(|t| t.track_id == id))
        })
        .await;
    }

    // The lossy subscriber joins through the relay (the handshake itself
    // crosses the bad link).
    let t = Instant::now();
    let mut lossy = joined(&lossy_ep, TransportChoice::WebTransport, meeting).await;
    println!("joined through the relay in {:?}", t.elapsed());

    // The publisher makes key frames only when asked, so every key frame the
    // lossy subscriber sees answers a request.
    let pid = publisher.participant_id();
    let (mut audio_seq, mut video_seq) = (0u32, 0u32);
    let mut key_wanted = false;
    let mut key_requests_seen = 0;
    let mut hints = Vec::new();
    let mut keys_sent = 0;
    let mut lossy_rx = Receiver::default();
    let mut healthy_rx = Receiver::default();
    let mut audio_sent = 0u32;
    let mut audio_tick = tokio::time::interval(Duration::from_millis(20));
    let mut video_tick = tokio::time::interval(Duration::from_millis(33));
    let started = Instant::now();
    let stop_at = Duration::from_millis(4000);

    while started.elapsed() < stop_at {
        tokio::select! {
            _ = audio_tick.tick() => {
                publisher.send_media(frame(AUDIO, audio_seq, true, 120)).unwrap();
                audio_seq += 1;
                audio_sent += 1;
            }
            _ = video_tick.tick() => {
                let key = std::mem::take(&mut key_wanted);
                keys_sent += key as u32;
                publisher.send_media(frame(VIDEO, video_seq, key, VIDEO_BYTES)).unwrap();
                video_seq += 1;
            }
            e = publisher.next_event() => match e {
                Some(ClientEvent::Room(S::KeyFrameRequest(k))) if k.track_id == VIDEO => {
                    key_requests_seen += 1;
                    key_wanted = true;
                }
                Some(ClientEvent::Room(S::CongestionHint(h))) => hints.push(h),
                Some(_) => {}
                None => panic!("publisher closed: {:?}", publisher.close_reason()),
            },
            e = healthy.next_event() => match e {
                Some(ClientEvent::Media(m)) => { healthy_rx.on_media(&m); }
                Some(_) => {}
                None => panic!("healthy subscriber closed: {:?}", healthy.close_reason()),
            },
            e = lossy.next_event() => match e {
                Some(ClientEvent::Media(m)) => {
                    if lossy_rx.on_media(&m) {
                        lossy_rx.key_requests_sent += 1;
                        lossy.send(C::KeyFrameRequest(KeyFrameRequest {
                            participant_id: pid,
                            track_id: VIDEO,
                            ..Default::default()
                        })).unwrap();
                    }
                }
                Some(_) => {}
                None => panic!("lossy subscriber closed: {:?}", lossy.close_reason()),
            },
        }
    }
    // Let what is in flight over the slow path arrive.
    let _ = tokio::time::timeout(Duration::from_millis(700), async {
        while let Some(e) = lossy.next_event().await {
            if let ClientEvent::Media(m) = e {
                lossy_rx.on_media(&m);
            }
        }
    })
    .await;

    let stats = relay.stats();
    let lost = stats.lost.load(std::sync::atomic::Ordering::Relaxed);
    let reordered = stats.reordered.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "relay: {lost} lost, {reordered} reordered; lossy subscriber: {} audio of {audio_sent}, {} video ({} decodable), {} losses, {} key requests; publisher: {key_requests_seen} requests, {keys_sent} keys",
        lossy_rx.audio.len(),
        lossy_rx.video.len(),
        lossy_rx.decodable_frames,
        lossy_rx.losses,
        lossy_rx.key_requests_sent
    );
    println!("congestion hints to the publisher: {hints:?}");
    println!(
        "healthy: {} audio, {} video",
        healthy_rx.audio.len(),
        healthy_rx.video.len()
    );
    assert!(lost > 0 && reordered > 0, "the link really was impaired");
    // QUIC saw the losses on the lossy subscriber's path, and the server
    // asked the publisher to lower its video bitrate (PROTOCOL.md §6.5).
    assert!(
        hints.iter().any(|h| h.track_id == VIDEO
            && h.reason == convene_protocol::v1::CongestionReason::SubscriberLoss as i32),
        "no congestion hint for the video: {hints:?}"
    );

    // Audio keeps flowing: most frames arrive, and never a long silence.
    assert!(
        lossy_rx.audio.len() as f64 >= 0.75 * audio_sent as f64,
        "audio: {} of {audio_sent}",
        lossy_rx.audio.len()
    );
    let longest_silence = lossy_rx
        .audio
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .max()
        .unwrap_or_default();
    assert!(
        longest_silence < Duration::from_millis(1000),
        "audio stalled for {longest_silence:?}"
    );

    // Video: the publisher makes key frames only on request (the server's on
    // the newcomer's behalf, or the subscriber's own after a loss), so each
    // key frame that made the video decodable answered a request.
    assert!(
        lossy_rx.recoveries >= 1,
        "a requested key frame made video decodable"
    );
    assert!(key_requests_seen >= 1, "the request reached the publisher");
    assert!(keys_sent >= 1, "the publisher answered with a key frame");
    assert!(
        lossy_rx.video.iter().any(|(_, key)| *key),
        "a key frame reached the lossy subscriber"
    );
    assert!(
        lossy_rx.decodable_frames >= 20,
        "video decodable for a good part of the run: {} frames",
        lossy_rx.decodable_frames
    );
    // Every loss was followed by a key frame that made it decodable again,
    // unless the loss came in the last second.
    assert!(
        lossy_rx.decodable
            || lossy_rx
                .last_request
                .is_some_and(|t| t.elapsed() < Duration::from_millis(1700)),
        "video recovered after its last loss"
    );
    // It ends up current: the last frames sent reached it.
    let newest = lossy_rx.video.iter().map(|(s, _)| *s).max().unwrap();
    assert!(
        newest + 5 >= video_seq,
        "video caught up: newest {newest} of {video_seq}"
    );

    // The participant on a good link lost nothing (frames on separate QUIC
    // streams may arrive out of order, so compare as sets).
    let mut seqs: Vec<u32> = healthy_rx.video.iter().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), healthy_rx.video.len(), "no duplicates");
    assert_eq!(healthy_rx.losses, 0);
    assert!(
        seqs.iter().copied().eq(0..seqs.len() as u32),
        "healthy subscriber saw every video frame from the first"
    );
    assert!(
        seqs.len() as u32 + 3 >= video_seq,
        "{} of {video_seq}",
        seqs.len()
    );
    assert!(healthy_rx.audio.len() as u32 + 3 >= audio_seq);
    server.shutdown().await;
}

/// A subscriber whose acknowledgements stop arriving (the relay cuts its
/// path to the server; the server still reaches it) costs the server at most
/// QUIC's send window: then its frames wait in its queue, the queue
/// overflows, and the slow-subscriber rule ends its session, while a healthy
/// subscriber of the same publisher keeps getting every frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_acknowledging_is_cut_off_as_slow_and_harms_nobody() {
    let (server, direct) = tls_server(Config {
        slow_consumer_ms: 1000,
        max_queue_bytes: 256 * 1024,
        // Only the slow-subscriber rule may end the session within the test.
        heartbeat_interval_ms: 30_000,
        idle_timeout_ms: 90_000,
        ..Config::default()
    })
    .await;
    let relay = UdpRelay::start(
        server.wt_addr.unwrap(),
        Impairment::NONE,
        Impairment::NONE,
        1,
    )
    .await
    .unwrap();
    let mut via_relay = direct.clone();
    via_relay.wt_port = Some(relay.addr().port());

    let meeting = "stops-acking";
    let mut publisher = joined(&direct, TransportChoice::WebTransport, meeting).await;
    let mut healthy = joined(&direct, TransportChoice::WebSocket, meeting).await;
    let mut silent = joined(&via_relay, TransportChoice::WebTransport, meeting).await;
    let silent_id = silent.participant_id();
    publisher
        .publish(TrackInfo {
            track_id: VIDEO,
            kind: TrackKind::Video as i32,
            codec: "avc1.42E01F".into(),
            ..Default::default()
        })
        .unwrap();
    // 60 kB key frames at 10 a second: 600 kB/s, under the ingress limit.
    const BIG: usize = 60_000;
    let mut seq = 0u32;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // Frames flow to the subscriber through the relay first.
    tokio::time::timeout(DEADLINE, async {
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    seq += 1;
                    let _ = publisher.send_media(frame(VIDEO, seq, true, BIG));
                }
                ev = silent.next_event() => {
                    if matches!(ev, Some(ClientEvent::Media(_))) {
                        break;
                    }
                    assert!(ev.is_some(), "the subscriber's session ended early");
                }
                _ = healthy.next_event() => {}
                _ = publisher.next_event() => {}
            }
        }
    })
    .await
    .expect("a frame reaches the subscriber behind the relay");

    relay.cut_up(true);
    let cut_at = seq;
    let mut healthy_seen = Vec::new();
    let left = tokio::time::timeout(Duration::from_secs(45), async {
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    seq += 1;
                    let _ = publisher.send_media(frame(VIDEO, seq, true, BIG));
                }
                ev = publisher.next_event() => match ev {
                    Some(ClientEvent::Room(S::ParticipantLeft(l))) if l.participant_id == silent_id => {
                        return seq;
                    }
                    None => panic!("the publisher's session ended: {:?}", publisher.close_reason()),
                    _ => {}
                },
                ev = healthy.next_event() => match ev {
                    Some(ClientEvent::Media(m)) => healthy_seen.push(m.header().sequence),
                    None => panic!("the healthy subscriber's session ended: {:?}", healthy.close_reason()),
                    _ => {}
                },
                // The silent one's own client keeps running; what it hears does not matter.
                _ = silent.next_event() => {}
            }
        }
    })
    .await
    .expect("the subscriber that stopped acknowledging is removed");
    let slow = server
        .state
        .metrics
        .drops
        .get_or_create(&convene_server::metrics::ReasonLabel {
            reason: "slow_consumer".into(),
        })
        .get();
    println!(
        "cut after frame {cut_at}, removed after frame {left}; the healthy subscriber got {} frames",
        healthy_seen.len()
    );
    assert_eq!(slow, 1, "ended as a slow consumer");
    // What it could pile up is bounded by QUIC's send window (1 MiB), the
    // frames being written (32), its queue (256 KiB) and one second of
    // overflow: about 60 frames here. With quinn's default window (10 MB)
    // it took about 150.
    assert!(
        left - cut_at <= 110,
        "{} frames of 60 kB were sent before it was cut off",
        left - cut_at
    );
    // The healthy subscriber got every frame sent meanwhile, in order
    // (the last ones may still be on their way).
    let after_cut: Vec<u32> = healthy_seen.into_iter().filter(|s| *s > cut_at).collect();
    assert!(
        after_cut.len() as u32 + 3 >= left - cut_at,
        "{} of {} frames",
        after_cut.len(),
        left - cut_at
    );
    assert!(after_cut.windows(2).all(|w| w[0] < w[1]));
    server.shutdown().await;
}
