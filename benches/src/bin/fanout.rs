//! End-to-end fan-out over loopback WebSocket, with the raw-write floor
//! measured in the same run.
//!
//! `fanout ws`: starts `convene-server` as a child process, joins one
//! publisher and N subscribers from this process, publishes video and audio
//! at the given rates, and reports the server's CPU time per delivered frame
//! (from `/proc/<pid>/stat`), delivered frames per second, and latency
//! percentiles (capture timestamp to receipt).
//!
//! `fanout floor`: a child process that writes the same frames to N plain
//! TCP connections, one `write` per frame (or `--batch` frames per write):
//! the cost any server pays to put those bytes on loopback sockets.
//!
//! `fanout compare`: both, and the ratio.

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use convene_protocol::v1::{
    self, ClientMessage, ServerMessage, TrackInfo, TrackKind, client_message::Msg as C,
    server_message::Msg as S,
};
use convene_protocol::{Frame, MediaFrame, MediaHeader, decode_frame, encode_control};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Clone, Debug)]
#[command(about = "End-to-end fan-out benchmark over loopback, with its raw-write floor")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Args, Clone, Debug)]
struct Load {
    /// Subscribers.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Seconds to measure (after a one-second warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    video_fps: u32,
    /// Video frame payload bytes.
    #[arg(long, default_value_t = 2000)]
    video_bytes: usize,
    /// Audio frames per second.
    #[arg(long, default_value_t = 50)]
    audio_fps: u32,
    /// Audio frame payload bytes.
    #[arg(long, default_value_t = 100)]
    audio_bytes: usize,
    /// Server write coalescing, in ms.
    #[arg(long, default_value_t = 0)]
    coalesce_ms: u32,
    /// The server binary.
    #[arg(long, default_value = "target/release/convene-server")]
    server_bin: String,
    /// Frames per write in the floor.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Clone, Debug)]
enum Mode {
    /// Through convene-server over WebSocket.
    Ws(Load),
    /// The raw-write floor.
    Floor(Load),
    /// Both, and the ratio.
    Compare(Load),
    /// The raw-UDP floor, the yardstick for WebTransport: one `send_to` per
    /// packet of at most 1200 bytes (QUIC's usual size) to each subscriber's
    /// own UDP socket; compare with `convene load --transport wt --server-pid`.
    UdpFloor(Load),
    /// (internal) the UDP floor's writer process; `--targets` lists the ports.
    UdpFloorWriter {
        #[arg(long)]
        targets: std::path::PathBuf,
        #[command(flatten)]
        load: Load,
    },
    /// Meeting shape: every participant publishes audio, the first `--video-publishers` also video, everyone receives everything.
    Meeting {
        /// Participants that publish video too.
        #[arg(long, default_value_t = 10)]
        video_publishers: usize,
        #[command(flatten)]
        load: Load,
    },
    /// One meeting over two nodes joined by a real nats-server: the publisher
    /// on node A, subscribers alternating between A and B; compared with the
    /// same load on one node.
    Cluster {
        /// The nats-server binary (Debian package `nats-server`).
        #[arg(long, default_value = "nats-server")]
        nats_bin: String,
        #[command(flatten)]
        load: Load,
    },
    /// Server memory per idle, joined participant (`--subscribers` of them).
    Idle(Load),
    /// QUIC's own cost per delivered frame (quinn-proto, in memory, virtual
    /// clock, no sockets or tasks): what WebTransport fan-out pays on top of
    /// the raw-UDP floor at the least.
    QuicCore(Load),
    /// (internal) the floor's writer process.
    FloorWriter {
        #[arg(long)]
        port: u16,
        #[command(flatten)]
        load: Load,
    },
}

/// What a run measured.
#[derive(Debug, Clone, Copy, Default)]
struct Result {
    delivered: u64,
    cpu_seconds: f64,
    seconds: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    audio_sent: u64,
    audio_received: u64,
    rss_kib: u64,
    /// Server queue delay p50 / p99 bucket bounds, ms.
    queue_p50_ms: f64,
    queue_p99_ms: f64,
}

impl Result {
    fn us_per_frame(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.delivered.max(1) as f64
    }
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds, and its resident set in KiB.
fn proc_cpu(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/<pid>/stat")?;
    let after = &stat[stat.rfind(')').context("stat format")? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    let rss_pages: u64 = f[21].parse()?;
    // Linux reports in clock ticks of 1/100 s on every common configuration.
    Ok((ticks / 100.0, rss_pages * 4))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(port: u16) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listened on port {port} within 30 s")
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The whole reply (status line, headers, body) to a GET on loopback.
fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

/// The cumulative buckets of the server's queue-delay histogram: (upper bound in s, count).
fn queue_delay_buckets(port: u16) -> anyhow::Result<Vec<(f64, f64)>> {
    let text = http_get(port, "/metrics")?;
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("convene_queue_delay_seconds_bucket"))
    {
        let le = line
            .split("le=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("+Inf");
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse()?
        };
        let count: f64 = line.rsplit(' ').next().unwrap_or("0").parse()?;
        out.push((le, count));
    }
    Ok(out)
}

/// The bucket bound under which `p` of the observations between two scrapes fall, in ms.
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], p: f64) -> f64 {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            (
                *le,
                c - before
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0.0, |(_, b)| *b),
            )
        })
        .collect();
    let total = diff.last().map_or(0.0, |(_, c)| *c);
    diff.iter()
        .find(|(_, c)| *c >= total * p)
        .map_or(f64::NAN, |(le, _)| le * 1000.0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Shared counters of the receiving side.
#[derive(Default)]
struct Rx {
    measuring: AtomicBool,
    delivered: AtomicU64,
    audio: AtomicU64,
    latencies: std::sync::Mutex<Vec<u64>>,
}

fn control(msg: C) -> Bytes {
    encode_control(&ClientMessage {
        request_id: 0,
        msg: Some(msg),
    })
}

/// Connects, says Hello and joins the bench meeting.
async fn join(
    url: &str,
    subscribe_all: bool,
) -> anyhow::Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    ws.send(Message::Binary(control(C::Hello(v1::Hello {
        versions: vec![1],
        client_kind: v1::ClientKind::Load as i32,
        ..Default::default()
    }))))
    .await?;
    ws.send(Message::Binary(control(C::Join(v1::Join {
        meeting_id: "bench".into(),
        display_name: "load".into(),
        subscribe_all,
    }))))
    .await?;
    loop {
        let Some(Ok(Message::Binary(b))) = ws.next().await else {
            bail!("connection ended during join")
        };
        if let Ok(Frame::Control(ServerMessage {
            msg: Some(S::Joined(_)),
        })) = decode_frame::<ServerMessage>(b, 1 << 21)
        {
            return Ok(ws);
        }
    }
}

