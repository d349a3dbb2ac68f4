//! The generated state machines agree with their spec tables, checked by an
//! independent reading of `spec/v1/states/*.toml`; and the server and client
//! sessions, driven with random inputs, raise exactly the errors the tables give.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::*;
use convene_protocol::states::{client_session, publication, server_session, subscription};
use convene_protocol::v1::{self, client_message::Msg as C, server_message::Msg as S};
use convene_protocol::{
    ClientSession, ClientSessionConfig, ErrorCode, MediaFrame, MediaHeader, ServerSessionConfig,
    Timestamp,
};
use proptest::prelude::*;

/// (state, event) → next state or error name.
type Table = HashMap<(String, String), Result<String, String>>;

/// The spec's resolution rule, written again from the TOML: a transition that
/// names the pair, else an illegal rule that names it, else the default error.
fn model(file: &str) -> (Vec<String>, Vec<String>, Table) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../spec/v1/states")
        .join(file);
    let t: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let names = |k: &str| -> Vec<String> {
        t[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (states, events) = (names("state"), names("event"));
    let expand = |v: &toml::Value, all: &[String]| -> Vec<String> {
        let v: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        if v.iter().any(|x| x == "*") {
            all.to_vec()
        } else {
            v
        }
    };
    let mut table = HashMap::new();
    for tr in t
        .get("transition")
        .and_then(|x| x.as_array())
        .into_iter()
        .flatten()
    {
        for s in expand(&tr["from"], &states) {
            for e in expand(&tr["event"], &events) {
                let to = tr["to"].as_str().unwrap();
                let to = if to == "=" { s.clone() } else { to.to_string() };
                assert!(
                    table.insert((s.clone(), e), Ok(to)).is_none(),
                    "{file}: conflicting transitions"
                );
            }
        }
    }
    for il in t
        .get("illegal")
        .and_then(|x| x.as_array())
        .into_iter()
        .flatten()
    {
        for s in expand(&il["from"], &states) {
            for e in expand(&il["event"], &events) {
                table
                    .entry((s.clone(), e))
                    .or_insert_with(|| Err(il["error"].as_str().unwrap().to_string()));
            }
        }
    }
    let default = t["default_error"].as_str().unwrap().to_string();
    for s in &states {
        for e in &events {
            table
                .entry((s.clone(), e.clone()))
                .or_insert_with(|| Err(default.clone()));
        }
    }
    (states, events, table)
}

macro_rules! check_machine {
    ($test:ident, $file:literal, $m:ident) => {
        #[test]
        fn $test() {
            let (states, events, table) = model($file);
            assert_eq!(states.len(), $m::State::ALL.len());
            assert_eq!(events.len(), $m::Event::ALL.len());
            for &s in $m::State::ALL {
                for &e in $m::Event::ALL {
                    let want = &table[&(s.name().to_string(), e.name().to_string())];
                    let got = $m::next(s, e)
                        .map(|x| x.name().to_string())
                        .map_err(|c| c.name().to_string());
                    assert_eq!(&got, want, "{} + {}", s.name(), e.name());
                }
            }
        }
    };
}

check_machine!(
    server_session_matches_its_table,
    "server_session.toml",
    server_session
);
check_machine!(
    client_session_matches_its_table,
    "client_session.toml",
    client_session
);
check_machine!(
    publication_matches_its_table,
    "publication.toml",
    publication
);
check_machine!(
    subscription_matches_its_table,
    "subscription.toml",
    subscription
);

#[test]
fn closed_is_terminal_and_every_state_is_reachable() {
    use server_session::{Event, INITIAL, State, next};
    let mut seen = vec![INITIAL];
    let mut frontier = vec![INITIAL];
    while let Some(s) = frontier.pop() {
        for &e in Event::ALL {
            if let Ok(t) = next(s, e)
                && !seen.contains(&t)
            {
                seen.push(t);
                frontier.push(t);
            }
        }
    }
    assert_eq!(seen.len(), State::ALL.len(), "unreachable server states");
    for &e in Event::ALL {
        assert_eq!(next(State::Closed, e), Ok(State::Closed));
    }
}

/// A client input for the random walk over the server session.
#[derive(Debug, Clone)]
enum Input {
    Msg(u8),
    Media { sender_is_other: bool },
    Garbage(Vec<u8>),
    Advance(u16),
}

fn client_msg(i: u8) -> (C, server_session::Event) {
    use server_session::Event as E;
    match i % 16 {
        0 => (hello(), E::Hello),
        1 => (join("walk"), E::Join),
        2 => (C::Leave(v1::Leave {}), E::Leave),
        3 => (C::Ping(v1::Ping { timestamp_us: 1 }), E::Keepalive),
        4 => (C::Pong(v1::Pong { timestamp_us: 1 }), E::Keepalive),
        5 => (
            C::Publish(v1::Publish {
                track: Some(v1::TrackInfo {
                    track_id: 1,
                    kind: 1,
                    codec: "opus".into(),
                    ..Default::default()
                }),
            }),
            E::RoomMessage,
        ),
        6 => (
            C::Subscribe(v1::Subscribe {
                participant_id: 3,
                track_id: 1,
                ..Default::default()
            }),
            E::RoomMessage,
        ),
        7 => (
            C::Chat(v1::ChatSend {
                text: "hi".into(),
                to_participant_id: 0,
            }),
            E::RoomMessage,
        ),
        8 => (
            C::E2ee(v1::E2eeSend {
                to_participant_id: 0,
                payload: vec![1, 2].into(),
            }),
            E::RoomMessage,
        ),
        9 => (
            C::KeyFrameRequest(v1::KeyFrameRequest {
                participant_id: 3,
                track_id: 1,
                ..Default::default()
            }),
            E::RoomMessage,
        ),
        10 => (C::LockRoom(v1::LockRoom { locked: true }), E::Moderation),
        11 => (C::EndMeeting(v1::EndMeeting {}), E::Moderation),
        12 => (
            C::Error(v1::Error {
                code: 103,
                text: String::new(),
                request_id: 0,
            }),
            E::PeerError,
        ),
        13 => (
            C::UpdateSelf(v1::UpdateSelf {
                display_name: "x".into(),
            }),
            E::RoomMessage,
        ),
        14 => (
            C::SetTrackMuted(v1::SetTrackMuted {
                track_id: 1,
                muted: true,
            }),
            E::RoomMessage,
        ),
        _ => (C::Goodbye(v1::Goodbye::default()), E::Goodbye),
    }
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        6 => any::<u8>().prop_map(Input::Msg),
        2 => any::<bool>().prop_map(|o| Input::Media { sender_is_other: o }),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Input::Garbage),
        1 => (0u16..20_000).prop_map(Input::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Driven with random inputs, the server session never panics, follows the
    /// spec table state by state, and answers each illegal message with exactly
    /// the error the table assigns.
    #[test]
    fn server_session_follows_its_table(inputs in proptest::collection::vec(input(), 1..60)) {
        let mut config = ServerSessionConfig::default();
        config.limits.control_messages_per_second = 1_000;
        config.limits.control_burst = 2_000;
        let mut d = Driver::new(config);
        for i in inputs {
            let before = d.session.state();
            match i {
                Input::Msg(n) => {
                    let (msg, ev) = client_msg(n);
                    let out = d.feed(client(msg));
                    let errors = error_codes(&out);
                    match server_session::next(before, ev) {
                        Err(code) => {
                            prop_assert_eq!(errors, vec![code], "{:?} in {:?}", ev, before);
                            let closed = code.is_fatal();
                            prop_assert_eq!(d.session.is_closed(), closed || before == server_session::State::Closed);
                        }
                        Ok(to) => {
                            prop_assert!(errors.is_empty(), "{:?} in {:?} gave {:?}", ev, before, errors);
                            prop_assert_eq!(d.session.state(), to);
                        }
                    }
                }
                Input::Media { sender_is_other } => {
                    let h = MediaHeader { track_id: 1, sender: if sender_is_other { 99 } else { 0 }, ..Default::default() };
                    let out = d.feed(MediaFrame::build(&h, None, b"m").into_bytes());
                    let errors = error_codes(&out);
                    match server_session::next(before, server_session::Event::Media) {
                        Err(code) => prop_assert_eq!(errors, vec![code]),
                        Ok(_) if sender_is_other && before != server_session::State::Closed =>
                            prop_assert_eq!(errors, vec![ErrorCode::InvalidSender]),
                        Ok(_) => prop_assert!(errors.is_empty()),
                    }
                }
                Input::Garbage(bytes) => {
                    let out = d.feed(bytes.into());
                    prop_assert!(error_codes(&out).len() <= 1);
                }
                Input::Advance(ms) => {
                    d.advance_ms(ms as u64);
                }
            }
        }
    }

    /// The client session, fed random server messages, never panics and only
    /// ever reports the errors its table gives.
    #[test]
    fn client_session_follows_its_table(msgs in proptest::collection::vec(0u8..12, 1..40)) {
        use client_session::{Event as E, next};
        let mut now = Timestamp::from_millis(0);
        let mut c = ClientSession::new(now, ClientSessionConfig::default());
        c.connected(now);
        while c.poll_transmit().is_some() {}
        for m in msgs {
            now = Timestamp(now.0 + 1000);
            let (msg, ev) = match m {
                0 => (S::Welcome(v1::Welcome { version: 1, participant_id: 5, heartbeat_interval_ms: 5000, idle_timeout_ms: 15000, ..Default::default() }), E::Welcome),
                1 => (S::Joined(v1::Joined::default()), E::Joined),
                2 => (S::Waiting(v1::Waiting::default()), E::Waiting),
                3 => (S::Left(v1::Left::default()), E::Left),
                4 => (S::Ping(v1::Ping { timestamp_us: 3 }), E::Keepalive),
                5 => (S::ParticipantLeft(v1::ParticipantLeft { participant_id: 2 }), E::RoomMessage),
                6 => (S::Chat(v1::ChatMessage::default()), E::RoomMessage),
                7 => (S::Error(v1::Error { code: ErrorCode::RoomFull as i32, ..Default::default() }), if c.state() == client_session::State::Joining { E::JoinRefused } else { E::PeerError }),
                8 => (S::Goodbye(v1::Goodbye::default()), E::Goodbye),
                9 => (S::Error(v1::Error { code: ErrorCode::ShuttingDown as i32, ..Default::default() }), E::FatalError),
                10 => {
                    // The application joins when it can; that is a local event, not a message.
                    let _ = c.join(now, "m", "n", false);
                    while c.poll_transmit().is_some() {}
                    continue;
                }
                _ => (S::KeyFrameRequest(v1::KeyFrameRequest { participant_id: 0, track_id: 1, ..Default::default() }), E::RoomMessage),
            };
            let before = c.state();
            c.handle_frame(now, server(msg));
            let mut reported = Vec::new();
            while let Some(f) = c.poll_transmit() {
                if let convene_protocol::Frame::Control(env) = decode_client(f)
                    && let Some(C::Error(e)) = env.msg {
                        reported.push(ErrorCode::try_from(e.code).unwrap());
                    }
            }
            match next(before, ev) {
                Ok(to) => {
                    prop_assert!(reported.is_empty(), "{:?} in {:?} reported {:?}", ev, before, reported);
                    prop_assert_eq!(c.state(), to);
                }
                Err(code) => prop_assert_eq!(reported, vec![code]),
            }
        }
    }
}
