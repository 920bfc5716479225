//! `keygate keys …`: manage API keys from a terminal or a script, as a client of the admin HTTP
//! API (`docs/admin-api.md`). Nothing here opens the store: every command is one or more HTTP
//! calls, so the CLI manages keys of any running gateway it can reach, with the permissions of
//! the admin token (or API key) it is given.
//!
//! # Layout
//!
//! - this file: the arguments (clap), the request bodies they make, what each command does, and
//!   [`Failure`], the one place an outcome becomes an exit code.
//! - [`client`]: the HTTP client and how an answer becomes a value or a [`Failure`].
//! - [`render`]: tables and the one-key view for people.
//! - [`import`]: bulk import from a JSON-lines file.
//!
//! The client speaks plain HTTP only: the admin listener is plain HTTP on loopback by default, and
//! remote use goes through a tunnel (`ssh -L`, `kubectl port-forward`) or a private network. An
//! `https://` URL is refused with a usage error rather than silently downgraded.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the admin API refused the request (400, 409, 413, …), or a confirmation was declined |
//! | 2 | usage error: clap's own, a missing `--token`/`--workspace`, revoke or delete without `--yes` when stdin is not a terminal |
//! | 3 | not found (404: unknown key or workspace) |
//! | 4 | not authorized (401, 403, including `upgrade_required`) |
//! | 5 | bulk import: at least one line failed |
//! | 6 | the admin API is unreachable, timed out, or answered 5xx or something unexpected; or stdout could not be written |
//!
//! Errors go to stderr as `error: <code>: <message>`; the token never appears in any output, and a
//! secret only in the one-time display after create and rotate.

mod client;
mod import;
mod render;

use std::fmt;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand};
use http::{Method, StatusCode};
use keygate::config::duration_text::parse as parse_duration_text;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use self::client::AdminClient;
use self::render::KeyView;

/// Where the admin API listens unless told otherwise (the default `listen.admin`).
const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9901";

/// The exit codes, for `keygate keys --help` (the table in this module's docs says the same).
const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  the admin API refused the request (400, 409, 413, ...), or a confirmation was declined
  2  usage error (bad or missing arguments; revoke/delete without --yes when stdin is not a terminal)
  3  not found (404: unknown key or workspace)
  4  not authorized (401, or 403 including upgrade_required)
  5  bulk import: at least one line failed
  6  admin API unreachable, timed out, or answered 5xx or something unexpected

Errors are printed to stderr as `error: <code>: <message>`. Times are UTC.
The admin URL must be plain http:// (loopback, a tunnel, or a private network).";

const EXIT_REFUSED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_NOT_FOUND: u8 = 3;
const EXIT_UNAUTHORIZED: u8 = 4;
const EXIT_IMPORT_FAILED: u8 = 5;
const EXIT_UNAVAILABLE: u8 = 6;

/// `keygate keys`: the connection options (accepted before or after the subcommand) and the
/// subcommand.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct KeysArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: KeysCommand,
}

/// How to reach the admin API, as whom, and how to print.
///
/// `--token` and `--workspace` are required, but clap cannot require a global argument, so
/// [`Connection::resolve`] checks them (exit 2 like clap's own errors).
#[derive(Args)]
#[command(next_help_heading = "Connection (before or after the subcommand)")]
struct Connection {
    /// Base URL of the admin API (plain http).
    #[arg(
        long,
        global = true,
        env = "KEYGATE_ADMIN_URL",
        default_value = DEFAULT_ADMIN_URL,
        value_name = "URL"
    )]
    admin_url: String,
    /// Admin token or API key [required]. Prefer the environment variable: arguments are visible
    /// to other users in `ps`.
    #[arg(
        long,
        global = true,
        env = "KEYGATE_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Workspace of the keys [required].
    #[arg(
        short,
        long,
        global = true,
        env = "KEYGATE_WORKSPACE",
        value_name = "WS"
    )]
    workspace: Option<String>,
    /// How long to wait for each answer of the admin API (e.g. 500ms, 10s).
    #[arg(
        long,
        global = true,
        default_value = "10s",
        value_name = "DURATION",
        value_parser = parse_positive_duration
    )]
    timeout: Duration,
}

impl fmt::Debug for Connection {
    /// Never shows the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("admin_url", &self.admin_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("json", &self.json)
            .field("workspace", &self.workspace)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Connection {
    /// The client and workspace, once the arguments clap cannot check are checked.
    fn resolve(&self) -> Result<(AdminClient, String), Failure> {
        let token = self
            .token
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Failure::Usage(
                    "an admin token is required: set KEYGATE_ADMIN_TOKEN or pass --token".into(),
                )
            })?;
        let workspace = self
            .workspace
            .as_deref()
            .filter(|w| !w.is_empty())
            .ok_or_else(|| {
                Failure::Usage(
                    "a workspace is required: pass -w/--workspace or set KEYGATE_WORKSPACE".into(),
                )
            })?;
        let client = AdminClient::new(&self.admin_url, token, self.timeout)?;
        Ok((client, workspace.to_owned()))
    }
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key; its secret is shown once.
    Create(CreateArgs),
    /// List keys, newest first.
    List(ListArgs),
    /// Show one key.
    Show {
        /// The key id (key_…).
        id: String,
    },
    /// Change a key: only the fields given are sent.
    Update(UpdateArgs),
    /// Replace a key with a new one with the same settings; the new secret is shown once.
    Rotate {
        /// The key id (key_…).
        id: String,
        /// How long the old secret keeps working (e.g. 24h; default: it stops at once).
        #[arg(long, value_name = "DURATION", value_parser = parse_grace)]
        grace: Option<String>,
    },
    /// Revoke a key for good (it stays listed as revoked).
    Revoke {
        /// The key id (key_…).
        id: String,
        /// Do not ask for confirmation (needed when stdin is not a terminal).
        #[arg(long, short)]
        yes: bool,
    },
    /// Delete a key and its request logs for good.
    Delete {
        /// The key id (key_…).
        id: String,
        /// Do not ask for confirmation (needed when stdin is not a terminal).
        #[arg(long, short)]
        yes: bool,
    },
    /// Import an existing secret (from stdin) or its SHA-256, or many keys from a JSON-lines file.
    Import(ImportArgs),
}

