//! Configuration: command-line flags, then `CONVENE_*` environment variables,
//! then an optional TOML file, then defaults, in that order of precedence.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use convene_protocol::limits::{default, max};
use serde::{Deserialize, Serialize};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The command line. Every setting is optional here so that the environment,
/// the file and the defaults can fill what is not given.
#[derive(Debug, Parser, Serialize)]
#[command(
    name = "convene-server",
    version,
    about = "The Convene media server: rooms, WebSocket and WebTransport, fan-out.",
    long_about = "The Convene media server.\n\n\
        With no options it serves on http://127.0.0.1:8080 with the browser client from --web-dir.\n\
        Every option can also be set with a CONVENE_* environment variable or in a TOML file\n\
        (--config); flags win over the environment, which wins over the file.\n\
        `convene-server --print-config` shows the settings in force."
)]
pub struct Cli {
    /// TOML file with settings (keys as in --print-config).
    #[arg(long, env = "CONVENE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the effective settings as TOML and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,

    /// Address to listen on for HTTP(S) and WebSocket [default: 127.0.0.1:8080].
    #[arg(long, env = "CONVENE_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// UDP address for WebTransport (HTTP/3), which needs TLS [default: the
    /// --listen address: the same port number as HTTPS, on UDP]. Set it when
    /// that UDP port is taken or a firewall opens another one.
    #[arg(long, env = "CONVENE_WEBTRANSPORT_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webtransport_listen: Option<SocketAddr>,
    /// Allow a non-loopback address without TLS (not for production).
    #[arg(long, env = "CONVENE_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "CONVENE_TLS_CERT", requires = "tls_key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "CONVENE_TLS_KEY", requires = "tls_cert")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Serve TLS with a fresh self-signed ECDSA P-256 certificate valid 13 days, and publish its SHA-256 hash.
    #[arg(long, env = "CONVENE_DEV_TLS", conflicts_with = "tls_cert", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_tls: Option<bool>,
    /// Require a token (PROTOCOL.md §11.3): HS256 JWTs signed with this shared
    /// secret, at least 32 bytes. Prefer the environment or --auth-secret-file:
    /// a flag shows in the process list.
    #[arg(
        long,
        env = "CONVENE_AUTH_SECRET",
        hide_env_values = true,
        conflicts_with = "auth_secret_file"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_secret: Option<String>,
    /// Read the token secret from this file (surrounding whitespace ignored).
    #[arg(long, env = "CONVENE_AUTH_SECRET_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_secret_file: Option<PathBuf>,
    /// Require a token signed with one of the issuer's published keys (ES256,
    /// RS256, EdDSA), fetched from this JWKS URL (https://, or http:// on
    /// loopback) and refreshed; a token naming an unknown key id makes the
    /// server fetch again before it answers.
    #[arg(long, env = "CONVENE_AUTH_JWKS_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_jwks_url: Option<String>,
    /// Seconds between fetches of the JWKS [default: 300].
    #[arg(long, env = "CONVENE_AUTH_JWKS_REFRESH_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_jwks_refresh_s: Option<u32>,
    /// Accept only tokens whose `iss` is this.
    #[arg(long, env = "CONVENE_AUTH_ISSUER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_issuer: Option<String>,
    /// Accept only tokens whose `aud` is this.
    #[arg(long, env = "CONVENE_AUTH_AUDIENCE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_audience: Option<String>,
    /// Turn on the admin API (gRPC, spec/v1/admin.proto) with this bearer
    /// token, at least 16 bytes. Prefer the environment or --admin-token-file.
    #[arg(
        long,
        env = "CONVENE_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// Read the admin API's bearer token from this file (whitespace ignored).
    #[arg(long, env = "CONVENE_ADMIN_TOKEN_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// Where the admin API listens: plain HTTP/2, so loopback only (reach it
    /// through an SSH tunnel or `kubectl port-forward`) [default: 127.0.0.1:9444].
    #[arg(long, env = "CONVENE_ADMIN_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    /// Serve /metrics and /load on this address only (plain HTTP, e.g.
    /// 127.0.0.1:9090 or an internal interface), not on the public port.
    #[arg(long, env = "CONVENE_METRICS_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Share meetings with other nodes through NATS: `nats://host:4222` (or
    /// `tls://`); several servers of one NATS cluster separated by commas.
    /// Without it the server is a single node.
    #[arg(long, env = "CONVENE_BUS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    /// This node's id in the cluster, 0 to 4095, unique per node (participant
    /// ids carry it) [default: random, with --bus].
    #[arg(long, env = "CONVENE_NODE_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u16>,
    /// Silence after which another node counts as gone and its participants
    /// leave, in ms [default: 3000].
    #[arg(long, env = "CONVENE_NODE_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_timeout_ms: Option<u32>,
    /// NATS credentials file (JWT and NKey seed, as `nsc` writes them).
    #[arg(long, env = "CONVENE_BUS_CREDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus_creds: Option<PathBuf>,
    /// NATS token. Prefer the environment: a flag shows in the process list.
    #[arg(long, env = "CONVENE_BUS_TOKEN", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus_token: Option<String>,
    /// NATS user (with --bus-password).
    #[arg(long, env = "CONVENE_BUS_USER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus_user: Option<String>,
    /// NATS password. Prefer the environment.
    #[arg(long, env = "CONVENE_BUS_PASSWORD", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus_password: Option<String>,
    /// CA certificates (PEM) to verify the NATS server with; turns TLS on.
    #[arg(long, env = "CONVENE_BUS_TLS_CA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for NATS servers that verify clients.
    #[arg(long, env = "CONVENE_BUS_TLS_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus_tls_cert: Option<PathBuf>,
    /// Client key (PEM), with --bus-tls-cert.
    #[arg(long, env = "CONVENE_BUS_TLS_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus_tls_key: Option<PathBuf>,
    /// Directory with the browser client's files [default: browser-client/dist].
    #[arg(long, env = "CONVENE_WEB_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_dir: Option<PathBuf>,
    /// Where the browser client gets a token when its link carries none: a
    /// URL of your sign-in service that answers `GET ?meeting=<id>` (with
    /// the user's cookies) with `{"token": "<JWT>"}`, or 401 and a sign-in page.
    #[arg(long, env = "CONVENE_LOGIN_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_url: Option<String>,
    /// Log format [default: human].
    #[arg(long, env = "CONVENE_LOG_FORMAT", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `convene_server=debug` [default: info].
    #[arg(long, env = "CONVENE_LOG")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,

