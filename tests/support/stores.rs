//! Stores for tests that talk to a `KeyStore` directly: a fresh embedded store in a temporary
//! directory or a Redis store on its own `redis-server`, and key records to put in them.

use std::time::Duration;

use keygate::config::{EmbeddedConfig, RedisConfig};
use keygate::keys::{KeyId, KeyRecord, SecretFormat, SecretHasher};
use keygate::store::Store;
use keygate::store::embedded::EmbeddedStore;
use keygate::store::redis::RedisStore;
use time::OffsetDateTime;

use super::cluster::RedisCluster;
use super::redis::RedisServer;

/// Now, in whole milliseconds: stores keep `last_used_at` and list positions at ms precision.
pub fn now_ms() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000)
        .expect("a truncated nanosecond is valid")
}

pub fn ms(n: i64) -> time::Duration {
    time::Duration::milliseconds(n)
}

/// A fresh active key of `ws` with a random id and secret, created now.
pub fn record(ws: &str, name: &str) -> KeyRecord {
    let secret = SecretFormat::new("kg", "test").generate();
    let now = now_ms();
    KeyRecord {
        id: KeyId::generate(),
        workspace: ws.into(),
        name: name.into(),
        description: None,
        prefix: "kg_test_abcd".into(),
        hash: hasher().hash(secret.expose()),
        hash_scheme: keygate::keys::HashScheme::KeyedBlake3,
        scopes: vec!["sessions:read".into()],
        role: None,
        ip_allowlist: Vec::new(),
        expires_at: None,
        rate_limit: None,
        quota: None,
        owner: None,
        metadata: None,
        created_at: now,
        created_by: "test".into(),
        updated_at: now,
        revoked_at: None,
        last_used_at: None,
        usage_count: 0,
        sha256_tag: None,
        rotated_from: None,
        replaced_by: None,
    }
}

/// The pepper every test hashes with.
pub fn hasher() -> SecretHasher {
    SecretHasher::new("test-pepper-0123456789")
}

pub fn embedded_store() -> (Store, tempfile::TempDir) {
    let (store, dir) = embedded_backend();
    (Store::Embedded(store), dir)
}

pub fn embedded_backend() -> (EmbeddedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = EmbeddedConfig {
        path: dir.path().join("nested/dir/keygate.redb"),
    };
    (
        EmbeddedStore::open(&config).expect("open embedded store"),
        dir,
    )
}

pub fn redis_config(server: &RedisServer, timeout: Duration) -> RedisConfig {
    RedisConfig {
        url: Some(server.url()),
        timeout,
        ..RedisConfig::default()
    }
}

pub async fn redis_store() -> (Store, RedisServer) {
    let (store, server) = redis_backend().await;
    (Store::Redis(store), server)
}

/// A store on a fresh three-master Redis Cluster.
pub async fn redis_cluster_store() -> (Store, RedisCluster) {
    let cluster = RedisCluster::start(3, 0);
    let config = RedisConfig {
        cluster: cluster.urls(),
        // Generous, as for the standalone server.
        timeout: Duration::from_secs(2),
        ..RedisConfig::default()
    };
    let store = RedisStore::connect(&config).await.expect("connect");
    (Store::Redis(store), cluster)
}

pub async fn redis_backend() -> (RedisStore, RedisServer) {
    let server = RedisServer::start();
    // Generous: tests share two cores; outage tests set their own.
    let config = redis_config(&server, Duration::from_secs(2));
    let store = RedisStore::connect(&config).await.expect("connect");
    (store, server)
}
