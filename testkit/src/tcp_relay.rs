//! A rate-limiting, delaying TCP relay with bounded buffering, the twin of
//! [`crate::UdpRelay`] for WebSocket paths.
//!
//! What makes it useful is backpressure: a TCP sender into a slow path must
//! find its socket writes blocking, as a server writing to a subscriber on a
//! thin link does. So the relay reads from a socket only as fast as the rate
//! allows and holds little itself: 100 ms worth read ahead of the link (at
//! most [`TcpRelay::CHUNK`]) plus, with a delay, the bytes in flight on the
//! simulated wire; and the kernel buffers of its own sockets are small and
//! their segments Ethernet-sized, so the sender's kernel sizes its send
//! buffer as on a real path rather than on loopback. What the sender's own
//! kernel then buffers is its business: with default settings under BBR,
//! about 100-250 KiB (see `tests/tcp_relay.rs`).
//!
//! The rate limiter is deterministic: a token bucket that draws no random
//! numbers, so the same arrival times give the same departures. Only the
//! jitter is drawn, from a generator seeded per connection and direction.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

/// What happens to the bytes in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpImpairment {
    /// Link rate in bytes per second; `None` for unlimited, `Some(0)` for a stalled link.
    pub rate_bytes_per_sec: Option<u64>,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra delay per chunk, uniform in 0..jitter; bytes never overtake each other.
    pub jitter: Duration,
}

impl TcpImpairment {
    /// A perfect link.
    pub const NONE: TcpImpairment = TcpImpairment {
        rate_bytes_per_sec: None,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };

    /// A link of `bytes_per_sec` and nothing else.
    pub const fn rate(bytes_per_sec: u64) -> TcpImpairment {
        TcpImpairment {
            rate_bytes_per_sec: Some(bytes_per_sec),
            ..TcpImpairment::NONE
        }
    }
}

/// One direction through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to upstream server.
    Up,
    /// Upstream server to client.
    Down,
}

/// Counters of what the relay did.
#[derive(Debug, Default)]
pub struct TcpRelayStats {
    /// Bytes written to the upstream server.
    pub up_bytes: AtomicU64,
    /// Bytes written to clients.
    pub down_bytes: AtomicU64,
    /// Connections accepted from clients.
    pub connections: AtomicU64,
    /// Connections being relayed now.
    pub open: AtomicU64,
    /// Accepted connections closed because the upstream server could not be reached.
    pub connect_failures: AtomicU64,
}

impl TcpRelayStats {
    /// Bytes forwarded in `direction`.
    pub fn bytes(&self, direction: Direction) -> u64 {
        match direction {
            Direction::Up => self.up_bytes.load(Ordering::Relaxed),
            Direction::Down => self.down_bytes.load(Ordering::Relaxed),
        }
    }

    fn counter(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::Up => &self.up_bytes,
            Direction::Down => &self.down_bytes,
        }
    }
}

/// A deterministic token bucket: bytes may pass when the bucket, refilled
/// at the rate since it was last looked at, holds them. It may go into debt
/// when connections sharing it read at once; the debt is paid by waiting.
/// Integer arithmetic, so the same times give the same answers.
#[derive(Debug)]
struct Bucket {
    rate: Option<u64>,
    /// Bytes that may pass, in billionths of a byte so that a nanosecond
    /// at any rate earns a whole number of them.
    nano_tokens: i128,
    last: Instant,
}

impl Bucket {
    /// A full segment on an Ethernet path: the smallest burst worth allowing.
    const SEGMENT: u64 = 1460;
    const NANO: i128 = 1_000_000_000;

    fn new(rate: Option<u64>, now: Instant) -> Bucket {
        Bucket {
            rate,
            nano_tokens: rate.map_or(0, Self::burst) as i128 * Self::NANO,
            last: now,
        }
    }

