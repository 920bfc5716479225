//! The data plane end to end: real HTTP over loopback, a real upstream, the gateway on port 0,
//! on both store backends. Every error code of SPEC §2 and every forwarding rule has a test here.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use keygate::control::NewKey;
use support::gateway::{Backend, TestGateway, new_key};
use time::OffsetDateTime;

on_both_backends!(
    forwards_with_identity_headers_and_without_the_credential,
    accepts_bearer_apikey_and_extra_headers,
    missing_key_is_401_with_www_authenticate,
    malformed_and_unknown_keys_are_invalid_key,
    revocation_takes_effect_on_the_next_request,
    expired_key_is_key_expired,
    two_different_secrets_conflict,
    ip_allowlist_and_trusted_proxies,
    scopes_roles_and_any_scopes,
    unmatched_route_is_no_route_and_public_routes_need_no_key,
    concurrent_misses_for_one_key_make_one_store_lookup,
    deleted_and_updated_keys_take_effect_on_the_next_request,
);

async fn forwards_with_identity_headers_and_without_the_credential(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let (key, secret) = gw.create_key(&["sessions:read"]).await;
    let req = gw
        .request(Method::GET, "/api/v1/sessions/42?x=1", Some(&secret))
        .header("x-warehouse-id", "wh-7")
        .header("x-keygate-key-id", "key_spoofed")
        .header("x-keygate-scopes", "*")
        .header("host", "api.example.com")
        .body(Full::default())
        .unwrap();
    let r = gw.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let echo = r.json();
    assert_eq!(echo["path"], "/api/v1/sessions/42");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(r.upstream_header("x-warehouse-id").as_deref(), Some("wh-7"));
    assert_eq!(
        r.upstream_header("x-keygate-key-id").as_deref(),
        Some(key.id.as_str())
    );
    assert_eq!(
        r.upstream_header("x-keygate-workspace").as_deref(),
        Some("acme")
    );
    assert_eq!(
        r.upstream_header("x-keygate-scopes").as_deref(),
        Some("sessions:read")
    );
    assert_eq!(
        r.upstream_header("authorization"),
        None,
        "credential removed"
    );
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some("api.example.com")
    );
    assert_eq!(
        r.upstream_header("host"),
        Some(gw.upstream.addr.to_string()),
        "Host is the upstream's"
    );
    let rid = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(r.upstream_header("x-request-id"), Some(rid));
}

async fn accepts_bearer_apikey_and_extra_headers(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    for (name, value) in [
        ("authorization", format!("ApiKey {}", secret.expose())),
        ("authorization", format!("bearer    {}", secret.expose())),
        ("authorization", format!("APIKEY {}", secret.expose())),
        ("x-api-key", secret.expose().to_owned()),
    ] {
        let req = gw
            .request(Method::GET, "/api/v1/sessions", None)
            .header(name, &value)
            .body(Full::default())
            .unwrap();
        let r = gw.send(req).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {value:.20}");
        assert_eq!(
            r.upstream_header(name),
            None,
            "{name} removed before forwarding"
        );
    }
    // keep_credentials forwards it.
    let gw = TestGateway::start(backend, "forward: { keep_credentials: true }").await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(
        r.upstream_header("authorization"),
        Some(format!("Bearer {}", secret.expose()))
    );
}

async fn missing_key_is_401_with_www_authenticate(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let r = gw.get("/api/v1/sessions", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code(), "missing_key");
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"keygate\"");
    assert_eq!(r.headers["content-type"], "application/json");
    // A client-sent request id is kept.
    let req = gw
        .request(Method::GET, "/api/v1/sessions", None)
        .header("x-request-id", "client-chosen-42")
        .body(Full::default())
        .unwrap();
    let r = gw.send(req).await;
    assert_eq!(r.headers["x-request-id"], "client-chosen-42");
    assert_eq!(r.error_code(), "missing_key");
}

