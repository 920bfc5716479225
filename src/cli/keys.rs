//! `keygate keys …`: the subcommands, their arguments, and what each asks of the admin API. The
//! key fields of create, import and update (and the bodies they make) are in [`fields`]; a key's
//! request log and daily usage in [`activity`].

mod activity;
pub(super) mod fields;

use clap::{Args, Subcommand};
use http::Method;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use self::fields::{ClearFlags, KeyFields, key_fields_body, update_body};
use super::args::{Paging, parse_grace};
use super::client;
use super::import::{self, ImportArgs};
use super::render::{self, KeyView};
use super::session::{ListKind, Session};
use super::{
    Action, CONNECTION_HEADING, Connection, EXIT_CODES_HELP, Failure, block_on, confirm,
    write_stdout,
};

/// The key list of a workspace.
const KEYS: ListKind = ListKind {
    field: "keys",
    noun: "keys",
};

/// `keygate keys`: the connection options (accepted before or after the subcommand) and the
/// subcommand.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct KeysArgs {
    #[command(flatten)]
    connection: Connection,
    /// Workspace of the keys [required].
    // Required, but clap cannot require a global argument: `execute` checks it.
    #[arg(
        short,
        long,
        global = true,
        env = "KEYGATE_WORKSPACE",
        value_name = "WS",
        help_heading = CONNECTION_HEADING
    )]
    workspace: Option<String>,
    #[command(subcommand)]
    command: KeysCommand,
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
    /// Show a key's recent requests: forwarded ones and those refused after the key was
    /// recognised, with their code; newest first.
    Logs {
        /// The key id (key_…).
        id: String,
        /// How many entries (1–100; the API's default is 50).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: Option<u32>,
    },
    /// Show a key's forwarded requests per UTC day, oldest first, and their total.
    Usage {
        /// The key id (key_…).
        id: String,
        /// How many days, today included (1–90; the API's default is 30).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=90))]
        days: Option<u32>,
    },
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
    #[command(flatten)]
    paging: Paging,
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

/// Runs one `keygate keys …` command.
pub(super) fn execute(args: KeysArgs) -> Result<(), Failure> {
    let session = args.connection.session()?;
    let workspace = args.workspace.filter(|w| !w.is_empty()).ok_or_else(|| {
        Failure::Usage(
            "a workspace is required: pass -w/--workspace or set KEYGATE_WORKSPACE".into(),
        )
    })?;
    let keys = Keys { session, workspace };
    block_on(keys.dispatch(args.command))
}

/// One `keys` command: the session, and the workspace of the keys.
struct Keys {
    session: Session,
    workspace: String,
}

