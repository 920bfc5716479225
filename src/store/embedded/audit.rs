//! The audit logs in the embedded store: the global log (`audit_v1`) and each workspace's
//! (`audit_ws_v1`, with its length in `audit_ws_len_v1`), trimmed to the newest entries.

use std::ops::Bound;

use redb::{ReadableTable, ReadableTableMetadata};

use super::{AUDIT, AUDIT_WS, AUDIT_WS_LEN, EmbeddedStore, db_err};
use crate::store::{
    AUDIT_MAX_ENTRIES, AuditEntry, AuditPage, StoreError, cursor_at, parse_cursor, unix_ms,
};

impl EmbeddedStore {
    /// [`KeyStore::append_audit`].
    pub(super) async fn push_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
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

    /// [`KeyStore::list_audit`].
    pub(super) async fn read_audit(
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
}

fn decode_audit(bytes: &[u8]) -> Result<AuditEntry, StoreError> {
    // Only the position: serde's message could quote a stored value.
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::Corrupt(format!("audit entry: undecodable (column {})", e.column()))
    })
}
