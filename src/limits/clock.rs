//! Time for the limiters: a monotonic nanosecond timeline for GCRA and the UTC wall clock for
//! quota periods, behind one [`Clock`] trait so that tests drive both with a [`FakeClock`]
//! (exact and sleep-free) while the gateway uses the [`SystemClock`].

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A source of time for the limiters.
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds on a monotonic timeline that starts near 0; only differences matter. GCRA
    /// state is kept on it, so a wall-clock step (NTP, a VM resume) never refills or drains a
    /// bucket.
    fn now(&self) -> u64;

    /// UTC wall-clock time in unix seconds, for quota periods (a day or a month in UTC).
    fn unix_secs(&self) -> i64;
}

/// The real clocks: [`Instant`] since construction, and the system time.
#[derive(Debug)]
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    /// A clock whose monotonic timeline starts now.
    pub fn new() -> Self {
        SystemClock {
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        // u64 nanoseconds last 584 years of uptime.
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn unix_secs(&self) -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }
}

/// A clock that moves only when told to, for exact tests: both timelines advance together.
#[derive(Debug)]
pub struct FakeClock {
    nanos: AtomicU64,
    unix_start: AtomicI64,
}

impl FakeClock {
    /// A clock at monotonic 0 whose wall clock reads `unix_secs`.
    pub fn at_unix(unix_secs: i64) -> Self {
        FakeClock {
            nanos: AtomicU64::new(0),
            unix_start: AtomicI64::new(unix_secs),
        }
    }

    /// Moves both timelines forward by `d`.
    pub fn advance(&self, d: Duration) {
        let add = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(add, Ordering::SeqCst);
    }

    /// Sets the wall clock to `unix_secs` without moving the monotonic timeline (a wall-clock
    /// step).
    pub fn set_unix(&self, unix_secs: i64) {
        let elapsed =
            i64::try_from(self.nanos.load(Ordering::SeqCst) / 1_000_000_000).unwrap_or(i64::MAX);
        self.unix_start
            .store(unix_secs.saturating_sub(elapsed), Ordering::SeqCst);
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        // 2026-01-15T12:00:00Z: mid-month and mid-day, far from any period boundary.
        FakeClock::at_unix(1_768_478_400)
    }
}

impl Clock for FakeClock {
    fn now(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }

    fn unix_secs(&self) -> i64 {
        let elapsed =
            i64::try_from(self.nanos.load(Ordering::SeqCst) / 1_000_000_000).unwrap_or(i64::MAX);
        self.unix_start
            .load(Ordering::SeqCst)
            .saturating_add(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_both_timelines_together() {
        let c = FakeClock::at_unix(1_000);
        assert_eq!((c.now(), c.unix_secs()), (0, 1_000));
        c.advance(Duration::from_millis(2_500));
        assert_eq!((c.now(), c.unix_secs()), (2_500_000_000, 1_002));
        c.set_unix(50_000);
        assert_eq!((c.now(), c.unix_secs()), (2_500_000_000, 50_000));
        c.advance(Duration::from_secs(1));
        assert_eq!(c.unix_secs(), 50_001);
    }

    #[test]
    fn system_clock_is_monotonic() {
        let c = SystemClock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
        assert!(c.unix_secs() > 1_700_000_000);
    }
}
