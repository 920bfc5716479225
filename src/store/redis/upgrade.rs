//! The upgrade of a key imported with a SHA-256 digest to the keyed BLAKE3 hash, on its first
//! use: moving the record from `P{s:<old>}` to `P{h:<new>}`, and the writes to a record that
//! an upgrade has marked (see the key layout in [`super`]).
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

use std::collections::HashMap;

use time::OffsetDateTime;

use super::index::IndexEntry;
use super::keys::decode_record_hash;
use super::scripts::SCRIPTS;
use super::{FOLLOW_ATTEMPTS, RedisStore};
use crate::keys::{HashScheme, KeyId, KeyRecord, SecretHash};
use crate::store::{StoreError, stored_json, unix_ms};

impl RedisStore {
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

    /// [`KeyStore::get_by_sha256`](crate::store::KeyStore::get_by_sha256).
    pub(super) async fn key_by_sha256(
        &self,
        digest: &SecretHash,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let fields = self.fields(&self.sha256_key(&digest.to_hex())).await?;
        decode_record_hash(&fields)
    }

    /// Upgrades the SHA-256 import `id` to the keyed hash `new_hash`. The steps, and what a
    /// crash after each leaves, are in the module docs.
    pub(super) async fn upgrade_key(
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

    /// `UPDATE_RECORD` on the record `entry` names. A SHA-256 record that an upgrade has marked
    /// is written after its copy (`CAS_COPY`, the key from the mark on), so that no revoke can
    /// land on the record while a copy answering by the new hash misses it: the copy is written
    /// first, or written later from a read that sees the revoke. Returns `UPDATE_RECORD`'s
    /// reply, or `stale` / `revoked` / `corrupt` from the copy.
    pub(super) async fn write_record(
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
    pub(super) async fn marked_copy(
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

/// A flat `HGETALL` reply as a map.
fn pairs(flat: Vec<String>) -> HashMap<String, String> {
    let mut out = HashMap::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        out.insert(k, v);
    }
    out
}

/// A SHA-256 import's record as it reads once upgraded to the keyed hash `new_hex`.
pub(super) fn upgraded(mut record: KeyRecord, new_hex: &str) -> Result<KeyRecord, StoreError> {
    record.hash = SecretHash::from_hex(new_hex)
        .ok_or_else(|| StoreError::Corrupt("unreadable hash in a workspace key index".into()))?;
    record.hash_scheme = HashScheme::KeyedBlake3;
    Ok(record)
}
