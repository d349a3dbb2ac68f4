//! QUIC's own cost per delivered frame, without sockets or tasks: one
//! `quinn-proto` server endpoint fans the benchmark's frames out to N client
//! connections in memory, on a virtual clock, and only the time spent in the
//! server's calls is counted. This is what a transport that drove
//! `quinn-proto` connections itself (and handed the packets to the kernel in
//! batches) would pay on top of the raw-UDP floor; `convene-server` today
//! pays quinn's per-connection driver tasks and one system call per
//! connection and transmit besides.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{
    ClientConfig, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, ServerConfig,
};

/// What to send: the fan-out benchmark's load.
#[derive(Debug, Clone, Copy)]
pub struct QuicLoad {
    /// Client connections.
    pub subscribers: usize,
    /// Virtual seconds of sending.
    pub seconds: u64,
    /// Video frames per second, each on a unidirectional stream of its own.
    pub video_fps: u32,
    /// Bytes per video frame.
    pub video_bytes: usize,
    /// Audio frames per second, each a datagram.
    pub audio_fps: u32,
    /// Bytes per audio frame.
    pub audio_bytes: usize,
}

/// What a run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuicCost {
    /// Frames that reached a client whole.
    pub delivered: u64,
    /// Frames sent (one per subscriber each).
    pub expected: u64,
    /// Real time spent in the server's calls, seconds.
    pub server_seconds: f64,
    /// UDP datagrams the server produced.
    pub server_packets: u64,
    /// Transmits (system calls, with GSO) the server produced.
    pub server_transmits: u64,
    /// Datagrams the clients sent back (acknowledgements, flow control).
    pub client_packets: u64,
}

impl QuicCost {
    /// Microseconds of server time per delivered frame.
    pub fn us_per_frame(&self) -> f64 {
        self.server_seconds * 1e6 / self.delivered.max(1) as f64
    }
}

const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4433);
/// Client i's (virtual) address is this port plus i.
const FIRST_CLIENT_PORT: u16 = 10_000;
/// Datagrams per transmit, as quinn's driver asks for with GSO.
const MAX_DATAGRAMS: usize = 10;

struct Client {
    endpoint: Endpoint,
    addr: SocketAddr,
    handle: ConnectionHandle,
    conn: quinn_proto::Connection,
    /// Bytes read so far per open stream.
    reading: HashMap<quinn_proto::StreamId, usize>,
}