    /// How many bytes may pass at once after an idle spell: 10 ms worth or
    /// one segment, whichever is larger, so a slow link still passes whole
    /// segments and a fast one is not throttled by timer granularity; nothing
    /// on a stalled link.
    fn burst(rate: u64) -> u64 {
        if rate == 0 {
            0
        } else {
            (rate / 100).max(Self::SEGMENT)
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(rate) = self.rate {
            let nanos = now.saturating_duration_since(self.last).as_nanos();
            let earned = i128::try_from((rate as u128).saturating_mul(nanos)).unwrap_or(i128::MAX);
            let cap = Self::burst(rate) as i128 * Self::NANO;
            self.nano_tokens = self.nano_tokens.saturating_add(earned).min(cap);
        }
        self.last = self.last.max(now);
    }

    /// How many bytes (1..=`want`) may pass now; or else how long until
    /// half a burst (or `want`, if smaller) may, `None` for a stalled link.
    /// Half, not all: a wake-up that comes late then still finds room in the
    /// bucket for what it earned meanwhile, where a full bucket would have
    /// thrown it away and run below the rate.
    fn allowance(&mut self, now: Instant, want: usize) -> Result<usize, Option<Duration>> {
        self.refill(now);
        let Some(rate) = self.rate else {
            return Ok(want);
        };
        let half_burst = usize::try_from(Self::burst(rate) / 2).unwrap_or(usize::MAX);
        let need = want.min(half_burst).max(1) as i128 * Self::NANO;
        if self.nano_tokens >= need {
            let have = usize::try_from(self.nano_tokens / Self::NANO).unwrap_or(usize::MAX);
            return Ok(want.min(have));
        }
        if rate == 0 {
            return Err(None);
        }
        // Rounded up, so the wait is never a nanosecond short.
        let nanos = (need - self.nano_tokens + rate as i128 - 1) / rate as i128;
        Err(Some(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        )))
    }

    fn take(&mut self, now: Instant, n: usize) {
        self.refill(now);
        if self.rate.is_some() {
            self.nano_tokens -= n as i128 * Self::NANO;
        }
    }

    fn set_rate(&mut self, now: Instant, rate: Option<u64>) {
        // What was earned so far was earned at the old rate.
        self.refill(now);
        self.rate = rate;
        self.nano_tokens = match rate {
            Some(rate) => self.nano_tokens.min(Self::burst(rate) as i128 * Self::NANO),
            None => 0,
        };
    }
}

/// One direction's link, shared by every connection, as on a shared path.
struct Link {
    impairment: Mutex<TcpImpairment>,
    bucket: Mutex<Bucket>,
    /// Woken when the rate changes, so a waiting reader need not sleep out a
    /// wait computed at the old rate.
    changed: Notify,
}

impl Link {
    fn new(impairment: TcpImpairment, now: Instant) -> Link {
        Link {
            impairment: Mutex::new(impairment),
            bucket: Mutex::new(Bucket::new(impairment.rate_bytes_per_sec, now)),
            changed: Notify::new(),
        }
    }

    fn impairment(&self) -> TcpImpairment {
        *self.impairment.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until some bytes, at most `want`, may go onto the link, and says how many.
    async fn allowance(&self, want: usize) -> usize {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so a change in between is not missed.
            changed.as_mut().enable();
            let wait = match self.bucket().allowance(Instant::now(), want) {
                Ok(n) => return n,
                Err(wait) => wait,
            };
            match wait {
                Some(wait) => tokio::select! {
                    _ = changed => {}
                    _ = tokio::time::sleep(wait) => {}
                },
                None => changed.await,
            }
        }
    }

    /// Bytes the relay reads ahead of the link in one direction of one
    /// connection: 100 ms worth, at least two segments and at most a
    /// [`TcpRelay::CHUNK`], so what it holds is short in time at any rate
    /// and the sender is blocked soon.
    fn read_ahead(&self) -> usize {
        match self.impairment().rate_bytes_per_sec {
            Some(rate) => usize::try_from(rate / 10)
                .unwrap_or(usize::MAX)
                .clamp(2 * Bucket::SEGMENT as usize, TcpRelay::CHUNK),
            None => TcpRelay::CHUNK,
        }
    }

