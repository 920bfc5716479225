//! The YAML configuration: typed, validated [`Config`], `${ENV}` substitution, and the problems
//! found in a file, each with the path of the field (and the line, for syntax errors).
//!
//! Parsing goes YAML text → `serde_yaml::Value` (syntax) → `${VAR}` substituted in string scalars
//! (never in the raw text, so a variable's value cannot change the document's structure) →
//! typed structs that refuse unknown fields → [`Config::validate`], which collects every
//! semantic problem before failing.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method, Uri};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod limits;
pub use limits::{
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, Limits, MAX_HEADER_READ_TIMEOUT,
};

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

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, e.g. `routes[1].upstream`; empty for the whole document.
    pub path: String,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.line, self.path.is_empty()) {
            (Some(line), true) => write!(f, "line {line}: {}", self.message),
            (Some(line), false) => write!(f, "{} (line {line}): {}", self.path, self.message),
            (None, true) => f.write_str(&self.message),
            (None, false) => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// A config that cannot be used, with every problem found.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// Where the config came from.
    pub source_name: String,
    /// Every problem found, in document order where possible.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration {} ({} problem{}):",
            self.source_name,
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

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
    /// Logging.
    #[serde(default)]
    pub log: Log,
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
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            proxy: d_proxy_addr(),
            admin: d_admin_addr(),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// An upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Base URL: scheme, authority and an optional path prefix.
    #[serde(deserialize_with = "uri")]
    pub url: Uri,
    /// TCP connect timeout.
    #[serde(default = "d_connect_timeout", with = "duration_text")]
    pub connect_timeout: Duration,
    /// Time allowed until the response head arrives.
    #[serde(default = "d_upstream_timeout", with = "duration_text")]
    pub timeout: Duration,
    /// Idle pooled connections are closed after this.
    #[serde(default = "d_idle_timeout", with = "duration_text")]
    pub idle_timeout: Duration,
}

/// A route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// What requests it takes.
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
    /// Upstream name.
    pub upstream: String,
    /// Skip authentication.
    #[serde(default)]
    pub public: bool,
    /// Scopes all required.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Scopes of which one suffices.
    #[serde(default)]
    pub any_scopes: Vec<String>,
    /// Route-specific rate limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
}

/// `routes[].match`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// `Host` (port ignored), case-insensitive.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix, on segment boundaries (`/api` matches `/api` and `/api/x`, not `/apix`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Exact path.
    #[serde(default)]
    pub path: Option<String>,
    /// Methods; empty = any.
    #[serde(default, deserialize_with = "methods")]
    pub methods: Vec<Method>,
}

/// `forward:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// Keep the credential header when forwarding.
    #[serde(default)]
    pub keep_credentials: bool,
    /// Names of the identity headers.
    #[serde(default)]
    pub identity_headers: IdentityHeaders,
}

/// `forward.identity_headers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeaders {
    /// Key id header.
    #[serde(default = "d_h_key_id", deserialize_with = "header_name")]
    pub key_id: HeaderName,
    /// Workspace header.
    #[serde(default = "d_h_workspace", deserialize_with = "header_name")]
    pub workspace: HeaderName,
    /// Scopes header (comma separated).
    #[serde(default = "d_h_scopes", deserialize_with = "header_name")]
    pub scopes: HeaderName,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders {
            key_id: d_h_key_id(),
            workspace: d_h_workspace(),
            scopes: d_h_scopes(),
        }
    }
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
pub const PERMISSIONS: [&str; 5] = [
    "api.key.view",
    "api.key.create",
    "api.key.update",
    "api.key.delete",
    "workspace.manage",
];

