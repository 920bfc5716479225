//! The circuit breaker in front of Redis (SPEC §4: "an outage costs no request more than the
//! timeout"; issue 9 asked that it cost a cached key nothing):
//! after a call fails for want of Redis, calls fail at once with [`StoreError::Unavailable`]
//! for [`OPEN_FOR`] instead of each waiting for `store.redis.timeout`, so cached keys are served
//! at full speed (stale within `cache.max_stale`) and uncached ones get `store_unavailable`
//! without delay. Every Redis round trip of the store and of the global rate limiter passes
//! through the one breaker of its [`super::redis::RedisStore`].
//!
//! States, in two atomics:
//! - **closed** (`open_until == 0`): every call goes to Redis; admitting one is one atomic load.
//! - **open** (`now < open_until`): calls fail fast.
//! - **half-open** (`now >= open_until`): the first caller becomes the probe and goes to Redis;
//!   the others keep failing fast while it is in flight. An answer closes the breaker; a failure
//!   opens it for another [`OPEN_FOR`].
//!
//! What counts ([`Outcome`]): a timeout or a connection error opens it; an answer, even an error
//! reply (a script error, `NOPERM`), shows that Redis is there and does not. A dropped connection
//! noticed by a call is [`Outcome::Inconclusive`]: the connection manager reconnects at once, and
//! one lost connection is not an outage (reads and safe writes are retried on the new one, see
//! `store::redis`); if Redis is really gone, the reconnect fails and the next call opens it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::StoreError;

/// How long calls fail fast after a failure before one probe goes to Redis. Not backed off:
/// it bounds how long after Redis is back this instance keeps serving cached records without
/// asking (a revocation made elsewhere meanwhile stays unseen that long), which should stay well
/// under the 50 ms SPEC §8 allows for revocations to spread. Its cost is at most one request per
/// period waiting for the probe while Redis does not answer (a refused connection fails at once;
/// only an unanswering one costs the timeout).
pub const OPEN_FOR: Duration = Duration::from_millis(20);

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

    /// Whether the breaker is not closed: from a failure until a call (the probe) finds Redis
    /// answering. With no traffic it stays so past [`OPEN_FOR`], as nothing has shown Redis back.
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
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!("redis answers again");
        }
    }

    fn now(&self) -> u64 {
        // Never 0, which means closed; u64 nanoseconds last 584 years.
        u64::try_from(self.origin.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn reopen_at(&self) -> u64 {
        self.now()
            .saturating_add(u64::try_from(OPEN_FOR.as_nanos()).unwrap_or(u64::MAX))
    }

    /// A call admitted while closed failed: open, unless another failure did already.
    fn failed_while_closed(&self) {
        if self
            .open_until
            .compare_exchange(0, self.reopen_at(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.opens.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "redis unreachable; store calls fail fast, cached keys served within cache.max_stale"
            );
        }
    }
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
        let b = self.breaker;
        match (self.probe, outcome) {
            (false, Outcome::Failed) => b.failed_while_closed(),
            // A late answer to a call made before the breaker opened proves little: only the
            // probe closes it.
            (false, _) | (true, Outcome::Inconclusive) => {}
            (true, Outcome::Answered) => b.close(),
            (true, Outcome::Failed) => b.open_until.store(b.reopen_at(), Ordering::Release),
        }
        // `Drop` lets the next caller probe.
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

    #[test]
    fn opens_on_failure_probes_once_and_closes_on_an_answer() {
        let b = Breaker::new();
        b.admit().unwrap().record(Outcome::Answered);
        b.admit().unwrap().record(Outcome::Inconclusive);
        assert!(!b.is_open());

        b.admit().unwrap().record(Outcome::Failed);
        assert!(b.is_open() && fails_fast(&b));
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
    }

    #[test]
    fn an_abandoned_or_inconclusive_probe_lets_the_next_caller_probe() {
        let b = Breaker::new();
        b.admit().unwrap().record(Outcome::Failed);
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
        b.admit().unwrap().record(Outcome::Failed);
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
        b.admit().unwrap().record(Outcome::Failed);
        b.close();
        assert!(b.admit().is_ok());
    }
}