async fn malformed_and_unknown_keys_are_invalid_key(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    let text = secret.expose();
    // A typo breaks the checksum: refused without a store lookup.
    let mut typo = text.as_bytes().to_vec();
    let i = text.len() - 8;
    typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
    let typo = keygate::keys::Secret::new(String::from_utf8(typo).unwrap());
    for bad in [
        typo,
        keygate::keys::Secret::new(text[..text.len() - 1].to_owned()),
    ] {
        let r = gw.get("/api/v1/sessions", Some(&bad)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.error_code(), "invalid_key");
        assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"keygate\"");
    }
    assert_eq!(
        gw.store_lookups(),
        0,
        "malformed secrets never reach the store"
    );

    // Well-formed but unknown: one lookup, then the negative cache answers.
    let unknown = gw.app.gateway().format().generate();
    for _ in 0..3 {
        let r = gw.get("/api/v1/sessions", Some(&unknown)).await;
        assert_eq!(r.error_code(), "invalid_key");
    }
    assert_eq!(gw.store_lookups(), 1, "negative entry cached");

    let basic = gw
        .request(Method::GET, "/api/v1/sessions", None)
        .header("authorization", "Basic dXNlcjpwYXNz")
        .body(Full::default())
        .unwrap();
    let r = gw.send(basic).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code(), "invalid_key");
}

async fn revocation_takes_effect_on_the_next_request(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let (key, secret) = gw.create_key(&["sessions:read"]).await;
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );
    // Cached now; revoking must still be seen by the very next request.
    let revoked = gw.app.keys().revoke("acme", &key.id).await.unwrap();
    assert!(revoked.record.revoked_at.is_some());
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code(), "key_revoked");
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"keygate\"");
}

async fn expired_key_is_key_expired(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let (_, secret) = gw
        .create(NewKey {
            scopes: vec!["sessions:read".into()],
            expires_at: Some(OffsetDateTime::now_utc() - time::Duration::seconds(1)),
            ..new_key("acme")
        })
        .await;
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code(), "key_expired");

    // A key that expires while cached stops working at its expiry, without a store call.
    let (_, secret) = gw
        .create(NewKey {
            scopes: vec!["sessions:read".into()],
            expires_at: Some(OffsetDateTime::now_utc() + time::Duration::milliseconds(600)),
            ..new_key("acme")
        })
        .await;
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );
    let lookups = gw.store_lookups();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(r.error_code(), "key_expired");
    assert_eq!(gw.store_lookups(), lookups);
}

async fn two_different_secrets_conflict(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let (_, a) = gw.create_key(&["sessions:read"]).await;
    let (_, b) = gw.create_key(&["sessions:read"]).await;
    let req = gw
        .request(Method::GET, "/api/v1/sessions", Some(&a))
        .header("x-api-key", b.expose())
        .body(Full::default())
        .unwrap();
    let r = gw.send(req).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_code(), "conflicting_credentials");
    // The same secret twice is fine.
    let req = gw
        .request(Method::GET, "/api/v1/sessions", Some(&a))
        .header("x-api-key", a.expose())
        .body(Full::default())
        .unwrap();
    assert_eq!(gw.send(req).await.status, StatusCode::OK);
}

async fn ip_allowlist_and_trusted_proxies(backend: Backend) {
    let allow = |nets: &[&str]| NewKey {
        scopes: vec!["sessions:read".into()],
        ip_allowlist: nets
            .iter()
            .map(|n| keygate::config::ip_list::parse(n).unwrap())
            .collect(),
        ..new_key("acme")
    };
    let with_xff = |gw: &TestGateway, secret, xff: &str| {
        gw.request(Method::GET, "/api/v1/sessions", Some(secret))
            .header("x-forwarded-for", xff)
            .body(Full::default())
            .unwrap()
    };

    let gw = TestGateway::start(backend, "").await;
    let (_, loopback) = gw.create(allow(&["127.0.0.0/8", "::1"])).await;
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&loopback)).await.status,
        StatusCode::OK
    );
    let (_, elsewhere) = gw.create(allow(&["203.0.113.7", "2001:db8::/32"])).await;
    let r = gw.get("/api/v1/sessions", Some(&elsewhere)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.error_code(), "ip_not_allowed");
    // The peer is not a trusted proxy: its X-Forwarded-For is not believed, nor forwarded.
    let r = gw.send(with_xff(&gw, &elsewhere, "203.0.113.7")).await;
    assert_eq!(r.error_code(), "ip_not_allowed");
    let r = gw.send(with_xff(&gw, &loopback, "203.0.113.7")).await;
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );

    // Behind a trusted proxy, the rightmost untrusted address is the client.
    let gw = TestGateway::start(backend, "trusted_proxies: [127.0.0.1/32, 10.0.0.0/8]").await;
    let (_, elsewhere) = gw.create(allow(&["203.0.113.7"])).await;
    let r = gw.send(with_xff(&gw, &elsewhere, "203.0.113.7")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1"),
        "a trusted proxy's chain is extended"
    );
    let r = gw
        .send(with_xff(
            &gw,
            &elsewhere,
            "203.0.113.7, 198.51.100.1, 10.0.0.5",
        ))
        .await;
    assert_eq!(
        r.error_code(),
        "ip_not_allowed",
        "spoofed leftmost entry ignored"
    );
}

