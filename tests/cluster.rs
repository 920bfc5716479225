//! Redis Cluster beyond what the conformance suite and the end-to-end scenarios check on it
//! (they run on a three-master cluster as `cluster::<name>`): slots moving under a running
//! gateway (`ASK` while a slot migrates, `MOVED` after), the failover of a master to its replica,
//! and an outage of the whole cluster, which must look like an outage of a standalone server.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::cluster::RedisCluster;
use support::gateway::{Backend, OPS_TOKEN, TestGateway};

/// Longest a recovery may take before the test gives up (a failover takes about two node
/// timeouts of one second; two cores shared with other tests stretch that).
const RECOVERY: Duration = Duration::from_secs(30);

fn cluster(gw: &TestGateway) -> &RedisCluster {
    gw.cluster.as_ref().unwrap()
}

/// The Redis key of the one key record in the cluster.
fn record_key(gw: &TestGateway) -> String {
    let keys = cluster(gw).keys_matching("keygate:{h:*");
    assert_eq!(keys.len(), 1, "one key record: {keys:?}");
    keys.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_work_while_their_slot_migrates_and_after_it_moved() {
    let gw = TestGateway::start(Backend::RedisCluster, "").await;
    let (record, secret) = gw.create_key(&["sessions:read"]).await;
    let path = format!("/v1/workspaces/acme/keys/{}", record.id);
    let record_key = record_key(&gw);
    let from = cluster(&gw).master_of(&record_key);
    let to = (from + 1) % 3;

    // Mid-migration: the record is on the new master, the slot still on the old one, which
    // answers ASK for it.
    let moving = cluster(&gw).begin_slot_move(&record_key, to);
    let r = gw.admin(Method::GET, &path, Some(OPS_TOKEN), None).await;
    assert_eq!(r.status, StatusCode::OK, "read by id during the migration");
    let r = gw
        .admin(
            Method::PATCH,
            &path,
            Some(OPS_TOKEN),
            Some(serde_json::json!({"name": "renamed mid-migration"})),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "a script write during the migration"
    );
    // The edit dropped the key from the cache: this request reads the store, through ASK.
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(r.status, StatusCode::OK);

    // Moved: the old master answers MOVED, and the client follows it to the new one.
    cluster(&gw).finish_slot_move(&moving);
    assert_eq!(cluster(&gw).master_of(&record_key), to);
    let r = gw.admin_revoke("acme", &record.id).await;
    assert_eq!(r.status, StatusCode::OK, "revoke after the move");
    let r = gw.get("/api/v1/sessions", Some(&secret)).await;
    assert_eq!(r.error_code(), "key_revoked");
    let r = gw.admin(Method::GET, &path, Some(OPS_TOKEN), None).await;
    assert_eq!(r.json()["name"], "renamed mid-migration");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_fails_over_to_its_replica_and_the_gateway_carries_on() {
    let cluster = RedisCluster::start(3, 1);
    let mut gw = TestGateway::start_on_cluster(cluster, "cache: { max_stale: 5m }").await;
    let (record, secret) = gw.create_key(&["sessions:read"]).await;
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );
    let master = gw.cluster.as_ref().unwrap().master_of(&record_key(&gw));
    gw.cluster
        .as_mut()
        .unwrap()
        .kill_master_and_fail_over(master);

    // The cached key never stopped working; once the client has found the promoted replica,
    // the key's slot takes writes again: a revoke goes through and is in force.
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );
    let deadline = Instant::now() + RECOVERY;
    loop {
        let r = gw.admin_revoke("acme", &record.id).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert_eq!(
            r.error_code(),
            "store_unavailable",
            "only an outage while the client finds the new master"
        );
        assert!(Instant::now() < deadline, "no recovery after the failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.error_code(),
        "key_revoked"
    );
    // New keys land on every slot again, the failed-over one included.
    for _ in 0..6 {
        let (_, fresh) = gw.create_key(&["sessions:read"]).await;
        assert_eq!(
            gw.get("/api/v1/sessions", Some(&fresh)).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_cluster_is_an_outage_like_a_frozen_server() {
    let mut gw = TestGateway::start(Backend::RedisCluster, "cache: { max_stale: 1m }").await;
    let (_, cached) = gw.create_key(&["sessions:read"]).await;
    let (_, uncached) = gw.create_key(&["sessions:read"]).await;
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&cached)).await.status,
        StatusCode::OK
    );

    gw.cluster.as_mut().unwrap().freeze();
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&cached)).await.status,
        StatusCode::OK,
        "a cached key keeps working within max_stale"
    );
    let r = gw.get("/api/v1/sessions", Some(&uncached)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.error_code(), "store_unavailable");
    assert_eq!(
        gw.admin_get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    gw.cluster.as_mut().unwrap().thaw();
    let deadline = Instant::now() + RECOVERY;
    while gw.get("/api/v1/sessions", Some(&uncached)).await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "no recovery after the thaw");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.admin_get("/readyz").await.status, StatusCode::OK);
}

