//! Named scenarios for the server session, on a virtual clock.

mod common;

use bytes::Bytes;
use common::*;
use convene_protocol::states::server_session::State;
use convene_protocol::v1::{self, client_message::Msg as C, server_message::Msg as S};
use convene_protocol::{ErrorCode, MediaFrame, MediaHeader, ServerEvent, ServerSessionConfig};

#[test]
fn hello_gets_welcome_with_the_limits_in_force() {
    let mut d = Driver::new(ServerSessionConfig::default());
    let out = d.feed(client(hello()));
    let [S::Welcome(w)] = &out[..] else {
        panic!("expected Welcome, got {out:?}")
    };
    assert_eq!(w.version, 1);
    assert_eq!(w.participant_id, 7);
    assert_eq!(w.limits.unwrap().max_frame_bytes, 262_144);
    assert_eq!(w.heartbeat_interval_ms, 5_000);
    assert_eq!(d.session.state(), State::Established);
}

#[test]
fn unsupported_version_is_fatal_and_closes_with_4200() {
    let mut d = Driver::new(ServerSessionConfig::default());
    let out = d.feed(client(C::Hello(v1::Hello {
        versions: vec![2, 3],
        ..Default::default()
    })));
    assert_eq!(error_codes(&out), vec![ErrorCode::UnsupportedVersion]);
    let S::Error(e) = &out[0] else { unreachable!() };
    assert!(e.text.contains("server speaks 1"), "{}", e.text);
    let close = d.session.close_reason().unwrap();
    assert_eq!(close.websocket_code(), 4200);
    assert_eq!(close.webtransport_code(), 200);
    assert!(d.events.contains(&ServerEvent::Closed));
}

#[test]
fn anything_but_hello_first_is_hello_required() {
    for first in [
        client(join("x")),
        MediaFrame::build(
            &MediaHeader {
                track_id: 1,
                ..Default::default()
            },
            None,
            b"",
        )
        .into_bytes(),
        Bytes::from_static(&[0x85, 1]),
    ] {
        let mut d = Driver::new(ServerSessionConfig::default());
        let out = d.feed(first);
        assert_eq!(error_codes(&out), vec![ErrorCode::HelloRequired]);
        assert!(d.session.is_closed());
    }
}

#[test]
fn a_hello_frame_over_8_kib_is_too_large() {
    let mut d = Driver::new(ServerSessionConfig::default());
    let out = d.feed(client(C::Hello(v1::Hello {
        versions: vec![1],
        client_version: "v".repeat(9000),
        ..Default::default()
    })));
    assert_eq!(error_codes(&out), vec![ErrorCode::FrameTooLarge]);
}

#[test]
fn handshake_times_out_at_the_configured_deadline() {
    let mut d = Driver::new(ServerSessionConfig::default());
    assert_eq!(
        d.session.poll_timeout(),
        Some(convene_protocol::Timestamp::from_millis(11_000))
    );
    assert!(d.advance_ms(9_999).is_empty());
    let out = d.advance_ms(1);
    assert_eq!(error_codes(&out), vec![ErrorCode::HandshakeTimeout]);
    assert!(d.session.is_closed());
    assert_eq!(d.session.poll_timeout(), None);
}

#[test]
fn heartbeat_pings_and_idle_timeout() {
    let mut d = Driver::new(ServerSessionConfig::default());
    d.feed(client(hello()));
    let out = d.advance_ms(5_000);
    assert!(matches!(out[..], [S::Ping(_)]), "{out:?}");
    // The client answers; the idle timer restarts from this frame.
    d.feed(client(C::Pong(v1::Pong { timestamp_us: 1 })));
    assert!(matches!(d.advance_ms(5_000)[..], [S::Ping(_)]));
    assert!(matches!(d.advance_ms(5_000)[..], [S::Ping(_)]));
    let out = d.advance_ms(5_000);
    assert_eq!(error_codes(&out), vec![ErrorCode::IdleTimeout]);
}

