//! `--dev-tls`: a client that trusts only the published SHA-256 hash of the
//! certificate (as browsers do with `serverCertificateHashes`) completes a
//! WebSocket handshake and a Convene Hello over TLS.

mod common;

use common::tls::connect as tls_connect;
use convene_protocol::v1::{
    self, ClientMessage, ServerMessage, client_message::Msg as C, server_message::Msg as S,
};
use convene_protocol::{Frame, decode_frame, encode_control};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tls_serves_websocket_to_a_client_pinning_the_published_hash() {
    let server = common::server(|c| c.dev_tls = true).await;
    let hash = hex::decode(
        server
            .cert_sha256
            .as_ref()
            .expect("a dev certificate hash is published"),
    )
    .unwrap();
    assert_eq!(hash.len(), 32);

    let tls = tls_connect(server.addr, hash.clone())
        .await
        .expect("TLS handshake with the pinned hash");
    let url = format!("wss://localhost:{}/convene/ws", server.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("WebSocket over TLS");
    let hello = ClientMessage {
        request_id: 0,
        msg: Some(C::Hello(v1::Hello {
            versions: vec![1],
            ..Default::default()
        })),
    };
    ws.send(Message::Binary(encode_control(&hello)))
        .await
        .unwrap();
    let Some(Ok(Message::Binary(b))) = ws.next().await else {
        panic!("no answer")
    };
    let Frame::Control(ServerMessage {
        msg: Some(S::Welcome(w)),
    }) = decode_frame::<ServerMessage>(b, 1 << 20).unwrap()
    else {
        panic!("expected Welcome")
    };
    assert_eq!(w.version, 1);

    // A client pinning any other hash is refused at the TLS layer.
    let mut wrong = hash;
    wrong[0] ^= 0xff;
    assert!(tls_connect(server.addr, wrong).await.is_err());
    server.shutdown().await;
}

/// The discovery document over HTTPS, headers included.
async fn discovery_response(server: &convene_server::Server) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hash = hex::decode(server.cert_sha256.as_ref().unwrap()).unwrap();
    let mut tls = tls_connect(server.addr, hash).await.unwrap();
    tls.write_all(
        b"GET /.well-known/convene.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut response = String::new();
    let _ = tls.read_to_string(&mut response).await;
    response
}

/// Checks that `response` sends WebTransport clients to UDP `port`.
fn assert_advertises(response: &str, port: u16) {
    assert!(
        response
            .to_ascii_lowercase()
            .contains(&format!("alt-svc: h3=\":{port}\"; ma=86400")),
        "{response}"
    );
    assert!(
        response.contains(&format!("https://127.0.0.1:{port}/convene/wt")),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_responses_advertise_webtransport_with_alt_svc_and_discovery() {
    let server = common::server(|c| c.dev_tls = true).await;
    let response = discovery_response(&server).await;
    // By default on the same port number as HTTPS.
    assert_eq!(server.wt_addr.unwrap().port(), server.addr.port());
    assert_advertises(&response, server.addr.port());
    assert!(response.contains(server.cert_sha256.as_ref().unwrap().as_str()));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webtransport_on_a_port_of_its_own_is_the_one_advertised_and_served() {
    // A UDP port free a moment ago (the kernel hands out ephemeral ports at
    // random, so it is still free when the server binds it).
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let server = common::server(|c| {
        c.dev_tls = true;
        c.webtransport_listen = Some(listen);
    })
    .await;
    assert_eq!(server.wt_addr, Some(listen));
    assert_advertises(&discovery_response(&server).await, port);
    // And a WebTransport session opens there.
    let hash = hex::decode(server.cert_sha256.as_ref().unwrap()).unwrap();
    let client = web_transport_quinn::ClientBuilder::new()
        .with_server_certificate_hashes(vec![hash])
        .unwrap();
    let url = url::Url::parse(&format!("https://127.0.0.1:{port}/convene/wt")).unwrap();
    let session = tokio::time::timeout(common::DEADLINE, client.connect(url))
        .await
        .expect("the WebTransport session did not open in time")
        .expect("a WebTransport session on the --webtransport-listen port");
    drop(session);
    server.shutdown().await;
}
