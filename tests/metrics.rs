//! `GET /metrics` on the admin listener, scraped after a known sequence of requests: requests
//! by decision and status, auth failures by reason, cache hits and misses, store calls, latency
//! histograms and usage; store errors during a Redis outage; the two text formats.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use std::time::{Duration, Instant};

use http::{Method, Request, StatusCode};
use http_body_util::Full;
use support::gateway::{Backend, OPS_TOKEN, Reply, TestGateway};

/// The value of one series (`name{labels}` exactly as exposed), failing if it is absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series `{series}` in:\n{text}"))
        .parse()
        .unwrap()
}

async fn scrape(gw: &TestGateway) -> String {
    let r = gw.admin_get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    String::from_utf8(r.body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_sequence_of_requests_shows_in_the_metrics() {
    let gw = TestGateway::start(Backend::Embedded, "usage: { flush_interval: 50ms }").await;
    let (key, secret) = gw.create_key(&["sessions:read"]).await;
    let (revoked, revoked_secret) = gw.create_key(&["sessions:read"]).await;
    let r = gw
        .admin(
            Method::POST,
            &format!("/v1/workspaces/acme/keys/{}/revoke", revoked.id.as_str()),
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // 3 forwarded (1 cache miss, then 2 hits), and one refusal of each kind below.
    for _ in 0..3 {
        assert_eq!(
            gw.get("/api/v1/sessions", Some(&secret)).await.status,
            StatusCode::OK
        );
    }
    let bad = Request::get(gw.url("/api/v1/sessions"))
        .header("authorization", "Bearer kg_live_not-even-close")
        .body(Full::default())
        .unwrap();
    let refusals: Vec<Reply> = vec![
        gw.send(bad).await,                                      // invalid_key, no lookup
        gw.get("/api/v1/admin/x", Some(&secret)).await,          // insufficient_scope, cache hit
        gw.get("/api/v1/sessions", None).await,                  // missing_key
        gw.get("/nowhere", Some(&secret)).await,                 // no_route, no lookup
        gw.get("/api/v1/sessions", Some(&revoked_secret)).await, // key_revoked, cache miss
    ];
    let codes: Vec<String> = refusals.iter().map(Reply::error_code).collect();
    assert_eq!(
        codes,
        [
            "invalid_key",
            "insufficient_scope",
            "missing_key",
            "no_route",
            "key_revoked"
        ]
    );

    let text = scrape(&gw).await;
    for (series, want) in [
        (
            "keygate_requests_total{decision=\"forwarded\",status=\"200\"}",
            3.0,
        ),
        (
            "keygate_requests_total{decision=\"invalid_key\",status=\"401\"}",
            1.0,
        ),
        (
            "keygate_requests_total{decision=\"insufficient_scope\",status=\"403\"}",
            1.0,
        ),
        (
            "keygate_requests_total{decision=\"missing_key\",status=\"401\"}",
            1.0,
        ),
        (
            "keygate_requests_total{decision=\"no_route\",status=\"404\"}",
            1.0,
        ),
        (
            "keygate_requests_total{decision=\"key_revoked\",status=\"401\"}",
            1.0,
        ),
        (
            "keygate_requests_total{decision=\"rate_limited\",status=\"429\"}",
            0.0,
        ),
        ("keygate_auth_failures_total{reason=\"invalid_key\"}", 1.0),
        (
            "keygate_auth_failures_total{reason=\"insufficient_scope\"}",
            1.0,
        ),
        ("keygate_auth_failures_total{reason=\"missing_key\"}", 1.0),
        ("keygate_auth_failures_total{reason=\"key_revoked\"}", 1.0),
        ("keygate_auth_failures_total{reason=\"key_expired\"}", 0.0),
        ("keygate_rate_limited_total", 0.0),
        ("keygate_quota_exceeded_total", 0.0),
        ("keygate_cache_hits_total", 3.0),
        ("keygate_cache_misses_total", 2.0),
        ("keygate_cache_stale_served_total", 0.0),
        ("keygate_gateway_overhead_seconds_count", 8.0),
        ("keygate_gateway_overhead_seconds_bucket{le=\"+Inf\"}", 8.0),
        ("keygate_upstream_duration_seconds_count", 3.0),
        (
            "keygate_store_duration_seconds_count{op=\"get_by_hash\"}",
            2.0,
        ),
        ("keygate_store_errors_total{op=\"get_by_hash\"}", 0.0),
        ("keygate_usage_dropped_total{reason=\"queue_full\"}", 0.0),
        ("keygate_usage_dropped_total{reason=\"queue_closed\"}", 0.0),
    ] {
        assert_eq!(value(&text, series), want, "{series}");
    }
    assert!(
        !text.contains("reason=\"no_route\""),
        "no_route is not an auth failure"
    );
    assert!(value(&text, "keygate_gateway_overhead_seconds_sum") > 0.0);
    // Exported, though moka counts entries lazily.
    assert!(value(&text, "keygate_cache_entries") >= 0.0);
    assert!(!text.contains(secret.expose()) && !text.contains(key.id.as_str()));
    assert!(!text.contains("/api/v1"), "paths never become labels");

    // The 3 uses reach the store through the flusher.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(&gw).await;
        if value(&text, "keygate_usage_written_total") == 3.0 {
            assert!(
                value(
                    &text,
                    "keygate_store_duration_seconds_count{op=\"write_usage\"}"
                ) >= 1.0
            );
            assert_eq!(
                value(&text, "keygate_store_errors_total{op=\"write_usage\"}"),
                0.0
            );
            break;
        }
        assert!(Instant::now() < deadline, "usage never written:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_open_like_the_probes_and_speak_openmetrics_on_request() {
    let gw = TestGateway::start(Backend::Embedded, "").await;
    let r = gw
        .send(
            Request::get(format!("http://{}/metrics", gw.admin))
                .header(
                    "accept",
                    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
                )
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE keygate_requests counter\n"));

    let text = scrape(&gw).await;
    assert!(text.contains("# TYPE keygate_requests_total counter\n"));
    assert!(!text.contains("# EOF"));
    let r = gw.admin(Method::POST, "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_are_counted_during_an_outage() {
    let mut gw = TestGateway::start(Backend::Redis, "usage: { flush_interval: 50ms }").await;
    let (_, cached) = gw.create_key(&["sessions:read"]).await;
    let (_, uncached) = gw.create_key(&["sessions:read"]).await;
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&cached)).await.status,
        StatusCode::OK
    );
    gw.redis.as_mut().unwrap().stop();

    assert_eq!(
        gw.get("/api/v1/sessions", Some(&cached)).await.status,
        StatusCode::OK
    );
    let r = gw.get("/api/v1/sessions", Some(&uncached)).await;
    assert_eq!(r.error_code(), "store_unavailable");

    // The flusher's writes fail too, and are retried.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(&gw).await;
        if value(&text, "keygate_usage_flush_failures_total") >= 1.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "no failed flush:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        value(
            &text,
            "keygate_requests_total{decision=\"store_unavailable\",status=\"503\"}"
        ),
        1.0
    );
    assert!(value(&text, "keygate_store_errors_total{op=\"get_by_hash\"}") >= 1.0);
    assert!(value(&text, "keygate_store_errors_total{op=\"write_usage\"}") >= 1.0);
    assert_eq!(value(&text, "keygate_usage_written_total"), 0.0);
    assert_eq!(value(&text, "keygate_usage_pending_keys"), 1.0);
    assert!(
        !text.contains("reason=\"store_unavailable\""),
        "an outage is not an auth failure"
    );
}
