//! The key fields of `keys create`, `keys import` and `keys update`, and the JSON bodies they
//! become: only the fields given are sent; update's `--no-*` and `--clear-*` flags send `null` or
//! `[]`.

use std::time::Duration;

use clap::Args;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cli::Failure;
use crate::cli::args::{
    QuotaArg, RateLimitArg, parse_ip, parse_metadata, parse_positive_duration, parse_quota,
    parse_rate_limit, parse_rfc3339,
};

/// The optional key fields shared by create, import and update.
#[derive(Debug, Default, Args)]
pub(in crate::cli) struct KeyFields {
    /// Description (up to 500 characters).
    #[arg(long)]
    description: Option<String>,
    /// A scope the key grants (repeat for several; on update, replaces the key's scopes).
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// A role from the config (a named set of scopes).
    #[arg(long)]
    role: Option<String>,
    /// Expiry as an RFC 3339 time (e.g. 2027-01-01T00:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339, conflicts_with = "expires_in")]
    expires_at: Option<String>,
    /// Expiry as a duration from now (e.g. 90d, 24h).
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    expires_in: Option<Duration>,
    /// An address or CIDR the key may be used from (repeat for several; default: any; on
    /// update, replaces the allowlist).
    #[arg(long = "ip", value_name = "ADDR_OR_CIDR", value_parser = parse_ip)]
    ips: Vec<String>,
    /// External id of the customer the key belongs to.
    #[arg(long)]
    owner: Option<String>,
    /// A JSON object stored with the key (up to 1 KiB).
    #[arg(long, value_name = "JSON_OBJECT", value_parser = parse_metadata)]
    metadata: Option<Map<String, Value>>,
    /// Rate limit override: REQUESTS/PERIOD[:BURST], e.g. 100/1s or 100/1s:200.
    #[arg(long, value_name = "N/PERIOD[:BURST]", value_parser = parse_rate_limit)]
    rate_limit: Option<RateLimitArg>,
    /// Quota: LIMIT/REFILL[:DAY] with REFILL none, daily or monthly (DAY: 1–28, default 1),
    /// e.g. 10000/monthly, 10000/monthly:15, 500/daily, 100/none (never refills).
    #[arg(long, value_name = "LIMIT/REFILL[:DAY]", value_parser = parse_quota)]
    quota: Option<QuotaArg>,
}

/// The update flags that clear a field (sent as `null`, or `[]` for the two lists).
#[derive(Debug, Default, Args)]
pub(super) struct ClearFlags {
    /// Remove the description.
    #[arg(long, conflicts_with = "description")]
    no_description: bool,
    /// Remove every scope (a role, if any, still applies).
    #[arg(long, conflicts_with = "scopes")]
    clear_scopes: bool,
    /// Remove the role.
    #[arg(long, conflicts_with = "role")]
    no_role: bool,
    /// Make the key never expire.
    #[arg(long, conflicts_with_all = ["expires_at", "expires_in"])]
    no_expiry: bool,
    /// Remove the IP allowlist (any address may use the key).
    #[arg(long, conflicts_with = "ips")]
    clear_ips: bool,
    /// Remove the owner.
    #[arg(long, conflicts_with = "owner")]
    no_owner: bool,
    /// Remove the metadata.
    #[arg(long, conflicts_with = "metadata")]
    no_metadata: bool,
    /// Remove the key's rate limit override (the role's or default limit applies).
    #[arg(long, conflicts_with = "rate_limit")]
    no_rate_limit: bool,
    /// Remove the key's quota (the role's quota, if any, applies).
    #[arg(long, conflicts_with = "quota")]
    no_quota: bool,
}

/// The JSON body for create and import (and the set fields of update): only what was given.
pub(in crate::cli) fn key_fields_body(
    name: Option<&str>,
    f: &KeyFields,
    now: OffsetDateTime,
) -> Result<Map<String, Value>, Failure> {
    let mut body = Map::new();
    let mut put = |k: &str, v: Value| {
        body.insert(k.to_owned(), v);
    };
    if let Some(name) = name {
        put("name", name.into());
    }
    if let Some(d) = &f.description {
        put("description", d.as_str().into());
    }
    if !f.scopes.is_empty() {
        put("scopes", f.scopes.clone().into());
    }
    if let Some(r) = &f.role {
        put("role", r.as_str().into());
    }
    if let Some(at) = &f.expires_at {
        put("expires_at", at.as_str().into());
    }
    if let Some(d) = f.expires_in {
        put("expires_at", expiry_after(now, d)?.into());
    }
    if !f.ips.is_empty() {
        put("ip_allowlist", f.ips.clone().into());
    }
    if let Some(o) = &f.owner {
        put("owner", o.as_str().into());
    }
    if let Some(m) = &f.metadata {
        put("metadata", Value::Object(m.clone()));
    }
    if let Some(rl) = &f.rate_limit {
        put("rate_limit", rl.to_json());
    }
    if let Some(q) = &f.quota {
        put("quota", q.to_json());
    }
    Ok(body)
}

