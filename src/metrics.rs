//! Prometheus metrics: one [`Registry`] per gateway, typed handles resolved at startup so that
//! recording on the request path is an atomic increment (no label hashing, no lock), and the
//! text exposition served at `GET /metrics` on the admin listener.
//!
//! Labels are bounded: decisions are the documented error codes (plus `forwarded`), statuses are
//! numeric codes, store operations a fixed list. Never a key id, a path or a secret.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `keygate_requests_total` | counter | `decision` (`forwarded` or an error code), `status` |
//! | `keygate_auth_failures_total` | counter | `reason` (an authentication or authorization error code) |
//! | `keygate_rate_limited_total`, `keygate_quota_exceeded_total` | counter | |
//! | `keygate_rate_limit_local_total` | counter | `rate_limits.mode: redis` checks decided on this instance's share because Redis did not answer |
//! | `keygate_gateway_overhead_seconds` | histogram | time spent in the gateway, upstream excluded |
//! | `keygate_upstream_duration_seconds` | histogram | upstream time to response head |
//! | `keygate_cache_hits_total`, `…_misses_total`, `…_stale_served_total`, `keygate_cache_entries` | counter, gauge | |
//! | `keygate_store_duration_seconds`, `keygate_store_errors_total` | histogram, counter | `op` |
//! | `keygate_store_breaker_open` | gauge | 1 from the failure that opens the breaker (a row of them, or a failure rate) until a call finds Redis answering again (Redis backend only) |
//! | `keygate_store_breaker_opens_total` | counter | times the Redis circuit breaker opened |
//! | `keygate_fleet_instances` | gauge | instances sharing the Redis store, this one included, as of the last heartbeat (1 while unknown) |
//! | `keygate_invalidation_unconfirmed_total` | counter | live instances that did not confirm a change to a key in time (one per instance per change) |
//! | `keygate_invalidation_confirm_seconds` | histogram | how long a change to a key waited for the other instances' confirmations |
//! | `keygate_cache_lease_lapses_total` | counter | times this instance stood still longer than the cache's lease and re-read every cached key |
//! | `keygate_usage_dropped_total` | counter | `reason` (`queue_full`, `queue_closed`, `too_many_keys`) |
//! | `keygate_usage_written_total`, `keygate_usage_flush_failures_total` | counter | |
//! | `keygate_usage_pending_keys`, `keygate_usage_queue_depth` | gauge | |
//! | `keygate_request_log_entries_dropped_total` | counter | |
//! | `keygate_connections_open` | gauge | `listener` (`proxy`, `admin`) |
//! | `keygate_connections_refused_total` | counter | `listener`: closed at accept, over `limits.max_connections` |
//! | `keygate_connections_timed_out_total` | counter | `listener`: closed without a request head within `limits.header_read_timeout` |
//! | `keygate_upstream_requests_total`, `…_failures_total`, `…_ejections_total` | counter | `upstream`, `target` (the configured URL) |
//! | `keygate_upstream_target_up`, `keygate_upstream_outstanding` | gauge | `upstream`, `target` |

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::error::Reject;
use collectors::{CacheCollector, TargetCollector};

mod collectors;
use crate::histogram::Histogram;
use crate::store::Store;
use crate::store::cache::KeyCache;
use crate::store::stats::{STORE_BUCKETS, StoreMetrics, StoreOp};

/// `Content-Type` of the classic Prometheus text format (what `curl` and most tools get).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of the OpenMetrics text format (what Prometheus asks for first).
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Gateway time per request, upstream excluded: from tens of microseconds (a cache hit) to
/// seconds (a store timeout).
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5,
];
/// Upstream time to response head.
const UPSTREAM_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Lowest and highest HTTP status codes `http::StatusCode` accepts.
const STATUS_MIN: u16 = 100;
const STATUS_SLOTS: usize = 900;

