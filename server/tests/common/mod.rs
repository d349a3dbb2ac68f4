//! A small WebSocket test client for the server's integration tests.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use bytes::Bytes;
use convene_protocol::v1::{
    self, ClientMessage, ServerMessage, client_message::Msg as C, server_message::Msg as S,
};
use convene_protocol::{Frame, MediaFrame, decode_frame, encode_control};
use convene_server::config::Config;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

pub mod managed;

/// Any byte stream a test client runs WebSocket over: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Generous: these tests wait for conditions, never for luck.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A server on a free loopback port with quick timers.
pub async fn server(tweak: impl FnOnce(&mut Config)) -> convene_server::Server {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        handshake_timeout_ms: 2_000,
        heartbeat_interval_ms: 1_000,
        idle_timeout_ms: 3_000,
        shutdown_grace_ms: 2_000,
        ..Config::default()
    };
    tweak(&mut config);
    convene_server::start(config).await.expect("server starts")
}

/// What a client saw.
#[derive(Debug)]
pub enum Seen {
    Control(S),
    Media(MediaFrame),
    Closed(Option<u16>),
}

pub struct Client {
    pub ws: WebSocketStream<Box<dyn Io>>,
    pub id: u32,
}

impl Client {
    pub async fn connect(server: &convene_server::Server) -> Client {
        Client::connect_addr(server.addr).await
    }

    /// Connects over plain WebSocket to a server at `addr` (e.g. one running
    /// as its own process).
    pub async fn connect_addr(addr: std::net::SocketAddr) -> Client {
        let tcp: Box<dyn Io> = Box::new(TcpStream::connect(addr).await.expect("connects"));
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/convene/ws"), tcp)
            .await
            .expect("upgrades");
        Client { ws, id: 0 }
    }

    /// Connects over TLS to a `--dev-tls` server, trusting only its published hash.
    pub async fn connect_tls(server: &convene_server::Server) -> Client {
        let hash = hex::decode(server.cert_sha256.as_ref().expect("TLS is on")).unwrap();
        let tls: Box<dyn Io> = Box::new(
            tls::connect(server.addr, hash)
                .await
                .expect("TLS handshake"),
        );
        let url = format!("wss://localhost:{}/convene/ws", server.addr.port());
        let (ws, _) = tokio_tungstenite::client_async(url, tls)
            .await
            .expect("upgrades");
        Client { ws, id: 0 }
    }

    /// Connects, says Hello and joins `meeting`.
    pub async fn joined(
        server: &convene_server::Server,
        meeting: &str,
        subscribe_all: bool,
    ) -> Client {
        Client::connect(server)
            .await
            .hello_join(meeting, subscribe_all)
            .await
    }

    /// Connects over TLS (wss), says Hello and joins `meeting`.
    pub async fn joined_tls(
        server: &convene_server::Server,
        meeting: &str,
        subscribe_all: bool,
    ) -> Client {
        Client::connect_tls(server)
            .await
            .hello_join(meeting, subscribe_all)
            .await
    }

    /// Connects, says Hello offering selective forwarding (`sfu.1`,
    /// PROTOCOL.md §6.6) and joins `meeting`.
    pub async fn joined_sfu(
        server: &convene_server::Server,
        meeting: &str,
        subscribe_all: bool,
    ) -> Client {
        Client::connect(server)
            .await
            .hello_join_with(meeting, subscribe_all, &["sfu.1"])
            .await
    }

    /// As [`Client::joined_sfu`], to a server at `addr` (a node of a cluster).
    pub async fn joined_sfu_addr(
        addr: std::net::SocketAddr,
        meeting: &str,
        subscribe_all: bool,
    ) -> Client {
        Client::connect_addr(addr)
            .await
            .hello_join_with(meeting, subscribe_all, &["sfu.1"])
            .await
    }

    /// Says Hello, notes the participant id, and joins `meeting`.
    async fn hello_join(self, meeting: &str, subscribe_all: bool) -> Client {
        self.hello_join_with(meeting, subscribe_all, &[]).await
    }

