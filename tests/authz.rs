//! Forward authentication on `listen.authz` (SPEC §9): each header convention (nginx's
//! `X-Original-*`, Traefik's and Caddy's `X-Forwarded-*`, `X-Original-URL`, Envoy's request line)
//! is decided exactly as the proxy decides the same request; allowed requests get the identity
//! and limit headers and no body, refusals the documented JSON (and, asked, the same JSON in
//! `X-Keygate-Error`); conventions that disagree are refused; limits, quota, usage and request
//! logs are the proxy's own; the client IP comes only from trusted proxies; nothing reaches the
//! upstream.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

#[macro_use]
mod support;

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use keygate::config::{QuotaSpec, RateLimitSpec, Refill};
use keygate::control::NewKey;
use keygate::keys::Secret;
use support::gateway::{Backend, Reply, TestGateway, new_key};
use support::usage::{log_entries, wait_for_usage};

on_both_backends!(every_convention_decides_as_the_proxy_does);

/// How the ingress tells keygate which request it asks about.
#[derive(Clone, Copy, Debug)]
enum Convention {
    /// nginx `auth_request`: `X-Original-Method`, `X-Original-URI`.
    Nginx,
    /// Traefik `forwardAuth`, Caddy `forward_auth`: `X-Forwarded-Method/-Uri/-Host`.
    Traefik,
    /// `X-Original-URL` (ingress-nginx sends it beside `X-Original-*`).
    OriginalUrl,
    /// Envoy `ext_authz`: the original method and path as the request line.
    Envoy,
}

const CONVENTIONS: [Convention; 4] = [
    Convention::Nginx,
    Convention::Traefik,
    Convention::OriginalUrl,
    Convention::Envoy,
];

/// The authz request an ingress following `convention` sends about `method path`, with
/// `Authorization: Bearer <secret>` when given.
fn authz_request(
    gw: &TestGateway,
    convention: Convention,
    method: Method,
    path: &str,
    secret: Option<&Secret>,
) -> http::request::Builder {
    let base = format!("http://{}", gw.authz);
    let b = match convention {
        Convention::Nginx => Request::get(format!("{base}/.keygate/authz"))
            .header("x-original-method", method.as_str())
            .header("x-original-uri", path),
        Convention::Traefik => Request::get(format!("{base}/"))
            .header("x-forwarded-method", method.as_str())
            .header("x-forwarded-uri", path)
            .header("x-forwarded-host", "api.example.com"),
        Convention::OriginalUrl => Request::get(format!("{base}/authz"))
            .header("x-original-method", method.as_str())
            .header("x-original-url", format!("https://api.example.com{path}")),
        Convention::Envoy => Request::builder()
            .method(method)
            .uri(format!("{base}{path}")),
    };
    match secret {
        Some(s) => b.header("authorization", format!("Bearer {}", s.expose())),
        None => b,
    }
}

async fn authz(
    gw: &TestGateway,
    convention: Convention,
    method: Method,
    path: &str,
    secret: Option<&Secret>,
) -> Reply {
    gw.send(
        authz_request(gw, convention, method, path, secret)
            .body(Full::default())
            .unwrap(),
    )
    .await
}

/// The code of a refusal, or `"allowed"` for a 2xx, and the status.
fn verdict(r: &Reply) -> (StatusCode, String) {
    let code = if r.status.is_success() {
        "allowed".to_owned()
    } else {
        r.error_code()
    };
    (r.status, code)
}

/// A `sessions:read` key of `acme` allowed `requests` an hour.
fn limited_reader(requests: u32) -> NewKey {
    NewKey {
        scopes: vec!["sessions:read".into()],
        rate_limit: Some(per_hour(requests)),
        ..new_key("acme")
    }
}

fn per_hour(requests: u32) -> RateLimitSpec {
    RateLimitSpec {
        requests: NonZeroU32::new(requests).unwrap(),
        period: Duration::from_secs(3600),
        burst: None,
    }
}

