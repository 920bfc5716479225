//! Proxy workers, nginx's model: with more than one worker, each is an OS thread running its own
//! current-thread tokio runtime that accepts on its own `SO_REUSEPORT` listener. A connection,
//! its requests and the upstream connections they use then live on one thread: no work
//! stealing, no cross-thread wake-up per request (tokio's multi-thread runtime moved tasks and
//! their wake-ups between threads; measured against it in the README, "Performance").
//!
//! The control plane (admin API, usage flusher, store subscriptions) stays on the runtime that
//! starts them. Workers keep serving their connections through the drain and exit when
//! told that it is over.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::thread::JoinHandle;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};

use super::{Drain, ListenerOptions, accept_loop};
use crate::proxy::ConnInfo;

/// Pending connections each worker's listener queues (tokio's own default for `bind`).
const BACKLOG: u32 = 1024;

thread_local! {
    /// This thread's worker number; 0 outside per-core workers (one worker, tokio's threads).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker this thread is: per-worker state (the upstream connection pools) is indexed by it
/// so that a worker only ever uses connections its own runtime drives.
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// A listener on `addr` with `SO_REUSEPORT`, so that each worker can bind one of its own on
/// the same address and the kernel spreads new connections across them.
pub fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Started workers: their accept loops end at `stop`; [`Workers::finish`] ends the threads.
pub struct Workers {
    /// Each worker's accept loop reporting that it stopped.
    stopped: Vec<oneshot::Receiver<()>>,
    /// Tells the workers the drain is over (or given up on): their runtimes may end.
    release: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

/// Starts `count` workers serving `listener` with `handler` until `stop`. Each worker after the first binds its own listener
/// on the same address; a first listener bound without `SO_REUSEPORT` (by a caller that did
/// not use [`reuseport_listener`]) is shared by every worker instead.
pub fn start<F, Fut, B>(
    listener: TcpListener,
    count: NonZeroUsize,
    options: &ListenerOptions,
    handler: &F,
    stop: &watch::Receiver<bool>,
    drain: &Drain,
) -> io::Result<Workers>
where
    F: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let addr = listener.local_addr()?;
    let first = listener.into_std()?;
    let mut sockets = vec![first];
    for _ in 1..count.get() {
        let socket = match reuseport_listener(addr) {
            Ok(l) => l.into_std()?,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                tracing::debug!(%addr, "proxy listener not reusable; workers share it");
                sockets[0].try_clone()?
            }
            Err(e) => return Err(e),
        };
        sockets.push(socket);
    }
    let (release, released) = watch::channel(false);
    let mut workers = Workers {
        stopped: Vec::new(),
        release,
        threads: Vec::new(),
    };
    for (index, socket) in sockets.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (options, handler, stop, drain) = (
            options.clone(),
            handler.clone(),
            stop.clone(),
            drain.clone(),
        );
        let mut released = released.clone();
        let (stopped_tx, stopped_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("kg-proxy-{index}"))
            .spawn(move || {
                INDEX.with(|i| i.set(index));
                runtime.block_on(async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => accept_loop(listener, options, handler, stop, &drain).await,
                        Err(e) => tracing::error!(worker = index, error = %e, "cannot listen"),
                    }
                    let _ = stopped_tx.send(());
                    // Connections this runtime drives finish here, until the drain is over.
                    let _ = released.wait_for(|done| *done).await;
                });
            })?;
        workers.stopped.push(stopped_rx);
        workers.threads.push(thread);
    }
    Ok(workers)
}

impl Workers {
    /// Completes once every worker has stopped accepting.
    pub async fn accepting_stopped(&mut self) {
        for stopped in &mut self.stopped {
            let _ = stopped.await;
        }
    }

    /// Ends the workers (after the drain: connections still open are closed) and waits for
    /// their threads.
    pub async fn finish(self) {
        self.release.send_replace(true);
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("a proxy worker thread panicked");
                }
            }
        });
        let _ = joined.await;
    }
}
