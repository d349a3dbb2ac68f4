//! One meeting over several server nodes, with real WebSocket clients on
//! each: roster, tracks, media, key-frame requests, chat and leaving all
//! cross, exactly as on one node; over the in-process bus and over a real
//! `nats-server`. Over NATS also: a node killed outright leaves the others'
//! rosters, and a NATS outage leaves each node serving its own participants
//! (not ready) until NATS is back and the rosters are resynchronised. And
//! dynacast across nodes: a simulcast publisher on one node hears which of
//! its encodings the subscribers on another node want (PROTOCOL.md §6.6.5).

mod common;

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::nats::NatsServer;
use common::process::Node;
use common::{Client, DEADLINE, Seen, http_get_addr};
use convene_protocol::v1::{self, client_message::Msg as C, server_message::Msg as S};
use convene_protocol::{Layer, MediaFrame, MediaHeader};
use convene_server::bus::{InProcessHub, NodeId, PARTICIPANT_BITS};
use convene_server::config::Config;

async fn node(hub: &std::sync::Arc<InProcessHub>, id: NodeId) -> convene_server::Server {
    let (bus, inbound) = hub.attach(id);
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    convene_server::start_node(config, bus, Some(inbound))
        .await
        .expect("node starts")
}

/// Waits until `c` knows `pid` is in the room: in Joined, or announced later.
async fn sees(c: &mut Client, joined: &v1::Joined, pid: u32) {
    if joined.participants.iter().any(|p| p.participant_id == pid) {
        return;
    }
    c.expect(|m| matches!(m, S::ParticipantJoined(j) if j.participant.as_ref().is_some_and(|p| p.participant_id == pid)))
        .await;
}

async fn join(server: SocketAddr, meeting: &str) -> (Client, v1::Joined) {
    let mut c = Client::connect_addr(server).await;
    c.send(C::Hello(v1::Hello {
        versions: vec![1],
        ..Default::default()
    }))
    .await;
    let S::Welcome(w) = c.expect(|m| matches!(m, S::Welcome(_))).await else {
        unreachable!()
    };
    c.id = w.participant_id;
    c.send(C::Join(v1::Join {
        meeting_id: meeting.into(),
        display_name: format!("p{}", c.id),
        subscribe_all: true,
    }))
    .await;
    let S::Joined(j) = c.expect(|m| matches!(m, S::Joined(_))).await else {
        unreachable!()
    };
    (c, j)
}

fn video(seq: u32, key: bool) -> Bytes {
    MediaFrame::build(
        &MediaHeader {
            key,
            sender: 0,
            track_id: 1,
            sequence: seq,
            capture_timestamp_us: 0,
        },
        None,
        b"picture",
    )
    .into_bytes()
}

