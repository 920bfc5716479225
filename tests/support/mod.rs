//! Shared integration-test harness: a real redis-server on a free port, a real upstream, and the
//! gateway on port 0. Each test file that needs it declares `mod support;`.
#![allow(
    dead_code,
    unused_macros,
    unreachable_pub,
    reason = "each test binary compiles this module on its own and uses only some of it"
)]

/// Runs each scenario `async fn name(backend: Backend)` once per store backend, as
/// `embedded::name`, `redis::name` and `cluster::name` (a three-master Redis Cluster).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Embedded).await })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Redis).await })*
        }
        mod cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::RedisCluster).await })*
        }
    };
}

/// Runs each scenario once per backend, `embedded::<name>`, `redis::<name>` and
/// `cluster::<name>`, on a fresh store from [`stores`] (the scenario's file imports
/// `embedded_store`, `redis_store` and `redis_cluster_store`).
/// Scenarios of the first list borrow the store; those after `owning:` take it (to put it
/// behind a `KeyManager`, or to race tasks) and run on a multi-threaded runtime.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?; owning: $($owning:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test]
            async fn $scenario() {
                let (store, _dir) = super::embedded_store();
                super::$scenario(&store).await;
            })*
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $owning() {
                let (store, _dir) = super::embedded_store();
                super::$owning(store).await;
            })*
        }
        mod redis {
            $(#[tokio::test]
            async fn $scenario() {
                let (store, _server) = super::redis_store().await;
                super::$scenario(&store).await;
            })*
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $owning() {
                let (store, _server) = super::redis_store().await;
                super::$owning(store).await;
            })*
        }
        mod cluster {
            $(#[tokio::test]
            async fn $scenario() {
                let (store, _cluster) = super::redis_cluster_store().await;
                super::$scenario(&store).await;
            })*
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $owning() {
                let (store, _cluster) = super::redis_cluster_store().await;
                super::$owning(store).await;
            })*
        }
    };
}

pub mod browser;
pub mod cluster;
pub mod gateway;
pub mod nginx;
pub mod process;
pub mod proto_upstream;
pub mod python;
pub mod receiver;
pub mod redis;
pub mod stores;
pub mod upstream;
pub mod usage;
