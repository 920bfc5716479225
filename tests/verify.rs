//! `POST /v1/verify` (SPEC §9) on every backend: a valid key answers its identity, scopes and
//! limits and counts as a use (usage count, request log, rate limit and quota shared with the
//! proxy); each refusal code the proxy answers with comes back as `{"valid": false, "code"}`;
//! callers need `api.key.verify`, and a key of a workspace the caller may not verify in is
//! unknown to it (nothing spent); bad bodies are `invalid_request`; with Redis down, an uncached
//! key is 503 `store_unavailable` and a cached one is still decided.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

#[macro_use]
mod support;

use std::num::NonZeroU32;
use std::time::Duration;

use http::{Method, StatusCode};
use keygate::config::{QuotaSpec, RateLimitSpec, Refill};
use keygate::control::NewKey;
use keygate::keys::Secret;
use serde_json::{Value, json};
use support::gateway::{Backend, OPS_TOKEN, TestGateway, VIEWER_TOKEN, new_key};
use support::usage::{log_entries, wait_for_usage};
use time::OffsetDateTime;

on_both_backends!(
    a_valid_key_answers_its_identity_and_limits_and_counts_as_a_use,
    missing_key,
    invalid_key,
    key_revoked,
    key_expired,
    ip_not_allowed,
    insufficient_scope,
    rate_limited_with_the_proxy_s_bucket,
    quota_exceeded,
    callers_need_the_permission_on_the_key_s_workspace,
    bodies_are_validated,
);

/// A verifier for `acme` and one for `other`; ops and viewer as in the base config.
const OVERLAY: &str = r#"
usage: { flush_interval: 50ms }
admin:
  tokens:
    - { name: ops, token: ops-token-0123456789abcdef, permissions: [api.key.view, api.key.create, api.key.update, api.key.delete, workspace.manage, config.reload], workspaces: ["*"] }
    - { name: viewer, token: viewer-token-0123456789abcdef, permissions: [api.key.view], workspaces: [acme] }
    - { name: verifier, token: verifier-token-0123456789abcdef, permissions: [api.key.verify], workspaces: [acme] }
    - { name: other-verifier, token: other-verifier-token-0123456789ab, permissions: [api.key.verify], workspaces: [other] }
"#;
const VERIFIER: &str = "verifier-token-0123456789abcdef";
const OTHER_VERIFIER: &str = "other-verifier-token-0123456789ab";

async fn start(backend: Backend) -> TestGateway {
    TestGateway::start(backend, OVERLAY).await
}

/// `POST /v1/verify` as `token`; asserts 200 and returns the verdict.
async fn verify_as(gw: &TestGateway, token: &str, body: Value) -> Value {
    let r = gw
        .admin(Method::POST, "/v1/verify", Some(token), Some(body))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()
}

async fn verify(gw: &TestGateway, body: Value) -> Value {
    verify_as(gw, VERIFIER, body).await
}

/// The refusal code of verifying `secret` for `scopes`.
async fn code_of(gw: &TestGateway, secret: &Secret, scopes: &[&str]) -> Value {
    let v = verify(gw, json!({"key": secret.expose(), "scopes": scopes})).await;
    assert_eq!(v["valid"], false, "{v}");
    v["code"].clone()
}

fn per_hour(requests: u32) -> RateLimitSpec {
    RateLimitSpec {
        requests: NonZeroU32::new(requests).unwrap(),
        period: Duration::from_secs(3600),
        burst: None,
    }
}

fn no_refill(limit: u64) -> QuotaSpec {
    QuotaSpec {
        limit,
        refill: Refill::None,
        refill_day: None,
    }
}

