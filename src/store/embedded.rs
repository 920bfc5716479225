//! The embedded key index: one redb file for a single gateway node. Owns the file layout below
//! and nothing else; callers reach it through [`KeyStore`].
//!
//! redb is synchronous, so every call runs in `tokio::task::spawn_blocking` and is bounded by
//! [`CALL_TIMEOUT`]. redb admits one write transaction at a time, which is what makes the
//! `max_active` check in [`KeyStore::create`] exact: the count and the insert share one write
//! transaction.
//!
//! | table | key | value |
//! |---|---|---|
//! | `records_v1` | `(workspace, id)` | `KeyRecord` JSON, usage fields zeroed |
//! | `by_hash_v1` | keyed BLAKE3 secret hash (32 bytes) | `(workspace, id)` |
//! | `by_sha256_v1` | SHA-256 digest of an imported secret (32 bytes), until upgraded | `(workspace, id)` |
//! | `by_sha256_tag_v1` | `sha256_tag` of an imported key (32 bytes), for the key's lifetime | `(workspace, id)` |
//! | `by_created_v1` | `(workspace, created_at unix ms, id)` | `()`; read backwards: newest first |
//! | `active_v1` | `(workspace, id)` | `expires_at` unix ns, `i128::MAX` for never; revoked keys are absent |
//! | `usage_v1` | `(workspace, id)` | `(usage_count, last_used_at unix ms)` |
//! | `usage_days_v1` | `(workspace, id, UTC day as Julian day number)` | requests that day; days older than `USAGE_DAYS_KEPT` are removed when the key's usage is next written |
//! | `logs_v1` | `(workspace, id, seq)` | `RequestLogEntry` JSON; `seq` grows, so the last is the newest |
//! | `audit_v1` | `(time unix ms, entry id)` | `AuditEntry` JSON: the global log; read backwards, newest first |
//! | `audit_ws_v1` | `(workspace, time unix ms, entry id)` | `AuditEntry` JSON: each workspace's log |
//! | `audit_ws_len_v1` | workspace | entries in its log (the global log's length is the table's) |
//! | `workspaces_v1` | workspace name | `WorkspaceRecord` JSON of a workspace created through the admin API |
//! | `quota_v1` | `(key id, period start unix s)` | `(units spent, expires unix s)`, `i64::MAX` for never; rows of ended periods go when the key's next period is written |
//!
//! Usage lives apart from the record so that an edit never overwrites counts the usage flusher
//! wrote meanwhile; `last_used_at` is kept at millisecond precision, as in the Redis backend.
//! Records are found by `(workspace, id)` whatever their hash scheme; only the hash index
//! differs, and [`KeyStore::upgrade_hash`] moves a key between the two in one transaction.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use time::{Date, OffsetDateTime};

mod workspaces;

use super::{
    AUDIT_MAX_ENTRIES, Admission, AuditEntry, AuditPage, KeyLogs, KeyPage, KeyStore, ListQuery,
    QuotaCount, QuotaSpend, RequestLogEntry, StoreError, UsageDelta, cursor_at, from_unix_ms,
    oldest_usage_day, parse_cursor, parse_key_cursor, stored_json, unix_ms,
};
use crate::config::EmbeddedConfig;
use crate::keys::{HashScheme, KeyId, KeyRecord, KeyStatus, SecretHash};
use crate::workspaces::WorkspaceRecord;

/// Longest a call may take before it reports [`StoreError::Unavailable`]. `store.embedded` has no
/// timeout setting; this only guards the request path against a wedged disk (a write waits for
/// fsync). The blocking task itself runs to completion.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records_v1");
const BY_HASH: HashIndex = TableDefinition::new("by_hash_v1");
const BY_SHA256: HashIndex = TableDefinition::new("by_sha256_v1");
const BY_SHA256_TAG: HashIndex = TableDefinition::new("by_sha256_tag_v1");
const BY_CREATED: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("by_created_v1");
const ACTIVE: TableDefinition<(&str, &str), i128> = TableDefinition::new("active_v1");
const USAGE: TableDefinition<(&str, &str), (u64, Option<i64>)> = TableDefinition::new("usage_v1");
const USAGE_DAYS: TableDefinition<(&str, &str, i32), u64> = TableDefinition::new("usage_days_v1");
const LOGS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("logs_v1");
const AUDIT: TableDefinition<(i64, &str), &[u8]> = TableDefinition::new("audit_v1");
const AUDIT_WS: TableDefinition<(&str, i64, &str), &[u8]> = TableDefinition::new("audit_ws_v1");
const AUDIT_WS_LEN: TableDefinition<&str, u64> = TableDefinition::new("audit_ws_len_v1");
const QUOTA: TableDefinition<(&str, i64), (u64, i64)> = TableDefinition::new("quota_v1");

