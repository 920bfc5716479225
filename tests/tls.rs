//! TLS termination on the proxy listener: HTTP/2 and HTTP/1.1 chosen by ALPN, with
//! `X-Forwarded-Proto: https` for the upstream.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use support::gateway::{Backend, TestGateway};

async fn tls_gateway() -> (TestGateway, CertificateDer<'static>, tempfile::TempDir) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let overlay = format!(
        "tls: {{ cert: \"{}\", key: \"{}\" }}",
        cert.display(),
        key.display()
    );
    let gw = TestGateway::start(Backend::Embedded, &overlay).await;
    (gw, certified.cert.der().clone(), dir)
}

async fn connect(
    gw: &TestGateway,
    ca: &CertificateDer<'static>,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(alpn),
        "ALPN negotiated"
    );
    tls
}

fn request(secret: &keygate::keys::Secret) -> Request<Full<Bytes>> {
    Request::get("https://localhost/api/v1/sessions/tls")
        .header("authorization", format!("Bearer {}", secret.expose()))
        .body(Full::default())
        .unwrap()
}

async fn echo(response: http::Response<hyper::body::Incoming>) -> serde_json::Value {
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_http11_over_tls_by_alpn() {
    let (gw, ca, _dir) = tls_gateway().await;
    let (key, secret) = gw.create_key(&["sessions:read"]).await;

    let tls = connect(&gw, &ca, b"h2").await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(request(&secret)).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let seen = echo(response).await;
    assert_eq!(seen["headers"]["x-forwarded-proto"][0], "https");
    assert_eq!(seen["headers"]["x-keygate-key-id"][0], key.id.as_str());

    let tls = connect(&gw, &ca, b"http/1.1").await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = request(&secret);
    req.headers_mut()
        .insert("host", "localhost".parse().unwrap());
    *req.uri_mut() = "/api/v1/sessions/tls".parse().unwrap();
    let seen = echo(sender.send_request(req).await.unwrap()).await;
    assert_eq!(seen["headers"]["x-forwarded-proto"][0], "https");
    assert_eq!(seen["headers"]["x-forwarded-host"][0], "localhost");
}

#[tokio::test]
async fn unreadable_tls_files_stop_the_start_with_the_field() {
    let files = keygate::config::TlsFiles {
        cert: "/nonexistent/tls.crt".into(),
        key: "/nonexistent/tls.key".into(),
    };
    let Err(err) = keygate::server::load_tls(&files) else {
        panic!("missing TLS files were accepted");
    };
    assert!(err.contains("tls.cert /nonexistent/tls.crt"), "{err}");
}