async fn scopes_roles_and_any_scopes(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let (_, reader) = gw.create_key(&["sessions:read"]).await;
    let post = |secret| {
        gw.request(Method::POST, "/api/v1/sessions", Some(secret))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    let r = gw.send(post(&reader)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.error_code(), "insufficient_scope");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sessions:write")
    );

    let (_, operator) = gw
        .create(NewKey {
            role: Some("operator".into()),
            ..new_key("acme")
        })
        .await;
    let r = gw.send(post(&operator)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.upstream_header("x-keygate-scopes").as_deref(),
        Some("sessions:read,sessions:write")
    );

    let (_, everything) = gw.create_key(&["*"]).await;
    assert_eq!(
        gw.get("/api/v1/admin/x", Some(&everything)).await.status,
        StatusCode::OK
    );
    let (_, full_role) = gw
        .create(NewKey {
            role: Some("full_access".into()),
            ..new_key("acme")
        })
        .await;
    assert_eq!(
        gw.get("/api/v1/admin/x", Some(&full_role)).await.status,
        StatusCode::OK
    );
    let r = gw.get("/api/v1/admin/x", Some(&operator)).await;
    assert_eq!(r.error_code(), "insufficient_scope");

    // any_scopes: one of them suffices.
    let (_, writer) = gw.create_key(&["resources:write"]).await;
    assert_eq!(
        gw.get("/api/v1/resources", Some(&writer)).await.status,
        StatusCode::OK
    );
    let r = gw.get("/api/v1/resources", Some(&reader)).await;
    assert_eq!(r.error_code(), "insufficient_scope");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("resources:read")
    );
}

async fn unmatched_route_is_no_route_and_public_routes_need_no_key(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let (_, secret) = gw.create_key(&["*"]).await;
    let r = gw.get("/nothing/here", Some(&secret)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "no_route");
    let r = gw.get("/api/v1/sessions/../admin", Some(&secret)).await;
    assert_eq!(
        r.error_code(),
        "no_route",
        "dot segments never match a route"
    );

    let req = gw
        .request(Method::GET, "/health", None)
        .header("x-keygate-key-id", "key_spoofed")
        .body(Full::default())
        .unwrap();
    let r = gw.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.upstream_header("x-keygate-key-id"),
        None,
        "spoofed identity removed"
    );
}

