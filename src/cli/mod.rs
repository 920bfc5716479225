//! `keygate keys …`, `keygate workspaces …`, `keygate audit`: manage API keys and workspaces and
//! read the audit log from a terminal or a script, as a client of the admin HTTP API
//! (`docs/admin-api.md`). Nothing here opens the store: every command is one or more HTTP calls,
//! so the CLI manages any running gateway it can reach, with the permissions of the admin token
//! (or API key) it is given.
//!
//! # Layout
//!
//! - this file: what every command shares: the connection options, [`Failure`] (the one place
//!   an outcome becomes an exit code), confirmation prompts and writing to stdout.
//! - [`session`]: one invocation: the client, JSON or tables, lists followed page by page.
//! - [`keys`]: `keygate keys`: its arguments, what each subcommand does; [`keys::fields`]: the
//!   key fields of create, import and update and the JSON bodies they make;
//!   [`keys::activity`]: `keys logs` and `keys usage`.
//! - [`workspaces`]: `keygate workspaces list|set|delete`.
//! - [`audit`]: `keygate audit`.
//! - [`args`]: parsers of argument values shared by several commands.
//! - [`client`]: the HTTP client and how an answer becomes a value or a [`Failure`].
//! - [`render`]: the table layout, the key table and the one-key view for people.
//! - [`import`]: `keys import`, one key or many from a JSON-lines file.
//!
//! The client speaks HTTP to the admin listener's default (plain HTTP on loopback; remote use
//! through a tunnel or a private network) and HTTPS to one with `admin_tls`, verifying the
//! server against the system's roots or `--ca FILE`, with no switch to skip verification.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the admin API refused the request (400, 409, 413, …), or a confirmation was declined |
//! | 2 | usage error: clap's own, a missing `--token`/`--workspace`, revoke or delete (of a key or a workspace) without `--yes` when stdin is not a terminal |
//! | 3 | not found (404: unknown key or workspace) |
//! | 4 | not authorized (401, 403, including `upgrade_required`) |
//! | 5 | bulk import: at least one line failed |
//! | 6 | the admin API is unreachable, timed out, or answered 5xx or something unexpected; or stdout could not be written |
//!
//! Errors go to stderr as `error: <code>: <message>`; the token never appears in any output, and a
//! secret only in the one-time display after create and rotate.

mod args;
mod audit;
mod client;
mod import;
mod keys;
mod render;
mod session;
mod workspaces;

use std::fmt;
use std::io::{self, BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use http::StatusCode;

use self::args::parse_positive_duration;
use self::audit::AuditArgs;
use self::client::AdminClient;
use self::keys::KeysArgs;
use self::session::Session;
use self::workspaces::WorkspacesArgs;

/// Where the admin API listens unless told otherwise (the default `listen.admin`).
const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9901";

/// The exit codes, for `--help` of each command (the table in this module's docs says the same).
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
The admin URL is http:// (loopback, a tunnel, a private network) or https:// (admin_tls;
the server is verified against the system's roots, or --ca FILE).";

const EXIT_REFUSED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_NOT_FOUND: u8 = 3;
const EXIT_UNAUTHORIZED: u8 = 4;
const EXIT_IMPORT_FAILED: u8 = 5;
const EXIT_UNAVAILABLE: u8 = 6;

/// The help heading of the options every command takes anywhere on its line.
const CONNECTION_HEADING: &str = "Connection (anywhere on the command line)";

/// The commands that talk to the admin API; `main` takes them in among its own.
#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Manage API keys through the admin API: create, list, show, update, rotate, revoke,
    /// delete, import, logs, usage.
    Keys(Box<KeysArgs>),
    /// Manage workspaces through the admin API: list, set, delete.
    Workspaces(Box<WorkspacesArgs>),
    /// Show the audit log of the admin API: who did what to which key, when.
    Audit(Box<AuditArgs>),
}

