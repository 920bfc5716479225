//! Quotas: usage allowances such as 10,000 requests a month. Owns the quota periods (UTC days,
//! months from `refill_day`) and the in-memory [`Ledger`] of counts; the durable counts live in
//! the store ([`KeyStore::consume_quota`]).
//!
//! Who holds the count that decides:
//!
//! - **Redis store**: Redis. Every request of a quota'd key runs one script that adds 1 only
//!   below the limit, so the count is exact across instances. The ledger remembers the last
//!   count seen, for an outage.
//! - **Embedded store**: the ledger, exact on the one node: one atomic add per request. A
//!   count is loaded from the redb file on a key's first request in a period, and what was
//!   counted is written back every `usage.flush_interval` and on a graceful stop, so a restart
//!   loses nothing (a crash loses at most one interval, in the client's favour).
//!
//! Redis unreachable (a spend whose call fails: the store's circuit breaker is open, or this
//! one call timed out; the breaker alone judges outages, see [`crate::store::breaker`]): with
//! `cache.max_stale` above 0 the gateway already keeps cached keys working through an outage,
//! and quotas follow that choice: they fail open, counting on this instance from the last count
//! it saw (at most the limit per instance during the outage), and the units served meanwhile are
//! added to Redis by the next flush that reaches it, so later requests pay for them. With
//! `max_stale: 0` (fail closed) a quota'd request answers 503 `store_unavailable`. Either way
//! the next spend asks Redis again: one slow reply decides one request, not the next second's.
//! (A call that timed out may still have been counted by Redis, which then holds that unit
//! twice once it is flushed: in the client's disfavour, by the requests of the timeouts.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use time::{Date, Month, OffsetDateTime, Time};

use super::clock::Clock;
use super::gcra::Subject;
use crate::config::{QuotaSpec, Refill};
use crate::error::Reject;
use crate::keys::KeyId;
use crate::store::{KeyStore, QuotaSpend, Store, StoreError};

/// Seconds in a UTC day.
const DAY: i64 = 86_400;
/// A counter unused this long leaves memory (once the store has its units). For the Redis
/// store it is also how long the last count seen serves an outage.
pub const LEDGER_IDLE: i64 = 600;
/// A count is kept this long after its period ends: instances whose clocks lag a little still
/// find it, and late writes of a period's last units do not start a new count.
pub const KEEP_AFTER_PERIOD: i64 = 3_600;

/// The period a quota counts in: `[start, end)` in unix seconds; no end for `refill: none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    /// Start, unix seconds (0 for `refill: none`).
    pub start: i64,
    /// End (the next refill), unix seconds.
    pub end: Option<i64>,
}

impl Window {
    /// The period of `spec` that contains `now` (unix seconds): a UTC day for `daily`; for
    /// `monthly`, from `refill_day` (default 1) of a month, 00:00 UTC, to the same day of the
    /// next month.
    pub fn of(spec: &QuotaSpec, now: i64) -> Window {
        match spec.refill {
            Refill::None => Window {
                start: 0,
                end: None,
            },
            Refill::Daily => {
                let start = now.div_euclid(DAY) * DAY;
                Window {
                    start,
                    end: Some(start + DAY),
                }
            }
            Refill::Monthly => {
                // Validation keeps the day in 1–28, so it exists in every month.
                let day = spec.refill_day.unwrap_or(1).clamp(1, 28);
                let today = OffsetDateTime::from_unix_timestamp(now)
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH)
                    .date();
                let (mut year, mut month) = (today.year(), today.month());
                if today.day() < day {
                    (year, month) = previous_month(year, month);
                }
                let (next_year, next_month) = next_month(year, month);
                Window {
                    start: midnight(year, month, day),
                    end: Some(midnight(next_year, next_month, day)),
                }
            }
        }
    }

    /// When the count may be forgotten.
    fn expires_at(&self) -> Option<i64> {
        self.end.map(|end| end + KEEP_AFTER_PERIOD)
    }

    /// `Retry-After` of a spent quota at `now`: seconds to the refill, at least 1.
    fn retry_after(&self, now: i64) -> Option<u64> {
        self.end
            .map(|end| u64::try_from(end - now).unwrap_or(0).max(1))
    }
}