impl Config {
    /// Reads and parses a file, substituting `${VAR}` from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            problems: vec![Problem {
                path: String::new(),
                line: None,
                message: format!("cannot read file: {e}"),
            }],
        })?;
        Config::parse(&name, &text, |var| std::env::var(var).ok())
    }

    /// Parses YAML text; `env` resolves `${VAR}` references.
    pub fn parse(
        source_name: &str,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            source_name: source_name.to_owned(),
            problems,
        };
        let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
            fail(vec![Problem {
                path: String::new(),
                line: e.location().map(|l| l.line()),
                message: e.to_string(),
            }])
        })?;
        let mut problems = Vec::new();
        substitute_env(&mut value, &mut String::new(), &env, &mut problems);
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let line = find_line(text, &path);
            fail(vec![Problem {
                path,
                line,
                message: e.into_inner().to_string(),
            }])
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(
                problems
                    .into_iter()
                    .map(|mut p| {
                        p.line = find_line(text, &p.path);
                        p
                    })
                    .collect(),
            ))
        }
    }

    /// Every semantic problem: references between sections, value ranges, syntax of paths.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |path: String, message: String| {
            out.push(Problem {
                path,
                line: None,
                message,
            })
        };

        if self.secrets.pepper.len() < 16 {
            problem(
                "secrets.pepper".into(),
                "must be at least 16 characters (32 random bytes recommended)".into(),
            );
        }
        for (field, value) in [
            ("keys.prefix", &self.keys.prefix),
            ("keys.environment", &self.keys.environment),
        ] {
            if value.is_empty()
                || value.len() > 16
                || !value.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                problem(field.into(), "must be 1–16 ASCII letters or digits".into());
            }
        }
        match self.store.backend {
            Backend::Redis => {
                let r = &self.store.redis;
                match (&r.url, r.cluster.is_empty()) {
                    (None, true) => problem(
                        "store.redis".into(),
                        "backend is redis: set `url` or `cluster`".into(),
                    ),
                    (Some(_), false) => problem(
                        "store.redis".into(),
                        "set either `url` or `cluster`, not both".into(),
                    ),
                    _ => {}
                }
                for (i, url) in r.url.iter().chain(&r.cluster).enumerate() {
                    let field = if r.url.is_some() {
                        "store.redis.url".to_owned()
                    } else {
                        format!("store.redis.cluster[{i}]")
                    };
                    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                        problem(field, "must be a redis:// or rediss:// URL".into());
                    }
                }
                if r.timeout.is_zero() {
                    problem("store.redis.timeout".into(), "must be above 0".into());
                }
            }
            Backend::Embedded => {
                if self.store.embedded.path.as_os_str().is_empty() {
                    problem("store.embedded.path".into(), "must not be empty".into());
                }
            }
        }
        if self.rate_limits.mode == RateLimitMode::Redis && self.store.backend != Backend::Redis {
            problem(
                "rate_limits.mode".into(),
                "`redis` needs `store.backend: redis`".into(),
            );
        }
        if self.cache.capacity == 0 {
            problem("cache.capacity".into(), "must be above 0".into());
        }
        for (path, message) in self.limits.problems() {
            problem(path, message);
        }
        if self.cache.ttl.is_zero() {
            problem("cache.ttl".into(), "must be above 0".into());
        }
        if let Some(q) = &self.auth.query_param
            && q.is_empty()
        {
            problem("auth.query_param".into(), "must not be empty".into());
        }
        // Credential headers are tracked as bits of a u64 (bit 0 is Authorization).
        if self.auth.extra_headers.len() > 63 {
            problem("auth.extra_headers".into(), "at most 63 headers".into());
        }
        for (i, h) in self.auth.extra_headers.iter().enumerate() {
            if self.auth.extra_headers[..i].contains(h) {
                problem(
                    format!("auth.extra_headers[{i}]"),
                    format!("`{h}` is listed twice"),
                );
            }
            if h == http::header::AUTHORIZATION {
                problem(
                    format!("auth.extra_headers[{i}]"),
                    "Authorization is always read; list only other headers".into(),
                );
            }
        }
        let mut check_limit = |path: String, spec: &RateLimitSpec| {
            if let Err((field, message)) = check_rate_limit(spec) {
                problem(format!("{path}.{field}"), message.into());
            }
        };
        if let Some(l) = &self.auth.failure_limit {
            check_limit("auth.failure_limit".into(), l);
        }
        if let Some(l) = &self.rate_limits.default {
            check_limit("rate_limits.default".into(), l);
        }
        for (name, l) in &self.rate_limits.roles {
            check_limit(format!("rate_limits.roles.{name}"), l);
        }
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(l) = &r.rate_limit {
                check_limit(format!("routes[{i}].rate_limit"), l);
            }
        }
        for (name, w) in &self.workspaces {
            if let Some(l) = &w.rate_limit {
                check_limit(format!("workspaces.{name}.rate_limit"), l);
            }
        }
        let mut problem = |path: String, message: String| {
            out.push(Problem {
                path,
                line: None,
                message,
            })
        };
        for name in self.rate_limits.roles.keys() {
            if !self.roles.contains_key(name) {
                problem(
                    format!("rate_limits.roles.{name}"),
                    format!("no role `{name}` in `roles`"),
                );
            }
        }
        for (name, q) in &self.quotas.roles {
            let path = format!("quotas.roles.{name}");
            if !self.roles.contains_key(name) {
                problem(path.clone(), format!("no role `{name}` in `roles`"));
            }
            if let Err(m) = check_quota(q) {
                problem(format!("{path}.refill_day"), m.into());
            }
        }
        for (name, scopes) in &self.roles {
            for (i, s) in scopes.iter().enumerate() {
                if let Err(m) = check_scope(s) {
                    problem(format!("roles.{name}[{i}]"), m.into());
                } else if !self.in_catalogue(s) {
                    problem(format!("roles.{name}[{i}]"), not_in_catalogue(s));
                }
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            for (list, scopes) in [("scopes", &r.scopes), ("any_scopes", &r.any_scopes)] {
                for (j, s) in scopes.iter().enumerate() {
                    if !self.in_catalogue(s) {
                        problem(format!("routes[{i}].{list}[{j}]"), not_in_catalogue(s));
                    }
                }
            }
        }
        for (s, label) in &self.scopes {
            if let Err(m) = check_scope(s) {
                problem(format!("scopes.{s}"), m.into());
            } else if label.trim().is_empty() || label.chars().count() > 100 {
                problem(format!("scopes.{s}"), "a label is 1–100 characters".into());
            }
        }
        for (name, w) in &self.workspaces {
            if !is_workspace_name(name) {
                problem(format!("workspaces.{name}"), WORKSPACE_NAME_RULE.into());
            }
            if let Some(q) = &w.quota
                && let Err(m) = check_quota(q)
            {
                problem(format!("workspaces.{name}.quota.refill_day"), m.into());
            }
        }
        for (name, u) in &self.upstreams {
            let path = format!("upstreams.{name}.url");
            match u.url.scheme_str() {
                Some("http") => {}
                Some("https") => problem(
                    path.clone(),
                    "https upstreams are not supported yet; use http".into(),
                ),
                _ => problem(path.clone(), "must start with http://".into()),
            }
            if u.url.authority().is_none() {
                problem(path.clone(), "must name a host".into());
            }
            if u.url.query().is_some() {
                problem(path, "must not have a query string".into());
            }
            for (field, d) in [
                ("connect_timeout", u.connect_timeout),
                ("timeout", u.timeout),
            ] {
                if d.is_zero() {
                    problem(
                        format!("upstreams.{name}.{field}"),
                        "must be above 0".into(),
                    );
                }
            }
        }
        if self.routes.is_empty() {
            problem("routes".into(), "at least one route is needed".into());
        }
        for (i, r) in self.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            if !self.upstreams.contains_key(&r.upstream) {
                problem(
                    format!("{path}.upstream"),
                    format!("no upstream `{}` in `upstreams`", r.upstream),
                );
            }
            let m = &r.matcher;
            if m.path.is_some() && m.path_prefix.is_some() {
                problem(
                    format!("{path}.match"),
                    "set `path` or `path_prefix`, not both".into(),
                );
            }
            for (field, p) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
                if let Some(p) = p
                    && !p.starts_with('/')
                {
                    problem(
                        format!("{path}.match.{field}"),
                        "must start with `/`".into(),
                    );
                }
            }
            if let Some(h) = &m.host
                && (h.is_empty() || h.contains('/'))
            {
                problem(format!("{path}.match.host"), "must be a host name".into());
            }
            if r.public && (!r.scopes.is_empty() || !r.any_scopes.is_empty()) {
                problem(
                    format!("{path}.public"),
                    "a public route cannot require scopes".into(),
                );
            }
            for (field, list) in [("scopes", &r.scopes), ("any_scopes", &r.any_scopes)] {
                for (j, s) in list.iter().enumerate() {
                    if let Err(m) = check_scope(s) {
                        problem(format!("{path}.{field}[{j}]"), m.into());
                    }
                }
            }
        }
        let ih = &self.forward.identity_headers;
        let mut seen = HashSet::new();
        for (field, h) in [
            ("key_id", &ih.key_id),
            ("workspace", &ih.workspace),
            ("scopes", &ih.scopes),
        ] {
            if !seen.insert(h.clone()) {
                problem(
                    format!("forward.identity_headers.{field}"),
                    "identity headers must have distinct names".into(),
                );
            }
            if h == http::header::AUTHORIZATION || h == http::header::HOST {
                problem(
                    format!("forward.identity_headers.{field}"),
                    format!("cannot be `{h}`"),
                );
            }
        }
        if self.usage.flush_interval.is_zero() {
            problem("usage.flush_interval".into(), "must be above 0".into());
        }
        let mut names = HashSet::new();
        for (i, t) in self.admin.tokens.iter().enumerate() {
            let path = format!("admin.tokens[{i}]");
            if t.name.is_empty() || !names.insert(t.name.as_str()) {
                problem(
                    format!("{path}.name"),
                    "must be non-empty and unique".into(),
                );
            }
            if t.token.len() < 16 {
                problem(
                    format!("{path}.token"),
                    "must be at least 16 characters".into(),
                );
            }
            for (j, p) in t.permissions.iter().enumerate() {
                if !PERMISSIONS.contains(&p.as_str()) {
                    problem(
                        format!("{path}.permissions[{j}]"),
                        format!(
                            "unknown permission `{p}`; known: {}",
                            PERMISSIONS.join(", ")
                        ),
                    );
                }
            }
            // A token may name a workspace the config does not declare: workspaces are also
            // created through the admin API, possibly after the token is configured.
            for (j, w) in t.workspaces.iter().enumerate() {
                if w != "*" && !is_workspace_name(w) {
                    problem(
                        format!("{path}.workspaces[{j}]"),
                        WORKSPACE_NAME_RULE.into(),
                    );
                }
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problem("log.level".into(), format!("invalid filter: {e}"));
        }
        out
    }

    /// Whether `scope` may be named under the scope catalogue: always without one; with one, if
    /// it is listed, `*`, or an admin permission.
    pub fn in_catalogue(&self, scope: &str) -> bool {
        self.scopes.is_empty()
            || scope == "*"
            || self.scopes.contains_key(scope)
            || PERMISSIONS.contains(&scope)
    }

    /// The scopes a role grants, if the role exists.
    pub fn role_scopes(&self, role: &str) -> Option<&[String]> {
        self.roles.get(role).map(Vec::as_slice)
    }
}

