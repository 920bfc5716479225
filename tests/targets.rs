//! Upstreams with several targets: real upstream processes (`tests/http/named_server.py`) under
//! load, one killed and started again; the retry on another target for requests that never
//! reached one and for bodiless idempotent ones; per-target metrics.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use support::gateway::{Backend, TestGateway};
use support::python::PyServer;
use tokio::io::AsyncReadExt;

/// An upstream process answering its name, on `port` (0: a free one).
async fn named(name: &str, port: u16) -> PyServer {
    let port = port.to_string();
    PyServer::start("http/named_server.py", &["--name", name, "--port", &port]).await
}

/// What the load saw in one phase: answers by body, and failures.
#[derive(Debug, Default)]
struct Tally {
    a: u64,
    b: u64,
    failed: u64,
}

/// `clients` concurrent loops of `GET /p/x` for `period`.
async fn load(gw: &Arc<TestGateway>, clients: usize, period: Duration) -> Tally {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (gw, stop) = (gw.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    let r = gw.get("/p/x", None).await;
                    match (r.status, &r.body[..]) {
                        (StatusCode::OK, b"a") => tally.a += 1,
                        (StatusCode::OK, b"b") => tally.b += 1,
                        _ => tally.failed += 1,
                    }
                }
                tally
            })
        })
        .collect();
    tokio::time::sleep(period).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for task in tasks {
        let t = task.await.unwrap();
        total.a += t.a;
        total.b += t.b;
        total.failed += t.failed;
    }
    total
}

fn metric(text: &str, name: &str, target: SocketAddr) -> f64 {
    text.lines()
        .find(|l| {
            l.starts_with(name)
                && l.contains("upstream=\"pair\"")
                && l.contains(&target.to_string())
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} for {target} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_killed_mid_load_costs_at_most_its_requests_in_flight_and_comes_back() {
    const CLIENTS: usize = 8;
    let a = named("a", 0).await;
    let mut b = named("b", 0).await;
    let overlay = format!(
        "upstreams:\n  pair:\n    targets: [\"http://{}\", \"http://{}\"]\n    \
         passive_health: {{ failures: 2, ejection: 300ms }}\n    \
         health_check: {{ path: /health, interval: 200ms, timeout: 500ms }}\n\
         routes:\n  - {{ match: {{ path_prefix: /p }}, upstream: pair, public: true }}\n",
        a.addr, b.addr
    );
    let gw = Arc::new(TestGateway::start(Backend::Embedded, &overlay).await);

    let before = load(&gw, CLIENTS, Duration::from_millis(800)).await;
    assert_eq!(before.failed, 0, "{before:?}");
    assert!(
        before.a > 20 && before.b > 20,
        "both take traffic: {before:?}"
    );

    let port = b.addr.port();
    let during = {
        let gw2 = gw.clone();
        let running =
            tokio::spawn(async move { load(&gw2, CLIENTS, Duration::from_millis(1500)).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.kill();
        running.await.unwrap()
    };
    // Only requests in flight on `b` as it died may fail (bodiless GETs are even sent again).
    assert!(during.failed <= CLIENTS as u64, "{during:?}");
    assert!(during.a > before.a / 2, "a carries the load: {during:?}");

    let b = named("b", port).await;
    let started = Instant::now();
    let after = load(&gw, CLIENTS, Duration::from_millis(1500)).await;
    assert_eq!(after.failed, 0, "{after:?}");
    assert!(
        after.b > 0,
        "traffic back on b within {:?}: {after:?}",
        started.elapsed()
    );
    eprintln!("before {before:?}, during {during:?}, after {after:?}");

    let text = String::from_utf8_lossy(&gw.admin_get("/metrics").await.body).into_owned();
    assert!(metric(&text, "keygate_upstream_ejections_total", b.addr) >= 1.0);
    assert!(metric(&text, "keygate_upstream_failures_total", b.addr) >= 1.0);
    assert_eq!(
        metric(&text, "keygate_upstream_failures_total", a.addr),
        0.0
    );
    let requests_a = metric(&text, "keygate_upstream_requests_total", a.addr);
    assert!(requests_a >= (before.a + during.a + after.a) as f64);
    assert_eq!(metric(&text, "keygate_upstream_target_up", a.addr), 1.0);
}

/// A target that reads a request and closes the connection without answering.
async fn slammer() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_idempotent_requests_are_sent_again_elsewhere_and_bodies_are_not() {
    let good = named("a", 0).await;
    let bad = slammer().await;
    let closed = support::upstream::closed_port().await;
    // Failures never eject here: every request meets the bad target in turn.
    let overlay = format!(
        "upstreams:\n  \
           pair: {{ targets: [\"http://{bad}\", \"http://{}\"], passive_health: {{ failures: 1000 }} }}\n  \
           gone: {{ targets: [\"http://{closed}\", \"http://{}\"], passive_health: {{ failures: 1000 }} }}\n\
         routes:\n  \
           - {{ match: {{ path_prefix: /p }}, upstream: pair, public: true }}\n  \
           - {{ match: {{ path_prefix: /g }}, upstream: gone, public: true }}\n",
        good.addr, good.addr
    );
    let gw = TestGateway::start(Backend::Embedded, &overlay).await;
    for _ in 0..6 {
        let r = gw.get("/p/x", None).await;
        assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"a"[..]));
        // A refused connect never sent anything: any method goes to the other target.
        let post = gw
            .request(Method::POST, "/g/x", None)
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        assert_eq!(gw.send(post).await.status, StatusCode::OK);
    }
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let post = gw
            .request(Method::POST, "/p/x", None)
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        statuses.push(gw.send(post).await.status);
    }
    // A POST the bad target swallowed is not sent twice: the client gets the 502.
    assert!(statuses.contains(&StatusCode::BAD_GATEWAY), "{statuses:?}");
    assert!(statuses.contains(&StatusCode::OK), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_failing_its_health_checks_gets_no_requests() {
    let good = named("a", 0).await;
    let closed = support::upstream::closed_port().await;
    let overlay = format!(
        "upstreams:\n  pair:\n    targets: [\"http://{closed}\", \"http://{}\"]\n    \
         health_check: {{ path: /health, interval: 100ms, timeout: 500ms }}\n\
         routes:\n  - {{ match: {{ path_prefix: /p }}, upstream: pair, public: true }}\n",
        good.addr
    );
    let gw = TestGateway::start(Backend::Embedded, &overlay).await;
    // The first round of checks runs at once; give it a few intervals.
    let mut text = String::new();
    for _ in 0..50 {
        text = String::from_utf8_lossy(&gw.admin_get("/metrics").await.body).into_owned();
        if metric(&text, "keygate_upstream_target_up", closed) == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&text, "keygate_upstream_target_up", closed), 0.0);
    for _ in 0..10 {
        let r = gw.get("/p/x", None).await;
        assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"a"[..]));
    }
    let text = String::from_utf8_lossy(&gw.admin_get("/metrics").await.body).into_owned();
    assert_eq!(
        metric(&text, "keygate_upstream_requests_total", closed),
        0.0,
        "checked out before any request met it"
    );
    assert_eq!(
        metric(&text, "keygate_upstream_requests_total", good.addr),
        10.0
    );
}
