//! `upstreams:`: where requests go. One target (`url`) or several (`targets`), the protocol spoken
//! to them, TLS toward `https://` targets (roots, SNI, client certificate) and health checks.
//!
//! The TLS files are read here, by [`Upstream::client_tls`], both to validate them (start and
//! reload refuse a file that does not parse) and to build the connector: one reading, one set
//! of errors.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::*;

/// An upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Base URL of its one target: scheme, authority and an optional path prefix.
    #[serde(default, deserialize_with = "some_uri")]
    pub url: Option<Uri>,
    /// Several targets (instead of `url`), balanced by least outstanding requests.
    #[serde(default, deserialize_with = "uris")]
    pub targets: Vec<Uri>,
    /// HTTP version spoken to the targets; see [`Upstream::protocol`] for the default.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// PEM file of the CA certificates that `https://` targets are verified against, instead
    /// of the system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The name sent as SNI and verified in the target's certificate, instead of the URL's host.
    #[serde(default)]
    pub sni: Option<String>,
    /// PEM certificate chain presented to `https://` targets that ask for one (mTLS).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// TCP connect timeout (TLS handshake included).
    #[serde(default = "d_connect_timeout", with = "duration_text")]
    pub connect_timeout: Duration,
    /// Time allowed until the response head arrives.
    #[serde(default = "d_upstream_timeout", with = "duration_text")]
    pub timeout: Duration,
    /// Idle pooled connections are closed after this.
    #[serde(default = "d_idle_timeout", with = "duration_text")]
    pub idle_timeout: Duration,
    /// Active checks: a request to `path` on every target each `interval`.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Passive checks: targets that fail are set aside for a while.
    #[serde(default)]
    pub passive_health: PassiveHealth,
}

/// `upstreams.*.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1, pooled keep-alive connections.
    Http1,
    /// HTTP/2: by ALPN over TLS, by prior knowledge (h2c) over plain TCP. What gRPC needs.
    Http2,
    /// Over TLS, whichever the target picks by ALPN (`h2` first).
    Auto,
}

/// `upstreams.*.health_check`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path requested with `GET`; a 2xx or 3xx answer is healthy.
    pub path: String,
    /// Time between two checks of a target.
    #[serde(default = "d_check_interval", with = "duration_text")]
    pub interval: Duration,
    /// Time a check may take (connect included).
    #[serde(default = "d_check_timeout", with = "duration_text")]
    pub timeout: Duration,
}

/// `upstreams.*.passive_health`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealth {
    /// Failures in a row (connect failures, 502, 503, 504) that eject a target.
    #[serde(default = "d_failures")]
    pub failures: NonZeroU32,
    /// How long the first ejection lasts; each ejection that follows a failed return doubles it,
    /// up to 16 times as long.
    #[serde(default = "d_ejection", with = "duration_text")]
    pub ejection: Duration,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            failures: d_failures(),
            ejection: d_ejection(),
        }
    }
}

/// What [`Upstream::client_tls`] read: the rustls config (without ALPN, which depends on the
/// connection) and a digest of the files, so that a reload can tell a replaced file.
pub struct ClientTls {
    /// Roots, client certificate, protocol versions.
    pub config: rustls::ClientConfig,
    /// BLAKE3 of the files' contents.
    pub digest: [u8; 32],
}

impl Upstream {
    /// The target URLs: `url`, or `targets`.
    pub fn target_urls(&self) -> &[Uri] {
        match &self.url {
            Some(url) => std::slice::from_ref(url),
            None => &self.targets,
        }
    }

    /// Whether its targets are `https://`.
    pub fn is_tls(&self) -> bool {
        self.target_urls()
            .first()
            .is_some_and(|u| u.scheme_str() == Some("https"))
    }

