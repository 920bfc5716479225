//! Usage counts, per-day usage and request logs as a key's owner sees them through the admin
//! API: counted after a flush, exact after a graceful stop of the real binary and across two
//! instances on one Redis, buffered across a Redis restart, request logs on both backends, and
//! uses that cannot be queued counted as dropped.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

#[macro_use]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keygate::App;
use keygate::metrics::UsageDrop;
use keygate::store::KeyStore;
use serde_json::Value;
use support::gateway::{
    BASE_CONFIG, Backend, OPS_TOKEN, TestGateway, VIEWER_TOKEN, config_from, new_key,
};
use support::process::{KeygateProcess, issue_key};
use support::redis::RedisServer;
use support::upstream::TestUpstream;
use support::usage::{key_json, log_entries, wait_for_usage};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Flushes often, so tests wait little.
const FAST_FLUSH: &str = "usage: { flush_interval: 50ms }";

fn rfc3339(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().expect("a timestamp"), &Rfc3339).expect("RFC 3339")
}

async fn counts_every_forwarded_request_after_a_flush(backend: Backend) {
    // Logs off: the counts do not depend on them.
    let overlay = "usage: { flush_interval: 50ms, request_log: { max_per_key: 0 } }";
    let gw = TestGateway::start(backend, overlay).await;
    let (key, secret) = gw.create_key(&["sessions:read"]).await;
    let before = OffsetDateTime::now_utc();
    assert_eq!(key_json(&gw, key.id.as_str()).await["usage_count"], 0);

    const N: u64 = 25;
    for _ in 0..N {
        let r = gw.get("/api/v1/sessions", Some(&secret)).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // Refused requests of the same key are not uses.
    let r = gw.get("/api/v1/admin/x", Some(&secret)).await;
    assert_eq!(r.error_code(), "insufficient_scope");

    let json = wait_for_usage(&gw, key.id.as_str(), N).await;
    let last_used = rfc3339(&json["last_used_at"]);
    assert!(
        last_used >= before - time::Duration::milliseconds(1)
            && last_used <= OffsetDateTime::now_utc(),
        "last_used_at {last_used} outside the test's run"
    );
    // And it stays exact: nothing is written twice.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(key_json(&gw, key.id.as_str()).await["usage_count"], N);
    assert_eq!(
        log_entries(&gw, key.id.as_str()).await,
        serde_json::json!([])
    );
}

async fn request_logs_keep_the_newest_and_go_with_the_key(backend: Backend) {
    let overlay = "usage: { flush_interval: 50ms, request_log: { max_per_key: 5 } }";
    let gw = TestGateway::start(backend, overlay).await;
    let (key, secret) = gw.create_key(&["sessions:read", "sessions:write"]).await;
    let id = key.id.as_str();
    for i in 0..7 {
        let r = gw
            .get(&format!("/api/v1/sessions/{i}?token=hidden"), Some(&secret))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = gw
        .send(
            gw.request(Method::POST, "/api/v1/sessions/new?x=1", Some(&secret))
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    wait_for_usage(&gw, id, 8).await;

    let logs_path = format!("/v1/workspaces/acme/keys/{id}/logs");
    let r = gw
        .admin(Method::GET, &logs_path, Some(OPS_TOKEN), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let entries = r.json()["entries"].as_array().unwrap().clone();
    let paths: Vec<&str> = entries
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/api/v1/sessions/new",
            "/api/v1/sessions/6",
            "/api/v1/sessions/5",
            "/api/v1/sessions/4",
            "/api/v1/sessions/3"
        ],
        "newest first, capped at max_per_key, never the query string"
    );
    assert_eq!(entries[0]["method"], "POST");
    assert_eq!(entries[1]["method"], "GET");
    let times: Vec<OffsetDateTime> = entries.iter().map(|e| rfc3339(&e["time"])).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    for e in &entries {
        assert_eq!(e["status"], 200);
        assert_eq!(e["client_ip"], "127.0.0.1");
        let latency = e["latency_ms"].as_f64().unwrap();
        assert!((0.0..5_000.0).contains(&latency), "{e}");
    }
    let r = gw
        .admin(
            Method::GET,
            &format!("{logs_path}?limit=2"),
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.json()["entries"].as_array().unwrap().len(), 2);

    let r = gw
        .admin(
            Method::DELETE,
            &format!("/v1/workspaces/acme/keys/{id}"),
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = gw
        .admin(Method::GET, &logs_path, Some(OPS_TOKEN), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let stored = gw
        .app
        .store()
        .request_logs("acme", &key.id, 10)
        .await
        .unwrap();
    assert!(stored.is_empty(), "the key's logs went with it: {stored:?}");
}

async fn refusals_of_a_recognised_key_are_logged_with_their_code_and_not_counted(backend: Backend) {
    let overlay = "usage: { flush_interval: 50ms, request_log: { max_per_key: 50 } }";
    let gw = TestGateway::start(backend, overlay).await;
    let (key, secret) = gw
        .create(keygate::control::NewKey {
            scopes: vec!["sessions:read".into()],
            rate_limit: Some(keygate::config::RateLimitSpec {
                requests: std::num::NonZeroU32::new(2).unwrap(),
                period: Duration::from_secs(3600),
                burst: None,
            }),
            ..new_key("acme")
        })
        .await;
    let id = key.id.as_str();
    assert_eq!(gw.get("/api/v1/sessions", Some(&secret)).await.status, 200);
    let r = gw.get("/api/v1/admin/x", Some(&secret)).await;
    assert_eq!(r.error_code(), "insufficient_scope");
    assert_eq!(gw.get("/api/v1/sessions", Some(&secret)).await.status, 200);
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(r.error_code(), "rate_limited");
    // Limits on the IP allowlist, then revoked.
    gw.admin(
        Method::PATCH,
        &format!("/v1/workspaces/acme/keys/{id}"),
        Some(OPS_TOKEN),
        Some(serde_json::json!({"ip_allowlist": ["192.0.2.1"]})),
    )
    .await;
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.error_code(),
        "ip_not_allowed"
    );
    gw.admin(
        Method::POST,
        &format!("/v1/workspaces/acme/keys/{id}/revoke"),
        Some(OPS_TOKEN),
        None,
    )
    .await;
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.error_code(),
        "key_revoked"
    );
    // An unknown secret belongs to no key: nothing to log anywhere.
    assert_eq!(
        gw.get(
            "/api/v1/sessions",
            Some(&keygate::keys::Secret::new("kg_live_nope".into()))
        )
        .await
        .error_code(),
        "invalid_key"
    );

    let want = [
        ("key_revoked", 401),
        ("ip_not_allowed", 403),
        ("rate_limited", 429),
        ("forwarded", 200),
        ("insufficient_scope", 403),
        ("forwarded", 200),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let entries = loop {
        let logs = gw
            .admin(
                Method::GET,
                &format!("/v1/workspaces/acme/keys/{id}/logs"),
                Some(OPS_TOKEN),
                None,
            )
            .await
            .json();
        let entries = logs["entries"].as_array().unwrap().clone();
        if entries.len() >= want.len() {
            break entries;
        }
        assert!(Instant::now() < deadline, "logs stayed {logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let got: Vec<(&str, u64)> = entries
        .iter()
        .map(|e| (e["code"].as_str().unwrap(), e["status"].as_u64().unwrap()))
        .collect();
    let want: Vec<(&str, u64)> = want.iter().map(|&(c, s)| (c, s)).collect();
    assert_eq!(got, want, "newest first");
    // Only the two forwarded requests are uses.
    let json = key_json(&gw, id).await;
    assert_eq!(json["usage_count"], 2);
}

/// `GET …/keys/{id}/usage` (with `query`) as the ops token.
async fn daily(gw: &TestGateway, id: &str, query: &str) -> support::gateway::Reply {
    gw.admin(
        Method::GET,
        &format!("/v1/workspaces/acme/keys/{id}/usage{query}"),
        Some(OPS_TOKEN),
        None,
    )
    .await
}

/// The `days` of a `…/usage` answer as `(date, requests)`, asserting 200.
fn day_counts(r: &support::gateway::Reply) -> Vec<(String, u64)> {
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()["days"]
        .as_array()
        .expect("days")
        .iter()
        .map(|d| {
            let date = d["date"].as_str().expect("date").to_owned();
            (date, d["requests"].as_u64().expect("requests"))
        })
        .collect()
}

/// The last `n` UTC days as `YYYY-MM-DD`, oldest first, each with `requests`.
fn last_days(n: i64, today_requests: u64) -> Vec<(String, u64)> {
    let today = OffsetDateTime::now_utc().date();
    (0..n)
        .rev()
        .map(|ago| {
            let day = today - time::Duration::days(ago);
            (day.to_string(), if ago == 0 { today_requests } else { 0 })
        })
        .collect()
}

async fn daily_usage_counts_uses_per_day_and_goes_with_the_key(backend: Backend) {
    let overlay = "usage: { flush_interval: 50ms, request_log: { max_per_key: 10 } }";
    let gw = TestGateway::start(backend, overlay).await;
    let (key, secret) = gw.create_key(&["sessions:read"]).await;
    let id = key.id.as_str();
    assert_eq!(
        day_counts(&daily(&gw, id, "?days=2").await),
        last_days(2, 0)
    );

    const N: u64 = 7;
    for _ in 0..N {
        assert_eq!(gw.get("/api/v1/sessions", Some(&secret)).await.status, 200);
    }
    // A refusal is logged, not counted.
    let r = gw.get("/api/v1/admin/x", Some(&secret)).await;
    assert_eq!(r.error_code(), "insufficient_scope");
    wait_for_usage(&gw, id, N).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw
        .app
        .store()
        .request_logs("acme", &key.id, 10)
        .await
        .unwrap()
        .len()
        < 8
    {
        assert!(Instant::now() < deadline, "the refusal was never logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(
        day_counts(&daily(&gw, id, "?days=3").await),
        last_days(3, N)
    );
    assert_eq!(day_counts(&daily(&gw, id, "").await), last_days(30, N));
    assert_eq!(
        day_counts(&daily(&gw, id, "?days=90").await),
        last_days(90, N)
    );
    assert_eq!(
        day_counts(&daily(&gw, id, "?days=1").await),
        last_days(1, N)
    );

    for bad in ["0", "91", "abc", "-1", "", "3.5"] {
        let r = daily(&gw, id, &format!("?days={bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "days={bad}");
        assert_eq!(r.error_code(), "invalid_request", "days={bad}");
        assert_eq!(r.json()["error"]["field"], "days", "days={bad}");
    }
    // `api.key.view` is enough, on the key's workspace only.
    let viewed = |ws: &str| format!("/v1/workspaces/{ws}/keys/{id}/usage?days=1");
    let r = gw
        .admin(Method::GET, &viewed("acme"), Some(VIEWER_TOKEN), None)
        .await;
    assert_eq!(day_counts(&r), last_days(1, N));
    let r = gw
        .admin(Method::GET, &viewed("other"), Some(VIEWER_TOKEN), None)
        .await;
    assert_eq!(r.error_code(), "forbidden");
    let r = daily(&gw, id, "?limit=3").await;
    assert_eq!(r.error_code(), "invalid_request");
    let unknown = keygate::keys::KeyId::generate();
    let r = daily(&gw, unknown.as_str(), "?days=3").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let r = gw
        .admin(
            Method::POST,
            &format!("/v1/workspaces/acme/keys/{id}/usage"),
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    let r = gw
        .admin(
            Method::DELETE,
            &format!("/v1/workspaces/acme/keys/{id}"),
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        daily(&gw, id, "?days=3").await.status,
        StatusCode::NOT_FOUND
    );
    let today = OffsetDateTime::now_utc().date();
    let stored = gw
        .app
        .store()
        .daily_usage("acme", &key.id, today - time::Duration::days(100), today)
        .await
        .unwrap();
    assert!(
        stored.is_empty(),
        "per-day usage went with the key: {stored:?}"
    );
}

on_both_backends!(
    daily_usage_counts_uses_per_day_and_goes_with_the_key,
    counts_every_forwarded_request_after_a_flush,
    request_logs_keep_the_newest_and_go_with_the_key,
    refusals_of_a_recognised_key_are_logged_with_their_code_and_not_counted,
);

/// GET on a running binary's admin API with the ops token; asserts 200.
async fn admin_get(process: &KeygateProcess, path: &str) -> Value {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::get(format!("http://127.0.0.1:{}{path}", process.admin))
        .header("authorization", format!("Bearer {OPS_TOKEN}"))
        .body(Full::default())
        .unwrap();
    let r = client.request(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_after_a_graceful_stop_of_the_binary() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // No flush would happen for an hour: only the one on SIGTERM can write the counts.
    let text = format!(
        "{BASE_CONFIG}\n\
         store: {{ backend: embedded, embedded: {{ path: \"{}\" }} }}\n\
         upstreams: {{ app: {{ url: \"{}\" }} }}\n\
         usage: {{ flush_interval: 1h }}\n",
        dir.path().join("keygate.redb").display(),
        upstream.url()
    );
    // Issue a key into the same file through the library, then hand the file to the binary.
    let (key, secret) = issue_key(
        &text,
        keygate::control::NewKey {
            scopes: vec!["sessions:read".into()],
            ..new_key("acme")
        },
    )
    .await;
    let key_path = format!("/v1/workspaces/acme/keys/{}", key.id.as_str());

    let mut gateway = KeygateProcess::start(dir.path(), "first", &text).await;
    let proxy_port = gateway.proxy;
    const N: u64 = 120;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let auth = format!("Bearer {}", secret.expose());
    let sends = (0..N).map(|_| {
        let (client, auth) = (client.clone(), auth.clone());
        async move {
            let req = http::Request::get(format!("http://127.0.0.1:{proxy_port}/api/v1/sessions"))
                .header("authorization", auth)
                .body(Full::default())
                .unwrap();
            client.request(req).await.unwrap().status()
        }
    });
    let statuses = futures_util::future::join_all(sends).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(admin_get(&gateway, &key_path).await["usage_count"], 0);
    gateway.terminate().await;

    let mut again = KeygateProcess::start(dir.path(), "second", &text).await;
    let json = admin_get(&again, &key_path).await;
    assert_eq!(json["usage_count"], N, "{json}");
    assert!(json["last_used_at"].is_string(), "{json}");
    // The per-day split was written by the same final flush.
    let days = admin_get(&again, &format!("{key_path}/usage?days=1")).await;
    let today = OffsetDateTime::now_utc().date().to_string();
    assert_eq!(
        days,
        serde_json::json!({"days": [{"date": today, "requests": N}]})
    );
    again.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_buffered_across_a_redis_restart() {
    let overlay = "usage: { flush_interval: 50ms }\ncache: { ttl: 300ms, max_stale: 1m }";
    let gw = TestGateway::start_owning_redis(RedisServer::start_persistent(), overlay).await;
    let (key, secret) = gw.create_key(&["sessions:read"]).await;
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );
    let gw = Arc::new(tokio::sync::RwLock::new(gw));

    // Traffic for the whole scenario, two requests at a time; counts what was answered 2xx.
    let ok = Arc::new(AtomicU64::new(1));
    let other = Arc::new(AtomicU64::new(0));
    let during_outage = Arc::new(AtomicU64::new(0));
    let outage = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let (gw, secret) = (gw.clone(), secret.clone());
            let (ok, other, during, outage, stop) = (
                ok.clone(),
                other.clone(),
                during_outage.clone(),
                outage.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let down = outage.load(Ordering::SeqCst);
                    let r = gw.read().await.get("/api/v1/sessions", Some(&secret)).await;
                    if r.status.is_success() {
                        ok.fetch_add(1, Ordering::SeqCst);
                        if down && outage.load(Ordering::SeqCst) {
                            during.fetch_add(1, Ordering::SeqCst);
                        }
                    } else {
                        other.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        // The write lock waits for requests in flight, so "during" is exact.
        let mut g = gw.write().await;
        g.redis.as_mut().unwrap().stop_gracefully();
        outage.store(true, Ordering::SeqCst);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    {
        let mut g = gw.write().await;
        outage.store(false, Ordering::SeqCst);
        g.redis.as_mut().unwrap().start_again();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.await.unwrap();
    }

    let gw = gw.read().await;
    let answered = ok.load(Ordering::SeqCst);
    assert!(
        during_outage.load(Ordering::SeqCst) > 0,
        "cached keys kept working during the outage"
    );
    assert_eq!(
        other.load(Ordering::SeqCst),
        0,
        "a cached key is never refused within max_stale"
    );
    let json = wait_for_usage(&gw, key.id.as_str(), answered).await;
    assert!(json["last_used_at"].is_string());
    assert!(
        gw.app.metrics().usage().flush_failures.get() > 0,
        "the flusher saw the outage"
    );
    // Settled: nothing more arrives, nothing is written twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        key_json(&gw, key.id.as_str()).await["usage_count"],
        answered
    );
}

/// Uses that find the queue full are dropped and counted; those queued are written once a
/// flusher runs. The proxy is served here without [`App::serve`], so no flusher drains the
/// queue until the test starts one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_the_uses_it_cannot_hold() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "store: {{ backend: embedded, embedded: {{ path: \"{}\" }} }}",
        dir.path().join("keygate.redb").display()
    );
    let upstreams = format!("upstreams: {{ app: {{ url: \"{}\" }} }}", upstream.url());
    let usage = "usage: { flush_interval: 50ms, queue_capacity: 3 }";
    let config = config_from(&[BASE_CONFIG, &store, &upstreams, usage]);
    let app = Arc::new(App::new(config).await.unwrap());
    let (key, secret) = app
        .keys()
        .create(
            keygate::control::NewKey {
                scopes: vec!["sessions:read".into()],
                ..new_key("acme")
            },
            None,
        )
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let drain = keygate::server::Drain::new();
    let gateway = app.gateway().clone();
    let serving = keygate::server::accept_loop(
        listener,
        keygate::server::ListenerOptions::new(
            keygate::metrics::Listener::Proxy,
            &keygate::config::Limits::default(),
            app.metrics(),
        ),
        move |req, conn| {
            let gateway = gateway.clone();
            async move { gateway.handle(req, conn).await }
        },
        stop_rx,
        &drain,
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let requests = async {
        for _ in 0..5 {
            let req = http::Request::get(format!("http://{proxy}/api/v1/sessions"))
                .header("authorization", format!("Bearer {}", secret.expose()))
                .body(Full::default())
                .unwrap();
            assert_eq!(client.request(req).await.unwrap().status(), StatusCode::OK);
        }
        let _ = stop_tx.send(true);
    };
    tokio::join!(serving, requests);

    let usage = app.metrics().usage();
    assert_eq!(usage.dropped_count(UsageDrop::QueueFull), 2);
    assert_eq!(usage.dropped_count(UsageDrop::QueueClosed), 0);
    let (text, _) = app.metrics().render(false);
    assert!(
        text.contains("keygate_usage_dropped_total{reason=\"queue_full\"} 2\n"),
        "{text}"
    );

    // A flusher drains what was queued, and a clean stop writes it.
    let listeners = keygate::Listeners {
        proxy: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        authz: None,
    };
    app.serve(listeners, async {}).await.unwrap();
    let stored = app.store().get("acme", &key.id).await.unwrap().unwrap();
    assert_eq!(stored.usage_count, 3);
}

/// A use recorded after the flusher stopped (a request that outlived the drain) is counted as
/// `queue_closed`, apart from a full queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uses_after_the_flusher_stopped_count_as_closed() {
    let overlay = format!("{FAST_FLUSH}\nshutdown_timeout: 200ms");
    let mut gw = TestGateway::start(Backend::Embedded, &overlay).await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    let gw_slow = gw.request(Method::GET, "/slow?ms=1500", Some(&secret));
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let slow = tokio::spawn(client.request(gw_slow.body(Full::default()).unwrap()));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    gw.shutdown().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "drain gave up");
    let usage = gw.app.metrics().usage().clone();
    assert_eq!(usage.dropped_count(UsageDrop::QueueClosed), 0);
    // The slow request finishes after the flusher stopped.
    let _ = slow.await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while usage.dropped_count(UsageDrop::QueueClosed) == 0 {
        assert!(Instant::now() < deadline, "the late use was not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(usage.dropped_count(UsageDrop::QueueClosed), 1);
    assert_eq!(usage.dropped_count(UsageDrop::QueueFull), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_count_days_exactly() {
    let redis = RedisServer::start();
    let a = TestGateway::start_on_redis(&redis, FAST_FLUSH).await;
    let b = TestGateway::start_on_redis(&redis, FAST_FLUSH).await;
    let (key, secret) = a.create_key(&["sessions:read"]).await;
    let id = key.id.as_str();
    const N: u64 = 40;
    async fn uses(gw: &TestGateway, secret: &keygate::keys::Secret) {
        for _ in 0..N {
            assert_eq!(gw.get("/api/v1/sessions", Some(secret)).await.status, 200);
        }
    }
    tokio::join!(uses(&a, &secret), uses(&b, &secret));
    wait_for_usage(&a, id, 2 * N).await;
    for gw in [&a, &b] {
        assert_eq!(
            day_counts(&daily(gw, id, "?days=2").await),
            last_days(2, 2 * N)
        );
    }
}
