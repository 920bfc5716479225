//! Heap allocations per proxied request on a cache hit: the whole gateway (hyper's server and
//! client connections, the decision, limits, usage recording, the forwarded request and the
//! response) serving real HTTP/1.1 over loopback, counted by a counting allocator.
//!
//! The client and the upstream are plain blocking sockets with buffers reused across requests,
//! so every allocation counted during the measured requests is the gateway's (its background
//! tasks, the usage flush, included). Find the sites with DHAT:
//! `valgrind --tool=dhat <bench binary> --requests 2000`.
//!
//! Run: `cargo bench --bench allocations` (prints allocations and bytes per request).

#![allow(clippy::print_stdout, reason = "a bench reports on stdout")]

use std::alloc::System;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use keygate::config::Config;
use keygate::control::NewKey;
use keygate::{App, Listeners};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CONFIG: &str = r#"
secrets: { pepper: bench-pepper-0123456789abcdef }
store: { backend: embedded, embedded: { path: "__PATH__" } }
roles: { operator: [sessions:read] }
upstreams: { app: { url: "http://__UPSTREAM__" } }
rate_limits: { default: { requests: 1000000, period: 1s, burst: 4000000000 } }
routes:
  - match: { path_prefix: /api }
    upstream: app
    scopes: [sessions:read]
log: { access: false }
"#;

/// The upstream's answer to every request.
const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";

/// Reads one message head (and a body of `content-length`, which must be 2 or absent) from
/// `stream` into `buf`; returns false at end of stream.
fn read_message(stream: &mut TcpStream, buf: &mut [u8]) -> bool {
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).expect("read");
        if n == 0 {
            return false;
        }
        filled += n;
        let seen = &buf[..filled];
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = &seen[..end];
            let body = if head
                .windows(17)
                .any(|w| w.eq_ignore_ascii_case(b"content-length: 2"))
            {
                2
            } else {
                0
            };
            if filled >= end + 4 + body {
                return true;
            }
        }
    }
}

/// An upstream answering `ANSWER` to every request on every connection, one thread each.
fn upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.expect("accept");
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                while read_message(&mut stream, &mut buf) {
                    stream.write_all(ANSWER).expect("answer");
                }
            });
        }
    });
    addr
}

fn main() {
    let requests: u64 = std::env::args()
        .skip_while(|a| a != "--requests")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let text = CONFIG
        .replace(
            "__PATH__",
            &dir.path().join("bench.redb").display().to_string(),
        )
        .replace("__UPSTREAM__", &upstream().to_string());
    let config = Config::parse("bench", &text, |_| None).expect("bench config");

    // The gateway on a current-thread runtime of its own, as one worker serves.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let app = App::new(config).await.expect("app");
            let (_, secret) = app
                .keys()
                .create(
                    NewKey {
                        workspace: "acme".into(),
                        name: "bench".into(),
                        role: Some("operator".into()),
                        created_by: "bench".into(),
                        ..NewKey::default()
                    },
                    None,
                )
                .await
                .expect("key");
            let listeners = Listeners {
                proxy: tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind"),
                admin: tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind"),
                authz: None,
            };
            let proxy = listeners.proxy.local_addr().expect("addr");
            ready_tx
                .send((proxy, secret.expose().to_owned()))
                .expect("ready");
            app.serve(listeners, std::future::pending())
                .await
                .expect("serve");
        });
    });
    let (proxy, secret) = ready_rx.recv().expect("gateway started");

    let request = format!(
        "GET /api/v1/sessions HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {secret}\r\n\r\n"
    );
    let mut client = TcpStream::connect(proxy).expect("connect");
    client.set_nodelay(true).expect("nodelay");
    let mut buf = vec![0u8; 16 * 1024];
    let mut exchange = |n: u64| {
        for _ in 0..n {
            client.write_all(request.as_bytes()).expect("send");
            assert!(read_message(&mut client, &mut buf), "gateway closed");
            assert!(buf.starts_with(b"HTTP/1.1 200"), "not a 200");
        }
    };
    // Warm-up: the key cached, the upstream connection pooled, buffers grown.
    exchange(2_000);
    let region = Region::new(ALLOCATOR);
    exchange(requests);
    let stats = region.change();
    let per = |n: usize| n as f64 / requests as f64;
    println!(
        "{requests} requests on one connection, cache hit, usage recorded: {:.2} allocations, \
         {:.2} reallocations, {:.0} bytes allocated per request",
        per(stats.allocations),
        per(stats.reallocations),
        per(stats.bytes_allocated),
    );
}
