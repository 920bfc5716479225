//! The sections that say where requests go and what they carry: `upstreams:`, `routes:` and
//! `forward:`.

use super::*;

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

fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderName, D::Error> {
    let s = String::deserialize(d)?;
    HeaderName::from_bytes(s.as_bytes())
        .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a valid header name")))
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

fn d_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}

fn d_upstream_timeout() -> Duration {
    DEFAULT_UPSTREAM_TIMEOUT
}

fn d_idle_timeout() -> Duration {
    DEFAULT_IDLE_TIMEOUT
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
