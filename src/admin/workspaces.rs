//! The workspace endpoints of the admin API (list, show, create or change, delete), and how
//! every endpoint finds a workspace ([`workspace`]): a config workspace from the config, a
//! stored one from the store itself, never from this instance's copy, so that a change made on
//! another instance a moment ago is already in force here.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::caller::{MANAGE, VIEW};
use super::fields::{MAX_METADATA_BYTES, Patch, parse_json};
use super::{AdminError, Call, change_detail, json_response};
use crate::config::{self, QuotaSpec, RateLimitSpec, Workspace, is_workspace_name};
use crate::store::invalidation::publish_workspace_change;
use crate::store::{Admission, KeyStore, StoreError};
use crate::workspaces::{Source, WorkspaceRecord};

/// Default page size of `GET /v1/workspaces`.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size of `GET /v1/workspaces`.
pub const MAX_LIMIT: usize = 1000;
/// Attempts of a `PUT` whose conditional write keeps losing to concurrent ones.
const PUT_ATTEMPTS: usize = 5;

type Reply = Result<Response<Full<Bytes>>, AdminError>;

/// A workspace as the admin API sees it.
pub struct Found {
    /// Its name.
    pub name: String,
    /// Plan and defaults.
    pub settings: Workspace,
    /// Config or API.
    pub source: Source,
    /// Creation and last change, for stored workspaces.
    pub times: Option<(OffsetDateTime, OffsetDateTime)>,
}

impl Found {
    /// What a create in this workspace is admitted against: a config workspace's limit as the
    /// config says, a stored one's as the store says in the create's own atomic step.
    pub fn admission(&self) -> Admission {
        match self.source {
            Source::Config => Admission::Limit(self.settings.max_active_keys),
            Source::Api => Admission::Stored,
        }
    }

    fn stored(record: WorkspaceRecord) -> Found {
        Found {
            name: record.name,
            settings: record.settings,
            source: Source::Api,
            times: Some((record.created_at, record.updated_at)),
        }
    }
}

/// The workspace `ws`, config or stored, if there is one.
pub async fn find(call: &Call<'_>, ws: &str) -> Result<Option<Found>, AdminError> {
    if let Some(w) = call.config.workspaces.get(ws) {
        return Ok(Some(Found {
            name: ws.to_owned(),
            settings: w.clone(),
            source: Source::Config,
            times: None,
        }));
    }
    if !is_workspace_name(ws) {
        return Ok(None);
    }
    Ok(call.state.store.get_workspace(ws).await?.map(Found::stored))
}

/// The workspace `ws`, after checking the caller holds `permission` there.
pub async fn workspace(call: &Call<'_>, ws: &str, permission: &str) -> Result<Found, AdminError> {
    if !call.caller.may(permission, ws) {
        return Err(AdminError::lacks(permission, ws));
    }
    find(call, ws)
        .await?
        .ok_or(AdminError::NotFound("workspace"))
}

fn may_see(call: &Call<'_>, ws: &str) -> bool {
    call.caller.may(VIEW, ws) || call.caller.may(MANAGE, ws)
}

/// The workspace object of the admin API.
fn workspace_json(found: &Found, active_keys: u32) -> serde_json::Value {
    let time = |t: OffsetDateTime| t.format(&Rfc3339).ok();
    let s = &found.settings;
    serde_json::json!({
        "name": found.name,
        "api_access": s.api_access,
        "max_active_keys": s.max_active_keys,
        "active_keys": active_keys,
        "rate_limit": s.rate_limit,
        "quota": s.quota,
        "metadata": s.metadata,
        "source": found.source.as_str(),
        "created_at": found.times.and_then(|(c, _)| time(c)),
        "updated_at": found.times.and_then(|(_, u)| time(u)),
    })
}

async fn with_count(call: &Call<'_>, found: &Found) -> Result<serde_json::Value, AdminError> {
    let active = call
        .state
        .store
        .count_active(&found.name, OffsetDateTime::now_utc())
        .await?;
    Ok(workspace_json(found, active))
}

