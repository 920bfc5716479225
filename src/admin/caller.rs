//! Who is calling the admin API and what they may do: admin tokens from config (compared in
//! constant time, by digest) and API keys holding `api.key.*` scopes in their own workspace.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use super::AdminError;
use crate::auth;
use crate::config::{AdminToken, Config};
use crate::keys::{KeyId, KeyStatus, Shape};
use crate::proxy::Gateway;

/// `api.key.view`.
pub const VIEW: &str = "api.key.view";
/// `api.key.create`.
pub const CREATE: &str = "api.key.create";
/// `api.key.update`.
pub const UPDATE: &str = "api.key.update";
/// `api.key.delete`.
pub const DELETE: &str = "api.key.delete";
/// `api.key.verify`: `POST /v1/verify`, on the workspaces of the keys verified.
pub const VERIFY: &str = "api.key.verify";
/// `config.reload`: `POST /v1/reload`, admin tokens only.
pub const RELOAD: &str = "config.reload";
/// `workspace.manage`: create, change and delete workspaces. Admin tokens only: a workspace's
/// plan is the operator's to set, and a key holding this scope (or `*`) could otherwise lift
/// its own workspace's key limit or grant it API access.
pub const MANAGE: &str = "workspace.manage";

/// An admin token, kept as a digest so comparisons take the same time whatever the input.
pub struct TokenEntry {
    name: String,
    digest: [u8; 32],
    permissions: Vec<String>,
    workspaces: Vec<String>,
}

impl TokenEntry {
    /// Digests the configured tokens.
    pub fn from_config(tokens: &[AdminToken]) -> Vec<TokenEntry> {
        tokens
            .iter()
            .map(|t| TokenEntry {
                name: t.name.clone(),
                digest: *blake3::hash(t.token.as_bytes()).as_bytes(),
                permissions: t.permissions.clone(),
                workspaces: t.workspaces.clone(),
            })
            .collect()
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `token:<name>` or `key:<id>`, for the audit log and `created_by`.
    pub actor: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Token {
        permissions: Vec<String>,
        workspaces: Vec<String>,
    },
    Key {
        /// The calling key.
        id: KeyId,
        workspace: String,
        /// The key's scopes and its role's.
        scopes: Vec<String>,
    },
}

impl Caller {
    /// Whether the caller holds `permission` on `workspace`.
    pub fn may(&self, permission: &str, workspace: &str) -> bool {
        match &self.kind {
            Kind::Token {
                permissions,
                workspaces,
            } => {
                permissions.iter().any(|p| p == permission)
                    && workspaces.iter().any(|w| w == "*" || w == workspace)
            }
            Kind::Key {
                workspace: own,
                scopes,
                ..
            } => {
                permission != MANAGE && own == workspace && auth::has_scope(scopes, &[], permission)
            }
        }
    }

    /// The workspaces the caller may act on at all: `None` for every one (a token with `*`),
    /// else the names its token lists or the calling key's own workspace.
    pub fn workspace_names(&self) -> Option<&[String]> {
        match &self.kind {
            Kind::Token { workspaces, .. } if workspaces.iter().any(|w| w == "*") => None,
            Kind::Token { workspaces, .. } => Some(workspaces),
            Kind::Key { workspace, .. } => Some(std::slice::from_ref(workspace)),
        }
    }

    /// Whether the caller may reload the config: admin tokens holding `config.reload` (the
    /// file is the operator's; no API key may have it re-read).
    pub fn may_reload(&self) -> bool {
        match &self.kind {
            Kind::Token { permissions, .. } => permissions.iter().any(|p| p == RELOAD),
            Kind::Key { .. } => false,
        }
    }

    /// Whether the caller holds `permission` on at least one workspace.
    pub fn may_somewhere(&self, permission: &str) -> bool {
        match &self.kind {
            Kind::Token { permissions, .. } => permissions.iter().any(|p| p == permission),
            Kind::Key { workspace, .. } => self.may(permission, workspace),
        }
    }

    /// Whether the caller holds `permission` on every workspace (for the global audit log).
    pub fn may_everywhere(&self, permission: &str) -> bool {
        match &self.kind {
            Kind::Token {
                permissions,
                workspaces,
            } => permissions.iter().any(|p| p == permission) && workspaces.iter().any(|w| w == "*"),
            Kind::Key { .. } => false,
        }
    }

    /// Refuses when a key caller would hand out a scope it does not hold itself. Admin tokens
    /// are configured by the operator and may grant anything.
    pub fn may_grant(&self, granted: &[&str]) -> Result<(), AdminError> {
        match self.missing_scope(granted) {
            None => Ok(()),
            Some(s) => Err(AdminError::Forbidden(format!(
                "an API key cannot grant the scope `{s}`, which it does not hold"
            ))),
        }
    }

    /// Refuses when a key caller would change (update, rotate, revoke or delete) a key that
    /// holds a scope the caller does not: whatever the field, since lifting a stronger key's
    /// allowlist, expiry or limits widens access as surely as adding a scope, and revoking or
    /// deleting it would let a weaker key cut off a stronger one. `held` is the target's own
    /// scopes plus its role's.
    pub fn may_manage(&self, held: &[&str]) -> Result<(), AdminError> {
        match self.missing_scope(held) {
            None => Ok(()),
            Some(s) => Err(AdminError::Forbidden(format!(
                "an API key cannot change a key that holds the scope `{s}`, which it does not hold"
            ))),
        }
    }

