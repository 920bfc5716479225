//! Store outages: the harness kills its redis-server mid-run. Cached keys keep working for
//! `cache.max_stale` (and not a moment with `max_stale: 0`), uncached keys get 503
//! `store_unavailable` within the store timeout (never a 401), `/readyz` reports the degraded
//! state, and everything recovers when Redis is back.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::gateway::{Backend, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_keys_survive_an_outage_and_uncached_keys_get_503() {
    let mut gw = TestGateway::start(Backend::Redis, "cache: { ttl: 300ms, max_stale: 1m }").await;
    let (_, cached) = gw.create_key(&["sessions:read"]).await;
    let (_, uncached) = gw.create_key(&["sessions:read"]).await;
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&cached)).await.status,
        StatusCode::OK
    );
    assert_eq!(gw.admin_get("/readyz").await.status, StatusCode::OK);

    gw.redis.as_mut().unwrap().stop();

    assert_eq!(
        gw.get("/api/v1/sessions", Some(&cached)).await.status,
        StatusCode::OK
    );
    // Past ttl the record would be re-read; the store is down, so the cached one serves.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = gw.get("/api/v1/sessions", Some(&cached)).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "stale record served within max_stale"
    );

    let started = Instant::now();
    let r = gw.get("/api/v1/sessions", Some(&uncached)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.error_code(), "store_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the store timeout, took {:?}",
        started.elapsed()
    );
    let r = gw.admin_get("/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["status"], "degraded");

    // Redis is back (empty: the harness runs it without persistence). The gateway reconnects by
    // itself: the store answers again, and a key it no longer knows is invalid, not a 503.
    gw.redis.as_mut().unwrap().start_again();
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.admin_get("/readyz").await.status != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "gateway did not reconnect to Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = gw.get("/api/v1/sessions", Some(&uncached)).await;
    assert_eq!(r.error_code(), "invalid_key");
    let (_, fresh) = gw.create_key(&["sessions:read"]).await;
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&fresh)).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stale_zero_fails_closed() {
    let mut gw = TestGateway::start(Backend::Redis, "cache: { ttl: 300ms, max_stale: 0 }").await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );
    gw.redis.as_mut().unwrap().stop();
    // Within ttl the cached record is still trusted.
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.error_code(), "store_unavailable");
}
