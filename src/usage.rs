//! Usage counts (`usage_count`, `last_used_at`) and request logs, kept off the request path.
//!
//! The request path calls [`Recorder::record`], which `try_send`s one small message on a bounded
//! queue and never waits: a full queue (or a stopped flusher) drops the use and counts it in
//! `keygate_usage_dropped_total`. The [`Flusher`] task drains the queue continuously, aggregates
//! per key (a count, split by the UTC day of each use; the latest use; the newest
//! `usage.request_log.max_per_key` log entries) and
//! every `usage.flush_interval` writes the batch, counts and logs of every key, in one
//! [`KeyStore::write_usage`] call (one redb transaction, however many keys). The write runs
//! beside the draining, so a slow store never backs the queue up.
//!
//! **What counts as a use**: a request of a known key that passed every check (route, key status,
//! expiry, IP allowlist, scopes, and the rate limit and quota where configured) and was forwarded,
//! whatever the upstream answered, including 502/504 when it could not be reached: exactly the
//! requests that spend quota. A request refused after its key was recognised (revoked, expired,
//! IP, scope, rate limit, quota) is not a use, but it is logged with its error code, so that a
//! key's owner can see why its requests fail. Public routes carry no key and count nothing.
//!
//! **Store outages**: a failed write keeps what it held and retries on the next tick, so nothing
//! is lost while the store is down. Memory stays bounded: one entry per distinct key (at most
//! `usage.max_pending_keys`; uses of further keys are dropped and counted), at most
//! `max_per_key` log entries per key and [`MAX_BUFFERED_LOG_ENTRIES`] in all.
//!
//! **Shutdown** (after the listeners drained): intake stops (later uses count as
//! `queue_closed`), the queue is drained, and the flusher writes until everything is stored or
//! `shutdown_timeout` has passed, so counts are exact after a clean stop.
//!
//! A store write that times out after the store applied it is retried and counted twice: counts
//! are at least once under an ambiguous failure, never lost.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use time::{Date, OffsetDateTime};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::Config;
use crate::keys::KeyId;
use crate::metrics::{Metrics, UsageDrop, UsageMetrics};
use crate::store::cached::CachedKey;
use crate::store::stats::StoreOp;
use crate::store::{KeyLogs, KeyStore, RequestLogEntry, Store, StoreError, UsageDelta};

/// Request-log entries the flusher buffers across all keys. Past it, a key's new entry replaces
/// its own oldest one (or is dropped if it has none), counted in
/// `keygate_request_log_entries_dropped_total`. Usage counts are never dropped for it.
pub const MAX_BUFFERED_LOG_ENTRIES: usize = 100_000;
/// How often the flusher empties the queue into its aggregate (at most `flush_interval`). At
/// 100k requests a second this is 2,000 queued uses, far below `usage.queue_capacity`.
const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// Pause between attempts of the final flush on shutdown.
const SHUTDOWN_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// What one request sends to the flusher: the key record it already holds (a reference count,
/// no copy), when it arrived, and the request-log fields only when request logs are on.
struct Use {
    key: Arc<CachedKey>,
    at: OffsetDateTime,
    log: Option<LogFields>,
    /// The refusal's error code; `None` for a forwarded request (a use).
    refused: Option<&'static str>,
}

struct LogFields {
    method: Method,
    path: String,
    status: u16,
    client_ip: IpAddr,
    latency: Duration,
}

/// The request path's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Recorder {
    tx: Option<mpsc::Sender<Use>>,
    keep_logs: bool,
    metrics: UsageMetrics,
}

impl Recorder {
    /// A recorder that records nothing (a gateway built without a flusher).
    pub fn disabled() -> Recorder {
        Recorder {
            tx: None,
            keep_logs: false,
            metrics: UsageMetrics::default(),
        }
    }

    /// Records one request of `key` answered with `status` after `latency`: a use when
    /// `refused` is `None`, else a refusal with that error code (logged, not counted). `path` is
    /// copied into the request log, or not at all when logs are off (`max_per_key: 0`); it must
    /// not hold the query string.
    #[allow(clippy::too_many_arguments, reason = "one flat request-log entry")]
    pub fn record(
        &self,
        key: Arc<CachedKey>,
        method: &Method,
        path: &str,
        status: StatusCode,
        client_ip: IpAddr,
        latency: Duration,
        refused: Option<&'static str>,
    ) {
        let Some(tx) = &self.tx else {
            return;
        };
        if refused.is_some() && !self.keep_logs {
            // A refusal only ever reaches the request log.
            return;
        }
        let latency_time = time::Duration::try_from(latency).unwrap_or(time::Duration::ZERO);
        let at = OffsetDateTime::now_utc().saturating_sub(latency_time);
        // The path is copied only when request logs are kept.
        let log = self.keep_logs.then(|| LogFields {
            method: method.clone(),
            path: path.to_owned(),
            status: status.as_u16(),
            client_ip,
            latency,
        });
        match tx.try_send(Use {
            key,
            at,
            log,
            refused,
        }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.metrics.dropped(UsageDrop::QueueFull),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.dropped(UsageDrop::QueueClosed);
            }
        }
    }
}

