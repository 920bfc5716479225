//! Embedded key index in one redb file (placeholder until the backend lands).

/// The redb-backed store.
pub struct EmbeddedStore;
