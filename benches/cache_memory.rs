//! Memory per cached key (SPEC §8: under 450 B beyond its strings, with 1M keys).
//!
//! Method: N keys are created in a real `redis-server` (started here, on a free loopback port)
//! through the control plane; then every key is looked up once through the gateway, which
//! fills the hot cache from the store. A counting global allocator gives the bytes live before
//! and after the fill (after moka's pending maintenance has run). The cache holds each key in
//! its compact form (`CachedKey`: the id inline, the strings and lists it shares with other
//! keys interned once, see `store::cached`), so a key owns no string of its own on the heap;
//! from the difference go only the heap bytes of the shared grants (a few hundred bytes in
//! all here). What remains, divided by N, is the cache's cost per key: the `CachedKey`, its
//! `Arc`, the cache entry and moka's bookkeeping (hash table, deques, timer wheel). Allocator
//! overhead (size classes) is not counted; RSS is printed beside it.
//!
//! Run: `cargo bench --bench cache_memory` (N = 1,000,000; `KEYGATE_BENCH_KEYS=N` to change).
//! Takes about two minutes, most of it creating the keys.

#![allow(missing_docs, reason = "a bench binary")]
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a bench binary reports on the terminal"
)]
#![allow(
    clippy::unwrap_used,
    reason = "a bench binary: a failure is a panic with a message"
)]

#[path = "../tests/support/redis.rs"]
#[allow(dead_code, reason = "the bench uses part of the test harness's Redis")]
mod redis;

use std::alloc::System;
use std::sync::Arc;

use keygate::App;
use keygate::config::Config;
use keygate::control::NewKey;
use keygate::store::cached::CachedKey;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

// Counts bytes as requested by the program (not the allocator's rounded sizes).
#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes live now. stats_alloc already adds a reallocation's growth to
/// `bytes_allocated` (and its shrinking to `bytes_deallocated`); `bytes_reallocated` is the
/// same amount again, so adding it would count every buffer that grew by `realloc` (Redis
/// replies, JSON decoding) as live after it was freed.
fn live() -> isize {
    let s = ALLOCATOR.stats();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

const CONFIG: &str = r#"
secrets: { pepper: bench-pepper-0123456789abcdef }
store: { backend: redis, redis: { url: "__URL__", timeout: 5s } }
roles: { operator: [sessions:read] }
upstreams: { app: { url: "http://127.0.0.1:9" } }
cache: { capacity: 2000000, ttl: 1h }
routes:
  - match: { path_prefix: /api }
    upstream: app
    scopes: [sessions:read]
log: { access: false }
"#;

/// Heap bytes per entry of a bare moka cache built as the key cache is, with 32-byte keys and
/// `()` values.
fn moka_alone(n: usize, rt: &tokio::runtime::Runtime) -> f64 {
    struct Fixed;
    impl moka::Expiry<[u8; 32], ()> for Fixed {
        fn expire_after_create(
            &self,
            _: &[u8; 32],
            _: &(),
            _: std::time::Instant,
        ) -> Option<std::time::Duration> {
            Some(std::time::Duration::from_secs(3600))
        }
    }
    let cache: moka::future::Cache<[u8; 32], ()> = moka::future::Cache::builder()
        .max_capacity(2 * n as u64)
        .expire_after(Fixed)
        .build();
    let before = live();
    rt.block_on(async {
        for i in 0..n {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            cache.insert(k, ()).await;
        }
        cache.run_pending_tasks().await;
    });
    assert_eq!(cache.entry_count(), n as u64);
    (live() - before) as f64 / n as f64
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::var("KEYGATE_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let server = redis::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = Config::parse("bench", &CONFIG.replace("__URL__", &server.url()), |_| None)
        .expect("bench config");
    let app = Arc::new(rt.block_on(App::new(config)).expect("app"));

    eprintln!(
        "creating {n} keys in redis-server on port {}",
        server.port()
    );
    let secrets: Vec<String> = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let per_task = n.div_ceil(64);
        for t in 0..64 {
            let app = app.clone();
            let count = per_task.min(n.saturating_sub(t * per_task));
            tasks.spawn(async move {
                let mut out = Vec::with_capacity(count);
                for i in 0..count {
                    let new = NewKey {
                        workspace: "acme".into(),
                        name: format!("key-{t}-{i}"),
                        role: Some("operator".into()),
                        scopes: vec!["sessions:read".into()],
                        created_by: "bench".into(),
                        ..NewKey::default()
                    };
                    let (_, secret) = app.keys().create(new, None).await.expect("create");
                    out.push(secret.expose().to_owned());
                }
                out
            });
        }
        let mut all = Vec::with_capacity(n);
        while let Some(part) = tasks.join_next().await {
            all.extend(part.unwrap());
        }
        all
    });
    let gateway = app.gateway().clone();
    let cache = gateway.keys().clone();
    // Creating keys published invalidations; let them settle before the first reading.
    rt.block_on(async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        cache.run_pending_tasks().await;
    });
    assert_eq!(cache.entry_count(), 0, "the cache starts empty");

    let (live_before, rss_before) = (live(), rss_kib());
    rt.block_on(async {
        for chunk in secrets.chunks(256) {
            let lookups = chunk.iter().map(|s| gateway.lookup(s));
            for found in futures_util::future::join_all(lookups).await {
                assert!(found.expect("lookup").is_some(), "every key is found");
            }
        }
        cache.run_pending_tasks().await;
    });
    let (live_after, rss_after) = (live(), rss_kib());
    assert_eq!(cache.entry_count(), n as u64, "every key is cached");

    // Every key is still cached (and they all share one grant).
    rt.block_on(async {
        for s in secrets.iter().step_by(997) {
            let key = gateway.lookup(s).await.expect("lookup").expect("cached");
            assert_eq!(key.workspace(), "acme");
        }
    });
    let shared = cache.grants().heap_bytes();
    let grown = (live_after - live_before) as f64;
    let per_key = (grown - shared as f64) / n as f64;
    println!("keys cached:                 {n}");
    println!("heap growth:                 {:.1} MiB", grown / 1048576.0);
    println!(
        "  of which shared grants:    {} ({shared} B in all)",
        cache.grants().len()
    );
    println!("per key beyond its strings:  {per_key:.0} B   (target < 450 B)");
    println!(
        "  CachedKey fixed part:      {} B (+ 16 B Arc counts)",
        size_of::<CachedKey>()
    );
    // moka's own bookkeeping, for comparison: the same builder options (bounded, per-entry
    // expiry) with 32-byte keys and empty values.
    let bare = moka_alone(n, &rt);
    println!("  of which moka's own, per entry (32 B key, no value): {bare:.0} B");
    println!(
        "RSS growth:                  {:.1} MiB ({:.0} B per key, allocator overhead included)",
        (rss_after - rss_before) as f64 / 1024.0,
        (rss_after - rss_before) as f64 * 1024.0 / n as f64
    );
}
