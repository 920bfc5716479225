//! The real `keygate` binary as a test's child process: listeners on free loopback ports, stderr
//! in a log file, readiness awaited, SIGTERM with a bounded wait for a clean exit. The process
//! is killed (by the PID the test started) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keygate::keys::{KeyRecord, Secret};

/// Issues a key through the library into the store a config file names, before the binary is
/// started on that file (the binary then finds it there, as it would after an admin call).
pub async fn issue_key(config: &str, new: keygate::control::NewKey) -> (KeyRecord, Secret) {
    let app = keygate::App::new(super::gateway::config_from(&[config]))
        .await
        .expect("the config opens");
    app.keys().create(new, None).await.expect("create key")
}

/// A free port on 127.0.0.1 (free when asked; the OS may hand it out again later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// A `keygate serve` started by the test.
pub struct KeygateProcess {
    /// The child.
    pub child: Child,
    /// Proxy listener port.
    pub proxy: u16,
    /// Admin listener port.
    pub admin: u16,
    /// Where its stderr (the logs) goes.
    pub log: PathBuf,
}

impl KeygateProcess {
    /// Writes `config` plus `listen:` on free ports to `dir/<name>.yaml`, starts the binary on
    /// it and waits until `/readyz` answers 200.
    pub async fn start(dir: &Path, name: &str, config: &str) -> KeygateProcess {
        Self::start_with(dir, name, config, None).await
    }

    /// As [`KeygateProcess::start`], with the soft `RLIMIT_NOFILE` set to `soft_nofile` (through
    /// the shell's `ulimit`, which then execs keygate under the same PID).
    pub async fn start_with(
        dir: &Path,
        name: &str,
        config: &str,
        soft_nofile: Option<u64>,
    ) -> KeygateProcess {
        Self::launch(dir, name, config, soft_nofile, &[]).await
    }

    /// As [`KeygateProcess::start`], with `args` after `serve --config FILE`.
    pub async fn start_with_args(
        dir: &Path,
        name: &str,
        config: &str,
        args: &[&str],
    ) -> KeygateProcess {
        Self::launch(dir, name, config, None, args).await
    }

    async fn launch(
        dir: &Path,
        name: &str,
        config: &str,
        soft_nofile: Option<u64>,
        args: &[&str],
    ) -> KeygateProcess {
        let (proxy, admin) = (free_port(), free_port());
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "{config}\nlisten: {{ proxy: \"127.0.0.1:{proxy}\", admin: \"127.0.0.1:{admin}\" }}\n"
            ),
        )
        .expect("write config");
        let log = dir.join(format!("{name}.log"));
        let bin = env!("CARGO_BIN_EXE_keygate");
        let mut command = match soft_nofile {
            None => Command::new(bin),
            Some(n) => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    &format!("ulimit -S -n {n} && exec \"$0\" \"$@\""),
                    bin,
                ]);
                c
            }
        };
        let child = command
            .args(["serve", "--config"])
            .arg(&path)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start keygate");
        let process = KeygateProcess {
            child,
            proxy,
            admin,
            log,
        };
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let url = format!("http://127.0.0.1:{admin}/readyz")
                .parse()
                .expect("url");
            if let Ok(r) = client.get(url).await
                && r.status() == 200
            {
                return process;
            }
            assert!(Instant::now() < deadline, "{name} did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits (at most 20 s) and asserts a clean exit.
    pub async fn terminate(&mut self) {
        self.signal("TERM");
        self.wait_clean_exit().await;
    }

    /// Sends a signal (`TERM`, `HUP`, …) to the process.
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
    }

    /// Waits (at most 20 s) for the process to exit and asserts it exited cleanly.
    pub async fn wait_clean_exit(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "keygate did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "exit status {status}");
    }
}

impl Drop for KeygateProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
