//! Forward authentication behind a real nginx (`auth_request`), configured with the
//! repository's `deploy/nginx/` snippets as they are: allowed requests reach the upstream with
//! the key's identity (a client's own identity headers never do, nor its key), and the client
//! gets the limit headers; refusals reach the client as keygate's own status, headers and JSON,
//! whatever status nginx's `auth_request` would have made of them; the client's address is the
//! one nginx saw; usage and request logs have the original request; and with keygate not
//! answering, the client gets 503 `store_unavailable`, never the upstream.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use std::net::IpAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate::control::NewKey;
use keygate::keys::Secret;
use support::gateway::{Backend, Reply, TestGateway, new_key};
use support::nginx::Nginx;
use support::usage::{log_entries, wait_for_usage};

/// nginx trusted as the proxy in front (it connects from 127.0.0.1); clients connect from
/// 127.0.0.2, so that their address is not a trusted one.
const OVERLAY: &str = "trusted_proxies: [127.0.0.1/32]\nusage: { flush_interval: 50ms }";
const CLIENT_IP: [u8; 4] = [127, 0, 0, 2];

/// The `http { }` body of an nginx in front of `gw`'s upstream, asking `authz` (an address).
fn nginx_http(authz: &str, upstream: std::net::SocketAddr) -> String {
    // keygate-upstream.conf names where a real install runs keygate; the test's port is free.
    format!(
        "upstream keygate_authz {{ server {authz}; keepalive 8; }}\n\
         upstream app {{ server {upstream}; keepalive 8; }}\n\
         server {{\n\
           listen 127.0.0.1:{{port}};\n\
           include snippets/keygate-server.conf;\n\
           location / {{\n\
             include snippets/keygate-protect.conf;\n\
             proxy_pass http://app;\n\
             proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n\
           }}\n\
         }}\n"
    )
}

/// A client from 127.0.0.2.
fn client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(IpAddr::from(CLIENT_IP)));
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn send(nginx: &Nginx, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{}{path}", nginx.port));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let response = client()
        .request(req.body(Full::default()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("nginx answers: {e}\n{}", nginx.log()));
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn bearer(secret: &Secret) -> String {
    format!("Bearer {}", secret.expose())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_the_deploy_snippets_enforces_keys_as_the_proxy_does() {
    let gw = TestGateway::start(Backend::Embedded, OVERLAY).await;
    let nginx = Nginx::start(&nginx_http(&gw.authz.to_string(), gw.upstream.addr));
    let (record, secret) = gw
        .create(NewKey {
            scopes: vec!["sessions:read".into()],
            rate_limit: Some(keygate::config::RateLimitSpec {
                requests: std::num::NonZeroU32::new(2).unwrap(),
                period: std::time::Duration::from_secs(3600),
                burst: None,
            }),
            ..new_key("acme")
        })
        .await;
    let id = record.id.to_string();
    let auth = bearer(&secret);

    // Allowed: the upstream sees the key's identity and not the key; the client, the limits.
    let r = send(
        &nginx,
        Method::GET,
        "/api/v1/sessions?page=2",
        &[("authorization", &auth), ("x-keygate-workspace", "spoofed")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}\n{}", r.body, nginx.log());
    assert_eq!(
        r.upstream_header("x-keygate-key-id").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        r.upstream_header("x-keygate-workspace").as_deref(),
        Some("acme")
    );
    assert_eq!(
        r.upstream_header("x-keygate-scopes").as_deref(),
        Some("sessions:read")
    );
    assert_eq!(r.upstream_header("authorization"), None);
    assert_eq!(r.headers["ratelimit-limit"], "2");
    assert_eq!(r.headers["ratelimit-remaining"], "1");
    let request_id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(r.upstream_header("x-request-id"), Some(request_id));

    // A public route: nothing of the client's identity headers reaches the upstream.
    let r = send(
        &nginx,
        Method::GET,
        "/health",
        &[("x-keygate-key-id", "spoofed")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.upstream_header("x-keygate-key-id"), None);

    // Refusals: keygate's status, headers and JSON, through auth_request's 401/403/500.
    let r = send(&nginx, Method::GET, "/api/v1/sessions", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", nginx.log());
    assert_eq!(r.error_code(), "missing_key");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(
        r.headers.get_all("www-authenticate").iter().count(),
        1,
        "{:?}",
        r.headers
    );
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"keygate\"");

    let r = send(
        &nginx,
        Method::POST,
        "/api/v1/sessions",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.error_code(), "insufficient_scope");
    assert!(r.headers.contains_key("ratelimit-limit"));

    let r = send(&nginx, Method::GET, "/nowhere", &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", nginx.log());
    assert_eq!(r.error_code(), "no_route");

    // A client's own account of the request, beside nginx's, is cleared by the snippet.
    let r = send(
        &nginx,
        Method::GET,
        "/api/v1/sessions",
        &[("x-forwarded-uri", "/health")],
    )
    .await;
    assert_eq!(r.error_code(), "missing_key");

    let ok = send(
        &nginx,
        Method::GET,
        "/api/v1/sessions",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let r = send(
        &nginx,
        Method::GET,
        "/api/v1/sessions",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.error_code(), "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(r.headers["ratelimit-remaining"], "0");

    // Two uses, logged as the client's requests with the address nginx saw.
    wait_for_usage(&gw, &id, 2).await;
    let entries = log_entries(&gw, &id).await;
    let first = entries.as_array().unwrap().last().unwrap();
    assert_eq!(first["method"], "GET", "{entries}");
    assert_eq!(first["path"], "/api/v1/sessions", "{entries}");
    assert_eq!(first["client_ip"], "127.0.0.2", "{entries}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_address_is_the_one_nginx_saw() {
    let gw = TestGateway::start(Backend::Embedded, OVERLAY).await;
    let nginx = Nginx::start(&nginx_http(&gw.authz.to_string(), gw.upstream.addr));
    let allowlisted = |ip: &'static str| {
        gw.create(NewKey {
            scopes: vec!["sessions:read".into()],
            ip_allowlist: vec![keygate::config::ip_list::parse(ip).unwrap()],
            ..new_key("acme")
        })
    };
    let (_, here) = allowlisted("127.0.0.2").await;
    let (_, elsewhere) = allowlisted("203.0.113.7").await;
    // The client claims to be 203.0.113.7; nginx appends the address it saw.
    let spoof = [("x-forwarded-for", "203.0.113.7")];
    let with = |s: &Secret| {
        let auth = bearer(s);
        let nginx = &nginx;
        async move {
            send(
                nginx,
                Method::GET,
                "/api/v1/sessions",
                &[spoof[0], ("authorization", auth.as_str())],
            )
            .await
        }
    };
    assert_eq!(with(&here).await.status, StatusCode::OK);
    assert_eq!(with(&elsewhere).await.error_code(), "ip_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keygate_not_answering_nothing_reaches_the_upstream() {
    let gw = TestGateway::start(Backend::Embedded, OVERLAY).await;
    let closed = support::upstream::closed_port().await;
    let nginx = Nginx::start(&nginx_http(&closed.to_string(), gw.upstream.addr));
    let r = send(
        &nginx,
        Method::GET,
        "/api/v1/sessions",
        &[("authorization", "Bearer x")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", nginx.log());
    assert_eq!(r.json()["error"]["code"], "store_unavailable");
    assert_eq!(
        gw.upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}