#[test]
fn ping_is_answered_with_the_same_timestamp() {
    let mut d = Driver::new(ServerSessionConfig::default());
    d.feed(client(hello()));
    let out = d.feed(client(C::Ping(v1::Ping {
        timestamp_us: 987_654_321,
    })));
    assert_eq!(
        out,
        vec![S::Pong(v1::Pong {
            timestamp_us: 987_654_321
        })]
    );
}

#[test]
fn control_rate_limit_answers_once_per_second_and_refills() {
    let mut config = ServerSessionConfig::default();
    config.limits.control_messages_per_second = 10;
    config.limits.control_burst = 20;
    let mut d = Driver::new(config);
    d.feed(client(hello()));
    let mut pongs = 0;
    let mut errors = Vec::new();
    for _ in 0..50 {
        let out = d.feed(client(C::Ping(v1::Ping { timestamp_us: 1 })));
        pongs += out.iter().filter(|m| matches!(m, S::Pong(_))).count();
        errors.extend(error_codes(&out));
    }
    assert_eq!(pongs, 20);
    assert_eq!(errors, vec![ErrorCode::RateLimited]);
    assert!(!d.session.is_closed());
    d.advance_ms(1_000);
    let out = d.feed(client(C::Ping(v1::Ping { timestamp_us: 2 })));
    assert!(matches!(out[..], [S::Pong(_)]), "{out:?}");
}

#[test]
fn media_is_stamped_with_the_senders_id() {
    let mut d = Driver::joined(ServerSessionConfig::default());
    d.events.clear();
    d.feed(
        MediaFrame::build(
            &MediaHeader {
                track_id: 3,
                sequence: 9,
                ..Default::default()
            },
            None,
            b"abc",
        )
        .into_bytes(),
    );
    let Some(ServerEvent::Media(m)) = d.events.last() else {
        panic!("{:?}", d.events)
    };
    assert_eq!(m.header().sender, 7);
    assert_eq!(m.header().sequence, 9);
    assert_eq!(&m.payload()[..], b"abc");
}

#[test]
fn spoofed_sender_is_refused_and_not_forwarded() {
    let mut d = Driver::joined(ServerSessionConfig::default());
    d.events.clear();
    let out = d.feed(
        MediaFrame::build(
            &MediaHeader {
                track_id: 3,
                sender: 8,
                ..Default::default()
            },
            None,
            b"x",
        )
        .into_bytes(),
    );
    assert_eq!(error_codes(&out), vec![ErrorCode::InvalidSender]);
    assert!(!d.events.iter().any(|e| matches!(e, ServerEvent::Media(_))));
    assert!(!d.session.is_closed());
}

#[test]
fn media_over_the_ingress_bitrate_is_dropped_with_one_error() {
    let mut config = ServerSessionConfig::default();
    config.limits.max_ingress_kbps = 80; // 10 kB per second
    let mut d = Driver::joined(config);
    d.events.clear();
    let mut errors = Vec::new();
    for seq in 0..20 {
        let f = MediaFrame::build(
            &MediaHeader {
                track_id: 1,
                sequence: seq,
                ..Default::default()
            },
            None,
            &[0; 976],
        );
        errors.extend(error_codes(&d.feed(f.into_bytes())));
    }
    let delivered = d
        .events
        .iter()
        .filter(|e| matches!(e, ServerEvent::Media(_)))
        .count();
    assert_eq!(
        delivered, 10,
        "one second of bucket holds ten 1000-byte frames"
    );
    assert_eq!(errors, vec![ErrorCode::BitrateExceeded]);
}

#[test]
fn join_fields_are_checked_before_the_room_sees_them() {
    let mut d = Driver::new(ServerSessionConfig::default());
    d.feed(client(hello()));
    let bad_id = d.feed(client_rid(
        4,
        C::Join(v1::Join {
            meeting_id: "a b".into(),
            display_name: "n".into(),
            subscribe_all: false,
        }),
    ));
    let S::Error(e) = &bad_id[0] else { panic!() };
    assert_eq!(
        (e.code, e.request_id),
        (ErrorCode::InvalidMeetingId as i32, 4)
    );
    let bad_name = d.feed(client(C::Join(v1::Join {
        meeting_id: "ok".into(),
        display_name: "\u{1b}[31m".into(),
        subscribe_all: false,
    })));
    assert_eq!(error_codes(&bad_name), vec![ErrorCode::InvalidDisplayName]);
    assert!(
        !d.events
            .iter()
            .any(|e| matches!(e, ServerEvent::Join { .. }))
    );
    assert_eq!(d.session.state(), State::Established);
}

