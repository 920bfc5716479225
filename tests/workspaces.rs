//! Workspaces through the admin API (SPEC §6): config and API workspaces listed together, plan
//! changes in force for the next create, deletion only when empty, the audit entries, the
//! workspace defaults in the limit resolution order, and a change seen by every instance. Over
//! real HTTP, on both store backends (the fleet scenario on Redis).

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http::{Method, StatusCode};
use keygate::keys::Secret;
use serde_json::{Value, json};
use support::gateway::{Backend, OPS_TOKEN, Reply, TestGateway, VIEWER_TOKEN};

on_both_backends!(
    config_and_api_workspaces_are_listed_and_only_api_ones_change,
    a_plan_change_is_in_force_for_the_next_create,
    a_workspace_with_keys_is_not_deleted,
    workspace_changes_are_audited_with_old_and_new_values,
    workspace_defaults_come_after_key_and_route_and_before_role,
    a_stored_workspace_survives_a_restart,
);

async fn put(gw: &TestGateway, ws: &str, body: Value) -> Reply {
    gw.admin(
        Method::PUT,
        &format!("/v1/workspaces/{ws}"),
        Some(OPS_TOKEN),
        Some(body),
    )
    .await
}

async fn create_key(gw: &TestGateway, ws: &str, body: Value) -> Reply {
    gw.admin(
        Method::POST,
        &format!("/v1/workspaces/{ws}/keys"),
        Some(OPS_TOKEN),
        Some(body),
    )
    .await
}

