//! The `keygate` binary as an operator runs it: `config check`, `serve` with the shipped example
//! configs, access logs that never hold a secret, 256 MiB streamed both ways in bounded memory,
//! and a clean exit on SIGTERM.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keygate::config::Config;
use support::gateway::{BASE_CONFIG, new_key};
use support::process::{KeygateProcess, issue_key};
use support::upstream::TestUpstream;

const BIN: &str = env!("CARGO_BIN_EXE_keygate");

fn check(file: &Path) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(file)
        .output()
        .expect("run keygate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_shipped_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("config/ exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            let (code, out) = check(&path);
            assert_eq!(code, 0, "{}: {out}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 1, "config/ holds at least the example");
}

#[test]
fn config_check_reports_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "secrets: { pepper: short }\nupstreams: { app: { url: http://127.0.0.1:1 } }\n\
         routes:\n  - match: { path_prefix: /a }\n    upstream: nope\n  \
         - match: { path_prefix: b }\n    upstream: app\n",
    )
    .unwrap();
    let (code, out) = check(&file);
    assert_eq!(code, 64, "{out}");
    for want in [
        "secrets.pepper",
        "routes[0].upstream",
        "routes[1].match.path_prefix",
        "3 problems",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }
    std::fs::write(&file, "secrets: { pepper: 0123456789abcdefgh }\nbogus: 1\n").unwrap();
    let (code, out) = check(&file);
    assert_eq!(code, 64);
    for want in [
        "bogus (line 2): unknown section `bogus`",
        "the `upstreams` section is missing",
        "the `routes` section is missing",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }
    let (code, out) = check(&dir.path().join("missing.yaml"));
    assert_eq!(code, 64);
    assert!(out.contains("cannot read file"), "{out}");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A key of workspace `acme` with `sessions:read`, issued into the store of config `text`.
async fn reader_key(text: &str) -> (keygate::keys::KeyRecord, keygate::keys::Secret) {
    issue_key(
        text,
        keygate::control::NewKey {
            scopes: vec!["sessions:read".into()],
            ..new_key("acme")
        },
    )
    .await
}

/// The test config on an embedded store in `dir`, forwarding to `upstream`.
fn embedded_config(dir: &Path, upstream: &TestUpstream) -> String {
    format!(
        "{BASE_CONFIG}\n\
         store: {{ backend: embedded, embedded: {{ path: \"{}\" }} }}\n\
         upstreams: {{ app: {{ url: \"{}\" }} }}\n",
        dir.join("keygate.redb").display(),
        upstream.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_streams_256_mib_both_ways_in_bounded_memory_and_stops_on_sigterm() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = embedded_config(dir.path(), &upstream).replace(
        "log: { format: text, level: warn, access: false }",
        "log: { format: json, level: info, access: true }",
    );

    // Issue a key through the library into the same file, then hand the file to the binary.
    let (key, secret) = reader_key(&text).await;

    let mut running = KeygateProcess::start(dir.path(), "keygate", &text).await;
    let (pid, proxy_port) = (running.pid(), running.proxy);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let auth = format!("Bearer {}", secret.expose());
    let warm = http::Request::get(format!("http://127.0.0.1:{proxy_port}/api/v1/sessions"))
        .header("authorization", &auth)
        .body(Full::default())
        .unwrap();
    assert_eq!(client.request(warm).await.unwrap().status(), 200);
    // A refusal after the key was recognised: its access line names the key and the code.
    let refused = http::Request::get(format!("http://127.0.0.1:{proxy_port}/api/v1/admin/x"))
        .header("authorization", &auth)
        .body(Full::default())
        .unwrap();
    assert_eq!(client.request(refused).await.unwrap().status(), 403);
    let idle = rss_kib(pid);

    // Sample the gateway's RSS while the transfers run.
    let peak = Arc::new(AtomicU64::new(idle));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    const TOTAL: u64 = 256 * 1024 * 1024;
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let chunks = (TOTAL / chunk.len() as u64) as usize;
    let body = StreamBody::new(futures_util::stream::iter(
        std::iter::repeat_n(chunk, chunks)
            .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(c))),
    ));
    let upload_client = Client::builder(TokioExecutor::new()).build_http();
    let up = http::Request::post(format!("http://127.0.0.1:{proxy_port}/stream/upload"))
        .header("authorization", &auth)
        .body(body)
        .unwrap();
    let r = upload_client.request(up).await.unwrap();
    assert_eq!(r.status(), 200);
    let got = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&got[..], format!("{{\"bytes\":{TOTAL}}}").as_bytes());

    let down = http::Request::get(format!(
        "http://127.0.0.1:{proxy_port}/stream/download?bytes={TOTAL}"
    ))
    .header("authorization", &auth)
    .body(Full::default())
    .unwrap();
    let r = client.request(down).await.unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, TOTAL);
    sampling.abort();
    let growth_mib = peak.load(Ordering::Relaxed).saturating_sub(idle) / 1024;
    assert!(
        growth_mib < 64,
        "RSS grew {growth_mib} MiB above idle while streaming"
    );

    // SIGTERM: drains and exits 0.
    running.terminate().await;

    // One access line per request, with the key id and never the secret.
    let log = std::fs::read_to_string(&running.log).unwrap();
    assert!(!log.contains(secret.expose()), "the secret reached the log");
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "keygate::access")
        .collect();
    assert_eq!(access.len(), 4, "{log}");
    assert!(
        access.iter().all(|v| v["key_id"] == key.id.as_str()),
        "{log}"
    );
    assert!(
        access
            .iter()
            .any(|v| v["status"] == 403 && v["code"] == "insufficient_scope"),
        "{log}"
    );
    assert!(
        access
            .iter()
            .filter(|v| v["status"] == 200)
            .all(|v| v.get("code").is_none()),
        "{log}"
    );
    assert!(
        access
            .iter()
            .any(|v| v["path"] == "/stream/upload" && v["status"] == 200)
    );
}

