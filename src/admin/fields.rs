//! The key fields of admin request bodies (create, import, update) and their validation against
//! the config. Every refusal names the field.

use std::collections::HashSet;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::AdminError;
use crate::config::{self, Config, QuotaSpec, RateLimitSpec, check_scope, ip_list};
use crate::keys::KeyRecord;

/// Longest key name.
pub const MAX_NAME: usize = 100;
/// Longest description.
pub const MAX_DESCRIPTION: usize = 500;
/// Longest owner id.
pub const MAX_OWNER: usize = 200;
/// Largest metadata object, serialized.
pub const MAX_METADATA_BYTES: usize = 1024;
/// Most entries in an IP allowlist.
pub const MAX_ALLOWLIST: usize = 100;
/// Most scopes on a key.
pub const MAX_SCOPES: usize = 100;
/// Longest rotation grace period: the old key of a rotation is meant to be retired, and a
/// grace period of years would keep it as a second live credential in all but name.
pub const MAX_GRACE_PERIOD: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// A field of a PATCH body: absent (keep), `null` (clear) or a value.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Patch<T> {
    /// Not in the body.
    #[default]
    Absent,
    /// `null`.
    Null,
    /// A value.
    Value(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            None => Patch::Null,
            Some(v) => Patch::Value(v),
        })
    }
}

impl<T> Patch<T> {
    /// The value, treating `null` like absence (create and import bodies).
    pub fn value(self) -> Option<T> {
        match self {
            Patch::Value(v) => Some(v),
            Patch::Absent | Patch::Null => None,
        }
    }

    fn is_present(&self) -> bool {
        !matches!(self, Patch::Absent)
    }
}

/// The body of create, import and update calls. No `Debug`: it may hold an imported secret.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFields {
    /// Name.
    #[serde(default)]
    pub name: Patch<String>,
    /// Description.
    #[serde(default)]
    pub description: Patch<String>,
    /// Scopes.
    #[serde(default)]
    pub scopes: Patch<Vec<String>>,
    /// Role.
    #[serde(default)]
    pub role: Patch<String>,
    /// Expiry, RFC 3339.
    #[serde(default)]
    pub expires_at: Patch<String>,
    /// Allowlist entries.
    #[serde(default)]
    pub ip_allowlist: Patch<Vec<String>>,
    /// Rate limit override.
    #[serde(default)]
    pub rate_limit: Patch<RateLimitSpec>,
    /// Quota.
    #[serde(default)]
    pub quota: Patch<QuotaSpec>,
    /// Owner.
    #[serde(default)]
    pub owner: Patch<String>,
    /// Metadata object.
    #[serde(default)]
    pub metadata: Patch<serde_json::Value>,
    /// Import only: the plaintext secret.
    #[serde(default)]
    pub secret: Patch<String>,
    /// Import only: hex SHA-256 of the secret.
    #[serde(default)]
    pub sha256: Patch<String>,
    /// Import only: the displayed start of a `sha256` import.
    #[serde(default)]
    pub prefix: Patch<String>,
}

/// Parses a JSON body into `T`, naming the field of any error.
pub fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, AdminError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::InvalidRequest {
            field: None,
            message: "a JSON body is required".into(),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let (field, message) = match inner.classify() {
            // A syntax error belongs to no field (the path would read `?`): the message gives
            // its line and column instead.
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                (None, format!("the body is not valid JSON: {inner}"))
            }
            _ => (
                (path != "." && !path.contains('?')).then_some(path),
                inner.to_string(),
            ),
        };
        // serde reports an unknown field at its parent; name it in `field` too.
        let field = field.or_else(|| unknown_field_name(&message));
        AdminError::InvalidRequest { field, message }
    })?;
    de.end().map_err(|e| AdminError::InvalidRequest {
        field: None,
        message: format!("the body is not valid JSON: {e}"),
    })?;
    Ok(value)
}

fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// Validated key fields, ready to apply.
#[derive(Debug, Clone, Default)]
pub struct Valid {
    /// Name.
    pub name: Patch<String>,
    /// Description.
    pub description: Patch<String>,
    /// Scopes (deduplicated).
    pub scopes: Patch<Vec<String>>,
    /// Role.
    pub role: Patch<String>,
    /// Expiry.
    pub expires_at: Patch<OffsetDateTime>,
    /// Allowlist.
    pub ip_allowlist: Patch<Vec<IpNet>>,
    /// Rate limit.
    pub rate_limit: Patch<RateLimitSpec>,
    /// Quota.
    pub quota: Patch<QuotaSpec>,
    /// Owner.
    pub owner: Patch<String>,
    /// Metadata.
    pub metadata: Patch<serde_json::Map<String, serde_json::Value>>,
}

