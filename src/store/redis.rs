//! The Redis key index, shared by many gateway instances. Owns the key layout below and every
//! command and Lua script that touches it.
//!
//! # Key layout
//!
//! `P` is `store.redis.key_prefix` (default `keygate:`). The `{…}` parts are Redis Cluster hash
//! tags: every multi-key command or script touches keys of one tag only, so each stays on one
//! slot.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P{h:<hash hex>}` | HASH | `rec`: `KeyRecord` JSON with usage fields zeroed; `uc`: usage count; `lu`: last use, unix ms. The request path reads it with one `HGETALL`. |
//! | `P{ws:<workspace>}:keys` | HASH | key id → hash hex: finds a record by id |
//! | `P{ws:<workspace>}:created` | ZSET | key id scored by `created_at` unix ms: newest-first listing, ties by id |
//! | `P{ws:<workspace>}:active` | ZSET | key id scored by `expires_at` unix ms (rounded up; `+inf` for never); revoked keys are absent. Counted by `create` against `max_active_keys`. |
//! | `P{ws:<workspace>}:logs:<id>` | LIST | `RequestLogEntry` JSON, newest first, trimmed to `max_per_key` |
//!
//! # Ordering
//!
//! A key is written to its workspace index first and to its record hash second, so a crash never
//! leaves a usable key that is not listed (at worst an index entry without a record, which lists
//! nothing and is removed by `delete`). Deletion goes the other way: record first.
//!
//! # Connection
//!
//! [`RedisStore::connect`] does not wait for Redis: the [`ConnectionManager`] connects on first
//! use and reconnects on its own after a failure, so the gateway starts while Redis is down and
//! answers `store_unavailable` per request until it is back. Every round trip is bounded by
//! `store.redis.timeout`; a timeout or a connection error is [`StoreError::Unavailable`].

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, RedisResult, Script};
use time::OffsetDateTime;

use super::{KeyPage, KeyStore, ListQuery, RequestLogEntry, StoreError, UsageDelta};
use crate::config::RedisConfig;
use crate::keys::{KeyId, KeyRecord, KeyStatus, SecretHash};

/// Shortest time one connection attempt gets, even with a smaller per-call timeout: the caller
/// gives up after its own timeout anyway, and a too-short connect timeout would never succeed
/// on a slow network.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnect attempts per failure; after them the next call starts a new round.
const RECONNECT_RETRIES: usize = 6;
/// Backoff between reconnect attempts: small, so the store is back soon after Redis is.
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
/// See [`RECONNECT_MIN_DELAY`].
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);
/// Index entries read per round trip while listing.
const LIST_BATCH_MAX: usize = 200;

/// Adds a key to its workspace index, enforcing `max_active_keys` on the same slot.
/// KEYS: keys, created, active. ARGV: id, hash hex, created ms, expiry score, now ms,
/// max active (-1: no limit), add to active (1/0).
const CREATE_INDEX: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 'conflict' end
local max = tonumber(ARGV[6])
if max >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[5])
  if redis.call('ZCARD', KEYS[3]) >= max then return 'limit' end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if ARGV[7] == '1' then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1]) end
return 'ok'
";

/// Writes a new record hash unless one exists. KEYS: record. ARGV: JSON, usage count, last
/// used ms ('' for never).
const CREATE_RECORD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'uc', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'lu', ARGV[3]) end
return 1
";

/// Removes a record hash only if it still holds exactly what this create wrote.
/// KEYS: record. ARGV: JSON.
const ROLLBACK_RECORD: &str = r"
if redis.call('HGET', KEYS[1], 'rec') == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
";

/// Removes the index entries a failed create added. KEYS: keys, created, active.
/// ARGV: id, hash hex.
const ROLLBACK_INDEX: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
";

/// Replaces `rec` of an existing record hash. KEYS: record. ARGV: JSON.
const UPDATE_RECORD: &str = r"
if redis.call('HEXISTS', KEYS[1], 'rec') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'rec', ARGV[1])
return 1
";

/// Brings `created` and `active` in line with an updated record, unless the key was deleted
/// meanwhile. KEYS: keys, created, active. ARGV: id, created ms, expiry score, active (1/0).
const SYNC_INDEX: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return 1
";

/// Reads and removes a record hash in one step. KEYS: record.
const DELETE_RECORD: &str = r"
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return fields
";

/// Removes a key's index entries and request log. KEYS: keys, created, active, logs. ARGV: id.
const DELETE_INDEX: &str = r"
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4])
return 1
";

