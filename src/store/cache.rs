//! The hot cache of key records by secret hash, in front of a [`KeyStore`]: the only way the
//! request path reaches the store.
//!
//! - It holds each key as a [`CachedKey`] (what the request path reads, the shared part
//!   interned: see [`super::cached`]), not the full record.
//! - Positive entries are trusted for `cache.ttl`, then refreshed; while the store is
//!   unreachable they keep working up to `cache.max_stale` longer (0 = fail closed). Unknown
//!   hashes are remembered for `cache.negative_ttl`, so floods of wrong keys stay off the store.
//! - Concurrent misses for one hash make one store call (moka's per-key initialisation).
//! - Invalidation cannot be undone by a racing fill: every entry carries the generation of its
//!   hash's shard as read *before* the store call, and [`KeyCache::invalidate`] bumps that
//!   generation *after* the store write. An entry from an older generation is never served.
//! - Losing the cross-instance invalidation channel ([`super::invalidation`]) may hide changes
//!   made elsewhere, so [`KeyCache::mark_all_stale`] makes every entry due for a re-read, by the
//!   same read-before-the-store-call scheme with one cache-wide epoch. A stale entry is re-read
//!   on its next use, and serves only as the `max_stale` fallback while the store is unreachable.
//! - While the channel is down ([`KeyCache::distrust`] until [`KeyCache::trust`]), changes made
//!   elsewhere go unheard, so no positive entry is trusted: the cache behaves as if `ttl` were
//!   0 (negative entries read meanwhile still last `negative_ttl`), every lookup re-reads the
//!   store (one call per hash at a time; requests that arrived while it was under way take its
//!   answer), and a cached record is served only as the `max_stale` fallback while the store is
//!   unreachable. Both transitions also mark everything stale: what was read
//!   before the channel came back may have missed a message. The trust state is the low bit of
//!   the epoch, so a hit still costs one atomic load.
//! - While the invalidation channel is up, entries are trusted only under a [`Lease`] that the
//!   subscriber renews many times a second: a process that stood still (SIGSTOP, a stalled
//!   runtime) may hold an invalidation unread after its sender stopped waiting for it, so the
//!   first lookup that finds the lease run out marks everything stale before renewing it (see
//!   [`super::fleet`], *Lease*). A hit costs one more atomic load and a monotonic clock read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};

use super::cached::{CachedKey, Grants};
use super::stats::{StoreMetrics, StoreOp};
use super::{KeyStore, StoreError};
use crate::config::CacheConfig;
use crate::keys::{KeyRecord, SecretHash};

/// Generation shards. A bump forces a re-read of 1/SHARDS of the cached keys: cheap, since
/// changes to keys are rare next to lookups, and bounded memory unlike a per-key map.
const SHARDS: usize = 4096;
/// Fills that race an invalidation are retried this often before answering uncached.
const MAX_FILL_RACES: usize = 3;

#[derive(Clone)]
struct Entry {
    record: Option<Arc<CachedKey>>,
    generation: u64,
    /// The cache-wide epoch as read before the store call; see [`KeyCache::mark_all_stale`].
    /// Odd: read while the cache was distrusted, never fresh.
    epoch: u64,
    /// When the store call began (`ttl` counts from here, so it never overstates freshness).
    fetched: Instant,
}

struct Policy {
    positive: Duration,
    negative: Duration,
}

impl Expiry<SecretHash, Entry> for Policy {
    fn expire_after_create(&self, _: &SecretHash, v: &Entry, _: Instant) -> Option<Duration> {
        Some(if v.record.is_some() {
            self.positive
        } else {
            self.negative
        })
    }

