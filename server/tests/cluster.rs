//! One meeting over two server nodes joined by the in-process bus, with real
//! WebSocket clients on each: roster, tracks, media, key-frame requests,
//! chat and leaving all cross, exactly as on one node. (The NATS backend
//! implements the same bus.)

mod common;

use bytes::Bytes;
use common::{Client, DEADLINE, Seen};
use convene_protocol::v1::{self, client_message::Msg as C, server_message::Msg as S};
use convene_protocol::{MediaFrame, MediaHeader};
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

async fn join(server: &convene_server::Server, meeting: &str) -> (Client, v1::Joined) {
    let mut c = Client::connect(server).await;
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

    let (mut alice, _) = join(&n1, "m").await;
    let (mut bob, bob_joined) = join(&n2, "m").await;
    // Ids carry their node and never collide.
    assert_eq!(alice.id >> PARTICIPANT_BITS, 1);
    assert_eq!(bob.id >> PARTICIPANT_BITS, 2);
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
    // asks Alice for a key frame on its behalf so it can start decoding.
    let (mut carol, carol_joined) = join(&n2, "m").await;
    sees(&mut carol, &carol_joined, alice.id).await;
    alice
        .expect(|m| matches!(m, S::KeyFrameRequest(k) if k.participant_id == 0 && k.track_id == 1))
        .await;
    alice.send_raw(video(1, true)).await;
    let m = next_media(&mut carol).await;
    assert_eq!((m.header().sender, m.header().sequence), (alice.id, 1));
    let m = next_media(&mut bob).await;
    assert_eq!(m.header().sequence, 1, "bob still receives, once");

    // Leaving on node 2 is seen on node 1.
    bob.ws.close(None).await.unwrap();
    alice
        .expect(|m| matches!(m, S::ParticipantLeft(l) if l.participant_id == bob_id))
        .await;
    // And a meeting on one node only stays there.
    let (mut dave, _) = join(&n2, "elsewhere").await;
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
    n1.shutdown().await;
    n2.shutdown().await;
}