    /// Meetings with a waiting room, where a moderator admits or denies each
    /// newcomer (PROTOCOL.md §5.8): a meeting id, or a prefix ending in `*`.
    /// Repeat the flag, or separate with commas.
    #[arg(
        long = "waiting-room",
        env = "CONVENE_WAITING_ROOMS",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_rooms: Option<Vec<String>>,
    /// Threads that run the server's work [default: one per core].
    #[arg(long, env = "CONVENE_WORKER_THREADS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
    /// Refuse new joins with SERVER_BUSY while the process uses more than
    /// this share of its worker threads' CPU, in percent (0: off) [default: 0].
    #[arg(long, env = "CONVENE_BUSY_CPU_PERCENT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy_cpu_percent: Option<u32>,
    /// Refuse new joins while frames wait longer than this in subscribers'
    /// queues, in ms (0: off) [default: 0].
    #[arg(long, env = "CONVENE_BUSY_QUEUE_DELAY_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy_queue_delay_ms: Option<u32>,
    /// Refuse new joins while sending more than this to clients, in Mbit/s
    /// (0: off) [default: 0].
    #[arg(long, env = "CONVENE_BUSY_EGRESS_MBPS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy_egress_mbps: Option<u32>,
    /// Most established sessions (Hello accepted); one more Hello is
    /// answered TOO_MANY_CONNECTIONS [default: 10000].
    #[arg(long, env = "CONVENE_MAX_CONNECTIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Most established sessions from one address (an IPv4 address or an
    /// IPv6 /64) [default: 500].
    #[arg(long, env = "CONVENE_MAX_CONNECTIONS_PER_IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<usize>,
    /// Most connections still in their handshake (TCP, TLS, HTTP, QUIC, up
    /// to an accepted Hello); when full, the oldest is closed to make room
    /// [default: 1000].
    #[arg(long, env = "CONVENE_MAX_HANDSHAKING_CONNECTIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_handshaking_connections: Option<usize>,
    /// Most connections in their handshake from one address; more are
    /// closed at once [default: 256].
    #[arg(long, env = "CONVENE_MAX_HANDSHAKING_PER_IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_handshaking_per_ip: Option<usize>,
    /// Time allowed for an HTTP request's headers, and for the next request
    /// on a kept-alive connection, in ms [default: 10000].
    #[arg(long, env = "CONVENE_HTTP_HEADER_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_header_timeout_ms: Option<u32>,
    /// Most rooms [default: 10000].
    #[arg(long, env = "CONVENE_MAX_ROOMS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rooms: Option<usize>,
    /// Most participants per room [default: 1000].
    #[arg(long, env = "CONVENE_MAX_PARTICIPANTS_PER_ROOM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_participants_per_room: Option<u32>,
    /// Most tracks per participant [default: 8].
    #[arg(long, env = "CONVENE_MAX_TRACKS_PER_PARTICIPANT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tracks_per_participant: Option<u32>,
    /// Most concurrent client-opened WebTransport streams per session; one
    /// more is TOO_MANY_STREAMS [default: 100].
    #[arg(long, env = "CONVENE_MAX_CONCURRENT_STREAMS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
    /// Largest frame in bytes [default: 262144].
    #[arg(long, env = "CONVENE_MAX_FRAME_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_frame_bytes: Option<u32>,
    /// Media ingress per connection in kbit/s [default: 8000].
    #[arg(long, env = "CONVENE_MAX_INGRESS_KBPS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ingress_kbps: Option<u32>,
    /// Control messages per second per connection [default: 50].
    #[arg(long, env = "CONVENE_CONTROL_MESSAGES_PER_SECOND")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_messages_per_second: Option<u32>,
    /// Control message burst per connection [default: 100].
    #[arg(long, env = "CONVENE_CONTROL_BURST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_burst: Option<u32>,
    /// Bytes of chat text and E2EE payload one participant may send per
    /// second [default: 16384].
    #[arg(long, env = "CONVENE_RELAY_BYTES_PER_SECOND")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_bytes_per_second: Option<u32>,
    /// Bytes of chat text and E2EE payload sent to a whole room per second,
    /// all senders together [default: 65536].
    #[arg(long, env = "CONVENE_ROOM_RELAY_BYTES_PER_SECOND")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_relay_bytes_per_second: Option<u32>,
    /// Time allowed from connection to Hello, in ms [default: 10000].
    #[arg(long, env = "CONVENE_HANDSHAKE_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout_ms: Option<u32>,
    /// Interval between server Pings, in ms [default: 5000].
    #[arg(long, env = "CONVENE_HEARTBEAT_INTERVAL_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u32>,
    /// Silence after which a connection is closed, in ms [default: 15000].
    #[arg(long, env = "CONVENE_IDLE_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u32>,
    /// Continuous queue overflow after which a subscriber is disconnected, in ms [default: 5000].
    #[arg(long, env = "CONVENE_SLOW_CONSUMER_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_consumer_ms: Option<u32>,
    /// Most media bytes queued per subscriber [default: 2097152].
    #[arg(long, env = "CONVENE_MAX_QUEUE_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queue_bytes: Option<usize>,
    /// Wait this long after the first queued frame before writing, to send several in one write, in ms (0 to 5) [default: 0].
    #[arg(long, env = "CONVENE_COALESCE_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coalesce_ms: Option<u32>,
    /// Time given to sessions to drain on shutdown, in ms [default: 5000].
    #[arg(long, env = "CONVENE_SHUTDOWN_GRACE_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_ms: Option<u32>,
    /// Deliberately break the server, to show the conformance suite catches it (tests only).
    #[arg(long, hide = true, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_fault: Option<Fault>,
}

