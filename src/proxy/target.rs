//! One target of an upstream: how a request is addressed to it (origin-form and `Host` for
//! HTTP/1.1, an absolute URI for HTTP/2), which protocol it speaks (learnt from ALPN under
//! `auto`), and its health: requests outstanding, passive ejection after failures in a row,
//! the verdict of active checks. Its counters ([`TargetHealth`]) outlive reloads for metrics.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::header::{HOST, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};

use super::connect::{Connector, Wanted};
use super::h2::{self, H2, Outcome};
use super::pool::{Failed, OutBody, Pool, PooledBody, SendError};
use crate::config::{self, Protocol};

/// A target's health and counters, shared by the upstreams built for it across reloads.
#[derive(Debug, Default)]
pub struct TargetHealth {
    outstanding: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    ejections: AtomicU64,
    /// Failures since the last success.
    in_a_row: AtomicU32,
    /// The [`now_ms`] until which the target is ejected (0: never was).
    ejected_until: AtomicU64,
    /// Ejections in a row with no success between them: the next one lasts `2^n` as long.
    streak: AtomicU32,
    /// Back from an ejection with no success yet: one failure ejects it again.
    returning: AtomicBool,
    /// The last active check failed.
    check_failed: AtomicBool,
}

impl TargetHealth {
    /// Requests sent to it.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Connect failures, exchange failures and 502/503/504 answers.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Times it was ejected.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Requests sent and not yet answered to their end (counted when the upstream has several
    /// targets).
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Whether it takes requests: not ejected, and not failing its active checks.
    pub fn is_up(&self) -> bool {
        !self.check_failed.load(Ordering::Relaxed) && !self.is_ejected()
    }

    fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }
}

/// Every target's health by `(upstream, target URL)`, for metrics: the same target keeps its
/// counters when a reload rebuilds its upstream.
#[derive(Debug, Default)]
pub struct TargetBoard {
    entries: Mutex<Vec<(String, String, Arc<TargetHealth>)>>,
}

impl TargetBoard {
    fn health(&self, upstream: &str, target: &str) -> Arc<TargetHealth> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, h)) = entries
            .iter()
            .find(|(u, t, _)| u == upstream && t == target)
        {
            return h.clone();
        }
        let health = Arc::new(TargetHealth::default());
        entries.push((upstream.into(), target.into(), health.clone()));
        health
    }

    /// Forgets the targets `config` no longer names.
    pub fn retain(&self, config: &config::Config) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(u, t, _)| {
            config
                .upstreams
                .get(u)
                .is_some_and(|up| up.target_urls().iter().any(|url| &url.to_string() == t))
        });
    }

    /// `(upstream, target, health)` of every target.
    pub fn snapshot(&self) -> Vec<(String, String, Arc<TargetHealth>)> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What a request asks of its exchange with the target beyond its head.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Exchange {
    /// A WebSocket upgrade: HTTP/1.1 whatever the protocol (HTTP/2 has no 101).
    pub(super) upgrade: bool,
    /// The client sent `TE: trailers`, which goes on to HTTP/2 targets (gRPC servers look for
    /// it); `forward` removed it as hop-by-hop.
    pub(super) trailers: bool,
}