/// The queue's receiving end and everything the flusher needs; started by [`Flusher::spawn`].
pub struct Flusher {
    rx: mpsc::Receiver<Use>,
    store: Arc<Store>,
    metrics: Metrics,
    interval: Duration,
    shutdown_timeout: Duration,
    pending: Pending,
}

/// The recorder and its (not yet started) flusher, for `config`.
pub fn channel(config: &Config, store: Arc<Store>, metrics: Metrics) -> (Recorder, Flusher) {
    let usage = &config.usage;
    let (tx, rx) = mpsc::channel(usage.queue_capacity.get());
    let max_per_key = usage.request_log.max_per_key;
    let recorder = Recorder {
        tx: Some(tx),
        keep_logs: max_per_key > 0,
        metrics: metrics.usage().clone(),
    };
    let flusher = Flusher {
        rx,
        store,
        pending: Pending::new(
            usage.max_pending_keys.get(),
            max_per_key,
            metrics.usage().clone(),
        ),
        metrics,
        interval: usage.flush_interval,
        shutdown_timeout: config.shutdown_timeout,
    };
    (recorder, flusher)
}

/// A running flusher; [`FlusherHandle::finish`] stops it after a final flush.
pub struct FlusherHandle {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl FlusherHandle {
    /// Stops intake, drains the queue and writes everything (retrying for up to
    /// `shutdown_timeout`), then returns.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "usage flusher failed; buffered usage is lost");
        }
    }
}

/// What a flush could not write, to be kept and retried.
struct Written {
    left: Vec<KeyUsage>,
    error: Option<StoreError>,
}

impl Flusher {
    /// Starts the flusher on the runtime. Dropping the handle stops it too (after a final
    /// flush), as does dropping every [`Recorder`].
    pub fn spawn(self) -> FlusherHandle {
        let (stop, stopped) = oneshot::channel();
        FlusherHandle {
            stop,
            task: tokio::spawn(self.run(stopped)),
        }
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The queue is emptied on a short timer rather than by waiting on it: a waiting
        // receiver would be woken, across threads, by every request's send.
        let mut drain = tokio::time::interval(DRAIN_EVERY.min(self.interval));
        drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut writing: Option<JoinHandle<Written>> = None;
        let mut failures: u64 = 0;
        loop {
            tokio::select! {
                _ = drain.tick() => {
                    if self.drain_queue() {
                        break; // every recorder is gone
                    }
                }
                _ = tick.tick() => {
                    self.metrics.usage().queue_depth.set(gauge(self.rx.len()));
                    if writing.is_none() && !self.pending.is_empty() {
                        let batch = self.pending.take();
                        writing = Some(tokio::spawn(write(
                            self.store.clone(),
                            batch,
                            self.pending.max_per_key,
                            self.metrics.clone(),
                        )));
                    }
                }
                done = join(&mut writing), if writing.is_some() => {
                    writing = None;
                    self.settle(done, &mut failures);
                }
                _ = &mut stop => break,
            }
        }
        self.shut_down(writing, failures).await;
    }