#[test]
fn leave_confirms_with_left_and_returns_to_established() {
    let mut d = Driver::joined(ServerSessionConfig::default());
    let out = d.feed(client(C::Leave(v1::Leave {})));
    assert_eq!(
        out,
        vec![S::Left(v1::Left {
            meeting_id: "room".into()
        })]
    );
    assert_eq!(d.session.state(), State::Established);
    assert!(d.events.contains(&ServerEvent::Left));
}

#[test]
fn goodbye_from_the_server_closes_with_1000() {
    let mut d = Driver::joined(ServerSessionConfig::default());
    d.session.goodbye(v1::GoodbyeReason::Shutdown, "restarting");
    let out = drain_server(&mut d.session);
    assert!(matches!(&out[..], [S::Goodbye(g)] if g.reason == v1::GoodbyeReason::Shutdown as i32));
    assert_eq!(d.session.close_reason().unwrap().websocket_code(), 1000);
    assert!(d.session.is_closed());
}

#[test]
fn oversized_chat_and_e2ee_are_field_too_long() {
    let mut d = Driver::joined(ServerSessionConfig::default());
    let out = d.feed(client(C::Chat(v1::ChatSend {
        text: "x".repeat(4097),
        to_participant_id: 0,
    })));
    assert_eq!(error_codes(&out), vec![ErrorCode::FieldTooLong]);
    let out = d.feed(client(C::E2ee(v1::E2eeSend {
        to_participant_id: 0,
        payload: vec![0; 16_385].into(),
    })));
    assert_eq!(error_codes(&out), vec![ErrorCode::FieldTooLong]);
    assert!(!d.session.is_closed());
}

#[test]
fn unknown_message_is_reported_and_harmless() {
    let mut d = Driver::new(ServerSessionConfig::default());
    d.feed(client(hello()));
    let out = d.feed(Bytes::from_static(&[0x01, 0x9a, 0x06, 0x00]));
    assert_eq!(error_codes(&out), vec![ErrorCode::UnknownMessage]);
    assert_eq!(d.session.state(), State::Established);
}

/// Answers the session did not ask for are reported, and change nothing:
/// a Welcome, Joined or Waiting never goes out on the room layer's mistake.
#[test]
fn answers_given_out_of_turn_are_reported_not_applied() {
    use convene_protocol::{ServerSession, Timestamp};
    let t = Timestamp(0);
    let mut s = ServerSession::new(t, ServerSessionConfig::default());
    let early = s.accept_hello(t, 7, "s".into(), Bytes::new()).unwrap_err();
    assert_eq!(early.call, "accept_hello");
    assert!(early.to_string().contains("awaiting_hello"), "{early}");
    assert!(s.joined(v1::Joined::default()).is_err());
    assert!(s.held().is_err());
    assert!(s.admitted_by_room().is_err());
    assert!(
        drain_server(&mut s).is_empty(),
        "nothing may have been sent"
    );
    assert_eq!(s.state(), State::AwaitingHello);

    // Established, with no Join pending: joined, held and a second Welcome are refused.
    let mut d = Driver::new(ServerSessionConfig::default());
    d.feed(client(hello()));
    assert_eq!(d.session.state(), State::Established);
    assert!(
        d.session
            .accept_hello(t, 8, "again".into(), Bytes::new())
            .is_err()
    );
    assert!(d.session.joined(v1::Joined::default()).is_err());
    assert!(d.session.held().is_err());
    assert!(drain_server(&mut d.session).is_empty());
    assert_eq!(d.session.state(), State::Established);
    assert_eq!(d.session.participant_id(), 7);
}
