//! Accuracy of `rate_limits.mode: redis` across instances (SPEC §8: within ±2%), in steady state,
//! with one stall of Redis just over the store timeout (60 ms: the "one slow reply" of issue
//! 13) and with Redis paused for a second, both (SIGSTOP … SIGCONT) a third into the run: how many requests N gateway instances
//! on one redis-server admit together, against what the limit allows over the run (its burst
//! plus its rate × the time elapsed).
//!
//! The instances run in this process (each its own listeners, cache, limiter and Redis
//! connections), driven as hard as LOOPS_PER_INSTANCE sequential clients each can, over real
//! HTTP on loopback; the store timeout is the default 50 ms. While Redis is paused every
//! instance enforces its share of the limit (1/N, `limits::Gcra::share`, N from the fleet's
//! heartbeats).
//!
//! Run: `cargo bench --bench global_limit` (about 40 s; `-- 5` for 5 s runs, default 3 s;
//! `--profile dev` spares a release build and measures the same thing).

#![allow(
    clippy::unwrap_used,
    reason = "a bench binary: a failure is a panic with a message"
)]
#![allow(clippy::print_stdout, reason = "the report is the bench's output")]

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keygate::config::RateLimitSpec;
use keygate::control::NewKey;
use support::gateway::{TestGateway, new_key};
use support::redis::RedisServer;

const RATE: u32 = 200;
const BURST: u32 = 20;
const LOOPS_PER_INSTANCE: usize = 4;
const OVERLAY: &str = "rate_limits: { mode: redis }\nstore: { redis: { timeout: 50ms } }";

struct Run {
    instances: usize,
    pause: Option<Duration>,
    accepted: u64,
    refused: u64,
    elapsed: f64,
    local: u64,
    opens: u64,
}

impl Run {
    fn allowance(&self) -> f64 {
        f64::from(BURST) + f64::from(RATE) * self.elapsed
    }

    fn error(&self) -> f64 {
        (self.accepted as f64 - self.allowance()) / self.allowance()
    }
}

async fn measure(instances: usize, pause: Option<Duration>, run: Duration) -> Run {
    let mut redis = RedisServer::start();
    let mut gateways = Vec::new();
    for _ in 0..instances {
        gateways.push(TestGateway::start_on_redis(&redis, OVERLAY).await);
    }
    // The instances count each other through their heartbeats.
    for gw in &gateways {
        let limits = gw.app.gateway().limits();
        while limits.live_instances().load(Ordering::Relaxed) != instances {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (_, secret) = gateways[0]
        .create(NewKey {
            scopes: vec!["sessions:read".into()],
            rate_limit: Some(RateLimitSpec {
                requests: NonZeroU32::new(RATE).unwrap(),
                period: Duration::from_secs(1),
                burst: NonZeroU32::new(BURST),
            }),
            ..new_key("acme")
        })
        .await;
    let auth = format!("Bearer {}", secret.expose());
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let send = |addr: SocketAddr| {
        let req = http::Request::get(format!("http://{addr}/api/v1/sessions"))
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
    // Every instance caches the key; then the bucket fills again (BURST / RATE = 0.1 s).
    for gw in &gateways {
        assert_eq!(send(gw.proxy).await, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let local_before: u64 = gateways.iter().map(local_checks).sum();

    let start = Instant::now();
    let loops: Vec<_> = gateways
        .iter()
        .flat_map(|gw| std::iter::repeat_n(gw.proxy, LOOPS_PER_INSTANCE))
        .map(|addr| {
            let (client, auth) = (client.clone(), auth.clone());
            tokio::spawn(async move {
                let (mut accepted, mut refused) = (0u64, 0u64);
                while start.elapsed() < run {
                    let req = http::Request::get(format!("http://{addr}/api/v1/sessions"))
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
    if let Some(pause) = pause {
        tokio::time::sleep(run / 3).await;
        redis.freeze();
        tokio::time::sleep(pause).await;
        redis.thaw();
    }
    let (mut accepted, mut refused, mut end) = (0, 0, start);
    for l in loops {
        let (a, r, e) = l.await.unwrap();
        accepted += a;
        refused += r;
        end = end.max(e);
    }
    let local = gateways.iter().map(local_checks).sum::<u64>() - local_before;
    let opens = gateways.iter().map(breaker_opens).sum();
    Run {
        instances,
        pause,
        accepted,
        refused,
        elapsed: end.duration_since(start).as_secs_f64(),
        local,
        opens,
    }
}

fn local_checks(gw: &TestGateway) -> u64 {
    gw.app.metrics().rate_limit_local().get()
}

fn breaker_opens(gw: &TestGateway) -> u64 {
    match gw.app.store().as_ref() {
        keygate::store::Store::Redis(r) => r.breaker().opens(),
        keygate::store::Store::Embedded(_) => 0,
    }
}

fn main() {
    let secs: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    let run = Duration::from_secs(secs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "limit {RATE}/s, burst {BURST}; {LOOPS_PER_INSTANCE} clients per instance; {secs} s runs; \
         store timeout 50 ms"
    );
    println!(
        "| instances | redis | admitted | refused | allowed (burst + rate × s) | admitted / allowed | checks decided locally | breaker opens |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let pauses = [
        None,
        Some(Duration::from_millis(60)),
        Some(Duration::from_secs(1)),
    ];
    for pause in pauses {
        for instances in [2, 3] {
            let r = rt.block_on(measure(instances, pause, run));
            println!(
                "| {} | {} | {} | {} | {:.0} ({:.3} s) | {:.3} ({:+.1}%) | {} | {} |",
                r.instances,
                r.pause
                    .map_or("up".to_owned(), |p| format!("paused {} ms", p.as_millis())),
                r.accepted,
                r.refused,
                r.allowance(),
                r.elapsed,
                r.accepted as f64 / r.allowance(),
                r.error() * 100.0,
                r.local,
                r.opens,
            );
        }
    }
}