/// One request outstanding on a target, until dropped.
pub(super) struct InFlight(Arc<TargetHealth>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One target of an upstream.
pub(super) struct Target {
    /// The URL as configured, for logs.
    url: String,
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
    base_path: String,
    protocol: Protocol,
    /// Under `auto`: set once the target chose HTTP/1.1 by ALPN.
    chose_http1: AtomicBool,
    connector: Arc<Connector>,
    pool: Pool,
    /// `None` under `http1`.
    h2: Option<H2>,
    health: Arc<TargetHealth>,
    passive: config::PassiveHealth,
    /// One of several targets: its outstanding requests are counted.
    balanced: bool,
}

impl Target {
    /// A target of upstream `upstream`, at `url`; `tls` for `https://`.
    pub(super) fn new(
        upstream: &str,
        url: &Uri,
        cfg: &config::Upstream,
        tls: Option<&rustls::ClientConfig>,
        board: &TargetBoard,
    ) -> Target {
        let authority = url
            .authority()
            .expect("validate() checked that upstream URLs name a host")
            .clone();
        let scheme = url.scheme().cloned().unwrap_or(Scheme::HTTP);
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        // `host()` keeps an IPv6 literal's brackets, as `connect` wants them.
        let address = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(default_port)
        );
        let protocol = cfg.protocol();
        let tls = tls.map(|config| {
            let name = cfg
                .server_name(url)
                .expect("validate() checked the TLS name");
            (config, name)
        });
        let connector = Arc::new(Connector::new(address, cfg.connect_timeout, tls, protocol));
        let health = board.health(upstream, &url.to_string());
        // A target's active verdict is this config's to give.
        health.check_failed.store(false, Ordering::Relaxed);
        Target {
            url: url.to_string(),
            host: HeaderValue::from_str(authority.as_str())
                .expect("an authority is a valid header value"),
            scheme,
            authority,
            base_path: url.path().trim_end_matches('/').to_owned(),
            protocol,
            chose_http1: AtomicBool::new(false),
            pool: Pool::new(connector.clone(), cfg.idle_timeout),
            h2: (protocol != Protocol::Http1)
                .then(|| H2::new(connector.clone(), protocol == Protocol::Auto)),
            connector,
            health,
            passive: cfg.passive_health.clone(),
            balanced: cfg.target_urls().len() > 1,
        }
    }

    /// The URL as configured.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    pub(super) fn health(&self) -> &TargetHealth {
        &self.health
    }

    /// Whether a request goes over HTTP/2. `Upgrade` requests never do: HTTP/2 has no
    /// `101 Switching Protocols`.
    fn uses_h2(&self, upgrade: bool) -> bool {
        !upgrade
            && match self.protocol {
                Protocol::Http1 => false,
                Protocol::Http2 => true,
                Protocol::Auto => !self.chose_http1.load(Ordering::Relaxed),
            }
    }

    /// Points `req` at this target: `tail` (path and query) under its base path, origin-form
    /// with `Host` for HTTP/1.1, absolute for HTTP/2 (whose `:authority` replaces `Host`).
    /// Fails only when the joined path is longer than a URI may be (a client's path near the
    /// limit under a base path).
    fn address(
        &self,
        req: &mut Request<OutBody>,
        tail: &PathAndQuery,
        h2: bool,
    ) -> Result<(), SendError> {
        let too_long = |_| SendError::PathTooLong;
        let pq = if self.base_path.is_empty() {
            tail.clone()
        } else {
            PathAndQuery::try_from(format!("{}{}", self.base_path, tail.as_str()))
                .map_err(too_long)?
        };
        if h2 {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(self.authority.clone());
            parts.path_and_query = Some(pq);
            *req.uri_mut() = Uri::from_parts(parts).map_err(|_| SendError::PathTooLong)?;
            *req.version_mut() = Version::HTTP_2;
            req.headers_mut().remove(HOST);
        } else {
            *req.uri_mut() = Uri::from(pq);
            *req.version_mut() = Version::HTTP_11;
            req.headers_mut().insert(HOST, self.host.clone());
        }
        Ok(())
    }

    /// Sends `req` to this target and records the outcome in its health.
    pub(super) async fn send(
        &self,
        mut req: Request<OutBody>,
        tail: &PathAndQuery,
        exchange: Exchange,
    ) -> Result<Response<PooledBody>, Failed> {
        // Only what the await needs lives across it: this future is part of every request's,
        // and moved (copied) with it, so the HTTP/2 path is boxed and the bookkeeping is not
        // held in it.
        let h2 = self.uses_h2(exchange.upgrade);
        self.address(&mut req, tail, h2)?;
        let in_flight = self.begin();
        if h2 && exchange.trailers {
            req.headers_mut()
                .insert(TE, http::HeaderValue::from_static("trailers"));
        }
        let sent = if h2 {
            Box::pin(self.send_h2(req, tail)).await
        } else {
            self.pool.send(req).await
        };
        self.record(&sent);
        sent.map(|mut response| {
            response.body_mut().in_flight = in_flight;
            response
        })
    }

    /// Counts a request, and holds its place among the outstanding when that is counted.
    fn begin(&self) -> Option<InFlight> {
        self.health.requests.fetch_add(1, Ordering::Relaxed);
        // Only a choice between targets needs the count: a lone target skips the shared writes.
        self.balanced.then(|| {
            self.health.outstanding.fetch_add(1, Ordering::Relaxed);
            InFlight(self.health.clone())
        })
    }

    async fn send_h2(
        &self,
        req: Request<OutBody>,
        tail: &PathAndQuery,
    ) -> Result<Response<PooledBody>, Failed> {
        let conns = self
            .h2
            .as_ref()
            .expect("uses_h2 is only true with HTTP/2 connections");
        match conns.send(req).await {
            Ok(response) => Ok(response),
            Err(Outcome::Failed(failed)) => Err(failed),
            Err(Outcome::Http1(stream, mut req)) => {
                if !self.chose_http1.swap(true, Ordering::Relaxed) {
                    tracing::info!(target = %self.url, "target chose HTTP/1.1 by ALPN");
                }
                self.pool.adopt(stream);
                self.address(&mut req, tail, false)?;
                // A hop-by-hop field in HTTP/1.1, which the client's `TE` was for this hop.
                req.headers_mut().remove(TE);
                self.pool.send(req).await
            }
        }
    }

    /// The outcome's mark on the target's health.
    fn record(&self, sent: &Result<Response<PooledBody>, Failed>) {
        match sent {
            Ok(response)
                if matches!(
                    response.status(),
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ) =>
            {
                self.failed()
            }
            Ok(_) => self.succeeded(),
            Err(failed) if failed.error.is_target_fault() => self.failed(),
            Err(_) => {}
        }
    }

    fn succeeded(&self) {
        let h = &self.health;
        if h.is_ejected() {
            // A request that was in flight when it was ejected: its return is still on trial.
            return;
        }
        if h.in_a_row.load(Ordering::Relaxed) != 0 {
            h.in_a_row.store(0, Ordering::Relaxed);
        }
        if h.returning.load(Ordering::Relaxed) {
            h.returning.store(false, Ordering::Relaxed);
            h.streak.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; ejects the target after `passive_health.failures` in a row, or after
    /// one on its return from an ejection.
    pub(super) fn failed(&self) {
        let h = &self.health;
        h.failures.fetch_add(1, Ordering::Relaxed);
        let until = h.ejected_until.load(Ordering::Relaxed);
        let now = now_ms();
        if until != 0 && now < until {
            // Requests that were in flight when it was ejected: no new ejection.
            return;
        }
        let in_a_row = h.in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if in_a_row < self.passive.failures.get() && !h.returning.load(Ordering::Relaxed) {
            return;
        }
        let streak = h.streak.load(Ordering::Relaxed).min(4);
        let period = self.passive.ejection.saturating_mul(1 << streak);
        let ends = now.saturating_add(u64::try_from(period.as_millis()).unwrap_or(u64::MAX));
        // Of failures racing past the threshold, one ejects (and doubles the next ejection).
        if h.ejected_until
            .compare_exchange(until, ends, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        h.in_a_row.store(0, Ordering::Relaxed);
        h.streak.fetch_add(1, Ordering::Relaxed);
        h.returning.store(true, Ordering::Relaxed);
        h.ejections.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            target = %self.url,
            seconds = period.as_secs_f64(),
            "upstream target ejected after failing"
        );
    }

    /// One active check: `GET path` on a connection of its own, healthy on a 2xx or 3xx
    /// answer within `timeout`. Records the verdict and returns it with the reason.
    /// `retired`: set once a reload replaced the upstream, whose verdicts then no longer count.
    pub(super) async fn check(
        &self,
        path: &PathAndQuery,
        timeout: Duration,
        retired: &AtomicBool,
    ) -> Result<(), String> {
        let verdict = tokio::time::timeout(timeout, self.probe(path))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
        if retired.load(Ordering::Relaxed) {
            return verdict;
        }
        let failed = verdict.is_err();
        let was = self.health.check_failed.swap(failed, Ordering::Relaxed);
        match (&verdict, was) {
            (Err(why), false) => {
                tracing::warn!(target = %self.url, reason = %why, "health check failed: target down");
            }
            (Ok(()), true) => {
                // Back: whatever ejection it was serving ends too.
                self.health.ejected_until.store(0, Ordering::Relaxed);
                tracing::info!(target = %self.url, "health check passed: target up");
            }
            _ => {}
        }
        verdict
    }

    async fn probe(&self, path: &PathAndQuery) -> Result<(), String> {
        use http_body_util::BodyExt;
        let wanted = if self.uses_h2(false) {
            Wanted::Http2
        } else {
            Wanted::Http1
        };
        let (stream, h2) = self
            .connector
            .connect(wanted)
            .await
            .map_err(|e| e.to_string())?;
        if !h2 && self.protocol == Protocol::Http2 {
            return Err("did not agree to HTTP/2 (ALPN h2)".into());
        }
        let mut req = Request::new(OutBody::Empty);
        self.address(&mut req, path, h2)
            .map_err(|e| e.to_string())?;
        let response = if h2 {
            let mut sender = h2::handshake(stream).await.map_err(|e| e.to_string())?;
            sender.send_request(req).await
        } else {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| crate::error::error_chain(&e))?;
            tokio::spawn(conn);
            sender.send_request(req).await
        }
        .map_err(|e| crate::error::error_chain(&e))?;
        let status = response.status();
        // Read to the end, so the answer is whole, and the connection closes cleanly.
        let _ = response.into_body().collect().await;
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}

/// Milliseconds since the first call in this process: a clock for ejections that fits an
/// atomic.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // Never 0, which means "never ejected".
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        let cfg: config::Upstream = serde_yaml::from_str(&format!("url: {url}")).unwrap();
        let url = cfg.target_urls()[0].clone();
        Target::new("app", &url, &cfg, None, &TargetBoard::default())
    }

    #[test]
    fn requests_are_addressed_under_the_base_path_in_the_target_protocol_form() {
        let tail = PathAndQuery::from_static("/api/v1/x?a=1");
        let mut req = Request::new(OutBody::Empty);
        let based = target("http://127.0.0.1:9000/base/");
        based.address(&mut req, &tail, false).unwrap();
        assert_eq!(req.uri(), "/base/api/v1/x?a=1");
        assert_eq!(req.headers()[HOST], "127.0.0.1:9000");

        let plain = target("http://[::1]:9000");
        plain.address(&mut req, &tail, true).unwrap();
        let long = PathAndQuery::try_from(format!("/{}", "a".repeat(65_530))).unwrap();
        assert!(matches!(
            based.address(&mut req, &long, false),
            Err(SendError::PathTooLong)
        ));
        assert_eq!(req.uri(), "http://[::1]:9000/api/v1/x?a=1");
        assert_eq!(req.version(), Version::HTTP_2);
        assert!(!req.headers().contains_key(HOST), ":authority instead");
    }

    #[test]
    fn failures_in_a_row_eject_and_one_failure_on_return_ejects_for_longer() {
        let t = target("http://127.0.0.1:9000");
        t.failed();
        t.failed();
        assert!(t.health().is_up());
        t.succeeded();
        t.failed();
        t.failed();
        assert!(t.health().is_up(), "a success resets the count");
        t.failed();
        assert!(!t.health().is_up());
        assert_eq!(t.health().ejections(), 1);
        t.failed();
        assert_eq!(
            t.health().ejections(),
            1,
            "in-flight failures do not extend it"
        );
        // Back (the ejection ran out): one failure ejects again, for twice as long.
        t.health.ejected_until.store(1, Ordering::Relaxed);
        assert!(t.health().is_up());
        let before = now_ms();
        t.failed();
        assert_eq!(t.health().ejections(), 2);
        let until = t.health.ejected_until.load(Ordering::Relaxed);
        assert!(
            until >= before + 20_000 - 5,
            "10 s doubled: {}",
            until - before
        );
        // A late success of a request sent before the ejection does not end the trial...
        t.succeeded();
        assert_eq!(t.health.streak.load(Ordering::Relaxed), 2);
        // ...one after its return does.
        t.health.ejected_until.store(1, Ordering::Relaxed);
        t.succeeded();
        assert_eq!(t.health.streak.load(Ordering::Relaxed), 0);
    }
}
