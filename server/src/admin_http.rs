//! The admin API's listener (PROTOCOL.md §13): gRPC and its JSON face on one
//! address, plain HTTP on loopback or TLS (optionally mutual) anywhere.
//! Both faces call the same [`AdminService`] after the same checks: the
//! connection's peer, then the bearer token.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use convene_admin::admin_server::AdminServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tonic::Status;
use tonic::metadata::MetadataMap;
use tonic::transport::server::Connected;
use tracing::{info, warn};

use crate::admin::{AdminService, MAX_REQUEST_BYTES, authorise};
use crate::state::AppState;

/// Longest a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections in their TLS handshake at once; more wait to be accepted.
pub const MAX_HANDSHAKING: usize = 64;

/// Longest a call may take, gRPC or JSON.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The path prefix of the JSON face: `POST /v1/admin/<Method>`.
pub const JSON_PREFIX: &str = "/v1/admin/";

/// What the admin listener knows of a connection, in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct AdminPeer {
    /// The client's address.
    pub addr: Option<SocketAddr>,
    /// True when the connection is TLS.
    pub tls: bool,
}

/// True when a plain (not TLS) connection from `ip` may reach the admin API:
/// loopback only, IPv4-mapped IPv6 loopback included. A plain listener bound
/// to loopback normally sees nothing else; this holds when a NAT rule or a
/// proxy forwards outside connections to it anyway.
pub fn plain_peer_allowed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// The checks of every call before its token: a plain connection from
/// outside the machine is refused whatever it carries, since its token has
/// crossed the network in the clear.
fn check_peer(ext: &axum::http::Extensions) -> Result<(), Status> {
    match ext.get::<AdminPeer>() {
        Some(AdminPeer { tls: true, .. }) => Ok(()),
        Some(AdminPeer {
            addr: Some(a),
            tls: false,
        }) if plain_peer_allowed(a.ip()) => Ok(()),
        Some(AdminPeer { addr, .. }) => Err(Status::permission_denied(format!(
            "the admin API without TLS answers loopback only, and this connection comes from {}; \
             nothing was done. Start the server with --admin-tls-cert and --admin-tls-key to \
             reach it over the network (and change the admin token: it crossed the network in \
             the clear)",
            addr.map_or_else(|| "an unknown address".to_string(), |a| a.ip().to_string())
        ))),
        None => Err(Status::internal(
            "the admin listener lost the connection's address",
        )),
    }
}

/// One accepted connection: plain TCP or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection as tonic serves it.
struct AdminStream {
    stream: Stream,
    peer: AdminPeer,
}

impl Connected for AdminStream {
    type ConnectInfo = AdminPeer;

    fn connect_info(&self) -> AdminPeer {
        self.peer
    }
}

impl AsyncRead for AdminStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AdminStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Serves the admin API on `listener` until the server shuts down, over TLS
/// when `tls` is given; every call must carry `authorization: Bearer <token>`.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    token: String,
    secret: Option<Vec<u8>>,
) {
    let addr = listener.local_addr().ok();
    let mut stop = state.shutdown_signal();
    let service = Arc::new(AdminService::new(state.clone(), secret));
    let expected = Arc::new(format!("Bearer {token}"));
    let check = {
        let expected = expected.clone();
        move |req: tonic::Request<()>| {
            check_peer(req.extensions())?;
            authorise(req.metadata(), &expected)?;
            Ok(req)
        }
    };
    let grpc = tonic::service::interceptor::InterceptedService::new(
        AdminServer::from_arc(service.clone()).max_decoding_message_size(MAX_REQUEST_BYTES),
        check,
    );
    let json = {
        let service = service.clone();
        move |Path(method): Path<String>, req: Request| {
            let service = service.clone();
            let expected = expected.clone();
            async move { json_call(&service, &method, &expected, req).await }
        }
    };
    let router = tonic::service::Routes::new(grpc)
        .into_axum_router()
        .route(
            &format!("{JSON_PREFIX}{{method}}"),
            axum::routing::any(json),
        )
        .fallback(no_route);
    let scheme = if tls.is_some() { "https" } else { "http" };
    if let Some(a) = addr {
        info!(addr = %a, "admin API (gRPC, and JSON at {JSON_PREFIX}<Method>) on {scheme}://{a}");
    }
    let (tx, rx) = mpsc::channel::<AdminStream>(MAX_HANDSHAKING);
    let accepting = tokio::spawn(accept(listener, tls, tx));
    let incoming = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|s| (Ok::<_, io::Error>(s), rx))
    });
    let _ = tonic::transport::Server::builder()
        .accept_http1(true)
        .timeout(CALL_TIMEOUT)
        .add_routes(router.into())
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    accepting.abort();
}

