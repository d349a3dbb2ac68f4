//! What a subscriber's path carries, in kbit/s, from the transport's own
//! counters (PROTOCOL.md §6.6.3): the budget the room shares among the
//! subscriber's tracks ([`crate::room::forward::budget`]).
//!
//! Sans-IO: the shells read the counters (`TCP_INFO` for WebSocket,
//! [`crate::tcp_info`]; quinn's path statistics for WebTransport,
//! `wt::path`) every [`SAMPLE_EVERY`] and hand them here; nothing here
//! reads a socket or a clock.
//!
//! Conservative on purpose: an estimate comes down within a sample or two
//! and climbs back over several, and where the transport shows the path
//! (not the sender) setting the pace, a tenth is kept in reserve so the
//! media does not fill the bottleneck's queue.

use std::time::Duration;

/// How often a connection's counters are read.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// Unsent bytes in the kernel beyond which a TCP connection is taken as
/// limited by its path rather than by what the server had to send.
pub const TCP_BACKLOG_BYTES: u32 = 16 * 1024;

/// Round trips below this (loopback) say nothing about a window's rate.
const MIN_RTT: Duration = Duration::from_millis(1);

/// The kernel's view of a TCP connection at one moment (`TCP_INFO`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpSample {
    /// The rate of the most recent delivered flight, bytes per second
    /// (`tcpi_delivery_rate`).
    pub delivery_rate: u64,
    /// The congestion window in bytes (`tcpi_snd_cwnd` × `tcpi_snd_mss`).
    pub cwnd_bytes: u64,
    /// The smoothed round-trip time (`tcpi_rtt`).
    pub rtt: Duration,
    /// Bytes written but not yet sent (`tcpi_notsent_bytes`).
    pub notsent_bytes: u32,
    /// Time so far the receiver's window held sending back
    /// (`tcpi_rwnd_limited`, µs in the kernel).
    pub rwnd_limited: Duration,
    /// Bytes the peer acknowledged so far (`tcpi_bytes_acked`).
    pub bytes_acked: u64,
}

/// Kbit/s a window of `bytes` lets through per round trip `rtt`.
fn window_kbps(bytes: u64, rtt: Duration) -> u64 {
    let us = rtt.max(MIN_RTT).as_micros().max(1) as u64;
    bytes.saturating_mul(8_000) / us
}

/// What a TCP connection carries, from two samples `before` and `now`
/// `elapsed` apart (kbit/s). When it is behind (unsent bytes pile up in the
/// kernel, or the receiver's window held it back since `before`) the path
/// sets the pace, and what the peer acknowledged over the interval, less a
/// tenth, is the answer. Otherwise the server sent all it had: the path
/// carries at least that, and the congestion window allows its rate per
/// round trip; the larger of the window's rate and twice the acknowledged
/// rate is the answer, so a subscriber getting a small encoding is not held
/// there. (The kernel's `tcpi_delivery_rate` is one flight's rate: behind a
/// proxy that reads ahead in bursts, it swings between a few hundred
/// kbit/s and a gigabit from one sample to the next, where the bytes
/// acknowledged over half a second do not.)
pub fn tcp_kbps(before: &TcpSample, now: &TcpSample, elapsed: Duration) -> u32 {
    let ms = elapsed.as_millis().max(1) as u64;
    let acked = now
        .bytes_acked
        .saturating_sub(before.bytes_acked)
        .saturating_mul(8)
        / ms;
    let behind = now.notsent_bytes >= TCP_BACKLOG_BYTES || now.rwnd_limited > before.rwnd_limited;
    let kbps = if behind && acked > 0 {
        acked * 9 / 10
    } else {
        window_kbps(now.cwnd_bytes, now.rtt).max(acked.saturating_mul(2))
    };
    kbps.clamp(1, u32::MAX as u64) as u32
}