    /// Bytes the relay may hold in one direction of one connection beyond
    /// what it reads ahead: what is in flight on a delayed wire.
    fn in_flight_cap(&self) -> usize {
        let i = self.impairment();
        let wire = i.delay + i.jitter;
        if wire.is_zero() {
            return 0;
        }
        match i.rate_bytes_per_sec {
            Some(rate) => (rate as f64 * wire.as_secs_f64()) as usize,
            None => TcpRelay::UNLIMITED_IN_FLIGHT,
        }
    }
}

/// What the pacer of one direction hands its writer.
enum Piece {
    /// Bytes to write once `due`.
    Data { due: Instant, bytes: Vec<u8> },
    /// The sender closed its side: pass the FIN on.
    Fin,
}

/// A relay between TCP clients and one upstream server: a client connects
/// to [`TcpRelay::local_addr`], the relay connects to the server for it and
/// pipes bytes both ways, limiting rate and adding delay. One
/// [`TcpImpairment`] per direction is shared by all connections, as on a
/// shared link; [`TcpRelay::set_rate`] changes it while connections run.
/// Dropping the relay closes every connection.
pub struct TcpRelay {
    addr: SocketAddr,
    seed: u64,
    stats: Arc<TcpRelayStats>,
    up: Arc<Link>,
    down: Arc<Link>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        // The accept task owns the connections' tasks, which go with it.
        self.task.abort();
    }
}

impl TcpRelay {
    /// Most bytes read at once, and most read ahead of the link in one
    /// direction of a connection.
    pub const CHUNK: usize = 16 * 1024;
    /// Kernel send and receive buffers asked for on the relay's sockets
    /// (Linux doubles it for bookkeeping).
    pub const SOCKET_BUFFER: u32 = 8 * 1024;
    /// Segment size of the relay's sockets, as on Ethernet; peers size their
    /// send buffers by their segment size, and loopback's 64 KiB segments
    /// would let them buffer megabytes.
    pub const MSS: u32 = 1460;
    /// Bytes in flight on a delayed link without a rate (1 MiB: 160 Mbit/s at 50 ms).
    pub const UNLIMITED_IN_FLIGHT: usize = 1 << 20;

