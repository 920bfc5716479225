//! The key index: the [`KeyStore`] interface, its two backends (`embedded` redb file, `redis`),
//! and the hot cache in front of them. The request path only ever reaches a store through
//! [`cache::KeyCache`], which holds keys in the compact form of [`cached`]; [`invalidation`] keeps the caches of instances sharing a store in step,
//! and [`fleet`] knows which instances share it; [`breaker`] makes a Redis outage fail calls at
//! once instead of after the timeout; [`stats`] holds the latency and error counts of store
//! calls, which the Prometheus registry exports.

pub mod breaker;
pub mod cache;
pub mod cached;
pub mod embedded;
pub mod fleet;
pub mod invalidation;
pub mod outbox;
pub mod redis;
pub mod stats;

use std::future::Future;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use crate::keys::{KeyId, KeyRecord, KeyStatus, SecretHash};
use crate::workspaces::WorkspaceRecord;

/// What a new key is admitted against, checked by [`KeyStore::create`] in the same atomic step
/// as the insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Nothing: any number of active keys (a rotation's successor; tests).
    Open,
    /// At most this many active keys in the workspace (a config workspace's plan).
    Limit(u32),
    /// The plan of the stored workspace, read in the same step: [`StoreError::NoWorkspace`]
    /// without one, [`StoreError::NoApiAccess`] when its plan has no API access, and its
    /// `max_active_keys`. So a plan change is in force for the next create, on every instance.
    Stored,
}

impl From<Option<u32>> for Admission {
    fn from(max: Option<u32>) -> Self {
        max.map_or(Admission::Open, Admission::Limit)
    }
}

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached in time (timeout, connection refused, I/O error). The
    /// detail is for logs only; it never contains a secret.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// `create` would exceed the workspace's `max_active_keys`.
    #[error("workspace has reached its active key limit")]
    LimitReached,
    /// `create` with [`Admission::Stored`]: the workspace is not stored (or was deleted).
    #[error("no such workspace")]
    NoWorkspace,
    /// `create` with [`Admission::Stored`]: the workspace's plan has no API access.
    #[error("the workspace's plan has no API access")]
    NoApiAccess,
    /// `delete_workspace`: the workspace still holds this many keys (revoked ones included).
    #[error("the workspace still holds {0} keys")]
    WorkspaceNotEmpty(u64),
    /// The key does not exist (update of a deleted key).
    #[error("key not found")]
    NotFound,
    /// A key with this id or secret hash exists already (`create`, `upgrade_hash`), or the
    /// record changed since the caller read it (`update`).
    #[error("a key with this id or secret already exists, or the key changed meanwhile")]
    Conflict,
    /// Stored data could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A malformed pagination cursor (not one a listing handed out, or truncated). A bad
    /// request, not a missing key.
    #[error("invalid pagination cursor")]
    InvalidCursor,
}

/// Entries each audit log keeps (the global one and every workspace's): appending to a full log
/// drops its oldest entry.
pub const AUDIT_MAX_ENTRIES: usize = 100_000;

/// UTC days of per-day usage each key keeps, today included: [`KeyStore::add_usage`] drops older
/// days (and skips a delta's days that are older already), so `…/usage?days=90` is the most
/// there is.
pub const USAGE_DAYS_KEPT: u32 = 90;

/// The oldest UTC day kept at `today`: `today` − ([`USAGE_DAYS_KEPT`] − 1).
pub fn oldest_usage_day(today: Date) -> Date {
    today - time::Duration::days(i64::from(USAGE_DAYS_KEPT) - 1)
}

/// One entry of the audit log: who did what to which key, when. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unique, sortable id (`aud_` + 13-digit ms timestamp + `_` + 8 random base62 chars),
    /// assigned by the caller. Appending the same entry again (a retry) keeps one copy.
    pub id: String,
    /// When it happened. Logs are ordered by this time (to the millisecond), then by `id`.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Who: `token:<name>` or `key:<key id>`.
    pub actor: String,
    /// What: `key.create`, `key.update`, `key.rotate`, `key.revoke`, `key.delete`,
    /// `key.import`, `admin.refused`.
    pub action: String,
    /// The workspace acted on, if any; the entry then also appears in that workspace's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// The key acted on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyId>,
    /// `ok`, or the error code of a refused call.
    pub outcome: String,
    /// What changed (field names and non-secret values), or why it was refused.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
    /// Address of the caller, as the admin listener saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
}