    fn expire_after_update(
        &self,
        k: &SecretHash,
        v: &Entry,
        at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(k, v, at)
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Lookups answered from the cache (including negative entries).
    pub hits: AtomicU64,
    /// Lookups that went to the store.
    pub misses: AtomicU64,
    /// Lookups answered with a record past `ttl` (or marked stale) because the store was
    /// unreachable.
    pub stale_served: AtomicU64,
    /// Times the [`Lease`] was found run out (the process stood still): each marked every
    /// entry stale.
    pub lease_lapses: AtomicU64,
}

/// How long cached entries may be trusted without a sign of life from the invalidation
/// subscriber (see the module docs): a deadline on the monotonic clock, renewed by the
/// subscriber, unbounded while not armed (no subscription: the cache is distrusted anyway; the
/// embedded backend: nothing to hear of).
#[derive(Debug)]
pub struct Lease {
    base: Instant,
    /// Nanoseconds after `base` until which the lease holds; `u64::MAX` while not armed.
    until: AtomicU64,
    /// How long one renewal lasts.
    period: Duration,
}

impl Lease {
    /// A lease not armed, each renewal lasting `period`.
    pub fn new(period: Duration) -> Lease {
        Lease {
            base: Instant::now(),
            until: AtomicU64::new(u64::MAX),
            period,
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Whether the lease holds at `now` (always while not armed).
    pub fn holds(&self, now: Instant) -> bool {
        let until = self.until.load(Ordering::Acquire);
        until == u64::MAX || self.nanos(now) < until
    }

    /// `Some(now)` if the lease is armed and has run out: the clock is read only when armed.
    fn lapsed_now(&self) -> Option<Instant> {
        let until = self.until.load(Ordering::Acquire);
        if until == u64::MAX {
            return None;
        }
        let now = Instant::now();
        (self.nanos(now) >= until).then_some(now)
    }

    /// Starts holding the lease, for one period from `now`.
    pub fn arm(&self, now: Instant) {
        self.until
            .store(self.nanos(now + self.period), Ordering::Release);
    }

    /// Stops checking it (holds for ever until armed again).
    pub fn disarm(&self) {
        self.until.store(u64::MAX, Ordering::Release);
    }

    /// If the lease is armed and had run out at `now`, renews it from `now` and says whether
    /// this caller is the one that did: of callers that find it run out at once (every worker
    /// after a SIGCONT), exactly one renews it.
    fn renew_lapsed(&self, now: Instant) -> bool {
        let until = self.until.load(Ordering::Acquire);
        until != u64::MAX
            && self.nanos(now) >= until
            && self
                .until
                .compare_exchange(
                    until,
                    self.nanos(now + self.period),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    /// Extends an armed lease to one period from `now` (never shortens it; a lease not armed
    /// stays so).
    fn extend(&self, now: Instant) {
        self.until
            .fetch_max(self.nanos(now + self.period), Ordering::AcqRel);
    }
}

/// What [`KeyCache::lookup`] found.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The key.
    Found(Arc<CachedKey>),
    /// No key has this hash; `cached` when a negative entry said so without asking the store.
    Unknown {
        /// Answered by a negative entry.
        cached: bool,
    },
}

impl Lookup {
    fn from_cached(record: Option<Arc<CachedKey>>, cached: bool) -> Lookup {
        match record {
            Some(r) => Lookup::Found(r),
            None => Lookup::Unknown { cached },
        }
    }
}

/// Cached, coalesced, invalidatable lookups of key records by secret hash.
pub struct KeyCache<S> {
    store: Arc<S>,
    cache: Cache<SecretHash, Entry>,
    grants: Grants,
    generations: Box<[AtomicU64]>,
    epoch: AtomicU64,
    ttl: Duration,
    lease: Lease,
    stats: CacheStats,
    store_metrics: StoreMetrics,
}

impl<S: KeyStore> KeyCache<S> {
    /// A cache over `store` sized and timed by `config`.
    pub fn new(store: Arc<S>, config: &CacheConfig) -> Self {
        let cache = Cache::builder()
            .max_capacity(config.capacity)
            .expire_after(Policy {
                positive: config.ttl + config.max_stale,
                negative: config.negative_ttl,
            })
            .build();
        KeyCache {
            store,
            cache,
            grants: Grants::new(),
            generations: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            ttl: config.ttl,
            lease: Lease::new(super::fleet::STALL_LIMIT),
            stats: CacheStats::default(),
            store_metrics: StoreMetrics::default(),
        }
    }

    /// Records the latency and errors of this cache's store lookups in `metrics`.
    pub fn with_store_metrics(mut self, metrics: StoreMetrics) -> Self {
        self.store_metrics = metrics;
        self
    }

    /// The store behind the cache.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The cached form of `record` (for a record read from the store outside the cache).
    pub fn compact(&self, record: KeyRecord) -> Arc<CachedKey> {
        Arc::new(self.grants.compact(record))
    }

    /// The grants the cached keys share.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// Hit, miss and stale counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    fn generation(&self, hash: &SecretHash) -> &AtomicU64 {
        let i = u16::from_le_bytes([hash.0[0], hash.0[1]]) as usize % SHARDS;
        &self.generations[i]
    }

    /// The record whose secret has this hash, or `None` for an unknown secret.
    ///
    /// Fails only when the store cannot be asked and nothing usable is cached.
    pub async fn get(&self, hash: &SecretHash) -> Result<Option<Arc<CachedKey>>, StoreError> {
        Ok(match self.lookup(hash).await? {
            Lookup::Found(record) => Some(record),
            Lookup::Unknown { .. } => None,
        })
    }

    /// Like [`KeyCache::get`], and says whether an unknown hash was answered from a negative
    /// entry (so callers can skip further lookups for it).
    pub async fn lookup(&self, hash: &SecretHash) -> Result<Lookup, StoreError> {
        if let Some(now) = self.lease.lapsed_now() {
            self.keep_lease(now);
        }
        let generation = self.generation(hash).load(Ordering::Acquire);
        if let Some(entry) = self.cache.get(hash).await {
            if entry.generation == generation {
                if self.is_fresh(&entry) {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(Lookup::from_cached(entry.record, true));
                }
                return Ok(Lookup::from_cached(self.refresh(hash).await?, false));
            }
            // Filled before an invalidation of its shard: never serve it.
            self.cache.invalidate(hash).await;
        }
        Ok(Lookup::from_cached(self.fill(hash).await?, false))
    }

    /// Whether an entry of the current generation may be served without asking the store: read
    /// while trusted and since the last [`KeyCache::mark_all_stale`], and (if positive) within
    /// `ttl`. An odd epoch (distrusted) never matches one read while trusted, and a positive
    /// entry read while distrusted has an odd one itself. A negative entry read while
    /// distrusted is still served for `negative_ttl`: floods of wrong keys must stay off the
    /// store most of all while it struggles, and a key created elsewhere meanwhile is at worst
    /// refused for that long (never the reverse).
    fn is_fresh(&self, entry: &Entry) -> bool {
        entry.epoch == self.epoch.load(Ordering::Acquire)
            && match &entry.record {
                None => true,
                Some(_) => entry.epoch & 1 == 0 && entry.fetched.elapsed() < self.ttl,
            }
    }

    async fn load(&self, hash: &SecretHash) -> Result<Entry, StoreError> {
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        // Read the generation and epoch before the store: a write (or a lost invalidation
        // channel) after these reads bumps them, so this entry cannot hide it.
        let generation = self.generation(hash).load(Ordering::Acquire);
        let epoch = self.epoch.load(Ordering::Acquire);
        let fetched = Instant::now();
        let record = self
            .store_metrics
            .time(StoreOp::GetByHash, self.store.get_by_hash(hash))
            .await?;
        Ok(Entry {
            record: record.map(|r| self.compact(r)),
            generation,
            epoch,
            fetched,
        })
    }

    async fn fill(&self, hash: &SecretHash) -> Result<Option<Arc<CachedKey>>, StoreError> {
        for _ in 0..MAX_FILL_RACES {
            let entry = self
                .cache
                .try_get_with(*hash, self.load(hash))
                .await
                .map_err(|e| StoreError::clone(&e))?;
            if entry.generation == self.generation(hash).load(Ordering::Acquire) {
                return Ok(entry.record);
            }
            self.cache.invalidate(hash).await;
        }
        // The key keeps changing under us: answer from the store without caching.
        Ok(self.load(hash).await?.record)
    }

    /// Refreshes an entry past `ttl` (or not trusted), one store call at a time however many
    /// requests wait for it: a request takes the answer of a call that began after it arrived.
    /// When the store is unreachable the old record is served; the entry itself expires at
    /// `ttl + max_stale`, which bounds how stale it can get.
    async fn refresh(&self, hash: &SecretHash) -> Result<Option<Arc<CachedKey>>, StoreError> {
        let arrived = Instant::now();
        let mut stale = None;
        let result = self
            .cache
            .entry(*hash)
            .and_try_compute_with(|current| {
                let current = current.map(|e| e.into_value());
                let fresh_already = current.as_ref().is_some_and(|e| {
                    // Another request re-read it while this one waited: fresh, or at least as
                    // recent as a read of this request's own (which matters while distrusted).
                    let reread =
                        e.fetched >= arrived && e.epoch == self.epoch.load(Ordering::Acquire);
                    (self.is_fresh(e) || reread)
                        && e.generation == self.generation(hash).load(Ordering::Acquire)
                });
                stale = current.and_then(|e| e.record);
                async move {
                    if fresh_already {
                        // Another request refreshed it while this one waited.
                        return Ok(Op::Nop);
                    }
                    self.load(hash).await.map(Op::Put)
                }
            })
            .await;
        match result {
            Ok(
                CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e),
            ) if e.value().generation == self.generation(hash).load(Ordering::Acquire) => {
                Ok(e.into_value().record)
            }
            Ok(_) => self.fill(hash).await,
            Err(StoreError::Unavailable(detail)) => match stale {
                Some(record) => {
                    self.stats.stale_served.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%detail, "store unreachable; serving cached record past ttl");
                    Ok(Some(record))
                }
                None => Err(StoreError::Unavailable(detail)),
            },
            Err(e) => Err(e),
        }
    }

