//! A real upstream on 127.0.0.1:0 for the gateway to forward to. What it does depends on the path:
//!
//! - `/stream/upload…`: reads the body as it streams and answers `{"bytes": N}`.
//! - `/stream/download…?bytes=N`: streams N bytes in 64 KiB chunks.
//! - `/slow…?ms=N`: waits N ms (default 10 s) before answering.
//! - `/ws…`: WebSocket echo.
//! - `/hop…`: echo, plus hop-by-hop headers in the response.
//! - anything else: echo of what it received, as JSON `{method, path, query, headers}`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type UpBody = Either<
    Full<Bytes>,
    StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>>,
>;

/// Accepts connections on a fresh loopback port, each served by `conn` in a task of its own;
/// returns the address, the count of connections accepted, and the accept loop's task.
async fn serve<F, Fut>(
    conn: F,
) -> (
    SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    JoinHandle<()>,
)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let accepted = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(conn(stream));
        }
    });
    (addr, connections, task)
}

/// A running upstream; stops when dropped.
pub struct TestUpstream {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<()>,
}

impl TestUpstream {
    pub async fn start() -> TestUpstream {
        let (addr, connections, task) = serve(|stream| async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .with_upgrades()
                .await;
        })
        .await;
        TestUpstream {
            addr,
            connections,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback address nothing listens on (for `upstream_unavailable`).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("address");
    drop(l);
    addr
}

fn query_value<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k == name).then_some(v)
    })
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<UpBody> {
    let mut r = Response::new(Either::Left(Full::new(body.into())));
    *r.status_mut() = status;
    r
}

async fn handle(mut req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if path.starts_with("/stream/upload") {
        let mut total: u64 = 0;
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => return Ok(full(StatusCode::BAD_REQUEST, "body error")),
            }
        }
        return Ok(full(StatusCode::OK, format!("{{\"bytes\":{total}}}")));
    }
    if path.starts_with("/stream/download") {
        let total: u64 = query_value(&req, "bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = total.div_ceil(chunk.len() as u64);
        let stream = futures_util::stream::iter((0..chunks).map(move |i| {
            let remaining = total - i * chunk.len() as u64;
            let piece = chunk.slice(..(remaining.min(chunk.len() as u64) as usize));
            Ok::<_, Infallible>(Frame::data(piece))
        }));
        return Ok(Response::new(Either::Right(StreamBody::new(
            stream.boxed(),
        ))));
    }
    if path.starts_with("/slow") {
        let ms = query_value(&req, "ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(full(StatusCode::OK, "slow done"));
    }
    if path.starts_with("/ws") {
        return Ok(websocket_echo(&mut req));
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let echo = serde_json::json!({
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query(),
        "headers": headers,
    });
    let mut response = full(StatusCode::OK, echo.to_string());
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("valid"));
    if path.starts_with("/hop") {
        let h = response.headers_mut();
        h.insert("connection", "X-Upstream-Hop".parse().expect("valid"));
        h.insert("x-upstream-hop", "1".parse().expect("valid"));
        h.insert("keep-alive", "timeout=5".parse().expect("valid"));
        h.insert("x-upstream-end", "kept".parse().expect("valid"));
    }
    Ok(response)
}

fn websocket_echo(req: &mut Request<Incoming>) -> Response<UpBody> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let Some(key) = req.headers().get("sec-websocket-key") else {
        return full(StatusCode::BAD_REQUEST, "not a websocket request");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = r.headers_mut();
    h.insert("upgrade", "websocket".parse().expect("valid"));
    h.insert("connection", "Upgrade".parse().expect("valid"));
    h.insert("sec-websocket-accept", accept.parse().expect("valid"));
    r
}

/// An HTTP/1.0 upstream, written by hand as old servers (`python3 -m http.server`) answer: one
/// request per connection, `HTTP/1.0 200 OK`, then close. `/…/len…` answers with
/// `Content-Length`; any other path without one (the body ends when the connection closes, with
/// `Connection: close`). `?bytes=N` sets the body's size (default 100,000); the body is
/// [`http10_body`]`(N)`, written in 16 KiB pieces.
pub struct Http10Upstream {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<()>,
}

impl Http10Upstream {
    pub async fn start() -> Http10Upstream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (addr, connections, task) = serve(|mut stream| async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head);
            let target = head.split(' ').nth(1).unwrap_or("/");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let size: usize = query
                .split('&')
                .find_map(|p| p.strip_prefix("bytes="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(100_000);
            let body = http10_body(size);
            let framing = if path.contains("/len") {
                format!("Content-Length: {size}\r\n")
            } else {
                "Connection: close\r\n".to_owned()
            };
            let head = format!(
                "HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3\r\n\
                 Content-Type: application/octet-stream\r\n{framing}\r\n"
            );
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for piece in body.chunks(16 * 1024) {
                if stream.write_all(piece).await.is_err() {
                    return;
                }
            }
            let _ = stream.shutdown().await;
        })
        .await;
        Http10Upstream {
            addr,
            connections,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Http10Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The body [`Http10Upstream`] sends for `?bytes=n`: a pattern that shows a lost or repeated
/// piece.
pub fn http10_body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}
