//! HTTPS and HTTP/2 upstreams against a real TLS/h2 server ([`ProtoUpstream`]): verification
//! against a private CA (and its failure: 502, logged with the reason), SNI, client
//! certificates, ALPN under `protocol: auto`/`http2`, h2c, trailers both ways, certificates
//! re-read on reload, and the config's refusals.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use std::path::Path;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::gateway::{BASE_CONFIG, Backend, OPS_TOKEN, TestGateway, config_text};
use support::process::KeygateProcess;
use support::proto_upstream::{Pki, ProtoUpstream, ServerTls};

const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A TLS upstream with a certificate from `pki` for `names`, offering `alpn`.
async fn tls_upstream(pki: &Pki, names: &[&str], alpn: &[&'static [u8]]) -> ProtoUpstream {
    let (cert_pem, key_pem) = pki.leaf(names);
    ProtoUpstream::tls(ServerTls {
        cert_pem,
        key_pem,
        alpn: alpn.to_vec(),
        client_ca: None,
    })
    .await
}

/// Writes `pem` to `dir/name` and returns the path as YAML-safe text.
fn file(dir: &Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path.display().to_string()
}

/// An overlay routing `/u` (public) to upstream `up` with the fields `fields`.
fn overlay(fields: &str) -> String {
    format!(
        "upstreams: {{ up: {{ {fields} }} }}\n\
         routes:\n  - {{ match: {{ path_prefix: /u }}, upstream: up, public: true }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_is_verified_against_its_ca_and_sent_http1_with_host() {
    let pki = Pki::new("private CA");
    let up = tls_upstream(&pki, &["127.0.0.1"], H2_H1).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = file(dir.path(), "ca.pem", &pki.ca_pem);
    let gw = TestGateway::start(
        Backend::Embedded,
        &overlay(&format!(
            "url: \"https://{}/base\", ca: \"{ca}\", protocol: http1",
            up.addr
        )),
    )
    .await;
    for _ in 0..3 {
        let r = gw.get("/u/x?q=1", None).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let seen = r.json();
        assert_eq!(seen["version"], "HTTP/1.1");
        assert_eq!(seen["path"], "/base/u/x?q=1");
        assert_eq!(seen["host"], up.addr.to_string());
        // An IP address is verified against the certificate's IP names, and sent no SNI.
        assert!(seen["sni"].is_null());
        assert_eq!(seen["client_cert"], false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_issuer_is_502_and_logged_with_the_reason() {
    let trusted = Pki::new("trusted CA");
    let other = Pki::new("other CA");
    let up = tls_upstream(&other, &["127.0.0.1"], H2_H1).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = file(dir.path(), "ca.pem", &trusted.ca_pem);
    let store = format!(
        "store: {{ backend: embedded, embedded: {{ path: \"{}\" }} }}\n",
        dir.path().join("keygate.redb").display()
    );
    let text = config_text(&[
        BASE_CONFIG,
        &store,
        &overlay(&format!("url: \"https://{}\", ca: \"{ca}\"", up.addr)),
        "log: { format: text, level: info, access: false }",
    ]);
    let mut running = KeygateProcess::start(dir.path(), "keygate", &text).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let url = format!("http://127.0.0.1:{}/u/x", running.proxy);
    let response = client
        .request(Request::get(&url).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable");
    running.terminate().await;
    let log = std::fs::read_to_string(&running.log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("upstream request failed"))
        .unwrap_or_else(|| panic!("no failure logged:\n{log}"));
    assert!(
        line.contains("UnknownIssuer") && line.contains(&up.addr.to_string()),
        "the reason and the target are logged: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_names_the_certificate_when_the_url_is_an_address() {
    let pki = Pki::new("private CA");
    let up = tls_upstream(&pki, &["billing.internal"], H2_H1).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = file(dir.path(), "ca.pem", &pki.ca_pem);
    let url = format!("url: \"https://{}\", ca: \"{ca}\"", up.addr);
    // Without `sni` the certificate does not name the address: refused, not skipped.
    let gw = TestGateway::start(Backend::Embedded, &overlay(&url)).await;
    let r = gw.get("/u/x", None).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.error_code(), "upstream_unavailable");
    let gw = TestGateway::start(
        Backend::Embedded,
        &overlay(&format!("{url}, sni: billing.internal")),
    )
    .await;
    let r = gw.get("/u/x", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["sni"], "billing.internal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_to_an_upstream_that_asks() {
    let pki = Pki::new("server CA");
    let clients = Pki::new("client CA");
    let (cert_pem, key_pem) = pki.leaf(&["127.0.0.1"]);
    let up = ProtoUpstream::tls(ServerTls {
        cert_pem,
        key_pem,
        alpn: H2_H1.to_vec(),
        client_ca: Some(clients.ca_pem.clone()),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = file(dir.path(), "ca.pem", &pki.ca_pem);
    let (client_cert, client_key) = clients.leaf(&["keygate.client"]);
    let cert = file(dir.path(), "client.crt", &client_cert);
    let key = file(dir.path(), "client.key", &client_key);
    let url = format!("url: \"https://{}\", ca: \"{ca}\"", up.addr);
    let gw = TestGateway::start(Backend::Embedded, &overlay(&url)).await;
    let r = gw.get("/u/x", None).await;
    assert_eq!(
        r.status,
        StatusCode::BAD_GATEWAY,
        "no certificate, no entry"
    );
    let gw = TestGateway::start(
        Backend::Embedded,
        &overlay(&format!(
            "{url}, client_cert: \"{cert}\", client_key: \"{key}\""
        )),
    )
    .await;
    for _ in 0..2 {
        let r = gw.get("/u/x", None).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.json()["client_cert"], true);
        assert_eq!(r.json()["version"], "HTTP/2.0", "auto picks h2 by ALPN");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_decides_under_auto_and_http2_requires_h2() {
    let pki = Pki::new("private CA");
    let dir = tempfile::tempdir().unwrap();
    let ca = file(dir.path(), "ca.pem", &pki.ca_pem);
    let h2 = tls_upstream(&pki, &["127.0.0.1"], H2_H1).await;
    let h1 = tls_upstream(&pki, &["127.0.0.1"], &[b"http/1.1"]).await;
    let none = tls_upstream(&pki, &["127.0.0.1"], &[]).await;
    let overlay = format!(
        "upstreams:\n  \
           h2: {{ url: \"https://{}\", ca: \"{ca}\" }}\n  \
           h1: {{ url: \"https://{}\", ca: \"{ca}\", protocol: auto }}\n  \
           strict: {{ url: \"https://{}\", ca: \"{ca}\", protocol: http2 }}\n\
         routes:\n  \
           - {{ match: {{ path_prefix: /h2 }}, upstream: h2, public: true }}\n  \
           - {{ match: {{ path_prefix: /h1 }}, upstream: h1, public: true }}\n  \
           - {{ match: {{ path_prefix: /strict }}, upstream: strict, public: true }}\n",
        h2.addr, h1.addr, none.addr
    );
    let gw = TestGateway::start(Backend::Embedded, &overlay).await;
    for _ in 0..3 {
        let r = gw.get("/h2/x", None).await;
        assert_eq!(r.status, StatusCode::OK);
        let seen = r.json();
        assert_eq!(seen["version"], "HTTP/2.0");
        assert_eq!(seen["authority"], h2.addr.to_string());
        assert!(seen["host"].is_null(), ":authority replaces Host");
        let r = gw.get("/h1/x", None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["version"], "HTTP/1.1", "the target chose http/1.1");
        assert_eq!(r.json()["host"], h1.addr.to_string());
    }
    let r = gw.get("/strict/x", None).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.error_code(), "upstream_unavailable");
}

/// A client speaking h2c to the gateway, as gRPC clients do.
async fn h2c_client<B>(gw: &TestGateway) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// A request body of these frames.
type FramesBody<E> =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, E>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstream_gets_http2_and_trailers_pass_both_ways() {
    let up = ProtoUpstream::plain().await;
    let gw = TestGateway::start(
        Backend::Embedded,
        &overlay(&format!("url: \"http://{}\", protocol: http2", up.addr)),
    )
    .await;
    let mut client = h2c_client::<FramesBody<std::convert::Infallible>>(&gw).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-client-trailer", "sent".parse().unwrap());
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(b"hello"))),
        Ok(Frame::trailers(trailers)),
    ];
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/u/echo", gw.proxy))
        .header("te", "trailers")
        .header("x-want-trailers", "1")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let response = client.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("response trailers");
    assert_eq!(trailers["x-upstream-trailer"], "yes");
    let seen: serde_json::Value = serde_json::from_slice(&collected.to_bytes()).unwrap();
    assert_eq!(seen["version"], "HTTP/2.0");
    assert_eq!(seen["body_bytes"], 5);
    assert_eq!(seen["trailers"]["x-client-trailer"], "sent");
    assert_eq!(
        seen["headers"]["te"], "trailers",
        "gRPC servers look for it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rereads_the_ca_file() {
    let old = Pki::new("old CA");
    let new = Pki::new("new CA");
    let up = tls_upstream(&new, &["127.0.0.1"], H2_H1).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = file(dir.path(), "ca.pem", &old.ca_pem);
    let gw = TestGateway::start_from_file(
        Backend::Embedded,
        &overlay(&format!("url: \"https://{}\", ca: \"{ca}\"", up.addr)),
    )
    .await;
    assert_eq!(gw.get("/u/x", None).await.status, StatusCode::BAD_GATEWAY);
    // The file is replaced in place; the config text is the same.
    std::fs::write(&ca, &new.ca_pem).unwrap();
    let r = gw
        .admin(Method::POST, "/v1/reload", Some(OPS_TOKEN), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(
        r.json()["changed"]
            .as_array()
            .unwrap()
            .contains(&"upstreams".into()),
        "the upstream reading the file is named: {}",
        r.json()
    );
    assert_eq!(gw.get("/u/x", None).await.status, StatusCode::OK);
    // A CA file that no longer parses is refused with its field; the running config stays.
    std::fs::write(&ca, "not a certificate").unwrap();
    let r = gw
        .admin(Method::POST, "/v1/reload", Some(OPS_TOKEN), None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(text.contains("upstreams.up.ca"), "{text}");
    assert_eq!(gw.get("/u/x", None).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_too_long_for_the_base_path_is_no_route_not_a_panic() {
    let up = ProtoUpstream::plain().await;
    let base = "/b".repeat(50);
    let gw = TestGateway::start(
        Backend::Embedded,
        &overlay(&format!("url: \"http://{}{base}\"", up.addr)),
    )
    .await;
    let long = format!("/u/{}", "a".repeat(65_470));
    let r = gw.get(&long, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "no_route");
    // The gateway carries on.
    let r = gw.get("/u/short", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["path"], format!("{base}/u/short"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_upload_that_breaks_is_not_counted_against_an_http2_target() {
    let up = ProtoUpstream::plain().await;
    let gw = TestGateway::start(
        Backend::Embedded,
        &overlay(&format!(
            "url: \"http://{}\", protocol: http2, passive_health: {{ failures: 1 }}",
            up.addr
        )),
    )
    .await;
    for _ in 0..3 {
        let mut client = h2c_client::<FramesBody<std::io::Error>>(&gw).await;
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"part of an upload"))),
            Err(std::io::Error::other("the client gives up")),
        ];
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}/u/upload", gw.proxy))
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .unwrap();
        // The client reset its own stream: whatever it reads back, it is its doing.
        let _ = client.send_request(req).await;
    }
    let metrics = gw.admin_get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    let series = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains("upstream=\"up\""))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(series("keygate_upstream_failures_total"), "0");
    assert_eq!(series("keygate_upstream_target_up"), "1");
    assert_eq!(gw.get("/u/after", None).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_target_rotating_its_connections_loses_no_request() {
    // GOAWAY after every 20 requests on a connection: streams already on their way are refused
    // unprocessed, and go again on a new connection.
    let up = ProtoUpstream::rotating(20).await;
    let gw = std::sync::Arc::new(
        TestGateway::start(
            Backend::Embedded,
            &overlay(&format!("url: \"http://{}\", protocol: http2", up.addr)),
        )
        .await,
    );
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..25 {
                    statuses.push(gw.get("/u/x", None).await.status);
                }
                statuses
            })
        })
        .collect();
    let mut failed = 0;
    for client in clients {
        failed += client
            .await
            .unwrap()
            .iter()
            .filter(|s| **s != StatusCode::OK)
            .count();
    }
    assert_eq!(failed, 0, "of 400 requests over some 20 connections");
}
