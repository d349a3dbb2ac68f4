//! The HTTP routes: the WebSocket endpoint, health, metrics, discovery and
//! the browser client's files.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tower_http::services::ServeDir;

use crate::state::AppState;

/// Builds the HTTP application.
pub fn app(state: Arc<AppState>) -> Router {
    let web_dir = state.config.web_dir.clone();
    let mut router = Router::new()
        .route("/convene/ws", get(crate::ws::upgrade))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    // With --metrics-listen, metrics and load are served there only.
    if state.config.metrics_listen.is_none() {
        router = router
            .route("/metrics", get(metrics))
            .route("/load", get(load));
    }
    router
        .route("/.well-known/convene.json", get(discovery))
        .route("/", get(index))
        .route("/meeting/{name}/{id}", get(index))
        .fallback_service(ServeDir::new(web_dir))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            alt_svc,
        ))
        .with_state(state)
}

/// The operator's endpoints on an address of their own (`--metrics-listen`):
/// `/metrics`, `/load` and the health checks, never the public ones.
pub fn operator_app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/load", get(load))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Tells HTTP clients that WebTransport (HTTP/3) is on the same host at its UDP port.
async fn alt_svc(State(state): State<Arc<AppState>>, mut response: Response) -> Response {
    if let Some(addr) = state.wt_addr()
        && let Ok(v) = header::HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", addr.port()))
    {
        response.headers_mut().insert(header::ALT_SVC, v);
    }
    response
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else if !state.router.bus().ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the bus to the other nodes is down: serving local participants only\n",
        )
            .into_response()
    } else {
        "ready\n".into_response()
    }
}

/// This node's load, for load balancers and clients choosing a node.
async fn load(State(state): State<Arc<AppState>>) -> Response {
    let (rooms, participants) = state.router.counts();
    let s = state.load.sample();
    let t = state.load.thresholds();
    let busy = state.load.busy();
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({
            "node": state.router.bus().node(),
            "ready": !state.is_shutting_down() && state.router.bus().ready(),
            "accepting": busy.is_none() && !state.is_shutting_down(),
            "busy": busy,
            "rooms": rooms,
            "participants": participants,
            "connections": state.open_connections(),
            "cpu_percent": (s.cpu_percent * 10.0).round() / 10.0,
            "queue_delay_ms": (s.queue_delay_ms * 10.0).round() / 10.0,
            "egress_mbps": (s.egress_mbps * 100.0).round() / 100.0,
            "worker_threads": state.cores(),
            "limits": {
                "busy_cpu_percent": t.cpu_percent,
                "busy_queue_delay_ms": t.queue_delay_ms,
                "busy_egress_mbps": t.egress_mbps,
                "max_connections": state.config.max_connections,
            },
        })),
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let (rooms, participants) = state.router.counts();
    state.metrics.rooms.set(rooms as i64);
    state.metrics.participants.set(participants as i64);
    let bus = state.router.bus();
    state.metrics.bus_up.set(i64::from(bus.ready()));
    state.metrics.bus_dropped.set(bus.dropped() as i64);
    let slots = state.slots.stats();
    state.metrics.handshaking.set(slots.handshaking as i64);
    state.metrics.sessions.set(slots.sessions as i64);
    state.metrics.evicted.set(slots.evicted as i64);
    state
        .metrics
        .recorders
        .set(state.recorders.running() as i64);
    state
        .metrics
        .queued_bytes
        .set(state.router.queued_bytes() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// What a client needs to connect: endpoints, versions, certificate hash.
async fn discovery(State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    // The Host header names where the client reached us; anything that is
    // not a host name or address (and port) is not echoed back.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| is_host(h))
        .map(str::to_string)
        .unwrap_or_else(|| state.config.listen.to_string());
    let ws = if state.config.tls() { "wss" } else { "ws" };
    let body = serde_json::json!({
        "versions": [1],
        "websocket": format!("{ws}://{host}/convene/ws"),
        "webtransport": match state.wt_addr() {
            Some(a) => serde_json::Value::String(format!("https://{}:{}{}", host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h), a.port(), crate::wt::PATH)),
            None => serde_json::Value::Null,
        },
        "auth": state.verifier.is_some(),
        "login_url": state.config.login_url,
        "certificate_hashes": state.cert_sha256.iter().map(|h| serde_json::json!({"algorithm": "sha-256", "value": h})).collect::<Vec<_>>(),
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// True for `name`, `name:port`, `1.2.3.4:port` or `[v6]:port`: what a Host
/// header should hold, and nothing a response should not repeat.
fn is_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

async fn index(State(state): State<Arc<AppState>>) -> Response {
    let path = state.config.web_dir.join("index.html");
    match tokio::fs::read_to_string(&path).await {
        Ok(html) => Html(html).into_response(),
        Err(_) => Html(placeholder(&state.config.web_dir)).into_response(),
    }
}

fn placeholder(dir: &Path) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Convene</title></head>\
         <body style=\"font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto\">\
         <h1>Convene server is running</h1>\
         <p>The browser client is not built: there is no <code>index.html</code> in <code>{}</code>.</p>\
         <p>Build it with <code>cargo xtask web</code>, or start everything with <code>cargo xtask serve</code>, \
         which builds it when needed. Clients can already connect over WebSocket at <code>/convene/ws</code>.</p>\
         </body></html>",
        dir.display()
    )
}
