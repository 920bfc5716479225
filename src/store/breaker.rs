//! The circuit breaker in front of Redis: the one place that decides whether Redis is down, for
//! the store, the global rate limiter and quota counting alike (SPEC §4: "an outage costs no
//! request more than the timeout"; issue 9 asked that it cost a cached key nothing; issue 13
//! that one slow reply not count as an outage).
//!
//! While it is open, calls fail at once with [`StoreError::Unavailable`] for [`OPEN_FOR`]
//! instead of each waiting for `store.redis.timeout`: cached keys are served at full speed
//! (stale within `cache.max_stale`), uncached ones get `store_unavailable` without delay, and
//! the rate limiter and quotas count on this instance. Every Redis round trip of the store, the
//! global rate limiter and the quota scripts passes through the one breaker of its
//! [`super::redis::RedisStore`].
//!
//! States, in a few atomics:
//! - **closed** (`open_until == 0`): every call goes to Redis; admitting one is one atomic load.
//!   A failed call fails (and its caller falls back as it would in an outage), but one failure
//!   is not an outage: it opens only after [`FAILURES_IN_A_ROW`] failures with no answer
//!   between them, or when at least [`RATE_MIN_CALLS`] calls in the current [`RATE_WINDOW`]
//!   failed half the time or more (Redis answering some calls and not others).
//! - **open** (`now < open_until`): calls fail fast.
//! - **half-open** (`now >= open_until`): the first caller becomes the probe and goes to Redis;
//!   the others keep failing fast while it is in flight. An answer closes the breaker (and
//!   forgets the failures counted so far); a failure opens it for another [`OPEN_FOR`].
//!
//! What counts ([`Outcome`]): a timeout or a connection error is a failure; an answer, even an
//! error reply (a script error, `NOPERM`), shows that Redis is there. A dropped connection
//! noticed by a call is [`Outcome::Inconclusive`]: the connection manager reconnects at once, and
//! one lost connection is not an outage (reads and safe writes are retried on the new one, see
//! `store::redis`); if Redis is really gone, the reconnects fail and count.
//!
//! Why not open on the first failure (as it did): on a busy machine one reply now and then
//! arrives after the timeout, and an open breaker sends every instance's rate limiting to its
//! own buckets; opening on a pattern of failures leaves a stray slow reply to cost its own
//! request only. The price is at outage onset: up to [`FAILURES_IN_A_ROW`] calls (per wave of
//! concurrent ones) wait for the timeout instead of one, each still bounded by it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::StoreError;

/// How long calls fail fast once the breaker opens, before one probe goes to Redis. Not backed
/// off: it bounds how long after Redis is back this instance keeps serving cached records
/// without asking (a revocation made elsewhere meanwhile stays unseen that long), which should
/// stay well under the 50 ms SPEC §8 allows for revocations to spread; it also bounds how long
/// the rate limiter stays on its local share after Redis is back. Its cost is at most one
/// request per period waiting for the probe while Redis does not answer (a refused connection
/// fails at once; only an unanswering one costs the timeout).
pub const OPEN_FOR: Duration = Duration::from_millis(20);
/// Failed calls with no answer between them that open the breaker. One is a slow reply, not an
/// outage; three in a row, with nothing answering between, is Redis gone (or as good as).
pub const FAILURES_IN_A_ROW: u32 = 3;
/// The window of the failure-rate rule: counts start again in each one.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);
/// Calls a window needs before its failure rate may open the breaker (a quiet instance's rate
/// over a handful of calls says little; the row rule covers it).
pub const RATE_MIN_CALLS: u64 = 20;

/// Bits of a count in the window word (calls, failures); counting stops at the top, which keeps
/// the rate of the first million calls of a window.
const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;

/// How a call that was admitted ended, as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Redis answered (a value or an error reply).
    Answered,
    /// Redis could not be reached in time: a timeout, a refused or failed connection.
    Failed,
    /// Says nothing either way (a connection dropped under the call; see the module docs).
    Inconclusive,
}