/// Starts the server binary on a free port with limits that do not get in the way.
fn spawn_server(load: &Load) -> anyhow::Result<(Killed, u16)> {
    spawn_server_with(load, &[])
}

/// [`spawn_server`] with more flags (e.g. `--bus`).
fn spawn_server_with(load: &Load, extra: &[&str]) -> anyhow::Result<(Killed, u16)> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(&load.server_bin)
        .args([
            "--listen",
            &listen,
            "--log",
            "warn",
            "--max-connections-per-ip",
            "100000",
            "--max-participants-per-room",
            "100000",
            "--max-ingress-kbps",
            "100000",
            "--coalesce-ms",
            &load.coalesce_ms.to_string(),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with `cargo build --release -p convene-server`)",
                load.server_bin
            )
        })?;
    let server = Killed(child);
    wait_port(port)?;
    Ok((server, port))
}

async fn run_ws(load: &Load) -> anyhow::Result<Result> {
    let node = spawn_server(load)?;
    run_ws_on(load, vec![node]).await
}

/// The `ws` run with subscribers spread over `nodes` in turn and the
/// publisher on the first; CPU is the sum over the nodes.
async fn run_ws_on(load: &Load, nodes: Vec<(Killed, u16)>) -> anyhow::Result<Result> {
    let port = nodes[0].1;
    let urls: Vec<String> = nodes
        .iter()
        .map(|(_, p)| format!("ws://127.0.0.1:{p}/convene/ws"))
        .collect();
    let url = urls[0].clone();
    let cpu_of = |nodes: &[(Killed, u16)]| -> anyhow::Result<(f64, u64)> {
        let mut total = (0.0, 0);
        for (k, _) in nodes {
            let (c, r) = proc_cpu(k.0.id())?;
            total = (total.0 + c, total.1 + r);
        }
        Ok(total)
    };
    let rx = Arc::new(Rx::default());

    let mut tasks = Vec::new();
    for i in 0..load.subscribers {
        let ws = join(&urls[i % urls.len()], true).await?;
        let rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            let mut local = Vec::with_capacity(4096);
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Binary(b) = msg else { continue };
                match decode_frame::<ServerMessage>(b, 1 << 21) {
                    Ok(Frame::Media(m)) if rx.measuring.load(Ordering::Relaxed) => {
                        rx.delivered.fetch_add(1, Ordering::Relaxed);
                        if m.header().track_id == 1 {
                            rx.audio.fetch_add(1, Ordering::Relaxed);
                        }
                        local.push(unix_us().saturating_sub(m.header().capture_timestamp_us));
                        if local.len() >= 4096 {
                            rx.latencies.lock().unwrap().append(&mut local);
                        }
                    }
                    Ok(Frame::Control(ServerMessage {
                        msg: Some(S::Ping(p)),
                    })) => {
                        let _ = sink
                            .send(Message::Binary(control(C::Pong(v1::Pong {
                                timestamp_us: p.timestamp_us,
                            }))))
                            .await;
                    }
                    _ => {}
                }
            }
            rx.latencies.lock().unwrap().append(&mut local);
        }));
    }
    let mut publisher = join(&url, false).await?;
    for (id, kind, codec) in [
        (1, TrackKind::Audio, "opus"),
        (2, TrackKind::Video, "avc1.42E01F"),
    ] {
        publisher
            .send(Message::Binary(control(C::Publish(v1::Publish {
                track: Some(TrackInfo {
                    track_id: id,
                    kind: kind as i32,
                    codec: codec.into(),
                    ..Default::default()
                }),
            }))))
            .await?;
    }
    // Drain what the server sends the publisher (key-frame requests, pings).
    let (mut pub_sink, mut pub_stream) = publisher.split();
    tokio::spawn(async move { while let Some(Ok(_)) = pub_stream.next().await {} });

    let audio_payload = vec![0u8; load.audio_bytes];
    let video_payload = vec![0u8; load.video_bytes];
    let start = Instant::now();
    let warmup = Duration::from_secs(1);
    let total = warmup + Duration::from_secs(load.seconds);
    let (mut next_audio, mut next_video) = (Duration::ZERO, Duration::ZERO);
    let (audio_step, video_step) = (
        Duration::from_secs(1) / load.audio_fps,
        Duration::from_secs(1) / load.video_fps,
    );
    let (mut aseq, mut vseq) = (0u32, 0u32);
    let mut audio_sent = 0u64;
    let mut cpu0 = None;
    let mut buckets0 = Vec::new();
    let mut measure_start = Instant::now();
    loop {
        let t = start.elapsed();
        if t >= total {
            break;
        }
        if t >= warmup && cpu0.is_none() {
            rx.measuring.store(true, Ordering::Relaxed);
            cpu0 = Some(cpu_of(&nodes)?.0);
            buckets0 = queue_delay_buckets(port)?;
            measure_start = Instant::now();
        }
        let next = next_audio.min(next_video);
        if next > t {
            tokio::time::sleep(next - t).await;
            continue;
        }
        if next_audio <= next_video {
            let f = MediaFrame::build(
                &MediaHeader {
                    key: true,
                    sender: 0,
                    track_id: 1,
                    sequence: aseq,
                    capture_timestamp_us: unix_us(),
                },
                None,
                &audio_payload,
            );
            pub_sink.send(Message::Binary(f.into_bytes())).await?;
            aseq += 1;
            if cpu0.is_some() {
                audio_sent += 1;
            }
            next_audio += audio_step;
        } else {
            let key = vseq % 60 == 0;
            let f = MediaFrame::build(
                &MediaHeader {
                    key,
                    sender: 0,
                    track_id: 2,
                    sequence: vseq,
                    capture_timestamp_us: unix_us(),
                },
                None,
                &video_payload,
            );
            pub_sink.send(Message::Binary(f.into_bytes())).await?;
            vseq += 1;
            next_video += video_step;
        }
    }
    // Frames sent in the window may still be in flight: give them a moment, then stop counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (cpu1, rss) = cpu_of(&nodes)?;
    rx.measuring.store(false, Ordering::Relaxed);
    let buckets1 = queue_delay_buckets(port)?;
    let seconds = measure_start.elapsed().as_secs_f64() - 0.2;
    drop(nodes);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let mut lat = std::mem::take(&mut *rx.latencies.lock().unwrap());
    lat.sort_unstable();
    Ok(Result {
        delivered: rx.delivered.load(Ordering::Relaxed),
        cpu_seconds: cpu1 - cpu0.unwrap_or(cpu1),
        seconds,
        p50_ms: percentile(&lat, 0.50),
        p95_ms: percentile(&lat, 0.95),
        p99_ms: percentile(&lat, 0.99),
        max_ms: percentile(&lat, 1.0),
        audio_sent: audio_sent * load.subscribers as u64,
        audio_received: rx.audio.load(Ordering::Relaxed),
        rss_kib: rss,
        queue_p50_ms: bucket_quantile(&buckets0, &buckets1, 0.50),
        queue_p99_ms: bucket_quantile(&buckets0, &buckets1, 0.99),
    })
}