/// A secret-hash index: `by_hash_v1` or `by_sha256_v1`.
type HashIndex = TableDefinition<'static, &'static [u8; 32], (&'static str, &'static str)>;

/// Sorts after every key id (ids are ASCII), so `(ws, i64::MAX, ID_MAX)` bounds a workspace.
const ID_MAX: &str = "\u{10FFFF}";
/// `active_v1` value of a key that never expires.
const NEVER: i128 = i128::MAX;

/// The redb-backed store. Cheap to share: the database is behind an `Arc`.
pub struct EmbeddedStore {
    db: Arc<Db>,
    audit_max: usize,
}

/// The redb database, counting the write transactions begun on it. Each one commits with an
/// fsync, the cost that a usage flush pays once rather than once per key.
struct Db {
    redb: Database,
    write_transactions: AtomicU64,
}

impl Db {
    fn begin_write(&self) -> Result<redb::WriteTransaction, redb::TransactionError> {
        self.write_transactions.fetch_add(1, Ordering::Relaxed);
        self.redb.begin_write()
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, redb::TransactionError> {
        self.redb.begin_read()
    }
}

impl EmbeddedStore {
    /// The record a hash index (keyed BLAKE3 or SHA-256) points at, in one read transaction.
    async fn get_indexed(
        &self,
        index: HashIndex,
        hash: &SecretHash,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let hash = hash.0;
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(index).map_err(db_err)?;
            let Some(entry) = table.get(&hash).map_err(db_err)? else {
                return Ok(None);
            };
            let (ws, id) = entry.value();
            read_record(&txn, ws, id)
        })
        .await
    }

    /// Opens the store file, creating it and its parent directories if missing.
    pub fn open(config: &EmbeddedConfig) -> Result<EmbeddedStore, StoreError> {
        let path = config.path.as_path();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let db = Database::create(path).map_err(|e| open_error(path, e))?;
        // Create every table once, so read transactions never meet a missing table.
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(RECORDS).map_err(db_err)?;
            txn.open_table(BY_HASH).map_err(db_err)?;
            txn.open_table(BY_SHA256).map_err(db_err)?;
            txn.open_table(BY_SHA256_TAG).map_err(db_err)?;
            txn.open_table(BY_CREATED).map_err(db_err)?;
            txn.open_table(ACTIVE).map_err(db_err)?;
            txn.open_table(USAGE).map_err(db_err)?;
            txn.open_table(USAGE_DAYS).map_err(db_err)?;
            txn.open_table(LOGS).map_err(db_err)?;
            txn.open_table(AUDIT).map_err(db_err)?;
            txn.open_table(AUDIT_WS).map_err(db_err)?;
            txn.open_table(AUDIT_WS_LEN).map_err(db_err)?;
            txn.open_table(QUOTA).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(EmbeddedStore {
            db: Arc::new(Db {
                redb: db,
                write_transactions: AtomicU64::new(0),
            }),
            audit_max: AUDIT_MAX_ENTRIES,
        })
    }

    /// Write transactions begun since the store was opened (each commits with an fsync), for
    /// tests and benchmarks: a usage flush ([`KeyStore::write_usage`]) takes one, however many
    /// keys it writes.
    pub fn write_transactions(&self) -> u64 {
        self.db.write_transactions.load(Ordering::Relaxed)
    }

    /// Keeps at most `max` entries per audit log instead of [`AUDIT_MAX_ENTRIES`] (at least 1),
    /// so that tests can fill a log.
    pub fn with_audit_max_entries(mut self, max: usize) -> Self {
        self.audit_max = max.max(1);
        self
    }

    /// Runs `op` on the blocking pool, bounded by [`CALL_TIMEOUT`].
    async fn run<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let task = tokio::task::spawn_blocking(move || op(&db));
        match tokio::time::timeout(CALL_TIMEOUT, task).await {
            Ok(Ok(result)) => result,
            // The panic message is not forwarded: it could quote data.
            Ok(Err(e)) if e.is_panic() => Err(StoreError::Unavailable(
                "embedded store task panicked".into(),
            )),
            Ok(Err(_)) => Err(StoreError::Unavailable(
                "embedded store task was cancelled".into(),
            )),
            Err(_) => Err(StoreError::Unavailable(format!(
                "embedded store did not answer within {} ms",
                CALL_TIMEOUT.as_millis()
            ))),
        }
    }
}