    /// Says Hello offering `features`, notes the participant id, and joins `meeting`.
    async fn hello_join_with(
        mut self,
        meeting: &str,
        subscribe_all: bool,
        features: &[&str],
    ) -> Client {
        let c = &mut self;
        c.send(C::Hello(v1::Hello {
            versions: vec![1],
            features: features.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        }))
        .await;
        let w = c.expect(|m| matches!(m, S::Welcome(_))).await;
        let S::Welcome(w) = w else { unreachable!() };
        c.id = w.participant_id;
        c.send(C::Join(v1::Join {
            meeting_id: meeting.into(),
            display_name: format!("p{}", c.id),
            subscribe_all,
        }))
        .await;
        c.expect(|m| matches!(m, S::Joined(_))).await;
        self
    }

    pub async fn send(&mut self, msg: C) {
        self.send_raw(encode_control(&ClientMessage {
            request_id: 0,
            msg: Some(msg),
        }))
        .await;
    }

    pub async fn send_raw(&mut self, frame: Bytes) {
        self.ws.send(Message::Binary(frame)).await.expect("send");
    }

    pub async fn feed_raw(&mut self, frame: Bytes) {
        self.ws.feed(Message::Binary(frame)).await.expect("feed");
    }

    pub async fn flush(&mut self) {
        self.ws.flush().await.expect("flush");
    }

    /// The next thing received, answering Pings on the way; None at the deadline.
    pub async fn next(&mut self) -> Option<Seen> {
        loop {
            let msg = tokio::time::timeout(DEADLINE, self.ws.next()).await.ok()?;
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    let whole = b.clone();
                    match decode_frame::<ServerMessage>(b, 1 << 21).expect("server frames decode") {
                        Frame::Control(ServerMessage {
                            msg: Some(S::Ping(p)),
                        }) => {
                            self.send(C::Pong(v1::Pong {
                                timestamp_us: p.timestamp_us,
                            }))
                            .await;
                        }
                        Frame::Control(m) => return m.msg.map(Seen::Control),
                        Frame::Media(m) => return Some(Seen::Media(m)),
                        // LAYERED (§6.6.2), sent only to sessions that offered sfu.1.
                        Frame::Extension(0x80) => {
                            let m = MediaFrame::parse_any(whole).expect("LAYERED frames parse");
                            return Some(Seen::Media(m));
                        }
                        Frame::Extension(_) => {}
                    }
                }
                Some(Ok(Message::Close(f))) => return Some(Seen::Closed(f.map(|f| f.code.into()))),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Some(Seen::Closed(None)),
            }
        }
    }

    /// Waits for a control message matching `pred`, skipping others, for
    /// at most [`DEADLINE`] in all (Pings keep arriving, so each wait alone
    /// would never time out).
    pub async fn expect(&mut self, pred: impl Fn(&S) -> bool) -> S {
        let waited = tokio::time::timeout(DEADLINE, async {
            loop {
                match self.next().await {
                    Some(Seen::Control(m)) if pred(&m) => return m,
                    Some(Seen::Closed(code)) => panic!("closed ({code:?}) while waiting"),
                    None => panic!("nothing matching arrived before the deadline"),
                    _ => {}
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| panic!("nothing matching arrived within {DEADLINE:?}"))
    }

    /// Waits for the connection to close; returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Some(Seen::Closed(code)) => return code,
                None => panic!("the connection did not close"),
                _ => {}
            }
        }
    }
}

/// Publish for a track of `kind` (the codec string is arbitrary: the server
/// only checks its form).
pub fn publish(track_id: u32, kind: v1::TrackKind) -> C {
    C::Publish(v1::Publish {
        track: Some(v1::TrackInfo {
            track_id,
            kind: kind as i32,
            codec: "vp8".into(),
            ..Default::default()
        }),
    })
}

/// A raw HTTP GET on loopback, for health and metrics endpoints.
/// Waits until `server`'s `/readyz` answers 200 (a cluster node has its bus).
pub async fn wait_ready(server: &convene_server::Server) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while http_get(server, "/readyz").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never ready",
            server.addr
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn http_get(server: &convene_server::Server, path: &str) -> (u16, String) {
    http_get_addr(server.addr, path).await
}

