//! The Redis key index, shared by many gateway instances. Owns the key layout below, the
//! connection, and the bounds of every round trip; each part of the layout is written and read
//! by one submodule:
//!
//! - [`keys`]: key records and the claims of imported secrets (create, get, update, delete);
//! - [`index`]: each workspace's key index (listing, counting active keys);
//! - [`upgrade`]: the upgrade of a SHA-256 import to the keyed hash;
//! - [`usage`]: usage counts, per-day usage, request logs and quota counts;
//! - [`audit`]: the audit logs;
//! - [`workspaces`]: stored workspaces;
//! - [`channel`]: the invalidation channel;
//! - [`scripts`]: the Lua scripts, one per atomic step.
//!
//! The one `impl KeyStore for RedisStore` is here; each method hands over to its submodule.
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
//! | `P{ws:<workspace>}:logs:<id>` | LIST | `RequestLogEntry` JSON, newest first, trimmed to `max_per_key`; a usage flush appends every key's entries in the round trip that adds the counts |
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
//! A key imported with only the SHA-256 digest of its secret moves from `P{s:…}` to `P{h:…}` on
//! its first use, in steps that keep it working, listed and editable whatever step a crash stops
//! at; the steps, and what a crash after each leaves, are in [`upgrade`].
//!
//! # Connection
//!
//! [`RedisStore::connect`] does not wait for Redis: the [`ConnectionManager`] (or, on a
//! cluster, the cluster client of [`conn`]) connects on first use and starts a new connection at
//! once when a call finds the connection lost, so the gateway starts while Redis is down and
//! answers `store_unavailable` per request until it is back.
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
//! quota increments, request-log appends, and the steps of an upgrade ([`upgrade`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::{ErrorKind, FromRedisValue, RedisError, RedisResult, ScriptInvocation};
use std::sync::atomic::{AtomicUsize, Ordering};
use time::{Date, OffsetDateTime};

mod audit;
mod channel;
mod conn;
mod fleet;
mod index;
mod keys;
mod outbox;
mod scripts;
mod upgrade;
mod usage;
mod workspaces;

pub use channel::{InvalidationFeed, InvalidationMessage};
pub use conn::RedisConn;

use index::IndexEntry;

use super::breaker::{Breaker, Outcome};
use super::invalidation::InvalidationStats;
use super::{
    AUDIT_MAX_ENTRIES, Admission, AuditEntry, AuditPage, KeyLogs, KeyPage, KeyStore, ListQuery,
    QuotaCount, QuotaSpend, RequestLogEntry, StoreError, UsageDelta, UsageWriteError,
};
use crate::config::RedisConfig;
use crate::keys::{HashScheme, KeyId, KeyRecord, SecretHash};
use crate::workspaces::WorkspaceRecord;

/// Shortest time one connection attempt gets, even with a smaller per-call timeout: the caller
/// gives up after its own timeout anyway, and a too-short connect timeout would never succeed
/// on a slow network.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Connection attempts the manager makes after the first one fails: none. Its own backoff
/// would have calls wait on a sleeping reconnect (paying the whole timeout) and find Redis back
/// late; instead a failed call makes the next one start a new attempt, paced by the [`Breaker`].
const RECONNECT_RETRIES: usize = 0;
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

/// The Redis-backed store. Cheap to share: the connection manager multiplexes one connection
/// (on a cluster, one per node).
pub struct RedisStore {
    conn: RedisConn,
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
    /// no other commands): the server, or every seed node of a cluster, tried in turn.
    nodes: Vec<redis::Client>,
    /// Which of `nodes` the next subscription tries: each attempt moves on, so a subscription
    /// lost with its node is made again on another one.
    next_node: AtomicUsize,
    stats: InvalidationStats,
    /// This instance among those sharing the store ([`super::fleet`]).
    fleet: super::fleet::Fleet,
}

impl RedisStore {
    /// Prepares the store without waiting for Redis (see the module docs): only a bad URL fails
    /// here. `store.redis.cluster` makes it a cluster store, `store.redis.url` a standalone one.
    pub async fn connect(config: &RedisConfig) -> Result<RedisStore, StoreError> {
        let connect_timeout = config.timeout.max(MIN_CONNECT_TIMEOUT);
        let (conn, nodes) = if config.cluster.is_empty() {
            let url = config
                .url
                .as_deref()
                .ok_or_else(|| StoreError::Unavailable("store.redis.url is not set".into()))?;
            // The URL may carry a password: it stays out of the message.
            let client = redis::Client::open(url).map_err(|_| {
                StoreError::Unavailable("store.redis.url is not a valid Redis URL".into())
            })?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                // Each call is bounded by `timeout` here; a response timeout in the client
                // would only add reconnects on a slow reply.
                .set_response_timeout(None)
                .set_number_of_retries(RECONNECT_RETRIES);
            let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
                .map_err(|e| redis_err(&e))?;
            (RedisConn::Server(manager), vec![client])
        } else {
            let home = format!("{}{INVALIDATION_CHANNEL}", config.key_prefix);
            RedisConn::cluster(&config.cluster, connect_timeout, &home).map_err(|_| {
                StoreError::Unavailable(
                    "store.redis.cluster holds a URL that is not a valid Redis URL".into(),
                )
            })?
        };
        Ok(RedisStore {
            conn,
            breaker: Arc::new(Breaker::new()),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            audit_max: AUDIT_MAX_ENTRIES,
            channel: Box::new(Channel {
                name: format!("{}{INVALIDATION_CHANNEL}", config.key_prefix),
                nodes,
                next_node: AtomicUsize::new(0),
                stats: InvalidationStats::default(),
                fleet: super::fleet::Fleet::new(),
            }),
        })
    }