    /// Moves everything queued into the aggregate. True when every recorder is gone.
    fn drain_queue(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(u) => self.pending.add(u),
                Err(mpsc::error::TryRecvError::Empty) => return false,
                Err(mpsc::error::TryRecvError::Disconnected) => return true,
            }
        }
    }

    /// Takes back what a write left over, and logs failures once per outage.
    fn settle(&mut self, done: Result<Written, JoinError>, failures: &mut u64) {
        match done {
            Ok(Written { left, error: None }) => {
                self.pending.restore(left);
                if *failures > 0 {
                    tracing::info!(
                        failed_flushes = *failures,
                        "usage written to the store again"
                    );
                    *failures = 0;
                }
            }
            Ok(Written {
                left,
                error: Some(e),
            }) => {
                self.pending.restore(left);
                self.metrics.usage().flush_failures.inc();
                *failures += 1;
                if *failures == 1 {
                    tracing::warn!(
                        error = %e,
                        pending_keys = self.pending.keys.len(),
                        "usage could not be written; keeping it and retrying every flush_interval"
                    );
                } else {
                    tracing::debug!(error = %e, "usage flush failed again");
                }
            }
            Err(e) => {
                // Only a panic gets here; what that write held is gone.
                self.pending.restore(Vec::new());
                tracing::error!(error = %e, "usage write task failed; its batch is lost");
            }
        }
    }

    /// Stop intake, drain, and write until done or `shutdown_timeout`.
    async fn shut_down(mut self, writing: Option<JoinHandle<Written>>, mut failures: u64) {
        self.rx.close();
        while let Some(u) = self.rx.recv().await {
            self.pending.add(u);
        }
        if let Some(task) = writing {
            let done = task.await;
            self.settle(done, &mut failures);
        }
        let deadline = Instant::now() + self.shutdown_timeout;
        while !self.pending.is_empty() {
            let batch = self.pending.take();
            let requests: u64 = batch.iter().map(|k| k.count).sum();
            let attempt = write(
                self.store.clone(),
                batch,
                self.pending.max_per_key,
                self.metrics.clone(),
            );
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(done) => self.settle(Ok(done), &mut failures),
                Err(_) => {
                    tracing::error!(
                        requests,
                        "shutdown_timeout passed during the final usage write; \
                         these counts may be lost"
                    );
                    return;
                }
            }
            if self.pending.is_empty() {
                break;
            }
            if Instant::now() + SHUTDOWN_RETRY_PAUSE >= deadline {
                tracing::error!(
                    keys = self.pending.keys.len(),
                    requests = self.pending.requests(),
                    "usage could not be written before shutdown_timeout; these counts are lost"
                );
                return;
            }
            tokio::time::sleep(SHUTDOWN_RETRY_PAUSE).await;
        }
        tracing::info!("usage written");
    }
}

