//! The key index: the [`KeyStore`] interface, its two backends (`embedded` redb file, `redis`),
//! and the hot cache in front of them. The request path only ever reaches a store through
//! [`cache::KeyCache`].

pub mod cache;
pub mod embedded;
pub mod redis;

use std::future::Future;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::keys::{KeyId, KeyRecord, KeyStatus, SecretHash};

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached in time (timeout, connection refused, I/O error). The
    /// detail is for logs only; it never contains a secret.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// `create` would exceed the workspace's `max_active_keys`.
    #[error("workspace has reached its active key limit")]
    LimitReached,
    /// The key does not exist (update of a deleted key).
    #[error("key not found")]
    NotFound,
    /// A key with this id or secret hash exists already.
    #[error("a key with this id or secret already exists")]
    Conflict,
    /// Stored data could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Filters and page position for [`KeyStore::list`].
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only keys with this status (derived at `now`).
    pub status: Option<KeyStatus>,
    /// Only keys with this owner.
    pub owner: Option<String>,
    /// At most this many keys (callers clamp it; 0 is treated as 1).
    pub limit: usize,
    /// Opaque position returned as `next_cursor` by the previous page.
    pub cursor: Option<String>,
}

/// One page of [`KeyStore::list`], newest first.
#[derive(Clone, Debug, Default)]
pub struct KeyPage {
    /// The keys of this page.
    pub keys: Vec<KeyRecord>,
    /// Cursor of the next page, if there is one.
    pub next_cursor: Option<String>,
}

/// Usage gathered in memory by the gateway, added to a key by [`KeyStore::add_usage`].
#[derive(Clone, Debug, PartialEq)]
pub struct UsageDelta {
    /// Workspace of the key.
    pub workspace: String,
    /// The key.
    pub id: KeyId,
    /// Requests to add to `usage_count`.
    pub count: u64,
    /// Latest use; the stored `last_used_at` only moves forward.
    pub last_used_at: OffsetDateTime,
}

/// One entry of a key's request log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestLogEntry {
    /// When the request arrived.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// HTTP method.
    pub method: String,
    /// Request path (without the query string, which may carry data the owner did not mean to log).
    pub path: String,
    /// Response status sent to the client.
    pub status: u16,
    /// Client IP as the gateway determined it.
    pub client_ip: IpAddr,
    /// Time from request to response head, in milliseconds.
    pub latency_ms: f64,
}

/// The key index. Implemented by [`embedded::EmbeddedStore`] and [`redis::RedisStore`]; both are
/// checked by one conformance suite (`tests/store_conformance.rs`).
///
/// Every call is bounded in time: a backend that cannot answer within its configured timeout
/// returns [`StoreError::Unavailable`].
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new key. With `max_active`, refuses with [`StoreError::LimitReached`] when the
    /// workspace already has that many active keys (not revoked, not expired at `now`); the
    /// check and the insert are one atomic step, exact under concurrent creates.
    fn create(
        &self,
        record: &KeyRecord,
        max_active: Option<u32>,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The key whose secret has this hash, with its usage fields. The request path's one
    /// store call: a single round trip.
    fn get_by_hash(
        &self,
        hash: &SecretHash,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// A key by id within a workspace (a key of another workspace is `None`).
    fn get(
        &self,
        workspace: &str,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// Replaces a key's record (same id, workspace and hash). Leaves `usage_count` and
    /// `last_used_at` as stored, whatever the record says. [`StoreError::NotFound`] if the key is
    /// gone.
    fn update(&self, record: &KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes a key, its hash index entry and its request logs. Returns the removed record.
    fn delete(
        &self,
        workspace: &str,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// A workspace's keys, newest first (by `created_at`, then id).
    fn list(
        &self,
        workspace: &str,
        query: &ListQuery,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<KeyPage, StoreError>> + Send;

    /// Adds usage counts and moves `last_used_at` forward. Deltas for keys that no longer exist
    /// are dropped.
    fn add_usage(
        &self,
        deltas: &[UsageDelta],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Appends request-log entries of one key, keeping only the newest `max_per_key`.
    fn append_request_logs(
        &self,
        workspace: &str,
        id: &KeyId,
        entries: &[RequestLogEntry],
        max_per_key: usize,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The newest `limit` request-log entries of a key, newest first.
    fn request_logs(
        &self,
        workspace: &str,
        id: &KeyId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RequestLogEntry>, StoreError>> + Send;

    /// Whether the store answers (for `/readyz`).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The backend chosen in config, dispatched statically (no boxing on the request path).
pub enum Store {
    /// redb file.
    Embedded(embedded::EmbeddedStore),
    /// Redis.
    Redis(redis::RedisStore),
}

impl Store {
    /// Opens the backend chosen by `store.backend`.
    pub async fn open(config: &crate::config::StoreConfig) -> Result<Store, StoreError> {
        Ok(match config.backend {
            crate::config::Backend::Embedded => {
                Store::Embedded(embedded::EmbeddedStore::open(&config.embedded)?)
            }
            crate::config::Backend::Redis => {
                Store::Redis(redis::RedisStore::connect(&config.redis).await?)
            }
        })
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Embedded($s) => $call.await,
            Store::Redis($s) => $call.await,
        }
    };
}

impl KeyStore for Store {
    async fn create(
        &self,
        record: &KeyRecord,
        max_active: Option<u32>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.create(record, max_active, now))
    }
    async fn get_by_hash(&self, hash: &SecretHash) -> Result<Option<KeyRecord>, StoreError> {
        dispatch!(self, s => s.get_by_hash(hash))
    }
    async fn get(&self, workspace: &str, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        dispatch!(self, s => s.get(workspace, id))
    }
    async fn update(&self, record: &KeyRecord) -> Result<(), StoreError> {
        dispatch!(self, s => s.update(record))
    }
    async fn delete(&self, workspace: &str, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        dispatch!(self, s => s.delete(workspace, id))
    }
    async fn list(
        &self,
        workspace: &str,
        query: &ListQuery,
        now: OffsetDateTime,
    ) -> Result<KeyPage, StoreError> {
        dispatch!(self, s => s.list(workspace, query, now))
    }
    async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        dispatch!(self, s => s.add_usage(deltas))
    }
    async fn append_request_logs(
        &self,
        workspace: &str,
        id: &KeyId,
        entries: &[RequestLogEntry],
        max_per_key: usize,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.append_request_logs(workspace, id, entries, max_per_key))
    }
    async fn request_logs(
        &self,
        workspace: &str,
        id: &KeyId,
        limit: usize,
    ) -> Result<Vec<RequestLogEntry>, StoreError> {
        dispatch!(self, s => s.request_logs(workspace, id, limit))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping())
    }
}