/// [`http_get`] for a server at `addr`.
pub async fn http_get_addr(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// A TLS client that trusts exactly one certificate, by its SHA-256, as
/// browsers do with WebTransport's `serverCertificateHashes`: the Rust
/// client's own pinning verifier.
pub mod tls {
    /// TLS to `addr`, trusting only the certificate whose SHA-256 is `sha256`.
    pub async fn connect(
        addr: std::net::SocketAddr,
        sha256: Vec<u8>,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, std::io::Error> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        convene_client::tls::connect(tcp, "localhost", Some(sha256)).await
    }
}

/// A real `nats-server` on a free loopback port, stopped when dropped.
pub mod nats {
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    /// Where the Debian package puts it (`cargo xtask test` installs it).
    const BINARIES: &[&str] = &[
        "nats-server",
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
    ];

    pub struct NatsServer {
        child: Option<Child>,
        pub port: u16,
    }

    impl NatsServer {
        /// Starts one on a free port and waits until it accepts connections.
        pub fn start() -> NatsServer {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            NatsServer::start_on(port)
        }

        /// Starts one on `port` (again, after [`NatsServer::stop`]).
        pub fn start_on(port: u16) -> NatsServer {
            NatsServer::start_with(port, &[])
        }

        /// Starts one on a free port with more flags (e.g. `--auth TOKEN`).
        pub fn start_args(extra: &[&str]) -> NatsServer {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            NatsServer::start_with(port, extra)
        }

        fn start_with(port: u16, extra: &[&str]) -> NatsServer {
            let child = BINARIES
                .iter()
                .find_map(|b| {
                    // The example configuration, on a loopback port.
                    Command::new(b)
                        .arg("-c")
                        .arg(concat!(
                            env!("CARGO_MANIFEST_DIR"),
                            "/../deploy/cluster/nats-server.conf"
                        ))
                        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                        .args(extra)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .ok()
                })
                .expect(
                    "nats-server is not installed: `cargo xtask test` installs the Debian \
                     package, or run `apt-get install -y nats-server`",
                );
            let deadline = Instant::now() + super::DEADLINE;
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "nats-server did not start on {port}"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            NatsServer {
                child: Some(child),
                port,
            }
        }

        pub fn url(&self) -> String {
            format!("nats://127.0.0.1:{}", self.port)
        }

        /// Kills it and waits until the port is free.
        pub fn stop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    impl Drop for NatsServer {
        fn drop(&mut self) {
            self.stop();
        }
    }
}

/// `convene-server` as its own process, so a test can kill it outright,
/// read its memory or starve it of descriptors.
pub mod process {
    use std::io::{BufRead, BufReader};
    use std::net::SocketAddr;
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex};

    pub struct Node {
        child: Child,
        pub addr: SocketAddr,
        /// Every line it logged (the first 100,000) and how many in all.
        log: Arc<Mutex<(Vec<String>, usize)>>,
    }

    impl Node {
        /// Starts the binary with `args` on a free loopback port and reads
        /// the bound address from its log.
        pub fn start(args: &[&str]) -> Node {
            Node::start_limited(args, None)
        }

        /// [`Node::start`] with at most `nofile` open descriptors (via util-linux's `prlimit`).
        pub fn start_limited(args: &[&str], nofile: Option<u32>) -> Node {
            let bin = env!("CARGO_BIN_EXE_convene-server");
            let mut cmd = match nofile {
                Some(n) => {
                    let mut c = Command::new("prlimit");
                    c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin);
                    c
                }
                None => Command::new(bin),
            };
            let mut child = cmd
                .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("convene-server starts");
            let out = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let log = Arc::new(Mutex::new((Vec::new(), 0usize)));
            let kept = log.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(addr) = line
                        .split("serving on http")
                        .nth(1)
                        .map(|r| r.trim_start_matches('s').trim_start_matches("://"))
                        .and_then(|r| r.split([' ', '"']).next())
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(addr);
                    }
                    let mut log = kept.lock().unwrap();
                    log.1 += 1;
                    if log.0.len() < 100_000 {
                        log.0.push(line);
                    }
                }
            });
            let addr = rx
                .recv_timeout(super::DEADLINE)
                .expect("convene-server logs its address");
            Node { child, addr, log }
        }

        /// The first line logged so far that contains `needle`.
        pub fn log_find(&self, needle: &str) -> Option<String> {
            let log = self.log.lock().unwrap();
            log.0.iter().find(|l| l.contains(needle)).cloned()
        }

        /// Lines logged so far that contain `needle`, and lines logged in all.
        pub fn log_lines(&self, needle: &str) -> (usize, usize) {
            let log = self.log.lock().unwrap();
            (log.0.iter().filter(|l| l.contains(needle)).count(), log.1)
        }

        /// The server's resident memory now, in KiB (the process itself,
        /// not `prlimit`, which execs it).
        pub fn rss_kib(&self) -> u64 {
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
                .expect("the server is running");
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .expect("VmRSS in /proc/PID/status")
        }

        /// SIGKILL: no goodbyes, no leave messages.
        pub fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for Node {
        fn drop(&mut self) {
            self.kill();
        }
    }
}

