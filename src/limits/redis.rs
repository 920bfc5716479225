//! `rate_limits.mode: redis`: one GCRA bucket per subject for all instances together, kept in
//! Redis and updated by one atomic Lua script per request; and [`Outage`], the circuit that
//! sends checks to the local buckets while Redis cannot be reached and logs once per outage.
//! Calls go through the store's circuit breaker ([`crate::store::breaker`]), so while Redis is
//! known to be down a check falls back at once rather than after the timeout.
//!
//! # Keys
//!
//! `P` is `store.redis.key_prefix`. Each script touches one key, under a hash tag of its own, so
//! it runs unchanged on Redis Cluster.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P{rl:<key id>}` | STRING | TAT of the key's bucket (its own, role or default limit), unix µs on the Redis clock; expires when the bucket is full again |
//! | `P{rl:<key id>}:r<route index>` | STRING | the same for the key on a route with its own `rate_limit` |
//!
//! # Clock
//!
//! The script reads the time with Redis's `TIME`, not a time sent by the gateway: all
//! instances then judge one bucket on one clock, so a skew between their clocks can neither
//! hand out extra requests (an instance ahead would see buckets refilled early) nor refuse
//! legitimate ones. Redis 7 replicates a script's effects, not the script, so the
//! non-deterministic `TIME` is allowed before writes. Resolution is a microsecond; Lua numbers
//! are doubles, exact for unix microseconds (below 2^53) and for tolerances capped there.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::Script;

use super::gcra::{Gcra, RateState};
use crate::keys::KeyId;
use crate::store::breaker::Breaker;
use crate::store::redis::{RedisConn, RedisStore};

/// After a failed call, Redis is tried again after this long; meanwhile checks go to the local
/// limiter at once instead of each waiting for the timeout.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Largest tolerance sent to the script, in µs: Lua's doubles stay exact below 2^53.
const MAX_TOLERANCE_US: u64 = 1 << 52;

/// GCRA on the Redis clock. KEYS: the bucket. ARGV: T µs, τ µs, '1' to peek (count nothing).
/// Returns `{allowed (1/0), remaining, reset µs, retry after µs}`. The key expires when the
/// bucket is full again, which means the same as a missing key.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local base = tonumber(redis.call('GET', KEYS[1]) or '0')
if base < now then base = now end
if ARGV[3] == '1' then
  local ahead = base - now
  local remaining = math.floor(math.max(tolerance - ahead, 0) / interval)
  if remaining > 0 then return {1, remaining, ahead, 0} end
  return {0, 0, ahead, ahead + interval - tolerance}
end
local new_tat = base + interval
local ahead = new_tat - now
if ahead <= tolerance then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ahead / 1000) + 1)
  return {1, math.floor((tolerance - ahead) / interval), ahead, 0}
end
return {0, 0, base - now, ahead - tolerance}
";

/// Whether Redis is worth asking, and the one log line per outage. Shared by the global rate
/// limiter and the Redis quota counters (one instance each, so each logs its own outage).
#[derive(Debug)]
pub struct Outage {
    what: &'static str,
    down: AtomicBool,
    /// Monotonic nanos before which Redis is not asked; 0 while it is up.
    retry_at: AtomicU64,
}

impl Outage {
    /// A circuit for `what` (named in the log lines), closed: Redis is asked.
    pub fn new(what: &'static str) -> Self {
        Outage {
            what,
            down: AtomicBool::new(false),
            retry_at: AtomicU64::new(0),
        }
    }

    /// Whether to call Redis at `now`: always while it is up; during an outage, one caller per
    /// [`PROBE_INTERVAL`] (the probe), the others go local without waiting for a timeout.
    pub fn should_try(&self, now: u64) -> bool {
        let at = self.retry_at.load(Ordering::Acquire);
        if at == 0 {
            return true;
        }
        now >= at
            && self
                .retry_at
                .compare_exchange(at, now + probe_nanos(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// A call failed at `now`: open the circuit; log only the first failure of an outage.
    pub fn failed(&self, now: u64, why: &dyn fmt::Display) {
        self.retry_at
            .store(now.saturating_add(probe_nanos()).max(1), Ordering::Release);
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                error = %why,
                "{} cannot reach redis; limiting on this instance alone until it is back",
                self.what
            );
        }
    }

    /// A call succeeded: close the circuit (and log the end of an outage). One relaxed load
    /// while Redis is up.
    pub fn succeeded(&self) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::AcqRel) {
            self.retry_at.store(0, Ordering::Release);
            tracing::info!("{} reaches redis again", self.what);
        }
    }

    /// Whether an outage is under way.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }
}

