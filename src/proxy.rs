//! The data plane's one ordering of stages, read top to bottom in [`Gateway::handle`] and the
//! decision it makes (`decide.rs`: [`Gateway::decide`], [`Gateway::admit_key`]):
//! request id → method (never `CONNECT`) → route → credential → failed-authentication limit → key lookup (cache, then
//! store) → revoked → expired → client IP allowlist → scopes → rate limit → quota → forward →
//! access log, metrics and usage.
//!
//! Each stage returns early with a [`Reject`](crate::error::Reject); only `error.rs` turns it into
//! a response.

pub mod authz;
mod balance;
mod connect;
mod decide;
mod grpc;
mod h2;
mod pool;
mod target;
pub mod upstream;
pub mod verify;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use ipnet::IpNet;

use crate::auth::CredentialSources;
use crate::config::Config;
use crate::keys::{SecretFormat, SecretHasher};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::route::Router;
use crate::store::Store;
use crate::store::cache::KeyCache;
use crate::store::cached::CachedKey;
use crate::usage::Recorder;
use crate::workspaces::Directory;
use arc_swap::ArcSwap;
pub use balance::Upstream;
pub use decide::{Decision, Original, Refusal};
pub use pool::PooledBody;
pub use target::{TargetBoard, TargetHealth};
use upstream::Forwarding;

/// Response body of the proxy: a small JSON error, or the upstream's body streamed through.
pub type ProxyBody = Either<Full<Bytes>, PooledBody>;

/// `X-Request-Id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the listener knows about a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// TCP peer.
    pub peer: SocketAddr,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
    /// The peer's address as an `X-Forwarded-For` value, rendered once per connection rather
    /// than once per request.
    peer_ip: HeaderValue,
    /// The connection's place under `limits.max_connections`, for an `Upgrade` tunnel to keep.
    slot: Option<crate::server::ConnectionSlot>,
}

impl ConnInfo {
    /// A connection from `peer` over `scheme`.
    pub fn new(peer: SocketAddr, scheme: &'static str) -> Self {
        let ip = peer.ip().to_canonical().to_string();
        ConnInfo {
            peer,
            scheme,
            peer_ip: HeaderValue::from_str(&ip).expect("an IP address is a valid header value"),
            slot: None,
        }
    }

    /// The connection holds `slot` under `limits.max_connections`.
    pub fn with_slot(mut self, slot: crate::server::ConnectionSlot) -> Self {
        self.slot = Some(slot);
        self
    }

    /// The connection's slot, for whatever outlives its HTTP exchange (a tunnel).
    pub fn slot(&self) -> Option<&crate::server::ConnectionSlot> {
        self.slot.as_ref()
    }

    /// The peer's (canonical) IP address as a header value.
    pub fn peer_ip_header(&self) -> &HeaderValue {
        &self.peer_ip
    }
}

/// The parts of the data plane a reload replaces: routes, upstreams, limits, credential
/// sources, roles, trusted proxies, forwarding rules. Swapped whole ([`Gateway::reconfigure`]);
/// a request loads one at its start and keeps it to its end, so it never sees a mix of two
/// configs.
pub struct Policy {
    router: Router,
    upstreams: Vec<Upstream>,
    limits: Arc<Limits>,
    sources: CredentialSources,
    roles: HashMap<String, Vec<String>>,
    trusted: Vec<IpNet>,
    forwarding: Forwarding,
    access_log: bool,
    /// `leaks.public_path`: leak reports taken on the proxy listener.
    leaks_path: Option<Box<str>>,
}

impl Policy {
    /// The policy of `config`; upstreams unchanged since `previous` keep their connection pools.
    /// Their targets' health is kept in `board`.
    fn new(
        config: &Config,
        limits: Limits,
        previous: Option<&Policy>,
        board: &TargetBoard,
    ) -> Policy {
        let names: Vec<&String> = config.upstreams.keys().collect();
        board.retain(config);
        // Upstreams the new config drops stop their health checks.
        for old in previous.map_or(&[][..], |p| &p.upstreams[..]) {
            if !config.upstreams.contains_key(old.name()) {
                old.retire();
            }
        }
        Policy {
            router: Router::new(&config.routes, |name| {
                names
                    .iter()
                    .position(|n| n.as_str() == name)
                    .expect("validate() checked that every route names an upstream")
            }),
            upstreams: config
                .upstreams
                .iter()
                .map(|(name, u)| {
                    previous
                        .and_then(|p| p.upstreams.iter().find(|old| old.name() == name))
                        .map_or_else(
                            || Upstream::new(name, u, board),
                            |old| old.keep_or_new(name, u, board),
                        )
                })
                .collect(),
            limits: Arc::new(limits),
            sources: CredentialSources::new(config),
            roles: config
                .roles
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            trusted: config.trusted_proxies.clone(),
            forwarding: Forwarding::new(config),
            access_log: config.log.access,
            leaks_path: config.leaks.public_path.as_deref().map(Box::from),
        }
    }