/// A page of the audit log, newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditPage {
    /// The entries of this page, newest first.
    pub entries: Vec<AuditEntry>,
    /// Cursor of the next (older) page, if there is one.
    pub next_cursor: Option<String>,
}

/// Filters and page position for [`KeyStore::list`].
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only keys with this status (derived at `now`).
    pub status: Option<KeyStatus>,
    /// Only keys with this owner.
    pub owner: Option<String>,
    /// At most this many keys (callers clamp it; 0 is treated as 1).
    pub limit: usize,
    /// Opaque position returned as `next_cursor` by the previous page.
    pub cursor: Option<String>,
}

impl ListQuery {
    /// Whether `record` passes the status and owner filters at `now`.
    pub fn matches(&self, record: &KeyRecord, now: OffsetDateTime) -> bool {
        self.status.is_none_or(|s| record.status_at(now) == s)
            && self
                .owner
                .as_deref()
                .is_none_or(|o| record.owner.as_deref() == Some(o))
    }
}

/// The record as both stores keep it: JSON with the usage fields zeroed, since those live
/// beside it and change without rewriting it.
fn stored_json(record: &KeyRecord) -> Result<String, StoreError> {
    let mut stored = record.clone();
    stored.usage_count = 0;
    stored.last_used_at = None;
    serde_json::to_string(&stored)
        .map_err(|_| StoreError::Corrupt(format!("record of {} cannot be encoded", record.id)))
}

/// Request-log entries as stored (JSON), by both backends.
fn encoded_log_entries(entries: &[RequestLogEntry]) -> Result<Vec<String>, StoreError> {
    entries
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()
        .map_err(|_| StoreError::Corrupt("request log entry cannot be encoded".into()))
}

/// A usage flush that failed ([`KeyStore::write_usage`]), saying whether its counts were
/// written before the failure: then only the request logs are left to retry, and retrying the
/// counts would add them twice.
#[derive(Debug)]
pub struct UsageWriteError {
    /// The counts (and per-day counts) are stored; only request logs failed.
    pub counts_written: bool,
    /// Why the flush failed.
    pub error: StoreError,
}

impl From<StoreError> for UsageWriteError {
    fn from(error: StoreError) -> Self {
        UsageWriteError {
            counts_written: false,
            error,
        }
    }
}

/// A time as whole milliseconds since the Unix epoch, the precision both stores keep.
fn unix_ms(t: OffsetDateTime) -> i64 {
    // i64 milliseconds cover ±292 million years; `OffsetDateTime` covers ±9999 years.
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000))
        .expect("an OffsetDateTime in milliseconds fits in i64")
}

/// The inverse of [`unix_ms`]; `None` outside `OffsetDateTime`'s range.
fn from_unix_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// One page of [`KeyStore::list`], newest first.
#[derive(Clone, Debug, Default)]
pub struct KeyPage {
    /// The keys of this page.
    pub keys: Vec<KeyRecord>,
    /// Cursor of the next page, if there is one.
    pub next_cursor: Option<String>,
}

/// Usage gathered in memory by the gateway, added to a key by [`KeyStore::add_usage`].
#[derive(Clone, Debug, PartialEq)]
pub struct UsageDelta {
    /// Workspace of the key.
    pub workspace: String,
    /// The key.
    pub id: KeyId,
    /// Requests to add to `usage_count`.
    pub count: u64,
    /// Latest use; the stored `last_used_at` only moves forward.
    pub last_used_at: OffsetDateTime,
    /// `count` split by the UTC day of each use, each day once; the counts add up to `count`.
    pub days: Vec<(Date, u64)>,
}

/// One key's new request-log entries in a usage flush ([`KeyStore::write_usage`]).
#[derive(Clone, Copy, Debug)]
pub struct KeyLogs<'a> {
    /// Workspace of the key.
    pub workspace: &'a str,
    /// The key.
    pub id: &'a KeyId,
    /// The entries, oldest first.
    pub entries: &'a [RequestLogEntry],
}

