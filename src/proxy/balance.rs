//! An upstream's targets as one: which target a request goes to (least outstanding requests,
//! ties taken in turn), the one retry on another target, the `timeout`, and the task that runs
//! active health checks.
//!
//! Least outstanding requests rather than round robin: with equal targets it is round robin
//! (ties rotate), and a target that slows down (or a long gRPC stream that pins one) gets
//! fewer new requests instead of an equal share that queues behind the slow ones.
//!
//! Retry, once, on another target: a request no byte of which left (the connect failed, or the
//! connection handed it back), whatever its method; and an idempotent request without a body
//! whose exchange failed before any answer (a connection reset as it was sent), rebuilt from its
//! head. Never after a response has begun: the client would see two.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{Method, Request, Response};
use hyper::body::{Body, Incoming};

use super::pool::{Failed, OutBody, PooledBody, SendError, head_of};
use super::target::{Exchange, Target, TargetBoard};
use crate::config;
use crate::error::Reject;

/// One configured upstream: its targets and their connections.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    /// Its config as written and the digest of its TLS files, to tell whether a reload
    /// changed it.
    fingerprint: String,
    targets: Vec<Target>,
    timeout: Duration,
    /// Where the next search for the least loaded target starts, so that ties rotate.
    next: AtomicUsize,
    /// Set once a reload replaced this upstream: its health checks stop, and a verdict still in
    /// flight is not written over the new upstream's.
    retired: AtomicBool,
    /// Why this upstream has no targets to send to (its TLS files could not be read when it
    /// was built, after validation had read them).
    broken: Option<String>,
}

impl Upstream {
    /// The targets of a validated upstream, with their health in `board`; starts its active
    /// checks when it has some and a runtime is running.
    pub fn new(name: &str, cfg: &config::Upstream, board: &TargetBoard) -> Self {
        let (tls, broken) = match cfg.client_tls() {
            Ok(tls) => (tls, None),
            Err((field, message)) => {
                let why = format!("upstreams.{name}.{field}: {message}");
                tracing::error!(upstream = name, error = %why, "upstream TLS files unreadable");
                (None, Some(why))
            }
        };
        let targets = if broken.is_some() {
            Vec::new()
        } else {
            cfg.target_urls()
                .iter()
                .map(|url| Target::new(name, url, cfg, tls.as_ref().map(|t| &t.config), board))
                .collect()
        };
        let upstream = Upstream {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                fingerprint: fingerprint(cfg, tls.as_ref().map(|t| t.digest)),
                targets,
                timeout: cfg.timeout,
                next: AtomicUsize::new(0),
                retired: AtomicBool::new(false),
                broken,
            }),
        };
        if let Some(check) = &cfg.health_check
            && tokio::runtime::Handle::try_current().is_ok()
        {
            tokio::spawn(run_checks(Arc::downgrade(&upstream.inner), check.clone()));
        }
        upstream
    }

    /// This upstream if `cfg` (and the TLS files it names) are what it was built from: its
    /// connections and health carry over a reload. Else a new one.
    pub fn keep_or_new(&self, name: &str, cfg: &config::Upstream, board: &TargetBoard) -> Self {
        let digest = cfg.client_tls().ok().flatten().map(|t| t.digest);
        if self.inner.name == name && self.inner.fingerprint == fingerprint(cfg, digest) {
            self.clone()
        } else {
            self.retire();
            Upstream::new(name, cfg, board)
        }
    }

    /// Whether `other` is this very upstream (kept by a reload), not a rebuilt one.
    pub(super) fn is(&self, other: &Upstream) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Marks this upstream as replaced by a reload: its health checks stop.
    pub(super) fn retire(&self) {
        self.inner.retired.store(true, Ordering::Relaxed);
    }

    /// The upstream's name in config.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Sends `req` to a target, `tail` (path and query) under its base path, within the
    /// upstream's `timeout`; one retry on another target where that is safe (module doc).
    pub(super) async fn send(
        &self,
        req: Request<Incoming>,
        tail: PathAndQuery,
        exchange: Exchange,
    ) -> Result<Response<PooledBody>, Reject> {
        let inner = &*self.inner;
        if let Some(why) = &inner.broken {
            return Err(Reject::UpstreamUnavailable(why.clone()));
        }
        // Validation bounds `timeout`, so the sum cannot overflow.
        let deadline = tokio::time::Instant::now() + inner.timeout;
        if inner.targets.len() > 1 {
            // Boxed: the choice and the retry would otherwise enlarge the future of every
            // request, which is moved (copied) as it goes, for upstreams that have one target.
            return Box::pin(self.send_balanced(req, tail, exchange, deadline)).await;
        }
        inner
            .attempt(0, req.map(OutBody::Client), &tail, exchange, deadline)
            .await
            .map_err(|f| to_reject(f.error))
    }

    async fn send_balanced(
        &self,
        req: Request<Incoming>,
        tail: PathAndQuery,
        exchange: Exchange,
        deadline: tokio::time::Instant,
    ) -> Result<Response<PooledBody>, Reject> {
        let inner = &*self.inner;
        let replay = is_replayable(&req).then(|| head_of(&req));
        let first = self.pick(None);
        let mut failed = match inner
            .attempt(first, req.map(OutBody::Client), &tail, exchange, deadline)
            .await
        {
            Ok(response) => return Ok(response),
            Err(failed) => failed,
        };
        let again = match &failed.error {
            SendError::ClientBody(_) | SendError::Timeout | SendError::PathTooLong => None,
            _ if failed.unsent.is_some() => failed.unsent.take(),
            SendError::Failed(_) => replay.map(|head| head.body(OutBody::Empty).expect("a head")),
            SendError::Connect(_) | SendError::ConnectTimeout => None,
        };
        let Some(req) = again else {
            return Err(to_reject(failed.error));
        };
        let second = self.pick(Some(first));
        inner
            .attempt(second, req, &tail, exchange, deadline)
            .await
            .map_err(|f| to_reject(f.error))
    }

    /// The target with the fewest outstanding requests among those up (all of them when none
    /// is: a guess beats a certain refusal), `not` excepted when there is another.
    fn pick(&self, not: Option<usize>) -> usize {
        let targets = &self.inner.targets;
        let n = targets.len();
        if n == 1 {
            return 0;
        }
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(bool, usize, usize)> = None;
        for i in 0..n {
            let index = (start + i) % n;
            if Some(index) == not {
                continue;
            }
            let health = targets[index].health();
            let candidate = (health.is_up(), health.outstanding(), index);
            let better = match best {
                None => true,
                Some((up, load, _)) => {
                    (candidate.0 && !up) || (candidate.0 == up && candidate.1 < load)
                }
            };
            if better {
                best = Some(candidate);
            }
        }
        best.map_or(0, |(_, _, index)| index)
    }
}