/// Every refusal, in the order of [`refusal_index`]: the labels come from `error.rs` itself.
fn all_refusals() -> [Reject; REFUSALS] {
    [
        Reject::MissingKey,
        Reject::InvalidKey(""),
        Reject::KeyRevoked,
        Reject::KeyExpired,
        Reject::ConflictingCredentials,
        Reject::IpNotAllowed,
        Reject::InsufficientScope(String::new()),
        Reject::NoRoute,
        Reject::MalformedRequest(String::new()),
        Reject::MethodNotAllowed,
        Reject::RateLimited(0),
        Reject::QuotaExceeded(None),
        Reject::UpstreamUnavailable(String::new()),
        Reject::UpstreamTimeout,
        Reject::StoreUnavailable(String::new()),
    ]
}

/// Number of [`Reject`] variants.
const REFUSALS: usize = 15;

/// The slot of a refusal in the pre-resolved arrays. Exhaustive on purpose: a new error code
/// does not compile until it has its series.
fn refusal_index(reject: &Reject) -> usize {
    match reject {
        Reject::MissingKey => 0,
        Reject::InvalidKey(_) => 1,
        Reject::KeyRevoked => 2,
        Reject::KeyExpired => 3,
        Reject::ConflictingCredentials => 4,
        Reject::IpNotAllowed => 5,
        Reject::InsufficientScope(_) => 6,
        Reject::NoRoute => 7,
        Reject::MalformedRequest(_) | Reject::UnclearOriginal(_) => 8,
        Reject::MethodNotAllowed => 9,
        Reject::RateLimited(_) => 10,
        Reject::QuotaExceeded(_) => 11,
        Reject::UpstreamUnavailable(_) => 12,
        Reject::UpstreamTimeout => 13,
        Reject::StoreUnavailable(_) => 14,
    }
}

