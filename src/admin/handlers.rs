//! The admin API's routing ([`dispatch`]) and its key endpoints (the reads of request logs,
//! usage, audit and deliveries are `records.rs`'s, workspaces `workspaces.rs`'s). Each key
//! endpoint checks, in this order: the workspace exists → the caller holds the permission there
//! → the workspace has API access (for new secrets) → the body → the key; then acts through
//! [`crate::control::KeyManager`] and writes the audit log.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use time::OffsetDateTime;

use super::caller::{CREATE, DELETE, UPDATE, VIEW};
use super::fields::{
    KeyFields, MAX_GRACE_PERIOD, Patch, Purpose, Valid, key_json, known_scopes, parse_json,
};
use super::records;
use super::workspaces::{self, Found, find, workspace};
use super::{AdminError, Call, change_detail, json_response, read_body};
use crate::auth::query_pairs;
use crate::config::duration_text;
use crate::control::{Changed, ImportedSecret, NewKey};
use crate::keys::{self, KeyId, KeyRecord, KeyStatus, Secret, SecretHash, Shape};
use crate::store::fleet::Propagation;
use crate::store::{KeyStore, ListQuery, StoreError};
use crate::workspaces::Source;

/// Default page size of list calls.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page size of list calls.
pub const MAX_LIMIT: usize = 100;

pub(super) type Reply = Result<Response<Full<Bytes>>, AdminError>;

/// Routes a `/v1/…` call to its endpoint.
pub async fn dispatch<B>(
    call: &Call<'_>,
    method: &Method,
    segments: &[&str],
    req: Request<B>,
) -> Reply
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    let is = |m: &Method| method == m || (m == Method::GET && method == Method::HEAD);
    match segments {
        ["v1", "audit"] if is(&Method::GET) => records::audit_log(call, query).await,
        ["v1", "audit"] => Err(AdminError::MethodNotAllowed("GET, HEAD")),
        ["v1", "webhooks", "deliveries"] if is(&Method::GET) => {
            records::webhook_deliveries(call, query).await
        }
        ["v1", "webhooks", "deliveries"] => Err(AdminError::MethodNotAllowed("GET, HEAD")),
        ["v1", "reload"] if method == Method::POST => reload(call).await,
        ["v1", "reload"] => Err(AdminError::MethodNotAllowed("POST")),
        ["v1", "verify"] if method == Method::POST => {
            super::verify::verify(call, &read_body(req.into_body()).await?).await
        }
        ["v1", "verify"] => Err(AdminError::MethodNotAllowed("POST")),
        ["v1", "scopes"] if is(&Method::GET) => Ok(scopes(call)),
        ["v1", "scopes"] => Err(AdminError::MethodNotAllowed("GET, HEAD")),
        ["v1", "workspaces"] if is(&Method::GET) => {
            let p = params(query, &["limit", "cursor"])?;
            workspaces::list(call, p.limit.as_deref(), p.cursor.as_deref()).await
        }
        ["v1", "workspaces"] => Err(AdminError::MethodNotAllowed("GET, HEAD")),
        ["v1", "workspaces", ws] => {
            if is(&Method::GET) {
                workspaces::show(call, ws).await
            } else if method == Method::PUT {
                workspaces::put(call, ws, &read_body(req.into_body()).await?).await
            } else if method == Method::DELETE {
                workspaces::delete(call, ws).await
            } else {
                Err(AdminError::MethodNotAllowed("GET, HEAD, PUT, DELETE"))
            }
        }
        ["v1", "workspaces", ws, "keys"] => {
            if is(&Method::GET) {
                list(call, ws, query).await
            } else if method == Method::POST {
                create(call, ws, &read_body(req.into_body()).await?).await
            } else {
                Err(AdminError::MethodNotAllowed("GET, HEAD, POST"))
            }
        }
        ["v1", "workspaces", ws, "keys", "import"] => {
            if method == Method::POST {
                import(call, ws, &read_body(req.into_body()).await?).await
            } else {
                Err(AdminError::MethodNotAllowed("POST"))
            }
        }
        ["v1", "workspaces", ws, "keys", id] => {
            if is(&Method::GET) {
                show(call, ws, id).await
            } else if method == Method::PATCH {
                update(call, ws, id, &read_body(req.into_body()).await?).await
            } else if method == Method::DELETE {
                delete(call, ws, id).await
            } else {
                Err(AdminError::MethodNotAllowed("GET, HEAD, PATCH, DELETE"))
            }
        }
        ["v1", "workspaces", ws, "keys", id, "rotate"] if method == Method::POST => {
            rotate(call, ws, id, &read_body(req.into_body()).await?).await
        }
        ["v1", "workspaces", ws, "keys", id, "revoke"] if method == Method::POST => {
            revoke(call, ws, id).await
        }
        ["v1", "workspaces", ws, "keys", id, "logs"] if is(&Method::GET) => {
            records::logs(call, ws, id, query).await
        }
        ["v1", "workspaces", ws, "keys", id, "usage"] if is(&Method::GET) => {
            records::usage(call, ws, id, query).await
        }
        ["v1", "workspaces", _, "keys", _, "rotate" | "revoke"] => {
            Err(AdminError::MethodNotAllowed("POST"))
        }
        ["v1", "workspaces", _, "keys", _, "logs" | "usage"] => {
            Err(AdminError::MethodNotAllowed("GET, HEAD"))
        }
        _ => Err(AdminError::NotFound("admin endpoint")),
    }
}

