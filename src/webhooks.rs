//! Webhooks (SPEC §9): what happens to keys, told to the endpoints of `webhooks:`, signed, at
//! least once, each event by one instance.
//!
//! - **Producing**: [`Webhooks::key_event`] puts one delivery per endpoint that wants the event
//!   into the store's outbox ([`crate::store::outbox`]), where it survives restarts. If the
//!   store cannot take it, it waits in memory and is put there once the store answers again.
//!   `key.expiring` is produced at create or update when the key is inside an endpoint's window
//!   already, otherwise by [`Webhooks::scan_expiries`], which one instance at a time runs every
//!   minute (a lease in the store); `key.expired` by the same scan, ahead of the expiry and due
//!   at it. A marker in the outbox makes each of these once per key, expiry and endpoint.
//! - **Delivering** ([`deliver`]): every instance claims due deliveries from the outbox (a claim
//!   leases them, so no other instance sends them meanwhile), POSTs each signed with its
//!   endpoint's secret, and settles it: done on 2xx, otherwise retried after `first_retry`,
//!   doubling up to an hour, for 24 hours after the event. Every attempt is logged
//!   (`GET /v1/webhooks/deliveries`) and counted (`keygate_webhook_deliveries_total{result}`).

pub mod deliver;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;

use crate::config::webhooks::Webhook;
use crate::keys::{KeyId, KeyRecord};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::store::outbox::OutboxItem;
use crate::store::{KeyStore, Store};

/// How often the expiry scan runs (on one instance at a time).
pub const SCAN_INTERVAL: Duration = Duration::from_secs(60);
/// How far ahead of an expiry the scan puts `key.expired` in the outbox: more than one scan
/// interval, so every expiry is seen by a scan before it happens.
const EXPIRED_LOOKAHEAD_MS: i64 = 3 * 60_000;
/// How far back the scan looks for expiries not announced yet.
const EXPIRED_LOOKBACK_MS: i64 = 3_600_000;
/// Keys read per page of the scan.
const SCAN_PAGE: usize = 500;
/// Deliveries are retried for this long after their event.
pub const RETRY_FOR: Duration = Duration::from_secs(24 * 3600);
/// Events held in memory while the store cannot take them; beyond it the oldest are dropped
/// (and logged).
const MAX_PENDING: usize = 10_000;
/// How long a once-marker is kept: longer than any window it guards.
const ONCE_TTL_MS: i64 = 400 * 24 * 3600 * 1000;

/// Webhooks of the running config: producing events into the outbox and delivering them.
pub struct Webhooks {
    reloader: Arc<Reloader>,
    store: Arc<Store>,
    metrics: Metrics,
    /// This instance, as the holder of the scan's lease.
    instance: String,
    /// Adds the store could not take yet, oldest first.
    pending: Mutex<VecDeque<Pending>>,
    /// Wakes the delivery loop when an event was added here.
    wake: tokio::sync::Notify,
    client: deliver::Client,
}

/// An outbox add waiting for the store.
struct Pending {
    items: Vec<OutboxItem>,
    once: Option<String>,
}

/// Unix milliseconds of `t`.
fn ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// A random id with `prefix`: `<prefix>_<13-digit ms>_<8 base62>`, sortable by time.
fn new_id(prefix: &str, now: OffsetDateTime) -> String {
    format!("{prefix}_{:013}_{}", ms(now), crate::keys::random_base62(8))
}

impl Webhooks {
    /// Webhooks of the config `reloader` runs (re-read at each event and attempt), with their
    /// outbox in `store`.
    pub fn new(reloader: Arc<Reloader>, store: Arc<Store>, metrics: Metrics) -> Webhooks {
        Webhooks {
            reloader,
            store,
            metrics,
            instance: new_id("inst", OffsetDateTime::now_utc()),
            pending: Mutex::new(VecDeque::new()),
            wake: tokio::sync::Notify::new(),
            client: deliver::client(),
        }
    }

    fn endpoints(&self) -> Vec<Webhook> {
        self.reloader.config().webhooks.clone()
    }

