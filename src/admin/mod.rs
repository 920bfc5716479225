//! The admin listener: the admin API under `/v1` (see `docs/admin-api.md`), its OpenAPI
//! document, the liveness and readiness probes and the Prometheus metrics. Never reachable
//! through the proxy listener.
//!
//! Every call runs: request id → probes, metrics and the OpenAPI document (no caller needed) →
//! caller authentication ([`caller`]) → route → the handler in [`handlers`], which checks the
//! workspace, the permission and the body, acts through [`KeyManager`], and writes the audit
//! log. Refusals are [`AdminError`]s, turned into the documented JSON in one place.

pub mod caller;
pub mod dashboard;
pub mod fields;
pub mod handlers;
mod leaks;
mod records;
pub mod verify;
pub mod workspaces;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use time::OffsetDateTime;

use crate::config::{Config, Problem};
use crate::control::KeyManager;
use crate::error::error_response;
use crate::keys::{KeyId, random_base62};
use crate::proxy::{ConnInfo, Gateway, RequestIds, X_REQUEST_ID};
use crate::reload::Reloader;
use crate::store::{AuditEntry, KeyStore, Store, StoreError};
use caller::{Caller, TokenEntry};

/// Largest request body the admin API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The OpenAPI 3 document of the admin API.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Why an admin call was refused. One variant per documented code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    /// Bad body, query or value; `field` names it.
    #[error("invalid_request: {message}")]
    InvalidRequest {
        /// The offending field (dotted path), if one is to blame.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// No valid admin credential.
    #[error("unauthorized")]
    Unauthorized(&'static str),
    /// The caller may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The workspace has no API access.
    #[error("upgrade_required")]
    UpgradeRequired,
    /// Unknown workspace, key or path.
    #[error("not_found: {0}")]
    NotFound(&'static str),
    /// Known path, other method.
    #[error("method_not_allowed")]
    MethodNotAllowed(&'static str),
    /// `max_active_keys` reached.
    #[error("key_limit_reached")]
    KeyLimitReached(u32),
    /// The imported secret is a key already.
    #[error("key_exists")]
    KeyExists,
    /// The workspace is declared in the config file: the API cannot change it.
    #[error("managed_by_config")]
    ManagedByConfig,
    /// The workspace still holds this many keys.
    #[error("workspace_not_empty")]
    WorkspaceNotEmpty(u64),
    /// A reload found the config file unreadable or invalid: every problem.
    #[error("invalid_config")]
    InvalidConfig(Vec<Problem>),
    /// Another reload is running.
    #[error("reload_in_progress")]
    ReloadInProgress,
    /// The key is revoked.
    #[error("key_revoked")]
    KeyRevoked,
    /// The key has expired.
    #[error("key_expired")]
    KeyExpired,
    /// Body over [`MAX_BODY_BYTES`].
    #[error("payload_too_large")]
    PayloadTooLarge,
    /// The store cannot be reached.
    #[error("store_unavailable")]
    StoreUnavailable,
    /// The client is over `auth.failure_limit`; retry after this many seconds.
    #[error("rate_limited")]
    RateLimited(u64),
}

impl AdminError {
    /// An `invalid_request` naming `field`.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        AdminError::InvalidRequest {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// `forbidden`: the caller lacks `permission` on workspace `ws`.
    pub fn lacks(permission: &str, ws: &str) -> Self {
        AdminError::Forbidden(format!(
            "this caller lacks `{permission}` on workspace `{ws}`"
        ))
    }

    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::InvalidRequest { .. } | AdminError::InvalidConfig(_) => {
                StatusCode::BAD_REQUEST
            }
            AdminError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AdminError::Forbidden(_) | AdminError::UpgradeRequired => StatusCode::FORBIDDEN,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::KeyLimitReached(_)
            | AdminError::KeyExists
            | AdminError::ManagedByConfig
            | AdminError::WorkspaceNotEmpty(_)
            | AdminError::ReloadInProgress
            | AdminError::KeyRevoked
            | AdminError::KeyExpired => StatusCode::CONFLICT,
            AdminError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::InvalidRequest { .. } => "invalid_request",
            AdminError::Unauthorized(_) => "unauthorized",
            AdminError::Forbidden(_) => "forbidden",
            AdminError::UpgradeRequired => "upgrade_required",
            AdminError::NotFound(_) => "not_found",
            AdminError::MethodNotAllowed(_) => "method_not_allowed",
            AdminError::KeyLimitReached(_) => "key_limit_reached",
            AdminError::KeyExists => "key_exists",
            AdminError::ManagedByConfig => "managed_by_config",
            AdminError::WorkspaceNotEmpty(_) => "workspace_not_empty",
            AdminError::InvalidConfig(_) => "invalid_config",
            AdminError::ReloadInProgress => "reload_in_progress",
            AdminError::KeyRevoked => "key_revoked",
            AdminError::KeyExpired => "key_expired",
            AdminError::PayloadTooLarge => "payload_too_large",
            AdminError::StoreUnavailable => "store_unavailable",
            AdminError::RateLimited(_) => "rate_limited",
        }
    }

    fn message(&self) -> String {
        match self {
            AdminError::InvalidRequest { message, .. } => message.clone(),
            AdminError::Unauthorized(m) => (*m).to_owned(),
            AdminError::Forbidden(m) => m.clone(),
            AdminError::UpgradeRequired => {
                "API access is not included in this workspace's plan. Upgrade required.".into()
            }
            AdminError::NotFound(what) => format!("No such {what}."),
            AdminError::MethodNotAllowed(allow) => format!("Use one of: {allow}."),
            AdminError::KeyLimitReached(max) => format!(
                "This workspace already has {max} active keys, its limit. Revoke one first."
            ),
            AdminError::KeyExists => "A key with this secret exists already.".into(),
            AdminError::ManagedByConfig => "This workspace is declared in the config file; \
                 change it there."
                .into(),
            AdminError::WorkspaceNotEmpty(n) => {
                format!("This workspace still holds {n} keys; delete them first.")
            }
            AdminError::InvalidConfig(problems) => format!(
                "The config file has {} problem{}; the running config stays.",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            ),
            AdminError::ReloadInProgress => "Another reload is running; retry shortly.".into(),
            AdminError::KeyRevoked => "The key is revoked; revocation cannot be undone.".into(),
            AdminError::KeyExpired => "The key has expired; create a new one instead.".into(),
            AdminError::PayloadTooLarge => {
                format!("The body is larger than {MAX_BODY_BYTES} bytes.")
            }
            AdminError::StoreUnavailable => "The key store is unavailable. Retry shortly.".into(),
            AdminError::RateLimited(secs) => {
                format!("Too many failed authentications from this address. Retry in {secs} s.")
            }
        }
    }

    fn into_response(self, request_id: &HeaderValue) -> Response<Full<Bytes>> {
        let rid = request_id.to_str().unwrap_or("");
        let field = match &self {
            AdminError::InvalidRequest { field, .. } => field.as_deref(),
            _ => None,
        };
        let mut response = error_response(self.status(), self.code(), &self.message(), rid, field);
        if let AdminError::InvalidConfig(problems) = &self {
            // The documented error, plus every problem with its field path and line.
            let list: Vec<_> = problems
                .iter()
                .map(|p| serde_json::json!({"path": p.path, "line": p.line, "message": p.message}))
                .collect();
            let body = serde_json::json!({"error": {
                "code": self.code(), "message": self.message(), "request_id": rid,
                "problems": list,
            }});
            *response.body_mut() = Full::new(Bytes::from(body.to_string()));
        }
        match self {
            AdminError::Unauthorized(_) => {
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"keygate-admin\""),
                );
            }
            AdminError::MethodNotAllowed(allow) => {
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
            }
            AdminError::RateLimited(secs) => {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LimitReached => AdminError::KeyLimitReached(0),
            StoreError::NoWorkspace => AdminError::NotFound("workspace"),
            StoreError::NoApiAccess => AdminError::UpgradeRequired,
            StoreError::WorkspaceNotEmpty(n) => AdminError::WorkspaceNotEmpty(n),
            StoreError::NotFound => AdminError::NotFound("key"),
            StoreError::Conflict => AdminError::KeyExists,
            StoreError::InvalidCursor => AdminError::field("cursor", "not a cursor this API made"),
            StoreError::Unavailable(_) | StoreError::Corrupt(_) => {
                tracing::warn!(error = %e, "admin call failed in the store");
                AdminError::StoreUnavailable
            }
        }
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The `detail` of an update's audit entry: the `fields` changed, and `changes`, each one's old
/// and new value as the API object shows it (`old` and `new`: the object before and after).
pub fn change_detail(
    fields: &[&str],
    old: &serde_json::Value,
    new: &serde_json::Value,
) -> serde_json::Value {
    let changes: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|&f| {
            let change = serde_json::json!({"old": old.get(f), "new": new.get(f)});
            (f.to_owned(), change)
        })
        .collect();
    serde_json::json!({"fields": fields, "changes": changes})
}

/// The parts of the admin API a reload replaces.
pub struct AdminConfig {
    /// The running config.
    pub config: Arc<Config>,
    tokens: Vec<TokenEntry>,
}

impl AdminConfig {
    /// The admin API's part of `config`.
    pub fn new(config: Arc<Config>) -> AdminConfig {
        let tokens = TokenEntry::from_config(&config.admin.tokens);
        AdminConfig { config, tokens }
    }
}

/// Everything the admin handlers share.
pub struct AdminState {
    /// The running config, its reloads, and the admin tokens it declares (swapped whole).
    pub reloader: Arc<Reloader>,
    /// The store.
    pub store: Arc<Store>,
    /// Key lifecycle operations.
    pub keys: KeyManager,
    /// The data plane (secret format, hashing, cached lookups).
    pub gateway: Arc<Gateway>,
    /// Where key events go.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    ids: RequestIds,
}

/// The admin listener's handler.
#[derive(Clone)]
pub struct Admin {
    state: Arc<AdminState>,
}

/// One admin request, as the handlers see it.
pub struct Call<'a> {
    /// Shared state.
    pub state: &'a AdminState,
    /// The config this call runs under, start to end (a reload meanwhile does not change it).
    pub config: Arc<Config>,
    /// The authenticated caller.
    pub caller: Caller,
    /// Client address.
    pub client_ip: IpAddr,
}

