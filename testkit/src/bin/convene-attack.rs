//! `convene-attack`: a mix of the attacks a hostile internet user makes on a
//! Convene server, from many loopback source addresses at once, while a
//! probe checks every second that a member with a valid token still gets in.
//! For the soak of `cargo xtask bench --soak`, never for a server that is
//! not your own. Prints a JSON summary on stdout when done.
//!
//! Attacks (all at once, each with its own source addresses 127.0.0.2 and up):
//! connections that upgrade to WebSocket and never say Hello, slowloris
//! request heads, first frames that claim a megabyte, and, with a token,
//! members who flood the room with E2EE messages and key-frame requests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use convene_protocol::v1::{
    self, ClientMessage, client_message::Msg as C, server_message::Msg as S,
};
use convene_protocol::{Frame, decode_frame, encode_control};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const USAGE: &str = "\
convene-attack --server HOST:PORT --token TOKEN --meeting ID [--seconds S] [--addresses N]

Attacks the server at HOST:PORT (plain WebSocket) for S seconds (default 30)
from N loopback source addresses (default 24): connections that never say
Hello, slowloris heads, oversized first frames, and members of meeting ID
(with TOKEN) flooding E2EE messages and key-frame requests; meanwhile it
joins the meeting with TOKEN once a second and counts how many got in.";

#[derive(Default)]
struct Counts {
    opened: AtomicU64,
    refused: AtomicU64,
    probes: AtomicU64,
    probes_ok: AtomicU64,
    probe_ms_max: AtomicU64,
    relay_sent: AtomicU64,
    key_requests_sent: AtomicU64,
}

struct Args {
    server: SocketAddr,
    token: String,
    meeting: String,
    seconds: u64,
    addresses: usize,
}

fn parse() -> Result<Args, String> {
    let mut server = None;
    let mut token = None;
    let mut meeting = None;
    let mut seconds = 30;
    let mut addresses = 24;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--server" => {
                server = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("--server {value}: {e}"))?,
                )
            }
            "--token" => token = Some(value),
            "--meeting" => meeting = Some(value),
            "--seconds" => seconds = value.parse().map_err(|_| "--seconds takes a number")?,
            "--addresses" => addresses = value.parse().map_err(|_| "--addresses takes a number")?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(Args {
        server: server.ok_or("--server is required")?,
        token: token.ok_or("--token is required")?,
        meeting: meeting.ok_or("--meeting is required")?,
        seconds,
        addresses: addresses.clamp(4, 250),
    })
}

/// The `n`th attacker address: 127.0.0.2 and up.
fn source(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, (n % 250 + 2) as u8))
}

async fn tcp_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

