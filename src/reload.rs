//! Reloading the config in place (SPEC §7): SIGHUP and `POST /v1/reload` re-read the file and
//! swap in what can change while serving, as one step.
//!
//! - **Refused whole**: a file that does not parse or validate changes nothing; every problem
//!   comes back with its field path (`invalid_config`), and the running config stays. A TLS
//!   certificate that cannot be read refuses the reload the same way.
//! - **Restart-only fields** (listen addresses, `tls` or `admin_tls` switched on or off, the store, the pepper,
//!   the key format, the cache, usage recording, connection limits, `rate_limits.mode`,
//!   `log.format`) keep their running values; the answer names those that differ.
//! - **Everything else** is swapped: routes, upstreams, roles, the scope catalogue, limits and
//!   quotas, config workspaces, admin tokens, trusted proxies, forwarding, the log level and
//!   access log, shutdown timings; and the TLS certificate is re-read from its files. The data
//!   plane's [`crate::proxy::Policy`] and the admin API's config are each one atomic swap: a
//!   request sees the old config or the new one, never a mix, and requests in flight finish
//!   under theirs. Connections stay open; the key cache, rate-limit buckets and quota counts
//!   carry on.
//!
//! One reload runs at a time. The BLAKE3 hash of the running file's text is in `/readyz` and in
//! `keygate_config_info{hash}`; `keygate_config_reloads_total{result}` counts reloads.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

use crate::admin::AdminConfig;
use crate::config::{Config, ConfigError, Problem};
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::server::Certificate;

/// Which listener a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `listen.proxy` (`tls`).
    Proxy,
    /// `listen.admin` (`admin_tls`).
    Admin,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Sections that changed and were swapped in (`routes`, `upstreams`, …).
    pub changed: Vec<&'static str>,
    /// Restart-only fields whose new value was left for the next start.
    pub restart_required: Vec<&'static str>,
    /// BLAKE3 hash of the file now running (16 hex digits).
    pub config_hash: String,
}

/// Why a reload changed nothing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    /// The file is unreadable or invalid; every problem found.
    #[error("{0}")]
    Invalid(ConfigError),
    /// Another reload is running.
    #[error("a reload is already running")]
    Busy,
}

/// The running config and everything a reload swaps.
pub struct Reloader {
    path: Option<PathBuf>,
    running: ArcSwap<Config>,
    hash: ArcSwap<String>,
    gateway: Arc<Gateway>,
    admin: Arc<ArcSwap<AdminConfig>>,
    certificate: OnceLock<Arc<Certificate>>,
    admin_certificate: OnceLock<Arc<Certificate>>,
    metrics: Metrics,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// The config the gateway started with; `path` is the file a reload reads (none: reloads
    /// are refused).
    pub fn new(
        config: Arc<Config>,
        text_hash: String,
        path: Option<PathBuf>,
        gateway: Arc<Gateway>,
        metrics: Metrics,
    ) -> Reloader {
        metrics.config_running(&text_hash);
        Reloader {
            path,
            admin: Arc::new(ArcSwap::from_pointee(AdminConfig::new(config.clone()))),
            running: ArcSwap::new(config),
            hash: ArcSwap::from_pointee(text_hash),
            gateway,
            certificate: OnceLock::new(),
            admin_certificate: OnceLock::new(),
            metrics,
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// The running config.
    pub fn config(&self) -> Arc<Config> {
        self.running.load_full()
    }

    /// The admin API's part of the running config.
    pub fn admin(&self) -> &Arc<ArcSwap<AdminConfig>> {
        &self.admin
    }

    /// The hash of the running file's text.
    pub fn config_hash(&self) -> Arc<String> {
        self.hash.load_full()
    }

    /// A listener's certificate, re-read by every reload from now on.
    pub fn watch_certificate(&self, listener: Listener, certificate: Arc<Certificate>) {
        let slot = match listener {
            Listener::Proxy => &self.certificate,
            Listener::Admin => &self.admin_certificate,
        };
        let _ = slot.set(certificate);
    }

    /// Re-reads the file and swaps in what it changes (see the module docs).
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one = self
            .one_at_a_time
            .try_lock()
            .map_err(|_| ReloadError::Busy)?;
        let outcome = self.read_and_swap().await;
        match &outcome {
            Ok(r) => {
                self.metrics.config_reloaded("ok");
                tracing::info!(
                    changed = ?r.changed,
                    restart_required = ?r.restart_required,
                    config_hash = %r.config_hash,
                    "config reloaded"
                );
                if !r.restart_required.is_empty() {
                    tracing::warn!(fields = ?r.restart_required, "these fields changed but take effect only after a restart");
                }
            }
            Err(ReloadError::Invalid(e)) => {
                self.metrics.config_reloaded("invalid");
                tracing::error!(error = %e, "config reload refused; the running config stays");
            }
            Err(ReloadError::Busy) => {}
        }
        outcome
    }

    async fn read_and_swap(&self) -> Result<Reloaded, ReloadError> {
        let invalid = |source: String, message: String| {
            ReloadError::Invalid(ConfigError {
                source_name: source,
                problems: vec![Problem {
                    path: String::new(),
                    line: None,
                    message,
                }],
            })
        };
        let Some(path) = &self.path else {
            return Err(invalid(
                "config".into(),
                "keygate was started without a config file to re-read".into(),
            ));
        };
        let name = path.display().to_string();
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| invalid(name.clone(), format!("cannot read file: {e}")))?;
        let new = Config::parse(&name, &text, |var| std::env::var(var).ok())
            .map_err(ReloadError::Invalid)?;
        for w in new.warnings_in(&text) {
            tracing::warn!(problem = %w, "config warning");
        }
        let old = self.running.load_full();
        let (new, restart_required) = keep_restart_only(&old, new);
        // The certificates first: a reload that cannot read one changes nothing. Both are read
        // before either is swapped.
        let mut fresh = Vec::new();
        for (slot, files, prefix) in [
            (&self.certificate, &new.tls, ""),
            (&self.admin_certificate, &new.admin_tls, "admin_"),
        ] {
            if let (Some(certificate), Some(files)) = (slot.get(), files) {
                // The message names `tls.cert` or `tls.key`; the admin ones are `admin_tls.…`.
                let read = certificate
                    .read_files(files)
                    .map_err(|message| invalid(name.clone(), format!("{prefix}{message}")))?;
                fresh.push((certificate, read));
            }
        }
        for (certificate, read) in fresh {
            certificate.install(read);
        }
        if let Err(e) = crate::telemetry::set_level(&new.log.level) {
            // Validated already; a failure here is the subscriber's, and not worth the reload.
            tracing::warn!(error = %e, "log level not changed");
        }
        let mut changed = changed_sections(&old, &new);
        let new = Arc::new(new);
        // A CA or client certificate replaced in place changes no config text, but the
        // upstreams reading it.
        if self.gateway.reconfigure(&new) && !changed.contains(&"upstreams") {
            changed.push("upstreams");
        }
        self.admin.store(Arc::new(AdminConfig::new(new.clone())));
        self.running.store(new);
        let config_hash = text_hash(&text);
        self.metrics.config_running(&config_hash);
        self.hash.store(Arc::new(config_hash.clone()));
        Ok(Reloaded {
            changed,
            restart_required,
            config_hash,
        })
    }
}

