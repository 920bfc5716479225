//! The generic cell rate algorithm (GCRA) and the per-instance buckets it runs on.
//!
//! A limit of `requests` per `period` with `burst` is an emission interval `T = period /
//! requests` and a tolerance `τ = burst × T`. A subject's whole state is one number, its
//! theoretical arrival time (TAT): a request at `now` is allowed when `max(TAT, now) + T − now ≤
//! τ`, and then, only then, TAT becomes `max(TAT, now) + T`. So a refused request consumes
//! nothing, and since the state does not depend on the limit, a key whose limit changes keeps
//! its bucket: the next request is judged by the new `T` and `τ` against the same TAT. (This is
//! why keygate keeps TATs itself rather than using governor, whose limiters fix one quota per
//! limiter: moving a key to a new quota would give it a fresh, full bucket.)
//!
//! [`Buckets`] keeps one TAT per [`Subject`] in a bounded moka map; a check is a map read and a
//! compare-and-swap of one `AtomicU64`, no lock, no allocation once the subject is known. An
//! entry idles out after the time its bucket takes to fill again (at least [`MIN_IDLE`]): by
//! then `TAT ≤ now` and a missing entry means exactly the same thing (a full bucket).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;

use crate::config::RateLimitSpec;
use crate::keys::KeyId;

/// Nanoseconds in a second.
const NANOS_PER_SEC: u64 = 1_000_000_000;
/// Shortest time an idle bucket is kept. Keeping a bucket longer than its fill time changes no
/// decision; the floor only saves re-creating buckets of short limits, and keeps entries alive
/// when a test's fake clock and moka's real one disagree.
pub const MIN_IDLE: Duration = Duration::from_secs(60);

/// One limit, ready to decide: emission interval and tolerance in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    interval: u64,
    tolerance: u64,
    limit: u32,
}

/// What a check found: whether the request may pass, and what the `RateLimit-*` and
/// `Retry-After` headers say. Durations in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateState {
    /// The request is allowed (and, for a check rather than a peek, counted).
    pub allowed: bool,
    /// The bucket's size (`RateLimit-Limit`; `remaining` never exceeds it).
    pub limit: u32,
    /// Time an empty bucket takes to fill (`w` of `RateLimit-Policy`), nanoseconds.
    pub window_nanos: u64,
    /// Requests that would pass right now (`RateLimit-Remaining`).
    pub remaining: u64,
    /// Until the bucket is full again (`RateLimit-Reset`).
    pub reset_nanos: u64,
    /// Until a refused request would pass (`Retry-After`); 0 when allowed.
    pub retry_after_nanos: u64,
}

impl RateState {
    /// `RateLimit-Reset`: seconds until the bucket is full, rounded up.
    pub fn reset_secs(&self) -> u64 {
        self.reset_nanos.div_ceil(NANOS_PER_SEC)
    }

    /// `w` of `RateLimit-Policy`: seconds an empty bucket takes to fill, rounded up (at least 1).
    pub fn window_secs(&self) -> u64 {
        self.window_nanos.div_ceil(NANOS_PER_SEC).max(1)
    }

    /// `Retry-After`: seconds until a retry can pass, rounded up, at least 1 (0 would invite an
    /// immediate retry that a sub-second wait still refuses).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_nanos.div_ceil(NANOS_PER_SEC).max(1)
    }
}

impl Gcra {
    /// The parameters of `spec`. `T` is rounded down to a whole nanosecond (never below 1):
    /// over a day that allows at most one request more than the exact rate.
    pub fn new(spec: &RateLimitSpec) -> Gcra {
        let period = u64::try_from(spec.period.as_nanos()).unwrap_or(u64::MAX);
        let interval = (period / u64::from(spec.requests.get())).max(1);
        let burst = spec.burst.unwrap_or(spec.requests).get();
        Gcra {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            // The bucket's size, not `requests`: `remaining` counts down from it, and a limit
            // below the remaining count (100 beside 199 for a burst of 200) contradicts itself.
            limit: burst,
        }
    }

    /// Emission interval `T`, nanoseconds.
    pub fn interval(&self) -> u64 {
        self.interval
    }

    /// Tolerance `τ = burst × T`, nanoseconds: also the time an empty bucket takes to fill.
    pub fn tolerance(&self) -> u64 {
        self.tolerance
    }

