//! Keep-alive HTTP/1.1 connections to one upstream target, on `hyper::client::conn::http1`,
//! and the two body types of upstream exchanges ([`OutBody`] out, [`PooledBody`] back).
//!
//! A connection is checked out for one request and goes back when its response body has been
//! read to the end, from the body itself ([`PooledBody`]): no task per request waits for it, no
//! lock is held across an await, and there is no connection-key map (hyper-util's pool spawns a
//! task per request for this). Idle connections are used last-in first-out (the warmest first)
//! and dropped after the upstream's `idle_timeout`. With none idle, a request starts a new
//! connection and joins the queue of waiting requests; each connection that comes up or comes
//! back goes to the oldest waiter, and each failed connect fails the oldest waiter. So in a
//! burst a request never waits on its own slow connect while another request's connection is
//! free (200 concurrent first requests would otherwise sit in SYN retransmits once the
//! upstream's accept queue overflows). A request that a reused connection hands back unsent
//! (the upstream closed it as we picked it) is tried again on another one; one that no
//! connection took is handed back to the caller ([`Failed::unsent`]) to try another target.
//!
//! Each proxy worker ([`crate::server::workers`]) has lists of its own: a connection's task runs
//! on the runtime of the worker that opened it, and only that worker's requests use it, so no
//! request waits on another thread's wake-up.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use super::connect::{Connector, Stream, Wanted};
use crate::error::error_chain;

/// Idle connections kept per upstream and worker, beyond which a finished connection is closed.
const MAX_IDLE: usize = 1024;
/// Workers with lists of their own; any beyond share (worker `i` uses lists `i % SHARDS`).
pub(super) const SHARDS: usize = 64;
/// Connections tried for one request whose request came back unsent.
const MAX_ATTEMPTS: usize = 3;
/// How long a connection given back may take to be ready for the next request. It normally is
/// at once; one that is not (hyper still writing a request body the upstream answered early)
/// is closed rather than waited for.
const READY_WAIT: Duration = Duration::from_millis(20);

/// A connection, or why none could be made, for a waiting request.
type Handoff = Result<Sender, SendError>;

type Sender = SendRequest<OutBody>;

/// Why a request could not be sent.
#[derive(Debug, Clone)]
pub(super) enum SendError {
    /// No connection within `connect_timeout`.
    ConnectTimeout,
    /// No connection: refused, unreachable, or the TLS handshake failed; the text says how.
    Connect(String),
    /// The exchange failed once the request was handed to a connection; the text says how.
    Failed(String),
    /// The client's request body failed while being sent (malformed chunked framing, or the
    /// client went away mid-body): the client's fault, not the upstream's.
    ClientBody(String),
    /// No response head within the upstream's `timeout`.
    Timeout,
    /// The path under the target's base path is longer than a URI may be.
    PathTooLong,
}

impl SendError {
    /// Whether the target is to blame: counted against its health and logged. A client's own
    /// broken body, or a path too long to address, says nothing of the target.
    pub(super) fn is_target_fault(&self) -> bool {
        !matches!(self, SendError::ClientBody(_) | SendError::PathTooLong)
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::ConnectTimeout => f.write_str("no connection within connect_timeout"),
            SendError::Timeout => f.write_str("no response within timeout"),
            SendError::Connect(why) | SendError::Failed(why) => f.write_str(why),
            SendError::ClientBody(why) => write!(f, "client body: {why}"),
            SendError::PathTooLong => f.write_str("path too long under the base path"),
        }
    }
}

/// A request that could not be sent, and the request itself when no byte of it left (safe to
/// send to another target, whatever its method).
pub(super) struct Failed {
    pub(super) error: SendError,
    pub(super) unsent: Option<Request<OutBody>>,
}

impl From<SendError> for Failed {
    fn from(error: SendError) -> Self {
        Failed {
            error,
            unsent: None,
        }
    }
}

