//! The sections that say which requests go where and what they carry: `routes:` and
//! `forward:` (`upstreams:` is `upstreams.rs`).

use super::*;

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

fn d_h_key_id() -> HeaderName {
    HeaderName::from_static("x-keygate-key-id")
}

fn d_h_workspace() -> HeaderName {
    HeaderName::from_static("x-keygate-workspace")
}

fn d_h_scopes() -> HeaderName {
    HeaderName::from_static("x-keygate-scopes")
}
