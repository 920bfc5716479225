//! Client connections as a hostile client holds them: connections that never send a byte are
//! closed within `limits.header_read_timeout` of accept while valid keys keep being served, and
//! connections beyond `limits.max_connections` are closed at accept and counted.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use support::gateway::{Backend, TestGateway};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The value of a metric series in the gateway's exposition.
fn metric(gw: &TestGateway, series: &str) -> f64 {
    let (text, _) = gw.app.metrics().render(false);
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// Waits (at most `within`) for the peer to close `stream`: end of stream or a reset.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_within_the_header_timeout_while_keys_are_served() {
    let gw = TestGateway::start(
        Backend::Embedded,
        "limits: { header_read_timeout: 1s, max_connections: 1000 }",
    )
    .await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;

    const SILENT: usize = 300;
    let opened = Instant::now();
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(gw.proxy).await.unwrap());
    }
    // While they sit there, a valid key keeps working.
    for _ in 0..10 {
        assert_eq!(gw.get("/api/v1/sessions", Some(&secret)).await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Closed once the timeout (counted from accept) is over: 1 s, with room for a busy machine.
    for (i, stream) in silent.iter_mut().enumerate() {
        let left = Duration::from_secs(4).saturating_sub(opened.elapsed());
        assert!(
            closed_within(stream, left).await,
            "silent connection {i} still open {:?} after accept",
            opened.elapsed()
        );
    }
    assert_eq!(
        metric(
            &gw,
            "keygate_connections_timed_out_total{listener=\"proxy\"}"
        ),
        SILENT as f64
    );
    assert_eq!(gw.get("/api/v1/sessions", Some(&secret)).await.status, 200);

    // A connection that starts a head and stalls is closed by the same deadline.
    let mut slow = TcpStream::connect(gw.proxy).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut slow, b"GET /api/v1/sessions HTTP/1.1\r\nHo")
        .await
        .unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_closed_at_accept_and_counted() {
    over_max_connections(NonZeroUsize::MIN).await;
}

/// The cap is the listener's, whatever the number of proxy workers accepting on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_across_proxy_workers() {
    over_max_connections(NonZeroUsize::new(3).unwrap()).await;
}

async fn over_max_connections(workers: NonZeroUsize) {
    let gw = TestGateway::start_with_workers(
        Backend::Embedded,
        "limits: { header_read_timeout: 60s, max_connections: 20 }",
        workers,
    )
    .await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    let open = "keygate_connections_open{listener=\"proxy\"}";

    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(gw.proxy).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&gw, open) < 20.0 {
        assert!(Instant::now() < deadline, "20 connections not counted open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The kernel completes the handshake; keygate accepts and closes at once.
    for _ in 0..5 {
        let mut extra = TcpStream::connect(gw.proxy).await.unwrap();
        assert!(closed_within(&mut extra, Duration::from_secs(2)).await);
    }
    assert_eq!(
        metric(&gw, "keygate_connections_refused_total{listener=\"proxy\"}"),
        5.0
    );
    assert_eq!(metric(&gw, open), 20.0);
    // The admin listener has its own cap: operators can still look in.
    assert_eq!(gw.admin_get("/healthz").await.status, 200);

    // Once they go, the slots come back.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&gw, open) > 0.0 {
        assert!(
            Instant::now() < deadline,
            "closed connections still counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gw.get("/api/v1/sessions", Some(&secret)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_like_http1_ones() {
    let gw = TestGateway::start(
        Backend::Embedded,
        "limits: { header_read_timeout: 1s, max_connections: 100 }",
    )
    .await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    // h2c by prior knowledge: one request, then silence. The client answers keep-alive pings
    // on its own, so without an idle limit the connection would hold its slot for ever.
    let tcp = TcpStream::connect(gw.proxy).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let driven = tokio::spawn(connection);
    let req = gw
        .request(http::Method::GET, "/api/v1/sessions", Some(&secret))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    let closed_by = Instant::now();
    // Idle over one whole period after the first: closed (GOAWAY) within about 2 s.
    let ended = tokio::time::timeout(Duration::from_secs(5), driven).await;
    assert!(ended.is_ok(), "idle h2 connection still open after 5 s");
    assert!(
        closed_by.elapsed() >= Duration::from_millis(500),
        "closed too early"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while metric(&gw, "keygate_connections_open{listener=\"proxy\"}") > 0.0 {
        assert!(Instant::now() < deadline, "slot not given back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_tunnel_keeps_its_connection_slot() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let gw = TestGateway::start(
        Backend::Embedded,
        "limits: { header_read_timeout: 60s, max_connections: 2 }",
    )
    .await;
    let (_, secret) = gw.create_key(&["sessions:read"]).await;
    let open = "keygate_connections_open{listener=\"proxy\"}";
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let mut request = format!("ws://{}/ws/echo", gw.proxy)
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", secret.expose()).parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        ws.send(Message::text("ping")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
        tunnels.push(ws);
    }
    // Both tunnels hold their slots after the upgrade: the cap is reached.
    assert_eq!(metric(&gw, open), 2.0);
    let mut extra = TcpStream::connect(gw.proxy).await.unwrap();
    assert!(closed_within(&mut extra, Duration::from_secs(2)).await);
    // Closing a tunnel gives its slot back.
    let mut first = tunnels.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&gw, open) > 1.0 {
        assert!(Instant::now() < deadline, "closed tunnel still counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
