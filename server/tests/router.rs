//! The room router without sockets or clocks: who receives what, in which
//! order, and what a slow subscriber costs the others.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use convene_protocol::v1::{
    self, Participant, ServerMessage, TrackInfo, TrackKind, server_message::Msg,
};
use convene_protocol::{
    ErrorCode, Frame, MediaFrame, MediaHeader, RoomRequest, Timestamp, decode_frame,
};
use convene_server::mailbox::Mailbox;
use convene_server::outbox::{Outbox, OutboxLimits, Wake};
use convene_server::room::{Local, Room, RoomLimits, Router, lock};

struct NoWake;
impl Wake for NoWake {
    fn wake(&self) {}
}

const LIMITS: RoomLimits = RoomLimits {
    max_participants: 100,
    max_tracks: 4,
    max_rooms: 2,
    room_relay_bytes_per_second: 65536,
};

fn outbox() -> Arc<Outbox> {
    Arc::new(Outbox::new(OutboxLimits::default(), Box::new(NoWake)))
}

/// A member of this node reached through `o`; nothing here reads its mailbox.
fn local(o: &Arc<Outbox>) -> Local {
    Local {
        outbox: o.clone(),
        mailbox: Arc::new(Mailbox::new(Box::new(NoWake))),
        sfu: false,
        reactions: false,
    }
}

fn small_outbox(frames: usize) -> Arc<Outbox> {
    Arc::new(Outbox::new(
        OutboxLimits {
            max_media_frames: frames,
            ..OutboxLimits::default()
        },
        Box::new(NoWake),
    ))
}

fn person(pid: u32) -> Participant {
    Participant {
        participant_id: pid,
        display_name: format!("p{pid}"),
        ..Default::default()
    }
}

fn track(id: u32, kind: TrackKind) -> TrackInfo {
    TrackInfo {
        track_id: id,
        kind: kind as i32,
        codec: "vp8".into(),
        ..Default::default()
    }
}

/// Everything queued for an outbox, decoded.
fn drain(o: &Outbox) -> Vec<Frame<ServerMessage>> {
    let mut v = Vec::new();
    o.drain(&mut v, usize::MAX);
    v.into_iter()
        .map(|b| decode_frame::<ServerMessage>(b, 1 << 20).unwrap())
        .collect()
}

fn media_of(frames: &[Frame<ServerMessage>]) -> Vec<MediaFrame> {
    frames
        .iter()
        .filter_map(|f| {
            if let Frame::Media(m) = f {
                Some(m.clone())
            } else {
                None
            }
        })
        .collect()
}

fn control_of(frames: &[Frame<ServerMessage>]) -> Vec<Msg> {
    frames
        .iter()
        .filter_map(|f| {
            if let Frame::Control(m) = f {
                m.msg.clone()
            } else {
                None
            }
        })
        .collect()
}

fn media(sender: u32, track: u32, seq: u32, key: bool) -> MediaFrame {
    MediaFrame::build(
        &MediaHeader {
            key,
            sender,
            track_id: track,
            sequence: seq,
            capture_timestamp_us: 0,
        },
        None,
        &[7; 100],
    )
}