/// `POST /v1/reload`: re-reads the config file (SPEC §7); admin tokens with `config.reload`.
async fn reload(call: &Call<'_>) -> Reply {
    if !call.caller.may_reload() {
        return Err(AdminError::Forbidden(
            "reloading needs an admin token with `config.reload`".into(),
        ));
    }
    let outcome = call.state.reloader.reload().await;
    let (result, detail) = match &outcome {
        Ok(r) => (
            "ok",
            serde_json::json!({"changed": r.changed, "restart_required": r.restart_required, "config": r.config_hash}),
        ),
        Err(e) => (
            "invalid_config",
            serde_json::json!({"error": e.to_string()}),
        ),
    };
    if !matches!(outcome, Err(crate::reload::ReloadError::Busy)) {
        call.audit_global("config.reload", result, detail).await;
    }
    match outcome {
        Ok(r) => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({
                "changed": r.changed,
                "restart_required": r.restart_required,
                "config": r.config_hash,
            }),
        )),
        Err(crate::reload::ReloadError::Invalid(e)) => Err(AdminError::InvalidConfig(e.problems)),
        Err(crate::reload::ReloadError::Busy) => Err(AdminError::ReloadInProgress),
    }
}

/// `GET /v1/scopes`: the scopes the config knows, with their catalogue labels, and the roles,
/// for the dashboard's scope choices. Any caller: it is the config, not a workspace's data.
fn scopes(call: &Call<'_>) -> Response<Full<Bytes>> {
    let config = &call.config;
    let mut names: std::collections::BTreeSet<&str> =
        config.scopes.keys().map(String::as_str).collect();
    names.extend(config.roles.values().flatten().map(String::as_str));
    for r in &config.routes {
        names.extend(r.scopes.iter().chain(&r.any_scopes).map(String::as_str));
    }
    let scopes: Vec<_> = names
        .into_iter()
        .filter(|s| !crate::config::PERMISSIONS.contains(s))
        .map(|s| serde_json::json!({"name": s, "label": config.scopes.get(s)}))
        .collect();
    let roles: Vec<_> = config
        .roles
        .iter()
        .map(|(name, scopes)| serde_json::json!({"name": name, "scopes": scopes}))
        .collect();
    json_response(
        StatusCode::OK,
        &serde_json::json!({"scopes": scopes, "roles": roles}),
    )
}

/// A workspace the caller may create keys in, and whose plan includes API access (creating,
/// rotating and importing keys all need both). The store checks a stored workspace's plan
/// again in the create itself ([`Found::admission`]).
async fn workspace_for_new_keys(call: &Call<'_>, ws: &str) -> Result<Found, AdminError> {
    let workspace = workspace(call, ws, CREATE).await?;
    if !workspace.settings.api_access {
        return Err(AdminError::UpgradeRequired);
    }
    Ok(workspace)
}

pub(super) fn key_id(id: &str) -> Result<KeyId, AdminError> {
    KeyId::parse(id).ok_or(AdminError::NotFound("key"))
}

pub(super) async fn existing(
    call: &Call<'_>,
    ws: &str,
    id: &KeyId,
) -> Result<KeyRecord, AdminError> {
    call.state
        .store
        .get(ws, id)
        .await?
        .ok_or(AdminError::NotFound("key"))
}