impl KeyStore for EmbeddedStore {
    async fn create(
        &self,
        record: &KeyRecord,
        admission: impl Into<Admission> + Send,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let admission = admission.into();
        let record = record.clone();
        let json = stored_json(&record)?;
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let ws = record.workspace.as_str();
            let id = record.id.as_str();
            // In this transaction: no plan change or workspace deletion can slip in between.
            let max_active = match admission {
                Admission::Open => None,
                Admission::Limit(max) => Some(max),
                Admission::Stored => Some(workspaces::admit(&txn, ws)?),
            };
            {
                let mut records = txn.open_table(RECORDS).map_err(db_err)?;
                let mut by_hash = txn
                    .open_table(hash_index(record.hash_scheme))
                    .map_err(db_err)?;
                let mut by_tag = txn.open_table(BY_SHA256_TAG).map_err(db_err)?;
                let tag_taken = match &record.sha256_tag {
                    Some(tag) => by_tag.get(&tag.0).map_err(db_err)?.is_some(),
                    None => false,
                };
                if tag_taken
                    || records.get((ws, id)).map_err(db_err)?.is_some()
                    || by_hash.get(&record.hash.0).map_err(db_err)?.is_some()
                {
                    return Err(StoreError::Conflict);
                }
                let mut active = txn.open_table(ACTIVE).map_err(db_err)?;
                let is_active = record.status_at(now) == KeyStatus::Active;
                // A key that is born revoked or expired takes no slot, so the limit does not
                // apply to it.
                if let (Some(max), true) = (max_active, is_active) {
                    let live = prune_and_count_active(&mut active, ws, now)?;
                    if live >= u64::from(max) {
                        return Err(StoreError::LimitReached);
                    }
                }
                records.insert((ws, id), json.as_bytes()).map_err(db_err)?;
                by_hash.insert(&record.hash.0, (ws, id)).map_err(db_err)?;
                if let Some(tag) = &record.sha256_tag {
                    by_tag.insert(&tag.0, (ws, id)).map_err(db_err)?;
                }
                txn.open_table(BY_CREATED)
                    .map_err(db_err)?
                    .insert((ws, unix_ms(record.created_at), id), ())
                    .map_err(db_err)?;
                if is_active {
                    active
                        .insert((ws, id), expiry_ns(&record))
                        .map_err(db_err)?;
                }
                let last_used = record.last_used_at.map(unix_ms);
                if record.usage_count > 0 || last_used.is_some() {
                    txn.open_table(USAGE)
                        .map_err(db_err)?
                        .insert((ws, id), (record.usage_count, last_used))
                        .map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn get_by_hash(&self, hash: &SecretHash) -> Result<Option<KeyRecord>, StoreError> {
        self.get_indexed(BY_HASH, hash).await
    }

    async fn get(&self, workspace: &str, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let (ws, id) = (workspace.to_owned(), id.clone());
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            read_record(&txn, &ws, id.as_str())
        })
        .await
    }

    async fn update(
        &self,
        record: &KeyRecord,
        expected_updated_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let record = record.clone();
        let expected_ms = unix_ms(expected_updated_at);
        let json = stored_json(&record)?;
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let ws = record.workspace.as_str();
            let id = record.id.as_str();
            {
                let mut records = txn.open_table(RECORDS).map_err(db_err)?;
                let old = match records.get((ws, id)).map_err(db_err)? {
                    // This very write landed already (a resend): done, not a conflict.
                    Some(bytes) if bytes.value() == json.as_bytes() => return Ok(()),
                    Some(bytes) => decode_record(bytes.value(), id)?,
                    None => return Err(StoreError::NotFound),
                };
                // The hash is the key's identity on the request path; a new secret is a new key
                // (rotate), never an edit. A SHA-256 record read before an upgrade is stale.
                if old.hash != record.hash || old.hash_scheme != record.hash_scheme {
                    return Err(StoreError::Conflict);
                }
                // Compared in the write transaction, which redb runs one at a time: no write
                // can land between this check and the insert below.
                if unix_ms(old.updated_at) != expected_ms {
                    return Err(StoreError::Conflict);
                }
                // Revocation is irreversible, whatever version the caller read.
                if old.revoked_at.is_some() && record.revoked_at.is_none() {
                    return Err(StoreError::Conflict);
                }
                records.insert((ws, id), json.as_bytes()).map_err(db_err)?;
                let (old_ms, new_ms) = (unix_ms(old.created_at), unix_ms(record.created_at));
                if old_ms != new_ms {
                    let mut by_created = txn.open_table(BY_CREATED).map_err(db_err)?;
                    by_created.remove((ws, old_ms, id)).map_err(db_err)?;
                    by_created.insert((ws, new_ms, id), ()).map_err(db_err)?;
                }
                let mut active = txn.open_table(ACTIVE).map_err(db_err)?;
                if record.revoked_at.is_some() {
                    active.remove((ws, id)).map_err(db_err)?;
                } else {
                    active
                        .insert((ws, id), expiry_ns(&record))
                        .map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn delete(&self, workspace: &str, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let (ws, id) = (workspace.to_owned(), id.clone());
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let (ws, id) = (ws.as_str(), id.as_str());
            let mut record = {
                let mut records = txn.open_table(RECORDS).map_err(db_err)?;
                let removed = records.remove((ws, id)).map_err(db_err)?;
                match removed {
                    Some(bytes) => decode_record(bytes.value(), id)?,
                    None => return Ok(None),
                }
            };
            {
                txn.open_table(hash_index(record.hash_scheme))
                    .map_err(db_err)?
                    .remove(&record.hash.0)
                    .map_err(db_err)?;
                if let Some(tag) = &record.sha256_tag {
                    txn.open_table(BY_SHA256_TAG)
                        .map_err(db_err)?
                        .remove(&tag.0)
                        .map_err(db_err)?;
                }
                txn.open_table(BY_CREATED)
                    .map_err(db_err)?
                    .remove((ws, unix_ms(record.created_at), id))
                    .map_err(db_err)?;
                txn.open_table(ACTIVE)
                    .map_err(db_err)?
                    .remove((ws, id))
                    .map_err(db_err)?;
                let mut usage = txn.open_table(USAGE).map_err(db_err)?;
                if let Some(u) = usage.remove((ws, id)).map_err(db_err)? {
                    apply_usage(&mut record, u.value());
                }
                let mut logs = txn.open_table(LOGS).map_err(db_err)?;
                logs.retain_in((ws, id, 0)..=(ws, id, u64::MAX), |_, _| false)
                    .map_err(db_err)?;
                txn.open_table(USAGE_DAYS)
                    .map_err(db_err)?
                    .retain_in((ws, id, i32::MIN)..=(ws, id, i32::MAX), |_, _| false)
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)?;
            Ok(Some(record))
        })
        .await
    }

    async fn list(
        &self,
        workspace: &str,
        query: &ListQuery,
        now: OffsetDateTime,
    ) -> Result<KeyPage, StoreError> {
        let ws = workspace.to_owned();
        let query = query.clone();
        let after = query.cursor.as_deref().map(parse_key_cursor).transpose()?;
        let limit = query.limit.max(1);
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let by_created = txn.open_table(BY_CREATED).map_err(db_err)?;
            let ws = ws.as_str();
            let lower = Bound::Included((ws, i64::MIN, ""));
            let upper = match &after {
                Some((ms, id)) => Bound::Excluded((ws, *ms, id.as_str())),
                None => Bound::Included((ws, i64::MAX, ID_MAX)),
            };
            let mut keys = Vec::new();
            let mut next_cursor = None;
            for entry in by_created.range((lower, upper)).map_err(db_err)?.rev() {
                let (key, _) = entry.map_err(db_err)?;
                let (_, _, id) = key.value();
                let Some(record) = read_record(&txn, ws, id)? else {
                    continue;
                };
                if !query.matches(&record, now) {
                    continue;
                }
                if keys.len() == limit {
                    // One more match exists: the page is full and a next one is worth asking for.
                    next_cursor = keys
                        .last()
                        .map(|r: &KeyRecord| cursor_at(unix_ms(r.created_at), r.id.as_str()));
                    break;
                }
                keys.push(record);
            }
            Ok(KeyPage { keys, next_cursor })
        })
        .await
    }

