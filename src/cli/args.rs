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

impl RateLimitArg {
    /// The API's rate limit object: `{"requests", "period", "burst"?}`.
    pub(super) fn to_json(&self) -> Value {
        let mut limit = Map::new();
        limit.insert("requests".into(), self.requests.into());
        limit.insert("period".into(), self.period.as_str().into());
        if let Some(b) = self.burst {
            limit.insert("burst".into(), b.into());
        }
        Value::Object(limit)
    }
}

/// `--quota`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct QuotaArg {
    pub(super) limit: u64,
    /// `none`, `daily` or `monthly`.
    pub(super) refill: &'static str,
    /// Only with `monthly`: 1–28 (every month has those days).
    pub(super) refill_day: Option<u8>,
}

impl QuotaArg {
    /// The API's quota object: `{"limit", "refill", "refill_day"?}`.
    pub(super) fn to_json(&self) -> Value {
        let mut quota = Map::new();
        quota.insert("limit".into(), self.limit.into());
        quota.insert("refill".into(), self.refill.into());
        if let Some(d) = self.refill_day {
            quota.insert("refill_day".into(), d.into());
        }
        Value::Object(quota)
    }
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

/// `--quota LIMIT/REFILL[:DAY]`: `10000/monthly`, `10000/monthly:15`, `500/daily`, `100/none`
/// (never refills). The day is checked as the API checks it (1–28, monthly only).
pub(super) fn parse_quota(s: &str) -> Result<QuotaArg, String> {
    let shape = "expected LIMIT/REFILL[:DAY] with REFILL none, daily or monthly, e.g. \
                 10000/monthly, 10000/monthly:15 or 500/daily";
    let (limit, rest) = s.trim().split_once('/').ok_or(shape)?;
    let limit = limit
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("limit must be a whole number; {shape}"))?;
    let (refill, day) = match rest.split_once(':') {
        Some((r, d)) => (r.trim(), Some(d.trim())),
        None => (rest.trim(), None),
    };
    let refill = match refill.to_ascii_lowercase().as_str() {
        "none" => "none",
        "daily" => "daily",
        "monthly" => "monthly",
        _ => return Err(format!("unknown refill `{refill}`; {shape}")),
    };
    let refill_day = match day {
        None => None,
        Some(_) if refill != "monthly" => {
            return Err(format!("a refill day is only for monthly quotas; {shape}"));
        }
        Some(d) => match d.parse::<u8>() {
            Ok(n) if (1..=28).contains(&n) => Some(n),
            _ => return Err(format!("the refill day must be 1–28; {shape}")),
        },
    };
    Ok(QuotaArg {
        limit,
        refill,
        refill_day,
    })
}

/// `--metadata KEY=VALUE` of `workspaces set`: a key (not empty) and a string value.
pub(super) fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err("expected KEY=VALUE, e.g. plan=pro".into()),
    }
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
        assert_eq!(
            parse_rate_limit("100/1s:200").unwrap().to_json(),
            serde_json::json!({"requests": 100, "period": "1s", "burst": 200})
        );
    }

    #[test]
    fn quotas_parse_into_the_apis_shape() {
        for (arg, json) in [
            (
                "10000/monthly",
                serde_json::json!({"limit": 10000, "refill": "monthly"}),
            ),
            (
                " 10000/Monthly:15 ",
                serde_json::json!({"limit": 10000, "refill": "monthly", "refill_day": 15}),
            ),
            (
                "500/daily",
                serde_json::json!({"limit": 500, "refill": "daily"}),
            ),
            (
                "100/none",
                serde_json::json!({"limit": 100, "refill": "none"}),
            ),
            ("0/none", serde_json::json!({"limit": 0, "refill": "none"})),
        ] {
            assert_eq!(parse_quota(arg).unwrap().to_json(), json, "{arg}");
        }
        for bad in [
            "10000",
            "10000/weekly",
            "-1/daily",
            "many/daily",
            "10/daily:3",
            "10/none:1",
            "10/monthly:0",
            "10/monthly:29",
            "10/monthly:x",
        ] {
            assert!(parse_quota(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_pairs_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_key_value("plan=pro").unwrap(),
            ("plan".into(), "pro".into())
        );
        assert_eq!(
            parse_key_value("url=a=b").unwrap(),
            ("url".into(), "a=b".into())
        );
        assert_eq!(
            parse_key_value("note=").unwrap(),
            ("note".into(), "".into())
        );
        assert!(parse_key_value("plan").is_err());
        assert!(parse_key_value("=pro").is_err());
    }
}

/// Paging of a list command (`keys list`, `audit`).
#[derive(Debug, clap::Args)]
pub(super) struct Paging {
    /// Entries per page (1–100; the API's default is 50).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(super) limit: Option<u32>,
    /// Start at this page cursor (the `next_cursor` of an earlier page).
    #[arg(long)]
    pub(super) cursor: Option<String>,
    /// Follow `next_cursor` to the last page.
    #[arg(long)]
    pub(super) all: bool,
}