/// The key `id` of `ws`, if the caller may change it ([`super::caller::Caller::may_manage`]).
async fn manageable(call: &Call<'_>, ws: &str, id: &KeyId) -> Result<KeyRecord, AdminError> {
    let record = existing(call, ws, id).await?;
    call.caller
        .may_manage(&granted(call, &record.scopes, record.role.as_deref()))?;
    Ok(record)
}

pub(super) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The scopes a key would hold with `scopes` and `role`, for the escalation check.
fn granted<'a>(call: &'a Call<'_>, scopes: &'a [String], role: Option<&'a str>) -> Vec<&'a str> {
    let role_scopes = role
        .and_then(|r| call.config.role_scopes(r))
        .unwrap_or_default();
    scopes
        .iter()
        .chain(role_scopes)
        .map(String::as_str)
        .collect()
}

fn validate(call: &Call<'_>, fields: KeyFields, purpose: Purpose) -> Result<Valid, AdminError> {
    let known = known_scopes(&call.config);
    fields.validate(purpose, &call.config, &known, now())
}

fn new_key(ws: &str, valid: Valid, created_by: &str) -> NewKey {
    NewKey {
        workspace: ws.to_owned(),
        name: valid.name.value().unwrap_or_default(),
        description: valid.description.value(),
        scopes: valid.scopes.value().unwrap_or_default(),
        role: valid.role.value(),
        ip_allowlist: valid.ip_allowlist.value().unwrap_or_default(),
        expires_at: valid.expires_at.value(),
        rate_limit: valid.rate_limit.value(),
        quota: valid.quota.value(),
        owner: valid.owner.value(),
        metadata: valid.metadata.value(),
        created_by: created_by.to_owned(),
    }
}

/// A refused create's error; for the key limit, with the limit (read again for a stored
/// workspace, whose plan may have changed since `found` was read).
async fn limit_error(call: &Call<'_>, e: StoreError, found: &Found) -> AdminError {
    match e {
        StoreError::LimitReached => {
            let max = match found.source {
                Source::Config => found.settings.max_active_keys,
                Source::Api => match find(call, &found.name).await {
                    Ok(Some(now)) => now.settings.max_active_keys,
                    _ => found.settings.max_active_keys,
                },
            };
            AdminError::KeyLimitReached(max)
        }
        other => other.into(),
    }
}

async fn create(call: &Call<'_>, ws: &str, body: &[u8]) -> Reply {
    let workspace = workspace_for_new_keys(call, ws).await?;
    let valid = validate(call, parse_json(body)?, Purpose::Create)?;
    let new = new_key(ws, valid, &call.caller.actor);
    call.caller
        .may_grant(&granted(call, &new.scopes, new.role.as_deref()))?;
    let (record, secret) = match call.state.keys.create(new, workspace.admission()).await {
        Ok(created) => created,
        Err(e) => return Err(limit_error(call, e, &workspace).await),
    };
    call.audit(
        "key.create",
        ws,
        Some(&record.id),
        "ok",
        serde_json::json!({"name": record.name, "scopes": record.scopes, "role": record.role}),
    )
    .await;
    call.state
        .webhooks
        .key_event("key.created", &record, None)
        .await;
    Ok(with_secret(StatusCode::CREATED, &record, &secret))
}

fn with_secret(status: StatusCode, record: &KeyRecord, secret: &Secret) -> Response<Full<Bytes>> {
    let mut body = key_json(record, now());
    body["secret"] = serde_json::Value::String(secret.expose().to_owned());
    json_response(status, &body)
}

pub(super) struct ListParams {
    status: Option<String>,
    owner: Option<String>,
    pub(super) limit: Option<String>,
    pub(super) cursor: Option<String>,
    pub(super) workspace: Option<String>,
    pub(super) days: Option<String>,
}