/// The hash by which `/readyz` and the metrics name a config file's text.
pub fn text_hash(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex()[..16].to_owned()
}

/// Whether two values differ, by their debug form (the config's types are compared field by
/// field there, secrets excepted: those are compared apart).
fn differ(a: &impl std::fmt::Debug, b: &impl std::fmt::Debug) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

/// `new` with every restart-only field set back to its running value, and the names of those
/// that differed.
fn keep_restart_only(old: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($name:literal, $($field:tt)+) => {
            if differ(&old.$($field)+, &new.$($field)+) {
                new.$($field)+ = old.$($field)+.clone();
                kept.push($name);
            }
        };
    }
    keep!("listen", listen);
    keep!("store", store);
    keep!("keys", keys);
    keep!("cache", cache);
    keep!("usage", usage);
    keep!("limits", limits);
    keep!("rate_limits.mode", rate_limits.mode);
    keep!("log.format", log.format);
    if old.secrets.pepper != new.secrets.pepper {
        new.secrets = old.secrets.clone();
        kept.push("secrets.pepper");
    }
    if old.tls.is_some() != new.tls.is_some() {
        new.tls = old.tls.clone();
        kept.push("tls");
    }
    if old.admin_tls.is_some() != new.admin_tls.is_some() {
        new.admin_tls = old.admin_tls.clone();
        kept.push("admin_tls");
    }
    (new, kept)
}

/// The reloadable sections that differ between `old` and `new`.
fn changed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut note = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    note("routes", differ(&old.routes, &new.routes));
    note("upstreams", differ(&old.upstreams, &new.upstreams));
    note("roles", differ(&old.roles, &new.roles));
    note("scopes", differ(&old.scopes, &new.scopes));
    note("workspaces", differ(&old.workspaces, &new.workspaces));
    note("rate_limits", differ(&old.rate_limits, &new.rate_limits));
    note("quotas", differ(&old.quotas, &new.quotas));
    note("auth", differ(&old.auth, &new.auth));
    note(
        "trusted_proxies",
        differ(&old.trusted_proxies, &new.trusted_proxies),
    );
    note("forward", differ(&old.forward, &new.forward));
    let tokens = |c: &Config| {
        c.admin
            .tokens
            .iter()
            .map(|t| format!("{:?}{}", t, blake3::hash(t.token.as_bytes())))
            .collect::<Vec<_>>()
    };
    note("admin.tokens", tokens(old) != tokens(new));
    note("log", differ(&old.log, &new.log));
    note(
        "shutdown",
        old.shutdown_timeout != new.shutdown_timeout || old.shutdown_delay != new.shutdown_delay,
    );
    // Certificates are re-read whatever their paths: files are replaced in place.
    note("tls", new.tls.is_some());
    note("admin_tls", new.admin_tls.is_some());
    changed
}