/// `keys create`.
#[derive(Debug, Args)]
struct CreateArgs {
    /// Display name (1–100 characters).
    #[arg(long)]
    name: String,
    #[command(flatten)]
    fields: KeyFields,
}

/// The optional key fields shared by create, import and update.
#[derive(Debug, Default, Args)]
struct KeyFields {
    /// Description (up to 500 characters).
    #[arg(long)]
    description: Option<String>,
    /// A scope the key grants (repeat for several; on update, replaces the key's scopes).
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// A role from the config (a named set of scopes).
    #[arg(long)]
    role: Option<String>,
    /// Expiry as an RFC 3339 time (e.g. 2027-01-01T00:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339, conflicts_with = "expires_in")]
    expires_at: Option<String>,
    /// Expiry as a duration from now (e.g. 90d, 24h).
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    expires_in: Option<Duration>,
    /// An address or CIDR the key may be used from (repeat for several; default: any; on
    /// update, replaces the allowlist).
    #[arg(long = "ip", value_name = "ADDR_OR_CIDR", value_parser = parse_ip)]
    ips: Vec<String>,
    /// External id of the customer the key belongs to.
    #[arg(long)]
    owner: Option<String>,
    /// A JSON object stored with the key (up to 1 KiB).
    #[arg(long, value_name = "JSON_OBJECT", value_parser = parse_metadata)]
    metadata: Option<Map<String, Value>>,
    /// Rate limit override: REQUESTS/PERIOD[:BURST], e.g. 100/1s or 100/1s:200.
    #[arg(long, value_name = "N/PERIOD[:BURST]", value_parser = parse_rate_limit)]
    rate_limit: Option<RateLimitArg>,
}

/// `--rate-limit`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RateLimitArg {
    requests: u32,
    /// As typed (a valid, non-zero duration); the API takes the same duration syntax.
    period: String,
    burst: Option<u32>,
}

/// `keys list`.
#[derive(Debug, Args)]
struct ListArgs {
    /// Only keys with this status.
    #[arg(long, value_parser = ["active", "expired", "revoked"])]
    status: Option<String>,
    /// Only keys of this owner.
    #[arg(long)]
    owner: Option<String>,
    /// Keys per page (1–100; the API's default is 50).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    limit: Option<u32>,
    /// Start at this page cursor (the `next_cursor` of an earlier page).
    #[arg(long)]
    cursor: Option<String>,
    /// Follow `next_cursor` to the last page.
    #[arg(long)]
    all: bool,
}

/// `keys update`.
#[derive(Debug, Args)]
struct UpdateArgs {
    /// The key id (key_…).
    id: String,
    /// New display name.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    fields: KeyFields,
    #[command(flatten)]
    clear: ClearFlags,
}

/// The update flags that clear a field (sent as `null`, or `[]` for the two lists).
#[derive(Debug, Default, Args)]
struct ClearFlags {
    /// Remove the description.
    #[arg(long, conflicts_with = "description")]
    no_description: bool,
    /// Remove every scope (a role, if any, still applies).
    #[arg(long, conflicts_with = "scopes")]
    clear_scopes: bool,
    /// Remove the role.
    #[arg(long, conflicts_with = "role")]
    no_role: bool,
    /// Make the key never expire.
    #[arg(long, conflicts_with_all = ["expires_at", "expires_in"])]
    no_expiry: bool,
    /// Remove the IP allowlist (any address may use the key).
    #[arg(long, conflicts_with = "ips")]
    clear_ips: bool,
    /// Remove the owner.
    #[arg(long, conflicts_with = "owner")]
    no_owner: bool,
    /// Remove the metadata.
    #[arg(long, conflicts_with = "metadata")]
    no_metadata: bool,
    /// Remove the key's rate limit override (the role's or default limit applies).
    #[arg(long, conflicts_with = "rate_limit")]
    no_rate_limit: bool,
}

/// `keys import`. A plaintext secret is never an argument: arguments show in `ps`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["secret_stdin", "sha256", "file"])))]
struct ImportArgs {
    /// Display name (1–100 characters).
    #[arg(long, required_unless_present = "file")]
    name: Option<String>,
    #[command(flatten)]
    fields: KeyFields,
    /// Read the secret from stdin (one line); it is hashed by the gateway and never stored.
    #[arg(long)]
    secret_stdin: bool,
    /// The hex SHA-256 of the secret, for systems that kept only that.
    #[arg(long, value_name = "HEX", value_parser = parse_sha256)]
    sha256: Option<String>,
    /// The displayed start of the secret (for --sha256 imports, where the gateway cannot see it).
    // `conflicts_with` as well as `requires`: clap counts a requirement as met when the required
    // argument conflicts with one that is present (here --secret-stdin, via the group).
    #[arg(long, requires = "sha256", conflicts_with = "secret_stdin")]
    prefix: Option<String>,
    /// Bulk import: one JSON object per line with the import body fields (`name`, `secret` or
    /// `sha256`, and any others); `#` lines and blank lines are skipped; `-` reads stdin.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = [
            "name", "description", "scopes", "role", "expires_at", "expires_in", "ips", "owner",
            "metadata", "rate_limit", "prefix",
        ]
    )]
    file: Option<PathBuf>,
}

