//! The Redis key index, shared by many gateway instances. Owns the key layout below and every
//! command that touches it; the Lua scripts, one per atomic step, are in [`scripts`].
//!
//! # Key layout
//!
//! `P` is `store.redis.key_prefix` (default `keygate:`). The `{…}` parts are Redis Cluster hash
//! tags: every multi-key command or script touches keys of one tag only, so each stays on one
//! slot.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P{h:<hash hex>}` | HASH | a key by the keyed BLAKE3 hash of its secret. `rec`: `KeyRecord` JSON with usage fields zeroed; `uc`: usage count; `lu`: last use, unix ms. While an upgrade from SHA-256 is under way, also `from`: the SHA-256 digest hex, `mv`: the usage count copied from there, and `m`: written since the record was marked. The request path reads it with one `HGETALL`. |
//! | `P{s:<sha256 hex>}` | HASH | a key imported with only the SHA-256 digest of its secret, until upgraded; the same fields as `P{h:…}`, and `to`: the keyed hash hex an upgrade is moving it to, once marked. Read by `get_by_sha256` only, never by `get_by_hash`. |
//! | `P{t:<tag hex>}` | STRING | `<key id> <workspace>`: the imported key that holds this `sha256_tag`, for the key's lifetime. Claimed by `create` between the index entry and the record, so that one secret is one key whatever form it was imported in; removed by `delete`. A claim whose key has no index entry any more (a create or delete cut short) is taken over by the next import of the secret. |
//! | `P{ws:<workspace>}:keys` | HASH | key id → where its record is: `<hex>` for `P{h:<hex>}`; `s:<hex>` for `P{s:<hex>}`; `u:<sha256 hex>:<hex>` while an upgrade is under way (or was cut short): `P{s:…}` is still the record, `P{h:…}` a copy kept in step |
//! | `P{ws:<workspace>}:created` | ZSET | key id scored by `created_at` unix ms: newest-first listing, ties by id |
//! | `P{ws:<workspace>}:meta` | HASH | a workspace created through the admin API: `rec`: `WorkspaceRecord` JSON; `api`: `1`/`0`, its API access; `max`: its `max_active_keys`; `u`: `updated_at` unix ms, compared by a conditional write. Read by `create` (`Admission::Stored`) in the script that counts active keys; removed only while `…:keys` is empty. |
//! | `P{workspaces}` | ZSET | names of stored workspaces, all scored 0 (listed by name). Added before `…:meta` is written and removed after it is, so every stored workspace is listed (a name without `meta` is skipped). |
//! | `P{ws:<workspace>}:active` | ZSET | key id scored by `expires_at` unix ms (rounded up; `+inf` for never); revoked keys are absent. Counted by `create` against `max_active_keys`, and by `count_active`. |
//! | `P{ws:<workspace>}:logs:<id>` | LIST | `RequestLogEntry` JSON, newest first, trimmed to `max_per_key` |
//! | `P{ws:<workspace>}:days:<id>` | HASH | per-day usage: UTC day `YYYY-MM-DD` → requests. Written by `add_usage` in the round trip that adds `uc` (its own script: another slot than the record); when a day is first written, days older than `USAGE_DAYS_KEPT` are removed, and the hash expires `USAGE_DAYS_KEPT` + 1 days after its last write. Removed by `delete`. |
//! | `P{ws:<workspace>}:audit` | ZSET | the workspace's audit log: entry id scored by its `time` in unix ms; newest first is descending score, ties by id descending; trimmed to the newest `AUDIT_MAX_ENTRIES` |
//! | `P{ws:<workspace>}:audit:entries` | HASH | entry id → `AuditEntry` JSON, for the ids in `…:audit` |
//! | `P{audit}`, `P{audit}:entries` | ZSET, HASH | the global audit log, laid out as a workspace's |
//! | `P{q:<key id>}:<period start>` | STRING | quota units the key spent in the period starting at that unix second (0: a quota that never refills); expires an hour after the period ends. Written by [`KeyStore::consume_quota`]. |
//! | `P{rl:<key id>}`, `P{rl:<key id>}:r<route>` | STRING | GCRA state of `rate_limits.mode: redis`, owned by `limits::redis` (reached through [`RedisStore::connection`]) |
//!
//! Beside the keys, one pub/sub channel, `Pinvalidate` (`keygate:invalidate` by default), carries
//! cache invalidations between the instances sharing the store (SPEC §4): after every change to a
//! key (create, update, rotate, revoke, delete, and the upgrade of a SHA-256 import on its first
//! use) the instance that made it publishes one message per keyed BLAKE3 hash it touched, and
//! every subscribed instance drops that hash from its cache. A message is exactly the 64
//! lowercase hex digits of the hash, as in `P{h:<hex>}`: never a secret, and never a SHA-256
//! digest (no cache holds records by digest, so there is nothing to drop, and an unkeyed digest
//! is a guess verifier that has no business on the wire). After every change to a stored
//! workspace, the message `ws:<name>` tells every instance to read it again
//! ([`crate::workspaces`]). A receiver that cannot read a message
//! re-reads every key it has cached before trusting it again. The channel needs no hash tag:
//! pub/sub is not sharded by slot. What publishing and subscribing mean for the cache, and what
//! an instance does when it loses the channel, is in [`super::invalidation`].
//!
//! # Ordering
//!
//! A key is written to its workspace index first and to its record hash second, so a crash never
//! leaves a usable key that is not listed (at worst an index entry without a record, which lists
//! nothing and is removed by `delete`). Deletion goes the other way: record first. An audit
//! entry goes to its workspace's log and the global log in one pipeline (two slots, so two
//! scripts, not one transaction).
//!
//! An `update` is conditional (see [`KeyStore::update`]): `UPDATE_RECORD` reads the stored `rec`,
//! compares its `updated_at` and revocation with what the caller expects, and writes, in one
//! script on the record's slot; a record already byte-equal to the one sent is `ok`, so the
//! resend of a write that landed before its connection dropped never conflicts with itself. The
//! workspace index is synced in its own script before (a key
//! that stays active) or after (a revoked one); when the record write is refused, the index is
//! synced again with the record that is stored, so a refused edit never gives a revoked key its
//! active slot back.
//!
//! # Upgrading a SHA-256 import
//!
//! The record moves from `P{s:<old>}` to `P{h:<new>}` across three slots, in this order, so that
//! at every point the key works (by one hash or both), is listed, and can be edited, revoked and
//! deleted:
//!
//! 1. the index entry becomes `u:<old>:<new>`: from here `delete` removes both records;
//! 2. `P{s:<old>}` is marked `to: <new>` and read in one script, then `P{h:<new>}` is written
//!    from that read unless a copy is there: the record with the new hash, its usage, and
//!    `from`, `mv`, `m`; the key now works by its new hash. From the mark on, `update` writes
//!    the copy first, conditionally on its version (`CAS_COPY`; writing the copy itself from a
//!    fresh read if there is none yet), and only then the record, which follows it (only
//!    forward, never un-revoking). So the record cannot change while there is no copy, every
//!    copy is written from a current read, and a revoke racing the upgrade reaches the copy
//!    before (or at the same time as) the record: no copy ever answers unrevoked for a revoked
//!    key, whatever step either side stops at. Reads by id take the copy once it is marked `m`;
//! 3. the index entry becomes `<new>`: `P{h:<new>}` is the record;
//! 4. `P{s:<old>}` is removed, reading what it held last: usage counted after step 2 and an edit
//!    that landed there are carried to `P{h:<new>}`, which then drops `from`, `mv` and `m`.
//!
//! Every step is idempotent and `upgrade_hash` resumes from the index entry, so concurrent
//! upgrades of one key (its first use on several instances) and retries agree. A crash leaves:
//!
//! - after step 1: the import as it was, marked; the next use upgrades it;
//! - after step 2: a key that works by both hashes and stays consistent, because the mark makes
//!   `update` write the copy first (a revoke reaches both) and step 1 makes `delete` remove
//!   both (as does the mark, for a `delete` that read the index before step 1). The request
//!   path finds the copy by the new hash and so never calls `upgrade_hash` again: the key stays
//!   listed as a SHA-256 import, with usage counted there, until something resumes it;
//! - after step 3: the upgraded key, with `P{s:<old>}` and `from`, `mv` left over (usage counted
//!   between steps 2 and 4 is lost); `delete` removes the leftover `P{s:…}` with the key.
//!
//! An `update` cut short between the copy and the record leaves the copy one version ahead: reads
//! by id see the copy, and the upgrade carries it over. The one window left: a crash between
//! steps 2 and 3 of an upgrade racing a `delete` of the same key can leave an unlisted `P{h:…}`
//! behind.
//!
//! # Connection
//!
//! [`RedisStore::connect`] does not wait for Redis: the [`ConnectionManager`] connects on first
//! use and starts a new connection at once when a call finds the connection lost, so the gateway
//! starts while Redis is down and answers `store_unavailable` per request until it is back.
//! Every round trip is bounded by `store.redis.timeout`; a timeout or a connection error is
//! [`StoreError::Unavailable`].
//!
//! Every round trip goes through the store's [`Breaker`] (shared with the global rate limiter
//! and quota counting): once timeouts or failed connections show an outage (a row of them, or
//! a failure rate; one alone is not one), calls fail at once for a moment instead of each
//! waiting for the timeout, and one probe at a time finds out when Redis is back. The manager makes one
//! connection attempt per lost connection, no retries of its own: the breaker paces the attempts.
//!
//! A connection lost under a call (Redis closed it: `CLIENT KILL`, a proxy restart, a failover)
//! fails that call. Round trips that may run twice are sent once more on the new connection,
//! within the same `store.redis.timeout` ([`RedisStore::retried`]): reads, and the writes that
//! are idempotent or conditional, namely `update`'s record write (compared with `updated_at`: a
//! write that did land makes the retry `stale`, and the caller reads again), the index sync (sets
//! the index from the record), audit appends (keyed by the entry id) and invalidation messages (a
//! second one is harmless). The others are sent once, since a write that landed before the
//! connection went would be applied twice or misreported: `create`'s scripts (a rerun finds its
//! own key and reports a conflict), `delete`'s record removal (a rerun finds nothing), usage and
//! quota increments, request-log appends, and the steps of an upgrade (see above).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::{ErrorKind, FromRedisValue, RedisError, RedisResult, ScriptInvocation};
use time::format_description::BorrowedFormatItem;
use time::{Date, OffsetDateTime};

