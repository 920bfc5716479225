//! Listeners: the accept loops for the proxy and admin listeners, TLS termination, HTTP/1.1 and
//! HTTP/2 (h2 by ALPN over TLS, h2c by prior knowledge), what one connection may hold
//! (`limits.max_connections` per listener, the first request head due within
//! `limits.header_read_timeout` of accept, idle connections closed), and the graceful drain on
//! shutdown. What a request means is not decided here.

use std::convert::Infallible;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::MissedTickBehavior;
use tokio_rustls::TlsAcceptor;

use crate::config::{Limits, TlsFiles};
use crate::metrics::{ConnectionMetrics, Listener, Metrics};
use crate::proxy::ConnInfo;

pub mod workers;

/// Pause after an accept error (e.g. out of file descriptors) before accepting again: without
/// it a failing `accept` would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The proxy listener's certificate, swappable: a reload re-reads the files, and every TLS
/// handshake from then on gets the new certificate (connections already open keep theirs).
#[derive(Debug)]
pub struct Certificate {
    current: arc_swap::ArcSwap<rustls::sign::CertifiedKey>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Certificate {
    /// Reads the certificate chain and key of `files`, checking that they match.
    fn read(
        files: &TlsFiles,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<rustls::sign::CertifiedKey, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| format!("tls.cert {}: {e}", display(&files.cert)))?;
        if certs.is_empty() {
            return Err(format!(
                "tls.cert {}: no certificate found",
                display(&files.cert)
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| format!("tls.key {}: {e}", display(&files.key)))?;
        rustls::sign::CertifiedKey::from_der(certs, key, provider)
            .map_err(|e| format!("tls.cert and tls.key: {e}"))
    }

    /// Reads new files for this certificate, without installing them.
    pub fn read_files(&self, files: &TlsFiles) -> Result<rustls::sign::CertifiedKey, String> {
        Certificate::read(files, &self.provider)
    }

    /// Serves `fresh` to every handshake from now on.
    pub fn install(&self, fresh: rustls::sign::CertifiedKey) {
        self.current.store(Arc::new(fresh));
    }
}

impl rustls::server::ResolvesServerCert for Certificate {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Loads a rustls server config with ALPN `h2` and `http/1.1`, and its swappable certificate.
pub fn load_tls(files: &TlsFiles) -> Result<(TlsAcceptor, Arc<Certificate>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certificate = Arc::new(Certificate {
        current: arc_swap::ArcSwap::from_pointee(Certificate::read(files, &provider)?),
        provider: provider.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certificate.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), certificate))
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

fn builder(header_read_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

/// How one listener serves its connections.
#[derive(Clone)]
pub struct ListenerOptions {
    /// Which listener, for logs and metrics.
    pub listener: Listener,
    /// TLS termination, if any.
    pub tls: Option<TlsAcceptor>,
    /// `limits:`.
    pub limits: Limits,
    /// Where open, refused and timed-out connections are counted.
    pub metrics: ConnectionMetrics,
    /// Slots under `limits.max_connections`, shared by every accept loop of the listener (its
    /// workers).
    permits: Arc<Semaphore>,
}

impl ListenerOptions {
    /// Plain HTTP with `limits`, counted in `metrics`.
    pub fn new(listener: Listener, limits: &Limits, metrics: &Metrics) -> Self {
        ListenerOptions {
            listener,
            tls: None,
            limits: limits.clone(),
            metrics: metrics.connections(listener).clone(),
            permits: Arc::new(Semaphore::new(limits.max_connections.get())),
        }
    }

    /// Terminates TLS with `tls`.
    pub fn with_tls(mut self, tls: Option<TlsAcceptor>) -> Self {
        self.tls = tls;
        self
    }
}

/// One open connection's place under `limits.max_connections`, given back (and the open gauge
/// lowered) when the last holder drops it: the connection's task, or the tunnel an `Upgrade`
/// (WebSocket) turned it into, which outlives the HTTP connection.
#[derive(Clone)]
pub struct ConnectionSlot {
    _held: Arc<Slot>,
}

impl std::fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionSlot")
    }
}

struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Drains the connections of the listeners on shutdown: each connection is told to finish what
/// it is doing and close (HTTP/1: after the response in flight; HTTP/2: GOAWAY, streams in
/// flight complete), and [`Drain::shutdown`] returns once every one has closed. Like
/// hyper-util's `GracefulShutdown`, whose connection trait is sealed and so cannot also close
/// idle connections.
#[derive(Clone)]
pub struct Drain {
    tx: Arc<watch::Sender<bool>>,
}

impl Drain {
    /// No connections yet.
    pub fn new() -> Drain {
        Drain {
            tx: Arc::new(watch::Sender::new(false)),
        }
    }

    fn watcher(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Tells every connection to finish, then waits until all have closed.
    pub async fn shutdown(&self) {
        self.tx.send_replace(true);
        self.tx.closed().await;
    }
}

impl Default for Drain {
    fn default() -> Self {
        Drain::new()
    }
}

/// Accepts connections on `listener` until `stop` turns true, serving each with the service
/// `make` builds for it. Connections are registered with `drain` so shutdown can drain them.
///
/// At most `limits.max_connections` are open at once: a connection accepted beyond that is
/// closed at once and counted, so a flood of idle connections cannot take the file
/// descriptors that the connections being served, the upstreams and the store need. Each
/// connection must complete its first request head (TLS handshake included) within
/// `limits.header_read_timeout` of accept, or it is closed.
pub async fn accept_loop<F, Fut, B>(
    listener: TcpListener,
    options: ListenerOptions,
    handler: F,
    mut stop: watch::Receiver<bool>,
    drain: &Drain,
) where
    F: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let name = options.listener.name();
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let max = options.limits.max_connections.get();
    let permits = options.permits.clone();
    // Episodes, so that a flood is one warning and one all-clear rather than a line per event.
    let mut accept_errors: u64 = 0;
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    if accept_errors == 0 {
                        tracing::warn!(
                            listener = name,
                            error = %e,
                            "accept failing; retrying every {ACCEPT_ERROR_PAUSE:?} until it succeeds"
                        );
                    }
                    accept_errors += 1;
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        if accept_errors > 0 {
            tracing::info!(listener = name, failures = accept_errors, "accepting again");
            accept_errors = 0;
        }
        let deadline = Instant::now() + options.limits.header_read_timeout;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            options.metrics.refused.inc();
            if refused == 0 {
                tracing::warn!(
                    listener = name,
                    max_connections = max,
                    "limits.max_connections reached; closing new connections until some end"
                );
            }
            refused += 1;
            drop(stream);
            continue;
        };
        // The episode ends once a tenth of the slots are free again, not at the first one freed:
        // a flood held at the cap would otherwise log a pair of lines per connection.
        if refused > 0 && permits.available_permits() >= max / 10 {
            tracing::info!(
                listener = name,
                refused,
                "below limits.max_connections again; accepting"
            );
            refused = 0;
        }
        options.metrics.open.inc();
        let slot = ConnectionSlot {
            _held: Arc::new(Slot {
                _permit: permit,
                open: options.metrics.open.clone(),
            }),
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            // The slot goes with the connection info: into the service (so the HTTP connection
            // holds it) and from there into any tunnel an upgrade makes.
            info: ConnInfo::new(peer, scheme).with_slot(slot),
            deadline,
            header_read_timeout: options.limits.header_read_timeout,
            timed_out: options.metrics.timed_out.clone(),
        };
        let handler = handler.clone();
        let watcher = drain.watcher();
        match &options.tls {
            None => serve(stream, conn, handler, watcher),
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout_at(deadline.into(), acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve(stream, conn, handler, watcher),
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => {
                            conn.timed_out.inc();
                            tracing::debug!(%peer, "TLS handshake not done within header_read_timeout");
                        }
                    }
                });
            }
        }
    }
}