pub(super) fn params(query: Option<&str>, allowed: &[&str]) -> Result<ListParams, AdminError> {
    let mut p = ListParams {
        status: None,
        owner: None,
        limit: None,
        cursor: None,
        workspace: None,
        days: None,
    };
    for (name, value) in query.map(query_pairs).into_iter().flatten() {
        let slot = match name {
            "status" if allowed.contains(&name) => &mut p.status,
            "owner" if allowed.contains(&name) => &mut p.owner,
            "limit" if allowed.contains(&name) => &mut p.limit,
            "cursor" if allowed.contains(&name) => &mut p.cursor,
            "workspace" if allowed.contains(&name) => &mut p.workspace,
            "days" if allowed.contains(&name) => &mut p.days,
            "" => {
                return Err(AdminError::field("query", "a query parameter has no name"));
            }
            _ => {
                return Err(AdminError::field(
                    name,
                    format!("unknown query parameter `{name}`"),
                ));
            }
        };
        *slot = Some(value.into_owned());
    }
    Ok(p)
}

pub(super) fn page_limit(limit: Option<&str>) -> Result<usize, AdminError> {
    parse_limit(limit, DEFAULT_LIMIT, MAX_LIMIT)
}

/// A `limit` query parameter: `default` when absent, else 1–`max`.
pub(super) fn parse_limit(
    limit: Option<&str>,
    default: usize,
    max: usize,
) -> Result<usize, AdminError> {
    match limit {
        None => Ok(default),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| AdminError::field("limit", format!("limit must be 1–{max}"))),
    }
}

async fn list(call: &Call<'_>, ws: &str, query: Option<&str>) -> Reply {
    workspace(call, ws, VIEW).await?;
    let p = params(query, &["status", "owner", "limit", "cursor"])?;
    let status = match p.status.as_deref() {
        None => None,
        Some("active") => Some(KeyStatus::Active),
        Some("expired") => Some(KeyStatus::Expired),
        Some("revoked") => Some(KeyStatus::Revoked),
        Some(_) => {
            return Err(AdminError::field(
                "status",
                "status is active, expired or revoked",
            ));
        }
    };
    let query = ListQuery {
        status,
        owner: p.owner,
        limit: page_limit(p.limit.as_deref())?,
        cursor: p.cursor,
    };
    let now = now();
    let page = call.state.store.list(ws, &query, now).await?;
    let keys: Vec<_> = page.keys.iter().map(|k| key_json(k, now)).collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"keys": keys, "next_cursor": page.next_cursor}),
    ))
}

async fn show(call: &Call<'_>, ws: &str, id: &str) -> Reply {
    workspace(call, ws, VIEW).await?;
    let record = existing(call, ws, &key_id(id)?).await?;
    Ok(json_response(StatusCode::OK, &key_json(&record, now())))
}

async fn update(call: &Call<'_>, ws: &str, id: &str, body: &[u8]) -> Reply {
    workspace(call, ws, UPDATE).await?;
    let id = key_id(id)?;
    let valid = validate(call, parse_json(body)?, Purpose::Update)?;
    let changes_access = valid.changes_access();
    call.caller
        .may_restrict(&id, valid.changes_restrictions())?;
    let changed = changed_fields(&valid);
    // The version the write landed on (the last one `modify` read), for the audit's old values.
    let mut before = None;
    let applied = call
        .state
        .keys
        .modify(ws, &id, |record| {
            if record.revoked_at.is_some() {
                return Err(AdminError::KeyRevoked);
            }
            // On the record being written, so a scope added meanwhile is seen.
            call.caller
                .may_manage(&granted(call, &record.scopes, record.role.as_deref()))?;
            before = Some(record.clone());
            valid.clone().apply_to(record);
            if changes_access {
                call.caller
                    .may_grant(&granted(call, &record.scopes, record.role.as_deref()))?;
            }
            Ok(Changed::Yes)
        })
        .await?;
    let record = applied.record;
    // Each changed field's old and new value, as the API shows them (a key's fields hold no
    // secret).
    let at = now();
    let (old, new) = (
        before.map(|b| key_json(&b, at)).unwrap_or_default(),
        key_json(&record, at),
    );
    call.audit(
        "key.update",
        ws,
        Some(&record.id),
        "ok",
        change_detail(&changed, &old, &new),
    )
    .await;
    call.state
        .webhooks
        .key_event("key.updated", &record, None)
        .await;
    Ok(with_propagation(StatusCode::OK, new, &applied.propagation))
}

/// A JSON answer to a change of an existing key: `body` with its `propagation` field, and the
/// header of [`propagated`].
fn with_propagation(
    status: StatusCode,
    mut body: serde_json::Value,
    p: &Propagation,
) -> Response<Full<Bytes>> {
    body["propagation"] = p.to_json();
    propagated(json_response(status, &body), p)
}