/// Meeting shape: N participants, all publishing audio, V also video, all subscribed to all.
async fn run_meeting(load: &Load, video_publishers: usize) -> anyhow::Result<Result> {
    let (server, port) = spawn_server(load)?;
    let url = format!("ws://127.0.0.1:{port}/convene/ws");
    let rx = Arc::new(Rx::default());
    let sent_audio = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    for _ in 0..load.subscribers {
        conns.push(join(&url, true).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, ws) in conns.into_iter().enumerate() {
        let (mut sink, mut stream) = ws.split();
        let video = i < video_publishers;
        for (id, kind, codec, on) in [
            (1, TrackKind::Audio, "opus", true),
            (2, TrackKind::Video, "avc1.42E01F", video),
        ] {
            if on {
                sink.send(Message::Binary(control(C::Publish(v1::Publish {
                    track: Some(TrackInfo {
                        track_id: id,
                        kind: kind as i32,
                        codec: codec.into(),
                        ..Default::default()
                    }),
                }))))
                .await?;
            }
        }
        let (rx2, stop2, sent2) = (rx.clone(), stop.clone(), sent_audio.clone());
        let load2 = load.clone();
        let (pong_tx, mut pong_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        tasks.push(tokio::spawn(async move {
            let audio_payload = vec![0u8; load2.audio_bytes];
            let video_payload = vec![0u8; load2.video_bytes];
            let start = Instant::now();
            let (mut next_audio, mut next_video) = (
                Duration::ZERO,
                if video { Duration::ZERO } else { Duration::MAX },
            );
            let (audio_step, video_step) = (
                Duration::from_secs(1) / load2.audio_fps,
                Duration::from_secs(1) / load2.video_fps,
            );
            let (mut aseq, mut vseq) = (0u32, 0u32);
            while !stop2.load(Ordering::Relaxed) {
                while let Ok(ts) = pong_rx.try_recv() {
                    let _ = sink
                        .send(Message::Binary(control(C::Pong(v1::Pong {
                            timestamp_us: ts,
                        }))))
                        .await;
                }
                let t = start.elapsed();
                let next = next_audio.min(next_video);
                if next > t {
                    tokio::time::sleep(next - t).await;
                    continue;
                }
                let (track, seq, key, payload) = if next_audio <= next_video {
                    next_audio += audio_step;
                    aseq += 1;
                    if rx2.measuring.load(Ordering::Relaxed) {
                        sent2.fetch_add(1, Ordering::Relaxed);
                    }
                    (1, aseq, true, &audio_payload)
                } else {
                    next_video += video_step;
                    vseq += 1;
                    (2, vseq, vseq % 60 == 1, &video_payload)
                };
                let f = MediaFrame::build(
                    &MediaHeader {
                        key,
                        sender: 0,
                        track_id: track,
                        sequence: seq,
                        capture_timestamp_us: unix_us(),
                    },
                    None,
                    payload,
                );
                if sink.send(Message::Binary(f.into_bytes())).await.is_err() {
                    break;
                }
            }
        }));
        let rx3 = rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut local = Vec::with_capacity(4096);
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Binary(b) = msg else { continue };
                match decode_frame::<ServerMessage>(b, 1 << 21) {
                    Ok(Frame::Media(m)) if rx3.measuring.load(Ordering::Relaxed) => {
                        rx3.delivered.fetch_add(1, Ordering::Relaxed);
                        if m.header().track_id == 1 {
                            rx3.audio.fetch_add(1, Ordering::Relaxed);
                        }
                        local.push(unix_us().saturating_sub(m.header().capture_timestamp_us));
                    }
                    Ok(Frame::Control(ServerMessage {
                        msg: Some(S::Ping(p)),
                    })) => {
                        let _ = pong_tx.send(p.timestamp_us);
                    }
                    _ => {}
                }
            }
            rx3.latencies.lock().unwrap().append(&mut local);
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu0 = proc_cpu(server.0.id())?.0;
    let buckets0 = queue_delay_buckets(port)?;
    rx.measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(load.seconds)).await;
    rx.measuring.store(false, Ordering::Relaxed);
    let (cpu1, rss) = proc_cpu(server.0.id())?;
    let seconds = t0.elapsed().as_secs_f64();
    let buckets1 = queue_delay_buckets(port)?;
    stop.store(true, Ordering::Relaxed);
    drop(server);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let mut lat = std::mem::take(&mut *rx.latencies.lock().unwrap());
    lat.sort_unstable();
    Ok(Result {
        delivered: rx.delivered.load(Ordering::Relaxed),
        cpu_seconds: cpu1 - cpu0,
        seconds,
        p50_ms: percentile(&lat, 0.50),
        p95_ms: percentile(&lat, 0.95),
        p99_ms: percentile(&lat, 0.99),
        max_ms: percentile(&lat, 1.0),
        audio_sent: sent_audio.load(Ordering::Relaxed) * (load.subscribers as u64 - 1),
        audio_received: rx.audio.load(Ordering::Relaxed),
        rss_kib: rss,
        queue_p50_ms: bucket_quantile(&buckets0, &buckets1, 0.50),
        queue_p99_ms: bucket_quantile(&buckets0, &buckets1, 0.99),
    })
}

/// Server memory per idle participant: RSS with N joined, silent participants
/// minus RSS with none, divided by N.
async fn run_idle(load: &Load) -> anyhow::Result<(u64, u64, f64)> {
    let (server, port) = spawn_server(load)?;
    let url = format!("ws://127.0.0.1:{port}/convene/ws");
    // One participant first, so the runtime's threads and buffers exist in the baseline.
    let first = join(&url, true).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, before) = proc_cpu(server.0.id())?;
    let mut conns = vec![first];
    for _ in 0..load.subscribers {
        conns.push(join(&url, true).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, after) = proc_cpu(server.0.id())?;
    drop(conns);
    drop(server);
    Ok((
        before,
        after,
        (after.saturating_sub(before)) as f64 / load.subscribers as f64,
    ))
}

/// The floor's writer: accept N connections, then write the same frames to each.
fn floor_writer(port: u16, load: &Load) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let mut conns = Vec::new();
    for _ in 0..load.subscribers {
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        conns.push(s);
    }
    // WebSocket-sized frames: the media frame plus a 4-byte WebSocket header.
    let audio = vec![0u8; load.audio_bytes + 24 + 4];
    let video = vec![0u8; load.video_bytes + 24 + 4];
    let start = Instant::now();
    let total = Duration::from_secs(1 + load.seconds) + Duration::from_millis(200);
    let (mut next_audio, mut next_video) = (Duration::ZERO, Duration::ZERO);
    let (audio_step, video_step) = (
        Duration::from_secs(1) / load.audio_fps,
        Duration::from_secs(1) / load.video_fps,
    );
    let mut pending: Vec<u8> = Vec::new();
    let mut in_batch = 0;
    while start.elapsed() < total {
        let t = start.elapsed();
        let next = next_audio.min(next_video);
        if next > t {
            std::thread::sleep(next - t);
            continue;
        }
        let frame = if next_audio <= next_video {
            next_audio += audio_step;
            &audio
        } else {
            next_video += video_step;
            &video
        };
        pending.extend_from_slice(frame);
        in_batch += 1;
        if in_batch >= load.batch {
            for c in &mut conns {
                c.write_all(&pending)?;
            }
            pending.clear();
            in_batch = 0;
        }
    }
    Ok(())
}

