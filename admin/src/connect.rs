//! Reaching an admin API that speaks TLS (PROTOCOL.md §13): the server's
//! certificate checked against a CA the operator names, and optionally a
//! client certificate for mutual TLS. tonic's own TLS is not built in this
//! workspace, so the channel gets a connector that does the handshake.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

/// Longest a connection and its TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the admin API could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A PEM file could not be read or has nothing usable.
    #[error("cannot read {what} from {path}: {message}")]
    Pem {
        /// CA certificates, client certificate or client key.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The URL is not one the admin API answers at.
    #[error("{0}")]
    Url(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The server could not be reached, or the handshake failed.
    #[error("cannot reach the admin API at {url}: {message}")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        message: String,
    },
}

/// What a client trusts and shows over TLS.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

fn pem_error(what: &'static str, path: &Path, message: String) -> ConnectError {
    ConnectError::Pem {
        what,
        path: path.display().to_string(),
        message,
    }
}

impl ClientTls {
    /// Trusts the CA certificates in the PEM file `ca` (the system's roots
    /// when `None`), and shows the client certificate chain and key in the
    /// PEM files `client` when given (mutual TLS). `alpn` lists the
    /// application protocols offered (`h2` for gRPC).
    pub fn new(
        ca: Option<&Path>,
        client: Option<(&Path, &Path)>,
        alpn: &[&[u8]],
    ) -> Result<Self, ConnectError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| pem_error("CA certificates", path, e.to_string()))?;
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| pem_error("CA certificates", path, e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(pem_error(
                        "CA certificates",
                        path,
                        "no certificate in the file".into(),
                    ));
                }
            }
            None => {
                // Certificates the system cannot parse are skipped, as browsers do.
                let found = rustls_native_certs::load_native_certs();
                let _ = roots.add_parsable_certificates(found.certs);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectError::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| pem_error("client certificate", cert, e.to_string()))?;
                if chain.is_empty() {
                    return Err(pem_error(
                        "client certificate",
                        cert,
                        "no certificate in the file".into(),
                    ));
                }
                let k = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| pem_error("client key", key, e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, k)
                    .map_err(|e| ConnectError::Tls(e.to_string()))?
            }
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// TLS to `host:port`, checking the certificate names `host`.
    pub async fn connect(&self, host: &str, port: u16) -> io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let work = async {
            let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
            let _ = tcp.set_nodelay(true);
            tokio_rustls::TlsConnector::from(self.config.clone())
                .connect(name, tcp)
                .await
        };
        tokio::time::timeout(CONNECT_TIMEOUT, work)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS connection timed out"))?
    }
}

/// A gRPC channel to the admin API at `url`: `http://` plain, `https://`
/// over TLS with `tls` (the system's roots when `None`). Every call may take
/// `timeout`.
pub async fn channel(
    url: &str,
    tls: Option<ClientTls>,
    timeout: Duration,
) -> Result<Channel, ConnectError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| ConnectError::Url(format!("{url}: not a URL ({e})")))?;
    let unreachable = |e: tonic::transport::Error| {
        // The cause (refused, certificate unknown, ...) is in the source chain.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let text = s.to_string();
            // Layers often repeat their cause's text: keep it once.
            if !message.contains(&text) {
                message = format!("{message}: {text}");
            }
            source = s.source();
        }
        ConnectError::Unreachable {
            url: url.to_string(),
            message,
        }
    };
    match uri.scheme_str() {
        Some("http") => Endpoint::from(uri.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .connect()
            .await
            .map_err(unreachable),
        Some("https") => {
            let host = uri
                .host()
                .ok_or_else(|| ConnectError::Url(format!("{url}: no host")))?
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tls = match tls {
                Some(t) => t,
                None => ClientTls::new(None, None, &[b"h2"])?,
            };
            // tonic refuses https:// without its own TLS: it gets the plain
            // form, and the connector speaks TLS underneath.
            let plain: Uri = format!("http://{}", uri.authority().map_or("", |a| a.as_str()))
                .parse()
                .map_err(|e| ConnectError::Url(format!("{url}: {e}")))?;
            Endpoint::from(plain)
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(timeout)
                .connect_with_connector(Connector { tls, host, port })
                .await
                .map_err(unreachable)
        }
        _ => Err(ConnectError::Url(format!(
            "{url}: the admin API's URL starts with http:// (loopback, no TLS) or https://"
        ))),
    }
}

/// Opens TLS connections for the channel.
#[derive(Clone)]
struct Connector {
    tls: ClientTls,
    host: String,
    port: u16,
}

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let c = self.clone();
        Box::pin(async move { c.tls.connect(&c.host, c.port).await.map(TokioIo::new) })
    }
}