/// Raw sockets for attacks: many source addresses on loopback (Linux
/// routes all of 127.0.0.0/8 to itself), a WebSocket upgrade by hand, and
/// client frames built byte by byte.
pub mod raw {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    /// The `n`th attacker address, 127.0.0.(n+2) (127.0.0.1 is for honest clients).
    pub fn source(n: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, (n / 250) as u8, (n % 250 + 2) as u8))
    }

    /// A TCP connection to `to` from address `from`.
    pub async fn tcp_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
        let s = TcpSocket::new_v4()?;
        s.bind(SocketAddr::new(from, 0))?;
        s.connect(to).await
    }

    /// Upgrades `tcp` to WebSocket at /convene/ws; false if the server refused.
    pub async fn upgrade(tcp: &mut TcpStream, host: SocketAddr) -> bool {
        let req = format!(
            "GET /convene/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        if tcp.write_all(req.as_bytes()).await.is_err() {
            return false;
        }
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match tcp.read(&mut b).await {
                Ok(1) => head.push(b[0]),
                _ => return false,
            }
        }
        head.starts_with(b"HTTP/1.1 101")
    }

    /// A client frame header (masked with a zero key, so the body goes as is).
    pub fn frame_header(opcode: u8, len: u64) -> Vec<u8> {
        let mut h = vec![0x80 | opcode];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xffff => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        h.extend_from_slice(&[0; 4]);
        h
    }

    /// Reads server frames until a close frame; returns the error codes of
    /// the Error frames seen and the close code, or None if the connection
    /// ended without a close frame.
    pub async fn read_until_close<R: tokio::io::AsyncRead + Unpin>(
        tcp: &mut R,
    ) -> (Vec<i32>, Option<u16>) {
        use convene_protocol::v1::server_message::Msg as S;
        let mut errors = Vec::new();
        loop {
            let mut h = [0u8; 2];
            if tcp.read_exact(&mut h).await.is_err() {
                return (errors, None);
            }
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    if tcp.read_exact(&mut l).await.is_err() {
                        return (errors, None);
                    }
                    u16::from_be_bytes(l) as usize
                }
                127 => {
                    let mut l = [0u8; 8];
                    if tcp.read_exact(&mut l).await.is_err() {
                        return (errors, None);
                    }
                    u64::from_be_bytes(l) as usize
                }
                n => n as usize,
            };
            let mut body = vec![0u8; len];
            if tcp.read_exact(&mut body).await.is_err() {
                return (errors, None);
            }
            match h[0] & 0x0f {
                8 => {
                    return (
                        errors,
                        (body.len() >= 2).then(|| u16::from_be_bytes([body[0], body[1]])),
                    );
                }
                2 => {
                    if let Ok(convene_protocol::Frame::Control(m)) =
                        convene_protocol::decode_frame::<convene_protocol::v1::ServerMessage>(
                            bytes::Bytes::from(body),
                            usize::MAX,
                        )
                        && let Some(S::Error(e)) = m.msg
                    {
                        errors.push(e.code);
                    }
                }
                _ => {}
            }
        }
    }
}

/// A real PostgreSQL (the Debian package's binaries) in a temporary
/// directory, on a free loopback port, stopped and removed when dropped.
#[allow(dead_code)]
pub mod postgres {
    use std::os::unix::process::CommandExt;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    pub struct Postgres {
        child: Option<Child>,
        dir: PathBuf,
        pub port: u16,
    }