async fn next_media(c: &mut Client) -> MediaFrame {
    loop {
        match c.next().await {
            Some(Seen::Media(m)) => return m,
            Some(Seen::Closed(code)) => panic!("closed ({code:?}) while waiting for media"),
            None => panic!("no media within {DEADLINE:?}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_spans_two_nodes() {
    let hub = InProcessHub::new();
    let n1 = node(&hub, 1).await;
    let n2 = node(&hub, 2).await;
    spans_two_nodes(n1.addr, n2.addr, (1, 2)).await;
    n1.shutdown().await;
    n2.shutdown().await;
}

/// A node of a NATS cluster, in this process.
async fn nats_node(nats: &NatsServer, id: NodeId) -> convene_server::Server {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        bus: Some(nats.url()),
        node_id: Some(id),
        node_timeout_ms: 1_500,
        ..Config::default()
    };
    let server = convene_server::start(config).await.expect("node starts");
    ready(server.addr, true).await;
    server
}

/// Waits until `/readyz` says `ready`.
async fn ready(addr: SocketAddr, ready: bool) {
    let want = if ready { 200 } else { 503 };
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = http_get_addr(addr, "/readyz").await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr}/readyz still says {status} {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_spans_two_nodes_over_nats() {
    let nats = NatsServer::start();
    let n1 = nats_node(&nats, 1).await;
    let n2 = nats_node(&nats, 2).await;
    spans_two_nodes(n1.addr, n2.addr, (1, 2)).await;
    n1.shutdown().await;
    n2.shutdown().await;
}

/// The whole cross-node scenario, between the nodes at `n1` and `n2`.
async fn spans_two_nodes(n1: SocketAddr, n2: SocketAddr, ids: (u32, u32)) {
    let (mut alice, _) = join(n1, "m").await;
    let (mut bob, bob_joined) = join(n2, "m").await;
    // Ids carry their node and never collide.
    assert_eq!(alice.id >> PARTICIPANT_BITS, ids.0);
    assert_eq!(bob.id >> PARTICIPANT_BITS, ids.1);
    sees(&mut bob, &bob_joined, alice.id).await;
    let bob_id = bob.id;
    alice
        .expect(|m| matches!(m, S::ParticipantJoined(j) if j.participant.as_ref().is_some_and(|p| p.participant_id == bob_id)))
        .await;

    // A track published on node 1 is announced on node 2, and its media
    // reaches the subscriber there stamped with the publisher's id.
    alice.send(common::publish(1, v1::TrackKind::Video)).await;
    let alice_id = alice.id;
    bob.expect(|m| matches!(m, S::TrackPublished(p) if p.participant_id == alice_id))
        .await;
    alice.send_raw(video(0, true)).await;
    let m = next_media(&mut bob).await;
    assert_eq!(m.header().sender, alice.id);
    assert_eq!(m.payload().as_ref(), b"picture");

    // Bob asks for a key frame: it reaches Alice on the other node, from Bob.
    bob.send(C::KeyFrameRequest(v1::KeyFrameRequest {
        participant_id: alice.id,
        track_id: 1,
        ..Default::default()
    }))
    .await;
    alice
        .expect(
            |m| matches!(m, S::KeyFrameRequest(k) if k.participant_id == bob_id && k.track_id == 1),
        )
        .await;

    // Chat crosses with the sender's id.
    bob.send(C::Chat(v1::ChatSend {
        text: "hello from node 2".into(),
        ..Default::default()
    }))
    .await;
    alice
        .expect(|m| matches!(m, S::Chat(c) if c.from_participant_id == bob_id && c.text == "hello from node 2"))
        .await;

    // A late joiner on node 2 learns of Alice and her track, and the server
    // asks Alice for a key frame on its behalf so it can start decoding:
    // coalesced with Bob's request just before, it goes out once the
    // coalescing interval is over, while Alice's video flows.
    let (mut carol, carol_joined) = join(n2, "m").await;
    sees(&mut carol, &carol_joined, alice.id).await;
    let mut seq = 1;
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        alice.send_raw(video(seq, false)).await;
        seq += 1;
        let asked = tokio::time::timeout(std::time::Duration::from_millis(50), async {
            loop {
                if let Some(Seen::Control(S::KeyFrameRequest(k))) = alice.next().await
                    && k.participant_id == 0
                    && k.track_id == 1
                {
                    return;
                }
            }
        })
        .await;
        if asked.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no key frame request for the late joiner"
        );
    }
    alice.send_raw(video(seq, true)).await;
    // Carol starts with the key frame (her queue drops deltas until one comes).
    loop {
        let m = next_media(&mut carol).await;
        assert_eq!(m.header().sender, alice.id);
        if m.header().key {
            assert_eq!(m.header().sequence, seq);
            break;
        }
    }
    // Bob receives everything Alice sent, once and in order.
    for want in 1..=seq {
        let m = next_media(&mut bob).await;
        assert_eq!(m.header().sequence, want, "bob still receives, once");
    }

    // Leaving on node 2 is seen on node 1.
    bob.ws.close(None).await.unwrap();
    alice
        .expect(|m| matches!(m, S::ParticipantLeft(l) if l.participant_id == bob_id))
        .await;
    // And a meeting on one node only stays there.
    let (mut dave, _) = join(n2, "elsewhere").await;
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), async {
            loop {
                if let Some(Seen::Control(S::ParticipantJoined(_))) = alice.next().await {
                    return;
                }
            }
        })
        .await
        .is_err(),
        "alice heard of someone in another meeting"
    );
    dave.ws.close(None).await.unwrap();
}