/// One listing batch after a position, newest first, as flat `[id, score, hash hex | nil]`
/// triples. KEYS: created, keys. ARGV: position score ('' for the start), position id, count.
///
/// The position is the last key the previous batch returned. If that key is still there its
/// rank is exact; if it was deleted, the keys that sort before the position are counted
/// (members compared bytewise by hand: Lua's `<` follows the server's locale).
const LIST_PAGE: &str = r"
local function after(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end
local created, count = KEYS[1], tonumber(ARGV[3])
local start = 0
if ARGV[1] ~= '' then
  local score = redis.call('ZSCORE', created, ARGV[2])
  if score and tonumber(score) == tonumber(ARGV[1]) then
    start = redis.call('ZREVRANK', created, ARGV[2]) + 1
  else
    start = redis.call('ZCOUNT', created, '(' .. ARGV[1], '+inf')
    for _, m in ipairs(redis.call('ZRANGE', created, ARGV[1], ARGV[1], 'BYSCORE')) do
      if after(m, ARGV[2]) then start = start + 1 end
    end
  end
end
local page = redis.call('ZRANGE', created, start, start + count - 1, 'REV', 'WITHSCORES')
local out = {}
for i = 1, #page, 2 do
  out[#out + 1] = page[i]
  out[#out + 1] = page[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], page[i])
end
return out
";

/// Adds usage to a record hash that still exists; `lu` only moves forward. KEYS: record.
/// ARGV: count, last used ms. Sent with EVAL inside a pipeline, so it survives a script flush.
const ADD_USAGE: &str = r"
if redis.call('HEXISTS', KEYS[1], 'rec') == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'uc', ARGV[1])
local lu = tonumber(redis.call('HGET', KEYS[1], 'lu') or '0')
if tonumber(ARGV[2]) > lu then redis.call('HSET', KEYS[1], 'lu', ARGV[2]) end
return 1
";

/// Prepends log entries of a key that still exists and trims the list.
/// KEYS: keys, logs. ARGV: id, max per key, entries oldest first.
const APPEND_LOGS: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local keep = tonumber(ARGV[2])
if keep == 0 then redis.call('DEL', KEYS[2]) return 1 end
for i = 3, #ARGV do redis.call('LPUSH', KEYS[2], ARGV[i]) end
redis.call('LTRIM', KEYS[2], 0, keep - 1)
return 1
";

/// The scripts, hashed once (`EVALSHA`; the client loads a script again after `NOSCRIPT`, e.g.
/// after a Redis restart).
static SCRIPTS: LazyLock<Scripts> = LazyLock::new(Scripts::new);

struct Scripts {
    create_index: Script,
    create_record: Script,
    rollback_record: Script,
    rollback_index: Script,
    update_record: Script,
    sync_index: Script,
    delete_record: Script,
    delete_index: Script,
    list_page: Script,
    append_logs: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            create_index: Script::new(CREATE_INDEX),
            create_record: Script::new(CREATE_RECORD),
            rollback_record: Script::new(ROLLBACK_RECORD),
            rollback_index: Script::new(ROLLBACK_INDEX),
            update_record: Script::new(UPDATE_RECORD),
            sync_index: Script::new(SYNC_INDEX),
            delete_record: Script::new(DELETE_RECORD),
            delete_index: Script::new(DELETE_INDEX),
            list_page: Script::new(LIST_PAGE),
            append_logs: Script::new(APPEND_LOGS),
        }
    }
}

/// The names of one workspace's index keys.
struct WorkspaceKeys {
    keys: String,
    created: String,
    active: String,
}

/// The Redis-backed store. Cheap to share: the connection manager multiplexes one connection.
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
}