    /// Rate limits, quotas and the failed-authentication limit of this config.
    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    fn role_scopes(&self, key: &CachedKey) -> &[String] {
        key.role()
            .and_then(|r| self.roles.get(r))
            .map_or(&[], Vec::as_slice)
    }

    /// [`Policy::effective_scopes`] joined with `,` as a header value, written straight into
    /// the shared header buffer ([`crate::header_values`]).
    fn scopes_header(&self, key: &CachedKey) -> HeaderValue {
        let own = key.scopes();
        let role = self.role_scopes(key);
        let value = crate::header_values::build(|buf| {
            for (i, s) in own.iter().chain(role).enumerate() {
                // Deduplicated as `effective_scopes` does: the first occurrence counts.
                if own.iter().chain(role).take(i).any(|t| t == s) {
                    continue;
                }
                if !buf.is_empty() {
                    buf.extend_from_slice(b",");
                }
                buf.extend_from_slice(s.as_bytes());
            }
        })
        .unwrap_or_else(|| HeaderValue::from_static(""));
        debug_assert_eq!(value, self.effective_scopes(key).join(",").as_str());
        value
    }

    /// The scopes a key holds: its own and its role's, deduplicated, in that order.
    pub fn effective_scopes<'k>(&'k self, key: &'k CachedKey) -> Vec<&'k str> {
        let mut out: Vec<&str> = Vec::with_capacity(key.scopes().len());
        for s in key.scopes().iter().chain(self.role_scopes(key)) {
            if !out.contains(&s.as_str()) {
                out.push(s);
            }
        }
        out
    }
}

/// The data plane: the running [`Policy`], and what outlives a reload (the key cache, the
/// secret format and pepper, usage recording, metrics, the stored workspaces).
pub struct Gateway {
    policy: ArcSwap<Policy>,
    /// Every upstream target's health and counters, across reloads.
    targets: Arc<TargetBoard>,
    keys: Arc<KeyCache<Store>>,
    workspaces: Arc<Directory>,
    /// Set when shutdown begins: `/readyz` answers 503 from then on.
    draining: std::sync::atomic::AtomicBool,
    format: SecretFormat,
    hasher: SecretHasher,
    ids: RequestIds,
    usage: Recorder,
    metrics: Metrics,
    /// Told when a key's quota runs out (set once the app has built them). Weak: the webhooks
    /// reach this gateway through the reloader, and a cycle would keep the store open after
    /// the app is gone.
    webhooks: std::sync::OnceLock<std::sync::Weak<crate::webhooks::Webhooks>>,
}