    /// The protocol spoken: as written, else `auto` over TLS and `http1` over plain TCP (where
    /// nothing can be negotiated).
    pub fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or(if self.is_tls() {
            Protocol::Auto
        } else {
            Protocol::Http1
        })
    }

    /// The name a target's certificate is checked against: `sni`, else the target's host.
    pub fn server_name(&self, target: &Uri) -> Result<ServerName<'static>, String> {
        let host = match &self.sni {
            Some(sni) => sni.as_str(),
            None => target
                .host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                .unwrap_or_default(),
        };
        ServerName::try_from(host.to_owned())
            .map_err(|_| format!("`{host}` is not a valid TLS name"))
    }

    /// Reads `ca`, `client_cert` and `client_key` into a rustls client config; `None` for
    /// `http://` upstreams. Errors name the field.
    pub fn client_tls(&self) -> Result<Option<ClientTls>, (&'static str, String)> {
        if !self.is_tls() {
            return Ok(None);
        }
        let mut digest = blake3::Hasher::new();
        let mut read = |field: &'static str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| (field, format!("{}: {e}", path.display())))
                .inspect(|bytes| {
                    digest.update(field.as_bytes());
                    digest.update(bytes);
                })
        };
        let roots = match &self.ca {
            None => system_roots(),
            Some(path) => {
                let pem = read("ca", path)?;
                let bad = |e: String| ("ca", format!("{}: {e}", path.display()));
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    roots
                        .add(cert.map_err(|e| bad(e.to_string()))?)
                        .map_err(|e| bad(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(bad("no certificate found".into()));
                }
                Arc::new(roots)
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ("url", e.to_string()))?
        .with_root_certificates(roots);
        let config = match (&self.client_cert, &self.client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(&read("client_cert", cert)?)
                        .collect::<Result<_, _>>()
                        .map_err(|e| ("client_cert", format!("{}: {e}", cert.display())))?;
                if chain.is_empty() {
                    return Err((
                        "client_cert",
                        format!("{}: no certificate found", cert.display()),
                    ));
                }
                let private = PrivateKeyDer::from_pem_slice(&read("client_key", key)?)
                    .map_err(|e| ("client_key", format!("{}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| ("client_key", format!("does not fit client_cert: {e}")))?
            }
            (Some(_), None) => return Err(("client_key", "needed with client_cert".into())),
            (None, Some(_)) => return Err(("client_cert", "needed with client_key".into())),
        };
        Ok(Some(ClientTls {
            config,
            digest: *digest.finalize().as_bytes(),
        }))
    }

    /// Every problem, as `(field below the upstream, message)`.
    pub(super) fn problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut problem = |field: &str, message: &str| out.push((field.into(), message.into()));
        match (&self.url, self.targets.is_empty()) {
            (Some(_), false) => problem("targets", "give either url or targets, not both"),
            (None, true) => problem("url", "an upstream needs a url (or targets)"),
            _ => {}
        }
        let urls = self.target_urls();
        for (i, url) in urls.iter().enumerate() {
            let field = if self.url.is_some() {
                "url".to_owned()
            } else {
                format!("targets[{i}]")
            };
            if !matches!(url.scheme_str(), Some("http" | "https")) {
                problem(&field, "must start with http:// or https://");
            } else if url.scheme() != urls[0].scheme() {
                problem(&field, "all targets use the same scheme");
            }
            if url.authority().is_none() {
                problem(&field, "must name a host");
            }
            if url.query().is_some() {
                problem(&field, "must not have a query string");
            }
            if urls[..i].contains(url) {
                problem(&field, "listed twice");
            }
        }
        const MINUTES_5: Duration = Duration::from_secs(300);
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(86_400);
        let check = self.health_check.as_ref();
        // Bounded above too: deadlines are instants, which far-off durations would overflow.
        for (field, d, max, max_text) in [
            (
                "connect_timeout",
                Some(self.connect_timeout),
                MINUTES_5,
                "5m",
            ),
            ("timeout", Some(self.timeout), DAY, "24h"),
            ("idle_timeout", Some(self.idle_timeout), DAY, "24h"),
            (
                "passive_health.ejection",
                Some(self.passive_health.ejection),
                HOUR,
                "1h",
            ),
            (
                "health_check.interval",
                check.map(|c| c.interval),
                HOUR,
                "1h",
            ),
            (
                "health_check.timeout",
                check.map(|c| c.timeout),
                MINUTES_5,
                "5m",
            ),
        ] {
            match d {
                Some(d) if d.is_zero() && field != "idle_timeout" => {
                    problem(field, "must be above 0")
                }
                Some(d) if d > max => problem(field, &format!("must be at most {max_text}")),
                _ => {}
            }
        }
        if let Some(check) = check {
            if !check.path.starts_with('/') {
                problem("health_check.path", "must start with /");
            } else if check.path.parse::<http::uri::PathAndQuery>().is_err() {
                problem("health_check.path", "is not a valid path");
            }
        }
        if self.is_tls() {
            for url in urls {
                if let Err(e) = self.server_name(url) {
                    problem(if self.sni.is_some() { "sni" } else { "url" }, &e);
                    break;
                }
            }
            if let Err((field, message)) = self.client_tls() {
                problem(field, &message);
            }
        } else if !urls.is_empty() {
            for (field, set) in [
                ("ca", self.ca.is_some()),
                ("sni", self.sni.is_some()),
                ("client_cert", self.client_cert.is_some()),
                ("client_key", self.client_key.is_some()),
            ] {
                if set {
                    problem(field, "only for https:// upstreams");
                }
            }
            if self.protocol == Some(Protocol::Auto) {
                problem(
                    "protocol",
                    "auto needs https:// (ALPN); over http:// say http1 or http2 (h2c)",
                );
            }
        }
        out
    }
}

/// The system's CA certificates, read once per process (reading them takes milliseconds).
fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            // Unreadable entries of the system store are skipped, as browsers do.
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::warn!(error = %e, "system CA certificates: an entry was skipped");
            }
            roots.add_parsable_certificates(native.certs);
            Arc::new(roots)
        })
        .clone()
}

fn some_uri<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uri>, D::Error> {
    parse_uri(&String::deserialize(d)?).map(Some)
}

fn uris<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Uri>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_uri(s))
        .collect()
}

fn parse_uri<E: serde::de::Error>(s: &str) -> Result<Uri, E> {
    s.parse::<Uri>()
        .map_err(|e| E::custom(format!("`{s}` is not a URL: {e}")))
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

fn d_check_interval() -> Duration {
    Duration::from_secs(5)
}

fn d_check_timeout() -> Duration {
    Duration::from_secs(2)
}

fn d_failures() -> NonZeroU32 {
    NonZeroU32::new(3).expect("3 is not zero")
}

fn d_ejection() -> Duration {
    Duration::from_secs(10)
}
