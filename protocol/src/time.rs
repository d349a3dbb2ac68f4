//! Time as the sans-IO core sees it: microseconds on a clock the caller owns.

use core::ops::{Add, Sub};
use core::time::Duration;

/// A point in time in microseconds on the caller's monotonic clock.
///
/// The core never reads a clock: every call that depends on time takes a
/// `Timestamp`, so tests drive it with a virtual clock and wasm needs no
/// `std::time::Instant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The timestamp `ms` milliseconds after zero.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms * 1000)
    }

    /// Microseconds since the clock's zero.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d.as_micros() as u64))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(d.as_micros() as u64))
    }
}

/// A token bucket on virtual time: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per second.
    rate: f64,
    /// Capacity.
    burst: f64,
    /// Tokens now, as of `updated`.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Timestamp,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(now: Timestamp, rate: f64, burst: f64) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// Takes `n` tokens if they are there; false (and nothing taken) if not.
    pub fn try_take(&mut self, now: Timestamp, n: f64) -> bool {
        let elapsed = now.saturating_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = self.updated.max(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// A time in UTC broken into its calendar parts, for names and tables
/// people read (recording directories, attendance lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    /// The year.
    pub year: i64,
    /// The month, 1 to 12.
    pub month: u32,
    /// The day of the month, 1 to 31.
    pub day: u32,
    /// The hour, 0 to 23.
    pub hour: u32,
    /// The minute.
    pub minute: u32,
    /// The second.
    pub second: u32,
}

impl UtcTime {
    /// `secs` seconds after the Unix epoch.
    pub fn from_unix(secs: u64) -> UtcTime {
        let (days, rem) = (secs / 86_400, secs % 86_400);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        UtcTime {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate_and_caps_at_burst() {
        let t0 = Timestamp::from_millis(0);
        let mut b = TokenBucket::new(t0, 10.0, 5.0);
        for _ in 0..5 {
            assert!(b.try_take(t0, 1.0));
        }
        assert!(!b.try_take(t0, 1.0));
        // 100 ms at 10/s is one token.
        assert!(b.try_take(Timestamp::from_millis(100), 1.0));
        assert!(!b.try_take(Timestamp::from_millis(100), 1.0));
        // A long pause refills only up to the burst.
        let later = Timestamp::from_millis(60_000);
        for _ in 0..5 {
            assert!(b.try_take(later, 1.0));
        }
        assert!(!b.try_take(later, 1.0));
    }

    #[test]
    fn unix_times_break_into_their_utc_calendar_parts() {
        let t = UtcTime::from_unix(1_796_540_462);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2026, 12, 6, 7, 1, 2)
        );
        let leap = UtcTime::from_unix(951_782_400);
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
        let epoch = UtcTime::from_unix(0);
        assert_eq!(
            (epoch.year, epoch.month, epoch.day, epoch.hour),
            (1970, 1, 1, 0)
        );
    }
}