    /// Drops a hash from the cache, here and for any fill already under way. Call it after the
    /// store write that changed the key (and after creating a key, to drop a negative entry).
    pub async fn invalidate(&self, hash: &SecretHash) {
        self.generation(hash).fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate(hash).await;
    }

    /// Makes every entry due for a re-read from the store: the next lookup of each asks the store
    /// (one call per hash, however many requests wait), and while the store is unreachable a
    /// positive entry is still served within `max_stale`, like any entry past `ttl`. For when
    /// changes made elsewhere may have been missed (a lost invalidation channel): unlike
    /// [`KeyCache::clear`], it keeps a store outage from failing every cached key at once.
    pub fn mark_all_stale(&self) {
        // By two: the low bit is the trust state.
        self.epoch.fetch_add(2, Ordering::AcqRel);
    }

    /// Stops trusting cached entries, for while changes made elsewhere cannot be heard of (the
    /// invalidation channel is down): until [`KeyCache::trust`], every lookup re-reads the
    /// store, and cached records serve only while it is unreachable, within `max_stale`.
    pub fn distrust(&self) {
        // Even to odd: every entry read so far (even) is stale as well.
        self.epoch.fetch_or(1, Ordering::AcqRel);
    }

    /// Trusts entries read from now on for `ttl` again, once changes made elsewhere are heard
    /// of (subscribed). Everything read before is stale: it may have missed a change.
    pub fn trust(&self) {
        // Odd to the next even, even to the one after: a value no entry holds yet.
        let _ = self
            .epoch
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| Some((e | 1) + 1));
    }

