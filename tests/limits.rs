//! Rate limits, quotas and the failed-authentication limit, end to end: real HTTP through the
//! gateway on loopback, on both store backends and in both rate-limit modes; two instances on
//! one redis-server for exact quotas; two gateway processes for the global limit's accuracy;
//! and a Redis outage. The algorithm's exactness under a fake clock is tested in `limits::*`.
//!
//! Limits here are per hour (or longer) so that real time cannot refill a bucket during a test:
//! the counts are exact without an injected clock and without sleeping.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

#[macro_use]
mod support;

use std::num::NonZeroU32;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keygate::config::{QuotaSpec, RateLimitSpec, Refill};
use keygate::control::NewKey;
use keygate::keys::{Secret, SecretFormat};
use support::gateway::{BASE_CONFIG, Backend, Reply, TestGateway, new_key};
use support::process::{KeygateProcess, issue_key};
use support::redis::RedisServer;
use support::upstream::TestUpstream;
use tokio::sync::Semaphore;

on_both_backends!(
    the_limit_header_is_the_bucket_and_never_below_remaining,
    limit_headers_count_down_and_429_says_when_to_retry,
    the_most_specific_limit_wins,
    changing_a_keys_limit_keeps_its_bucket,
    a_rate_limited_request_spends_no_quota,
    a_spent_quota_is_429_until_its_refill_and_a_keys_quota_beats_its_roles,
    failed_authentications_are_limited_per_client_ip,
    quota_counts_survive_a_graceful_restart,
);

const HOUR: u64 = 3600;

fn per_hour(requests: u32) -> RateLimitSpec {
    RateLimitSpec {
        requests: NonZeroU32::new(requests).unwrap(),
        period: Duration::from_secs(HOUR),
        burst: None,
    }
}

fn quota(limit: u64, refill: Refill, refill_day: Option<u8>) -> QuotaSpec {
    QuotaSpec {
        limit,
        refill,
        refill_day,
    }
}