/// Runs the load; errors only when the connections cannot be set up.
pub fn run(load: &QuicLoad) -> Result<QuicCost, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let identity =
        convene_server::tls::Identity::self_signed(&[]).map_err(|e| format!("certificate: {e}"))?;
    let alpn: &[&[u8]] = &[b"convene-bench"];
    let tls = identity
        .server_config(alpn)
        .map_err(|e| format!("TLS: {e}"))?;
    let server_crypto =
        QuicServerConfig::try_from(tls).map_err(|e| format!("QUIC server crypto: {e}"))?;
    let server_config = Arc::new(ServerConfig::with_crypto(Arc::new(server_crypto)));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(identity.chain[0].clone())
        .map_err(|e| format!("roots: {e}"))?;
    let mut client_tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    client_tls.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let client_crypto =
        Arc::new(QuicClientConfig::try_from(client_tls).map_err(|e| format!("QUIC client: {e}"))?);

    let endpoint_config = Arc::new(EndpointConfig::default());
    let mut w = World {
        server: Endpoint::new(
            endpoint_config.clone(),
            Some(server_config),
            // Packets of at most 1200 bytes, as the raw-UDP floor sends.
            false,
            Some([1; 32]),
        ),
        server_conns: HashMap::new(),
        clients: Vec::new(),
        to_server: VecDeque::new(),
        to_clients: VecDeque::new(),
    };
    let mut now = Instant::now();
    for i in 0..load.subscribers {
        let mut endpoint = Endpoint::new(endpoint_config.clone(), None, false, Some([2; 32]));
        let addr = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            u16::try_from(i)
                .ok()
                .and_then(|i| FIRST_CLIENT_PORT.checked_add(i))
                .ok_or("too many subscribers")?,
        );
        let (handle, conn) = endpoint
            .connect(
                now,
                ClientConfig::new(client_crypto.clone()),
                SERVER,
                "localhost",
            )
            .map_err(|e| format!("connect: {e}"))?;
        w.clients.push(Client {
            endpoint,
            addr,
            handle,
            conn,
            reading: HashMap::new(),
        });
    }

    let mut cost = QuicCost::default();
    // Handshakes, not counted.
    for _ in 0..50 {
        w.pump(now, &mut cost);
        now += Duration::from_millis(1);
    }
    if w.server_conns.len() != load.subscribers {
        return Err(format!(
            "{} of {} connections established",
            w.server_conns.len(),
            load.subscribers
        ));
    }
    cost = QuicCost::default();

    let audio = Bytes::from(vec![0xA5; load.audio_bytes]);
    let video = Bytes::from(vec![0x5A; load.video_bytes]);
    let begin = now;
    // Frame k of a track at k / fps seconds, seconds × fps of them.
    let at = |fps: u32, k: u64| {
        (k < load.seconds * u64::from(fps))
            .then(|| begin + Duration::from_nanos(k * 1_000_000_000 / u64::from(fps)))
    };
    let (mut audio_k, mut video_k) = (0u64, 0u64);
    let mut next_audio = at(load.audio_fps, 0);
    let mut next_video = at(load.video_fps, 0);
    while let Some(due) = [next_audio, next_video].into_iter().flatten().min() {
        // Timers that fall before the next frame (delayed acknowledgements, loss detection).
        while let Some(t) = w.next_timer().filter(|t| *t <= due) {
            now = t.max(now);
            w.fire_timers(now, &mut cost);
            w.pump(now, &mut cost);
        }
        now = due.max(now);
        if next_audio == Some(due) {
            let t0 = Instant::now();
            for c in w.server_conns.values_mut() {
                let _ = c.datagrams().send(audio.clone(), true);
            }
            cost.server_seconds += t0.elapsed().as_secs_f64();
            cost.expected += w.server_conns.len() as u64;
            audio_k += 1;
            next_audio = at(load.audio_fps, audio_k);
        }
        if next_video == Some(due) {
            let t0 = Instant::now();
            for c in w.server_conns.values_mut() {
                if let Some(id) = c.streams().open(Dir::Uni) {
                    let mut s = c.send_stream(id);
                    let _ = s.write(&video);
                    let _ = s.finish();
                }
            }
            cost.server_seconds += t0.elapsed().as_secs_f64();
            cost.expected += w.server_conns.len() as u64;
            video_k += 1;
            next_video = at(load.video_fps, video_k);
        }
        w.pump(now, &mut cost);
        // Frames arrive whole or not at all: count them.
        for c in w.clients.iter_mut() {
            cost.delivered += drain_client(c, load.video_bytes);
        }
    }
    Ok(cost)
}