fn names(list: &Value) -> Vec<String> {
    list["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn config_and_api_workspaces_are_listed_and_only_api_ones_change(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    gw.admin_create("acme", json!({"name": "one"})).await;

    let made = put(&gw, "cust-1", json!({})).await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.body);
    let w = made.json();
    assert_eq!(
        (
            w["api_access"].clone(),
            w["max_active_keys"].clone(),
            w["source"].clone()
        ),
        (json!(true), json!(5), json!("api")),
        "defaults on create: {w}"
    );
    assert_eq!(w["active_keys"], 0);
    assert!(w["rate_limit"].is_null() && w["quota"].is_null());
    assert!(w["created_at"].is_string());

    // Fields left out keep their value; `null` clears.
    let changed = put(
        &gw,
        "cust-1",
        json!({"max_active_keys": 2, "metadata": {"plan": "pro"},
               "rate_limit": {"requests": 10, "period": "1s"}}),
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK);
    let cleared = put(&gw, "cust-1", json!({"rate_limit": null})).await.json();
    assert_eq!(cleared["max_active_keys"], 2);
    assert_eq!(cleared["metadata"], json!({"plan": "pro"}));
    assert!(cleared["rate_limit"].is_null());
    let shown = gw
        .admin(Method::GET, "/v1/workspaces/cust-1", Some(OPS_TOKEN), None)
        .await;
    assert_eq!(shown.json()["max_active_keys"], 2);

    let all = gw
        .admin(Method::GET, "/v1/workspaces", Some(OPS_TOKEN), None)
        .await
        .json();
    assert_eq!(names(&all), ["acme", "cust-1", "other", "trial"]);
    let acme = &all["workspaces"][0];
    assert_eq!(
        (acme["source"].clone(), acme["active_keys"].clone()),
        (json!("config"), json!(1))
    );
    assert!(acme["created_at"].is_null());
    assert_eq!(all["workspaces"][3]["api_access"], false);

    // Pages by name.
    let first = gw
        .admin(Method::GET, "/v1/workspaces?limit=3", Some(OPS_TOKEN), None)
        .await
        .json();
    assert_eq!(names(&first), ["acme", "cust-1", "other"]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = gw
        .admin(
            Method::GET,
            &format!("/v1/workspaces?limit=3&cursor={cursor}"),
            Some(OPS_TOKEN),
            None,
        )
        .await
        .json();
    assert_eq!(names(&second), ["trial"]);
    assert!(second["next_cursor"].is_null());

    // A caller sees the workspaces it may act on, and only a manager changes them.
    let viewer = gw
        .admin(Method::GET, "/v1/workspaces", Some(VIEWER_TOKEN), None)
        .await
        .json();
    assert_eq!(names(&viewer), ["acme"]);
    let r = gw
        .admin(
            Method::PUT,
            "/v1/workspaces/cust-1",
            Some(VIEWER_TOKEN),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );

    // Config workspaces are the file's.
    for method in [Method::PUT, Method::DELETE] {
        let body = (method == Method::PUT).then(|| json!({"max_active_keys": 99}));
        let r = gw
            .admin(method, "/v1/workspaces/acme", Some(OPS_TOKEN), body)
            .await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (StatusCode::CONFLICT, "managed_by_config")
        );
    }

    // Bad bodies and names name the field.
    for (ws, body, field) in [
        ("cust-1", json!({"max_active_keys": -1}), "max_active_keys"),
        ("cust-1", json!({"api_access": null}), "api_access"),
        ("cust-1", json!({"plan": "gold"}), "plan"),
        (
            "cust-1",
            json!({"rate_limit": {"requests": 0, "period": "1s"}}),
            "rate_limit.requests",
        ),
        (
            "cust-1",
            json!({"quota": {"limit": 5, "refill": "daily", "refill_day": 3}}),
            "quota.refill_day",
        ),
        ("Bad_Name", json!({}), "name"),
    ] {
        let r = put(&gw, ws, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.error_code(), "invalid_request");
        assert_eq!(r.json()["error"]["field"], field, "{body}");
    }
    let r = gw
        .admin(Method::GET, "/v1/workspaces/ghost", Some(OPS_TOKEN), None)
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

async fn a_plan_change_is_in_force_for_the_next_create(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    assert_eq!(
        put(&gw, "cust", json!({"api_access": false})).await.status,
        StatusCode::CREATED
    );
    let r = create_key(&gw, "cust", json!({"name": "a"})).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::FORBIDDEN, "upgrade_required")
    );

    put(
        &gw,
        "cust",
        json!({"api_access": true, "max_active_keys": 1}),
    )
    .await;
    assert_eq!(
        create_key(&gw, "cust", json!({"name": "a"})).await.status,
        StatusCode::CREATED
    );
    let r = create_key(&gw, "cust", json!({"name": "b"})).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::CONFLICT, "key_limit_reached")
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 active keys")
    );

    put(&gw, "cust", json!({"max_active_keys": 4})).await;
    // The new limit is exact under concurrent creates.
    let creates = (0..8).map(|i| create_key(&gw, "cust", json!({"name": format!("c{i}")})));
    let statuses: Vec<StatusCode> = join_all(creates).await.iter().map(|r| r.status).collect();
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 3, "{statuses:?}");
    let listed = gw
        .admin(Method::GET, "/v1/workspaces/cust", Some(OPS_TOKEN), None)
        .await;
    assert_eq!(listed.json()["active_keys"], 4);
}

async fn a_workspace_with_keys_is_not_deleted(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    put(&gw, "cust", json!({})).await;
    let key = create_key(&gw, "cust", json!({"name": "a"})).await.json();
    let id = key["id"].as_str().unwrap();
    let r = gw
        .admin(Method::DELETE, "/v1/workspaces/cust", Some(OPS_TOKEN), None)
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::CONFLICT, "workspace_not_empty")
    );
    let path = format!("/v1/workspaces/cust/keys/{id}");
    assert_eq!(
        gw.admin(Method::DELETE, &path, Some(OPS_TOKEN), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let r = gw
        .admin(Method::DELETE, "/v1/workspaces/cust", Some(OPS_TOKEN), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for r in [
        gw.admin(Method::GET, "/v1/workspaces/cust", Some(OPS_TOKEN), None)
            .await,
        gw.admin(Method::DELETE, "/v1/workspaces/cust", Some(OPS_TOKEN), None)
            .await,
        create_key(&gw, "cust", json!({"name": "b"})).await,
    ] {
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (StatusCode::NOT_FOUND, "not_found")
        );
    }
}

async fn workspace_changes_are_audited_with_old_and_new_values(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let next_ms = || tokio::time::sleep(Duration::from_millis(2));
    put(&gw, "cust", json!({"metadata": {"plan": "free"}})).await;
    next_ms().await;
    put(
        &gw,
        "cust",
        json!({"max_active_keys": 9, "metadata": {"plan": "pro"}, "api_access": true}),
    )
    .await;
    next_ms().await;
    gw.admin(Method::DELETE, "/v1/workspaces/cust", Some(OPS_TOKEN), None)
        .await;
    let log = gw
        .admin(
            Method::GET,
            "/v1/audit?workspace=cust",
            Some(OPS_TOKEN),
            None,
        )
        .await
        .json();
    let entries = log["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "workspace.deleted",
            "workspace.updated",
            "workspace.created"
        ]
    );
    let updated = &entries[1];
    assert_eq!(updated["actor"], "token:ops");
    assert_eq!(updated["outcome"], "ok");
    // `api_access` was sent but did not change: it is not a change.
    assert_eq!(
        updated["detail"]["fields"],
        json!(["max_active_keys", "metadata"])
    );
    assert_eq!(
        updated["detail"]["changes"],
        json!({"max_active_keys": {"old": 5, "new": 9},
               "metadata": {"old": {"plan": "free"}, "new": {"plan": "pro"}}})
    );
    assert_eq!(
        entries[2]["detail"]["settings"]["metadata"],
        json!({"plan": "free"})
    );
}