impl Gateway {
    /// Builds the data plane for a validated config over a key cache; `live_instances` counts
    /// the instances sharing `rate_limits.mode: redis` limits (each enforces its share while
    /// Redis cannot be reached; see [`crate::limits`]).
    pub fn new(
        config: &Config,
        keys: Arc<KeyCache<Store>>,
        live_instances: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Self {
        let workspaces = Arc::new(Directory::new());
        let limits = Limits::new(
            config,
            keys.store().clone(),
            workspaces.clone(),
            live_instances,
        );
        let targets = Arc::new(TargetBoard::default());
        Gateway {
            policy: ArcSwap::from_pointee(Policy::new(config, limits, None, &targets)),
            targets,
            workspaces,
            draining: std::sync::atomic::AtomicBool::new(false),
            keys,
            format: SecretFormat::new(&config.keys.prefix, &config.keys.environment),
            hasher: SecretHasher::new(&config.secrets.pepper),
            ids: RequestIds::new(),
            usage: Recorder::disabled(),
            metrics: Metrics::new(),
            webhooks: std::sync::OnceLock::new(),
        }
    }

    /// Swaps in the request-path parts of `config` (a validated config whose restart-only
    /// fields are those this gateway runs with): requests that have started finish under the
    /// policy they loaded; buckets, quota counts and the key cache carry on.
    ///
    /// Says whether any upstream was rebuilt: its config changed, or a TLS file it reads did
    /// (replaced in place, with the config text the same).
    pub fn reconfigure(&self, config: &Config) -> bool {
        let previous = self.policy.load_full();
        let limits = previous.limits.reconfigured(config);
        let policy = Policy::new(config, limits, Some(&previous), &self.targets);
        let rebuilt = policy.upstreams.len() != previous.upstreams.len()
            || policy
                .upstreams
                .iter()
                .any(|u| !previous.upstreams.iter().any(|old| old.is(u)));
        self.policy.store(Arc::new(policy));
        rebuilt
    }

    /// The running policy.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Records usage through `usage` and counts requests in `metrics` (without this, usage is not
    /// recorded and the metrics are not exported).
    pub fn with_telemetry(mut self, usage: Recorder, metrics: Metrics) -> Self {
        self.policy
            .load()
            .limits
            .count_local_checks(metrics.rate_limit_local().clone());
        metrics.observe_targets(self.targets.clone());
        self.usage = usage;
        self.metrics = metrics;
        self
    }

    /// Sends `key.quota_exhausted` through `webhooks` from now on.
    pub fn set_webhooks(&self, webhooks: &Arc<crate::webhooks::Webhooks>) {
        let _ = self.webhooks.set(Arc::downgrade(webhooks));
    }

    /// The metrics this gateway records.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The key cache (for the control plane's invalidations and for metrics).
    pub fn keys(&self) -> &Arc<KeyCache<Store>> {
        &self.keys
    }

    /// Rate limits, quotas and the failed-authentication limit of the running policy.
    pub fn limits(&self) -> Arc<Limits> {
        self.policy.load().limits.clone()
    }

    /// Marks the gateway as shutting down: readiness fails from now on, while it still serves.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Every workspace, config and stored, as this instance knows them.
    pub fn workspaces(&self) -> &Arc<Directory> {
        &self.workspaces
    }

    /// The secret hasher of this configuration.
    pub fn hasher(&self) -> &SecretHasher {
        &self.hasher
    }

    /// The secret format of this configuration.
    pub fn format(&self) -> &SecretFormat {
        &self.format
    }

    /// Whether `req` is a leak report on `leaks.public_path` (served by the admin API's handler,
    /// not forwarded).
    pub fn is_leak_report<B>(&self, req: &Request<B>) -> bool {
        self.policy
            .load()
            .leaks_path
            .as_deref()
            .is_some_and(|p| req.uri().path() == p)
    }

    /// Serves one request: refuses it with the documented error or forwards it.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let started = Instant::now();
        let request_id = self.ids.for_request(req.headers());
        let method = req.method().clone();
        // A shared handle on the request line (no copy) for the access and usage logs.
        let uri = req.uri().clone();

        // This request's config, to its end, whatever a reload does meanwhile.
        let policy = self.policy.load_full();
        let grpc = grpc::content_type(req.headers());
        let original = Original::of(&req, conn.peer.ip(), &policy.trusted);
        // Known before the decision, so a refusal's logs have it too.
        let client_ip = original.client_ip;
        // `status` is keygate's, which a gRPC answer carries in `grpc-status` instead.
        let (mut response, key, refused, upstream_time, status) =
            match self.decide(&policy, &original).await {
                Err(refusal) => {
                    self.metrics.request_refused(&refusal.reject);
                    let mut response = refused_with(&refusal.reject, &request_id, grpc.as_ref());
                    refusal.limits.apply(response.headers_mut());
                    let code = refusal.reject.code();
                    let status = refusal.reject.status();
                    (response, refusal.key, Some(code), None, status)
                }
                Ok(decision) => {
                    let key = decision.key.clone();
                    let upstream = &policy.upstreams[decision.route.upstream];
                    let scopes = key.as_deref().map(|k| policy.scopes_header(k));
                    let limits = decision.limits;
                    let sent = Instant::now();
                    let (mut response, status) = match policy
                        .forwarding
                        .forward(req, &decision, scopes, upstream, conn, &request_id)
                        .await
                    {
                        Ok(r) => {
                            self.metrics.request_forwarded(r.status());
                            let status = r.status();
                            (r.map(Either::Right), status)
                        }
                        Err(reject) => {
                            self.metrics.request_refused(&reject);
                            let response = refused_with(&reject, &request_id, grpc.as_ref());
                            (response, reject.status())
                        }
                    };
                    // The limit headers and the request id at once, rather than growing the
                    // upstream's header map (sized to what it sent) twice.
                    response.headers_mut().reserve(6);
                    limits.apply(response.headers_mut());
                    (response, key, None, Some(sent.elapsed()), status)
                }
            };
        response
            .headers_mut()
            .insert(X_REQUEST_ID, request_id.clone());
        self.settle(
            &policy,
            Answered {
                status,
                request_id: &request_id,
                method: &method,
                path: uri.path(),
                key,
                refused,
                client_ip,
                started,
                upstream: upstream_time,
            },
        );
        response
    }
}