/// Whether a refusal is an authentication or authorization failure (counted by reason in
/// `keygate_auth_failures_total`, the series the alert rules watch).
fn is_auth_failure(reject: &Reject) -> bool {
    match reject {
        Reject::MissingKey
        | Reject::InvalidKey(_)
        | Reject::KeyRevoked
        | Reject::KeyExpired
        | Reject::ConflictingCredentials
        | Reject::IpNotAllowed
        | Reject::InsufficientScope(_) => true,
        Reject::NoRoute
        | Reject::MalformedRequest(_)
        | Reject::UnclearOriginal(_)
        | Reject::MethodNotAllowed
        | Reject::RateLimited(_)
        | Reject::QuotaExceeded(_)
        | Reject::UpstreamUnavailable(_)
        | Reject::UpstreamTimeout
        | Reject::StoreUnavailable(_) => false,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    decision: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HashLabels {
    hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

/// The counters one refusal increments, resolved at startup.
struct RefusalSeries {
    requests: Counter,
    auth_failure: Option<Counter>,
    /// `keygate_rate_limited_total` or `keygate_quota_exceeded_total`.
    limit: Option<Counter>,
}

/// The gateway's metrics: cheap to clone, shared by the data plane, the usage flusher and the
/// admin listener.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    refusals: [RefusalSeries; REFUSALS],
    /// `keygate_requests_total{decision="forwarded", status=…}` by status − 100, resolved on
    /// first use so that only statuses actually seen are exported.
    forwarded: Box<[OnceLock<Counter>]>,
    /// `keygate_requests_total{decision="allowed", status="200"}`, exported once seen.
    allowed: OnceLock<Counter>,
    overhead: Histogram,
    upstream: Histogram,
    store: StoreMetrics,
    usage: UsageMetrics,
    connections: [ConnectionMetrics; 3],
    cache: Arc<OnceLock<Arc<KeyCache<Store>>>>,
    targets: Arc<OnceLock<Arc<crate::proxy::TargetBoard>>>,
    rate_limit_local: Counter,
    reloads: Family<ResultLabels, Counter>,
    webhook_deliveries: Family<ResultLabels, Counter>,
    config: Family<HashLabels, Gauge>,
}

impl Metrics {
    /// A registry with every keygate metric, all at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "keygate_requests",
            "Requests by decision (`forwarded`, `allowed` by forward authentication, or the error code) and response status",
            requests.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "keygate_auth_failures",
            "Requests refused by authentication or authorization, by error code",
            auth_failures.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "keygate_rate_limited",
            "Requests refused with 429 rate_limited",
            rate_limited.clone(),
        );
        let quota_exceeded = Counter::default();
        registry.register(
            "keygate_quota_exceeded",
            "Requests refused with 429 quota_exceeded",
            quota_exceeded.clone(),
        );
        let rate_limit_local = Counter::default();
        registry.register(
            "keygate_rate_limit_local",
            "rate_limits.mode: redis checks decided on this instance's share of the limit because Redis did not answer",
            rate_limit_local.clone(),
        );
        let refusals = all_refusals().map(|reject| {
            let labels = RequestLabels {
                decision: reject.code(),
                status: reject.status().as_u16(),
            };
            RefusalSeries {
                requests: requests.get_or_create_owned(&labels),
                auth_failure: is_auth_failure(&reject).then(|| {
                    auth_failures.get_or_create_owned(&ReasonLabels {
                        reason: reject.code(),
                    })
                }),
                limit: match reject {
                    Reject::RateLimited(_) => Some(rate_limited.clone()),
                    Reject::QuotaExceeded(_) => Some(quota_exceeded.clone()),
                    _ => None,
                },
            }
        });

        let overhead = Histogram::new(OVERHEAD_BUCKETS);
        registry.register(
            "keygate_gateway_overhead_seconds",
            "Time from request to response head spent in the gateway itself, upstream excluded",
            overhead.clone(),
        );
        let upstream = Histogram::new(UPSTREAM_BUCKETS);
        registry.register(
            "keygate_upstream_duration_seconds",
            "Time from forwarding a request to the upstream's response head",
            upstream.clone(),
        );

        let store = register_store(&mut registry);
        let usage = UsageMetrics::register(&mut registry);
        let connections = ConnectionMetrics::register(&mut registry);
        let cache = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(CacheCollector {
            cache: cache.clone(),
        }));
        let targets = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(TargetCollector {
            board: targets.clone(),
        }));
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "keygate_config_reloads",
            "Config reloads by result: `ok`, or `invalid` (refused whole; the old config runs on)",
            reloads.clone(),
        );
        let webhook_deliveries = Family::<ResultLabels, Counter>::default();
        registry.register(
            "keygate_webhook_deliveries",
            "Webhook delivery attempts by result: `delivered`, `failed` (retried), `abandoned` (24 hours after the event), `dropped` (endpoint removed, or the event no longer applies)",
            webhook_deliveries.clone(),
        );
        for result in ["delivered", "failed", "abandoned", "dropped"] {
            drop(webhook_deliveries.get_or_create(&ResultLabels { result }));
        }
        let config = Family::<HashLabels, Gauge>::default();
        registry.register(
            "keygate_config_info",
            "1 for the config file running, by the BLAKE3 hash of its text (as /readyz shows it)",
            config.clone(),
        );

        Metrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                refusals,
                forwarded: (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect(),
                allowed: OnceLock::new(),
                overhead,
                upstream,
                store,
                usage,
                connections,
                cache,
                targets,
                rate_limit_local,
                reloads,
                webhook_deliveries,
                config,
            }),
        }
    }

    /// Exports the hit, miss and stale counters of `cache` (read at scrape time: nothing is
    /// added to a lookup). The first cache given is the one exported.
    pub fn observe_cache(&self, cache: Arc<KeyCache<Store>>) {
        let _ = self.inner.cache.set(cache);
    }

    /// Exports the requests, failures, ejections and state of every upstream target in
    /// `board` (read at scrape time). The first board given is the one exported.
    pub fn observe_targets(&self, board: Arc<crate::proxy::TargetBoard>) {
        let _ = self.inner.targets.set(board);
    }

    /// `keygate_rate_limit_local_total`, which the limits count into.
    pub fn rate_limit_local(&self) -> &Counter {
        &self.inner.rate_limit_local
    }

    /// Counts a webhook delivery attempt by its result.
    pub fn webhook_delivery(&self, result: crate::store::outbox::DeliveryResult) {
        use crate::store::outbox::DeliveryResult;
        let result = match result {
            DeliveryResult::Delivered => "delivered",
            DeliveryResult::Failed => "failed",
            DeliveryResult::Abandoned => "abandoned",
            DeliveryResult::Dropped => "dropped",
        };
        self.inner
            .webhook_deliveries
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a reload: `ok` or `invalid`.
    pub fn config_reloaded(&self, result: &'static str) {
        self.inner
            .reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Marks `hash` as the config running (and no other).
    pub fn config_running(&self, hash: &str) {
        self.inner.config.clear();
        self.inner
            .config
            .get_or_create(&HashLabels {
                hash: hash.to_owned(),
            })
            .set(1);
    }

    /// Counts a refused request (the response is the refusal's own status).
    pub fn request_refused(&self, reject: &Reject) {
        let series = &self.inner.refusals[refusal_index(reject)];
        series.requests.inc();
        if let Some(c) = &series.auth_failure {
            c.inc();
        }
        if let Some(c) = &series.limit {
            c.inc();
        }
    }

    /// Counts a forward-authentication request answered 200 (allowed).
    pub fn request_allowed(&self) {
        self.inner
            .allowed
            .get_or_init(|| {
                self.inner.requests.get_or_create_owned(&RequestLabels {
                    decision: "allowed",
                    status: 200,
                })
            })
            .inc();
    }

    /// Counts a request answered by the upstream with `status`.
    pub fn request_forwarded(&self, status: StatusCode) {
        let code = status.as_u16();
        let slot = usize::from(code.saturating_sub(STATUS_MIN));
        // StatusCode holds 100..=999, so the slot exists; the fallback only guards the invariant.
        match self.inner.forwarded.get(slot) {
            Some(cell) => cell.get_or_init(|| self.forwarded_series(code)).inc(),
            None => self.forwarded_series(code).inc(),
        };
    }

    fn forwarded_series(&self, status: u16) -> Counter {
        self.inner.requests.get_or_create_owned(&RequestLabels {
            decision: "forwarded",
            status,
        })
    }

    /// Records how long a request took in the gateway (`total` minus `upstream`) and upstream.
    pub fn request_timing(&self, total: Duration, upstream: Option<Duration>) {
        match upstream {
            Some(up) => {
                self.inner.overhead.observe(total.saturating_sub(up));
                self.inner.upstream.observe(up);
            }
            None => self.inner.overhead.observe(total),
        }
    }

    /// Store call timing.
    pub fn store(&self) -> &StoreMetrics {
        &self.inner.store
    }

    /// Usage recorder and flusher counters.
    pub fn usage(&self) -> &UsageMetrics {
        &self.inner.usage
    }

    /// Client connection counters of a listener.
    pub fn connections(&self, listener: Listener) -> &ConnectionMetrics {
        &self.inner.connections[listener as usize]
    }

    /// The exposition: OpenMetrics text when `openmetrics`, else the classic Prometheus text
    /// format. Returns the body and its `Content-Type`.
    pub fn render(&self, openmetrics: bool) -> (String, &'static str) {
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail; the encoders only forward fmt::Error.
        if prometheus_client::encoding::text::encode(&mut text, &self.inner.registry).is_err() {
            tracing::error!("metrics could not be encoded");
        }
        if openmetrics {
            (text, OPENMETRICS_TEXT)
        } else {
            (to_prometheus_text(&text), PROMETHEUS_TEXT)
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Whether an `Accept` header asks for OpenMetrics (Prometheus does, first).
pub fn wants_openmetrics(accept: Option<&http::HeaderValue>) -> bool {
    accept
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"))
}

/// OpenMetrics text → classic Prometheus text (0.0.4): a counter family `x` is declared as
/// `x_total` (the name its samples carry), and `# UNIT` and `# EOF` lines go.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let declared = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(&name).then_some((*tag, name, tail))
        });
        match declared {
            Some((tag, name, tail)) => {
                let _ = writeln!(out, "{tag}{name}_total {tail}");
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Registers the store's instruments ([`StoreMetrics`], owned by the store) as
/// `keygate_store_duration_seconds` and `keygate_store_errors_total`, by `op`.
fn register_store(registry: &mut Registry) -> StoreMetrics {
    let durations =
        Family::<OpLabels, Histogram, _>::new_with_constructor(|| Histogram::new(STORE_BUCKETS));
    registry.register(
        "keygate_store_duration_seconds",
        "Store calls of the data plane and the usage flusher, by operation",
        durations.clone(),
    );
    let errors = Family::<OpLabels, Counter>::default();
    registry.register(
        "keygate_store_errors",
        "Store calls that failed (timeout, unreachable, refused), by operation",
        errors.clone(),
    );
    let labels = |op: StoreOp| OpLabels { op: op.label() };
    StoreMetrics::new(
        StoreOp::ALL.map(|op| durations.get_or_create_owned(&labels(op))),
        StoreOp::ALL.map(|op| errors.get_or_create_owned(&labels(op))),
    )
}

/// Why a use was not counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageDrop {
    /// The queue to the flusher was full.
    QueueFull,
    /// The flusher had stopped (after shutdown).
    QueueClosed,
    /// The flusher already buffered `usage.max_pending_keys` other keys.
    TooManyKeys,
}

/// The client-facing listeners, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The data plane.
    Proxy = 0,
    /// The admin API.
    Admin = 1,
    /// Forward authentication (`listen.authz`).
    Authz = 2,
}

impl Listener {
    /// The label value (and the name in logs).
    pub fn name(self) -> &'static str {
        match self {
            Listener::Proxy => "proxy",
            Listener::Admin => "admin",
            Listener::Authz => "authz",
        }
    }
}

/// Client connection counters of one listener.
#[derive(Clone, Debug, Default)]
pub struct ConnectionMetrics {
    /// Connections open now (TLS handshakes included).
    pub open: Gauge,
    /// Connections closed at accept because `limits.max_connections` were open.
    pub refused: Counter,
    /// Connections closed because no request head was complete within
    /// `limits.header_read_timeout` of accept.
    pub timed_out: Counter,
}

impl ConnectionMetrics {
    fn register(registry: &mut Registry) -> [ConnectionMetrics; 3] {
        let open = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "keygate_connections_open",
            "Client connections open now, by listener",
            open.clone(),
        );
        let refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "keygate_connections_refused",
            "Client connections closed at accept because limits.max_connections were open",
            refused.clone(),
        );
        let timed_out = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "keygate_connections_timed_out",
            "Client connections closed without a first request head within limits.header_read_timeout of accept",
            timed_out.clone(),
        );
        [Listener::Proxy, Listener::Admin, Listener::Authz].map(|l| {
            let labels = ListenerLabels { listener: l.name() };
            ConnectionMetrics {
                open: open.get_or_create_owned(&labels),
                refused: refused.get_or_create_owned(&labels),
                timed_out: timed_out.get_or_create_owned(&labels),
            }
        })
    }
}