    /// Whether this store is on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, RedisConn::Cluster(..))
    }

    /// Keeps at most `max` entries per audit log instead of [`AUDIT_MAX_ENTRIES`] (at least 1),
    /// so that tests can fill a log.
    pub fn with_audit_max_entries(mut self, max: usize) -> Self {
        self.audit_max = max.max(1);
        self
    }

    /// The multiplexed connection (a cheap clone), for the global rate limiter, which keeps its
    /// own keys on the same server (`limits::redis`).
    pub fn connection(&self) -> RedisConn {
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
}

impl KeyStore for RedisStore {
    async fn create(
        &self,
        record: &KeyRecord,
        admission: impl Into<Admission> + Send,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.create_key(record, admission.into(), now).await
    }

    async fn get_by_hash(&self, hash: &SecretHash) -> Result<Option<KeyRecord>, StoreError> {
        self.key_by_hash(hash).await
    }

    async fn get(&self, workspace: &str, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.record_by_id(workspace, id).await
    }

    async fn update(
        &self,
        record: &KeyRecord,
        expected_updated_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.update_key(record, expected_updated_at).await
    }

    async fn delete(&self, workspace: &str, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.delete_key(workspace, id).await
    }

    async fn list(
        &self,
        workspace: &str,
        query: &ListQuery,
        now: OffsetDateTime,
    ) -> Result<KeyPage, StoreError> {
        self.list_keys(workspace, query, now).await
    }

    async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        self.count_usage(deltas).await
    }

    async fn write_usage(
        &self,
        deltas: &[UsageDelta],
        logs: &[KeyLogs<'_>],
        max_per_key: usize,
    ) -> Result<(), UsageWriteError> {
        self.count_usage(deltas).await?;
        self.push_logs(logs, max_per_key)
            .await
            .map_err(|error| UsageWriteError {
                counts_written: !deltas.is_empty(),
                error,
            })
    }

    async fn append_request_logs(
        &self,
        workspace: &str,
        id: &KeyId,
        entries: &[RequestLogEntry],
        max_per_key: usize,
    ) -> Result<(), StoreError> {
        let logs = KeyLogs {
            workspace,
            id,
            entries,
        };
        self.push_logs(&[logs], max_per_key).await
    }

    async fn request_logs(
        &self,
        workspace: &str,
        id: &KeyId,
        limit: usize,
    ) -> Result<Vec<RequestLogEntry>, StoreError> {
        self.read_request_logs(workspace, id, limit).await
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
        self.usage_by_day(workspace, id, first, last).await
    }

    async fn consume_quota(&self, spends: &[QuotaSpend]) -> Result<Vec<QuotaCount>, StoreError> {
        self.spend_quota(spends).await
    }

    async fn get_by_sha256(&self, digest: &SecretHash) -> Result<Option<KeyRecord>, StoreError> {
        self.key_by_sha256(digest).await
    }

    async fn upgrade_hash(
        &self,
        workspace: &str,
        id: &KeyId,
        new_hash: &SecretHash,
    ) -> Result<KeyRecord, StoreError> {
        self.upgrade_key(workspace, id, new_hash).await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.push_audit(entry).await
    }

    async fn list_audit(
        &self,
        workspace: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<AuditPage, StoreError> {
        self.audit_page(workspace, limit, cursor).await
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
        self.active_keys(workspace, now).await
    }
}

/// `[member, score, value | nil]` triples of a paging script (`SCRIPTS.page`: key listing and
/// audit logs).
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
        conn: &mut RedisConn,
    ) -> impl Future<Output = RedisResult<T>> + Send;
}

impl Resend for redis::Cmd {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut RedisConn,
    ) -> impl Future<Output = RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

impl Resend for redis::Pipeline {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut RedisConn,
    ) -> impl Future<Output = RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

impl Resend for ScriptInvocation<'_> {
    fn send<T: FromRedisValue + Send>(
        &self,
        conn: &mut RedisConn,
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
