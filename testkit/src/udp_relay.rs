//! A seeded, impairing UDP relay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// What happens to datagrams in one direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Probability that a datagram is dropped (0.0–1.0).
    pub loss: f64,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra delay, uniform in 0..jitter.
    pub jitter: Duration,
    /// Probability that a datagram is held back by `reorder_by`, so later ones overtake it.
    pub reorder: f64,
    /// How long a reordered datagram is held back.
    pub reorder_by: Duration,
    /// Link rate in bytes per second; `None` for unlimited.
    pub rate_bytes_per_sec: Option<u64>,
    /// With a rate: datagrams that would wait longer than this for the link are tail-dropped.
    pub max_queue_delay: Duration,
    /// No datagram is lost this long after the relay starts (a path that
    /// degrades once a session is up, not during its handshake).
    pub loss_after: Duration,
}

impl Impairment {
    /// A perfect link.
    pub const NONE: Impairment = Impairment {
        loss: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        reorder: 0.0,
        reorder_by: Duration::ZERO,
        rate_bytes_per_sec: None,
        max_queue_delay: Duration::from_millis(200),
        loss_after: Duration::ZERO,
    };
}

/// Counters of what the relay did, both directions together.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Datagrams received from either side.
    pub received: AtomicU64,
    /// Datagrams forwarded.
    pub forwarded: AtomicU64,
    /// Datagrams dropped at random.
    pub lost: AtomicU64,
    /// Datagrams dropped because the rate-limited link's queue was full.
    pub tail_dropped: AtomicU64,
    /// Datagrams held back to be reordered.
    pub reordered: AtomicU64,
}

/// One direction's link state.
struct Link {
    impairment: Impairment,
    rng: StdRng,
    /// When the relay started.
    started: Instant,
    /// When the rate-limited link is next free.
    next_free: Instant,
}