/// Counters of the usage recorder and flusher.
#[derive(Clone, Debug)]
pub struct UsageMetrics {
    dropped: [Counter; 3],
    /// Requests added to `usage_count` in the store.
    pub written: Counter,
    /// Flushes that failed and will be retried.
    pub flush_failures: Counter,
    /// Keys with usage not yet written (buffered or being written).
    pub pending_keys: Gauge,
    /// Uses queued for the flusher, as of its last look.
    pub queue_depth: Gauge,
    /// Request-log entries dropped to keep the flusher's buffer bounded.
    pub log_entries_dropped: Counter,
}

impl UsageMetrics {
    fn register(registry: &mut Registry) -> UsageMetrics {
        let dropped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "keygate_usage_dropped",
            "Uses of a key that were not counted: queue_full, queue_closed or too_many_keys",
            dropped.clone(),
        );
        let reason = |reason| ReasonLabels { reason };
        let m = UsageMetrics {
            dropped: [
                dropped.get_or_create_owned(&reason("queue_full")),
                dropped.get_or_create_owned(&reason("queue_closed")),
                dropped.get_or_create_owned(&reason("too_many_keys")),
            ],
            written: Counter::default(),
            flush_failures: Counter::default(),
            pending_keys: Gauge::default(),
            queue_depth: Gauge::default(),
            log_entries_dropped: Counter::default(),
        };
        registry.register(
            "keygate_usage_written",
            "Uses of keys written to the store's usage counts",
            m.written.clone(),
        );
        registry.register(
            "keygate_usage_flush_failures",
            "Usage flushes that failed; what they held is kept and retried",
            m.flush_failures.clone(),
        );
        registry.register(
            "keygate_usage_pending_keys",
            "Keys whose usage is buffered or being written, not yet stored",
            m.pending_keys.clone(),
        );
        registry.register(
            "keygate_usage_queue_depth",
            "Uses queued between the request path and the flusher",
            m.queue_depth.clone(),
        );
        registry.register(
            "keygate_request_log_entries_dropped",
            "Request-log entries dropped to keep the flusher's buffer bounded",
            m.log_entries_dropped.clone(),
        );
        m
    }

    /// Counts a use that was not counted.
    pub fn dropped(&self, why: UsageDrop) {
        self.dropped[why as usize].inc();
    }

    /// Uses dropped for `why` so far.
    pub fn dropped_count(&self, why: UsageDrop) -> u64 {
        self.dropped[why as usize].get()
    }
}