impl Keys {
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
            KeysCommand::Logs { id, limit } => {
                activity::logs(&self.session, &self.key_path(&id), limit).await
            }
            KeysCommand::Usage { id, days } => {
                activity::usage(&self.session, &self.key_path(&id), days).await
            }
        }
    }

    fn keys_path(&self) -> String {
        format!("/v1/workspaces/{}/keys", client::encode(&self.workspace))
    }

    fn key_path(&self, id: &str) -> String {
        format!("{}/{}", self.keys_path(), client::encode(id))
    }

    /// A request with a JSON body, whose answer must have one.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Map<String, Value>,
    ) -> Result<Value, Failure> {
        let answer = self
            .session
            .client
            .call(method, path, Some(&Value::Object(body)))
            .await?;
        client::expect_body(answer)
    }

    async fn create(&self, a: &CreateArgs) -> Result<(), Failure> {
        let body = key_fields_body(Some(&a.name), &a.fields, OffsetDateTime::now_utc())?;
        let answer = self.send(Method::POST, &self.keys_path(), body).await?;
        self.session.print(&answer, render::created)
    }

    async fn list(&self, a: &ListArgs) -> Result<(), Failure> {
        let page = |cursor: Option<&str>| format!("{}{}", self.keys_path(), list_query(a, cursor));
        let listing = self
            .session
            .list(KEYS, page, a.paging.cursor.clone(), a.paging.all)
            .await?;
        self.session.print_list(KEYS, &listing, |items| {
            Ok(render::list(&render::key_views(items)?))
        })
    }

    async fn show(&self, id: &str) -> Result<(), Failure> {
        let key = self.session.get(&self.key_path(id)).await?;
        self.session
            .print(&key, |key| Ok(render::detail(&KeyView::from_value(key)?)))
    }

    async fn update(&self, a: &UpdateArgs) -> Result<(), Failure> {
        let body = update_body(
            a.name.as_deref(),
            &a.fields,
            &a.clear,
            OffsetDateTime::now_utc(),
        )?;
        let key = self
            .send(Method::PATCH, &self.key_path(&a.id), body)
            .await?;
        self.print_key(&key)
    }

    async fn rotate(&self, id: &str, grace: Option<&str>) -> Result<(), Failure> {
        let mut body = Map::new();
        if let Some(grace) = grace {
            body.insert("grace_period".into(), Value::String(grace.to_owned()));
        }
        let path = format!("{}/rotate", self.key_path(id));
        let answer = self.send(Method::POST, &path, body).await?;
        self.session.print(&answer, render::rotated)
    }

    async fn revoke(&self, id: &str, yes: bool) -> Result<(), Failure> {
        confirm(Action::Revoke, id, yes)?;
        let path = format!("{}/revoke", self.key_path(id));
        let answer = self.session.client.call(Method::POST, &path, None).await?;
        self.print_key(&client::expect_body(answer)?)
    }

    async fn delete(&self, id: &str, yes: bool) -> Result<(), Failure> {
        confirm(Action::Delete, id, yes)?;
        self.session
            .client
            .call(Method::DELETE, &self.key_path(id), None)
            .await?;
        // 204 has no body, so --json prints nothing: the exit code says it worked.
        if self.session.json {
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
            return import::run(&self.session.client, &path, file, self.session.json).await;
        }
        let name = a.name.as_deref().ok_or_else(|| {
            // clap's `required_unless_present = "file"` makes this unreachable.
            Failure::Usage("--name is required".into())
        })?;
        let mut body = key_fields_body(Some(name), &a.fields, OffsetDateTime::now_utc())?;
        if a.secret_stdin {
            body.insert(
                "secret".into(),
                Value::String(import::read_secret_from_stdin()?),
            );
        } else if let Some(sha256) = &a.sha256 {
            body.insert("sha256".into(), Value::String(sha256.clone()));
            if let Some(prefix) = &a.prefix {
                body.insert("prefix".into(), Value::String(prefix.clone()));
            }
        }
        let key = self.send(Method::POST, &path, body).await?;
        self.print_key(&key)
    }

    /// A key object: as JSON, or as a one-row table (and a warning when a change was not
    /// confirmed by every gateway instance in time).
    fn print_key(&self, key: &Value) -> Result<(), Failure> {
        self.session.print(key, |key| {
            let mut out = render::list(&[KeyView::from_value(key)?]);
            out.push_str(&render::propagation(key));
            Ok(out)
        })
    }
}

/// The query string of one `list` page (empty when nothing is set).
fn list_query(a: &ListArgs, cursor: Option<&str>) -> String {
    let limit = a.paging.limit.map(|l| l.to_string());
    client::query(&[
        ("status", a.status.as_deref()),
        ("owner", a.owner.as_deref()),
        ("limit", limit.as_deref()),
        ("cursor", cursor),
    ])
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cli::tests::parse_cli;
    use crate::cli::{AdminCommand, EXIT_USAGE};

    /// Parses `keygate keys <args>` with a token and workspace given, so the developer's
    /// environment cannot change the outcome.
    pub(in crate::cli) fn parse(args: &[&str]) -> Result<KeysArgs, clap::Error> {
        let mut argv = vec!["keys"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["-w", "acme"]);
        parse_cli(&argv).map(|c| match c {
            AdminCommand::Keys(k) => *k,
            other => panic!("not keys: {other:?}"),
        })
    }

    pub(in crate::cli) fn parse_err(args: &[&str]) -> clap::error::ErrorKind {
        parse(args).unwrap_err().kind()
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let k = parse_cli(&[
            "keys",
            "--json",
            "--admin-url",
            "http://10.0.0.1:9901",
            "list",
            "-w",
            "acme",
            "--timeout",
            "500ms",
        ])
        .unwrap();
        let AdminCommand::Keys(k) = k else {
            panic!("keys")
        };
        assert!(k.connection.json);
        assert_eq!(k.connection.admin_url, "http://10.0.0.1:9901");
        assert_eq!(k.workspace.as_deref(), Some("acme"));
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
        let e = execute(k).err().unwrap();
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(e.to_string().contains("KEYGATE_ADMIN_TOKEN"), "{e}");
        let mut k = parse(&["list"]).unwrap();
        k.workspace = Some(String::new());
        let e = execute(k).err().unwrap();
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(e.to_string().contains("--workspace"), "{e}");
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
}