async fn a_valid_key_answers_its_identity_and_limits_and_counts_as_a_use(backend: Backend) {
    let gw = start(backend).await;
    let expires = OffsetDateTime::now_utc() + time::Duration::days(30);
    let mut metadata = serde_json::Map::new();
    metadata.insert("plan".into(), json!("pro"));
    let (key, secret) = gw
        .create(NewKey {
            scopes: vec!["reports:read".into()],
            role: Some("operator".into()),
            owner: Some("alice".into()),
            metadata: Some(metadata),
            expires_at: Some(expires),
            rate_limit: Some(per_hour(5)),
            quota: Some(no_refill(10)),
            ..new_key("acme")
        })
        .await;

    // A role's scope counts, as on the proxy.
    let v = verify(
        &gw,
        json!({"key": secret.expose(), "scopes": ["sessions:write"], "ip": "192.0.2.7"}),
    )
    .await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["key_id"], key.id.as_str());
    assert_eq!(v["workspace"], "acme");
    assert_eq!(
        v["scopes"],
        json!(["reports:read", "sessions:read", "sessions:write"])
    );
    assert_eq!(v["owner"], "alice");
    assert_eq!(v["metadata"], json!({"plan": "pro"}));
    let at = OffsetDateTime::parse(
        v["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(at.unix_timestamp(), expires.unix_timestamp());
    assert_eq!(v["ratelimit"]["limit"], 5);
    assert_eq!(v["ratelimit"]["remaining"], 4);
    assert!(v["ratelimit"]["reset"].as_u64().is_some(), "{v}");
    assert_eq!(v["quota_remaining"], 9);

    // The proxy spends from the same bucket and quota.
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["ratelimit-remaining"], "3");
    assert_eq!(r.headers["x-keygate-quota-remaining"], "8");

    // Both are uses, and the verification is in the request log with the client's address.
    wait_for_usage(&gw, key.id.as_str(), 2).await;
    let entries = log_entries(&gw, key.id.as_str()).await;
    let verified = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/v1/verify")
        .unwrap_or_else(|| panic!("no /v1/verify entry in {entries}"))
        .clone();
    assert_eq!(verified["method"], "POST");
    assert_eq!(verified["status"], 200);
    assert_eq!(verified["client_ip"], "192.0.2.7");

    // Without an expiry or limits, those fields are null.
    let (_, plain) = gw.create_key(&["sessions:read"]).await;
    let v = verify(&gw, json!({"key": plain.expose()})).await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["expires_at"], Value::Null);
    assert_eq!(v["ratelimit"], Value::Null);
    assert_eq!(v["quota_remaining"], Value::Null);
    assert_eq!(v["owner"], Value::Null);
}

async fn missing_key(backend: Backend) {
    let gw = start(backend).await;
    let v = verify(&gw, json!({"key": ""})).await;
    assert_eq!(v, json!({"valid": false, "code": "missing_key"}));
}

async fn invalid_key(backend: Backend) {
    let gw = start(backend).await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    // A bad checksum.
    let s = secret.expose();
    let mut tampered = s[..s.len() - 1].to_owned();
    tampered.push(if s.ends_with('A') { 'B' } else { 'A' });
    let v = verify(&gw, json!({"key": tampered})).await;
    assert_eq!(v, json!({"valid": false, "code": "invalid_key"}));
    // A well-formed secret whose key was deleted.
    let (gone, other) = gw.create_key(&["sessions:read"]).await;
    let path = format!("/v1/workspaces/acme/keys/{}", gone.id.as_str());
    let r = gw.admin(Method::DELETE, &path, Some(OPS_TOKEN), None).await;
    assert!(r.status.is_success(), "{:?}", r.body);
    assert_eq!(code_of(&gw, &other, &[]).await, "invalid_key");
}

async fn key_revoked(backend: Backend) {
    let gw = start(backend).await;
    let (key, secret) = gw.create_key(&["sessions:read"]).await;
    assert_eq!(
        gw.admin_revoke("acme", &key.id).await.status,
        StatusCode::OK
    );
    assert_eq!(code_of(&gw, &secret, &[]).await, "key_revoked");
}

async fn key_expired(backend: Backend) {
    let gw = start(backend).await;
    let (_, secret) = gw
        .create(NewKey {
            expires_at: Some(OffsetDateTime::now_utc() - time::Duration::seconds(1)),
            ..new_key("acme")
        })
        .await;
    assert_eq!(code_of(&gw, &secret, &[]).await, "key_expired");
}

async fn ip_not_allowed(backend: Backend) {
    let gw = start(backend).await;
    let (_, secret) = gw
        .create(NewKey {
            ip_allowlist: vec![keygate::config::ip_list::parse("10.1.0.0/16").unwrap()],
            ..new_key("acme")
        })
        .await;
    let check = |ip: Option<&str>| {
        let mut body = json!({"key": secret.expose()});
        if let Some(ip) = ip {
            body["ip"] = json!(ip);
        }
        verify(&gw, body)
    };
    assert_eq!(check(Some("10.1.2.3")).await["valid"], true);
    assert_eq!(
        check(Some("10.2.0.1")).await,
        json!({"valid": false, "code": "ip_not_allowed"})
    );
    // Without the client's address an allowlisted key cannot be checked: refused.
    assert_eq!(check(None).await["code"], "ip_not_allowed");
}