/// Reads what a client received; returns the frames that completed.
fn drain_client(c: &mut Client, video_bytes: usize) -> u64 {
    let mut done = 0;
    while c.conn.datagrams().recv().is_some() {
        done += 1;
    }
    while let Some(id) = c.conn.streams().accept(Dir::Uni) {
        c.reading.insert(id, 0);
    }
    let ids: Vec<_> = c.reading.keys().copied().collect();
    for id in ids {
        let mut stream = c.conn.recv_stream(id);
        let Ok(mut chunks) = stream.read(true) else {
            continue;
        };
        let mut finished = false;
        loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => *c.reading.entry(id).or_default() += chunk.bytes.len(),
                Ok(None) => {
                    finished = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let _ = chunks.finalize();
        if finished && c.reading.remove(&id) == Some(video_bytes) {
            done += 1;
        }
    }
    done
}

/// The server, its clients, and the packets in flight between them
/// (delivered at once, as on loopback, in order).
struct World {
    server: Endpoint,
    server_conns: HashMap<ConnectionHandle, quinn_proto::Connection>,
    clients: Vec<Client>,
    to_server: VecDeque<(SocketAddr, BytesMut)>,
    to_clients: VecDeque<(SocketAddr, BytesMut)>,
}

/// The datagrams of one transmit (several with GSO), each with its destination.
fn datagrams(
    t: &quinn_proto::Transmit,
    buf: &[u8],
    to: SocketAddr,
) -> impl Iterator<Item = (SocketAddr, BytesMut)> {
    buf[..t.size]
        .chunks(t.segment_size.unwrap_or(t.size))
        .map(move |p| (to, BytesMut::from(p)))
}

impl World {
    fn next_timer(&mut self) -> Option<Instant> {
        self.server_conns
            .values_mut()
            .filter_map(|c| c.poll_timeout())
            .chain(
                self.clients
                    .iter_mut()
                    .filter_map(|c| c.conn.poll_timeout()),
            )
            .min()
    }

    fn fire_timers(&mut self, now: Instant, cost: &mut QuicCost) {
        let t0 = Instant::now();
        for c in self.server_conns.values_mut() {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
        }
        cost.server_seconds += t0.elapsed().as_secs_f64();
        for c in self.clients.iter_mut() {
            if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                c.conn.handle_timeout(now);
            }
        }
    }

    /// Moves packets until nobody has anything more to send.
    fn pump(&mut self, now: Instant, cost: &mut QuicCost) {
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            // The server: its connections' packets and endpoint events.
            let t0 = Instant::now();
            let mut events = Vec::new();
            for (h, c) in self.server_conns.iter_mut() {
                while let Some(ev) = c.poll_endpoint_events() {
                    events.push((*h, ev));
                }
                while let Some(t) = c.poll_transmit(now, MAX_DATAGRAMS, &mut buf) {
                    cost.server_transmits += 1;
                    let before = self.to_clients.len();
                    self.to_clients.extend(datagrams(&t, &buf, t.destination));
                    cost.server_packets += (self.to_clients.len() - before) as u64;
                    buf.clear();
                }
            }
            for (h, ev) in events {
                if let Some(back) = self.server.handle_event(h, ev)
                    && let Some(c) = self.server_conns.get_mut(&h)
                {
                    c.handle_event(back);
                }
            }
            cost.server_seconds += t0.elapsed().as_secs_f64();

            // The clients: what reached them, and what they answer.
            while let Some((to, data)) = self.to_clients.pop_front() {
                let i = usize::from(to.port().wrapping_sub(FIRST_CLIENT_PORT));
                let Some(c) = self.clients.get_mut(i) else {
                    continue;
                };
                if let Some(DatagramEvent::ConnectionEvent(_, ev)) =
                    c.endpoint.handle(now, SERVER, None, None, data, &mut buf)
                {
                    c.conn.handle_event(ev);
                }
                buf.clear();
            }
            for c in self.clients.iter_mut() {
                while let Some(ev) = c.conn.poll_endpoint_events() {
                    if let Some(back) = c.endpoint.handle_event(c.handle, ev) {
                        c.conn.handle_event(back);
                    }
                }
                while let Some(t) = c.conn.poll_transmit(now, MAX_DATAGRAMS, &mut buf) {
                    let before = self.to_server.len();
                    self.to_server.extend(datagrams(&t, &buf, c.addr));
                    cost.client_packets += (self.to_server.len() - before) as u64;
                    buf.clear();
                }
                while c.conn.poll().is_some() {}
            }

            if self.to_server.is_empty() {
                break;
            }
            // The server receives.
            let t0 = Instant::now();
            while let Some((from, data)) = self.to_server.pop_front() {
                match self.server.handle(now, from, None, None, data, &mut buf) {
                    Some(DatagramEvent::NewConnection(incoming)) => {
                        let mut out = Vec::new();
                        if let Ok((h, c)) = self.server.accept(incoming, now, &mut out, None) {
                            self.server_conns.insert(h, c);
                        }
                    }
                    Some(DatagramEvent::ConnectionEvent(h, ev)) => {
                        if let Some(c) = self.server_conns.get_mut(&h) {
                            c.handle_event(ev);
                        }
                    }
                    Some(DatagramEvent::Response(_)) | None => {}
                }
                buf.clear();
            }
            for c in self.server_conns.values_mut() {
                while c.poll().is_some() {}
            }
            cost.server_seconds += t0.elapsed().as_secs_f64();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_reaches_every_subscriber_and_the_server_time_is_counted() {
        let load = QuicLoad {
            subscribers: 5,
            seconds: 1,
            video_fps: 30,
            video_bytes: 2000,
            audio_fps: 50,
            audio_bytes: 100,
        };
        let r = run(&load).unwrap();
        assert_eq!(r.expected, 5 * (30 + 50));
        assert_eq!(r.delivered, r.expected);
        // A 2 kB video frame needs more than one packet (QUIC packs what it can).
        assert!(r.server_packets > r.expected, "{r:?}");
        // The subscribers acknowledge (about every second packet).
        assert!(r.client_packets > 0 && r.client_packets < r.server_packets);
        assert!(r.server_seconds > 0.0);
    }
}
