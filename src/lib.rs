//! keygate: an API-key authentication gateway.
//!
//! # Layout
//!
//! The request path, in the order a request meets it:
//!
//! - [`server`] — accept loops, TLS, HTTP/1.1 and HTTP/2, graceful drain.
//! - [`proxy`] — the stages, in order: request id → [`route`] → [`auth`] (credential, client IP)
//!   → key lookup through [`store::cache`] → status, expiry, allowlist, scopes → [`limits`]
//!   (rate limit, quota) → [`proxy::upstream`] (forwarding) → access log.
//! - [`error`] — why a request was refused, and the one place a refusal becomes a response.
//! - [`header_values`] — the header values written per request, cut from a shared buffer.
//!
//! Around it:
//!
//! - [`config`] — the YAML file, typed and validated; [`reload`] — swapping it in while serving.
//! - [`keys`] — secret format, ids, keyed hashing, key records.
//! - [`store`] — the key index (`KeyStore`: embedded redb or Redis), its hot cache, the
//!   invalidation channel that keeps the caches of instances sharing Redis in step, and the
//!   fleet of those instances (heartbeats, live count, confirmed changes).
//! - [`control`] — key lifecycle operations (write the store, then invalidate the cache).
//! - [`workspaces`] — workspaces from the config and from the admin API, and this instance's
//!   copy of them.
//! - [`admin`] — the admin listener: admin API, OpenAPI document, health and readiness, metrics.
//! - [`usage`] — usage counts and request logs: recorded off the request path, written in
//!   batches, drained on shutdown.
//! - [`metrics`] — the Prometheus registry and its typed handles; [`histogram`] — the lock-free
//!   latency histogram they (and the store's instruments) record into.
//! - [`telemetry`] — logging.
//!

pub mod admin;
pub mod auth;
pub mod config;
pub mod control;
pub mod error;
pub mod header_values;
pub mod histogram;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod usage;
pub mod webhooks;
pub mod workspaces;

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::control::KeyManager;
use crate::metrics::{Listener, Metrics};
use crate::proxy::Gateway;
use crate::store::cache::KeyCache;
use crate::store::{Store, StoreError};

/// The two bound listeners. Binding is separate from [`run`] so tests and supervisors can bind
/// port 0 (or inherit sockets) and learn the addresses first.
pub struct Listeners {
    /// Data plane.
    pub proxy: TcpListener,
    /// Admin API and probes.
    pub admin: TcpListener,
    /// Forward authentication, when `listen.authz` is set.
    pub authz: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `listen:`.
    pub async fn bind(config: &Config) -> io::Result<Listeners> {
        Listeners::bind_for_workers(config, std::num::NonZeroUsize::MIN).await
    }

    /// The same for a proxy served by `workers` workers ([`App::with_proxy_workers`]): with
    /// more than one, the proxy listener allows each worker a socket of its own on its address
    /// (`SO_REUSEPORT`).
    pub async fn bind_for_workers(
        config: &Config,
        workers: std::num::NonZeroUsize,
    ) -> io::Result<Listeners> {
        let addr = config.listen.proxy;
        let proxy = if workers.get() > 1 {
            server::workers::reuseport_listener(addr)
        } else {
            TcpListener::bind(addr).await
        }
        .map_err(|e| io::Error::new(e.kind(), format!("listen.proxy {addr}: {e}")))?;
        let admin = TcpListener::bind(config.listen.admin).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("listen.admin {}: {e}", config.listen.admin),
            )
        })?;
        let authz = match config.listen.authz {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("listen.authz {addr}: {e}")))?,
            ),
            None => None,
        };
        Ok(Listeners {
            proxy,
            admin,
            authz,
        })
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// TLS material could not be loaded.
    #[error("{0}")]
    Tls(String),
    /// The config file could not be read or is invalid.
    #[error("{0}")]
    Config(String),
    /// The proxy's worker threads could not be started.
    #[error("proxy workers: {0}")]
    Workers(String),
}

/// A started gateway: the store, the cache, the data plane and the key operations.
pub struct App {
    config: Arc<Config>,
    reloader: Arc<reload::Reloader>,
    webhooks: Arc<webhooks::Webhooks>,
    store: Arc<Store>,
    gateway: Arc<Gateway>,
    keys: KeyManager,
    metrics: Metrics,
    /// Started by the first [`App::serve`].
    flusher: Mutex<Option<usage::Flusher>>,
    /// Threads serving the proxy listener ([`server::workers`]); with one, the runtime that
    /// calls [`App::serve`] serves it.
    proxy_workers: std::num::NonZeroUsize,
}

impl App {
    /// Opens the store and builds the data plane for a validated config (not read from a file:
    /// reloads are refused).
    pub async fn new(config: Config) -> Result<App, StartError> {
        App::open(config, None, String::new()).await
    }

