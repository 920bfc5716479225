//! `rate_limits.mode: redis`: one GCRA bucket per subject for all instances together, kept in
//! Redis and updated by one atomic Lua script per request. Calls go through the store's circuit
//! breaker ([`crate::store::breaker`]), the one judge of whether Redis is down: while it is open
//! a check fails at once rather than after the timeout, and [`super::Limits`] decides it on this
//! instance's share of the limit. A single failed call (a slow reply) fails only its own check;
//! the next one goes to Redis again.
//!
//! (There used to be a circuit of its own here, `Outage`, which went local for a second after
//! one failure and gave every instance the whole limit: +10% over a global limit on a busy
//! machine. Its one remaining job, a log line per outage, is the breaker's.)
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

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::gcra::{Gcra, RateState};
use crate::keys::KeyId;
use crate::store::StoreError;
use crate::store::breaker::Breaker;
use crate::store::redis::{RedisConn, RedisStore};

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

/// The global limiter: GCRA buckets in Redis.
pub struct RedisLimiter {
    conn: RedisConn,
    /// The store's: a Redis the store cannot reach fails the limiter's calls at once too.
    breaker: Arc<Breaker>,
    prefix: String,
    timeout: Duration,
    script: Script,
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
    /// one round trip bounded by `store.redis.timeout`, through the store's breaker (an error at
    /// once while it is open). Sent once: a second run would count the request twice.
    pub async fn check(
        &self,
        id: &KeyId,
        route: Option<usize>,
        gcra: &Gcra,
        peek: bool,
    ) -> Result<RateState, StoreError> {
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
        .await?;
        let [allowed, remaining, reset_us, retry_us] = reply[..] else {
            return Err(StoreError::Corrupt(
                "unexpected reply from the rate-limit script".into(),
            ));
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
