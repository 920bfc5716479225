//! Usage in the embedded store: counts and per-day counts (`usage_v1`, `usage_days_v1`), request
//! logs (`logs_v1`) and quota counts (`quota_v1`). A usage flush, every key's counts and logs, is
//! one write transaction (one commit and fsync, however many keys).

use redb::ReadableTable;
use time::{Date, OffsetDateTime};

use super::{EmbeddedStore, LOGS, QUOTA, RECORDS, USAGE, USAGE_DAYS, db_err};
use crate::keys::KeyId;
use crate::store::{
    KeyLogs, QuotaCount, QuotaSpend, RequestLogEntry, StoreError, UsageDelta, encoded_log_entries,
    oldest_usage_day, unix_ms,
};

impl EmbeddedStore {
    /// [`KeyStore::write_usage`].
    pub(super) async fn write_usage_once(
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

    /// [`KeyStore::request_logs`].
    pub(super) async fn read_request_logs(
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

    /// [`KeyStore::daily_usage`].
    pub(super) async fn read_daily_usage(
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

    /// [`KeyStore::consume_quota`].
    pub(super) async fn spend_quota(
        &self,
        spends: &[QuotaSpend],
    ) -> Result<Vec<QuotaCount>, StoreError> {
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
}

/// One key's request-log entries, encoded before the write transaction starts.
struct EncodedLogs {
    workspace: String,
    id: KeyId,
    entries: Vec<Vec<u8>>,
}

impl EncodedLogs {
    fn of(logs: &KeyLogs<'_>) -> Result<EncodedLogs, StoreError> {
        let entries = encoded_log_entries(logs.entries)?
            .into_iter()
            .map(String::into_bytes)
            .collect();
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