/// Says in a header how far a change reached the other instances: every answer to a change of
/// an existing key carries it, the bodyless 204 of a delete included.
fn propagated(mut r: Response<Full<Bytes>>, p: &Propagation) -> Response<Full<Bytes>> {
    // Ids are of a safe alphabet, so the value is always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&p.to_header()) {
        r.headers_mut().insert(KEYGATE_PROPAGATION, value);
    }
    r
}

/// The header of [`propagated`].
const KEYGATE_PROPAGATION: HeaderName = HeaderName::from_static("keygate-propagation");

fn changed_fields(v: &Valid) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut note = |name: &'static str, present: bool| {
        if present {
            out.push(name);
        }
    };
    note("name", v.name != Patch::Absent);
    note("description", v.description != Patch::Absent);
    note("scopes", v.scopes != Patch::Absent);
    note("role", v.role != Patch::Absent);
    note("expires_at", v.expires_at != Patch::Absent);
    note("ip_allowlist", v.ip_allowlist != Patch::Absent);
    note("rate_limit", v.rate_limit != Patch::Absent);
    note("quota", v.quota != Patch::Absent);
    note("owner", v.owner != Patch::Absent);
    note("metadata", v.metadata != Patch::Absent);
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    grace_period: Option<String>,
}

async fn rotate(call: &Call<'_>, ws: &str, id: &str, body: &[u8]) -> Reply {
    workspace_for_new_keys(call, ws).await?;
    let id = key_id(id)?;
    let grace = if body.iter().all(u8::is_ascii_whitespace) {
        Duration::ZERO
    } else {
        match parse_json::<RotateBody>(body)?.grace_period {
            None => Duration::ZERO,
            Some(text) => {
                duration_text::parse(&text).map_err(|m| AdminError::field("grace_period", m))?
            }
        }
    };
    if grace > MAX_GRACE_PERIOD {
        return Err(AdminError::field(
            "grace_period",
            format!(
                "grace_period may be at most {}h (30 days)",
                MAX_GRACE_PERIOD.as_secs() / 3600
            ),
        ));
    }
    let grace = time::Duration::try_from(grace).expect("at most 30 days fits");
    let old = manageable(call, ws, &id).await?;
    let now = now();
    match old.status_at(now) {
        KeyStatus::Revoked => return Err(AdminError::KeyRevoked),
        KeyStatus::Expired => return Err(AdminError::KeyExpired),
        KeyStatus::Active => {}
    }
    let (new, secret) = call
        .state
        .keys
        .create_successor(&old, &call.caller.actor)
        .await?;
    // A grace period past the end of time leaves the old key its own expiry.
    let stop = now.checked_add(grace);
    let ended = call
        .state
        .keys
        .modify(ws, &id, |old| {
            // Checked again on the record being written: a revoke that landed since the read
            // above must not leave its successor usable.
            match old.status_at(now) {
                KeyStatus::Revoked => return Err(AdminError::KeyRevoked),
                KeyStatus::Expired => return Err(AdminError::KeyExpired),
                KeyStatus::Active => {}
            }
            call.caller
                .may_manage(&granted(call, &old.scopes, old.role.as_deref()))?;
            old.replaced_by = Some(new.id.clone());
            old.expires_at = match (old.expires_at, stop) {
                (Some(own), Some(stop)) => Some(own.min(stop)),
                (own, None) => own,
                (None, stop) => stop,
            };
            Ok(Changed::Yes)
        })
        .await;
    let (old, propagation) = match ended {
        Ok(applied) => (applied.record, applied.propagation),
        Err(e) => {
            // The successor was never handed out: take it back.
            if let Err(undo) = call.state.keys.delete(ws, &new.id).await {
                tracing::warn!(key_id = %new.id, error = %undo, "a refused rotation's new key could not be deleted");
            }
            return Err(e);
        }
    };
    call.audit(
        "key.rotate",
        ws,
        Some(&old.id),
        "ok",
        serde_json::json!({"new_key_id": new.id, "grace_period": grace.whole_seconds()}),
    )
    .await;
    let previous = key_json(&old, now);
    call.state
        .webhooks
        .key_event("key.rotated", &new, Some(("previous", previous)))
        .await;
    let mut key = key_json(&new, now);
    key["secret"] = serde_json::Value::String(secret.expose().to_owned());
    Ok(with_propagation(
        StatusCode::CREATED,
        serde_json::json!({"key": key, "previous": key_json(&old, now)}),
        &propagation,
    ))
}

