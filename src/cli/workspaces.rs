//! `keygate workspaces list|set|delete`: the workspaces of a gateway through the admin API
//! (`GET /v1/workspaces`, `PUT` and `DELETE /v1/workspaces/{ws}`). Workspaces from the config
//! file are listed too (`source: config`) but refuse changes: 409 `managed_by_config`, exit 1.

use std::collections::BTreeMap;

use clap::{ArgAction, Args, Subcommand};
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::args::{QuotaArg, RateLimitArg, parse_key_value, parse_quota, parse_rate_limit};
use super::client;
use super::render::{self, sanitize, table, text_or};
use super::session::{ListKind, Session};
use super::{Action, Connection, EXIT_CODES_HELP, Failure, block_on, confirm, write_stdout};

/// The workspace list.
const WORKSPACES: ListKind = ListKind {
    field: "workspaces",
    noun: "workspaces",
};

/// `keygate workspaces`: the connection options and the subcommand.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct WorkspacesArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: WorkspacesCommand,
}

#[derive(Debug, Subcommand)]
enum WorkspacesCommand {
    /// List the workspaces the caller may see, by name (every page).
    List {
        /// Workspaces per request (1–1000; the API's default is 100); every page is shown.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
    },
    /// Create a workspace, or change one: only the settings given are sent. A new workspace
    /// starts with API access, 5 active keys, no default limits and no metadata.
    Set(SetArgs),
    /// Delete a workspace; it must hold no keys (delete them first).
    Delete {
        /// The workspace.
        name: String,
        /// Do not ask for confirmation (needed when stdin is not a terminal).
        #[arg(long, short)]
        yes: bool,
    },
}

/// `workspaces set`.
#[derive(Debug, Args)]
struct SetArgs {
    /// The workspace (lower-case letters, digits, `-` and `_`).
    name: String,
    /// Whether keys may be created in it (false: creating one answers 403 upgrade_required).
    #[arg(long, value_name = "true|false", action = ArgAction::Set)]
    api_access: Option<bool>,
    /// How many active keys it may hold at once.
    #[arg(long, value_name = "N")]
    max_active_keys: Option<u32>,
    /// Default rate limit of its keys: REQUESTS/PERIOD[:BURST], e.g. 100/1s or 100/1s:200.
    #[arg(long, value_name = "N/PERIOD[:BURST]", value_parser = parse_rate_limit)]
    rate_limit: Option<RateLimitArg>,
    /// Remove its default rate limit.
    #[arg(long, conflicts_with = "rate_limit")]
    no_rate_limit: bool,
    /// Default quota of its keys: LIMIT/REFILL[:DAY], e.g. 10000/monthly, 10000/monthly:15,
    /// 500/daily, 100/none.
    #[arg(long, value_name = "LIMIT/REFILL[:DAY]", value_parser = parse_quota)]
    quota: Option<QuotaArg>,
    /// Remove its default quota.
    #[arg(long, conflicts_with = "quota")]
    no_quota: bool,
    /// A metadata entry (repeat for several); the entries given replace its metadata.
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    metadata: Vec<(String, String)>,
    /// Remove its metadata.
    #[arg(long, conflicts_with = "metadata")]
    no_metadata: bool,
}

/// Runs one `keygate workspaces …` command.
pub(super) fn execute(args: WorkspacesArgs) -> Result<(), Failure> {
    let session = args.connection.session()?;
    block_on(async {
        match args.command {
            WorkspacesCommand::List { limit } => list(&session, limit).await,
            WorkspacesCommand::Set(a) => set(&session, &a).await,
            WorkspacesCommand::Delete { name, yes } => delete(&session, &name, yes).await,
        }
    })
}

fn workspace_path(name: &str) -> String {
    format!("/v1/workspaces/{}", client::encode(name))
}

async fn list(session: &Session, limit: Option<u32>) -> Result<(), Failure> {
    let limit = limit.map(|l| l.to_string());
    let page = |cursor: Option<&str>| {
        format!(
            "/v1/workspaces{}",
            client::query(&[("limit", limit.as_deref()), ("cursor", cursor)])
        )
    };
    let listing = session.list(WORKSPACES, page, None, true).await?;
    session.print_list(WORKSPACES, &listing, workspaces_table)
}

