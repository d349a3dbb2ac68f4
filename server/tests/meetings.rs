//! Managed meetings through the real admin API (gRPC on loopback) and real
//! WebSocket clients: a created meeting's waiting room and participant
//! limit hold in its room, an update reaches the live room at once, the
//! settings outlive a restart on the same --data-dir, recording is refused
//! where the settings do not allow it, joins are refused once a meeting has
//! expired, and bad requests get their status and change nothing.

mod common;

use common::Client;
use common::managed::{ADMIN, Admin, SECRET, admin, error_code, join, node, temp_dir, token};
use convene_admin::{
    AttendanceRecord, CreateMeetingRequest, DeleteMeetingRequest, GetMeetingRequest,
    ListAttendanceRequest, ListMeetingSettingsRequest, ListMeetingsRequest, MeetingSettings,
    RemoveParticipantRequest, StartRecordingRequest, UpdateMeetingRequest,
};
use convene_protocol::ErrorCode;
use convene_protocol::v1::{self, client_message::Msg as C, server_message::Msg as S};
use convene_server::config::Config;
use tonic::Code;

/// A moderator and a guest in `meeting` (the guest admitted from the
/// waiting room); a third participant is refused with ROOM_FULL.
async fn fill_to_two(s: &convene_server::Server, a: &mut Admin, meeting: &str) -> (Client, Client) {
    let host_token = token(a, "host", &["moderate", "subscribe"]).await;
    let guest_token = token(a, "guest", &["subscribe"]).await;
    let (mut host, first) = join(s, &host_token, meeting).await;
    assert!(
        matches!(first, S::Joined(_)),
        "a moderator walks in: {first:?}"
    );
    let (mut guest, first) = join(s, &guest_token, meeting).await;
    assert!(
        matches!(first, S::Waiting(_)),
        "the waiting room holds a guest: {first:?}"
    );
    let guest_id = guest.id;
    host.expect(|m| matches!(m, S::AdmissionRequest(r) if r.participant.as_ref().is_some_and(|p| p.participant_id == guest_id)))
        .await;
    host.send(C::Admit(v1::Admit {
        participant_id: guest_id,
    }))
    .await;
    guest.expect(|m| matches!(m, S::Joined(_))).await;
    let (_third, first) = join(s, &guest_token, meeting).await;
    assert_eq!(
        error_code(&first),
        ErrorCode::RoomFull,
        "a third join over the limit of 2"
    );
    (host, guest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_meeting_rules_its_room_and_outlives_a_restart() {
    let dir = temp_dir("meetings");
    let s = node(&dir, true).await;
    let mut a = admin(&s, Some(ADMIN)).await;
    let wanted = MeetingSettings {
        waiting_room: true,
        max_participants: 2,
        e2ee_required: true,
        recording_allowed: true,
        empty_timeout_seconds: 300,
        metadata: r#"{"appointment":"42"}"#.into(),
        ..Default::default()
    };
    let created = a
        .create_meeting(CreateMeetingRequest {
            meeting_id: "clinic-7".into(),
            settings: Some(wanted.clone()),
        })
        .await
        .expect("created")
        .into_inner();
    assert_eq!(created.settings.as_ref(), Some(&wanted));
    assert!(created.created_at > 0);

    let (mut host, _guest) = fill_to_two(&s, &mut a, "clinic-7").await;

    // Locked through the API: the room hears it at once, and the next join,
    // with the limit raised, is refused for the lock.
    let mut locked = wanted.clone();
    locked.locked = true;
    locked.max_participants = 3;
    a.update_meeting(UpdateMeetingRequest {
        meeting_id: "clinic-7".into(),
        settings: Some(locked.clone()),
    })
    .await
    .expect("updated");
    host.expect(|m| matches!(m, S::RoomLocked(l) if l.locked))
        .await;
    let guest_token = token(&mut a, "late", &["subscribe"]).await;
    let (_late, first) = join(&s, &guest_token, "clinic-7").await;
    assert_eq!(error_code(&first), ErrorCode::RoomLocked);

    // An ad-hoc meeting still works while ad-hoc meetings are allowed.
    let (_adhoc, first) = join(&s, &guest_token, "somewhere-else").await;
    assert!(matches!(first, S::Joined(_)), "{first:?}");

    drop(host);
    drop(_guest);
    s.shutdown().await;

    // The same --data-dir, a new server, ad-hoc meetings off.
    let s = node(&dir, false).await;
    let mut a = admin(&s, Some(ADMIN)).await;
    let got = a
        .get_meeting(GetMeetingRequest {
            meeting_id: "clinic-7".into(),
        })
        .await
        .expect("still there after a restart")
        .into_inner();
    assert_eq!(got.settings.as_ref(), Some(&locked));
    assert_eq!(got.created_at, created.created_at);
    let list = a
        .list_meeting_settings(ListMeetingSettingsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.meetings, vec![got]);
    // Still locked: even a moderator is refused.
    let host_token = token(&mut a, "host", &["moderate", "subscribe"]).await;
    let (_h, first) = join(&s, &host_token, "clinic-7").await;
    assert_eq!(error_code(&first), ErrorCode::RoomLocked);
    // Unlocked with the limit of 2: the waiting room and the limit hold again.
    a.update_meeting(UpdateMeetingRequest {
        meeting_id: "clinic-7".into(),
        settings: Some(wanted.clone()),
    })
    .await
    .expect("updated");
    let (_host, _guest) = fill_to_two(&s, &mut a, "clinic-7").await;
    // Nobody created this one, and ad-hoc meetings are off.
    let (_c, first) = join(&s, &host_token, "uncreated").await;
    assert_eq!(error_code(&first), ErrorCode::UnknownMeeting);

    // Deleted: gone from the API, and (ad hoc off) no longer joinable anew.
    a.delete_meeting(DeleteMeetingRequest {
        meeting_id: "clinic-7".into(),
    })
    .await
    .expect("deleted");
    let e = a
        .get_meeting(GetMeetingRequest {
            meeting_id: "clinic-7".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    s.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_change_nothing() {
    let dir = temp_dir("meetings-bad");
    let s = node(&dir, true).await;
    let mut a = admin(&s, Some(ADMIN)).await;
    let good = MeetingSettings {
        max_participants: 5,
        metadata: "keep me".into(),
        ..Default::default()
    };
    let before = a
        .create_meeting(CreateMeetingRequest {
            meeting_id: "m".into(),
            settings: Some(good.clone()),
        })
        .await
        .expect("created")
        .into_inner();
    let unchanged = |a: Admin| async move {
        let mut a = a;
        let now = a
            .get_meeting(GetMeetingRequest {
                meeting_id: "m".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let all = a
            .list_meeting_settings(ListMeetingSettingsRequest::default())
            .await
            .unwrap()
            .into_inner();
        (now, all.meetings.len())
    };

    // Unknown meetings.
    let e = a
        .get_meeting(GetMeetingRequest {
            meeting_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = a
        .update_meeting(UpdateMeetingRequest {
            meeting_id: "nope".into(),
            settings: Some(good.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = a
        .delete_meeting(DeleteMeetingRequest {
            meeting_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Oversized metadata, on create and on update.
    let big = MeetingSettings {
        metadata: "x".repeat(4097),
        ..Default::default()
    };
    let e = a
        .create_meeting(CreateMeetingRequest {
            meeting_id: "big".into(),
            settings: Some(big.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("4096"), "{}", e.message());
    let e = a
        .update_meeting(UpdateMeetingRequest {
            meeting_id: "m".into(),
            settings: Some(big),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Invalid settings and ids.
    for (id, bad) in [
        (
            "m",
            MeetingSettings {
                max_participants: 100_001,
                ..Default::default()
            },
        ),
        (
            "m",
            MeetingSettings {
                expires_at: 1,
                ..Default::default()
            },
        ),
        (
            "m",
            MeetingSettings {
                empty_timeout_seconds: 604_801,
                ..Default::default()
            },
        ),
        ("not a meeting id", MeetingSettings::default()),
    ] {
        let e = a
            .update_meeting(UpdateMeetingRequest {
                meeting_id: id.into(),
                settings: Some(bad.clone()),
            })
            .await
            .unwrap_err();
        let want = if id == "m" {
            Code::InvalidArgument
        } else {
            Code::NotFound
        };
        assert_eq!(e.code(), want, "update {id:?} {bad:?}: {}", e.message());
        let e = a
            .create_meeting(CreateMeetingRequest {
                meeting_id: id.replace('m', "n"),
                settings: Some(bad.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "create {bad:?}");
    }
    // A page too large to answer under gRPC's usual message limit.
    let e = a
        .list_meeting_settings(ListMeetingSettingsRequest {
            page_size: 501,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // A second create of the same id.
    let e = a
        .create_meeting(CreateMeetingRequest {
            meeting_id: "m".into(),
            settings: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);

    // Without the token, or with a wrong one.
    let e = admin(&s, None)
        .await
        .update_meeting(UpdateMeetingRequest {
            meeting_id: "m".into(),
            settings: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    for call in 0..2 {
        let mut wrong = admin(&s, Some("not-the-admin-token-at-all")).await;
        let e = if call == 0 {
            wrong
                .delete_meeting(DeleteMeetingRequest {
                    meeting_id: "m".into(),
                })
                .await
                .unwrap_err()
        } else {
            wrong
                .create_meeting(CreateMeetingRequest {
                    meeting_id: "other".into(),
                    settings: None,
                })
                .await
                .unwrap_err()
        };
        assert_eq!(e.code(), Code::PermissionDenied);
    }

    assert_eq!(unchanged(a).await, (before, 1), "nothing changed");
    s.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// StartRecording in "private", which this server (without a recorder) refuses.
async fn start_refused(a: &mut Admin) -> tonic::Status {
    a.start_recording(StartRecordingRequest {
        meeting_id: "private".into(),
    })
    .await
    .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_is_refused_where_the_settings_do_not_allow_it() {
    let dir = temp_dir("meetings-rec");
    let s = node(&dir, true).await;
    let mut a = admin(&s, Some(ADMIN)).await;
    a.create_meeting(CreateMeetingRequest {
        meeting_id: "private".into(),
        settings: Some(MeetingSettings::default()),
    })
    .await
    .expect("created");
    let host_token = token(&mut a, "host", &["moderate", "subscribe"]).await;
    let (_host, first) = join(&s, &host_token, "private").await;
    assert!(matches!(first, S::Joined(_)), "{first:?}");
    let e = start_refused(&mut a).await;
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("recording_allowed"), "{}", e.message());
    // Allowed: the refusal is now only that this server has no recorder.
    a.update_meeting(UpdateMeetingRequest {
        meeting_id: "private".into(),
        settings: Some(MeetingSettings {
            recording_allowed: true,
            ..Default::default()
        }),
    })
    .await
    .expect("updated");
    let e = start_refused(&mut a).await;
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        !e.message().contains("recording_allowed"),
        "{}",
        e.message()
    );
    s.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_are_refused_once_the_meeting_has_expired() {
    let dir = temp_dir("meetings-expiry");
    let s = node(&dir, true).await;
    let mut a = admin(&s, Some(ADMIN)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    a.create_meeting(CreateMeetingRequest {
        meeting_id: "brief".into(),
        settings: Some(MeetingSettings {
            expires_at: now + 3,
            ..Default::default()
        }),
    })
    .await
    .expect("created");
    let t = token(&mut a, "someone", &["subscribe"]).await;
    let (_early, first) = join(&s, &t, "brief").await;
    assert!(
        matches!(first, S::Joined(_)),
        "before its expiry: {first:?}"
    );
    // Joins until one is refused, which must be for the expiry, and within
    // a generous deadline of it.
    let deadline = std::time::Instant::now() + common::DEADLINE;
    let refused = loop {
        let (_c, first) = join(&s, &t, "brief").await;
        if let S::Error(_) = first {
            break first;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still joinable long after its expiry"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(error_code(&refused), ErrorCode::MeetingExpired);
    // Extended: open again.
    a.update_meeting(UpdateMeetingRequest {
        meeting_id: "brief".into(),
        settings: Some(MeetingSettings::default()),
    })
    .await
    .expect("updated");
    let (_late, first) = join(&s, &t, "brief").await;
    assert!(matches!(first, S::Joined(_)), "after the update: {first:?}");
    s.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A video frame of track 1 carrying `payload` (the server stamps the sender).
fn video_frame(sequence: u32, payload: &[u8]) -> bytes::Bytes {
    let h = convene_protocol::media::MediaHeader {
        key: true,
        sender: 0,
        track_id: 1,
        sequence,
        capture_timestamp_us: 1_000 * u64::from(sequence),
    };
    convene_protocol::MediaFrame::build(&h, None, payload).into_bytes()
}

/// `payload` sealed by `ring` as frame `sequence` of track 1 (§14.4).
fn sealed(ring: &mut convene_protocol::e2ee::Keyring, sequence: u32, payload: &[u8]) -> Vec<u8> {
    let h = convene_protocol::media::MediaHeader {
        key: true,
        sender: 0,
        track_id: 1,
        sequence,
        capture_timestamp_us: 1_000 * u64::from(sequence),
    };
    ring.encrypt(&convene_protocol::e2ee::media_metadata(&h, None), payload)
}

/// Media `c` receives until a frame with `last` as its sequence: their sequences.
async fn sequences_until(c: &mut Client, last: u32) -> Vec<u32> {
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        match c.next().await {
            Some(common::Seen::Media(m)) => seen.push(m.header().sequence),
            Some(common::Seen::Closed(code)) => panic!("closed ({code:?}) after {seen:?}"),
            None => panic!("frame {last} never came; got {seen:?}"),
            Some(common::Seen::Control(_)) => {}
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_that_requires_encryption_forwards_only_sealed_media_after_an_announcement() {
    let dir = temp_dir("e2ee-required");
    let s = node(&dir, true).await;
    let mut a = admin(&s, Some(ADMIN)).await;
    let mut required = MeetingSettings {
        e2ee_required: true,
        ..Default::default()
    };
    a.create_meeting(CreateMeetingRequest {
        meeting_id: "sealed".into(),
        settings: Some(required.clone()),
    })
    .await
    .expect("created");
    let t = token(&mut a, "someone", &["publish_video", "subscribe"]).await;
    let (mut alice, first) = join(&s, &t, "sealed").await;
    assert!(
        matches!(&first, S::Joined(j) if j.e2ee_required),
        "Joined says encryption is required: {first:?}"
    );
    let (mut bob, _) = join(&s, &t, "sealed").await;
    // Bob announces too, as a member of such a meeting must.
    let bob_ring = convene_protocol::e2ee::Keyring::new("sealed", bob.id, [8; 32]);
    bob.send(C::E2ee(bob_ring.start())).await;
    alice.send(common::publish(1, v1::TrackKind::Video)).await;
    bob.expect(|m| matches!(m, S::TrackPublished(_))).await;

    // Plain media is held, and its sender told once.
    alice.send_raw(video_frame(1, b"a plain picture")).await;
    let told = alice.expect(|m| matches!(m, S::Error(_))).await;
    assert_eq!(error_code(&told), ErrorCode::E2eeRequired, "{told:?}");
    // Sealed, but before the announcement: held too.
    let mut ring = convene_protocol::e2ee::Keyring::new("sealed", alice.id, [7; 32]);
    ring.participant_joined(bob.id);
    let early = sealed(&mut ring, 2, b"picture two");
    alice.send_raw(video_frame(2, &early)).await;
    alice.send(C::E2ee(ring.start())).await;
    bob.expect(|m| matches!(m, S::E2ee(e) if e.from_participant_id == alice.id))
        .await;
    let three = sealed(&mut ring, 3, b"picture three");
    alice.send_raw(video_frame(3, &three)).await;
    alice
        .send_raw(video_frame(4, b"plain after announcing"))
        .await;
    // Sealed with a key that names somebody else: not this sender's.
    let mut other = convene_protocol::e2ee::Keyring::new("sealed", bob.id, [9; 32]);
    let forged = sealed(&mut other, 5, b"picture five");
    alice.send_raw(video_frame(5, &forged)).await;
    let six = sealed(&mut ring, 6, b"picture six");
    alice.send_raw(video_frame(6, &six)).await;
    assert_eq!(
        sequences_until(&mut bob, 6).await,
        vec![3, 6],
        "only the sealed frames after the announcement"
    );

    // Not required any more: plain media flows; required again: held, and told again.
    required.e2ee_required = false;
    a.update_meeting(UpdateMeetingRequest {
        meeting_id: "sealed".into(),
        settings: Some(required.clone()),
    })
    .await
    .expect("updated");
    alice.send_raw(video_frame(7, b"plain is fine now")).await;
    assert_eq!(sequences_until(&mut bob, 7).await, vec![7]);
    required.e2ee_required = true;
    a.update_meeting(UpdateMeetingRequest {
        meeting_id: "sealed".into(),
        settings: Some(required),
    })
    .await
    .expect("updated");
    alice.send_raw(video_frame(8, b"plain again")).await;
    let told = alice.expect(|m| matches!(m, S::Error(_))).await;
    assert_eq!(error_code(&told), ErrorCode::E2eeRequired, "{told:?}");
    let nine = sealed(&mut ring, 9, b"picture nine");
    alice.send_raw(video_frame(9, &nine)).await;
    assert_eq!(sequences_until(&mut bob, 9).await, vec![9]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The participants `meeting`'s room has on this node, or None without a room.
async fn room_size(a: &mut Admin, meeting: &str) -> Option<usize> {
    a.list_meetings(ListMeetingsRequest {})
        .await
        .expect("meetings listed")
        .into_inner()
        .meetings
        .into_iter()
        .find(|m| m.meeting_id == meeting)
        .map(|m| m.participants.len())
}

/// Waits (at most 30 s) until `meeting`'s room on this node has `want` participants.
async fn wait_room_size(a: &mut Admin, meeting: &str, want: Option<usize>) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = room_size(a, meeting).await;
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "room of {meeting}: {now:?} participants, never {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_ends_once_its_room_stays_empty_for_its_timeout() {
    let dir = temp_dir("empty-timeout");
    let s = node(&dir, true).await;
    let mut a = admin(&s, Some(ADMIN)).await;
    let mut settings = MeetingSettings {
        empty_timeout_seconds: 600,
        ..Default::default()
    };
    a.create_meeting(CreateMeetingRequest {
        meeting_id: "appointment".into(),
        settings: Some(settings.clone()),
    })
    .await
    .expect("created");
    let t = token(&mut a, "someone", &["subscribe"]).await;
    let (first, answer) = join(&s, &t, "appointment").await;
    assert!(matches!(answer, S::Joined(_)), "{answer:?}");
    drop(first);
    // Everyone left: the room is kept, empty, and a join goes on in it.
    wait_room_size(&mut a, "appointment", Some(0)).await;
    let (second, answer) = join(&s, &t, "appointment").await;
    assert!(matches!(answer, S::Joined(_)), "{answer:?}");
    drop(second);
    wait_room_size(&mut a, "appointment", Some(0)).await;
    // A shorter timeout, already over: the meeting ends.
    settings.empty_timeout_seconds = 1;
    a.update_meeting(UpdateMeetingRequest {
        meeting_id: "appointment".into(),
        settings: Some(settings),
    })
    .await
    .expect("updated");
    wait_room_size(&mut a, "appointment", None).await;
    // The room closes first, and the end is stored just after.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let ended = loop {
        let m = a
            .get_meeting(GetMeetingRequest {
                meeting_id: "appointment".into(),
            })
            .await
            .expect("still there")
            .into_inner()
            .settings
            .expect("settings");
        if m.expires_at != 0 {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ended: {m:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        ended.expires_at != 0 && ended.expires_at <= now && now - ended.expires_at < 60,
        "ended now: {ended:?}"
    );
    assert_eq!(room_size(&mut a, "appointment").await, None, "room closed");
    let (_late, answer) = join(&s, &t, "appointment").await;
    assert_eq!(error_code(&answer), ErrorCode::MeetingExpired);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node of a cluster on `nats`, its meetings in the PostgreSQL at `db`.
async fn pg_node(db: &str, nats: &common::nats::NatsServer, id: u16) -> convene_server::Server {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: Some(ADMIN.into()),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        auth_secret: Some(SECRET.into()),
        database_url: Some(db.into()),
        bus: Some(nats.url()),
        node_id: Some(id),
        node_timeout_ms: 1_500,
        ..Config::default()
    };
    let s = convene_server::start(config).await.expect("node starts");
    common::wait_ready(&s).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_postgresql_share_meetings_and_changes_reach_rooms_within_a_second() {
    let db = common::postgres::Postgres::start();
    let nats = common::nats::NatsServer::start();
    let a_node = pg_node(&db.url(), &nats, 1).await;
    let b_node = pg_node(&db.url(), &nats, 2).await;
    let mut a = admin(&a_node, Some(ADMIN)).await;
    let mut b = admin(&b_node, Some(ADMIN)).await;

    // Created through A: B knows it, and the same id cannot be created through B.
    let mut settings = MeetingSettings {
        max_participants: 5,
        metadata: "{\"ward\":3}".into(),
        guests_may_publish: Some(convene_admin::PublishKinds {
            video: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = a
        .create_meeting(CreateMeetingRequest {
            meeting_id: "ward-3".into(),
            settings: Some(settings.clone()),
        })
        .await
        .expect("created")
        .into_inner();
    let seen = b
        .get_meeting(GetMeetingRequest {
            meeting_id: "ward-3".into(),
        })
        .await
        .expect("B reads what A created")
        .into_inner();
    assert_eq!(seen, created);
    let twice = b
        .create_meeting(CreateMeetingRequest {
            meeting_id: "ward-3".into(),
            settings: Some(settings.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::AlreadyExists, "{twice:?}");

    // A room on B, with someone publishing in it.
    let t = token(&mut a, "nurse", &["publish_video", "subscribe"]).await;
    let (mut nurse, first) = join(&b_node, &t, "ward-3").await;
    assert!(
        matches!(&first, S::Joined(j) if !j.locked && !j.e2ee_required),
        "{first:?}"
    );
    nurse.send(common::publish(1, v1::TrackKind::Video)).await;
    nurse.expect(|m| matches!(m, S::TrackPublished(_))).await;

    // Locked through A: the room on B is told within a second.
    settings.locked = true;
    let sent = std::time::Instant::now();
    a.update_meeting(UpdateMeetingRequest {
        meeting_id: "ward-3".into(),
        settings: Some(settings.clone()),
    })
    .await
    .expect("updated");
    nurse
        .expect(|m| matches!(m, S::RoomLocked(l) if l.locked))
        .await;
    let took = sent.elapsed();
    eprintln!("a lock set through node A reached the room on node B in {took:?}");
    assert!(
        took < std::time::Duration::from_secs(1),
        "the lock took {took:?}"
    );
    let (_late, answer) = join(&b_node, &t, "ward-3").await;
    assert_eq!(error_code(&answer), ErrorCode::RoomLocked);

    // Encryption required through A: B holds the nurse's plain media and says so.
    settings.e2ee_required = true;
    a.update_meeting(UpdateMeetingRequest {
        meeting_id: "ward-3".into(),
        settings: Some(settings.clone()),
    })
    .await
    .expect("updated");
    let sent = std::time::Instant::now();
    let deadline = sent + std::time::Duration::from_secs(1);
    let mut sequence = 0;
    loop {
        sequence += 1;
        nurse.send_raw(video_frame(sequence, b"plain")).await;
        let told = tokio::time::timeout(std::time::Duration::from_millis(50), async {
            loop {
                match nurse.next().await {
                    Some(common::Seen::Control(S::Error(e))) => return e,
                    Some(common::Seen::Closed(c)) => panic!("closed: {c:?}"),
                    None => std::future::pending::<()>().await,
                    _ => {}
                }
            }
        })
        .await;
        if let Ok(e) = told {
            assert_eq!(e.code, ErrorCode::E2eeRequired as i32, "{e:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B still forwards plain media {:?} after the change",
            sent.elapsed()
        );
    }

    // Deleted through B: gone for A too; a node started later reads what is left.
    b.delete_meeting(DeleteMeetingRequest {
        meeting_id: "ward-3".into(),
    })
    .await
    .expect("deleted");
    let gone = a
        .get_meeting(GetMeetingRequest {
            meeting_id: "ward-3".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    a.create_meeting(CreateMeetingRequest {
        meeting_id: "ward-4".into(),
        settings: Some(MeetingSettings::default()),
    })
    .await
    .expect("created");
    let c_node = pg_node(&db.url(), &nats, 3).await;
    let mut c = admin(&c_node, Some(ADMIN)).await;
    let listed = c
        .list_meeting_settings(ListMeetingSettingsRequest::default())
        .await
        .expect("listed")
        .into_inner();
    let ids: Vec<String> = listed
        .meetings
        .iter()
        .map(|m| m.meeting_id.clone())
        .collect();
    assert_eq!(ids, vec!["ward-4".to_string()]);
    drop(nurse);
    for n in [a_node, b_node, c_node] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgresql_schema_is_migrated_once_and_a_newer_one_is_refused() {
    use convene_server::meetings::{PgStore, StoreError, postgres::SCHEMA_VERSION};
    let db = common::postgres::Postgres::start();
    // Two nodes starting at once: both come up, the schema made once.
    let url = db.url();
    let (one, two) = tokio::join!(PgStore::connect(&url), PgStore::connect(&url));
    let (one, _changes_one) = one.expect("first node");
    let (two, _changes_two) = two.expect("second node");
    assert_eq!(one.version().await.unwrap(), SCHEMA_VERSION);
    assert_eq!(two.version().await.unwrap(), SCHEMA_VERSION);
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let steps: i64 = client
        .query_one("SELECT COUNT(*) FROM schema_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(steps, i64::from(SCHEMA_VERSION), "each step recorded once");
    // A database a newer server migrated: refused, not changed.
    client
        .execute(
            "INSERT INTO schema_version VALUES ($1, 0)",
            &[&(SCHEMA_VERSION as i32 + 1)],
        )
        .await
        .unwrap();
    let e = PgStore::connect(&db.url()).await.unwrap_err();
    assert!(
        matches!(e, StoreError::TooNew { found } if found == SCHEMA_VERSION + 1),
        "{e}"
    );
    // And a wrong address says what to check.
    let e = PgStore::connect("postgres://convene@127.0.0.1:1/postgres")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--database-url"), "{e}");
}

/// Milliseconds since the Unix epoch, as the test sees it.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Every attendance record of `meeting`, `page` at a time.
async fn attendance(a: &mut Admin, meeting: &str, page: u32) -> Vec<AttendanceRecord> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let r = a
            .list_attendance(ListAttendanceRequest {
                meeting_id: meeting.into(),
                page_size: page,
                page_token: token,
            })
            .await
            .expect("attendance is listed")
            .into_inner();
        assert!(r.records.len() <= if page == 0 { 100 } else { page as usize });
        all.extend(r.records);
        if r.next_page_token.is_empty() {
            return all;
        }
        token = r.next_page_token;
    }
}

/// `got` within a second of when the test saw it happen, `seen`.
fn near(what: &str, got: u64, seen: u64) {
    assert!(
        got.abs_diff(seen) <= 1_000,
        "{what}: recorded {got}, seen at {seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attendance_records_who_came_when_and_why_they_left() {
    let dir = temp_dir("meetings-attendance");
    let s = node(&dir, true).await;
    let mut a = admin(&s, Some(ADMIN)).await;
    let alice_token = token(&mut a, "alice", &["subscribe"]).await;
    let bob_token = token(&mut a, "bob", &["subscribe"]).await;
    let carol_token = token(&mut a, "carol", &["subscribe"]).await;

    // An ad-hoc meeting: attendance is kept for those too.
    let (mut alice, first) = join(&s, &alice_token, "standup").await;
    assert!(matches!(first, S::Joined(_)), "{first:?}");
    let alice_in = now_ms();
    let (mut bob, first) = join(&s, &bob_token, "standup").await;
    assert!(matches!(first, S::Joined(_)), "{first:?}");
    let bob_in = now_ms();

    // Alice leaves; bob sees her go.
    alice.send(C::Leave(v1::Leave {})).await;
    let alice_id = alice.id;
    bob.expect(|m| matches!(m, S::ParticipantLeft(p) if p.participant_id == alice_id))
        .await;
    let alice_out = now_ms();

    // Bob is removed by the operator.
    a.remove_participant(RemoveParticipantRequest {
        meeting_id: "standup".into(),
        participant_id: bob.id,
        reason: "test".into(),
    })
    .await
    .expect("removed");
    bob.expect(|m| matches!(m, S::Goodbye(g) if g.reason == v1::GoodbyeReason::Removed as i32))
        .await;
    let bob_out = now_ms();

    // Carol stays.
    let (carol, first) = join(&s, &carol_token, "standup").await;
    assert!(matches!(first, S::Joined(_)), "{first:?}");
    let carol_in = now_ms();

    // The removal is recorded once bob's connection has gone: wait for it,
    // a page of one at a time, so the paging is followed too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let records = loop {
        let r = attendance(&mut a, "standup", 1).await;
        if r.len() == 3 && r[1].left_at_ms.is_some() {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "attendance never showed bob's removal: {r:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let who: Vec<(u32, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r.participant_id,
                r.user_id.as_str(),
                r.display_name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        who,
        vec![
            (alice.id, "alice", "alice"),
            (bob.id, "bob", "bob"),
            (carol.id, "carol", "carol")
        ],
        "in join order, names from the tokens, not the Join's"
    );
    assert!(
        records
            .iter()
            .all(|r| r.meeting_id == "standup" && r.node_id == 0)
    );
    let reasons: Vec<&str> = records.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons, vec!["left", "removed", ""]);
    near("alice joined", records[0].joined_at_ms, alice_in);
    near("alice left", records[0].left_at_ms.unwrap(), alice_out);
    near("bob joined", records[1].joined_at_ms, bob_in);
    near("bob removed", records[1].left_at_ms.unwrap(), bob_out);
    near("carol joined", records[2].joined_at_ms, carol_in);
    assert_eq!(records[2].left_at_ms, None, "carol is still in");
    assert_eq!(
        attendance(&mut a, "standup", 0).await,
        records,
        "one page of 100"
    );

    // Bad requests.
    let e = a
        .list_attendance(ListAttendanceRequest {
            meeting_id: "standup".into(),
            page_size: 501,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    for (meeting, token) in [("standup", "not-a-token"), ("bad id!", "")] {
        let e = a
            .list_attendance(ListAttendanceRequest {
                meeting_id: meeting.into(),
                page_size: 10,
                page_token: token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{meeting:?} {token:?}");
    }
    assert!(attendance(&mut a, "nobody-came", 10).await.is_empty());

    // A restart closes carol's stay, which the stopped server never ended.
    drop(carol);
    s.shutdown().await;
    let s = node(&dir, true).await;
    let mut a = admin(&s, Some(ADMIN)).await;
    let after = attendance(&mut a, "standup", 10).await;
    assert_eq!(after.len(), 3);
    assert_eq!(&after[..2], &records[..2], "what was recorded stays");
    assert!(
        after[2].left_at_ms.is_some() && !after[2].reason.is_empty(),
        "{:?}",
        after[2]
    );
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_publish_only_what_the_meeting_lets_them() {
    let dir = temp_dir("guest-publish");
    let s = node(&dir, true).await;
    let mut a = admin(&s, Some(ADMIN)).await;
    // A webinar: guests may speak, not show a camera or a screen.
    let mut settings = MeetingSettings {
        guests_may_publish: Some(convene_admin::PublishKinds {
            audio: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = a
        .create_meeting(CreateMeetingRequest {
            meeting_id: "webinar".into(),
            settings: Some(settings.clone()),
        })
        .await
        .expect("created")
        .into_inner();
    assert_eq!(created.settings.as_ref(), Some(&settings));
    let all = [
        "publish_audio",
        "publish_video",
        "publish_screen",
        "subscribe",
    ];
    let guest_token = token(&mut a, "guest", &all).await;
    let mut host_grants = all.to_vec();
    host_grants.push("moderate");
    let host_token = token(&mut a, "host", &host_grants).await;
    let (mut guest, _) = join(&s, &guest_token, "webinar").await;
    let (mut host, _) = join(&s, &host_token, "webinar").await;
    let guest_id = guest.id;
    let published = |id: u32, track: u32| {
        move |m: &S| {
            matches!(m, S::TrackPublished(p) if p.participant_id == id
                && p.track.as_ref().is_some_and(|t| t.track_id == track))
        }
    };
    guest.send(common::publish(1, v1::TrackKind::Audio)).await;
    host.expect(published(guest_id, 1)).await;
    guest.send(common::publish(2, v1::TrackKind::Video)).await;
    let refused = guest.expect(|m| matches!(m, S::Error(_))).await;
    assert_eq!(
        error_code(&refused),
        ErrorCode::PermissionDenied,
        "{refused:?}"
    );
    let S::Error(e) = &refused else {
        unreachable!()
    };
    assert!(e.text.contains("may publish audio"), "{}", e.text);
    guest.send(common::publish(3, v1::TrackKind::Screen)).await;
    let refused = guest.expect(|m| matches!(m, S::Error(_))).await;
    assert_eq!(error_code(&refused), ErrorCode::PermissionDenied);
    // A moderator shows what it likes.
    let host_id = host.id;
    host.send(common::publish(4, v1::TrackKind::Screen)).await;
    guest.expect(published(host_id, 4)).await;
    // Cameras allowed from now on.
    settings.guests_may_publish = Some(convene_admin::PublishKinds {
        audio: true,
        video: true,
        screen: false,
    });
    a.update_meeting(UpdateMeetingRequest {
        meeting_id: "webinar".into(),
        settings: Some(settings.clone()),
    })
    .await
    .expect("updated");
    guest.send(common::publish(5, v1::TrackKind::Video)).await;
    host.expect(published(guest_id, 5)).await;
    let kept = a
        .get_meeting(GetMeetingRequest {
            meeting_id: "webinar".into(),
        })
        .await
        .expect("read")
        .into_inner();
    assert_eq!(kept.settings, Some(settings));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Lists `meeting`'s attendance through `a` until `done` holds for it,
/// waiting at most 30 s; the records and how long it took.
async fn attendance_until(
    a: &mut Admin,
    meeting: &str,
    page: u32,
    done: impl Fn(&[AttendanceRecord]) -> bool,
) -> (Vec<AttendanceRecord>, std::time::Duration) {
    let start = std::time::Instant::now();
    loop {
        let r = attendance(a, meeting, page).await;
        if done(&r) {
            return (r, start.elapsed());
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "attendance never became complete: {r:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attendance_is_listed_on_every_node_sharing_postgresql() {
    let db = common::postgres::Postgres::start();
    let nats = common::nats::NatsServer::start();
    let a_node = pg_node(&db.url(), &nats, 1).await;
    let b_node = pg_node(&db.url(), &nats, 2).await;
    let mut a = admin(&a_node, Some(ADMIN)).await;
    let mut b = admin(&b_node, Some(ADMIN)).await;
    a.create_meeting(CreateMeetingRequest {
        meeting_id: "rounds".into(),
        settings: Some(MeetingSettings::default()),
    })
    .await
    .expect("created");

    // Alice and carol on A, bob and dave on B.
    let mut joined = Vec::new();
    for (name, n) in [
        ("alice", &a_node),
        ("bob", &b_node),
        ("carol", &a_node),
        ("dave", &b_node),
    ] {
        let t = token(&mut a, name, &["subscribe"]).await;
        let (c, first) = join(n, &t, "rounds").await;
        assert!(matches!(first, S::Joined(_)), "{name}: {first:?}");
        joined.push((c, now_ms()));
        // Distinct join times, so the order of the list is known.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let [
        (mut alice, alice_in),
        (mut bob, bob_in),
        (mut carol, carol_in),
        (mut dave, dave_in),
    ] = <[_; 4]>::try_from(joined).ok().unwrap();

    // Alice leaves A (carol sees her go), bob is removed from B (dave sees it).
    alice.send(C::Leave(v1::Leave {})).await;
    let alice_id = alice.id;
    carol
        .expect(|m| matches!(m, S::ParticipantLeft(p) if p.participant_id == alice_id))
        .await;
    let alice_out = now_ms();
    b.remove_participant(RemoveParticipantRequest {
        meeting_id: "rounds".into(),
        participant_id: bob.id,
        reason: "test".into(),
    })
    .await
    .expect("removed");
    bob.expect(|m| matches!(m, S::Goodbye(g) if g.reason == v1::GoodbyeReason::Removed as i32))
        .await;
    let bob_id = bob.id;
    dave.expect(|m| matches!(m, S::ParticipantLeft(p) if p.participant_id == bob_id))
        .await;
    let bob_out = now_ms();

    // Through A: everyone, B's leave included (shipped by B, not flushed by A).
    let complete = |r: &[AttendanceRecord]| {
        r.len() == 4 && r[0].left_at_ms.is_some() && r[1].left_at_ms.is_some()
    };
    let (records, took) = attendance_until(&mut a, "rounds", 1, complete).await;
    eprintln!("B's leave listed through A {took:?} after it was seen");
    let who: Vec<(u32, &str, &str, u32, &str)> = records
        .iter()
        .map(|r| {
            (
                r.participant_id,
                r.user_id.as_str(),
                r.display_name.as_str(),
                r.node_id,
                r.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        who,
        vec![
            (alice.id, "alice", "alice", 1, "left"),
            (bob.id, "bob", "bob", 2, "removed"),
            (carol.id, "carol", "carol", 1, ""),
            (dave.id, "dave", "dave", 2, ""),
        ],
        "in join order, each with its node"
    );
    assert!(records.iter().all(|r| r.meeting_id == "rounds"));
    near("alice joined", records[0].joined_at_ms, alice_in);
    near("alice left", records[0].left_at_ms.unwrap(), alice_out);
    near("bob joined", records[1].joined_at_ms, bob_in);
    near("bob removed", records[1].left_at_ms.unwrap(), bob_out);
    near("carol joined", records[2].joined_at_ms, carol_in);
    near("dave joined", records[3].joined_at_ms, dave_in);
    assert_eq!((records[2].left_at_ms, records[3].left_at_ms), (None, None));

    // Through B the same, in one page or in pages of two.
    let (on_b, _) = attendance_until(&mut b, "rounds", 0, |r| r == records.as_slice()).await;
    assert_eq!(attendance(&mut b, "rounds", 2).await, on_b);

    // A leave on A is in A's answer at once: A ships before it lists.
    carol.send(C::Leave(v1::Leave {})).await;
    let carol_id = carol.id;
    dave.expect(|m| matches!(m, S::ParticipantLeft(p) if p.participant_id == carol_id))
        .await;
    let carol_out = now_ms();
    let (after, _) = attendance_until(&mut a, "rounds", 10, |r| {
        r.len() == 4 && r[2].left_at_ms.is_some()
    })
    .await;
    near("carol left", after[2].left_at_ms.unwrap(), carol_out);
    assert_eq!(after[2].reason, "left");

    // A token of a single node's listing is refused here.
    let e = a
        .list_attendance(ListAttendanceRequest {
            meeting_id: "rounds".into(),
            page_size: 1,
            page_token: "1.2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // The shipping is on /metrics.
    let (status, body) = common::http_get(&a_node, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("convene_attendance_unshipped 0"), "{body}");

    // B stops with dave still in: his leave is shipped before B is gone.
    b_node.shutdown().await;
    let r = attendance(&mut a, "rounds", 10).await;
    assert_eq!(r[3].participant_id, dave.id);
    assert_eq!(r[3].reason, "server_shutdown", "{r:?}");
    drop((alice, bob, carol, dave));
    a_node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgresql_attendance_table_keeps_the_latest_version_and_forgets_old_rows() {
    use convene_server::meetings::PgStore;
    use convene_server::meetings::journal::{Attendance, AttendanceCursor, Unshipped};
    let db = common::postgres::Postgres::start();
    let (pg, _changes) = PgStore::connect(&db.url()).await.expect("connected");
    let row = |node: u32, id: i64, joined: u64, left: Option<u64>, version: i64| Unshipped {
        row: Attendance {
            id,
            meeting_id: "m".into(),
            participant_id: id as u32,
            user_id: format!("u{id}"),
            display_name: format!("n{id}"),
            node_id: node,
            joined_at_ms: joined,
            left_at_ms: left,
            reason: left.map(|_| "left".to_string()),
        },
        version,
    };
    // Two nodes with the same local id, one join time for three rows.
    pg.upsert_attendance(&[
        row(2, 7, 100, None, 1),
        row(1, 7, 100, None, 1),
        row(1, 3, 100, None, 1),
    ])
    .await
    .unwrap();
    pg.upsert_attendance(&[row(1, 9, 50, Some(60), 2)])
        .await
        .unwrap();
    // The leave of (1, 7), then the join again, late: the leave stays.
    pg.upsert_attendance(&[row(1, 7, 100, Some(200), 2)])
        .await
        .unwrap();
    pg.upsert_attendance(&[row(1, 7, 100, None, 1)])
        .await
        .unwrap();
    let (all, more) = pg.attendance_page("m", None, 10).await.unwrap();
    assert!(!more);
    let keys: Vec<(u64, u32, i64)> = all
        .iter()
        .map(|a| (a.joined_at_ms, a.node_id, a.id))
        .collect();
    assert_eq!(keys, [(50, 1, 9), (100, 1, 3), (100, 1, 7), (100, 2, 7)]);
    assert_eq!(
        all[2].left_at_ms,
        Some(200),
        "a later version is never undone"
    );
    assert_eq!(
        (all[2].user_id.as_str(), all[2].display_name.as_str()),
        ("u7", "n7")
    );
    // Pages of one cover every row once.
    let mut after = None;
    let mut paged = Vec::new();
    loop {
        let (p, more) = pg.attendance_page("m", after, 1).await.unwrap();
        let last = p.last().expect("a row");
        after = Some(AttendanceCursor {
            joined_at_ms: last.joined_at_ms,
            node_id: Some(last.node_id),
            id: last.id,
        });
        paged.extend(p);
        if !more {
            break;
        }
    }
    assert_eq!(paged, all);
    assert_eq!(
        pg.attendance_page("other", None, 10).await.unwrap(),
        (vec![], false)
    );
    // A previous run of node 2 left (2, 7) open; ids of this run start at 8.
    assert_eq!(
        pg.attendance_close_stale(2, 8, 300, "server_stopped")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        pg.attendance_close_stale(2, 8, 400, "server_stopped")
            .await
            .unwrap(),
        0
    );
    // Retention: left before 100 goes, open rows stay; again, nothing more.
    assert_eq!(pg.attendance_delete_before(100).await.unwrap(), 1);
    assert_eq!(pg.attendance_delete_before(100).await.unwrap(), 0);
    let (left, _) = pg.attendance_page("m", None, 10).await.unwrap();
    let keys: Vec<(u32, i64, Option<u64>, Option<&str>)> = left
        .iter()
        .map(|a| (a.node_id, a.id, a.left_at_ms, a.reason.as_deref()))
        .collect();
    assert_eq!(
        keys,
        [
            (1, 3, None, None),
            (1, 7, Some(200), Some("left")),
            (2, 7, Some(300), Some("server_stopped"))
        ]
    );
    assert_eq!(pg.attendance_delete_before(1_000).await.unwrap(), 2);
}

/// The value of an unlabelled metric on `node`'s `/metrics`, 0 when absent.
async fn metric(node: &convene_server::Server, name: &str) -> f64 {
    let (status, body) = common::http_get(node, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attendance_waits_while_postgresql_is_down_and_is_shipped_when_it_is_back() {
    let mut db = common::postgres::Postgres::start();
    let nats = common::nats::NatsServer::start();
    let n = pg_node(&db.url(), &nats, 1).await;
    let mut a = admin(&n, Some(ADMIN)).await;
    a.create_meeting(CreateMeetingRequest {
        meeting_id: "night".into(),
        settings: Some(MeetingSettings::default()),
    })
    .await
    .expect("created");
    let alice_token = token(&mut a, "alice", &["subscribe"]).await;
    let bob_token = token(&mut a, "bob", &["subscribe"]).await;
    let (mut alice, first) = join(&n, &alice_token, "night").await;
    assert!(matches!(first, S::Joined(_)), "{first:?}");
    attendance_until(&mut a, "night", 10, |r| r.len() == 1).await;

    // PostgreSQL stops: the meeting goes on, leaves and joins wait on the node.
    db.stop();
    let (mut bob, first) = join(&n, &bob_token, "night").await;
    assert!(matches!(first, S::Joined(_)), "{first:?}");
    let bob_in = now_ms();
    alice.send(C::Leave(v1::Leave {})).await;
    let alice_id = alice.id;
    bob.expect(|m| matches!(m, S::ParticipantLeft(p) if p.participant_id == alice_id))
        .await;
    let alice_out = now_ms();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while metric(&n, "convene_attendance_unshipped").await < 2.0
        || metric(&n, "convene_attendance_ship_failed_total").await < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the waiting rows and the failures are never counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let e = a
        .list_attendance(ListAttendanceRequest {
            meeting_id: "night".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // Back: the node reconnects (with backoff) and ships what waited,
    // without a listing asking for it.
    db.restart();
    let back = std::time::Instant::now();
    while metric(&n, "convene_attendance_unshipped").await > 0.0 {
        assert!(
            back.elapsed() < std::time::Duration::from_secs(30),
            "the waiting rows are never shipped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    eprintln!("shipped {:?} after PostgreSQL was back", back.elapsed());
    let records = loop {
        let r = a
            .list_attendance(ListAttendanceRequest {
                meeting_id: "night".into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().records);
        if let Ok(r) = &r
            && r.len() == 2
            && r[0].left_at_ms.is_some()
        {
            break r.clone();
        }
        assert!(
            back.elapsed() < std::time::Duration::from_secs(30),
            "attendance never shipped once PostgreSQL was back: {r:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(records[0].participant_id, alice.id);
    assert_eq!(records[0].reason, "left");
    near("alice left", records[0].left_at_ms.unwrap(), alice_out);
    assert_eq!(records[1].participant_id, bob.id);
    near("bob joined", records[1].joined_at_ms, bob_in);
    assert_eq!(metric(&n, "convene_attendance_unshipped").await, 0.0);
    drop((alice, bob));
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_announces_no_key_is_removed_from_a_meeting_that_requires_encryption() {
    let dir = temp_dir("e2ee-lurker");
    let s = common::managed::node_with(&dir, |c| {
        c.e2ee_announce_timeout_ms = 3_000;
        // The member is not read while the test waits for the other.
        c.idle_timeout_ms = 30_000;
    })
    .await;
    let mut a = admin(&s, Some(ADMIN)).await;
    a.create_meeting(CreateMeetingRequest {
        meeting_id: "sealed-2".into(),
        settings: Some(MeetingSettings {
            e2ee_required: true,
            ..Default::default()
        }),
    })
    .await
    .expect("created");
    let t = token(&mut a, "someone", &["subscribe"]).await;
    let (mut member, _) = join(&s, &t, "sealed-2").await;
    let ring = convene_protocol::e2ee::Keyring::new("sealed-2", member.id, [3; 32]);
    member.send(C::E2ee(ring.start())).await;
    let joined = std::time::Instant::now();
    let (mut lurker, _) = join(&s, &t, "sealed-2").await;
    let lurker_id = lurker.id;
    let bye = lurker.expect(|m| matches!(m, S::Goodbye(_))).await;
    let S::Goodbye(g) = &bye else { unreachable!() };
    assert_eq!(g.reason, v1::GoodbyeReason::Removed as i32, "{g:?}");
    assert!(g.text.contains("end-to-end encryption"), "{g:?}");
    assert!(
        joined.elapsed() >= std::time::Duration::from_secs(3),
        "not before the grace period: {:?}",
        joined.elapsed()
    );
    // The member who announced stays, and sees the other go.
    member
        .expect(|m| matches!(m, S::ParticipantLeft(l) if l.participant_id == lurker_id))
        .await;
    let listed = a
        .list_meetings(ListMeetingsRequest {})
        .await
        .expect("listed")
        .into_inner()
        .meetings;
    let room = listed
        .iter()
        .find(|m| m.meeting_id == "sealed-2")
        .expect("live");
    assert_eq!(room.participants.len(), 1);
    assert_eq!(room.participants[0].participant_id, member.id);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_over_tls_needs_its_certificate_to_be_trusted() {
    use convene_server::meetings::PgStore;
    let pki = convene_testkit::pki::TestPki::new("postgres-tls");
    let db =
        common::postgres::Postgres::start_tls(&pki.path("server.pem"), &pki.path("server-key.pem"));
    let url = format!(
        "postgres://convene@localhost:{}/postgres?sslmode=require",
        db.port
    );
    let ca = convene_server::tls::ca_certificates(&pki.path("ca.pem")).unwrap();
    // Trusting the database's CA: a TLS session, and the store works through it.
    let (store, _changes) = PgStore::connect_trusting(&url, ca)
        .await
        .expect("TLS to PostgreSQL");
    assert_eq!(store.list().await.unwrap(), vec![]);
    // Asking for TLS without trusting its CA: refused, and the error says so.
    let e = PgStore::connect(&url).await.unwrap_err().to_string();
    assert!(e.contains("cannot connect to PostgreSQL"), "{e}");
    // The server really speaks TLS: its own view of our session says so.
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let tls_sessions: i64 = client
        .query_one("SELECT COUNT(*) FROM pg_stat_ssl WHERE ssl", &[])
        .await
        .unwrap()
        .get(0);
    assert!(tls_sessions >= 1, "the store's connection is encrypted");
}