async fn concurrent_misses_for_one_key_make_one_store_lookup(backend: Backend) {
    let gw = Arc::new(TestGateway::start(backend, "").await);
    // Until subscribed, a Redis gateway trusts nothing it caches and reads on every use. And
    // subscribed before the key is created, so that `create_key` waits for the echo of the
    // creation's invalidation: one arriving during the requests (the subscription came up just
    // after the mark was taken) would bump the key's generation and cost a second read.
    gw.wait_subscribed().await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    let secret = Arc::new(secret);
    let (before, lapses_before) = (gw.store_lookups(), gw.lease_lapses());
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (gw, secret) = (gw.clone(), secret.clone());
            tokio::spawn(async move { gw.get("/api/v1/sessions", Some(&secret)).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    // A stall past the cache lease (a loaded machine) costs one more read of the key, each.
    let lookups = gw.store_lookups() - before;
    let lapses = gw.lease_lapses() - lapses_before;
    assert!(
        lookups >= 1 && lookups <= 1 + lapses,
        "200 concurrent requests: {lookups} lookups with {lapses} lease lapses"
    );
}

async fn deleted_and_updated_keys_take_effect_on_the_next_request(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let (key, secret) = gw.create_key(&["sessions:read"]).await;
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );
    let mut changed = key.clone();
    changed.scopes = vec!["resources:read".into()];
    gw.app.keys().update(changed).await.unwrap();
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(
        r.error_code(),
        "insufficient_scope",
        "scope change seen at once"
    );
    assert_eq!(
        gw.get("/api/v1/resources", Some(&secret)).await.status,
        StatusCode::OK
    );
    gw.app.keys().delete("acme", &key.id).await.unwrap();
    let r = gw.get("/api/v1/resources", Some(&secret)).await;
    assert_eq!(r.error_code(), "invalid_key", "deleted key unknown at once");
}

// ---- forwarding rules (the store backend does not matter here) ----

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    let req = gw
        .request(Method::GET, "/hop", Some(&secret))
        .header("connection", "keep-alive, X-Drop-Me")
        .header("x-drop-me", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic eA==")
        .header("x-stay", "1")
        .body(Full::default())
        .unwrap();
    let r = gw.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    for gone in ["x-drop-me", "keep-alive", "te", "proxy-authorization"] {
        assert_eq!(r.upstream_header(gone), None, "{gone} reached the upstream");
    }
    assert_eq!(r.upstream_header("x-stay").as_deref(), Some("1"));
    assert!(
        r.headers.get("x-upstream-hop").is_none(),
        "named by the upstream's Connection"
    );
    assert!(r.headers.get("keep-alive").is_none());
    assert_eq!(r.headers["x-upstream-end"], "kept");
}

#[tokio::test]
async fn upstream_refusal_is_502_and_slowness_504() {
    let closed = support::upstream::closed_port().await;
    let overlay = format!(
        "upstreams: {{ down: {{ url: \"http://{closed}\" }} }}\n\
         routes:\n  - {{ match: {{ path_prefix: /down }}, upstream: down, public: true }}\n  \
         - {{ match: {{ path_prefix: /slow }}, upstream: app, public: true }}\n"
    );
    let mut gw = TestGateway::start(Backend::Embedded, &overlay).await;
    let r = gw.get("/down/x", None).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.error_code(), "upstream_unavailable");
    assert!(
        !String::from_utf8_lossy(&r.body).contains(&closed.to_string()),
        "no internals"
    );

    drop(gw.shutdown());
    let overlay = format!(
        "upstreams: {{ down: {{ url: \"http://{closed}\" }}, app: {{ timeout: 300ms }} }}\n\
         routes:\n  - {{ match: {{ path_prefix: /slow }}, upstream: app, public: true }}\n"
    );
    let gw = TestGateway::start(Backend::Embedded, &overlay).await;
    let started = Instant::now();
    let r = gw.get("/slow?ms=5000", None).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.error_code(), "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn http2_prior_knowledge_clients_are_served() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let (key, secret) = gw.create_key(&["sessions:read"]).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = gw
        .request(Method::GET, "/api/v1/sessions/h2", Some(&secret))
        .body(Full::default())
        .unwrap();
    let response = client.request(req).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["headers"]["x-keygate-key-id"][0], key.id.as_str());
    assert_eq!(echo["path"], "/api/v1/sessions/h2");
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let gw = TestGateway::start(Backend::Embedded, "").await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    let mut request = format!("ws://{}/ws/echo", gw.proxy)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", secret.expose()).parse().unwrap(),
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed, Message::text(format!("hello {i}")));
    }
    ws.close(None).await.unwrap();

    // Without a key the upgrade is refused like any request.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/ws/echo", gw.proxy))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status(), 401),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests() {
    let overlay = "routes:\n  - { match: { path_prefix: /slow }, upstream: app, public: true }\n";
    let mut gw = TestGateway::start(Backend::Embedded, overlay).await;
    let url = gw.url("/slow?ms=500");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let in_flight = tokio::spawn(async move {
        let r = client.get(url.parse().unwrap()).await.unwrap();
        let status = r.status();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let serving = gw.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // New connections are no longer accepted once draining starts.
    assert!(
        tokio::net::TcpStream::connect(gw.proxy).await.is_err()
            || tokio::time::timeout(Duration::from_millis(300), gw.get("/slow?ms=1", None))
                .await
                .is_err(),
        "new requests must not be served while draining"
    );
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"slow done");
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("drained well before shutdown_timeout")
        .unwrap();
}

