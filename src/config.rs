//! The YAML configuration: this file owns its schema, the typed [`Config`] with every section
//! and default. Around it:
//!
//! - [`load`](Config::load): file → YAML → `${VAR}` substitution (`env`) → typed structs that
//!   refuse unknown fields → [`Config::validate`] (`validate`), which collects every semantic
//!   problem before failing;
//! - [`Problem`] and [`ConfigError`]: what is wrong, with field paths and lines;
//! - [`duration_text`] and [`ip_list`]: the value syntaxes the file shares with the admin API;
//! - `limits`: the `limits:` section.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method, Uri};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

pub mod duration_text;
mod env;
pub mod ip_list;
pub mod leaks;
mod limits;
mod load;
mod problems;
mod routing;
#[cfg(test)]
mod tests;
mod types;
mod upstreams;
mod validate;
mod warnings;
pub mod webhooks;

pub use limits::{
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, Limits, MAX_HEADER_READ_TIMEOUT,
};
pub use problems::{ConfigError, Problem};
pub use routing::{Forward, IdentityHeaders, Route, RouteMatch};
pub use upstreams::{ClientTls, HealthCheck, PassiveHealth, Protocol, Upstream};
pub use validate::{
    MAX_SHUTDOWN_DELAY, WORKSPACE_NAME_RULE, check_quota, check_rate_limit, check_scope,
    is_workspace_name,
};
pub use warnings::STRONG_SECRET_BYTES;

/// Default proxy listener.
pub const DEFAULT_PROXY_ADDR: &str = "0.0.0.0:8080";
/// Default admin listener: loopback only, the admin API must be exposed on purpose.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9901";
/// Default redb file of the embedded store.
pub const DEFAULT_EMBEDDED_PATH: &str = "./data/keygate.redb";
/// Default per-call Redis timeout.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// Default hot-cache capacity, in keys.
pub const DEFAULT_CACHE_CAPACITY: u64 = 1_000_000;
/// Default time a cached record is trusted without asking the store again.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// Default time an unknown hash is remembered as unknown.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Default time a cached record keeps working while the store is unreachable.
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(300);
/// Default upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time an upstream has to send its response head.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Default lifetime of an idle pooled upstream connection.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default drain time on shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default usage flush interval.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Default request-log length per key.
pub const DEFAULT_REQUEST_LOG_MAX: usize = 1000;
/// Default capacity of the queue from the request path to the usage flusher, in requests. The
/// flusher drains it continuously (store writes run beside the draining), so it only has to
/// absorb scheduling hiccups: about a second of traffic at 64k requests/s, ~7 MiB when full.
pub const DEFAULT_USAGE_QUEUE_CAPACITY: NonZeroUsize = NonZeroUsize::new(65_536).expect("not 0");
/// Default number of distinct keys whose usage the flusher holds while the store is unreachable.
pub const DEFAULT_USAGE_MAX_PENDING_KEYS: NonZeroUsize = NonZeroUsize::new(100_000).expect("not 0");
/// Default `max_active_keys` of a workspace.
pub const DEFAULT_MAX_ACTIVE_KEYS: u32 = 5;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener addresses.
    #[serde(default)]
    pub listen: Listen,
    /// TLS termination on the proxy listener.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// TLS on the admin listener (admin API, dashboard, probes), for reaching it across a
    /// network without a tunnel.
    #[serde(default)]
    pub admin_tls: Option<TlsFiles>,
    /// Key index backend.
    #[serde(default)]
    pub store: StoreConfig,
    /// Secret material.
    pub secrets: Secrets,
    /// Secret format of issued keys.
    #[serde(default)]
    pub keys: KeyFormat,
    /// Credential extraction and failed-authentication limit.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Hot cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Peers whose `X-Forwarded-For` is believed.
    #[serde(default, with = "ip_list")]
    pub trusted_proxies: Vec<IpNet>,
    /// Optional scope catalogue: scope → the label people see (dashboard, CLI). When present,
    /// roles, routes and keys may name only scopes in it (besides `*` and the admin
    /// permissions).
    #[serde(default)]
    pub scopes: BTreeMap<String, String>,
    /// Named scope sets.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// Workspaces and their limits.
    #[serde(default)]
    pub workspaces: BTreeMap<String, Workspace>,
    /// Rate limits.
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// Quotas of keys that have none of their own.
    #[serde(default)]
    pub quotas: Quotas,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Upstream>,
    /// Routes, first match wins.
    pub routes: Vec<Route>,
    /// What is added to and removed from forwarded requests.
    #[serde(default)]
    pub forward: Forward,
    /// Usage recording.
    #[serde(default)]
    pub usage: Usage,
    /// Admin API callers.
    #[serde(default)]
    pub admin: Admin,
    /// Client connection limits.
    #[serde(default)]
    pub limits: Limits,
    /// How long in-flight requests may drain on shutdown.
    #[serde(default = "d_shutdown", with = "duration_text")]
    pub shutdown_timeout: Duration,
    /// How long the proxy keeps serving after SIGTERM with `/readyz` answering 503, before its
    /// listeners close: the time load balancers need to stop sending.
    #[serde(default, with = "duration_text")]
    pub shutdown_delay: Duration,
    /// Logging.
    #[serde(default)]
    pub log: Log,
    /// Webhook endpoints.
    #[serde(default)]
    pub webhooks: Vec<webhooks::Webhook>,
    /// Leaked-key reports.
    #[serde(default)]
    pub leaks: leaks::Leaks,
}

