//! Redis key index (placeholder until the backend lands).

/// The Redis-backed store.
pub struct RedisStore;