#[tokio::test]
async fn health_and_readiness_probes() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let r = gw.admin_get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "ok");
    let r = gw.admin_get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["store"], "ok");
    // The proxy listener does not serve the admin endpoints.
    assert_eq!(gw.get("/readyz", None).await.error_code(), "no_route");
}

// ---- hardening found in review: nothing a client sends can get past a check or leak a secret ----

#[tokio::test]
async fn the_query_credential_never_reaches_the_upstream() {
    let gw = TestGateway::start(Backend::Embedded, "auth: { query_param: api_key }").await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    // An empty segment used to misalign the filter and forward the secret.
    let path = format!("/api/v1/sessions?a=1&&api_key={}&b=2", secret.expose());
    let r = gw.get(&path, None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["query"], "a=1&b=2");
    assert!(!String::from_utf8_lossy(&r.body).contains(secret.expose()));
}

#[tokio::test]
async fn only_websocket_upgrades_are_forwarded() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    // h2c would give the client an HTTP/2 connection to the upstream that no route checks.
    let req = gw
        .request(Method::GET, "/api/v1/sessions", Some(&secret))
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAAQAAP__")
        .body(Full::default())
        .unwrap();
    let r = gw.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.upstream_header("upgrade"), None);
    assert_eq!(r.upstream_header("http2-settings"), None);
}

#[tokio::test]
async fn public_routes_do_not_forward_a_credential_either() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    let (_, other) = gw.create_key(&["sessions:read"]).await;
    // The same secret twice, and sources that disagree (two different secrets): all removed.
    for extra in [&secret, &other] {
        let req = gw
            .request(Method::GET, "/health", Some(&secret))
            .header("x-api-key", extra.expose())
            .body(Full::default())
            .unwrap();
        let r = gw.send(req).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.upstream_header("authorization"), None);
        assert_eq!(r.upstream_header("x-api-key"), None);
    }
}

#[tokio::test]
async fn spoofed_identity_and_address_headers_are_removed() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let (key, secret) = gw.create_key(&["sessions:read"]).await;
    let req = gw
        .request(Method::GET, "/api/v1/sessions", Some(&secret))
        // CGI-style upstreams read `_` and `-` alike.
        .header("x_keygate_key_id", "key_spoofed")
        .header("x_keygate_workspace", "other")
        .header("forwarded", "for=203.0.113.9")
        .header("x-real-ip", "203.0.113.9")
        .body(Full::default())
        .unwrap();
    let r = gw.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.upstream_header("x_keygate_key_id"), None);
    assert_eq!(r.upstream_header("x_keygate_workspace"), None);
    assert_eq!(
        r.upstream_header("x-keygate-key-id").as_deref(),
        Some(key.id.as_str())
    );
    assert_eq!(r.upstream_header("forwarded"), None);
    assert_eq!(r.upstream_header("x-real-ip"), None);
}

#[tokio::test]
async fn servlet_and_backslash_dot_segments_match_no_route() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    for path in ["/health/..;/api/v1/admin", "/api/v1/sessions/..;/admin"] {
        let r = gw.get(path, Some(&secret)).await;
        assert_eq!(r.error_code(), "no_route", "{path}");
    }
}