async fn set(session: &Session, a: &SetArgs) -> Result<(), Failure> {
    let body = Value::Object(set_body(a)?);
    let (status, answer) = session
        .client
        .send(Method::PUT, &workspace_path(&a.name), Some(&body))
        .await?;
    let workspace = client::expect_body(answer)?;
    session.print(&workspace, |w| {
        let verb = if status == StatusCode::CREATED {
            "Created"
        } else {
            "Updated"
        };
        let mut out = format!("{verb} workspace {}.\n", sanitize(&a.name));
        out.push_str(&workspaces_table(std::slice::from_ref(w))?);
        Ok(out)
    })
}

async fn delete(session: &Session, name: &str, yes: bool) -> Result<(), Failure> {
    confirm(Action::DeleteWorkspace, name, yes)?;
    session
        .client
        .call(Method::DELETE, &workspace_path(name), None)
        .await?;
    // 204 has no body, so --json prints nothing: the exit code says it worked.
    if session.json {
        return Ok(());
    }
    write_stdout(&format!("Deleted workspace {}.\n", sanitize(name)))
}

/// The PUT body: the settings given, `null` for `--no-rate-limit` and `--no-quota`, `{}` for
/// `--no-metadata`. Empty when nothing is given: that creates the workspace with the defaults
/// (and changes nothing in one that exists).
fn set_body(a: &SetArgs) -> Result<Map<String, Value>, Failure> {
    let mut body = Map::new();
    if let Some(access) = a.api_access {
        body.insert("api_access".into(), access.into());
    }
    if let Some(max) = a.max_active_keys {
        body.insert("max_active_keys".into(), max.into());
    }
    if let Some(rl) = &a.rate_limit {
        body.insert("rate_limit".into(), rl.to_json());
    } else if a.no_rate_limit {
        body.insert("rate_limit".into(), Value::Null);
    }
    if let Some(q) = &a.quota {
        body.insert("quota".into(), q.to_json());
    } else if a.no_quota {
        body.insert("quota".into(), Value::Null);
    }
    if !a.metadata.is_empty() || a.no_metadata {
        let mut metadata = BTreeMap::new();
        for (k, v) in &a.metadata {
            if metadata
                .insert(k.clone(), Value::String(v.clone()))
                .is_some()
            {
                return Err(Failure::Usage(format!(
                    "--metadata: `{}` is given twice",
                    sanitize(k)
                )));
            }
        }
        body.insert(
            "metadata".into(),
            Value::Object(metadata.into_iter().collect()),
        );
    }
    Ok(body)
}

/// The workspace object as the CLI reads it; every field optional, unknown ones ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WorkspaceView {
    name: Option<String>,
    source: Option<String>,
    api_access: Option<bool>,
    max_active_keys: Option<u64>,
    active_keys: Option<u64>,
    rate_limit: Option<Value>,
    quota: Option<Value>,
}