/// Checks a rate limit: a period above 0, and at most one request per microsecond of it
/// (`mode: redis` keeps time in microseconds). On failure, the field to blame and why.
pub fn check_rate_limit(spec: &RateLimitSpec) -> Result<(), (&'static str, &'static str)> {
    if spec.period.is_zero() {
        Err(("period", "must be above 0"))
    } else if spec.period.as_nanos() / u128::from(spec.requests.get()) < 1_000 {
        Err((
            "requests",
            "at most one request per microsecond of `period`",
        ))
    } else {
        Ok(())
    }
}

/// Checks a quota's `refill_day`: 1–28, and only for `refill: monthly` (every month has a
/// 28th, so a refill day never falls in a month without it).
pub fn check_quota(q: &QuotaSpec) -> Result<(), &'static str> {
    match (q.refill, q.refill_day) {
        (Refill::Monthly, Some(d)) if !(1..=28).contains(&d) => Err("must be 1–28"),
        (Refill::None | Refill::Daily, Some(_)) => Err("only for `refill: monthly`"),
        _ => Ok(()),
    }
}

fn not_in_catalogue(scope: &str) -> String {
    format!("scope `{scope}` is not in the `scopes` catalogue")
}

/// What [`is_workspace_name`] accepts, for error messages.
pub const WORKSPACE_NAME_RULE: &str =
    "workspace names are 1–64 characters of a-z, 0-9, `-` and `_`";