/// `(soft, hard)` "Max open files" of a process.
fn nofile_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut values = line["Max open files".len()..].split_whitespace();
    (
        values.next().unwrap().to_owned(),
        values.next().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_raises_the_soft_file_descriptor_limit_to_the_hard_limit() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = embedded_config(dir.path(), &upstream);
    // Started with a soft limit of 256, as a service manager may start it.
    let mut running = KeygateProcess::start_with(dir.path(), "keygate", &text, Some(256)).await;
    let (soft, hard) = nofile_limits(running.pid());
    assert_ne!(hard, "256", "the hard limit here is too low to tell");
    assert_eq!(soft, hard, "soft RLIMIT_NOFILE not raised");
    running.terminate().await;
}

/// SIGTERM: `/readyz` fails at once while the proxy serves on for `shutdown_delay` (so load
/// balancers stop sending before anything is refused); then the process stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_first_and_serves_through_the_shutdown_delay() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\nshutdown_delay: 2s\n",
        embedded_config(dir.path(), &upstream)
    );
    let (_, secret) = reader_key(&text).await;
    let mut running = KeygateProcess::start(dir.path(), "keygate", &text).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let get = |url: String| {
        let req = http::Request::get(url)
            .header("authorization", format!("Bearer {}", secret.expose()))
            .body(Full::default())
            .unwrap();
        client.request(req)
    };
    let (proxy, admin) = (running.proxy, running.admin);
    running.signal("TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let r = get(format!("http://127.0.0.1:{admin}/readyz"))
            .await
            .unwrap();
        if r.status() == 503 {
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["status"], "draining");
            assert_eq!(body["config"].as_str().map(str::len), Some(16), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readiness never failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Readiness has failed, and requests still pass: the listener is open during the delay.
    let r = get(format!("http://127.0.0.1:{proxy}/api/v1/sessions"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    running.wait_clean_exit().await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", proxy)).is_err(),
        "the listener is closed after the delay"
    );
}

/// Type errors of several sections are reported together, in plain words, a duplicated key at
/// its own line; what is valid but likely wrong is a warning (exit 0).
#[test]
fn config_check_reports_type_errors_together_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("types.yaml");
    std::fs::write(
        &file,
        "secrets: { pepper: 0123456789abcdef0123456789abcdef }\n\
         cache: { capacity: lots }\n\
         upstreams: { app: { url: http://127.0.0.1:1 } }\n\
         routes:\n  - match: { path_prefix: /a }\n    upstream: app\n    public: sometimes\n  \
         - match: { path_prefix: /b, methods: 7 }\n    upstream: app\n",
    )
    .unwrap();
    let (code, out) = check(&file);
    assert_eq!(code, 64, "{out}");
    for want in [
        "3 problems",
        "cache.capacity (line 2): expected a whole number (0 or more), found the text \"lots\"",
        "routes[0].public",
        "expected true or false",
        "routes[1].match.methods",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }

    std::fs::write(
        &file,
        "secrets: { pepper: 0123456789abcdef0123456789abcdef }\nupstreams:\n  app: { url: http://127.0.0.1:1 }\n\
         routes:\n  - match: { path_prefix: /a }\n    upstream: app\n\
         log: { level: info }\nlog: { level: debug }\n",
    )
    .unwrap();
    let (code, out) = check(&file);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("line 8: `log` is given twice"), "{out}");

    std::fs::write(
        &file,
        "secrets: { pepper: example-pepper-change-me-in-production }\n\
         upstreams: { app: { url: http://127.0.0.1:1 } }\n\
         routes:\n  - match: { path_prefix: /api }\n    upstream: app\n  \
         - match: { path_prefix: /api/v2, methods: [GET] }\n    upstream: app\n\
         admin: { tokens: [ { name: ops, token: short-token-1234567890, permissions: [api.key.view], workspaces: [\"*\"] } ] }\n",
    )
    .unwrap();
    let (code, out) = check(&file);
    assert_eq!(code, 0, "{out}");
    for want in [
        "warning: secrets.pepper (line 1): is the example config's placeholder",
        "warning: routes[1] (line 6): never matches: routes[0] comes first",
        "warning: admin.tokens[0].token",
        "ok, with 3 warnings",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }
}