/// QUIC's view of a connection over one sample interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QuicInterval {
    /// How long the interval was.
    pub elapsed: Duration,
    /// UDP payload bytes sent in it.
    pub sent_bytes: u64,
    /// Share of the packets sent in it that were declared lost, when
    /// enough were sent to say.
    pub loss: Option<f64>,
    /// The congestion window at its end, bytes.
    pub cwnd: u64,
    /// The smoothed round trip at its end.
    pub rtt: Duration,
    /// The lowest smoothed round trip seen on the connection: what the
    /// path takes without a queue.
    pub min_rtt: Duration,
}

/// Round trip beyond the lowest seen that shows a queue building on the
/// path (and at least twice the lowest): the sender is ahead of the path.
const QUEUE_DELAY: Duration = Duration::from_millis(20);

/// Share of the window's rate in use beyond which the window, not the
/// media, sets QUIC's pace.
const WINDOW_FULL: f64 = 0.8;

/// What a QUIC connection carries over `i` (kbit/s). While it loses
/// `lossy` or more of its packets, the path sets the pace: the congestion
/// window's rate per round trip less a tenth, and where the window was
/// nearly full too (the sender pushed past the path), no more than what
/// got through of what it sent. Losses while sending little say the path
/// is lossy, not how much it carries. While the round trip shows a queue
/// building on the path, no more than what it sent, less a tenth. Else the
/// window's rate, and at least twice what it sent: a window grows only
/// while it is used, so an estimate held to it would hold a subscriber
/// getting a small encoding there.
pub fn quic_kbps(i: &QuicInterval, lossy: f64) -> u32 {
    let window = window_kbps(i.cwnd, i.rtt);
    let ms = i.elapsed.as_millis().max(1) as u64;
    let sent = i.sent_bytes.saturating_mul(8) / ms;
    let bound = sent as f64 >= WINDOW_FULL * window as f64;
    let queue = !i.min_rtt.is_zero() && i.rtt >= i.min_rtt * 2 && i.rtt >= i.min_rtt + QUEUE_DELAY;
    let kbps = match i.loss.filter(|l| *l >= lossy) {
        Some(l) if bound => window.min((sent as f64 * (1.0 - l)) as u64) * 9 / 10,
        Some(_) => window * 9 / 10,
        None if queue && sent > 0 => window.min(sent) * 9 / 10,
        None => window.max(sent.saturating_mul(2)),
    };
    kbps.clamp(1, u32::MAX as u64) as u32
}

/// One connection's estimate, smoothed: down fast, up slowly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Smoothed {
    /// The estimate so far, kbit/s.
    kbps: Option<u32>,
}

impl Smoothed {
    /// Takes a new raw estimate and returns the smoothed one: three
    /// quarters of the way to a lower value at once, an eighth of the way
    /// to a higher one per sample.
    pub fn update(&mut self, raw: u32) -> u32 {
        let raw64 = u64::from(raw);
        let next = match self.kbps.map(u64::from) {
            None => raw64,
            Some(k) if raw64 < k => (k + 3 * raw64) / 4,
            Some(k) => (7 * k + raw64) / 8,
        };
        let next = next.clamp(1, u32::MAX as u64) as u32;
        self.kbps = Some(next);
        next
    }

