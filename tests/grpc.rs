//! gRPC through the gateway with real peers: Python grpcio's server (`tests/grpc/echo_server.py`)
//! as the upstream over h2c, and grpcio's client (`tests/grpc/client.py`) speaking h2c to the
//! proxy. Unary and all three kinds of streams with a key, trailers passed through, and every
//! refusal read by the client as a gRPC status carrying keygate's code.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use keygate::config::RateLimitSpec;
use keygate::control::NewKey;
use keygate::keys::Secret;
use serde_json::Value;
use support::gateway::{Backend, TestGateway, new_key};
use support::python::PyServer;

fn script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/grpc")
        .join(name)
}

/// One call by the Python client through `target`: its JSON report.
async fn call(target: SocketAddr, kind: &str, metadata: &[(&str, &str)], count: u32) -> Value {
    call_service(target, "keygate.test.Echo", kind, metadata, count).await
}

/// As [`call`], to the methods of `service`.
async fn call_service(
    target: SocketAddr,
    service: &str,
    kind: &str,
    metadata: &[(&str, &str)],
    count: u32,
) -> Value {
    let mut command = std::process::Command::new("python3");
    command
        .arg(script("client.py"))
        .arg("--service")
        .arg(service)
        .arg("--target")
        .arg(target.to_string())
        .arg("--call")
        .arg(kind)
        .arg("--count")
        .arg(count.to_string())
        .arg("--timeout")
        .arg("10");
    for (k, v) in metadata {
        command.arg("--metadata").arg(format!("{k}={v}"));
    }
    // The client bounds its own call (`--timeout`).
    let output = output_of(command).await;
    assert!(
        output.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

async fn output_of(mut command: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// A gateway whose `keygate.test.Echo` service (scope `sessions:read`) is `upstream`, over h2c,
/// and whose `keygate.test.Down` service goes to a closed port.
async fn gateway(upstream: SocketAddr) -> TestGateway {
    let closed = support::upstream::closed_port().await;
    let overlay = format!(
        "upstreams:\n  \
           grpc: {{ url: \"http://{upstream}\", protocol: http2 }}\n  \
           down: {{ url: \"http://{closed}\", protocol: http2 }}\n\
         routes:\n  \
           - {{ match: {{ path_prefix: /keygate.test.Echo }}, upstream: grpc, scopes: [sessions:read] }}\n  \
           - {{ match: {{ path_prefix: /keygate.test.Down }}, upstream: down, public: true }}\n"
    );
    TestGateway::start(Backend::Embedded, &overlay).await
}

fn bearer(secret: &Secret) -> String {
    format!("Bearer {}", secret.expose())
}

fn assert_refused(report: &Value, code: &str, number: u64, keygate_code: &str) {
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["code"], code, "{report}");
    assert_eq!(report["code_number"], number, "{report}");
    let details = report["details"].as_str().unwrap();
    assert!(
        details.starts_with(&format!("{keygate_code}: ")),
        "grpc-message carries keygate's code: {details}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_pass_with_a_key_and_carry_identity_and_trailers() {
    let server = PyServer::start("grpc/echo_server.py", &[]).await;
    let gw = gateway(server.addr).await;
    let (key, secret) = gw.create_key(&["sessions:read"]).await;
    let auth = bearer(&secret);

    let unary = call(gw.proxy, "unary", &[("authorization", &auth)], 1).await;
    assert_eq!(unary["ok"], true, "{unary}");
    let seen = &unary["responses"][0]["metadata"];
    assert_eq!(seen["x-keygate-key-id"], key.id.to_string());
    assert_eq!(seen["x-keygate-workspace"], "acme");
    assert!(
        seen.get("authorization").is_none(),
        "the key is not forwarded"
    );
    assert_eq!(unary["trailing_metadata"]["x-upstream-trailer"], "unary");

    // `x-api-key` metadata is an `auth.extra_headers` credential like any header.
    let api_key = call(gw.proxy, "unary", &[("x-api-key", secret.expose())], 1).await;
    assert_eq!(api_key["ok"], true, "{api_key}");

    let server_stream = call(gw.proxy, "server_stream", &[("authorization", &auth)], 5).await;
    assert_eq!(server_stream["ok"], true, "{server_stream}");
    let received: Vec<&Value> = server_stream["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["i"])
        .collect();
    assert_eq!(received, [0, 1, 2, 3, 4].iter().collect::<Vec<_>>());
    assert_eq!(
        server_stream["trailing_metadata"]["x-upstream-trailer"],
        "server-stream"
    );

    let client_stream = call(gw.proxy, "client_stream", &[("authorization", &auth)], 7).await;
    assert_eq!(client_stream["ok"], true, "{client_stream}");
    assert_eq!(client_stream["responses"][0]["count"], 7);

    // Each message waits for the echo of the one before: both directions stream at once.
    let bidi = call(gw.proxy, "bidi", &[("authorization", &auth)], 25).await;
    assert_eq!(bidi["ok"], true, "{bidi}");
    let echoes = bidi["responses"].as_array().unwrap();
    assert_eq!(echoes.len(), 25);
    assert_eq!(echoes[24]["echo"]["n"], 24);
    assert_eq!(bidi["trailing_metadata"]["x-upstream-trailer"], "bidi");

    // The upstream's own gRPC status passes through unchanged.
    let fail = call(gw.proxy, "fail", &[("authorization", &auth)], 1).await;
    assert_eq!(fail["ok"], false);
    assert_eq!(fail["code"], "NOT_FOUND");
    assert_eq!(fail["details"], "no such thing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_grpc_statuses_with_keygate_codes() {
    let server = PyServer::start("grpc/echo_server.py", &[]).await;
    let gw = gateway(server.addr).await;

    for kind in ["unary", "server_stream", "client_stream", "bidi"] {
        let report = call(gw.proxy, kind, &[], 2).await;
        assert_refused(&report, "UNAUTHENTICATED", 16, "missing_key");
    }
    let report = call(
        gw.proxy,
        "unary",
        &[("authorization", "Bearer nonsense")],
        1,
    )
    .await;
    assert_refused(&report, "UNAUTHENTICATED", 16, "invalid_key");

    let (revoked, revoked_secret) = gw.create_key(&["sessions:read"]).await;
    assert_eq!(gw.admin_revoke("acme", &revoked.id).await.status, 200);
    let report = call(
        gw.proxy,
        "bidi",
        &[("authorization", &bearer(&revoked_secret))],
        3,
    )
    .await;
    assert_refused(&report, "UNAUTHENTICATED", 16, "key_revoked");

    let (_, other_scope) = gw.create_key(&["resources:read"]).await;
    let report = call(
        gw.proxy,
        "unary",
        &[("authorization", &bearer(&other_scope))],
        1,
    )
    .await;
    assert_refused(&report, "PERMISSION_DENIED", 7, "insufficient_scope");

    let (_, limited) = gw
        .create(NewKey {
            scopes: vec!["sessions:read".into()],
            rate_limit: Some(RateLimitSpec {
                requests: NonZeroU32::new(1).unwrap(),
                period: Duration::from_secs(3600),
                burst: None,
            }),
            ..new_key("acme")
        })
        .await;
    let auth = bearer(&limited);
    assert_eq!(
        call(gw.proxy, "unary", &[("authorization", &auth)], 1).await["ok"],
        true
    );
    let report = call(gw.proxy, "client_stream", &[("authorization", &auth)], 3).await;
    assert_refused(&report, "RESOURCE_EXHAUSTED", 8, "rate_limited");

    let report = call(gw.proxy, "unary", &[], 1).await;
    assert_refused(&report, "UNAUTHENTICATED", 16, "missing_key");
    // An upstream that cannot be reached is UNAVAILABLE, from keygate (not a transport error).
    let down = call_service(gw.proxy, "keygate.test.Down", "unary", &[], 1).await;
    assert_refused(&down, "UNAVAILABLE", 14, "upstream_unavailable");

    // Metrics and usage see keygate's own status, not the 200 the gRPC answer travels in.
    let metrics = gw.admin_get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.lines().any(|l| l.starts_with("keygate_requests_total")
            && l.contains("decision=\"missing_key\"")
            && l.contains("status=\"401\"")),
        "{text}"
    );
}
