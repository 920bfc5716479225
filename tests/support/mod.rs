//! Helpers shared by the integration tests: each test file that needs them declares `mod support;`.

// Each test binary compiles this module on its own and uses only some of the helpers, so the
// others would be reported as dead code in every binary that does not call them.
#![allow(dead_code)]

pub(crate) mod redis;
