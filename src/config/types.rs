//! Type problems of a whole file at once: each section is read apart (and each route, upstream
//! and workspace apart within its section), so that one wrong value does not hide the next. The
//! typed [`Config`](super::Config) is read in one go once this finds nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::{
    Admin, AuthConfig, CacheConfig, Forward, KeyFormat, Limits, Listen, Log, Problem, Quotas,
    RateLimits, Route, Secrets, StoreConfig, TlsFiles, Upstream, Usage, Workspace, duration_text,
    ip_list,
};

/// A duration field read on its own.
#[derive(Deserialize)]
#[allow(dead_code, reason = "read only to check its type")]
struct DurationField(#[serde(with = "duration_text")] Duration);

/// An address list read on its own.
#[derive(Deserialize)]
#[allow(dead_code, reason = "read only to check its type")]
struct Networks(#[serde(with = "ip_list")] Vec<ipnet::IpNet>);

/// Sections the file must have.
const REQUIRED: [&str; 3] = ["secrets", "upstreams", "routes"];

/// Every type problem of the document `value` (empty when it reads as a config).
pub(super) fn problems(value: &Value) -> Vec<Problem> {
    let mut out = Vec::new();
    let Value::Mapping(map) = value else {
        out.push(problem(
            String::new(),
            "the file must be a mapping of sections (listen:, routes:, …)".into(),
        ));
        return out;
    };
    for (key, v) in map {
        let Some(name) = key.as_str() else {
            out.push(problem(format!("{key:?}"), "section names are text".into()));
            continue;
        };
        let at = name.to_owned();
        match name {
            "listen" => check::<Listen>(&at, v, &mut out),
            "tls" | "admin_tls" => check::<Option<TlsFiles>>(&at, v, &mut out),
            "store" => check::<StoreConfig>(&at, v, &mut out),
            "secrets" => check::<Secrets>(&at, v, &mut out),
            "keys" => check::<KeyFormat>(&at, v, &mut out),
            "auth" => check::<AuthConfig>(&at, v, &mut out),
            "cache" => check::<CacheConfig>(&at, v, &mut out),
            "trusted_proxies" => check::<Networks>(&at, v, &mut out),
            "scopes" => check::<BTreeMap<String, String>>(&at, v, &mut out),
            "roles" => check::<BTreeMap<String, Vec<String>>>(&at, v, &mut out),
            "workspaces" => each_entry::<Workspace>(&at, v, &mut out),
            "rate_limits" => check::<RateLimits>(&at, v, &mut out),
            "quotas" => check::<Quotas>(&at, v, &mut out),
            "upstreams" => each_entry::<Upstream>(&at, v, &mut out),
            "routes" => match v {
                Value::Sequence(items) => {
                    for (i, item) in items.iter().enumerate() {
                        check::<Route>(&format!("routes[{i}]"), item, &mut out);
                    }
                }
                other => check::<Vec<Route>>(&at, other, &mut out),
            },
            "forward" => check::<Forward>(&at, v, &mut out),
            "usage" => check::<Usage>(&at, v, &mut out),
            "admin" => check::<Admin>(&at, v, &mut out),
            "limits" => check::<Limits>(&at, v, &mut out),
            "shutdown_timeout" | "shutdown_delay" => check::<DurationField>(&at, v, &mut out),
            "log" => check::<Log>(&at, v, &mut out),
            "webhooks" => check::<Vec<super::webhooks::Webhook>>(&at, v, &mut out),
            "leaks" => check::<super::leaks::Leaks>(&at, v, &mut out),
            other => out.push(problem(
                other.to_owned(),
                format!("unknown section `{other}`"),
            )),
        }
    }
    for section in REQUIRED {
        if !map.contains_key(section) {
            out.push(problem(
                String::new(),
                format!("the `{section}` section is missing"),
            ));
        }
    }
    out
}

fn problem(path: String, message: String) -> Problem {
    Problem {
        path,
        line: None,
        message,
    }
}

/// Reads `value` as a `T`, adding its first problem (with the path below `at`) to `out`.
fn check<T: DeserializeOwned>(at: &str, value: &Value, out: &mut Vec<Problem>) {
    if let Err(e) = serde_path_to_error::deserialize::<_, T>(value.clone()) {
        let inner = e.path().to_string();
        let path = match inner.as_str() {
            "." => at.to_owned(),
            p if p.starts_with('[') => format!("{at}{p}"),
            p => format!("{at}.{p}"),
        };
        out.push(problem(path, e.into_inner().to_string()));
    }
}

/// A mapping of named entries (`upstreams:`, `workspaces:`), each read apart.
fn each_entry<T: DeserializeOwned>(at: &str, value: &Value, out: &mut Vec<Problem>) {
    match value {
        Value::Mapping(entries) => {
            for (name, entry) in entries {
                let name = name
                    .as_str()
                    .map_or_else(|| format!("{name:?}"), str::to_owned);
                check::<T>(&format!("{at}.{name}"), entry, out);
            }
        }
        other => check::<BTreeMap<String, T>>(at, other, out),
    }
}