/// Waits until `c` knows all of `pids` are in the room: in Joined, or
/// announced later (in any order).
async fn knows_all(c: &mut Client, joined: &v1::Joined, pids: &[u32]) {
    let missing: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|pid| !joined.participants.iter().any(|p| p.participant_id == *pid))
        .collect();
    hears_joined(c, &missing).await;
}

/// Waits until `c` has heard every one of `pids` join (in any order).
async fn hears_joined(c: &mut Client, pids: &[u32]) {
    let mut left: Vec<u32> = pids.to_vec();
    while !left.is_empty() {
        let S::ParticipantJoined(j) = c
            .expect(|m| matches!(m, S::ParticipantJoined(j) if j.participant.as_ref().is_some_and(|p| left.contains(&p.participant_id))))
            .await
        else {
            unreachable!()
        };
        let pid = j.participant.map(|p| p.participant_id).unwrap_or(0);
        left.retain(|p| *p != pid);
    }
}

fn left(pid: u32) -> impl Fn(&S) -> bool {
    move |m| matches!(m, S::ParticipantLeft(l) if l.participant_id == pid)
}

fn chat(from: u32, text: &'static str) -> impl Fn(&S) -> bool {
    move |m| matches!(m, S::Chat(c) if c.from_participant_id == from && c.text == text)
}