/// A deliberate defect, for checking that the conformance suite notices it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Forward media with sender 0 instead of the publisher's participant id.
    ForgetSenderStamp,
    /// Flip the last payload bit of every tenth media frame (sequence 5, 15, …):
    /// end-to-end encrypted receivers must refuse those frames.
    TamperMedia,
}

/// The settings in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// WebTransport's UDP address; none: the listen address.
    pub webtransport_listen: Option<SocketAddr>,
    /// Allow plain text on a non-loopback address.
    pub insecure: bool,
    /// TLS certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// TLS key.
    pub tls_key: Option<PathBuf>,
    /// Self-signed development TLS.
    pub dev_tls: bool,
    /// HS256 token secret; never printed.
    #[serde(skip_serializing)]
    pub auth_secret: Option<String>,
    /// File holding the token secret.
    pub auth_secret_file: Option<PathBuf>,
    /// Issuer keys (JWKS) URL.
    pub auth_jwks_url: Option<String>,
    /// JWKS refresh interval.
    pub auth_jwks_refresh_s: u32,
    /// Required token issuer.
    pub auth_issuer: Option<String>,
    /// Required token audience.
    pub auth_audience: Option<String>,
    /// Admin API bearer token; never printed.
    #[serde(skip_serializing)]
    pub admin_token: Option<String>,
    /// File holding the admin API token.
    pub admin_token_file: Option<PathBuf>,
    /// Admin API listen address (loopback).
    pub admin_listen: SocketAddr,
    /// NATS URLs, comma-separated; none for a single node.
    pub bus: Option<String>,
    /// Node id in the cluster.
    pub node_id: Option<u16>,
    /// Node silence timeout.
    pub node_timeout_ms: u32,
    /// NATS credentials file.
    pub bus_creds: Option<PathBuf>,
    /// NATS token; never printed.
    #[serde(skip_serializing)]
    pub bus_token: Option<String>,
    /// NATS user.
    pub bus_user: Option<String>,
    /// NATS password; never printed.
    #[serde(skip_serializing)]
    pub bus_password: Option<String>,
    /// NATS CA certificates.
    pub bus_tls_ca: Option<PathBuf>,
    /// NATS client certificate.
    pub bus_tls_cert: Option<PathBuf>,
    /// NATS client key.
    pub bus_tls_key: Option<PathBuf>,
    /// Browser client directory.
    pub web_dir: PathBuf,
    /// The browser client's sign-in service, published in discovery.
    pub login_url: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log: String,
    /// Meetings with a waiting room (ids or `prefix*`).
    pub waiting_rooms: Vec<String>,
    /// Worker threads (None: one per core).
    pub worker_threads: Option<usize>,
    /// CPU admission threshold, percent (0: off).
    pub busy_cpu_percent: u32,
    /// Queue-delay admission threshold, ms (0: off).
    pub busy_queue_delay_ms: u32,
    /// Egress admission threshold, Mbit/s (0: off).
    pub busy_egress_mbps: u32,
    /// Connection limit.
    pub max_connections: usize,
    /// Where /metrics and /load are served instead of the public port.
    pub metrics_listen: Option<SocketAddr>,
    /// Per-address session limit.
    pub max_connections_per_ip: usize,
    /// Connections in their handshake, in all.
    pub max_handshaking_connections: usize,
    /// Connections in their handshake, per address.
    pub max_handshaking_per_ip: usize,
    /// HTTP header (and keep-alive) timer.
    pub http_header_timeout_ms: u32,
    /// Room limit.
    pub max_rooms: usize,
    /// Participants per room.
    pub max_participants_per_room: u32,
    /// Tracks per participant.
    pub max_tracks_per_participant: u32,
    /// Concurrent client-opened WebTransport streams per session.
    pub max_concurrent_streams: u32,
    /// Frame size limit.
    pub max_frame_bytes: u32,
    /// Ingress bitrate limit.
    pub max_ingress_kbps: u32,
    /// Control message rate.
    pub control_messages_per_second: u32,
    /// Control message burst.
    pub control_burst: u32,
    /// Chat and E2EE bytes per second per participant.
    pub relay_bytes_per_second: u32,
    /// Chat and E2EE bytes per second to a whole room.
    pub room_relay_bytes_per_second: u32,
    /// Handshake timer.
    pub handshake_timeout_ms: u32,
    /// Heartbeat interval.
    pub heartbeat_interval_ms: u32,
    /// Idle timer.
    pub idle_timeout_ms: u32,
    /// Slow-consumer timer.
    pub slow_consumer_ms: u32,
    /// Queue size per subscriber.
    pub max_queue_bytes: usize,
    /// Write coalescing delay.
    pub coalesce_ms: u32,
    /// Shutdown drain deadline.
    pub shutdown_grace_ms: u32,
    /// A deliberate defect (tests only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_fault: Option<Fault>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            webtransport_listen: None,
            insecure: false,
            tls_cert: None,
            tls_key: None,
            dev_tls: false,
            auth_secret: None,
            auth_secret_file: None,
            auth_jwks_url: None,
            auth_jwks_refresh_s: 300,
            auth_issuer: None,
            auth_audience: None,
            admin_token: None,
            admin_token_file: None,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9444)),
            bus: None,
            node_id: None,
            node_timeout_ms: 3_000,
            bus_creds: None,
            bus_token: None,
            bus_user: None,
            bus_password: None,
            bus_tls_ca: None,
            bus_tls_cert: None,
            bus_tls_key: None,
            web_dir: PathBuf::from("browser-client/dist"),
            login_url: None,
            log_format: LogFormat::Human,
            log: "info".into(),
            waiting_rooms: Vec::new(),
            worker_threads: None,
            busy_cpu_percent: 0,
            busy_queue_delay_ms: 0,
            busy_egress_mbps: 0,
            max_connections: 10_000,
            metrics_listen: None,
            max_connections_per_ip: 500,
            max_handshaking_connections: 1_000,
            max_handshaking_per_ip: 256,
            http_header_timeout_ms: 10_000,
            max_rooms: 10_000,
            max_participants_per_room: default::MAX_PARTICIPANTS_PER_ROOM,
            max_tracks_per_participant: default::MAX_TRACKS_PER_PARTICIPANT,
            max_concurrent_streams: default::MAX_CONCURRENT_STREAMS,
            max_frame_bytes: default::MAX_FRAME_BYTES,
            max_ingress_kbps: default::MAX_INGRESS_KBPS,
            control_messages_per_second: default::CONTROL_MESSAGES_PER_SECOND,
            control_burst: default::CONTROL_BURST,
            relay_bytes_per_second: default::RELAY_BYTES_PER_SECOND,
            room_relay_bytes_per_second: default::ROOM_RELAY_BYTES_PER_SECOND,
            handshake_timeout_ms: default::HANDSHAKE_TIMEOUT_MS,
            heartbeat_interval_ms: default::HEARTBEAT_INTERVAL_MS,
            idle_timeout_ms: default::IDLE_TIMEOUT_MS,
            slow_consumer_ms: default::SLOW_CONSUMER_MS,
            max_queue_bytes: default::SUBSCRIBER_QUEUE_BYTES as usize,
            coalesce_ms: 0,
            shutdown_grace_ms: 5_000,
            test_fault: None,
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file or the merged settings do not parse.
    #[error("invalid configuration{}: {message}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, if the error is in it.
        path: Option<PathBuf>,
        /// What is wrong.
        message: String,
    },
    /// A value is outside what the protocol allows.
    #[error("{0}")]
    Invalid(String),
}