    /// The bucket's size (`burst`, which defaults to `requests`): the most requests that pass
    /// at once, and what `RateLimit-Limit` says.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// This instance's share of a limit that `instances` enforce together, each on its own
    /// (`rate_limits.mode: redis` while Redis is unreachable): `T × n`, so the rates add up to
    /// the limit's exactly, and a bucket of `burst / n` rounded down, at least 1, so the
    /// buckets add up to `burst` at most (`n` when `burst < n`: every instance must be able to
    /// let a request through). The fill time stays about the limit's.
    pub fn share(&self, instances: usize) -> Gcra {
        let n = u64::try_from(instances).unwrap_or(u64::MAX);
        if n <= 1 {
            return *self;
        }
        let burst = u32::try_from(u64::from(self.limit) / n)
            .unwrap_or(u32::MAX)
            .max(1);
        let interval = self.interval.saturating_mul(n);
        Gcra {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            limit: burst,
        }
    }

    /// One request at `now` against state `tat`: the outcome, and the new TAT if it is allowed
    /// (a refused request leaves the state alone).
    pub fn check(&self, tat: u64, now: u64) -> (RateState, Option<u64>) {
        let base = tat.max(now);
        let new_tat = base.saturating_add(self.interval);
        let ahead = new_tat - now;
        if ahead <= self.tolerance {
            let state = RateState {
                allowed: true,
                limit: self.limit,
                window_nanos: self.tolerance,
                remaining: (self.tolerance - ahead) / self.interval,
                reset_nanos: ahead,
                retry_after_nanos: 0,
            };
            (state, Some(new_tat))
        } else {
            let state = RateState {
                allowed: false,
                limit: self.limit,
                window_nanos: self.tolerance,
                remaining: 0,
                reset_nanos: base - now,
                retry_after_nanos: ahead - self.tolerance,
            };
            (state, None)
        }
    }

    /// The state at `now` without a request: what the next request would meet.
    pub fn peek(&self, tat: u64, now: u64) -> RateState {
        let ahead = tat.saturating_sub(now);
        let remaining = self.tolerance.saturating_sub(ahead) / self.interval;
        RateState {
            allowed: remaining > 0,
            limit: self.limit,
            window_nanos: self.tolerance,
            remaining,
            reset_nanos: ahead,
            retry_after_nanos: if remaining > 0 {
                0
            } else {
                (ahead + self.interval).saturating_sub(self.tolerance)
            },
        }
    }

