//! A real headless Chromium for the dashboard tests, driven over WebDriver: Debian's
//! `chromedriver` started by the test on a free loopback port (with its own profile directory),
//! a `fantoccini` client, and screenshots. The driver (and with it the browser) is stopped by
//! the PID the test started when the `Browser` is closed or dropped.
//!
//! `KEYGATE_CHROMEDRIVER` and `KEYGATE_CHROMIUM` override the binaries' paths.
//! `KEYGATE_UPDATE_SCREENSHOTS=1` also writes screenshots to `docs/screenshots/` (the README's).

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use super::process::free_port;

/// Longest wait for a thing to appear on the page.
pub const WAIT: Duration = Duration::from_secs(10);

/// A headless Chromium session.
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium `width`×`height` pixels wide.
    pub async fn start(width: u32, height: u32) -> Browser {
        let port = free_port();
        let driver_bin =
            std::env::var("KEYGATE_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        // Its own process group (led by its PID), so that stopping it stops the browser it
        // starts too, even when the test panicked before closing the session.
        let driver = Command::new(&driver_bin)
            .process_group(0)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {driver_bin} (apt-get install chromium-driver): {e}")
            });
        let profile = tempfile::tempdir().expect("profile dir");
        let chromium = std::env::var("KEYGATE_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let chromium = which(&chromium).unwrap_or_else(|| PathBuf::from(chromium));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Root in a container has no user namespace for the sandbox.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-extensions",
                    "--disable-background-networking",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "no WebDriver session: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let mut browser = Browser {
            client,
            driver,
            _profile: profile,
        };
        browser.resize(width, height).await;
        browser
    }

    /// Sets the viewport-bearing window size.
    pub async fn resize(&mut self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .expect("window size");
    }

    /// Navigates to `url`.
    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// Waits until an element matching `css` is present, and returns it.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
    }

    /// Waits until the page's visible text contains `text`.
    pub async fn wait_for_text(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let body = self.text().await;
            if body.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`{text}` never appeared; the page reads:\n{body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn run(&self, script: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}"))
    }

    /// Runs `script` asynchronously: it ends by calling `arguments[arguments.length - 1]` with
    /// its result.
    pub async fn run_async(&self, script: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
        self.client
            .execute_async(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}"))
    }

    /// Takes a screenshot of the window as `name.png`: always under the build's temporary
    /// directory (returned), and in `docs/screenshots/` with `KEYGATE_UPDATE_SCREENSHOTS=1`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).expect("write screenshot");
        if std::env::var("KEYGATE_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
            let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
            std::fs::create_dir_all(&docs).expect("docs/screenshots");
            std::fs::write(docs.join(format!("{name}.png")), &png).expect("write screenshot");
        }
        path
    }

    /// Ends the session (the browser exits) and stops the driver.
    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = client.close().await;
        self.stop_driver();
    }

    fn stop_driver(&mut self) {
        // The group the driver leads: the driver, the browser and the browser's helpers.
        let group = format!("-{}", self.driver.id());
        if let Ok(None) = self.driver.try_wait() {
            // SIGTERM lets chromedriver end the browser it started; SIGKILL if it lingers.
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.driver.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Whatever of the group is left (a browser orphaned by a driver that died first).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop_driver();
    }
}

/// `name` resolved on `PATH`, if it is not a path already.
fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}