    async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        self.write_usage(deltas, &[], 0).await
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
        self.write_usage(&[], &[logs], max_per_key).await
    }

    async fn write_usage(
        &self,
        deltas: &[UsageDelta],
        logs: &[KeyLogs<'_>],
        max_per_key: usize,
    ) -> Result<(), StoreError> {
        let logs = logs
            .iter()
            .filter(|k| !k.entries.is_empty())
            .map(EncodedLogs::of)
            .collect::<Result<Vec<_>, _>>()?;
        if deltas.is_empty() && logs.is_empty() {
            return Ok(());
        }
        let deltas = deltas.to_vec();
        let keep = u64::try_from(max_per_key).unwrap_or(u64::MAX);
        self.run(move |db| {
            // One transaction for the whole flush: one commit (and fsync), however many keys.
            let txn = db.begin_write().map_err(db_err)?;
            {
                let records = txn.open_table(RECORDS).map_err(db_err)?;
                if !deltas.is_empty() {
                    let mut usage = txn.open_table(USAGE).map_err(db_err)?;
                    let mut days = txn.open_table(USAGE_DAYS).map_err(db_err)?;
                    let oldest = oldest_usage_day(OffsetDateTime::now_utc().date()).to_julian_day();
                    for d in &deltas {
                        add_usage_in(&records, &mut usage, &mut days, d, oldest)?;
                    }
                }
                if !logs.is_empty() {
                    let mut table = txn.open_table(LOGS).map_err(db_err)?;
                    for k in &logs {
                        append_logs_in(&records, &mut table, k, keep)?;
                    }
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn request_logs(
        &self,
        workspace: &str,
        id: &KeyId,
        limit: usize,
    ) -> Result<Vec<RequestLogEntry>, StoreError> {
        let (ws, id) = (workspace.to_owned(), id.clone());
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let logs = txn.open_table(LOGS).map_err(db_err)?;
            let (ws, id) = (ws.as_str(), id.as_str());
            let mut out = Vec::new();
            for entry in logs
                .range((ws, id, 0)..=(ws, id, u64::MAX))
                .map_err(db_err)?
                .rev()
                .take(limit)
            {
                let (_, value) = entry.map_err(db_err)?;
                out.push(serde_json::from_slice(value.value()).map_err(|e| {
                    StoreError::Corrupt(format!(
                        "request log of {id}: undecodable entry (column {})",
                        e.column()
                    ))
                })?);
            }
            Ok(out)
        })
        .await
    }

    async fn daily_usage(
        &self,
        workspace: &str,
        id: &KeyId,
        first: Date,
        last: Date,
    ) -> Result<Vec<(Date, u64)>, StoreError> {
        let (ws, id) = (workspace.to_owned(), id.clone());
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let days = txn.open_table(USAGE_DAYS).map_err(db_err)?;
            let (ws, id) = (ws.as_str(), id.as_str());
            let range = (ws, id, first.to_julian_day())..=(ws, id, last.to_julian_day());
            let mut out = Vec::new();
            for entry in days.range(range).map_err(db_err)? {
                let (key, n) = entry.map_err(db_err)?;
                let day = Date::from_julian_day(key.value().2).map_err(|_| {
                    StoreError::Corrupt(format!("per-day usage of {id}: day out of range"))
                })?;
                out.push((day, n.value()));
            }
            Ok(out)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            txn.open_table(RECORDS).map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn consume_quota(&self, spends: &[QuotaSpend]) -> Result<Vec<QuotaCount>, StoreError> {
        let spends = spends.to_vec();
        self.run(move |db| {
            if spends.iter().all(|s| s.n == 0) {
                // Only reads: no write transaction (and no fsync).
                let txn = db.begin_read().map_err(db_err)?;
                let table = txn.open_table(QUOTA).map_err(db_err)?;
                return spends
                    .iter()
                    .map(|s| {
                        let used = table
                            .get((s.id.as_str(), s.period_start))
                            .map_err(db_err)?
                            .map_or(0, |v| v.value().0);
                        Ok(QuotaCount {
                            used,
                            spent: used <= s.limit,
                        })
                    })
                    .collect();
            }
            // One write transaction at a time (redb's rule) is what makes each step exact.
            let txn = db.begin_write().map_err(db_err)?;
            let mut out = Vec::with_capacity(spends.len());
            {
                let mut table = txn.open_table(QUOTA).map_err(db_err)?;
                for s in &spends {
                    let id = s.id.as_str();
                    let used = table
                        .get((id, s.period_start))
                        .map_err(db_err)?
                        .map_or(0, |v| v.value().0);
                    let total = used.saturating_add(s.n);
                    let spent = total <= s.limit;
                    if spent && s.n > 0 {
                        table
                            .insert(
                                (id, s.period_start),
                                (total, s.expires_at.unwrap_or(i64::MAX)),
                            )
                            .map_err(db_err)?;
                    }
                    out.push(QuotaCount {
                        used: if spent { total } else { used },
                        spent,
                    });
                    // Counts of periods that ended before this one began are of no more use.
                    let ended: Vec<i64> = table
                        .range((id, i64::MIN)..(id, s.period_start))
                        .map_err(db_err)?
                        .filter_map(Result::ok)
                        .filter(|(_, v)| v.value().1 <= s.period_start)
                        .map(|(k, _)| k.value().1)
                        .collect();
                    for start in ended {
                        table.remove((id, start)).map_err(db_err)?;
                    }
                }
            }
            txn.commit().map_err(db_err)?;
            Ok(out)
        })
        .await
    }

    async fn get_by_sha256(&self, digest: &SecretHash) -> Result<Option<KeyRecord>, StoreError> {
        self.get_indexed(BY_SHA256, digest).await
    }

    async fn upgrade_hash(
        &self,
        workspace: &str,
        id: &KeyId,
        new_hash: &SecretHash,
    ) -> Result<KeyRecord, StoreError> {
        let (ws, id, new_hash) = (workspace.to_owned(), id.clone(), *new_hash);
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let (ws, id) = (ws.as_str(), id.as_str());
            let mut record = {
                let mut records = txn.open_table(RECORDS).map_err(db_err)?;
                let mut record = match records.get((ws, id)).map_err(db_err)? {
                    Some(bytes) => decode_record(bytes.value(), id)?,
                    None => return Err(StoreError::NotFound),
                };
                match record.hash_scheme {
                    // Upgraded already (a retry, or a concurrent first use): nothing to do.
                    HashScheme::KeyedBlake3 if record.hash == new_hash => {}
                    HashScheme::KeyedBlake3 => return Err(StoreError::Conflict),
                    HashScheme::Sha256 => {
                        let mut by_hash = txn.open_table(BY_HASH).map_err(db_err)?;
                        if by_hash.get(&new_hash.0).map_err(db_err)?.is_some() {
                            return Err(StoreError::Conflict);
                        }
                        txn.open_table(BY_SHA256)
                            .map_err(db_err)?
                            .remove(&record.hash.0)
                            .map_err(db_err)?;
                        by_hash.insert(&new_hash.0, (ws, id)).map_err(db_err)?;
                        record.hash = new_hash;
                        record.hash_scheme = HashScheme::KeyedBlake3;
                        records
                            .insert((ws, id), stored_json(&record)?.as_bytes())
                            .map_err(db_err)?;
                    }
                }
                record
            };
            // Usage lives in `usage_v1` under the same (workspace, id): it carries over as is.
            if let Some(u) = txn
                .open_table(USAGE)
                .map_err(db_err)?
                .get((ws, id))
                .map_err(db_err)?
            {
                apply_usage(&mut record, u.value());
            }
            txn.commit().map_err(db_err)?;
            Ok(record)
        })
        .await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let json = serde_json::to_vec(entry)
            .map_err(|_| StoreError::Corrupt("audit entry cannot be encoded".into()))?;
        let (id, ms, ws) = (
            entry.id.clone(),
            unix_ms(entry.time),
            entry.workspace.clone(),
        );
        let max = u64::try_from(self.audit_max).unwrap_or(u64::MAX);
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut global = txn.open_table(AUDIT).map_err(db_err)?;
                global
                    .insert((ms, id.as_str()), json.as_slice())
                    .map_err(db_err)?;
                // Keys sort oldest first, so the front is what a full log gives up.
                while global.len().map_err(db_err)? > max {
                    global.pop_first().map_err(db_err)?;
                }
                if let Some(ws) = ws.as_deref() {
                    let mut log = txn.open_table(AUDIT_WS).map_err(db_err)?;
                    let added = log
                        .insert((ws, ms, id.as_str()), json.as_slice())
                        .map_err(db_err)?
                        .is_none();
                    let mut lens = txn.open_table(AUDIT_WS_LEN).map_err(db_err)?;
                    let mut len = lens.get(ws).map_err(db_err)?.map_or(0, |g| g.value());
                    len += u64::from(added);
                    if len > max {
                        let excess = usize::try_from(len - max).unwrap_or(usize::MAX);
                        // Lazy: only the entries read from the iterator are removed.
                        let oldest = log
                            .extract_from_if((ws, i64::MIN, "")..(ws, i64::MAX, ""), |_, _| true)
                            .map_err(db_err)?;
                        for removed in oldest.take(excess) {
                            removed.map_err(db_err)?;
                            len -= 1;
                        }
                    }
                    lens.insert(ws, len).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn list_audit(
        &self,
        workspace: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<AuditPage, StoreError> {
        let after = cursor
            .map(parse_cursor)
            .transpose()?
            .map(|(ms, id)| (ms, id.to_owned()));
        let limit = limit.clamp(1, AUDIT_MAX_ENTRIES);
        let ws = workspace.map(str::to_owned);
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            // One more than asked: if it exists, a next page is worth asking for.
            let mut found: Vec<(i64, String, Vec<u8>)> = Vec::with_capacity(limit + 1);
            match ws.as_deref() {
                None => {
                    let log = txn.open_table(AUDIT).map_err(db_err)?;
                    let upper = match &after {
                        Some((ms, id)) => Bound::Excluded((*ms, id.as_str())),
                        None => Bound::Unbounded,
                    };
                    for item in log
                        .range((Bound::Unbounded, upper))
                        .map_err(db_err)?
                        .rev()
                        .take(limit + 1)
                    {
                        let (key, value) = item.map_err(db_err)?;
                        let (ms, id) = key.value();
                        found.push((ms, id.to_owned(), value.value().to_vec()));
                    }
                }
                Some(ws) => {
                    let log = txn.open_table(AUDIT_WS).map_err(db_err)?;
                    let upper = match &after {
                        Some((ms, id)) => Bound::Excluded((ws, *ms, id.as_str())),
                        None => Bound::Excluded((ws, i64::MAX, "")),
                    };
                    let lower = Bound::Included((ws, i64::MIN, ""));
                    for item in log
                        .range((lower, upper))
                        .map_err(db_err)?
                        .rev()
                        .take(limit + 1)
                    {
                        let (key, value) = item.map_err(db_err)?;
                        let (_, ms, id) = key.value();
                        found.push((ms, id.to_owned(), value.value().to_vec()));
                    }
                }
            }
            let next_cursor = (found.len() > limit)
                .then(|| found.get(limit - 1).map(|(ms, id, _)| cursor_at(*ms, id)))
                .flatten();
            let entries = found
                .iter()
                .take(limit)
                .map(|(_, _, json)| decode_audit(json))
                .collect::<Result<_, _>>()?;
            Ok(AuditPage {
                entries,
                next_cursor,
            })
        })
        .await
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
        let ws = workspace.to_owned();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let active = txn.open_table(ACTIVE).map_err(db_err)?;
            let now = now.unix_timestamp_nanos();
            let ws = ws.as_str();
            let mut live = 0u32;
            // The same test as `prune_and_count_active`, without the pruning (a read).
            for item in active.range((ws, "")..=(ws, ID_MAX)).map_err(db_err)? {
                let (_, expires) = item.map_err(db_err)?;
                if expires.value() > now {
                    live = live.saturating_add(1);
                }
            }
            Ok(live)
        })
        .await
    }
}

/// Where keys of `scheme` are indexed by their secret hash.
/// One key's request-log entries, encoded before the write transaction starts.
struct EncodedLogs {
    workspace: String,
    id: KeyId,
    entries: Vec<Vec<u8>>,
}

impl EncodedLogs {
    fn of(logs: &KeyLogs<'_>) -> Result<EncodedLogs, StoreError> {
        let entries = logs
            .entries
            .iter()
            .map(|e| {
                serde_json::to_vec(e)
                    .map_err(|_| StoreError::Corrupt("request log entry cannot be encoded".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EncodedLogs {
            workspace: logs.workspace.to_owned(),
            id: logs.id.clone(),
            entries,
        })
    }
}

type Records<'t> = redb::Table<'t, (&'static str, &'static str), &'static [u8]>;
type Logs<'t> = redb::Table<'t, (&'static str, &'static str, u64), &'static [u8]>;

/// Adds one key's usage delta inside a write transaction: the count and last use, and its
/// per-day counts from `oldest` (a Julian day) on, the key's older days removed.
fn add_usage_in(
    records: &Records<'_>,
    usage: &mut redb::Table<'_, (&'static str, &'static str), (u64, Option<i64>)>,
    days: &mut redb::Table<'_, (&'static str, &'static str, i32), u64>,
    d: &UsageDelta,
    oldest: i32,
) -> Result<(), StoreError> {
    let key = (d.workspace.as_str(), d.id.as_str());
    // Never start counting for a key that was deleted meanwhile.
    if records.get(key).map_err(db_err)?.is_none() {
        return Ok(());
    }
    let (count, last) = usage
        .get(key)
        .map_err(db_err)?
        .map_or((0, None), |g| g.value());
    let seen = unix_ms(d.last_used_at);
    let last = Some(last.map_or(seen, |l| l.max(seen)));
    usage
        .insert(key, (count.saturating_add(d.count), last))
        .map_err(db_err)?;
    let (ws, id) = key;
    for &(day, n) in &d.days {
        let day = day.to_julian_day();
        if day < oldest {
            continue;
        }
        let was = days
            .get((ws, id, day))
            .map_err(db_err)?
            .map_or(0, |g| g.value());
        days.insert((ws, id, day), was.saturating_add(n))
            .map_err(db_err)?;
    }
    days.retain_in((ws, id, i32::MIN)..(ws, id, oldest), |_, _| false)
        .map_err(db_err)?;
    Ok(())
}

/// Appends one key's request-log entries inside a write transaction and trims its log to the
/// newest `keep`.
fn append_logs_in(
    records: &Records<'_>,
    logs: &mut Logs<'_>,
    k: &EncodedLogs,
    keep: u64,
) -> Result<(), StoreError> {
    let (ws, id) = (k.workspace.as_str(), k.id.as_str());
    // Logs of a deleted key would never be read or removed again.
    if records.get((ws, id)).map_err(db_err)?.is_none() {
        return Ok(());
    }
    let all = (ws, id, 0)..=(ws, id, u64::MAX);
    // Sequence numbers are contiguous: appends take the next one and trimming only removes the
    // oldest, so first and last give the length.
    let bounds = |logs: &Logs<'_>| {
        let mut range = logs.range(all.clone()).map_err(db_err)?;
        let first = range.next().transpose().map_err(db_err)?;
        let last = range.next_back().transpose().map_err(db_err)?;
        let first = first.map(|(k, _)| k.value().2);
        let last = last.map(|(k, _)| k.value().2).or(first);
        Ok::<_, StoreError>(first.zip(last))
    };
    let next = bounds(logs)?.map_or(0, |(_, last)| last + 1);
    for (seq, entry) in (next..).zip(&k.entries) {
        logs.insert((ws, id, seq), entry.as_slice())
            .map_err(db_err)?;
    }
    if let Some((first, last)) = bounds(logs)? {
        let len = last - first + 1;
        if len > keep {
            let cut = first + (len - keep);
            logs.retain_in((ws, id, first)..(ws, id, cut), |_, _| false)
                .map_err(db_err)?;
        }
    }
    Ok(())
}

fn hash_index(scheme: HashScheme) -> HashIndex {
    match scheme {
        HashScheme::KeyedBlake3 => BY_HASH,
        HashScheme::Sha256 => BY_SHA256,
    }
}

/// Active keys of `ws` at `now`, dropping the entries of keys that have expired since.
fn prune_and_count_active(
    active: &mut redb::Table<(&str, &str), i128>,
    ws: &str,
    now: OffsetDateTime,
) -> Result<u64, StoreError> {
    let now = now.unix_timestamp_nanos();
    let mut live = 0;
    // Mirrors `KeyRecord::status_at`: a key whose expiry is at or before `now` is expired.
    active
        .retain_in((ws, "")..=(ws, ID_MAX), |_, expires| {
            let keep = expires > now;
            live += u64::from(keep);
            keep
        })
        .map_err(db_err)?;
    Ok(live)
}

fn read_record(
    txn: &redb::ReadTransaction,
    ws: &str,
    id: &str,
) -> Result<Option<KeyRecord>, StoreError> {
    let records = txn.open_table(RECORDS).map_err(db_err)?;
    let Some(bytes) = records.get((ws, id)).map_err(db_err)? else {
        return Ok(None);
    };
    let mut record = decode_record(bytes.value(), id)?;
    let usage = txn.open_table(USAGE).map_err(db_err)?;
    if let Some(u) = usage.get((ws, id)).map_err(db_err)? {
        apply_usage(&mut record, u.value());
    }
    Ok(Some(record))
}

fn apply_usage(record: &mut KeyRecord, (count, last_ms): (u64, Option<i64>)) {
    record.usage_count = count;
    record.last_used_at = last_ms.and_then(from_unix_ms);
}

fn decode_record(bytes: &[u8], id: &str) -> Result<KeyRecord, StoreError> {
    // Only the position: serde's message could quote a stored value.
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::Corrupt(format!(
            "record of {id}: undecodable (column {})",
            e.column()
        ))
    })
}

fn decode_audit(bytes: &[u8]) -> Result<AuditEntry, StoreError> {
    // Only the position: serde's message could quote a stored value.
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::Corrupt(format!("audit entry: undecodable (column {})", e.column()))
    })
}

fn expiry_ns(record: &KeyRecord) -> i128 {
    record
        .expires_at
        .map_or(NEVER, OffsetDateTime::unix_timestamp_nanos)
}

fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
            "{} is already open (another keygate process?)",
            path.display()
        )),
        other => match db_err(other) {
            StoreError::Unavailable(m) => {
                StoreError::Unavailable(format!("{}: {m}", path.display()))
            }
            err => err,
        },
    }
}

/// redb's messages name tables, types and sizes, never stored values.
fn db_err(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(m) => StoreError::Corrupt(format!("embedded store file: {m}")),
        other => StoreError::Unavailable(format!("embedded store: {other}")),
    }
}
