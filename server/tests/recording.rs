//! Recording (PROTOCOL.md §5.10) with real WebSocket clients and the real
//! admin API: a client that says CLIENT_KIND_RECORDER is seen recording by
//! everyone, negotiated or not, and cannot publish; with tokens it needs the
//! `record` grant; StartRecording and StopRecording need the extension and
//! the moderator role; a meeting with a recorder refuses another, and
//! stopping removes it; a server without a recorder says so, to moderators
//! and to the admin API.

mod common;

use common::{Client, server};
use convene_admin::admin_client::AdminClient;
use convene_admin::{ListMeetingsRequest, StartRecordingRequest, StopRecordingRequest};
use convene_protocol::auth::Claims;
use convene_protocol::v1::{self, client_message::Msg as C, server_message::Msg as S};
use convene_protocol::{ErrorCode, encode_control};
use tonic::Code;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!";
const ADMIN: &str = "admin-token-0123456789";

fn token(meeting: &str, grants: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let c = Claims {
        sub: format!("user-{}", grants.join("-")),
        meeting: meeting.into(),
        grants: grants.iter().map(|g| g.to_string()).collect(),
        exp: now + 600,
        ..Claims::default()
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &c,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Connects and says Hello as `kind`, with `token` and `features`.
async fn hello(
    s: &convene_server::Server,
    kind: v1::ClientKind,
    token: &str,
    features: &[&str],
) -> Client {
    let mut c = Client::connect(s).await;
    c.send(C::Hello(v1::Hello {
        versions: vec![1],
        client_kind: kind as i32,
        auth_token: token.into(),
        features: features.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    }))
    .await;
    let S::Welcome(w) = c.expect(|m| matches!(m, S::Welcome(_))).await else {
        unreachable!()
    };
    c.id = w.participant_id;
    c
}

/// Sends Join; returns Joined or the Error.
async fn join(c: &mut Client, meeting: &str) -> S {
    c.send(C::Join(v1::Join {
        meeting_id: meeting.into(),
        display_name: format!("p{}", c.id),
        subscribe_all: true,
    }))
    .await;
    c.expect(|m| matches!(m, S::Joined(_) | S::Error(_))).await
}

/// Sends `msg` with `request_id` and waits for its RecordingAnswer or Error.
async fn request(c: &mut Client, request_id: u32, msg: C) -> S {
    c.send_raw(encode_control(&v1::ClientMessage {
        request_id,
        msg: Some(msg),
    }))
    .await;
    c.expect(move |m| match m {
        S::RecordingAnswer(a) => a.request_id == request_id,
        S::Error(e) => e.request_id == request_id,
        _ => false,
    })
    .await
}

fn code(m: &S) -> ErrorCode {
    match m {
        S::Error(e) => ErrorCode::try_from(e.code).unwrap(),
        other => panic!("expected an Error, got {other:?}"),
    }
}

fn recording_of(joined: &S, pid: u32) -> bool {
    let S::Joined(j) = joined else {
        panic!("expected Joined, got {joined:?}")
    };
    j.participants
        .iter()
        .find(|p| p.participant_id == pid)
        .unwrap_or_else(|| panic!("{pid} is not in {j:?}"))
        .recording
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_is_seen_recording_by_everyone_and_cannot_publish() {
    let s = server(|_| {}).await;
    // `a` negotiated nothing: being recorded is not an extension.
    let mut a = Client::joined(&s, "rec-seen", true).await;
    let mut r = hello(&s, v1::ClientKind::Recorder, "", &[]).await;
    let joined = join(&mut r, "rec-seen").await;
    assert!(recording_of(&joined, r.id), "the recorder sees itself so");
    assert!(!recording_of(&joined, a.id), "nobody else records");
    let rid = r.id;
    let S::ParticipantJoined(pj) = a
        .expect(move |m| matches!(m, S::ParticipantJoined(p) if p.participant.as_ref().is_some_and(|p| p.participant_id == rid)))
        .await
    else {
        unreachable!()
    };
    assert!(pj.participant.unwrap().recording);
    // A later arrival sees it in Joined.
    let mut b = hello(&s, v1::ClientKind::Browser, "", &[]).await;
    let joined = join(&mut b, "rec-seen").await;
    assert!(recording_of(&joined, r.id));
    assert!(!recording_of(&joined, b.id));
    // It may not publish; an ordinary participant may.
    r.send_raw(encode_control(&v1::ClientMessage {
        request_id: 9,
        msg: Some(common::publish(1, v1::TrackKind::Audio)),
    }))
    .await;
    let e = r.expect(|m| matches!(m, S::Error(_))).await;
    assert_eq!(code(&e), ErrorCode::PermissionDenied);
    let S::Error(e) = e else { unreachable!() };
    assert_eq!(e.request_id, 9);
    assert!(e.text.contains("recorder"), "{}", e.text);
    b.send(common::publish(1, v1::TrackKind::Audio)).await;
    let bid = b.id;
    a.expect(move |m| matches!(m, S::TrackPublished(t) if t.participant_id == bid))
        .await;
    // When it leaves, everyone sees it go.
    drop(r);
    a.expect(move |m| matches!(m, S::ParticipantLeft(l) if l.participant_id == rid))
        .await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_a_recorder_needs_the_record_grant() {
    let s = server(|c| c.auth_secret = Some(SECRET.into())).await;
    let mut without = hello(
        &s,
        v1::ClientKind::Recorder,
        &token("rec-grant", &["subscribe"]),
        &[],
    )
    .await;
    let refused = join(&mut without, "rec-grant").await;
    assert_eq!(code(&refused), ErrorCode::PermissionDenied);
    let S::Error(e) = refused else { unreachable!() };
    assert!(e.text.contains("record"), "{}", e.text);
    // The same grants are enough for an ordinary participant.
    let mut plain = hello(
        &s,
        v1::ClientKind::Native,
        &token("rec-grant", &["subscribe"]),
        &[],
    )
    .await;
    assert!(matches!(join(&mut plain, "rec-grant").await, S::Joined(_)));
    let mut with = hello(
        &s,
        v1::ClientKind::Recorder,
        &token("rec-grant", &["record", "subscribe"]),
        &[],
    )
    .await;
    let joined = join(&mut with, "rec-grant").await;
    assert!(recording_of(&joined, with.id));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_a_recording_needs_the_extension_and_a_moderator() {
    let s = server(|c| c.auth_secret = Some(SECRET.into())).await;
    let all = ["publish_audio", "subscribe", "chat"];
    let mut p = hello(
        &s,
        v1::ClientKind::Browser,
        &token("rec-role", &all),
        &["recording.1"],
    )
    .await;
    assert!(matches!(join(&mut p, "rec-role").await, S::Joined(_)));
    let e = request(&mut p, 1, C::StartRecording(v1::StartRecording {})).await;
    assert_eq!(code(&e), ErrorCode::PermissionDenied);
    let e = request(&mut p, 2, C::StopRecording(v1::StopRecording {})).await;
    assert_eq!(code(&e), ErrorCode::PermissionDenied);
    // A moderator that did not negotiate recording.1.
    let mut plain = hello(
        &s,
        v1::ClientKind::Browser,
        &token("rec-role", &["moderate", "subscribe"]),
        &[],
    )
    .await;
    assert!(matches!(join(&mut plain, "rec-role").await, S::Joined(_)));
    let e = request(&mut plain, 3, C::StartRecording(v1::StartRecording {})).await;
    assert_eq!(code(&e), ErrorCode::UnexpectedMessage);
    // A moderator that did, on a server with no recorder configured.
    let mut m = hello(
        &s,
        v1::ClientKind::Browser,
        &token("rec-role", &["moderate", "subscribe"]),
        &["recording.1"],
    )
    .await;
    assert!(matches!(join(&mut m, "rec-role").await, S::Joined(_)));
    let e = request(&mut m, 4, C::StartRecording(v1::StartRecording {})).await;
    assert_eq!(code(&e), ErrorCode::RecordingUnavailable);
    let e = request(&mut m, 5, C::StopRecording(v1::StopRecording {})).await;
    assert_eq!(code(&e), ErrorCode::NotRecording);
    assert_eq!(s.state.recorders.running(), 0);
    let (status, body) = common::http_get(&s, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("convene_recorders 0"), "{body}");
    s.shutdown().await;
}

/// A meeting with a recorder (here one connected by hand) refuses another,
/// whatever the server could start; StopRecording removes it, and after
/// that there is nothing to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_recorder_per_meeting_and_stopping_removes_it() {
    let s = server(|c| c.auth_secret = Some(SECRET.into())).await;
    let mut m = hello(
        &s,
        v1::ClientKind::Browser,
        &token("rec-one", &["moderate", "subscribe"]),
        &["recording.1"],
    )
    .await;
    assert!(matches!(join(&mut m, "rec-one").await, S::Joined(_)));
    let mut r = hello(
        &s,
        v1::ClientKind::Recorder,
        &token("rec-one", &["record", "subscribe"]),
        &[],
    )
    .await;
    assert!(matches!(join(&mut r, "rec-one").await, S::Joined(_)));
    let rid = r.id;
    m.expect(move |x| matches!(x, S::ParticipantJoined(p) if p.participant.as_ref().is_some_and(|p| p.participant_id == rid && p.recording)))
        .await;
    let e = request(&mut m, 1, C::StartRecording(v1::StartRecording {})).await;
    assert_eq!(code(&e), ErrorCode::AlreadyRecording);
    let a = request(&mut m, 2, C::StopRecording(v1::StopRecording {})).await;
    let S::RecordingAnswer(a) = a else {
        panic!("expected RecordingAnswer, got {a:?}")
    };
    assert!(!a.recording);
    let S::Goodbye(bye) = r.expect(|x| matches!(x, S::Goodbye(_))).await else {
        unreachable!()
    };
    assert_eq!(bye.reason, v1::GoodbyeReason::Removed as i32);
    m.expect(move |x| matches!(x, S::ParticipantLeft(l) if l.participant_id == rid))
        .await;
    let e = request(&mut m, 3, C::StopRecording(v1::StopRecording {})).await;
    assert_eq!(code(&e), ErrorCode::NotRecording);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_recorders_and_says_when_it_cannot_record() {
    let s = server(|c| {
        c.admin_token = Some(ADMIN.into());
        c.admin_listen = "127.0.0.1:0".parse().unwrap();
    })
    .await;
    let channel = tonic::transport::Channel::from_shared(format!(
        "http://{}",
        s.admin_addr.expect("the admin API is on")
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {ADMIN}").parse().unwrap();
    let mut admin = AdminClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    });
    let err = admin
        .start_recording(StartRecordingRequest {
            meeting_id: "nowhere".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let _a = Client::joined(&s, "rec-admin", true).await;
    let err = admin
        .start_recording(StartRecordingRequest {
            meeting_id: "rec-admin".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("--recorder-command"), "{err:?}");
    let err = admin
        .stop_recording(StopRecordingRequest {
            meeting_id: "rec-admin".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let mut r = hello(&s, v1::ClientKind::Recorder, "", &[]).await;
    assert!(matches!(join(&mut r, "rec-admin").await, S::Joined(_)));
    let meetings = admin
        .list_meetings(ListMeetingsRequest {})
        .await
        .unwrap()
        .into_inner()
        .meetings;
    let listed: Vec<(u32, bool)> = meetings[0]
        .participants
        .iter()
        .map(|p| (p.participant_id, p.recording))
        .collect();
    assert!(listed.contains(&(r.id, true)), "{listed:?}");
    assert_eq!(listed.iter().filter(|(_, rec)| *rec).count(), 1);
    // An operator's stop removes a recorder it did not start.
    admin
        .stop_recording(StopRecordingRequest {
            meeting_id: "rec-admin".into(),
        })
        .await
        .expect("a recorder is there to stop");
    let S::Goodbye(bye) = r.expect(|x| matches!(x, S::Goodbye(_))).await else {
        unreachable!()
    };
    assert_eq!(bye.reason, v1::GoodbyeReason::Removed as i32);
    s.shutdown().await;
}

/// Two nodes sharing a meeting: a recorder on one is seen recording on the
/// other, a moderator on the other is refused a second one, and the
/// moderator's Stop removes the recorder from the node it is connected to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_the_recorder_is_seen_and_stopped_from_another_node() {
    let hub = convene_server::bus::InProcessHub::new();
    let start = |id| {
        let (bus, inbound) = hub.attach(id);
        let config = convene_server::config::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            auth_secret: Some(SECRET.into()),
            ..convene_server::config::Config::default()
        };
        convene_server::start_node(config, bus, Some(inbound))
    };
    let n1 = start(1).await.unwrap();
    let n2 = start(2).await.unwrap();
    let mut r = hello(
        &n1,
        v1::ClientKind::Recorder,
        &token("rec-cluster", &["record", "subscribe"]),
        &[],
    )
    .await;
    assert!(matches!(join(&mut r, "rec-cluster").await, S::Joined(_)));
    let rid = r.id;
    let mut m = hello(
        &n2,
        v1::ClientKind::Browser,
        &token("rec-cluster", &["moderate", "subscribe"]),
        &["recording.1"],
    )
    .await;
    // The roster crosses nodes: the newcomer on node 2 sees the recorder,
    // in Joined or, if it was not there yet, as it arrives.
    m.send(C::Join(v1::Join {
        meeting_id: "rec-cluster".into(),
        display_name: "Mo".into(),
        subscribe_all: true,
    }))
    .await;
    let first = m
        .expect(move |x| match x {
            S::Joined(j) => j
                .participants
                .iter()
                .any(|p| p.participant_id == rid && p.recording),
            S::ParticipantJoined(p) => p
                .participant
                .as_ref()
                .is_some_and(|p| p.participant_id == rid && p.recording),
            _ => false,
        })
        .await;
    assert!(matches!(first, S::Joined(_) | S::ParticipantJoined(_)));
    let e = request(&mut m, 1, C::StartRecording(v1::StartRecording {})).await;
    assert_eq!(code(&e), ErrorCode::AlreadyRecording);
    let a = request(&mut m, 2, C::StopRecording(v1::StopRecording {})).await;
    assert!(
        matches!(a, S::RecordingAnswer(ref a) if !a.recording),
        "{a:?}"
    );
    let S::Goodbye(bye) = r.expect(|x| matches!(x, S::Goodbye(_))).await else {
        unreachable!()
    };
    assert_eq!(bye.reason, v1::GoodbyeReason::Removed as i32);
    m.expect(move |x| matches!(x, S::ParticipantLeft(l) if l.participant_id == rid))
        .await;
    n1.shutdown().await;
    n2.shutdown().await;
}