/// One entry of a key's request log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestLogEntry {
    /// When the request arrived.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// HTTP method.
    pub method: String,
    /// Request path (without the query string, which may carry data the owner did not mean to log).
    pub path: String,
    /// Response status sent to the client.
    pub status: u16,
    /// Client IP as the gateway determined it.
    pub client_ip: IpAddr,
    /// Time from request to response head, in milliseconds.
    pub latency_ms: f64,
    /// For a request refused after the key was recognised, the error code it was refused with
    /// (`key_revoked`, `ip_not_allowed`, `rate_limited`, …); absent for forwarded requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// Quota units to spend for one key in one period, by [`KeyStore::consume_quota`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaSpend {
    /// The key.
    pub id: KeyId,
    /// Start of the period, unix seconds (0 for a quota that never refills). Each period has
    /// its own count.
    pub period_start: i64,
    /// When the count may be forgotten, unix seconds (some time after the period ends);
    /// `None`: never.
    pub expires_at: Option<i64>,
    /// Units to add; 0 only reads the count.
    pub n: u64,
    /// The units are added only if the count stays at or below this; `u64::MAX` adds them
    /// whatever the count (units already served while the count could not be asked).
    pub limit: u64,
}

/// A quota count after [`KeyStore::consume_quota`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaCount {
    /// Units spent in the period, including this call's if they were added.
    pub used: u64,
    /// Whether `n` was added (count + n ≤ limit); for `n = 0`, whether count ≤ limit.
    pub spent: bool,
}

