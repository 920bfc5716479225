//! keygate: an API-key authentication gateway.
//!
//! # Layout
//!
//! - [`config`]: the YAML file, typed and validated.
//! - [`keys`]: secret format, ids, keyed hashing, key records.
//! - [`store`]: the key index (`KeyStore`: embedded redb or Redis) and its hot cache.

pub mod config;
pub mod keys;
pub mod store;