/// The PATCH body: the fields given, `null` for the `--no-*` flags, `[]` for `--clear-scopes`
/// and `--clear-ips` (an empty list is what "no scopes" and "any address" are in the key object,
/// so it is accepted however the server treats `null` for a list).
pub(super) fn update_body(
    name: Option<&str>,
    fields: &KeyFields,
    c: &ClearFlags,
    now: OffsetDateTime,
) -> Result<Map<String, Value>, Failure> {
    let mut body = key_fields_body(name, fields, now)?;
    let clears = [
        (c.no_description, "description", Value::Null),
        (c.clear_scopes, "scopes", Value::Array(Vec::new())),
        (c.no_role, "role", Value::Null),
        (c.no_expiry, "expires_at", Value::Null),
        (c.clear_ips, "ip_allowlist", Value::Array(Vec::new())),
        (c.no_owner, "owner", Value::Null),
        (c.no_metadata, "metadata", Value::Null),
        (c.no_rate_limit, "rate_limit", Value::Null),
        (c.no_quota, "quota", Value::Null),
    ];
    for (set, field, value) in clears {
        if set {
            body.insert(field.into(), value);
        }
    }
    if body.is_empty() {
        return Err(Failure::Usage(
            "nothing to update: give at least one field to change (see --help)".into(),
        ));
    }
    Ok(body)
}