/// Shortest admin API token accepted.
pub const MIN_ADMIN_TOKEN: usize = 16;

fn admin_token_too_short(len: usize) -> ConfigError {
    ConfigError::Invalid(format!(
        "the admin token has {len} bytes; use at least {MIN_ADMIN_TOKEN} (e.g. `openssl rand -hex 24`)"
    ))
}

impl Config {
    /// Merges flags and environment (already in `cli`) over the file over the defaults.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let mut table = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::Parse {
                    path: Some(path.clone()),
                    message: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        let given = toml::Table::try_from(cli).map_err(|e| ConfigError::Parse {
            path: None,
            message: e.to_string(),
        })?;
        table.extend(given);
        let config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: cli.config.clone(),
                message: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values against the protocol's maximums and each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let over = |name: &str, v: u32, m: u32| {
            if v > m || v == 0 {
                Err(ConfigError::Invalid(format!(
                    "{name} = {v}: must be between 1 and the protocol maximum {m}"
                )))
            } else {
                Ok(())
            }
        };
        over(
            "max_frame_bytes",
            self.max_frame_bytes,
            max::MAX_FRAME_BYTES,
        )?;
        over(
            "max_participants_per_room",
            self.max_participants_per_room,
            max::MAX_PARTICIPANTS_PER_ROOM,
        )?;
        over(
            "max_tracks_per_participant",
            self.max_tracks_per_participant,
            max::MAX_TRACKS_PER_PARTICIPANT,
        )?;
        over(
            "max_concurrent_streams",
            self.max_concurrent_streams,
            max::MAX_CONCURRENT_STREAMS,
        )?;
        over(
            "max_ingress_kbps",
            self.max_ingress_kbps,
            max::MAX_INGRESS_KBPS,
        )?;
        over(
            "control_messages_per_second",
            self.control_messages_per_second,
            max::CONTROL_MESSAGES_PER_SECOND,
        )?;
        over("control_burst", self.control_burst, max::CONTROL_BURST)?;
        over(
            "relay_bytes_per_second",
            self.relay_bytes_per_second,
            max::RELAY_BYTES_PER_SECOND,
        )?;
        over(
            "room_relay_bytes_per_second",
            self.room_relay_bytes_per_second,
            max::ROOM_RELAY_BYTES_PER_SECOND,
        )?;
        over(
            "handshake_timeout_ms",
            self.handshake_timeout_ms,
            max::HANDSHAKE_TIMEOUT_MS,
        )?;
        over(
            "heartbeat_interval_ms",
            self.heartbeat_interval_ms,
            max::HEARTBEAT_INTERVAL_MS,
        )?;
        over(
            "idle_timeout_ms",
            self.idle_timeout_ms,
            max::IDLE_TIMEOUT_MS,
        )?;
        over(
            "slow_consumer_ms",
            self.slow_consumer_ms,
            max::SLOW_CONSUMER_MS,
        )?;
        if self.idle_timeout_ms < 2 * self.heartbeat_interval_ms {
            return Err(ConfigError::Invalid(format!(
                "idle_timeout_ms ({}) must be at least twice heartbeat_interval_ms ({})",
                self.idle_timeout_ms, self.heartbeat_interval_ms
            )));
        }
        for (name, v) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            (
                "max_handshaking_connections",
                self.max_handshaking_connections,
            ),
            ("max_handshaking_per_ip", self.max_handshaking_per_ip),
            (
                "http_header_timeout_ms",
                self.http_header_timeout_ms as usize,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(format!(
                    "{name} = 0: must be at least 1"
                )));
            }
        }
        if self.max_queue_bytes == 0 || self.max_queue_bytes > max::SUBSCRIBER_QUEUE_BYTES as usize
        {
            return Err(ConfigError::Invalid(format!(
                "max_queue_bytes = {}: must be between 1 and the protocol maximum {}",
                self.max_queue_bytes,
                max::SUBSCRIBER_QUEUE_BYTES
            )));
        }
        if self.coalesce_ms > 5 {
            return Err(ConfigError::Invalid(format!(
                "coalesce_ms = {}: at most 5",
                self.coalesce_ms
            )));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "tls_cert and tls_key go together".into(),
            ));
        }
        if self.tls_cert.is_some() && self.dev_tls {
            return Err(ConfigError::Invalid(
                "use either tls_cert/tls_key or dev_tls, not both".into(),
            ));
        }
        if !self.listen.ip().is_loopback() && !self.tls() && !self.insecure {
            return Err(ConfigError::Invalid(format!(
                "refusing to serve plain text on {}: give --tls-cert/--tls-key or --dev-tls, \
                 or --insecure if you really mean it",
                self.listen
            )));
        }
        if let Some(wt) = self.webtransport_listen
            && !self.tls()
        {
            return Err(ConfigError::Invalid(format!(
                "webtransport_listen {wt}: WebTransport runs only with TLS; give --tls-cert/--tls-key \
                 or --dev-tls, or drop webtransport_listen"
            )));
        }
        if let Some(u) = &self.login_url
            && !(u.starts_with("https://") || u.starts_with("http://") || u.starts_with('/'))
        {
            return Err(ConfigError::Invalid(format!(
                "login_url {u}: an https:// URL (or a path on this server)"
            )));
        }
        if self.admin_token.is_some() && self.admin_token_file.is_some() {
            return Err(ConfigError::Invalid(
                "use either admin_token or admin_token_file, not both".into(),
            ));
        }
        if let Some(t) = &self.admin_token
            && t.trim().len() < MIN_ADMIN_TOKEN
        {
            return Err(admin_token_too_short(t.trim().len()));
        }
        if self.admin() && !self.admin_listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "admin_listen {}: the admin API speaks plain HTTP/2 and listens on loopback only; \
                 reach it through an SSH tunnel or `kubectl port-forward`",
                self.admin_listen
            )));
        }
        if self.auth_secret.is_some() && self.auth_secret_file.is_some() {
            return Err(ConfigError::Invalid(
                "use either auth_secret or auth_secret_file, not both".into(),
            ));
        }
        if let Some(s) = &self.auth_secret {
            check_secret(s.as_bytes())?;
        }
        if let Some(u) = &self.auth_jwks_url {
            let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                .iter()
                .any(|p| u.starts_with(p));
            if !u.starts_with("https://") && !loopback {
                return Err(ConfigError::Invalid(format!(
                    "auth_jwks_url {u}: the issuer's keys must come over https:// (http:// only on loopback)"
                )));
            }
            if self.auth_jwks_refresh_s < 10 {
                return Err(ConfigError::Invalid(
                    "auth_jwks_refresh_s: at least 10".into(),
                ));
            }
        }
        if let Some(bus) = &self.bus {
            for url in bus.split(',') {
                let url = url.trim();
                if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                    return Err(ConfigError::Invalid(format!(
                        "bus {url}: give a NATS URL, nats://host:4222 or tls://host:4222"
                    )));
                }
            }
            if self.bus_tls_cert.is_some() != self.bus_tls_key.is_some() {
                return Err(ConfigError::Invalid(
                    "bus_tls_cert and bus_tls_key go together".into(),
                ));
            }
            if self.bus_user.is_some() != self.bus_password.is_some() {
                return Err(ConfigError::Invalid(
                    "bus_user and bus_password go together (the password best in CONVENE_BUS_PASSWORD)"
                        .into(),
                ));
            }
            if self.bus_token.is_some() && (self.bus_user.is_some() || self.bus_creds.is_some()) {
                return Err(ConfigError::Invalid(
                    "bus_token, bus_user/bus_password and bus_creds: give one way to log in to NATS"
                        .into(),
                ));
            }
        } else if self.node_id.is_some() || self.bus_creds.is_some() || self.bus_token.is_some() {
            return Err(ConfigError::Invalid(
                "node_id and the bus_* settings need --bus nats://host:port".into(),
            ));
        }
        if let Some(n) = self.node_id
            && u32::from(n) >= crate::bus::MAX_NODES
        {
            return Err(ConfigError::Invalid(format!(
                "node_id = {n}: must be between 0 and {}",
                crate::bus::MAX_NODES - 1
            )));
        }
        if self.worker_threads == Some(0) {
            return Err(ConfigError::Invalid(
                "worker_threads = 0: give at least 1, or leave it out for one per core".into(),
            ));
        }
        if self.busy_cpu_percent > 100 {
            return Err(ConfigError::Invalid(format!(
                "busy_cpu_percent = {}: a percentage of the worker threads, at most 100 (0: off)",
                self.busy_cpu_percent
            )));
        }
        if !(500..=60_000).contains(&self.node_timeout_ms) {
            return Err(ConfigError::Invalid(format!(
                "node_timeout_ms = {}: must be between 500 and 60000",
                self.node_timeout_ms
            )));
        }
        if !self.listen.ip().is_loopback() && !self.auth() && !self.insecure {
            return Err(ConfigError::Invalid(format!(
                "refusing to serve {} without authentication: give --auth-secret-file \
                 (or CONVENE_AUTH_SECRET), or --insecure if anyone may join",
                self.listen
            )));
        }
        Ok(())
    }

    /// True when tokens are required.
    pub fn auth(&self) -> bool {
        self.auth_secret.is_some()
            || self.auth_secret_file.is_some()
            || self.auth_jwks_url.is_some()
    }

    /// True when the admin API is on (a token is configured).
    pub fn admin(&self) -> bool {
        self.admin_token.is_some() || self.admin_token_file.is_some()
    }

    /// The admin API's bearer token, read from its file if need be.
    pub fn load_admin_token(&self) -> Result<Option<String>, ConfigError> {
        let token = match (&self.admin_token, &self.admin_token_file) {
            (Some(t), _) => t.trim().to_string(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_string(),
            (None, None) => return Ok(None),
        };
        if token.len() < MIN_ADMIN_TOKEN {
            return Err(admin_token_too_short(token.len()));
        }
        Ok(Some(token))
    }

    /// The token secret, from the setting or its file.
    pub fn load_auth_secret(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let secret = match (&self.auth_secret, &self.auth_secret_file) {
            (Some(s), _) => s.as_bytes().to_vec(),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                text.trim().as_bytes().to_vec()
            }
            (None, None) => return Ok(None),
        };
        check_secret(&secret)?;
        Ok(Some(secret))
    }

    /// How to reach NATS, when this node is part of a cluster (`node` is
    /// drawn at random when not set).
    pub fn nats(&self) -> Option<crate::nats::NatsOptions> {
        let bus = self.bus.as_ref()?;
        let node = self.node_id.unwrap_or_else(|| {
            let r = std::collections::hash_map::RandomState::new();
            let n = std::hash::BuildHasher::hash_one(&r, std::process::id());
            (n % (u64::from(crate::bus::MAX_NODES) - 1) + 1) as u16
        });
        let mut o = crate::nats::NatsOptions::new("nats://unused", node);
        o.urls = bus.split(',').map(|u| u.trim().to_string()).collect();
        o.creds = self.bus_creds.clone();
        o.token = self.bus_token.clone();
        o.user_password = self.bus_user.clone().zip(self.bus_password.clone());
        o.tls_ca = self.bus_tls_ca.clone();
        o.tls_client = self.bus_tls_cert.clone().zip(self.bus_tls_key.clone());
        o.node_timeout = std::time::Duration::from_millis(u64::from(self.node_timeout_ms));
        Some(o)
    }

    /// True when TLS is on.
    pub fn tls(&self) -> bool {
        self.dev_tls || self.tls_cert.is_some()
    }

    /// The settings as TOML, for `--print-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

