//! Rate limits, quotas and the failed-authentication limit: which limit a request counts
//! against, the order the checks run in, and the headers that report them. The proxy calls
//! [`Limits::admit`] after the scope check and applies the [`LimitHeaders`] it returns; it
//! calls [`Limits::check_failures`] before a key lookup and [`Limits::record_failure`] when
//! authentication fails.
//!
//! - [`gcra`]: the algorithm and this instance's buckets (`rate_limits.mode: local`, the
//!   failure limit, and the fallback of `mode: redis`);
//! - [`redis`]: the global buckets of `mode: redis`;
//! - [`quota`]: quota periods and counts;
//! - [`clock`]: the injectable clocks.
//!
//! # Which limit
//!
//! Most specific first: the key's `rate_limit`, else the route's, else its workspace's
//! default `rate_limit`, else `rate_limits.roles` of the key's role, else
//! `rate_limits.default`; none means no limit and no `RateLimit-*` headers. A quota likewise:
//! the key's, else its workspace's, else its role's (`quotas.roles`). A key's own, workspace,
//! role and default limits share one bucket per key, so moving a key between them keeps its
//! state; a route's own limit has a bucket per key and route, so that a
//! tight limit on one route is not spent by the key's traffic elsewhere (and does not refuse
//! it). In `mode: local` each instance limits on its own (N instances allow N times the rate);
//! `mode: redis` is one limit for all.
//!
//! # Failed authentications
//!
//! `auth.failure_limit` is a GCRA per client IP (IPv6 by /64) that counts `invalid_key`
//! (malformed or unknown secret), `key_revoked` and `key_expired`: the answers a guesser
//! learns from. `missing_key` and `conflicting_credentials` guess nothing and are not counted,
//! nor are 403s of a valid key. Over the limit, a request with a credential is refused with
//! 429 `rate_limited` before the secret is looked at, so guessing costs no cache or store work.
//! A success does not reset the count: an attacker holding one valid key could otherwise
//! interleave it to guess forever. The count is per instance, also in `mode: redis` (a Redis
//! call per failure would hand guessers the store round trips this limit exists to save).

pub mod clock;
pub mod gcra;
pub mod quota;
pub mod redis;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;

use self::clock::{Clock, SystemClock};
use self::gcra::{Buckets, Gcra, RateState, Subject};
use self::quota::Quotas;
use self::redis::RedisLimiter;
use crate::config::{Config, QuotaSpec, RateLimitMode, RateLimitSpec};
use crate::error::Reject;
use crate::header_values;
use crate::route::CompiledRoute;
use crate::store::Store;
use crate::store::cached::CachedKey;
use crate::workspaces::Directory;