async fn revoke(call: &Call<'_>, ws: &str, id: &str) -> Reply {
    workspace(call, ws, DELETE).await?;
    let id = key_id(id)?;
    let was_revoked = manageable(call, ws, &id).await?.revoked_at.is_some();
    let applied = call.state.keys.revoke(ws, &id).await?;
    if !was_revoked {
        call.audit("key.revoke", ws, Some(&id), "ok", serde_json::Value::Null)
            .await;
        call.state
            .webhooks
            .key_event("key.revoked", &applied.record, None)
            .await;
    }
    Ok(with_propagation(
        StatusCode::OK,
        key_json(&applied.record, now()),
        &applied.propagation,
    ))
}

async fn delete(call: &Call<'_>, ws: &str, id: &str) -> Reply {
    workspace(call, ws, DELETE).await?;
    let id = key_id(id)?;
    manageable(call, ws, &id).await?;
    let applied = call.state.keys.delete(ws, &id).await?;
    call.audit(
        "key.delete",
        ws,
        Some(&id),
        "ok",
        serde_json::json!({"name": applied.record.name}),
    )
    .await;
    call.state
        .webhooks
        .key_event("key.deleted", &applied.record, None)
        .await;
    let mut r = Response::new(Full::default());
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(propagated(r, &applied.propagation))
}

async fn import(call: &Call<'_>, ws: &str, body: &[u8]) -> Reply {
    let workspace = workspace_for_new_keys(call, ws).await?;
    let mut fields: KeyFields = parse_json(body)?;
    let secret = std::mem::take(&mut fields.secret).value();
    let sha256 = std::mem::take(&mut fields.sha256).value();
    let prefix = std::mem::take(&mut fields.prefix).value();
    let imported = match (secret, sha256) {
        (Some(secret), None) => {
            let format = call.state.gateway.format();
            if format.shape(&secret) == Shape::Malformed {
                return Err(AdminError::field(
                    "secret",
                    "secret must be 16–256 printable characters without spaces \
                     (or a keygate secret with a valid checksum)",
                ));
            }
            if prefix.is_some() {
                return Err(AdminError::field(
                    "prefix",
                    "prefix is derived from `secret`",
                ));
            }
            ImportedSecret::Plaintext(Secret::new(secret))
        }
        (None, Some(hex)) => {
            let digest = SecretHash::from_hex(&hex.to_ascii_lowercase())
                .ok_or_else(|| AdminError::field("sha256", "sha256 is 64 hex digits"))?;
            let prefix = match prefix {
                Some(p) if p.len() > 32 || !p.bytes().all(|b| b.is_ascii_graphic()) => {
                    return Err(AdminError::field(
                        "prefix",
                        "prefix is 1–32 printable characters",
                    ));
                }
                Some(p) => p,
                None => String::new(),
            };
            ImportedSecret::Sha256 { digest, prefix }
        }
        (Some(_), Some(_)) => {
            return Err(AdminError::field(
                "sha256",
                "send either `secret` or `sha256`, not both",
            ));
        }
        (None, None) => {
            return Err(AdminError::field("secret", "send `secret` or `sha256`"));
        }
    };
    let valid = validate(call, fields, Purpose::Import)?;
    let new = new_key(ws, valid, &call.caller.actor);
    call.caller
        .may_grant(&granted(call, &new.scopes, new.role.as_deref()))?;
    let record = match call
        .state
        .keys
        .import(new, imported, workspace.admission())
        .await
    {
        Ok(record) => record,
        Err(e) => return Err(limit_error(call, e, &workspace).await),
    };
    call.audit(
        "key.import",
        ws,
        Some(&record.id),
        "ok",
        serde_json::json!({"name": record.name, "from": match record.hash_scheme {
            keys::HashScheme::Sha256 => "sha256",
            keys::HashScheme::KeyedBlake3 => "secret",
        }}),
    )
    .await;
    call.state
        .webhooks
        .key_event("key.created", &record, None)
        .await;
    Ok(json_response(
        StatusCode::CREATED,
        &key_json(&record, now()),
    ))
}
