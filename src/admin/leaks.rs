//! Leaked-key reports (`POST /v1/leaks`, and `leaks.public_path` on the proxy listener; SPEC
//! §9) in the format of GitHub's secret scanning partner program: a JSON array of
//! `{"token", "type", "url", "source"}`, signed with ECDSA P-256 over the raw body
//! (`Github-Public-Key-Signature`, base64 DER) by the key `Github-Public-Key-Identifier` names
//! among `leaks.public_keys`. The signature is the report's only credential, so nothing is read
//! before it verifies, and a failed one counts against the caller's failed-authentication limit.
//! Each token that is a live key is revoked (or only reported, per `leaks.action`), audited as
//! `key.leaked` with the report's URL, and sent as the `key.leaked` webhook; the answer labels
//! every token `true_positive` (a key of this gateway) or `false_positive`.

use std::net::IpAddr;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::Full;
use hyper::Response;
use serde::Deserialize;

use super::{AdminError, AdminState, audit, json_response};
use crate::config::Config;
use crate::config::leaks::LeakAction;
use crate::store::KeyStore;

/// Tokens one report may carry (GitHub sends a few per request).
const MAX_TOKENS: usize = 1000;
/// The audit log's actor for what a report does.
const ACTOR: &str = "github-secret-scanning";

/// One reported token.
#[derive(Deserialize)]
struct Reported {
    token: String,
    #[serde(rename = "type", default)]
    token_type: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    source: String,
}

/// Whether `body` carries a valid signature by one of `config`'s report keys.
fn signed(config: &Config, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(signature)) = (
        header("github-public-key-identifier"),
        header("github-public-key-signature"),
    ) else {
        return false;
    };
    let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    config
        .leaks
        .public_keys
        .iter()
        .filter(|k| k.id == id)
        .filter_map(|k| k.point().ok())
        .any(|point| {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
                .verify(body, &signature)
                .is_ok()
        })
}

/// Handles one report from `client_ip`.
pub(super) async fn report(
    state: &AdminState,
    config: &Config,
    headers: &HeaderMap,
    body: &[u8],
    client_ip: IpAddr,
) -> Result<Response<Full<Bytes>>, AdminError> {
    let limits = state.gateway.limits();
    if let Err(crate::error::Reject::RateLimited(secs)) = limits.check_failures(client_ip) {
        return Err(AdminError::RateLimited(secs));
    }
    if !signed(config, headers, body) {
        limits.record_failure(
            client_ip,
            crate::error::Reject::InvalidKey("leak report signature"),
        );
        return Err(AdminError::Unauthorized(
            "the report's Github-Public-Key-Signature does not verify with the key Github-Public-Key-Identifier names in leaks.public_keys",
        ));
    }
    let reported: Vec<Reported> = serde_json::from_slice(body).map_err(|_| {
        AdminError::field(
            "",
            "a report is a JSON array of {\"token\", \"type\", \"url\", \"source\"}",
        )
    })?;
    if reported.len() > MAX_TOKENS {
        return Err(AdminError::field(
            "",
            format!("at most {MAX_TOKENS} tokens per report"),
        ));
    }
    let mut answer = Vec::with_capacity(reported.len());
    for r in &reported {
        let found = state
            .gateway
            .lookup(&r.token)
            .await
            .map_err(AdminError::from)?;
        let label = if found.is_some() {
            "true_positive"
        } else {
            "false_positive"
        };
        if let Some(key) = found.filter(|k| !k.is_revoked() && !k.is_expired()) {
            leaked(state, config, key.workspace(), key.id(), r, client_ip).await?;
        }
        answer.push(serde_json::json!({
            "token_raw": r.token,
            "token_type": r.token_type,
            "label": label,
        }));
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::Value::Array(answer),
    ))
}

/// A live key was reported: revoke it (per `leaks.action`), audit, tell the webhooks.
async fn leaked(
    state: &AdminState,
    config: &Config,
    workspace: &str,
    id: &crate::keys::KeyId,
    r: &Reported,
    client_ip: IpAddr,
) -> Result<(), AdminError> {
    let (record, action) = match config.leaks.action {
        LeakAction::Revoke => (state.keys.revoke(workspace, id).await?.record, "revoked"),
        LeakAction::Notify => match state.store.get(workspace, id).await? {
            Some(record) => (record, "notified"),
            None => return Ok(()),
        },
    };
    let detail = serde_json::json!({
        "url": r.url,
        "source": r.source,
        "type": r.token_type,
        "action": action,
    });
    audit(
        state,
        ACTOR,
        client_ip,
        "key.leaked",
        Some(workspace),
        Some(id),
        "ok",
        detail.clone(),
    )
    .await;
    tracing::warn!(key_id = %id, workspace, url = %r.url, action, "leaked key reported");
    state
        .webhooks
        .key_event("key.leaked", &record, Some(("leak", detail)))
        .await;
    Ok(())
}
