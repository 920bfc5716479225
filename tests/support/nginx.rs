//! A real nginx (Debian's `nginx`, with `auth_request`) started by the test on a free loopback
//! port, in a temp dir of its own: its config, pid file, logs and temp paths. The repository's
//! `deploy/nginx/*.conf` are copied unchanged into its `snippets/`, where an `/etc/nginx`
//! install keeps them, so the test runs the snippets users include. Stopped (by the PID the test
//! started) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use super::process::free_port;

/// A running nginx.
pub struct Nginx {
    child: Child,
    /// The port its one server listens on (127.0.0.1).
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with `http` as the body of its `http { }` block, after writing the
    /// deployment snippets to `snippets/`. `{port}` in `http` is replaced by the port it listens
    /// on. Waits (at most 10 s) until it accepts connections.
    pub fn start(http: &str) -> Nginx {
        let dir = tempfile::tempdir().expect("temp dir");
        let snippets = dir.path().join("snippets");
        std::fs::create_dir(&snippets).expect("snippets dir");
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx");
        for entry in std::fs::read_dir(&deploy).expect("deploy/nginx") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "conf") {
                std::fs::copy(&path, snippets.join(path.file_name().expect("name")))
                    .expect("copy snippet");
            }
        }
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            "master_process off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
             access_log off;\n\
             client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             {}\n\
             }}\n",
            http.replace("{port}", &port.to_string())
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log"))
            .spawn()
            .expect("nginx starts (Debian: apt-get install nginx)");
        let mut nginx = Nginx { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}): {}", nginx.log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx never listened: {}",
                nginx.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// The end of its error log and stderr, for a failing assertion's message.
    pub fn log(&self) -> String {
        let read = |name| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let mut log = read("stderr.log") + &read("error.log");
        let mut cut = log.len().saturating_sub(4000);
        while !log.is_char_boundary(cut) {
            cut += 1;
        }
        log.split_off(cut)
    }
}

/// `nginx` on the PATH, else Debian's `/usr/sbin/nginx` (not on a non-root PATH).
fn nginx_binary() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/nginx");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("nginx")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // One process (`master_process off`): no workers to outlive it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
