//! Stored workspaces in the embedded store: the `workspaces_v1` table, and the plan check of
//! [`Admission::Stored`](crate::store::Admission::Stored) that `create` runs in its own write
//! transaction. redb's single writer makes each step atomic with every create.

use redb::{ReadableTable, TableDefinition};
use time::OffsetDateTime;

use super::{EmbeddedStore, ID_MAX, RECORDS, db_err};
use crate::store::{StoreError, unix_ms};
use crate::workspaces::WorkspaceRecord;

/// Workspace name → `WorkspaceRecord` JSON.
pub(super) const WORKSPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("workspaces_v1");

fn decode(bytes: &[u8], name: &str) -> Result<WorkspaceRecord, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|_| StoreError::Corrupt(format!("unreadable record of workspace {name}")))
}

fn encode(record: &WorkspaceRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|_| {
        StoreError::Corrupt(format!(
            "record of workspace {} cannot be encoded",
            record.name
        ))
    })
}

/// The `max_active_keys` of stored workspace `ws`, read inside a create's write transaction.
pub(super) fn admit(txn: &redb::WriteTransaction, ws: &str) -> Result<u32, StoreError> {
    let table = txn.open_table(WORKSPACES).map_err(db_err)?;
    let record = match table.get(ws).map_err(db_err)? {
        Some(bytes) => decode(bytes.value(), ws)?,
        None => return Err(StoreError::NoWorkspace),
    };
    if !record.settings.api_access {
        return Err(StoreError::NoApiAccess);
    }
    Ok(record.settings.max_active_keys)
}

impl EmbeddedStore {
    pub(super) async fn workspace(
        &self,
        name: &str,
    ) -> Result<Option<WorkspaceRecord>, StoreError> {
        let name = name.to_owned();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = match txn.open_table(WORKSPACES) {
                Ok(t) => t,
                // Never written: a file from before stored workspaces.
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(db_err(e)),
            };
            match table.get(name.as_str()).map_err(db_err)? {
                Some(bytes) => Ok(Some(decode(bytes.value(), &name)?)),
                None => Ok(None),
            }
        })
        .await
    }

    pub(super) async fn workspaces_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WorkspaceRecord>, StoreError> {
        let after = after.map(str::to_owned);
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = match txn.open_table(WORKSPACES) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(db_err(e)),
            };
            let range = match after.as_deref() {
                Some(a) => {
                    table.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                }
                None => table.range::<&str>(..),
            }
            .map_err(db_err)?;
            let mut out = Vec::new();
            for item in range.take(limit) {
                let (name, bytes) = item.map_err(db_err)?;
                out.push(decode(bytes.value(), name.value())?);
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn store_workspace(
        &self,
        record: &WorkspaceRecord,
        expected_updated_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        let json = encode(record)?;
        let name = record.name.clone();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(WORKSPACES).map_err(db_err)?;
                let stored = match table.get(name.as_str()).map_err(db_err)? {
                    Some(bytes) => Some((bytes.value().to_vec(), decode(bytes.value(), &name)?)),
                    None => None,
                };
                let allowed = match (&stored, expected_updated_at) {
                    // The resend of a write that landed.
                    (Some((bytes, _)), _) if *bytes == json => return Ok(()),
                    (None, None) => true,
                    (Some((_, now)), Some(expected)) => {
                        unix_ms(now.updated_at) == unix_ms(expected)
                    }
                    _ => false,
                };
                if !allowed {
                    return Err(StoreError::Conflict);
                }
                table
                    .insert(name.as_str(), json.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    pub(super) async fn remove_workspace(
        &self,
        name: &str,
    ) -> Result<Option<WorkspaceRecord>, StoreError> {
        let name = name.to_owned();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let removed = {
                let mut table = txn.open_table(WORKSPACES).map_err(db_err)?;
                let stored = match table.get(name.as_str()).map_err(db_err)? {
                    Some(bytes) => decode(bytes.value(), &name)?,
                    None => return Ok(None),
                };
                let records = txn.open_table(RECORDS).map_err(db_err)?;
                let ws = name.as_str();
                let held = records
                    .range((ws, "")..=(ws, ID_MAX))
                    .map_err(db_err)?
                    .count();
                if held > 0 {
                    return Err(StoreError::WorkspaceNotEmpty(held as u64));
                }
                table.remove(name.as_str()).map_err(db_err)?;
                stored
            };
            txn.commit().map_err(db_err)?;
            Ok(Some(removed))
        })
        .await
    }
}