/// `(name, voluntary context switches)` of each thread of a process named `kg-proxy-*` (the kernel keeps 15 bytes of a name).
fn worker_threads(pid: u32) -> Vec<(String, u64)> {
    let mut workers = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(status) = std::fs::read_to_string(task.unwrap().path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap()
        };
        let name = field("Name:");
        if name.starts_with("kg-proxy-") {
            let switches = field("voluntary_ctxt_switches:").parse().unwrap();
            workers.push((name, switches));
        }
    }
    workers.sort();
    workers
}

/// `--worker-threads 2`: two threads each accept on a socket of their own and serve what they
/// accept (both wake for the connections spread over them); SIGTERM drains the requests in
/// flight on both before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_connections_and_both_drain_on_sigterm() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = embedded_config(dir.path(), &upstream);
    let (_, secret) = reader_key(&text).await;
    let mut running =
        KeygateProcess::start_with_args(dir.path(), "keygate", &text, &["--worker-threads", "2"])
            .await;
    let before = worker_threads(running.pid());
    let names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["kg-proxy-0", "kg-proxy-1"]);

    // 32 connections, each with a slow request in flight; a client per connection.
    let proxy = running.proxy;
    let requests: Vec<_> = (0..32)
        .map(|_| {
            let auth = format!("Bearer {}", secret.expose());
            tokio::spawn(async move {
                let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                let req = http::Request::get(format!("http://127.0.0.1:{proxy}/slow?ms=1500"))
                    .header("authorization", auth)
                    .body(Full::default())
                    .unwrap();
                let r = client.request(req).await.unwrap();
                let status = r.status();
                (status, r.into_body().collect().await.unwrap().to_bytes())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = worker_threads(running.pid());
    for ((name, then), (_, now)) in before.iter().zip(&after) {
        // A worker given no connection never wakes from its event loop's wait.
        assert!(now > then, "{name} served nothing: {before:?} -> {after:?}");
    }
    running.signal("TERM");
    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(&body[..], b"slow done");
    }
    running.wait_clean_exit().await;
}