async fn insufficient_scope(backend: Backend) {
    let gw = start(backend).await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    assert_eq!(
        verify(
            &gw,
            json!({"key": secret.expose(), "scopes": ["sessions:read"]})
        )
        .await["valid"],
        true
    );
    assert_eq!(
        code_of(&gw, &secret, &["sessions:read", "sessions:write"]).await,
        "insufficient_scope"
    );
}

async fn rate_limited_with_the_proxy_s_bucket(backend: Backend) {
    let gw = start(backend).await;
    let (_, secret) = gw
        .create(NewKey {
            scopes: vec!["sessions:read".into()],
            rate_limit: Some(per_hour(2)),
            ..new_key("acme")
        })
        .await;
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        verify(&gw, json!({"key": secret.expose()})).await["valid"],
        true
    );
    assert_eq!(code_of(&gw, &secret, &[]).await, "rate_limited");
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(r.error_code(), "rate_limited");
}

async fn quota_exceeded(backend: Backend) {
    let gw = start(backend).await;
    let (_, secret) = gw
        .create(NewKey {
            quota: Some(no_refill(1)),
            ..new_key("acme")
        })
        .await;
    assert_eq!(
        verify(&gw, json!({"key": secret.expose()})).await["quota_remaining"],
        0
    );
    assert_eq!(code_of(&gw, &secret, &[]).await, "quota_exceeded");
}

async fn callers_need_the_permission_on_the_key_s_workspace(backend: Backend) {
    let gw = start(backend).await;
    // A quota shows whether a refused verification spent anything.
    let (key, secret) = gw
        .create(NewKey {
            scopes: vec!["sessions:read".into()],
            quota: Some(no_refill(5)),
            ..new_key("acme")
        })
        .await;
    let body = json!({"key": secret.expose()});
    // Without the permission anywhere: 403.
    let r = gw
        .admin(
            Method::POST,
            "/v1/verify",
            Some(VIEWER_TOKEN),
            Some(body.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.error_code(), "forbidden");
    let r = gw
        .admin(Method::POST, "/v1/verify", None, Some(body.clone()))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // With it on another workspace only: the key is unknown to this caller, and no use counted.
    assert_eq!(
        verify_as(&gw, OTHER_VERIFIER, body.clone()).await,
        json!({"valid": false, "code": "invalid_key"})
    );
    // An API key holding the permission verifies keys of its own workspace.
    let (_, caller) = gw.create_key(&["api.key.verify"]).await;
    let v = verify_as(&gw, caller.expose(), body).await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["quota_remaining"], 4, "only this verification spent");
    wait_for_usage(&gw, key.id.as_str(), 1).await;
    // A method other than POST.
    let r = gw
        .admin(Method::GET, "/v1/verify", Some(VERIFIER), None)
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "POST");
}

async fn bodies_are_validated(backend: Backend) {
    let gw = start(backend).await;
    for (body, field) in [
        (json!({}), None),
        (json!({"key": "x", "ip": "not-an-ip"}), Some("ip")),
        (
            json!({"key": "x", "scopes": ["has space"]}),
            Some("scopes[0]"),
        ),
        (json!({"key": "x", "extra": 1}), Some("extra")),
    ] {
        let r = gw
            .admin(
                Method::POST,
                "/v1/verify",
                Some(VERIFIER),
                Some(body.clone()),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.error_code(), "invalid_request", "{body}");
        match field {
            Some(field) => assert_eq!(r.json()["error"]["field"], field, "{body}"),
            None => {
                let message = r.json()["error"]["message"].to_string();
                assert!(message.contains("`key`"), "{message}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_down_an_uncached_key_is_503_and_a_cached_one_still_verifies() {
    let mut gw = TestGateway::start(Backend::Redis, OVERLAY).await;
    let (_, cached) = gw.create_key(&[]).await;
    let (_, uncached) = gw.create_key(&[]).await;
    assert_eq!(
        verify(&gw, json!({"key": cached.expose()})).await["valid"],
        true
    );

    gw.redis.as_mut().unwrap().stop();
    let r = gw
        .admin(
            Method::POST,
            "/v1/verify",
            Some(VERIFIER),
            Some(json!({"key": uncached.expose()})),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.error_code(), "store_unavailable");
    // The cached key is decided as the proxy would (from the cache); its owner and metadata,
    // read from the store, cannot be had and are null rather than failing a counted use.
    let v = verify(&gw, json!({"key": cached.expose()})).await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["owner"], Value::Null);
}
