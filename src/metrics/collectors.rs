//! Metrics read at scrape time from what owns them rather than recorded: the key cache's
//! counters (and the Redis store's breaker and fleet), and every upstream target's requests,
//! failures, ejections and state.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::proxy::TargetBoard;
use crate::store::Store;
use crate::store::cache::KeyCache;

/// Reads the cache's counters at scrape time.
pub(super) struct CacheCollector {
    pub(super) cache: Arc<OnceLock<Arc<KeyCache<Store>>>>,
}

impl fmt::Debug for CacheCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheCollector").finish_non_exhaustive()
    }
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(cache) = self.cache.get() else {
            return Ok(());
        };
        let stats = cache.stats();
        let counters = [
            (
                "keygate_cache_hits",
                "Key lookups answered by the hot cache (negative entries included)",
                &stats.hits,
            ),
            (
                "keygate_cache_misses",
                "Key lookups that went to the store",
                &stats.misses,
            ),
            (
                "keygate_cache_stale_served",
                "Lookups answered with a record past cache.ttl because the store was unreachable",
                &stats.stale_served,
            ),
            (
                "keygate_cache_lease_lapses",
                "Times this instance found it had stood still longer than the cache's lease (SIGSTOP, a stalled runtime) and re-read every cached key",
                &stats.lease_lapses,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let entries = ConstGauge::new(i64::try_from(cache.entry_count()).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "keygate_cache_entries",
            "Key records and negative entries in the hot cache (approximate)",
            None,
            entries.metric_type(),
        )?;
        entries.encode(metric)?;
        if let Store::Redis(redis) = cache.store().as_ref() {
            let breaker = redis.breaker();
            let open = ConstGauge::new(i64::from(breaker.is_open()));
            let metric = encoder.encode_descriptor(
                "keygate_store_breaker_open",
                "1 while Redis calls fail at once after failures, 0 while they go to Redis",
                None,
                open.metric_type(),
            )?;
            open.encode(metric)?;
            let opens = ConstCounter::new(breaker.opens());
            let metric = encoder.encode_descriptor(
                "keygate_store_breaker_opens",
                "Times the Redis circuit breaker opened (calls failed fast until a probe got through)",
                None,
                opens.metric_type(),
            )?;
            opens.encode(metric)?;
            let live = redis.fleet().instances();
            let instances = ConstGauge::new(i64::try_from(live).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(
                "keygate_fleet_instances",
                "Gateway instances sharing the Redis store, this one included, as of its last heartbeat (1 while unknown)",
                None,
                instances.metric_type(),
            )?;
            instances.encode(metric)?;
            let fleet = redis.fleet().stats();
            let unconfirmed = ConstCounter::new(fleet.unconfirmed.load(Ordering::Relaxed));
            let metric = encoder.encode_descriptor(
                "keygate_invalidation_unconfirmed",
                "Live instances that did not confirm dropping a changed key within the confirmation wait (one per instance per change)",
                None,
                unconfirmed.metric_type(),
            )?;
            unconfirmed.encode(metric)?;
            let metric = encoder.encode_descriptor(
                "keygate_invalidation_confirm_seconds",
                "Time a change to a key waited for the other live instances to confirm dropping it",
                None,
                MetricType::Histogram,
            )?;
            fleet.confirm_wait.encode(metric)?;
        }
        Ok(())
    }
}

/// Reads every upstream target's counters at scrape time.
pub(super) struct TargetCollector {
    pub(super) board: Arc<OnceLock<Arc<TargetBoard>>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    upstream: String,
    target: String,
}

impl fmt::Debug for TargetCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetCollector").finish_non_exhaustive()
    }
}

impl Collector for TargetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(board) = self.board.get() else {
            return Ok(());
        };
        // Each target's label set, built once for its five series.
        let targets: Vec<(TargetLabels, Arc<crate::proxy::TargetHealth>)> = board
            .snapshot()
            .into_iter()
            .map(|(upstream, target, health)| (TargetLabels { upstream, target }, health))
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        type Read = fn(&crate::proxy::TargetHealth) -> u64;
        let counters: [(&str, &str, Read); 3] = [
            (
                "keygate_upstream_requests",
                "Requests sent to an upstream target (retries included)",
                |h| h.requests(),
            ),
            (
                "keygate_upstream_failures",
                "Requests to an upstream target that failed to connect, failed in the exchange, timed out or were answered 502, 503 or 504",
                |h| h.failures(),
            ),
            (
                "keygate_upstream_ejections",
                "Times an upstream target was set aside after failing (passive_health)",
                |h| h.ejections(),
            ),
        ];
        for (name, help, read) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, health) in &targets {
                ConstCounter::new(read(health)).encode(family.encode_family(labels)?)?;
            }
        }
        type Level = fn(&crate::proxy::TargetHealth) -> i64;
        let gauges: [(&str, &str, Level); 2] = [
            (
                "keygate_upstream_target_up",
                "1 while an upstream target takes requests, 0 while it is ejected or failing its health checks",
                |h| i64::from(h.is_up()),
            ),
            (
                "keygate_upstream_outstanding",
                "Requests sent to an upstream target and not yet answered to their end (upstreams with several targets)",
                |h| i64::try_from(h.outstanding()).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, read) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, health) in &targets {
                ConstGauge::new(read(health)).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}
