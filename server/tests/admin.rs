//! The admin API over real gRPC on loopback (spec/v1/admin.proto): refused
//! without the admin token or with a wrong one; with it, tokens minted there
//! let real WebSocket clients in, the meeting list shows them as the tokens
//! name them, removing one and ending the meeting reach the clients, unknown
//! meetings and participants are NOT_FOUND, and across two nodes a removal
//! reaches the participant on the other node.

mod common;

use common::managed::{ADMIN, SECRET, admin, join};
use common::{Client, server};
use convene_admin::{
    EndMeetingRequest, GetStatsRequest, ListMeetingsRequest, MintTokenRequest,
    RemoveParticipantRequest,
};
use convene_protocol::v1::{self, client_message::Msg as C, server_message::Msg as S};
use convene_server::bus::InProcessHub;
use convene_server::config::Config;
use tonic::Code;

fn with_admin(c: &mut Config) {
    c.admin_token = Some(ADMIN.into());
    c.admin_listen = "127.0.0.1:0".parse().unwrap();
}

/// Hello with `token`, then Join `meeting`; returns the client, joined.
async fn join_with(s: &convene_server::Server, token: &str, meeting: &str) -> Client {
    let (c, first) = join(s, token, meeting).await;
    assert!(matches!(first, S::Joined(_)), "{first:?}");
    c
}