/// How to reach the admin API, as whom, and how to print.
///
/// `--token` is required, but clap cannot require a global argument, so [`Connection::session`]
/// checks it (exit 2 like clap's own errors).
#[derive(Args)]
#[command(next_help_heading = CONNECTION_HEADING)]
struct Connection {
    /// Base URL of the admin API (http:// or https://).
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
    /// How long to wait for each answer of the admin API (e.g. 500ms, 10s).
    #[arg(
        long,
        global = true,
        default_value = "10s",
        value_name = "DURATION",
        value_parser = parse_positive_duration
    )]
    timeout: Duration,
    /// For an https:// admin URL: trust only the CA certificates in this PEM file (default:
    /// the system's roots). The server is always verified.
    #[arg(long, global = true, env = "KEYGATE_ADMIN_CA", value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
}

impl fmt::Debug for Connection {
    /// Never shows the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("admin_url", &self.admin_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("json", &self.json)
            .field("timeout", &self.timeout)
            .field("ca", &self.ca)
            .finish()
    }
}

impl Connection {
    /// The session of one command, once the arguments clap cannot check are checked.
    fn session(&self) -> Result<Session, Failure> {
        let token = self
            .token
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Failure::Usage(
                    "an admin token is required: set KEYGATE_ADMIN_TOKEN or pass --token".into(),
                )
            })?;
        let client = AdminClient::new(&self.admin_url, token, self.timeout, self.ca.as_deref())?;
        Ok(Session::new(client, self.json))
    }
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

/// Runs one admin API command and returns the documented exit code.
pub(crate) fn run(command: AdminCommand) -> ExitCode {
    let outcome = match command {
        AdminCommand::Keys(args) => keys::execute(*args),
        AdminCommand::Workspaces(args) => workspaces::execute(*args),
        AdminCommand::Audit(args) => audit::execute(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

/// Runs one command's requests on a single-threaded runtime: the CLI makes one request at a
/// time.
fn block_on(work: impl Future<Output = Result<(), Failure>>) -> Result<(), Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Unexpected(format!("cannot start the async runtime: {e}")))?
        .block_on(work)
}

/// What a confirmation prompt asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Revoke,
    Delete,
    DeleteWorkspace,
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
            Action::DeleteWorkspace => format!(
                "Its settings (API access, key limit, default limits, metadata) will be lost. \
                 Delete workspace {id}? [y/N] "
            ),
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::Revoke => "revoke",
            Action::Delete | Action::DeleteWorkspace => "delete",
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

/// Writes command output to stdout. A closed pipe (`keygate keys list | head`) is not an error.
fn write_stdout(text: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(Failure::Output(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use clap::{CommandFactory, Parser};

    use super::*;

    /// `keygate …` as `main` wires the admin API commands.
    #[derive(Debug, Parser)]
    #[command(name = "keygate")]
    pub(in crate::cli) struct TestCli {
        #[command(subcommand)]
        pub(in crate::cli) command: AdminCommand,
    }

    /// Parses `keygate <args>` with a token given, so the developer's environment cannot change
    /// the outcome.
    pub(in crate::cli) fn parse_cli(args: &[&str]) -> Result<AdminCommand, clap::Error> {
        let mut argv = vec!["keygate"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--token", "t0k3n"]);
        TestCli::try_parse_from(argv).map(|c| c.command)
    }

    #[test]
    fn the_command_definition_is_consistent() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn every_command_documents_the_exit_codes() {
        for command in ["keys", "workspaces", "audit"] {
            let mut cli = TestCli::command();
            let help = cli
                .find_subcommand_mut(command)
                .unwrap()
                .render_help()
                .to_string();
            for line in [
                "Exit codes:",
                "3  not found",
                "4  not authorized",
                "6  admin API",
            ] {
                assert!(
                    help.contains(line),
                    "{line} missing from {command}:\n{help}"
                );
            }
        }
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
        assert!(
            Action::DeleteWorkspace
                .question("acme")
                .ends_with("Delete workspace acme? [y/N] ")
        );
        assert_eq!(Action::DeleteWorkspace.verb(), "delete");
        for yes in ["y\n", "Y", "yes\r\n", " YES "] {
            assert!(is_yes(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yep", "y y"] {
            assert!(!is_yes(no), "{no:?}");
        }
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
}
