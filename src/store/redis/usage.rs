//! Usage in Redis: the usage count and last use of a key (`uc`, `lu` in its record hash), its
//! per-day usage (`P{ws:<workspace>}:days:<id>`), its request log (`…:logs:<id>`), and quota
//! counts (`P{q:<key id>}:<period start>`). See the key layout in [`super`].

use std::collections::{BTreeMap, HashMap};

use time::format_description::BorrowedFormatItem;
use time::{Date, OffsetDateTime};

use super::RedisStore;
use super::index::IndexEntry;
use super::scripts::{ADD_DAYS, ADD_USAGE, APPEND_LOGS, CONSUME_QUOTA, SCRIPTS};
use crate::keys::KeyId;
use crate::store::{
    KeyLogs, QuotaCount, QuotaSpend, RequestLogEntry, StoreError, USAGE_DAYS_KEPT, UsageDelta,
    encoded_log_entries, oldest_usage_day, unix_ms,
};

/// A field of `P{ws:…}:days:<id>`: the UTC day as `YYYY-MM-DD`.
const DAY_FIELD: &[BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

impl RedisStore {
    /// [`KeyStore::add_usage`](crate::store::KeyStore::add_usage), and the counts of a
    /// `write_usage`: where each key's record is (one round trip), then every count and per-day
    /// split in one pipelined round trip, whatever the number of keys.
    pub(super) async fn count_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        // Several deltas of one key become one: counts add up, the latest use wins.
        let mut merged: BTreeMap<(&str, &KeyId), (u64, i64)> = BTreeMap::new();
        let mut days: BTreeMap<(&str, &KeyId), BTreeMap<Date, u64>> = BTreeMap::new();
        for d in deltas {
            let entry = merged
                .entry((d.workspace.as_str(), &d.id))
                .or_insert((0, i64::MIN));
            entry.0 = entry.0.saturating_add(d.count);
            entry.1 = entry.1.max(unix_ms(d.last_used_at));
            let key_days = days.entry((d.workspace.as_str(), &d.id)).or_default();
            for &(day, n) in &d.days {
                let count = key_days.entry(day).or_insert(0);
                *count = count.saturating_add(n);
            }
        }
        let oldest = day_field(oldest_usage_day(OffsetDateTime::now_utc().date()));
        let days_expire = (u64::from(USAGE_DAYS_KEPT) + 1) * 86_400;
        let mut pending: Vec<_> = merged.into_iter().collect();
        let mut conn = self.conn.clone();
        // A second pass only for SHA-256 records an upgrade moved between the two round trips.
        for pass in 0..2 {
            if pending.is_empty() {
                return Ok(());
            }
            // Round trip 1: where each key's record is, one HMGET per workspace.
            let mut by_workspace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for (i, ((ws, _), _)) in pending.iter().enumerate() {
                by_workspace.entry(ws).or_default().push(i);
            }
            let mut pipe = redis::pipe();
            for (ws, items) in &by_workspace {
                pipe.cmd("HMGET").arg(self.workspace_keys(ws).keys);
                for &i in items {
                    pipe.arg(pending[i].0.1.as_str());
                }
            }
            let values: Vec<Vec<Option<String>>> = self.retried(&pipe).await?;
            // Round trip 2: the increments, skipping keys that are gone.
            let mut pipe = redis::pipe();
            let mut sent = Vec::new();
            for (items, values) in by_workspace.values().zip(&values) {
                for (&i, value) in items.iter().zip(values) {
                    let Some(entry) = value.as_deref().map(IndexEntry::parse).transpose()? else {
                        continue;
                    };
                    let ((ws, id), (count, ms)) = pending[i];
                    pipe.cmd("EVAL")
                        .arg(ADD_USAGE)
                        .arg(1)
                        .arg(self.record_key_of(&entry))
                        .arg(clamp_count(count))
                        .arg(ms);
                    sent.push((i, matches!(entry, IndexEntry::Keyed(_))));
                    // The per-day split lives on the workspace's slot, so it is its own script
                    // in the same round trip; the second pass only re-aims `uc` at a moved record.
                    if let Some(key_days) =
                        days.get(&(ws, id)).filter(|d| pass == 0 && !d.is_empty())
                    {
                        pipe.cmd("EVAL")
                            .arg(ADD_DAYS)
                            .arg(2)
                            .arg(self.workspace_keys(ws).keys)
                            .arg(self.days_key(ws, id))
                            .arg(id.as_str())
                            .arg(&oldest)
                            .arg(days_expire);
                        for (day, n) in key_days {
                            pipe.arg(day_field(*day)).arg(clamp_count(*n));
                        }
                        pipe.ignore();
                    }
                }
            }
            if pipe.is_empty() {
                return Ok(());
            }
            let applied: Vec<i64> = self.bounded(pipe.query_async(&mut conn)).await?;
            pending = sent
                .iter()
                .zip(&applied)
                .filter(|((_, keyed), applied)| !keyed && **applied == 0)
                .map(|((i, _), _)| pending[*i])
                .collect();
        }
        Ok(())
    }

    /// [`KeyStore::append_request_logs`](crate::store::KeyStore::append_request_logs), and the
    /// logs of a `write_usage`: every key's entries in one pipelined round trip, each key's
    /// script trimming its log to `max_per_key`. Sent apart from the counts, so that a failure
    /// here never has them retried (and added twice).
    pub(super) async fn push_logs(
        &self,
        logs: &[KeyLogs<'_>],
        max_per_key: usize,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for k in logs.iter().filter(|k| !k.entries.is_empty()) {
            // The script checks the key still exists: the log is on the workspace's slot, so
            // no record lookup is needed.
            pipe.cmd("EVAL")
                .arg(APPEND_LOGS)
                .arg(2)
                .arg(self.workspace_keys(k.workspace).keys)
                .arg(self.logs_key(k.workspace, k.id))
                .arg(k.id.as_str())
                .arg(max_per_key)
                .arg(encoded_log_entries(k.entries)?)
                .ignore();
        }
        if pipe.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut conn)).await
    }

    /// [`KeyStore::request_logs`](crate::store::KeyStore::request_logs).
    pub(super) async fn read_request_logs(
        &self,
        workspace: &str,
        id: &KeyId,
        limit: usize,
    ) -> Result<Vec<RequestLogEntry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stop = i64::try_from(limit - 1).unwrap_or(i64::MAX);
        let raw: Vec<String> = self
            .retried(
                redis::cmd("LRANGE")
                    .arg(self.logs_key(workspace, id))
                    .arg(0)
                    .arg(stop),
            )
            .await?;
        raw.iter()
            .map(|json| {
                serde_json::from_str(json).map_err(|e| {
                    StoreError::Corrupt(format!(
                        "request log of {id}: undecodable entry (column {})",
                        e.column()
                    ))
                })
            })
            .collect()
    }

    /// [`KeyStore::daily_usage`](crate::store::KeyStore::daily_usage).
    pub(super) async fn usage_by_day(
        &self,
        workspace: &str,
        id: &KeyId,
        first: Date,
        last: Date,
    ) -> Result<Vec<(Date, u64)>, StoreError> {
        let stored: HashMap<String, u64> = self
            .retried(redis::cmd("HGETALL").arg(self.days_key(workspace, id)))
            .await?;
        let mut days = stored
            .into_iter()
            .map(|(field, n)| {
                Date::parse(&field, DAY_FIELD)
                    .map(|day| (day, n))
                    .map_err(|_| StoreError::Corrupt(format!("per-day usage of {id}: bad day")))
            })
            .filter(|d| {
                d.as_ref()
                    .map_or(true, |(day, _)| (first..=last).contains(day))
            })
            .collect::<Result<Vec<_>, _>>()?;
        days.sort_unstable();
        Ok(days)
    }

    /// [`KeyStore::consume_quota`](crate::store::KeyStore::consume_quota).
    pub(super) async fn spend_quota(
        &self,
        spends: &[QuotaSpend],
    ) -> Result<Vec<QuotaCount>, StoreError> {
        let expiry = |s: &QuotaSpend| s.expires_at.map(|t| t.to_string()).unwrap_or_default();
        let mut conn = self.conn.clone();
        let replies: Vec<(i64, i64)> = match spends {
            [] => return Ok(Vec::new()),
            // The request path: one spend, one EVALSHA.
            [s] => vec![
                self.bounded(
                    SCRIPTS
                        .consume_quota
                        .key(self.quota_key(&s.id, s.period_start))
                        .arg(s.n)
                        .arg(s.limit)
                        .arg(expiry(s))
                        .invoke_async(&mut conn),
                )
                .await?,
            ],
            // A batch of counts written at once: one pipeline, each entry its own script (the
            // counts are on different slots).
            _ => {
                let mut pipe = redis::pipe();
                for s in spends {
                    pipe.cmd("EVAL")
                        .arg(CONSUME_QUOTA)
                        .arg(1)
                        .arg(self.quota_key(&s.id, s.period_start))
                        .arg(s.n)
                        .arg(s.limit)
                        .arg(expiry(s));
                }
                self.bounded(pipe.query_async(&mut conn)).await?
            }
        };
        Ok(replies
            .into_iter()
            .map(|(used, spent)| QuotaCount {
                used: u64::try_from(used).unwrap_or(0),
                spent: spent == 1,
            })
            .collect())
    }
}

fn day_field(day: Date) -> String {
    day.format(DAY_FIELD).expect("a date formats as YYYY-MM-DD")
}

/// HINCRBY takes a signed 64-bit number.
pub(super) fn clamp_count(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}
