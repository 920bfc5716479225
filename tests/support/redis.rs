//! A real `redis-server` per test: on a free loopback port, in its own temporary directory,
//! without persistence (or, from [`RedisServer::start_persistent`], with an append-only file in
//! that directory, so that a stop and a start keep the data), stopped (and restartable on the
//! same port) or frozen on demand, and killed on drop. Tests never touch a system Redis or a
//! fixed port.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh server has to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at finding a port that is still free when the server binds it.
const PORT_ATTEMPTS: usize = 5;

/// A `redis-server` process this test started.
pub(crate) struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    persistent: bool,
    /// More `redis-server` arguments (a cluster node's), given on every start.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub(crate) fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Like [`RedisServer::start`], with every write in an append-only file (fsynced at once)
    /// in the server's own directory: [`RedisServer::stop_gracefully`] then
    /// [`RedisServer::start_again`] is a Redis restart that keeps the data.
    pub(crate) fn start_persistent() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> RedisServer {
        Self::start_configured(persistent, |_| Vec::new())
    }

    /// Starts a server on a free port with more arguments, made from that port (a cluster
    /// node's bus port, say), and waits until it answers `PING`.
    pub(crate) fn start_configured(
        persistent: bool,
        extra: impl Fn(u16) -> Vec<String>,
    ) -> RedisServer {
        let dir = tempfile::tempdir().expect("a temporary directory for redis-server");
        let mut server = RedisServer {
            port: 0,
            dir,
            child: None,
            persistent,
            extra: Vec::new(),
        };
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            server.extra = extra(server.port);
            // Another process may take the port between our probe and redis-server's bind:
            // then the server exits and we try another port.
            if server.spawn_and_wait().is_ok() {
                return server;
            }
        }
        panic!(
            "redis-server did not start after {PORT_ATTEMPTS} attempts; its log:\n{}",
            server.log()
        );
    }

    /// `redis://127.0.0.1:<port>/`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (the process this harness started) and waits for it to exit. Data is
    /// lost: there is no persistence.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already exited is fine: the point is that it is not running.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server as an operator would (SIGTERM: it finishes the commands it has read,
    /// syncs its append-only file and exits) and waits for it to exit.
    pub(crate) fn stop_gracefully(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + READY_TIMEOUT;
        while sent && Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "redis-server did not stop on SIGTERM; its log:\n{}",
            self.log()
        );
    }

    /// Whether the process is running (started and not stopped).
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Freezes the server (SIGSTOP to the process this harness started): connections stay open
    /// and new ones are accepted by the kernel, but nothing is answered, as when a host or the
    /// network between goes silent. [`RedisServer::thaw`] lets it go on.
    pub(crate) fn freeze(&mut self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT); it answers what it was sent meanwhile.
    pub(crate) fn thaw(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&mut self, signal: &str) {
        let child = self.child.as_ref().expect("a running redis-server");
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill {signal} failed");
    }

    /// Starts the server again on the same port, for outage tests.
    pub(crate) fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again needs a stopped server");
        if let Err(why) = self.spawn_and_wait() {
            panic!(
                "redis-server did not restart on port {}: {why}; its log:\n{}",
                self.port,
                self.log()
            );
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let appendonly: &[&str] = if self.persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(appendonly)
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", "redis.log"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}); install it, e.g. `apt-get install redis-server`"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if answers_ping(self.port) {
                return Ok(());
            }
            let child = self.child.as_mut().expect("spawned above");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!("redis-server exited with {status}"));
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!("no PONG within {READY_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log file, for failure messages.
    pub(crate) fn log(&self) -> String {
        let path: PathBuf = self.dir.path().join("redis.log");
        std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn answers_ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
