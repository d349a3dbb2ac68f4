//! A publisher's video bitrate, from what it sees of its own path and what
//! the server hints (PROTOCOL.md §6.5), without IO: the caller reports the
//! round-trip time and loss its transport measures, and the server's
//! `CongestionHint`s, and reads [`RateController::target`] for its encoder.
//!
//! The thresholds are shared with the server, which calls a subscriber's
//! path congested from [`LOSS_CLEAN`] of loss or an [`RTT_HIGH`] round trip:
//! here 2 % loss or more holds the rate, and 10 % or more, a round trip of
//! 400 ms or more, or 150 ms of queueing (the round trip above the smallest
//! seen, or the sender's own unsent backlog at the current rate) lowers it
//! by 15 % a report; two seconds of a clean path raise it by 8 % a report,
//! up to the ceiling (the last hint, or the starting rate).

use std::time::Duration;

use crate::Timestamp;

/// Loss at or above which the rate goes down.
pub const LOSS_DECREASE: f64 = 0.10;
/// Loss below which the path counts as clean.
pub const LOSS_CLEAN: f64 = 0.02;
/// A round trip at or above this lowers the rate.
pub const RTT_HIGH: Duration = Duration::from_millis(400);
/// Round trip above the smallest seen at or above which packets are queueing.
pub const QUEUEING: Duration = Duration::from_millis(150);
/// How long the path must stay clean before the rate goes up.
pub const CLEAN_BEFORE_INCREASE: Duration = Duration::from_secs(2);
/// Factor applied per report on a congested path.
pub const DECREASE: f64 = 0.85;
/// Factor applied per report on a path clean for long enough.
pub const INCREASE: f64 = 1.08;

/// Fewer packets than this over an interval say nothing about its loss.
pub const LOSS_SAMPLE_MIN_PACKETS: u64 = 20;

/// The share of packets lost over an interval in which `sent` packets went
/// out and `lost` were declared lost, once there are enough to judge.
pub fn loss_share(sent: u64, lost: u64) -> Option<f64> {
    (sent >= LOSS_SAMPLE_MIN_PACKETS).then(|| lost as f64 / sent as f64)
}

/// What a path report made of the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathState {
    /// Lossy or slow: the rate went down.
    Congested,
    /// Some loss: the rate holds.
    Hold,
    /// Clean: the rate goes up once it has been clean for a while.
    Clean,
}

/// A publisher's video bitrate controller.
#[derive(Clone, Debug)]
pub struct RateController {
    /// The lowest rate it goes to, in bits per second.
    floor: u32,
    /// The starting rate, and the highest without a hint.
    start: u32,
    /// The highest rate now: the last hint, or the starting rate.
    ceiling: u32,
    /// The current target.
    target: u32,
    /// The smallest round trip seen.
    min_rtt: Option<Duration>,
    /// Since when the path has been clean.
    clean_since: Option<Timestamp>,
    /// What the last report made of the path.
    last: Option<PathState>,
}

impl RateController {
    /// A controller starting at `start` bits per second and never going below `floor`.
    pub fn new(start: u32, floor: u32) -> Self {
        let floor = floor.min(start);
        RateController {
            floor,
            start,
            ceiling: start,
            target: start,
            min_rtt: None,
            clean_since: None,
            last: None,
        }
    }

    /// The bitrate the encoder should use, in bits per second.
    pub fn target(&self) -> u32 {
        self.target
    }

    /// The lowest rate the path may take it to, in bits per second.
    pub fn floor(&self) -> u32 {
        self.floor
    }

    /// What the last path report made of the path.
    pub fn path_state(&self) -> Option<PathState> {
        self.last
    }

    /// The server's `CongestionHint` for this track, in bits per second: the
    /// rate moves to it (within the floor and the starting rate) and the
    /// path may raise it no further.
    pub fn on_hint(&mut self, bps: u32) {
        let bps = bps.clamp(self.floor, self.start);
        self.ceiling = bps;
        self.target = bps;
    }