impl Link {
    /// When the datagram should leave, or `None` to drop it.
    fn schedule(&mut self, now: Instant, len: usize, stats: &RelayStats) -> Option<Instant> {
        let i = self.impairment;
        // Draw every decision for every datagram, so the sequence depends only on the seed.
        let lose = self.rng.random_bool(i.loss.clamp(0.0, 1.0));
        let jitter = if i.jitter.is_zero() {
            Duration::ZERO
        } else {
            i.jitter.mul_f64(self.rng.random::<f64>())
        };
        let reorder = self.rng.random_bool(i.reorder.clamp(0.0, 1.0));
        if lose && now.saturating_duration_since(self.started) >= i.loss_after {
            stats.lost.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut leave = now;
        if let Some(rate) = i.rate_bytes_per_sec.filter(|r| *r > 0) {
            let start = self.next_free.max(now);
            if start - now > i.max_queue_delay {
                stats.tail_dropped.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            self.next_free = start + Duration::from_secs_f64(len as f64 / rate as f64);
            leave = self.next_free;
        }
        leave += i.delay + jitter;
        if reorder {
            stats.reordered.fetch_add(1, Ordering::Relaxed);
            leave += i.reorder_by;
        }
        Some(leave)
    }
}

/// A relay between clients and a UDP server: a client sends to
/// [`UdpRelay::addr`], the relay forwards to the server from a socket of its
/// own for that client (so the server sees each client at an address of its
/// own), and the server's answers come back the same way. One impairment per
/// direction is shared by all clients, as on a shared link.
pub struct UdpRelay {
    addr: SocketAddr,
    seed: u64,
    stats: Arc<RelayStats>,
    /// Set: every client→server datagram is dropped.
    up_cut: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl UdpRelay {
    /// Clients a relay serves at once; datagrams from more are dropped (and
    /// counted as lost), so a stray sender cannot make it open sockets without end.
    pub const MAX_CLIENTS: usize = 4096;

    /// Starts a relay on a free loopback port in front of `server`:
    /// `up` impairs client→server datagrams, `down` server→client.
    pub async fn start(
        server: SocketAddr,
        up: Impairment,
        down: Impairment,
        seed: u64,
    ) -> std::io::Result<UdpRelay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let stats = Arc::new(RelayStats::default());
        let up_cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let up_link = Link {
            impairment: up,
            rng: StdRng::seed_from_u64(seed),
            started: Instant::now(),
            next_free: Instant::now(),
        };
        let down_link = Arc::new(Mutex::new(Link {
            impairment: down,
            rng: StdRng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15),
            started: Instant::now(),
            next_free: Instant::now(),
        }));
        let upstream = {
            let (stats, cut) = (stats.clone(), up_cut.clone());
            tokio::spawn(async move {
                let mut link = up_link;
                let mut buf = vec![0u8; 65_536];
                let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
                // Dropped with this task, which aborts every client's downstream task.
                let mut downstreams = tokio::task::JoinSet::new();
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    if cut.load(Ordering::Relaxed) {
                        stats.lost.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let back = match backs.get(&from) {
                        Some(back) => back.clone(),
                        None if backs.len() >= Self::MAX_CLIENTS => {
                            stats.lost.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        None => {
                            let Ok(back) = connected(server).await else {
                                stats.lost.fetch_add(1, Ordering::Relaxed);
                                continue;
                            };
                            let back = Arc::new(back);
                            backs.insert(from, back.clone());
                            downstreams.spawn(downstream(
                                back.clone(),
                                front.clone(),
                                from,
                                down_link.clone(),
                                stats.clone(),
                            ));
                            back
                        }
                    };
                    if let Some(at) = link.schedule(Instant::now(), n, &stats) {
                        let data = buf[..n].to_vec();
                        forward_at(at, stats.clone(), async move { back.send(&data).await });
                    }
                }
            })
        };
        Ok(UdpRelay {
            addr,
            seed,
            stats,
            up_cut,
            tasks: vec![upstream],
        })
    }

    /// Where clients send their datagrams.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The seed of this relay's decisions, to replay a run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// What the relay has done so far.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Cuts (or restores) the client→server direction: with it cut, the
    /// server still reaches the client but hears nothing back, not even
    /// acknowledgements.
    pub fn cut_up(&self, cut: bool) {
        self.up_cut.store(cut, Ordering::Relaxed);
    }
}

/// A socket of the relay's own for one client, connected to the server.
async fn connected(server: SocketAddr) -> std::io::Result<UdpSocket> {
    let back = UdpSocket::bind("127.0.0.1:0").await?;
    back.connect(server).await?;
    Ok(back)
}

/// Carries the server's datagrams for one client back to it, through the
/// shared server→client link.
async fn downstream(
    back: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    link: Arc<Mutex<Link>>,
    stats: Arc<RelayStats>,
) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = back.recv(&mut buf).await {
        stats.received.fetch_add(1, Ordering::Relaxed);
        let at = link
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .schedule(Instant::now(), n, &stats);
        if let Some(at) = at {
            let (front, data) = (front.clone(), buf[..n].to_vec());
            forward_at(at, stats.clone(), async move {
                front.send_to(&data, client).await
            });
        }
    }
}

/// Sends a datagram at `at` (`send` does it), counting it as forwarded.
fn forward_at(
    at: Instant,
    stats: Arc<RelayStats>,
    send: impl std::future::Future<Output = std::io::Result<usize>> + Send + 'static,
) {
    tokio::spawn(async move {
        tokio::time::sleep_until(at).await;
        if send.await.is_ok() {
            stats.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decisions(seed: u64, i: Impairment) -> Vec<Option<Duration>> {
        decisions_at(seed, i, Duration::ZERO)
    }

    /// 1000 datagrams' fates, all sent `since` after the link started.
    fn decisions_at(seed: u64, i: Impairment, since: Duration) -> Vec<Option<Duration>> {
        let t0 = Instant::now();
        let mut link = Link {
            impairment: i,
            rng: StdRng::seed_from_u64(seed),
            started: t0,
            next_free: t0,
        };
        let stats = RelayStats::default();
        (0..1000)
            .map(|_| {
                link.schedule(t0 + since, 1200, &stats)
                    .map(|t| t - t0 - since)
            })
            .collect()
    }

    #[test]
    fn no_datagram_is_lost_before_loss_after() {
        let i = Impairment {
            loss: 0.25,
            loss_after: Duration::from_secs(2),
            ..Impairment::NONE
        };
        assert!(
            decisions_at(3, i, Duration::from_secs(1))
                .iter()
                .all(Option::is_some)
        );
        let later = decisions_at(3, i, Duration::from_secs(2));
        let lost = later.iter().filter(|x| x.is_none()).count();
        assert!(
            (200..=300).contains(&lost),
            "about 25% of 1000 lost, got {lost}"
        );
    }

    /// Two clients through one relay reach the server from two addresses,
    /// and each gets only its own answers back.
    #[tokio::test]
    async fn each_client_has_its_own_path_through_the_relay() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let delay = Impairment {
            delay: Duration::from_millis(5),
            ..Impairment::NONE
        };
        let relay = UdpRelay::start(server.local_addr().unwrap(), delay, delay, 1)
            .await
            .unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        a.send_to(b"from a", relay.addr()).await.unwrap();
        b.send_to(b"from b", relay.addr()).await.unwrap();
        let mut seen = HashMap::new();
        let mut buf = [0u8; 64];
        let deadline = Duration::from_secs(20);
        for _ in 0..2 {
            let (n, from) = tokio::time::timeout(deadline, server.recv_from(&mut buf))
                .await
                .expect("the relay forwards both")
                .unwrap();
            seen.insert(buf[..n].to_vec(), from);
        }
        assert_ne!(seen[&b"from a"[..]], seen[&b"from b"[..]]);
        // The server answers each at the address it came from; the answers
        // must not cross.
        for (what, from) in &seen {
            let mut answer = b"to ".to_vec();
            answer.extend_from_slice(&what[5..]);
            server.send_to(&answer, from).await.unwrap();
        }
        for (client, want) in [(&a, &b"to a"[..]), (&b, &b"to b"[..])] {
            let (n, from) = tokio::time::timeout(deadline, client.recv_from(&mut buf))
                .await
                .expect("the answer comes back")
                .unwrap();
            assert_eq!((&buf[..n], from), (want, relay.addr()));
        }
        assert_eq!(relay.stats().forwarded.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn the_same_seed_makes_the_same_decisions() {
        let i = Impairment {
            loss: 0.05,
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(5),
            reorder: 0.02,
            reorder_by: Duration::from_millis(20),
            ..Impairment::NONE
        };
        assert_eq!(decisions(7, i), decisions(7, i));
        assert_ne!(decisions(7, i), decisions(8, i));
        let d = decisions(7, i);
        let lost = d.iter().filter(|x| x.is_none()).count();
        assert!(
            (20..=90).contains(&lost),
            "about 5% of 1000 lost, got {lost}"
        );
        let late = d
            .iter()
            .flatten()
            .filter(|x| **x >= Duration::from_millis(70))
            .count();
        assert!(late > 0, "some datagrams are held back for reordering");
        assert!(d.iter().flatten().all(|x| *x >= Duration::from_millis(50)));
    }

    #[test]
    fn a_rate_limit_spaces_datagrams_and_tail_drops() {
        let i = Impairment {
            rate_bytes_per_sec: Some(120_000),
            max_queue_delay: Duration::from_millis(100),
            ..Impairment::NONE
        };
        let d = decisions(1, i);
        // 1200 B at 120 kB/s is 10 ms each; a 100 ms queue holds about 10.
        assert_eq!(d[0], Some(Duration::from_millis(10)));
        assert_eq!(d[1], Some(Duration::from_millis(20)));
        let sent = d.iter().flatten().count();
        assert!((10..=12).contains(&sent), "{sent} fit in the queue");
    }
}
