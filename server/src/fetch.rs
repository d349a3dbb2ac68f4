//! A small HTTPS (or, on loopback, HTTP) GET for the few documents the
//! server fetches itself: an issuer's JWKS. Bounded in size and time. Its
//! connection and TLS setup also carry webhooks ([`crate::events::webhook`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long one fetch may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// GETs `url` and returns its body, at most `max_bytes`.
pub async fn get(url: &str, max_bytes: usize) -> Result<Vec<u8>, String> {
    tokio::time::timeout(TIMEOUT, get_inner(url, max_bytes))
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
}

async fn get_inner(url: &str, max_bytes: usize) -> Result<Vec<u8>, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let host = uri.host().ok_or("the URL has no host")?.to_string();
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the URL must be http:// or https://".into()),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, &host)
        .header(
            hyper::header::USER_AGENT,
            concat!("convene-server/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let tls = if https {
        Some(Arc::new(tls_config()?))
    } else {
        None
    };
    let response = exchange(&uri, tls.as_ref(), request).await?;
    if !response.status().is_success() {
        return Err(format!("HTTP status {}", response.status()));
    }
    let body = Limited::new(response.into_body(), max_bytes)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e} (at most {max_bytes} bytes)"))?;
    Ok(body.to_bytes().to_vec())
}

/// Sends `request` to `uri`'s host on a fresh connection: over TLS with
/// `tls` for an https:// URI, in the clear otherwise.
pub(crate) async fn exchange<B>(
    uri: &hyper::Uri,
    tls: Option<&Arc<rustls::ClientConfig>>,
    request: hyper::Request<B>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // An IPv6 literal comes bracketed in a URI, and bare to the resolver.
    let host = uri
        .host()
        .ok_or("the URL has no host")?
        .trim_matches(['[', ']'])
        .to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    if !https {
        return send(TokioIo::new(tcp), request).await;
    }
    let tls = tls.ok_or("an https:// URL, and no TLS configuration")?;
    let name =
        rustls::pki_types::ServerName::try_from(host).map_err(|e| format!("bad host name: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    send(TokioIo::new(stream), request).await
}

/// Sends one request on a fresh HTTP/1.1 connection over `io`.
pub(crate) async fn send<T, B>(
    io: T,
    request: hyper::Request<B>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP request: {e}"))
}

/// A TLS client configuration trusting the system's roots.
pub(crate) fn tls_config() -> Result<rustls::ClientConfig, String> {
    tls_config_with(Vec::new())
}

/// A TLS client configuration trusting the system's roots and `extra`.
pub(crate) fn tls_config_with(
    extra: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    for cert in extra {
        roots
            .add(cert)
            .map_err(|e| format!("a CA certificate is not usable: {e}"))?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}