/// The HTTP/1.1 connections of one target.
#[derive(Clone)]
pub(super) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Arc<Connector>,
    idle_timeout: Duration,
    /// One per worker.
    slots: Box<[Mutex<Slots>]>,
    /// Whether the task that closes expired idle connections runs (started with the first
    /// connection, inside the runtime).
    reaping: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Slots {
    /// Open connections nobody uses, most recently used last.
    idle: Vec<Idle>,
    /// Requests waiting for a connection, oldest first.
    waiters: VecDeque<oneshot::Sender<Handoff>>,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

impl Pool {
    /// A pool whose connections `connector` opens.
    pub(super) fn new(connector: Arc<Connector>, idle_timeout: Duration) -> Self {
        Pool {
            inner: Arc::new(Inner {
                connector,
                idle_timeout,
                slots: (0..SHARDS).map(|_| Mutex::default()).collect(),
                reaping: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.inner.lock().idle.len()
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection or a new one.
    pub(super) async fn send(
        &self,
        mut req: Request<OutBody>,
    ) -> Result<Response<PooledBody>, Failed> {
        let mut attempt = 1;
        loop {
            let mut sender = match self.checkout().await {
                Ok(sender) => sender,
                Err(error) => {
                    return Err(Failed {
                        error,
                        unsent: Some(req),
                    });
                }
            };
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.track(response, sender)),
                Err(mut e) => match e.take_message() {
                    // Never written: safe to send on another connection, whatever the method.
                    Some(unsent) if attempt < MAX_ATTEMPTS => req = unsent,
                    unsent => {
                        let e = e.into_error();
                        let error = if is_client_body_error(&e) {
                            SendError::ClientBody(error_chain(&e))
                        } else {
                            SendError::Failed(error_chain(&e))
                        };
                        return Err(Failed { error, unsent });
                    }
                },
            }
            attempt += 1;
        }
    }

    /// Takes a connection opened for HTTP/2 on which the target chose HTTP/1.1 (`auto`).
    pub(super) fn adopt(&self, stream: Stream) {
        let pool = self.clone();
        tokio::spawn(async move {
            if let Ok(sender) = pool.handshake(stream).await {
                pool.inner.put(sender);
            }
        });
    }

    /// The response with a body that gives the connection back once read to its end. A
    /// `101 Switching Protocols` connection becomes a tunnel and never comes back.
    fn track(&self, response: Response<Incoming>, sender: Sender) -> Response<PooledBody> {
        let upgraded = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        let (parts, body) = response.into_parts();
        let mut body = PooledBody {
            body,
            finished: false,
            owner: (!upgraded).then(|| (sender, Arc::downgrade(&self.inner))),
            in_flight: None,
        };
        // Bodiless responses (HEAD, 204, 304, `Content-Length: 0`) are complete already.
        if body.body.is_end_stream() {
            body.release();
        }
        Response::from_parts(parts, body)
    }

    /// An idle connection that is still open, else the first to come up or come back.
    async fn checkout(&self) -> Result<Sender, SendError> {
        loop {
            let next = {
                let mut slots = self.inner.lock();
                match slots.idle.pop() {
                    Some(idle) => Ok(idle),
                    None => {
                        // Requests that went away stop holding their place.
                        while slots.waiters.front().is_some_and(|w| w.is_closed()) {
                            slots.waiters.pop_front();
                        }
                        let (tx, rx) = oneshot::channel();
                        slots.waiters.push_back(tx);
                        Err(rx)
                    }
                }
            };
            let mut sender = match next {
                Ok(Idle { sender, since }) => {
                    if since.elapsed() >= self.inner.idle_timeout {
                        continue;
                    }
                    sender
                }
                Err(waiting) => {
                    let pool = self.clone();
                    tokio::spawn(async move {
                        let made = pool.connect().await;
                        pool.inner.hand_over(made);
                    });
                    waiting
                        .await
                        .map_err(|_| SendError::Failed("connection pool closed".into()))??
                }
            };
            if sender.is_closed() {
                continue;
            }
            if sender.is_ready()
                || matches!(
                    tokio::time::timeout(READY_WAIT, sender.ready()).await,
                    Ok(Ok(()))
                )
            {
                return Ok(sender);
            }
        }
    }

    async fn connect(&self) -> Result<Sender, SendError> {
        let (stream, _) = self.inner.connector.connect(Wanted::Http1).await?;
        self.handshake(stream).await
    }

    async fn handshake(&self, stream: Stream) -> Result<Sender, SendError> {
        let inner = &self.inner;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Connect(error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        if !inner
            .reaping
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tokio::spawn(reap(Arc::downgrade(inner)));
        }
        Ok(sender)
    }
}

impl Inner {
    /// The calling worker's lists.
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        lock(&self.slots[crate::server::workers::index() % SHARDS])
    }

    /// A connection becomes available: to the oldest request still waiting, else idle.
    fn put(&self, sender: Sender) {
        if !sender.is_closed() {
            self.hand_over(Ok(sender));
        }
    }

    /// Gives a new or returned connection, or a failed connect, to the oldest request still
    /// waiting; a connection nobody waits for goes idle.
    fn hand_over(&self, mut handoff: Handoff) {
        let mut slots = self.lock();
        while let Some(waiter) = slots.waiters.pop_front() {
            match waiter.send(handoff) {
                Ok(()) => return,
                // That request went away: the next one.
                Err(back) => handoff = back,
            }
        }
        if let Ok(sender) = handoff
            && slots.idle.len() < MAX_IDLE
        {
            slots.idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

fn lock(slots: &Mutex<Slots>) -> std::sync::MutexGuard<'_, Slots> {
    // The lists are valid whatever a panicking holder did to them.
    slots.lock().unwrap_or_else(|p| p.into_inner())
}

/// Closes idle connections past the idle timeout, until the pool is gone.
async fn reap(pool: Weak<Inner>) {
    let period = pool
        .upgrade()
        .map_or(Duration::from_secs(1), |p| p.idle_timeout / 2)
        .max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let expired: Vec<Idle> = {
            let mut expired = Vec::new();
            for slots in &pool.slots {
                let mut slots = lock(slots);
                let (keep, gone): (Vec<Idle>, Vec<Idle>) =
                    slots.idle.drain(..).partition(|c: &Idle| {
                        !c.sender.is_closed() && c.since.elapsed() < pool.idle_timeout
                    });
                slots.idle = keep;
                slots.waiters.retain(|w| !w.is_closed());
                expired.extend(gone);
            }
            expired
        };
        // Dropping a sender closes its connection; outside the lock.
        drop(expired);
    }
}

/// An upstream response body that returns its connection to the pool once read to the end
/// (HTTP/1.1), and holds its target's count of outstanding requests until then.
pub struct PooledBody {
    body: Incoming,
    finished: bool,
    owner: Option<(Sender, Weak<Inner>)>,
    /// Dropped at the end of the body: the target has one request fewer outstanding.
    pub(super) in_flight: Option<super::target::InFlight>,
}

impl PooledBody {
    /// A body whose connection is not pooled (HTTP/2 streams share theirs).
    pub(super) fn unpooled(body: Incoming) -> Self {
        PooledBody {
            finished: body.is_end_stream(),
            body,
            owner: None,
            in_flight: None,
        }
    }

    fn release(&mut self) {
        self.finished = true;
        self.in_flight = None;
        if let Some((sender, pool)) = self.owner.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.put(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            // A failed body leaves the connection in an unknown state: it is not reused.
            Poll::Ready(Some(Err(_))) => {
                this.owner = None;
                this.in_flight = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body dropped before its end (the client went away) leaves unread bytes on the
        // connection: it closes with the sender instead of coming back.
        if !self.finished && self.body.is_end_stream() {
            self.release();
        }
    }
}

/// The body of a request to an upstream: the client's, streamed, or none (a request sent again
/// to another target, which only bodiless requests are, and health checks).
pub(super) enum OutBody {
    Client(Incoming),
    /// The client's body, with a flag raised if it fails: HTTP/2 reports that as a reset
    /// stream, which would otherwise read as the target's fault.
    Watched(Incoming, Arc<std::sync::atomic::AtomicBool>),
    Empty,
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            OutBody::Client(body) => Pin::new(body).poll_frame(cx),
            OutBody::Watched(body, failed) => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Err(_))) = &polled {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                polled
            }
            OutBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OutBody::Client(body) | OutBody::Watched(body, _) => body.is_end_stream(),
            OutBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OutBody::Client(body) | OutBody::Watched(body, _) => body.size_hint(),
            OutBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A copy of a request's head, to send it again without its body (which must be empty).
pub(super) fn head_of<B>(req: &Request<B>) -> http::request::Builder {
    let mut head = Request::builder()
        .method(req.method().clone())
        .uri(req.uri().clone())
        .version(req.version());
    if let Some(headers) = head.headers_mut() {
        *headers = req.headers().clone();
    }
    head
}

/// Whether hyper's client failed because the request body it was sending failed: a "user
/// body" error whose cause is the error of the incoming (client-side) body.
fn is_client_body_error(e: &hyper::Error) -> bool {
    use std::error::Error as _;
    e.is_user()
        && e.source()
            .is_some_and(|cause| cause.downcast_ref::<hyper::Error>().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A keep-alive HTTP/1.1 server on loopback answering every request with `body`; it counts
    /// the connections it accepted.
    async fn server(body: &'static str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                    TokioIo::new(stream),
                    hyper::service::service_fn(move |_req| async move {
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from_static(body.as_bytes()),
                        )))
                    }),
                ));
            }
        });
        (address, accepted)
    }

    fn pool_to(address: String, idle_timeout: Duration) -> Pool {
        let connector = Connector::new(
            address,
            Duration::from_secs(1),
            None,
            crate::config::Protocol::Http1,
        );
        Pool::new(Arc::new(connector), idle_timeout)
    }

    fn get() -> Request<OutBody> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, "up")
            .body(OutBody::Empty)
            .unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_was_read_and_not_before() {
        let (upstream, accepted) = server("hello").await;
        let pool = pool_to(upstream, Duration::from_secs(30));
        for _ in 0..5 {
            let response = pool.send(get()).await.ok().unwrap();
            assert_eq!(pool.idle_count(), 0);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "hello");
            assert_eq!(pool.idle_count(), 1);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_a_failure_naming_the_address_with_the_request_unsent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let pool = pool_to(address.clone(), Duration::from_secs(1));
        let Err(Failed {
            error: SendError::Connect(text),
            unsent: Some(_),
        }) = pool.send(get()).await
        else {
            panic!("a request to a closed port was sent");
        };
        assert!(text.contains(&address), "{text}");
    }
}
