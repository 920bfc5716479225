//! Reading a key's usage through the admin API, as its owner would.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::Value;

use super::gateway::{OPS_TOKEN, TestGateway};

/// `GET /v1/workspaces/acme/keys/{id}{rest}` as the ops token; asserts 200.
async fn ops_get(gw: &TestGateway, id: &str, rest: &str) -> Value {
    let path = format!("/v1/workspaces/acme/keys/{id}{rest}");
    let r = gw.admin(Method::GET, &path, Some(OPS_TOKEN), None).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {:?}", r.body);
    r.json()
}

/// `GET /v1/workspaces/acme/keys/{id}` as the ops token.
pub async fn key_json(gw: &TestGateway, id: &str) -> Value {
    ops_get(gw, id, "").await
}

/// Polls the key until `usage_count` is `want` (or fails after 10 s, showing the last value).
pub async fn wait_for_usage(gw: &TestGateway, id: &str, want: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let key = key_json(gw, id).await;
        if key["usage_count"] == want {
            return key;
        }
        assert!(
            Instant::now() < deadline,
            "usage_count stayed {} (want {want})",
            key["usage_count"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The key's request log (`entries`, newest first), as the ops token reads it.
pub async fn log_entries(gw: &TestGateway, id: &str) -> Value {
    ops_get(gw, id, "/logs").await["entries"].clone()
}