fn t(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn req(room: &mut Room, pid: u32, r: RoomRequest) -> Result<(), convene_protocol::ProtocolError> {
    room.handle(t(0), pid, r, 0)
}

#[test]
fn one_publisher_many_subscribers_share_one_buffer() {
    let mut room = Room::new("r", LIMITS);
    room.join(t(0), person(1), false, local(&outbox())).unwrap();
    let subs: Vec<_> = (2..12)
        .map(|pid| {
            let o = outbox();
            room.join(t(0), person(pid), true, local(&o)).unwrap();
            o
        })
        .collect();
    req(
        &mut room,
        1,
        RoomRequest::Publish(track(1, TrackKind::Audio)),
    )
    .unwrap();
    let f = media(1, 1, 0, true);
    let stats = room.route(t(0), 1, &f).unwrap();
    assert_eq!(stats.delivered, 10);
    for o in &subs {
        let mut raw = Vec::new();
        o.drain(&mut raw, usize::MAX);
        let m = raw
            .iter()
            .find(|b| b[0] == 0x02)
            .expect("media frame queued");
        // The very same allocation, not a copy.
        assert_eq!(m.as_ptr(), f.as_bytes().as_ptr());
    }
}

#[test]
fn only_subscribers_receive_and_never_the_publisher_or_another_room() {
    let router = Router::new(LIMITS);
    let (a, b, c, x) = (outbox(), outbox(), outbox(), outbox());
    let room = router
        .join(t(0), "one", person(1), true, local(&a), |_| {})
        .unwrap();
    router
        .join(t(0), "one", person(2), true, local(&b), |_| {})
        .unwrap();
    router
        .join(t(0), "one", person(3), false, local(&c), |_| {})
        .unwrap();
    router
        .join(t(0), "two", person(4), true, local(&x), |_| {})
        .unwrap();
    let mut r = lock(&room);
    req(&mut r, 1, RoomRequest::Publish(track(1, TrackKind::Audio))).unwrap();
    r.route(t(0), 1, &media(1, 1, 0, true)).unwrap();
    drop(r);
    assert_eq!(media_of(&drain(&b)).len(), 1);
    assert!(
        media_of(&drain(&a)).is_empty(),
        "publisher got its own frame"
    );
    assert!(
        media_of(&drain(&c)).is_empty(),
        "non-subscriber got a frame"
    );
    let other = drain(&x);
    assert!(media_of(&other).is_empty(), "a frame crossed rooms");
    assert!(
        !control_of(&other)
            .iter()
            .any(|m| matches!(m, Msg::TrackPublished(_))),
        "an announcement crossed rooms"
    );
}

#[test]
fn subscribe_checks_the_room_and_asks_for_a_key_frame() {
    let router = Router::new(LIMITS);
    let (a, b, c) = (outbox(), outbox(), outbox());
    let one = router
        .join(t(0), "one", person(1), false, local(&a), |_| {})
        .unwrap();
    router
        .join(t(0), "one", person(2), false, local(&b), |_| {})
        .unwrap();
    let two = router
        .join(t(0), "two", person(3), false, local(&c), |_| {})
        .unwrap();
    req(
        &mut lock(&one),
        1,
        RoomRequest::Publish(track(5, TrackKind::Video)),
    )
    .unwrap();
    drain(&a);
    let e = req(
        &mut lock(&two),
        3,
        RoomRequest::Subscribe(v1::Subscribe {
            participant_id: 1,
            track_id: 5,
            ..Default::default()
        }),
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownTrack);
    assert!(
        control_of(&drain(&a)).is_empty(),
        "another room's subscribe reached the publisher"
    );
    req(
        &mut lock(&one),
        2,
        RoomRequest::Subscribe(v1::Subscribe {
            participant_id: 1,
            track_id: 5,
            ..Default::default()
        }),
    )
    .unwrap();
    assert!(
        control_of(&drain(&b)).contains(&Msg::Subscribed(v1::Subscribed {
            participant_id: 1,
            track_id: 5
        }))
    );
    assert_eq!(
        control_of(&drain(&a)),
        vec![Msg::KeyFrameRequest(v1::KeyFrameRequest {
            participant_id: 0,
            track_id: 5,
            ..Default::default()
        })]
    );
}

#[test]
fn a_slow_subscriber_loses_its_own_video_and_nobody_elses_audio() {
    let mut room = Room::new("r", LIMITS);
    let publisher = outbox();
    room.join(t(0), person(1), false, local(&publisher))
        .unwrap();
    let fast = outbox();
    let slow = small_outbox(8);
    room.join(t(0), person(2), true, local(&fast)).unwrap();
    room.join(t(0), person(3), true, local(&slow)).unwrap();
    req(
        &mut room,
        1,
        RoomRequest::Publish(track(1, TrackKind::Audio)),
    )
    .unwrap();
    req(
        &mut room,
        1,
        RoomRequest::Publish(track(2, TrackKind::Video)),
    )
    .unwrap();
    drain(&publisher);
    drain(&slow);
    let mut fast_audio = 0;
    let mut key_requests = 0;
    // Two seconds of 50 fps audio and 25 fps video; the slow one never drains.
    for i in 0..100u32 {
        let now = t(i as u64 * 20);
        room.route(now, 1, &media(1, 1, i, true)).unwrap();
        if i % 2 == 0 {
            room.route(now, 1, &media(1, 2, i / 2, i % 50 == 0))
                .unwrap();
        }
        fast_audio += media_of(&drain(&fast))
            .iter()
            .filter(|m| m.header().track_id == 1)
            .count();
        key_requests += control_of(&drain(&publisher))
            .iter()
            .filter(|m| matches!(m, Msg::KeyFrameRequest(_)))
            .count();
    }
    assert_eq!(fast_audio, 100, "the fast subscriber lost audio");
    let queued = media_of(&drain(&slow));
    assert_eq!(queued.len(), 8);
    assert!(
        queued.iter().all(|m| m.header().track_id == 1),
        "video should have made way for audio"
    );
    assert!(
        key_requests >= 1,
        "no key frame was requested on the slow subscriber's behalf"
    );
    assert!(
        key_requests <= 3,
        "key frame requests are rate limited, got {key_requests}"
    );
}

#[test]
fn a_subscriber_that_never_drains_is_eventually_declared_slow() {
    let mut room = Room::new("r", LIMITS);
    room.join(t(0), person(1), false, local(&outbox())).unwrap();
    let slow = small_outbox(4);
    room.join(t(0), person(2), true, local(&slow)).unwrap();
    req(
        &mut room,
        1,
        RoomRequest::Publish(track(1, TrackKind::Audio)),
    )
    .unwrap();
    let mut declared = None;
    for i in 0..400u32 {
        let stats = room
            .route(t(i as u64 * 20), 1, &media(1, 1, i, true))
            .unwrap();
        if stats.slow > 0 {
            declared = Some(i);
            break;
        }
    }
    let i = declared.expect("never declared slow");
    // Overflow starts at frame 4; slow after 5 s of it.
    assert!((250..=260).contains(&i), "declared slow at frame {i}");
    assert!(slow.is_slow());
}

#[test]
fn leaving_unpublishes_before_announcing_the_departure() {
    let mut room = Room::new("r", LIMITS);
    let watcher = outbox();
    room.join(t(0), person(1), false, local(&outbox())).unwrap();
    room.join(t(0), person(2), false, local(&watcher)).unwrap();
    req(
        &mut room,
        1,
        RoomRequest::Publish(track(3, TrackKind::Audio)),
    )
    .unwrap();
    drain(&watcher);
    room.leave(1);
    assert_eq!(
        control_of(&drain(&watcher)),
        vec![
            Msg::TrackUnpublished(v1::TrackUnpublished {
                participant_id: 1,
                track_id: 3
            }),
            Msg::ParticipantLeft(v1::ParticipantLeft { participant_id: 1 }),
        ]
    );
}

#[test]
fn muted_tracks_are_not_routed() {
    let mut room = Room::new("r", LIMITS);
    room.join(t(0), person(1), false, local(&outbox())).unwrap();
    let sub = outbox();
    room.join(t(0), person(2), true, local(&sub)).unwrap();
    req(
        &mut room,
        1,
        RoomRequest::Publish(track(1, TrackKind::Audio)),
    )
    .unwrap();
    req(
        &mut room,
        1,
        RoomRequest::SetTrackMuted(v1::SetTrackMuted {
            track_id: 1,
            muted: true,
        }),
    )
    .unwrap();
    assert_eq!(
        room.route(t(0), 1, &media(1, 1, 0, true))
            .unwrap()
            .delivered,
        0
    );
    assert_eq!(
        room.route(t(0), 1, &media(1, 9, 0, true)).unwrap_err().code,
        ErrorCode::UnknownTrack
    );
}

#[test]
fn chat_and_e2ee_reach_exactly_their_recipients() {
    let mut room = Room::new("r", LIMITS);
    let o: Vec<_> = (1..=3)
        .map(|pid| {
            let o = outbox();
            room.join(t(0), person(pid), false, local(&o)).unwrap();
            o
        })
        .collect();
    for x in &o {
        drain(x);
    }
    room.handle(
        t(0),
        1,
        RoomRequest::Chat(v1::ChatSend {
            text: "dm".into(),
            to_participant_id: 2,
        }),
        42,
    )
    .unwrap();
    let got: Vec<usize> = o.iter().map(|x| control_of(&drain(x)).len()).collect();
    assert_eq!(got, vec![1, 1, 0]);
    room.handle(
        t(0),
        1,
        RoomRequest::E2ee(v1::E2eeSend {
            to_participant_id: 0,
            payload: Bytes::from_static(b"k"),
        }),
        0,
    )
    .unwrap();
    let got: Vec<usize> = o.iter().map(|x| control_of(&drain(x)).len()).collect();
    assert_eq!(got, vec![0, 1, 1]);
    let e = room
        .handle(
            t(0),
            1,
            RoomRequest::Chat(v1::ChatSend {
                text: "x".into(),
                to_participant_id: 99,
            }),
            0,
        )
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownParticipant);
}

