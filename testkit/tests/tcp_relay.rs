//! The TCP relay over real loopback sockets: bytes pass unchanged, the rate
//! limit holds, a sender into a slow path is blocked after little
//! buffering, and the rate can change mid-transfer.
//!
//! Time windows here are measurements, not waits for something to happen:
//! conditions are awaited with generous deadlines, and bounds allow for a
//! busy two-core machine (slower than the limit, never faster).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use convene_testkit::{Direction, TcpImpairment, TcpRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;

/// Taken by every test: measured rates are only meaningful when the tests
/// do not take each other's CPU (a bulk echo next to a 50 kB/s measurement
/// on a loaded two-core machine made it 15 kB/s).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Long enough for a loaded CI machine; a passing run takes far less.
const DEADLINE: Duration = Duration::from_secs(30);

/// Waits until `done` holds, failing after [`DEADLINE`].
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A server that echoes each connection and closes its side after the
/// client closes its own.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.into_split();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// A server that reads everything sent to it as fast as it can, counting.
async fn sink_server() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    (addr, received)
}

/// A server that writes to its one connection as fast as its socket takes
/// bytes, counting what `write` accepted. Its socket has default settings
/// (as the Convene server's), or a fixed send buffer of `send_buffer`.
async fn firehose_server(send_buffer: Option<u32>) -> (SocketAddr, Arc<AtomicU64>) {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = send_buffer {
        // Inherited by the accepted socket.
        socket.set_send_buffer_size(size).unwrap();
    }
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let addr = listener.local_addr().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let count = written.clone();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let buf = vec![0x5a; 4096];
        while let Ok(n) = stream.write(&buf).await {
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    (addr, written)
}

/// Writes to `stream` without end, as fast as it takes bytes.
fn write_forever(mut stream: TcpStream) {
    tokio::spawn(async move {
        let buf = vec![0xa5; 4096];
        while stream.write_all(&buf).await.is_ok() {}
    });
}

/// Reads from `stream` as fast as it can, counting.
fn read_forever(mut stream: TcpStream) -> Arc<AtomicU64> {
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    received
}

/// Bytes per second that `counter` grows by over `window`.
async fn rate_over(counter: &AtomicU64, window: Duration) -> f64 {
    let (b0, t0) = (counter.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(window).await;
    let (b1, t1) = (counter.load(Ordering::Relaxed), Instant::now());
    (b1 - b0) as f64 / (t1 - t0).as_secs_f64()
}

/// Data that shows any byte moved, lost or doubled.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn bytes_pass_unchanged_both_ways_on_several_connections_and_closes_are_passed_on() {
    let _serial = SERIAL.lock().await;
    let jittery = TcpImpairment {
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(3),
        ..TcpImpairment::NONE
    };
    let relay = TcpRelay::start(echo_server().await, jittery, jittery, 7)
        .await
        .unwrap();
    const LEN: usize = 256 * 1024;
    let clients = (0..3u64).map(|i| {
        let addr = relay.local_addr();
        tokio::spawn(async move {
            let sent = pattern(LEN, i);
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut r, mut w) = stream.into_split();
            let data = sent.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&data).await.unwrap();
                // The echo server closes only after it sees this FIN, so the
                // end of the echo below proves the FIN went up and back.
                w.shutdown().await.unwrap();
            });
            let mut echoed = Vec::new();
            r.read_to_end(&mut echoed).await.unwrap();
            writer.await.unwrap();
            assert!(echoed == sent, "client {i}: the echo differs");
        })
    });
    for client in clients.collect::<Vec<_>>() {
        tokio::time::timeout(DEADLINE, client)
            .await
            .expect("the echoes end")
            .unwrap();
    }
    let stats = relay.stats();
    assert_eq!(stats.bytes(Direction::Up), 3 * LEN as u64);
    assert_eq!(stats.bytes(Direction::Down), 3 * LEN as u64);
    assert_eq!(stats.connections.load(Ordering::Relaxed), 3);
    eventually("every connection is closed", || {
        stats.open.load(Ordering::Relaxed) == 0
    })
    .await;
}

