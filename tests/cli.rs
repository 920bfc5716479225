//! `keygate keys …` end to end: the real binary, run as an operator runs it, against the admin
//! API of a real gateway (embedded store, port 0), and the keys it manages checked at the proxy.
//! Every run also checks that the admin token appears in no output.
//!
//! The tests that need the admin API (docs/admin-api.md) are the first group; the second group
//! needs no server at all (usage errors, unreachable and silent servers, help).

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod support;

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

/// The ops token of [`ADMIN`]: every permission on every workspace.
const TOKEN: &str = "ops-token-0123456789abcdef";
/// A token that may only view.
const VIEW_TOKEN: &str = "view-token-0123456789abcdef";

/// Admin tokens and the workspaces the tests need, overlaid on the harness's base config
/// (which has `acme` with room for 1000 keys).
const ADMIN: &str = r#"
admin:
  tokens:
    - name: ops
      token: "ops-token-0123456789abcdef"
      permissions: [api.key.view, api.key.create, api.key.update, api.key.delete]
      workspaces: ["*"]
    - name: viewer
      token: "view-token-0123456789abcdef"
      permissions: [api.key.view]
      workspaces: ["*"]
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
    /// Runs `keygate keys <args>` with the token and `KEYGATE_WORKSPACE=acme` in the
    /// environment (arguments override both). Blocking, so it runs off the async workers that
    /// serve the gateway.
    async fn run(self, args: &[&str]) -> Run {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let token = self.token.map(str::to_owned);
        let secret_token = token.clone();
        let run = tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(BIN);
            cmd.arg("keys")
                .args(&args)
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

async fn gateway() -> TestGateway {
    TestGateway::start(Backend::Embedded, ADMIN).await
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

// ---- With the admin API ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_shows_the_secret_once_and_the_key_works_at_the_proxy() {
    let gw = gateway().await;
    let r = keys(
        &gw,
        &[
            "create",
            "--name",
            "Production server",
            "--description",
            "deploys",
            "--scope",
            "sessions:read",
            "--expires-in",
            "90d",
            "--ip",
            "127.0.0.1",
            "--ip",
            "::1/128",
            "--owner",
            "cust_42",
            "--metadata",
            r#"{"team":"payments"}"#,
            "--rate-limit",
            "100/1s:200",
        ],
    )
    .await
    .expect(0);
    let header = r.stdout.lines().next().unwrap();
    for column in [
        "ID",
        "NAME",
        "PREFIX",
        "SCOPES/ROLE",
        "STATUS",
        "CREATED",
        "LAST USED",
        "USES",
        "EXPIRES",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = r.stdout.lines().nth(1).unwrap();
    assert!(row.starts_with("key_"), "{row}");
    assert!(
        row.contains("Production server") && row.contains("active"),
        "{row}"
    );
    assert!(row.contains("never"), "never used: {row}");
    let secret = r.secret();
    assert!(secret.starts_with("kg_live_"), "{secret}");
    assert_eq!(r.stdout.matches(&secret).count(), 1, "shown once");
    assert!(!r.stderr.contains(&secret));
    assert_key_works(&gw, &secret).await;

    // --json prints the 201 body: the record with every field sent, plus the secret.
    let r = keys(
        &gw,
        &[
            "--json",
            "create",
            "--name",
            "ci",
            "--role",
            "viewer",
            "--owner",
            "cust_42",
            "--rate-limit",
            "5/1s",
        ],
    )
    .await
    .expect(0);
    let v = r.json();
    assert_eq!(v["name"], "ci");
    assert_eq!(v["role"], "viewer");
    assert_eq!(v["owner"], "cust_42");
    assert_eq!(v["rate_limit"]["requests"], 5);
    assert_eq!(v["status"], "active");
    assert_eq!(v["workspace"], "acme");
    assert_key_works(&gw, v["secret"].as_str().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_prints_a_table_and_merges_all_pages_as_json() {
    let gw = gateway().await;
    let mut ids = Vec::new();
    for name in ["first", "second", "third"] {
        ids.push(create(&gw, name).await.0);
    }

    let r = keys(&gw, &["list"]).await.expect(0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "header and three rows: {}", r.stdout);
    assert!(
        lines[0].starts_with("ID") && lines[0].ends_with("EXPIRES"),
        "{}",
        lines[0]
    );
    for id in &ids {
        assert!(r.stdout.contains(id.as_str()), "{id}: {}", r.stdout);
    }

    // One page of one, with a cursor to the next.
    let r = keys(&gw, &["list", "--limit", "1", "--json"])
        .await
        .expect(0);
    let page = r.json();
    assert_eq!(page["keys"].as_array().unwrap().len(), 1);
    assert!(page["next_cursor"].is_string(), "{page}");
    let r = keys(&gw, &["list", "--limit", "1"]).await.expect(0);
    assert!(r.stderr.contains("--all"), "says there is more: {r:#?}");

    // --all follows the cursors: every key once, newest first.
    let r = keys(&gw, &["list", "--limit", "1", "--all", "--json"])
        .await
        .expect(0);
    let listed: Vec<String> = r.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    assert!(r.json().get("secret").is_none() && !r.stdout.contains("\"secret\""));

    let r = keys(&gw, &["list", "--status", "revoked"]).await.expect(0);
    assert_eq!(r.stdout, "No keys.\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_every_field_and_an_unknown_key_exits_3() {
    let gw = gateway().await;
    let (id, secret) = create(&gw, "shown").await;
    let r = keys(&gw, &["show", &id]).await.expect(0);
    for line in [
        format!("ID            {id}"),
        "Workspace     acme".into(),
        "Name          shown".into(),
        "Status        active".into(),
        "Scopes        sessions:read".into(),
        "IP allowlist  any address".into(),
        "Expires       never".into(),
        "Last used     never".into(),
        "Uses          0".into(),
    ] {
        assert!(
            r.stdout.contains(&line),
            "missing {line:?} in\n{}",
            r.stdout
        );
    }
    assert!(!r.stdout.contains(&secret));
    let r = keys(&gw, &["show", &id, "--json"]).await.expect(0);
    assert_eq!(r.json()["id"], id.as_str());

    keys(&gw, &["show", "key_0000000000000000000000"])
        .await
        .expect(3)
        .error_code("not_found");
    // An unknown workspace is not found either.
    keys(&gw, &["list", "-w", "nowhere"])
        .await
        .expect(3)
        .error_code("not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_sends_only_the_given_fields_and_the_no_flags_clear() {
    let gw = gateway().await;
    let r = keys(
        &gw,
        &[
            "create",
            "--name",
            "before",
            "--description",
            "kept",
            "--scope",
            "sessions:read",
            "--owner",
            "cust_1",
            "--expires-in",
            "30d",
            "--json",
        ],
    )
    .await
    .expect(0);
    let id = r.json()["id"].as_str().unwrap().to_owned();

    let v = keys(&gw, &["update", &id, "--name", "after", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(v["name"], "after");
    assert_eq!(v["description"], "kept", "untouched fields stay");
    assert_eq!(v["scopes"], serde_json::json!(["sessions:read"]));
    assert!(v["expires_at"].is_string());

    let v = keys(
        &gw,
        &[
            "update",
            &id,
            "--no-description",
            "--clear-scopes",
            "--role",
            "viewer",
            "--no-expiry",
            "--no-owner",
            "--ip",
            "10.0.0.0/8",
            "--json",
        ],
    )
    .await
    .expect(0)
    .json();
    assert!(v["description"].is_null(), "{v}");
    assert!(v["expires_at"].is_null(), "{v}");
    assert!(v["owner"].is_null(), "{v}");
    assert_eq!(v["scopes"], serde_json::json!([]), "{v}");
    assert_eq!(v["role"], "viewer");
    assert_eq!(v["ip_allowlist"], serde_json::json!(["10.0.0.0/8"]));

    // Human mode prints the updated row.
    let r = keys(
        &gw,
        &["update", &id, "--no-role", "--scope", "sessions:read"],
    )
    .await
    .expect(0);
    assert!(
        r.stdout.lines().nth(1).unwrap().contains("sessions:read"),
        "{}",
        r.stdout
    );

    keys(&gw, &["update", &id])
        .await
        .expect(2)
        .error_code("usage");
    keys(&gw, &["update", &id, "--scope", "no:such:scope"])
        .await
        .expect(1)
        .error_code("invalid_request");
    keys(
        &gw,
        &["update", "key_0000000000000000000000", "--name", "x"],
    )
    .await
    .expect(3)
    .error_code("not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_shows_the_new_secret_and_the_old_keys_expiry() {
    let gw = gateway().await;
    let (old_id, old_secret) = create(&gw, "rotating").await;

    let r = keys(&gw, &["rotate", &old_id, "--grace", "1h"])
        .await
        .expect(0);
    let new_secret = r.secret();
    assert_ne!(new_secret, old_secret);
    let previous = r
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("Previous key {old_id}")))
        .unwrap_or_else(|| panic!("no previous-key line: {}", r.stdout));
    assert!(
        previous.ends_with(" UTC"),
        "the old key now expires: {previous}"
    );
    assert_key_works(&gw, &new_secret).await;
    assert_key_works(&gw, &old_secret).await;

    // Without --grace the old secret stops at once; --json prints the 201 body.
    let new_id = r
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let v = keys(&gw, &["rotate", &new_id, "--json"])
        .await
        .expect(0)
        .json();
    assert!(v["key"]["secret"].is_string(), "{v}");
    assert_eq!(v["previous"]["id"], new_id.as_str());
    // The lineage, both ways, in the API and in `keys show`.
    let newest = v["key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(v["key"]["rotated_from"], new_id.as_str());
    assert_eq!(v["previous"]["replaced_by"], newest.as_str());
    let shown = keys(&gw, &["show", &new_id]).await.expect(0).stdout;
    assert!(
        shown.contains(&format!("Rotated from  {old_id}\n")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("Replaced by   {newest}\n")),
        "{shown}"
    );
    assert!(v["previous"]["expires_at"].is_string(), "{v}");
    assert_eq!(
        use_key(&gw, &new_secret).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_key_works(&gw, v["key"]["secret"].as_str().unwrap()).await;

    keys(&gw, &["rotate", "key_0000000000000000000000"])
        .await
        .expect(3)
        .error_code("not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_refuses_without_yes_off_a_terminal_and_revokes_with_it() {
    let gw = gateway().await;
    let (id, secret) = create(&gw, "doomed").await;

    let r = keys(&gw, &["revoke", &id]).await.expect(2);
    r.error_code("usage");
    assert!(r.stderr.contains("--yes"), "{r:#?}");
    let v = keys(&gw, &["show", &id, "--json"]).await.expect(0).json();
    assert_eq!(v["status"], "active", "nothing was revoked");
    assert_key_works(&gw, &secret).await;

    let r = keys(&gw, &["revoke", &id, "--yes"]).await.expect(0);
    assert!(
        r.stdout.lines().nth(1).unwrap().contains("revoked"),
        "{}",
        r.stdout
    );
    let refused = use_key(&gw, &secret).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.error_code(), "key_revoked");

    let v = keys(&gw, &["list", "--status", "revoked", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(v["keys"][0]["id"], id.as_str());
    let first_revoked_at = v["keys"][0]["revoked_at"].clone();
    assert!(first_revoked_at.is_string(), "{v}");
    // Revoking again changes nothing; updating a revoked key is refused.
    let again = keys(&gw, &["revoke", &id, "-y", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(again["revoked_at"], first_revoked_at, "{again}");
    keys(&gw, &["update", &id, "--name", "back"])
        .await
        .expect(1)
        .error_code("key_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_refuses_without_yes_and_removes_the_key_with_it() {
    let gw = gateway().await;
    let (id, secret) = create(&gw, "deleted").await;

    keys(&gw, &["delete", &id])
        .await
        .expect(2)
        .error_code("usage");
    keys(&gw, &["show", &id]).await.expect(0);

    let r = keys(&gw, &["delete", &id, "--yes"]).await.expect(0);
    assert!(r.stdout.contains(&format!("Deleted {id}")), "{}", r.stdout);
    keys(&gw, &["show", &id])
        .await
        .expect(3)
        .error_code("not_found");
    assert_eq!(use_key(&gw, &secret).await.status, StatusCode::UNAUTHORIZED);
    keys(&gw, &["delete", &id, "--yes"])
        .await
        .expect(3)
        .error_code("not_found");
    // --json: the API answers 204, so there is nothing to print.
    let (id, _) = create(&gw, "quiet").await;
    let r = keys(&gw, &["delete", &id, "--yes", "--json"])
        .await
        .expect(0);
    assert_eq!(r.stdout, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_takes_the_secret_from_stdin_or_its_sha256() {
    let gw = gateway().await;
    let r = Invocation {
        stdin: Some(format!("{LEGACY_SECRET}\n").into_bytes()),
        ..at(gw.admin)
    }
    .run(&[
        "import",
        "--name",
        "legacy",
        "--scope",
        "sessions:read",
        "--secret-stdin",
    ])
    .await
    .expect(0);
    assert!(!r.stdout.contains(LEGACY_SECRET) && !r.stderr.contains(LEGACY_SECRET));
    assert!(
        r.stdout.lines().nth(1).unwrap().contains("legacy"),
        "{}",
        r.stdout
    );
    assert_key_works(&gw, LEGACY_SECRET).await;

    let v = keys(
        &gw,
        &[
            "import",
            "--name",
            "hashed",
            "--scope",
            "sessions:read",
            "--sha256",
            &HASHED_SECRET_SHA256.to_uppercase(),
            "--prefix",
            "edsk_live_Sha2",
            "--json",
        ],
    )
    .await
    .expect(0)
    .json();
    assert_eq!(v["prefix"], "edsk_live_Sha2");
    assert!(v.get("secret").is_none_or(Value::is_null), "{v}");
    assert_key_works(&gw, HASHED_SECRET).await;

    // The same secret twice is refused, and the secret is not in the error.
    let r = Invocation {
        stdin: Some(LEGACY_SECRET.as_bytes().to_vec()),
        ..at(gw.admin)
    }
    .run(&["import", "--name", "again", "--secret-stdin"])
    .await
    .expect(1);
    r.error_code("key_exists");
    assert!(!r.stderr.contains(LEGACY_SECRET));
    // Nothing on stdin is a usage error, before any request.
    Invocation {
        stdin: Some(b"\n".to_vec()),
        ..at(gw.admin)
    }
    .run(&["import", "--name", "empty", "--secret-stdin"])
    .await
    .expect(2)
    .error_code("usage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_import_reports_every_line_and_exits_5_when_one_failed() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.jsonl");
    let lines = [
        "# exported from the old system".to_owned(),
        String::new(),
        format!(r#"{{"name":"plain","secret":"{BULK_SECRET}","scopes":["sessions:read"]}}"#),
        format!(
            r#"{{"name":"hashed","sha256":"{BULK_HASHED_SHA256}","prefix":"edsk_live_Bulk","scopes":["sessions:read"],"owner":"cust_7"}}"#
        ),
        format!(r#"{{"name":"broken","secret":"{BULK_SECRET}""#),
        format!(r#"{{"name":"duplicate","secret":"{BULK_SECRET}"}}"#),
        r#"["not", "an", "object"]"#.to_owned(),
        r#"{"name":"no secret"}"#.to_owned(),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let path = file.to_str().unwrap();

    let r = keys(&gw, &["import", "--file", path]).await.expect(5);
    let out: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        out.len(),
        7,
        "six reported lines and a summary: {}",
        r.stdout
    );
    assert!(out[0].starts_with("line 3: ok key_"), "{}", out[0]);
    assert!(out[1].starts_with("line 4: ok key_"), "{}", out[1]);
    assert!(
        out[2].starts_with("line 5: invalid_line: not JSON"),
        "{}",
        out[2]
    );
    assert!(out[3].starts_with("line 6: key_exists: "), "{}", out[3]);
    assert!(
        out[4].starts_with("line 7: invalid_line: not a JSON object"),
        "{}",
        out[4]
    );
    assert!(
        out[5].starts_with("line 8: invalid_request: "),
        "{}",
        out[5]
    );
    assert_eq!(out[6], "2 imported, 4 failed.");
    r.error_code("import_incomplete");
    for secret in [BULK_SECRET, BULK_HASHED_SECRET] {
        assert!(!r.stdout.contains(secret) && !r.stderr.contains(secret));
    }
    assert_key_works(&gw, BULK_SECRET).await;
    assert_key_works(&gw, BULK_HASHED_SECRET).await;

    // --json: one result object per line; the file again, so now every key exists.
    let r = keys(&gw, &["import", "--file", path, "--json"])
        .await
        .expect(5);
    let results: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 6, "{}", r.stdout);
    assert_eq!(results[0]["line"], 3);
    assert_eq!(results[0]["ok"], false);
    assert_eq!(results[0]["error"]["code"], "key_exists");
    // The `sha256` line too, although its key was upgraded by its use above.
    assert_eq!(results[1]["ok"], false, "{}", r.stdout);
    assert_eq!(results[1]["error"]["code"], "key_exists");
    assert_eq!(results[2]["error"]["code"], "invalid_line");

    // A clean file exits 0; stdin works as `-`.
    let r = Invocation {
        stdin: Some(
            format!(
                "{{\"name\":\"from stdin\",\"secret\":\"{LEGACY_SECRET}\",\"scopes\":[\"sessions:read\"]}}\n"
            )
            .into_bytes(),
        ),
        ..at(gw.admin)
    }
    .run(&["import", "--file", "-", "--json"])
    .await
    .expect(0);
    let result: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(result["ok"], true);
    assert_eq!(result["key"]["name"], "from stdin");
    assert_key_works(&gw, LEGACY_SECRET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_import_stops_at_once_when_every_line_would_fail() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.jsonl");
    std::fs::write(
        &file,
        format!(
            "{{\"name\":\"a\",\"secret\":\"{BULK_SECRET}\"}}\n{{\"name\":\"b\",\"secret\":\"{LEGACY_SECRET}\"}}\n"
        ),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let r = keys(&gw, &["import", "--file", path, "-w", "trial"])
        .await
        .expect(4);
    r.error_code("upgrade_required");
    assert_eq!(
        r.stdout.lines().count(),
        1,
        "only the first line was sent: {r:#?}"
    );
    assert!(
        r.stdout.starts_with("line 1: upgrade_required: "),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("stopped at line 1"), "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_the_api_map_to_exit_codes() {
    let gw = gateway().await;
    // 400: a scope the config does not know.
    let r = keys(&gw, &["create", "--name", "x", "--scope", "no:such:scope"])
        .await
        .expect(1);
    r.error_code("invalid_request");
    assert!(r.stderr.contains("field: scopes"), "{r:#?}");
    // 403 upgrade_required: a workspace without API access.
    keys(&gw, &["create", "--name", "x", "-w", "trial"])
        .await
        .expect(4)
        .error_code("upgrade_required");
    // 401: a token the gateway does not know, given as an argument this time.
    let wrong = "wrong-token-0123456789abcdef";
    let r = Invocation {
        token: None,
        ..at(gw.admin)
    }
    .run(&["list", "--token", wrong])
    .await
    .expect(4);
    r.error_code("unauthorized");
    assert!(!r.stdout.contains(wrong) && !r.stderr.contains(wrong));
    // 403 forbidden: a token that may only view.
    let viewer = Invocation {
        token: Some(VIEW_TOKEN),
        ..at(gw.admin)
    };
    viewer
        .run(&["create", "--name", "x"])
        .await
        .expect(4)
        .error_code("forbidden");
    Invocation {
        token: Some(VIEW_TOKEN),
        ..at(gw.admin)
    }
    .run(&["list"])
    .await
    .expect(0);
    // 409 key_limit_reached: the second key of a workspace that allows one.
    keys(&gw, &["create", "--name", "one", "-w", "small"])
        .await
        .expect(0);
    keys(&gw, &["create", "--name", "two", "-w", "small"])
        .await
        .expect(1)
        .error_code("key_limit_reached");
}

// ---- Without a server ----

/// An address nothing listens on.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn a_missing_token_or_workspace_is_a_usage_error() {
    let r = Invocation {
        token: None,
        ..at(closed_port())
    }
    .run(&["list"])
    .await
    .expect(2);
    r.error_code("usage");
    assert!(r.stderr.contains("KEYGATE_ADMIN_TOKEN"), "{r:#?}");
    at(closed_port())
        .run(&["list", "-w", ""])
        .await
        .expect(2)
        .error_code("usage");
}

#[tokio::test]
async fn an_unreachable_admin_api_exits_6() {
    let r = at(closed_port()).run(&["list"]).await.expect(6);
    r.error_code("unreachable");
}

#[tokio::test]
async fn a_silent_admin_api_times_out_with_exit_6() {
    // Bound but never accepted: the kernel completes the handshake, nobody answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    at(silent.local_addr().unwrap())
        .run(&["show", "key_0000000000000000000000", "--timeout", "300ms"])
        .await
        .expect(6)
        .error_code("timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn revoke_and_delete_without_yes_off_a_terminal_refuse_before_any_request() {
    // Exit 2, not 6: the refusal comes before the (unreachable) API is asked anything.
    for command in ["revoke", "delete"] {
        let r = at(closed_port())
            .run(&[command, "key_0000000000000000000000"])
            .await
            .expect(2);
        r.error_code("usage");
        assert!(r.stderr.contains("--yes"), "{r:#?}");
    }
}

#[tokio::test]
async fn usage_errors_exit_2() {
    for args in [
        // A plaintext secret is never an argument.
        &["import", "--name", "n", "--secret", LEGACY_SECRET][..],
        &["create"],
        &[
            "create",
            "--name",
            "n",
            "--expires-in",
            "1d",
            "--expires-at",
            "2030-01-01T00:00:00Z",
        ],
        &["create", "--name", "n", "--rate-limit", "fast"],
        &["update", "key_x", "--role", "viewer", "--no-role"],
        &["list", "--limit", "1000"],
        &["list", "--admin-url", "https://admin.example.com"],
    ] {
        let r = at(closed_port()).run(args).await;
        assert_eq!(r.code, 2, "{args:?}: {r:#?}");
        assert!(r.stderr.starts_with("error: "), "{args:?}: {r:#?}");
        assert!(!r.stderr.contains(LEGACY_SECRET), "{r:#?}");
    }
}

#[tokio::test]
async fn keys_help_documents_the_exit_codes() {
    let r = at(closed_port()).run(&["--help"]).await.expect(0);
    for line in [
        "Exit codes:",
        "1  the admin API refused the request",
        "2  usage error",
        "3  not found",
        "4  not authorized",
        "5  bulk import",
        "6  admin API unreachable",
    ] {
        assert!(r.stdout.contains(line), "missing {line:?} in {}", r.stdout);
    }
}
