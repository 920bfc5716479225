//! The client connection's protocol and keep-alive are the client's, whatever the upstream
//! speaks: an HTTP/1.0 upstream (one request per connection, bodies with or without
//! `Content-Length`, closing after each) behind the gateway, and HTTP/1.1, HTTP/2 and HTTP/1.0
//! clients each on one connection, over real loopback.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

#[macro_use]
mod support;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate::keys::Secret;
use support::gateway::{Backend, TestGateway};
use support::upstream::{Http10Upstream, http10_body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway whose `/old` routes go to an HTTP/1.0 upstream, and a key that may use them.
async fn gateway_before_http10() -> (TestGateway, Http10Upstream, Secret) {
    let old = Http10Upstream::start().await;
    let overlay = format!(
        "upstreams: {{ old: {{ url: \"{}\" }} }}\n\
         routes:\n  - {{ match: {{ path_prefix: /old }}, upstream: old, scopes: [sessions:read] }}\n",
        old.url()
    );
    let gw = TestGateway::start(Backend::Embedded, &overlay).await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    (gw, old, secret)
}

/// Requests with and without `Content-Length` from the upstream, alternating.
fn paths() -> Vec<(String, usize)> {
    (0..6)
        .map(|i| {
            let size = 1_000 + i * 40_000;
            let framing = if i % 2 == 0 { "len" } else { "close" };
            (format!("/old/{framing}/{i}?bytes={size}"), size)
        })
        .collect()
}

fn request(gw: &TestGateway, path: &str, secret: &Secret) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("host", gw.proxy.to_string())
        .header("authorization", format!("Bearer {}", secret.expose()))
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn an_http11_client_keeps_its_connection_and_protocol_before_an_http10_upstream() {
    let (gw, old, secret) = gateway_before_http10().await;
    let stream = TcpStream::connect(gw.proxy).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);

    let paths = paths();
    for (path, size) in &paths {
        sender.ready().await.unwrap_or_else(|e| {
            panic!("the gateway closed the client connection before {path}: {e}")
        });
        let response = sender.send_request(request(&gw, path, &secret)).await;
        let response = response.unwrap_or_else(|e| panic!("{path} on the same connection: {e}"));
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.version(), Version::HTTP_11, "{path}");
        let headers = response.headers().clone();
        assert!(
            !headers
                .get_all("connection")
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close")),
            "{path}: the upstream's close reached the client: {headers:?}"
        );
        if path.contains("/len") {
            assert_eq!(headers["content-length"], size.to_string().as_str());
        } else {
            // Delimited by the upstream's close, so chunked to the client.
            assert_eq!(headers["transfer-encoding"], "chunked", "{path}");
        }
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body == http10_body(*size), "{path}: body differs");
    }
    assert!(!connection.is_finished(), "the client connection is open");
    // The upstream saw one connection per request: HTTP/1.0 does not keep them.
    assert_eq!(old.connections.load(Ordering::SeqCst), paths.len() as u64);
}

#[tokio::test]
async fn an_http2_client_gets_whole_bodies_from_an_http10_upstream() {
    let (gw, _old, secret) = gateway_before_http10().await;
    let stream = TcpStream::connect(gw.proxy).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    for (path, size) in paths() {
        let mut req = request(&gw, &path, &secret);
        *req.uri_mut() = gw.url(&path).parse().unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.version(), Version::HTTP_2, "{path}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body == http10_body(size), "{path}: body differs");
    }
    assert!(!connection.is_finished(), "the client connection is open");
}

/// Sends `raw` on `stream` and reads one response: its head, and its body by `Content-Length`
/// or, without one, to the end of the connection.
async fn exchange(stream: &mut TcpStream, raw: &str) -> (String, Vec<u8>) {
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut data = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before a response head");
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
    let mut body = data[end + 4..].to_vec();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap());
    loop {
        if length.is_some_and(|len| body.len() >= len) {
            break;
        }
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            assert!(length.is_none(), "closed inside a Content-Length body");
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    (head, body)
}

#[tokio::test]
async fn an_http10_client_gets_http10_semantics() {
    let (gw, _old, secret) = gateway_before_http10().await;
    let auth = format!("Authorization: Bearer {}\r\n", secret.expose());

    // Without keep-alive: one response, HTTP/1.0, never chunked, then the gateway closes.
    for (path, size) in paths().into_iter().take(2) {
        let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
        let raw = format!("GET {path} HTTP/1.0\r\nHost: gw\r\n{auth}\r\n");
        let (head, body) = exchange(&mut stream, &raw).await;
        assert!(head.starts_with("http/1.0 200"), "{path}: {head}");
        assert!(!head.contains("chunked"), "{path}: {head}");
        assert!(body == http10_body(size), "{path}: body differs");
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{path}: nothing after the response");
    }

    // With `Connection: keep-alive` and a known length the connection is kept for another
    // request; a body of unknown length can only end with the connection.
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    for size in [500, 700] {
        let raw = format!(
            "GET /old/len?bytes={size} HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n{auth}\r\n"
        );
        let (head, body) = exchange(&mut stream, &raw).await;
        assert!(head.starts_with("http/1.0 200"), "{head}");
        assert!(head.contains("connection: keep-alive"), "{head}");
        assert!(body == http10_body(size), "body differs");
    }
    let raw = format!(
        "GET /old/close?bytes=900 HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n{auth}\r\n"
    );
    let (head, body) = exchange(&mut stream, &raw).await;
    assert!(head.starts_with("http/1.0 200"), "{head}");
    assert!(!head.contains("chunked"), "{head}");
    assert!(body == http10_body(900), "body differs");
}