/// Largest UDP payload the UDP floor sends, as QUIC packets are about this size.
const UDP_PACKET: usize = 1200;

/// The UDP floor's writer: the same frames as the server would forward (media
/// frame, header included), cut into packets, one `send_to` each.
fn udp_floor_writer(targets: &std::path::Path, load: &Load) -> anyhow::Result<()> {
    let ports: Vec<u16> = std::fs::read_to_string(targets)?
        .split_whitespace()
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()?;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let addrs: Vec<std::net::SocketAddr> = ports
        .iter()
        .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    let audio = vec![0u8; load.audio_bytes + 24];
    let video = vec![0u8; load.video_bytes + 24];
    let start = Instant::now();
    let total = Duration::from_secs(1 + load.seconds) + Duration::from_millis(200);
    let (mut next_audio, mut next_video) = (Duration::ZERO, Duration::ZERO);
    let (audio_step, video_step) = (
        Duration::from_secs(1) / load.audio_fps,
        Duration::from_secs(1) / load.video_fps,
    );
    while start.elapsed() < total {
        let t = start.elapsed();
        let next = next_audio.min(next_video);
        if next > t {
            std::thread::sleep(next - t);
            continue;
        }
        let frame = if next_audio <= next_video {
            next_audio += audio_step;
            &audio
        } else {
            next_video += video_step;
            &video
        };
        for a in &addrs {
            for packet in frame.chunks(UDP_PACKET) {
                // A full receive buffer drops the packet, as it would a QUIC one.
                let _ = socket.send_to(packet, a);
            }
        }
    }
    Ok(())
}

