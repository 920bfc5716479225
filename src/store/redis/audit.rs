//! The audit logs in Redis: each workspace's (`P{ws:<workspace>}:audit`, `…:audit:entries`) and
//! the global one (`P{audit}`, `P{audit}:entries`). An entry goes to both in one pipeline (two
//! slots, so two scripts, not one transaction). See the key layout in [`super`].

use super::scripts::{APPEND_AUDIT, SCRIPTS};
use super::{RedisStore, parse_triples};
use crate::store::{
    AUDIT_MAX_ENTRIES, AuditEntry, AuditPage, StoreError, cursor_at, parse_cursor, unix_ms,
};

impl RedisStore {
    /// [`KeyStore::append_audit`](crate::store::KeyStore::append_audit).
    pub(super) async fn push_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let json = serde_json::to_string(entry)
            .map_err(|_| StoreError::Corrupt("audit entry cannot be encoded".into()))?;
        let ms = unix_ms(entry.time);
        let mut pipe = redis::pipe();
        let logs = std::iter::once(None).chain(entry.workspace.as_deref().map(Some));
        for ws in logs {
            let (log, entries) = self.audit_keys(ws);
            pipe.cmd("EVAL")
                .arg(APPEND_AUDIT)
                .arg(2)
                .arg(log)
                .arg(entries)
                .arg(&entry.id)
                .arg(ms)
                .arg(&json)
                .arg(self.audit_max)
                .ignore();
        }
        // The same entry appended twice is kept once, so a lost connection is retried.
        self.retried(&pipe).await
    }

    /// [`KeyStore::list_audit`](crate::store::KeyStore::list_audit).
    pub(super) async fn audit_page(
        &self,
        workspace: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<AuditPage, StoreError> {
        let (score, after) = match cursor {
            Some(cursor) => {
                let (ms, id) = parse_cursor(cursor)?;
                (ms.to_string(), id)
            }
            None => (String::new(), ""),
        };
        let limit = limit.clamp(1, AUDIT_MAX_ENTRIES);
        let (log, entries) = self.audit_keys(workspace);
        // One more than asked: if it exists, a next page is worth asking for.
        let flat: Vec<Option<String>> = self
            .retried(
                SCRIPTS
                    .page
                    .key(&log)
                    .key(&entries)
                    .arg(score)
                    .arg(after)
                    .arg(limit + 1),
            )
            .await?;
        let page = parse_triples(&flat)?;
        let next_cursor = (page.len() > limit)
            .then(|| page.get(limit - 1).map(|(ms, id, _)| cursor_at(*ms, id)))
            .flatten();
        let entries = page
            .iter()
            .take(limit)
            // An id without its entry cannot be written by APPEND_AUDIT; skip rather than fail.
            .filter_map(|(_, _, json)| json.as_deref())
            .map(decode_audit)
            .collect::<Result<_, _>>()?;
        Ok(AuditPage {
            entries,
            next_cursor,
        })
    }
}

fn decode_audit(json: &str) -> Result<AuditEntry, StoreError> {
    // Only the position: serde's message could quote a stored value.
    serde_json::from_str(json).map_err(|e| {
        StoreError::Corrupt(format!("undecodable audit entry (column {})", e.column()))
    })
}