/// Requests the key may make until refused with 429, up to 10, and the `RateLimit-Limit` of the
/// first answer.
async fn allowance(gw: &TestGateway, secret: &Secret) -> (usize, Option<String>, Option<String>) {
    let first = gw.get("/api/v1/sessions", Some(secret)).await;
    let limit = first
        .headers
        .get("ratelimit-limit")
        .map(|v| v.to_str().unwrap().to_owned());
    let quota = first
        .headers
        .get("x-keygate-quota-remaining")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut passed = usize::from(first.status == StatusCode::OK);
    for _ in 0..9 {
        if gw.get("/api/v1/sessions", Some(secret)).await.status != StatusCode::OK {
            break;
        }
        passed += 1;
    }
    (passed, limit, quota)
}

fn secret(created: &Value) -> Secret {
    Secret::new(created["secret"].as_str().unwrap().to_owned())
}

async fn workspace_defaults_come_after_key_and_route_and_before_role(backend: Backend) {
    let overlay = r#"
rate_limits:
  default: { requests: 100, period: 1s }
  roles: { viewer: { requests: 50, period: 1s } }
routes:
  - match: { path_prefix: /api/v1/sessions, methods: [POST] }
    upstream: app
    scopes: [sessions:read]
    rate_limit: { requests: 7, period: 1m }
  - match: { path_prefix: /api/v1/sessions }
    upstream: app
    scopes: [sessions:read]
workspaces:
  other: { quota: { limit: 2, refill: none } }
"#;
    let gw = TestGateway::start(backend, overlay).await;
    put(
        &gw,
        "cust",
        json!({"rate_limit": {"requests": 3, "period": "1m"}}),
    )
    .await;

    // Workspace over role and default.
    let viewer = create_key(&gw, "cust", json!({"name": "v", "role": "viewer"}))
        .await
        .json();
    assert_eq!(
        allowance(&gw, &secret(&viewer)).await,
        (3, Some("3".into()), None)
    );
    // The key's own limit over the workspace's.
    let own = create_key(
        &gw,
        "cust",
        json!({"name": "own", "scopes": ["sessions:read"], "rate_limit": {"requests": 5, "period": "1m"}}),
    )
    .await
    .json();
    assert_eq!(
        allowance(&gw, &secret(&own)).await,
        (5, Some("5".into()), None)
    );
    // The route's own limit over the workspace's.
    let plain = create_key(
        &gw,
        "cust",
        json!({"name": "p", "scopes": ["sessions:read"]}),
    )
    .await
    .json();
    let req = gw
        .request(Method::POST, "/api/v1/sessions", Some(&secret(&plain)))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let r = gw.send(req).await;
    assert_eq!(r.headers.get("ratelimit-limit").unwrap(), "7");
    // A workspace without defaults leaves the role's and the default.
    let acme = gw
        .admin_create("acme", json!({"name": "a", "role": "viewer"}))
        .await;
    let r = gw.get("/api/v1/sessions", Some(&secret(&acme))).await;
    assert_eq!(r.headers.get("ratelimit-limit").unwrap(), "50");

    // A config workspace's quota, and the key's own over it.
    let quota = gw
        .admin_create("other", json!({"name": "q", "scopes": ["sessions:read"]}))
        .await;
    let (passed, _, remaining) = allowance(&gw, &secret(&quota)).await;
    assert_eq!((passed, remaining.as_deref()), (2, Some("1")));
    let own_quota = gw
        .admin_create(
            "other",
            json!({"name": "q2", "scopes": ["sessions:read"], "quota": {"limit": 4, "refill": "none"}}),
        )
        .await;
    assert_eq!(allowance(&gw, &secret(&own_quota)).await.0, 4);

    // Removing the workspace's limit gives the key the next one down at once.
    put(&gw, "cust", json!({"rate_limit": null})).await;
    let r = gw.get("/api/v1/sessions", Some(&secret(&viewer))).await;
    assert_eq!(r.headers.get("ratelimit-limit").unwrap(), "50");
}