impl Call<'_> {
    /// Appends to the audit log. A failed write is logged, not returned: the change it
    /// describes has happened already.
    pub async fn audit(
        &self,
        action: &str,
        workspace: &str,
        key_id: Option<&KeyId>,
        outcome: &str,
        detail: serde_json::Value,
    ) {
        audit(
            self.state,
            &self.caller.actor,
            self.client_ip,
            action,
            Some(workspace),
            key_id,
            outcome,
            detail,
        )
        .await;
    }

    /// Appends to the global audit log only (an action on no workspace, such as a reload).
    pub async fn audit_global(&self, action: &str, outcome: &str, detail: serde_json::Value) {
        audit(
            self.state,
            &self.caller.actor,
            self.client_ip,
            action,
            None,
            None,
            outcome,
            detail,
        )
        .await;
    }
}

#[allow(clippy::too_many_arguments, reason = "one flat audit record")]
async fn audit(
    state: &AdminState,
    actor: &str,
    client_ip: IpAddr,
    action: &str,
    workspace: Option<&str>,
    key_id: Option<&KeyId>,
    outcome: &str,
    detail: serde_json::Value,
) {
    let now = OffsetDateTime::now_utc();
    let entry = AuditEntry {
        id: format!(
            "aud_{:013}_{}",
            now.unix_timestamp_nanos() / 1_000_000,
            random_base62(8)
        ),
        time: now,
        actor: actor.to_owned(),
        action: action.to_owned(),
        workspace: workspace.map(str::to_owned),
        key_id: key_id.cloned(),
        outcome: outcome.to_owned(),
        detail,
        client_ip: Some(client_ip),
    };
    if let Err(e) = state.store.append_audit(&entry).await {
        tracing::error!(error = %e, action, "audit entry could not be written");
    }
}