async fn upgrade(tcp: &mut TcpStream, host: SocketAddr) -> bool {
    let req = format!(
        "GET /convene/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
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

/// Keeps `per_address` upgraded connections without Hello open from `from`.
async fn silent_upgrades(
    server: SocketAddr,
    from: IpAddr,
    per_address: usize,
    c: Arc<Counts>,
    until: Instant,
) {
    let mut held = std::collections::VecDeque::new();
    while Instant::now() < until {
        let mut upgraded = None;
        if let Ok(mut t) = tcp_from(from, server).await
            && upgrade(&mut t, server).await
        {
            upgraded = Some(t);
        }
        match upgraded {
            Some(t) => {
                c.opened.fetch_add(1, Ordering::Relaxed);
                held.push_back(t);
                if held.len() > per_address {
                    held.pop_front();
                }
            }
            None => {
                c.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Slowloris: request heads that never end, one byte every 500 ms.
async fn slowloris(server: SocketAddr, from: IpAddr, count: usize, c: Arc<Counts>, until: Instant) {
    let mut open: Vec<TcpStream> = Vec::new();
    while Instant::now() < until {
        while open.len() < count {
            let mut started = None;
            if let Ok(mut t) = tcp_from(from, server).await
                && t.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").await.is_ok()
            {
                started = Some(t);
            }
            match started {
                Some(t) => {
                    c.opened.fetch_add(1, Ordering::Relaxed);
                    open.push(t);
                }
                None => {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        let mut still = Vec::new();
        for mut t in open {
            if t.write_all(b"a").await.is_ok() {
                still.push(t);
            }
        }
        open = still;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// First frames that claim a megabyte, with 64 KiB of it sent.
async fn oversized_first_frames(server: SocketAddr, from: IpAddr, c: Arc<Counts>, until: Instant) {
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 20).to_be_bytes());
    header.extend_from_slice(&[0; 4]);
    let body = vec![0u8; 64 << 10];
    while Instant::now() < until {
        if let Ok(mut t) = tcp_from(from, server).await
            && upgrade(&mut t, server).await
        {
            c.opened.fetch_add(1, Ordering::Relaxed);
            let _ = t.write_all(&header).await;
            let _ = t.write_all(&body).await;
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(1), t.read(&mut sink)).await;
        } else {
            c.refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

fn control(msg: C) -> Message {
    Message::Binary(encode_control(&ClientMessage {
        request_id: 0,
        msg: Some(msg),
    }))
}

/// Connects from `from`, says Hello with `token` and joins; `None` if refused.
async fn member(
    server: SocketAddr,
    from: IpAddr,
    token: &str,
    meeting: &str,
    subscribe_all: bool,
) -> Option<Ws> {
    let tcp = tcp_from(from, server).await.ok()?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{server}/convene/ws"), tcp)
        .await
        .ok()?;
    ws.send(control(C::Hello(v1::Hello {
        versions: vec![1],
        auth_token: token.to_string(),
        ..Default::default()
    })))
    .await
    .ok()?;
    let mut joined = false;
    while let Some(Ok(m)) = ws.next().await {
        let Message::Binary(b) = m else { continue };
        match decode_frame::<v1::ServerMessage>(b, 1 << 21) {
            Ok(Frame::Control(v1::ServerMessage {
                msg: Some(S::Welcome(_)),
            })) => {
                ws.send(control(C::Join(v1::Join {
                    meeting_id: meeting.to_string(),
                    display_name: "attacker".into(),
                    subscribe_all,
                })))
                .await
                .ok()?;
            }
            Ok(Frame::Control(v1::ServerMessage {
                msg: Some(S::Joined(_)),
            })) => {
                joined = true;
                break;
            }
            Ok(Frame::Control(v1::ServerMessage {
                msg: Some(S::Error(_)),
            })) => return None,
            _ => {}
        }
    }
    joined.then_some(ws)
}

/// A member that sends 16 KiB E2EE messages to the room at 50 a second.
async fn relay_flood(
    server: SocketAddr,
    from: IpAddr,
    token: String,
    meeting: String,
    c: Arc<Counts>,
    until: Instant,
) {
    let Some(ws) = member(server, from, &token, &meeting, false).await else {
        return;
    };
    let (mut tx, mut rx) = ws.split();
    tokio::spawn(async move { while rx.next().await.is_some() {} });
    let payload = Bytes::from(vec![0x55u8; 16 << 10]);
    while Instant::now() < until {
        if tx
            .send(control(C::E2ee(v1::E2eeSend {
                to_participant_id: 0,
                payload: payload.clone(),
            })))
            .await
            .is_err()
        {
            return;
        }
        c.relay_sent.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A member that asks every publisher it sees for key frames, 50 a second.
async fn key_frame_flood(
    server: SocketAddr,
    from: IpAddr,
    token: String,
    meeting: String,
    c: Arc<Counts>,
    until: Instant,
) {
    let Some(ws) = member(server, from, &token, &meeting, true).await else {
        return;
    };
    let (mut tx, mut rx) = ws.split();
    let tracks = Arc::new(std::sync::Mutex::new(Vec::<(u32, u32)>::new()));
    let seen = tracks.clone();
    tokio::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            if let Message::Binary(b) = m
                && let Ok(Frame::Control(v1::ServerMessage {
                    msg: Some(S::TrackPublished(t)),
                })) = decode_frame::<v1::ServerMessage>(b, 1 << 21)
                && let Some(info) = t.track
            {
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((t.participant_id, info.track_id));
            }
        }
    });
    let mut i = 0usize;
    while Instant::now() < until {
        let next = {
            let t = tracks.lock().unwrap_or_else(|p| p.into_inner());
            (!t.is_empty()).then(|| t[i % t.len()])
        };
        if let Some((participant_id, track_id)) = next {
            if tx
                .send(control(C::KeyFrameRequest(v1::KeyFrameRequest {
                    participant_id,
                    track_id,
                    ..Default::default()
                })))
                .await
                .is_err()
            {
                return;
            }
            c.key_requests_sent.fetch_add(1, Ordering::Relaxed);
            i += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Once a second, a fresh member with a valid token joins from 127.0.0.1.
async fn probe(server: SocketAddr, token: String, meeting: String, c: Arc<Counts>, until: Instant) {
    while Instant::now() < until {
        let started = Instant::now();
        c.probes.fetch_add(1, Ordering::Relaxed);
        let joined = tokio::time::timeout(
            Duration::from_secs(5),
            member(
                server,
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                &token,
                &meeting,
                false,
            ),
        )
        .await;
        if let Ok(Some(_ws)) = joined {
            c.probes_ok.fetch_add(1, Ordering::Relaxed);
            c.probe_ms_max
                .fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(started.elapsed())).await;
    }
}

#[tokio::main]
async fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("convene-attack: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let c = Arc::new(Counts::default());
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let n = args.addresses;
    let mut tasks = Vec::new();
    // A quarter of the addresses each for silent upgrades, slowloris and
    // oversized frames; two flooding members of each kind.
    for a in 0..n / 4 {
        tasks.push(tokio::spawn(silent_upgrades(
            args.server,
            source(a),
            64,
            c.clone(),
            until,
        )));
        tasks.push(tokio::spawn(slowloris(
            args.server,
            source(n / 4 + a),
            32,
            c.clone(),
            until,
        )));
        tasks.push(tokio::spawn(oversized_first_frames(
            args.server,
            source(n / 2 + a),
            c.clone(),
            until,
        )));
    }
    for k in 0..2 {
        let from = source(3 * n / 4 + k);
        tasks.push(tokio::spawn(relay_flood(
            args.server,
            from,
            args.token.clone(),
            args.meeting.clone(),
            c.clone(),
            until,
        )));
        let from = source(3 * n / 4 + 2 + k);
        tasks.push(tokio::spawn(key_frame_flood(
            args.server,
            from,
            args.token.clone(),
            args.meeting.clone(),
            c.clone(),
            until,
        )));
    }
    tasks.push(tokio::spawn(probe(
        args.server,
        args.token.clone(),
        format!("{}-probe", args.meeting),
        c.clone(),
        until,
    )));
    for t in tasks {
        let _ = t.await;
    }
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "seconds": args.seconds,
            "addresses": n,
            "attack_connections_opened": get(&c.opened),
            "attack_connections_refused": get(&c.refused),
            "relay_messages_sent": get(&c.relay_sent),
            "key_frame_requests_sent": get(&c.key_requests_sent),
            "probes": get(&c.probes),
            "probes_joined": get(&c.probes_ok),
            "probe_join_ms_max": get(&c.probe_ms_max),
        })
    );
}
