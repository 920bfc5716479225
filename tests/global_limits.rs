//! `rate_limits.mode: redis` when Redis falters (issue 13): one slow reply decides one check on
//! this instance and the next goes to Redis again; while Redis is down, the instances together
//! admit about the global limit (each enforces its share of the fleet's count), not one limit
//! each. Real HTTP through gateways on one real redis-server, which the harness freezes
//! (SIGSTOP) or stops. The accuracy under load is measured by `benches/fleet/run`.
//!
//! Limits here are per hour, so that real time refills nothing during a test: the counts are
//! exact without sleeping.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use http::StatusCode;
use keygate::config::RateLimitSpec;
use keygate::control::NewKey;
use keygate::keys::{KeyId, Secret};
use support::gateway::{Backend, TestGateway, new_key};

const PATH: &str = "/api/v1/sessions";
/// Nothing but the rate limiter calls Redis during the tests: no usage flush, no cache refresh.
const QUIET: &str =
    "rate_limits: { mode: redis }\nusage: { flush_interval: 1h }\ncache: { ttl: 1h }";

fn per_hour(requests: u32) -> RateLimitSpec {
    RateLimitSpec {
        requests: NonZeroU32::new(requests).unwrap(),
        period: Duration::from_secs(3600),
        burst: None,
    }
}

async fn limited_key(gw: &TestGateway, requests: u32) -> (KeyId, Secret) {
    let (record, secret) = gw
        .create(NewKey {
            scopes: vec!["sessions:read".into()],
            rate_limit: Some(per_hour(requests)),
            ..new_key("acme")
        })
        .await;
    (record.id, secret)
}

/// How many of `n` requests in a row pass.
async fn passes(gw: &TestGateway, secret: &Secret, n: usize) -> usize {
    let mut passed = 0;
    for _ in 0..n {
        let r = gw.get(PATH, Some(secret)).await;
        match r.status {
            StatusCode::OK => passed += 1,
            StatusCode::TOO_MANY_REQUESTS => assert_eq!(r.error_code(), "rate_limited"),
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    passed
}

/// Requests the key's global bucket holds, read from Redis: its TAT ahead of Redis's clock, in
/// emission intervals of `requests` an hour, rounded up.
async fn redis_bucket_used(gw: &TestGateway, id: &KeyId, requests: u32) -> u64 {
    let client = ::redis::Client::open(gw.redis.as_ref().unwrap().url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let tat: Option<u64> = ::redis::cmd("GET")
        .arg(format!("keygate:{{rl:{id}}}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let (secs, micros): (u64, u64) = ::redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let now = secs * 1_000_000 + micros;
    let interval = 3_600_000_000 / u64::from(requests);
    tat.unwrap_or(0).saturating_sub(now).div_ceil(interval)
}

fn breaker_opens(gw: &TestGateway) -> u64 {
    match gw.app.store().as_ref() {
        keygate::store::Store::Redis(r) => r.breaker().opens(),
        keygate::store::Store::Embedded(_) => unreachable!("a redis test"),
    }
}

/// `keygate_rate_limit_local_total` as the metrics endpoint reports it.
async fn local_checks(gw: &TestGateway) -> u64 {
    let text = String::from_utf8(gw.admin_get("/metrics").await.body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("keygate_rate_limit_local_total "))
        .map(|v| v.trim().parse().unwrap())
        .expect("keygate_rate_limit_local_total is exported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_reply_decides_one_check_here_and_the_next_goes_to_redis() {
    let mut gw = TestGateway::start(Backend::Redis, QUIET).await;
    let (id, secret) = limited_key(&gw, 4).await;
    assert_eq!(passes(&gw, &secret, 1).await, 1);
    assert_eq!(redis_bucket_used(&gw, &id, 4).await, 1);

    // One reply later than the store timeout (200 ms here): Redis is frozen while one request
    // is checked. The script was sent and runs when Redis goes on, so Redis counts it too.
    gw.redis.as_mut().unwrap().freeze();
    let r = gw.get(PATH, Some(&secret)).await;
    gw.redis.as_mut().unwrap().thaw();
    assert_eq!(
        r.status,
        StatusCode::OK,
        "decided here, on a full local bucket"
    );
    assert_eq!(local_checks(&gw).await, 1);
    assert_eq!(breaker_opens(&gw), 0, "one slow reply is not an outage");

    // The next checks go to Redis, which holds 2 of the 4: two more pass, not the three a local
    // bucket (1 of 4 spent) would let through.
    assert_eq!(passes(&gw, &secret, 6).await, 2);
    assert_eq!(redis_bucket_used(&gw, &id, 4).await, 4);
    assert_eq!(local_checks(&gw).await, 1, "nothing else was decided here");
}

/// Waits (at most 10 s) until each of `gateways` counts `n` live instances (from the fleet's
/// heartbeats in Redis; 1 once cut off from Redis).
async fn until_live(gateways: &[&TestGateway], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for gw in gateways {
        let fleet = gw.app.store().fleet().unwrap();
        while fleet.instances() != n {
            assert!(Instant::now() < deadline, "the fleet never counted {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_two_instances_together_admit_the_global_limit_not_twice_it() {
    let mut one = TestGateway::start(Backend::Redis, QUIET).await;
    let two = one.another_instance(QUIET).await;
    until_live(&[&one, &two], 2).await;
    let (_, secret) = limited_key(&one, 10).await;
    // Each instance caches the key (a request each, counted in Redis only).
    assert_eq!(passes(&one, &secret, 1).await, 1);
    assert_eq!(passes(&two, &secret, 1).await, 1);

    one.redis.as_mut().unwrap().stop();
    // Cut off from Redis, an instance's fleet counts only itself; the others still serve, and
    // the shares stay those of the last count Redis answered with.
    until_live(&[&one, &two], 1).await;
    // Every check is decided locally, on half the bucket: 5 and 5, the global 10 in all.
    let admitted = [
        passes(&one, &secret, 15).await,
        passes(&two, &secret, 15).await,
    ];
    assert_eq!(admitted, [5, 5], "each instance's share of 10 an hour");
    assert_eq!(local_checks(&one).await, 15);
    // A refusal says so in the share's own terms.
    let r = one.get(PATH, Some(&secret)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers["ratelimit-limit"], "5");
}
