//! Stored workspaces in Redis: `P{ws:<name>}:meta` (on the slot of the workspace's key index,
//! so that `CREATE_INDEX` reads the plan in the step that counts and inserts) and the
//! `P{workspaces}` name list. See the key layout in [`super`].

use time::OffsetDateTime;

use super::scripts::SCRIPTS;
use super::{RedisStore, StoreError};
use crate::store::unix_ms;
use crate::workspaces::WorkspaceRecord;

impl RedisStore {
    /// `P{workspaces}`: the names of stored workspaces.
    fn workspace_list_key(&self) -> String {
        format!("{}{{workspaces}}", self.prefix)
    }

    pub(super) async fn workspace(
        &self,
        name: &str,
    ) -> Result<Option<WorkspaceRecord>, StoreError> {
        let json: Option<String> = self
            .retried(
                redis::cmd("HGET")
                    .arg(self.workspace_keys(name).meta)
                    .arg("rec"),
            )
            .await?;
        json.map(|j| decode(&j, name)).transpose()
    }

    /// Stored workspaces after `after`, by name: full pages unless the list ends, skipping
    /// names whose record is gone (a deletion or a create cut short between its two steps).
    pub(super) async fn workspaces_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WorkspaceRecord>, StoreError> {
        let mut out = Vec::new();
        let mut from = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        let limit = limit.max(1);
        while out.len() < limit {
            let want = limit - out.len();
            let names: Vec<String> = self
                .retried(
                    redis::cmd("ZRANGEBYLEX")
                        .arg(self.workspace_list_key())
                        .arg(&from)
                        .arg("+")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(want),
                )
                .await?;
            let Some(last) = names.last() else { break };
            from = format!("({last}");
            let mut reads = redis::pipe();
            for name in &names {
                reads
                    .cmd("HGET")
                    .arg(self.workspace_keys(name).meta)
                    .arg("rec");
            }
            let records: Vec<Option<String>> = self.retried(&reads).await?;
            for (name, json) in names.iter().zip(records) {
                if let Some(json) = json {
                    out.push(decode(&json, name)?);
                }
            }
            if names.len() < want {
                break;
            }
        }
        Ok(out)
    }

    pub(super) async fn store_workspace(
        &self,
        record: &WorkspaceRecord,
        expected_updated_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(record).map_err(|_| {
            StoreError::Corrupt(format!(
                "record of workspace {} cannot be encoded",
                record.name
            ))
        })?;
        // Listed first, so that no stored workspace is ever missing from the list.
        let _: i64 = self
            .retried(
                redis::cmd("ZADD")
                    .arg(self.workspace_list_key())
                    .arg(0)
                    .arg(&record.name),
            )
            .await?;
        let settings = &record.settings;
        let outcome: String = self
            .retried(
                SCRIPTS
                    .put_workspace
                    .key(self.workspace_keys(&record.name).meta)
                    .arg(&json)
                    .arg(if settings.api_access { "1" } else { "0" })
                    .arg(settings.max_active_keys)
                    .arg(unix_ms(record.updated_at))
                    .arg(expected_updated_at.map_or_else(String::new, |t| unix_ms(t).to_string())),
            )
            .await?;
        match outcome.as_str() {
            "ok" => Ok(()),
            "conflict" => Err(StoreError::Conflict),
            _ => Err(StoreError::Corrupt("unexpected reply from redis".into())),
        }
    }

    pub(super) async fn remove_workspace(
        &self,
        name: &str,
    ) -> Result<Option<WorkspaceRecord>, StoreError> {
        let keys = self.workspace_keys(name);
        let reply: Vec<String> = self
            .retried(SCRIPTS.delete_workspace.key(&keys.meta).key(&keys.keys))
            .await?;
        let removed = match reply.first().map(String::as_str) {
            Some("ok") => match reply.get(1) {
                Some(json) => Some(decode(json, name)?),
                None => return Err(StoreError::Corrupt("unexpected reply from redis".into())),
            },
            Some("none") => None,
            Some("not_empty") => {
                let held = reply.get(1).and_then(|n| n.parse().ok()).unwrap_or(1);
                return Err(StoreError::WorkspaceNotEmpty(held));
            }
            _ => return Err(StoreError::Corrupt("unexpected reply from redis".into())),
        };
        // After the record: a failure here leaves a listed name without a record, skipped.
        let _: i64 = self
            .retried(redis::cmd("ZREM").arg(self.workspace_list_key()).arg(name))
            .await?;
        Ok(removed)
    }
}

fn decode(json: &str, name: &str) -> Result<WorkspaceRecord, StoreError> {
    serde_json::from_str(json)
        .map_err(|_| StoreError::Corrupt(format!("unreadable record of workspace {name}")))
}