/// The key index. Implemented by [`embedded::EmbeddedStore`] and [`redis::RedisStore`]; both are
/// checked by one conformance suite (`tests/store_conformance.rs`), run through [`Store`].
///
/// Every call is bounded in time: a backend that cannot answer within its configured timeout
/// returns [`StoreError::Unavailable`].
///
/// A key's record is indexed by the hash of its secret in one of two namespaces, chosen by
/// [`KeyRecord::hash_scheme`]: keyed BLAKE3 ([`KeyStore::get_by_hash`], every key keygate issues)
/// or plain SHA-256 ([`KeyStore::get_by_sha256`], keys imported with only that digest, until
/// [`KeyStore::upgrade_hash`] moves them over). Everything addressed by workspace and id
/// (`get`, `update`, `delete`, `list`, `add_usage`, request logs) works the same in both.
///
/// A key is *active* at `now` when it is not revoked and has no `expires_at` at or before `now`
/// (as [`KeyRecord::status_at`]); that is what `max_active` and [`KeyStore::count_active`] count,
/// whatever the hash scheme.
///
/// The control-plane methods (`get_by_sha256` … `count_active`) have default bodies that fail
/// with [`StoreError::Unavailable`], so that test doubles wrapping a store for the request path
/// need not forward them; both backends and [`Store`] implement them all.
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new key, indexed by `record.hash` in the namespace of `record.hash_scheme`. With
    /// `max_active`, refuses with [`StoreError::LimitReached`] when the workspace already has
    /// that many active keys; the check and the insert are one atomic step, exact under
    /// concurrent creates. A key born revoked or expired takes no slot and is stored whatever
    /// the count. [`StoreError::Conflict`] if the id, or the hash within its namespace, is taken,
    /// or if `record.sha256_tag` is held by another key (checked in the same atomic step as the
    /// insert, so of concurrent imports of one secret, in either form, one wins). The tag is
    /// held until [`KeyStore::delete`], whatever [`KeyStore::upgrade_hash`] does meanwhile.
    ///
    /// What the key is admitted against is an [`Admission`] (`Option<u32>` converts: `None` is
    /// [`Admission::Open`]); `max_active` above is its limit.
    fn create(
        &self,
        record: &KeyRecord,
        admission: impl Into<Admission> + Send,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The key whose secret has this keyed BLAKE3 hash, with its usage fields. Never a SHA-256
    /// import that has not been upgraded. The request path's one store call: a single round trip.
    fn get_by_hash(
        &self,
        hash: &SecretHash,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// A key by id within a workspace (a key of another workspace is `None`), in either scheme.
    fn get(
        &self,
        workspace: &str,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// Replaces a key's record (same id and workspace), only if the stored record is still the
    /// version the caller read: its `updated_at` equals `expected_updated_at` to the millisecond
    /// (what both stores keep). The comparison and the write are one atomic step (one redb write
    /// transaction; one Lua script on Redis), so of two writers that read the same version only
    /// the first wins and the other must read again: no edit is lost, and an edit that read the
    /// key before a revoke cannot write it back unrevoked. The caller gives `record` an
    /// `updated_at` later than `expected_updated_at`, or later writers cannot tell its write from
    /// the version before ([`crate::control::KeyManager`] does).
    ///
    /// Leaves `usage_count` and `last_used_at` as stored, whatever the record says.
    /// [`StoreError::NotFound`] if the key is gone. [`StoreError::Conflict`], with nothing
    /// written, if:
    /// - the stored `updated_at` is not `expected_updated_at` (another write came first: read
    ///   again and redo the change);
    /// - `hash` or `hash_scheme` differ from the stored ones (a new secret is a new key; and a
    ///   SHA-256 record read before [`KeyStore::upgrade_hash`] moved the key is stale);
    /// - the stored record is revoked and `record` is not: revocation is irreversible, so an
    ///   update never clears `revoked_at`, even one that read the revoked version.
    fn update(
        &self,
        record: &KeyRecord,
        expected_updated_at: OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes a key, its hash index entry (whichever scheme), its `sha256_tag`, its
    /// request logs and its per-day usage. Returns the
    /// removed record, `None` if there was none. Its audit entries stay.
    fn delete(
        &self,
        workspace: &str,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// A workspace's keys, newest first (by `created_at` to the millisecond, then id). A
    /// malformed cursor is [`StoreError::InvalidCursor`]; keys deleted between pages leave no
    /// gap and no duplicate.
    fn list(
        &self,
        workspace: &str,
        query: &ListQuery,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<KeyPage, StoreError>> + Send;

    /// Adds usage counts and moves `last_used_at` forward, and adds each delta's `days` to the
    /// key's per-day counts in the same step (one redb write transaction; on Redis the same
    /// pipelined round trip). Days older than [`USAGE_DAYS_KEPT`] (by the store's clock) are
    /// skipped and the key's older stored days removed. Deltas for keys that no longer exist
    /// are dropped.
    fn add_usage(
        &self,
        deltas: &[UsageDelta],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Appends request-log entries of one key, keeping only the newest `max_per_key`.
    fn append_request_logs(
        &self,
        workspace: &str,
        id: &KeyId,
        entries: &[RequestLogEntry],
        max_per_key: usize,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One flush of the usage recorder: [`KeyStore::add_usage`] of `deltas` and
    /// [`KeyStore::append_request_logs`] of each key's `logs` (each key's log trimmed to its
    /// newest `max_per_key`), for all keys in one call. The embedded store writes it all in one
    /// redb write transaction (one commit, one fsync, however many keys: per-key transactions
    /// made 100,000 keys in rotation halve the gateway's throughput); Redis in the round trips
    /// of `add_usage`, then every key's logs in one more pipelined round trip. A failure says
    /// whether the counts were written first ([`UsageWriteError::counts_written`]), so that a
    /// retry never adds them twice. The default writes the counts, then each key's logs, in
    /// separate calls (for wrappers and test doubles; both backends override it).
    fn write_usage(
        &self,
        deltas: &[UsageDelta],
        logs: &[KeyLogs<'_>],
        max_per_key: usize,
    ) -> impl Future<Output = Result<(), UsageWriteError>> + Send {
        async move {
            self.add_usage(deltas).await?;
            for k in logs {
                self.append_request_logs(k.workspace, k.id, k.entries, max_per_key)
                    .await
                    .map_err(|error| UsageWriteError {
                        counts_written: true,
                        error,
                    })?;
            }
            Ok(())
        }
    }

    /// The newest `limit` request-log entries of a key, newest first.
    fn request_logs(
        &self,
        workspace: &str,
        id: &KeyId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RequestLogEntry>, StoreError>> + Send;

    /// Whether the store answers (for `/readyz`).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Spends quota units: for each entry, in order, adds `n` to the count of (`id`,
    /// `period_start`) if the count stays within `limit`, atomically per entry: exact under
    /// concurrent calls, and across gateway instances on Redis. Returns each count after the
    /// call. Counts belong to key ids and periods, not to records: a deleted key's counts are
    /// left to expire. The request path calls it once per request of a quota'd key on Redis;
    /// on the embedded store the gateway counts in memory and calls it to load a count and to
    /// write what it counted (see `limits::quota`).
    fn consume_quota(
        &self,
        spends: &[QuotaSpend],
    ) -> impl Future<Output = Result<Vec<QuotaCount>, StoreError>> + Send {
        let _ = spends;
        async { Err(unsupported("consume_quota")) }
    }

    /// The key imported with this SHA-256 digest of its secret and not upgraded yet, with its
    /// usage fields. The request path's fallback after a [`KeyStore::get_by_hash`] miss for a
    /// foreign-format secret: a single round trip.
    fn get_by_sha256(
        &self,
        digest: &SecretHash,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        let _ = digest;
        async { Err(unsupported("get_by_sha256")) }
    }

    /// Moves a SHA-256 import to keyed BLAKE3 (on its first successful use): afterwards its
    /// record has `hash = new_hash` and `hash_scheme = KeyedBlake3`, [`KeyStore::get_by_hash`]
    /// finds it by `new_hash`, [`KeyStore::get_by_sha256`] no longer finds it, and usage,
    /// `updated_at` and everything else are kept. Returns the upgraded record with its usage.
    ///
    /// Idempotent: a key already upgraded to `new_hash` is returned as it is, and an upgrade cut
    /// short (crash, timeout) is completed by the next call. An [`KeyStore::update`] (a revoke
    /// above all) racing it is never lost, whichever side stops at any step: no record answers
    /// by either hash unrevoked once the key is revoked. [`StoreError::NotFound`] if the key
    /// is gone; [`StoreError::Conflict`] if it is keyed by another hash already, or if `new_hash`
    /// indexes another key.
    fn upgrade_hash(
        &self,
        workspace: &str,
        id: &KeyId,
        new_hash: &SecretHash,
    ) -> impl Future<Output = Result<KeyRecord, StoreError>> + Send {
        let _ = (workspace, id, new_hash);
        async { Err(unsupported("upgrade_hash")) }
    }

    /// A key's per-day usage from `first` to `last` (UTC days, inclusive): the days with a count,
    /// oldest first. A key that does not exist has none. Per-day counts go with the key on
    /// [`KeyStore::delete`].
    fn daily_usage(
        &self,
        workspace: &str,
        id: &KeyId,
        first: Date,
        last: Date,
    ) -> impl Future<Output = Result<Vec<(Date, u64)>, StoreError>> + Send {
        let _ = (workspace, id, first, last);
        async { Err(unsupported("daily_usage")) }
    }

    /// Appends an audit entry to the global log and, if it names a workspace, to that
    /// workspace's log. Each log keeps its newest [`AUDIT_MAX_ENTRIES`].
    fn append_audit(
        &self,
        entry: &AuditEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = entry;
        async { Err(unsupported("append_audit")) }
    }

    /// A page of an audit log (`None`: the global one), newest first: by `time` to the
    /// millisecond, then by id, descending. `limit` is clamped to 1..=[`AUDIT_MAX_ENTRIES`].
    /// Pass the page's `next_cursor` to get the next one: entries appended meanwhile do not
    /// shift pages (no gap, no duplicate). A malformed cursor is [`StoreError::InvalidCursor`].
    fn list_audit(
        &self,
        workspace: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<AuditPage, StoreError>> + Send {
        let _ = (workspace, limit, cursor);
        async { Err(unsupported("list_audit")) }
    }

    /// The workspace's active keys at `now`, in either hash scheme: exactly what
    /// [`KeyStore::create`] compares with `max_active`.
    fn count_active(
        &self,
        workspace: &str,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send {
        let _ = (workspace, now);
        async { Err(unsupported("count_active")) }
    }

    /// A stored workspace (one created through the admin API).
    fn get_workspace(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<WorkspaceRecord>, StoreError>> + Send {
        let _ = name;
        async { Err(unsupported("get_workspace")) }
    }

    /// Up to `limit` stored workspaces whose names sort after `after`, by name.
    fn list_workspaces(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<WorkspaceRecord>, StoreError>> + Send {
        let _ = (after, limit);
        async { Err(unsupported("list_workspaces")) }
    }

    /// Stores a workspace, conditionally, in one atomic step: with `expected_updated_at`
    /// `None` only if there is none of this name (create), else only if the stored one's
    /// `updated_at` is that, to the millisecond (change). [`StoreError::Conflict`] otherwise,
    /// with nothing written, unless what is stored is exactly `record` already (the resend of
    /// a write that landed). The caller gives a change an `updated_at` later than the one it
    /// replaces.
    fn put_workspace(
        &self,
        record: &WorkspaceRecord,
        expected_updated_at: Option<OffsetDateTime>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (record, expected_updated_at);
        async { Err(unsupported("put_workspace")) }
    }

    /// Removes a stored workspace if it holds no key (revoked ones included), checked in the
    /// same atomic step as the removal and as [`Admission::Stored`] creates: a key is never
    /// left in a deleted workspace. [`StoreError::WorkspaceNotEmpty`] otherwise. Returns what
    /// was removed, `None` if there was nothing. Its audit log stays.
    fn delete_workspace(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<WorkspaceRecord>, StoreError>> + Send {
        let _ = name;
        async { Err(unsupported("delete_workspace")) }
    }
}

/// A listing position: the sort time in unix milliseconds and the id that breaks ties. Both
/// backends write it as `<ms>:<id>`, for key listings and audit logs alike.
fn cursor_at(ms: i64, id: &str) -> String {
    format!("{ms}:{id}")
}

/// Reads a [`cursor_at`] cursor of a key listing.
fn parse_key_cursor(cursor: &str) -> Result<(i64, KeyId), StoreError> {
    let (ms, id) = parse_cursor(cursor)?;
    Ok((ms, KeyId::parse(id).ok_or(StoreError::InvalidCursor)?))
}

/// Reads a [`cursor_at`] cursor. Any id is accepted after the first `:`, since audit ids are
/// the caller's and every one of them must round-trip.
fn parse_cursor(cursor: &str) -> Result<(i64, &str), StoreError> {
    let (ms, id) = cursor.split_once(':').ok_or(StoreError::InvalidCursor)?;
    Ok((ms.parse().map_err(|_| StoreError::InvalidCursor)?, id))
}

/// The error of a control-plane method a [`KeyStore`] does not implement.
fn unsupported(method: &str) -> StoreError {
    StoreError::Unavailable(format!("this store does not implement {method}"))
}

/// The backend chosen in config, dispatched statically (no boxing on the request path).
pub enum Store {
    /// redb file.
    Embedded(embedded::EmbeddedStore),
    /// Redis.
    Redis(redis::RedisStore),
}

impl Store {
    /// Opens the backend chosen by `store.backend`.
    pub async fn open(config: &crate::config::StoreConfig) -> Result<Store, StoreError> {
        Ok(match config.backend {
            crate::config::Backend::Embedded => {
                Store::Embedded(embedded::EmbeddedStore::open(&config.embedded)?)
            }
            crate::config::Backend::Redis => {
                Store::Redis(redis::RedisStore::connect(&config.redis).await?)
            }
        })
    }

    /// Tells the other instances sharing this store to drop the key with this keyed hash from
    /// their caches (through [`invalidation::invalidate_everywhere`], which drops it here first).
    /// Nothing to tell on the embedded backend: it serves one node.
    pub async fn publish_invalidation(&self, hash: &SecretHash) -> Result<(), StoreError> {
        match self {
            Store::Embedded(_) => Ok(()),
            Store::Redis(s) => s.publish_invalidation(hash).await,
        }
    }

    /// The keyed hash an unfinished upgrade of SHA-256 import `key` is moving it to, whose copy
    /// lookups may already find (and caches hold). Only Redis upgrades in steps; a failed read
    /// is logged and taken as none (the copy then ages out of caches within `cache.ttl`).
    pub async fn upgrade_target(&self, key: &KeyRecord) -> Option<SecretHash> {
        match self {
            Store::Redis(s) if key.hash_scheme == crate::keys::HashScheme::Sha256 => {
                match s.upgrade_target(&key.hash).await {
                    Ok(to) => to,
                    Err(e) => {
                        tracing::warn!(key_id = %key.id, error = %e, "cannot read an import's upgrade target");
                        None
                    }
                }
            }
            _ => None,
        }
    }

    /// This instance among those sharing the store; `None` on the embedded backend, which
    /// serves one node.
    pub fn fleet(&self) -> Option<&fleet::Fleet> {
        match self {
            Store::Embedded(_) => None,
            Store::Redis(s) => Some(s.fleet()),
        }
    }

    /// Counters and state of the invalidation channel; `None` on the embedded backend, which
    /// has none.
    pub fn invalidation_stats(&self) -> Option<&invalidation::InvalidationStats> {
        match self {
            Store::Embedded(_) => None,
            Store::Redis(s) => Some(s.invalidation_stats()),
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Embedded($s) => $call.await,
            Store::Redis($s) => $call.await,
        }
    };
}

impl KeyStore for Store {
    async fn create(
        &self,
        record: &KeyRecord,
        admission: impl Into<Admission> + Send,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let admission = admission.into();
        dispatch!(self, s => s.create(record, admission, now))
    }
    async fn get_by_hash(&self, hash: &SecretHash) -> Result<Option<KeyRecord>, StoreError> {
        dispatch!(self, s => s.get_by_hash(hash))
    }
    async fn get(&self, workspace: &str, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        dispatch!(self, s => s.get(workspace, id))
    }
    async fn update(
        &self,
        record: &KeyRecord,
        expected_updated_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.update(record, expected_updated_at))
    }
    async fn delete(&self, workspace: &str, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        dispatch!(self, s => s.delete(workspace, id))
    }
    async fn list(
        &self,
        workspace: &str,
        query: &ListQuery,
        now: OffsetDateTime,
    ) -> Result<KeyPage, StoreError> {
        dispatch!(self, s => s.list(workspace, query, now))
    }
    async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        dispatch!(self, s => s.add_usage(deltas))
    }
    async fn append_request_logs(
        &self,
        workspace: &str,
        id: &KeyId,
        entries: &[RequestLogEntry],
        max_per_key: usize,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.append_request_logs(workspace, id, entries, max_per_key))
    }
    async fn write_usage(
        &self,
        deltas: &[UsageDelta],
        logs: &[KeyLogs<'_>],
        max_per_key: usize,
    ) -> Result<(), UsageWriteError> {
        dispatch!(self, s => s.write_usage(deltas, logs, max_per_key))
    }
    async fn request_logs(
        &self,
        workspace: &str,
        id: &KeyId,
        limit: usize,
    ) -> Result<Vec<RequestLogEntry>, StoreError> {
        dispatch!(self, s => s.request_logs(workspace, id, limit))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping())
    }
    async fn consume_quota(&self, spends: &[QuotaSpend]) -> Result<Vec<QuotaCount>, StoreError> {
        dispatch!(self, s => s.consume_quota(spends))
    }
    async fn get_by_sha256(&self, digest: &SecretHash) -> Result<Option<KeyRecord>, StoreError> {
        dispatch!(self, s => s.get_by_sha256(digest))
    }
    async fn upgrade_hash(
        &self,
        workspace: &str,
        id: &KeyId,
        new_hash: &SecretHash,
    ) -> Result<KeyRecord, StoreError> {
        dispatch!(self, s => s.upgrade_hash(workspace, id, new_hash))
    }
    async fn daily_usage(
        &self,
        workspace: &str,
        id: &KeyId,
        first: Date,
        last: Date,
    ) -> Result<Vec<(Date, u64)>, StoreError> {
        dispatch!(self, s => s.daily_usage(workspace, id, first, last))
    }
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        dispatch!(self, s => s.append_audit(entry))
    }
    async fn list_audit(
        &self,
        workspace: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<AuditPage, StoreError> {
        dispatch!(self, s => s.list_audit(workspace, limit, cursor))
    }
    async fn count_active(&self, workspace: &str, now: OffsetDateTime) -> Result<u32, StoreError> {
        dispatch!(self, s => s.count_active(workspace, now))
    }
    async fn get_workspace(&self, name: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        dispatch!(self, s => s.get_workspace(name))
    }
    async fn list_workspaces(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WorkspaceRecord>, StoreError> {
        dispatch!(self, s => s.list_workspaces(after, limit))
    }
    async fn put_workspace(
        &self,
        record: &WorkspaceRecord,
        expected_updated_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_workspace(record, expected_updated_at))
    }
    async fn delete_workspace(&self, name: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        dispatch!(self, s => s.delete_workspace(name))
    }
}
