//! The fleet (issue 13): gateway instances sharing one real redis-server announce themselves,
//! and each knows how many are live.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::gateway::TestGateway;
use support::redis::RedisServer;

/// Entries live long enough that only an invalidation explains a change being seen.
const LONG_CACHE: &str = "cache: { ttl: 10m, negative_ttl: 10m, max_stale: 5m }";
/// Generous bound for what takes a heartbeat or two.
const WITHIN: Duration = Duration::from_secs(10);

/// The live count `gw` knows of.
fn live_count(gw: &TestGateway) -> usize {
    gw.app
        .store()
        .fleet()
        .expect("the redis backend has a fleet")
        .live_count()
        .load(Ordering::Acquire)
}

/// Waits until every gateway of `gws` counts `n` live instances.
async fn all_count(gws: &[&TestGateway], n: usize) {
    let deadline = Instant::now() + WITHIN;
    while !gws.iter().all(|gw| live_count(gw) == n) {
        let counts: Vec<usize> = gws.iter().map(|gw| live_count(gw)).collect();
        assert!(Instant::now() < deadline, "live counts {counts:?}, not {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_announce_themselves_and_count_each_other() {
    let redis = RedisServer::start();
    let a = TestGateway::start_on_redis(&redis, LONG_CACHE).await;
    let b = TestGateway::start_on_redis(&redis, LONG_CACHE).await;
    let mut c = TestGateway::start_on_redis(&redis, LONG_CACHE).await;
    all_count(&[&a, &b, &c], 3).await;

    // Each has an id of its own, shown by /readyz and the metrics' gauge.
    let mut ids = Vec::new();
    for gw in [&a, &b, &c] {
        let ready = gw.admin_get("/readyz").await.json();
        let id = ready["instance"].as_str().expect("instance id").to_owned();
        assert_eq!(id, gw.app.store().fleet().unwrap().id());
        ids.push(id);
        let metrics = String::from_utf8(gw.admin_get("/metrics").await.body.to_vec()).unwrap();
        assert!(
            metrics.contains("\nkeygate_fleet_instances 3\n"),
            "{metrics}"
        );
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "{ids:?}");

    // A graceful stop withdraws the announcement at once: the others count 2 without waiting
    // for it to run out.
    c.shutdown().await.unwrap();
    all_count(&[&a, &b], 2).await;
}