/// `RateLimit-Limit`: the size of the bucket that applies (its `burst`, by default its
/// `requests`): the most requests that pass at once, never below `RateLimit-Remaining`.
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Policy`: `<limit>;w=<seconds an empty bucket takes to fill>`, the draft IETF
/// RateLimit fields' quota policy (e.g. `200;w=2` for 100 per second with a burst of 200).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit-Remaining`: requests that would pass right now.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`: seconds until the bucket is full again.
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// `X-Keygate-Quota-Remaining`: units of the key's quota left in the period.
pub const X_KEYGATE_QUOTA_REMAINING: HeaderName =
    HeaderName::from_static("x-keygate-quota-remaining");

/// Client IPs whose failed authentications are tracked at once. When full, moka evicts rarely
/// seen addresses; an attacker spread over more addresses than this gets a fresh count for some.
pub const FAILURE_SUBJECTS_MAX: u64 = 100_000;

/// What the `RateLimit-*` headers say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateHeaders {
    /// `RateLimit-Limit`.
    pub limit: u32,
    /// `RateLimit-Remaining`.
    pub remaining: u64,
    /// `RateLimit-Reset`, seconds.
    pub reset: u64,
    /// `w` of `RateLimit-Policy`, seconds.
    pub window: u64,
}

impl From<&RateState> for RateHeaders {
    fn from(s: &RateState) -> Self {
        RateHeaders {
            limit: s.limit,
            remaining: s.remaining,
            reset: s.reset_secs(),
            window: s.window_secs(),
        }
    }
}

/// The limit headers of a response: set once the key is authenticated, empty otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitHeaders {
    /// `RateLimit-*`, when a rate limit applies.
    pub rate: Option<RateHeaders>,
    /// `X-Keygate-Quota-Remaining`, when the key has a quota.
    pub quota_remaining: Option<u64>,
}

impl LimitHeaders {
    /// Sets the headers on a response (replacing any the upstream sent under these names).
    /// Integers become header values without formatting through a `String`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(rate) = self.rate {
            let (limit, policy) = limit_and_policy(rate.limit, rate.window);
            headers.insert(RATELIMIT_LIMIT, limit);
            headers.insert(RATELIMIT_REMAINING, header_values::integer(rate.remaining));
            headers.insert(RATELIMIT_RESET, header_values::integer(rate.reset));
            headers.insert(RATELIMIT_POLICY, policy);
        }
        if let Some(remaining) = self.quota_remaining {
            headers.insert(X_KEYGATE_QUOTA_REMAINING, header_values::integer(remaining));
        }
    }
}

/// `RateLimit-Limit` and `RateLimit-Policy` of a limit: the same on nearly every response, so
/// each thread keeps the last pair and clones it (a reference count) rather than formatting both
/// per response.
fn limit_and_policy(limit: u32, window: u64) -> (HeaderValue, HeaderValue) {
    thread_local! {
        static LAST: RefCell<Option<(u32, u64, HeaderValue, HeaderValue)>> =
            const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((l, w, limit_value, policy)) if *l == limit && *w == window => {
            (limit_value.clone(), policy.clone())
        }
        _ => {
            let pair = (
                header_values::integer(limit.into()),
                policy_value(limit, window),
            );
            *last = Some((limit, window, pair.0.clone(), pair.1.clone()));
            pair
        }
    })
}

/// `<limit>;w=<window>`, written into the shared header buffer (no `String` per response).
fn policy_value(limit: u32, window: u64) -> HeaderValue {
    header_values::build(|buf| {
        use std::fmt::Write as _;
        write!(buf, "{limit};w={window}").expect("a BytesMut grows as needed");
    })
    .expect("digits, ';' and '=' are a valid header value")
}

/// The limits of one configuration, over state that outlives it: a reload builds new limits
/// with [`Limits::reconfigured`], and buckets and quota counts carry on.
pub struct Limits {
    default: Option<Gcra>,
    roles: HashMap<String, Gcra>,
    role_quotas: HashMap<String, QuotaSpec>,
    failure_limit: Option<Gcra>,
    /// The config's workspaces and their defaults; they shadow stored ones of the same name.
    config_workspaces: HashMap<String, (Option<RateLimitSpec>, Option<QuotaSpec>)>,
    /// Whether any of them has a default.
    config_defaults: bool,
    state: Arc<LimitState>,
}

/// What counts across configurations: buckets, quota counts, the global limiter.
struct LimitState {
    clock: Arc<dyn Clock>,
    local: Buckets,
    global: Option<RedisLimiter>,
    /// Instances enforcing the global limits (never read as less than 1), as the last fleet
    /// heartbeat that got through counted them ([`crate::store::fleet::Fleet::share_count`]):
    /// what a check decided here shares by. Not the fleet's count of the moment, which is 1
    /// while this instance is cut off, when the others are still serving.
    live_instances: Arc<AtomicUsize>,
    /// `keygate_rate_limit_local_total`, once the metrics are attached.
    local_checks: OnceLock<Counter>,
    failures: Buckets,
    quotas: Quotas,
    workspaces: Arc<Directory>,
}

impl Limits {
    /// The limits of a validated config over its store, on the system clock, with the
    /// workspace defaults of `workspaces`; `live_instances` is the number of instances sharing
    /// the global limits (see the module docs).
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        workspaces: Arc<Directory>,
        live_instances: Arc<AtomicUsize>,
    ) -> Limits {
        Limits::with_clock(
            config,
            store,
            workspaces,
            live_instances,
            Arc::new(SystemClock::new()),
        )
    }

    /// The same on a given clock (tests pass a [`clock::FakeClock`]). The clock drives the
    /// local buckets and quota periods; `mode: redis` buckets run on the Redis server's clock.
    pub fn with_clock(
        config: &Config,
        store: Arc<Store>,
        workspaces: Arc<Directory>,
        live_instances: Arc<AtomicUsize>,
        clock: Arc<dyn Clock>,
    ) -> Limits {
        let global = match (config.rate_limits.mode, &*store) {
            (RateLimitMode::Redis, Store::Redis(redis)) => Some(RedisLimiter::new(redis)),
            // `validate` refuses `mode: redis` without the Redis store.
            _ => None,
        };
        let state = LimitState {
            // One bucket per key in use (and per key and limited route): the key cache's
            // capacity bounds the keys in use.
            local: Buckets::new(config.cache.capacity),
            global,
            live_instances,
            local_checks: OnceLock::new(),
            failures: Buckets::new(FAILURE_SUBJECTS_MAX),
            quotas: Quotas::new(store, clock.clone(), config.cache.max_stale.is_zero()),
            clock,
            workspaces,
        };
        Limits::policy(config, Arc::new(state))
    }

    /// The limits of `config` over this one's buckets and counts (a reload). `rate_limits.mode`
    /// and the cache settings are not reloadable: they stay as this state was built.
    pub fn reconfigured(&self, config: &Config) -> Limits {
        Limits::policy(config, self.state.clone())
    }

    fn policy(config: &Config, state: Arc<LimitState>) -> Limits {
        Limits {
            default: config.rate_limits.default.as_ref().map(Gcra::new),
            roles: config
                .rate_limits
                .roles
                .iter()
                .map(|(role, spec)| (role.clone(), Gcra::new(spec)))
                .collect(),
            role_quotas: config
                .quotas
                .roles
                .iter()
                .map(|(role, spec)| (role.clone(), *spec))
                .collect(),
            failure_limit: config.auth.failure_limit.as_ref().map(Gcra::new),
            config_workspaces: config
                .workspaces
                .iter()
                .map(|(name, w)| (name.clone(), (w.rate_limit, w.quota)))
                .collect(),
            config_defaults: config
                .workspaces
                .values()
                .any(|w| w.rate_limit.is_some() || w.quota.is_some()),
            state,
        }
    }

    /// The default rate limit and quota of a workspace's keys: the config's workspace if it
    /// has one of that name, else the stored one's.
    /// On the request path: without defaults anywhere (the usual case) it hashes nothing.
    fn workspace_defaults(&self, ws: &str) -> (Option<RateLimitSpec>, Option<QuotaSpec>) {
        if !self.config_defaults && !self.state.workspaces.any_defaults() {
            return (None, None);
        }
        if let Some(defaults) = self.config_workspaces.get(ws) {
            return *defaults;
        }
        self.state.workspaces.defaults(ws)
    }

    /// Counts the checks of `mode: redis` decided on this instance in `counter` (the first
    /// counter given is the one used).
    pub fn count_local_checks(&self, counter: Counter) {
        let _ = self.state.local_checks.set(counter);
    }

    /// The number of instances sharing the global limits, as this instance sees it (the handle
    /// the fleet's heartbeats keep up to date).
    pub fn live_instances(&self) -> &Arc<AtomicUsize> {
        &self.state.live_instances
    }

    /// The quota counts (for tests and metrics).
    pub fn quotas(&self) -> &Quotas {
        &self.state.quotas
    }

    /// The rate limit of a request and its bucket's route (`Some` for a route's own limit).
    pub fn resolve(&self, key: &CachedKey, route: &CompiledRoute) -> Option<(Gcra, Option<usize>)> {
        if let Some(spec) = key.rate_limit() {
            return Some((Gcra::new(spec), None));
        }
        if let Some(spec) = &route.rate_limit {
            return Some((Gcra::new(spec), Some(route.index)));
        }
        if let (Some(spec), _) = self.workspace_defaults(key.workspace()) {
            return Some((Gcra::new(&spec), None));
        }
        key.role()
            .and_then(|role| self.roles.get(role))
            .or(self.default.as_ref())
            .map(|gcra| (*gcra, None))
    }

    /// The key's quota: its own, else its workspace's, else its role's.
    pub fn quota_of(&self, key: &CachedKey) -> Option<QuotaSpec> {
        key.quota()
            .or_else(|| self.workspace_defaults(key.workspace()).1)
            .or_else(|| {
                key.role()
                    .and_then(|role| self.role_quotas.get(role).copied())
            })
    }

    /// The limit stage, after the scope check: the rate limit, then the quota (so a request the
    /// rate limit refuses spends no quota). The headers come back either way.
    pub async fn admit(
        &self,
        key: &CachedKey,
        route: &CompiledRoute,
    ) -> Result<LimitHeaders, (Reject, LimitHeaders)> {
        let mut headers = LimitHeaders::default();
        let quota = self.quota_of(key);
        if let Some((gcra, route)) = self.resolve(key, route) {
            let state = self.rate(key, &gcra, route, false).await;
            headers.rate = Some(RateHeaders::from(&state));
            if !state.allowed {
                // The count this instance last saw: a refused request costs no store call.
                headers.quota_remaining = quota.and_then(|q| self.state.quotas.known(key.id(), &q));
                return Err((Reject::RateLimited(state.retry_after_secs()), headers));
            }
        }
        if let Some(q) = quota {
            match self.state.quotas.spend(key.id(), &q).await {
                Ok(outcome) => headers.quota_remaining = Some(outcome.remaining),
                Err(reject) => {
                    if matches!(reject, Reject::QuotaExceeded(_)) {
                        headers.quota_remaining = Some(0);
                    }
                    return Err((reject, headers));
                }
            }
        }
        Ok(headers)
    }

    /// The headers of an authenticated request refused before the limit stage (IP allowlist,
    /// scopes): the limits as they stand, counting nothing.
    pub async fn peek(&self, key: &CachedKey, route: &CompiledRoute) -> LimitHeaders {
        let rate = match self.resolve(key, route) {
            Some((gcra, route)) => {
                Some(RateHeaders::from(&self.rate(key, &gcra, route, true).await))
            }
            None => None,
        };
        let quota_remaining = match self.quota_of(key) {
            Some(q) => self.state.quotas.remaining(key.id(), &q).await,
            None => None,
        };
        LimitHeaders {
            rate,
            quota_remaining,
        }
    }

    /// One check of a key's bucket: in Redis for `mode: redis` when it answers, else here on
    /// this instance's share of the limit (see the module docs).
    async fn rate(
        &self,
        key: &CachedKey,
        gcra: &Gcra,
        route: Option<usize>,
        peek: bool,
    ) -> RateState {
        let state = &self.state;
        let mut local = *gcra;
        if let Some(global) = &state.global {
            match global.check(key.id(), route, gcra, peek).await {
                Ok(rate) => return rate,
                Err(e) => {
                    // The breaker logs outages; a failure of its own is this check's alone.
                    tracing::debug!(error = %e, "rate limit decided on this instance");
                    if !peek && let Some(counter) = state.local_checks.get() {
                        counter.inc();
                    }
                    local = gcra.share(state.live_instances.load(Ordering::Relaxed));
                }
            }
        }
        let subject = Subject::key(key.id(), route);
        let now = state.clock.now();
        if peek {
            state.local.peek(&subject, &local, now)
        } else {
            state.local.check(subject, &local, now)
        }
    }

    /// Refuses a credential check from a client over its failed-authentication limit; runs
    /// before the secret is looked at. Counts nothing.
    pub fn check_failures(&self, ip: IpAddr) -> Result<(), Reject> {
        let Some(gcra) = &self.failure_limit else {
            return Ok(());
        };
        let state = self
            .state
            .failures
            .peek(&Subject::ip(ip), gcra, self.state.clock.now());
        if state.allowed {
            Ok(())
        } else {
            Err(Reject::RateLimited(state.retry_after_secs()))
        }
    }

    /// Counts a failed authentication of a client, if `reject` is one that counts (see the
    /// module docs). Returns `reject` for use in `map_err`.
    pub fn record_failure(&self, ip: IpAddr, reject: Reject) -> Reject {
        if let Some(gcra) = &self.failure_limit
            && matches!(
                reject,
                Reject::InvalidKey(_) | Reject::KeyRevoked | Reject::KeyExpired
            )
        {
            self.state
                .failures
                .check(Subject::ip(ip), gcra, self.state.clock.now());
        }
        reject
    }

    /// Writes quota units counted in memory to the store (see [`quota`]).
    pub async fn flush(&self) {
        // Failures are logged by the quota counts themselves; the units stay pending.
        let _ = self.state.quotas.flush().await;
    }

    /// Writes quota counts every `interval` until `stop` completes, then once more. Run it
    /// while serving and stop it after the drain, so the last requests' units are written too.
    pub async fn persist(self: Arc<Self>, interval: Duration, stop: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush().await,
                () = &mut stop => break,
            }
        }
        self.flush().await;
    }
}