async fn run_udp_floor(load: &Load) -> anyhow::Result<Result> {
    let mut sockets = Vec::new();
    let mut ports = String::new();
    for _ in 0..load.subscribers {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        ports.push_str(&format!("{} ", s.local_addr()?.port()));
        sockets.push(s);
    }
    let targets = std::env::temp_dir().join(format!("udp-floor-{}.txt", std::process::id()));
    std::fs::write(&targets, ports)?;
    let rx = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for s in sockets {
        let rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok(n) = s.recv(&mut buf).await {
                rx.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
    }
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args([
            "udp-floor-writer",
            "--targets",
            &targets.display().to_string(),
        ])
        .args(shape_args(load))
        .spawn()?;
    let writer = Killed(child);
    // Media frames as sent: the 24-byte header and the payload.
    let result = measure_floor(writer, &rx, load, 24).await;
    for t in tasks {
        t.abort();
    }
    let _ = std::fs::remove_file(&targets);
    result
}

/// The load's shape as flags for a floor writer process.
fn shape_args(load: &Load) -> Vec<String> {
    [
        ("--subscribers", load.subscribers.to_string()),
        ("--seconds", load.seconds.to_string()),
        ("--video-fps", load.video_fps.to_string()),
        ("--video-bytes", load.video_bytes.to_string()),
        ("--audio-fps", load.audio_fps.to_string()),
        ("--audio-bytes", load.audio_bytes.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v])
    .collect()
}

/// Measures a floor writer for `load.seconds` after a one-second warm-up:
/// its CPU, and the frames delivered, counted from the bytes received with
/// the mix's average frame size (`overhead` bytes beyond each payload).
async fn measure_floor(
    writer: Killed,
    rx: &AtomicU64,
    load: &Load,
    overhead: usize,
) -> anyhow::Result<Result> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu0, _) = proc_cpu(writer.0.id())?;
    let bytes0 = rx.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(load.seconds)).await;
    let (cpu1, rss) = proc_cpu(writer.0.id())?;
    let bytes = rx.load(Ordering::Relaxed) - bytes0;
    let seconds = t0.elapsed().as_secs_f64();
    drop(writer);
    let per_second_frames = (load.audio_fps + load.video_fps) as f64;
    let avg = ((load.audio_bytes + overhead) as f64 * load.audio_fps as f64
        + (load.video_bytes + overhead) as f64 * load.video_fps as f64)
        / per_second_frames;
    Ok(Result {
        delivered: (bytes as f64 / avg) as u64,
        cpu_seconds: cpu1 - cpu0,
        seconds,
        rss_kib: rss,
        ..Result::default()
    })
}