fn previous_month(year: i32, month: Month) -> (i32, Month) {
    match month {
        Month::January => (year - 1, Month::December),
        m => (year, m.previous()),
    }
}

fn next_month(year: i32, month: Month) -> (i32, Month) {
    match month {
        Month::December => (year + 1, Month::January),
        m => (year, m.next()),
    }
}

fn midnight(year: i32, month: Month, day: u8) -> i64 {
    Date::from_calendar_date(year, month, day)
        .map(|d| d.with_time(Time::MIDNIGHT).assume_utc().unix_timestamp())
        // Only reachable for years beyond ±9999.
        .unwrap_or(0)
}

/// What a quota check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaOutcome {
    /// The request spent a unit and may pass.
    pub spent: bool,
    /// Units left in the period (`X-Keygate-Quota-Remaining`).
    pub remaining: u64,
}

/// One key's count in one period, as this instance knows it.
#[derive(Debug)]
struct Counter {
    id: KeyId,
    window: Window,
    /// Units spent in the period: loaded from the store plus those counted here.
    used: AtomicU64,
    /// Units counted here that the store does not have yet.
    pending: AtomicU64,
    /// Set once `used` holds the store's count (at once for the Redis store, whose counters
    /// only serve an outage).
    loaded: tokio::sync::OnceCell<()>,
    /// Last use, unix seconds: idle counters leave memory.
    last_used: AtomicI64,
}

impl Counter {
    fn new(id: &KeyId, window: Window, now: i64) -> Counter {
        Counter {
            id: id.clone(),
            window,
            used: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            loaded: tokio::sync::OnceCell::new(),
            last_used: AtomicI64::new(now),
        }
    }

    /// Spends one unit at `now` if fewer than `limit` are spent: one atomic read-modify-write.
    fn spend(&self, limit: u64, now: i64) -> QuotaOutcome {
        self.last_used.store(now, Ordering::Relaxed);
        match self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < limit).then_some(u + 1)
            }) {
            Ok(before) => {
                self.pending.fetch_add(1, Ordering::AcqRel);
                QuotaOutcome {
                    spent: true,
                    remaining: limit - before - 1,
                }
            }
            Err(used) => QuotaOutcome {
                spent: false,
                remaining: limit.saturating_sub(used),
            },
        }
    }
}

/// In-memory quota counts by key and period.
///
/// A std `RwLock` around the map, not a tokio one: it is never held across an await. Spending
/// happens under the read lock, and pruning (under the write lock) keeps any counter a caller
/// still holds, so a unit is never counted on a counter that has left the map.
#[derive(Debug, Default)]
pub struct Ledger {
    map: RwLock<HashMap<(Subject, i64), Arc<Counter>>>,
}

impl Ledger {
    /// Spends from a counter that is in memory and loaded; `None` if there is none yet.
    fn try_spend(&self, slot: &(Subject, i64), limit: u64, now: i64) -> Option<QuotaOutcome> {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        map.get(slot)
            .filter(|c| c.loaded.initialized())
            .map(|c| c.spend(limit, now))
    }