/// Whether `name` may name a workspace (it appears in paths and store keys).
pub fn is_workspace_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Checks a scope string: `*` or 1–100 printable characters without spaces or commas (scopes are
/// joined with commas in `X-Keygate-Scopes`).
pub fn check_scope(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 100 {
        return Err("a scope is 1–100 characters");
    }
    if !s.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        return Err("a scope has no spaces, commas or non-ASCII characters");
    }
    Ok(())
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string scalar.
fn substitute_env(
    value: &mut serde_yaml::Value,
    path: &mut String,
    env: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    use serde_yaml::Value;
    match value {
        Value::String(s) if s.contains("${") => match expand(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => problems.push(Problem {
                path: path.clone(),
                line: None,
                message,
            }),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                substitute_env(item, path, env, problems);
                path.truncate(len);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                match k {
                    Value::String(k) => path.push_str(k),
                    other => path.push_str(&format!("{other:?}")),
                }
                substitute_env(v, path, env, problems);
                path.truncate(len);
            }
        }
        Value::Tagged(t) => substitute_env(&mut t.value, path, env, problems),
        _ => {}
    }
}

fn expand(s: &str, env: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated `${` in value".to_owned())?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("`${{{inner}}}` is not a valid variable reference"));
        }
        match (env(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!("environment variable {name} is not set"));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Best-effort line of a dotted path's last mapping key (`routes[1].upstream` → the `upstream:`
/// line that follows the second item of `routes`). Good enough to point a reader at the spot.
fn find_line(text: &str, path: &str) -> Option<usize> {
    if path.is_empty() {
        return None;
    }
    let mut line_no = 0;
    let lines: Vec<&str> = text.lines().collect();
    for segment in path.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let needle = format!("{key}:");
        let found = lines[line_no..].iter().position(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(&needle) || t.starts_with(&format!("\"{key}\":"))
        })?;
        line_no += found;
        if let Some(index) = index {
            // Count list items below the key.
            let mut seen = 0;
            let mut at = None;
            for (off, l) in lines[line_no + 1..].iter().enumerate() {
                if l.trim_start().starts_with('-') {
                    if seen == index {
                        at = Some(line_no + 1 + off);
                        break;
                    }
                    seen += 1;
                }
            }
            line_no = at?;
        }
    }
    Some(line_no + 1)
}

