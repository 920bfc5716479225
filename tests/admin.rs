//! The admin API end to end (docs/admin-api.md): callers and permissions, every endpoint, the
//! workspace limits, validation, the audit log, and that every change is seen by the very next
//! request through the proxy. Over real HTTP, on both store backends.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

#[macro_use]
mod support;

use std::sync::Arc;

use http::{Method, StatusCode};
use keygate::keys::Secret;
use keygate::store::KeyStore;
use serde_json::{Value, json};
use support::gateway::{Backend, OPS_TOKEN, TestGateway, VIEWER_TOKEN};

on_both_backends!(
    create_list_show_and_use_a_key,
    update_rotate_revoke_delete_take_effect_on_the_next_request,
    rotation_grace_period_keeps_the_old_key_until_it_ends,
    max_active_keys_is_exact_under_concurrent_creates,
    import_plaintext_and_sha256_keys_keep_working,
    a_secret_is_one_key_whatever_form_it_was_imported_in,
    audit_log_records_who_did_what_and_never_a_secret,
);

fn secret_of(created: &Value) -> Secret {
    Secret::new(created["secret"].as_str().unwrap().to_owned())
}

async fn create_list_show_and_use_a_key(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let created = gw
        .admin_create(
            "acme",
            json!({"name": "Production server", "description": "deploys", "scopes": ["sessions:read"],
                   "ip_allowlist": ["127.0.0.1", "10.0.0.0/8"], "owner": "cust_42",
                   "metadata": {"team": "payments"}}),
        )
        .await;
    let secret = secret_of(&created);
    assert!(secret.expose().starts_with("kg_live_"));
    assert!(
        secret
            .expose()
            .starts_with(created["prefix"].as_str().unwrap())
    );
    assert_eq!(created["status"], "active");
    assert_eq!(created["created_by"], "token:ops");
    assert_eq!(created["ip_allowlist"], json!(["127.0.0.1", "10.0.0.0/8"]));
    assert_eq!(created["usage_count"], 0);
    assert!(created["last_used_at"].is_null());
    let id = created["id"].as_str().unwrap();

    // The key works at once through the proxy.
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.upstream_header("x-keygate-key-id").as_deref(), Some(id));

    let shown = gw
        .admin(
            Method::GET,
            &format!("/v1/workspaces/acme/keys/{id}"),
            Some(VIEWER_TOKEN),
            None,
        )
        .await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.json()["name"], "Production server");
    assert!(shown.json().get("secret").is_none(), "never shown again");
    assert!(!String::from_utf8_lossy(&shown.body).contains(secret.expose()));

    // Listing: newest first, filters, pagination, never a secret.
    for i in 0..4 {
        // Creation times are kept to the millisecond: keys made within one have no order.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        gw.admin_create("acme", json!({"name": format!("k{i}"), "owner": "cust_7"}))
            .await;
    }
    let all = gw
        .admin(
            Method::GET,
            "/v1/workspaces/acme/keys",
            Some(OPS_TOKEN),
            None,
        )
        .await;
    let keys = all.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 5);
    assert_eq!(keys[0]["name"], "k3", "newest first");
    assert!(!String::from_utf8_lossy(&all.body).contains("\"secret\""));
    let owned = gw
        .admin(
            Method::GET,
            "/v1/workspaces/acme/keys?owner=cust_42",
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(owned.json()["keys"].as_array().unwrap().len(), 1);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/workspaces/acme/keys?limit=2&cursor={c}"),
            None => "/v1/workspaces/acme/keys?limit=2".to_owned(),
        };
        let page = gw
            .admin(Method::GET, &path, Some(OPS_TOKEN), None)
            .await
            .json();
        seen.extend(
            page["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["id"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        keys.iter().map(|k| k["id"].clone()).collect::<Vec<_>>()
    );
    let r = gw
        .admin(
            Method::GET,
            "/v1/workspaces/acme/keys?status=bogus",
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["field"], "status");
    let r = gw
        .admin(
            Method::GET,
            "/v1/workspaces/acme/keys?cursor=garbage",
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["field"], "cursor");
}