/// `now + d` as RFC 3339 UTC, to the second.
fn expiry_after(now: OffsetDateTime, d: Duration) -> Result<String, Failure> {
    let too_far = || Failure::Usage("--expires-in is too far in the future".into());
    let at = time::Duration::try_from(d)
        .ok()
        .and_then(|d| now.checked_add(d))
        .ok_or_else(too_far)?;
    at.replace_nanosecond(0)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .ok_or_else(too_far)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::cli::EXIT_USAGE;
    use crate::cli::keys::KeysCommand;
    use crate::cli::keys::UpdateArgs;
    use crate::cli::keys::tests::{parse, parse_err};

    /// The PATCH body of parsed `keys update` arguments.
    fn patch(a: &UpdateArgs) -> Result<Map<String, Value>, Failure> {
        update_body(
            a.name.as_deref(),
            &a.fields,
            &a.clear,
            OffsetDateTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn create_takes_every_field_and_sends_only_those_given() {
        let k = parse(&[
            "create",
            "--name",
            "Production server",
            "--description",
            "deploys",
            "--scope",
            "sessions:read",
            "--scope",
            "sessions:write",
            "--role",
            "viewer",
            "--expires-in",
            "90d",
            "--ip",
            "203.0.113.7",
            "--ip",
            "10.0.0.0/8",
            "--owner",
            "cust_42",
            "--metadata",
            r#"{"team":"payments"}"#,
            "--rate-limit",
            "100/1s:200",
            "--quota",
            "10000/monthly:15",
        ])
        .unwrap();
        let KeysCommand::Create(a) = k.command else {
            panic!("create")
        };
        let now = datetime!(2026-11-23 12:00:00.123 UTC);
        let body = Value::Object(key_fields_body(Some(&a.name), &a.fields, now).unwrap());
        assert_eq!(
            body,
            serde_json::json!({
                "name": "Production server",
                "description": "deploys",
                "scopes": ["sessions:read", "sessions:write"],
                "role": "viewer",
                "expires_at": "2027-02-21T12:00:00Z",
                "ip_allowlist": ["203.0.113.7", "10.0.0.0/8"],
                "owner": "cust_42",
                "metadata": {"team": "payments"},
                "rate_limit": {"requests": 100, "period": "1s", "burst": 200},
                "quota": {"limit": 10000, "refill": "monthly", "refill_day": 15},
            })
        );
        let k = parse(&["create", "--name", "n"]).unwrap();
        let KeysCommand::Create(a) = k.command else {
            panic!("create")
        };
        let body = key_fields_body(Some(&a.name), &a.fields, now).unwrap();
        assert_eq!(Value::Object(body), serde_json::json!({"name": "n"}));
    }

    #[test]
    fn create_refuses_bad_values_as_usage_errors() {
        use clap::error::ErrorKind::*;
        assert_eq!(parse_err(&["create"]), MissingRequiredArgument);
        for bad in [
            &["--expires-at", "2027-01-01"][..],
            &["--expires-in", "soon"],
            &["--expires-in", "0s"],
            &["--ip", "10.0.0.300"],
            &["--metadata", "[1]"],
            &["--metadata", "{"],
            &["--rate-limit", "100"],
            &["--rate-limit", "0/1s"],
            &["--rate-limit", "100/0s"],
            &["--rate-limit", "100/1s:x"],
            &["--quota", "10000"],
            &["--quota", "10000/weekly"],
            &["--quota", "500/daily:2"],
            &["--quota", "10000/monthly:31"],
        ] {
            let mut args = vec!["create", "--name", "n"];
            args.extend_from_slice(bad);
            assert_eq!(parse_err(&args), ValueValidation, "{bad:?}");
        }
        assert_eq!(
            parse_err(&[
                "create",
                "--name",
                "n",
                "--expires-at",
                "2027-01-01T00:00:00Z",
                "--expires-in",
                "1d"
            ]),
            ArgumentConflict
        );
        assert_eq!(parse_err(&["list", "--limit", "0"]), ValueValidation);
        assert_eq!(parse_err(&["list", "--limit", "101"]), ValueValidation);
        assert_eq!(parse_err(&["list", "--status", "gone"]), InvalidValue);
        assert_eq!(parse_err(&["--timeout", "0s", "list"]), ValueValidation);
    }

    #[test]
    fn update_sends_only_the_given_fields_and_clears_with_null_or_empty_lists() {
        let k = parse(&[
            "update",
            "key_abc",
            "--name",
            "renamed",
            "--clear-scopes",
            "--no-role",
            "--no-expiry",
            "--clear-ips",
            "--no-description",
            "--no-owner",
            "--no-metadata",
            "--no-rate-limit",
            "--no-quota",
        ])
        .unwrap();
        let KeysCommand::Update(a) = k.command else {
            panic!("update")
        };
        assert_eq!(a.id, "key_abc");
        let body = patch(&a).unwrap();
        assert_eq!(
            Value::Object(body),
            serde_json::json!({
                "name": "renamed",
                "description": null,
                "scopes": [],
                "role": null,
                "expires_at": null,
                "ip_allowlist": [],
                "owner": null,
                "metadata": null,
                "rate_limit": null,
                "quota": null,
            })
        );
        let k = parse(&[
            "update",
            "key_abc",
            "--role",
            "viewer",
            "--scope",
            "a",
            "--quota",
            "500/daily",
        ])
        .unwrap();
        let KeysCommand::Update(a) = k.command else {
            panic!("update")
        };
        let body = patch(&a).unwrap();
        assert_eq!(
            Value::Object(body),
            serde_json::json!({
                "role": "viewer",
                "scopes": ["a"],
                "quota": {"limit": 500, "refill": "daily"},
            })
        );
    }

    #[test]
    fn update_refuses_contradictions_and_empty_changes() {
        use clap::error::ErrorKind::*;
        for pair in [
            ["--role", "viewer", "--no-role"],
            ["--scope", "a", "--clear-scopes"],
            ["--ip", "10.0.0.1", "--clear-ips"],
            ["--expires-in", "1d", "--no-expiry"],
            ["--owner", "o", "--no-owner"],
            ["--quota", "1/none", "--no-quota"],
            ["--rate-limit", "1/1s", "--no-rate-limit"],
        ] {
            let mut args = vec!["update", "key_abc"];
            args.extend_from_slice(&pair);
            assert_eq!(parse_err(&args), ArgumentConflict, "{pair:?}");
        }
        let k = parse(&["update", "key_abc"]).unwrap();
        let KeysCommand::Update(a) = k.command else {
            panic!("update")
        };
        let e = patch(&a).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_USAGE);
    }

    #[test]
    fn expiry_after_is_rfc3339_to_the_second_and_never_panics() {
        let now = datetime!(2026-11-23 12:00:00.5 UTC);
        assert_eq!(
            expiry_after(now, Duration::from_secs(3600)).unwrap(),
            "2026-11-23T13:00:00Z"
        );
        assert!(expiry_after(now, Duration::from_secs(u64::MAX)).is_err());
    }
}
