//! The webhook outbox in Redis ([`crate::store::outbox`]), on one slot (`{wh}`) so that a
//! script can claim atomically on a cluster too:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P{wh}:due` | sorted set | delivery id → unix ms when next due |
//! | `P{wh}:items` | hash | delivery id → `OutboxItem` JSON |
//! | `P{wh}:once:<marker>` | string, expiring | set when an event that happens once was added |
//! | `P{wh}:deliveries` | list | `DeliveryAttempt` JSON, newest first, the newest [`DELIVERY_LOG_MAX`] |
//! | `P{wh}:lease:<name>` | string, expiring | the instance holding the lease |

use std::sync::LazyLock;

use redis::Script;

use super::RedisStore;
use crate::keys::KeyId;
use crate::store::StoreError;
use crate::store::outbox::{DELIVERY_LOG_MAX, DeliveryAttempt, OutboxItem, decode, encode};

/// KEYS: due, items, once marker ('' for none). ARGV: marker ms, then (id, due ms, json)
/// triples. Returns 1 if added, 0 if the marker was set already.
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[1] ~= '' then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[1]) then return 0 end
end
for i = 2, #ARGV, 3 do
  redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
end
return 1
",
    )
});

/// KEYS: due, items. ARGV: now ms, leased-until ms, max. Returns the JSON of each claimed item.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local item = redis.call('HGET', KEYS[2], id)
  if item then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    out[#out + 1] = item
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
",
    )
});

/// KEYS: due, items. ARGV: id, claimed-until ms, then (due ms, json) to put it back, or nothing
/// to remove it. Only while the item is due at claimed-until (still this claim's): returns 1 if
/// settled, 0 if another claim holds it now.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 1
",
    )
});

/// KEYS: lease. ARGV: holder, ttl ms. Takes the lease if free, renews it if held by `holder`.
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
",
    )
});

impl RedisStore {
    fn outbox_key(&self, name: &str) -> String {
        format!("{}{{wh}}:{name}", self.prefix)
    }

    pub(crate) async fn outbox_add(
        &self,
        items: &[OutboxItem],
        once: Option<(&str, i64)>,
    ) -> Result<bool, StoreError> {
        let mut call = ADD.prepare_invoke();
        call.key(self.outbox_key("due"))
            .key(self.outbox_key("items"));
        match once {
            Some((marker, ttl)) => {
                call.key(self.outbox_key(&format!("once:{marker}")))
                    .arg(ttl.max(1));
            }
            None => {
                call.key(self.outbox_key("once:")).arg("");
            }
        }
        for item in items {
            call.arg(&item.id).arg(item.due_ms).arg(encode(item)?);
        }
        // Resent after a lost connection: the same ids again (or the marker, set by the first).
        let added: i64 = self.retried(&call).await?;
        Ok(added == 1)
    }

    pub(crate) async fn outbox_claim(
        &self,
        now_ms: i64,
        lease_ms: i64,
        max: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let mut call = CLAIM.prepare_invoke();
        call.key(self.outbox_key("due"))
            .key(self.outbox_key("items"))
            .arg(now_ms)
            .arg(now_ms.saturating_add(lease_ms))
            .arg(max);
        // Resent after a lost connection, the first claim's items wait out their lease and are
        // claimed again: later, never lost.
        let claimed: Vec<String> = self.retried(&call).await?;
        Ok(claimed
            .iter()
            .filter_map(|json| {
                decode(json.as_bytes())
                    .inspect_err(|e| tracing::error!(error = %e, "webhook outbox entry skipped"))
                    .ok()
            })
            .collect())
    }

    pub(crate) async fn outbox_settle(
        &self,
        id: &str,
        claimed_until: i64,
        retry: Option<&OutboxItem>,
    ) -> Result<bool, StoreError> {
        let mut call = SETTLE.prepare_invoke();
        call.key(self.outbox_key("due"))
            .key(self.outbox_key("items"))
            .arg(id)
            .arg(claimed_until);
        if let Some(item) = retry {
            call.arg(item.due_ms).arg(encode(item)?);
        }
        let settled: i64 = self.retried(&call).await?;
        Ok(settled == 1)
    }

    pub(crate) async fn outbox_len(&self) -> Result<u64, StoreError> {
        self.retried(redis::cmd("ZCARD").arg(self.outbox_key("due")))
            .await
    }

    pub(crate) async fn push_delivery(&self, attempt: &DeliveryAttempt) -> Result<(), StoreError> {
        let log = self.outbox_key("deliveries");
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("LPUSH")
            .arg(&log)
            .arg(encode(attempt)?)
            .ignore()
            .cmd("LTRIM")
            .arg(&log)
            .arg(0)
            .arg(DELIVERY_LOG_MAX - 1)
            .ignore();
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut conn)).await
    }

    pub(crate) async fn deliveries(
        &self,
        limit: usize,
    ) -> Result<Vec<DeliveryAttempt>, StoreError> {
        let last = limit.clamp(1, DELIVERY_LOG_MAX) - 1;
        let entries: Vec<String> = self
            .retried(
                redis::cmd("LRANGE")
                    .arg(self.outbox_key("deliveries"))
                    .arg(0)
                    .arg(last),
            )
            .await?;
        entries.iter().map(|json| decode(json.as_bytes())).collect()
    }

    pub(crate) async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut call = LEASE.prepare_invoke();
        call.key(self.outbox_key(&format!("lease:{name}")))
            .arg(holder)
            .arg(ttl_ms.max(1));
        let held: i64 = self.retried(&call).await?;
        Ok(held == 1)
    }

    pub(crate) async fn expiring_keys(
        &self,
        workspace: &str,
        from_ms: i64,
        to_ms: i64,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<(i64, KeyId)>, StoreError> {
        // Ties in score come back by id: the order is the one the embedded store gives.
        let flat: Vec<(String, f64)> = self
            .retried(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.workspace_keys(workspace).active)
                    .arg(format!("({from_ms}"))
                    .arg(to_ms)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(offset)
                    .arg(limit),
            )
            .await?;
        Ok(flat
            .iter()
            .filter_map(|(id, score)| Some((*score as i64, KeyId::parse(id)?)))
            .collect())
    }
}
