//! Placeholder until the backend lands (temporary; replaced before merge).
#![allow(missing_docs, unreachable_pub, clippy::all)]
use super::*;
pub struct RedisStore;
impl RedisStore {
    pub async fn connect(_: &crate::config::RedisConfig) -> Result<Self, StoreError> {
        Ok(Self)
    }
}
impl KeyStore for RedisStore {
    async fn create(
        &self,
        _: &KeyRecord,
        _: Option<u32>,
        _: OffsetDateTime,
    ) -> Result<(), StoreError> {
        Err(StoreError::NotFound)
    }
    async fn get_by_hash(&self, _: &SecretHash) -> Result<Option<KeyRecord>, StoreError> {
        Err(StoreError::NotFound)
    }
    async fn get(&self, _: &str, _: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Err(StoreError::NotFound)
    }
    async fn update(&self, _: &KeyRecord) -> Result<(), StoreError> {
        Err(StoreError::NotFound)
    }
    async fn delete(&self, _: &str, _: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Err(StoreError::NotFound)
    }
    async fn list(&self, _: &str, _: &ListQuery, _: OffsetDateTime) -> Result<KeyPage, StoreError> {
        Err(StoreError::NotFound)
    }
    async fn add_usage(&self, _: &[UsageDelta]) -> Result<(), StoreError> {
        Err(StoreError::NotFound)
    }
    async fn append_request_logs(
        &self,
        _: &str,
        _: &KeyId,
        _: &[RequestLogEntry],
        _: usize,
    ) -> Result<(), StoreError> {
        Err(StoreError::NotFound)
    }
    async fn request_logs(
        &self,
        _: &str,
        _: &KeyId,
        _: usize,
    ) -> Result<Vec<RequestLogEntry>, StoreError> {
        Err(StoreError::NotFound)
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Err(StoreError::NotFound)
    }
}
