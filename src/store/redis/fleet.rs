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
use crate::store::fleet::{Ack, is_instance_id};

/// `P{fleet}` after the key prefix.
const FLEET_KEY: &str = "{fleet}";
/// `Pack:` after the key prefix; the origin's id follows.
const ACK_CHANNEL: &str = "ack:";

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

    /// `Pack:<id>`: where instance `id` hears its invalidations confirmed.
    pub(super) fn ack_channel(&self, id: &str) -> String {
        format!("{}{ACK_CHANNEL}{id}", self.prefix)
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

    /// Publishes an invalidation of `hash` that asks every instance to confirm it to this one
    /// under `seq` (`<hash hex> <origin> <seq>`), bounded by `store.redis.timeout`.
    pub async fn publish_confirmable(&self, hash: &SecretHash, seq: u64) -> Result<(), StoreError> {
        let message = format!("{} {} {seq}", hash.to_hex(), self.fleet().id());
        // Sent twice, it asks twice: the second confirmation of an instance counts once.
        let _receivers: i64 = self
            .retried(redis::cmd("PUBLISH").arg(&self.channel.name).arg(message))
            .await?;
        Ok(())
    }

    /// Confirms to instance `origin` that this one has dropped what its message `seq` named.
    pub async fn publish_ack(&self, origin: &str, seq: u64) -> Result<(), StoreError> {
        let _receivers: i64 = self
            .retried(
                redis::cmd("PUBLISH")
                    .arg(self.ack_channel(origin))
                    .arg(format!("{seq} {}", self.fleet().id())),
            )
            .await?;
        Ok(())
    }
}

/// Reads a confirmation (`<seq> <instance id>`).
pub(super) fn parse_ack(payload: &[u8]) -> Option<Ack> {
    let text = std::str::from_utf8(payload).ok()?;
    let (seq, from) = text.split_once(' ')?;
    let seq = seq
        .parse()
        .ok()
        .filter(|_| seq.bytes().all(|b| b.is_ascii_digit()))?;
    is_instance_id(from).then(|| Ack {
        seq,
        from: from.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_are_a_sequence_number_and_an_instance_id() {
        assert_eq!(
            parse_ack(b"7 web-1-42-ab12"),
            Some(Ack {
                seq: 7,
                from: "web-1-42-ab12".into()
            })
        );
        for bad in [
            &b""[..],
            b"7",
            b"7 ",
            b" web-1",
            b"+7 web-1",
            b"x web-1",
            b"7 Web-1",
            b"7 web 1",
            b"18446744073709551616 web-1",
            b"7 \xff",
        ] {
            assert_eq!(parse_ack(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