mod channel;
mod fleet;
mod scripts;
mod workspaces;

pub use channel::{InvalidationFeed, InvalidationMessage};

use scripts::{ADD_DAYS, ADD_USAGE, APPEND_AUDIT, CONSUME_QUOTA, SCRIPTS};

use super::breaker::{Breaker, Outcome};
use super::invalidation::InvalidationStats;
use super::{
    AUDIT_MAX_ENTRIES, Admission, AuditEntry, AuditPage, KeyPage, KeyStore, ListQuery, QuotaCount,
    QuotaSpend, RequestLogEntry, StoreError, USAGE_DAYS_KEPT, UsageDelta, cursor_at, from_unix_ms,
    oldest_usage_day, parse_cursor, parse_key_cursor, stored_json, unix_ms,
};
use crate::config::RedisConfig;
use crate::keys::{HashScheme, KeyId, KeyRecord, KeyStatus, SecretHash};
use crate::workspaces::WorkspaceRecord;

/// Shortest time one connection attempt gets, even with a smaller per-call timeout: the caller
/// gives up after its own timeout anyway, and a too-short connect timeout would never succeed
/// on a slow network.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Connection attempts the manager makes after the first one fails: none. Its own backoff
/// would have calls wait on a sleeping reconnect (paying the whole timeout) and find Redis back
/// late; instead a failed call makes the next one start a new attempt, paced by the [`Breaker`].
const RECONNECT_RETRIES: usize = 0;
/// Index entries read per round trip while listing.
const LIST_BATCH_MAX: usize = 200;
/// Reads of the index a lookup by id makes when an upgrade moves the record under it.
const FOLLOW_ATTEMPTS: usize = 3;
/// The invalidation channel's name after the key prefix.
const INVALIDATION_CHANNEL: &str = "invalidate";

/// The names of one workspace's index keys.
struct WorkspaceKeys {
    keys: String,
    created: String,
    active: String,
    /// The stored workspace (see [`workspaces`]).
    meta: String,
}

/// Where a key's record is, as its workspace index (`P{ws:…}:keys`) says. The hex strings are
/// 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq)]
enum IndexEntry {
    /// `<hex>`: keyed BLAKE3; the record is `P{h:<hex>}`.
    Keyed(String),
    /// `s:<hex>`: a SHA-256 import; the record is `P{s:<hex>}`.
    Sha256(String),
    /// `u:<sha256 hex>:<keyed hex>`: an upgrade under way or cut short. `P{s:…}` is still the
    /// record; `P{h:…}` is a copy that `update` and `delete` keep in step.
    Upgrading {
        /// The SHA-256 digest the key was imported with.
        sha256: String,
        /// The keyed hash it is moving to.
        keyed: String,
    },
}

impl IndexEntry {
    /// The entry of a record as it is created.
    fn of(record: &KeyRecord) -> IndexEntry {
        let hex = record.hash.to_hex();
        match record.hash_scheme {
            HashScheme::KeyedBlake3 => IndexEntry::Keyed(hex),
            HashScheme::Sha256 => IndexEntry::Sha256(hex),
        }
    }