impl Default for UsageMetrics {
    /// Handles that no registry exports.
    fn default() -> Self {
        UsageMetrics::register(&mut Registry::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_its_own_slot() {
        for (i, reject) in all_refusals().iter().enumerate() {
            assert_eq!(refusal_index(reject), i, "{reject:?}");
        }
    }

    #[test]
    fn text_formats() {
        let m = Metrics::new();
        m.request_refused(&Reject::InvalidKey("x"));
        m.request_refused(&Reject::RateLimited(1));
        m.request_forwarded(StatusCode::OK);
        m.request_forwarded(StatusCode::OK);
        m.request_timing(Duration::from_millis(3), Some(Duration::from_millis(2)));
        m.usage().dropped(UsageDrop::QueueFull);

        let (text, content_type) = m.render(false);
        assert_eq!(content_type, PROMETHEUS_TEXT);
        for line in [
            "# TYPE keygate_requests_total counter",
            "keygate_requests_total{decision=\"forwarded\",status=\"200\"} 2",
            "keygate_requests_total{decision=\"invalid_key\",status=\"401\"} 1",
            "keygate_requests_total{decision=\"key_revoked\",status=\"401\"} 0",
            "keygate_auth_failures_total{reason=\"invalid_key\"} 1",
            "keygate_rate_limited_total 1",
            "keygate_quota_exceeded_total 0",
            "keygate_gateway_overhead_seconds_count 1",
            "keygate_upstream_duration_seconds_bucket{le=\"0.0025\"} 1",
            "keygate_usage_dropped_total{reason=\"queue_full\"} 1",
            "keygate_store_errors_total{op=\"write_usage\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert!(!text.contains("# EOF"));
        assert!(!text.contains("auth_failures_total{reason=\"rate_limited\"}"));

        let (text, content_type) = m.render(true);
        assert_eq!(content_type, OPENMETRICS_TEXT);
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("# TYPE keygate_requests counter\n"));
    }
}
