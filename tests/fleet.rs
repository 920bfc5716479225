//! The fleet (issue 13): gateway instances sharing one real redis-server announce themselves,
//! each knows how many are live, and a change to a key answers only once every live instance
//! has dropped it (or after a bounded wait, naming those that did not).
//!
//! The confirmation wait is printed (`cargo nextest run --test fleet --no-capture`); nothing
//! here is timed beyond generous bounds that prove "bounded".

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate::keys::{KeyRecord, Secret};
use support::gateway::{BASE_CONFIG, OPS_TOKEN, TestGateway};
use support::process::KeygateProcess;
use support::redis::RedisServer;

/// Entries live long enough that only an invalidation explains a change being seen.
const LONG_CACHE: &str = "cache: { ttl: 10m, negative_ttl: 10m, max_stale: 5m }";
/// Generous bound for what takes a heartbeat or two.
const WITHIN: Duration = Duration::from_secs(10);
/// Generous bound that proves a change answers in bounded time with an instance frozen.
const ANSWERS_WITHIN: Duration = Duration::from_secs(5);
const READ: &str = "/api/v1/sessions";
/// Rounds of the revoke-under-load scenario.
const ROUNDS: usize = 200;
/// Clients looping on each loaded instance.
const CLIENTS_PER_INSTANCE: usize = 4;

/// The live count `gw` knows of.
fn live_count(gw: &TestGateway) -> usize {
    gw.app
        .store()
        .fleet()
        .expect("the redis backend has a fleet")
        .instances()
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

/// Three instances over one redis-server, each counting all three.
async fn three_instances() -> (RedisServer, TestGateway, TestGateway, TestGateway) {
    let redis = RedisServer::start();
    let a = TestGateway::start_on_redis(&redis, LONG_CACHE).await;
    let b = TestGateway::start_on_redis(&redis, LONG_CACHE).await;
    let c = TestGateway::start_on_redis(&redis, LONG_CACHE).await;
    all_count(&[&a, &b, &c], 3).await;
    (redis, a, b, c)
}

/// Clients looping `GET READ` with `secret` on `url`s until stopped; counts what they got.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    requests: Arc<AtomicU64>,
}

