//! Tokens (PROTOCOL.md §11.3) with real WebSocket clients: every way a token
//! can be wrong gets its own error, the grants decide what a participant may
//! do, and the name others see is the token's.

mod common;

use common::{Client, Seen, server};
use convene_protocol::ErrorCode;
use convene_protocol::auth::Claims;
use convene_protocol::v1::{self, client_message::Msg as C, server_message::Msg as S};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(meeting: &str, grants: &[&str]) -> Claims {
    Claims {
        sub: "user-42".into(),
        name: "Ada".into(),
        meeting: meeting.into(),
        grants: grants.iter().map(|g| g.to_string()).collect(),
        exp: now() + 600,
        ..Claims::default()
    }
}

fn sign(c: &Claims, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        c,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn auth_server() -> convene_server::Server {
    server(|c| {
        c.auth_secret = Some(SECRET.into());
        c.auth_issuer = Some("test-idp".into());
    })
    .await
}

/// Says Hello with `token`; returns the client and what came back first.
async fn hello(s: &convene_server::Server, token: &str) -> (Client, S) {
    let mut c = Client::connect(s).await;
    c.send(C::Hello(v1::Hello {
        versions: vec![1],
        auth_token: token.into(),
        ..Default::default()
    }))
    .await;
    let first = c.expect(|m| matches!(m, S::Welcome(_) | S::Error(_))).await;
    if let S::Welcome(w) = &first {
        c.id = w.participant_id;
    }
    (c, first)
}

fn error_code(m: &S) -> ErrorCode {
    match m {
        S::Error(e) => ErrorCode::try_from(e.code).unwrap(),
        other => panic!("expected an Error, got {other:?}"),
    }
}

async fn join(c: &mut Client, meeting: &str, subscribe_all: bool) -> S {
    c.send(C::Join(v1::Join {
        meeting_id: meeting.into(),
        display_name: "whatever I like".into(),
        subscribe_all,
    }))
    .await;
    c.expect(|m| matches!(m, S::Joined(_) | S::Error(_))).await
}

#[tokio::test]
async fn every_wrong_token_is_refused_with_its_code_and_the_connection_closes() {
    let s = auth_server().await;
    let mut good = claims("m", &["subscribe"]);
    good.iss = Some("test-idp".into());
    let cases: Vec<(String, ErrorCode)> = vec![
        (String::new(), ErrorCode::AuthRequired),
        ("garbage".into(), ErrorCode::AuthInvalid),
        (
            sign(&good, "another-secret-that-is-32-bytes-long"),
            ErrorCode::AuthInvalid,
        ),
        (
            sign(
                &Claims {
                    exp: now() - 3600,
                    ..good.clone()
                },
                SECRET,
            ),
            ErrorCode::AuthExpired,
        ),
        (
            sign(
                &Claims {
                    nbf: Some(now() + 3600),
                    ..good.clone()
                },
                SECRET,
            ),
            ErrorCode::AuthExpired,
        ),
        (
            sign(
                &Claims {
                    iss: Some("someone-else".into()),
                    ..good.clone()
                },
                SECRET,
            ),
            ErrorCode::AuthInvalid,
        ),
        // The server pins an issuer: a token without one does not pass.
        (
            sign(
                &Claims {
                    iss: None,
                    ..good.clone()
                },
                SECRET,
            ),
            ErrorCode::AuthInvalid,
        ),
    ];
    for (token, want) in cases {
        let (mut c, first) = hello(&s, &token).await;
        assert_eq!(error_code(&first), want, "token {token:?}");
        // Auth errors are fatal: the server closes.
        loop {
            match c.next().await {
                Some(Seen::Closed(_)) => break,
                None => panic!("the connection stayed open after {want:?}"),
                _ => {}
            }
        }
    }
    // And the good one is welcomed.
    let (_c, first) = hello(&s, &sign(&good, SECRET)).await;
    assert!(matches!(first, S::Welcome(_)), "{first:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn the_token_decides_the_meeting_and_the_grants() {
    let s = auth_server().await;
    let token = |meeting: &str, grants: &[&str]| {
        let mut c = claims(meeting, grants);
        c.iss = Some("test-idp".into());
        sign(&c, SECRET)
    };

    // Another meeting than the token's.
    let (mut c, _) = hello(&s, &token("standup", &["subscribe"])).await;
    assert_eq!(
        error_code(&join(&mut c, "board", false).await),
        ErrorCode::PermissionDenied
    );
    // subscribe_all without the subscribe grant.
    let (mut c, _) = hello(&s, &token("team-*", &["chat"])).await;
    assert_eq!(
        error_code(&join(&mut c, "team-red", true).await),
        ErrorCode::PermissionDenied
    );
    // A pattern admits; without publish_video or chat, those are refused,
    // while publish_audio (granted) works.
    assert!(matches!(
        join(&mut c, "team-red", false).await,
        S::Joined(_)
    ));
    c.send(common::publish(1, v1::TrackKind::Video)).await;
    assert_eq!(
        error_code(
            &c.expect(|m| matches!(m, S::Error(_) | S::TrackPublished(_)))
                .await
        ),
        ErrorCode::PermissionDenied
    );
    let (mut speaker, _) = hello(&s, &token("team-red", &["publish_audio"])).await;
    assert!(matches!(
        join(&mut speaker, "team-red", false).await,
        S::Joined(_)
    ));
    speaker.send(common::publish(1, v1::TrackKind::Audio)).await;
    speaker.expect(|m| matches!(m, S::TrackPublished(_))).await;
    speaker
        .send(C::Chat(v1::ChatSend {
            text: "hello".into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(
        error_code(
            &speaker
                .expect(|m| matches!(m, S::Error(_) | S::Chat(_)))
                .await
        ),
        ErrorCode::PermissionDenied
    );
    // Moderation needs the moderate grant.
    speaker
        .send(C::LockRoom(v1::LockRoom { locked: true }))
        .await;
    assert_eq!(
        error_code(
            &speaker
                .expect(|m| matches!(m, S::Error(_) | S::RoomLocked(_)))
                .await
        ),
        ErrorCode::PermissionDenied
    );
    s.shutdown().await;
}

#[tokio::test]
async fn the_name_others_see_is_the_tokens() {
    let s = auth_server().await;
    let mut first = claims("m", &["subscribe"]);
    first.iss = Some("test-idp".into());
    first.sub = "watcher".into();
    first.name = "Watcher".into();
    let (mut watcher, _) = hello(&s, &sign(&first, SECRET)).await;
    assert!(matches!(join(&mut watcher, "m", false).await, S::Joined(_)));

    let mut second = claims("m", &["subscribe"]);
    second.iss = Some("test-idp".into());
    let (mut ada, _) = hello(&s, &sign(&second, SECRET)).await;
    // The Join claims another name; the room is told the token's.
    assert!(matches!(join(&mut ada, "m", false).await, S::Joined(_)));
    let seen = watcher
        .expect(|m| matches!(m, S::ParticipantJoined(_)))
        .await;
    let S::ParticipantJoined(p) = seen else {
        unreachable!()
    };
    let p = p.participant.unwrap();
    assert_eq!(p.display_name, "Ada");
    assert_eq!(p.user_id, "user-42");
    // Renaming oneself is the token's business too.
    ada.send(C::UpdateSelf(v1::UpdateSelf {
        display_name: "Mallory".into(),
    }))
    .await;
    assert_eq!(
        error_code(
            &ada.expect(|m| matches!(m, S::Error(_) | S::ParticipantUpdated(_)))
                .await
        ),
        ErrorCode::PermissionDenied
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_moderator_by_grant_locks_removes_and_ends() {
    let s = auth_server().await;
    let token = |sub: &str, grants: &[&str]| {
        let mut c = claims("room", grants);
        c.iss = Some("test-idp".into());
        c.sub = sub.into();
        c.name = sub.into();
        sign(&c, SECRET)
    };
    let (mut host, _) = hello(&s, &token("host", &["moderate", "subscribe"])).await;
    let S::Joined(j) = join(&mut host, "room", false).await else {
        panic!("the host joins")
    };
    assert_eq!(j.participants[0].role, v1::Role::Moderator as i32);
    let (mut guest, _) = hello(&s, &token("guest", &["subscribe"])).await;
    let S::Joined(j) = join(&mut guest, "room", false).await else {
        panic!("the guest joins")
    };
    let me = j
        .participants
        .iter()
        .find(|p| p.display_name == "guest")
        .unwrap();
    assert_eq!(me.role, v1::Role::Participant as i32);
    let guest_id = guest.id;

    // Lock: everyone hears it, a newcomer is refused.
    host.send(C::LockRoom(v1::LockRoom { locked: true })).await;
    guest
        .expect(|m| matches!(m, S::RoomLocked(l) if l.locked))
        .await;
    let (mut late, _) = hello(&s, &token("late", &["subscribe"])).await;
    assert_eq!(
        error_code(&join(&mut late, "room", false).await),
        ErrorCode::RoomLocked
    );

    // Remove: the guest is said goodbye, the host sees them leave.
    host.send(C::RemoveParticipant(v1::RemoveParticipant {
        participant_id: guest_id,
        reason: "testing".into(),
    }))
    .await;
    let bye = guest.expect(|m| matches!(m, S::Goodbye(_))).await;
    let S::Goodbye(bye) = bye else { unreachable!() };
    assert_eq!(bye.reason, v1::GoodbyeReason::Removed as i32);
    host.expect(|m| matches!(m, S::ParticipantLeft(l) if l.participant_id == guest_id))
        .await;

    // End: the moderator too is sent away.
    host.send(C::EndMeeting(v1::EndMeeting {})).await;
    let bye = host.expect(|m| matches!(m, S::Goodbye(_))).await;
    let S::Goodbye(bye) = bye else { unreachable!() };
    assert_eq!(bye.reason, v1::GoodbyeReason::MeetingEnded as i32);
    s.shutdown().await;
}

/// A JWKS endpoint on loopback whose document the test can change, and
/// which counts how often it is fetched.
struct Issuer {
    url: String,
    document: std::sync::Arc<std::sync::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn issuer() -> Issuer {
    use std::sync::atomic::Ordering;
    let document = std::sync::Arc::new(std::sync::Mutex::new(String::from(r#"{"keys":[]}"#)));
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (d, f) = (document.clone(), fetches.clone());
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let (d, f) = (d.clone(), f.clone());
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                d.lock().unwrap().clone()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Issuer {
        url,
        document,
        fetches,
    }
}

/// A signing key of the issuer: its JWK and a way to sign with it.
struct IssuerKey {
    kid: &'static str,
    alg: Algorithm,
    jwk: serde_json::Value,
    der: Vec<u8>,
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn ec_key(kid: &'static str) -> IssuerKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw(); // 0x04 || X || Y
    IssuerKey {
        kid,
        alg: Algorithm::ES256,
        jwk: serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }),
        der: kp.serialize_der(),
    }
}

fn ed_key(kid: &'static str) -> IssuerKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    IssuerKey {
        kid,
        alg: Algorithm::EdDSA,
        jwk: serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(kp.public_key_raw()),
        }),
        der: kp.serialize_der(),
    }
}

/// An RSA key pair made once with `openssl genpkey` and kept for tests only
/// (ring, our crypto provider, does not generate RSA keys), with its JWK.
fn rsa_key() -> IssuerKey {
    use base64::Engine as _;
    // PKCS#1 PEM: its body is the DER jsonwebtoken signs with.
    let body: String = include_str!("data/rs256-test-key.pem")
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    IssuerKey {
        kid: "rsa-1",
        alg: Algorithm::RS256,
        jwk: serde_json::from_str(include_str!("data/rs256-test-key.jwk.json")).unwrap(),
        der: base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap(),
    }
}

impl IssuerKey {
    fn sign(&self, c: &Claims) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.to_string());
        let key = match self.alg {
            Algorithm::EdDSA => EncodingKey::from_ed_der(&self.der),
            Algorithm::RS256 => EncodingKey::from_rsa_der(&self.der),
            _ => EncodingKey::from_ec_der(&self.der),
        };
        jsonwebtoken::encode(&header, c, &key).unwrap()
    }
}

fn publish(issuer: &Issuer, keys: &[&IssuerKey]) {
    let doc = serde_json::json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
    *issuer.document.lock().unwrap() = doc.to_string();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_signed_with_an_issuers_published_keys_and_a_key_rotation() {
    let idp = issuer().await;
    let (ec1, ed1, ec2, rsa) = (ec_key("ec-1"), ed_key("ed-1"), ec_key("ec-2"), rsa_key());
    publish(&idp, &[&ec1, &ed1, &rsa]);
    let s = server(|c| {
        c.auth_jwks_url = Some(idp.url.clone());
        c.auth_issuer = Some("test-idp".into());
        // A Hello may wait for a fetch of the keys (at most one every 2 s).
        c.handshake_timeout_ms = 10_000;
        c.idle_timeout_ms = 20_000;
    })
    .await;
    let mut good = claims("m", &["subscribe"]);
    good.iss = Some("test-idp".into());

    // ES256, EdDSA and RS256 keys from the JWKS all verify.
    for key in [&ec1, &ed1, &rsa] {
        let (_c, first) = hello(&s, &key.sign(&good)).await;
        assert!(matches!(first, S::Welcome(_)), "{}: {first:?}", key.kid);
    }
    // A token signed by a key the issuer does not publish is refused (after
    // the server looked again), as is an HS256 token on a JWKS-only server.
    let stranger = ec_key("ec-1"); // the right kid, the wrong key
    let (_c, first) = hello(&s, &stranger.sign(&good)).await;
    assert_eq!(error_code(&first), ErrorCode::AuthInvalid);
    let (_c, first) = hello(&s, &ec_key("nobody").sign(&good)).await;
    assert_eq!(error_code(&first), ErrorCode::AuthInvalid);
    let (_c, first) = hello(&s, &sign(&good, SECRET)).await;
    assert_eq!(error_code(&first), ErrorCode::AuthInvalid);
    // Expiry is checked for published keys too.
    let expired = Claims {
        exp: now() - 3600,
        ..good.clone()
    };
    let (_c, first) = hello(&s, &ec1.sign(&expired)).await;
    assert_eq!(error_code(&first), ErrorCode::AuthExpired);

    // Rotation: the issuer replaces ec-1 with ec-2. The first token signed
    // with ec-2 makes the server fetch the keys again, and is accepted.
    publish(&idp, &[&ec2, &ed1]);
    let before = idp.fetches.load(std::sync::atomic::Ordering::SeqCst);
    let (_c, first) = hello(&s, &ec2.sign(&good)).await;
    assert!(matches!(first, S::Welcome(_)), "after rotation: {first:?}");
    assert!(idp.fetches.load(std::sync::atomic::Ordering::SeqCst) > before);
    // The retired key no longer works.
    let (_c, first) = hello(&s, &ec1.sign(&good)).await;
    assert_eq!(error_code(&first), ErrorCode::AuthInvalid);
    s.shutdown().await;
}

#[tokio::test]
async fn a_waiting_room_holds_newcomers_until_a_moderator_admits_or_denies() {
    let s = server(|c| {
        c.auth_secret = Some(SECRET.into());
        c.auth_issuer = Some("test-idp".into());
        c.waiting_rooms = vec!["lobby-*".into()];
    })
    .await;
    let token = |sub: &str, grants: &[&str]| {
        let mut c = claims("*", grants);
        c.iss = Some("test-idp".into());
        c.sub = sub.into();
        c.name = sub.into();
        sign(&c, SECRET)
    };
    // A guest arrives before any moderator: held, and told so.
    let (mut early, _) = hello(&s, &token("early", &["subscribe"])).await;
    early
        .send(C::Join(v1::Join {
            meeting_id: "lobby-1".into(),
            display_name: "early".into(),
            subscribe_all: true,
        }))
        .await;
    early.expect(|m| matches!(m, S::Waiting(_))).await;
    let early_id = early.id;
    // The moderator walks straight in and hears who waits.
    let (mut host, _) = hello(&s, &token("host", &["moderate", "publish_audio"])).await;
    assert!(matches!(
        join(&mut host, "lobby-1", false).await,
        S::Joined(_)
    ));
    host.expect(|m| matches!(m, S::AdmissionRequest(r) if r.participant.as_ref().is_some_and(|p| p.participant_id == early_id)))
        .await;
    // Admitted: Joined (listing the host), the host sees them join, and
    // they are a full participant: the host's track reaches them.
    host.send(C::Admit(v1::Admit {
        participant_id: early_id,
    }))
    .await;
    let S::Joined(j) = early.expect(|m| matches!(m, S::Joined(_))).await else {
        unreachable!()
    };
    assert!(j.participants.iter().any(|p| p.display_name == "host"));
    host.expect(|m| matches!(m, S::ParticipantJoined(p) if p.participant.as_ref().is_some_and(|p| p.participant_id == early_id)))
        .await;
    host.send(common::publish(1, v1::TrackKind::Audio)).await;
    early
        .expect(|m| matches!(m, S::TrackPublished(p) if p.participant_id == host.id))
        .await;

    // Another guest, denied: ADMISSION_DENIED, and free to join elsewhere.
    let (mut late, _) = hello(&s, &token("late", &["subscribe"])).await;
    late.send(C::Join(v1::Join {
        meeting_id: "lobby-1".into(),
        display_name: "late".into(),
        subscribe_all: false,
    }))
    .await;
    late.expect(|m| matches!(m, S::Waiting(_))).await;
    let late_id = late.id;
    host.expect(|m| matches!(m, S::AdmissionRequest(r) if r.participant.as_ref().is_some_and(|p| p.participant_id == late_id)))
        .await;
    host.send(C::Deny(v1::Deny {
        participant_id: late_id,
    }))
    .await;
    assert_eq!(
        error_code(
            &late
                .expect(|m| matches!(m, S::Error(_) | S::Joined(_)))
                .await
        ),
        ErrorCode::AdmissionDenied
    );
    assert!(matches!(
        join(&mut late, "elsewhere", false).await,
        S::Joined(_)
    ));
    // Only moderators decide; and a meeting without a waiting room is open.
    early
        .send(C::Admit(v1::Admit {
            participant_id: late_id,
        }))
        .await;
    assert_eq!(
        error_code(&early.expect(|m| matches!(m, S::Error(_))).await),
        ErrorCode::PermissionDenied
    );
    s.shutdown().await;
}

/// An audience array, as identity providers send it, is read; a pinned
/// audience left out of the token is refused.
#[tokio::test]
async fn a_pinned_audience_is_required_and_may_come_as_an_array() {
    let s = server(|c| {
        c.auth_secret = Some(SECRET.into());
        c.auth_audience = Some("convene".into());
    })
    .await;
    let mut c = claims("m", &["subscribe"]);
    c.aud = Some(convene_protocol::auth::Audience::Many(vec![
        "account".into(),
        "convene".into(),
    ]));
    let (_ok, first) = hello(&s, &sign(&c, SECRET)).await;
    assert!(matches!(first, S::Welcome(_)), "{first:?}");
    c.aud = None;
    let (_refused, first) = hello(&s, &sign(&c, SECRET)).await;
    assert_eq!(error_code(&first), ErrorCode::AuthInvalid);
    s.shutdown().await;
}