    /// How long an unused bucket must be kept: its fill time, at least [`MIN_IDLE`].
    fn idle(&self) -> u64 {
        self.tolerance
            .max(u64::try_from(MIN_IDLE.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// Whose bucket: a key (its own, role or default limit), a key on a route with its own limit,
/// or a client IP (failed authentications). 32 bytes, so map lookups neither allocate nor hash
/// a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subject([u8; 32]);

impl Subject {
    const KEY: u8 = 1;
    const KEY_ROUTE: u8 = 2;
    const IP: u8 = 3;

    /// A key's bucket; `route` is the index of a route whose own limit applies.
    pub fn key(id: &KeyId, route: Option<usize>) -> Subject {
        let mut b = [0u8; 32];
        b[0] = if route.is_some() {
            Self::KEY_ROUTE
        } else {
            Self::KEY
        };
        let route = u32::try_from(route.unwrap_or(0)).unwrap_or(u32::MAX);
        b[1..5].copy_from_slice(&route.to_le_bytes());
        // Key ids are `key_` + 22 characters: 26 bytes, which fit.
        let id = id.as_bytes();
        let n = id.len().min(b.len() - 5);
        b[5..5 + n].copy_from_slice(&id[..n]);
        Subject(b)
    }

    /// A client address's bucket. IPv6 clients are grouped by /64, the smallest block a
    /// network hands out: one subscriber holds billions of addresses in it.
    pub fn ip(ip: IpAddr) -> Subject {
        let mut b = [0u8; 32];
        b[0] = Self::IP;
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                b[1] = 4;
                b[2..6].copy_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                b[1] = 6;
                b[2..10].copy_from_slice(&v6.octets()[..8]);
            }
        }
        Subject(b)
    }
}

/// One subject's state: its TAT, and how long it may idle before the entry is dropped (the
/// longest fill time seen for it, so a limit that shrinks never drops a bucket early).
#[derive(Debug)]
struct Bucket {
    tat: AtomicU64,
    idle: AtomicU64,
}

struct IdleExpiry;

impl IdleExpiry {
    fn of(bucket: &Bucket) -> Option<Duration> {
        Some(Duration::from_nanos(bucket.idle.load(Ordering::Relaxed)))
    }
}

impl Expiry<Subject, Arc<Bucket>> for IdleExpiry {
    fn expire_after_create(&self, _: &Subject, v: &Arc<Bucket>, _: Instant) -> Option<Duration> {
        Self::of(v)
    }

    fn expire_after_read(
        &self,
        _: &Subject,
        v: &Arc<Bucket>,
        _: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Self::of(v)
    }

    fn expire_after_update(
        &self,
        _: &Subject,
        v: &Arc<Bucket>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Self::of(v)
    }
}

/// GCRA buckets of one instance: bounded, concurrent, lock-free per check.
pub struct Buckets {
    map: Cache<Subject, Arc<Bucket>>,
}

impl Buckets {
    /// Room for `capacity` subjects. When full, moka evicts (or declines to admit) rarely used
    /// subjects; such a subject starts again with a full bucket, so size it above the number
    /// of keys in use.
    pub fn new(capacity: u64) -> Self {
        Buckets {
            map: Cache::builder()
                .max_capacity(capacity)
                .expire_after(IdleExpiry)
                .build(),
        }
    }

    /// Counts one request of `subject` at `now` if `gcra` allows it.
    pub fn check(&self, subject: Subject, gcra: &Gcra, now: u64) -> RateState {
        let idle = gcra.idle();
        // A plain read first: `get_with` boxes the subject for its insertion path on every call.
        let bucket = self.map.get(&subject).unwrap_or_else(|| {
            self.map.get_with(subject, || {
                Arc::new(Bucket {
                    tat: AtomicU64::new(0),
                    idle: AtomicU64::new(idle),
                })
            })
        });
        if idle > bucket.idle.fetch_max(idle, Ordering::Relaxed) {
            // The limit grew: re-insert so moka re-arms the entry with the longer idle time.
            // Rare (only when a limit changes), so the write is affordable.
            self.map.insert(subject, bucket.clone());
        }
        let mut tat = bucket.tat.load(Ordering::Acquire);
        loop {
            let (state, next) = gcra.check(tat, now);
            let Some(new_tat) = next else {
                return state;
            };
            match bucket.tat.compare_exchange_weak(
                tat,
                new_tat,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return state,
                Err(current) => tat = current,
            }
        }
    }

    /// The state of `subject` at `now`, counting nothing (and creating no entry).
    pub fn peek(&self, subject: &Subject, gcra: &Gcra, now: u64) -> RateState {
        let tat = self
            .map
            .get(subject)
            .map_or(0, |b| b.tat.load(Ordering::Acquire));
        gcra.peek(tat, now)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::limits::clock::{Clock, FakeClock};

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;

    fn spec(requests: u32, period: Duration, burst: Option<u32>) -> RateLimitSpec {
        RateLimitSpec {
            requests: NonZeroU32::new(requests).unwrap(),
            period,
            burst: burst.map(|b| NonZeroU32::new(b).unwrap()),
        }
    }

    fn id(n: u8) -> KeyId {
        KeyId::parse(&format!(
            "key_{}",
            char::from(b'A' + n).to_string().repeat(22)
        ))
        .unwrap()
    }

    /// Sends `n` requests at the clock's now; how many passed.
    fn burst_of(b: &Buckets, s: Subject, g: &Gcra, clock: &FakeClock, n: usize) -> usize {
        (0..n)
            .filter(|_| b.check(s, g, clock.now()).allowed)
            .count()
    }

    #[test]
    fn parameters_follow_the_spec() {
        let g = Gcra::new(&spec(10, Duration::from_secs(1), None));
        assert_eq!(
            (g.interval(), g.tolerance(), g.limit()),
            (100 * MS, SEC, 10)
        );
        let g = Gcra::new(&spec(100, Duration::from_secs(1), Some(200)));
        assert_eq!(
            (g.interval(), g.tolerance(), g.limit()),
            (10 * MS, 2 * SEC, 200)
        );
        // Remaining never exceeds the limit the headers state.
        let state = g.peek(0, 0);
        assert_eq!(
            (state.limit, state.remaining, state.window_secs()),
            (200, 200, 2)
        );
        // T never reaches 0, whatever the spec.
        let g = Gcra::new(&spec(1_000, Duration::from_nanos(10), None));
        assert_eq!(g.interval(), 1);
    }

    #[test]
    fn a_full_bucket_allows_exactly_the_burst_then_one_per_interval() {
        let clock = FakeClock::default();
        let b = Buckets::new(100);
        let g = Gcra::new(&spec(10, Duration::from_secs(1), Some(5)));
        let s = Subject::key(&id(0), None);

        let first = b.check(s, &g, clock.now());
        assert_eq!(
            first,
            RateState {
                allowed: true,
                limit: 5,
                window_nanos: 500 * MS,
                remaining: 4,
                reset_nanos: 100 * MS,
                retry_after_nanos: 0
            }
        );
        assert_eq!(burst_of(&b, s, &g, &clock, 10), 4, "burst of 5 in all");
        let refused = b.check(s, &g, clock.now());
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after_nanos, 100 * MS);
        assert_eq!(
            refused.retry_after_secs(),
            1,
            "rounded up to a whole second"
        );
        assert_eq!(refused.reset_nanos, 500 * MS);

        // Steady state: one request per 100 ms, never two.
        for _ in 0..50 {
            clock.advance(Duration::from_millis(99));
            assert!(!b.check(s, &g, clock.now()).allowed, "1 ms early");
            clock.advance(Duration::from_millis(1));
            let ok = b.check(s, &g, clock.now());
            assert!(ok.allowed);
            assert_eq!(ok.remaining, 0);
            assert!(!b.check(s, &g, clock.now()).allowed);
        }
        // Idle for the fill time: the whole burst is back, not more.
        clock.advance(Duration::from_millis(500));
        assert_eq!(burst_of(&b, s, &g, &clock, 20), 5);
    }

    #[test]
    fn steady_rate_over_a_long_run_is_exact() {
        let clock = FakeClock::default();
        let b = Buckets::new(100);
        let g = Gcra::new(&spec(4, Duration::from_secs(1), Some(1)));
        let s = Subject::key(&id(1), None);
        // Offer a request every millisecond for 60 s: exactly one per 250 ms passes.
        let mut allowed = 0;
        for _ in 0..60_000 {
            allowed += usize::from(b.check(s, &g, clock.now()).allowed);
            clock.advance(Duration::from_millis(1));
        }
        assert_eq!(allowed, 240);
    }

    #[test]
    fn shares_of_a_limit_add_up_to_it_at_most() {
        let g = Gcra::new(&spec(200, Duration::from_secs(1), Some(20)));
        assert_eq!(g.share(0), g);
        assert_eq!(g.share(1), g);
        for (n, burst) in [(2, 10), (3, 6), (7, 2), (20, 1), (50, 1)] {
            let s = g.share(n);
            assert_eq!(s.limit(), burst, "{n} instances");
            assert_eq!(s.interval(), g.interval() * n as u64);
            assert!(s.tolerance() <= g.tolerance() || burst == 1);
        }
        // Three instances, each offered a request every millisecond for 60 s: together they
        // admit what one bucket of the whole limit admits, not three times it, less a request
        // per instance (each rounds its own run's end) and the burst's remainder (20 - 3 × 6).
        let clock = FakeClock::default();
        let share = g.share(3);
        let whole = Buckets::new(10);
        let instances: Vec<Buckets> = (0..3).map(|_| Buckets::new(10)).collect();
        let s = Subject::key(&id(9), None);
        let (mut allowed, mut exact) = (0, 0);
        for _ in 0..60_000 {
            for b in &instances {
                allowed += usize::from(b.check(s, &share, clock.now()).allowed);
            }
            exact += usize::from(whole.check(s, &g, clock.now()).allowed);
            clock.advance(Duration::from_millis(1));
        }
        assert!(
            (exact - 3 - 2..=exact).contains(&allowed),
            "{allowed} admitted, {exact} by one bucket"
        );
        // A limit below one request per instance still lets each instance admit one.
        let one = Gcra::new(&spec(2, Duration::from_secs(3600), None)).share(3);
        assert_eq!(one.limit(), 1);
        assert!(one.check(0, 0).0.allowed);
    }

    #[test]
    fn refused_requests_consume_nothing() {
        let clock = FakeClock::default();
        let b = Buckets::new(100);
        let g = Gcra::new(&spec(2, Duration::from_secs(1), None));
        let s = Subject::key(&id(2), None);
        assert_eq!(burst_of(&b, s, &g, &clock, 2), 2);
        // A flood of refused requests ...
        assert_eq!(burst_of(&b, s, &g, &clock, 1_000), 0);
        // ... does not push the next allowed one further out: after T, one passes.
        clock.advance(Duration::from_millis(500));
        assert_eq!(burst_of(&b, s, &g, &clock, 1_000), 1);
    }

    #[test]
    fn changing_the_limit_keeps_the_bucket() {
        let clock = FakeClock::default();
        let b = Buckets::new(100);
        let s = Subject::key(&id(3), None);
        let small = Gcra::new(&spec(10, Duration::from_secs(1), None));
        assert_eq!(burst_of(&b, s, &small, &clock, 10), 10);

        // A limit twice as large: T = 50 ms, τ = 1 s. The bucket is as empty as before (TAT is
        // 1 s ahead), so the new limit gives nothing at once ...
        let large = Gcra::new(&spec(20, Duration::from_secs(1), None));
        assert_eq!(burst_of(&b, s, &large, &clock, 100), 0);
        // ... and refills at its own pace: after 100 ms, two requests of 50 ms each.
        clock.advance(Duration::from_millis(100));
        assert_eq!(burst_of(&b, s, &large, &clock, 100), 2);

        // Back to the small limit with a bucket emptied by the large one: still nothing.
        assert_eq!(burst_of(&b, s, &small, &clock, 100), 0);
        // A much smaller limit (τ = 1 s of 1-s intervals) with TAT 1 s ahead: refused, and the
        // retry comes when TAT − now + T ≤ τ, i.e. after 1 s.
        let tiny = Gcra::new(&spec(1, Duration::from_secs(1), None));
        let r = b.check(s, &tiny, clock.now());
        assert!(!r.allowed);
        assert_eq!(r.retry_after_nanos, SEC);
        clock.advance(Duration::from_secs(1));
        assert_eq!(burst_of(&b, s, &tiny, &clock, 10), 1);
    }

    #[test]
    fn peek_counts_nothing_and_predicts_the_next_check() {
        let clock = FakeClock::default();
        let b = Buckets::new(100);
        let g = Gcra::new(&spec(4, Duration::from_secs(2), None));
        let s = Subject::ip("203.0.113.7".parse().unwrap());
        let fresh = b.peek(&s, &g, clock.now());
        assert_eq!(
            (fresh.allowed, fresh.remaining, fresh.reset_nanos),
            (true, 4, 0)
        );
        for _ in 0..10 {
            b.peek(&s, &g, clock.now());
        }
        assert_eq!(burst_of(&b, s, &g, &clock, 4), 4);
        let empty = b.peek(&s, &g, clock.now());
        assert!(!empty.allowed);
        let refused = b.check(s, &g, clock.now());
        assert_eq!(empty.retry_after_nanos, refused.retry_after_nanos);
        assert_eq!(empty.retry_after_nanos, 500 * MS);
        assert_eq!(empty.reset_nanos, 2 * SEC);
        assert_eq!(empty.reset_secs(), 2);
    }

    #[test]
    fn subjects_are_apart() {
        let clock = FakeClock::default();
        let b = Buckets::new(100);
        let g = Gcra::new(&spec(1, Duration::from_secs(60), None));
        let subjects = [
            Subject::key(&id(4), None),
            Subject::key(&id(4), Some(0)),
            Subject::key(&id(4), Some(1)),
            Subject::key(&id(5), None),
            Subject::ip("10.0.0.1".parse().unwrap()),
            Subject::ip("10.0.0.2".parse().unwrap()),
            Subject::ip("2001:db8::1".parse().unwrap()),
            Subject::ip("2001:db8:0:1::1".parse().unwrap()),
        ];
        for s in subjects {
            assert!(b.check(s, &g, clock.now()).allowed, "{s:?}");
        }
        // One /64 is one client; an IPv4-mapped address is the IPv4 client.
        for same in ["2001:db8::ffff", "::ffff:10.0.0.1"] {
            let s = Subject::ip(same.parse().unwrap());
            assert!(!b.check(s, &g, clock.now()).allowed, "{same}");
        }
    }

    #[test]
    fn concurrent_checks_allow_exactly_the_burst() {
        let clock = Arc::new(FakeClock::default());
        let b = Arc::new(Buckets::new(100));
        let g = Gcra::new(&spec(1, Duration::from_secs(3600), Some(1_000)));
        let s = Subject::key(&id(6), None);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (b, clock) = (b.clone(), clock.clone());
                std::thread::spawn(move || burst_of(&b, s, &g, &clock, 500))
            })
            .collect();
        let allowed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(allowed, 1_000);
    }
}