/// Why a command did not succeed. Each variant decides its exit code in [`Failure::exit_code`].
#[derive(Debug)]
enum Failure {
    /// Bad or missing arguments that clap could not catch.
    Usage(String),
    /// The admin API answered with an error status.
    Api(client::ApiError),
    /// No answer: connection refused, DNS, reset.
    Unreachable(String),
    /// No answer within `--timeout`.
    Timeout(Duration),
    /// An answer this client does not understand (not JSON, wrong shape, too large).
    Unexpected(String),
    /// stdout could not be written (other than a closed pipe).
    Output(io::Error),
    /// The person at the terminal answered no.
    Declined(String),
    /// Bulk import finished and some lines failed (each was reported already).
    ImportIncomplete {
        /// Lines that failed.
        failed: usize,
        /// Lines that were not skipped.
        total: usize,
    },
}

impl Failure {
    /// The documented exit code (see the module docs).
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Api(e) => exit_code_for_status(e.status),
            Failure::Unreachable(_)
            | Failure::Timeout(_)
            | Failure::Unexpected(_)
            | Failure::Output(_) => EXIT_UNAVAILABLE,
            Failure::Declined(_) => EXIT_REFUSED,
            Failure::ImportIncomplete { .. } => EXIT_IMPORT_FAILED,
        }
    }

    /// The error code and the message: `error: <code>: <message>` on stderr, and the error of a
    /// bulk import line. Messages can quote the server (serde errors do), so control characters
    /// are replaced here for all of them.
    fn code_and_message(&self) -> (String, String) {
        let (code, message) = match self {
            Failure::Usage(m) => ("usage".into(), m.clone()),
            Failure::Api(e) => e.code_and_message(),
            Failure::Unreachable(m) => (
                "unreachable".into(),
                format!("cannot reach the admin API at {m}"),
            ),
            Failure::Timeout(d) => (
                "timeout".into(),
                format!(
                    "the admin API did not answer within {}",
                    humantime::format_duration(*d)
                ),
            ),
            Failure::Unexpected(m) => ("unexpected_response".into(), m.clone()),
            Failure::Output(e) => ("output".into(), format!("cannot write to stdout: {e}")),
            Failure::Declined(m) => ("declined".into(), m.clone()),
            Failure::ImportIncomplete { failed, total } => (
                "import_incomplete".into(),
                format!("{failed} of {total} lines failed"),
            ),
        };
        (code, render::sanitize(&message))
    }
}

/// Exit code for an error status of the admin API.
fn exit_code_for_status(status: StatusCode) -> u8 {
    match status.as_u16() {
        401 | 403 => EXIT_UNAUTHORIZED,
        404 => EXIT_NOT_FOUND,
        400..=499 => EXIT_REFUSED,
        // 5xx, and anything a keygate admin API never answers with an error (1xx, 3xx).
        _ => EXIT_UNAVAILABLE,
    }
}

impl fmt::Display for Failure {
    /// `<code>: <message>`; [`run`] adds `error: `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (code, message) = self.code_and_message();
        write!(f, "{code}: {message}")
    }
}

