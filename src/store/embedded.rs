//! The embedded key index: one redb file for a single gateway node. Owns the file layout below
//! and nothing else; callers reach it through [`KeyStore`].
//!
//! redb is synchronous, so every call runs in `tokio::task::spawn_blocking` and is bounded by
//! [`CALL_TIMEOUT`]. redb admits one write transaction at a time, which is what makes the
//! `max_active` check in [`KeyStore::create`] exact: the count and the insert share one write
//! transaction. Usage, request logs and quotas are in [`usage`], the audit logs in [`audit`],
//! stored workspaces in [`workspaces`], the webhook outbox in [`outbox`].
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

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use time::{Date, OffsetDateTime};

mod audit;
mod outbox;
mod usage;
mod workspaces;

use super::{
    AUDIT_MAX_ENTRIES, Admission, AuditEntry, AuditPage, KeyLogs, KeyPage, KeyStore, ListQuery,
    QuotaCount, QuotaSpend, RequestLogEntry, StoreError, UsageDelta, UsageWriteError, cursor_at,
    from_unix_ms, parse_key_cursor, stored_json, unix_ms,
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
            outbox::create_tables(&txn)?;
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
        self.write_usage_once(deltas, &[], 0).await
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
        self.write_usage_once(&[], &[logs], max_per_key).await
    }

    async fn write_usage(
        &self,
        deltas: &[UsageDelta],
        logs: &[KeyLogs<'_>],
        max_per_key: usize,
    ) -> Result<(), UsageWriteError> {
        // One transaction: on failure nothing was written, counts included.
        Ok(self.write_usage_once(deltas, logs, max_per_key).await?)
    }

    async fn request_logs(
        &self,
        workspace: &str,
        id: &KeyId,
        limit: usize,
    ) -> Result<Vec<RequestLogEntry>, StoreError> {
        self.read_request_logs(workspace, id, limit).await
    }

    async fn daily_usage(
        &self,
        workspace: &str,
        id: &KeyId,
        first: Date,
        last: Date,
    ) -> Result<Vec<(Date, u64)>, StoreError> {
        self.read_daily_usage(workspace, id, first, last).await
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
        self.spend_quota(spends).await
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
        self.push_audit(entry).await
    }

    async fn list_audit(
        &self,
        workspace: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<AuditPage, StoreError> {
        self.read_audit(workspace, limit, cursor).await
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