async fn update_rotate_revoke_delete_take_effect_on_the_next_request(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let created = gw
        .admin_create("acme", json!({"name": "svc", "scopes": ["sessions:read"]}))
        .await;
    let secret = secret_of(&created);
    let id = created["id"].as_str().unwrap().to_owned();
    let key_path = format!("/v1/workspaces/acme/keys/{id}");
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );

    // Update: scopes change at once.
    let r = gw
        .admin(
            Method::PATCH,
            &key_path,
            Some(OPS_TOKEN),
            Some(json!({"scopes": ["resources:read"], "description": "moved"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["scopes"], json!(["resources:read"]));
    assert_eq!(r.json()["name"], "svc", "absent fields kept");
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.error_code(),
        "insufficient_scope"
    );
    assert_eq!(
        gw.get("/api/v1/resources", Some(&secret)).await.status,
        StatusCode::OK
    );
    let r = gw
        .admin(
            Method::PATCH,
            &key_path,
            Some(OPS_TOKEN),
            Some(json!({"description": null})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.json()["description"].is_null(), "null clears");

    // Rotate (no grace): the old secret stops at once, the new one works.
    let r = gw
        .admin(
            Method::POST,
            &format!("{key_path}/rotate"),
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let rotated = r.json();
    let new_secret = secret_of(&rotated["key"]);
    assert_eq!(
        rotated["key"]["scopes"],
        json!(["resources:read"]),
        "same settings"
    );
    assert_eq!(rotated["previous"]["id"], id.as_str());
    assert_eq!(
        gw.get("/api/v1/resources", Some(&secret))
            .await
            .error_code(),
        "key_expired"
    );
    assert_eq!(
        gw.get("/api/v1/resources", Some(&new_secret)).await.status,
        StatusCode::OK
    );

    // Revoke: irreversible, stays listed.
    let new_id = rotated["key"]["id"].as_str().unwrap().to_owned();
    let new_path = format!("/v1/workspaces/acme/keys/{new_id}");
    let r = gw
        .admin(
            Method::POST,
            &format!("{new_path}/revoke"),
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "revoked");
    assert!(r.json()["revoked_at"].is_string());
    // One instance, embedded or alone on Redis: it confirmed the change itself.
    assert_eq!(
        r.json()["propagation"],
        serde_json::json!({"instances": 1, "confirmed": 1, "unconfirmed": []})
    );
    assert_eq!(
        r.headers["keygate-propagation"],
        "instances=1, confirmed=1, unconfirmed=()"
    );
    assert_eq!(
        gw.get("/api/v1/resources", Some(&new_secret))
            .await
            .error_code(),
        "key_revoked"
    );
    let r = gw
        .admin(
            Method::PATCH,
            &new_path,
            Some(OPS_TOKEN),
            Some(json!({"name": "back"})),
        )
        .await;
    assert_eq!(r.json()["error"]["code"], "key_revoked");
    let listed = gw
        .admin(
            Method::GET,
            "/v1/workspaces/acme/keys?status=revoked",
            Some(OPS_TOKEN),
            None,
        )
        .await
        .json();
    assert_eq!(listed["keys"][0]["id"], new_id.as_str());

    // Delete: gone for good.
    let r = gw
        .admin(Method::DELETE, &new_path, Some(OPS_TOKEN), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = gw
        .admin(Method::GET, &new_path, Some(OPS_TOKEN), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = gw
        .admin(
            Method::GET,
            &format!("{new_path}/logs"),
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        gw.get("/api/v1/resources", Some(&new_secret))
            .await
            .error_code(),
        "invalid_key"
    );
}

async fn rotation_grace_period_keeps_the_old_key_until_it_ends(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::days(30))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let created = gw
        .admin_create(
            "acme",
            json!({"name": "svc", "scopes": ["sessions:read"], "expires_at": expires}),
        )
        .await;
    let old = secret_of(&created);
    let id = created["id"].as_str().unwrap();
    let r = gw
        .admin(
            Method::POST,
            &format!("/v1/workspaces/acme/keys/{id}/rotate"),
            Some(OPS_TOKEN),
            Some(json!({"grace_period": "1s"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let rotated = r.json();
    assert_eq!(
        rotated["key"]["expires_at"], created["expires_at"],
        "expiry carried over"
    );
    let new = secret_of(&rotated["key"]);
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&old)).await.status,
        StatusCode::OK,
        "in grace"
    );
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&new)).await.status,
        StatusCode::OK
    );
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&old)).await.error_code(),
        "key_expired"
    );
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&new)).await.status,
        StatusCode::OK
    );
    let r = gw
        .admin(
            Method::POST,
            &format!("/v1/workspaces/acme/keys/{id}/rotate"),
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        r.json()["error"]["code"],
        "key_expired",
        "an expired key is not rotated"
    );
}