    /// A report of the path over the last interval: the round trip, the
    /// share of packets lost (either may be unknown) and the bytes the
    /// transport has been given and not sent yet. Returns the (possibly new)
    /// target.
    pub fn on_path(
        &mut self,
        now: Timestamp,
        rtt: Option<Duration>,
        loss: Option<f64>,
        backlog_bytes: u64,
    ) -> u32 {
        if let Some(r) = rtt {
            self.min_rtt = Some(self.min_rtt.map_or(r, |m| m.min(r)));
        }
        let in_network = match (rtt, self.min_rtt) {
            (Some(r), Some(m)) => r.saturating_sub(m),
            _ => Duration::ZERO,
        };
        // What is still waiting to leave, at the rate it leaves at.
        let at_sender =
            Duration::from_secs_f64(backlog_bytes as f64 * 8.0 / f64::from(self.target.max(1)));
        let queueing = in_network.max(at_sender);
        let loss = loss.filter(|l| l.is_finite()).unwrap_or(0.0);
        let state = if loss >= LOSS_DECREASE
            || rtt.is_some_and(|r| r >= RTT_HIGH)
            || queueing >= QUEUEING
        {
            PathState::Congested
        } else if loss >= LOSS_CLEAN {
            PathState::Hold
        } else {
            PathState::Clean
        };
        match state {
            PathState::Congested => {
                self.clean_since = None;
                self.target = ((f64::from(self.target) * DECREASE) as u32).max(self.floor);
            }
            PathState::Hold => self.clean_since = None,
            PathState::Clean => {
                let since = *self.clean_since.get_or_insert(now);
                // The target never exceeds the ceiling: a hint sets both.
                if now.saturating_since(since) >= CLEAN_BEFORE_INCREASE {
                    let up = (f64::from(self.target) * INCREASE) as u32;
                    self.target = up.min(self.ceiling);
                }
            }
        }
        self.last = Some(state);
        self.target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: u32 = 1_000_000;
    const FLOOR: u32 = 100_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Reports once a second from `from` s to `to` s.
    fn reports(
        c: &mut RateController,
        from: u64,
        to: u64,
        rtt: Option<Duration>,
        loss: Option<f64>,
    ) -> u32 {
        for s in from..to {
            c.on_path(Timestamp::from_millis(s * 1000), rtt, loss, 0);
        }
        c.target()
    }

    #[test]
    fn loss_needs_enough_packets_to_say() {
        assert_eq!(loss_share(19, 1), None);
        assert_eq!(loss_share(20, 1), Some(0.05));
        assert_eq!(loss_share(100, 0), Some(0.0));
    }

    #[test]
    fn a_clean_path_keeps_the_starting_rate() {
        let mut c = RateController::new(START, FLOOR);
        assert_eq!(reports(&mut c, 0, 30, Some(ms(20)), Some(0.0)), START);
        assert_eq!(c.path_state(), Some(PathState::Clean));
    }

    #[test]
    fn heavy_loss_lowers_the_rate_down_to_the_floor_and_a_clean_path_brings_it_back() {
        let mut c = RateController::new(START, FLOOR);
        assert_eq!(
            reports(&mut c, 0, 1, Some(ms(20)), Some(0.15)),
            (START as f64 * DECREASE) as u32
        );
        assert_eq!(reports(&mut c, 1, 60, Some(ms(20)), Some(0.15)), FLOOR);
        assert_eq!(c.path_state(), Some(PathState::Congested));
        // Clean again: nothing for two seconds, then up to the start, no further.
        assert_eq!(reports(&mut c, 60, 62, Some(ms(20)), Some(0.0)), FLOOR);
        assert!(reports(&mut c, 62, 64, Some(ms(20)), Some(0.0)) > FLOOR);
        assert_eq!(reports(&mut c, 64, 200, Some(ms(20)), Some(0.0)), START);
    }

    #[test]
    fn some_loss_holds_the_rate() {
        let mut c = RateController::new(START, FLOOR);
        reports(&mut c, 0, 3, Some(ms(20)), Some(0.2));
        let low = c.target();
        assert_eq!(reports(&mut c, 3, 20, Some(ms(20)), Some(0.05)), low);
        assert_eq!(c.path_state(), Some(PathState::Hold));
    }

    #[test]
    fn a_long_round_trip_or_queueing_lowers_the_rate() {
        let mut c = RateController::new(START, FLOOR);
        assert!(reports(&mut c, 0, 3, Some(ms(450)), None) < START);
        // Queueing: 50 ms at first, then 250 ms (below the absolute limit).
        let mut c = RateController::new(START, FLOOR);
        reports(&mut c, 0, 3, Some(ms(50)), Some(0.0));
        assert_eq!(c.target(), START);
        assert!(reports(&mut c, 3, 4, Some(ms(250)), Some(0.0)) < START);
    }

    #[test]
    fn a_backlog_at_the_sender_is_queueing_too() {
        let mut c = RateController::new(START, FLOOR);
        // 10 kB waiting at 1 Mbit/s: 80 ms, fine; 25 kB: 200 ms, too much.
        c.on_path(Timestamp::from_millis(0), Some(ms(20)), Some(0.0), 10_000);
        assert_eq!(c.target(), START);
        c.on_path(
            Timestamp::from_millis(1000),
            Some(ms(20)),
            Some(0.0),
            25_000,
        );
        assert!(c.target() < START);
        assert_eq!(c.path_state(), Some(PathState::Congested));
    }

    #[test]
    fn hints_set_the_rate_and_cap_what_a_clean_path_gives_back() {
        let mut c = RateController::new(START, FLOOR);
        c.on_hint(600_000);
        assert_eq!(c.target(), 600_000);
        assert_eq!(reports(&mut c, 0, 60, Some(ms(20)), Some(0.0)), 600_000);
        // A hint is kept within the floor and the start.
        c.on_hint(5_000_000);
        assert_eq!(c.target(), START);
        c.on_hint(1);
        assert_eq!(c.target(), FLOOR);
    }

    #[test]
    fn unknown_measurements_change_nothing_but_the_clock() {
        let mut c = RateController::new(START, FLOOR);
        assert_eq!(reports(&mut c, 0, 10, None, None), START);
        assert_eq!(reports(&mut c, 10, 11, None, Some(f64::NAN)), START);
    }
}