/// What the body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `POST …/keys`.
    Create,
    /// `POST …/keys/import`.
    Import,
    /// `PATCH …/keys/{id}`.
    Update,
}

/// Scopes a key may hold: those of the `scopes` catalogue, those a route or role uses (all in
/// the catalogue when there is one), the admin permissions, and `*`.
pub fn known_scopes(config: &Config) -> HashSet<String> {
    let mut known: HashSet<String> = config.roles.values().flatten().cloned().collect();
    for r in &config.routes {
        known.extend(r.scopes.iter().chain(&r.any_scopes).cloned());
    }
    known.extend(config.scopes.keys().cloned());
    known.extend(crate::config::PERMISSIONS.iter().map(|p| (*p).to_owned()));
    known.insert("*".into());
    known
}

fn text(
    field: &str,
    value: Patch<String>,
    max: usize,
    clearable: bool,
) -> Result<Patch<String>, AdminError> {
    match value {
        Patch::Value(v) => {
            let v = v.trim().to_owned();
            let n = v.chars().count();
            if n == 0 || n > max {
                return Err(AdminError::field(
                    field,
                    format!("{field} must be 1–{max} characters"),
                ));
            }
            if v.chars().any(char::is_control) {
                return Err(AdminError::field(
                    field,
                    format!("{field} has control characters"),
                ));
            }
            Ok(Patch::Value(v))
        }
        Patch::Null if !clearable => Err(AdminError::field(
            field,
            format!("{field} cannot be cleared"),
        )),
        other => Ok(other),
    }
}

impl KeyFields {
    /// Validates the fields for `purpose` against `config`, at `now`.
    pub fn validate(
        self,
        purpose: Purpose,
        config: &Config,
        known: &HashSet<String>,
        now: OffsetDateTime,
    ) -> Result<Valid, AdminError> {
        if purpose != Purpose::Import {
            for (field, present) in [
                ("secret", self.secret.is_present()),
                ("sha256", self.sha256.is_present()),
                ("prefix", self.prefix.is_present()),
            ] {
                if present {
                    return Err(AdminError::field(
                        field,
                        format!("unknown field `{field}` (only for imports)"),
                    ));
                }
            }
        }
        let name = text("name", self.name, MAX_NAME, false)?;
        if purpose != Purpose::Update && !name.is_present() {
            return Err(AdminError::field("name", "name is required"));
        }
        let description = text("description", self.description, MAX_DESCRIPTION, true)?;
        let owner = text("owner", self.owner, MAX_OWNER, true)?;

        let scopes = match self.scopes {
            Patch::Value(list) => {
                if list.len() > MAX_SCOPES {
                    return Err(AdminError::field(
                        "scopes",
                        format!("at most {MAX_SCOPES} scopes"),
                    ));
                }
                let mut out: Vec<String> = Vec::with_capacity(list.len());
                for (i, s) in list.into_iter().enumerate() {
                    let field = format!("scopes[{i}]");
                    check_scope(&s).map_err(|m| AdminError::field(&field, m))?;
                    if !known.contains(&s) {
                        return Err(AdminError::field(
                            &field,
                            format!("unknown scope `{s}`: no route or role uses it"),
                        ));
                    }
                    if !out.contains(&s) {
                        out.push(s);
                    }
                }
                Patch::Value(out)
            }
            Patch::Null => Patch::Value(Vec::new()),
            Patch::Absent => Patch::Absent,
        };
        let role = match self.role {
            Patch::Value(r) if !config.roles.contains_key(&r) => {
                return Err(AdminError::field("role", format!("unknown role `{r}`")));
            }
            other => other,
        };
        let expires_at = match self.expires_at {
            Patch::Value(text) => {
                let at = OffsetDateTime::parse(&text, &Rfc3339).map_err(|_| {
                    AdminError::field("expires_at", "expires_at must be an RFC 3339 time")
                })?;
                if at <= now {
                    return Err(AdminError::field(
                        "expires_at",
                        "expires_at must be in the future",
                    ));
                }
                Patch::Value(at)
            }
            Patch::Null => Patch::Null,
            Patch::Absent => Patch::Absent,
        };
        let ip_allowlist = match self.ip_allowlist {
            Patch::Value(list) => {
                if list.len() > MAX_ALLOWLIST {
                    return Err(AdminError::field(
                        "ip_allowlist",
                        format!("at most {MAX_ALLOWLIST} entries"),
                    ));
                }
                let mut nets = Vec::with_capacity(list.len());
                for (i, entry) in list.iter().enumerate() {
                    nets.push(
                        ip_list::parse(entry)
                            .map_err(|m| AdminError::field(format!("ip_allowlist[{i}]"), m))?,
                    );
                }
                Patch::Value(nets)
            }
            Patch::Null => Patch::Value(Vec::new()),
            Patch::Absent => Patch::Absent,
        };
        if let Patch::Value(l) = &self.rate_limit {
            config::check_rate_limit(l)
                .map_err(|(field, m)| AdminError::field(format!("rate_limit.{field}"), m))?;
        }
        if let Patch::Value(q) = &self.quota {
            config::check_quota(q).map_err(|m| AdminError::field("quota.refill_day", m))?;
        }
        let metadata = match self.metadata {
            Patch::Value(serde_json::Value::Object(map)) => {
                if serde_json::to_vec(&map).map_or(usize::MAX, |v| v.len()) > MAX_METADATA_BYTES {
                    return Err(AdminError::field(
                        "metadata",
                        format!("metadata must be at most {MAX_METADATA_BYTES} bytes of JSON"),
                    ));
                }
                Patch::Value(map)
            }
            Patch::Value(_) => {
                return Err(AdminError::field(
                    "metadata",
                    "metadata must be a JSON object",
                ));
            }
            Patch::Null => Patch::Null,
            Patch::Absent => Patch::Absent,
        };
        Ok(Valid {
            name,
            description,
            scopes,
            role,
            expires_at,
            ip_allowlist,
            rate_limit: self.rate_limit,
            quota: self.quota,
            owner,
            metadata,
        })
    }
}

