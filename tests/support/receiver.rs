//! A real webhook receiver on loopback: records every request it gets (headers and body) and
//! answers each with the status its script gives for that request's number (0 for the first).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a webhook body is JSON")
    }

    /// The event type (`type` of the body).
    pub fn event(&self) -> String {
        self.json()["type"].as_str().expect("type").to_owned()
    }
}

/// A running receiver; stops accepting when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// A receiver on a fresh port answering 200 to everything.
    pub async fn start() -> Receiver {
        Receiver::start_scripted("127.0.0.1:0".parse().expect("addr"), |_| 200).await
    }

    /// A receiver on `addr` (port 0: any) answering request number `n` with `script(n)`.
    pub async fn start_scripted(
        addr: SocketAddr,
        script: impl Fn(usize) -> u16 + Send + Sync + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind(addr).await.expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let script = Arc::new(script);
        let log = received.clone();
        let task = tokio::spawn(async move {
            // Dropped with the accept loop, which ends every connection: a stopped receiver
            // keeps no kept-alive connection answering.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                let (log, script) = (log.clone(), script.clone());
                connections.spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (log, script) = (log.clone(), script.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let mut log = log.lock().expect("receiver log");
                            let status = script(log.len());
                            log.push(Received {
                                headers: parts.headers,
                                body,
                                status,
                            });
                            let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                            *response.status_mut() =
                                http::StatusCode::from_u16(status).expect("status");
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            received,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// What it received so far.
    pub fn all(&self) -> Vec<Received> {
        self.received.lock().expect("receiver log").clone()
    }

    /// Waits (at most `within`) until `done` holds for what was received; returns it.
    pub async fn wait_for(
        &self,
        within: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let all = self.all();
            if done(&all) {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "receiver got {:?}",
                all.iter()
                    .map(|r| (r.event(), r.status))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
