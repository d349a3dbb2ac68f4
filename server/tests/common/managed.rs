//! Helpers for tests of managed meetings and what they record: a node with
//! the admin API, tokens and a store; an admin client; joining with a token.

use convene_admin::MintTokenRequest;
use convene_admin::admin_client::AdminClient;
use convene_protocol::ErrorCode;
use convene_protocol::v1::{self, client_message::Msg as C, server_message::Msg as S};
use convene_server::config::Config;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::{Client, server};

pub const SECRET: &str = "a-test-secret-of-at-least-32-bytes!";
pub const ADMIN: &str = "admin-token-0123456789";

pub type Admin = AdminClient<
    InterceptedService<
        Channel,
        Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>,
    >,
>;

/// A client of `s`'s admin API sending `token` (none when `None`).
pub async fn admin(s: &convene_server::Server, token: Option<&str>) -> Admin {
    admin_at(s.admin_addr.expect("the admin API is on"), token).await
}

/// A client of the admin API at `addr` sending `token` (none when `None`).
pub async fn admin_at(addr: std::net::SocketAddr, token: Option<&str>) -> Admin {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("the admin API accepts connections");
    let header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
        token.map(|t| format!("Bearer {t}").parse().unwrap());
    AdminClient::with_interceptor(
        channel,
        Box::new(move |mut req: tonic::Request<()>| {
            if let Some(h) = &header {
                req.metadata_mut().insert("authorization", h.clone());
            }
            Ok(req)
        }),
    )
}

/// A server with the admin API, tokens, and its store in `dir`.
pub async fn node(dir: &std::path::Path, ad_hoc: bool) -> convene_server::Server {
    node_with(dir, move |c| c.ad_hoc_meetings = ad_hoc).await
}

/// [`node`], with more settings made by `tweak`.
pub async fn node_with(
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut Config),
) -> convene_server::Server {
    let dir = dir.to_path_buf();
    server(move |c: &mut Config| {
        c.admin_token = Some(ADMIN.into());
        c.admin_listen = "127.0.0.1:0".parse().unwrap();
        c.auth_secret = Some(SECRET.into());
        c.data_dir = Some(dir);
        tweak(c);
    })
    .await
}

/// A token for `user` minted by the admin API, with `grants`.
pub async fn token(a: &mut Admin, user: &str, grants: &[&str]) -> String {
    a.mint_token(MintTokenRequest {
        meeting: "*".into(),
        user_id: user.into(),
        grants: grants.iter().map(|g| g.to_string()).collect(),
        ..Default::default()
    })
    .await
    .expect("tokens are minted")
    .into_inner()
    .token
}

/// Hello with `token`, then Join `meeting`: the client and the first answer
/// (Joined, Waiting or Error).
pub async fn join(s: &convene_server::Server, token: &str, meeting: &str) -> (Client, S) {
    let mut c = Client::connect(s).await;
    c.send(C::Hello(v1::Hello {
        versions: vec![1],
        auth_token: token.into(),
        ..Default::default()
    }))
    .await;
    let S::Welcome(w) = c.expect(|m| matches!(m, S::Welcome(_))).await else {
        unreachable!()
    };
    c.id = w.participant_id;
    c.send(C::Join(v1::Join {
        meeting_id: meeting.into(),
        display_name: "anyone".into(),
        subscribe_all: true,
    }))
    .await;
    let first = c
        .expect(|m| matches!(m, S::Joined(_) | S::Waiting(_) | S::Error(_)))
        .await;
    (c, first)
}

pub fn error_code(m: &S) -> ErrorCode {
    match m {
        S::Error(e) => ErrorCode::try_from(e.code).unwrap(),
        other => panic!("expected an Error, got {other:?}"),
    }
}

/// A directory of its own, emptied.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("convene-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