/// `GET /v1/workspaces?limit=&cursor=`: the workspaces the caller may see, by name.
pub async fn list(call: &Call<'_>, limit: Option<&str>, cursor: Option<&str>) -> Reply {
    let limit = super::handlers::parse_limit(limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    if let Some(c) = cursor
        && !is_workspace_name(c)
    {
        return Err(AdminError::from(StoreError::InvalidCursor));
    }
    // One more than the page, to know whether another follows.
    let mut found: Vec<Found> = Vec::new();
    match call.caller.workspace_names() {
        Some(names) => {
            let mut names: Vec<&String> = names
                .iter()
                .filter(|n| cursor.is_none_or(|c| n.as_str() > c))
                .collect();
            names.sort();
            names.dedup();
            for name in names {
                if found.len() > limit {
                    break;
                }
                if may_see(call, name)
                    && let Some(f) = find(call, name).await?
                {
                    found.push(f);
                }
            }
        }
        None => {
            let configured_all = &call.config.workspaces;
            let after = |n: &String| cursor.is_none_or(|c| n.as_str() > c);
            let configured = configured_all
                .iter()
                .filter(|(n, _)| after(n))
                .take(limit + 1)
                .map(|(name, w)| Found {
                    name: name.clone(),
                    settings: w.clone(),
                    source: Source::Config,
                    times: None,
                });
            let stored = call
                .state
                .store
                .list_workspaces(cursor, limit + 1)
                .await?
                .into_iter()
                .filter(|r| !configured_all.contains_key(&r.name))
                .map(Found::stored);
            found = configured.chain(stored).collect();
            found.sort_by(|a, b| a.name.cmp(&b.name));
            found.retain(|f| may_see(call, &f.name));
        }
    }
    let next_cursor = (found.len() > limit).then(|| found[limit - 1].name.clone());
    found.truncate(limit);
    let mut out = Vec::with_capacity(found.len());
    for f in &found {
        out.push(with_count(call, f).await?);
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"workspaces": out, "next_cursor": next_cursor}),
    ))
}

/// `GET /v1/workspaces/{ws}`.
pub async fn show(call: &Call<'_>, ws: &str) -> Reply {
    if !may_see(call, ws) {
        return Err(AdminError::Forbidden(format!(
            "this caller lacks `{VIEW}` or `{MANAGE}` on workspace `{ws}`"
        )));
    }
    let found = find(call, ws)
        .await?
        .ok_or(AdminError::NotFound("workspace"))?;
    Ok(json_response(
        StatusCode::OK,
        &with_count(call, &found).await?,
    ))
}

/// The body of `PUT /v1/workspaces/{ws}`: fields left out keep their value (or take the
/// default, on create); `null` clears `rate_limit`, `quota` and `metadata`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkspaceBody {
    #[serde(default)]
    api_access: Patch<bool>,
    #[serde(default)]
    max_active_keys: Patch<u32>,
    #[serde(default)]
    rate_limit: Patch<RateLimitSpec>,
    #[serde(default)]
    quota: Patch<QuotaSpec>,
    #[serde(default)]
    metadata: Patch<serde_json::Map<String, serde_json::Value>>,
}

impl WorkspaceBody {
    fn validate(&self) -> Result<(), AdminError> {
        if self.api_access == Patch::Null {
            return Err(AdminError::field(
                "api_access",
                "api_access is true or false",
            ));
        }
        if self.max_active_keys == Patch::Null {
            return Err(AdminError::field(
                "max_active_keys",
                "max_active_keys is a number",
            ));
        }
        if let Patch::Value(l) = &self.rate_limit {
            config::check_rate_limit(l)
                .map_err(|(field, m)| AdminError::field(format!("rate_limit.{field}"), m))?;
        }
        if let Patch::Value(q) = &self.quota {
            config::check_quota(q).map_err(|m| AdminError::field("quota.refill_day", m))?;
        }
        if let Patch::Value(m) = &self.metadata
            && serde_json::to_vec(m).map_or(usize::MAX, |v| v.len()) > MAX_METADATA_BYTES
        {
            return Err(AdminError::field(
                "metadata",
                format!("metadata must be at most {MAX_METADATA_BYTES} bytes of JSON"),
            ));
        }
        Ok(())
    }

    /// `current` with this body's fields, and the names of those present.
    fn apply(&self, current: &Workspace) -> (Workspace, Vec<&'static str>) {
        let mut next = current.clone();
        let mut present = Vec::new();
        if let Patch::Value(v) = self.api_access {
            next.api_access = v;
            present.push("api_access");
        }
        if let Patch::Value(v) = self.max_active_keys {
            next.max_active_keys = v;
            present.push("max_active_keys");
        }
        match self.rate_limit {
            Patch::Value(v) => next.rate_limit = Some(v),
            Patch::Null => next.rate_limit = None,
            Patch::Absent => {}
        }
        match self.quota {
            Patch::Value(v) => next.quota = Some(v),
            Patch::Null => next.quota = None,
            Patch::Absent => {}
        }
        match &self.metadata {
            Patch::Value(v) => next.metadata = v.clone(),
            Patch::Null => next.metadata = serde_json::Map::new(),
            Patch::Absent => {}
        }
        for (name, is_present) in [
            ("rate_limit", self.rate_limit != Patch::Absent),
            ("quota", self.quota != Patch::Absent),
            ("metadata", self.metadata != Patch::Absent),
        ] {
            if is_present {
                present.push(name);
            }
        }
        (next, present)
    }
}