    /// The counter of a slot, created (not loaded) if missing.
    fn counter(&self, slot: (Subject, i64), id: &KeyId, window: Window, now: i64) -> Arc<Counter> {
        if let Some(c) = self
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&slot)
        {
            return c.clone();
        }
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(slot)
            .or_insert_with(|| Arc::new(Counter::new(id, window, now)))
            .clone()
    }

    /// Units spent in a slot as far as this instance knows, if it knows.
    fn used(&self, slot: &(Subject, i64)) -> Option<u64> {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        map.get(slot)
            .filter(|c| c.loaded.initialized())
            .map(|c| c.used.load(Ordering::Acquire))
    }

    /// Remembers a count the store returned (Redis), for an outage.
    fn note(&self, slot: (Subject, i64), id: &KeyId, window: Window, used: u64, now: i64) {
        let c = self.counter(slot, id, window, now);
        c.used.fetch_max(used, Ordering::AcqRel);
        let _ = c.loaded.set(());
        c.last_used.store(now, Ordering::Relaxed);
    }

    /// Counts not yet in the store, with the units each write carries.
    fn pending(&self) -> Vec<(Arc<Counter>, u64)> {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        map.values()
            .filter_map(|c| {
                let n = c.pending.load(Ordering::Acquire);
                (n > 0).then(|| (c.clone(), n))
            })
            .collect()
    }

    /// Drops counters that have nothing to write and whose period has ended or that were not
    /// used for [`LEDGER_IDLE`]; the store has their counts.
    fn prune(&self, now: i64) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, c| {
            let in_use = Arc::strong_count(c) > 1 || c.pending.load(Ordering::Acquire) > 0;
            let ended = c.window.end.is_some_and(|end| end <= now);
            let idle = now - c.last_used.load(Ordering::Relaxed) > LEDGER_IDLE;
            in_use || !(ended || idle)
        });
    }

    /// Counters in memory.
    pub fn len(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no counter is in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Quota spending over a store: Redis decides (with the ledger for outages), or the ledger
/// decides and the embedded store keeps its counts.
pub struct Quotas {
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    /// The Redis store decides (the ledger only serves its outages).
    shared: bool,
    /// Flushes to Redis are failing: logged once per run of failures.
    flush_failing: AtomicBool,
    /// `cache.max_stale` is 0: refuse quota'd requests while Redis is unreachable.
    fail_closed: bool,
    ledger: Ledger,
}

impl Quotas {
    /// Quotas over `store`; `fail_closed` for `cache.max_stale: 0`.
    pub fn new(store: Arc<Store>, clock: Arc<dyn Clock>, fail_closed: bool) -> Quotas {
        Quotas {
            shared: matches!(*store, Store::Redis(_)),
            flush_failing: AtomicBool::new(false),
            store,
            clock,
            fail_closed,
            ledger: Ledger::default(),
        }
    }

    /// The in-memory counts.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Spends one unit of the key's quota, or says it is spent (with the seconds to its
    /// refill).
    pub async fn spend(&self, id: &KeyId, spec: &QuotaSpec) -> Result<QuotaOutcome, Reject> {
        let now = self.clock.unix_secs();
        let window = Window::of(spec, now);
        let slot = (Subject::key(id, None), window.start);
        let outcome = if self.shared {
            self.spend_shared(slot, id, window, spec.limit, now).await?
        } else {
            self.spend_local(slot, id, window, spec.limit, now).await?
        };
        if outcome.spent {
            Ok(outcome)
        } else {
            Err(Reject::QuotaExceeded(window.retry_after(now)))
        }
    }

    /// Units left as this instance last saw them, without asking the store (for requests the
    /// rate limit refused: a flood of them costs no store call).
    pub fn known(&self, id: &KeyId, spec: &QuotaSpec) -> Option<u64> {
        let window = Window::of(spec, self.clock.unix_secs());
        self.ledger
            .used(&(Subject::key(id, None), window.start))
            .map(|used| spec.limit.saturating_sub(used))
    }

    /// Units left, counting nothing (for responses refused before the quota stage); `None`
    /// when the count cannot be had.
    pub async fn remaining(&self, id: &KeyId, spec: &QuotaSpec) -> Option<u64> {
        let now = self.clock.unix_secs();
        let window = Window::of(spec, now);
        let slot = (Subject::key(id, None), window.start);
        let used = if self.shared {
            match self.store.consume_quota(&[spend(id, window, 0, 0)]).await {
                Ok(counts) => counts.first().map(|c| c.used),
                Err(_) => self.ledger.used(&slot),
            }
        } else {
            let c = self.ledger.counter(slot, id, window, now);
            self.load(&c).await.ok()?;
            Some(c.used.load(Ordering::Acquire))
        };
        used.map(|u| spec.limit.saturating_sub(u))
    }

    async fn spend_shared(
        &self,
        slot: (Subject, i64),
        id: &KeyId,
        window: Window,
        limit: u64,
        now: i64,
    ) -> Result<QuotaOutcome, Reject> {
        match self
            .store
            .consume_quota(&[spend(id, window, 1, limit)])
            .await
        {
            Ok(counts) => {
                let count = counts
                    .first()
                    .copied()
                    .ok_or_else(|| Reject::StoreUnavailable("no reply to a quota spend".into()))?;
                self.ledger.note(slot, id, window, count.used, now);
                return Ok(QuotaOutcome {
                    spent: count.spent,
                    remaining: limit.saturating_sub(count.used),
                });
            }
            // The breaker logs outages; this spend falls back below.
            Err(e) => tracing::debug!(error = %e, "quota spent without redis"),
        }
        if self.fail_closed {
            return Err(Reject::StoreUnavailable(
                "redis unreachable for a quota'd key (cache.max_stale is 0)".into(),
            ));
        }
        // Fail open: count here from the last count seen (or 0 for a key this instance has
        // not seen in this period).
        let c = self.ledger.counter(slot, id, window, now);
        let _ = c.loaded.set(());
        Ok(self
            .ledger
            .try_spend(&slot, limit, now)
            .unwrap_or_else(|| c.spend(limit, now)))
    }

    async fn spend_local(
        &self,
        slot: (Subject, i64),
        id: &KeyId,
        window: Window,
        limit: u64,
        now: i64,
    ) -> Result<QuotaOutcome, Reject> {
        if let Some(outcome) = self.ledger.try_spend(&slot, limit, now) {
            return Ok(outcome);
        }
        let c = self.ledger.counter(slot, id, window, now);
        self.load(&c)
            .await
            .map_err(|e| Reject::StoreUnavailable(e.to_string()))?;
        // Spend under the read lock. The counter is still the ledger's: pruning keeps counters
        // a caller holds, as `c` is held here.
        Ok(self
            .ledger
            .try_spend(&slot, limit, now)
            .unwrap_or_else(|| c.spend(limit, now)))
    }

    /// Reads a counter's stored count once; concurrent first requests share one read.
    async fn load(&self, c: &Counter) -> Result<(), StoreError> {
        c.loaded
            .get_or_try_init(|| async {
                let counts = self
                    .store
                    .consume_quota(&[spend(&c.id, c.window, 0, u64::MAX)])
                    .await?;
                let stored = counts.first().map_or(0, |q| q.used);
                c.used.fetch_add(stored, Ordering::AcqRel);
                Ok(())
            })
            .await
            .map(drop)
    }

    /// Writes the units counted in memory to the store, then drops idle counters. On failure
    /// the units stay pending for the next call; the failure is logged here, once per run of
    /// failed flushes (with Redis, while its breaker is open, the call fails at once).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let batch = self.ledger.pending();
        if !batch.is_empty() {
            let spends: Vec<QuotaSpend> = batch
                .iter()
                // Units already served are added whatever the limit.
                .map(|(c, n)| spend(&c.id, c.window, *n, u64::MAX))
                .collect();
            if let Err(e) = self.store.consume_quota(&spends).await {
                if !self.flush_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "quota counts could not be written; retrying");
                }
                return Err(e);
            }
            if self.flush_failing.swap(false, Ordering::Relaxed) {
                tracing::info!("quota counts written again");
            }
            for (c, n) in batch {
                c.pending.fetch_sub(n, Ordering::AcqRel);
            }
        }
        self.ledger.prune(self.clock.unix_secs());
        Ok(())
    }
}

