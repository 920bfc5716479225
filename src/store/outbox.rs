//! The webhook outbox's records (SPEC §9): deliveries waiting for their endpoint, the log of
//! attempts, and the markers that make an event happen once. The store keeps them so that they
//! survive restarts and are shared by every instance on one store; each backend claims due
//! deliveries atomically, so that one instance at a time holds each
//! ([`KeyStore::outbox_claim`](super::KeyStore::outbox_claim)).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::keys::KeyId;

/// An outbox entry as stored: JSON.
pub(super) fn encode<T: Serialize>(value: &T) -> Result<String, super::StoreError> {
    serde_json::to_string(value)
        .map_err(|_| super::StoreError::Corrupt("outbox entry cannot be encoded".into()))
}

/// A stored outbox entry.
pub(super) fn decode<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, super::StoreError> {
    // Only the position: serde's message could quote a stored value.
    serde_json::from_slice(json).map_err(|e| {
        super::StoreError::Corrupt(format!("undecodable outbox entry (column {})", e.column()))
    })
}

/// Attempts the delivery log keeps, newest first.
pub const DELIVERY_LOG_MAX: usize = 1000;

/// One event on its way to one endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// Delivery id (`whd_` + 13-digit ms + `_` + 8 base62), unique per event and endpoint.
    pub id: String,
    /// The endpoint's URL: its secret is looked up in the running config at each attempt (an
    /// endpoint removed from the config drops what was waiting for it).
    pub url: String,
    /// Event type (`key.created`…).
    pub event: String,
    /// Event id (`evt_…`), the same for every endpoint it goes to.
    pub event_id: String,
    /// The key's workspace.
    pub workspace: String,
    /// The key.
    pub key_id: KeyId,
    /// For `key.expiring` and `key.expired`: the expiry announced (unix ms). Checked again at
    /// each attempt: a key whose expiry changed, or that is gone, is not announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
    /// The JSON body, signed at each attempt.
    pub body: String,
    /// When the event happened (unix ms): retries stop 24 hours after it.
    pub created_ms: i64,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (unix ms).
    pub due_ms: i64,
}

/// What one delivery attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryResult {
    /// The endpoint answered 2xx.
    Delivered,
    /// It failed (status or error); another attempt is due at `next_attempt_at`.
    Failed,
    /// It failed 24 hours after the event: no more attempts.
    Abandoned,
    /// Not sent: the endpoint left the config, or the event no longer applies (the key's expiry
    /// changed, or the key is gone).
    Dropped,
}

/// One attempt, as `GET /v1/webhooks/deliveries` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    /// The delivery (the same across its retries).
    pub delivery_id: String,
    /// The event.
    pub event_id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event: String,
    /// The endpoint.
    pub url: String,
    /// The key's workspace.
    pub workspace: String,
    /// The key.
    pub key_id: KeyId,
    /// When the attempt ended.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// What came of it.
    pub result: DeliveryResult,
    /// The endpoint's HTTP status, if it answered.
    pub status: Option<u16>,
    /// Why it failed, if it did (never the secret or the body).
    pub error: Option<String>,
    /// When the next attempt is due, after a failure.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
}

impl super::Store {
    /// Adds `items` to the outbox. With `once` (a marker and how long it is kept, ms), only if
    /// that marker was not set yet, in the same atomic step as the add: returns whether the
    /// items were added.
    pub async fn outbox_add(
        &self,
        items: &[OutboxItem],
        once: Option<(&str, i64)>,
    ) -> Result<bool, super::StoreError> {
        match self {
            super::Store::Embedded(s) => s.outbox_add(items, once).await,
            super::Store::Redis(s) => s.outbox_add(items, once).await,
        }
    }

    /// Up to `max` deliveries due at `now_ms`, oldest due first, each made due again at
    /// `now_ms + lease_ms` in the same atomic step: no other instance claims them meanwhile,
    /// and if this one stops before settling them, they are claimed again after the lease.
    pub async fn outbox_claim(
        &self,
        now_ms: i64,
        lease_ms: i64,
        max: usize,
    ) -> Result<Vec<OutboxItem>, super::StoreError> {
        match self {
            super::Store::Embedded(s) => s.outbox_claim(now_ms, lease_ms, max).await,
            super::Store::Redis(s) => s.outbox_claim(now_ms, lease_ms, max).await,
        }
    }

    /// Settles a delivery claimed until `claimed_until` (the claim's `now_ms + lease_ms`): removed
    /// when `retry` is `None`, else put back as `retry` (its attempts and due time). Only if it
    /// is still that claim's: an attempt that outlived its lease, the item claimed again by
    /// another instance, changes nothing (returns `false`), so a late failure cannot bring back
    /// what the other delivered.
    pub async fn outbox_settle(
        &self,
        id: &str,
        claimed_until: i64,
        retry: Option<&OutboxItem>,
    ) -> Result<bool, super::StoreError> {
        match self {
            super::Store::Embedded(s) => s.outbox_settle(id, claimed_until, retry).await,
            super::Store::Redis(s) => s.outbox_settle(id, claimed_until, retry).await,
        }
    }

    /// Deliveries waiting (due or not).
    pub async fn outbox_len(&self) -> Result<u64, super::StoreError> {
        match self {
            super::Store::Embedded(s) => s.outbox_len().await,
            super::Store::Redis(s) => s.outbox_len().await,
        }
    }

    /// Appends an attempt to the delivery log, which keeps the newest [`DELIVERY_LOG_MAX`].
    pub async fn push_delivery(&self, attempt: &DeliveryAttempt) -> Result<(), super::StoreError> {
        match self {
            super::Store::Embedded(s) => s.push_delivery(attempt).await,
            super::Store::Redis(s) => s.push_delivery(attempt).await,
        }
    }

    /// The newest `limit` attempts, newest first.
    pub async fn deliveries(
        &self,
        limit: usize,
    ) -> Result<Vec<DeliveryAttempt>, super::StoreError> {
        match self {
            super::Store::Embedded(s) => s.deliveries(limit).await,
            super::Store::Redis(s) => s.deliveries(limit).await,
        }
    }

    /// Takes (or renews) the lease `name` for `holder` for `ttl_ms` if no one else holds it:
    /// whether `holder` holds it now. The embedded store serves one node, which always does.
    pub async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<bool, super::StoreError> {
        match self {
            super::Store::Embedded(_) => Ok(true),
            super::Store::Redis(s) => s.try_lease(name, holder, ttl_ms).await,
        }
    }

    /// Active (unrevoked) keys of `workspace` whose `expires_at` is in `(from_ms, to_ms]`, from
    /// the index that counts active keys, ordered by expiry then id: `limit` of them after the
    /// first `offset`, each with its expiry (unix ms, rounded up on Redis). A key expired at or
    /// before the last key creation in its workspace may have left that index already; callers
    /// look ahead of expiries rather than only behind them.
    pub async fn expiring_keys(
        &self,
        workspace: &str,
        from_ms: i64,
        to_ms: i64,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<(i64, KeyId)>, super::StoreError> {
        match self {
            super::Store::Embedded(s) => {
                s.expiring_keys(workspace, from_ms, to_ms, offset, limit)
                    .await
            }
            super::Store::Redis(s) => {
                s.expiring_keys(workspace, from_ms, to_ms, offset, limit)
                    .await
            }
        }
    }
}