    fn parse(value: &str) -> Result<IndexEntry, StoreError> {
        let hex = |s: &str| {
            (s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
                .then(|| s.to_owned())
        };
        let entry = if let Some(rest) = value.strip_prefix("s:") {
            hex(rest).map(IndexEntry::Sha256)
        } else if let Some(rest) = value.strip_prefix("u:") {
            rest.split_once(':')
                .and_then(|(old, new)| Some((hex(old)?, hex(new)?)))
                .map(|(sha256, keyed)| IndexEntry::Upgrading { sha256, keyed })
        } else {
            hex(value).map(IndexEntry::Keyed)
        };
        entry.ok_or_else(|| StoreError::Corrupt("unreadable entry in a workspace key index".into()))
    }

    /// The entry as stored.
    fn value(&self) -> String {
        match self {
            IndexEntry::Keyed(hex) => hex.clone(),
            IndexEntry::Sha256(hex) => format!("s:{hex}"),
            IndexEntry::Upgrading { sha256, keyed } => format!("u:{sha256}:{keyed}"),
        }
    }

    /// The scheme and hash hex of the record that counts.
    fn stored_hash(&self) -> (HashScheme, &str) {
        match self {
            IndexEntry::Keyed(hex) => (HashScheme::KeyedBlake3, hex),
            IndexEntry::Sha256(hex) | IndexEntry::Upgrading { sha256: hex, .. } => {
                (HashScheme::Sha256, hex)
            }
        }
    }
}

/// The Redis-backed store. Cheap to share: the connection manager multiplexes one connection.
pub struct RedisStore {
    conn: ConnectionManager,
    /// Every round trip's; shared with the global rate limiter, which calls the same server.
    breaker: Arc<Breaker>,
    prefix: String,
    timeout: Duration,
    audit_max: usize,
    // Boxed: used off the request path only, and inline the client would make every `Store`
    // several times the size of its embedded variant.
    channel: Box<Channel>,
}

/// The invalidation channel of a [`RedisStore`].
struct Channel {
    /// `Pinvalidate`.
    name: String,
    /// For the subscriber, which needs a connection of its own (a subscribed connection takes
    /// no other commands).
    client: redis::Client,
    stats: InvalidationStats,
    /// This instance among those sharing the store ([`super::fleet`]).
    fleet: super::fleet::Fleet,
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
            .set_number_of_retries(RECONNECT_RETRIES);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| redis_err(&e))?;
        Ok(RedisStore {
            conn,
            breaker: Arc::new(Breaker::new()),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            audit_max: AUDIT_MAX_ENTRIES,
            channel: Box::new(Channel {
                name: format!("{}{INVALIDATION_CHANNEL}", config.key_prefix),
                client,
                stats: InvalidationStats::default(),
                fleet: super::fleet::Fleet::new(),
            }),
        })
    }

    /// Keeps at most `max` entries per audit log instead of [`AUDIT_MAX_ENTRIES`] (at least 1),
    /// so that tests can fill a log.
    pub fn with_audit_max_entries(mut self, max: usize) -> Self {
        self.audit_max = max.max(1);
        self
    }

    /// The multiplexed connection (a cheap clone), for the global rate limiter, which keeps its
    /// own keys on the same server (`limits::redis`).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The circuit breaker every round trip to this Redis goes through (the global rate
    /// limiter's and the quota scripts' too).
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    /// `store.redis.key_prefix`.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// `store.redis.timeout`: the bound of every round trip.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `P{q:<key id>}:<period start>`: a key's quota count in one period.
    fn quota_key(&self, id: &KeyId, period_start: i64) -> String {
        format!("{}{{q:{id}}}:{period_start}", self.prefix)
    }

    /// `P{h:<hex>}`: a record by its keyed BLAKE3 hash.
    fn record_key(&self, hash_hex: &str) -> String {
        format!("{}{{h:{hash_hex}}}", self.prefix)
    }

    /// `P{t:<hex>}`: the claim of an import's `sha256_tag`.
    fn tag_key(&self, tag: &SecretHash) -> String {
        format!("{}{{t:{}}}", self.prefix, tag.to_hex())
    }

    /// `P{s:<hex>}`: a record by the SHA-256 digest it was imported with.
    fn sha256_key(&self, hex: &str) -> String {
        format!("{}{{s:{hex}}}", self.prefix)
    }

    /// The record hash that counts for an index entry.
    fn record_key_of(&self, entry: &IndexEntry) -> String {
        match entry.stored_hash() {
            (HashScheme::KeyedBlake3, hex) => self.record_key(hex),
            (HashScheme::Sha256, hex) => self.sha256_key(hex),
        }
    }

    /// `(log ZSET, entries HASH)` of a workspace's audit log, or of the global one.
    fn audit_keys(&self, ws: Option<&str>) -> (String, String) {
        let log = match ws {
            Some(ws) => format!("{}{{ws:{ws}}}:audit", self.prefix),
            None => format!("{}{{audit}}", self.prefix),
        };
        let entries = format!("{log}:entries");
        (log, entries)
    }

    fn workspace_keys(&self, ws: &str) -> WorkspaceKeys {
        WorkspaceKeys {
            keys: format!("{}{{ws:{ws}}}:keys", self.prefix),
            created: format!("{}{{ws:{ws}}}:created", self.prefix),
            active: format!("{}{{ws:{ws}}}:active", self.prefix),
            meta: format!("{}{{ws:{ws}}}:meta", self.prefix),
        }
    }

    fn logs_key(&self, ws: &str, id: &KeyId) -> String {
        format!("{}{{ws:{ws}}}:logs:{id}", self.prefix)
    }

    /// `P{ws:<workspace>}:days:<id>`: a key's per-day usage.
    fn days_key(&self, ws: &str, id: &KeyId) -> String {
        format!("{}{{ws:{ws}}}:days:{id}", self.prefix)
    }

    /// One round trip, bounded by the configured timeout, sent once (see "Connection" in the
    /// module docs for which calls may not be sent twice).
    async fn bounded<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        bounded(&self.breaker, self.timeout, call).await
    }

    /// One round trip that undoes part of a write that failed: sent even while the breaker is
    /// open (see [`Breaker::bypass`]), bounded by the timeout.
    async fn compensating<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let permit = self.breaker.bypass();
        let result = tokio::time::timeout(self.timeout, call).await;
        permit.record(outcome(&result));
        settle(result, self.timeout)
    }

    /// One round trip that may safely run twice: a read, or a write that is idempotent or
    /// conditional. If the connection turns out to be lost, the request is sent once more on
    /// the connection the manager has started meanwhile. Both attempts together are bounded by
    /// the configured timeout, and only the last one counts for the breaker, so a dropped
    /// connection costs neither a failed call nor an open breaker.
    async fn retried<T: FromRedisValue + Send>(
        &self,
        request: &impl Resend,
    ) -> Result<T, StoreError> {
        let permit = self.breaker.admit()?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut conn = self.conn.clone();
        let mut result = tokio::time::timeout_at(deadline, request.send(&mut conn)).await;
        if matches!(&result, Ok(Err(e)) if e.is_io_error()) {
            result = tokio::time::timeout_at(deadline, request.send(&mut conn)).await;
        }
        permit.record(outcome(&result));
        settle(result, self.timeout)
    }

    /// What the workspace index holds for `id`.
    async fn index_entry(&self, ws: &str, id: &KeyId) -> Result<Option<IndexEntry>, StoreError> {
        let keys = self.workspace_keys(ws).keys;
        let value: Option<String> = self
            .retried(redis::cmd("HGET").arg(&keys).arg(id.as_str()))
            .await?;
        value.as_deref().map(IndexEntry::parse).transpose()
    }

    /// The fields of a record hash (empty if it does not exist).
    async fn fields(&self, key: &str) -> Result<HashMap<String, String>, StoreError> {
        self.retried(redis::cmd("HGETALL").arg(key)).await
    }

    /// The keyed hash an unfinished upgrade of the SHA-256 record `sha256` is moving it to (the
    /// `to` mark its first step sets), if any.
    pub async fn upgrade_target(
        &self,
        sha256: &SecretHash,
    ) -> Result<Option<SecretHash>, StoreError> {
        let to: Option<String> = self
            .retried(
                redis::cmd("HGET")
                    .arg(self.sha256_key(&sha256.to_hex()))
                    .arg("to"),
            )
            .await?;
        Ok(to.as_deref().and_then(SecretHash::from_hex))
    }

    /// A key by id. A SHA-256 record that is gone by the time it is read may have been moved by
    /// an upgrade: then the index is read again.
    async fn record_by_id(&self, ws: &str, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let mut previous = None;
        for _ in 0..FOLLOW_ATTEMPTS {
            let Some(entry) = self.index_entry(ws, id).await? else {
                return Ok(None);
            };
            if previous.as_ref() == Some(&entry) {
                // An index entry without a record: a create in progress or one that failed
                // half way.
                return Ok(None);
            }
            let fields = self.fields(&self.record_key_of(&entry)).await?;
            if let IndexEntry::Upgrading { sha256, keyed } = &entry
                && let Some(record) = self.marked_copy(sha256, keyed, &fields).await?
            {
                return Ok((record.id == *id && record.workspace == ws).then_some(record));
            }
            if let Some(record) = decode_record_hash(&fields)? {
                let ours = record.id == *id && record.workspace == ws;
                return Ok(ours.then_some(record));
            }
            if matches!(entry, IndexEntry::Keyed(_)) {
                return Ok(None);
            }
            previous = Some(entry);
        }
        Ok(None)
    }

    /// Claims `record.sha256_tag` (if any) for it. A claim held by a key that has no index
    /// entry any more is left over from a create or delete cut short (a create writes its index
    /// entry before claiming, a delete removes it last), so it is taken over; one held by a key
    /// being created or still there is [`StoreError::Conflict`].
    async fn claim_tag(&self, record: &KeyRecord) -> Result<(), StoreError> {
        let Some(tag) = &record.sha256_tag else {
            return Ok(());
        };
        let mut conn = self.conn.clone();
        let mine = tag_holder(record);
        let mut stale = String::new();
        for _ in 0..FOLLOW_ATTEMPTS {
            let reply: Vec<String> = self
                .bounded(
                    SCRIPTS
                        .claim_tag
                        .key(self.tag_key(tag))
                        .arg(&mine)
                        .arg(&stale)
                        .invoke_async(&mut conn),
                )
                .await?;
            let holder = match reply.as_slice() {
                [state] if state == "ok" => return Ok(()),
                [state, holder] if state == "taken" => holder.clone(),
                _ => return Err(StoreError::Corrupt("unexpected reply from redis".into())),
            };
            let (id, ws) = holder
                .split_once(' ')
                .and_then(|(id, ws)| Some((KeyId::parse(id)?, ws)))
                .ok_or_else(|| StoreError::Corrupt("unreadable sha256 tag claim".into()))?;
            if self.index_entry(ws, &id).await?.is_some() {
                return Err(StoreError::Conflict);
            }
            stale = holder;
        }
        Err(StoreError::Conflict)
    }

    /// Releases `record.sha256_tag` (if any) if `record` still holds it.
    async fn release_tag(&self, record: &KeyRecord) -> Result<(), StoreError> {
        let Some(tag) = &record.sha256_tag else {
            return Ok(());
        };
        let mut conn = self.conn.clone();
        self.bounded(
            SCRIPTS
                .release_tag
                .key(self.tag_key(tag))
                .arg(tag_holder(record))
                .invoke_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }

    /// Undoes the index entries of a create whose record write failed. Best effort: when the
    /// record's fate is unknown (Redis unreachable) the index entries stay, so a record that did
    /// land is still listed.
    async fn roll_back_create(&self, record: &KeyRecord, entry: &IndexEntry, json: &str) {
        let mut conn = self.conn.clone();
        let record_gone = self
            .compensating(
                SCRIPTS
                    .rollback_record
                    .key(self.record_key_of(entry))
                    .arg(json)
                    .invoke_async::<i64>(&mut conn),
            )
            .await;
        if record_gone.is_err() {
            return;
        }
        let ws = self.workspace_keys(&record.workspace);
        let _ = self
            .compensating(
                SCRIPTS
                    .delete_index_if
                    .key(&ws.keys)
                    .key(&ws.created)
                    .key(&ws.active)
                    .key(self.logs_key(&record.workspace, &record.id))
                    .key(self.days_key(&record.workspace, &record.id))
                    .arg(record.id.as_str())
                    .arg(entry.value())
                    .invoke_async::<i64>(&mut conn),
            )
            .await;
    }

    /// Brings `created` and `active` in line with `record`, unless the key is gone.
    async fn sync_index(&self, record: &KeyRecord) -> Result<(), StoreError> {
        let ws = self.workspace_keys(&record.workspace);
        // Idempotent: it sets the index from the record.
        self.retried::<i64>(
            SCRIPTS
                .sync_index
                .key(&ws.keys)
                .key(&ws.created)
                .key(&ws.active)
                .arg(record.id.as_str())
                .arg(unix_ms(record.created_at))
                .arg(expiry_score(record))
                .arg(if record.revoked_at.is_none() {
                    "1"
                } else {
                    "0"
                }),
        )
        .await?;
        Ok(())
    }

    /// Syncs the index with the record as stored now, after an update that synced it ahead
    /// failed. The record is read again after the sync: if another write landed meanwhile, its
    /// own sync may have come before ours, so ours is redone with the newer record.
    async fn resync_index(&self, ws: &str, id: &KeyId) -> Result<(), StoreError> {
        let mut seen = self.record_by_id(ws, id).await?;
        for _ in 0..FOLLOW_ATTEMPTS {
            let Some(record) = &seen else {
                // Deleted: `delete` removes the index entries itself.
                return Ok(());
            };
            self.sync_index(record).await?;
            let now = self.record_by_id(ws, id).await?;
            let same = |a: &KeyRecord, b: &KeyRecord| {
                a.updated_at == b.updated_at && a.revoked_at == b.revoked_at
            };
            if now.as_ref().is_none_or(|now| same(now, record)) {
                return Ok(());
            }
            seen = now;
        }
        Ok(())
    }
}