impl Inner {
    /// One try on target `index`, logged when it fails.
    async fn attempt(
        &self,
        index: usize,
        req: Request<OutBody>,
        tail: &PathAndQuery,
        exchange: Exchange,
        deadline: tokio::time::Instant,
    ) -> Result<Response<PooledBody>, Failed> {
        let target = &self.targets[index];
        let failed = match tokio::time::timeout_at(deadline, target.send(req, tail, exchange)).await
        {
            Ok(Ok(response)) => return Ok(response),
            Ok(Err(failed)) => failed,
            Err(_) => {
                target.failed();
                Failed::from(SendError::Timeout)
            }
        };
        if failed.error.is_target_fault() {
            tracing::warn!(
                upstream = %self.name,
                target = target.url(),
                error = %failed.error,
                "upstream request failed"
            );
        }
        Err(failed)
    }
}

/// Runs `check` on every target of the upstream each interval, until the upstream is gone.
async fn run_checks(upstream: std::sync::Weak<Inner>, check: config::HealthCheck) {
    let path: PathAndQuery = check
        .path
        .parse()
        .expect("validate() checked the health-check path");
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = upstream.upgrade() else {
            return;
        };
        if inner.retired.load(Ordering::Relaxed) {
            return;
        }
        let checks = inner
            .targets
            .iter()
            .map(|t| t.check(&path, check.timeout, &inner.retired));
        futures_util::future::join_all(checks).await;
    }
}

/// Whether a request may be sent again from its head alone: idempotent (RFC 9110 §9.2.2) and
/// without a body.
fn is_replayable(req: &Request<Incoming>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::PUT | Method::TRACE
    ) && req.body().is_end_stream()
}

fn to_reject(error: SendError) -> Reject {
    match error {
        SendError::ConnectTimeout | SendError::Timeout => Reject::UpstreamTimeout,
        SendError::Connect(detail) | SendError::Failed(detail) => {
            Reject::UpstreamUnavailable(detail)
        }
        SendError::ClientBody(detail) => Reject::MalformedRequest(detail),
        // As before base paths joined per target: no URI to send it to.
        SendError::PathTooLong => Reject::NoRoute,
    }
}

fn fingerprint(cfg: &config::Upstream, tls: Option<[u8; 32]>) -> String {
    format!("{cfg:?}{tls:?}")
}