    /// The lease on trusting entries (see the module docs), armed and disarmed by the
    /// invalidation subscriber.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Renews the lease from `now`; if it had run out (this process stood still for longer
    /// than a period), first marks every entry stale, since an invalidation may be waiting
    /// unread. Called by the subscriber every few milliseconds and by lookups that find the
    /// lease run out. Returns whether it had.
    pub fn keep_lease(&self, now: Instant) -> bool {
        if !self.lease.holds(now) {
            // Before the renewal: a lookup that sees the renewed lease sees the new epoch too.
            // Callers racing here each mark (harmless); only the one that renews counts.
            self.mark_all_stale();
            if self.lease.renew_lapsed(now) {
                self.stats.lease_lapses.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        self.lease.extend(now);
        false
    }

    /// Whether cached entries are trusted (see [`KeyCache::distrust`]).
    pub fn is_trusted(&self) -> bool {
        self.epoch.load(Ordering::Acquire) & 1 == 0
    }

    /// Drops everything.
    pub fn clear(&self) {
        for g in self.generations.iter() {
            g.fetch_add(1, Ordering::AcqRel);
        }
        self.cache.invalidate_all();
    }

    /// Cached entries (approximate; for metrics and tests).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Runs the cache's pending maintenance (entry count, evictions) now rather than on later
    /// calls, so that [`KeyCache::entry_count`] is exact.
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_for_one_period_from_its_last_renewal_and_always_while_not_armed() {
        let period = Duration::from_millis(50);
        let lease = Lease::new(period);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert!(lease.holds(t0 + Duration::from_secs(3600)), "not armed");
        lease.arm(t0);
        assert!(lease.holds(t0 + ms(49)));
        assert!(!lease.holds(t0 + ms(50)));
        let stalled = Lease::new(period);
        stalled.arm(Instant::now() - 2 * period);
        assert!(stalled.lapsed_now().is_some());
        let now = Instant::now();
        assert!(
            stalled.renew_lapsed(now),
            "the first caller renews a run-out lease"
        );
        assert!(!stalled.renew_lapsed(now), "and only the first");
        assert!(stalled.lapsed_now().is_none());
        lease.extend(t0 + ms(40));
        assert!(lease.holds(t0 + ms(89)));
        assert!(!lease.holds(t0 + ms(90)));
        lease.extend(t0 + ms(10));
        assert!(lease.holds(t0 + ms(89)), "never shortened");
        lease.disarm();
        assert!(lease.holds(t0 + Duration::from_secs(3600)));
        lease.extend(t0);
        assert!(
            lease.holds(t0 + Duration::from_secs(3600)),
            "a renewal does not arm it"
        );
        assert!(lease.lapsed_now().is_none());
    }
}