impl Load {
    fn start(proxies: &[String], secret: &Secret) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let auth = format!("Bearer {}", secret.expose());
        let tasks = proxies
            .iter()
            .flat_map(|url| std::iter::repeat_n(url, CLIENTS_PER_INSTANCE))
            .map(|url| {
                let (stop, requests, client) = (stop.clone(), requests.clone(), client.clone());
                let (url, auth) = (format!("{url}{READ}"), auth.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let req = http::Request::get(&url)
                            .header("authorization", &auth)
                            .body(Full::default())
                            .unwrap();
                        let r = client.request(req).await.unwrap();
                        let _ = r.into_body().collect().await;
                        requests.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            requests,
        }
    }

    /// Waits until the clients have made `n` more requests (so the load is really on).
    async fn running(&self, n: u64) {
        let from = self.requests.load(Ordering::Relaxed);
        while self.requests.load(Ordering::Relaxed) < from + n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

/// The `propagation` object of a change's answer, checked against its header.
fn propagation(r: &support::gateway::Reply) -> serde_json::Value {
    let header = r
        .headers
        .get("keygate-propagation")
        .expect("Keygate-Propagation header")
        .to_str()
        .unwrap();
    let body = if r.body.is_empty() {
        None
    } else {
        Some(r.json()["propagation"].clone())
    };
    let p = body.unwrap_or_else(|| from_header(header));
    assert_eq!(from_header(header), p, "header and body agree");
    p
}

/// `instances=3, confirmed=2, unconfirmed=("id")` as the JSON object.
fn from_header(header: &str) -> serde_json::Value {
    let mut p = serde_json::Map::new();
    for item in header.split(", ") {
        let (name, value) = item.split_once('=').unwrap();
        let value = match value.strip_prefix('(') {
            Some(list) => serde_json::Value::from(
                list.trim_end_matches(')')
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.trim_matches('"').to_owned())
                    .collect::<Vec<_>>(),
            ),
            None => serde_json::Value::from(value.parse::<u64>().unwrap()),
        };
        p.insert(name.to_owned(), value);
    }
    serde_json::Value::Object(p)
}

fn id(gw: &TestGateway) -> String {
    gw.app.store().fleet().unwrap().id().to_owned()
}

async fn revoke(gw: &TestGateway, key: &KeyRecord) -> support::gateway::Reply {
    let r = gw.admin_revoke("acme", &key.id).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    r
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// A change made on A (through its admin API) to a key B and C have cached.
#[derive(Clone, Copy)]
enum Change {
    /// `POST …/revoke`: the next request is 401 `key_revoked`.
    Revoke,
    /// `PATCH` removing `sessions:read`: the next request is 403 `insufficient_scope`.
    RemoveScope,
}

/// Instance A in this process (its admin API makes the changes), B and C as `keygate`
/// processes (each loaded by its own clients, as in a real deployment: in one process the
/// instances would share one runtime), all counting three; and B's and C's ids.
struct Deployment {
    a: TestGateway,
    b: KeygateProcess,
    c: KeygateProcess,
    others: Vec<String>,
    _redis: RedisServer,
    _dir: tempfile::TempDir,
}

async fn one_here_two_processes() -> Deployment {
    let redis = RedisServer::start();
    let a = TestGateway::start_on_redis(&redis, LONG_CACHE).await;
    let dir = tempfile::tempdir().unwrap();
    let text = process_config(&redis, &a);
    let b = KeygateProcess::start(dir.path(), "b", &text).await;
    let c = KeygateProcess::start(dir.path(), "c", &text).await;
    all_count(&[&a], 3).await;
    let mut others = Vec::new();
    for p in [&b, &c] {
        let ready: serde_json::Value =
            serde_json::from_str(&process_admin_get(p.admin, "/readyz").await).unwrap();
        others.push(ready["instance"].as_str().expect("instance id").to_owned());
    }
    Deployment {
        a,
        b,
        c,
        others,
        _redis: redis,
        _dir: dir,
    }
}

/// `rounds` times: a new key cached on B and C, clients looping on both, the change on A; the
/// moment it answers, one request to each of B and C. Asserts none of those is answered as
/// before the change, and that each answer reports the fleet consistently. Returns the rounds
/// every instance confirmed in time and the whole calls' durations.
async fn change_under_load(
    d: &Deployment,
    change: Change,
    rounds: usize,
) -> (usize, Vec<Duration>) {
    let proxies = [proxy_url(&d.b), proxy_url(&d.c)];
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let (mut confirmed_rounds, mut calls, mut as_before) = (0, Vec::new(), 0);
    for round in 0..rounds {
        let (key, secret) = d.a.create_key(&["sessions:read", "resources:read"]).await;
        for url in &proxies {
            assert_eq!(get(&client, url, &secret).await.0, StatusCode::OK);
        }
        let load = Load::start(&proxies, &secret);
        load.running(4).await;

        let started = Instant::now();
        let (r, expected) = match change {
            Change::Revoke => (revoke(&d.a, &key).await, "key_revoked"),
            Change::RemoveScope => {
                let path = format!("/v1/workspaces/acme/keys/{}", key.id);
                let body = serde_json::json!({"scopes": ["resources:read"]});
                let r =
                    d.a.admin(Method::PATCH, &path, Some(OPS_TOKEN), Some(body))
                        .await;
                assert_eq!(
                    r.status,
                    StatusCode::OK,
                    "{}",
                    String::from_utf8_lossy(&r.body)
                );
                (r, "insufficient_scope")
            }
        };
        calls.push(started.elapsed());
        // Both at once: neither instance gets the other's round trip as extra time.
        let (on_b, on_c) = tokio::join!(
            get(&client, &proxies[0], &secret),
            get(&client, &proxies[1], &secret)
        );
        for (status, code) in [on_b, on_c] {
            if status == StatusCode::OK {
                as_before += 1;
            } else {
                assert_eq!(code.as_deref(), Some(expected), "round {round}");
            }
        }
        load.stop().await;
        if reports_the_fleet(&propagation(&r), &d.others) {
            confirmed_rounds += 1;
        }
    }
    assert_eq!(
        as_before,
        0,
        "requests answered as before the change after its answer, out of {}",
        2 * rounds
    );
    (confirmed_rounds, calls)
}

/// Whether a report of three instances is consistent (the unconfirmed are among `others`) and
/// says every instance confirmed. An instance a loaded machine stalls past the wait is named,
/// not a failure: what it serves after is the lease's business, and the no-200 count checks it.
fn reports_the_fleet(p: &serde_json::Value, others: &[String]) -> bool {
    assert_eq!(p["instances"], 3, "{p}");
    let unconfirmed = p["unconfirmed"].as_array().unwrap();
    assert!(
        unconfirmed.iter().all(|id| others.iter().any(|o| o == id)),
        "{p}"
    );
    assert_eq!(p["confirmed"], 3 - unconfirmed.len(), "{p}");
    unconfirmed.is_empty()
}

/// Issue 13: with clients looping on B and C, a revoke on A answers once B and C have dropped
/// the key, so the very next request to either is refused: no 200 after the answer, ever
/// (before confirmations, 10 to 17 of these 400 requests were served). Most answers say every
/// instance confirmed; at least half must (a generous bound: on an idle machine all do), else
/// confirmations are not coming back at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_revoke_answers_no_instance_serves_the_key_under_load() {
    let d = one_here_two_processes().await;
    let (confirmed, mut calls) = change_under_load(&d, Change::Revoke, ROUNDS).await;
    calls.sort();
    eprintln!(
        "revoke on A (the whole admin call), B and C loaded: p50 {:?}, p99 {:?}, max {:?}; \
         every instance confirmed in {confirmed} of {ROUNDS} rounds (debug build)",
        percentile(&calls, 0.5),
        percentile(&calls, 0.99),
        calls[ROUNDS - 1]
    );
    let metrics = String::from_utf8(d.a.admin_get("/metrics").await.body.to_vec()).unwrap();
    for line in metrics.lines() {
        if line.starts_with("keygate_invalidation_") {
            eprintln!("{line}");
        }
    }
    assert!(confirmed >= ROUNDS / 2, "confirmed in {confirmed} rounds");
}

/// The same for an update: a scope removed on A is missing on B and C from the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_update_answers_no_instance_grants_the_removed_scope_under_load() {
    let d = one_here_two_processes().await;
    let rounds = ROUNDS / 4;
    let (confirmed, _) = change_under_load(&d, Change::RemoveScope, rounds).await;
    assert!(confirmed >= rounds / 2, "confirmed in {confirmed} rounds");
}

/// The config of a `keygate` process sharing `a`'s redis-server and upstream.
fn process_config(redis: &RedisServer, a: &TestGateway) -> String {
    format!(
        "{BASE_CONFIG}\n\
         store: {{ backend: redis, redis: {{ url: \"{}\", timeout: 200ms }} }}\n\
         upstreams: {{ app: {{ url: \"{}\" }} }}\n\
         {LONG_CACHE}\n",
        redis.url(),
        a.upstream.url()
    )
}

fn proxy_url(p: &KeygateProcess) -> String {
    format!("http://127.0.0.1:{}", p.proxy)
}

/// `GET READ` on `base` with `secret`: the status and the error code, if any.
async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    base: &str,
    secret: &Secret,
) -> (StatusCode, Option<String>) {
    let req = http::Request::get(format!("{base}{READ}"))
        .header("authorization", format!("Bearer {}", secret.expose()))
        .body(Full::default())
        .unwrap();
    let r = tokio::time::timeout(WITHIN, client.request(req))
        .await
        .expect("the instance answers")
        .unwrap();
    let status = r.status();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
    (status, code)
}