impl Admin {
    /// The admin API over the running store, data plane and key operations.
    pub fn new(
        reloader: Arc<Reloader>,
        store: Arc<Store>,
        keys: KeyManager,
        gateway: Arc<Gateway>,
        webhooks: Arc<crate::webhooks::Webhooks>,
    ) -> Self {
        Admin {
            state: Arc::new(AdminState {
                reloader,
                store,
                keys,
                gateway,
                webhooks,
                ids: RequestIds::new(),
            }),
        }
    }

    /// Serves a leak report received on the proxy listener at `leaks.public_path`, as
    /// `POST /v1/leaks` would.
    pub async fn leak_report<B>(&self, req: Request<B>, conn: ConnInfo) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let state = &*self.state;
        let request_id = state.ids.for_request(req.headers());
        let config = state.reloader.config();
        let client_ip =
            crate::auth::client_ip(conn.peer.ip(), req.headers(), &config.trusted_proxies);
        let outcome = if req.method() == Method::POST {
            let headers = req.headers().clone();
            match read_body(req.into_body()).await {
                Ok(body) => leaks::report(state, &config, &headers, &body, client_ip).await,
                Err(e) => Err(e),
            }
        } else {
            Err(AdminError::MethodNotAllowed("POST"))
        };
        let mut response = outcome.unwrap_or_else(|e| e.into_response(&request_id));
        response.headers_mut().insert(X_REQUEST_ID, request_id);
        response
    }

    /// Serves one admin request.
    pub async fn handle<B>(&self, req: Request<B>, conn: ConnInfo) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let request_id = self.state.ids.for_request(req.headers());
        let mut response = match self.route(req, conn).await {
            Ok(r) => r,
            Err(e) => e.into_response(&request_id),
        };
        response.headers_mut().insert(X_REQUEST_ID, request_id);
        // The page's headers on every answer of this origin, JSON included: nothing served
        // here may be framed, sniffed into HTML or run inline.
        dashboard::confine(response.headers_mut());
        response
    }

    async fn route<B>(
        &self,
        req: Request<B>,
        conn: ConnInfo,
    ) -> Result<Response<Full<Bytes>>, AdminError>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let state = &*self.state;
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = req.method().clone();
        let get_only = |m: &Method| {
            if m == Method::GET || m == Method::HEAD {
                Ok(())
            } else {
                Err(AdminError::MethodNotAllowed("GET, HEAD"))
            }
        };
        match segments.as_slice() {
            ["healthz"] => {
                get_only(&method)?;
                return Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({"status": "ok"}),
                ));
            }
            ["readyz"] => {
                get_only(&method)?;
                return Ok(self.readiness().await);
            }
            ["metrics"] => {
                get_only(&method)?;
                let openmetrics = crate::metrics::wants_openmetrics(req.headers().get(ACCEPT));
                let (text, content_type) = state.gateway.metrics().render(openmetrics);
                let mut r = Response::new(Full::new(Bytes::from(text)));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                return Ok(r);
            }
            // The dashboard: GET `/` and `/assets/<file>`.
            [""] => {
                get_only(&method)?;
                return dashboard::serve("index.html", req.headers())
                    .ok_or(AdminError::NotFound("admin endpoint"));
            }
            ["assets", file] if *file != "index.html" => {
                get_only(&method)?;
                return dashboard::serve(file, req.headers()).ok_or(AdminError::NotFound("asset"));
            }
            ["v1", "openapi.json"] => {
                get_only(&method)?;
                let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI_JSON.as_bytes())));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                return Ok(r);
            }
            ["v1", ..] => {}
            _ => return Err(AdminError::NotFound("admin endpoint")),
        }

        // One config for the whole call, whatever a reload does meanwhile.
        let current = state.reloader.admin().load_full();
        let config = current.config.clone();
        let client_ip =
            crate::auth::client_ip(conn.peer.ip(), req.headers(), &config.trusted_proxies);
        // A leak report's credential is its signature, not an admin token.
        if segments.as_slice() == ["v1", "leaks"] {
            if method != Method::POST {
                return Err(AdminError::MethodNotAllowed("POST"));
            }
            let headers = req.headers().clone();
            let body = read_body(req.into_body()).await?;
            return leaks::report(state, &config, &headers, &body, client_ip).await;
        }
        // The data plane's failed-authentication limit guards admin tokens too. A client over it
        // is refused before any comparison and not audited, so guessing cannot fill the log.
        let limits = state.gateway.limits();
        if let Err(crate::error::Reject::RateLimited(secs)) = limits.check_failures(client_ip) {
            return Err(AdminError::RateLimited(secs));
        }
        let presented = req.headers().contains_key(http::header::AUTHORIZATION);
        let caller = match caller::authenticate(
            &current.tokens,
            &state.gateway,
            &config,
            req.headers(),
            conn.peer.ip(),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                if presented && matches!(e, AdminError::Unauthorized(_)) {
                    limits.record_failure(
                        client_ip,
                        crate::error::Reject::InvalidKey("admin credential"),
                    );
                }
                let detail = serde_json::json!({"method": method.as_str(), "path": path});
                audit(
                    state,
                    "anonymous",
                    client_ip,
                    "admin.refused",
                    None,
                    None,
                    e.code(),
                    detail,
                )
                .await;
                return Err(e);
            }
        };
        let call = Call {
            state,
            config,
            caller,
            client_ip,
        };
        let result = handlers::dispatch(&call, &method, &segments, req).await;
        if let Err(e @ (AdminError::Forbidden(_) | AdminError::UpgradeRequired)) = &result {
            let workspace = match segments.as_slice() {
                ["v1", "workspaces", ws, ..] => Some(*ws),
                _ => None,
            };
            let detail = serde_json::json!({"method": method.as_str(), "path": path});
            audit(
                state,
                &call.caller.actor,
                client_ip,
                "admin.refused",
                workspace,
                None,
                e.code(),
                detail,
            )
            .await;
        }
        result
    }

    async fn readiness(&self) -> Response<Full<Bytes>> {
        let config = self.state.reloader.config_hash();
        if self.state.gateway.is_draining() {
            // First thing on SIGTERM: load balancers stop sending while requests still pass.
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "draining", "config": *config}),
            );
        }
        match self.state.store.ping().await {
            Ok(()) => {
                let mut body =
                    serde_json::json!({"status": "ready", "store": "ok", "config": *config});
                if let Some(fleet) = self.state.store.fleet() {
                    // Which instance answered, as revocations name the ones that did not confirm.
                    body["instance"] = fleet.id().into();
                }
                json_response(StatusCode::OK, &body)
            }
            Err(e) => {
                tracing::warn!(error = %e, "readiness: store unreachable");
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({"status": "degraded", "store": "unavailable", "config": *config}),
                )
            }
        }
    }
}

/// Reads a request body of at most [`MAX_BODY_BYTES`].
pub async fn read_body<B>(body: B) -> Result<Bytes, AdminError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(AdminError::PayloadTooLarge),
        Err(_) => Err(AdminError::InvalidRequest {
            field: None,
            message: "the request body could not be read".into(),
        }),
    }
}
