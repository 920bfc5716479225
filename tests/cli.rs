//! `keygate keys …`, `keygate audit` and `keygate workspaces …` end to end: the real binary, run
//! as an operator runs it, against the admin API of a real gateway (embedded store, port 0), and
//! the keys it manages checked at the proxy. Every run also checks that the admin token appears
//! in no output.
//!
//! This file is the harness (running the binary, checking its output); the tests are in
//! `tests/cli/`: `keys` (the key lifecycle), `import`, `activity` (a key's logs and usage, the
//! audit log, quotas, tables), `workspaces`, all against the admin API (docs/admin-api.md), and
//! `offline`, which needs no server at all (usage errors, unreachable and silent servers, help).

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

#[path = "cli/activity.rs"]
mod activity;
#[path = "cli/import.rs"]
mod import;
#[path = "cli/keys.rs"]
mod keys;
#[path = "cli/offline.rs"]
mod offline;
#[path = "cli/tls.rs"]
mod tls;
#[path = "cli/workspaces.rs"]
mod workspaces;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use support::gateway::{Backend, Reply, TestGateway};

const BIN: &str = env!("CARGO_BIN_EXE_keygate");

/// The ops token of [`ADMIN`]: every permission on every workspace (`workspace.manage` too).
const TOKEN: &str = "ops-token-0123456789abcdef";
/// A token that may only view.
const VIEW_TOKEN: &str = "view-token-0123456789abcdef";
/// A token that may only view `acme`.
const ACME_VIEW_TOKEN: &str = "acme-view-token-0123456789abcdef";

/// Admin tokens and the workspaces the tests need, overlaid on the harness's base config
/// (which has `acme` with room for 1000 keys).
const ADMIN: &str = r#"
admin:
  tokens:
    - name: ops
      token: "ops-token-0123456789abcdef"
      permissions: [api.key.view, api.key.create, api.key.update, api.key.delete, workspace.manage]
      workspaces: ["*"]
    - name: viewer
      token: "view-token-0123456789abcdef"
      permissions: [api.key.view]
      workspaces: ["*"]
    - name: acme-viewer
      token: "acme-view-token-0123456789abcdef"
      permissions: [api.key.view]
      workspaces: [acme]
workspaces:
  trial: { api_access: false }
  small: { max_active_keys: 1 }
"#;

/// An imported secret in someone else's format.
const LEGACY_SECRET: &str = "edsk_live_LegacySecret0123456789";
/// A secret imported only as its SHA-256 ...
const HASHED_SECRET: &str = "edsk_live_Sha256OnlyKey0123456789";
/// ... which is this (`printf %s "$HASHED_SECRET" | sha256sum`).
const HASHED_SECRET_SHA256: &str =
    "9f43111fc41a988ea060d89dead6c5939d16873d989d4fe033ad37429768db36";
const BULK_SECRET: &str = "edsk_live_BulkPlainKey0123456789";
const BULK_HASHED_SECRET: &str = "edsk_live_BulkHashedKey9876543210";
/// `printf %s "$BULK_HASHED_SECRET" | sha256sum`.
const BULK_HASHED_SHA256: &str = "3e9423dd7140649b1837f875e39ed86a6f06658644d2d7f69696877e66e342c6";

const SECRET_LINE: &str = "Secret (shown once, store it now): ";

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn expect(self, code: i32) -> Run {
        assert_eq!(self.code, code, "exit code; {self:#?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }

    /// The secret of the one-time display.
    fn secret(&self) -> String {
        let lines: Vec<&str> = self
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix(SECRET_LINE))
            .collect();
        assert_eq!(lines.len(), 1, "one secret line: {}", self.stdout);
        lines[0].to_owned()
    }

    /// Asserts the documented error line on stderr.
    fn error_code(&self, code: &str) -> &Run {
        let want = format!("error: {code}: ");
        assert!(
            self.stderr.lines().any(|l| l.starts_with(&want)),
            "expected `{want}…` on stderr; {self:#?}"
        );
        self
    }
}

/// How a test runs the binary.
struct Invocation<'a> {
    admin_url: String,
    token: Option<&'a str>,
    stdin: Option<Vec<u8>>,
}

impl Invocation<'_> {
    /// Runs `keygate keys <args>`; see [`Invocation::keygate`].
    async fn run(self, args: &[&str]) -> Run {
        let mut argv = vec!["keys"];
        argv.extend_from_slice(args);
        self.keygate(&argv).await
    }

    /// Runs `keygate <args>` with the token and `KEYGATE_WORKSPACE=acme` in the environment
    /// (arguments override both). Blocking, so it runs off the async workers that serve the
    /// gateway.
    async fn keygate(self, args: &[&str]) -> Run {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let token = self.token.map(str::to_owned);
        let secret_token = token.clone();
        let run = tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(BIN);
            cmd.args(&args)
                .env("KEYGATE_ADMIN_URL", &self.admin_url)
                .env("KEYGATE_WORKSPACE", "acme")
                .env_remove("KEYGATE_ADMIN_TOKEN")
                .stdin(if self.stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if let Some(t) = &token {
                cmd.env("KEYGATE_ADMIN_TOKEN", t);
            }
            let mut child = cmd.spawn().expect("run keygate");
            if let Some(input) = &self.stdin {
                let mut pipe = child.stdin.take().unwrap();
                pipe.write_all(input).unwrap();
            }
            let out = child.wait_with_output().unwrap();
            Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
        .await
        .unwrap();
        if let Some(t) = secret_token {
            assert!(
                !run.stdout.contains(&t) && !run.stderr.contains(&t),
                "the token was printed: {run:#?}"
            );
        }
        run
    }
}

fn at(admin: SocketAddr) -> Invocation<'static> {
    Invocation {
        admin_url: format!("http://{admin}"),
        token: Some(TOKEN),
        stdin: None,
    }
}

/// `keygate keys <args>` against `gw` as the ops token.
async fn keys(gw: &TestGateway, args: &[&str]) -> Run {
    at(gw.admin).run(args).await
}

/// `keygate <args>` against `gw` as the ops token.
async fn keygate(gw: &TestGateway, args: &[&str]) -> Run {
    at(gw.admin).keygate(args).await
}

async fn gateway() -> TestGateway {
    TestGateway::start(Backend::Embedded, ADMIN).await
}

/// A gateway that writes usage and request logs every 50 ms.
async fn fast_flushing_gateway() -> TestGateway {
    let overlay = format!("{ADMIN}\nusage: {{ flush_interval: 50ms }}\n");
    TestGateway::start(Backend::Embedded, &overlay).await
}

/// `GET /api/v1/sessions` (needs `sessions:read`) through the proxy with `secret`.
async fn use_key(gw: &TestGateway, secret: &str) -> Reply {
    let req = Request::get(gw.url("/api/v1/sessions"))
        .header("authorization", format!("Bearer {secret}"))
        .body(Full::<Bytes>::default())
        .unwrap();
    gw.send(req).await
}

async fn assert_key_works(gw: &TestGateway, secret: &str) {
    let r = use_key(gw, secret).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

/// Creates a key with `sessions:read` through the CLI; returns (id, secret).
async fn create(gw: &TestGateway, name: &str) -> (String, String) {
    let r = keys(
        gw,
        &[
            "create",
            "--name",
            name,
            "--scope",
            "sessions:read",
            "--json",
        ],
    )
    .await
    .expect(0);
    let v = r.json();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    )
}

/// An address nothing listens on.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