fn spend(id: &KeyId, window: Window, n: u64, limit: u64) -> QuotaSpend {
    QuotaSpend {
        id: id.clone(),
        period_start: window.start,
        expires_at: window.expires_at(),
        n,
        limit,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::macros::datetime;

    use super::*;
    use crate::config::EmbeddedConfig;
    use crate::limits::clock::FakeClock;
    use crate::store::embedded::EmbeddedStore;

    fn quota(limit: u64, refill: Refill, refill_day: Option<u8>) -> QuotaSpec {
        QuotaSpec {
            limit,
            refill,
            refill_day,
        }
    }

    fn unix(t: OffsetDateTime) -> i64 {
        t.unix_timestamp()
    }

    #[test]
    fn days_are_utc_days() {
        let q = quota(1, Refill::Daily, None);
        let w = Window::of(&q, unix(datetime!(2026-03-10 23:59:59 UTC)));
        assert_eq!(w.start, unix(datetime!(2026-03-10 00:00 UTC)));
        assert_eq!(w.end, Some(unix(datetime!(2026-03-11 00:00 UTC))));
        let next = Window::of(&q, unix(datetime!(2026-03-11 00:00 UTC)));
        assert_eq!(next.start, w.end.unwrap());
    }

    #[test]
    fn months_run_from_the_refill_day_to_the_same_day_next_month() {
        let q = quota(1, Refill::Monthly, Some(15));
        for (now, start, end) in [
            (
                datetime!(2026-03-20 08:00 UTC),
                datetime!(2026-03-15 00:00 UTC),
                datetime!(2026-04-15 00:00 UTC),
            ),
            (
                datetime!(2026-03-14 23:59:59 UTC),
                datetime!(2026-02-15 00:00 UTC),
                datetime!(2026-03-15 00:00 UTC),
            ),
            (
                datetime!(2026-03-15 00:00 UTC),
                datetime!(2026-03-15 00:00 UTC),
                datetime!(2026-04-15 00:00 UTC),
            ),
            // Across a year, both ways.
            (
                datetime!(2026-01-03 00:00 UTC),
                datetime!(2025-12-15 00:00 UTC),
                datetime!(2026-01-15 00:00 UTC),
            ),
            (
                datetime!(2025-12-31 00:00 UTC),
                datetime!(2025-12-15 00:00 UTC),
                datetime!(2026-01-15 00:00 UTC),
            ),
        ] {
            let w = Window::of(&q, unix(now));
            assert_eq!((w.start, w.end), (unix(start), Some(unix(end))), "{now}");
        }
        // refill_day defaults to the 1st; February has 28 days and is a month all the same.
        let q = quota(1, Refill::Monthly, None);
        let w = Window::of(&q, unix(datetime!(2026-02-28 12:00 UTC)));
        assert_eq!(w.start, unix(datetime!(2026-02-01 00:00 UTC)));
        assert_eq!(w.end, Some(unix(datetime!(2026-03-01 00:00 UTC))));
        let never = Window::of(&quota(1, Refill::None, None), 1_234_567);
        assert_eq!((never.start, never.end), (0, None));
        assert_eq!(never.retry_after(1_234_567), None);
        assert_eq!(
            w.retry_after(unix(datetime!(2026-02-28 23:59:59.5 UTC))),
            Some(1)
        );
    }

    fn embedded(dir: &tempfile::TempDir) -> Arc<Store> {
        let config = EmbeddedConfig {
            path: dir.path().join("quota.redb"),
        };
        Arc::new(Store::Embedded(EmbeddedStore::open(&config).unwrap()))
    }

    fn key() -> KeyId {
        KeyId::generate()
    }

    #[tokio::test]
    async fn a_daily_quota_refills_at_midnight_utc() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FakeClock::at_unix(unix(datetime!(2026-05-01 23:59:58 UTC))));
        let quotas = Quotas::new(embedded(&dir), clock.clone(), false);
        let (id, q) = (key(), quota(3, Refill::Daily, None));
        for remaining in [2, 1, 0] {
            let o = quotas.spend(&id, &q).await.unwrap();
            assert_eq!(o.remaining, remaining);
        }
        assert_eq!(
            quotas.spend(&id, &q).await,
            Err(Reject::QuotaExceeded(Some(2)))
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            quotas.spend(&id, &q).await,
            Err(Reject::QuotaExceeded(Some(1)))
        );
        clock.advance(Duration::from_secs(1));
        // 2026-05-02 00:00:00: a new day, a new allowance.
        assert_eq!(quotas.spend(&id, &q).await.unwrap().remaining, 2);
        assert_eq!(quotas.remaining(&id, &q).await, Some(2));
    }

    #[tokio::test]
    async fn a_monthly_quota_refills_on_its_day_and_a_quota_without_refill_never() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FakeClock::at_unix(unix(datetime!(2026-05-09 12:00 UTC))));
        let quotas = Quotas::new(embedded(&dir), clock.clone(), false);
        let (monthly, m) = (key(), quota(2, Refill::Monthly, Some(10)));
        let (never, n) = (key(), quota(2, Refill::None, None));
        for _ in 0..2 {
            quotas.spend(&monthly, &m).await.unwrap();
            quotas.spend(&never, &n).await.unwrap();
        }
        // Twelve hours to the 10th.
        assert_eq!(
            quotas.spend(&monthly, &m).await,
            Err(Reject::QuotaExceeded(Some(12 * 3600)))
        );
        assert_eq!(
            quotas.spend(&never, &n).await,
            Err(Reject::QuotaExceeded(None))
        );
        clock.advance(Duration::from_secs(12 * 3600));
        assert_eq!(quotas.spend(&monthly, &m).await.unwrap().remaining, 1);
        assert!(quotas.spend(&never, &n).await.is_err());
        // A month later still nothing for the quota that never refills.
        clock.advance(Duration::from_secs(31 * 86_400));
        assert!(quotas.spend(&never, &n).await.is_err());
        assert_eq!(quotas.spend(&monthly, &m).await.unwrap().remaining, 1);
    }

    #[tokio::test]
    async fn counts_survive_a_restart_once_flushed_and_a_raised_limit_keeps_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FakeClock::default());
        let (id, q) = (key(), quota(10, Refill::Monthly, Some(1)));
        {
            let quotas = Quotas::new(embedded(&dir), clock.clone(), false);
            for _ in 0..4 {
                quotas.spend(&id, &q).await.unwrap();
            }
            quotas.flush().await.unwrap();
            // Flushing twice writes nothing twice.
            quotas.flush().await.unwrap();
        }
        let quotas = Quotas::new(embedded(&dir), clock.clone(), false);
        assert_eq!(quotas.remaining(&id, &q).await, Some(6));
        let raised = quota(20, Refill::Monthly, Some(1));
        assert_eq!(quotas.spend(&id, &raised).await.unwrap().remaining, 15);
    }

    #[tokio::test]
    async fn concurrent_spends_are_exact_and_idle_counters_leave_memory() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FakeClock::default());
        let quotas = Arc::new(Quotas::new(embedded(&dir), clock.clone(), false));
        let (id, q) = (key(), quota(1_000, Refill::Daily, None));
        let tasks: Vec<_> = (0..1_500)
            .map(|_| {
                let (quotas, id) = (quotas.clone(), id.clone());
                tokio::spawn(async move { quotas.spend(&id, &q).await.is_ok() })
            })
            .collect();
        let mut passed = 0;
        for t in tasks {
            passed += usize::from(t.await.unwrap());
        }
        assert_eq!(passed, 1_000);
        quotas.flush().await.unwrap();
        assert_eq!(quotas.ledger().len(), 1, "recently used: kept");
        clock.advance(Duration::from_secs(LEDGER_IDLE as u64 + 1));
        quotas.flush().await.unwrap();
        assert!(quotas.ledger().is_empty(), "idle and written: dropped");
        // The store has every unit.
        assert_eq!(quotas.remaining(&id, &q).await, Some(0));
    }
}