/// Listener addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Data plane.
    #[serde(default = "d_proxy_addr")]
    pub proxy: SocketAddr,
    /// Admin API, dashboard, metrics and health.
    #[serde(default = "d_admin_addr")]
    pub admin: SocketAddr,
    /// Forward authentication for an ingress (`auth_request`, `ext_authz`, `forwardAuth`):
    /// off unless set.
    #[serde(default)]
    pub authz: Option<SocketAddr>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            proxy: d_proxy_addr(),
            admin: d_admin_addr(),
            authz: None,
        }
    }
}

/// Certificate chain and private key, PEM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Which key index to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One local redb file.
    #[default]
    Embedded,
    /// Redis, shared by many instances.
    Redis,
}

/// `store:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Backend.
    #[serde(default)]
    pub backend: Backend,
    /// Embedded store settings.
    #[serde(default)]
    pub embedded: EmbeddedConfig,
    /// Redis settings.
    #[serde(default)]
    pub redis: RedisConfig,
}

/// `store.embedded`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// redb file; created if missing.
    #[serde(default = "d_embedded_path")]
    pub path: PathBuf,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            path: d_embedded_path(),
        }
    }
}

/// `store.redis`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Standalone server URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Redis Cluster seed URLs (instead of `url`).
    #[serde(default)]
    pub cluster: Vec<String>,
    /// Prefix of every key keygate writes.
    #[serde(default = "d_key_prefix")]
    pub key_prefix: String,
    /// Per-call timeout.
    #[serde(default = "d_redis_timeout", with = "duration_text")]
    pub timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            cluster: Vec::new(),
            key_prefix: d_key_prefix(),
            timeout: d_redis_timeout(),
        }
    }
}

/// `secrets:`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// Hashing key material for stored secrets. Never logged.
    pub pepper: String,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets { pepper: <redacted> }")
    }
}

/// `keys:`: the secret format of issued keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFormat {
    /// First part, e.g. `kg`.
    #[serde(default = "d_key_prefix_short")]
    pub prefix: String,
    /// Second part, e.g. `live`.
    #[serde(default = "d_environment")]
    pub environment: String,
}

impl Default for KeyFormat {
    fn default() -> Self {
        KeyFormat {
            prefix: d_key_prefix_short(),
            environment: d_environment(),
        }
    }
}