async fn goodbye(c: &mut Client) -> i32 {
    let S::Goodbye(bye) = c.expect(|m| matches!(m, S::Goodbye(_))).await else {
        unreachable!()
    };
    bye.reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token() {
    let s = server(|c| {
        with_admin(c);
        c.auth_secret = Some(SECRET.into());
    })
    .await;
    let err = admin(&s, None)
        .await
        .list_meetings(ListMeetingsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("Bearer"), "{err:?}");
    let err = admin(&s, Some("admin-token-wrong-one"))
        .await
        .get_stats(GetStatsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = admin(&s, Some("x"))
        .await
        .mint_token(MintTokenRequest {
            meeting: "m".into(),
            user_id: "u".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "a short wrong token: {err:?}"
    );
    let stats = admin(&s, Some(ADMIN))
        .await
        .get_stats(GetStatsRequest {})
        .await
        .expect("the right token is accepted")
        .into_inner();
    assert_eq!(stats.version, env!("CARGO_PKG_VERSION"));
    assert!(stats.accepting);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_mint_tokens_list_meetings_remove_participants_and_end_meetings() {
    let s = server(|c| {
        with_admin(c);
        c.auth_secret = Some(SECRET.into());
    })
    .await;
    let mut api = admin(&s, Some(ADMIN)).await;
    let mint = |user: &str, name: &str| MintTokenRequest {
        meeting: "standup".into(),
        user_id: user.into(),
        display_name: name.into(),
        grants: vec!["subscribe".into(), "chat".into()],
        ttl_seconds: 600,
    };
    let ada = api
        .mint_token(mint("u-ada", "Ada"))
        .await
        .unwrap()
        .into_inner();
    let bob = api
        .mint_token(mint("u-bob", "Bob"))
        .await
        .unwrap()
        .into_inner();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 590..=now + 610).contains(&ada.expires_at), "{ada:?}");
    let err = api
        .mint_token(MintTokenRequest {
            grants: vec!["fly".into()],
            ..mint("u", "U")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("not a grant"), "{err:?}");

    // The minted tokens are good tokens, for that meeting only.
    let mut a = join_with(&s, &ada.token, "standup").await;
    let mut b = join_with(&s, &bob.token, "standup").await;
    let mut elsewhere = Client::connect(&s).await;
    elsewhere
        .send(C::Hello(v1::Hello {
            versions: vec![1],
            auth_token: ada.token.clone(),
            ..Default::default()
        }))
        .await;
    elsewhere.expect(|m| matches!(m, S::Welcome(_))).await;
    elsewhere
        .send(C::Join(v1::Join {
            meeting_id: "other".into(),
            display_name: "x".into(),
            subscribe_all: false,
        }))
        .await;
    elsewhere.expect(|m| matches!(m, S::Error(_))).await;

    let list = api
        .list_meetings(ListMeetingsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.meetings.len(), 1, "{list:?}");
    let m = &list.meetings[0];
    assert_eq!(m.meeting_id, "standup");
    let mut who: Vec<(u32, &str, &str)> = m
        .participants
        .iter()
        .map(|p| {
            (
                p.participant_id,
                p.display_name.as_str(),
                p.user_id.as_str(),
            )
        })
        .collect();
    who.sort();
    let mut expected = vec![(a.id, "Ada", "u-ada"), (b.id, "Bob", "u-bob")];
    expected.sort();
    assert_eq!(who, expected, "names come from the tokens");
    let stats = api
        .get_stats(GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.meetings, stats.participants), (1, 2), "{stats:?}");
    assert!(stats.frames_in > 0, "{stats:?}");

    // Unknown meeting or participant: NOT_FOUND, and nobody is touched.
    let err = api
        .remove_participant(RemoveParticipantRequest {
            meeting_id: "nope".into(),
            participant_id: a.id,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = api
        .remove_participant(RemoveParticipantRequest {
            meeting_id: "standup".into(),
            participant_id: 999_999,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = api
        .end_meeting(EndMeetingRequest {
            meeting_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Removing Bob: Bob hears REMOVED, Ada sees him leave.
    api.remove_participant(RemoveParticipantRequest {
        meeting_id: "standup".into(),
        participant_id: b.id,
        reason: "off topic".into(),
    })
    .await
    .expect("removal accepted");
    assert_eq!(goodbye(&mut b).await, v1::GoodbyeReason::Removed as i32);
    let bob_id = b.id;
    a.expect(|m| matches!(m, S::ParticipantLeft(l) if l.participant_id == bob_id))
        .await;

    // Ending the meeting: Ada hears MEETING_ENDED.
    let ended = api
        .end_meeting(EndMeetingRequest {
            meeting_id: "standup".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.participants, 1);
    assert_eq!(
        goodbye(&mut a).await,
        v1::GoodbyeReason::MeetingEnded as i32
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_the_admin_api_mints_nothing() {
    let s = server(with_admin).await;
    let err = admin(&s, Some(ADMIN))
        .await
        .mint_token(MintTokenRequest {
            meeting: "m".into(),
            user_id: "u".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("identity provider"), "{err:?}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_on_one_node_reaches_the_participant_on_another() {
    let hub = InProcessHub::new();
    let start = |id| {
        let (bus, inbound) = hub.attach(id);
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        with_admin(&mut config);
        convene_server::start_node(config, bus, Some(inbound))
    };
    let n1 = start(1).await.unwrap();
    let n2 = start(2).await.unwrap();
    let mut here = Client::joined(&n1, "spread", true).await;
    let mut there = Client::joined(&n2, "spread", true).await;
    let there_id = there.id;
    // Node 1 knows about the participant on node 2 once the roster crossed.
    let mut api = admin(&n1, Some(ADMIN)).await;
    let until = std::time::Instant::now() + common::DEADLINE;
    loop {
        let list = api
            .list_meetings(ListMeetingsRequest {})
            .await
            .unwrap()
            .into_inner();
        let seen = list
            .meetings
            .iter()
            .flat_map(|m| &m.participants)
            .find(|p| p.participant_id == there_id);
        if let Some(p) = seen {
            assert_eq!(p.node_id, 2, "{list:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "node 1 never listed node 2's participant: {list:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    api.remove_participant(RemoveParticipantRequest {
        meeting_id: "spread".into(),
        participant_id: there_id,
        reason: String::new(),
    })
    .await
    .expect("removal accepted");
    assert_eq!(goodbye(&mut there).await, v1::GoodbyeReason::Removed as i32);
    here.expect(|m| matches!(m, S::ParticipantLeft(l) if l.participant_id == there_id))
        .await;
    n1.shutdown().await;
    n2.shutdown().await;
}

#[test]
fn the_admin_api_stays_on_loopback_and_needs_a_real_token() {
    let public = Config {
        admin_token: Some(ADMIN.into()),
        admin_listen: "0.0.0.0:9444".parse().unwrap(),
        ..Config::default()
    };
    let e = public.validate().unwrap_err().to_string();
    assert!(e.contains("loopback"), "{e}");
    let short = Config {
        admin_token: Some("short".into()),
        ..Config::default()
    };
    let e = short.validate().unwrap_err().to_string();
    assert!(e.contains("at least 16"), "{e}");
}