/// Runs `keygate keys …` and returns the documented exit code.
pub(crate) fn run(args: KeysArgs) -> ExitCode {
    match execute(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

fn execute(args: KeysArgs) -> Result<(), Failure> {
    let KeysArgs {
        connection,
        command,
    } = args;
    let (client, workspace) = connection.resolve()?;
    // One thread is plenty: the CLI makes one request at a time.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Unexpected(format!("cannot start the async runtime: {e}")))?;
    let session = Session {
        client,
        workspace,
        json: connection.json,
    };
    runtime.block_on(session.dispatch(command))
}

/// One invocation: who to talk to, about which workspace, and how to print.
struct Session {
    client: AdminClient,
    workspace: String,
    json: bool,
}

impl Session {
    async fn dispatch(&self, command: KeysCommand) -> Result<(), Failure> {
        match command {
            KeysCommand::Create(a) => self.create(&a).await,
            KeysCommand::List(a) => self.list(&a).await,
            KeysCommand::Show { id } => self.show(&id).await,
            KeysCommand::Update(a) => self.update(&a).await,
            KeysCommand::Rotate { id, grace } => self.rotate(&id, grace.as_deref()).await,
            KeysCommand::Revoke { id, yes } => self.revoke(&id, yes).await,
            KeysCommand::Delete { id, yes } => self.delete(&id, yes).await,
            KeysCommand::Import(a) => self.import(&a).await,
        }
    }

    fn keys_path(&self) -> String {
        format!("/v1/workspaces/{}/keys", client::encode(&self.workspace))
    }

    fn key_path(&self, id: &str) -> String {
        format!("{}/{}", self.keys_path(), client::encode(id))
    }

    async fn create(&self, a: &CreateArgs) -> Result<(), Failure> {
        let body = key_fields_body(Some(&a.name), &a.fields, OffsetDateTime::now_utc())?;
        let answer = self
            .client
            .call(Method::POST, &self.keys_path(), Some(&Value::Object(body)))
            .await?;
        let answer = client::expect_body(answer)?;
        if self.json {
            return write_stdout(&render::json(&answer));
        }
        write_stdout(&render::created(&answer)?)
    }

    async fn list(&self, a: &ListArgs) -> Result<(), Failure> {
        let mut keys = Vec::new();
        let mut cursor = a.cursor.clone();
        loop {
            let path = format!("{}{}", self.keys_path(), list_query(a, cursor.as_deref()));
            let page = client::expect_body(self.client.call(Method::GET, &path, None).await?)?;
            let next = match page.get("next_cursor") {
                Some(Value::String(c)) => Some(c.clone()),
                Some(Value::Null) | None => None,
                Some(_) => {
                    return Err(Failure::Unexpected(
                        "`next_cursor` is neither a string nor null".into(),
                    ));
                }
            };
            if !a.all {
                if self.json {
                    return write_stdout(&render::json(&page));
                }
                let rows = render::keys_of_page(&page)?;
                if let Some(next) = &next {
                    eprintln!(
                        "More keys: run again with --all, or with --cursor {}",
                        render::sanitize(next)
                    );
                }
                return write_stdout(&render::list(&rows));
            }
            match page {
                Value::Object(mut page) => match page.remove("keys") {
                    Some(Value::Array(page_keys)) => keys.extend(page_keys),
                    _ => return Err(Failure::Unexpected("a page without `keys`".into())),
                },
                _ => return Err(Failure::Unexpected("a page that is not an object".into())),
            }
            match next {
                // A server that hands back the cursor it was given would loop forever.
                Some(next) if cursor.as_deref() == Some(next.as_str()) => {
                    return Err(Failure::Unexpected(
                        "the API returned the same page cursor twice".into(),
                    ));
                }
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let all = serde_json::json!({ "keys": keys });
        if self.json {
            return write_stdout(&render::json(&all));
        }
        write_stdout(&render::list(&render::keys_of_page(&all)?))
    }

    async fn show(&self, id: &str) -> Result<(), Failure> {
        let key = client::expect_body(
            self.client
                .call(Method::GET, &self.key_path(id), None)
                .await?,
        )?;
        if self.json {
            return write_stdout(&render::json(&key));
        }
        write_stdout(&render::detail(&KeyView::from_value(&key)?))
    }

    async fn update(&self, a: &UpdateArgs) -> Result<(), Failure> {
        let body = update_body(a, OffsetDateTime::now_utc())?;
        let key = client::expect_body(
            self.client
                .call(
                    Method::PATCH,
                    &self.key_path(&a.id),
                    Some(&Value::Object(body)),
                )
                .await?,
        )?;
        self.print_key(&key)
    }

    async fn rotate(&self, id: &str, grace: Option<&str>) -> Result<(), Failure> {
        let mut body = Map::new();
        if let Some(grace) = grace {
            body.insert("grace_period".into(), Value::String(grace.to_owned()));
        }
        let path = format!("{}/rotate", self.key_path(id));
        let answer = client::expect_body(
            self.client
                .call(Method::POST, &path, Some(&Value::Object(body)))
                .await?,
        )?;
        if self.json {
            return write_stdout(&render::json(&answer));
        }
        write_stdout(&render::rotated(&answer)?)
    }

    async fn revoke(&self, id: &str, yes: bool) -> Result<(), Failure> {
        confirm(Action::Revoke, id, yes)?;
        let path = format!("{}/revoke", self.key_path(id));
        let key = client::expect_body(self.client.call(Method::POST, &path, None).await?)?;
        self.print_key(&key)
    }

    async fn delete(&self, id: &str, yes: bool) -> Result<(), Failure> {
        confirm(Action::Delete, id, yes)?;
        self.client
            .call(Method::DELETE, &self.key_path(id), None)
            .await?;
        // 204 has no body, so --json prints nothing: the exit code says it worked.
        if self.json {
            return Ok(());
        }
        write_stdout(&format!(
            "Deleted {} and its request logs.\n",
            render::sanitize(id)
        ))
    }

    async fn import(&self, a: &ImportArgs) -> Result<(), Failure> {
        let path = format!("{}/import", self.keys_path());
        if let Some(file) = &a.file {
            return import::run(&self.client, &path, file, self.json).await;
        }
        let name = a.name.as_deref().ok_or_else(|| {
            // clap's `required_unless_present = "file"` makes this unreachable.
            Failure::Usage("--name is required".into())
        })?;
        let mut body = key_fields_body(Some(name), &a.fields, OffsetDateTime::now_utc())?;
        if a.secret_stdin {
            body.insert("secret".into(), Value::String(read_secret_from_stdin()?));
        } else if let Some(sha256) = &a.sha256 {
            body.insert("sha256".into(), Value::String(sha256.clone()));
            if let Some(prefix) = &a.prefix {
                body.insert("prefix".into(), Value::String(prefix.clone()));
            }
        }
        let key = client::expect_body(
            self.client
                .call(Method::POST, &path, Some(&Value::Object(body)))
                .await?,
        )?;
        self.print_key(&key)
    }

    /// A key object: as JSON, or as a one-row table.
    fn print_key(&self, key: &Value) -> Result<(), Failure> {
        if self.json {
            return write_stdout(&render::json(key));
        }
        write_stdout(&render::list(&[KeyView::from_value(key)?]))
    }
}

/// The query string of one `list` page (empty when nothing is set).
fn list_query(a: &ListArgs, cursor: Option<&str>) -> String {
    let limit = a.limit.map(|l| l.to_string());
    let pairs = [
        ("status", a.status.as_deref()),
        ("owner", a.owner.as_deref()),
        ("limit", limit.as_deref()),
        ("cursor", cursor),
    ];
    let query: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", client::encode(v))))
        .collect();
    if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    }
}

/// The JSON body for create and import (and the set fields of update): only what was given.
fn key_fields_body(
    name: Option<&str>,
    f: &KeyFields,
    now: OffsetDateTime,
) -> Result<Map<String, Value>, Failure> {
    let mut body = Map::new();
    let mut put = |k: &str, v: Value| {
        body.insert(k.to_owned(), v);
    };
    if let Some(name) = name {
        put("name", name.into());
    }
    if let Some(d) = &f.description {
        put("description", d.as_str().into());
    }
    if !f.scopes.is_empty() {
        put("scopes", f.scopes.clone().into());
    }
    if let Some(r) = &f.role {
        put("role", r.as_str().into());
    }
    if let Some(at) = &f.expires_at {
        put("expires_at", at.as_str().into());
    }
    if let Some(d) = f.expires_in {
        put("expires_at", expiry_after(now, d)?.into());
    }
    if !f.ips.is_empty() {
        put("ip_allowlist", f.ips.clone().into());
    }
    if let Some(o) = &f.owner {
        put("owner", o.as_str().into());
    }
    if let Some(m) = &f.metadata {
        put("metadata", Value::Object(m.clone()));
    }
    if let Some(rl) = &f.rate_limit {
        let mut limit = Map::new();
        limit.insert("requests".into(), rl.requests.into());
        limit.insert("period".into(), rl.period.as_str().into());
        if let Some(b) = rl.burst {
            limit.insert("burst".into(), b.into());
        }
        put("rate_limit", Value::Object(limit));
    }
    Ok(body)
}

/// The PATCH body: the fields given, `null` for the `--no-*` flags, `[]` for `--clear-scopes`
/// and `--clear-ips` (an empty list is what "no scopes" and "any address" are in the key object,
/// so it is accepted however the server treats `null` for a list).
fn update_body(a: &UpdateArgs, now: OffsetDateTime) -> Result<Map<String, Value>, Failure> {
    let mut body = key_fields_body(a.name.as_deref(), &a.fields, now)?;
    let c = &a.clear;
    let clears = [
        (c.no_description, "description", Value::Null),
        (c.clear_scopes, "scopes", Value::Array(Vec::new())),
        (c.no_role, "role", Value::Null),
        (c.no_expiry, "expires_at", Value::Null),
        (c.clear_ips, "ip_allowlist", Value::Array(Vec::new())),
        (c.no_owner, "owner", Value::Null),
        (c.no_metadata, "metadata", Value::Null),
        (c.no_rate_limit, "rate_limit", Value::Null),
    ];
    for (set, field, value) in clears {
        if set {
            body.insert(field.into(), value);
        }
    }
    if body.is_empty() {
        return Err(Failure::Usage(
            "nothing to update: give at least one field to change (see --help)".into(),
        ));
    }
    Ok(body)
}

/// `now + d` as RFC 3339 UTC, to the second.
fn expiry_after(now: OffsetDateTime, d: Duration) -> Result<String, Failure> {
    let too_far = || Failure::Usage("--expires-in is too far in the future".into());
    let at = time::Duration::try_from(d)
        .ok()
        .and_then(|d| now.checked_add(d))
        .ok_or_else(too_far)?;
    at.replace_nanosecond(0)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .ok_or_else(too_far)
}

/// What a confirmation prompt asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Revoke,
    Delete,
}

impl Action {
    fn question(self, id: &str) -> String {
        let id = render::sanitize(id);
        match self {
            Action::Revoke => {
                format!("Applications using this key will stop working. Revoke {id}? [y/N] ")
            }
            Action::Delete => format!(
                "Applications using this key will stop working, and its request logs will be \
                 deleted. Delete {id}? [y/N] "
            ),
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::Revoke => "revoke",
            Action::Delete => "delete",
        }
    }
}

/// Asks before an irreversible change. Without `--yes` and without a terminal to ask on, refuses
/// (exit 2) rather than wait on a stdin nobody will answer.
fn confirm(action: Action, id: &str, yes: bool) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure::Usage(format!(
            "refusing to {} {} without confirmation: stdin is not a terminal; pass --yes",
            action.verb(),
            render::sanitize(id)
        )));
    }
    // Blocking reads are fine here: nothing else runs on this single-threaded runtime yet.
    eprint!("{}", action.question(id));
    let _ = io::stderr().flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::Usage(format!("cannot read the answer: {e}")))?;
    if is_yes(&answer) {
        Ok(())
    } else {
        Err(Failure::Declined(format!(
            "{} was not {}d",
            render::sanitize(id),
            action.verb()
        )))
    }
}