/// `PUT /v1/workspaces/{ws}`: creates (201) or changes (200) a stored workspace.
pub async fn put(call: &Call<'_>, ws: &str, body: &[u8]) -> Reply {
    if !call.caller.may(MANAGE, ws) {
        return Err(AdminError::lacks(MANAGE, ws));
    }
    if !is_workspace_name(ws) {
        return Err(AdminError::field("name", config::WORKSPACE_NAME_RULE));
    }
    let directory = call.state.gateway.workspaces();
    if call.config.workspaces.contains_key(ws) {
        return Err(AdminError::ManagedByConfig);
    }
    let body: WorkspaceBody = parse_json(body)?;
    body.validate()?;
    let store = &call.state.store;
    let mut attempts = 0;
    let (before, after, fields) = loop {
        attempts += 1;
        let current = store.get_workspace(ws).await?;
        let settings = current
            .as_ref()
            .map(|c| c.settings.clone())
            .unwrap_or_default();
        let (next, fields) = body.apply(&settings);
        let now = OffsetDateTime::now_utc();
        let record = match &current {
            Some(c) if c.settings == next => break (current.clone(), c.clone(), fields),
            Some(c) => WorkspaceRecord {
                name: ws.to_owned(),
                settings: next,
                created_at: c.created_at,
                // Later than the version replaced, even within one millisecond or against a
                // clock that stepped back, so the next conditional write tells them apart.
                updated_at: now.max(c.updated_at + time::Duration::milliseconds(1)),
            },
            None => WorkspaceRecord {
                name: ws.to_owned(),
                settings: next,
                created_at: now,
                updated_at: now,
            },
        };
        match store
            .put_workspace(&record, current.as_ref().map(|c| c.updated_at))
            .await
        {
            Ok(()) => break (current, record, fields),
            Err(StoreError::Conflict) if attempts < PUT_ATTEMPTS => {}
            Err(e) => return Err(e.into()),
        }
    };
    let unchanged = before.as_ref() == Some(&after);
    if !unchanged {
        if let Err(e) = directory.refresh(store, ws).await {
            tracing::warn!(error = %e, workspace = ws, "workspace stored but not re-read; this instance sees it within cache.ttl");
        }
        publish_workspace_change(store, ws).await;
    }
    let found = Found::stored(after);
    let body = with_count(call, &found).await?;
    let status = match (&before, unchanged) {
        (None, _) => {
            call.audit(
                "workspace.created",
                ws,
                None,
                "ok",
                serde_json::json!({"settings": settings_json(&found.settings)}),
            )
            .await;
            StatusCode::CREATED
        }
        (Some(_), true) => StatusCode::OK,
        (Some(old), false) => {
            let (old, new) = (settings_json(&old.settings), settings_json(&found.settings));
            let changed: Vec<&str> = fields
                .into_iter()
                .filter(|f| old.get(*f) != new.get(*f))
                .collect();
            call.audit(
                "workspace.updated",
                ws,
                None,
                "ok",
                change_detail(&changed, &old, &new),
            )
            .await;
            StatusCode::OK
        }
    };
    Ok(json_response(status, &body))
}

fn settings_json(s: &Workspace) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_default()
}

/// `DELETE /v1/workspaces/{ws}`: only a stored workspace without keys.
pub async fn delete(call: &Call<'_>, ws: &str) -> Reply {
    if !call.caller.may(MANAGE, ws) {
        return Err(AdminError::lacks(MANAGE, ws));
    }
    let directory = call.state.gateway.workspaces();
    if call.config.workspaces.contains_key(ws) {
        return Err(AdminError::ManagedByConfig);
    }
    if !is_workspace_name(ws) {
        return Err(AdminError::NotFound("workspace"));
    }
    let store = &call.state.store;
    let removed = store
        .delete_workspace(ws)
        .await?
        .ok_or(AdminError::NotFound("workspace"))?;
    if let Err(e) = directory.refresh(store, ws).await {
        tracing::warn!(error = %e, workspace = ws, "workspace deleted but not re-read; this instance sees it within cache.ttl");
    }
    publish_workspace_change(store, ws).await;
    call.audit(
        "workspace.deleted",
        ws,
        None,
        "ok",
        serde_json::json!({"settings": settings_json(&removed.settings)}),
    )
    .await;
    let mut r = Response::new(Full::default());
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}