    /// `event` happened to `record` (`extra` fields go into the body beside `key`): one delivery
    /// per endpoint that wants it. Then, for a key that is now inside an endpoint's
    /// `expiring_days`, `key.expiring` once.
    pub async fn key_event(
        &self,
        event: &'static str,
        record: &KeyRecord,
        extra: Option<(&str, Value)>,
    ) {
        let endpoints = self.endpoints();
        if endpoints.is_empty() {
            return;
        }
        let now = OffsetDateTime::now_utc();
        let wanting: Vec<&Webhook> = endpoints.iter().filter(|h| h.wants(event)).collect();
        if !wanting.is_empty() {
            let (event_id, body) = body(event, record, now, extra);
            let items = wanting
                .iter()
                .map(|h| item(h, event, &event_id, &body, record, None, now, ms(now)))
                .collect();
            self.add(items, None).await;
        }
        if matches!(event, "key.created" | "key.updated" | "key.rotated") {
            for hook in &endpoints {
                self.announce_expiring(hook, record, now).await;
            }
        }
    }

    /// The same for a key known by its id (read from the store first; nothing if it is gone).
    pub async fn key_event_by_id(&self, event: &'static str, workspace: &str, id: &KeyId) {
        if self.endpoints().iter().all(|h| !h.wants(event)) {
            return;
        }
        match self.store.get(workspace, id).await {
            Ok(Some(record)) => self.key_event(event, &record, None).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(key_id = %id, event, error = %e, "webhook event not produced: the key could not be read")
            }
        }
    }

    /// `key.expiring` for `hook`, once per key and expiry, if `record` expires within its window.
    async fn announce_expiring(&self, hook: &Webhook, record: &KeyRecord, now: OffsetDateTime) {
        let Some(expires) = record.expires_at else {
            return;
        };
        let window = time::Duration::days(i64::from(hook.expiring_days));
        if !hook.wants("key.expiring")
            || record.revoked_at.is_some()
            || expires <= now
            || expires > now + window
        {
            return;
        }
        let (event_id, body) = body("key.expiring", record, now, None);
        let item = item(
            hook,
            "key.expiring",
            &event_id,
            &body,
            record,
            Some(ms(expires)),
            now,
            ms(now),
        );
        let marker = once_marker("expiring", &record.id, ms(expires), hook);
        self.add(vec![item], Some(marker)).await;
    }

    /// `key.expired` for `hook`, due at the expiry, once per key and expiry.
    async fn announce_expired(&self, hook: &Webhook, record: &KeyRecord, now: OffsetDateTime) {
        let Some(expires) = record.expires_at else {
            return;
        };
        if !hook.wants("key.expired") || record.revoked_at.is_some() {
            return;
        }
        // Stamped with the expiry: the event is the expiry, whenever it is sent.
        let (event_id, body) = body("key.expired", record, expires.max(now.min(expires)), None);
        let item = item(
            hook,
            "key.expired",
            &event_id,
            &body,
            record,
            Some(ms(expires)),
            expires,
            ms(expires),
        );
        let marker = once_marker("expired", &record.id, ms(expires), hook);
        self.add(vec![item], Some(marker)).await;
    }

    /// Puts items into the outbox, or holds them until the store takes them.
    async fn add(&self, items: Vec<OutboxItem>, once: Option<String>) {
        match self
            .store
            .outbox_add(&items, once.as_deref().map(|m| (m, ONCE_TTL_MS)))
            .await
        {
            Ok(_) => self.wake.notify_one(),
            Err(e) => {
                tracing::warn!(error = %e, deliveries = items.len(), "webhook events held in memory until the store answers");
                self.hold(Pending { items, once });
            }
        }
    }

    fn hold(&self, pending: Pending) {
        let mut queue = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.len() >= MAX_PENDING
            && let Some(dropped) = queue.pop_front()
        {
            tracing::error!(
                deliveries = dropped.items.len(),
                "webhook events dropped: {MAX_PENDING} were already waiting for the store"
            );
        }
        queue.push_back(pending);
    }

    /// Moves held events into the outbox while the store takes them.
    async fn flush_pending(&self) {
        loop {
            let next = self
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front();
            let Some(p) = next else { return };
            let once = p.once.as_deref().map(|m| (m, ONCE_TTL_MS));
            if self.store.outbox_add(&p.items, once).await.is_err() {
                self.pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_front(p);
                return;
            }
        }
    }

    /// Finds keys entering an endpoint's `expiring_days` window and keys about to expire, in
    /// every workspace, and puts their events into the outbox (once each). Runs where the
    /// `expiry-scan` lease is held, so on one instance at a time.
    pub async fn scan_expiries(&self) -> Result<(), crate::store::StoreError> {
        let endpoints = self.endpoints();
        let wants_expiring = endpoints
            .iter()
            .filter(|h| h.wants("key.expiring"))
            .map(|h| h.expiring_days)
            .max();
        let wants_expired = endpoints.iter().any(|h| h.wants("key.expired"));
        if wants_expiring.is_none() && !wants_expired {
            return Ok(());
        }
        if !self
            .store
            .try_lease("expiry-scan", &self.instance, ms_of(SCAN_INTERVAL) - 5_000)
            .await?
        {
            return Ok(());
        }
        let now = OffsetDateTime::now_utc();
        let horizon = match wants_expiring {
            Some(days) => ms(now + time::Duration::days(i64::from(days))),
            None => 0,
        }
        .max(ms(now) + EXPIRED_LOOKAHEAD_MS);
        // Looks back an hour: expiries while no instance scanned (an outage, a deploy) are still
        // announced, once; the index may have lost keys expired before a later create.
        let from = ms(now) - EXPIRED_LOOKBACK_MS;
        for ws in self.workspace_names().await? {
            let mut offset = 0;
            loop {
                let page = self
                    .store
                    .expiring_keys(&ws, from, horizon, offset, SCAN_PAGE)
                    .await?;
                offset += page.len();
                for (_, id) in &page {
                    let Some(record) = self.store.get(&ws, id).await? else {
                        continue;
                    };
                    let Some(expires) = record.expires_at else {
                        continue;
                    };
                    for hook in &endpoints {
                        self.announce_expiring(hook, &record, now).await;
                        if ms(expires) <= ms(now) + EXPIRED_LOOKAHEAD_MS {
                            self.announce_expired(hook, &record, now).await;
                        }
                    }
                }
                // A key the index gains or loses meanwhile may shift a page: it is seen by the
                // next scan, a minute later (its markers keep it once).
                if page.len() < SCAN_PAGE {
                    break;
                }
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Every workspace: the config's and the stored ones.
    async fn workspace_names(&self) -> Result<Vec<String>, crate::store::StoreError> {
        let mut names: Vec<String> = self.reloader.config().workspaces.keys().cloned().collect();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list_workspaces(after.as_deref(), 500).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.name.clone());
            let full = page.len() == 500;
            names.extend(page.into_iter().map(|w| w.name));
            if !full {
                break;
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}

fn ms_of(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The marker that makes an expiry event once per key, expiry and endpoint.
fn once_marker(kind: &str, id: &KeyId, expires_ms: i64, hook: &Webhook) -> String {
    let url = blake3::hash(hook.url.as_bytes());
    format!("{kind}:{id}:{expires_ms}:{}", &url.to_hex()[..16])
}

/// An event's id and JSON body: `{"id", "type", "created_at", "workspace", "key"}`, `key` as the
/// admin API shows it (never the secret), plus `extra`.
fn body(
    event: &str,
    record: &KeyRecord,
    at: OffsetDateTime,
    extra: Option<(&str, Value)>,
) -> (String, String) {
    let id = new_id("evt", OffsetDateTime::now_utc());
    let mut body = serde_json::json!({
        "id": id,
        "type": event,
        "created_at": at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "workspace": record.workspace,
        "key": crate::admin::fields::key_json(record, at),
    });
    if let (Some((name, value)), Some(map)) = (extra, body.as_object_mut()) {
        map.insert(name.to_owned(), value);
    }
    (id, body.to_string())
}

#[allow(clippy::too_many_arguments, reason = "one flat outbox record")]
fn item(
    hook: &Webhook,
    event: &str,
    event_id: &str,
    body: &str,
    record: &KeyRecord,
    expires_ms: Option<i64>,
    created: OffsetDateTime,
    due_ms: i64,
) -> OutboxItem {
    OutboxItem {
        id: new_id("whd", OffsetDateTime::now_utc()),
        url: hook.url.clone(),
        event: event.to_owned(),
        event_id: event_id.to_owned(),
        workspace: record.workspace.clone(),
        key_id: record.id.clone(),
        expires_ms,
        body: body.to_owned(),
        created_ms: ms(created),
        attempts: 0,
        due_ms,
    }
}