impl RedisStore {
    /// Prepares the store without waiting for Redis (see the module docs): only a bad URL fails
    /// here. Redis Cluster (`store.redis.cluster`) is refused for now; the key layout is ready
    /// for it.
    pub async fn connect(config: &RedisConfig) -> Result<RedisStore, StoreError> {
        if !config.cluster.is_empty() {
            return Err(StoreError::Unavailable(
                "redis cluster is not supported yet".into(),
            ));
        }
        let url = config
            .url
            .as_deref()
            .ok_or_else(|| StoreError::Unavailable("store.redis.url is not set".into()))?;
        // The URL may carry a password: it stays out of the message.
        let client = redis::Client::open(url).map_err(|_| {
            StoreError::Unavailable("store.redis.url is not a valid Redis URL".into())
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout.max(MIN_CONNECT_TIMEOUT)))
            // Each call is bounded by `timeout` here; a response timeout in the client would
            // only add reconnects on a slow reply.
            .set_response_timeout(None)
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(RECONNECT_MIN_DELAY)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| redis_err(&e))?;
        Ok(RedisStore {
            conn,
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
        })
    }

    fn record_key(&self, hash_hex: &str) -> String {
        format!("{}{{h:{hash_hex}}}", self.prefix)
    }

    fn workspace_keys(&self, ws: &str) -> WorkspaceKeys {
        WorkspaceKeys {
            keys: format!("{}{{ws:{ws}}}:keys", self.prefix),
            created: format!("{}{{ws:{ws}}}:created", self.prefix),
            active: format!("{}{{ws:{ws}}}:active", self.prefix),
        }
    }

    fn logs_key(&self, ws: &str, id: &KeyId) -> String {
        format!("{}{{ws:{ws}}}:logs:{id}", self.prefix)
    }

    /// One round trip, bounded by the configured timeout.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(redis_err(&e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis did not answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// The hash hex the workspace index holds for `id`.
    async fn hash_of(&self, ws: &str, id: &KeyId) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        let keys = self.workspace_keys(ws).keys;
        self.bounded(
            redis::cmd("HGET")
                .arg(&keys)
                .arg(id.as_str())
                .query_async(&mut conn),
        )
        .await
    }

    /// Undoes the index entries of a create whose record write failed. Best effort: when the
    /// record's fate is unknown (Redis unreachable) the index entries stay, so a record that did
    /// land is still listed.
    async fn roll_back_create(&self, record: &KeyRecord, hex: &str, json: &str) {
        let mut conn = self.conn.clone();
        let record_gone = self
            .bounded(
                SCRIPTS
                    .rollback_record
                    .key(self.record_key(hex))
                    .arg(json)
                    .invoke_async::<i64>(&mut conn),
            )
            .await;
        if record_gone.is_err() {
            return;
        }
        let ws = self.workspace_keys(&record.workspace);
        let _ = self
            .bounded(
                SCRIPTS
                    .rollback_index
                    .key(&ws.keys)
                    .key(&ws.created)
                    .key(&ws.active)
                    .arg(record.id.as_str())
                    .arg(hex)
                    .invoke_async::<i64>(&mut conn),
            )
            .await;
    }
}

impl KeyStore for RedisStore {
    async fn create(
        &self,
        record: &KeyRecord,
        max_active: Option<u32>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let hex = record.hash.to_hex();
        let json = encode_record(record)?;
        let ws = self.workspace_keys(&record.workspace);
        let is_active = record.status_at(now) == KeyStatus::Active;
        // A key born revoked or expired takes no slot, so the limit does not apply to it.
        let max = match (max_active, is_active) {
            (Some(max), true) => i64::from(max),
            _ => -1,
        };
        let mut conn = self.conn.clone();
        let outcome: String = self
            .bounded(
                SCRIPTS
                    .create_index
                    .key(&ws.keys)
                    .key(&ws.created)
                    .key(&ws.active)
                    .arg(record.id.as_str())
                    .arg(&hex)
                    .arg(unix_ms(record.created_at))
                    .arg(expiry_score(record))
                    .arg(unix_ms(now))
                    .arg(max)
                    .arg(if is_active { "1" } else { "0" })
                    .invoke_async(&mut conn),
            )
            .await?;
        match outcome.as_str() {
            "ok" => {}
            "conflict" => return Err(StoreError::Conflict),
            "limit" => return Err(StoreError::LimitReached),
            _ => return Err(StoreError::Corrupt("unexpected reply from redis".into())),
        }
        let last_used = record
            .last_used_at
            .map_or_else(String::new, |t| unix_ms(t).to_string());
        let written = self
            .bounded(
                SCRIPTS
                    .create_record
                    .key(self.record_key(&hex))
                    .arg(&json)
                    .arg(clamp_count(record.usage_count))
                    .arg(last_used)
                    .invoke_async::<i64>(&mut conn),
            )
            .await;
        match written {
            Ok(1) => Ok(()),
            Ok(_) => {
                // Another key has this secret: the record is not ours to remove.
                self.roll_back_create(record, &hex, &json).await;
                Err(StoreError::Conflict)
            }
            Err(e) => {
                self.roll_back_create(record, &hex, &json).await;
                Err(e)
            }
        }
    }