async fn join(writing: &mut Option<JoinHandle<Written>>) -> Result<Written, JoinError> {
    match writing {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Writes one batch, counts and request logs of every key, in one store call
/// ([`KeyStore::write_usage`]: one redb transaction, or the same round trips on Redis). Returns
/// what is left to retry: nothing; the whole batch if the call failed before its counts were
/// stored; or, if only the request logs failed, the keys with logs, their counts zeroed (they are
/// stored, and a retry must not add them twice).
async fn write(
    store: Arc<Store>,
    mut batch: Vec<KeyUsage>,
    max_per_key: usize,
    metrics: Metrics,
) -> Written {
    let deltas = deltas(&batch);
    for k in &mut batch {
        k.logs.make_contiguous();
    }
    let mut counts_written = false;
    let written = {
        let logs: Vec<KeyLogs<'_>> = batch
            .iter()
            .filter(|k| !k.logs.is_empty())
            .map(|k| KeyLogs {
                workspace: k.key.workspace(),
                id: k.key.id(),
                entries: k.logs.as_slices().0,
            })
            .collect();
        let call = async {
            store
                .write_usage(&deltas, &logs, max_per_key)
                .await
                .map_err(|e| {
                    counts_written = e.counts_written;
                    e.error
                })
        };
        metrics.store().time(StoreOp::WriteUsage, call).await
    };
    let error = written.err();
    if error.is_none() || counts_written {
        metrics
            .usage()
            .written
            .inc_by(deltas.iter().map(|d| d.count).sum());
    }
    let left = match (&error, counts_written) {
        (None, _) => Vec::new(),
        (Some(_), false) => batch,
        (Some(_), true) => batch
            .into_iter()
            .filter(|k| !k.logs.is_empty())
            .map(|mut k| {
                k.count = 0;
                k.days.clear();
                k
            })
            .collect(),
    };
    Written { left, error }
}

/// The counts of a batch, one delta per key that was used.
fn deltas(batch: &[KeyUsage]) -> Vec<UsageDelta> {
    batch
        .iter()
        .filter(|k| k.count > 0)
        .filter_map(|k| {
            let mut days = k.days.clone();
            days.sort_unstable();
            Some(UsageDelta {
                workspace: k.key.workspace().to_owned(),
                id: k.key.id().clone(),
                count: k.count,
                last_used_at: k.last_used?,
                days,
            })
        })
        .collect()
}

/// One key's usage not yet written.
struct KeyUsage {
    key: Arc<CachedKey>,
    count: u64,
    /// `count` by the UTC day of each use, each day once (one or two entries: a flush rarely
    /// spans more than one midnight).
    days: Vec<(Date, u64)>,
    /// The latest use; `None` while only refusals are buffered.
    last_used: Option<OffsetDateTime>,
    /// Oldest first, as the store appends them.
    logs: VecDeque<RequestLogEntry>,
}

/// The flusher's buffer, bounded in keys and log entries. Keys handed to a write still count
/// against the bounds until [`Pending::restore`] takes back what the write left.
struct Pending {
    keys: HashMap<KeyId, KeyUsage>,
    log_entries: usize,
    in_flight_keys: usize,
    in_flight_entries: usize,
    max_keys: usize,
    max_per_key: usize,
    metrics: UsageMetrics,
}

impl Pending {
    fn new(max_keys: usize, max_per_key: usize, metrics: UsageMetrics) -> Pending {
        Pending {
            keys: HashMap::new(),
            log_entries: 0,
            in_flight_keys: 0,
            in_flight_entries: 0,
            max_keys,
            max_per_key,
            metrics,
        }
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn requests(&self) -> u64 {
        self.keys.values().map(|k| k.count).sum()
    }

    fn add(&mut self, u: Use) {
        let entry = u.log.map(|log| RequestLogEntry {
            time: u.at,
            method: log.method.as_str().to_owned(),
            path: log.path,
            status: log.status,
            client_ip: log.client_ip,
            latency_ms: log.latency.as_secs_f64() * 1000.0,
            code: u.refused.map(str::to_owned),
        });
        if !self.keys.contains_key(u.key.id()) {
            if self.keys.len() + self.in_flight_keys >= self.max_keys {
                self.metrics.dropped(UsageDrop::TooManyKeys);
                return;
            }
            let k = KeyUsage {
                key: u.key.clone(),
                count: 0,
                days: Vec::new(),
                last_used: None,
                logs: VecDeque::new(),
            };
            self.keys.insert(u.key.id().clone(), k);
            self.metrics
                .pending_keys
                .set(gauge(self.keys.len() + self.in_flight_keys));
        }
        let k = self
            .keys
            .get_mut(u.key.id())
            .expect("present or inserted above");
        // A refusal is logged but is no use: it moves neither the count nor `last_used_at`.
        if u.refused.is_none() {
            k.count += 1;
            add_day(&mut k.days, utc_day(u.at), 1);
            k.last_used = k.last_used.max(Some(u.at));
        }
        if let Some(entry) = entry {
            let buffered = self.log_entries + self.in_flight_entries;
            self.log_entries += push_log(
                &mut k.logs,
                entry,
                self.max_per_key,
                buffered,
                &self.metrics,
            );
        }
    }

    /// Hands everything to a write.
    fn take(&mut self) -> Vec<KeyUsage> {
        self.in_flight_keys = self.keys.len();
        self.in_flight_entries = self.log_entries;
        self.log_entries = 0;
        self.keys.drain().map(|(_, k)| k).collect()
    }

    /// Takes back what a write left: its counts add to the newer ones, its (older) log entries
    /// go before the newer ones, within `max_per_key`.
    fn restore(&mut self, left: Vec<KeyUsage>) {
        self.in_flight_keys = 0;
        self.in_flight_entries = 0;
        for old in left {
            match self.keys.get_mut(old.key.id()) {
                Some(new) => {
                    new.count += old.count;
                    for (day, n) in old.days {
                        add_day(&mut new.days, day, n);
                    }
                    new.last_used = new.last_used.max(old.last_used);
                    let mut logs = old.logs;
                    logs.extend(new.logs.drain(..));
                    let excess = logs.len().saturating_sub(self.max_per_key);
                    logs.drain(..excess);
                    new.logs = logs;
                }
                None => {
                    self.keys.insert(old.key.id().clone(), old);
                }
            }
        }
        self.log_entries = self.keys.values().map(|k| k.logs.len()).sum();
        self.metrics.pending_keys.set(gauge(self.keys.len()));
    }
}

/// The UTC day of `at`.
fn utc_day(at: OffsetDateTime) -> Date {
    at.to_offset(time::UtcOffset::UTC).date()
}

/// Adds `n` uses on `day` (UTC) to a key's per-day split.
fn add_day(days: &mut Vec<(Date, u64)>, day: Date, n: u64) {
    match days.iter_mut().find(|(d, _)| *d == day) {
        Some((_, count)) => *count += n,
        None => days.push((day, n)),
    }
}

/// Appends `entry` to one key's buffered log, keeping its newest `max_per_key` (older ones would
/// be trimmed by the store anyway) and all keys' within [`MAX_BUFFERED_LOG_ENTRIES`]. Returns
/// how many entries the buffer grew by (0 or 1).
fn push_log(
    logs: &mut VecDeque<RequestLogEntry>,
    entry: RequestLogEntry,
    max_per_key: usize,
    buffered: usize,
    metrics: &UsageMetrics,
) -> usize {
    if max_per_key == 0 {
        return 0;
    }
    if logs.len() >= max_per_key {
        logs.pop_front();
        logs.push_back(entry);
        return 0;
    }
    if buffered >= MAX_BUFFERED_LOG_ENTRIES {
        metrics.log_entries_dropped.inc();
        if logs.pop_front().is_some() {
            logs.push_back(entry);
        }
        return 0;
    }
    logs.push_back(entry);
    1
}

#[cfg(test)]
mod tests;