/// Whether a prompt answer means yes (`y` or `yes`, any case); anything else is no.
fn is_yes(answer: &str) -> bool {
    let a = answer.trim();
    a.eq_ignore_ascii_case("y") || a.eq_ignore_ascii_case("yes")
}

/// Longest secret accepted on stdin; the API takes at most 256 characters.
const MAX_STDIN_SECRET: u64 = 4096;

/// The secret for `import --secret-stdin`: one line, surrounding whitespace removed (imported
/// secrets are printable characters without spaces). Never echoed back in any message.
fn read_secret_from_stdin() -> Result<String, Failure> {
    let stdin = io::stdin();
    let mut text = String::new();
    let read = if stdin.is_terminal() {
        // No dependency to turn echo off; say so, and say how to avoid it.
        eprint!("Secret to import (shown as you type; pipe it in to keep it off the screen): ");
        let _ = io::stderr().flush();
        stdin.lock().read_line(&mut text)
    } else {
        stdin
            .lock()
            .take(MAX_STDIN_SECRET)
            .read_to_string(&mut text)
    };
    read.map_err(|e| Failure::Usage(format!("cannot read the secret from stdin: {e}")))?;
    secret_from_text(&text)
}

/// Checks what was read for `--secret-stdin` (messages never include the text).
fn secret_from_text(text: &str) -> Result<String, Failure> {
    let secret = text.trim();
    if secret.is_empty() {
        return Err(Failure::Usage(
            "--secret-stdin: stdin held no secret".into(),
        ));
    }
    if secret.chars().any(char::is_whitespace) {
        return Err(Failure::Usage(
            "--secret-stdin: expected one secret on one line without spaces (use --file for many keys)"
                .into(),
        ));
    }
    Ok(secret.to_owned())
}