/// `auth:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Headers carrying a bare secret, besides `Authorization`.
    #[serde(default, deserialize_with = "header_names")]
    pub extra_headers: Vec<HeaderName>,
    /// Query parameter carrying a secret; off when absent.
    #[serde(default)]
    pub query_param: Option<String>,
    /// Failed authentications allowed per client IP.
    #[serde(default)]
    pub failure_limit: Option<RateLimitSpec>,
}

/// `cache:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Maximum cached keys.
    #[serde(default = "d_capacity")]
    pub capacity: u64,
    /// How long a cached record is used without asking the store.
    #[serde(default = "d_ttl", with = "duration_text")]
    pub ttl: Duration,
    /// How long an unknown hash stays known as unknown.
    #[serde(default = "d_negative_ttl", with = "duration_text")]
    pub negative_ttl: Duration,
    /// How long past `ttl` a cached record keeps working while the store is unreachable
    /// (0 = fail closed).
    #[serde(default = "d_max_stale", with = "duration_text")]
    pub max_stale: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: d_capacity(),
            ttl: d_ttl(),
            negative_ttl: d_negative_ttl(),
            max_stale: d_max_stale(),
        }
    }
}

/// A workspace's plan and defaults: an entry of `workspaces:`, or the settings of a workspace
/// created through the admin API (`crate::workspaces`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workspace {
    /// Whether keys may be created (false → `upgrade_required`).
    #[serde(default = "d_true")]
    pub api_access: bool,
    /// Active keys allowed at once.
    #[serde(default = "d_max_active")]
    pub max_active_keys: u32,
    /// Rate limit of its keys that have none of their own and whose route sets none; before
    /// the role's and the default (`crate::limits`).
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    /// Quota of its keys that have none of their own; before the role's.
    #[serde(default)]
    pub quota: Option<QuotaSpec>,
    /// Free-form data for the operator (plan name, customer id, …).
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace {
            api_access: true,
            max_active_keys: DEFAULT_MAX_ACTIVE_KEYS,
            rate_limit: None,
            quota: None,
            metadata: serde_json::Map::new(),
        }
    }
}

/// `rate_limits.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitMode {
    /// Each instance limits on its own.
    #[default]
    Local,
    /// One global limit across instances, kept in Redis.
    Redis,
}

/// `rate_limits:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// Where limits are kept.
    #[serde(default)]
    pub mode: RateLimitMode,
    /// Limit of keys with no more specific one.
    #[serde(default)]
    pub default: Option<RateLimitSpec>,
    /// Limits by role.
    #[serde(default)]
    pub roles: BTreeMap<String, RateLimitSpec>,
}

/// `quotas:`: quotas by role, for keys without a `quota` of their own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Quota of the keys of a role.
    #[serde(default)]
    pub roles: BTreeMap<String, QuotaSpec>,
}

/// A GCRA limit: `requests` per `period`, with up to `burst` at once (default `requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Requests per period.
    pub requests: NonZeroU32,
    /// The period.
    #[serde(with = "duration_text")]
    pub period: Duration,
    /// Bucket size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<NonZeroU32>,
}

/// When a quota refills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Refill {
    /// Never.
    None,
    /// Every day at 00:00 UTC.
    Daily,
    /// Every month on `refill_day`.
    Monthly,
}

/// A usage allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    /// Requests allowed per refill period.
    pub limit: u64,
    /// Refill schedule.
    pub refill: Refill,
    /// Day of month for monthly refills (1–28).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill_day: Option<u8>,
}

