//! Shared integration-test harness: a real redis-server on a free port, a real upstream, and the
//! gateway on port 0. Each test file that needs it declares `mod support;`.
#![allow(
    dead_code,
    unused_macros,
    unreachable_pub,
    reason = "each test binary compiles this module on its own and uses only some of it"
)]

/// Runs each scenario `async fn name(backend: Backend)` once per store backend, as
/// `embedded::name` and `redis::name`.
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
    };
}

pub mod gateway;
pub mod process;
pub mod redis;
pub mod upstream;