    /// The estimate so far.
    pub fn get(&self) -> Option<u32> {
        self.kbps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample: `acked` bytes acknowledged so far, a window of `cwnd`
    /// bytes, a round trip of `rtt_ms`, `notsent` bytes waiting and `rwnd_ms`
    /// held back by the receiver so far.
    fn tcp(acked: u64, cwnd: u64, rtt_ms: u64, notsent: u32, rwnd_ms: u64) -> TcpSample {
        TcpSample {
            delivery_rate: 0,
            cwnd_bytes: cwnd,
            rtt: Duration::from_millis(rtt_ms),
            notsent_bytes: notsent,
            rwnd_limited: Duration::from_millis(rwnd_ms),
            bytes_acked: acked,
        }
    }

    const HALF: Duration = Duration::from_millis(500);

    #[test]
    fn a_tcp_connection_with_nothing_waiting_is_bounded_by_its_window() {
        let a = tcp(1_000_000, 14_480, 40, 0, 0);
        // 14 480 bytes per 40 ms: 2 896 kbit/s; the media took 500.
        assert_eq!(tcp_kbps(&a, &tcp(1_031_250, 14_480, 40, 0, 0), HALF), 2896);
        // A larger share of what it allows, 2 Mbit/s: twice that.
        assert_eq!(tcp_kbps(&a, &tcp(1_125_000, 14_480, 40, 0, 0), HALF), 4000);
        // Loopback: round trips of microseconds count as a millisecond.
        let lo = tcp(1_000_000, 10 * 65_483, 0, 0, 0);
        assert_eq!(tcp_kbps(&a, &lo, HALF), 5_238_640);
    }

    #[test]
    fn a_tcp_connection_behind_is_what_was_acknowledged_less_a_tenth() {
        let a = tcp(1_000_000, 200_000, 20, 0, 100);
        // 25 000 bytes acknowledged in 500 ms (400 kbit/s), bytes waiting
        // in the kernel: the path sets the pace.
        let waiting = tcp(1_025_000, 200_000, 20, 64 * 1024, 100);
        assert_eq!(tcp_kbps(&a, &waiting, HALF), 360);
        // The receiver's window held it back since the last sample.
        let held = tcp(1_025_000, 200_000, 20, 0, 350);
        assert_eq!(tcp_kbps(&a, &held, HALF), 360);
    }

    #[test]
    fn quic_is_its_window_unless_losing() {
        let clean = QuicInterval {
            elapsed: Duration::from_millis(500),
            sent_bytes: 25_000,
            loss: Some(0.0),
            cwnd: 100_000,
            rtt: Duration::from_millis(20),
            min_rtt: Duration::from_millis(20),
        };
        // 100 kB per 20 ms: 40 Mbit/s; 400 kbit/s sent.
        assert_eq!(quic_kbps(&clean, 0.02), 40_000);
        // 10 % lost while sending little: the window, less a tenth.
        let lossy = QuicInterval {
            loss: Some(0.1),
            ..clean
        };
        assert_eq!(quic_kbps(&lossy, 0.02), 36_000);
        // 10 % lost of 2 Mbit/s sent against a 2.4 Mbit/s window: what got
        // through (1.8 Mbit/s), less a tenth.
        let pushed = QuicInterval {
            sent_bytes: 125_000,
            loss: Some(0.1),
            cwnd: 12_000,
            rtt: Duration::from_millis(40),
            ..clean
        };
        assert_eq!(quic_kbps(&pushed, 0.02), 1620);
        // Sending at the window's rate without losses: the window may be
        // what holds it, so twice what it sent.
        let full = QuicInterval {
            sent_bytes: 1_000_000,
            cwnd: 12_000,
            rtt: Duration::from_millis(40),
            min_rtt: Duration::from_millis(40),
            ..clean
        };
        assert_eq!(quic_kbps(&full, 0.02), 32_000);
        // A queue on the path: the round trip went from 50 ms to 200 ms
        // while 1.2 Mbit/s went out: less than that.
        let queued = QuicInterval {
            sent_bytes: 75_000,
            cwnd: 30_000,
            rtt: Duration::from_millis(200),
            min_rtt: Duration::from_millis(50),
            ..clean
        };
        assert_eq!(quic_kbps(&queued, 0.02), 1080);
        // Loopback jitter, 1 ms to 3 ms, is no queue.
        let jitter = QuicInterval {
            rtt: Duration::from_millis(3),
            min_rtt: Duration::from_millis(1),
            ..queued
        };
        assert_eq!(quic_kbps(&jitter, 0.02), 80_000);
    }

    #[test]
    fn the_smoothed_estimate_drops_fast_and_climbs_slowly() {
        let mut s = Smoothed::default();
        assert_eq!(s.update(4000), 4000);
        assert_eq!(s.update(400), 1300);
        assert_eq!(s.update(400), 625);
        // Back to 4000: an eighth of the way per sample.
        let mut k = 0;
        for _ in 0..4 {
            k = s.update(4000);
        }
        assert!(k > 2000 && k < 3000, "{k}");
        for _ in 0..30 {
            k = s.update(4000);
        }
        assert!(k > 3900, "{k}");
    }
}