fn apply<T>(slot: &mut Option<T>, patch: Patch<T>) {
    match patch {
        Patch::Absent => {}
        Patch::Null => *slot = None,
        Patch::Value(v) => *slot = Some(v),
    }
}

impl Valid {
    /// Applies the fields to a record (absent fields keep their value).
    pub fn apply_to(self, record: &mut KeyRecord) {
        if let Patch::Value(n) = self.name {
            record.name = n;
        }
        apply(&mut record.description, self.description);
        if let Patch::Value(s) = self.scopes {
            record.scopes = s;
        }
        apply(&mut record.role, self.role);
        apply(&mut record.expires_at, self.expires_at);
        if let Patch::Value(l) = self.ip_allowlist {
            record.ip_allowlist = l;
        }
        apply(&mut record.rate_limit, self.rate_limit);
        apply(&mut record.quota, self.quota);
        apply(&mut record.owner, self.owner);
        apply(&mut record.metadata, self.metadata);
    }

    /// Whether the body changes what the key may access.
    pub fn changes_access(&self) -> bool {
        self.scopes.is_present() || self.role.is_present()
    }

    /// Whether the body changes where, until when or how much the key may be used.
    pub fn changes_restrictions(&self) -> bool {
        self.ip_allowlist.is_present()
            || self.expires_at.is_present()
            || self.rate_limit.is_present()
            || self.quota.is_present()
    }
}

/// The key object of the admin API: every field, `null` when unset, and the derived `status`.
/// Never the secret or its hash.
pub fn key_json(record: &KeyRecord, now: OffsetDateTime) -> serde_json::Value {
    let time = |t: Option<OffsetDateTime>| t.and_then(|t| t.format(&Rfc3339).ok());
    let allowlist: Vec<String> = record
        .ip_allowlist
        .iter()
        .map(|n| {
            if n.prefix_len() == n.max_prefix_len() {
                n.addr().to_string()
            } else {
                n.to_string()
            }
        })
        .collect();
    serde_json::json!({
        "id": record.id,
        "workspace": record.workspace,
        "name": record.name,
        "description": record.description,
        "prefix": record.prefix,
        "scopes": record.scopes,
        "role": record.role,
        "ip_allowlist": allowlist,
        "expires_at": time(record.expires_at),
        "rate_limit": record.rate_limit,
        "quota": record.quota,
        "owner": record.owner,
        "metadata": record.metadata,
        "created_at": time(Some(record.created_at)),
        "created_by": record.created_by,
        "updated_at": time(Some(record.updated_at)),
        "revoked_at": time(record.revoked_at),
        "last_used_at": time(record.last_used_at),
        "usage_count": record.usage_count,
        "status": record.status_at(now).as_str(),
        "rotated_from": record.rotated_from,
        "replaced_by": record.replaced_by,
    })
}