async fn run_floor(load: &Load) -> anyhow::Result<Result> {
    let port = free_port()?;
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args(["floor-writer", "--port", &port.to_string()])
        .args(shape_args(load))
        .args(["--batch", &load.batch.to_string()])
        .spawn()?;
    let writer = Killed(child);
    let rx = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    for _ in 0..load.subscribers {
        let mut s = loop {
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(s) => break s,
                Err(_) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => return Err(e.into()),
            }
        };
        let rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                rx.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
    }
    // WebSocket-sized frames: 24-byte header, payload, 4-byte WebSocket header.
    measure_floor(writer, &rx, load, 28).await
}

fn print(name: &str, load: &Load, r: &Result) {
    println!(
        "{name}: 1 -> {} subscribers, {} s: {:.0} frames/s delivered, {:.2} us CPU per delivered frame, \
         latency p50 {:.2} ms p95 {:.2} ms p99 {:.2} ms max {:.2} ms, server queue delay p50 <= {} ms p99 <= {} ms, \
         audio {}/{} received, RSS {} KiB",
        load.subscribers,
        load.seconds,
        r.delivered as f64 / r.seconds,
        r.us_per_frame(),
        r.p50_ms,
        r.p95_ms,
        r.p99_ms,
        r.max_ms,
        r.queue_p50_ms,
        r.queue_p99_ms,
        r.audio_received,
        r.audio_sent,
        r.rss_kib
    );
}

