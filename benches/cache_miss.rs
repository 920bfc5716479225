//! A cache miss: the key's entry is dropped, then the secret is looked up, so the cache asks
//! the store (Redis: one `GET` round trip to a real `redis-server` on loopback, started here;
//! embedded: one redb read on the blocking pool). A hit is measured beside them.
//!
//! Run: `cargo bench --bench cache_miss`.

#![allow(
    missing_docs,
    reason = "criterion_group! generates an undocumented function"
)]
#![allow(
    clippy::unwrap_used,
    reason = "a bench binary: a failure is a panic with a message"
)]

#[path = "../tests/support/redis.rs"]
#[allow(dead_code, reason = "the bench uses part of the test harness's Redis")]
mod redis;

use criterion::{Criterion, criterion_group, criterion_main};
use keygate::App;
use keygate::config::Config;
use keygate::control::NewKey;

const CONFIG: &str = r#"
secrets: { pepper: bench-pepper-0123456789abcdef }
store: __STORE__
upstreams: { app: { url: "http://127.0.0.1:9" } }
routes:
  - match: { path_prefix: /api }
    upstream: app
log: { access: false }
"#;

fn misses(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = redis::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let stores = [
        (
            "redis",
            format!(
                "{{ backend: redis, redis: {{ url: \"{}\" }} }}",
                server.url()
            ),
        ),
        (
            "embedded",
            format!(
                "{{ backend: embedded, embedded: {{ path: \"{}\" }} }}",
                dir.path().join("bench.redb").display()
            ),
        ),
    ];
    let mut group = c.benchmark_group("lookup");
    for (name, store) in stores {
        let config = Config::parse("bench", &CONFIG.replace("__STORE__", &store), |_| None)
            .expect("bench config");
        let app = rt.block_on(App::new(config)).expect("app");
        let new = NewKey {
            workspace: "acme".into(),
            name: "bench".into(),
            created_by: "bench".into(),
            ..NewKey::default()
        };
        let (_, secret) = rt.block_on(app.keys().create(new, None)).expect("key");
        let gateway = app.gateway().clone();
        let hash = gateway.hasher().hash(secret.expose());
        group.bench_function(format!("{name}_cache_miss"), |b| {
            b.to_async(&rt).iter(|| async {
                gateway.keys().invalidate(&hash).await;
                let key = gateway.lookup(secret.expose()).await.expect("lookup");
                assert!(key.is_some());
            })
        });
        group.bench_function(format!("{name}_cache_hit"), |b| {
            b.to_async(&rt).iter(|| async {
                let key = gateway.lookup(secret.expose()).await.expect("lookup");
                assert!(key.is_some());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, misses);
criterion_main!(benches);