    /// Starts a relay on a free loopback port in front of `upstream`:
    /// `up` impairs client→server bytes, `down` server→client, `seed` draws
    /// the jitter.
    pub async fn start(
        upstream: SocketAddr,
        up: TcpImpairment,
        down: TcpImpairment,
        seed: u64,
    ) -> io::Result<TcpRelay> {
        let socket = TcpSocket::new_v4()?;
        // Accepted sockets inherit these, and the window and segment size
        // are agreed in the handshake, so they are set before listening.
        small_buffers(&socket)?;
        socket.bind("127.0.0.1:0".parse().expect("a socket address"))?;
        let listener = socket.listen(1024)?;
        let addr = listener.local_addr()?;
        let now = Instant::now();
        let (up, down) = (Arc::new(Link::new(up, now)), Arc::new(Link::new(down, now)));
        let stats = Arc::new(TcpRelayStats::default());
        let task = {
            let (up, down, stats) = (up.clone(), down.clone(), stats.clone());
            tokio::spawn(async move {
                // Dropped with this task, which aborts every connection.
                let mut connections = tokio::task::JoinSet::new();
                let mut index = 0u64;
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((client, _)) = accepted else {
                                // Out of descriptors, say: let some close.
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            };
                            stats.connections.fetch_add(1, Ordering::Relaxed);
                            // Each connection and direction draws its own jitter.
                            let seed = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                            index += 1;
                            let (up, down, stats) = (up.clone(), down.clone(), stats.clone());
                            connections.spawn(serve(client, upstream, up, down, stats, seed));
                        }
                        Some(_) = connections.join_next() => {}
                    }
                }
            })
        };
        Ok(TcpRelay {
            addr,
            seed,
            stats,
            up,
            down,
            task,
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The seed of the jitter, to replay a run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// What the relay has done so far.
    pub fn stats(&self) -> &TcpRelayStats {
        &self.stats
    }

    /// Changes the rate of `direction` for every connection, at once: a
    /// path that degrades (or recovers) mid-call. `None` lifts the limit,
    /// `Some(0)` stalls the link.
    pub fn set_rate(&self, direction: Direction, bytes_per_sec: Option<u64>) {
        let link = self.link(direction);
        link.impairment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rate_bytes_per_sec = bytes_per_sec;
        link.bucket().set_rate(Instant::now(), bytes_per_sec);
        link.changed.notify_waiters();
    }

    /// The impairment of `direction` now.
    pub fn impairment(&self, direction: Direction) -> TcpImpairment {
        self.link(direction).impairment()
    }

    fn link(&self, direction: Direction) -> &Link {
        match direction {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }
}

/// Small kernel buffers and Ethernet-sized segments, so bytes wait in the
/// sender rather than in the relay's kernel.
fn small_buffers(socket: &TcpSocket) -> io::Result<()> {
    socket.set_recv_buffer_size(TcpRelay::SOCKET_BUFFER)?;
    socket.set_send_buffer_size(TcpRelay::SOCKET_BUFFER)?;
    socket2::SockRef::from(socket).set_tcp_mss(TcpRelay::MSS)?;
    socket.set_nodelay(true)
}

/// Counts a connection as open while it lives.
struct OpenGuard(Arc<TcpRelayStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Relays one client's connection until both sides have closed, or until
/// either fails, which closes both.
async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    up: Arc<Link>,
    down: Arc<Link>,
    stats: Arc<TcpRelayStats>,
    seed: u64,
) {
    stats.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(stats.clone());
    let Ok(server) = connect(upstream).await else {
        stats.connect_failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = client.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let _ = tokio::try_join!(
        pipe(
            client_read,
            server_write,
            &up,
            stats.counter(Direction::Up),
            seed
        ),
        pipe(
            server_read,
            client_write,
            &down,
            stats.counter(Direction::Down),
            seed ^ 0xD1B5_4A32_D192_ED03
        ),
    );
}

/// A connection to the upstream server with the relay's small buffers.
async fn connect(upstream: SocketAddr) -> io::Result<TcpStream> {
    let socket = match upstream {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    small_buffers(&socket)?;
    socket.connect(upstream).await
}

/// One direction of one connection, in three stages: a reader that reads
/// into a bounded buffer, a pacer that lets bytes onto the link as the
/// bucket allows and stamps when they are due, and a writer that delivers
/// them then. Nothing more is read while the buffer is full, so the sender's
/// socket fills and blocks. Ends when the FIN has been passed on; an error
/// ends the connection.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    link: &Link,
    forwarded: &AtomicU64,
    seed: u64,
) -> io::Result<()> {
    let (read_tx, mut read_rx) = mpsc::unbounded_channel();
    let (paced_tx, mut paced_rx) = mpsc::unbounded_channel();
    // Bytes read but not yet written: what is read ahead of the link plus
    // what is in flight on it.
    let queued = AtomicUsize::new(0);
    let drained = Notify::new();
    let read = async {
        let mut buf = vec![0u8; TcpRelay::CHUNK];
        loop {
            let room = loop {
                let cap = link.read_ahead() + link.in_flight_cap();
                let queued = queued.load(Ordering::Acquire);
                if queued < cap {
                    break (cap - queued).min(buf.len());
                }
                drained.notified().await;
            };
            let n = from.read(&mut buf[..room]).await?;
            if n == 0 {
                let _ = read_tx.send(None);
                return Ok(());
            }
            queued.fetch_add(n, Ordering::AcqRel);
            if read_tx.send(Some(buf[..n].to_vec())).is_err() {
                return Ok(());
            }
        }
    };
    let pace = async {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut last_due = Instant::now();
        while let Some(read) = read_rx.recv().await {
            let Some(bytes) = read else {
                let _ = paced_tx.send(Piece::Fin);
                return Ok(());
            };
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = link.allowance(rest.len()).await;
                let now = Instant::now();
                link.bucket().take(now, n);
                let i = link.impairment();
                let jitter = if i.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    i.jitter.mul_f64(rng.random::<f64>())
                };
                // A byte stream keeps its order whatever the jitter.
                last_due = last_due.max(now + i.delay + jitter);
                let (piece, tail) = rest.split_at(n);
                let piece = Piece::Data {
                    due: last_due,
                    bytes: piece.to_vec(),
                };
                if paced_tx.send(piece).is_err() {
                    return Ok(());
                }
                rest = tail;
            }
        }
        Ok::<(), io::Error>(())
    };
    let write = async {
        while let Some(piece) = paced_rx.recv().await {
            match piece {
                Piece::Data { due, bytes } => {
                    tokio::time::sleep_until(due).await;
                    to.write_all(&bytes).await?;
                    forwarded.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    queued.fetch_sub(bytes.len(), Ordering::AcqRel);
                    drained.notify_one();
                }
                Piece::Fin => {
                    to.shutdown().await?;
                    return Ok(());
                }
            }
        }
        Ok(())
    };
    tokio::try_join!(read, pace, write).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_bucket_starts_with_a_burst_and_then_paces() {
        let t0 = Instant::now();
        // 20 kB/s: the burst is one segment, not 10 ms (200 B).
        let mut b = Bucket::new(Some(20_000), t0);
        assert_eq!(b.allowance(t0, 16_384), Ok(1460));
        b.take(t0, 1460);
        // Half a segment's worth takes 36.5 ms to earn.
        assert_eq!(
            b.allowance(t0, 16_384),
            Err(Some(Duration::from_micros(36_500)))
        );
        // A late wake-up keeps what it earned while late.
        assert_eq!(b.allowance(t0 + ms(40), 16_384), Ok(800));
        b.take(t0 + ms(40), 800);
        assert_eq!(b.allowance(t0 + ms(113), 16_384), Ok(1460));
        // Idle time does not earn more than the burst.
        assert_eq!(b.allowance(t0 + ms(10_000), 16_384), Ok(1460));
        // 10 MB/s: the burst is 10 ms worth.
        let mut fast = Bucket::new(Some(10_000_000), t0);
        assert_eq!(fast.allowance(t0, 1_000_000), Ok(100_000));
    }

    #[test]
    fn a_small_read_waits_only_for_its_own_bytes_and_debt_is_paid() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(10_000), t0);
        b.take(t0, 1460 + 1000);
        // 1000 B of debt plus the 100 B wanted take 110 ms at 10 kB/s.
        assert_eq!(b.allowance(t0, 100), Err(Some(ms(110))));
    }

    #[test]
    fn a_rate_change_keeps_what_was_earned_at_the_old_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(10_000), t0);
        b.take(t0, 1460);
        b.set_rate(t0 + ms(50), Some(100_000));
        // 500 B earned at 10 kB/s, then 230 B more at 100 kB/s.
        assert_eq!(
            b.allowance(t0 + ms(50), 16_384),
            Err(Some(Duration::from_micros(2_300)))
        );
        b.set_rate(t0 + ms(50), Some(0));
        assert_eq!(b.allowance(t0 + ms(5_000), 16_384), Err(None));
        b.set_rate(t0 + ms(5_000), None);
        assert_eq!(b.allowance(t0 + ms(5_000), 16_384), Ok(16_384));
    }
}