fn json(r: &Result) -> serde_json::Value {
    serde_json::json!({
        "delivered": r.delivered, "seconds": r.seconds, "cpu_seconds": r.cpu_seconds,
        "us_per_frame": r.us_per_frame(), "p50_ms": r.p50_ms, "p95_ms": r.p95_ms, "p99_ms": r.p99_ms, "max_ms": r.max_ms,
        "audio_sent": r.audio_sent, "audio_received": r.audio_received, "rss_kib": r.rss_kib,
        "server_queue_delay_p50_ms": r.queue_p50_ms, "server_queue_delay_p99_ms": r.queue_p99_ms,
    })
}

/// Waits until a server says it is ready (a cluster node has heard the others).
fn wait_ready(port: u16) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if http_get(port, "/readyz").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the server on port {port} did not report ready within 30 s")
}

/// nats-server's message and byte counters, from its monitoring port.
fn nats_varz(port: u16) -> anyhow::Result<serde_json::Value> {
    let text = http_get(port, "/varz")?;
    let body = text.split("\r\n\r\n").nth(1).context("no /varz body")?;
    Ok(serde_json::from_str(body)?)
}

/// What crossed NATS during a cluster run.
struct NatsUse {
    /// Messages published to NATS.
    in_msgs: f64,
    /// Payload bytes published.
    in_bytes: f64,
    /// Messages NATS delivered.
    out_msgs: f64,
    /// nats-server CPU seconds.
    cpu_seconds: f64,
}