/// Durations as text: `500ms`, `30s`, `1m`, `24h` (and bare `0`).
pub mod duration_text {
    use super::*;

    /// Parses a duration.
    pub fn parse(s: &str) -> Result<Duration, String> {
        if s.trim() == "0" {
            return Ok(Duration::ZERO);
        }
        humantime::parse_duration(s.trim())
            .map_err(|e| format!("`{s}` is not a duration like 500ms, 30s, 5m or 24h ({e})"))
    }

    /// Serde deserializer.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Int(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => parse(&s).map_err(serde::de::Error::custom),
            Raw::Int(0) => Ok(Duration::ZERO),
            Raw::Int(n) => Err(serde::de::Error::custom(format!(
                "`{n}` needs a unit, e.g. {n}s or {n}ms"
            ))),
        }
    }

    /// Serde serializer (humantime's format, which [`parse`] reads back).
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// Lists of IP networks where a bare address means a single host (`203.0.113.7` = `/32`).
pub mod ip_list {
    use super::*;
    use std::net::IpAddr;

    /// Parses `10.0.0.0/8`, `2001:db8::/32`, `203.0.113.7` or `::1`.
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let s = s.trim();
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("`{s}` is not an IP address or CIDR"))
    }

    /// Serde deserializer.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| parse(s).map_err(serde::de::Error::custom))
            .collect()
    }

    /// Serde serializer: host networks as bare addresses.
    pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(nets.iter().map(|n| {
            if n.prefix_len() == n.max_prefix_len() {
                n.addr().to_string()
            } else {
                n.to_string()
            }
        }))
    }
}

fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderName, D::Error> {
    let s = String::deserialize(d)?;
    HeaderName::from_bytes(s.as_bytes())
        .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a valid header name")))
}

fn header_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HeaderName>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|s| {
            HeaderName::from_bytes(s.as_bytes())
                .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a valid header name")))
        })
        .collect()
}