fn check_secret(secret: &[u8]) -> Result<(), ConfigError> {
    if secret.len() < crate::auth::MIN_SECRET_BYTES {
        return Err(ConfigError::Invalid(format!(
            "the token secret has {} bytes; use at least {} (e.g. `openssl rand -hex 32`)",
            secret.len(),
            crate::auth::MIN_SECRET_BYTES
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("convene-server").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let dir = std::env::temp_dir().join(format!("convene-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "max_rooms = 7\nmax_frame_bytes = 1000\n").unwrap();
        let c = Config::load(&cli(&[
            "--config",
            file.to_str().unwrap(),
            "--max-frame-bytes",
            "2000",
        ]))
        .unwrap();
        assert_eq!(c.max_rooms, 7);
        assert_eq!(c.max_frame_bytes, 2000);
        assert_eq!(c.max_tracks_per_participant, 8);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = std::env::temp_dir().join(format!("convene-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "max_romz = 7\n").unwrap();
        assert!(Config::load(&cli(&["--config", file.to_str().unwrap()])).is_err());
        let e = Config::load(&cli(&["--max-frame-bytes", "2000000"])).unwrap_err();
        assert!(e.to_string().contains("protocol maximum"), "{e}");
    }

    #[test]
    fn webtransport_listen_is_taken_with_tls_and_refused_without() {
        let c = Config::load(&cli(&[
            "--dev-tls",
            "--webtransport-listen",
            "127.0.0.1:4433",
        ]))
        .unwrap();
        assert_eq!(
            c.webtransport_listen,
            Some("127.0.0.1:4433".parse().unwrap())
        );
        assert_eq!(
            Config::load(&cli(&["--dev-tls"]))
                .unwrap()
                .webtransport_listen,
            None
        );
        let e = Config::load(&cli(&["--webtransport-listen", "127.0.0.1:4433"])).unwrap_err();
        assert!(
            e.to_string().contains("WebTransport runs only with TLS"),
            "{e}"
        );
    }

    #[test]
    fn public_plain_text_needs_insecure() {
        let e = Config::load(&cli(&["--listen", "0.0.0.0:8080"])).unwrap_err();
        assert!(e.to_string().contains("--insecure"), "{e}");
        assert!(Config::load(&cli(&["--listen", "0.0.0.0:8080", "--insecure"])).is_ok());
        let secret = "0123456789abcdef0123456789abcdef";
        assert!(
            Config::load(&cli(&[
                "--listen",
                "0.0.0.0:8080",
                "--dev-tls",
                "--auth-secret",
                secret
            ]))
            .is_ok()
        );
    }

    #[test]
    fn public_binds_need_authentication_and_secrets_must_be_long() {
        let e = Config::load(&cli(&["--listen", "0.0.0.0:8080", "--dev-tls"])).unwrap_err();
        assert!(e.to_string().contains("without authentication"), "{e}");
        let e = Config::load(&cli(&["--auth-secret", "short"])).unwrap_err();
        assert!(e.to_string().contains("at least 32"), "{e}");
        // The secret is never printed.
        let c = Config::load(&cli(&["--auth-secret", "0123456789abcdef0123456789abcdef"])).unwrap();
        assert!(c.auth());
        assert!(!c.to_toml().contains("0123456789abcdef"), "{}", c.to_toml());
    }

    #[test]
    fn bus_settings_are_checked() {
        let c = Config::load(&cli(&[
            "--bus",
            "nats://127.0.0.1:4222, nats://127.0.0.1:4223",
            "--node-id",
            "7",
            "--bus-token",
            "sekrit",
        ]))
        .unwrap();
        let o = c.nats().unwrap();
        assert_eq!(o.urls, ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]);
        assert_eq!(o.node, 7);
        assert!(
            !c.to_toml().contains("sekrit"),
            "the token is never printed"
        );
        let e = Config::load(&cli(&["--bus", "redis://x"])).unwrap_err();
        assert!(e.to_string().contains("nats://"), "{e}");
        let e = Config::load(&cli(&["--bus", "nats://x:1", "--node-id", "4096"])).unwrap_err();
        assert!(e.to_string().contains("between 0 and 4095"), "{e}");
        let e = Config::load(&cli(&["--node-id", "3"])).unwrap_err();
        assert!(e.to_string().contains("--bus"), "{e}");
        // Without --node-id each start draws one in range.
        let n = Config::load(&cli(&["--bus", "nats://x:1"]))
            .unwrap()
            .nats()
            .unwrap()
            .node;
        assert!((1..4096).contains(&n));
        assert!(Config::default().nats().is_none());
    }

    #[test]
    fn printed_config_reads_back() {
        let c = Config::default();
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }
}