#[tokio::test]
async fn a_delay_holds_bytes_back_each_way() {
    let _serial = SERIAL.lock().await;
    let delayed = TcpImpairment {
        delay: Duration::from_millis(100),
        ..TcpImpairment::NONE
    };
    let relay = TcpRelay::start(echo_server().await, delayed, delayed, 1)
        .await
        .unwrap();
    let mut stream = TcpStream::connect(relay.local_addr()).await.unwrap();
    let start = Instant::now();
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut buf))
        .await
        .expect("the echo comes back")
        .unwrap();
    assert_eq!(&buf, b"ping");
    let rtt = start.elapsed();
    assert!(rtt >= Duration::from_millis(200), "round trip {rtt:?}");
}

#[tokio::test]
async fn a_bulk_transfer_runs_at_the_limit() {
    let _serial = SERIAL.lock().await;
    const RATE: u64 = 50_000;
    let (server, _) = firehose_server(None).await;
    let relay = TcpRelay::start(server, TcpImpairment::NONE, TcpImpairment::rate(RATE), 1)
        .await
        .unwrap();
    let received = read_forever(TcpStream::connect(relay.local_addr()).await.unwrap());
    // Past the first burst, then a two-second window.
    eventually("the transfer starts", || {
        received.load(Ordering::Relaxed) >= 5_000
    })
    .await;
    let rate = rate_over(&received, Duration::from_secs(2)).await;
    eprintln!("through a {RATE} B/s limit: {rate:.0} B/s");
    // The bucket never lets more through than the rate plus one burst. A
    // relay starved of CPU lets less (a late wake-up keeps at most a burst
    // of what it earned): niced, at a load of 19 on two cores, it measured
    // 0.47 of the rate, so the floor only catches a relay that does not flow.
    assert!(
        rate <= 1.2 * RATE as f64 && rate >= 0.3 * RATE as f64,
        "{rate:.0} B/s through a {RATE} B/s limit"
    );
}

/// Starts a server writing as fast as it can through a relay limited to
/// `rate` towards a client that reads as fast as it can; waits until the
/// server has written, then for `window`. Returns what the server had
/// written, the time it took, and what the client had read.
async fn firehose_through(
    rate: u64,
    send_buffer: Option<u32>,
    window: Duration,
) -> (u64, Duration, u64) {
    let (server, written) = firehose_server(send_buffer).await;
    let relay = TcpRelay::start(server, TcpImpairment::NONE, TcpImpairment::rate(rate), 1)
        .await
        .unwrap();
    let received = read_forever(TcpStream::connect(relay.local_addr()).await.unwrap());
    eventually("the server writes", || written.load(Ordering::Relaxed) > 0).await;
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let (wrote, elapsed) = (written.load(Ordering::Relaxed), start.elapsed());
    let read = received.load(Ordering::Relaxed);
    eprintln!(
        "through {rate} B/s, send buffer {send_buffer:?}: the server wrote {wrote} B \
         in {elapsed:?}, the client read {read} B"
    );
    (wrote, elapsed, read)
}

/// Checks that a blocked sender is held back, not cut off: the link
/// carries at least a quarter of its rate (a starved machine carries less
/// than all of it; a relay that stopped, nothing).
fn assert_flows(rate: u64, elapsed: Duration, read: u64) {
    let floor = (0.25 * rate as f64 * elapsed.as_secs_f64()) as u64;
    assert!(
        read >= floor,
        "only {read} B came through in {elapsed:?} at {rate} B/s"
    );
}

/// What a server with a default socket can have written into a slow link
/// beyond what the link carried: mostly its own kernel send buffer, which
/// Linux sizes from the segment size (the relay's 1460 B, not loopback's
/// 64 KiB) and the congestion window, 100-250 KiB here under BBR; plus
/// the relay's receive buffer, one chunk, its send buffer (16 KiB each
/// once the kernel doubles them) and the reader's receive buffer. Far
/// below what an unbounded relay or loopback-sized buffers would take
/// (megabytes).
const SERVER_BUFFERS: u64 = 256 * 1024;

