//! Reloading the config in place (SPEC §7), end to end: a reload that adds a route while a
//! streamed response is in flight, a refused one, six under load, a certificate swap, and
//! SIGHUP on the real binary.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use support::gateway::{Backend, OPS_TOKEN, TestGateway, new_key};

/// Routes of the base config plus `/api/v2` (listed first: an overlay's list replaces the base's).
const WITH_V2: &str = r#"
routes:
  - match: { path_prefix: /api/v2 }
    upstream: app
    scopes: [sessions:read]
  - match: { path_prefix: /api/v1/sessions }
    upstream: app
    scopes: [sessions:read]
  - match: { path_prefix: /stream }
    upstream: app
    scopes: [sessions:read]
"#;

async fn reload(gw: &TestGateway) -> support::gateway::Reply {
    gw.admin(Method::POST, "/v1/reload", Some(OPS_TOKEN), None)
        .await
}

async fn ready_hash(gw: &TestGateway) -> String {
    let r = gw.admin_get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()["config"].as_str().unwrap().to_owned()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_a_route_while_a_stream_is_in_flight() {
    let gw = TestGateway::start_from_file(Backend::Embedded, "").await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    assert_eq!(
        gw.get("/api/v2/things", Some(&secret)).await.status,
        StatusCode::NOT_FOUND
    );
    let before = ready_hash(&gw).await;

    // A 32 MiB download, read partly before the reload and the rest after it.
    const TOTAL: u64 = 32 * 1024 * 1024;
    let req = gw
        .request(
            Method::GET,
            &format!("/stream/download?bytes={TOTAL}"),
            Some(&secret),
        )
        .body(Full::default())
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let response = client.request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0u64;
    while received < 1024 * 1024 {
        let frame = body.frame().await.unwrap().unwrap();
        received += frame.data_ref().map_or(0, |d| d.len() as u64);
    }

    gw.rewrite_config(WITH_V2);
    let r = reload(&gw).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let answer = r.json();
    assert!(
        answer["changed"]
            .as_array()
            .unwrap()
            .contains(&Value::from("routes"))
    );
    assert_eq!(answer["restart_required"], serde_json::json!([]));

    // The new route serves at once; the stream in flight finishes whole.
    assert_eq!(
        gw.get("/api/v2/things", Some(&secret)).await.status,
        StatusCode::OK
    );
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, TOTAL);

    let after = ready_hash(&gw).await;
    assert_ne!(before, after);
    assert_eq!(answer["config"], after);
    let metrics = String::from_utf8_lossy(&gw.admin_get("/metrics").await.body).into_owned();
    assert_eq!(
        metric(&metrics, "keygate_config_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            &format!("keygate_config_info{{hash=\"{after}\"}}")
        ),
        Some(1.0)
    );
    assert!(!metrics.contains(&format!("hash=\"{before}\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_refused_whole_and_restart_only_fields_are_left() {
    let gw = TestGateway::start_from_file(Backend::Embedded, "").await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    let running = ready_hash(&gw).await;

    // Two problems, each named, and nothing of the file applied.
    gw.rewrite_config(
        "routes:\n  - match: { path_prefix: /api/v2 }\n    upstream: nowhere\n\
         rate_limits: { default: { requests: 10, period: 0s } }\n",
    );
    let r = reload(&gw).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_code(), "invalid_config");
    let paths: Vec<String> = r.json()["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        paths.contains(&"routes[0].upstream".to_owned()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"rate_limits.default.period".to_owned()),
        "{paths:?}"
    );
    assert_eq!(ready_hash(&gw).await, running);
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.get("/api/v2/x", Some(&secret)).await.status,
        StatusCode::NOT_FOUND
    );

    // Not YAML at all: the line is named.
    gw.write_config_text("routes: [\n  oops: {\n");
    let r = reload(&gw).await;
    assert_eq!(r.error_code(), "invalid_config");
    assert!(r.json()["error"]["problems"][0]["line"].is_number());

    // Restart-only changes are reported and left: the pepper stays, so keys keep working.
    gw.rewrite_config(&format!(
        "{WITH_V2}secrets: {{ pepper: another-pepper-0123456789abcdef }}\ncache: {{ ttl: 5s }}\n"
    ));
    let r = reload(&gw).await;
    assert_eq!(r.status, StatusCode::OK);
    let left = r.json()["restart_required"].clone();
    assert_eq!(left, serde_json::json!(["cache", "secrets.pepper"]));
    assert_eq!(
        gw.get("/api/v2/x", Some(&secret)).await.status,
        StatusCode::OK
    );

    let metrics = String::from_utf8_lossy(&gw.admin_get("/metrics").await.body).into_owned();
    assert_eq!(
        metric(&metrics, "keygate_config_reloads_total{result=\"invalid\"}"),
        Some(2.0)
    );

    // Only an admin token holding config.reload may reload; never an API key.
    let (_, admin_key) = gw.create_key(&["*"]).await;
    let r = gw
        .admin(Method::POST, "/v1/reload", Some(admin_key.expose()), None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let audit = gw
        .admin(Method::GET, "/v1/audit?limit=20", Some(OPS_TOKEN), None)
        .await
        .json();
    let reloads = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "config.reload")
        .count();
    assert_eq!(reloads, 3, "every reload is audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_reloads_under_load_fail_no_request() {
    let gw = Arc::new(TestGateway::start_from_file(Backend::Embedded, "").await);
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (gw, secret, stop) = (gw.clone(), secret.clone(), stop.clone());
            let (ok, failed) = (ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = gw.get("/api/v1/sessions/1", Some(&secret)).await;
                    let counter = if r.status == StatusCode::OK {
                        &ok
                    } else {
                        &failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let overlays = [
        WITH_V2.to_owned(),
        "rate_limits: { default: { requests: 100000, period: 1s } }\n".to_owned(),
        format!("{WITH_V2}trusted_proxies: [10.0.0.0/8]\n"),
    ];
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        gw.rewrite_config(&overlays[round % overlays.len()]);
        let r = reload(&gw).await;
        assert_eq!(r.status, StatusCode::OK, "reload {round}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 50, "load ran: {ok} requests");
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
}

/// The proxy listener's certificate is re-read by a reload: a new TLS connection gets the new
/// one, a connection made before keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_certificate_for_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let write = |c: &rcgen::CertifiedKey<rcgen::KeyPair>| {
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    };
    let first = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let second = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    write(&first);
    let overlay = format!(
        "tls: {{ cert: \"{}\", key: \"{}\" }}",
        cert.display(),
        key.display()
    );
    let gw = TestGateway::start_from_file(Backend::Embedded, &overlay).await;
    let roots = [first.cert.der().clone(), second.cert.der().clone()];
    let old = tls_connect(&gw, &roots).await;
    assert_eq!(peer_certificate(&old), first.cert.der().to_vec());

    write(&second);
    gw.rewrite_config(&overlay);
    let r = reload(&gw).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.json()["changed"]
            .as_array()
            .unwrap()
            .contains(&Value::from("tls"))
    );
    let new = tls_connect(&gw, &roots).await;
    assert_eq!(peer_certificate(&new), second.cert.der().to_vec());

    // An unreadable certificate refuses the reload; the one in use stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    assert_eq!(reload(&gw).await.error_code(), "invalid_config");
    let again = tls_connect(&gw, &roots).await;
    assert_eq!(peer_certificate(&again), second.cert.der().to_vec());
}

async fn tls_connect(
    gw: &TestGateway,
    roots: &[rustls::pki_types::CertificateDer<'static>],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

fn peer_certificate(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// SIGHUP on the real binary reloads (it used to end the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary_and_keeps_it_running() {
    use support::process::{KeygateProcess, issue_key};
    let upstream = support::upstream::TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "{}\nstore: {{ backend: embedded, embedded: {{ path: \"{}\" }} }}\nupstreams:\n  app: {{ url: \"{}\" }}\n",
        support::gateway::BASE_CONFIG,
        dir.path().join("keygate.redb").display(),
        upstream.url()
    );
    let (_, secret) = issue_key(
        &base,
        keygate::control::NewKey {
            scopes: vec!["sessions:read".into()],
            ..new_key("acme")
        },
    )
    .await;
    let mut running = KeygateProcess::start(dir.path(), "keygate", &base).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let get = |path: &str| {
        let req = http::Request::get(format!("http://127.0.0.1:{}{path}", running.proxy))
            .header("authorization", format!("Bearer {}", secret.expose()))
            .body(Full::default())
            .unwrap();
        client.request(req)
    };
    assert_eq!(get("/api/v2/x").await.unwrap().status(), 404);
    // The file the process reads (with the listen section it was started with), plus a route.
    let path = dir.path().join("keygate.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen(
        "routes:\n",
        "routes:\n  - match: { path_prefix: /api/v2 }\n    upstream: app\n    scopes: [sessions:read]\n",
        1,
    );
    std::fs::write(&path, text).unwrap();
    running.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if get("/api/v2/x").await.unwrap().status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.terminate().await;
    // Text logs to a file, without terminal colour codes: the warning about the test's short
    // pepper, at start and again for the reloaded file.
    let log = std::fs::read_to_string(&running.log).unwrap();
    assert_eq!(log.matches("problem=secrets.pepper").count(), 2, "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a log file: {log:?}"
    );
}

/// An upstream a reload leaves as it was keeps its pooled connections; one it changes starts a
/// new pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_upstreams_keep_their_connections_across_a_reload() {
    let gw = TestGateway::start_from_file(Backend::Embedded, "").await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    for _ in 0..3 {
        assert_eq!(
            gw.get("/api/v1/sessions", Some(&secret)).await.status,
            StatusCode::OK
        );
    }
    let before = gw.upstream.connections.load(Ordering::SeqCst);
    gw.rewrite_config(WITH_V2);
    assert_eq!(reload(&gw).await.status, StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(
            gw.get("/api/v1/sessions", Some(&secret)).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        gw.upstream.connections.load(Ordering::SeqCst),
        before,
        "a reload that leaves the upstream as it was reuses its connections"
    );
    let url = gw.upstream.url();
    gw.rewrite_config(&format!(
        "{WITH_V2}upstreams: {{ app: {{ url: \"{url}\", timeout: 20s }} }}\n"
    ));
    assert_eq!(reload(&gw).await.status, StatusCode::OK);
    assert_eq!(
        gw.get("/api/v1/sessions", Some(&secret)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.upstream.connections.load(Ordering::SeqCst),
        before + 1,
        "a changed upstream gets a new pool"
    );
}