/// An accepted connection, before HTTP.
struct Conn {
    info: ConnInfo,
    /// When the first request head must be complete.
    deadline: Instant,
    header_read_timeout: Duration,
    timed_out: Counter,
}

/// Completes once `stop` is (or becomes) true, or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        // The borrow guard is not Send: keep it out of any await.
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

fn serve<I, F, Fut, B>(io: I, conn: Conn, handler: F, mut drain: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>, ConnInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Conn {
        info,
        deadline,
        header_read_timeout,
        timed_out,
    } = conn;
    let peer = info.peer;
    // Requests whose head has been read. hyper's own header timeout starts only once bytes
    // arrive (the h1/h2 detection waits for them without a limit) and covers HTTP/1 alone, so
    // the first head's deadline, counted from accept, and idleness are watched here.
    let requests = Arc::new(AtomicU64::new(0));
    let seen = requests.clone();
    let service = service_fn(move |req| {
        seen.fetch_add(1, Ordering::Relaxed);
        let response = handler(req, info.clone());
        async move { Ok::<_, Infallible>(response.await) }
    });
    tokio::spawn(async move {
        let mut connection = Box::pin(
            builder(header_read_timeout)
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned(),
        );
        // First at the head's deadline, then every timeout: a connection that started no
        // request over a whole period is idle.
        let mut watch = tokio::time::interval_at(deadline.into(), header_read_timeout);
        watch.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last = 0;
        let mut closing = *drain.borrow_and_update();
        if closing {
            connection.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                // Shutting down (or the drain is gone): finish what is in flight, then close.
                _ = drain.changed(), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = watch.tick() => {
                    let now = requests.load(Ordering::Relaxed);
                    if now == 0 {
                        timed_out.inc();
                        tracing::debug!(%peer, "no request head within header_read_timeout of accept; closing");
                        return;
                    }
                    if now == last && !closing {
                        // Idle (HTTP/2 clients answer keep-alive pings for ever): close as on
                        // shutdown, so a request racing the close is not lost.
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    last = now;
                }
            }
        }
    });
}

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, draining"),
        _ = int.recv() => tracing::info!("SIGINT received, draining"),
    }
    Ok(())
}