/// NAME, SOURCE, API ACCESS, KEYS (active/max), RATE LIMIT, QUOTA (the defaults of its keys).
fn workspaces_table(workspaces: &[Value]) -> Result<String, Failure> {
    if workspaces.is_empty() {
        return Ok("No workspaces.\n".into());
    }
    let count = |n: Option<u64>| n.map_or_else(|| "-".into(), |n| n.to_string());
    let rows = workspaces
        .iter()
        .map(|w| {
            let w = WorkspaceView::deserialize(w).map_err(|e| {
                Failure::Unexpected(format!("an answer that is not a workspace: {e}"))
            })?;
            Ok(vec![
                text_or(w.name.as_deref(), "-"),
                text_or(w.source.as_deref(), "-"),
                match w.api_access {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "-".into(),
                },
                format!("{}/{}", count(w.active_keys), count(w.max_active_keys)),
                render::rate_limit(w.rate_limit.as_ref(), "-"),
                render::quota(w.quota.as_ref(), "-"),
            ])
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    Ok(table(
        &[
            "NAME",
            "SOURCE",
            "API ACCESS",
            "KEYS",
            "RATE LIMIT",
            "QUOTA",
        ],
        rows,
        &[],
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cli::tests::parse_cli;
    use crate::cli::{AdminCommand, EXIT_USAGE};

    fn parse(args: &[&str]) -> Result<WorkspacesCommand, clap::Error> {
        let mut argv = vec!["workspaces"];
        argv.extend_from_slice(args);
        parse_cli(&argv).map(|c| match c {
            AdminCommand::Workspaces(w) => w.command,
            other => panic!("not workspaces: {other:?}"),
        })
    }

    fn body(args: &[&str]) -> Result<Value, Failure> {
        let mut argv = vec!["set", "acme"];
        argv.extend_from_slice(args);
        match parse(&argv).unwrap() {
            WorkspacesCommand::Set(a) => {
                assert_eq!(a.name, "acme");
                set_body(&a).map(Value::Object)
            }
            other => panic!("not set: {other:?}"),
        }
    }

    #[test]
    fn set_sends_only_the_settings_given() {
        assert_eq!(body(&[]).unwrap(), json!({}));
        assert_eq!(
            body(&[
                "--api-access",
                "false",
                "--max-active-keys",
                "20",
                "--rate-limit",
                "100/1s:200",
                "--quota",
                "10000/monthly:15",
                "--metadata",
                "plan=pro",
                "--metadata",
                "region=eu=west",
            ])
            .unwrap(),
            json!({
                "api_access": false,
                "max_active_keys": 20,
                "rate_limit": {"requests": 100, "period": "1s", "burst": 200},
                "quota": {"limit": 10000, "refill": "monthly", "refill_day": 15},
                "metadata": {"plan": "pro", "region": "eu=west"},
            })
        );
        assert_eq!(
            body(&["--no-rate-limit", "--no-quota", "--no-metadata"]).unwrap(),
            json!({"rate_limit": null, "quota": null, "metadata": {}})
        );
        assert_eq!(
            body(&["--api-access", "true"]).unwrap(),
            json!({"api_access": true})
        );
        let e = body(&["--metadata", "a=1", "--metadata", "a=2"]).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_USAGE);
    }

    #[test]
    fn set_refuses_bad_values_and_contradictions() {
        use clap::error::ErrorKind::*;
        for (args, kind) in [
            (&["set"][..], MissingRequiredArgument),
            (&["set", "acme", "--api-access"], InvalidValue),
            (&["set", "acme", "--api-access", "maybe"], InvalidValue),
            (&["set", "acme", "--max-active-keys", "-1"], UnknownArgument),
            (&["set", "acme", "--quota", "5/weekly"], ValueValidation),
            (&["set", "acme", "--metadata", "plan"], ValueValidation),
            (
                &["set", "acme", "--quota", "5/daily", "--no-quota"],
                ArgumentConflict,
            ),
            (
                &["set", "acme", "--rate-limit", "5/1s", "--no-rate-limit"],
                ArgumentConflict,
            ),
            (
                &["set", "acme", "--metadata", "a=b", "--no-metadata"],
                ArgumentConflict,
            ),
            (&["list", "--limit", "1001"], ValueValidation),
            (&["delete"], MissingRequiredArgument),
            // The workspace is positional: -w belongs to `keys`.
            (&["delete", "-w", "acme"], UnknownArgument),
        ] {
            assert_eq!(parse(args).unwrap_err().kind(), kind, "{args:?}");
        }
        assert!(matches!(
            parse(&["delete", "acme", "-y"]).unwrap(),
            WorkspacesCommand::Delete { yes: true, ref name } if name == "acme"
        ));
    }

    #[test]
    fn the_table_shows_source_access_keys_and_default_limits() {
        let workspaces = [
            json!({"name": "acme", "api_access": true, "max_active_keys": 5, "active_keys": 3,
                   "rate_limit": {"requests": 100, "period": "1s"},
                   "quota": {"limit": 10000, "refill": "monthly", "refill_day": 1},
                   "metadata": {}, "source": "api", "created_at": "2026-12-01T00:00:00Z",
                   "updated_at": null}),
            json!({"name": "trial", "api_access": false, "max_active_keys": 5, "active_keys": 0,
                   "rate_limit": null, "quota": null, "metadata": {}, "source": "config",
                   "created_at": null, "updated_at": null}),
        ];
        let expected = "\
NAME   SOURCE  API ACCESS  KEYS  RATE LIMIT  QUOTA
acme   api     yes         3/5   100/1s      10000, refill monthly (day 1)
trial  config  no          0/5   -           -
";
        assert_eq!(workspaces_table(&workspaces).unwrap(), expected);
        assert_eq!(workspaces_table(&[]).unwrap(), "No workspaces.\n");
        assert_eq!(workspaces_table(&[json!("x")]).unwrap_err().exit_code(), 6);
    }
}
