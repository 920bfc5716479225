//! Parsers of argument values shared by the commands: each checks a value as the admin API will,
//! so a mistake is a usage error (exit 2) before any request, and passes it on as typed where the
//! API reads the same syntax.

use std::time::Duration;

use keygate::config::duration_text::parse as parse_duration_text;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `--rate-limit`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RateLimitArg {
    pub(super) requests: u32,
    /// As typed (a valid, non-zero duration); the API takes the same duration syntax.
    pub(super) period: String,
    pub(super) burst: Option<u32>,
}

/// A non-zero duration (`--expires-in`, `--timeout`).
pub(super) fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration_text(s)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

/// `--grace`: any duration, passed on as typed (the API reads the same syntax).
pub(super) fn parse_grace(s: &str) -> Result<String, String> {
    parse_duration_text(s).map(|_| s.trim().to_owned())
}

/// `--expires-at`: RFC 3339, passed on as typed; the API checks it is in the future.
pub(super) fn parse_rfc3339(s: &str) -> Result<String, String> {
    OffsetDateTime::parse(s.trim(), &Rfc3339)
        .map(|_| s.trim().to_owned())
        .map_err(|e| format!("not an RFC 3339 time like 2027-01-01T00:00:00Z: {e}"))
}

/// `--ip`: an IPv4/IPv6 address or CIDR, checked as the API will, passed on as typed.
pub(super) fn parse_ip(s: &str) -> Result<String, String> {
    keygate::config::ip_list::parse(s).map(|_| s.trim().to_owned())
}

/// `--metadata`: a JSON object.
pub(super) fn parse_metadata(s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("must be a JSON object, e.g. '{\"team\":\"payments\"}'".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// `--rate-limit REQUESTS/PERIOD[:BURST]`.
pub(super) fn parse_rate_limit(s: &str) -> Result<RateLimitArg, String> {
    let shape = "expected REQUESTS/PERIOD[:BURST], e.g. 100/1s or 100/1s:200";
    let (requests, rest) = s.trim().split_once('/').ok_or(shape)?;
    let (period, burst) = match rest.split_once(':') {
        Some((p, b)) => (p, Some(b)),
        None => (rest, None),
    };
    let requests = match requests.trim().parse::<u32>() {
        Ok(n) if n > 0 => n,
        _ => return Err(format!("requests must be a whole number above 0; {shape}")),
    };
    parse_positive_duration(period).map_err(|e| format!("period: {e}; {shape}"))?;
    let burst = match burst {
        None => None,
        Some(b) => match b.trim().parse::<u32>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(format!("burst must be a whole number above 0; {shape}")),
        },
    };
    Ok(RateLimitArg {
        requests,
        period: period.trim().to_owned(),
        burst,
    })
}

/// `--sha256`: 64 hex digits, sent in lower case.
pub(super) fn parse_sha256(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err("expected the 64 hex digits of a SHA-256".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse_with_and_without_burst() {
        assert_eq!(
            parse_rate_limit("100/1s").unwrap(),
            RateLimitArg {
                requests: 100,
                period: "1s".into(),
                burst: None
            }
        );
        assert_eq!(
            parse_rate_limit(" 5/1m:10 ").unwrap(),
            RateLimitArg {
                requests: 5,
                period: "1m".into(),
                burst: Some(10)
            }
        );
        assert!(parse_rate_limit("x/1s").is_err());
        assert!(parse_rate_limit("1/1s:0").is_err());
    }
}