#[tokio::test]
async fn encoded_and_doubled_slash_paths_are_normalised_before_routing_and_forwarding() {
    // A catch-all route behind the admin one: the raw path `/api/v1/%61dmin` would fall through
    // to it, and an upstream that decodes `%61` would serve `/api/v1/admin`.
    let overlay = "routes:\n  \
        - { match: { path_prefix: /api/v1/admin }, upstream: app, scopes: [admin] }\n  \
        - { match: { path_prefix: / }, upstream: app, scopes: [sessions:read] }\n";
    let gw = TestGateway::start(Backend::Embedded, overlay).await;
    let (_, reader) = gw.create_key(&["sessions:read"]).await;
    for path in [
        "/api/v1/%61dmin/users",
        "/api/v1/ADMIN%2dx",
        "//api/v1//admin/users",
        // Servlet containers drop path parameters: this is their `/api/v1/admin/users`.
        "/api/v1/admin;jsessionid=x/users",
        "/api/v1/admin;/users",
    ] {
        let r = gw.get(path, Some(&reader)).await;
        let expected = if path.contains("ADMIN") {
            StatusCode::OK // case is significant in paths: a different resource
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(r.status, expected, "{path}: {:?}", r.body);
    }
    let (_, admin) = gw.create_key(&["admin"]).await;
    let r = gw
        .get("/api/v1/%61dmin//users%3fx?q=%61", Some(&admin))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let echo = r.json();
    assert_eq!(
        echo["path"], "/api/v1/admin/users%3Fx",
        "the upstream gets the matched path"
    );
    assert_eq!(echo["query"], "q=%61", "the query is forwarded as sent");
    let r = gw.get("/api/v1/admin;v=1/users", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.json()["path"],
        "/api/v1/admin;v=1/users",
        "parameters only matter to matching"
    );
    for bad in ["/api/v1/%zz", "/api/v1/%4"] {
        let r = gw.get(bad, Some(&admin)).await;
        assert_eq!(r.error_code(), "no_route", "{bad}");
    }
}

/// Sends `raw` on a fresh connection and reads the reply until the gateway closes it (at most
/// 5 s): `(status, body)`.
async fn raw_exchange(gw: &TestGateway, raw: &[u8]) -> (u16, String) {
    let (status, body, _) = raw_exchange_with_head(gw, raw).await;
    (status, body)
}

/// [`raw_exchange`], with the response head too.
async fn raw_exchange_with_head(gw: &TestGateway, raw: &[u8]) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
            // One response is all a test needs; the gateway may keep the connection.
            let text = String::from_utf8_lossy(&reply);
            if let Some((head, body)) = text.split_once("\r\n\r\n")
                && let Some(len) = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                })
                && body.len() >= len
            {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&reply).into_owned();
    assert!(read.is_ok() || !text.is_empty(), "no answer to {raw:?}");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?} for {raw:?}"));
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap_or_default();
    (status, body, head)
}

#[tokio::test]
async fn malformed_chunked_bodies_are_400_malformed_request_not_an_upstream_failure() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    let cases: [&[u8]; 5] = [
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n-0\r\n\r\n",
        b"5\nhello\n0\n\n",
        b"5\r\nhello, world\r\n0\r\n\r\n",
    ];
    for body in cases {
        let mut raw = format!(
            "POST /stream/upload HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
            secret.expose()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        let (status, text) = raw_exchange(&gw, &raw).await;
        let shown = String::from_utf8_lossy(body);
        assert_eq!(status, 400, "{shown:?}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "malformed_request", "{shown:?}");
    }
    let (text, _) = gw.app.metrics().render(false);
    assert!(
        text.contains("keygate_requests_total{decision=\"malformed_request\",status=\"400\"} 5\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "keygate_requests_total{decision=\"upstream_unavailable\",status=\"502\"} 0\n"
        ),
        "{text}"
    );
    // A well-formed chunked body still goes through.
    let mut raw = format!(
        "POST /stream/upload HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        secret.expose()
    )
    .into_bytes();
    raw.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
    let (status, text) = raw_exchange(&gw, &raw).await;
    assert_eq!((status, text.as_str()), (200, "{\"bytes\":5}"));
}

#[tokio::test]
async fn connect_is_refused_even_on_public_routes() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    for target in ["/health", "127.0.0.1:9", "gw:443"] {
        let raw = format!("CONNECT {target} HTTP/1.1\r\nHost: gw\r\n\r\n");
        let (status, text, head) = raw_exchange_with_head(&gw, raw.as_bytes()).await;
        assert_eq!(status, 405, "{target}: {text}");
        assert!(
            head.to_ascii_lowercase().contains("\r\nallow: get, "),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "method_not_allowed", "{target}");
    }
}
