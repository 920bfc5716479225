//! The fleet's Redis side (see [`crate::store::fleet`] for what it is for): the heartbeat set
//! `P{fleet}`, the confirmation channels `Pack:<instance id>`, and their messages.
//!
//! - `P{fleet}` (ZSET, its own hash tag): member = instance id, score = when its announcement
//!   runs out, unix ms on the Redis clock. A heartbeat is one script that reads `TIME`, drops
//!   expired members, adds or refreshes its own and returns the live ids: instances on hosts
//!   whose clocks disagree still agree on who is live. The set expires when nobody renews it.
//! - `Pack:<origin>`: the instance `<origin>` subscribes to it beside `Pinvalidate`; every
//!   instance that dropped a key an invalidation from `<origin>` asked about publishes
//!   `<seq> <its id>` there. Plain `PUBLISH`, which a Redis Cluster broadcasts to every node.

use std::sync::LazyLock;

use redis::Script;

use super::*;

/// `P{fleet}` after the key prefix.
const FLEET_KEY: &str = "{fleet}";

/// Announces an instance and lists the live ones. KEYS: `P{fleet}`. ARGV: id, TTL ms.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
";

/// Lists the live instances. KEYS: `P{fleet}`.
const LIVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
";

static SCRIPTS: LazyLock<(Script, Script)> =
    LazyLock::new(|| (Script::new(HEARTBEAT), Script::new(LIVE)));

/// The fleet (see the module docs).
impl RedisStore {
    fn fleet_key(&self) -> String {
        format!("{}{FLEET_KEY}", self.prefix)
    }

    /// This instance and what it knows of the others.
    pub fn fleet(&self) -> &crate::store::fleet::Fleet {
        &self.channel.fleet
    }

    /// Announces this instance as live for `ttl` and returns the ids of the live instances
    /// (this one included). Bounded by `store.redis.timeout`; safe to repeat.
    pub async fn heartbeat(&self, ttl: Duration) -> Result<Vec<String>, StoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.retried(
            SCRIPTS
                .0
                .key(self.fleet_key())
                .arg(self.fleet().id())
                .arg(ttl_ms),
        )
        .await
    }

    /// The ids of the instances live now (as their heartbeats say), read fresh.
    pub async fn live_instances(&self) -> Result<Vec<String>, StoreError> {
        self.retried(&SCRIPTS.1.key(self.fleet_key())).await
    }

    /// Withdraws this instance's announcement (it stopped, or stopped hearing invalidations):
    /// revokers stop waiting for it at once rather than when its heartbeat runs out.
    pub async fn leave_fleet(&self) -> Result<(), StoreError> {
        let _removed: i64 = self
            .retried(
                redis::cmd("ZREM")
                    .arg(self.fleet_key())
                    .arg(self.fleet().id()),
            )
            .await?;
        Ok(())
    }
}