/// Delete and rotate report too; a delete's 204 carries the report in its header only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_rotations_report_their_propagation() {
    let (_redis, a, b, c) = three_instances().await;
    let others = [id(&b), id(&c)];
    let (key, secret) = a.create_key(&["sessions:read"]).await;
    assert_eq!(b.get(READ, Some(&secret)).await.status, StatusCode::OK);
    let path = format!("/v1/workspaces/acme/keys/{}/rotate", key.id);
    let r = a.admin(Method::POST, &path, Some(OPS_TOKEN), None).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let confirmed = reports_the_fleet(&propagation(&r), &others);
    refuses(&b, &secret, "key_expired", confirmed).await;

    let path = format!("/v1/workspaces/acme/keys/{}", key.id);
    let r = a.admin(Method::DELETE, &path, Some(OPS_TOKEN), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty(), "a delete's report is in its header only");
    let confirmed = reports_the_fleet(&propagation(&r), &others);
    refuses(&b, &secret, "invalid_key", confirmed).await;
}

/// Asserts that `gw` refuses `secret` with `code`: on the very next request when the change was
/// confirmed by every instance, else (a loaded machine held a confirmation past the wait)
/// within a few seconds.
async fn refuses(gw: &TestGateway, secret: &Secret, code: &str, confirmed: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = gw.get(READ, Some(secret)).await.error_code();
        if got == code {
            return;
        }
        assert!(
            !confirmed && std::time::Instant::now() < deadline,
            "{got:?} instead of {code} (confirmed: {confirmed})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A GET on a `keygate` process's admin listener, as text.
async fn process_admin_get(port: u16, path: &str) -> String {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://127.0.0.1:{port}{path}").parse().unwrap();
    let r = client.get(url).await.unwrap();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// Issue 13: one instance frozen (SIGSTOP). A revoke on A answers in bounded time, saying that
/// instance did not confirm, and counts it; after SIGCONT the frozen instance refuses the key
/// on its very first request (its cache's lease ran out while it stood still).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_instance_frozen_a_revoke_answers_in_bounded_time_and_names_it() {
    let redis = RedisServer::start();
    let a = TestGateway::start_on_redis(&redis, LONG_CACHE).await;
    let b = TestGateway::start_on_redis(&redis, LONG_CACHE).await;
    let dir = tempfile::tempdir().unwrap();
    let c = KeygateProcess::start(dir.path(), "c", &process_config(&redis, &a)).await;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    all_count(&[&a, &b], 3).await;
    let ready: serde_json::Value =
        serde_json::from_str(&process_admin_get(c.admin, "/readyz").await).unwrap();
    let c_id = ready["instance"].as_str().expect("instance id").to_owned();

    let (key, secret) = a.create_key(&["sessions:read"]).await;
    for _ in 0..2 {
        assert_eq!(
            get(&client, &proxy_url(&c), &secret).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(b.get(READ, Some(&secret)).await.status, StatusCode::OK);

    c.signal("STOP");
    let r = tokio::time::timeout(ANSWERS_WITHIN, revoke(&a, &key))
        .await
        .expect("the revoke answers in bounded time with an instance frozen");
    let p = propagation(&r);
    reports_the_fleet(&p, &[id(&b), c_id.clone()]);
    let unconfirmed = p["unconfirmed"].as_array().unwrap();
    assert!(unconfirmed.contains(&c_id.clone().into()), "{p}");
    let metrics = String::from_utf8(a.admin_get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains(&format!(
            "\nkeygate_invalidation_unconfirmed_total {}\n",
            unconfirmed.len()
        )),
        "{metrics}"
    );
    assert_eq!(b.get(READ, Some(&secret)).await.error_code(), "key_revoked");

    c.signal("CONT");
    assert_eq!(
        get(&client, &proxy_url(&c), &secret).await,
        (StatusCode::UNAUTHORIZED, Some("key_revoked".to_owned())),
        "the frozen instance served the revoked key after SIGCONT"
    );
    let metrics = process_admin_get(c.admin, "/metrics").await;
    assert!(
        !metrics.contains("\nkeygate_cache_lease_lapses_total 0\n")
            && metrics.contains("\nkeygate_cache_lease_lapses_total "),
        "standing still ran the lease out: {metrics}"
    );
}