    async fn get_by_hash(&self, hash: &SecretHash) -> Result<Option<KeyRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> = self
            .bounded(
                redis::cmd("HGETALL")
                    .arg(self.record_key(&hash.to_hex()))
                    .query_async(&mut conn),
            )
            .await?;
        decode_record_hash(&fields)
    }

    async fn get(&self, workspace: &str, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let Some(hex) = self.hash_of(workspace, id).await? else {
            return Ok(None);
        };
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> = self
            .bounded(
                redis::cmd("HGETALL")
                    .arg(self.record_key(&hex))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(decode_record_hash(&fields)?.filter(|r| r.id == *id && r.workspace == workspace))
    }

    async fn update(&self, record: &KeyRecord) -> Result<(), StoreError> {
        let Some(hex) = self.hash_of(&record.workspace, &record.id).await? else {
            return Err(StoreError::NotFound);
        };
        // The hash is the key's identity on the request path; a new secret is a new key
        // (rotate), never an edit.
        if hex != record.hash.to_hex() {
            return Err(StoreError::Conflict);
        }
        let json = encode_record(record)?;
        let ws = self.workspace_keys(&record.workspace);
        let is_active = record.revoked_at.is_none();
        let mut conn = self.conn.clone();
        let sync_index = || {
            let mut call = SCRIPTS.sync_index.key(&ws.keys);
            call.key(&ws.created)
                .key(&ws.active)
                .arg(record.id.as_str())
                .arg(unix_ms(record.created_at))
                .arg(expiry_score(record))
                .arg(if is_active { "1" } else { "0" });
            call
        };
        // A key that stays active takes its slot before the record changes; a revoked one gives
        // it back only after. Either way `create` never sees more active keys than there are.
        if is_active {
            self.bounded(sync_index().invoke_async::<i64>(&mut conn))
                .await?;
        }
        let replaced: i64 = self
            .bounded(
                SCRIPTS
                    .update_record
                    .key(self.record_key(&hex))
                    .arg(&json)
                    .invoke_async(&mut conn),
            )
            .await?;
        if replaced == 0 {
            return Err(StoreError::NotFound);
        }
        if !is_active {
            self.bounded(sync_index().invoke_async::<i64>(&mut conn))
                .await?;
        }
        Ok(())
    }

    async fn delete(&self, workspace: &str, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let Some(hex) = self.hash_of(workspace, id).await? else {
            return Ok(None);
        };
        let mut conn = self.conn.clone();
        // Record first: from here on the secret no longer works, whatever happens next.
        let flat: Vec<String> = self
            .bounded(
                SCRIPTS
                    .delete_record
                    .key(self.record_key(&hex))
                    .invoke_async(&mut conn),
            )
            .await?;
        let fields: HashMap<String, String> = flat
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect();
        let ws = self.workspace_keys(workspace);
        self.bounded(
            SCRIPTS
                .delete_index
                .key(&ws.keys)
                .key(&ws.created)
                .key(&ws.active)
                .key(self.logs_key(workspace, id))
                .arg(id.as_str())
                .invoke_async::<i64>(&mut conn),
        )
        .await?;
        Ok(decode_record_hash(&fields)?.filter(|r| r.id == *id && r.workspace == workspace))
    }

    async fn list(
        &self,
        workspace: &str,
        query: &ListQuery,
        now: OffsetDateTime,
    ) -> Result<KeyPage, StoreError> {
        let limit = query.limit.max(1);
        let batch = (limit + 1).min(LIST_BATCH_MAX);
        let ws = self.workspace_keys(workspace);
        let mut position: Option<(i64, String)> = match query.cursor.as_deref() {
            Some(cursor) => parse_cursor(cursor).map(|(ms, id)| Some((ms, id.into())))?,
            None => None,
        };
        let mut conn = self.conn.clone();
        let mut keys = Vec::with_capacity(limit);
        let mut last_kept: Option<(i64, String)> = None;
        loop {
            let (score, id) = position
                .as_ref()
                .map_or((String::new(), ""), |(ms, id)| (ms.to_string(), id));
            let flat: Vec<Option<String>> = self
                .bounded(
                    SCRIPTS
                        .list_page
                        .key(&ws.created)
                        .key(&ws.keys)
                        .arg(score)
                        .arg(id)
                        .arg(batch)
                        .invoke_async(&mut conn),
                )
                .await?;
            let entries = parse_page(&flat)?;
            let mut pipe = redis::pipe();
            for hex in entries.iter().filter_map(|(_, _, hex)| hex.as_deref()) {
                pipe.cmd("HGETALL").arg(self.record_key(hex));
            }
            let mut hashes: std::vec::IntoIter<HashMap<String, String>> = if pipe.is_empty() {
                Vec::new().into_iter()
            } else {
                let replies: Vec<_> = self.bounded(pipe.query_async(&mut conn)).await?;
                replies.into_iter()
            };
            for (ms, id, hex) in &entries {
                position = Some((*ms, id.clone()));
                let fields = match hex {
                    Some(_) => hashes.next().ok_or_else(|| {
                        StoreError::Corrupt("unexpected listing reply from redis".into())
                    })?,
                    None => continue,
                };
                // A missing record is a create in progress or one that failed half way.
                let Some(record) = decode_record_hash(&fields)? else {
                    continue;
                };
                if record.id.as_str() != id
                    || record.workspace != workspace
                    || !matches_query(&record, query, now)
                {
                    continue;
                }
                if keys.len() == limit {
                    // One more match exists, so a next page is worth asking for.
                    let next_cursor = last_kept.map(|(ms, id)| format!("{ms}:{id}"));
                    return Ok(KeyPage { keys, next_cursor });
                }
                keys.push(record);
                last_kept = Some((*ms, id.clone()));
            }
            if entries.len() < batch {
                return Ok(KeyPage {
                    keys,
                    next_cursor: None,
                });
            }
        }
    }

    async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        // Several deltas of one key become one: counts add up, the latest use wins.
        let mut merged: BTreeMap<(&str, &KeyId), (u64, i64)> = BTreeMap::new();
        for d in deltas {
            let entry = merged
                .entry((d.workspace.as_str(), &d.id))
                .or_insert((0, i64::MIN));
            entry.0 = entry.0.saturating_add(d.count);
            entry.1 = entry.1.max(unix_ms(d.last_used_at));
        }
        if merged.is_empty() {
            return Ok(());
        }
        // Round trip 1: the record hash of every key, one HMGET per workspace.
        let mut by_workspace: BTreeMap<&str, Vec<(&KeyId, u64, i64)>> = BTreeMap::new();
        for ((ws, id), (count, ms)) in merged {
            by_workspace.entry(ws).or_default().push((id, count, ms));
        }
        let mut pipe = redis::pipe();
        for (ws, items) in &by_workspace {
            pipe.cmd("HMGET").arg(self.workspace_keys(ws).keys);
            for (id, _, _) in items {
                pipe.arg(id.as_str());
            }
        }
        let mut conn = self.conn.clone();
        let hexes: Vec<Vec<Option<String>>> = self.bounded(pipe.query_async(&mut conn)).await?;
        // Round trip 2: the increments, skipping keys that are gone.
        let mut pipe = redis::pipe();
        for ((_, items), hexes) in by_workspace.iter().zip(&hexes) {
            for ((_, count, ms), hex) in items.iter().zip(hexes) {
                if let Some(hex) = hex {
                    pipe.cmd("EVAL")
                        .arg(ADD_USAGE)
                        .arg(1)
                        .arg(self.record_key(hex))
                        .arg(clamp_count(*count))
                        .arg(*ms)
                        .ignore();
                }
            }
        }
        if pipe.is_empty() {
            return Ok(());
        }
        self.bounded(pipe.exec_async(&mut conn)).await
    }

    async fn append_request_logs(
        &self,
        workspace: &str,
        id: &KeyId,
        entries: &[RequestLogEntry],
        max_per_key: usize,
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let ws = self.workspace_keys(workspace);
        let mut call = SCRIPTS.append_logs.key(&ws.keys);
        call.key(self.logs_key(workspace, id))
            .arg(id.as_str())
            .arg(max_per_key);
        for entry in entries {
            let json = serde_json::to_string(entry)
                .map_err(|_| StoreError::Corrupt("request log entry cannot be encoded".into()))?;
            call.arg(json);
        }
        let mut conn = self.conn.clone();
        self.bounded(call.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    async fn request_logs(
        &self,
        workspace: &str,
        id: &KeyId,
        limit: usize,
    ) -> Result<Vec<RequestLogEntry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let stop = i64::try_from(limit - 1).unwrap_or(i64::MAX);
        let raw: Vec<String> = self
            .bounded(
                redis::cmd("LRANGE")
                    .arg(self.logs_key(workspace, id))
                    .arg(0)
                    .arg(stop)
                    .query_async(&mut conn),
            )
            .await?;
        raw.iter()
            .map(|json| {
                serde_json::from_str(json).map_err(|e| {
                    StoreError::Corrupt(format!(
                        "request log of {id}: undecodable entry (column {})",
                        e.column()
                    ))
                })
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .map(drop)
    }
}

/// `(created ms, id, hash hex)` triples of a [`LIST_PAGE`] reply.
fn parse_page(flat: &[Option<String>]) -> Result<Vec<(i64, String, Option<String>)>, StoreError> {
    let bad = || StoreError::Corrupt("unexpected listing reply from redis".into());
    flat.chunks(3)
        .map(|triple| match triple {
            [Some(id), Some(score), hex] => {
                // Scores are whole milliseconds, well inside f64's exact range.
                let ms = score.parse::<f64>().map_err(|_| bad())? as i64;
                Ok((ms, id.clone(), hex.clone()))
            }
            _ => Err(bad()),
        })
        .collect()
}

/// A record hash as `HGETALL` returns it; `None` if it has no record.
fn decode_record_hash(fields: &HashMap<String, String>) -> Result<Option<KeyRecord>, StoreError> {
    let Some(json) = fields.get("rec") else {
        return Ok(None);
    };
    // Only the position: serde's message could quote a stored value.
    let mut record: KeyRecord = serde_json::from_str(json).map_err(|e| {
        StoreError::Corrupt(format!("undecodable key record (column {})", e.column()))
    })?;
    record.usage_count = match fields.get("uc") {
        Some(n) => n.parse::<i64>().map_err(|_| {
            StoreError::Corrupt(format!("usage count of {} is not a number", record.id))
        })?,
        None => 0,
    }
    .max(0)
    .unsigned_abs();
    record.last_used_at = fields
        .get("lu")
        .and_then(|ms| ms.parse::<i64>().ok())
        .and_then(from_unix_ms);
    Ok(Some(record))
}

fn matches_query(record: &KeyRecord, query: &ListQuery, now: OffsetDateTime) -> bool {
    query.status.is_none_or(|s| record.status_at(now) == s)
        && query
            .owner
            .as_deref()
            .is_none_or(|o| record.owner.as_deref() == Some(o))
}

/// The record as stored in `rec`: usage fields zeroed, since they live in `uc` and `lu`.
fn encode_record(record: &KeyRecord) -> Result<String, StoreError> {
    let mut stored = record.clone();
    stored.usage_count = 0;
    stored.last_used_at = None;
    serde_json::to_string(&stored)
        .map_err(|_| StoreError::Corrupt(format!("record of {} cannot be encoded", record.id)))
}

/// Reads a `<created ms>:<id>` cursor. The trait has no "bad request" error, so a cursor this
/// store did not make reads as [`StoreError::NotFound`].
fn parse_cursor(cursor: &str) -> Result<(i64, KeyId), StoreError> {
    let (ms, id) = cursor.split_once(':').ok_or(StoreError::NotFound)?;
    let ms = ms.parse().map_err(|_| StoreError::NotFound)?;
    let id = KeyId::parse(id).ok_or(StoreError::NotFound)?;
    Ok((ms, id))
}

/// `active` score: `expires_at` in unix ms rounded up, so a key counts as active until its
/// expiry has surely passed (never lets `create` exceed the limit); `+inf` for never.
fn expiry_score(record: &KeyRecord) -> String {
    match record.expires_at {
        Some(t) => {
            let ns = t.unix_timestamp_nanos();
            let ms = ns.div_euclid(1_000_000) + i128::from(ns.rem_euclid(1_000_000) != 0);
            ms.to_string()
        }
        None => "+inf".into(),
    }
}

/// HINCRBY takes a signed 64-bit number.
fn clamp_count(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Unix milliseconds, rounded down.
fn unix_ms(t: OffsetDateTime) -> i64 {
    // i64 milliseconds cover ±292 million years; `OffsetDateTime` covers ±9999 years.
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000))
        .expect("an OffsetDateTime in milliseconds fits in i64")
}

fn from_unix_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// Maps a client error without its detail, which may quote a reply (and so stored data).
fn redis_err(e: &RedisError) -> StoreError {
    match e.kind() {
        ErrorKind::Io => StoreError::Unavailable(format!("redis connection: {e}")),
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => {
            StoreError::Corrupt("unexpected reply from redis".into())
        }
        ErrorKind::Server(_) => StoreError::Unavailable(format!(
            "redis error reply {}",
            e.code().unwrap_or("(no code)")
        )),
        kind => StoreError::Unavailable(format!("redis: {kind:?}")),
    }
}