async fn max_active_keys_is_exact_under_concurrent_creates(backend: Backend) {
    let gw = Arc::new(
        TestGateway::start(backend, "workspaces: { small: { max_active_keys: 5 } }").await,
    );
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let gw = gw.clone();
            tokio::spawn(async move {
                gw.admin(
                    Method::POST,
                    "/v1/workspaces/small/keys",
                    Some(OPS_TOKEN),
                    Some(json!({"name": format!("k{i}")})),
                )
                .await
            })
        })
        .collect();
    let mut created = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::CREATED => created.push(r.json()["id"].as_str().unwrap().to_owned()),
            StatusCode::CONFLICT => {
                assert_eq!(r.error_code(), "key_limit_reached");
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((created.len(), refused), (5, 15));
    // A revoked key frees its slot.
    let r = gw
        .admin(
            Method::POST,
            &format!("/v1/workspaces/small/keys/{}/revoke", created[0]),
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = gw
        .admin(
            Method::POST,
            "/v1/workspaces/small/keys",
            Some(OPS_TOKEN),
            Some(json!({"name": "again"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = gw
        .admin(
            Method::POST,
            "/v1/workspaces/small/keys",
            Some(OPS_TOKEN),
            Some(json!({"name": "over"})),
        )
        .await;
    assert_eq!(r.error_code(), "key_limit_reached");
}

async fn import_plaintext_and_sha256_keys_keep_working(backend: Backend) {
    use sha2::Digest;
    let gw = TestGateway::start(backend, "").await;
    let existing = "edsk_live_abc1defGHIjkl234mnoPQR";
    let r = gw
        .admin(
            Method::POST,
            "/v1/workspaces/acme/keys/import",
            Some(OPS_TOKEN),
            Some(json!({"name": "legacy", "secret": existing, "scopes": ["sessions:read"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert!(
        !String::from_utf8_lossy(&r.body).contains(existing),
        "never echoed"
    );
    assert_eq!(r.json()["prefix"], "edsk_live_abc1");
    let secret = Secret::new(existing.into());
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );
    let again = gw
        .admin(
            Method::POST,
            "/v1/workspaces/acme/keys/import",
            Some(OPS_TOKEN),
            Some(json!({"name": "twice", "secret": existing})),
        )
        .await;
    assert_eq!(again.error_code(), "key_exists");

    // Only the SHA-256 is known: works at once, re-hashed with the pepper on first use.
    let other = "sk_prod_9f8e7d6c5b4a39281706";
    let digest: String = sha2::Sha256::digest(other.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let r = gw
        .admin(
            Method::POST,
            "/v1/workspaces/acme/keys/import",
            Some(OPS_TOKEN),
            Some(json!({"name": "hashed", "sha256": digest, "prefix": "sk_prod_9f8e", "role": "viewer"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = keygate::keys::KeyId::parse(r.json()["id"].as_str().unwrap()).unwrap();
    let before = gw.app.store().get("acme", &id).await.unwrap().unwrap();
    assert_eq!(before.hash_scheme, keygate::keys::HashScheme::Sha256);
    let secret = Secret::new(other.into());
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );
    let after = gw.app.store().get("acme", &id).await.unwrap().unwrap();
    assert_eq!(after.hash_scheme, keygate::keys::HashScheme::KeyedBlake3);
    assert_eq!(after.hash, gw.app.gateway().hasher().hash(other));
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );

    for (body, field) in [
        (json!({"name": "x"}), "secret"),
        (json!({"name": "x", "secret": "short"}), "secret"),
        (json!({"name": "x", "sha256": "abc"}), "sha256"),
        (
            json!({"name": "x", "secret": existing, "sha256": digest}),
            "sha256",
        ),
    ] {
        let r = gw
            .admin(
                Method::POST,
                "/v1/workspaces/acme/keys/import",
                Some(OPS_TOKEN),
                Some(body),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.json()["error"]["field"], field);
    }
}

fn sha256_hex(secret: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A repeat import is `key_exists` whatever form either import came in, also once a `sha256`
/// import was upgraded by its first use; deleting the key frees the secret and stops it at once.
async fn a_secret_is_one_key_whatever_form_it_was_imported_in(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let import = |body: Value| {
        gw.admin(
            Method::POST,
            "/v1/workspaces/acme/keys/import",
            Some(OPS_TOKEN),
            Some(body),
        )
    };
    let hashed = "sk_prod_OnlyItsDigestIsKnown42";
    let first = import(
        json!({"name": "hashed", "sha256": sha256_hex(hashed), "scopes": ["sessions:read"]}),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let id = first.json()["id"].as_str().unwrap().to_owned();
    let secret = Secret::new(hashed.into());
    // Its first use upgrades its hash.
    let used = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(used.status, StatusCode::OK);
    for (body, why) in [
        (
            json!({"name": "again", "sha256": sha256_hex(hashed)}),
            "the same digest",
        ),
        (
            json!({"name": "again", "sha256": sha256_hex(hashed).to_uppercase()}),
            "in capitals",
        ),
        (json!({"name": "again", "secret": hashed}), "the plaintext"),
    ] {
        let r = import(body).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{why}: {:?}", r.body);
        assert_eq!(r.error_code(), "key_exists", "{why}");
    }
    // Not upgraded yet, and a plaintext import first: the same.
    let unused = "sk_prod_ImportedButNeverUsed7";
    let r = import(json!({"name": "unused", "sha256": sha256_hex(unused)})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        import(json!({"name": "again", "sha256": sha256_hex(unused)}))
            .await
            .error_code(),
        "key_exists"
    );
    assert_eq!(
        import(json!({"name": "again", "secret": unused}))
            .await
            .error_code(),
        "key_exists"
    );
    let plain = "sk_prod_ImportedAsPlaintext99";
    let r = import(json!({"name": "plain", "secret": plain})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        import(json!({"name": "again", "sha256": sha256_hex(plain)}))
            .await
            .error_code(),
        "key_exists"
    );
    let listed = gw
        .admin(
            Method::GET,
            "/v1/workspaces/acme/keys",
            Some(OPS_TOKEN),
            None,
        )
        .await
        .json();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 3, "{listed}");

    // Deleted: the secret stops working at once (the cache held it), and may be imported again.
    // (Not used again here: the refusal just made is cached negatively for `cache.negative_ttl`
    // under the keyed hash, which a `sha256` import cannot name.)
    let r = gw
        .admin(
            Method::DELETE,
            &format!("/v1/workspaces/acme/keys/{id}"),
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    let refused = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.error_code(), "invalid_key");
    assert_eq!(
        gw.app
            .store()
            .get_by_sha256(&keygate::keys::SecretHash::from_hex(&sha256_hex(hashed)).unwrap())
            .await
            .unwrap(),
        None
    );
    let back =
        import(json!({"name": "back", "sha256": sha256_hex(hashed), "scopes": ["sessions:read"]}))
            .await;
    assert_eq!(back.status, StatusCode::CREATED, "{:?}", back.body);
}

async fn audit_log_records_who_did_what_and_never_a_secret(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let created = gw.admin_create("acme", json!({"name": "audited"})).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/workspaces/acme/keys/{id}");
    // Audit logs order entries by millisecond, then by id (random within one millisecond): one
    // action per millisecond keeps the expected order.
    let next_ms = || tokio::time::sleep(std::time::Duration::from_millis(2));
    next_ms().await;
    gw.admin(
        Method::PATCH,
        &path,
        Some(OPS_TOKEN),
        Some(json!({"name": "renamed", "ip_allowlist": ["192.0.2.0/24"]})),
    )
    .await;
    next_ms().await;
    gw.admin(
        Method::POST,
        &format!("{path}/revoke"),
        Some(OPS_TOKEN),
        None,
    )
    .await;
    next_ms().await;
    gw.admin(Method::DELETE, &path, Some(OPS_TOKEN), None).await;
    next_ms().await;
    let refused = gw
        .admin(
            Method::GET,
            "/v1/workspaces/acme/keys",
            Some("wrong-token"),
            None,
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

    let r = gw
        .admin(
            Method::GET,
            "/v1/audit?workspace=acme",
            Some(VIEWER_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let entries = r.json()["entries"].as_array().unwrap().clone();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["key.delete", "key.revoke", "key.update", "key.create"]
    );
    assert!(
        entries
            .iter()
            .all(|e| e["actor"] == "token:ops" && e["key_id"] == id)
    );
    assert_eq!(
        entries[2]["detail"]["fields"],
        json!(["name", "ip_allowlist"])
    );
    assert_eq!(
        entries[2]["detail"]["changes"],
        json!({
            "name": {"old": "audited", "new": "renamed"},
            "ip_allowlist": {"old": [], "new": ["192.0.2.0/24"]},
        })
    );
    assert!(!String::from_utf8_lossy(&r.body).contains(created["secret"].as_str().unwrap()));

    let global = gw
        .admin(Method::GET, "/v1/audit", Some(OPS_TOKEN), None)
        .await
        .json();
    let first = &global["entries"][0];
    assert_eq!(first["action"], "admin.refused");
    assert_eq!(first["outcome"], "unauthorized");
    assert_eq!(first["actor"], "anonymous");
    assert!(!global.to_string().contains("wrong-token"));
    let r = gw
        .admin(Method::GET, "/v1/audit", Some(VIEWER_TOKEN), None)
        .await;
    assert_eq!(r.error_code(), "forbidden", "the global log needs `*`");
}

// ---- callers, permissions and validation (backend-independent) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_need_a_valid_credential_and_the_permission() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let r = gw
        .admin(Method::GET, "/v1/workspaces/acme/keys", None, None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code(), "unauthorized");
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer realm=\"keygate-admin\""
    );
    let r = gw
        .admin(
            Method::GET,
            "/v1/workspaces/acme/keys",
            Some("ops-token-0123456789abcdeX"),
            None,
        )
        .await;
    assert_eq!(r.error_code(), "unauthorized");
    // The viewer token may view acme, nothing else.
    let r = gw
        .admin(
            Method::POST,
            "/v1/workspaces/acme/keys",
            Some(VIEWER_TOKEN),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.error_code(), "forbidden");
    let r = gw
        .admin(
            Method::GET,
            "/v1/workspaces/other/keys",
            Some(VIEWER_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.error_code(), "forbidden");
    let r = gw
        .admin(
            Method::GET,
            "/v1/workspaces/nowhere/keys",
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = gw
        .admin(
            Method::POST,
            "/v1/workspaces/trial/keys",
            Some(OPS_TOKEN),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.error_code(), "upgrade_required");
    let r = gw
        .admin(
            Method::PUT,
            "/v1/workspaces/acme/keys",
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.headers["allow"].to_str().unwrap().contains("POST"));
    let r = gw
        .admin(Method::GET, "/v1/nothing", Some(OPS_TOKEN), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = gw.admin(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json()["openapi"].as_str().unwrap().starts_with("3."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_manage_their_workspace_without_escalating() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let manager = gw
        .admin_create("acme", json!({"name": "automation", "scopes": ["api.key.view", "api.key.create", "sessions:read"]}))
        .await;
    let token = manager["secret"].as_str().unwrap().to_owned();
    let r = gw
        .admin(
            Method::POST,
            "/v1/workspaces/acme/keys",
            Some(&token),
            Some(json!({"name": "child", "scopes": ["sessions:read"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        r.json()["created_by"],
        format!("key:{}", manager["id"].as_str().unwrap())
    );
    // The escalation attempts: a scope it lacks, a role granting more, `*`.
    for body in [
        json!({"name": "x", "scopes": ["sessions:write"]}),
        json!({"name": "x", "role": "operator"}),
        json!({"name": "x", "scopes": ["*"]}),
        json!({"name": "x", "scopes": ["api.key.delete"]}),
    ] {
        let r = gw
            .admin(
                Method::POST,
                "/v1/workspaces/acme/keys",
                Some(&token),
                Some(body),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
        assert_eq!(r.error_code(), "forbidden");
    }
    // Another workspace, and permissions it lacks.
    let r = gw
        .admin(Method::GET, "/v1/workspaces/other/keys", Some(&token), None)
        .await;
    assert_eq!(r.error_code(), "forbidden");
    let r = gw
        .admin(
            Method::POST,
            &format!(
                "/v1/workspaces/acme/keys/{}/revoke",
                manager["id"].as_str().unwrap()
            ),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.error_code(), "forbidden", "no api.key.delete");
    // A key without api.key.* scopes is refused; a revoked key is not a credential.
    let plain = gw
        .admin_create(
            "acme",
            json!({"name": "plain", "scopes": ["sessions:read"]}),
        )
        .await;
    let r = gw
        .admin(
            Method::GET,
            "/v1/workspaces/acme/keys",
            Some(plain["secret"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(r.error_code(), "forbidden");
    gw.admin(
        Method::POST,
        &format!(
            "/v1/workspaces/acme/keys/{}/revoke",
            manager["id"].as_str().unwrap()
        ),
        Some(OPS_TOKEN),
        None,
    )
    .await;
    let r = gw
        .admin(Method::GET, "/v1/workspaces/acme/keys", Some(&token), None)
        .await;
    assert_eq!(r.error_code(), "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_bodies_are_refused_naming_the_field() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let past = "2001-01-01T00:00:00Z";
    let cases = [
        (json!({}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(101)}), "name"),
        (
            json!({"name": "x", "description": "d".repeat(501)}),
            "description",
        ),
        (
            json!({"name": "x", "scopes": ["unknown:scope"]}),
            "scopes[0]",
        ),
        (
            json!({"name": "x", "scopes": ["sessions:read", "has space"]}),
            "scopes[1]",
        ),
        (json!({"name": "x", "role": "nope"}), "role"),
        (
            json!({"name": "x", "ip_allowlist": ["10.0.0.0/33"]}),
            "ip_allowlist[0]",
        ),
        (json!({"name": "x", "expires_at": past}), "expires_at"),
        (json!({"name": "x", "expires_at": "tomorrow"}), "expires_at"),
        (
            json!({"name": "x", "metadata": {"blob": "m".repeat(1100)}}),
            "metadata",
        ),
        (json!({"name": "x", "metadata": [1, 2]}), "metadata"),
        (json!({"name": "x", "colour": "red"}), "colour"),
        (json!({"name": "x", "scopes": "sessions:read"}), "scopes"),
        (
            json!({"name": "x", "rate_limit": {"requests": 0, "period": "1s"}}),
            "rate_limit.requests",
        ),
        (
            json!({"name": "x", "rate_limit": {"requests": 10, "period": "0s"}}),
            "rate_limit.period",
        ),
        // As in config: at most one request per microsecond of the period.
        (
            json!({"name": "x", "rate_limit": {"requests": 2000000, "period": "1s"}}),
            "rate_limit.requests",
        ),
        (
            json!({"name": "x", "quota": {"limit": 5, "refill": "daily", "refill_day": 3}}),
            "quota.refill_day",
        ),
        (
            json!({"name": "x", "secret": "kg_live_whatever_it_is_123"}),
            "secret",
        ),
    ];
    for (body, field) in cases {
        let r = gw
            .admin(
                Method::POST,
                "/v1/workspaces/acme/keys",
                Some(OPS_TOKEN),
                Some(body.clone()),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.error_code(), "invalid_request");
        assert_eq!(r.json()["error"]["field"], field, "{body}: {}", r.json());
    }
    // Not JSON at all (cut off, or broken inside a field): no field is named (it used to say
    // `"field": "?"`), the message gives the position.
    for broken in [
        &b"{\"name\": "[..],
        b"{\"name\": \"x\", \"scopes\": [\"a\" \"b\"]}",
    ] {
        let req = http::Request::post(format!("http://{}/v1/workspaces/acme/keys", gw.admin))
            .header("authorization", format!("Bearer {OPS_TOKEN}"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(broken)))
            .unwrap();
        let r = gw.send(req).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let error = &r.json()["error"];
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("not valid JSON"), "{error}");
        assert!(message.contains("line 1 column"), "{error}");
        assert!(error.get("field").is_none(), "{error}");
    }
    let huge = json!({"name": "x", "description": "d".repeat(70 * 1024)});
    let r = gw
        .admin(
            Method::POST,
            "/v1/workspaces/acme/keys",
            Some(OPS_TOKEN),
            Some(huge),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.error_code(), "payload_too_large");
    // Nothing was created by any of it.
    let list = gw
        .admin(
            Method::GET,
            "/v1/workspaces/acme/keys",
            Some(OPS_TOKEN),
            None,
        )
        .await
        .json();
    assert_eq!(list["keys"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn guessing_admin_tokens_hits_the_failure_limit_and_stops_being_audited() {
    let gw = TestGateway::start(
        Backend::Embedded,
        "auth: { failure_limit: { requests: 3, period: 1m } }",
    )
    .await;
    for _ in 0..3 {
        // Calls without a credential come between the guesses: they do not count.
        let r = gw.admin(Method::GET, "/v1/audit", None, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = gw
            .admin(Method::GET, "/v1/audit", Some("guess-0123456789"), None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.error_code(), "unauthorized");
    }
    let r = gw
        .admin(Method::GET, "/v1/audit", Some("guess-0123456789"), None)
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.error_code(), "rate_limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // From this address even the right token waits: the limit is checked before any
    // comparison, as on the proxy.
    let r = gw
        .admin(Method::GET, "/v1/audit", Some(OPS_TOKEN), None)
        .await;
    assert_eq!(r.error_code(), "rate_limited");
    let audit = gw.app.store().list_audit(None, 100, None).await.unwrap();
    let refused = audit
        .entries
        .iter()
        .filter(|e| e.action == "admin.refused")
        .count();
    assert_eq!(refused, 6, "only the refusals before the limit are audited");
}

#[tokio::test]
async fn a_rotation_racing_a_revoke_never_leaves_a_successor_of_a_revoked_key() {
    let gw = Arc::new(TestGateway::start(Backend::Embedded, "").await);
    let listed = |gw: Arc<TestGateway>| async move {
        gw.admin(
            Method::GET,
            "/v1/workspaces/acme/keys?limit=100",
            Some(OPS_TOKEN),
            None,
        )
        .await
        .json()["keys"]
            .as_array()
            .unwrap()
            .len()
    };
    for round in 0..10 {
        let created = gw
            .admin_create(
                "acme",
                json!({"name": format!("r{round}"), "scopes": ["sessions:read"]}),
            )
            .await;
        let id = created["id"].as_str().unwrap().to_owned();
        let before = listed(gw.clone()).await;
        let rotate = format!("/v1/workspaces/acme/keys/{id}/rotate");
        let revoke = format!("/v1/workspaces/acme/keys/{id}/revoke");
        let (rotated, revoked) = tokio::join!(
            gw.admin(Method::POST, &rotate, Some(OPS_TOKEN), None),
            gw.admin(Method::POST, &revoke, Some(OPS_TOKEN), None),
        );
        assert_eq!(revoked.status, StatusCode::OK, "{:?}", revoked.body);
        match rotated.status {
            // Rotated first: the old key it answers with was not revoked yet.
            StatusCode::CREATED => {
                assert_eq!(rotated.json()["previous"]["revoked_at"], Value::Null);
                assert_eq!(listed(gw.clone()).await, before + 1);
            }
            // Revoked first: refused, and no successor is left behind.
            _ => {
                assert_eq!(rotated.status, StatusCode::CONFLICT);
                assert_eq!(rotated.error_code(), "key_revoked");
                assert_eq!(listed(gw.clone()).await, before, "round {round}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_cannot_change_rotate_revoke_or_delete_a_stronger_key() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let manager = gw
        .admin_create(
            "acme",
            json!({"name": "automation", "scopes": [
                "api.key.view", "api.key.create", "api.key.update", "api.key.delete", "sessions:read"
            ]}),
        )
        .await;
    let token = manager["secret"].as_str().unwrap().to_owned();
    // Stronger: by a role (`full_access` = `*`) and by an explicit scope the manager lacks.
    let by_role = gw
        .admin_create(
            "acme",
            json!({"name": "root", "role": "full_access", "ip_allowlist": ["192.0.2.1"],
                   "expires_at": "2099-01-01T00:00:00Z", "rate_limit": {"requests": 1, "period": "1s"}}),
        )
        .await;
    let by_scope = gw
        .admin_create(
            "acme",
            json!({"name": "writer", "scopes": ["sessions:read", "sessions:write"]}),
        )
        .await;
    for target in [&by_role, &by_scope] {
        let path = format!(
            "/v1/workspaces/acme/keys/{}",
            target["id"].as_str().unwrap()
        );
        // Every field, one at a time: none touches a scope, each would widen or alter the key.
        for body in [
            json!({"ip_allowlist": []}),
            json!({"expires_at": null}),
            json!({"rate_limit": {"requests": 1000, "period": "1s"}}),
            json!({"quota": null}),
            json!({"name": "renamed"}),
            json!({"description": "mine now"}),
            json!({"metadata": {"a": 1}}),
        ] {
            let r = gw
                .admin(Method::PATCH, &path, Some(&token), Some(body.clone()))
                .await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{body}: {:?}", r.body);
            assert_eq!(r.error_code(), "forbidden");
        }
        for action in ["rotate", "revoke"] {
            let r = gw
                .admin(
                    Method::POST,
                    &format!("{path}/{action}"),
                    Some(&token),
                    Some(json!({})),
                )
                .await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{action}: {:?}", r.body);
        }
        let r = gw.admin(Method::DELETE, &path, Some(&token), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "delete: {:?}", r.body);
        // Nothing changed.
        let now = gw
            .admin(Method::GET, &path, Some(OPS_TOKEN), None)
            .await
            .json();
        assert_eq!(now["status"], "active");
        assert_eq!(now["name"], target["name"]);
        assert_eq!(now["ip_allowlist"], target["ip_allowlist"]);
        assert_eq!(now["expires_at"], target["expires_at"]);
        assert_eq!(now["rate_limit"], target["rate_limit"]);
    }
    let r = gw
        .admin(
            Method::GET,
            "/v1/workspaces/acme/keys?limit=100",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        r.json()["keys"].as_array().unwrap().len(),
        3,
        "no successor was created"
    );

    // Its own allowlist, expiry and limits were set to confine it: it cannot lift them.
    let own = format!(
        "/v1/workspaces/acme/keys/{}",
        manager["id"].as_str().unwrap()
    );
    for body in [
        json!({"ip_allowlist": []}),
        json!({"expires_at": null}),
        json!({"rate_limit": null}),
        json!({"quota": null}),
    ] {
        let r = gw
            .admin(Method::PATCH, &own, Some(&token), Some(body.clone()))
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{body}: {:?}", r.body);
    }
    let r = gw
        .admin(
            Method::PATCH,
            &own,
            Some(&token),
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // A key it fully covers stays manageable, every operation included.
    let peer = gw
        .admin_create(
            "acme",
            json!({"name": "reader", "scopes": ["sessions:read"]}),
        )
        .await;
    let path = format!("/v1/workspaces/acme/keys/{}", peer["id"].as_str().unwrap());
    let r = gw
        .admin(
            Method::PATCH,
            &path,
            Some(&token),
            Some(json!({"ip_allowlist": ["192.0.2.9"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = gw
        .admin(
            Method::POST,
            &format!("{path}/rotate"),
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let successor = r.json()["key"]["id"].as_str().unwrap().to_owned();
    let r = gw
        .admin(Method::POST, &format!("{path}/revoke"), Some(&token), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = gw
        .admin(
            Method::DELETE,
            &format!("/v1/workspaces/acme/keys/{successor}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
}

#[tokio::test]
async fn rotation_grace_periods_are_capped_at_30_days() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let key = gw.admin_create("acme", json!({"name": "k"})).await;
    let path = format!(
        "/v1/workspaces/acme/keys/{}/rotate",
        key["id"].as_str().unwrap()
    );
    for grace in ["99999999999999h", "721h", "31days"] {
        let r = gw
            .admin(
                Method::POST,
                &path,
                Some(OPS_TOKEN),
                Some(json!({"grace_period": grace})),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{grace}: {:?}", r.body);
        assert_eq!(r.json()["error"]["field"], "grace_period");
    }
    let r = gw
        .admin(
            Method::POST,
            &path,
            Some(OPS_TOKEN),
            Some(json!({"grace_period": "720h"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}
