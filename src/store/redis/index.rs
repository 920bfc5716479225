//! The key index of each workspace: `P{ws:<workspace>}:keys` (where each key's record is),
//! `…:created` (listing order) and `…:active` (keys counted against `max_active_keys`). Listing
//! and counting keys, and keeping the index in step with the records ([`super::keys`]).

use std::collections::HashMap;

use time::OffsetDateTime;

use super::keys::decode_record_hash;
use super::scripts::SCRIPTS;
use super::{FOLLOW_ATTEMPTS, RedisStore, parse_triples};
use crate::keys::{HashScheme, KeyId, KeyRecord};
use crate::store::{KeyPage, ListQuery, StoreError, cursor_at, parse_key_cursor, unix_ms};

/// Index entries read per round trip while listing.
const LIST_BATCH_MAX: usize = 200;

/// Where a key's record is, as its workspace index (`P{ws:…}:keys`) says. The hex strings are
/// 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum IndexEntry {
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
    pub(super) fn of(record: &KeyRecord) -> IndexEntry {
        let hex = record.hash.to_hex();
        match record.hash_scheme {
            HashScheme::KeyedBlake3 => IndexEntry::Keyed(hex),
            HashScheme::Sha256 => IndexEntry::Sha256(hex),
        }
    }

    pub(super) fn parse(value: &str) -> Result<IndexEntry, StoreError> {
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
    pub(super) fn value(&self) -> String {
        match self {
            IndexEntry::Keyed(hex) => hex.clone(),
            IndexEntry::Sha256(hex) => format!("s:{hex}"),
            IndexEntry::Upgrading { sha256, keyed } => format!("u:{sha256}:{keyed}"),
        }
    }

    /// The scheme and hash hex of the record that counts.
    pub(super) fn stored_hash(&self) -> (HashScheme, &str) {
        match self {
            IndexEntry::Keyed(hex) => (HashScheme::KeyedBlake3, hex),
            IndexEntry::Sha256(hex) | IndexEntry::Upgrading { sha256: hex, .. } => {
                (HashScheme::Sha256, hex)
            }
        }
    }
}

impl RedisStore {
    /// What the workspace index holds for `id`.
    pub(super) async fn index_entry(
        &self,
        ws: &str,
        id: &KeyId,
    ) -> Result<Option<IndexEntry>, StoreError> {
        let keys = self.workspace_keys(ws).keys;
        let value: Option<String> = self
            .retried(redis::cmd("HGET").arg(&keys).arg(id.as_str()))
            .await?;
        value.as_deref().map(IndexEntry::parse).transpose()
    }

    /// [`KeyStore::list`](crate::store::KeyStore::list).
    pub(super) async fn list_keys(
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

    /// [`KeyStore::count_active`](crate::store::KeyStore::count_active): what `CREATE_INDEX`
    /// counts.
    pub(super) async fn active_keys(
        &self,
        workspace: &str,
        now: OffsetDateTime,
    ) -> Result<u32, StoreError> {
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

    /// Brings `created` and `active` in line with `record`, unless the key is gone.
    pub(super) async fn sync_index(&self, record: &KeyRecord) -> Result<(), StoreError> {
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
    pub(super) async fn resync_index(&self, ws: &str, id: &KeyId) -> Result<(), StoreError> {
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

/// `(created ms, id, index entry)` triples of a `SCRIPTS.page` reply over `…:created`.
pub(super) fn parse_page(
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

/// `active` score: `expires_at` in unix ms rounded up, so a key counts as active until its
/// expiry has surely passed (never lets `create` exceed the limit); `+inf` for never.
pub(super) fn expiry_score(record: &KeyRecord) -> String {
    match record.expires_at {
        Some(t) => {
            let ns = t.unix_timestamp_nanos();
            let ms = ns.div_euclid(1_000_000) + i128::from(ns.rem_euclid(1_000_000) != 0);
            ms.to_string()
        }
        None => "+inf".into(),
    }
}