fn methods<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Method>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|s| {
            let upper = s.to_ascii_uppercase();
            Method::from_bytes(upper.as_bytes())
                .map_err(|_| serde::de::Error::custom(format!("`{s}` is not an HTTP method")))
        })
        .collect()
}

fn uri<'de, D: Deserializer<'de>>(d: D) -> Result<Uri, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<Uri>()
        .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a URL: {e}")))
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
fn d_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn d_upstream_timeout() -> Duration {
    DEFAULT_UPSTREAM_TIMEOUT
}
fn d_idle_timeout() -> Duration {
    DEFAULT_IDLE_TIMEOUT
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
fn d_h_key_id() -> HeaderName {
    HeaderName::from_static("x-keygate-key-id")
}
fn d_h_workspace() -> HeaderName {
    HeaderName::from_static("x-keygate-workspace")
}
fn d_h_scopes() -> HeaderName {
    HeaderName::from_static("x-keygate-scopes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "
secrets: { pepper: 0123456789abcdef0123 }
upstreams:
  app: { url: http://127.0.0.1:9000 }
routes:
  - match: { path_prefix: /api }
    upstream: app
    scopes: [read]
";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse("test.yaml", text, |v| match v {
            "PEPPER" => Some("from-the-environment-123".into()),
            _ => None,
        })
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.listen.proxy, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.listen.admin, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(c.store.backend, Backend::Embedded);
        assert_eq!(c.cache.ttl, Duration::from_secs(60));
        assert_eq!(c.cache.max_stale, Duration::from_secs(300));
        assert_eq!(c.keys.prefix, "kg");
        assert_eq!(c.forward.identity_headers.key_id, "x-keygate-key-id");
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
    }

    #[test]
    fn env_variables_are_substituted_in_values_only() {
        let text = MINIMAL.replace("0123456789abcdef0123", "\"${PEPPER}\"");
        assert_eq!(
            parse(&text).unwrap().secrets.pepper,
            "from-the-environment-123"
        );
        let text = MINIMAL.replace(
            "0123456789abcdef0123",
            "\"${MISSING:-fallback-value-123456}\"",
        );
        assert_eq!(
            parse(&text).unwrap().secrets.pepper,
            "fallback-value-123456"
        );
        let err = parse(&MINIMAL.replace("0123456789abcdef0123", "\"${MISSING}\"")).unwrap_err();
        assert_eq!(err.problems[0].path, "secrets.pepper");
        assert!(err.problems[0].message.contains("MISSING is not set"));
    }

    #[test]
    fn durations_take_units() {
        for (text, want) in [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("24h", Duration::from_secs(86400)),
            ("0", Duration::ZERO),
        ] {
            assert_eq!(duration_text::parse(text).unwrap(), want);
        }
        assert!(duration_text::parse("soon").is_err());
        let err = parse(&format!("{MINIMAL}shutdown_timeout: 30\n")).unwrap_err();
        assert_eq!(err.problems[0].path, "shutdown_timeout");
        assert!(err.problems[0].message.contains("needs a unit"));
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path_and_line() {
        let err = parse(&MINIMAL.replace("scopes: [read]", "scopes: [read]\n    scope: [x]"))
            .unwrap_err();
        let p = &err.problems[0];
        assert_eq!(p.path, "routes[0].scope");
        assert!(p.message.contains("unknown field `scope`"), "{p}");
        let err = parse("secrets: {pepper: x\n").unwrap_err();
        assert!(err.problems[0].line.is_some());
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let text = "
secrets: { pepper: short }
store: { backend: redis }
workspaces: { Bad Name: {} }
upstreams:
  app: { url: ftp://x }
routes:
  - match: { path_prefix: api }
    upstream: missing
  - match: { path: /x }
    upstream: app
    public: true
    scopes: [a b]
";
        let err = parse(text).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "secrets.pepper",
            "store.redis",
            "workspaces.Bad Name",
            "upstreams.app.url",
            "routes[0].upstream",
            "routes[0].match.path_prefix",
            "routes[1].public",
            "routes[1].scopes[0]",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
        let upstream = err
            .problems
            .iter()
            .find(|p| p.path == "routes[0].upstream")
            .unwrap();
        assert_eq!(upstream.line, Some(9), "{upstream}");
        assert!(err.to_string().contains("problems"));
    }

    #[test]
    fn limits_and_quotas_are_checked() {
        let c = parse(&format!(
            "{MINIMAL}roles: {{ viewer: [read] }}\n\
             rate_limits: {{ default: {{ requests: 100, period: 1s, burst: 200 }} }}\n\
             quotas: {{ roles: {{ viewer: {{ limit: 10000, refill: monthly, refill_day: 1 }} }} }}\n"
        ))
        .unwrap();
        assert_eq!(c.quotas.roles["viewer"].limit, 10_000);
        let err = parse(&format!(
            "{MINIMAL}roles: {{ viewer: [read] }}\n\
             auth: {{ failure_limit: {{ requests: 2000000, period: 1s }} }}\n\
             quotas:\n  roles:\n    viewer: {{ limit: 1, refill: monthly, refill_day: 29 }}\n    \
             ghost: {{ limit: 1, refill: daily, refill_day: 3 }}\n"
        ))
        .unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "auth.failure_limit.requests",
            "quotas.roles.viewer.refill_day",
            "quotas.roles.ghost",
            "quotas.roles.ghost.refill_day",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
    }

    #[test]
    fn a_scope_catalogue_bounds_roles_and_routes() {
        let c = parse(&format!(
            "{MINIMAL}scopes: {{ read: Read things }}\nroles: {{ r: [read, \"*\", api.key.view] }}\n"
        ))
        .unwrap();
        assert!(c.in_catalogue("read") && c.in_catalogue("*") && !c.in_catalogue("write"));
        let err = parse(&format!(
            "{MINIMAL}scopes: {{ write: Write, \"bad scope\": X, ok: \"\" }}\nroles: {{ r: [read] }}\n"
        ))
        .unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "roles.r[0]",
            "routes[0].scopes[0]",
            "scopes.bad scope",
            "scopes.ok",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
    }

    #[test]
    fn workspaces_carry_defaults_and_metadata() {
        let c = parse(&format!(
            "{MINIMAL}workspaces:\n  acme: {{ rate_limit: {{ requests: 5, period: 1s }}, \
             quota: {{ limit: 100, refill: daily }}, metadata: {{ plan: pro, seats: 3 }} }}\n"
        ))
        .unwrap();
        let acme = &c.workspaces["acme"];
        assert_eq!((acme.api_access, acme.max_active_keys), (true, 5));
        assert_eq!(acme.rate_limit.map(|l| l.requests.get()), Some(5));
        assert_eq!(acme.quota.map(|q| q.limit), Some(100));
        assert_eq!(acme.metadata["seats"], 3);
        let err = parse(&format!(
            "{MINIMAL}workspaces:\n  acme: {{ rate_limit: {{ requests: 5, period: 0s }}, \
             quota: {{ limit: 1, refill: daily, refill_day: 2 }} }}\n"
        ))
        .unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "workspaces.acme.rate_limit.period",
            "workspaces.acme.quota.refill_day",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
    }

    #[test]
    fn extra_headers_are_few_and_distinct() {
        let many: Vec<String> = (0..64).map(|i| format!("X-Key-{i}")).collect();
        let text = format!(
            "{MINIMAL}auth: {{ extra_headers: [{}] }}\n",
            many.join(", ")
        );
        let err = parse(&text).unwrap_err();
        assert!(
            err.problems.iter().any(|p| p.path == "auth.extra_headers"),
            "{err}"
        );
        let err = parse(&format!("{MINIMAL}auth: {{ extra_headers: [X-A, x-a] }}\n")).unwrap_err();
        assert!(
            err.problems
                .iter()
                .any(|p| p.path == "auth.extra_headers[1]"),
            "{err}"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let c = parse(&format!(
            "{MINIMAL}admin:\n  tokens:\n    - {{ name: ops, token: tok-0123456789abcdef }}\n"
        ))
        .unwrap();
        let dump = format!("{c:?}");
        assert!(!dump.contains("0123456789abcdef0123"));
        assert!(!dump.contains("tok-0123456789abcdef"));
    }
}