#[test]
fn capacity_limits_give_their_errors() {
    let router = Router::new(RoomLimits {
        max_participants: 2,
        max_tracks: 1,
        max_rooms: 1,
        ..RoomLimits::default()
    });
    let room = router
        .join(t(0), "a", person(1), false, local(&outbox()), |_| {})
        .unwrap();
    router
        .join(t(0), "a", person(2), false, local(&outbox()), |_| {})
        .unwrap();
    let full = router
        .join(t(0), "a", person(3), false, local(&outbox()), |_| {})
        .unwrap_err();
    assert_eq!(full.code, ErrorCode::RoomFull);
    let rooms = router
        .join(t(0), "b", person(4), false, local(&outbox()), |_| {})
        .unwrap_err();
    assert_eq!(rooms.code, ErrorCode::TooManyRooms);
    let mut r = lock(&room);
    req(&mut r, 1, RoomRequest::Publish(track(1, TrackKind::Audio))).unwrap();
    assert_eq!(
        req(&mut r, 1, RoomRequest::Publish(track(1, TrackKind::Audio)))
            .unwrap_err()
            .code,
        ErrorCode::DuplicateTrack
    );
    assert_eq!(
        req(&mut r, 1, RoomRequest::Publish(track(2, TrackKind::Audio)))
            .unwrap_err()
            .code,
        ErrorCode::TooManyTracks
    );
    drop(r);
    router.leave(t(0), &room, 1);
    router.leave(t(0), &room, 2);
    assert_eq!(router.counts(), (0, 0));
    router
        .join(t(0), "b", person(5), false, local(&outbox()), |_| {})
        .unwrap();
}