/// Waits until `gw` has subscribed to the invalidation channel `n` times (and is subscribed).
async fn subscribed(gw: &TestGateway, n: u64) {
    let stats = gw.app.store().invalidation_stats().unwrap();
    let deadline = Instant::now() + RECOVERY;
    while !(stats.is_subscribed() && stats.subscriptions.load(Ordering::SeqCst) >= n) {
        assert!(Instant::now() < deadline, "not subscribed (#{n})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_reach_every_instance_after_the_node_they_listened_on_dies() {
    // Every instance subscribes on the home master (see the test below), killed here.
    let cluster = RedisCluster::start(3, 1);
    let long_cache = "cache: { ttl: 1h }";
    let a = TestGateway::start_on_cluster(cluster, long_cache).await;
    let b = a.another_instance(long_cache).await;
    subscribed(&a, 1).await;
    subscribed(&b, 1).await;
    let (record, secret) = a.create_key(&["sessions:read"]).await;
    assert_eq!(
        b.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );

    let mut a = a;
    let home = a.cluster.as_ref().unwrap().master_of("keygate:invalidate");
    a.cluster.as_mut().unwrap().kill_master_and_fail_over(home);
    // Both subscribe again, on another node; the channel is cluster-wide, so a revoke made
    // through A reaches B's cache there.
    subscribed(&a, 2).await;
    subscribed(&b, 2).await;
    // Read again once subscribed, so that B trusts its cached record from here on.
    assert_eq!(
        b.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );
    let stats = b.app.store().invalidation_stats().unwrap();
    let received = stats.received.load(Ordering::SeqCst);
    let deadline = Instant::now() + RECOVERY;
    while a.admin_revoke("acme", &record.id).await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "the revoke never went through");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + RECOVERY;
    while b.get("/api/v1/sessions", Some(&secret)).await.status == StatusCode::OK {
        assert!(Instant::now() < deadline, "B still serves the revoked key");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        b.get("/api/v1/sessions", Some(&secret)).await.error_code(),
        "key_revoked"
    );
    assert!(
        stats.received.load(Ordering::SeqCst) > received,
        "B heard of the revoke on its new subscription"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_published_where_the_subscribers_listen() {
    // Pub/sub crossing the cluster bus can wait tens of milliseconds there: publishers and
    // subscribers meet on the master of the invalidation channel's slot instead.
    let a = TestGateway::start(Backend::RedisCluster, "").await;
    let b = a.another_instance("").await;
    a.wait_subscribed().await;
    b.wait_subscribed().await;
    let c = cluster(&a);
    let home = c.master_of("keygate:invalidate");
    let listening: Vec<usize> = (0..3).map(|i| c.pubsub_clients(i)).collect();
    let mut expected = vec![0, 0, 0];
    expected[home] = 2;
    assert_eq!(
        listening, expected,
        "both subscriptions on the home master {home}"
    );

    let before: Vec<u64> = (0..3).map(|i| c.publishes(i)).collect();
    let (record, _) = a.create_key(&["sessions:read"]).await;
    let r = a.admin_revoke("acme", &record.id).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["propagation"]["confirmed"], 2, "{}", r.json());
    for (i, before) in before.iter().enumerate() {
        let published = c.publishes(i) - before;
        if i == home {
            assert!(published > 0, "the home master ran the PUBLISHes");
        } else {
            assert_eq!(published, 0, "master {i} ran no PUBLISH");
        }
    }
}
