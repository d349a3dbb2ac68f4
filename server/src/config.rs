//! Configuration: command-line flags, then `CONVENE_*` environment variables,
//! then an optional TOML file, then defaults, in that order of precedence.
//!
//! Every setting is declared once, in the `settings!` table below: its flag
//! and environment variable, its field of [`Config`] with its default, and its
//! help text, whose `[default: …]` is rendered from that default.

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

/// The command line: the file to read, `--print-config`, and every setting
/// as an optional flag, so that the environment, the file and the defaults
/// can fill what is not given.
#[derive(Debug, Parser)]
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
    pub config: Option<PathBuf>,
    /// Print the effective settings as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// The settings given as flags or in the environment.
    #[command(flatten)]
    pub settings: Flags,
}

/// Declares the settings from one table: the optional flags of [`Flags`],
/// the fields of [`Config`] and `Default for Config`.
///
/// An entry is a doc comment (the flag's help and the field's doc), the
/// flag's `#[arg(...)]` (its name, environment variable and any other clap
/// attribute), any `#[serde(...)]` for the field of [`Config`], then one of:
///
/// - `name: Type = default`: a value; the help ends with `[default: …]`,
///   the default as `--print-config` shows it.
/// - `name: Option<Type>`: unset unless given. When unset means something,
///   the doc comment says what, in words, as `[default: …]`.
/// - `name: Vec<Type>`: a list, empty unless given.
/// - `name: bool`: a switch, off unless given (give the flag
///   `num_args = 0..=1, default_missing_value = "true"`).
///
/// The help is the doc comment with its lines joined into one.
macro_rules! settings {
    // Each entry is first put in one shape, `{ [docs] [clap] [serde] name:
    // config type, flag type, default, shown default }`; then all are emitted.
    (@entry [$($done:tt)*]) => { settings!(@emit $($done)*); };
    (@entry [$($done:tt)*]
        $(#[doc = $doc:literal])+
        #[arg($($arg:tt)*)]
        $(#[serde($($serde:tt)*)])*
        $name:ident: Option<$t:ty>
        $(, $($rest:tt)*)?
    ) => {
        settings!(@entry [$($done)* {
            [$($doc)+] [$($arg)*] [$(#[serde($($serde)*)])*]
            $name: Option<$t>, $t, None, None
        }] $($($rest)*)?);
    };
    (@entry [$($done:tt)*]
        $(#[doc = $doc:literal])+
        #[arg($($arg:tt)*)]
        $(#[serde($($serde:tt)*)])*
        $name:ident: Vec<$t:ty>
        $(, $($rest:tt)*)?
    ) => {
        settings!(@entry [$($done)* {
            [$($doc)+] [$($arg)*] [$(#[serde($($serde)*)])*]
            $name: Vec<$t>, Vec<$t>, Vec::new(), None
        }] $($($rest)*)?);
    };
    (@entry [$($done:tt)*]
        $(#[doc = $doc:literal])+
        #[arg($($arg:tt)*)]
        $(#[serde($($serde:tt)*)])*
        $name:ident: bool
        $(, $($rest:tt)*)?
    ) => {
        settings!(@entry [$($done)* {
            [$($doc)+] [$($arg)*] [$(#[serde($($serde)*)])*]
            $name: bool, bool, false, None
        }] $($($rest)*)?);
    };
    (@entry [$($done:tt)*]
        $(#[doc = $doc:literal])+
        #[arg($($arg:tt)*)]
        $(#[serde($($serde:tt)*)])*
        $name:ident: $t:ty = $default:expr
        $(, $($rest:tt)*)?
    ) => {
        settings!(@entry [$($done)* {
            [$($doc)+] [$($arg)*] [$(#[serde($($serde)*)])*]
            $name: $t, $t, $default, Some(shown(&Config::default().$name))
        }] $($($rest)*)?);
    };
    (@entry [$($done:tt)*] $($bad:tt)*) => {
        compile_error!(concat!(
            "settings!: expected `/// doc`, `#[arg(...)]`, optional `#[serde(...)]`, then ",
            "`name: Type = default`, `name: Option<Type>`, `name: Vec<Type>` or `name: bool`, at: ",
            stringify!($($bad)*)
        ));
    };
    (@emit $({
        [$($doc:literal)+] [$($arg:tt)*] [$($serde:tt)*]
        $name:ident: $type:ty, $flag:ty, $default:expr, $shown:expr
    })*) => {
        /// Every setting as an optional flag, with its environment variable;
        /// serialized, the ones given, as keys of [`Config`].
        #[derive(Debug, clap::Args, Serialize)]
        pub struct Flags {
            $(
                #[doc = concat!("`", stringify!($name), "`, when given: see [`Config`].")]
                #[arg($($arg)*)]
                #[arg(help = flag_help(&[$($doc),+], $shown))]
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $name: Option<$flag>,
            )*
        }

        /// The settings in force.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Config {
            $(
                $(#[doc = $doc])+
                $($serde)*
                pub $name: $type,
            )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config {
                    $($name: $default,)*
                }
            }
        }
    };
    ($($entries:tt)*) => { settings!(@entry [] $($entries)*); };
}

/// A flag's help: its doc comment's lines joined as clap joins them, without
/// the final period, then `[default: …]` when the default is a value.
fn flag_help(doc: &[&str], default: Option<String>) -> String {
    let lines: Vec<&str> = doc
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    let mut help = lines.join(" ");
    if help.ends_with('.') && !help.ends_with("..") {
        help.pop();
    }
    if let Some(default) = default {
        help.push_str(&format!(" [default: {default}]"));
    }
    help
}

/// A default as `--print-config` shows it, without a string's quotes.
fn shown<T: Serialize>(value: &T) -> String {
    match toml::Value::try_from(value) {
        Ok(toml::Value::String(s)) => s,
        Ok(v) => v.to_string(),
        Err(e) => format!("({e})"),
    }
}

settings! {
    /// Address to listen on for HTTP(S) and WebSocket.
    #[arg(long, env = "CONVENE_LISTEN")]
    listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)),
    /// UDP address for WebTransport (HTTP/3), which needs TLS [default: the
    /// --listen address: the same port number as HTTPS, on UDP]. Set it when
    /// that UDP port is taken or a firewall opens another one.
    #[arg(long, env = "CONVENE_WEBTRANSPORT_LISTEN")]
    webtransport_listen: Option<SocketAddr>,
    /// Allow a non-loopback address without TLS (not for production).
    #[arg(long, env = "CONVENE_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    insecure: bool,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "CONVENE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "CONVENE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve TLS with a fresh self-signed ECDSA P-256 certificate valid 13 days, and publish its SHA-256 hash.
    #[arg(long, env = "CONVENE_DEV_TLS", conflicts_with = "tls_cert", num_args = 0..=1, default_missing_value = "true")]
    dev_tls: bool,
    /// Require a token (PROTOCOL.md §11.3): HS256 JWTs signed with this shared
    /// secret, at least 32 bytes. Prefer the environment or --auth-secret-file:
    /// a flag shows in the process list.
    #[arg(
        long,
        env = "CONVENE_AUTH_SECRET",
        hide_env_values = true,
        conflicts_with = "auth_secret_file"
    )]
    #[serde(skip_serializing)]
    auth_secret: Option<String>,
    /// Read the token secret from this file (surrounding whitespace ignored).
    #[arg(long, env = "CONVENE_AUTH_SECRET_FILE")]
    auth_secret_file: Option<PathBuf>,
    /// Require a token signed with one of the issuer's published keys (ES256,
    /// RS256, EdDSA), fetched from this JWKS URL (https://, or http:// on
    /// loopback) and refreshed; a token naming an unknown key id makes the
    /// server fetch again before it answers.
    #[arg(long, env = "CONVENE_AUTH_JWKS_URL")]
    auth_jwks_url: Option<String>,
    /// Seconds between fetches of the JWKS.
    #[arg(long, env = "CONVENE_AUTH_JWKS_REFRESH_S")]
    auth_jwks_refresh_s: u32 = 300,
    /// Accept only tokens whose `iss` is this.
    #[arg(long, env = "CONVENE_AUTH_ISSUER")]
    auth_issuer: Option<String>,
    /// Accept only tokens whose `aud` is this.
    #[arg(long, env = "CONVENE_AUTH_AUDIENCE")]
    auth_audience: Option<String>,
    /// Turn on the admin API (gRPC, spec/v1/admin.proto) with this bearer
    /// token, at least 16 bytes. Prefer the environment or --admin-token-file.
    #[arg(
        long,
        env = "CONVENE_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    #[serde(skip_serializing)]
    admin_token: Option<String>,
    /// Read the admin API's bearer token from this file (whitespace ignored).
    #[arg(long, env = "CONVENE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Where the admin API listens (gRPC and JSON): without --admin-tls-cert
    /// plain HTTP, so loopback only (reach it through an SSH tunnel or
    /// `kubectl port-forward`); with it any address.
    #[arg(long, env = "CONVENE_ADMIN_LISTEN")]
    admin_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9444)),
    /// TLS certificate chain (PEM) of the admin API; with --admin-tls-key it
    /// speaks TLS (HTTP/2 or HTTP/1.1 by ALPN) and may listen on any address.
    #[arg(long, env = "CONVENE_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    admin_tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the admin API, with --admin-tls-cert.
    #[arg(long, env = "CONVENE_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    admin_tls_key: Option<PathBuf>,
    /// CA certificates (PEM): admin API clients must present a certificate
    /// signed by one of them (mutual TLS), besides the bearer token.
    #[arg(long, env = "CONVENE_ADMIN_CLIENT_CA", requires = "admin_tls_cert")]
    admin_client_ca: Option<PathBuf>,
    /// Share meetings with other nodes through NATS: `nats://host:4222` (or
    /// `tls://`); several servers of one NATS cluster separated by commas.
    /// Without it the server is a single node.
    #[arg(long, env = "CONVENE_BUS")]
    bus: Option<String>,
    /// This node's id in the cluster, 0 to 4095, unique per node (participant
    /// ids carry it) [default: random, with --bus].
    #[arg(long, env = "CONVENE_NODE_ID")]
    node_id: Option<u16>,
    /// Silence after which another node counts as gone and its participants
    /// leave, in ms.
    #[arg(long, env = "CONVENE_NODE_TIMEOUT_MS")]
    node_timeout_ms: u32 = 3_000,
    /// NATS credentials file (JWT and NKey seed, as `nsc` writes them).
    #[arg(long, env = "CONVENE_BUS_CREDS")]
    bus_creds: Option<PathBuf>,
    /// NATS token. Prefer the environment: a flag shows in the process list.
    #[arg(long, env = "CONVENE_BUS_TOKEN", hide_env_values = true)]
    #[serde(skip_serializing)]
    bus_token: Option<String>,
    /// NATS user (with --bus-password).
    #[arg(long, env = "CONVENE_BUS_USER")]
    bus_user: Option<String>,
    /// NATS password. Prefer the environment.
    #[arg(long, env = "CONVENE_BUS_PASSWORD", hide_env_values = true)]
    #[serde(skip_serializing)]
    bus_password: Option<String>,
    /// CA certificates (PEM) to verify the NATS server with; turns TLS on.
    #[arg(long, env = "CONVENE_BUS_TLS_CA")]
    bus_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for NATS servers that verify clients.
    #[arg(long, env = "CONVENE_BUS_TLS_CERT")]
    bus_tls_cert: Option<PathBuf>,
    /// Client key (PEM), with --bus-tls-cert.
    #[arg(long, env = "CONVENE_BUS_TLS_KEY")]
    bus_tls_key: Option<PathBuf>,
    /// Directory with the browser client's files.
    #[arg(long, env = "CONVENE_WEB_DIR")]
    web_dir: PathBuf = PathBuf::from("browser-client/dist"),
    /// Where the browser client gets a token when its link carries none: a
    /// URL of your sign-in service that answers `GET ?meeting=<id>` (with
    /// the user's cookies) with `{"token": "<JWT>"}`, or 401 and a sign-in page.
    #[arg(long, env = "CONVENE_LOGIN_URL")]
    login_url: Option<String>,
    /// The `convene` program this server runs as `convene record` when a
    /// moderator or the admin API starts a recording (PROTOCOL.md §5.10);
    /// recording is unavailable without it and --recordings-dir.
    #[arg(long, env = "CONVENE_RECORDER_COMMAND")]
    recorder_command: Option<PathBuf>,
    /// Where recorders write: DIR/<meeting id>/<UTC start time>/.
    #[arg(long, env = "CONVENE_RECORDINGS_DIR")]
    recordings_dir: Option<PathBuf>,
    /// The URL a recorder connects to; without it, this server's own
    /// listener on loopback. Set it when the certificate does not name 127.0.0.1.
    #[arg(long, env = "CONVENE_RECORDER_SERVER_URL")]
    recorder_server_url: Option<String>,
    /// Most recorders this server runs at once, those still stopping included.
    #[arg(long, env = "CONVENE_MAX_RECORDERS")]
    max_recorders: u32 = default::MAX_RECORDERS_PER_NODE,
    /// Most recorders this server starts a minute, all meetings together.
    #[arg(long, env = "CONVENE_RECORDER_STARTS_PER_MINUTE")]
    recorder_starts_per_minute: u32 = default::RECORDER_STARTS_PER_MINUTE,
    /// Log format.
    #[arg(long, env = "CONVENE_LOG_FORMAT", value_enum)]
    log_format: LogFormat = LogFormat::Human,
    /// Log filter, e.g. `info` or `convene_server=debug`.
    #[arg(long, env = "CONVENE_LOG")]
    log: String = "info".into(),
    /// Ad-hoc meetings (ones nobody created through the admin API) with a
    /// waiting room, where a moderator admits or denies each newcomer
    /// (PROTOCOL.md §5.8): a meeting id, or a prefix ending in `*`. Repeat
    /// the flag, or separate with commas. A created meeting has its own setting.
    #[arg(
        long = "waiting-room",
        env = "CONVENE_WAITING_ROOMS",
        value_delimiter = ','
    )]
    waiting_rooms: Vec<String>,
    /// Let participants join meetings nobody created through the admin API
    /// (ad-hoc meetings). With false, such a join is refused with
    /// UNKNOWN_MEETING.
    #[arg(long, env = "CONVENE_AD_HOC_MEETINGS", num_args = 0..=1, default_missing_value = "true")]
    ad_hoc_meetings: bool = true,
    /// Directory of the embedded store (SQLite, convene.sqlite3) that keeps
    /// managed meetings across restarts; created if missing. Without it they
    /// live in memory and are lost when the server stops.
    #[arg(long, env = "CONVENE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Keep managed meetings in this PostgreSQL database instead of the
    /// embedded store, so every node of a cluster shares them and a change
    /// on one node reaches rooms on all (e.g.
    /// postgres://convene@db.internal/convene; a password belongs in the
    /// environment, which `ps` does not show). Plain TCP or a Unix socket
    /// (host=/run/postgresql): keep the database on a private network.
    #[arg(long, env = "CONVENE_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// CA certificates (PEM) trusted for PostgreSQL's certificate besides the
    /// system's, with sslmode=require in --database-url (then the
    /// certificate must be valid for the URL's host).
    #[arg(long, env = "CONVENE_DATABASE_CA_FILE")]
    database_ca_file: Option<PathBuf>,
    /// Days attendance (who was in a meeting, when, why they left) is kept
    /// after the participant left; older rows are deleted hourly. 0 keeps
    /// it forever.
    #[arg(long, env = "CONVENE_ATTENDANCE_RETENTION_DAYS")]
    attendance_retention_days: u32 = 30,
    /// Where meeting events are POSTed as signed JSON (webhooks; see
    /// docs/API.md): an http:// or https:// URL. Repeat the flag, or
    /// separate with commas, for several receivers; each gets every event.
    #[arg(long = "webhook-url", env = "CONVENE_WEBHOOK_URLS", value_delimiter = ',')]
    webhook_urls: Vec<String>,
    /// File with the secret webhooks are signed with (HMAC-SHA256), at
    /// least 16 bytes; required with --webhook-url.
    #[arg(long, env = "CONVENE_WEBHOOK_SECRET_FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// In meetings that require end-to-end encryption, a participant that
    /// has not announced an identity key this long after joining (or after
    /// the meeting came to require it) is removed, in ms.
    #[arg(long, env = "CONVENE_E2EE_ANNOUNCE_TIMEOUT_MS")]
    e2ee_announce_timeout_ms: u32 = 10_000,
    /// CA certificates (PEM) trusted for https:// webhook URLs besides the
    /// system's: for receivers with a certificate from a private CA.
    #[arg(long, env = "CONVENE_WEBHOOK_CA_FILE")]
    webhook_ca_file: Option<PathBuf>,
    /// Most events waiting for delivery to one webhook URL; beyond it the
    /// oldest are dropped (and counted in convene_webhook_dropped).
    #[arg(long, env = "CONVENE_WEBHOOK_MAX_PENDING")]
    webhook_max_pending: u32 = 100_000,
    /// Longest wait between two attempts to deliver a webhook, in ms (tests shorten it).
    #[arg(long, hide = true)]
    webhook_backoff_max_ms: u32 = 60_000,
    /// Threads that run the server's work [default: one per core].
    #[arg(long, env = "CONVENE_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Refuse new joins with SERVER_BUSY while the process uses more than
    /// this share of its worker threads' CPU, in percent (0: off).
    #[arg(long, env = "CONVENE_BUSY_CPU_PERCENT")]
    busy_cpu_percent: u32 = 0,
    /// Refuse new joins while frames wait longer than this in subscribers'
    /// queues, in ms (0: off).
    #[arg(long, env = "CONVENE_BUSY_QUEUE_DELAY_MS")]
    busy_queue_delay_ms: u32 = 0,
    /// Refuse new joins while sending more than this to clients, in Mbit/s
    /// (0: off).
    #[arg(long, env = "CONVENE_BUSY_EGRESS_MBPS")]
    busy_egress_mbps: u32 = 0,
    /// Most established sessions (Hello accepted); one more Hello is
    /// answered TOO_MANY_CONNECTIONS.
    #[arg(long, env = "CONVENE_MAX_CONNECTIONS")]
    max_connections: usize = 10_000,
    /// Serve /metrics and /load on this address only (plain HTTP, e.g.
    /// 127.0.0.1:9090 or an internal interface), not on the public port.
    #[arg(long, env = "CONVENE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Most established sessions from one address (an IPv4 address or an
    /// IPv6 /64).
    #[arg(long, env = "CONVENE_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: usize = 500,
    /// Most connections still in their handshake (TCP, TLS, HTTP, QUIC, up
    /// to an accepted Hello); when full, the oldest is closed to make room.
    #[arg(long, env = "CONVENE_MAX_HANDSHAKING_CONNECTIONS")]
    max_handshaking_connections: usize = 1_000,
    /// Most connections in their handshake from one address; more are
    /// closed at once.
    #[arg(long, env = "CONVENE_MAX_HANDSHAKING_PER_IP")]
    max_handshaking_per_ip: usize = 256,
    /// Time allowed for an HTTP request's headers, and for the next request
    /// on a kept-alive connection, in ms.
    #[arg(long, env = "CONVENE_HTTP_HEADER_TIMEOUT_MS")]
    http_header_timeout_ms: u32 = 10_000,
    /// Most rooms.
    #[arg(long, env = "CONVENE_MAX_ROOMS")]
    max_rooms: usize = 10_000,
    /// Most participants per room.
    #[arg(long, env = "CONVENE_MAX_PARTICIPANTS_PER_ROOM")]
    max_participants_per_room: u32 = default::MAX_PARTICIPANTS_PER_ROOM,
    /// Most tracks per participant.
    #[arg(long, env = "CONVENE_MAX_TRACKS_PER_PARTICIPANT")]
    max_tracks_per_participant: u32 = default::MAX_TRACKS_PER_PARTICIPANT,
    /// Most concurrent client-opened WebTransport streams per session; one
    /// more is TOO_MANY_STREAMS.
    #[arg(long, env = "CONVENE_MAX_CONCURRENT_STREAMS")]
    max_concurrent_streams: u32 = default::MAX_CONCURRENT_STREAMS,
    /// Largest frame in bytes.
    #[arg(long, env = "CONVENE_MAX_FRAME_BYTES")]
    max_frame_bytes: u32 = default::MAX_FRAME_BYTES,
    /// Media ingress per connection in kbit/s.
    #[arg(long, env = "CONVENE_MAX_INGRESS_KBPS")]
    max_ingress_kbps: u32 = default::MAX_INGRESS_KBPS,
    /// Control messages per second per connection.
    #[arg(long, env = "CONVENE_CONTROL_MESSAGES_PER_SECOND")]
    control_messages_per_second: u32 = default::CONTROL_MESSAGES_PER_SECOND,
    /// Control message burst per connection.
    #[arg(long, env = "CONVENE_CONTROL_BURST")]
    control_burst: u32 = default::CONTROL_BURST,
    /// Bytes of chat text and E2EE payload one participant may send per
    /// second.
    #[arg(long, env = "CONVENE_RELAY_BYTES_PER_SECOND")]
    relay_bytes_per_second: u32 = default::RELAY_BYTES_PER_SECOND,
    /// Bytes of chat text and E2EE payload sent to a whole room per second,
    /// all senders together.
    #[arg(long, env = "CONVENE_ROOM_RELAY_BYTES_PER_SECOND")]
    room_relay_bytes_per_second: u32 = default::ROOM_RELAY_BYTES_PER_SECOND,
    /// Time allowed from connection to Hello, in ms.
    #[arg(long, env = "CONVENE_HANDSHAKE_TIMEOUT_MS")]
    handshake_timeout_ms: u32 = default::HANDSHAKE_TIMEOUT_MS,
    /// Interval between server Pings, in ms.
    #[arg(long, env = "CONVENE_HEARTBEAT_INTERVAL_MS")]
    heartbeat_interval_ms: u32 = default::HEARTBEAT_INTERVAL_MS,
    /// Silence after which a connection is closed, in ms.
    #[arg(long, env = "CONVENE_IDLE_TIMEOUT_MS")]
    idle_timeout_ms: u32 = default::IDLE_TIMEOUT_MS,
    /// Continuous queue overflow after which a subscriber is disconnected, in ms.
    #[arg(long, env = "CONVENE_SLOW_CONSUMER_MS")]
    slow_consumer_ms: u32 = default::SLOW_CONSUMER_MS,
    /// Most media bytes queued per subscriber.
    #[arg(long, env = "CONVENE_MAX_QUEUE_BYTES")]
    max_queue_bytes: usize = default::SUBSCRIBER_QUEUE_BYTES as usize,
    /// Wait this long after the first queued frame before writing, to send several in one write, in ms (0 to 5).
    #[arg(long, env = "CONVENE_COALESCE_MS")]
    coalesce_ms: u32 = 0,
    /// Time given to sessions to drain on shutdown, in ms.
    #[arg(long, env = "CONVENE_SHUTDOWN_GRACE_MS")]
    shutdown_grace_ms: u32 = 5_000,
    /// Deliberately break the server, to show the conformance suite catches it (tests only).
    #[arg(long, hide = true, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    test_fault: Option<Fault>,
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

/// Shortest webhook secret accepted, in bytes.
pub const MIN_WEBHOOK_SECRET: usize = 16;

/// Longest webhook URL accepted, in bytes.
pub const MAX_WEBHOOK_URL: usize = 2_048;

/// Most webhook URLs.
pub const MAX_WEBHOOK_URLS: usize = 16;

/// A webhook URL: http:// or https://, with a host.
fn check_webhook_url(url: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::Invalid(format!("webhook URL {url:?}: {why}"));
    if url.len() > MAX_WEBHOOK_URL {
        return Err(bad(&format!("longer than {MAX_WEBHOOK_URL} bytes")));
    }
    let uri: hyper::Uri = url.parse().map_err(|e| bad(&format!("not a URL ({e})")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("must start with http:// or https://"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    Ok(())
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
        let given = toml::Table::try_from(&cli.settings).map_err(|e| ConfigError::Parse {
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
        if self.e2ee_announce_timeout_ms < 1_000 {
            return Err(ConfigError::Invalid(format!(
                "e2ee_announce_timeout_ms {}: at least 1000, so a client has time to announce its key",
                self.e2ee_announce_timeout_ms
            )));
        }
        if self.webhook_urls.len() > MAX_WEBHOOK_URLS {
            return Err(ConfigError::Invalid(format!(
                "{} webhook URLs: at most {MAX_WEBHOOK_URLS}",
                self.webhook_urls.len()
            )));
        }
        for url in &self.webhook_urls {
            check_webhook_url(url)?;
        }
        if !self.webhook_urls.is_empty() && self.webhook_secret_file.is_none() {
            return Err(ConfigError::Invalid(
                "webhook_urls without webhook_secret_file: receivers need the secret to check \
                 that events come from this server (e.g. `openssl rand -hex 32 > FILE`)"
                    .into(),
            ));
        }
        if self.webhook_max_pending == 0 || self.webhook_backoff_max_ms < 1_000 {
            return Err(ConfigError::Invalid(format!(
                "webhook_max_pending = {} (at least 1), webhook_backoff_max_ms = {} (at least 1000)",
                self.webhook_max_pending, self.webhook_backoff_max_ms
            )));
        }
        if self.test_fault.is_some() && !cfg!(feature = "test-hooks") {
            return Err(ConfigError::Invalid(
                "test_fault works only in a server built with the test-hooks feature (tests build it so); \
                 this build has no test hooks"
                    .into(),
            ));
        }
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
            "max_recorders",
            self.max_recorders,
            max::MAX_RECORDERS_PER_NODE,
        )?;
        over(
            "recorder_starts_per_minute",
            self.recorder_starts_per_minute,
            max::RECORDER_STARTS_PER_MINUTE,
        )?;
        if self.recorder_command.is_some() != self.recordings_dir.is_some() {
            return Err(ConfigError::Invalid(
                "recording needs both --recorder-command and --recordings-dir".into(),
            ));
        }
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
        if self.admin_tls_cert.is_some() != self.admin_tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "admin_tls_cert and admin_tls_key go together".into(),
            ));
        }
        if self.admin_client_ca.is_some() && self.admin_tls_cert.is_none() {
            return Err(ConfigError::Invalid(
                "admin_client_ca needs TLS on the admin API: give admin_tls_cert and admin_tls_key"
                    .into(),
            ));
        }
        if self.admin() && !self.admin_tls() && !self.admin_listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "admin_listen {}: without TLS the admin API speaks plain HTTP and listens on \
                 loopback only; give --admin-tls-cert and --admin-tls-key (and --admin-client-ca \
                 for mutual TLS) to listen there, or reach a loopback listener through an SSH \
                 tunnel or `kubectl port-forward`",
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

    /// True when the admin API speaks TLS (--admin-tls-cert and --admin-tls-key).
    pub fn admin_tls(&self) -> bool {
        self.admin_tls_cert.is_some() && self.admin_tls_key.is_some()
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

    /// The secret webhooks are signed with, when webhooks are configured.
    pub fn load_webhook_secret(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = &self.webhook_secret_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let secret = text.trim().as_bytes().to_vec();
        if secret.len() < MIN_WEBHOOK_SECRET {
            return Err(ConfigError::Invalid(format!(
                "the webhook secret in {} has {} bytes; use at least {MIN_WEBHOOK_SECRET} (e.g. `openssl rand -hex 32`)",
                path.display(),
                secret.len()
            )));
        }
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
    use clap::CommandFactory;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("convene-server").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn test_faults_exist_only_in_builds_with_test_hooks() {
        let faulty = Config {
            test_fault: Some(Fault::TamperMedia),
            ..Config::default()
        };
        let checked = faulty.validate();
        if cfg!(feature = "test-hooks") {
            assert!(checked.is_ok(), "{checked:?}");
        } else {
            let e = checked.expect_err("a release build must refuse --test-fault");
            assert!(e.to_string().contains("test-hooks"), "{e}");
        }
        assert!(Config::default().validate().is_ok());
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
    fn webhooks_need_http_urls_and_a_long_enough_secret() {
        let dir = std::env::temp_dir().join(format!("convene-config-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "0123456789abcdef\n").unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "0123456789abcde\n").unwrap();
        let (g, s) = (good.to_str().unwrap(), short.to_str().unwrap());
        let c = Config::load(&cli(&[
            "--webhook-url",
            "https://hooks.example/in,http://127.0.0.1:9/x",
            "--webhook-secret-file",
            g,
        ]))
        .unwrap();
        assert_eq!(c.webhook_urls.len(), 2);
        assert_eq!(c.load_webhook_secret().unwrap().unwrap().len(), 16);
        let e = Config::load(&cli(&["--webhook-url", "https://hooks.example/in"])).unwrap_err();
        assert!(e.to_string().contains("webhook_secret_file"), "{e}");
        for bad in ["ftp://hooks.example/", "hooks.example/in", "http:///x", ""] {
            let e = Config::load(&cli(&["--webhook-url", bad, "--webhook-secret-file", g]));
            assert!(e.is_err(), "{bad:?}");
        }
        let c = Config::load(&cli(&[
            "--webhook-url",
            "https://hooks.example/in",
            "--webhook-secret-file",
            s,
        ]))
        .unwrap();
        let e = c.load_webhook_secret().unwrap_err();
        assert!(e.to_string().contains("at least 16"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
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

    /// The `[default: …]` parts of a flag's help.
    fn shown_defaults(help: &str) -> Vec<&str> {
        help.split("[default: ")
            .skip(1)
            .map(|rest| rest.split_once(']').expect("`[default: …]` is closed").0)
            .collect()
    }

    #[test]
    fn help_shows_the_real_defaults() {
        let defaults = Config::default();
        assert_eq!(Config::load(&cli(&[])).unwrap(), defaults);
        let printed: toml::Table = toml::from_str(&defaults.to_toml()).unwrap();
        let mut command = Cli::command();
        let help = command.render_long_help().to_string();
        let (mut values, mut described) = (0, 0);
        for arg in command.get_arguments() {
            let (id, Some(long)) = (arg.get_id().as_str(), arg.get_long()) else {
                continue;
            };
            let text = (arg.get_long_help().or(arg.get_help()))
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                arg.is_hide_set() || help.contains(&text),
                "--{long}: --help shows {text:?}"
            );
            let shown = shown_defaults(&text);
            assert!(shown.len() <= 1, "--{long} shows defaults {shown:?}");
            match (shown.first(), printed.get(id)) {
                (Some(shown), Some(value)) => {
                    // A value: as --print-config shows it, and giving it
                    // changes nothing.
                    let printed = match value {
                        toml::Value::String(s) => s.clone(),
                        v => v.to_string(),
                    };
                    assert_eq!(*shown, printed, "--{long}: help and --print-config");
                    let given = Config::load(&cli(&[&format!("--{long}"), shown]))
                        .unwrap_or_else(|e| panic!("--{long} {shown}: {e}"));
                    assert_eq!(given, defaults, "--{long} {shown} is not the default");
                    values += 1;
                }
                (Some(shown), None) => {
                    // Unset by default, and the words say what that means:
                    // they must not read as a value of the flag.
                    let as_value = ["convene-server", &format!("--{long}"), shown];
                    assert!(
                        Cli::try_parse_from(as_value).is_err(),
                        "--{long} is unset by default, yet shows the value {shown:?}"
                    );
                    described += 1;
                }
                (None, Some(value)) => assert!(
                    *value == toml::Value::Boolean(false)
                        || value.as_array().is_some_and(|a| a.is_empty()),
                    "--{long} shows no default, but it is {value}"
                ),
                (None, None) => {}
            }
        }
        assert!(
            values >= 30 && described >= 3,
            "{values} values, {described} described"
        );
        // Every key --print-config shows is a flag.
        for key in printed.keys() {
            assert!(
                command.get_arguments().any(|a| a.get_id() == key.as_str()),
                "{key} has no flag"
            );
        }
    }

    #[test]
    fn ad_hoc_meetings_are_on_unless_turned_off() {
        assert!(Config::load(&cli(&[])).unwrap().ad_hoc_meetings);
        assert!(
            Config::load(&cli(&["--ad-hoc-meetings"]))
                .unwrap()
                .ad_hoc_meetings
        );
        for off in [
            &["--ad-hoc-meetings=false"][..],
            &["--ad-hoc-meetings", "false"],
        ] {
            assert!(!Config::load(&cli(off)).unwrap().ad_hoc_meetings, "{off:?}");
        }
    }

    #[test]
    fn a_non_loopback_admin_listener_needs_tls() {
        let plain = Config::load(&cli(&[
            "--admin-token=0123456789abcdef",
            "--admin-listen=0.0.0.0:9444",
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            plain.contains("loopback only") && plain.contains("--admin-tls-cert"),
            "{plain}"
        );
        let tls = Config::load(&cli(&[
            "--admin-token=0123456789abcdef",
            "--admin-listen=0.0.0.0:9444",
            "--admin-tls-cert=cert.pem",
            "--admin-tls-key=key.pem",
            "--admin-client-ca=ca.pem",
        ]))
        .unwrap();
        assert!(tls.admin_tls());
        let half = Config {
            admin_client_ca: Some("ca.pem".into()),
            ..Config::default()
        };
        let e = half.validate().unwrap_err().to_string();
        assert!(e.contains("admin_client_ca needs TLS"), "{e}");
    }

    #[test]
    fn printed_settings_load_back_as_the_file() {
        let given = Config::load(&cli(&[
            "--listen=127.0.0.1:8443",
            "--webtransport-listen=127.0.0.1:4433",
            "--dev-tls",
            "--auth-secret-file=/run/secret",
            "--auth-jwks-url=https://issuer.example/jwks",
            "--auth-jwks-refresh-s=60",
            "--auth-issuer=issuer",
            "--auth-audience=audience",
            "--admin-token-file=/run/admin-token",
            "--admin-listen=127.0.0.1:9555",
            "--admin-tls-cert=admin-cert.pem",
            "--admin-tls-key=admin-key.pem",
            "--admin-client-ca=admin-ca.pem",
            "--metrics-listen=127.0.0.1:9090",
            "--bus=nats://a:4222,nats://b:4222",
            "--node-id=9",
            "--node-timeout-ms=4000",
            "--bus-creds=/run/nats.creds",
            "--bus-tls-ca=ca.pem",
            "--bus-tls-cert=cert.pem",
            "--bus-tls-key=key.pem",
            "--web-dir=web",
            "--login-url=https://login.example/",
            "--log-format=json",
            "--log=debug",
            "--waiting-room=lobby",
            "--waiting-room=vip-*,team",
            "--ad-hoc-meetings=false",
            "--data-dir=/var/lib/convene",
            "--worker-threads=3",
            "--busy-cpu-percent=80",
            "--busy-queue-delay-ms=200",
            "--busy-egress-mbps=900",
            "--max-connections=99",
            "--max-connections-per-ip=9",
            "--max-handshaking-connections=77",
            "--max-handshaking-per-ip=7",
            "--http-header-timeout-ms=1234",
            "--max-rooms=5",
            "--max-participants-per-room=50",
            "--max-tracks-per-participant=4",
            "--max-concurrent-streams=20",
            "--max-frame-bytes=100000",
            "--max-ingress-kbps=4000",
            "--control-messages-per-second=20",
            "--control-burst=40",
            "--relay-bytes-per-second=1000",
            "--room-relay-bytes-per-second=4000",
            "--handshake-timeout-ms=3000",
            "--heartbeat-interval-ms=4000",
            "--idle-timeout-ms=12000",
            "--slow-consumer-ms=3000",
            "--max-queue-bytes=100000",
            "--coalesce-ms=2",
            "--shutdown-grace-ms=1000",
            "--test-fault=tamper-media",
        ]))
        .unwrap();
        assert_ne!(given, Config::default());
        let dir = std::env::temp_dir().join(format!("convene-config-back-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("printed.toml");
        std::fs::write(&file, given.to_toml()).unwrap();
        let back = Config::load(&cli(&["--config", file.to_str().unwrap()])).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(back, given, "{}", given.to_toml());
    }
}
