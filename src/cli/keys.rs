//! `keygate keys …`: the subcommands, their arguments, and what each asks of the admin API. The
//! key fields of create, import and update (and the bodies they make) are in [`fields`].

pub(super) mod fields;

use clap::{Args, Subcommand};
use http::Method;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use self::fields::{ClearFlags, KeyFields, key_fields_body, update_body};
use super::args::parse_grace;
use super::client::{self, AdminClient};
use super::import::{self, ImportArgs};
use super::render::{self, KeyView};
use super::{Action, Connection, EXIT_CODES_HELP, Failure, confirm, write_stdout};

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
        let body = update_body(
            a.name.as_deref(),
            &a.fields,
            &a.clear,
            OffsetDateTime::now_utc(),
        )?;
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

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::EXIT_USAGE;

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
    pub(super) fn parse(args: &[&str]) -> Result<KeysArgs, clap::Error> {
        let mut argv = vec!["keygate", "keys"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--token", "t0k3n", "-w", "acme"]);
        TestCli::try_parse_from(argv).map(|c| match c.command {
            Top::Keys(k) => k,
        })
    }

    pub(super) fn parse_err(args: &[&str]) -> clap::error::ErrorKind {
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
}