async fn run_cluster(load: &Load, nats_bin: &str) -> anyhow::Result<(Result, NatsUse)> {
    let (port, monitor) = (free_port()?, free_port()?);
    let nats = Killed(
        Command::new(nats_bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {nats_bin} (apt-get install -y nats-server)"))?,
    );
    wait_port(port)?;
    wait_port(monitor)?;
    let bus = format!("nats://127.0.0.1:{port}");
    let a = spawn_server_with(load, &["--bus", &bus, "--node-id", "1"])?;
    let b = spawn_server_with(load, &["--bus", &bus, "--node-id", "2"])?;
    wait_ready(a.1)?;
    wait_ready(b.1)?;
    let v0 = nats_varz(monitor)?;
    let c0 = proc_cpu(nats.0.id())?.0;
    let r = run_ws_on(load, vec![a, b]).await?;
    let v1 = nats_varz(monitor)?;
    let c1 = proc_cpu(nats.0.id())?.0;
    let d = |k: &str| v1[k].as_f64().unwrap_or(0.0) - v0[k].as_f64().unwrap_or(0.0);
    Ok((
        r,
        NatsUse {
            in_msgs: d("in_msgs"),
            in_bytes: d("in_bytes"),
            out_msgs: d("out_msgs"),
            cpu_seconds: c1 - c0,
        },
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        Mode::FloorWriter { port, load } => floor_writer(port, &load),
        Mode::UdpFloorWriter { targets, load } => udp_floor_writer(&targets, &load),
        Mode::QuicCore(load) => {
            let r = convene_benches::quic_core::run(&convene_benches::quic_core::QuicLoad {
                subscribers: load.subscribers,
                seconds: load.seconds,
                video_fps: load.video_fps,
                video_bytes: load.video_bytes,
                audio_fps: load.audio_fps,
                audio_bytes: load.audio_bytes,
            })
            .map_err(anyhow::Error::msg)?;
            let line = format!(
                "quic core: {} subscribers, {} of {} frames delivered, {:.2} us of server QUIC time per delivered frame ({} packets in {} transmits out, {} packets back)",
                load.subscribers,
                r.delivered,
                r.expected,
                r.us_per_frame(),
                r.server_packets,
                r.server_transmits,
                r.client_packets
            );
            if load.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "subscribers": load.subscribers,
                        "delivered": r.delivered,
                        "expected": r.expected,
                        "us_per_frame": r.us_per_frame(),
                        "server_packets": r.server_packets,
                        "server_transmits": r.server_transmits,
                        "client_packets": r.client_packets,
                    })
                );
            } else {
                println!("{line}");
            }
            Ok(())
        }
        Mode::UdpFloor(load) => {
            let r = run_udp_floor(&load).await?;
            if load.json {
                println!("{}", json(&r))
            } else {
                print("udp floor", &load, &r)
            }
            Ok(())
        }
        Mode::Ws(load) => {
            let r = run_ws(&load).await?;
            if load.json {
                println!("{}", json(&r))
            } else {
                print("websocket", &load, &r)
            }
            Ok(())
        }
        Mode::Floor(load) => {
            let r = run_floor(&load).await?;
            if load.json {
                println!("{}", json(&r))
            } else {
                print("floor", &load, &r)
            }
            Ok(())
        }
        Mode::Meeting {
            video_publishers,
            load,
        } => {
            let r = run_meeting(&load, video_publishers).await?;
            if load.json {
                println!("{}", json(&r))
            } else {
                print("meeting", &load, &r)
            }
            Ok(())
        }
        Mode::Cluster { nats_bin, load } => {
            let one = run_ws(&load).await?;
            let (two, nats) = run_cluster(&load, &nats_bin).await?;
            let frames_per_sub = two.delivered as f64 / load.subscribers.max(1) as f64;
            if load.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "one_node": json(&one), "two_nodes": json(&two),
                        "cpu_ratio": two.us_per_frame() / one.us_per_frame(),
                        "nats_in_msgs": nats.in_msgs, "nats_in_bytes": nats.in_bytes,
                        "nats_out_msgs": nats.out_msgs, "nats_cpu_seconds": nats.cpu_seconds,
                    })
                );
            } else {
                print("one node", &load, &one);
                print("two nodes", &load, &two);
                println!(
                    "server CPU per delivered frame, both nodes together: {:.1} µs vs {:.1} µs on one node ({:.2}x)",
                    two.us_per_frame(),
                    one.us_per_frame(),
                    two.us_per_frame() / one.us_per_frame()
                );
                println!(
                    "NATS: {:.0} messages in ({:.0} B each), {:.2} deliveries per message; \
                     ~{:.0} frames delivered per subscriber; nats-server CPU {:.2} µs per delivered frame",
                    nats.in_msgs,
                    nats.in_bytes / nats.in_msgs.max(1.0),
                    nats.out_msgs / nats.in_msgs.max(1.0),
                    frames_per_sub,
                    nats.cpu_seconds * 1e6 / two.delivered.max(1) as f64
                );
            }
            Ok(())
        }
        Mode::Idle(load) => {
            let (before, after, per) = run_idle(&load).await?;
            println!(
                "idle: {} joined participants: server RSS {before} KiB -> {after} KiB, {per:.1} KiB per participant",
                load.subscribers
            );
            Ok(())
        }
        Mode::Compare(load) => {
            let floor = run_floor(&load).await?;
            let ws = run_ws(&load).await?;
            if load.json {
                println!(
                    "{}",
                    serde_json::json!({"floor": json(&floor), "websocket": json(&ws), "ratio": ws.us_per_frame() / floor.us_per_frame()})
                );
            } else {
                print("floor", &load, &floor);
                print("websocket", &load, &ws);
                println!(
                    "ratio: {:.2}x the floor",
                    ws.us_per_frame() / floor.us_per_frame()
                );
            }
            Ok(())
        }
    }
}