    /// The same for the config read from `path`, which SIGHUP and `POST /v1/reload` re-read.
    pub async fn from_file(path: &std::path::Path) -> Result<App, StartError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StartError::Config(format!("{}: {e}", path.display())))?;
        let config = Config::parse(&path.display().to_string(), &text, |v| {
            std::env::var(v).ok()
        })
        .map_err(|e| StartError::Config(e.to_string()))?;
        for w in config.warnings_in(&text) {
            tracing::warn!(problem = %w, "config warning");
        }
        App::open(config, Some(path.to_owned()), reload::text_hash(&text)).await
    }

    async fn open(
        config: Config,
        path: Option<std::path::PathBuf>,
        text_hash: String,
    ) -> Result<App, StartError> {
        let metrics = Metrics::new();
        let store = Arc::new(Store::open(&config.store).await?);
        let cache = Arc::new(
            KeyCache::new(store.clone(), &config.cache).with_store_metrics(metrics.store().clone()),
        );
        metrics.observe_cache(cache.clone());
        let (recorder, flusher) = usage::channel(&config, store.clone(), metrics.clone());
        // Instances sharing the global rate limits, as the fleet's heartbeats count them (one
        // node alone on the embedded store).
        let live_instances = store.fleet().map_or_else(
            || Arc::new(std::sync::atomic::AtomicUsize::new(1)),
            store::fleet::Fleet::share_count,
        );
        let gateway = Arc::new(
            Gateway::new(&config, cache.clone(), live_instances)
                .with_telemetry(recorder, metrics.clone()),
        );
        let keys = KeyManager::new(cache, gateway.format().clone(), gateway.hasher().clone());
        let config = Arc::new(config);
        let reloader = Arc::new(reload::Reloader::new(
            config.clone(),
            text_hash,
            path,
            gateway.clone(),
            metrics.clone(),
        ));
        let webhooks = Arc::new(webhooks::Webhooks::new(
            reloader.clone(),
            store.clone(),
            metrics.clone(),
        ));
        gateway.set_webhooks(&webhooks);
        Ok(App {
            config,
            reloader,
            webhooks,
            store,
            gateway,
            keys,
            metrics,
            flusher: Mutex::new(Some(flusher)),
            proxy_workers: std::num::NonZeroUsize::MIN,
        })
    }

    /// Serves the proxy listener with `count` worker threads, each with its own current-thread
    /// runtime and listener ([`server::workers`]). Bind the proxy listener with
    /// [`server::workers::reuseport_listener`] so that each worker gets a socket of its own.
    pub fn with_proxy_workers(mut self, count: std::num::NonZeroUsize) -> Self {
        self.proxy_workers = count;
        self
    }

    /// The running config and its reloads.
    pub fn reloader(&self) -> &Arc<reload::Reloader> {
        &self.reloader
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Webhooks: events into the outbox, deliveries out of it.
    pub fn webhooks(&self) -> &Arc<webhooks::Webhooks> {
        &self.webhooks
    }

    /// The key index.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The data plane.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Key lifecycle operations.
    pub fn keys(&self) -> &KeyManager {
        &self.keys
    }

    /// Serves both listeners until `shutdown` completes; then `/readyz` answers 503 while both
    /// keep serving for `shutdown_delay`; then stops accepting and drains in-flight requests for
    /// up to `shutdown_timeout`; then writes the buffered usage (for up to `shutdown_timeout`
    /// more).
    pub async fn serve(
        &self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        let tls = match &self.config.tls {
            Some(files) => {
                let (acceptor, certificate) = server::load_tls(files).map_err(StartError::Tls)?;
                self.reloader
                    .watch_certificate(reload::Listener::Proxy, certificate);
                Some(acceptor)
            }
            None => None,
        };
        let admin_tls = match &self.config.admin_tls {
            Some(files) => {
                let (acceptor, certificate) =
                    server::load_tls(files).map_err(|e| StartError::Tls(format!("admin_{e}")))?;
                self.reloader
                    .watch_certificate(reload::Listener::Admin, certificate);
                Some(acceptor)
            }
            None => None,
        };
        // Other instances' changes reach this cache for as long as it serves, drain included.
        let workspaces = self.gateway.workspaces().clone();
        // Before the first request, so that stored workspaces' defaults apply to it; if the
        // store cannot answer now, the directory's task keeps trying.
        if let Err(e) = workspaces.refresh_all(&self.store).await {
            tracing::warn!(error = %e, "stored workspaces not read at start; retrying");
            workspaces.maybe_missed();
        }
        let invalidations =
            store::invalidation::Subscriber::start(self.gateway.keys().clone(), workspaces.clone());
        // Stored workspaces are read now, when other instances change them, and every
        // `cache.ttl`, for as long as the gateway serves.
        let directory = tokio::spawn(workspaces.run(self.store.clone(), self.config.cache.ttl));
        // The usage flusher runs while serving (and only once, if serve is called again).
        let flusher = self
            .flusher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map(usage::Flusher::spawn);
        let (stop_tx, stop_rx) = watch::channel(false);
        // Deliveries go on through the drain (a refusal during it may still produce events) and
        // stop once the usage is written.
        let (webhooks_stop, webhooks_stopped) = watch::channel(false);
        let deliveries = tokio::spawn(self.webhooks.clone().run(webhooks_stopped));
        let drain = server::Drain::new();
        // Quota counts kept in memory are written until the drain is over, then once more.
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let quota_writer = tokio::spawn(self.gateway.limits().persist(
            self.config.usage.flush_interval,
            async {
                let _ = drained_rx.await;
            },
        ));

        let admin_handler = admin::Admin::new(
            self.reloader.clone(),
            self.store.clone(),
            self.keys.clone(),
            self.gateway.clone(),
            self.webhooks.clone(),
        );
        let gateway = self.gateway.clone();
        let leak_reports = admin_handler.clone();
        let proxy_handler = move |req: http::Request<hyper::body::Incoming>, conn| {
            let gateway = gateway.clone();
            // `leaks.public_path`: GitHub reaches the proxy listener, not the admin one.
            let admin = gateway.is_leak_report(&req).then(|| leak_reports.clone());
            async move {
                match admin {
                    Some(admin) => admin
                        .leak_report(req, conn)
                        .await
                        .map(http_body_util::Either::Left),
                    None => gateway.handle(req, conn).await,
                }
            }
        };
        let proxy_options =
            server::ListenerOptions::new(Listener::Proxy, &self.config.limits, &self.metrics)
                .with_tls(tls);
        // One worker: this runtime accepts. More: threads of their own (`server::workers`).
        let (here, mut workers) = if self.proxy_workers.get() > 1 {
            let started = server::workers::start(
                listeners.proxy,
                self.proxy_workers,
                &proxy_options,
                &proxy_handler,
                &stop_rx,
                &drain,
            )
            .map_err(|e| StartError::Workers(e.to_string()))?;
            (None, Some(started))
        } else {
            (Some(listeners.proxy), None)
        };
        let proxy = async {
            if let Some(listener) = here {
                let stop = stop_rx.clone();
                server::accept_loop(listener, proxy_options, proxy_handler, stop, &drain).await;
            }
            if let Some(workers) = &mut workers {
                workers.accepting_stopped().await;
            }
        };
        // Forward authentication decides on this runtime: it forwards nothing, so it needs none
        // of the per-worker upstream pools.
        let authz_listener = listeners.authz;
        let authz = async {
            let Some(listener) = authz_listener else {
                return;
            };
            let gateway = self.gateway.clone();
            server::accept_loop(
                listener,
                server::ListenerOptions::new(Listener::Authz, &self.config.limits, &self.metrics),
                move |req, conn| {
                    let gateway = gateway.clone();
                    async move { gateway.authz(req, conn).await }
                },
                stop_rx.clone(),
                &drain,
            )
            .await;
        };
        let admin = server::accept_loop(
            listeners.admin,
            server::ListenerOptions::new(Listener::Admin, &self.config.limits, &self.metrics)
                .with_tls(admin_tls),
            move |req, conn| {
                let admin = admin_handler.clone();
                async move { admin.handle(req, conn).await }
            },
            stop_rx.clone(),
            &drain,
        );
        tracing::info!(
            proxy = %self.config.listen.proxy,
            admin = %self.config.listen.admin,
            authz = ?self.config.listen.authz,
            backend = ?self.config.store.backend,
            "keygate serving"
        );
        let stop = async {
            shutdown.await;
            self.gateway.start_draining();
            let delay = self.reloader.config().shutdown_delay;
            if !delay.is_zero() {
                tracing::info!(
                    ?delay,
                    "readiness answers 503; serving on for shutdown_delay"
                );
                tokio::time::sleep(delay).await;
            }
            let _ = stop_tx.send(true);
        };
        tokio::join!(proxy, admin, authz, stop);

        let timeout = self.reloader.config().shutdown_timeout;
        tokio::select! {
            _ = drain.shutdown() => tracing::info!("all connections drained"),
            _ = tokio::time::sleep(timeout) => {
                tracing::warn!(?timeout, "shutdown_timeout reached; closing remaining connections");
            }
        }
        if let Some(workers) = workers {
            workers.finish().await;
        }
        // After the drain, so every answered request has been recorded and counted.
        if let Some(flusher) = flusher {
            flusher.finish().await;
        }
        let _ = drained_tx.send(());
        let _ = quota_writer.await;
        webhooks_stop.send_replace(true);
        // Attempts in flight finish (each bounded by its endpoint's timeout), within
        // shutdown_timeout; what is cut off stays in the outbox, claimed again after its lease.
        let mut deliveries = deliveries;
        if tokio::time::timeout(timeout, &mut deliveries)
            .await
            .is_err()
        {
            deliveries.abort();
            tracing::warn!(
                ?timeout,
                "webhook deliveries cut off at shutdown_timeout; they stay in the outbox"
            );
        }
        invalidations.stop().await;
        // Awaited: the task holds the store, which must be closed when `serve` returns (a
        // restart reopens the embedded file).
        directory.abort();
        let _ = directory.await;
        Ok(())
    }
}

/// Opens the store for `config`, serves `listeners` until `shutdown`, then drains.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    App::new(config).await?.serve(listeners, shutdown).await
}
