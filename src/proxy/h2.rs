//! HTTP/2 connections to one upstream target: h2 by ALPN over TLS, h2c by prior knowledge over
//! plain TCP. Each proxy worker has one connection of its own per target, shared by its
//! requests as streams (trailers and both directions of streaming are HTTP/2's own, which is
//! what gRPC needs). A connection that closes (GOAWAY, idle close, a failure) is replaced by the
//! next request; requests a closing connection did not take go on a new one.
//!
//! Under `protocol: auto` the first connection tells: a target that answers ALPN with
//! `http/1.1` hands that connection, and the request, back to the target's HTTP/1.1 pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Body as _;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::connect::{Connector, Stream, Wanted};
use super::pool::{Failed, OutBody, PooledBody, SHARDS, SendError, head_of};
use crate::error::error_chain;

type Sender = SendRequest<OutBody>;

/// The HTTP/2 connections of one target.
pub(super) struct H2 {
    connector: Arc<Connector>,
    /// Whether ALPN may answer `http/1.1` (`auto`): then [`Outcome::Http1`], else a failure.
    may_fall_back: bool,
    /// One per worker; the lock is held while connecting, so that a worker's requests wait
    /// for one connection rather than each opening its own.
    slots: Box<[tokio::sync::Mutex<Slot>]>,
}

#[derive(Default)]
struct Slot {
    sender: Option<Sender>,
    /// The last connect that failed, and when: requests that were already waiting for it fail
    /// with it (unsent, so they may try another target) rather than each connecting in turn.
    failed: Option<(Instant, SendError)>,
    /// Counts the connections opened, so that a request can drop the one it used and no other.
    generation: u64,
}

/// Why a request was not answered over HTTP/2.
pub(super) enum Outcome {
    /// It failed.
    Failed(Failed),
    /// The target chose HTTP/1.1 by ALPN: the connection, and the request, unsent.
    Http1(Stream, Request<OutBody>),
}

impl H2 {
    /// Connections that `connector` opens; `may_fall_back` under `auto`.
    pub(super) fn new(connector: Arc<Connector>, may_fall_back: bool) -> Self {
        H2 {
            connector,
            may_fall_back,
            slots: (0..SHARDS).map(|_| tokio::sync::Mutex::default()).collect(),
        }
    }

    /// Sends `req` (absolute URI) as a stream of this worker's connection.
    pub(super) async fn send(
        &self,
        mut req: Request<OutBody>,
    ) -> Result<Response<PooledBody>, Outcome> {
        let body_failed = watch(&mut req);
        // A bodiless request can be sent again from its head if the target refuses its stream
        // unprocessed: servers rotate connections (nginx after `keepalive_requests`, 1000 by
        // default) with a GOAWAY that refuses streams already on their way.
        let mut head = req.body().is_end_stream().then(|| head_of(&req));
        // A second try only for a request the target never took: handed back unsent (the
        // connection was closing), or refused unprocessed.
        for attempt in 0..2 {
            let (mut sender, generation) = match self.sender().await {
                Ok(sender) => sender,
                Err(NoSender::Http1(stream)) => return Err(Outcome::Http1(stream, req)),
                Err(NoSender::Failed(error)) => {
                    return Err(Outcome::Failed(Failed {
                        error,
                        unsent: Some(req),
                    }));
                }
            };
            let mut e = match sender.try_send_request(req).await {
                Ok(response) => return Ok(response.map(PooledBody::unpooled)),
                Err(e) => e,
            };
            let unsent = e.take_message();
            let e = e.into_error();
            let refused = was_refused(&e);
            if refused {
                // Whatever the connection says of itself, it takes no new streams.
                self.forget(generation).await;
            }
            let why = error_chain(&e);
            let error = if body_failed
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
            {
                SendError::ClientBody(why)
            } else {
                SendError::Failed(why)
            };
            match (unsent, head.take()) {
                (Some(unsent), _) if attempt == 0 => req = unsent,
                (None, Some(head)) if refused && attempt == 0 => {
                    req = head.body(OutBody::Empty).expect("a request head");
                }
                (unsent, _) => return Err(Outcome::Failed(Failed { error, unsent })),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Drops this worker's connection if it is still `generation`.
    async fn forget(&self, generation: u64) {
        let mut slot = self.slots[crate::server::workers::index() % SHARDS]
            .lock()
            .await;
        if slot.generation == generation {
            slot.sender = None;
        }
    }

    /// This worker's connection, opened if it has none (or it closed).
    async fn sender(&self) -> Result<(Sender, u64), NoSender> {
        let arrived = Instant::now();
        let slot = &self.slots[crate::server::workers::index() % SHARDS];
        let mut slot = slot.lock().await;
        if let Some(sender) = slot.sender.as_ref()
            && !sender.is_closed()
        {
            return Ok((sender.clone(), slot.generation));
        }
        if let Some((at, error)) = &slot.failed
            && *at >= arrived
        {
            return Err(NoSender::Failed(error.clone()));
        }
        slot.sender = None;
        match self.open().await {
            Ok(sender) => {
                slot.sender = Some(sender.clone());
                slot.failed = None;
                slot.generation += 1;
                Ok((sender, slot.generation))
            }
            Err(NoSender::Failed(error)) => {
                slot.failed = Some((Instant::now(), error.clone()));
                Err(NoSender::Failed(error))
            }
            Err(other) => Err(other),
        }
    }

    async fn open(&self) -> Result<Sender, NoSender> {
        let (stream, h2) = self
            .connector
            .connect(Wanted::Http2)
            .await
            .map_err(NoSender::Failed)?;
        if !h2 {
            if self.may_fall_back {
                return Err(NoSender::Http1(stream));
            }
            return Err(NoSender::Failed(SendError::Connect(format!(
                "{} did not agree to HTTP/2 (ALPN h2); set protocol: http1 or auto",
                self.connector.address()
            ))));
        }
        handshake(stream).await.map_err(NoSender::Failed)
    }
}

/// Whether the target refused the stream without processing it (RFC 9113 §6.8, §8.7): beyond
/// the last stream a GOAWAY accepted, opened after it, or reset with `REFUSED_STREAM`.
fn was_refused(e: &hyper::Error) -> bool {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<::h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away() || h2.reason() == Some(::h2::Reason::REFUSED_STREAM));
        }
        source = cause.source();
    }
    false
}

/// Swaps a streamed client body for one that says whether it failed.
fn watch(req: &mut Request<OutBody>) -> Option<Arc<AtomicBool>> {
    if !matches!(req.body(), OutBody::Client(b) if !b.is_end_stream()) {
        return None;
    }
    let failed = Arc::new(AtomicBool::new(false));
    let body = std::mem::replace(req.body_mut(), OutBody::Empty);
    if let OutBody::Client(body) = body {
        *req.body_mut() = OutBody::Watched(body, failed.clone());
    }
    Some(failed)
}

enum NoSender {
    Failed(SendError),
    /// ALPN chose HTTP/1.1 on this connection.
    Http1(Stream),
}

/// The HTTP/2 handshake on a new connection, whose task is spawned on the calling runtime.
pub(super) async fn handshake(stream: Stream) -> Result<Sender, SendError> {
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // Flow-control windows that follow the connection's bandwidth-delay product: large
        // streamed bodies are not held to the 64 KiB default window.
        .adaptive_window(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Connect(error_chain(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}