impl KeyStore for RedisStore {
    async fn create(
        &self,
        record: &KeyRecord,
        admission: impl Into<Admission> + Send,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let admission = admission.into();
        let entry = IndexEntry::of(record);
        let json = stored_json(record)?;
        let ws = self.workspace_keys(&record.workspace);
        let is_active = record.status_at(now) == KeyStatus::Active;
        // A key born revoked or expired takes no slot, so the limit does not apply to it.
        let max = match (admission, is_active) {
            (Admission::Limit(max), true) => i64::from(max),
            _ => -1,
        };
        let stored = if admission == Admission::Stored {
            "1"
        } else {
            "0"
        };
        let mut conn = self.conn.clone();
        let outcome: String = self
            .bounded(
                SCRIPTS
                    .create_index
                    .key(&ws.keys)
                    .key(&ws.created)
                    .key(&ws.active)
                    .key(&ws.meta)
                    .arg(record.id.as_str())
                    .arg(entry.value())
                    .arg(unix_ms(record.created_at))
                    .arg(expiry_score(record))
                    .arg(unix_ms(now))
                    .arg(max)
                    .arg(if is_active { "1" } else { "0" })
                    .arg(stored)
                    .invoke_async(&mut conn),
            )
            .await?;
        match outcome.as_str() {
            "ok" => {}
            "conflict" => return Err(StoreError::Conflict),
            "limit" => return Err(StoreError::LimitReached),
            "no_workspace" => return Err(StoreError::NoWorkspace),
            "no_api_access" => return Err(StoreError::NoApiAccess),
            _ => return Err(StoreError::Corrupt("unexpected reply from redis".into())),
        }
        // Between the index entry and the record: a claim is never left by a key without an
        // index entry, except by one cut short, which `claim_tag` recognises.
        if let Err(e) = self.claim_tag(record).await {
            self.roll_back_create(record, &entry, &json).await;
            return Err(e);
        }
        let last_used = record
            .last_used_at
            .map_or_else(String::new, |t| unix_ms(t).to_string());
        let written = self
            .bounded(
                SCRIPTS
                    .create_record
                    .key(self.record_key_of(&entry))
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
                let _ = self.release_tag(record).await;
                self.roll_back_create(record, &entry, &json).await;
                Err(StoreError::Conflict)
            }
            Err(e) => {
                self.roll_back_create(record, &entry, &json).await;
                Err(e)
            }
        }
    }

    async fn get_by_hash(&self, hash: &SecretHash) -> Result<Option<KeyRecord>, StoreError> {
        let fields = self.fields(&self.record_key(&hash.to_hex())).await?;
        decode_record_hash(&fields)
    }

    async fn get(&self, workspace: &str, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.record_by_id(workspace, id).await
    }

    async fn update(
        &self,
        record: &KeyRecord,
        expected_updated_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let Some(entry) = self.index_entry(&record.workspace, &record.id).await? else {
            return Err(StoreError::NotFound);
        };
        // The hash is the key's identity on the request path; a new secret is a new key
        // (rotate), never an edit. A SHA-256 record read before an upgrade is stale.
        if entry.stored_hash() != (record.hash_scheme, record.hash.to_hex().as_str()) {
            return Err(StoreError::Conflict);
        }
        let json = stored_json(record)?;
        let is_active = record.revoked_at.is_none();
        let revoked_flag = if is_active { "0" } else { "1" };
        let mut conn = self.conn.clone();
        // A key that stays active takes its slot before the record changes; a revoked one gives
        // it back only after. Either way `create` never sees more active keys than there are.
        if is_active {
            self.sync_index(record).await?;
        }
        let outcome = self
            .write_record(&entry, record, &json, expected_updated_at)
            .await;
        let refused = match outcome.as_deref() {
            // The call failed, and may or may not have written.
            Err(e) => Some(e.clone()),
            Ok("ok") => None,
            Ok("stale" | "revoked") => Some(StoreError::Conflict),
            Ok("missing") => {
                // Deleted, or a SHA-256 record moved by an upgrade since the index was read:
                // then the caller's record is stale.
                let now = self.index_entry(&record.workspace, &record.id).await?;
                Some(match now {
                    Some(now) if now != entry => StoreError::Conflict,
                    _ => StoreError::NotFound,
                })
            }
            Ok("corrupt") => Some(StoreError::Corrupt(format!(
                "record of {}: undecodable",
                record.id
            ))),
            Ok(_) => Some(StoreError::Corrupt("unexpected reply from redis".into())),
        };
        if let Some(e) = refused {
            if is_active {
                // The index was synced ahead with a record that may not have been written:
                // bring it back in line with the stored one (a revoked key must not hold a
                // slot again). The caller still learns why the update did not go through.
                if let Err(resync) = self.resync_index(&record.workspace, &record.id).await {
                    tracing::warn!(key_id = %record.id, error = %resync, "active-key index left ahead of a refused update");
                }
            }
            return Err(e);
        }
        if let IndexEntry::Upgrading { sha256, keyed } = &entry {
            // The copy under the new hash answers lookups already: it must not keep working
            // as it was (a revoke above all). If the upgrade carries this edit over as well, it
            // writes the same record.
            let copy = stored_json(&upgraded(record.clone(), keyed)?)?;
            self.bounded(
                SCRIPTS
                    .update_copy
                    .key(self.record_key(keyed))
                    .arg(copy)
                    .arg(sha256)
                    .arg(unix_ms(record.updated_at))
                    .arg(revoked_flag)
                    .invoke_async::<i64>(&mut conn),
            )
            .await?;
        }
        if !is_active {
            self.sync_index(record).await?;
        }
        Ok(())
    }

    async fn delete(&self, workspace: &str, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let ws = self.workspace_keys(workspace);
        // (A marked SHA-256 record names its copy in `to`: it goes too.)
        let mut conn = self.conn.clone();
        let mut removed = None;
        // The index entry can change under us only through an upgrade, which moves the record:
        // then the record it points at now is removed too.
        for _ in 0..FOLLOW_ATTEMPTS {
            let Some(entry) = self.index_entry(workspace, id).await? else {
                return Ok(removed);
            };
            // Record first: from here on the secret no longer works, whatever happens next.
            let flat: Vec<String> = self
                .bounded(
                    SCRIPTS
                        .delete_record
                        .key(self.record_key_of(&entry))
                        .invoke_async(&mut conn),
                )
                .await?;
            let fields: HashMap<String, String> = flat
                .chunks_exact(2)
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect();
            // Whatever else of an upgrade could still answer for this key goes with it.
            let leftover = match &entry {
                IndexEntry::Upgrading { keyed, .. } => Some(self.record_key(keyed)),
                IndexEntry::Keyed(_) => fields.get("from").map(|hex| self.sha256_key(hex)),
                IndexEntry::Sha256(_) => fields.get("to").map(|hex| self.record_key(hex)),
            };
            if let Some(key) = leftover {
                self.bounded(
                    SCRIPTS
                        .take_if_key
                        .key(key)
                        .arg(id.as_str())
                        .invoke_async::<redis::Value>(&mut conn),
                )
                .await?;
            }
            if let Some(record) =
                decode_record_hash(&fields)?.filter(|r| r.id == *id && r.workspace == workspace)
            {
                // The secret may be imported again: its tag goes with the key.
                self.release_tag(&record).await?;
                removed = Some(record);
            }
            let done: i64 = self
                .bounded(
                    SCRIPTS
                        .delete_index_if
                        .key(&ws.keys)
                        .key(&ws.created)
                        .key(&ws.active)
                        .key(self.logs_key(workspace, id))
                        .key(self.days_key(workspace, id))
                        .arg(id.as_str())
                        .arg(entry.value())
                        .invoke_async(&mut conn),
                )
                .await?;
            if done == 1 {
                return Ok(removed);
            }
        }
        Err(StoreError::Unavailable(format!(
            "key {id} kept moving while it was being deleted"
        )))
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
            Some(cursor) => parse_key_cursor(cursor).map(|(ms, id)| Some((ms, id.into())))?,
            None => None,
        };
        let mut keys = Vec::with_capacity(limit);
        let mut last_kept: Option<(i64, String)> = None;
        loop {
            let (score, id) = position
                .as_ref()
                .map_or((String::new(), ""), |(ms, id)| (ms.to_string(), id));
            let flat: Vec<Option<String>> = self
                .retried(
                    SCRIPTS
                        .page
                        .key(&ws.created)
                        .key(&ws.keys)
                        .arg(score)
                        .arg(id)
                        .arg(batch),
                )
                .await?;
            let entries = parse_page(&flat)?;
            let mut pipe = redis::pipe();
            for entry in entries.iter().filter_map(|(_, _, entry)| entry.as_ref()) {
                pipe.cmd("HGETALL").arg(self.record_key_of(entry));
            }
            let mut hashes: std::vec::IntoIter<HashMap<String, String>> = if pipe.is_empty() {
                Vec::new().into_iter()
            } else {
                let replies: Vec<_> = self.retried(&pipe).await?;
                replies.into_iter()
            };
            for (ms, id, entry) in &entries {
                position = Some((*ms, id.clone()));
                let Some(entry) = entry else {
                    continue;
                };
                let fields = hashes.next().ok_or_else(|| {
                    StoreError::Corrupt("unexpected listing reply from redis".into())
                })?;
                let record = match decode_record_hash(&fields)? {
                    Some(record) => record,
                    // A SHA-256 record may have been moved by an upgrade meanwhile.
                    None if !matches!(entry, IndexEntry::Keyed(_)) => match KeyId::parse(id) {
                        Some(key_id) => match self.record_by_id(workspace, &key_id).await? {
                            Some(record) => record,
                            None => continue,
                        },
                        None => continue,
                    },
                    // A create in progress or one that failed half way.
                    None => continue,
                };
                if record.id.as_str() != id
                    || record.workspace != workspace
                    || !query.matches(&record, now)
                {
                    continue;
                }
                if keys.len() == limit {
                    // One more match exists, so a next page is worth asking for.
                    let next_cursor = last_kept.map(|(ms, id)| cursor_at(ms, &id));
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
        let mut days: BTreeMap<(&str, &KeyId), BTreeMap<Date, u64>> = BTreeMap::new();
        for d in deltas {
            let entry = merged
                .entry((d.workspace.as_str(), &d.id))
                .or_insert((0, i64::MIN));
            entry.0 = entry.0.saturating_add(d.count);
            entry.1 = entry.1.max(unix_ms(d.last_used_at));
            let key_days = days.entry((d.workspace.as_str(), &d.id)).or_default();
            for &(day, n) in &d.days {
                let count = key_days.entry(day).or_insert(0);
                *count = count.saturating_add(n);
            }
        }
        let oldest = day_field(oldest_usage_day(OffsetDateTime::now_utc().date()));
        let days_expire = (u64::from(USAGE_DAYS_KEPT) + 1) * 86_400;
        let mut pending: Vec<_> = merged.into_iter().collect();
        let mut conn = self.conn.clone();
        // A second pass only for SHA-256 records an upgrade moved between the two round trips.
        for pass in 0..2 {
            if pending.is_empty() {
                return Ok(());
            }
            // Round trip 1: where each key's record is, one HMGET per workspace.
            let mut by_workspace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for (i, ((ws, _), _)) in pending.iter().enumerate() {
                by_workspace.entry(ws).or_default().push(i);
            }
            let mut pipe = redis::pipe();
            for (ws, items) in &by_workspace {
                pipe.cmd("HMGET").arg(self.workspace_keys(ws).keys);
                for &i in items {
                    pipe.arg(pending[i].0.1.as_str());
                }
            }
            let values: Vec<Vec<Option<String>>> = self.retried(&pipe).await?;
            // Round trip 2: the increments, skipping keys that are gone.
            let mut pipe = redis::pipe();
            let mut sent = Vec::new();
            for (items, values) in by_workspace.values().zip(&values) {
                for (&i, value) in items.iter().zip(values) {
                    let Some(entry) = value.as_deref().map(IndexEntry::parse).transpose()? else {
                        continue;
                    };
                    let ((ws, id), (count, ms)) = pending[i];
                    pipe.cmd("EVAL")
                        .arg(ADD_USAGE)
                        .arg(1)
                        .arg(self.record_key_of(&entry))
                        .arg(clamp_count(count))
                        .arg(ms);
                    sent.push((i, matches!(entry, IndexEntry::Keyed(_))));
                    // The per-day split lives on the workspace's slot, so it is its own script
                    // in the same round trip; the second pass only re-aims `uc` at a moved record.
                    if let Some(key_days) =
                        days.get(&(ws, id)).filter(|d| pass == 0 && !d.is_empty())
                    {
                        pipe.cmd("EVAL")
                            .arg(ADD_DAYS)
                            .arg(2)
                            .arg(self.workspace_keys(ws).keys)
                            .arg(self.days_key(ws, id))
                            .arg(id.as_str())
                            .arg(&oldest)
                            .arg(days_expire);
                        for (day, n) in key_days {
                            pipe.arg(day_field(*day)).arg(clamp_count(*n));
                        }
                        pipe.ignore();
                    }
                }
            }
            if pipe.is_empty() {
                return Ok(());
            }
            let applied: Vec<i64> = self.bounded(pipe.query_async(&mut conn)).await?;
            pending = sent
                .iter()
                .zip(&applied)
                .filter(|((_, keyed), applied)| !keyed && **applied == 0)
                .map(|((i, _), _)| pending[*i])
                .collect();
        }
        Ok(())
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
        let stop = i64::try_from(limit - 1).unwrap_or(i64::MAX);
        let raw: Vec<String> = self
            .retried(
                redis::cmd("LRANGE")
                    .arg(self.logs_key(workspace, id))
                    .arg(0)
                    .arg(stop),
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
        self.retried::<String>(&redis::cmd("PING")).await.map(drop)
    }

    async fn daily_usage(
        &self,
        workspace: &str,
        id: &KeyId,
        first: Date,
        last: Date,
    ) -> Result<Vec<(Date, u64)>, StoreError> {
        let stored: HashMap<String, u64> = self
            .retried(redis::cmd("HGETALL").arg(self.days_key(workspace, id)))
            .await?;
        let mut days = stored
            .into_iter()
            .map(|(field, n)| {
                Date::parse(&field, DAY_FIELD)
                    .map(|day| (day, n))
                    .map_err(|_| StoreError::Corrupt(format!("per-day usage of {id}: bad day")))
            })
            .filter(|d| {
                d.as_ref()
                    .map_or(true, |(day, _)| (first..=last).contains(day))
            })
            .collect::<Result<Vec<_>, _>>()?;
        days.sort_unstable();
        Ok(days)
    }

    async fn consume_quota(&self, spends: &[QuotaSpend]) -> Result<Vec<QuotaCount>, StoreError> {
        let expiry = |s: &QuotaSpend| s.expires_at.map(|t| t.to_string()).unwrap_or_default();
        let mut conn = self.conn.clone();
        let replies: Vec<(i64, i64)> = match spends {
            [] => return Ok(Vec::new()),
            // The request path: one spend, one EVALSHA.
            [s] => vec![
                self.bounded(
                    SCRIPTS
                        .consume_quota
                        .key(self.quota_key(&s.id, s.period_start))
                        .arg(s.n)
                        .arg(s.limit)
                        .arg(expiry(s))
                        .invoke_async(&mut conn),
                )
                .await?,
            ],
            // A batch of counts written at once: one pipeline, each entry its own script (the
            // counts are on different slots).
            _ => {
                let mut pipe = redis::pipe();
                for s in spends {
                    pipe.cmd("EVAL")
                        .arg(CONSUME_QUOTA)
                        .arg(1)
                        .arg(self.quota_key(&s.id, s.period_start))
                        .arg(s.n)
                        .arg(s.limit)
                        .arg(expiry(s));
                }
                self.bounded(pipe.query_async(&mut conn)).await?
            }
        };
        Ok(replies
            .into_iter()
            .map(|(used, spent)| QuotaCount {
                used: u64::try_from(used).unwrap_or(0),
                spent: spent == 1,
            })
            .collect())
    }

    async fn get_by_sha256(&self, digest: &SecretHash) -> Result<Option<KeyRecord>, StoreError> {
        let fields = self.fields(&self.sha256_key(&digest.to_hex())).await?;
        decode_record_hash(&fields)
    }

    /// The steps and what a crash after each leaves are in the module docs.
    async fn upgrade_hash(
        &self,
        workspace: &str,
        id: &KeyId,
        new_hash: &SecretHash,
    ) -> Result<KeyRecord, StoreError> {
        let new_hex = new_hash.to_hex();
        let new_key = self.record_key(&new_hex);
        let ws = self.workspace_keys(workspace);
        let mut conn = self.conn.clone();
        // Step 1: the index says where the key is going, so edits and deletes reach both.
        let begun: Vec<String> = self
            .bounded(
                SCRIPTS
                    .begin_upgrade
                    .key(&ws.keys)
                    .arg(id.as_str())
                    .arg(&new_hex)
                    .invoke_async(&mut conn),
            )
            .await?;
        let sha256 = match begun.as_slice() {
            [state, old] if state == "moving" => old.clone(),
            [state] if state == "done" => {
                return self.complete_upgrade(workspace, id, &new_hex).await;
            }
            [state] if state == "missing" => return Err(StoreError::NotFound),
            [state] if state == "conflict" => return Err(StoreError::Conflict),
            _ => return Err(StoreError::Corrupt("unexpected reply from redis".into())),
        };
        let moving = IndexEntry::Upgrading {
            sha256: sha256.clone(),
            keyed: new_hex.clone(),
        };

        // Step 2: the record is marked and read in one step, then copied under the new hash
        // with the usage counted so far.
        let flat: Vec<String> = self
            .bounded(
                SCRIPTS
                    .mark_upgrade
                    .key(self.sha256_key(&sha256))
                    .arg(id.as_str())
                    .arg(&new_hex)
                    .invoke_async(&mut conn),
            )
            .await?;
        let fields = pairs(flat);
        let Some(record) =
            decode_record_hash(&fields)?.filter(|r| r.id == *id && r.workspace == workspace)
        else {
            // Being deleted: `delete` removes the record before the index entry.
            return Err(StoreError::NotFound);
        };
        let copy = stored_json(&upgraded(record, &new_hex)?)?;
        let written: Vec<String> = self
            .bounded(
                SCRIPTS
                    .write_copy
                    .key(&new_key)
                    .arg(&copy)
                    .arg(fields.get("uc").map_or("0", String::as_str))
                    .arg(fields.get("lu").map_or("", String::as_str))
                    .arg(&sha256)
                    .invoke_async(&mut conn),
            )
            .await?;
        let copied = match written.as_slice() {
            [state, rec] if state == "ok" => rec.clone(),
            [state] if state == "taken" => {
                // A concurrent upgrade of this key may have finished first; otherwise another
                // key has this secret, and this one stays a SHA-256 import.
                let now = self.index_entry(workspace, id).await?;
                if now == Some(IndexEntry::Keyed(new_hex.clone())) {
                    return self.complete_upgrade(workspace, id, &new_hex).await;
                }
                self.bounded(
                    SCRIPTS
                        .swap_index
                        .key(&ws.keys)
                        .arg(id.as_str())
                        .arg(moving.value())
                        .arg(IndexEntry::Sha256(sha256.clone()).value())
                        .invoke_async::<i64>(&mut conn),
                )
                .await?;
                self.unmark(&sha256, &new_hex).await?;
                return Err(StoreError::Conflict);
            }
            _ => return Err(StoreError::Corrupt("unexpected reply from redis".into())),
        };

        // Step 3: the copy becomes the record.
        let repointed: i64 = self
            .bounded(
                SCRIPTS
                    .swap_index
                    .key(&ws.keys)
                    .arg(id.as_str())
                    .arg(moving.value())
                    .arg(&new_hex)
                    .invoke_async(&mut conn),
            )
            .await?;
        if repointed == 0 {
            // Deleted meanwhile: the copy must not outlive the key.
            self.bounded(
                SCRIPTS
                    .take_if_key
                    .key(&new_key)
                    .arg(id.as_str())
                    .invoke_async::<redis::Value>(&mut conn),
            )
            .await?;
            return Err(StoreError::NotFound);
        }

        // Step 4: the SHA-256 record goes, and what it gained since step 2 comes along.
        self.carry_over(id, &sha256, &new_key, &copied, &new_hex)
            .await?;
        self.upgraded_record(workspace, id, &new_key).await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let json = serde_json::to_string(entry)
            .map_err(|_| StoreError::Corrupt("audit entry cannot be encoded".into()))?;
        let ms = unix_ms(entry.time);
        let mut pipe = redis::pipe();
        let logs = std::iter::once(None).chain(entry.workspace.as_deref().map(Some));
        for ws in logs {
            let (log, entries) = self.audit_keys(ws);
            pipe.cmd("EVAL")
                .arg(APPEND_AUDIT)
                .arg(2)
                .arg(log)
                .arg(entries)
                .arg(&entry.id)
                .arg(ms)
                .arg(&json)
                .arg(self.audit_max)
                .ignore();
        }
        // The same entry appended twice is kept once, so a lost connection is retried.
        self.retried(&pipe).await
    }

    async fn list_audit(
        &self,
        workspace: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<AuditPage, StoreError> {
        let (score, after) = match cursor {
            Some(cursor) => {
                let (ms, id) = parse_cursor(cursor)?;
                (ms.to_string(), id)
            }
            None => (String::new(), ""),
        };
        let limit = limit.clamp(1, AUDIT_MAX_ENTRIES);
        let (log, entries) = self.audit_keys(workspace);
        // One more than asked: if it exists, a next page is worth asking for.
        let flat: Vec<Option<String>> = self
            .retried(
                SCRIPTS
                    .page
                    .key(&log)
                    .key(&entries)
                    .arg(score)
                    .arg(after)
                    .arg(limit + 1),
            )
            .await?;
        let page = parse_triples(&flat)?;
        let next_cursor = (page.len() > limit)
            .then(|| page.get(limit - 1).map(|(ms, id, _)| cursor_at(*ms, id)))
            .flatten();
        let entries = page
            .iter()
            .take(limit)
            // An id without its entry cannot be written by APPEND_AUDIT; skip rather than fail.
            .filter_map(|(_, _, json)| json.as_deref())
            .map(decode_audit)
            .collect::<Result<_, _>>()?;
        Ok(AuditPage {
            entries,
            next_cursor,
        })
    }

    async fn get_workspace(&self, name: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        self.workspace(name).await
    }

    async fn list_workspaces(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WorkspaceRecord>, StoreError> {
        self.workspaces_after(after, limit).await
    }

    async fn put_workspace(
        &self,
        record: &WorkspaceRecord,
        expected_updated_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        self.store_workspace(record, expected_updated_at).await
    }

    async fn delete_workspace(&self, name: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        self.remove_workspace(name).await
    }

    async fn count_active(&self, workspace: &str, now: OffsetDateTime) -> Result<u32, StoreError> {
        // What CREATE_INDEX counts after pruning scores up to now.
        let live: u64 = self
            .retried(
                redis::cmd("ZCOUNT")
                    .arg(self.workspace_keys(workspace).active)
                    .arg(format!("({}", unix_ms(now)))
                    .arg("+inf"),
            )
            .await?;
        Ok(u32::try_from(live).unwrap_or(u32::MAX))
    }
}

impl RedisStore {
    /// `UPDATE_RECORD` on the record `entry` names. A SHA-256 record that an upgrade has marked
    /// is written after its copy (`CAS_COPY`, the key from the mark on), so that no revoke can
    /// land on the record while a copy answering by the new hash misses it: the copy is written
    /// first, or written later from a read that sees the revoke. Returns `UPDATE_RECORD`'s
    /// reply, or `stale` / `revoked` / `corrupt` from the copy.
    async fn write_record(
        &self,
        entry: &IndexEntry,
        record: &KeyRecord,
        json: &str,
        expected_updated_at: OffsetDateTime,
    ) -> Result<String, StoreError> {
        let mut conn = self.conn.clone();
        let revoked_flag = if record.revoked_at.is_none() {
            "0"
        } else {
            "1"
        };
        let key = self.record_key_of(entry);
        let mut copied_to = String::new();
        for _ in 0..FOLLOW_ATTEMPTS {
            // Conditional, so it may be sent twice: if the first one landed, the second finds
            // the record `stale`, and the caller reads again (and finds its change made).
            let outcome: String = self
                .retried(
                    SCRIPTS
                        .update_record
                        .key(&key)
                        .arg(json)
                        .arg(unix_ms(expected_updated_at))
                        .arg(revoked_flag)
                        .arg(&copied_to)
                        .arg(unix_ms(record.updated_at)),
                )
                .await?;
            let Some(to) = outcome.strip_prefix("moving:") else {
                return Ok(outcome);
            };
            let sha256 = record.hash.to_hex();
            let copy = stored_json(&upgraded(record.clone(), to)?)?;
            let written: String = self
                .bounded(
                    SCRIPTS
                        .cas_copy
                        .key(self.record_key(to))
                        .arg(copy)
                        .arg(&sha256)
                        .arg(unix_ms(expected_updated_at))
                        .arg(revoked_flag)
                        .arg(record.id.as_str())
                        .invoke_async(&mut conn),
                )
                .await?;
            match written.as_str() {
                "ok" => copied_to = to.to_owned(),
                // The upgrade has not written its copy yet: write it for it (the record cannot
                // change until a copy exists, so any read of it now is current), then retry.
                "absent" => {
                    let fields = self.fields(&key).await?;
                    if let Some(current) = decode_record_hash(&fields)?
                        .filter(|r| r.id == record.id && r.workspace == record.workspace)
                    {
                        let copy = stored_json(&upgraded(current, to)?)?;
                        self.bounded(
                            SCRIPTS
                                .write_copy
                                .key(self.record_key(to))
                                .arg(copy)
                                .arg(fields.get("uc").map_or("0", String::as_str))
                                .arg(fields.get("lu").map_or("", String::as_str))
                                .arg(&sha256)
                                .invoke_async::<redis::Value>(&mut conn),
                        )
                        .await?;
                    }
                }
                // Another key has the new hash: this upgrade cannot finish; unmark and retry.
                "foreign" => self.unmark(&sha256, to).await?,
                // The upgrade finished: the caller's SHA-256 record is stale.
                "moved" => return Ok("stale".into()),
                other => return Ok(other.to_owned()),
            }
        }
        Err(StoreError::Unavailable(format!(
            "key {} kept moving while it was being written",
            record.id
        )))
    }

    /// The key as its copy under `keyed` holds it, if an upgrade from `sha256` marked the record
    /// (`old` its fields) and an edit or the upgrade wrote the copy since: from the mark on the
    /// copy is the key, and the record may lag it by an edit cut short. Read as the SHA-256
    /// import it still is (its index entry says so), with the usage counted on the record.
    async fn marked_copy(
        &self,
        sha256: &str,
        keyed: &str,
        old: &HashMap<String, String>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        if old.get("to").map(String::as_str) != Some(keyed) {
            return Ok(None);
        }
        let copy = self.fields(&self.record_key(keyed)).await?;
        if copy.get("from").map(String::as_str) != Some(sha256) || !copy.contains_key("m") {
            return Ok(None);
        }
        let Some(mut record) = decode_record_hash(&copy)? else {
            return Ok(None);
        };
        let Some(current) = decode_record_hash(old)? else {
            return Ok(None);
        };
        record.hash = current.hash;
        record.hash_scheme = current.hash_scheme;
        record.usage_count = current.usage_count;
        record.last_used_at = current.last_used_at;
        Ok(Some(record))
    }

    /// Undoes `MARK_UPGRADE` of the SHA-256 record `sha256` towards `new_hex`.
    async fn unmark(&self, sha256: &str, new_hex: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(
            SCRIPTS
                .unmark_upgrade
                .key(self.sha256_key(sha256))
                .arg(new_hex)
                .invoke_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }

    /// An upgrade whose index entry points at the new hash already: finishes step 4 if that was
    /// cut short, and returns the record.
    async fn complete_upgrade(
        &self,
        ws: &str,
        id: &KeyId,
        new_hex: &str,
    ) -> Result<KeyRecord, StoreError> {
        let new_key = self.record_key(new_hex);
        let fields = self.fields(&new_key).await?;
        if let (Some(sha256), Some(rec)) = (fields.get("from"), fields.get("rec")) {
            self.carry_over(id, sha256, &new_key, rec, new_hex).await?;
        }
        self.upgraded_record(ws, id, &new_key).await
    }

    /// Step 4 of an upgrade: takes the SHA-256 record (only one caller gets it) and carries what
    /// it held last into the new record, whose `rec` was `copied` after step 2.
    async fn carry_over(
        &self,
        id: &KeyId,
        sha256: &str,
        new_key: &str,
        copied: &str,
        new_hex: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let flat: Vec<String> = self
            .bounded(
                SCRIPTS
                    .take_if_key
                    .key(self.sha256_key(sha256))
                    .arg(id.as_str())
                    .invoke_async(&mut conn),
            )
            .await?;
        if flat.is_empty() {
            // Another caller took it and carries it over.
            return Ok(());
        }
        let fields: HashMap<String, String> = flat
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect();
        let last = match decode_record_hash(&fields)? {
            Some(record) => stored_json(&upgraded(record, new_hex)?)?,
            None => String::new(),
        };
        self.bounded(
            SCRIPTS
                .finish_upgrade
                .key(new_key)
                .arg(copied)
                .arg(last)
                .arg(fields.get("uc").map_or("0", String::as_str))
                .arg(fields.get("lu").map_or("", String::as_str))
                .arg(sha256)
                .invoke_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }

    /// The record under the new hash after an upgrade; `NotFound` if the key was deleted.
    async fn upgraded_record(
        &self,
        ws: &str,
        id: &KeyId,
        new_key: &str,
    ) -> Result<KeyRecord, StoreError> {
        decode_record_hash(&self.fields(new_key).await?)?
            .filter(|r| r.id == *id && r.workspace == ws)
            .ok_or(StoreError::NotFound)
    }
}

/// `(created ms, id, index entry)` triples of a [`ZSET_PAGE`] reply.
fn parse_page(
    flat: &[Option<String>],
) -> Result<Vec<(i64, String, Option<IndexEntry>)>, StoreError> {
    parse_triples(flat)?
        .into_iter()
        .map(|(ms, id, value)| {
            let entry = value.as_deref().map(IndexEntry::parse).transpose()?;
            Ok((ms, id, entry))
        })
        .collect()
}

/// `[member, score, value | nil]` triples of a paging script.
fn parse_triples(
    flat: &[Option<String>],
) -> Result<Vec<(i64, String, Option<String>)>, StoreError> {
    let bad = || StoreError::Corrupt("unexpected listing reply from redis".into());
    flat.chunks(3)
        .map(|triple| match triple {
            [Some(id), Some(score), value] => {
                // Scores are whole milliseconds, well inside f64's exact range.
                let ms = score.parse::<f64>().map_err(|_| bad())? as i64;
                Ok((ms, id.clone(), value.clone()))
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

/// A flat `HGETALL` reply as a map.
fn pairs(flat: Vec<String>) -> HashMap<String, String> {
    let mut out = HashMap::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        out.insert(k, v);
    }
    out
}

/// The value of a `P{t:…}` claim held by `record`.
fn tag_holder(record: &KeyRecord) -> String {
    format!("{} {}", record.id, record.workspace)
}

/// A SHA-256 import's record as it reads once upgraded to the keyed hash `new_hex`.
fn upgraded(mut record: KeyRecord, new_hex: &str) -> Result<KeyRecord, StoreError> {
    record.hash = SecretHash::from_hex(new_hex)
        .ok_or_else(|| StoreError::Corrupt("unreadable hash in a workspace key index".into()))?;
    record.hash_scheme = HashScheme::KeyedBlake3;
    Ok(record)
}

fn decode_audit(json: &str) -> Result<AuditEntry, StoreError> {
    // Only the position: serde's message could quote a stored value.
    serde_json::from_str(json).map_err(|e| {
        StoreError::Corrupt(format!("undecodable audit entry (column {})", e.column()))
    })
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
/// A field of `P{ws:…}:days:<id>`: the UTC day as `YYYY-MM-DD`.
const DAY_FIELD: &[BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

fn day_field(day: Date) -> String {
    day.format(DAY_FIELD).expect("a date formats as YYYY-MM-DD")
}

fn clamp_count(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// A Redis call through `breaker` (failing at once while it is open), bounded by `timeout`,
/// its error mapped by [`redis_err`]. Sent once (the limiter's calls share it with the store's
/// writes that must not run twice).
pub(crate) async fn bounded<T>(
    breaker: &Breaker,
    timeout: Duration,
    call: impl Future<Output = RedisResult<T>>,
) -> Result<T, StoreError> {
    let permit = breaker.admit()?;
    let result = tokio::time::timeout(timeout, call).await;
    permit.record(outcome(&result));
    settle(result, timeout)
}

/// What a bounded call's result says about Redis, for the [`Breaker`].
fn outcome<T>(result: &Result<RedisResult<T>, tokio::time::error::Elapsed>) -> Outcome {
    match result {
        Ok(Ok(_)) => Outcome::Answered,
        // No answer in time.
        Err(_) => Outcome::Failed,
        // An error reply: Redis is there.
        Ok(Err(e)) if !e.is_io_error() => Outcome::Answered,
        // The connection went under the call; the manager is making a new one, and whether
        // Redis is there shows on the next call.
        Ok(Err(e)) if e.is_connection_dropped() && !e.is_connection_refusal() => {
            Outcome::Inconclusive
        }
        Ok(Err(_)) => Outcome::Failed,
    }
}

/// A bounded call's result as the store returns it.
fn settle<T>(
    result: Result<RedisResult<T>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> Result<T, StoreError> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(redis_err(&e)),
        Err(_) => Err(StoreError::Unavailable(format!(
            "redis did not answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// A request [`RedisStore::retried`] can send again, on the connection that replaced a lost one.
trait Resend: Sync {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut ConnectionManager,
    ) -> impl Future<Output = RedisResult<T>> + Send;
}

impl Resend for redis::Cmd {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut ConnectionManager,
    ) -> impl Future<Output = RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

impl Resend for redis::Pipeline {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut ConnectionManager,
    ) -> impl Future<Output = RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

impl Resend for ScriptInvocation<'_> {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut ConnectionManager,
    ) -> impl Future<Output = RedisResult<T>> + Send {
        self.invoke_async(conn)
    }
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
