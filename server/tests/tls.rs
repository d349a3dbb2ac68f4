//! `--dev-tls`: a client that trusts only the published SHA-256 hash of the
//! certificate (as browsers do with `serverCertificateHashes`) completes a
//! WebSocket handshake and a Convene Hello over TLS.

use std::sync::Arc;

use convene_protocol::v1::{
    self, ClientMessage, ServerMessage, client_message::Msg as C, server_message::Msg as S,
};
use convene_protocol::{Frame, decode_frame, encode_control};
use convene_server::config::Config;
use futures_util::{SinkExt, StreamExt};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

/// Accepts exactly the certificate with this SHA-256, and checks its signatures.
#[derive(Debug)]
struct PinnedHash {
    sha256: Vec<u8>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedHash {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.sha256.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "certificate hash does not match".into(),
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    sha256: Vec<u8>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, std::io::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedHash { sha256, provider }))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tls_serves_websocket_to_a_client_pinning_the_published_hash() {
    let server = convene_server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        dev_tls: true,
        ..Config::default()
    })
    .await
    .unwrap();
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