/// Writes command output to stdout. A closed pipe (`keygate keys list | head`) is not an error.
fn write_stdout(text: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(Failure::Output(e)),
        _ => Ok(()),
    }
}

/// A non-zero duration (`--expires-in`, `--timeout`).
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration_text(s)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

/// `--grace`: any duration, passed on as typed (the API reads the same syntax).
fn parse_grace(s: &str) -> Result<String, String> {
    parse_duration_text(s).map(|_| s.trim().to_owned())
}

/// `--expires-at`: RFC 3339, passed on as typed; the API checks it is in the future.
fn parse_rfc3339(s: &str) -> Result<String, String> {
    OffsetDateTime::parse(s.trim(), &Rfc3339)
        .map(|_| s.trim().to_owned())
        .map_err(|e| format!("not an RFC 3339 time like 2027-01-01T00:00:00Z: {e}"))
}

/// `--ip`: an IPv4/IPv6 address or CIDR, checked as the API will, passed on as typed.
fn parse_ip(s: &str) -> Result<String, String> {
    keygate::config::ip_list::parse(s).map(|_| s.trim().to_owned())
}

/// `--metadata`: a JSON object.
fn parse_metadata(s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("must be a JSON object, e.g. '{\"team\":\"payments\"}'".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// `--rate-limit REQUESTS/PERIOD[:BURST]`.
fn parse_rate_limit(s: &str) -> Result<RateLimitArg, String> {
    let shape = "expected REQUESTS/PERIOD[:BURST], e.g. 100/1s or 100/1s:200";
    let (requests, rest) = s.trim().split_once('/').ok_or(shape)?;
    let (period, burst) = match rest.split_once(':') {
        Some((p, b)) => (p, Some(b)),
        None => (rest, None),
    };
    let requests = match requests.trim().parse::<u32>() {
        Ok(n) if n > 0 => n,
        _ => return Err(format!("requests must be a whole number above 0; {shape}")),
    };
    parse_positive_duration(period).map_err(|e| format!("period: {e}; {shape}"))?;
    let burst = match burst {
        None => None,
        Some(b) => match b.trim().parse::<u32>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(format!("burst must be a whole number above 0; {shape}")),
        },
    };
    Ok(RateLimitArg {
        requests,
        period: period.trim().to_owned(),
        burst,
    })
}

/// `--sha256`: 64 hex digits, sent in lower case.
fn parse_sha256(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err("expected the 64 hex digits of a SHA-256".into())
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};
    use time::macros::datetime;

    use super::*;

    /// `keygate keys …` as `main` wires it.
    #[derive(Debug, Parser)]
    #[command(name = "keygate")]
    struct TestCli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Top {
        Keys(KeysArgs),
    }

    /// Parses `keygate keys <args>` with a token and workspace given, so the developer's
    /// environment cannot change the outcome.
    fn parse(args: &[&str]) -> Result<KeysArgs, clap::Error> {
        let mut argv = vec!["keygate", "keys"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--token", "t0k3n", "-w", "acme"]);
        TestCli::try_parse_from(argv).map(|c| match c.command {
            Top::Keys(k) => k,
        })
    }

    fn parse_err(args: &[&str]) -> clap::error::ErrorKind {
        parse(args).unwrap_err().kind()
    }

    #[test]
    fn the_command_definition_is_consistent() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let k = TestCli::try_parse_from([
            "keygate",
            "keys",
            "--json",
            "--admin-url",
            "http://10.0.0.1:9901",
            "--token",
            "t",
            "list",
            "-w",
            "acme",
            "--timeout",
            "500ms",
        ])
        .unwrap();
        let Top::Keys(k) = k.command;
        assert!(k.connection.json);
        assert_eq!(k.connection.admin_url, "http://10.0.0.1:9901");
        assert_eq!(k.connection.workspace.as_deref(), Some("acme"));
        assert_eq!(k.connection.timeout, Duration::from_millis(500));
        assert!(matches!(k.command, KeysCommand::List(_)));
    }

    #[test]
    fn the_token_is_never_in_debug_output() {
        let k = parse(&["show", "key_x"]).unwrap();
        let debug = format!("{k:?}");
        assert!(!debug.contains("t0k3n"), "{debug}");
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn token_and_workspace_are_required_with_exit_code_2() {
        let mut k = parse(&["list"]).unwrap();
        k.connection.token = None;
        let e = k.connection.resolve().err().unwrap();
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(e.to_string().contains("KEYGATE_ADMIN_TOKEN"), "{e}");
        let mut k = parse(&["list"]).unwrap();
        k.connection.workspace = Some(String::new());
        let e = k.connection.resolve().err().unwrap();
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(e.to_string().contains("--workspace"), "{e}");
    }

    #[test]
    fn create_takes_every_field_and_sends_only_those_given() {
        let k = parse(&[
            "create",
            "--name",
            "Production server",
            "--description",
            "deploys",
            "--scope",
            "sessions:read",
            "--scope",
            "sessions:write",
            "--role",
            "viewer",
            "--expires-in",
            "90d",
            "--ip",
            "203.0.113.7",
            "--ip",
            "10.0.0.0/8",
            "--owner",
            "cust_42",
            "--metadata",
            r#"{"team":"payments"}"#,
            "--rate-limit",
            "100/1s:200",
        ])
        .unwrap();
        let KeysCommand::Create(a) = k.command else {
            panic!("create")
        };
        let now = datetime!(2026-11-23 12:00:00.123 UTC);
        let body = Value::Object(key_fields_body(Some(&a.name), &a.fields, now).unwrap());
        assert_eq!(
            body,
            serde_json::json!({
                "name": "Production server",
                "description": "deploys",
                "scopes": ["sessions:read", "sessions:write"],
                "role": "viewer",
                "expires_at": "2027-02-21T12:00:00Z",
                "ip_allowlist": ["203.0.113.7", "10.0.0.0/8"],
                "owner": "cust_42",
                "metadata": {"team": "payments"},
                "rate_limit": {"requests": 100, "period": "1s", "burst": 200},
            })
        );
        let k = parse(&["create", "--name", "n"]).unwrap();
        let KeysCommand::Create(a) = k.command else {
            panic!("create")
        };
        let body = key_fields_body(Some(&a.name), &a.fields, now).unwrap();
        assert_eq!(Value::Object(body), serde_json::json!({"name": "n"}));
    }

    #[test]
    fn create_refuses_bad_values_as_usage_errors() {
        use clap::error::ErrorKind::*;
        assert_eq!(parse_err(&["create"]), MissingRequiredArgument);
        for bad in [
            &["--expires-at", "2027-01-01"][..],
            &["--expires-in", "soon"],
            &["--expires-in", "0s"],
            &["--ip", "10.0.0.300"],
            &["--metadata", "[1]"],
            &["--metadata", "{"],
            &["--rate-limit", "100"],
            &["--rate-limit", "0/1s"],
            &["--rate-limit", "100/0s"],
            &["--rate-limit", "100/1s:x"],
        ] {
            let mut args = vec!["create", "--name", "n"];
            args.extend_from_slice(bad);
            assert_eq!(parse_err(&args), ValueValidation, "{bad:?}");
        }
        assert_eq!(
            parse_err(&[
                "create",
                "--name",
                "n",
                "--expires-at",
                "2027-01-01T00:00:00Z",
                "--expires-in",
                "1d"
            ]),
            ArgumentConflict
        );
        assert_eq!(parse_err(&["list", "--limit", "0"]), ValueValidation);
        assert_eq!(parse_err(&["list", "--limit", "101"]), ValueValidation);
        assert_eq!(parse_err(&["list", "--status", "gone"]), InvalidValue);
        assert_eq!(parse_err(&["--timeout", "0s", "list"]), ValueValidation);
    }

    #[test]
    fn rate_limits_parse_with_and_without_burst() {
        assert_eq!(
            parse_rate_limit("100/1s").unwrap(),
            RateLimitArg {
                requests: 100,
                period: "1s".into(),
                burst: None
            }
        );
        assert_eq!(
            parse_rate_limit(" 5/1m:10 ").unwrap(),
            RateLimitArg {
                requests: 5,
                period: "1m".into(),
                burst: Some(10)
            }
        );
        assert!(parse_rate_limit("x/1s").is_err());
        assert!(parse_rate_limit("1/1s:0").is_err());
    }

    #[test]
    fn update_sends_only_the_given_fields_and_clears_with_null_or_empty_lists() {
        let k = parse(&[
            "update",
            "key_abc",
            "--name",
            "renamed",
            "--clear-scopes",
            "--no-role",
            "--no-expiry",
            "--clear-ips",
            "--no-description",
            "--no-owner",
            "--no-metadata",
            "--no-rate-limit",
        ])
        .unwrap();
        let KeysCommand::Update(a) = k.command else {
            panic!("update")
        };
        assert_eq!(a.id, "key_abc");
        let body = update_body(&a, OffsetDateTime::UNIX_EPOCH).unwrap();
        assert_eq!(
            Value::Object(body),
            serde_json::json!({
                "name": "renamed",
                "description": null,
                "scopes": [],
                "role": null,
                "expires_at": null,
                "ip_allowlist": [],
                "owner": null,
                "metadata": null,
                "rate_limit": null,
            })
        );
        let k = parse(&["update", "key_abc", "--role", "viewer", "--scope", "a"]).unwrap();
        let KeysCommand::Update(a) = k.command else {
            panic!("update")
        };
        let body = update_body(&a, OffsetDateTime::UNIX_EPOCH).unwrap();
        assert_eq!(
            Value::Object(body),
            serde_json::json!({"role": "viewer", "scopes": ["a"]})
        );
    }

    #[test]
    fn update_refuses_contradictions_and_empty_changes() {
        use clap::error::ErrorKind::*;
        for pair in [
            ["--role", "viewer", "--no-role"],
            ["--scope", "a", "--clear-scopes"],
            ["--ip", "10.0.0.1", "--clear-ips"],
            ["--expires-in", "1d", "--no-expiry"],
            ["--owner", "o", "--no-owner"],
        ] {
            let mut args = vec!["update", "key_abc"];
            args.extend_from_slice(&pair);
            assert_eq!(parse_err(&args), ArgumentConflict, "{pair:?}");
        }
        let k = parse(&["update", "key_abc"]).unwrap();
        let KeysCommand::Update(a) = k.command else {
            panic!("update")
        };
        let e = update_body(&a, OffsetDateTime::UNIX_EPOCH).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_USAGE);
    }

    #[test]
    fn import_takes_a_secret_only_from_stdin_or_a_hash_or_a_file() {
        use clap::error::ErrorKind::*;
        // No way to pass a plaintext secret as an argument.
        assert_eq!(
            parse_err(&["import", "--name", "n", "--secret", "s3cr3t-s3cr3t-s3cr3t"]),
            UnknownArgument
        );
        assert_eq!(
            parse_err(&["import", "--name", "n"]),
            MissingRequiredArgument
        );
        assert_eq!(
            parse_err(&["import", "--secret-stdin"]),
            MissingRequiredArgument
        );
        let hash = "AB".repeat(32);
        assert_eq!(
            parse_err(&["import", "--name", "n", "--secret-stdin", "--sha256", &hash]),
            ArgumentConflict
        );
        assert_eq!(
            parse_err(&["import", "--name", "n", "--secret-stdin", "--prefix", "p"]),
            ArgumentConflict
        );
        assert_eq!(
            parse_err(&["import", "--name", "n", "--prefix", "p"]),
            MissingRequiredArgument
        );
        assert_eq!(
            parse_err(&["import", "--name", "n", "--sha256", "abc"]),
            ValueValidation
        );
        assert_eq!(
            parse_err(&["import", "--file", "k.jsonl", "--name", "n"]),
            ArgumentConflict
        );
        assert_eq!(
            parse_err(&["import", "--file", "k.jsonl", "--scope", "a"]),
            ArgumentConflict
        );
        let k = parse(&[
            "import", "--name", "n", "--sha256", &hash, "--prefix", "ed_",
        ])
        .unwrap();
        let KeysCommand::Import(a) = k.command else {
            panic!("import")
        };
        assert_eq!(a.sha256.as_deref(), Some("ab".repeat(32).as_str()));
        assert!(parse(&["import", "--file", "k.jsonl"]).is_ok());
    }

    #[test]
    fn secrets_from_stdin_are_one_trimmed_line() {
        assert_eq!(
            secret_from_text("edsk_live_0123456789abcdef\n").unwrap(),
            "edsk_live_0123456789abcdef"
        );
        assert_eq!(secret_from_text("  abc\r\n").unwrap(), "abc");
        for bad in ["", "\n", "a b", "one\ntwo\n"] {
            let e = secret_from_text(bad).unwrap_err();
            assert_eq!(e.exit_code(), EXIT_USAGE);
        }
        let e = secret_from_text("hunter2-hunter2 x").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn revoke_and_delete_take_yes() {
        let k = parse(&["revoke", "key_abc", "--yes"]).unwrap();
        assert!(matches!(k.command, KeysCommand::Revoke { yes: true, .. }));
        let k = parse(&["delete", "key_abc", "-y"]).unwrap();
        assert!(matches!(k.command, KeysCommand::Delete { yes: true, .. }));
        let k = parse(&["rotate", "key_abc", "--grace", "24h"]).unwrap();
        assert!(matches!(k.command, KeysCommand::Rotate { grace: Some(ref g), .. } if g == "24h"));
        assert_eq!(
            parse_err(&["rotate", "key_abc", "--grace", "a while"]),
            clap::error::ErrorKind::ValueValidation
        );
    }

    #[test]
    fn prompts_say_what_happens_and_only_yes_confirms() {
        assert_eq!(
            Action::Revoke.question("key_abc"),
            "Applications using this key will stop working. Revoke key_abc? [y/N] "
        );
        assert!(
            Action::Delete
                .question("key_abc")
                .contains("Delete key_abc? [y/N]")
        );
        for yes in ["y\n", "Y", "yes\r\n", " YES "] {
            assert!(is_yes(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yep", "y y"] {
            assert!(!is_yes(no), "{no:?}");
        }
    }

    #[test]
    fn list_queries_encode_their_values() {
        let k = parse(&[
            "list",
            "--status",
            "active",
            "--owner",
            "cust 42&x",
            "--limit",
            "10",
        ])
        .unwrap();
        let KeysCommand::List(a) = k.command else {
            panic!("list")
        };
        assert_eq!(
            list_query(&a, Some("c/1")),
            "?status=active&owner=cust%2042%26x&limit=10&cursor=c%2F1"
        );
        let k = parse(&["list"]).unwrap();
        let KeysCommand::List(a) = k.command else {
            panic!("list")
        };
        assert_eq!(list_query(&a, None), "");
    }

    #[test]
    fn exit_codes_follow_the_status() {
        for (status, code) in [
            (400, EXIT_REFUSED),
            (405, EXIT_REFUSED),
            (409, EXIT_REFUSED),
            (413, EXIT_REFUSED),
            (401, EXIT_UNAUTHORIZED),
            (403, EXIT_UNAUTHORIZED),
            (404, EXIT_NOT_FOUND),
            (500, EXIT_UNAVAILABLE),
            (503, EXIT_UNAVAILABLE),
            (302, EXIT_UNAVAILABLE),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(exit_code_for_status(status), code, "{status}");
        }
        assert_eq!(Failure::Usage(String::new()).exit_code(), 2);
        assert_eq!(Failure::Declined(String::new()).exit_code(), 1);
        assert_eq!(Failure::Timeout(Duration::from_secs(1)).exit_code(), 6);
        assert_eq!(Failure::Unreachable(String::new()).exit_code(), 6);
        assert_eq!(Failure::Unexpected(String::new()).exit_code(), 6);
        assert_eq!(
            Failure::ImportIncomplete {
                failed: 1,
                total: 2
            }
            .exit_code(),
            5
        );
    }

    #[test]
    fn help_documents_the_exit_codes() {
        let mut cmd = TestCli::command();
        let help = cmd
            .find_subcommand_mut("keys")
            .unwrap()
            .render_help()
            .to_string();
        for line in [
            "Exit codes:",
            "3  not found",
            "4  not authorized",
            "6  admin API",
        ] {
            assert!(help.contains(line), "{line} missing from:\n{help}");
        }
    }

    #[test]
    fn expiry_after_is_rfc3339_to_the_second_and_never_panics() {
        let now = datetime!(2026-11-23 12:00:00.5 UTC);
        assert_eq!(
            expiry_after(now, Duration::from_secs(3600)).unwrap(),
            "2026-11-23T13:00:00Z"
        );
        assert!(expiry_after(now, Duration::from_secs(u64::MAX)).is_err());
    }
}
