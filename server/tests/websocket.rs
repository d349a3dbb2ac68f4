//! The server over real WebSocket connections on loopback: what the
//! conformance cases do not cover (slow readers and the congestion hints they
//! cause, abrupt disconnects, limits on connections, shutdown, TLS, metrics).

mod common;

use std::sync::Arc;

use common::*;
use convene_protocol::v1::{
    self, GoodbyeReason, TrackKind, client_message::Msg as C, server_message::Msg as S,
};
use convene_protocol::{MediaFrame, MediaHeader};

fn media(track: u32, seq: u32, key: bool, size: usize) -> bytes::Bytes {
    MediaFrame::build(
        &MediaHeader {
            key,
            sender: 0,
            track_id: track,
            sequence: seq,
            capture_timestamp_us: 0,
        },
        None,
        &vec![0u8; size],
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_costs_the_others_nothing() {
    let server = server(|c| {
        c.max_ingress_kbps = 100_000;
        // Room for a reading subscriber that a busy machine delays for a
        // while; the stalled one still overflows within seconds.
        c.slow_consumer_ms = 2_000;
        c.max_queue_bytes = 4 << 20;
        // Long enough that the stalled subscriber is cut off for slowness, not silence.
        c.heartbeat_interval_ms = 30_000;
        c.idle_timeout_ms = 90_000;
    })
    .await;
    let mut publisher = Client::joined(&server, "slow", false).await;
    let mut reader = Client::joined(&server, "slow", true).await;
    let mut stalled = Client::joined(&server, "slow", true).await;
    publisher.send(publish(1, TrackKind::Audio)).await;
    publisher.send(publish(2, TrackKind::Video)).await;
    reader
        .expect(|m| matches!(m, S::TrackPublished(t) if t.track.as_ref().unwrap().track_id == 2))
        .await;
    const LAST: u32 = u32::MAX;
    // The reading subscriber records every audio sequence number until the last one.
    let reading = tokio::spawn(async move {
        let mut seqs = Vec::new();
        loop {
            match reader.next().await {
                Some(Seen::Media(m)) if m.header().track_id == 1 => {
                    seqs.push(m.header().sequence);
                    if m.header().sequence == LAST {
                        return seqs;
                    }
                }
                Some(Seen::Closed(c)) => panic!("the reading subscriber was closed: {c:?}"),
                None => panic!(
                    "the reading subscriber stopped receiving after {} audio frames",
                    seqs.len()
                ),
                _ => {}
            }
        }
    });
    // The stalled subscriber never reads. Publish 50 fps audio and 5 MB/s of
    // video until the server cuts the stalled one off.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut seq = 0u32;
    while server.state.open_connections() == 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled subscriber was never disconnected"
        );
        publisher.feed_raw(media(1, seq, true, 100)).await;
        publisher
            .feed_raw(media(2, seq, seq.is_multiple_of(30), 100_000))
            .await;
        publisher.flush().await;
        seq += 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    publisher.send_raw(media(1, LAST, true, 100)).await;
    let seqs = reading.await.unwrap();
    let expected: Vec<u32> = (0..seq).chain([LAST]).collect();
    assert_eq!(
        seqs, expected,
        "the reading subscriber lost or reordered audio"
    );
    // The stalled connection is closed (its close frame may not get through a full socket).
    stalled.expect_close().await;
    let (_, metrics) = http_get(&server, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("convene_frames_dropped_total{reason=\"slow_consumer\"} 1")),
        "slow consumer not counted:\n{metrics}"
    );
    // The publisher was asked to lower its video bitrate while the stalled
    // subscriber's queue dropped its frames (PROTOCOL.md §6.5).
    let hint = publisher
        .expect(|m| matches!(m, S::CongestionHint(h) if h.track_id == 2))
        .await;
    let S::CongestionHint(hint) = hint else {
        unreachable!()
    };
    assert_eq!(hint.reason, v1::CongestionReason::SubscriberLoss as i32);
    assert!(
        (64..40_000).contains(&hint.target_bitrate_kbps),
        "70 % of ~40 Mbit/s of video, or the floor: {hint:?}"
    );
    // The publisher is still served.
    publisher.send(C::Ping(v1::Ping { timestamp_us: 77 })).await;
    publisher
        .expect(|m| matches!(m, S::Pong(p) if p.timestamp_us == 77))
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abrupt_disconnect_leaves_the_room() {
    let server = server(|_| {}).await;
    let mut a = Client::joined(&server, "abrupt", false).await;
    let b = Client::joined(&server, "abrupt", false).await;
    let b_id = b.id;
    drop(b); // no Goodbye, no close frame
    a.expect(|m| matches!(m, S::ParticipantLeft(l) if l.participant_id == b_id))
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_limited() {
    let server = server(|c| c.max_connections_per_ip = 2).await;
    let _a = Client::joined(&server, "per-ip", false).await;
    let _b = Client::joined(&server, "per-ip", false).await;
    // A third session from the same address is refused in answer to its Hello.
    let mut c = Client::connect(&server).await;
    c.send(C::Hello(v1::Hello {
        versions: vec![1],
        ..Default::default()
    }))
    .await;
    let e = c.expect(|m| matches!(m, S::Error(_))).await;
    let S::Error(e) = e else { unreachable!() };
    assert_eq!(
        e.code,
        convene_protocol::ErrorCode::TooManyConnections as i32
    );
    assert_eq!(c.expect_close().await, Some(4222));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_goodbye_and_refuses_new_sessions() {
    let server = Arc::new(server(|_| {}).await);
    let mut a = Client::joined(&server, "bye", false).await;
    let state = server.state.clone();
    state.begin_shutdown();
    let g = a.expect(|m| matches!(m, S::Goodbye(_))).await;
    assert!(matches!(g, S::Goodbye(g) if g.reason == GoodbyeReason::Shutdown as i32));
    assert_eq!(a.expect_close().await, Some(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_discovery() {
    let server = server(|_| {}).await;
    assert_eq!(
        http_get(&server, "/healthz").await,
        (200, "ok\n".to_string())
    );
    assert_eq!(http_get(&server, "/readyz").await.0, 200);
    let mut a = Client::joined(&server, "metrics", false).await;
    let mut b = Client::joined(&server, "metrics", true).await;
    a.send(publish(1, TrackKind::Audio)).await;
    b.expect(|m| matches!(m, S::TrackPublished(_))).await;
    a.send_raw(media(1, 0, true, 10)).await;
    loop {
        if let Some(Seen::Media(_)) = b.next().await {
            break;
        }
    }
    let (status, body) = http_get(&server, "/metrics").await;
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{body}"))
    };
    assert_eq!(value("convene_rooms "), 1.0);
    assert_eq!(value("convene_participants "), 2.0);
    assert!(value("convene_media_deliveries_total") >= 1.0);
    assert!(value("convene_frames_in_total") >= 5.0);
    assert!(body.contains("convene_fanout_seconds_bucket"));
    let (_, discovery) = http_get(&server, "/.well-known/convene.json").await;
    let d: serde_json::Value = serde_json::from_str(&discovery).unwrap();
    assert_eq!(d["websocket"], "ws://test/convene/ws");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_and_server_capacity_limits_answer_with_their_errors() {
    let server = server(|c| {
        c.max_participants_per_room = 2;
        c.max_rooms = 1;
    })
    .await;
    let _a = Client::joined(&server, "cap", false).await;
    let _b = Client::joined(&server, "cap", false).await;
    let join_error = |meeting: &'static str| {
        let server = &server;
        async move {
            let mut c = Client::connect(server).await;
            c.send(C::Hello(v1::Hello {
                versions: vec![1],
                ..Default::default()
            }))
            .await;
            c.expect(|m| matches!(m, S::Welcome(_))).await;
            c.send(C::Join(v1::Join {
                meeting_id: meeting.into(),
                display_name: "late".into(),
                subscribe_all: false,
            }))
            .await;
            let S::Error(e) = c.expect(|m| matches!(m, S::Error(_))).await else {
                unreachable!()
            };
            // A refused Join is not fatal: the session stays usable.
            c.send(C::Ping(v1::Ping { timestamp_us: 5 })).await;
            c.expect(|m| matches!(m, S::Pong(_))).await;
            e.code
        }
    };
    assert_eq!(
        join_error("cap").await,
        convene_protocol::ErrorCode::RoomFull as i32
    );
    assert_eq!(
        join_error("other").await,
        convene_protocol::ErrorCode::TooManyRooms as i32
    );
    let (_, metrics) = http_get(&server, "/metrics").await;
    assert!(
        metrics.contains("convene_protocol_errors_total{code=\"ROOM_FULL\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("convene_protocol_errors_total{code=\"TOO_MANY_ROOMS\"} 1"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_connection_limit_refuses_with_too_many_connections() {
    let server = server(|c| c.max_connections = 1).await;
    let _a = Client::joined(&server, "one", false).await;
    let mut b = Client::connect(&server).await;
    b.send(C::Hello(v1::Hello {
        versions: vec![1],
        ..Default::default()
    }))
    .await;
    let S::Error(e) = b.expect(|m| matches!(m, S::Error(_))).await else {
        unreachable!()
    };
    assert_eq!(
        e.code,
        convene_protocol::ErrorCode::TooManyConnections as i32
    );
    assert_eq!(b.expect_close().await, Some(4222));
    server.shutdown().await;
}

/// WebSocket pings are not traffic (PROTOCOL.md §3.2, §9.2): a client that
/// sends only WebSocket pings, and never answers the protocol's Ping, is
/// closed with IDLE_TIMEOUT like a silent one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_pings_do_not_keep_a_session_alive() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = server(|c| {
        c.heartbeat_interval_ms = 300;
        c.idle_timeout_ms = 1_000;
    })
    .await;
    let mut c = Client::joined(&server, "ws-pings", false).await;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if c.ws.send(Message::Ping(vec![1, 2, 3].into())).await.is_err() {
                        return None;
                    }
                }
                m = c.ws.next() => match m {
                    // The protocol's Pings stay unanswered: only WebSocket pings go out.
                    Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return None,
                },
            }
        }
    })
    .await
    .expect("a session kept up only by WebSocket pings must be closed for idleness");
    assert_eq!(
        closed,
        Some(4000 + convene_protocol::ErrorCode::IdleTimeout as u16)
    );
    server.shutdown().await;
}

/// Shutdown ends as soon as the last connection has gone (its drop guard
/// wakes it), not when the grace period runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_when_the_last_connection_closes_not_at_the_grace_deadline() {
    let server = server(|c| c.shutdown_grace_ms = 120_000).await;
    let mut c = Client::joined(&server, "bye", false).await;
    let state = server.state.clone();
    let started = tokio::time::Instant::now();
    let shutting = tokio::spawn(server.shutdown());
    // The client reads its Goodbye and the close, and goes.
    assert_eq!(c.expect_close().await, Some(1000));
    drop(c);
    tokio::time::timeout(std::time::Duration::from_secs(60), shutting)
        .await
        .expect("shutdown waited for the grace period although every connection had closed")
        .unwrap();
    assert_eq!(state.open_connections(), 0);
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}
