//! The tests' Python peers (`tests/grpc/echo_server.py`, `tests/http/named_server.py`) as child
//! processes: started with `--port-file`, ready once they have written the port they bound, and
//! ended by their PID when dropped (or killed early, to test an outage).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A running Python server.
pub struct PyServer {
    child: std::process::Child,
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl PyServer {
    /// Runs `script` (a path under `tests/`) with `args` and `--port-file`, and waits for the port.
    pub async fn start(script: &str, args: &[&str]) -> PyServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port_file = dir.path().join("port");
        let child = std::process::Command::new("python3")
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests")
                    .join(script),
            )
            .args(args)
            .arg("--port-file")
            .arg(&port_file)
            .spawn()
            .expect("python3 runs (scripts/test installs grpcio for the gRPC peers)");
        // Owned at once, so that a failure below still ends it.
        let mut server = PyServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            _dir: dir,
        };
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                server
                    .addr
                    .set_port(text.trim().parse().expect("a port number"));
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{script} did not start within 5 s");
    }

    /// Kills it now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        self.kill();
    }
}