/// `usage:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// Batch interval of usage writes.
    #[serde(default = "d_flush", with = "duration_text")]
    pub flush_interval: Duration,
    /// Request logs.
    #[serde(default)]
    pub request_log: RequestLog,
    /// Requests the request path may queue for the flusher; a use that finds the queue full is
    /// dropped and counted in `keygate_usage_dropped_total{reason="queue_full"}`.
    #[serde(default = "d_usage_queue")]
    pub queue_capacity: NonZeroUsize,
    /// Distinct keys whose usage the flusher buffers (while the store is unreachable, say); uses
    /// of further keys are dropped and counted (`reason="too_many_keys"`).
    #[serde(default = "d_usage_max_pending_keys")]
    pub max_pending_keys: NonZeroUsize,
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            flush_interval: d_flush(),
            request_log: RequestLog::default(),
            queue_capacity: d_usage_queue(),
            max_pending_keys: d_usage_max_pending_keys(),
        }
    }
}

/// `usage.request_log`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLog {
    /// Entries kept per key.
    #[serde(default = "d_request_log_max")]
    pub max_per_key: usize,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            max_per_key: d_request_log_max(),
        }
    }
}

/// `admin:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Static admin tokens.
    #[serde(default)]
    pub tokens: Vec<AdminToken>,
}

/// An admin token.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Who the token is, for the audit log.
    pub name: String,
    /// The bearer token. Never logged.
    pub token: String,
    /// `api.key.view|create|update|delete`.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Workspaces it may act on (`*` = all).
    #[serde(default)]
    pub workspaces: Vec<String>,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("permissions", &self.permissions)
            .field("workspaces", &self.workspaces)
            .finish()
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable.
    Text,
}

/// `log:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// Output format.
    #[serde(default)]
    pub format: LogFormat,
    /// `tracing` filter, e.g. `info` or `keygate=debug`.
    #[serde(default = "d_log_level")]
    pub level: String,
    /// One access-log line per request.
    #[serde(default = "d_true")]
    pub access: bool,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::default(),
            level: d_log_level(),
            access: true,
        }
    }
}

/// Permissions an admin caller may hold.
pub const PERMISSIONS: [&str; 7] = [
    "api.key.view",
    "api.key.create",
    "api.key.update",
    "api.key.delete",
    "api.key.verify",
    "workspace.manage",
    "config.reload",
];

fn header_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HeaderName>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|s| {
            HeaderName::from_bytes(s.as_bytes())
                .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a valid header name")))
        })
        .collect()
}

fn d_proxy_addr() -> SocketAddr {
    DEFAULT_PROXY_ADDR.parse().expect("constant address parses")
}
fn d_admin_addr() -> SocketAddr {
    DEFAULT_ADMIN_ADDR.parse().expect("constant address parses")
}
fn d_embedded_path() -> PathBuf {
    PathBuf::from(DEFAULT_EMBEDDED_PATH)
}
fn d_key_prefix() -> String {
    "keygate:".into()
}
fn d_key_prefix_short() -> String {
    "kg".into()
}
fn d_environment() -> String {
    "live".into()
}
fn d_redis_timeout() -> Duration {
    DEFAULT_REDIS_TIMEOUT
}
fn d_capacity() -> u64 {
    DEFAULT_CACHE_CAPACITY
}
fn d_ttl() -> Duration {
    DEFAULT_CACHE_TTL
}
fn d_negative_ttl() -> Duration {
    DEFAULT_NEGATIVE_TTL
}
fn d_max_stale() -> Duration {
    DEFAULT_MAX_STALE
}
fn d_shutdown() -> Duration {
    DEFAULT_SHUTDOWN_TIMEOUT
}
fn d_flush() -> Duration {
    DEFAULT_FLUSH_INTERVAL
}
fn d_request_log_max() -> usize {
    DEFAULT_REQUEST_LOG_MAX
}
fn d_usage_queue() -> NonZeroUsize {
    DEFAULT_USAGE_QUEUE_CAPACITY
}
fn d_usage_max_pending_keys() -> NonZeroUsize {
    DEFAULT_USAGE_MAX_PENDING_KEYS
}
fn d_max_active() -> u32 {
    DEFAULT_MAX_ACTIVE_KEYS
}
fn d_true() -> bool {
    true
}
fn d_log_level() -> String {
    "info".into()
}
