//! Key records in Redis: `P{h:<hash hex>}` and `P{s:<sha256 hex>}` (a key by the hash of its
//! secret), and the `P{t:<tag hex>}` claims of imported secrets. Creating, reading, updating and
//! deleting a key, each in the order the module docs of [`super`] give ("Ordering"), keeping the
//! workspace index ([`super::index`]) in step.

use std::collections::HashMap;

use time::OffsetDateTime;

use super::index::{IndexEntry, expiry_score};
use super::scripts::SCRIPTS;
use super::upgrade::upgraded;
use super::usage::clamp_count;
use super::{FOLLOW_ATTEMPTS, RedisStore};
use crate::keys::{KeyId, KeyRecord, KeyStatus, SecretHash};
use crate::store::{Admission, StoreError, from_unix_ms, stored_json, unix_ms};

impl RedisStore {
    /// [`KeyStore::create`](crate::store::KeyStore::create).
    pub(super) async fn create_key(
        &self,
        record: &KeyRecord,
        admission: Admission,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
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

    /// [`KeyStore::get_by_hash`](crate::store::KeyStore::get_by_hash).
    pub(super) async fn key_by_hash(
        &self,
        hash: &SecretHash,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let fields = self.fields(&self.record_key(&hash.to_hex())).await?;
        decode_record_hash(&fields)
    }

    /// A key by id. A SHA-256 record that is gone by the time it is read may have been moved by
    /// an upgrade: then the index is read again.
    pub(super) async fn record_by_id(
        &self,
        ws: &str,
        id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
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

    /// [`KeyStore::update`](crate::store::KeyStore::update).
    pub(super) async fn update_key(
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

    /// [`KeyStore::delete`](crate::store::KeyStore::delete).
    pub(super) async fn delete_key(
        &self,
        workspace: &str,
        id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
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

    /// The fields of a record hash (empty if it does not exist).
    pub(super) async fn fields(&self, key: &str) -> Result<HashMap<String, String>, StoreError> {
        self.retried(redis::cmd("HGETALL").arg(key)).await
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
}

/// A record hash as `HGETALL` returns it; `None` if it has no record.
pub(super) fn decode_record_hash(
    fields: &HashMap<String, String>,
) -> Result<Option<KeyRecord>, StoreError> {
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

/// The value of a `P{t:…}` claim held by `record`.
fn tag_holder(record: &KeyRecord) -> String {
    format!("{} {}", record.id, record.workspace)
}