#[tokio::test]
async fn a_server_writing_into_a_slow_link_is_blocked_within_a_second() {
    let _serial = SERIAL.lock().await;
    const RATE: u64 = 20_000;
    let (wrote, elapsed, read) = firehose_through(RATE, None, Duration::from_secs(1)).await;
    let carried = (RATE as f64 * elapsed.as_secs_f64()) as u64 + 1460;
    assert!(
        wrote <= carried + SERVER_BUFFERS,
        "the server wrote {wrote} B in {elapsed:?} into a {RATE} B/s link"
    );
    assert_flows(RATE, elapsed, read);
}

/// The same with the server's send buffer fixed at 16 KiB (32 KiB once
/// doubled), so what remains is the relay's share: its receive buffer,
/// one chunk and its send buffer, 16 + 1.5 + 16 KiB, and the reader's
/// receive buffer, which a fast reader keeps near empty.
const RELAY_AND_FIXED_SEND_BUFFER: u64 = 96 * 1024;

#[tokio::test]
async fn the_relay_itself_buffers_little() {
    let _serial = SERIAL.lock().await;
    const RATE: u64 = 20_000;
    let (wrote, elapsed, read) =
        firehose_through(RATE, Some(16 * 1024), Duration::from_secs(1)).await;
    let carried = (RATE as f64 * elapsed.as_secs_f64()) as u64 + 1460;
    assert!(
        wrote <= carried + RELAY_AND_FIXED_SEND_BUFFER,
        "the server wrote {wrote} B in {elapsed:?} into a {RATE} B/s link"
    );
    assert_flows(RATE, elapsed, read);
    // And in flight between the two ends, whatever the rate has carried.
    assert!(
        wrote - read <= RELAY_AND_FIXED_SEND_BUFFER,
        "{} B between server and client",
        wrote - read
    );
}

#[tokio::test]
async fn a_rate_change_takes_effect_mid_transfer() {
    let _serial = SERIAL.lock().await;
    let (server, received) = sink_server().await;
    let relay = TcpRelay::start(server, TcpImpairment::rate(20_000), TcpImpairment::NONE, 1)
        .await
        .unwrap();
    write_forever(TcpStream::connect(relay.local_addr()).await.unwrap());
    eventually("the transfer starts", || {
        received.load(Ordering::Relaxed) >= 5_000
    })
    .await;
    let slow = rate_over(&received, Duration::from_secs(1)).await;
    relay.set_rate(Direction::Up, Some(80_000));
    assert_eq!(
        relay.impairment(Direction::Up).rate_bytes_per_sec,
        Some(80_000)
    );
    let fast = rate_over(&received, Duration::from_secs(1)).await;
    eprintln!("20 kB/s measured {slow:.0} B/s, then 80 kB/s measured {fast:.0} B/s");
    // Never above a limit; floors as in the bulk transfer; and the fourfold
    // rate shows, at least doubled.
    assert!(
        (6_000.0..=24_000.0).contains(&slow),
        "{slow:.0} B/s at 20 kB/s"
    );
    assert!(
        (24_000.0..=96_000.0).contains(&fast),
        "{fast:.0} B/s at 80 kB/s"
    );
    assert!(fast >= 2.0 * slow, "{slow:.0} B/s, then {fast:.0} B/s");

    // A stalled link passes nothing once what was already read is through.
    relay.set_rate(Direction::Up, Some(0));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stalled = rate_over(&received, Duration::from_millis(500)).await;
    assert_eq!(stalled, 0.0, "bytes passed a stalled link");

    // And lifting the limit lets it run free.
    relay.set_rate(Direction::Up, None);
    let before = received.load(Ordering::Relaxed);
    eventually("a megabyte passes an unlimited link", || {
        received.load(Ordering::Relaxed) >= before + 1_000_000
    })
    .await;
}

#[tokio::test]
async fn a_client_is_closed_when_the_server_cannot_be_reached() {
    let _serial = SERIAL.lock().await;
    // A port that was just free: nothing listens there.
    let nowhere = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let relay = TcpRelay::start(nowhere, TcpImpairment::NONE, TcpImpairment::NONE, 1)
        .await
        .unwrap();
    let mut stream = TcpStream::connect(relay.local_addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
        .await
        .expect("the relay closes the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(relay.stats().connect_failures.load(Ordering::Relaxed), 1);
}
