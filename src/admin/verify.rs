//! `POST /v1/verify` (SPEC §9): a service that checks keys itself asks whether a secret is valid
//! for some scopes, and gets the key's identity and limits, or the refusal code the proxy would
//! answer with. The decision is the proxy's own ([`Gateway::verify`]); a valid verification
//! counts as a use.
//!
//! [`Gateway::verify`]: crate::proxy::Gateway::verify

use std::net::IpAddr;

use http::StatusCode;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;

use super::caller::VERIFY;
use super::fields::parse_json;
use super::handlers::Reply;
use super::{AdminError, Call, json_response};
use crate::config::check_scope;
use crate::error::Reject;
use crate::proxy::verify::Verified;
use crate::store::KeyStore;

/// The body: the secret, the scopes it must hold, and the address of the client that presented
/// it (for the key's IP allowlist and the failed-authentication limit).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    key: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    ip: Option<String>,
}

/// Answers 200 with the verdict, valid or not; errors are about the call itself (body,
/// permission, store).
pub async fn verify(call: &Call<'_>, body: &[u8]) -> Reply {
    if !call.caller.may_somewhere(VERIFY) {
        return Err(AdminError::Forbidden(format!(
            "verifying keys needs `{VERIFY}` on their workspace"
        )));
    }
    let body: VerifyBody = parse_json(body)?;
    for (i, scope) in body.scopes.iter().enumerate() {
        check_scope(scope).map_err(|m| AdminError::field(format!("scopes[{i}]"), m))?;
    }
    let ip = body
        .ip
        .as_deref()
        .map(|s| {
            s.parse::<IpAddr>()
                .map(|ip| ip.to_canonical())
                .map_err(|_| AdminError::field("ip", "must be an IPv4 or IPv6 address"))
        })
        .transpose()?;
    let verdict = call
        .state
        .gateway
        .verify(&body.key, body.scopes, ip, call.client_ip, |key| {
            call.caller.may(VERIFY, key.workspace())
        })
        .await;
    match verdict {
        Ok(verified) => Ok(json_response(StatusCode::OK, &valid(call, &verified).await)),
        Err(refusal) => match refusal.reject {
            Reject::StoreUnavailable(_) => Err(AdminError::StoreUnavailable),
            reject => Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"valid": false, "code": reject.code()}),
            )),
        },
    }
}

/// The answer for a valid key. Owner and metadata are not in the key cache (kept compact for
/// memory, SPEC §8): they are read from the store; if that read fails they are `null` rather
/// than the verification failing after its use was counted.
async fn valid(call: &Call<'_>, v: &Verified) -> serde_json::Value {
    let key = &v.key;
    let record = match call.state.store.get(key.workspace(), key.id()).await {
        Ok(record) => record,
        Err(e) => {
            tracing::warn!(key_id = %key.id(), error = %e, "verify: the key's owner and metadata could not be read");
            None
        }
    };
    let expires_at = record
        .as_ref()
        .map_or_else(|| key.expires_at(), |r| r.expires_at)
        .and_then(|t| t.format(&Rfc3339).ok());
    let ratelimit = v
        .limits
        .rate
        .map(|r| serde_json::json!({"limit": r.limit, "remaining": r.remaining, "reset": r.reset}));
    serde_json::json!({
        "valid": true,
        "key_id": key.id(),
        "workspace": key.workspace(),
        "scopes": v.scopes,
        "owner": record.as_ref().and_then(|r| r.owner.clone()),
        "metadata": record.as_ref().and_then(|r| r.metadata.clone()),
        "expires_at": expires_at,
        "ratelimit": ratelimit,
        "quota_remaining": v.limits.quota_remaining,
    })
}