/// Open/closed state of one Redis server's calls, shared by everything that calls it.
#[derive(Debug)]
pub struct Breaker {
    /// Nanoseconds since `origin` until which calls fail fast; 0 while closed.
    open_until: AtomicU64,
    /// Whether the half-open probe is in flight.
    probing: AtomicBool,
    /// Failures since the last answer.
    in_a_row: AtomicU32,
    /// The current rate window, in one word so that a new window resets both counts at once:
    /// window number (low 24 bits of it) << 40 | calls << 20 | failures.
    window: AtomicU64,
    /// Times the breaker went from closed to open.
    opens: AtomicU64,
    origin: Instant,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::new()
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new() -> Self {
        Breaker {
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            in_a_row: AtomicU32::new(0),
            window: AtomicU64::new(0),
            opens: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    /// Lets a call go to Redis, or fails it at once while the breaker is open (or half-open with
    /// the probe in flight). The permit must be given the call's [`Outcome`].
    pub fn admit(&self) -> Result<Permit<'_>, StoreError> {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Ok(Permit {
                breaker: self,
                probe: false,
            });
        }
        if self.now() >= until
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Ok(Permit {
                breaker: self,
                probe: true,
            });
        }
        Err(StoreError::Unavailable(format!(
            "redis unreachable a moment ago; asked again within {} ms",
            OPEN_FOR.as_millis()
        )))
    }

    /// A permit whatever the state, for a call that undoes half of a write which just failed
    /// (a create's rollback): failing it fast would leave the half that landed for good, while
    /// trying costs one timeout at most. Its outcome counts as any call's.
    pub fn bypass(&self) -> Permit<'_> {
        Permit {
            breaker: self,
            probe: false,
        }
    }

    /// Whether the breaker is not closed: from the failure that opened it until a call (the
    /// probe) finds Redis answering. With no traffic it stays so past [`OPEN_FOR`], as nothing
    /// has shown Redis back.
    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// Times the breaker opened.
    pub fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }

    /// Closes the breaker on evidence from elsewhere that Redis answers (the invalidation
    /// subscriber connected), so calls need not wait for the next probe.
    pub fn close(&self) {
        self.close_at(self.now());
    }

    fn close_at(&self, now: u64) {
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            // The failures that opened it say nothing about Redis now.
            self.in_a_row.store(0, Ordering::Relaxed);
            self.window
                .store(window_tag(now) << (2 * COUNT_BITS), Ordering::Relaxed);
            tracing::info!("redis answers again");
        }
    }

    fn now(&self) -> u64 {
        // Never 0, which means closed; u64 nanoseconds last 584 years.
        u64::try_from(self.origin.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn reopen_at(now: u64) -> u64 {
        now.saturating_add(u64::try_from(OPEN_FOR.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Counts one call of a permit that is not the probe in the current window; returns the
    /// window's `(calls, failures)` so far.
    fn tally(&self, failed: bool, now: u64) -> (u64, u64) {
        let tag = window_tag(now);
        let mut counts = (0, 0);
        let update = self
            .window
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let (mut calls, mut failures) = if w >> (2 * COUNT_BITS) == tag {
                    ((w >> COUNT_BITS) & COUNT_MAX, w & COUNT_MAX)
                } else {
                    (0, 0)
                };
                if calls < COUNT_MAX {
                    calls += 1;
                    failures += u64::from(failed);
                }
                counts = (calls, failures);
                Some(tag << (2 * COUNT_BITS) | calls << COUNT_BITS | failures)
            });
        debug_assert!(update.is_ok(), "the closure always returns Some");
        counts
    }

    /// A call admitted while closed (or a late one) was answered: the row of failures ends.
    fn answered(&self, now: u64) {
        // A load first: while Redis answers, the row is 0 and the line stays shared.
        if self.in_a_row.load(Ordering::Relaxed) != 0 {
            self.in_a_row.store(0, Ordering::Relaxed);
        }
        self.tally(false, now);
    }

    /// A call admitted while closed (or a late one) failed: open if that makes a row of
    /// [`FAILURES_IN_A_ROW`] or a failure rate of half the window's calls, unless the breaker
    /// is open already.
    fn failed(&self, now: u64) {
        let row = self
            .in_a_row
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let (calls, failures) = self.tally(true, now);
        let rate = calls >= RATE_MIN_CALLS && failures * 2 >= calls;
        if (row >= FAILURES_IN_A_ROW || rate)
            && self
                .open_until
                .compare_exchange(0, Self::reopen_at(now), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.opens.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                failures_in_a_row = row,
                window_calls = calls,
                window_failures = failures,
                "redis unreachable; calls fail fast (cached keys served within cache.max_stale, \
                 rate limits and quotas counted on each instance) until it answers again"
            );
        }
    }

    fn record_at(&self, probe: bool, outcome: Outcome, now: u64) {
        match (probe, outcome) {
            (false, Outcome::Failed) => self.failed(now),
            // A late answer to a call made before the breaker opened ends a row of failures but
            // proves little about now: only the probe closes it.
            (false, Outcome::Answered) => self.answered(now),
            (_, Outcome::Inconclusive) => {}
            (true, Outcome::Answered) => self.close_at(now),
            (true, Outcome::Failed) => self
                .open_until
                .store(Self::reopen_at(now), Ordering::Release),
        }
    }
}

/// The number of the [`RATE_WINDOW`] holding `now`, kept to the bits the window word has.
fn window_tag(now: u64) -> u64 {
    let window = u64::try_from(RATE_WINDOW.as_nanos()).unwrap_or(u64::MAX);
    (now / window) & ((1 << (64 - 2 * COUNT_BITS)) - 1)
}

/// Leave to make one call to Redis, from [`Breaker::admit`].
#[must_use = "the call's outcome must be recorded"]
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

impl Permit<'_> {
    /// Records how the call ended.
    pub fn record(self, outcome: Outcome) {
        if outcome == Outcome::Inconclusive {
            // Changes nothing: no clock read.
            return;
        }
        self.breaker
            .record_at(self.probe, outcome, self.breaker.now());
        // `Drop` lets the next caller probe.
    }

    /// [`Permit::record`] at a given time (nanoseconds since the breaker's origin), so that
    /// tests of the rate window do not depend on where a real second starts.
    #[cfg(test)]
    fn record_at(self, outcome: Outcome, now: u64) {
        self.breaker.record_at(self.probe, outcome, now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        // Also when the call was cancelled before its outcome was known.
        if self.probe {
            self.breaker.probing.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails_fast(b: &Breaker) -> bool {
        b.admit().is_err()
    }

    /// Opens `b` from closed: failures until it opens, no more than a row of them.
    fn open(b: &Breaker) {
        for _ in 0..FAILURES_IN_A_ROW {
            if !b.is_open() {
                b.admit().unwrap().record(Outcome::Failed);
            }
        }
        assert!(b.is_open());
    }

    #[test]
    fn one_failure_does_not_open_it_and_a_row_of_them_does() {
        let b = Breaker::new();
        b.admit().unwrap().record(Outcome::Answered);
        b.admit().unwrap().record(Outcome::Inconclusive);
        assert!(!b.is_open());

        // A slow reply: that call fails, the next goes to Redis.
        b.admit().unwrap().record(Outcome::Failed);
        assert!(!b.is_open() && !fails_fast(&b));
        // An answer between failures ends the row.
        for _ in 1..FAILURES_IN_A_ROW {
            b.admit().unwrap().record(Outcome::Failed);
            b.admit().unwrap().record(Outcome::Answered);
        }
        assert!(!b.is_open());
        assert_eq!(b.opens(), 0);

        for _ in 1..FAILURES_IN_A_ROW {
            b.admit().unwrap().record(Outcome::Failed);
        }
        assert!(!b.is_open(), "one short of a row");
        b.admit().unwrap().record(Outcome::Failed);
        assert!(b.is_open() && fails_fast(&b));
        assert_eq!(b.opens(), 1);
    }

    #[test]
    fn a_failure_rate_of_half_the_calls_in_a_window_opens_it() {
        let b = Breaker::new();
        let window = u64::try_from(RATE_WINDOW.as_nanos()).unwrap();
        let at = 7 * window;
        // Answered and failed in turn: never two failures in a row. 45% fail: closed.
        for i in 0..40 {
            let outcome = if i % 2 == 0 && i % 20 != 0 {
                Outcome::Failed
            } else {
                Outcome::Answered
            };
            b.admit().unwrap().record_at(outcome, at + i);
        }
        assert!(!b.is_open(), "18 of 40 failed");

        // A new window: 19 calls, 9 failed (under the minimum), then the 20th fails: 50%.
        let at = 8 * window;
        for i in 0..19 {
            let outcome = if i % 2 == 1 {
                Outcome::Failed
            } else {
                Outcome::Answered
            };
            b.admit().unwrap().record_at(outcome, at + i);
        }
        assert!(!b.is_open(), "too few calls to judge by their rate");
        b.admit().unwrap().record_at(Outcome::Failed, at + 19);
        assert!(b.is_open(), "10 of 20 failed");
        assert_eq!(b.opens(), 1);
    }

    #[test]
    fn the_rate_counts_start_again_in_each_window_and_when_it_closes() {
        let b = Breaker::new();
        let window = u64::try_from(RATE_WINDOW.as_nanos()).unwrap();
        let fill = |start: u64, failures: u64, answers: u64| {
            for i in 0..failures {
                b.admit().unwrap().record_at(Outcome::Failed, start + 2 * i);
                b.admit()
                    .unwrap()
                    .record_at(Outcome::Answered, start + 2 * i + 1);
            }
            for i in 0..answers {
                b.admit()
                    .unwrap()
                    .record_at(Outcome::Answered, start + 2 * failures + i);
            }
        };
        // 9 of 18 failed late in one window; the next window's first failures do not add up.
        fill(3 * window - 100, 9, 0);
        fill(3 * window, 1, 0);
        b.admit()
            .unwrap()
            .record_at(Outcome::Answered, 3 * window + 5);
        assert!(!b.is_open());

        // Closing forgets the window: the failures that opened it do not reopen it.
        let at = 5 * window;
        fill(at, RATE_MIN_CALLS / 2 - 1, 0);
        b.admit()
            .unwrap()
            .record_at(Outcome::Failed, at + window / 2);
        b.admit()
            .unwrap()
            .record_at(Outcome::Failed, at + window / 2 + 1);
        assert!(b.is_open(), "over half of the window's calls failed");
        b.close_at(at + window / 2 + 2);
        b.admit()
            .unwrap()
            .record_at(Outcome::Failed, at + window / 2 + 3);
        assert!(!b.is_open(), "closing started the window again");
    }

    #[test]
    fn it_probes_once_and_closes_on_an_answer() {
        let b = Breaker::new();
        open(&b);
        assert_eq!(b.opens(), 1);

        std::thread::sleep(OPEN_FOR);
        let probe = b.admit().expect("the probe goes after OPEN_FOR");
        assert!(fails_fast(&b), "one probe at a time");
        probe.record(Outcome::Failed);
        assert!(fails_fast(&b), "a failed probe opens it again");
        assert_eq!(b.opens(), 1, "reopening is not another opening");

        std::thread::sleep(OPEN_FOR);
        b.admit().unwrap().record(Outcome::Answered);
        assert!(!b.is_open());
        b.admit().unwrap().record(Outcome::Answered);
        // Closed again, a single failure fails only its own call.
        b.admit().unwrap().record(Outcome::Failed);
        assert!(!b.is_open());
    }

    #[test]
    fn an_abandoned_or_inconclusive_probe_lets_the_next_caller_probe() {
        let b = Breaker::new();
        open(&b);
        std::thread::sleep(OPEN_FOR);
        drop(b.admit().unwrap());
        b.admit().unwrap().record(Outcome::Inconclusive);
        assert!(b.is_open());
        b.admit().unwrap().record(Outcome::Answered);
        assert!(!b.is_open());
    }

    #[test]
    fn a_rollback_goes_through_an_open_breaker_without_closing_it() {
        let b = Breaker::new();
        open(&b);
        assert!(fails_fast(&b));
        // The undo of a half-landed write is sent anyway; an answer to it proves no more than
        // any late answer, so the breaker stays open until a probe.
        b.bypass().record(Outcome::Answered);
        assert!(fails_fast(&b));
        b.bypass().record(Outcome::Failed);
        assert_eq!(b.opens(), 1);
    }

    #[test]
    fn close_ends_an_outage_early() {
        let b = Breaker::new();
        open(&b);
        b.close();
        assert!(b.admit().is_ok());
    }
}
