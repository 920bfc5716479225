//! The webhook outbox in the embedded store ([`crate::store::outbox`]): one node serves the
//! file, so a claim is one write transaction and the lease is always this node's.
//!
//! | table | key | value |
//! |---|---|---|
//! | `outbox_v1` | delivery id | `OutboxItem` JSON (its `due_ms` is when it is next due) |
//! | `outbox_once_v1` | marker | unix ms until which it is kept |
//! | `deliveries_v1` | `(time unix ms, sequence)` | `DeliveryAttempt` JSON; the newest [`DELIVERY_LOG_MAX`] |

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{ACTIVE, EmbeddedStore, ID_MAX, db_err};
use crate::keys::KeyId;
use crate::store::StoreError;
use crate::store::outbox::{DELIVERY_LOG_MAX, DeliveryAttempt, OutboxItem, decode, encode};

const OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox_v1");
const ONCE: TableDefinition<&str, i64> = TableDefinition::new("outbox_once_v1");
const DELIVERIES: TableDefinition<(i64, u64), &[u8]> = TableDefinition::new("deliveries_v1");

/// Creates the outbox tables (at open, so that reads never meet a missing table).
pub(super) fn create_tables(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(OUTBOX).map_err(db_err)?;
    txn.open_table(ONCE).map_err(db_err)?;
    txn.open_table(DELIVERIES).map_err(db_err)?;
    Ok(())
}

/// Up to `max` items due at `now_ms`, oldest due first. An entry that does not decode is
/// skipped (and logged) rather than stopping every delivery.
fn due_items(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    now_ms: i64,
    max: usize,
) -> Result<Vec<OutboxItem>, StoreError> {
    let mut due = Vec::new();
    for entry in table.iter().map_err(db_err)? {
        let (_, json) = entry.map_err(db_err)?;
        match decode::<OutboxItem>(json.value()) {
            Ok(item) if item.due_ms <= now_ms => due.push(item),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "webhook outbox entry skipped"),
        }
    }
    due.sort_by_key(|i| i.due_ms);
    due.truncate(max);
    Ok(due)
}

impl EmbeddedStore {
    pub(crate) async fn outbox_add(
        &self,
        items: &[OutboxItem],
        once: Option<(&str, i64)>,
    ) -> Result<bool, StoreError> {
        let encoded: Vec<(String, String)> = items
            .iter()
            .map(|i| Ok((i.id.clone(), encode(i)?)))
            .collect::<Result<_, StoreError>>()?;
        let once = once.map(|(marker, ttl)| (marker.to_owned(), ttl));
        let now = crate::control::now_ms().unix_timestamp_nanos() / 1_000_000;
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                if let Some((marker, ttl)) = &once {
                    let mut markers = txn.open_table(ONCE).map_err(db_err)?;
                    let live = markers
                        .get(marker.as_str())
                        .map_err(db_err)?
                        .is_some_and(|until| until.value() > now);
                    if live {
                        return Ok(false);
                    }
                    // Markers past their time go as new ones come.
                    markers.retain(|_, until| until > now).map_err(db_err)?;
                    markers
                        .insert(marker.as_str(), now.saturating_add(*ttl))
                        .map_err(db_err)?;
                }
                let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
                for (id, json) in &encoded {
                    outbox
                        .insert(id.as_str(), json.as_bytes())
                        .map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    pub(crate) async fn outbox_claim(
        &self,
        now_ms: i64,
        lease_ms: i64,
        max: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        self.run(move |db| {
            // Looked at in a read transaction first: an idle outbox costs no write (no fsync)
            // per poll.
            {
                let read = db.begin_read().map_err(db_err)?;
                if due_items(&read.open_table(OUTBOX).map_err(db_err)?, now_ms, max)?.is_empty() {
                    return Ok(Vec::new());
                }
            }
            let txn = db.begin_write().map_err(db_err)?;
            let claimed = {
                let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
                let claimed = due_items(&outbox, now_ms, max)?;
                for item in &claimed {
                    let mut leased = item.clone();
                    leased.due_ms = now_ms.saturating_add(lease_ms);
                    outbox
                        .insert(item.id.as_str(), encode(&leased)?.as_bytes())
                        .map_err(db_err)?;
                }
                claimed
            };
            txn.commit().map_err(db_err)?;
            Ok(claimed)
        })
        .await
    }

    pub(crate) async fn outbox_settle(
        &self,
        id: &str,
        claimed_until: i64,
        retry: Option<&OutboxItem>,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        let retry = retry.map(encode).transpose()?;
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
                let current: Option<OutboxItem> = match outbox.get(id.as_str()).map_err(db_err)? {
                    Some(json) => Some(decode(json.value())?),
                    None => None,
                };
                // Still this claim's: due at the end of its lease.
                if current.is_none_or(|c| c.due_ms != claimed_until) {
                    return Ok(false);
                }
                match &retry {
                    Some(json) => outbox.insert(id.as_str(), json.as_bytes()).map(drop),
                    None => outbox.remove(id.as_str()).map(drop),
                }
                .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    pub(crate) async fn outbox_len(&self) -> Result<u64, StoreError> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            txn.open_table(OUTBOX)
                .map_err(db_err)?
                .len()
                .map_err(db_err)
        })
        .await
    }

    pub(crate) async fn push_delivery(&self, attempt: &DeliveryAttempt) -> Result<(), StoreError> {
        let json = encode(attempt)?;
        let ms = crate::store::unix_ms(attempt.time);
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut log = txn.open_table(DELIVERIES).map_err(db_err)?;
                // Attempts ending in the same millisecond keep their order.
                let seq = log
                    .range((ms, 0)..=(ms, u64::MAX))
                    .map_err(db_err)?
                    .next_back()
                    .transpose()
                    .map_err(db_err)?
                    .map_or(0, |(k, _)| k.value().1 + 1);
                log.insert((ms, seq), json.as_bytes()).map_err(db_err)?;
                while log.len().map_err(db_err)? > DELIVERY_LOG_MAX as u64 {
                    log.pop_first().map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    pub(crate) async fn deliveries(
        &self,
        limit: usize,
    ) -> Result<Vec<DeliveryAttempt>, StoreError> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let log = txn.open_table(DELIVERIES).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in log.iter().map_err(db_err)?.rev().take(limit) {
                let (_, json) = entry.map_err(db_err)?;
                out.push(decode(json.value())?);
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn expiring_keys(
        &self,
        workspace: &str,
        from_ms: i64,
        to_ms: i64,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<(i64, KeyId)>, StoreError> {
        let ws = workspace.to_owned();
        let (from, to) = (
            i128::from(from_ms) * 1_000_000,
            i128::from(to_ms) * 1_000_000,
        );
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let active = txn.open_table(ACTIVE).map_err(db_err)?;
            // The table is ordered by id: every match is collected, then ordered by expiry.
            let mut found = Vec::new();
            for entry in active
                .range((ws.as_str(), "")..=(ws.as_str(), ID_MAX))
                .map_err(db_err)?
            {
                let (key, expires) = entry.map_err(db_err)?;
                let expires = expires.value();
                if expires > from
                    && expires <= to
                    && let Some(id) = KeyId::parse(key.value().1)
                {
                    let ms = i64::try_from(expires.div_euclid(1_000_000)).unwrap_or(i64::MAX);
                    found.push((ms, id));
                }
            }
            found.sort_by(|a, b| (a.0, a.1.as_str()).cmp(&(b.0, b.1.as_str())));
            Ok(found.into_iter().skip(offset).take(limit).collect())
        })
        .await
    }
}
