//! TLS for secure WebSocket: either the system's roots, or exactly one
//! certificate pinned by its SHA-256, as browsers do for WebTransport's
//! `serverCertificateHashes` (PROTOCOL.md §11.6).

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::transport::tls_provider;

/// Accepts exactly the certificate with this SHA-256, and still checks the
/// handshake signatures made with its key.
#[derive(Debug)]
pub struct PinnedHash {
    sha256: Vec<u8>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinnedHash {
    /// A verifier for the certificate whose SHA-256 over its DER is `sha256`.
    pub fn new(sha256: Vec<u8>) -> PinnedHash {
        PinnedHash {
            sha256,
            provider: tls_provider(),
        }
    }
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
                "the server's certificate does not have the pinned SHA-256".into(),
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

/// A rustls client configuration: pinned to `sha256` when given, else the system's roots.
pub fn client_config(sha256: Option<Vec<u8>>) -> Result<rustls::ClientConfig, std::io::Error> {
    let builder = rustls::ClientConfig::builder_with_provider(tls_provider())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?;
    Ok(match sha256 {
        Some(h) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedHash::new(h)))
            .with_no_client_auth(),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(std::io::Error::other(
                    "no system root certificates found; pin the server's certificate with its SHA-256 instead",
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    })
}

/// TLS over `tcp` to `host`.
pub async fn connect(
    tcp: TcpStream,
    host: &str,
    sha256: Option<Vec<u8>>,
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let config = client_config(sha256)?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::other(format!("{host:?} is not a valid server name: {e}")))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}