    /// Refuses a key caller changing its own allowlist, expiry, rate limit or quota: the
    /// operator who set them meant them to confine the key, so it may not lift them itself.
    pub fn may_restrict(
        &self,
        target: &KeyId,
        changes_restrictions: bool,
    ) -> Result<(), AdminError> {
        match &self.kind {
            Kind::Key { id, .. } if changes_restrictions && id == target => {
                Err(AdminError::Forbidden(
                    "an API key cannot change its own ip_allowlist, expires_at, rate_limit or quota"
                        .into(),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The first of `scopes` a key caller does not hold (never one for admin tokens).
    fn missing_scope<'s>(&self, scopes: &[&'s str]) -> Option<&'s str> {
        let Kind::Key { scopes: own, .. } = &self.kind else {
            return None;
        };
        scopes
            .iter()
            .find(|s| !auth::has_scope(own, &[], s))
            .copied()
    }
}

/// Authenticates the caller of an admin request: an admin token, else an active API key used
/// from an allowed address.
pub async fn authenticate(
    tokens: &[TokenEntry],
    gateway: &Gateway,
    config: &Config,
    headers: &HeaderMap,
    peer: IpAddr,
) -> Result<Caller, AdminError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(AdminError::Unauthorized(
            "send `Authorization: Bearer <token>`",
        ));
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| auth::parse_authorization(v).ok())
        .ok_or(AdminError::Unauthorized(
            "send `Authorization: Bearer <token>`",
        ))?;

    let digest = blake3::hash(presented.as_bytes());
    let mut matched = None;
    for t in tokens {
        // No early exit: every token is compared, whichever matches.
        if bool::from(t.digest.ct_eq(digest.as_bytes())) {
            matched = Some(t);
        }
    }
    if let Some(t) = matched {
        return Ok(Caller {
            actor: format!("token:{}", t.name),
            kind: Kind::Token {
                permissions: t.permissions.clone(),
                workspaces: t.workspaces.clone(),
            },
        });
    }

    let invalid = AdminError::Unauthorized("the token or API key is not valid here");
    if gateway.format().shape(presented) == Shape::Malformed {
        return Err(invalid);
    }
    let key = gateway
        .lookup(presented)
        .await
        .map_err(|_| AdminError::StoreUnavailable)?
        .ok_or(invalid.clone())?;
    let client = auth::client_ip(peer, headers, &config.trusted_proxies);
    if key.status_at(OffsetDateTime::now_utc()) != KeyStatus::Active
        || !auth::ip_allowed(client, key.ip_allowlist())
    {
        return Err(invalid);
    }
    Ok(Caller {
        actor: format!("key:{}", key.id()),
        kind: Kind::Key {
            id: key.id().clone(),
            workspace: key.workspace().to_owned(),
            scopes: gateway
                .policy()
                .effective_scopes(&key)
                .into_iter()
                .map(str::to_owned)
                .collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_caller(scopes: &[&str]) -> Caller {
        Caller {
            actor: "key:key_x".into(),
            kind: Kind::Key {
                id: KeyId::parse("key_AAAAAAAAAAAAAAAAAAAAAA").expect("an id"),
                workspace: "acme".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
            },
        }
    }

    #[test]
    fn keys_act_on_their_own_workspace_with_their_scopes() {
        let c = key_caller(&["api.key.view", "sessions:read"]);
        assert!(c.may(VIEW, "acme"));
        assert!(!c.may(VIEW, "other"));
        assert!(!c.may(CREATE, "acme"));
        assert!(!c.may_everywhere(VIEW));
        assert!(c.may_grant(&["sessions:read"]).is_ok());
        assert!(matches!(
            c.may_grant(&["sessions:read", "sessions:write"]),
            Err(AdminError::Forbidden(m)) if m.contains("sessions:write")
        ));
        assert!(c.may_grant(&["*"]).is_err(), "`*` is more than it holds");
        assert!(c.may_manage(&["sessions:read"]).is_ok());
        assert!(matches!(
            c.may_manage(&["*"]),
            Err(AdminError::Forbidden(m)) if m.contains("cannot change")
        ));
        let all = key_caller(&["*"]);
        assert!(all.may(DELETE, "acme"));
        assert!(all.may_manage(&["*"]).is_ok());
        assert!(all.may_grant(&["*", "anything"]).is_ok());
    }

    #[test]
    fn tokens_are_limited_to_their_permissions_and_workspaces() {
        let c = Caller {
            actor: "token:ops".into(),
            kind: Kind::Token {
                permissions: vec![VIEW.into()],
                workspaces: vec!["acme".into()],
            },
        };
        assert!(c.may(VIEW, "acme"));
        assert!(!c.may(VIEW, "other"));
        assert!(!c.may(CREATE, "acme"));
        assert!(!c.may_everywhere(VIEW));
        assert!(c.may_grant(&["*"]).is_ok());
        assert!(c.may_manage(&["*"]).is_ok());
    }
}
