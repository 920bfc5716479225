//! The admin API's reads of what happened: a key's request logs and daily usage, the audit log,
//! and webhook deliveries. Each checks the caller's view permission where the records belong.

use http::StatusCode;

use super::caller::{MANAGE, VIEW};
use super::handlers::{Reply, existing, key_id, now, page_limit, params};
use super::workspaces::workspace;
use super::{AdminError, Call, json_response};
use crate::store::{AuditEntry, KeyStore, USAGE_DAYS_KEPT};

pub(super) async fn logs(call: &Call<'_>, ws: &str, id: &str, query: Option<&str>) -> Reply {
    workspace(call, ws, VIEW).await?;
    let id = key_id(id)?;
    let p = params(query, &["limit"])?;
    let limit = page_limit(p.limit.as_deref())?;
    existing(call, ws, &id).await?;
    let mut entries = call.state.store.request_logs(ws, &id, limit).await?;
    // The API names every entry's outcome; the store keeps a code only for refusals.
    for e in &mut entries {
        e.code.get_or_insert_with(|| "forwarded".to_owned());
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"entries": entries}),
    ))
}

/// Days `…/usage` answers without `days`.
const DEFAULT_USAGE_DAYS: u32 = 30;

pub(super) async fn usage(call: &Call<'_>, ws: &str, id: &str, query: Option<&str>) -> Reply {
    workspace(call, ws, VIEW).await?;
    let id = key_id(id)?;
    let p = params(query, &["days"])?;
    let days = match p.days.as_deref() {
        None => DEFAULT_USAGE_DAYS,
        Some(d) => d
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=USAGE_DAYS_KEPT).contains(n))
            .ok_or_else(|| {
                AdminError::field("days", format!("days must be 1–{USAGE_DAYS_KEPT}"))
            })?,
    };
    existing(call, ws, &id).await?;
    let last = now().date();
    let first = last - time::Duration::days(i64::from(days) - 1);
    let stored = call.state.store.daily_usage(ws, &id, first, last).await?;
    // One entry per day, zeros included, oldest first.
    let entries: Vec<serde_json::Value> = std::iter::successors(Some(first), |d| d.next_day())
        .take_while(|d| *d <= last)
        .map(|day| {
            let requests = stored
                .iter()
                .find(|(d, _)| *d == day)
                .map_or(0, |(_, n)| *n);
            serde_json::json!({"date": day.to_string(), "requests": requests})
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"days": entries}),
    ))
}

pub(super) async fn audit_log(call: &Call<'_>, query: Option<&str>) -> Reply {
    let p = params(query, &["workspace", "limit", "cursor"])?;
    match p.workspace.as_deref() {
        // A deleted workspace's log stays readable: the name is checked, not that it exists.
        Some(ws) => {
            if !call.caller.may(VIEW, ws) && !call.caller.may(MANAGE, ws) {
                return Err(AdminError::lacks(VIEW, ws));
            }
            if !crate::config::is_workspace_name(ws) {
                return Err(AdminError::NotFound("workspace"));
            }
        }
        None if !call.caller.may_everywhere(VIEW) => {
            return Err(AdminError::Forbidden(
                "the audit log of every workspace needs `api.key.view` on `*`; pass `workspace`"
                    .into(),
            ));
        }
        None => {}
    }
    let limit = page_limit(p.limit.as_deref())?;
    let page = call
        .state
        .store
        .list_audit(p.workspace.as_deref(), limit, p.cursor.as_deref())
        .await?;
    let entries: Vec<_> = page.entries.iter().map(audit_json).collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"entries": entries, "next_cursor": page.next_cursor}),
    ))
}

/// `GET /v1/webhooks/deliveries`: the newest delivery attempts, newest first. They name keys of
/// every workspace, so the caller needs `api.key.view` on `*`.
pub(super) async fn webhook_deliveries(call: &Call<'_>, query: Option<&str>) -> Reply {
    let p = params(query, &["limit"])?;
    if !call.caller.may_everywhere(VIEW) {
        return Err(AdminError::Forbidden(
            "webhook deliveries name keys of every workspace: they need `api.key.view` on `*`"
                .into(),
        ));
    }
    let limit = page_limit(p.limit.as_deref())?;
    let entries = call.state.store.deliveries(limit).await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "entries": entries }),
    ))
}

/// An audit entry as the API shows it: every field, `null` when unset.
pub(super) fn audit_json(e: &AuditEntry) -> serde_json::Value {
    serde_json::json!({
        "id": e.id,
        "time": e.time.format(&time::format_description::well_known::Rfc3339).ok(),
        "actor": e.actor,
        "action": e.action,
        "workspace": e.workspace,
        "key_id": e.key_id,
        "outcome": e.outcome,
        "detail": e.detail,
        "client_ip": e.client_ip,
    })
}
