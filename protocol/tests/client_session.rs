//! Named scenarios for the client session, and a client and a server session
//! talking to each other through in-memory queues on a virtual clock.

mod common;

use bytes::Bytes;
use common::*;
use convene_protocol::states::client_session::State;
use convene_protocol::v1::{self, client_message::Msg as C, server_message::Msg as S};
use convene_protocol::{
    ClientEvent, ClientSession, ClientSessionConfig, ErrorCode, Frame, MediaFrame, MediaHeader,
    ServerEvent, ServerSession, ServerSessionConfig, Timestamp,
};

fn welcome(version: u32) -> Bytes {
    server(S::Welcome(v1::Welcome {
        version,
        participant_id: 5,
        heartbeat_interval_ms: 5_000,
        idle_timeout_ms: 15_000,
        ..Default::default()
    }))
}

fn sent(c: &mut ClientSession) -> Vec<C> {
    let mut out = Vec::new();
    while let Some(f) = c.poll_transmit() {
        if let Frame::Control(m) = decode_client(f) {
            out.extend(m.msg);
        }
    }
    out
}

fn started() -> (ClientSession, Timestamp) {
    let now = Timestamp::from_millis(0);
    let mut c = ClientSession::new(
        now,
        ClientSessionConfig {
            client_version: "test/1".into(),
            ..Default::default()
        },
    );
    c.connected(now);
    (c, now)
}

#[test]
fn hello_is_the_first_frame() {
    let (mut c, _) = started();
    let out = sent(&mut c);
    let [C::Hello(h)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(h.versions, vec![1]);
    assert_eq!(h.client_version, "test/1");
    assert_eq!(c.state(), State::HelloSent);
}

#[test]
fn a_welcome_for_a_version_not_offered_is_refused() {
    let (mut c, now) = started();
    sent(&mut c);
    c.handle_frame(now, welcome(9));
    let out = sent(&mut c);
    assert!(
        matches!(&out[..], [C::Error(e)] if e.code == ErrorCode::UnsupportedVersion as i32),
        "{out:?}"
    );
    assert!(c.is_closed());
    assert_eq!(
        c.close_reason().unwrap().error,
        Some(ErrorCode::UnsupportedVersion)
    );
}

#[test]
fn pings_are_answered_and_silence_is_filled_with_pings() {
    let (mut c, now) = started();
    c.handle_frame(now, welcome(1));
    sent(&mut c);
    c.handle_frame(now, server(S::Ping(v1::Ping { timestamp_us: 31 })));
    assert_eq!(sent(&mut c), vec![C::Pong(v1::Pong { timestamp_us: 31 })]);
    let later = Timestamp::from_millis(5_000);
    assert_eq!(c.poll_timeout(), Some(later));
    c.handle_timeout(later);
    assert!(matches!(sent(&mut c)[..], [C::Ping(_)]));
}

#[test]
fn a_silent_server_is_given_up_after_the_idle_timeout() {
    let (mut c, now) = started();
    c.handle_frame(now, welcome(1));
    for s in 1..=3 {
        c.handle_timeout(Timestamp::from_millis(s * 5_000));
    }
    assert!(c.is_closed());
    assert_eq!(
        c.close_reason().unwrap().error,
        Some(ErrorCode::IdleTimeout)
    );
}

#[test]
fn no_welcome_within_the_handshake_timeout_closes() {
    let (mut c, _) = started();
    c.handle_timeout(Timestamp::from_millis(9_999));
    assert!(!c.is_closed());
    c.handle_timeout(Timestamp::from_millis(10_000));
    assert_eq!(
        c.close_reason().unwrap().error,
        Some(ErrorCode::HandshakeTimeout)
    );
}

#[test]
fn unknown_messages_are_reported_and_unknown_fields_ignored() {
    let (mut c, now) = started();
    c.handle_frame(now, welcome(1));
    sent(&mut c);
    c.handle_frame(now, Bytes::from_static(&[0x01, 0x9a, 0x06, 0x00]));
    assert!(
        matches!(&sent(&mut c)[..], [C::Error(e)] if e.code == ErrorCode::UnknownMessage as i32)
    );
    c.handle_frame(now, Bytes::from(hex::decode("0162050805900301").unwrap()));
    assert_eq!(sent(&mut c), vec![C::Pong(v1::Pong { timestamp_us: 5 })]);
    assert_eq!(c.state(), State::Established);
}

#[test]
fn a_refused_join_returns_to_established() {
    let (mut c, now) = started();
    c.handle_frame(now, welcome(1));
    c.join(now, "m", "me", false).unwrap();
    c.handle_frame(
        now,
        server(S::Error(v1::Error {
            code: ErrorCode::RoomFull as i32,
            text: "full".into(),
            request_id: 1,
        })),
    );
    assert_eq!(c.state(), State::Established);
    let mut evs = Vec::new();
    while let Some(e) = c.poll_event() {
        evs.push(e);
    }
    assert!(
        evs.iter().any(
            |e| matches!(e, ClientEvent::JoinRefused(x) if x.code == ErrorCode::RoomFull as i32)
        )
    );
}

#[test]
fn sending_room_messages_before_joining_is_refused_locally() {
    let (mut c, now) = started();
    c.handle_frame(now, welcome(1));
    let err = c
        .send(
            now,
            C::Chat(v1::ChatSend {
                text: "hi".into(),
                to_participant_id: 0,
            }),
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotJoined);
}

/// A client session and a server session wired back to back, with the test
/// playing a one-room server: the handshake, the join, and a media frame that
/// comes back stamped.
#[test]
fn client_and_server_sessions_complete_a_handshake_and_join() {
    let mut now = Timestamp::from_millis(0);
    let mut client = ClientSession::new(now, ClientSessionConfig::default());
    let mut srv = ServerSession::new(now, ServerSessionConfig::default());
    client.connected(now);
    let mut welcomed = false;
    let mut joined = false;
    for _ in 0..10 {
        now = Timestamp(now.0 + 1_000);
        while let Some(f) = client.poll_transmit() {
            srv.handle_frame(now, f);
        }
        while let Some(ev) = srv.poll_event() {
            match ev {
                ServerEvent::Hello { .. } => srv
                    .accept_hello(now, 42, "sess".into(), Bytes::new())
                    .unwrap(),
                ServerEvent::Join { join, .. } => srv
                    .joined(v1::Joined {
                        meeting_id: join.meeting_id,
                        participants: vec![],
                        locked: false,
                        e2ee_required: false,
                    })
                    .unwrap(),
                ServerEvent::Media(m) => {
                    // Echo it back as a room would deliver another participant's frame.
                    srv.send_frame(m.into_bytes());
                }
                _ => {}
            }
        }
        while let Some(f) = srv.poll_transmit() {
            client.handle_frame(now, f);
        }
        while let Some(ev) = client.poll_event() {
            match ev {
                ClientEvent::Welcome(w) => {
                    assert_eq!(w.participant_id, 42);
                    welcomed = true;
                    client.join(now, "pair", "me", true).unwrap();
                }
                ClientEvent::Joined(j) => {
                    assert_eq!(j.meeting_id, "pair");
                    joined = true;
                    let f = MediaFrame::build(
                        &MediaHeader {
                            track_id: 1,
                            key: true,
                            ..Default::default()
                        },
                        None,
                        b"frame",
                    );
                    client.send_media(now, f).unwrap();
                }
                ClientEvent::Media(m) => {
                    assert_eq!(m.header().sender, 42);
                    assert!(welcomed && joined);
                    return;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    panic!("the exchange did not complete: welcomed={welcomed} joined={joined}");
}