async fn every_convention_decides_as_the_proxy_does(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let (_, reader) = gw.create_key(&["sessions:read"]).await;
    let (revoked, revoked_secret) = gw.create_key(&["sessions:read"]).await;
    gw.app.keys().revoke("acme", &revoked.id).await.unwrap();
    let unknown = Secret::new(format!(
        "{}x",
        &reader.expose()[..reader.expose().len() - 1]
    ));
    let cases: [(Method, &str, Option<&Secret>, &str); 8] = [
        (Method::GET, "/api/v1/sessions", Some(&reader), "allowed"),
        (Method::GET, "/health", None, "allowed"),
        (Method::GET, "/api/v1/sessions", None, "missing_key"),
        (
            Method::POST,
            "/api/v1/sessions",
            Some(&reader),
            "insufficient_scope",
        ),
        (
            Method::GET,
            "/api/v1/sessions?x=1",
            Some(&unknown),
            "invalid_key",
        ),
        (
            Method::GET,
            "/api/v1/sessions",
            Some(&revoked_secret),
            "key_revoked",
        ),
        (Method::GET, "/nowhere", Some(&reader), "no_route"),
        (
            Method::GET,
            "/api/v1/sessions/../admin",
            Some(&reader),
            "no_route",
        ),
    ];
    for (method, path, secret, want) in cases {
        let proxied = gw
            .send(
                gw.request(method.clone(), path, secret)
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
        let expected = verdict(&proxied);
        assert_eq!(expected.1, want, "proxy: {method} {path}");
        for convention in CONVENTIONS {
            let asked = authz(&gw, convention, method.clone(), path, secret).await;
            assert_eq!(
                verdict(&asked),
                expected,
                "{convention:?}: {method} {path}: {:?}",
                asked.body
            );
            if want == "missing_key" || want == "invalid_key" || want == "key_revoked" {
                assert_eq!(
                    asked.headers["www-authenticate"],
                    "Bearer realm=\"keygate\""
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_answers_identity_and_limit_headers_and_no_body() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let (record, secret) = gw.create(limited_reader(10)).await;
    let r = authz(
        &gw,
        Convention::Nginx,
        Method::GET,
        "/api/v1/sessions",
        Some(&secret),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty(), "{:?}", r.body);
    assert_eq!(r.headers["x-keygate-key-id"], record.id.to_string());
    assert_eq!(r.headers["x-keygate-workspace"], "acme");
    assert_eq!(r.headers["x-keygate-scopes"], "sessions:read");
    assert_eq!(r.headers["ratelimit-limit"], "10");
    assert_eq!(r.headers["ratelimit-remaining"], "9");
    assert!(r.headers.contains_key("ratelimit-reset"));
    assert_eq!(r.headers["x-request-id"].len(), 32);

    // A public route: the identity headers are there and empty, so that an ingress copying them
    // upstream replaces whatever the client sent under those names.
    let r = authz(&gw, Convention::Traefik, Method::GET, "/health", None).await;
    assert_eq!(r.status, StatusCode::OK);
    for name in [
        "x-keygate-key-id",
        "x-keygate-workspace",
        "x-keygate-scopes",
    ] {
        assert_eq!(r.headers[name], "", "{name}");
    }
    assert!(!r.headers.contains_key("ratelimit-limit"));

    // A client's request id is kept, as the proxy keeps it.
    let req = authz_request(&gw, Convention::Nginx, Method::GET, "/health", None)
        .header("x-request-id", "client-chosen-1")
        .body(Full::default())
        .unwrap();
    assert_eq!(
        gw.send(req).await.headers["x-request-id"],
        "client-chosen-1"
    );

    // Nothing was forwarded, and the metrics count what was allowed.
    assert_eq!(gw.upstream.connections.load(Ordering::SeqCst), 0);
    let metrics = String::from_utf8(gw.admin_get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("keygate_requests_total{decision=\"allowed\",status=\"200\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keygate_connections_open{listener=\"authz\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_the_documented_json_also_in_a_header_when_asked() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let (_, secret) = gw.create(limited_reader(1)).await;
    let r = authz(
        &gw,
        Convention::Nginx,
        Method::GET,
        "/api/v1/sessions",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code(), "missing_key");
    assert_eq!(r.headers["content-type"], "application/json");
    assert!(!r.headers.contains_key("x-keygate-error"));

    // nginx drops a refusal's body: asked, the same JSON comes in X-Keygate-Error too.
    let asked = |secret: Option<&Secret>| {
        authz_request(
            &gw,
            Convention::Nginx,
            Method::GET,
            "/api/v1/sessions",
            secret,
        )
        .header("x-keygate-error-header", "on")
        .body(Full::default())
        .unwrap()
    };
    let r = gw.send(asked(None)).await;
    assert_eq!(r.error_code(), "missing_key");
    assert_eq!(r.headers["x-keygate-error"].as_bytes(), &r.body[..]);

    assert_eq!(gw.send(asked(Some(&secret))).await.status, StatusCode::OK);
    let r = gw.send(asked(Some(&secret))).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.error_code(), "rate_limited");
    assert_eq!(r.headers["x-keygate-error"].as_bytes(), &r.body[..]);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(r.headers["ratelimit-remaining"], "0");

    // A method the proxy never forwards is refused as the proxy refuses it.
    let r = authz(
        &gw,
        Convention::Traefik,
        Method::CONNECT,
        "/api/v1/sessions",
        Some(&secret),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.error_code(), "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conventions_that_name_different_requests_are_malformed() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    // A client adds its own X-Forwarded-Uri naming a public route; nginx passes it on beside
    // the X-Original-URI it sets. Deciding on either alone would be wrong one way or the other.
    let spoofed = [
        ("x-forwarded-uri", "/health"),
        ("x-forwarded-method", "GET"),
        ("x-original-url", "http://api.example.com/health"),
    ];
    for (name, value) in spoofed {
        let req = authz_request(
            &gw,
            Convention::Nginx,
            Method::POST,
            "/api/v1/sessions",
            None,
        )
        .header(name, value)
        .body(Full::default())
        .unwrap();
        let r = gw.send(req).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}");
        assert_eq!(r.error_code(), "malformed_request", "{name}");
    }
    // Agreeing conventions are one request.
    let req = authz_request(
        &gw,
        Convention::Nginx,
        Method::GET,
        "/api/v1/sessions",
        Some(&secret),
    )
    .header("x-forwarded-uri", "/api/v1/sessions")
    .body(Full::default())
    .unwrap();
    assert_eq!(gw.send(req).await.status, StatusCode::OK);
    // A target that is not a path.
    let r = authz(
        &gw,
        Convention::Nginx,
        Method::GET,
        "api/v1/sessions",
        Some(&secret),
    )
    .await;
    assert_eq!(r.error_code(), "malformed_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_quota_usage_and_logs_are_the_proxy_s() {
    let gw = TestGateway::start(Backend::Embedded, "usage: { flush_interval: 50ms }").await;
    let (record, secret) = gw
        .create(NewKey {
            scopes: vec!["sessions:read".into(), "sessions:write".into()],
            rate_limit: Some(per_hour(100)),
            quota: Some(QuotaSpec {
                limit: 3,
                refill: Refill::Monthly,
                refill_day: None,
            }),
            ..new_key("acme")
        })
        .await;
    let id = record.id.to_string();
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );
    let r = authz(
        &gw,
        Convention::Nginx,
        Method::POST,
        "/api/v1/sessions/42?a=b",
        Some(&secret),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-keygate-quota-remaining"], "1");
    assert_eq!(r.headers["ratelimit-remaining"], "98");
    let r = authz(
        &gw,
        Convention::Envoy,
        Method::DELETE,
        "/api/v1/sessions/7",
        Some(&secret),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-keygate-quota-remaining"], "0");
    // The quota is spent across both: the proxy and authz refuse alike now.
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(r.error_code(), "quota_exceeded");
    let r = authz(
        &gw,
        Convention::Traefik,
        Method::GET,
        "/api/v1/sessions",
        Some(&secret),
    )
    .await;
    assert_eq!(r.error_code(), "quota_exceeded");

    // Three uses; the request log has the original requests, not the authz endpoint's.
    wait_for_usage(&gw, &id, 3).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let entries = loop {
        let entries = log_entries(&gw, &id).await;
        if entries.as_array().unwrap().len() == 5 {
            break entries;
        }
        assert!(std::time::Instant::now() < deadline, "{entries}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seen: Vec<(String, String, u64)> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        seen.contains(&("POST".into(), "/api/v1/sessions/42".into(), 200)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("DELETE".into(), "/api/v1/sessions/7".into(), 200)),
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|(_, _, status)| *status == 429).count(),
        2,
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_ip_is_believed_only_from_trusted_proxies() {
    async fn allowlisted(gw: &TestGateway) -> Secret {
        gw.create(NewKey {
            scopes: vec!["sessions:read".into()],
            ip_allowlist: vec![keygate::config::ip_list::parse("203.0.113.7").unwrap()],
            ..new_key("acme")
        })
        .await
        .1
    }
    let ask = |gw: &TestGateway, secret: &Secret| {
        authz_request(
            gw,
            Convention::Nginx,
            Method::GET,
            "/api/v1/sessions",
            Some(secret),
        )
        .header("x-forwarded-for", "203.0.113.7")
        .body(Full::<Bytes>::default())
        .unwrap()
    };
    // The ingress (127.0.0.1) is not trusted: its X-Forwarded-For is ignored.
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let secret = allowlisted(&gw).await;
    let r = gw.send(ask(&gw, &secret)).await;
    assert_eq!(r.error_code(), "ip_not_allowed");

    let gw = TestGateway::start(Backend::Embedded, "trusted_proxies: [127.0.0.0/8]").await;
    let secret = allowlisted(&gw).await;
    assert_eq!(gw.send(ask(&gw, &secret)).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_down_an_uncached_key_is_store_unavailable() {
    let mut gw = TestGateway::start(Backend::Redis, "").await;
    let (_, cached) = gw.create_key(&["sessions:read"]).await;
    let (_, uncached) = gw.create_key(&["sessions:read"]).await;
    async fn ask(gw: &TestGateway, s: &Secret) -> Reply {
        authz(
            gw,
            Convention::Nginx,
            Method::GET,
            "/api/v1/sessions",
            Some(s),
        )
        .await
    }
    assert_eq!(ask(&gw, &cached).await.status, StatusCode::OK);
    gw.redis.as_mut().unwrap().stop();
    let r = ask(&gw, &uncached).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.error_code(), "store_unavailable");
    assert_eq!(ask(&gw, &cached).await.status, StatusCode::OK);
}