async fn a_stored_workspace_survives_a_restart(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    put(
        &gw,
        "cust",
        json!({"rate_limit": {"requests": 2, "period": "1m"}}),
    )
    .await;
    let key = create_key(
        &gw,
        "cust",
        json!({"name": "a", "scopes": ["sessions:read"]}),
    )
    .await
    .json();
    let gw = gw.restart().await;
    let shown = gw
        .admin(Method::GET, "/v1/workspaces/cust", Some(OPS_TOKEN), None)
        .await
        .json();
    assert_eq!(
        (shown["source"].clone(), shown["active_keys"].clone()),
        (json!("api"), json!(1))
    );
    // Read at start: its default applies to the first request after the restart.
    let r = gw.get("/api/v1/sessions", Some(&secret(&key))).await;
    assert_eq!(r.headers.get("ratelimit-limit").unwrap(), "2");
}

/// A change on one instance is in force on another for the next create at once, and on its
/// request path as fast as a revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_change_reaches_every_instance() {
    let a = TestGateway::start(Backend::Redis, "").await;
    let b = a.another_instance("").await;
    put(&a, "cust", json!({"api_access": false})).await;
    let r = create_key(&b, "cust", json!({"name": "x"})).await;
    assert_eq!(r.error_code(), "upgrade_required");

    put(
        &a,
        "cust",
        json!({"api_access": true, "max_active_keys": 3}),
    )
    .await;
    let creates = (0..8).map(|i| {
        let gw = if i % 2 == 0 { &a } else { &b };
        create_key(
            gw,
            "cust",
            json!({"name": format!("k{i}"), "scopes": ["sessions:read"]}),
        )
    });
    let replies = join_all(creates).await;
    let created: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    assert_eq!(created.len(), 3, "exactly the limit across two instances");
    let key = secret(&created[0].json());

    // B has served the key (and read the workspace's defaults: none) before the change.
    let r = b.get("/api/v1/sessions", Some(&key)).await;
    assert!(r.headers.get("ratelimit-limit").is_none());
    put(
        &a,
        "cust",
        json!({"rate_limit": {"requests": 1000, "period": "1m"}}),
    )
    .await;
    let started = Instant::now();
    loop {
        let r = b.get("/api/v1/sessions", Some(&key)).await;
        if r.headers
            .get("ratelimit-limit")
            .is_some_and(|v| v == "1000")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "B never saw the change"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Deleting is seen by B too (the workspace's keys gone first).
    for r in &created {
        let id = r.json()["id"].as_str().unwrap().to_owned();
        a.admin(
            Method::DELETE,
            &format!("/v1/workspaces/cust/keys/{id}"),
            Some(OPS_TOKEN),
            None,
        )
        .await;
    }
    let r = a
        .admin(Method::DELETE, "/v1/workspaces/cust", Some(OPS_TOKEN), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = create_key(&b, "cust", json!({"name": "late"})).await;
    assert_eq!(r.error_code(), "not_found");
    let listed = b
        .admin(Method::GET, "/v1/workspaces", Some(OPS_TOKEN), None)
        .await
        .json();
    assert!(!names(&listed).contains(&"cust".to_owned()));
}