async fn say(c: &mut Client, text: &str) {
    c.send(C::Chat(v1::ChatSend {
        text: text.into(),
        ..Default::default()
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_the_rosters_of_the_others() {
    let nats = NatsServer::start();
    let n1 = nats_node(&nats, 1).await;
    let n2 = nats_node(&nats, 2).await;
    let url = nats.url();
    let mut n3 = Node::start(&["--bus", &url, "--node-id", "3", "--node-timeout-ms", "1500"]);
    ready(n3.addr, true).await;

    // Three nodes, one participant on each, all seeing each other.
    let (mut alice, _) = join(n1.addr, "k").await;
    let (mut bob, bob_joined) = join(n2.addr, "k").await;
    let (mut carol, carol_joined) = join(n3.addr, "k").await;
    let (a, b, c) = (alice.id, bob.id, carol.id);
    assert_eq!(c >> PARTICIPANT_BITS, 3);
    hears_joined(&mut alice, &[b, c]).await;
    sees(&mut bob, &bob_joined, a).await;
    hears_joined(&mut bob, &[c]).await;
    knows_all(&mut carol, &carol_joined, &[a, b]).await;
    carol.send(common::publish(1, v1::TrackKind::Video)).await;
    alice
        .expect(|m| matches!(m, S::TrackPublished(p) if p.participant_id == c))
        .await;

    // Node 3 dies without a word: its participant leaves both other rosters
    // once the node timeout has passed, her track with her.
    let t = Instant::now();
    n3.kill();
    alice
        .expect(|m| matches!(m, S::TrackUnpublished(u) if u.participant_id == c))
        .await;
    alice.expect(left(c)).await;
    bob.expect(left(c)).await;
    println!(
        "node 3's participant left the others' rosters {:?} after the kill (node timeout 1500 ms)",
        t.elapsed()
    );

    // The survivors carry on.
    say(&mut bob, "still here").await;
    alice.expect(chat(b, "still here")).await;
    n1.shutdown().await;
    n2.shutdown().await;
}

/// Reads one sample of `name` from a `/metrics` page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_leaves_nodes_serving_locally_and_rosters_resync() {
    let mut nats = NatsServer::start();
    let port = nats.port;
    let n1 = nats_node(&nats, 1).await;
    let n2 = nats_node(&nats, 2).await;
    let (mut alice, _) = join(n1.addr, "o").await;
    let (mut bob, bob_joined) = join(n2.addr, "o").await;
    let (a, b) = (alice.id, bob.id);
    sees(&mut bob, &bob_joined, a).await;
    hears_joined(&mut alice, &[b]).await;

    nats.stop();
    // Both nodes notice and say they are not ready (a load balancer sends
    // newcomers elsewhere), but keep serving.
    ready(n1.addr, false).await;
    ready(n2.addr, false).await;
    // Each forgets the other's participants once the node timeout passes…
    alice.expect(left(b)).await;
    bob.expect(left(a)).await;
    // …and still serves its own: a newcomer on node 1 meets Alice, and they talk.
    let (mut dave, dave_joined) = join(n1.addr, "o").await;
    let d = dave.id;
    sees(&mut dave, &dave_joined, a).await;
    say(&mut dave, "anyone?").await;
    alice.expect(chat(d, "anyone?")).await;
    // What could not cross was dropped and counted, not queued.
    let (_, page) = http_get_addr(n1.addr, "/metrics").await;
    assert_eq!(metric(&page, "convene_bus_up"), 0.0);
    assert!(
        metric(&page, "convene_bus_dropped_messages") > 0.0,
        "{page}"
    );
    // Someone joins node 2 while NATS is away.
    let (mut erin, _) = join(n2.addr, "o").await;
    let e = erin.id;

    // NATS comes back: both nodes reconnect, say they are ready, and the
    // rosters are put right both ways.
    let _nats = NatsServer::start_on(port);
    ready(n1.addr, true).await;
    ready(n2.addr, true).await;
    hears_joined(&mut alice, &[b, e]).await;
    hears_joined(&mut erin, &[a, d]).await;
    // Media and chat cross again.
    erin.send(common::publish(1, v1::TrackKind::Video)).await;
    alice
        .expect(|m| matches!(m, S::TrackPublished(p) if p.participant_id == e))
        .await;
    erin.send_raw(video(0, true)).await;
    let m = next_media(&mut alice).await;
    assert_eq!(m.header().sender, e);
    say(&mut alice, "welcome back").await;
    bob.expect(chat(a, "welcome back")).await;
    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_log_in_to_nats_and_a_wrong_token_is_never_ready() {
    let nats = NatsServer::start_args(&["--auth", "bus-token-0123"]);
    let node = |token: &str| Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        bus: Some(nats.url()),
        node_id: Some(if token.starts_with("bus") { 1 } else { 2 }),
        bus_token: Some(token.to_string()),
        node_timeout_ms: 1_500,
        ..Config::default()
    };
    let wrong = convene_server::start(node("not-the-token"))
        .await
        .expect("a node starts even when NATS refuses it, and serves locally");
    let right = convene_server::start(node("bus-token-0123"))
        .await
        .expect("node starts");
    ready(right.addr, true).await;
    // Longer than the right node needed to become ready after connecting.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let (status, body) = http_get_addr(wrong.addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("bus"), "{body}");
    // It still serves its own participants.
    let (mut a, _) = join(wrong.addr, "local").await;
    let (b, _) = join(wrong.addr, "local").await;
    hears_joined(&mut a, &[b.id]).await;
    right.shutdown().await;
    wrong.shutdown().await;
}

/// Picture `seq` of a three-encoding camera (160x90, 320x180, 640x360), lowest first.
fn simulcast_picture(seq: u32) -> [Bytes; 3] {
    [0u8, 1, 2].map(|encoding| {
        let h = MediaHeader {
            key: seq % 30 == 1,
            sender: 0,
            track_id: 1,
            sequence: seq,
            capture_timestamp_us: 1_000_000 + seq as u64 * 33_333,
        };
        let layer = Layer {
            encoding,
            ..Layer::default()
        };
        MediaFrame::build_layered(layer, &h, None, &[encoding; 100])
            .as_wire()
            .clone()
    })
}

/// Sends pictures every 33 ms from `p` until it is sent an `EncodingDemand`
/// with exactly `mask`; fails after the deadline.
async fn publish_until_demand(p: &mut Client, seq: &mut u32, mask: u32) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut tick = tokio::time::interval(Duration::from_millis(33));
    let mut seen = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                *seq += 1;
                for f in simulcast_picture(*seq) {
                    p.feed_raw(f).await;
                }
                p.flush().await;
            }
            m = p.next() => match m {
                Some(Seen::Control(S::EncodingDemand(d))) => {
                    seen.push(d.active_mask);
                    if d.active_mask == mask {
                        return;
                    }
                }
                Some(Seen::Closed(code)) => panic!("publisher closed ({code:?})"),
                _ => {}
            },
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no EncodingDemand {mask:#05b} within {DEADLINE:?}; saw {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_hears_the_demand_of_subscribers_on_another_node_over_nats() {
    let nats = NatsServer::start();
    let n1 = nats_node(&nats, 1).await;
    let n2 = nats_node(&nats, 2).await;
    let mut publisher = Client::joined_sfu_addr(n1.addr, "dyn", false).await;
    let mut viewer = Client::joined_sfu_addr(n2.addr, "dyn", false).await;
    // The grace starts when the track is published, after this.
    let started = Instant::now();
    publisher
        .send(C::Publish(v1::Publish {
            track: Some(v1::TrackInfo {
                track_id: 1,
                kind: v1::TrackKind::Video as i32,
                codec: "vp8".into(),
                width: 640,
                height: 360,
                frame_rate: 30,
                encodings: [(160, 90), (320, 180), (640, 360)]
                    .iter()
                    .map(|&(width, height)| v1::Encoding {
                        width,
                        height,
                        frame_rate: 30,
                        temporal_layers: 1,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
        }))
        .await;
    let pid = publisher.id;
    viewer
        .expect(|m| matches!(m, S::TrackPublished(p) if p.participant_id == pid))
        .await;
    // The viewer, on the other node, wants the smallest picture only.
    let prefs = |max_height| {
        Some(v1::SubscriptionPreferences {
            max_height,
            ..Default::default()
        })
    };
    viewer
        .send(C::Subscribe(v1::Subscribe {
            participant_id: pid,
            track_id: 1,
            preferences: prefs(90),
        }))
        .await;
    // Without the demand crossing, the publisher's node would keep every
    // encoding on for the subscriber it cannot see: after the grace of five
    // seconds it asks for the smallest only.
    let mut seq = 0;
    publish_until_demand(&mut publisher, &mut seq, 0b001).await;
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "an encoding went off before the grace was over ({:?})",
        started.elapsed()
    );
    // The viewer receives the smallest encoding meanwhile.
    let got = loop {
        match viewer.next().await {
            Some(Seen::Media(m)) => break m,
            Some(Seen::Closed(code)) => panic!("viewer closed ({code:?})"),
            None => panic!("the viewer received nothing"),
            _ => {}
        }
    };
    assert_eq!(got.layer().map(|l| l.encoding), Some(0));
    // The viewer asks for the top picture: the publisher hears it at once.
    viewer
        .send(C::UpdateSubscription(v1::UpdateSubscription {
            participant_id: pid,
            track_id: 1,
            preferences: prefs(0),
        }))
        .await;
    let asked = Instant::now();
    publish_until_demand(&mut publisher, &mut seq, 0b101).await;
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "the top encoding came back only after {:?}",
        asked.elapsed()
    );
    n1.shutdown().await;
    n2.shutdown().await;
}
