//! HTTP/2 connections to one upstream target: h2 by ALPN over TLS, h2c by prior knowledge over
//! plain TCP. Each proxy worker has one connection of its own per target, shared by its
//! requests as streams (trailers and both directions of streaming are HTTP/2's own, which is
//! what gRPC needs). A connection that closes (GOAWAY, idle close, a failure) is replaced by the
//! next request; requests a closing connection did not take go on a new one.
//!
//! Under `protocol: auto` the first connection tells: a target that answers ALPN with
//! `http/1.1` hands that connection, and the request, back to the target's HTTP/1.1 pool.

use std::sync::Arc;

use http::{Request, Response};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::connect::{Connector, Stream, Wanted};
use super::pool::{Failed, OutBody, PooledBody, SHARDS, SendError};
use crate::error::error_chain;

type Sender = SendRequest<OutBody>;

/// The HTTP/2 connections of one target.
pub(super) struct H2 {
    connector: Arc<Connector>,
    /// Whether ALPN may answer `http/1.1` (`auto`): then [`Outcome::Http1`], else a failure.
    may_fall_back: bool,
    /// One per worker; the lock is held while connecting, so that a worker's requests wait
    /// for one connection rather than each opening its own.
    slots: Box<[tokio::sync::Mutex<Option<Sender>>]>,
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
            slots: (0..SHARDS).map(|_| tokio::sync::Mutex::new(None)).collect(),
        }
    }

    /// Sends `req` (absolute URI) as a stream of this worker's connection.
    pub(super) async fn send(
        &self,
        mut req: Request<OutBody>,
    ) -> Result<Response<PooledBody>, Outcome> {
        // A second try only for a request the connection handed back unsent (it was closing).
        for attempt in 0..2 {
            let mut sender = match self.sender().await {
                Ok(sender) => sender,
                Err(NoSender::Http1(stream)) => return Err(Outcome::Http1(stream, req)),
                Err(NoSender::Failed(error)) => {
                    return Err(Outcome::Failed(Failed {
                        error,
                        unsent: Some(req),
                    }));
                }
            };
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(response.map(PooledBody::unpooled)),
                Err(mut e) => {
                    let unsent = e.take_message();
                    let error = SendError::Failed(error_chain(&e.into_error()));
                    match unsent {
                        Some(unsent) if attempt == 0 => req = unsent,
                        unsent => return Err(Outcome::Failed(Failed { error, unsent })),
                    }
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    /// This worker's connection, opened if it has none (or it closed).
    async fn sender(&self) -> Result<Sender, NoSender> {
        let slot = &self.slots[crate::server::workers::index() % SHARDS];
        let mut current = slot.lock().await;
        if let Some(sender) = current.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        *current = None;
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
        let sender = handshake(stream).await.map_err(NoSender::Failed)?;
        *current = Some(sender.clone());
        Ok(sender)
    }
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
