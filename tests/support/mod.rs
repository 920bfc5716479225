//! Shared integration-test harness: a real redis-server on a free port, a real upstream, and the
//! gateway on port 0. Each test file that needs it declares `mod support;`.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary compiles this module on its own and uses only some of it"
)]

pub mod gateway;
pub mod redis;
pub mod upstream;