#[test]
fn moderation_needs_the_role() {
    let mut room = Room::new("r", LIMITS);
    room.join(t(0), person(1), false, local(&outbox())).unwrap();
    let e = req(
        &mut room,
        1,
        RoomRequest::LockRoom(v1::LockRoom { locked: true }),
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    let _ = Mutex::new(());
}

#[test]
fn a_publisher_is_hinted_down_while_subscribers_drop_its_video_and_back_up_after() {
    let mut room = Room::new("r", LIMITS);
    let publisher = outbox();
    room.join(t(0), person(1), false, local(&publisher))
        .unwrap();
    let slow = small_outbox(4);
    room.join(t(0), person(2), true, local(&slow)).unwrap();
    let mut announced = track(1, TrackKind::Video);
    announced.target_bitrate_kbps = 800;
    req(&mut room, 1, RoomRequest::Publish(announced)).unwrap();
    drain(&publisher);
    let hints = |o: &Outbox| -> Vec<v1::CongestionHint> {
        control_of(&drain(o))
            .into_iter()
            .filter_map(|m| match m {
                Msg::CongestionHint(h) => Some(h),
                _ => None,
            })
            .collect()
    };
    // 25 frames a second of 100-byte payloads (about 25 kbit/s); the slow
    // subscriber never drains for 3 s, so its queue drops from the 5th frame.
    let mut seen = Vec::new();
    for i in 0..75u32 {
        room.route(t(u64::from(i) * 40), 1, &media(1, 1, i, i % 25 == 0))
            .unwrap();
        seen.extend(hints(&publisher));
    }
    assert!(
        !seen.is_empty(),
        "no congestion hint while frames were dropped"
    );
    assert!(
        seen.len() <= 3,
        "at most one hint a second, got {} in 3 s",
        seen.len()
    );
    let down = &seen[0];
    assert_eq!(down.track_id, 1);
    assert_eq!(down.reason, v1::CongestionReason::SubscriberLoss as i32);
    assert_eq!(
        down.target_bitrate_kbps,
        convene_server::room::MIN_HINT_KBPS,
        "70 % of ~25 kbit/s, floored"
    );

    // The subscriber catches up and keeps up: after RECOVERY without drops
    // the publisher may go back to its announced rate, said once.
    let mut later = Vec::new();
    for i in 75..300u32 {
        drain(&slow);
        room.route(t(u64::from(i) * 40), 1, &media(1, 1, i, i % 25 == 0))
            .unwrap();
        later.extend(hints(&publisher));
    }
    assert_eq!(later.len(), 1, "{later:?}");
    assert_eq!(later[0].reason, v1::CongestionReason::Recovered as i32);
    assert_eq!(
        later[0].target_bitrate_kbps, 800,
        "back to the announced rate"
    );
}

#[test]
fn an_empty_room_lingers_for_its_meetings_timeout_then_the_meeting_ends() {
    use convene_server::meetings::{MeetingCache, MeetingSettings};
    let cache = Arc::new(MeetingCache::ad_hoc(Vec::new()));
    cache.put(
        "clinic",
        MeetingSettings {
            empty_timeout_s: 10,
            ..Default::default()
        },
    );
    let router = Router::new(LIMITS).with_meetings(cache.clone());
    let o = outbox();
    let room = router
        .join(t(0), "clinic", person(1), false, local(&o), |_| {})
        .unwrap();
    router.leave(t(1_000), &room, 1);
    // Kept, empty: nothing ends before the timeout.
    assert_eq!(router.counts(), (1, 0));
    assert_eq!(router.end_idle(t(10_999)), Vec::<String>::new());
    // A join within the timeout goes on in the same room, and starts the wait again.
    let again = router
        .join(t(5_000), "clinic", person(2), false, local(&o), |_| {})
        .unwrap();
    assert!(Arc::ptr_eq(&room, &again), "the same room");
    router.leave(t(6_000), &again, 2);
    assert_eq!(router.end_idle(t(15_999)), Vec::<String>::new());
    assert_eq!(router.end_idle(t(16_000)), vec!["clinic".to_string()]);
    assert_eq!(router.counts(), (0, 0));
    assert_eq!(router.end_idle(t(60_000)), Vec::<String>::new(), "once");

    // Ad-hoc meetings, and managed ones without a timeout, close at once.
    let room = router
        .join(t(0), "ad-hoc", person(3), false, local(&o), |_| {})
        .unwrap();
    router.leave(t(0), &room, 3);
    assert_eq!(router.counts(), (0, 0));
    // A timeout taken away while the room lingers: closed, nothing ended.
    let room = router
        .join(t(0), "clinic", person(4), false, local(&o), |_| {})
        .unwrap();
    router.leave(t(0), &room, 4);
    assert_eq!(router.counts(), (1, 0));
    cache.put("clinic", MeetingSettings::default());
    assert_eq!(router.end_idle(t(1)), Vec::<String>::new());
    assert_eq!(router.counts(), (0, 0));
}