/// Accepts connections, completes their TLS handshakes side by side (at
/// most [`MAX_HANDSHAKING`], each within [`HANDSHAKE_TIMEOUT`]) and hands
/// them over; returns when nobody takes them any more.
async fn accept(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tx: mpsc::Sender<AdminStream>,
) {
    let handshaking = Arc::new(Semaphore::new(MAX_HANDSHAKING));
    loop {
        let Ok(permit) = handshaking.clone().acquire_owned().await else {
            return;
        };
        let (tcp, addr) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, mostly: wait rather than spin.
                warn!(error = %e, "admin API: cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let tx = tx.clone();
        match &tls {
            None => {
                if !plain_peer_allowed(addr.ip()) {
                    // Served anyway, so that the client reads why: every call is refused.
                    warn!(peer = %addr, "admin API: a plain connection from outside loopback; its calls are refused");
                }
                let s = AdminStream {
                    stream: Stream::Plain(tcp),
                    peer: AdminPeer {
                        addr: Some(addr),
                        tls: false,
                    },
                };
                if tx.send(s).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            let s = AdminStream {
                                stream: Stream::Tls(Box::new(s)),
                                peer: AdminPeer {
                                    addr: Some(addr),
                                    tls: true,
                                },
                            };
                            let _ = tx.send(s).await;
                        }
                        Ok(Err(e)) => {
                            info!(peer = %addr, error = %e, "admin API: TLS handshake refused");
                        }
                        Err(_) => info!(peer = %addr, "admin API: TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// One call of the JSON face: peer, token, body size, then the same
/// [`AdminService`] method gRPC reaches.
async fn json_call(service: &AdminService, method: &str, expected: &str, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if let Err(s) = check_peer(&parts.extensions) {
        return json_error(&s);
    }
    let metadata = MetadataMap::from_headers(parts.headers);
    if let Err(s) = authorise(&metadata, expected) {
        return json_error(&s);
    }
    if parts.method != Method::POST {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            error_body("INVALID_ARGUMENT", "the JSON face takes POST"),
        );
    }
    if !convene_admin::json::METHODS.contains(&method) {
        return json_error(&Status::unimplemented(unknown_method(method)));
    }
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(b) => b,
        // Over the limit, mostly; a client that went away reads nothing anyway.
        Err(_) => {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                error_body(
                    "RESOURCE_EXHAUSTED",
                    &format!("the request body is over {MAX_REQUEST_BYTES} bytes"),
                ),
            );
        }
    };
    let request = tonic::Request::from_parts(metadata, parts.extensions, ());
    match convene_admin::json::call(service, method, request, &body).await {
        Some(Ok(answer)) => json_response(StatusCode::OK, answer),
        Some(Err(s)) => json_error(&s),
        None => json_error(&Status::unimplemented(unknown_method(method))),
    }
}

fn unknown_method(method: &str) -> String {
    format!(
        "no admin call {method:?}; the calls are {}",
        convene_admin::json::METHODS.join(", ")
    )
}

fn error_body(code: &str, message: &str) -> Vec<u8> {
    serde_json::json!({ "code": code, "message": message })
        .to_string()
        .into_bytes()
}

fn json_error(status: &Status) -> Response {
    let (code, body) = convene_admin::json::error(status);
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}

/// Anything but an admin call: gRPC's UNIMPLEMENTED to a gRPC client, a JSON
/// 404 to anyone else.
async fn no_route(req: Request) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let path = req.uri().path().to_string();
    if grpc {
        let (parts, ()) = Status::unimplemented(format!("no admin call at {path}"))
            .into_http::<()>()
            .into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    json_response(
        StatusCode::NOT_FOUND,
        error_body(
            "NOT_FOUND",
            &format!("nothing at {path}; the JSON face is POST {JSON_PREFIX}<Method>"),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_connections_are_for_loopback_only() {
        for ok in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            assert!(plain_peer_allowed(ok.parse().unwrap()), "{ok}");
        }
        for no in [
            "192.0.2.2",
            "10.0.0.1",
            "0.0.0.0",
            "fd00::2",
            "::ffff:10.0.0.1",
        ] {
            assert!(!plain_peer_allowed(no.parse().unwrap()), "{no}");
        }
    }

    #[test]
    fn a_plain_call_from_outside_is_refused_before_its_token() {
        let mut ext = axum::http::Extensions::new();
        ext.insert(AdminPeer {
            addr: Some("192.0.2.2:5000".parse().unwrap()),
            tls: false,
        });
        let e = check_peer(&ext).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("--admin-tls-cert"), "{e:?}");
        ext.insert(AdminPeer {
            addr: Some("192.0.2.2:5000".parse().unwrap()),
            tls: true,
        });
        assert!(check_peer(&ext).is_ok());
        ext.insert(AdminPeer {
            addr: Some("127.0.0.1:5000".parse().unwrap()),
            tls: false,
        });
        assert!(check_peer(&ext).is_ok());
    }
}