    /// The newest installed server's binaries (`cargo xtask test` installs
    /// the Debian package `postgresql`).
    fn bin_dir() -> PathBuf {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .expect(
                "PostgreSQL is not installed: `cargo xtask test` installs the Debian package, \
                 or run `apt-get install -y postgresql`",
            )
            .filter_map(|e| {
                let e = e.ok()?;
                let v = e.file_name().to_str()?.parse().ok()?;
                Some((v, e.path().join("bin")))
            })
            .filter(|(_, p)| p.join("initdb").exists())
            .collect();
        versions.sort();
        versions
            .pop()
            .expect("no PostgreSQL server in /usr/lib/postgresql")
            .1
    }

    /// A number printed by `id` for the `postgres` user.
    fn id_of(flag: &str) -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// Runs as the `postgres` user when we are root: PostgreSQL refuses root.
    fn as_owner(mut c: Command) -> Command {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if root {
            c.uid(id_of("-u")).gid(id_of("-g"));
        }
        c
    }

    impl Postgres {
        /// Creates a database cluster and starts its server; returns once it takes connections.
        pub fn start() -> Postgres {
            Postgres::start_inner(None)
        }

        /// [`Postgres::start`], serving TLS too (`ssl = on`) with the PEM
        /// certificate chain and key at `cert` and `key`.
        pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Postgres {
            Postgres::start_inner(Some((cert, key)))
        }

        fn start_inner(tls: Option<(&std::path::Path, &std::path::Path)>) -> Postgres {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let dir =
                std::env::temp_dir().join(format!("convene-pg-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let root = Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
            if root {
                let st = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&dir)
                    .status()
                    .unwrap();
                assert!(st.success(), "chown of {}", dir.display());
            }
            let bin = bin_dir();
            let mut init = Command::new(bin.join("initdb"));
            init.arg("-D")
                .arg(dir.join("data"))
                .args(["-U", "convene", "-A", "trust", "-E", "UTF8", "--no-sync"])
                .stdout(Stdio::null());
            let st = as_owner(init).status().expect("initdb runs");
            assert!(st.success(), "initdb failed");
            if let Some((cert, key)) = tls {
                use std::io::Write;
                use std::os::unix::fs::PermissionsExt;
                let data = dir.join("data");
                std::fs::copy(cert, data.join("server.crt")).unwrap();
                std::fs::copy(key, data.join("server.key")).unwrap();
                // PostgreSQL refuses a key others may read.
                std::fs::set_permissions(
                    data.join("server.key"),
                    std::fs::Permissions::from_mode(0o600),
                )
                .unwrap();
                if root {
                    let st = Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(data.join("server.crt"))
                        .arg(data.join("server.key"))
                        .status()
                        .unwrap();
                    assert!(st.success(), "chown of the TLS files");
                }
                let mut conf = std::fs::OpenOptions::new()
                    .append(true)
                    .open(data.join("postgresql.conf"))
                    .unwrap();
                writeln!(conf, "ssl = on").unwrap();
            }
            let mut pg = Postgres {
                child: None,
                dir,
                port,
            };
            pg.run();
            pg
        }

        /// Starts the server on the cluster and port, and waits until it takes connections.
        fn run(&mut self) {
            let bin = bin_dir();
            let port = self.port;
            let mut server = Command::new(bin.join("postgres"));
            server
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-p", &port.to_string(), "-k"])
                .arg(&self.dir)
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=50",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            self.child = Some(as_owner(server).spawn().expect("postgres starts"));
            let deadline = Instant::now() + super::DEADLINE;
            loop {
                let ready = Command::new(bin.join("pg_isready"))
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &port.to_string(),
                        "-U",
                        "convene",
                        "-q",
                    ])
                    .status()
                    .is_ok_and(|s| s.success());
                if ready {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "PostgreSQL did not start on {port}"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }

        /// Stops the server (a fast shutdown: connections are cut), keeping its data.
        pub fn stop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let st = Command::new("kill")
                    .args(["-INT", &c.id().to_string()])
                    .status()
                    .unwrap();
                assert!(st.success(), "kill -INT postgres");
                let _ = c.wait();
            }
        }

        /// Starts the stopped server again, with the same data and port.
        pub fn restart(&mut self) {
            assert!(self.child.is_none(), "stop it first");
            self.run();
        }

        /// The connection string of its `postgres` database.
        pub fn url(&self) -> String {
            format!("postgres://convene@127.0.0.1:{}/postgres", self.port)
        }
    }

    impl Drop for Postgres {
        fn drop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
