//! `keygate audit`: the audit log of the admin API (who did what to which key, when), newest
//! first, one page or all of them, for one workspace or every one the caller may view.

use clap::Args;
use serde::Deserialize;
use serde_json::Value;

use super::args::Paging;
use super::client;
use super::render::{self, clip, compact, sanitize, table};
use super::session::ListKind;
use super::{Connection, EXIT_CODES_HELP, Failure, block_on};

/// The audit log.
const ENTRIES: ListKind = ListKind {
    field: "entries",
    noun: "entries",
};

/// Widest DETAIL shown; `--json` has all of it.
const DETAIL_WIDTH: usize = 60;

/// `keygate audit`: the connection options and which entries.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct AuditArgs {
    /// Only this workspace's entries. Without it (or with an empty value) every workspace's,
    /// which needs `api.key.view` on all workspaces.
    #[arg(short, long, env = "KEYGATE_WORKSPACE", value_name = "WS")]
    workspace: Option<String>,
    #[command(flatten)]
    paging: Paging,
    // Last: its help heading would otherwise apply to the options after it.
    #[command(flatten)]
    connection: Connection,
}

/// Runs `keygate audit`.
pub(super) fn execute(args: &AuditArgs) -> Result<(), Failure> {
    let session = args.connection.session()?;
    block_on(async {
        let page = |cursor: Option<&str>| format!("/v1/audit{}", audit_query(args, cursor));
        let listing = session
            .list(ENTRIES, page, args.paging.cursor.clone(), args.paging.all)
            .await?;
        session.print_list(ENTRIES, &listing, entries_table)
    })
}

/// The query string of one page (empty when nothing is set).
fn audit_query(a: &AuditArgs, cursor: Option<&str>) -> String {
    let limit = a.paging.limit.map(|l| l.to_string());
    client::query(&[
        (
            "workspace",
            a.workspace.as_deref().filter(|w| !w.is_empty()),
        ),
        ("limit", limit.as_deref()),
        ("cursor", cursor),
    ])
}

/// An audit entry as the CLI reads it; every field optional, unknown ones ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Entry {
    time: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    workspace: Option<String>,
    key_id: Option<String>,
    outcome: Option<String>,
    client_ip: Option<String>,
    detail: Option<Value>,
}

/// TIME, ACTOR, ACTION, WORKSPACE, KEY, OUTCOME, CLIENT IP, DETAIL (on one line, clipped).
fn entries_table(entries: &[Value]) -> Result<String, Failure> {
    if entries.is_empty() {
        return Ok("No audit entries.\n".into());
    }
    let rows = entries
        .iter()
        .map(|e| {
            let e = Entry::deserialize(e)
                .map_err(|e| Failure::Unexpected(format!("an audit entry that is not one: {e}")))?;
            let text = |s: &Option<String>| s.as_deref().map_or_else(|| "-".into(), sanitize);
            Ok(vec![
                render::when_to_second(e.time.as_deref(), "-"),
                text(&e.actor),
                text(&e.action),
                text(&e.workspace),
                text(&e.key_id),
                text(&e.outcome),
                text(&e.client_ip),
                clip(&compact(e.detail.as_ref()), DETAIL_WIDTH),
            ])
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    Ok(table(
        &[
            "TIME",
            "ACTOR",
            "ACTION",
            "WORKSPACE",
            "KEY",
            "OUTCOME",
            "CLIENT IP",
            "DETAIL",
        ],
        rows,
        &[],
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cli::AdminCommand;
    use crate::cli::tests::parse_cli;

    fn parse(args: &[&str]) -> Result<AuditArgs, clap::Error> {
        let mut argv = vec!["audit"];
        argv.extend_from_slice(args);
        parse_cli(&argv).map(|c| match c {
            AdminCommand::Audit(a) => *a,
            other => panic!("not audit: {other:?}"),
        })
    }

    #[test]
    fn queries_carry_the_workspace_limit_and_cursor_given() {
        let a = parse(&["-w", "acme", "--limit", "10", "--all"]).unwrap();
        assert!(a.paging.all);
        assert_eq!(
            audit_query(&a, Some("c/1")),
            "?workspace=acme&limit=10&cursor=c%2F1"
        );
        // An empty workspace (over KEYGATE_WORKSPACE, say) means every workspace.
        let a = parse(&["--workspace", ""]).unwrap();
        assert_eq!(audit_query(&a, None), "");
        assert!(parse(&["--limit", "0"]).is_err());
        assert!(parse(&["--limit", "101"]).is_err());
    }

    #[test]
    fn entries_show_who_did_what_to_which_key() {
        let entries = [
            json!({"id": "a1", "time": "2026-12-01T10:00:00Z", "actor": "token:ops",
                   "action": "key.update", "workspace": "acme", "key_id": "key_a",
                   "outcome": "ok", "client_ip": "127.0.0.1",
                   "detail": {"fields": ["name"], "changes": {"name": {"old": "a", "new": "b"}}}}),
            json!({"id": "a0", "time": "2026-12-01T09:00:00Z", "actor": "anonymous",
                   "action": "admin.refused", "workspace": null, "key_id": null,
                   "outcome": "unauthorized", "client_ip": "::1", "detail": null}),
        ];
        let out = entries_table(&entries).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[0].starts_with("TIME ") && lines[0].ends_with("DETAIL"),
            "{out}"
        );
        let first: Vec<&str> = lines[1]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            first[..7],
            [
                "2026-12-01 10:00:00",
                "token:ops",
                "key.update",
                "acme",
                "key_a",
                "ok",
                "127.0.0.1"
            ]
        );
        assert!(
            lines[1].ends_with(r#"{"changes":{"name":{"new":"b","old":"a"}},"fields":["name"]}"#),
            "{out}"
        );
        assert!(
            lines[2].contains("admin.refused") && lines[2].ends_with('-'),
            "{out}"
        );
        assert_eq!(entries_table(&[]).unwrap(), "No audit entries.\n");
        assert_eq!(entries_table(&[json!(1)]).unwrap_err().exit_code(), 6);
    }
}