/// A numeric response header.
fn num(r: &Reply, name: &str) -> Option<u64> {
    r.headers
        .get(name)
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

/// `(RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset)`.
fn rate_headers(r: &Reply) -> (Option<u64>, Option<u64>, Option<u64>) {
    (
        num(r, "ratelimit-limit"),
        num(r, "ratelimit-remaining"),
        num(r, "ratelimit-reset"),
    )
}

/// A GET from client `ip` (the gateway trusts 127.0.0.1 as a proxy in the tests that use it).
async fn get_from(gw: &TestGateway, ip: &str, path: &str, secret: Option<&Secret>) -> Reply {
    let req = gw
        .request(Method::GET, path, secret)
        .header("x-forwarded-for", ip)
        .body(Full::default())
        .unwrap();
    gw.send(req).await
}

/// How many of `n` requests in a row pass.
async fn passes(gw: &TestGateway, path: &str, secret: &Secret, n: usize) -> usize {
    let mut passed = 0;
    for _ in 0..n {
        let r = gw.get(path, Some(secret)).await;
        match r.status {
            StatusCode::OK => passed += 1,
            StatusCode::TOO_MANY_REQUESTS => assert_eq!(r.error_code(), "rate_limited"),
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    passed
}

async fn limit_headers_count_down_and_429_says_when_to_retry(backend: Backend) {
    headers_and_retry_after(backend, "").await;
}

async fn headers_and_retry_after(backend: Backend, mode: &str) {
    let overlay = format!("rate_limits: {{ default: {{ requests: 3, period: 1h }} {mode} }}");
    let gw = TestGateway::start(backend, &overlay).await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    // T = 20 min, bucket of 3: each request pushes the full bucket 20 min further out.
    for (remaining, reset) in [(2, 1200), (1, 2400), (0, 3600)] {
        let r = gw.get("/api/v1/sessions", Some(&secret)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(rate_headers(&r), (Some(3), Some(remaining), Some(reset)));
        assert_eq!(r.headers["ratelimit-policy"], "3;w=3600");
        assert_eq!(num(&r, "x-keygate-quota-remaining"), None, "no quota");
    }
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.error_code(), "rate_limited");
    assert_eq!(num(&r, "retry-after"), Some(1200));
    assert_eq!(rate_headers(&r), (Some(3), Some(0), Some(3600)));

    // Not authenticated: no limit headers.
    let r = gw.get("/health", None).await;
    assert_eq!(
        (r.status, num(&r, "ratelimit-limit")),
        (StatusCode::OK, None)
    );
    let r = gw.get("/api/v1/sessions", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(num(&r, "ratelimit-limit"), None);

    // Authenticated but refused before the limit stage: the limit as it stands, and nothing
    // counted.
    let (_, other) = gw.create_key(&["resources:read"]).await;
    for _ in 0..2 {
        let r = gw.get("/api/v1/sessions", Some(&other)).await;
        assert_eq!(r.error_code(), "insufficient_scope");
        assert_eq!(rate_headers(&r), (Some(3), Some(3), Some(0)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_mode_counts_down_and_says_when_to_retry() {
    headers_and_retry_after(Backend::Redis, ", mode: redis").await;
}

async fn the_most_specific_limit_wins(backend: Backend) {
    let gw = TestGateway::start(
        backend,
        r#"
rate_limits:
  default: { requests: 5, period: 1h }
  roles: { viewer: { requests: 4, period: 1h } }
routes:
  - match: { path_prefix: /api/v1/sessions }
    upstream: app
    scopes: [sessions:read]
  - match: { path_prefix: /api/v1/resources }
    upstream: app
    any_scopes: [resources:read]
    rate_limit: { requests: 3, period: 1h }
"#,
    )
    .await;
    let key = |role: Option<&str>, rate_limit| NewKey {
        scopes: vec!["sessions:read".into(), "resources:read".into()],
        role: role.map(str::to_owned),
        rate_limit,
        ..new_key("acme")
    };
    let (s, r) = ("/api/v1/sessions", "/api/v1/resources");

    // The default; a route's own limit has its own bucket per key.
    let (_, plain) = gw.create(key(None, None)).await;
    assert_eq!(passes(&gw, s, &plain, 10).await, 5);
    assert_eq!(passes(&gw, r, &plain, 10).await, 3);

    // The role's limit beats the default; the route's beats the role's.
    let (_, viewer) = gw.create(key(Some("viewer"), None)).await;
    assert_eq!(passes(&gw, s, &viewer, 10).await, 4);
    let first = gw.get(r, Some(&viewer)).await;
    assert_eq!(rate_headers(&first).0, Some(3));
    assert_eq!(passes(&gw, r, &viewer, 10).await, 2);

    // The key's own limit beats them all, on every route, in one bucket.
    let (_, own) = gw.create(key(Some("viewer"), Some(per_hour(2)))).await;
    assert_eq!(passes(&gw, s, &own, 1).await, 1);
    let last = gw.get(r, Some(&own)).await;
    assert_eq!(last.status, StatusCode::OK);
    assert_eq!(rate_headers(&last), (Some(2), Some(0), Some(2 * 1800)));
    assert_eq!(
        passes(&gw, r, &own, 5).await + passes(&gw, s, &own, 5).await,
        0
    );

    // No limit anywhere: no headers.
    let gw = TestGateway::start(backend, "").await;
    let (_, free) = gw.create_key(&["sessions:read"]).await;
    let r = gw.get(s, Some(&free)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(rate_headers(&r), (None, None, None));
}

async fn changing_a_keys_limit_keeps_its_bucket(backend: Backend) {
    limit_change_keeps_bucket(backend, "").await;
}

async fn limit_change_keeps_bucket(backend: Backend, overlay: &str) {
    let gw = TestGateway::start(backend, overlay).await;
    let (key, secret) = gw
        .create(NewKey {
            scopes: vec!["sessions:read".into()],
            rate_limit: Some(per_hour(3)),
            ..new_key("acme")
        })
        .await;
    assert_eq!(passes(&gw, "/api/v1/sessions", &secret, 5).await, 3);

    // Ten an hour now. A fresh bucket would pass at once; this one is 3 × 20 min = 1 h behind,
    // and the new limit allows 1 h of backlog: the next request passes after T = 6 min.
    let mut raised = key.clone();
    raised.rate_limit = Some(per_hour(10));
    gw.app.keys().update(raised).await.unwrap();
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(num(&r, "retry-after"), Some(360));
    assert_eq!(rate_headers(&r), (Some(10), Some(0), Some(3600)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_mode_keeps_the_bucket_when_the_limit_changes() {
    limit_change_keeps_bucket(Backend::Redis, "rate_limits: { mode: redis }").await;
}

async fn a_rate_limited_request_spends_no_quota(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let (key, secret) = gw
        .create(NewKey {
            scopes: vec!["sessions:read".into()],
            rate_limit: Some(per_hour(2)),
            quota: Some(quota(10, Refill::None, None)),
            ..new_key("acme")
        })
        .await;
    for left in [9, 8] {
        let r = gw.get("/api/v1/sessions", Some(&secret)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(num(&r, "x-keygate-quota-remaining"), Some(left));
    }
    for _ in 0..4 {
        let r = gw.get("/api/v1/sessions", Some(&secret)).await;
        assert_eq!(r.error_code(), "rate_limited");
        assert_eq!(num(&r, "x-keygate-quota-remaining"), Some(8));
    }
    // Without the rate limit, the next request finds 8 units left: the refused ones spent none.
    let mut unlimited = key.clone();
    unlimited.rate_limit = None;
    gw.app.keys().update(unlimited).await.unwrap();
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(num(&r, "x-keygate-quota-remaining"), Some(7));
}

async fn a_spent_quota_is_429_until_its_refill_and_a_keys_quota_beats_its_roles(backend: Backend) {
    let gw = TestGateway::start(
        backend,
        "quotas: { roles: { viewer: { limit: 3, refill: daily } } }",
    )
    .await;
    let viewer = |quota| NewKey {
        role: Some("viewer".into()),
        quota,
        ..new_key("acme")
    };
    let (_, secret) = gw.create(viewer(None)).await;
    for left in [2, 1, 0] {
        let r = gw.get("/api/v1/sessions", Some(&secret)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(num(&r, "x-keygate-quota-remaining"), Some(left));
    }
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.error_code(), "quota_exceeded");
    assert_eq!(num(&r, "x-keygate-quota-remaining"), Some(0));
    // The refill is the next midnight UTC.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let to_midnight = (86_400 - now.rem_euclid(86_400)) as u64;
    let retry = num(&r, "retry-after").unwrap();
    assert!(
        (to_midnight.saturating_sub(2)..=to_midnight).contains(&retry),
        "Retry-After {retry}, midnight in {to_midnight} s"
    );

    // A key's own quota wins over its role's.
    let (_, own) = gw
        .create(viewer(Some(quota(1, Refill::Monthly, Some(1)))))
        .await;
    let statuses = [
        gw.get("/api/v1/sessions", Some(&own)).await,
        gw.get("/api/v1/sessions", Some(&own)).await,
    ];
    assert_eq!(statuses[0].status, StatusCode::OK);
    assert_eq!(statuses[1].error_code(), "quota_exceeded");
}

async fn failed_authentications_are_limited_per_client_ip(backend: Backend) {
    let gw = TestGateway::start(
        backend,
        "trusted_proxies: [127.0.0.1/32]\nauth: { failure_limit: { requests: 3, period: 1h } }",
    )
    .await;
    let (_, valid) = gw.create_key(&["sessions:read"]).await;
    let format = SecretFormat::new("kg", "live");
    let path = "/api/v1/sessions";
    let (a, b, c, d) = ("203.0.113.1", "203.0.113.2", "198.51.100.3", "2001:db8::4");

    // Three unknown secrets from A: each a 401 after a store lookup.
    let before = gw.store_lookups();
    for _ in 0..3 {
        let r = get_from(&gw, a, path, Some(&format.generate())).await;
        assert_eq!(r.error_code(), "invalid_key");
    }
    assert_eq!(gw.store_lookups(), before + 3);

    // A is over its limit: every credential it sends is refused before any lookup, the valid
    // key included; the retry is one interval (20 min) away.
    let limited = gw.store_lookups();
    for secret in [
        format.generate(),
        valid.clone(),
        Secret::new("kg_live_truncated".into()),
        format.generate(),
    ] {
        let r = get_from(&gw, a, path, Some(&secret)).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.error_code(), "rate_limited");
        assert_eq!(num(&r, "retry-after"), Some(1200));
        assert_eq!(num(&r, "ratelimit-limit"), None, "not authenticated");
    }
    assert_eq!(gw.store_lookups(), limited, "no store lookup once limited");
    // Without a credential there is nothing to guess: still the plain 401.
    assert_eq!(
        get_from(&gw, a, path, None).await.error_code(),
        "missing_key"
    );

    // Another client is not affected.
    assert_eq!(
        get_from(&gw, b, path, Some(&valid)).await.status,
        StatusCode::OK
    );
    let r = get_from(&gw, b, path, Some(&format.generate())).await;
    assert_eq!(r.error_code(), "invalid_key");

    // A success does not reset the count.
    for secret in [format.generate(), format.generate(), valid.clone()] {
        get_from(&gw, c, path, Some(&secret)).await;
    }
    let r = get_from(&gw, c, path, Some(&format.generate())).await;
    assert_eq!(r.error_code(), "invalid_key");
    let r = get_from(&gw, c, path, Some(&valid)).await;
    assert_eq!(r.error_code(), "rate_limited");

    // Revoked keys count as failures (an IPv6 client, limited by its /64).
    let (revoked, secret) = gw.create_key(&["sessions:read"]).await;
    gw.app.keys().revoke("acme", &revoked.id).await.unwrap();
    for _ in 0..3 {
        let r = get_from(&gw, d, path, Some(&secret)).await;
        assert_eq!(r.error_code(), "key_revoked");
    }
    let r = get_from(&gw, "2001:db8::ffff", path, Some(&valid)).await;
    assert_eq!(r.error_code(), "rate_limited");
}

async fn quota_counts_survive_a_graceful_restart(backend: Backend) {
    let gw = TestGateway::start(backend, "").await;
    let (_, secret) = gw
        .create(NewKey {
            scopes: vec!["sessions:read".into()],
            quota: Some(quota(10, Refill::Monthly, Some(1))),
            ..new_key("acme")
        })
        .await;
    for _ in 0..4 {
        assert_eq!(
            gw.get("/api/v1/sessions", Some(&secret)).await.status,
            StatusCode::OK
        );
    }
    let gw = gw.restart().await;
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(num(&r, "x-keygate-quota-remaining"), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_is_exact_across_two_instances_on_one_redis() {
    // Exactness is the promise while Redis answers. With 200 requests in flight in a debug
    // build on two cores, a reply can take longer than the 50 ms default, and a spend that timed
    // out is counted locally (the outage path, tested below): give Redis room to answer.
    let overlay = "store: { redis: { timeout: 2s } }";
    let first = TestGateway::start(Backend::Redis, overlay).await;
    let second = first.another_instance(overlay).await;
    let (_, secret) = first
        .create(NewKey {
            scopes: vec!["sessions:read".into()],
            quota: Some(quota(1_000, Refill::None, None)),
            ..new_key("acme")
        })
        .await;
    let instances = [Arc::new(first), Arc::new(second)];
    // 1,500 requests, alternating instances, 200 in flight at a time.
    let in_flight = Arc::new(Semaphore::new(200));
    let tasks: Vec<_> = (0..1_500)
        .map(|i| {
            let gw = instances[i % 2].clone();
            let (in_flight, secret) = (in_flight.clone(), secret.clone());
            tokio::spawn(async move {
                let _slot = in_flight.acquire().await.unwrap();
                let r = gw.get("/api/v1/sessions", Some(&secret)).await;
                match r.status {
                    StatusCode::OK => true,
                    StatusCode::TOO_MANY_REQUESTS => {
                        assert_eq!(r.error_code(), "quota_exceeded");
                        false
                    }
                    other => panic!("unexpected {other}"),
                }
            })
        })
        .collect();
    let mut passed = 0;
    for t in tasks {
        passed += usize::from(t.await.unwrap());
    }
    assert_eq!(passed, 1_000);
    for gw in &instances {
        let r = gw.get("/api/v1/sessions", Some(&secret)).await;
        assert_eq!(r.error_code(), "quota_exceeded");
        assert_eq!(num(&r, "x-keygate-quota-remaining"), Some(0));
    }
}

/// The count of a key's quota without refill, read straight from Redis.
async fn redis_quota_count(server: &RedisServer, id: &keygate::keys::KeyId) -> Option<u64> {
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    ::redis::cmd("GET")
        .arg(format!("keygate:{{q:{id}}}:0"))
        .query_async::<Option<u64>>(&mut conn)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_to_local_limits_and_quotas() {
    let mut gw = TestGateway::start(
        Backend::Redis,
        "rate_limits: { mode: redis }\nusage: { flush_interval: 100ms }",
    )
    .await;
    let (_, limited) = gw
        .create(NewKey {
            scopes: vec!["sessions:read".into()],
            rate_limit: Some(per_hour(3)),
            ..new_key("acme")
        })
        .await;
    let (quota_key, quota_secret) = gw
        .create(NewKey {
            scopes: vec!["sessions:read".into()],
            quota: Some(quota(5, Refill::None, None)),
            ..new_key("acme")
        })
        .await;
    let path = "/api/v1/sessions";
    // While Redis is up: one request of the limited key, two units of the quota.
    assert_eq!(passes(&gw, path, &limited, 1).await, 1);
    for _ in 0..2 {
        assert_eq!(
            gw.get(path, Some(&quota_secret)).await.status,
            StatusCode::OK
        );
    }

    gw.redis.as_mut().unwrap().stop();
    let started = Instant::now();
    // This instance's own bucket (full: it never counted this key) still limits.
    assert_eq!(passes(&gw, path, &limited, 6).await, 3);
    // The quota counts on from the last count this instance saw: 3 more units.
    let mut codes = Vec::new();
    for _ in 0..5 {
        let r = gw.get(path, Some(&quota_secret)).await;
        codes.push(num(&r, "x-keygate-quota-remaining"));
        if r.status != StatusCode::OK {
            assert_eq!(r.error_code(), "quota_exceeded");
        }
    }
    assert_eq!(codes, [Some(2), Some(1), Some(0), Some(0), Some(0)]);
    // One probe per second waits for the timeout; the other requests go local at once.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    // Redis is back, empty (no persistence): the units served during the outage reach it.
    gw.redis.as_mut().unwrap().start_again();
    let server = gw.redis.as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while redis_quota_count(server, &quota_key.id).await != Some(3) {
        assert!(
            Instant::now() < deadline,
            "outage units never reached redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_fail_closed_in_an_outage_when_max_stale_is_zero() {
    let mut gw = TestGateway::start(Backend::Redis, "cache: { max_stale: 0s }").await;
    let (_, quotad) = gw
        .create(NewKey {
            scopes: vec!["sessions:read".into()],
            quota: Some(quota(5, Refill::Daily, None)),
            ..new_key("acme")
        })
        .await;
    let (_, plain) = gw.create_key(&["sessions:read"]).await;
    let path = "/api/v1/sessions";
    assert_eq!(gw.get(path, Some(&quotad)).await.status, StatusCode::OK);
    assert_eq!(gw.get(path, Some(&plain)).await.status, StatusCode::OK);
    gw.redis.as_mut().unwrap().stop();
    // Both records are cached and fresh; only the quota needs Redis.
    let r = gw.get(path, Some(&quotad)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.error_code(), "store_unavailable");
    assert_eq!(gw.get(path, Some(&plain)).await.status, StatusCode::OK);
}

/// SPEC §8: one key limited to RATE a second, two gateway processes on one Redis, both driven
/// as hard as the loops can for RUN: the requests accepted are the bucket (BURST) plus RATE ×
/// the time elapsed, within ±2%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limit_holds_across_two_gateway_processes() {
    const RATE: u32 = 200;
    const BURST: u32 = 20;
    const RUN: Duration = Duration::from_secs(2);
    const LOOPS_PER_PROCESS: usize = 6;

    let redis = RedisServer::start();
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{BASE_CONFIG}\nstore: {{ backend: redis, redis: {{ url: \"{}\", timeout: 200ms }} }}\n\
         upstreams: {{ app: {{ url: \"{}\" }} }}\nrate_limits: {{ mode: redis }}\n",
        redis.url(),
        upstream.url()
    );
    let (_, secret) = issue_key(
        &config,
        NewKey {
            scopes: vec!["sessions:read".into()],
            rate_limit: Some(RateLimitSpec {
                requests: NonZeroU32::new(RATE).unwrap(),
                period: Duration::from_secs(1),
                burst: NonZeroU32::new(BURST),
            }),
            ..new_key("acme")
        },
    )
    .await;
    let processes = [
        KeygateProcess::start(dir.path(), "one", &config).await,
        KeygateProcess::start(dir.path(), "two", &config).await,
    ];
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let auth = format!("Bearer {}", secret.expose());
    let send = |port: u16| {
        let req = http::Request::get(format!("http://127.0.0.1:{port}/api/v1/sessions"))
            .header("authorization", &auth)
            .body(Full::default())
            .unwrap();
        let client = client.clone();
        async move {
            let r = client.request(req).await.unwrap();
            let status = r.status();
            r.into_body().collect().await.unwrap();
            status
        }
    };
    // Each process caches the key; then the bucket refills completely (BURST / RATE = 0.1 s)
    // before the measured run. Real processes run on real time: this wait cannot be faked.
    for p in &processes {
        assert_eq!(send(p.proxy).await, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let start = Instant::now();
    let loops: Vec<_> = processes
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.proxy, LOOPS_PER_PROCESS))
        .map(|port| {
            let (client, auth) = (client.clone(), auth.clone());
            tokio::spawn(async move {
                let (mut accepted, mut refused) = (0u64, 0u64);
                while start.elapsed() < RUN {
                    let req =
                        http::Request::get(format!("http://127.0.0.1:{port}/api/v1/sessions"))
                            .header("authorization", &auth)
                            .body(Full::default())
                            .unwrap();
                    let r = client.request(req).await.unwrap();
                    let status = r.status();
                    r.into_body().collect().await.unwrap();
                    match status {
                        StatusCode::OK => accepted += 1,
                        StatusCode::TOO_MANY_REQUESTS => refused += 1,
                        other => panic!("unexpected {other}"),
                    }
                }
                (accepted, refused, Instant::now())
            })
        })
        .collect();
    let (mut accepted, mut refused, mut end) = (0, 0, start);
    for l in loops {
        let (a, r, e) = l.await.unwrap();
        accepted += a;
        refused += r;
        end = end.max(e);
    }
    let elapsed = end.duration_since(start).as_secs_f64();
    let allowance = f64::from(BURST) + f64::from(RATE) * elapsed;
    let error = (accepted as f64 - allowance) / allowance;
    eprintln!(
        "global limit: {accepted} accepted, {refused} refused in {elapsed:.3} s over 2 processes; \
         allowance {allowance:.1} ({BURST} + {RATE}/s × elapsed); error {:+.2}%",
        error * 100.0
    );
    assert!(
        refused > u64::from(RATE),
        "the load must exceed the limit to measure it"
    );
    assert!(
        error.abs() <= 0.02,
        "accepted {accepted}, allowance {allowance:.1}"
    );
}

async fn the_limit_header_is_the_bucket_and_never_below_remaining(backend: Backend) {
    // 100 per second with a burst of 200: the bucket holds 200 and fills in 2 s.
    let gw = TestGateway::start(
        backend,
        "rate_limits: { default: { requests: 100, period: 1s, burst: 200 } }",
    )
    .await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    for _ in 0..5 {
        let r = gw.get("/api/v1/sessions", Some(&secret)).await;
        assert_eq!(r.status, StatusCode::OK);
        let (limit, remaining, reset) = rate_headers(&r);
        assert_eq!(limit, Some(200));
        assert!(remaining.unwrap() <= 199, "{remaining:?}");
        assert!(remaining.unwrap() >= 190, "{remaining:?}");
        assert!(reset.unwrap() <= 2);
        assert_eq!(r.headers["ratelimit-policy"], "200;w=2");
    }
}