fn probe_nanos() -> u64 {
    u64::try_from(PROBE_INTERVAL.as_nanos()).unwrap_or(u64::MAX)
}

/// The global limiter: GCRA buckets in Redis.
pub struct RedisLimiter {
    conn: RedisConn,
    /// The store's: a Redis the store cannot reach fails the limiter's calls at once too.
    breaker: Arc<Breaker>,
    prefix: String,
    timeout: Duration,
    script: Script,
    /// Whether Redis answers; checks fall back to the local buckets while it does not.
    pub outage: Outage,
}

impl RedisLimiter {
    /// A limiter on the store's Redis connection, prefix and per-call timeout.
    pub fn new(store: &RedisStore) -> Self {
        RedisLimiter {
            conn: store.connection(),
            breaker: store.breaker().clone(),
            prefix: store.key_prefix().to_owned(),
            timeout: store.timeout(),
            script: Script::new(GCRA_SCRIPT),
            outage: Outage::new("the global rate limiter"),
        }
    }

    /// `P{rl:<key id>}`, or `P{rl:<key id>}:r<route>` for a route's own limit.
    pub fn bucket_key(&self, id: &KeyId, route: Option<usize>) -> String {
        match route {
            None => format!("{}{{rl:{id}}}", self.prefix),
            Some(r) => format!("{}{{rl:{id}}}:r{r}", self.prefix),
        }
    }

    /// Counts one request of the key's bucket if `gcra` allows it (`peek`: counts nothing), in
    /// one round trip bounded by `store.redis.timeout`, through the store's breaker. Sent once:
    /// a second run would count the request twice.
    pub async fn check(
        &self,
        id: &KeyId,
        route: Option<usize>,
        gcra: &Gcra,
        peek: bool,
    ) -> Result<RateState, String> {
        let interval_us = (gcra.interval() / 1_000).max(1);
        let burst = gcra.tolerance() / gcra.interval();
        let tolerance_us = interval_us.saturating_mul(burst).min(MAX_TOLERANCE_US);
        let mut conn = self.conn.clone();
        let key = self.bucket_key(id, route);
        let mut invocation = self.script.key(&key);
        invocation
            .arg(interval_us)
            .arg(tolerance_us)
            .arg(if peek { "1" } else { "0" });
        let reply: Vec<i64> = crate::store::redis::bounded(
            &self.breaker,
            self.timeout,
            invocation.invoke_async(&mut conn),
        )
        .await
        .map_err(|e| e.to_string())?;
        let [allowed, remaining, reset_us, retry_us] = reply[..] else {
            return Err("unexpected reply from the rate-limit script".into());
        };
        let nanos = |us: i64| u64::try_from(us).unwrap_or(0).saturating_mul(1_000);
        Ok(RateState {
            allowed: allowed == 1,
            limit: gcra.limit(),
            window_nanos: gcra.tolerance(),
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset_nanos: nanos(reset_us),
            retry_after_nanos: nanos(retry_us),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_circuit_opens_on_failure_probes_once_per_interval_and_closes_on_success() {
        let o = Outage::new("test");
        let sec = 1_000_000_000;
        assert!(o.should_try(5) && o.should_try(5), "closed: everyone asks");
        o.failed(10 * sec, &"down");
        assert!(o.is_down());
        assert!(!o.should_try(10 * sec + 1), "open: go local at once");
        assert!(o.should_try(11 * sec), "one probe after the interval");
        assert!(!o.should_try(11 * sec), "only one");
        o.failed(11 * sec, &"still down");
        assert!(!o.should_try(11 * sec + 5));
        assert!(o.should_try(12 * sec));
        o.succeeded();
        assert!(!o.is_down());
        assert!(o.should_try(12 * sec) && o.should_try(12 * sec));
    }
}