/// What the metrics, the access log and usage record of an answered request.
struct Answered<'a> {
    /// The status keygate answered with (a gRPC refusal's HTTP status is 200).
    status: http::StatusCode,
    request_id: &'a HeaderValue,
    method: &'a http::Method,
    /// The path as received.
    path: &'a str,
    /// A key that passed every check (a use) or was refused after it was recognised.
    key: Option<Arc<CachedKey>>,
    /// The refusal's code.
    refused: Option<&'static str>,
    client_ip: IpAddr,
    started: Instant,
    /// Time spent waiting on the upstream, when the request was forwarded.
    upstream: Option<Duration>,
}

impl Gateway {
    /// Records an answered request: its timing, its access-log line and, when a key was
    /// recognised, its usage (a use when it passed, a request-log entry with its code when not).
    fn settle(&self, policy: &Policy, a: Answered<'_>) {
        let latency = a.started.elapsed();
        self.metrics.request_timing(latency, a.upstream);
        if policy.access_log {
            tracing::info!(
                target: "keygate::access",
                request_id = a.request_id.to_str().unwrap_or(""),
                method = a.method.as_str(),
                path = a.path,
                status = a.status.as_u16(),
                code = a.refused,
                key_id = a.key.as_deref().map(|k| k.id().as_str()),
                workspace = a.key.as_deref().map(|k| k.workspace()),
                client_ip = %a.client_ip,
                latency_us = latency.as_micros() as u64,
                upstream_us = a.upstream.map(|d| d.as_micros() as u64),
            );
        }
        if let Some(key) = a.key {
            self.usage.record(
                key,
                a.method,
                a.path,
                a.status,
                a.client_ip,
                latency,
                a.refused,
            );
        }
    }
}

/// The refusal's documented JSON response, or its gRPC answer to a gRPC request (`grpc`: the
/// request's content type).
fn refused_with(
    reject: &crate::error::Reject,
    request_id: &HeaderValue,
    grpc: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let response = reject.to_response(request_id);
    match grpc {
        Some(content_type) => grpc::answer(
            response,
            content_type.clone(),
            reject.code(),
            &reject.message(),
        )
        .map(Either::Left),
        None => response.map(Either::Left),
    }
}

/// Request ids: the client's when it sent a usable one, otherwise a new one that is unique per
/// process and reveals nothing (a keyed permutation of a counter; no syscall per request).
pub struct RequestIds {
    seed: u64,
    instance: u64,
}

/// Counter values are handed to threads in blocks of `2^32`, so that proxy workers on different
/// cores do not write one shared counter on every request; they stay unique per process.
static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's next counter value and the end of its block.
    static COUNTER: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

fn next_count() -> u64 {
    COUNTER.with(|c| {
        let (mut next, mut end) = c.get();
        if next == end {
            next = NEXT_BLOCK.fetch_add(1, Ordering::Relaxed).wrapping_shl(32);
            end = next.wrapping_add(1 << 32);
        }
        c.set((next.wrapping_add(1), end));
        next
    })
}

impl RequestIds {
    /// A generator with a fresh random seed.
    pub fn new() -> Self {
        let mut seed = [0u8; 16];
        getrandom::fill(&mut seed).expect("the OS random number generator is available");
        RequestIds {
            seed: u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")),
            instance: u64::from_le_bytes(seed[8..].try_into().expect("8 bytes")),
        }
    }

    /// The client's id if usable, else a new one.
    pub fn for_request(&self, headers: &HeaderMap) -> HeaderValue {
        if let Some(v) = headers.get(X_REQUEST_ID)
            && is_usable_request_id(v.as_bytes())
        {
            return v.clone();
        }
        let mut buf = [0u8; 32];
        hex_u64(self.instance, &mut buf[..16]);
        hex_u64(splitmix64(next_count() ^ self.seed), &mut buf[16..]);
        crate::header_values::copy(&buf).expect("hex digits are a valid header value")
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// 1–128 characters of letters, digits and `-_.:+/=@`.
fn is_usable_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(b))
}

fn splitmix64(mut z: u64) -> u64 {
    // A bijection on u64, so distinct counters give distinct ids.
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hex_u64(v: u64, out: &mut [u8]) {
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = b"0123456789abcdef"[((v >> (60 - 4 * i)) & 15) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_usable_and_unique_otherwise() {
        let ids = RequestIds::new();
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(ids.for_request(&h), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        let generated = ids.for_request(&h);
        assert_ne!(generated, "has space");
        assert_eq!(generated.len(), 32);
        let a = ids.for_request(&HeaderMap::new());
        let b = ids.for_request(&HeaderMap::new());
        assert_ne!(a, b);
        assert!(!is_usable_request_id(&[b'x'; 129]));
    }
}
