//! The decision on a cache hit: credential extraction → failed-authentication check → secret
//! shape and checksum → keyed hash → cache lookup → status, expiry, allowlist and scope checks →
//! rate limit (`mode: local`). SPEC §8 target: under 2 µs.
//!
//! Run: `cargo bench --bench decision`. The parts are measured on their own too, to show where
//! the time goes.

#![allow(
    missing_docs,
    reason = "criterion_group! generates an undocumented function"
)]

use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use keygate::App;
use keygate::config::Config;
use keygate::control::NewKey;

const CONFIG: &str = r#"
secrets: { pepper: bench-pepper-0123456789abcdef }
store: { backend: embedded, embedded: { path: "__PATH__" } }
roles: { operator: [sessions:read, sessions:write] }
upstreams: { app: { url: "http://127.0.0.1:9" } }
auth: { failure_limit: { requests: 20, period: 1m } }
# A limit the bench never reaches (a million a second, a bucket of four billion), so every
# iteration is allowed and takes the full path: bucket read, GCRA, compare-and-swap.
rate_limits: { default: { requests: 1000000, period: 1s, burst: 4000000000 } }
routes:
  - match: { path_prefix: /health }
    upstream: app
    public: true
  - match: { path_prefix: /api/v1/sessions, methods: [GET, HEAD] }
    upstream: app
    scopes: [sessions:read]
log: { access: false }
"#;

fn decision(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let text = CONFIG.replace(
        "__PATH__",
        &dir.path().join("bench.redb").display().to_string(),
    );
    let config = Config::parse("bench", &text, |_| None).expect("bench config");
    let app = rt.block_on(App::new(config.clone())).expect("app");
    let (_, secret) = rt
        .block_on(app.keys().create(
            NewKey {
                workspace: "acme".into(),
                name: "bench".into(),
                role: Some("operator".into()),
                ip_allowlist: vec!["127.0.0.0/8".parse().expect("net")],
                created_by: "bench".into(),
                ..NewKey::default()
            },
            None,
        ))
        .expect("key");
    let gateway = app.gateway().clone();
    let policy = gateway.policy();
    let request = Request::get("http://gw.example/api/v1/sessions/42")
        .header("authorization", format!("Bearer {}", secret.expose()))
        .header("user-agent", "bench")
        .body(())
        .expect("request");
    let peer: IpAddr = "127.0.0.1".parse().expect("ip");
    // Warm the cache: every measured iteration is a hit.
    rt.block_on(gateway.authorize(&policy, &request, peer))
        .expect("allowed");

    let mut group = c.benchmark_group("decision");
    group.bench_function("cache_hit_allowed", |b| {
        b.to_async(&rt).iter(|| async {
            let d = gateway
                .authorize(&policy, &request, peer)
                .await
                .expect("allowed");
            std::hint::black_box(d.key.is_some())
        })
    });
    // Usage recording as in `Gateway::handle`, with its flusher draining the queue on another
    // thread (as when serving), so every iteration takes the normal path, not the full-queue one.
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("flusher runtime");
    let (recorder, flusher) = keygate::usage::channel(
        &config,
        app.store().clone(),
        keygate::metrics::Metrics::new(),
    );
    let _flushing = {
        let _guard = background.enter();
        flusher.spawn()
    };
    let method = http::Method::GET;
    group.bench_function("cache_hit_allowed_and_recorded", |b| {
        b.to_async(&rt).iter(|| async {
            let d = gateway
                .authorize(&policy, &request, peer)
                .await
                .expect("allowed");
            let key = d.key.expect("authenticated");
            recorder.record(
                key,
                &method,
                "/api/v1/sessions/42",
                http::StatusCode::OK,
                peer,
                std::time::Duration::from_micros(300),
                None,
            );
        })
    });
    let hasher = gateway.hasher().clone();
    let format = gateway.format().clone();
    group.bench_function("part_shape_and_checksum", |b| {
        b.iter(|| format.shape(std::hint::black_box(secret.expose())))
    });
    group.bench_function("part_keyed_hash", |b| {
        b.iter(|| hasher.hash(std::hint::black_box(secret.expose())))
    });
    let decision = rt
        .block_on(gateway.authorize(&policy, &request, peer))
        .expect("allowed");
    let (key, route) = (decision.key.clone().expect("a key"), decision.route);
    let limits = gateway.limits();
    group.bench_function("part_rate_limit", |b| {
        b.to_async(&rt).iter(|| async {
            let headers = limits.admit(&key, route).await.expect("allowed");
            std::hint::black_box(headers.rate.is_some())
        })
    });
    let hash = hasher.hash(secret.expose());
    let cache = gateway.keys().clone();
    group.bench_function("part_cache_get", |b| {
        b.to_async(&rt)
            .iter(|| async { cache.get(&hash).await.expect("hit").is_some() })
    });
    group.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
