//! `keygate keys logs` and `keygate keys usage`: what a key was used for. Logs are the key's
//! recent requests (forwarded ones and those refused after the key was recognised, each with its
//! code); usage is its forwarded requests per UTC day.

use serde::Deserialize;
use serde_json::Value;

use crate::cli::Failure;
use crate::cli::client;
use crate::cli::render::{self, sanitize, table};
use crate::cli::session::Session;

/// Widest PATH shown; `--json` has the whole path.
const PATH_WIDTH: usize = 48;

/// `keys logs ID [--limit N]`.
pub(super) async fn logs(
    session: &Session,
    key_path: &str,
    limit: Option<u32>,
) -> Result<(), Failure> {
    let limit = limit.map(|n| n.to_string());
    let path = format!(
        "{key_path}/logs{}",
        client::query(&[("limit", limit.as_deref())])
    );
    let answer = session.get(&path).await?;
    session.print(&answer, logs_table)
}

/// `keys usage ID [--days N]`.
pub(super) async fn usage(
    session: &Session,
    key_path: &str,
    days: Option<u32>,
) -> Result<(), Failure> {
    let days = days.map(|n| n.to_string());
    let path = format!(
        "{key_path}/usage{}",
        client::query(&[("days", days.as_deref())])
    );
    let answer = session.get(&path).await?;
    session.print(&answer, usage_table)
}

/// A request log entry as the CLI reads it; every field optional, unknown ones ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LogEntry {
    time: Option<String>,
    method: Option<String>,
    path: Option<String>,
    status: Option<u16>,
    code: Option<String>,
    client_ip: Option<String>,
    latency_ms: Option<f64>,
}

/// The answer of `…/logs` (`{"entries": [...]}`) as a table: TIME, METHOD, PATH, STATUS, CODE,
/// CLIENT IP, LATENCY.
fn logs_table(answer: &Value) -> Result<String, Failure> {
    let entries = array(answer, "entries")?;
    if entries.is_empty() {
        return Ok("No requests logged.\n".into());
    }
    let rows = entries
        .iter()
        .map(|e| {
            let e = LogEntry::deserialize(e)
                .map_err(|e| Failure::Unexpected(format!("a log entry that is not one: {e}")))?;
            let text = |s: Option<&str>| s.map_or_else(|| "-".into(), sanitize);
            Ok(vec![
                render::when_to_second(e.time.as_deref(), "-"),
                text(e.method.as_deref()),
                render::clip(&text(e.path.as_deref()), PATH_WIDTH),
                e.status.map_or_else(|| "-".into(), |s| s.to_string()),
                text(e.code.as_deref()),
                text(e.client_ip.as_deref()),
                e.latency_ms
                    .map_or_else(|| "-".into(), |ms| format!("{ms:.1} ms")),
            ])
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    Ok(table(
        &[
            "TIME",
            "METHOD",
            "PATH",
            "STATUS",
            "CODE",
            "CLIENT IP",
            "LATENCY",
        ],
        rows,
        &[3, 6],
    ))
}

/// The answer of `…/usage` (`{"days": [{"date", "requests"}...]}`) as a table of days and
/// requests, oldest first, and a total.
fn usage_table(answer: &Value) -> Result<String, Failure> {
    let days = array(answer, "days")?;
    let mut total: u64 = 0;
    let mut rows = Vec::with_capacity(days.len() + 1);
    for day in days {
        let (Some(date), Some(requests)) = (
            day.get("date").and_then(Value::as_str),
            day.get("requests").and_then(Value::as_u64),
        ) else {
            return Err(Failure::Unexpected(format!(
                "a usage day without a date or a request count: {}",
                sanitize(&day.to_string())
            )));
        };
        total = total.saturating_add(requests);
        rows.push(vec![sanitize(date), requests.to_string()]);
    }
    rows.push(vec!["Total".into(), total.to_string()]);
    Ok(table(&["DATE", "REQUESTS"], rows, &[1]))
}

/// The array `field` of an answer.
fn array<'a>(answer: &'a Value, field: &str) -> Result<&'a [Value], Failure> {
    match answer.get(field) {
        Some(Value::Array(items)) => Ok(items),
        _ => Err(Failure::Unexpected(format!(
            "an answer without an `{field}` array"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn logs_show_each_request_with_its_code_newest_first_as_sent() {
        let answer = json!({"entries": [
            {"time": "2026-12-01T10:00:05.25Z", "method": "GET", "path": "/api/v1/sessions",
             "status": 429, "client_ip": "127.0.0.1", "latency_ms": 0.42, "code": "rate_limited"},
            {"time": "2026-12-01T09:59:59Z", "method": "POST", "path": "/api/v1/sessions/x",
             "status": 201, "client_ip": "2001:db8::1", "latency_ms": 12.345, "code": "forwarded"},
        ]});
        let out = logs_table(&answer).unwrap();
        let expected = "\
TIME                 METHOD  PATH                STATUS  CODE          CLIENT IP    LATENCY
2026-12-01 10:00:05  GET     /api/v1/sessions       429  rate_limited  127.0.0.1     0.4 ms
2026-12-01 09:59:59  POST    /api/v1/sessions/x     201  forwarded     2001:db8::1  12.3 ms
";
        assert_eq!(out, expected);
        assert_eq!(
            logs_table(&json!({"entries": []})).unwrap(),
            "No requests logged.\n"
        );
        assert_eq!(logs_table(&json!({})).unwrap_err().exit_code(), 6);
    }

    #[test]
    fn log_paths_cannot_drive_the_terminal_or_widen_the_table() {
        let path = format!("/x\u{1b}[2J{}", "a".repeat(100));
        let out = logs_table(&json!({"entries": [{"path": path}]})).unwrap();
        assert!(!out.contains('\u{1b}'), "{out:?}");
        let row = out.lines().nth(1).unwrap();
        assert!(row.contains('…'), "{row}");
        assert!(!row.contains(&"a".repeat(PATH_WIDTH)), "{row}");
    }

    #[test]
    fn usage_lists_every_day_and_the_total() {
        let answer = json!({"days": [
            {"date": "2026-11-30", "requests": 0},
            {"date": "2026-12-01", "requests": 7},
            {"date": "2026-12-02", "requests": 1234},
        ]});
        let expected = "\
DATE        REQUESTS
2026-11-30         0
2026-12-01         7
2026-12-02      1234
Total           1241
";
        assert_eq!(usage_table(&answer).unwrap(), expected);
        let bad = json!({"days": [{"date": "2026-12-01"}]});
        assert_eq!(usage_table(&bad).unwrap_err().exit_code(), 6);
    }
}
