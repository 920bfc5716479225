//! Shared integration-test harness: real redis-server, real upstream, the gateway on port 0.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different subset of the harness"
)]

pub mod gateway;
pub mod redis;
pub mod upstream;
