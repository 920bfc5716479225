//! `keygate keys import`: its arguments, the secret read from stdin for a single import, and
//! bulk import (`--file keys.jsonl`): one `POST …/keys/import` per line, in file order, one
//! report line per input line, and a summary.
//!
//! A line that fails on its own (bad JSON, `invalid_request`, `key_exists`, `forbidden`, …) is
//! reported and the next line is sent. A failure that every later line would meet as well — the
//! admin API unreachable or failing (5xx), the token refused (401), the workspace unknown (404) or
//! without API access (`upgrade_required`) — stops the import at once with its own exit code,
//! rather than printing the same error for every remaining line. Re-running the same file after
//! fixing the cause is safe: lines already imported answer `key_exists`.
//!
//! Lines are never echoed: they hold secrets.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use clap::{ArgGroup, Args};
use http::Method;
use serde_json::{Map, Value, json};

use super::args::parse_sha256;
use super::client::{AdminClient, ApiError};
use super::keys::fields::KeyFields;
use super::{Failure, render, write_stdout};

/// Longest line read. The API refuses bodies over 64 KiB, so a longer line can only fail; reading
/// no more of it keeps a file without newlines from filling memory.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// `keys import`. A plaintext secret is never an argument: arguments show in `ps`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["secret_stdin", "sha256", "file"])))]
pub(super) struct ImportArgs {
    /// Display name (1–100 characters).
    #[arg(long, required_unless_present = "file")]
    pub(super) name: Option<String>,
    #[command(flatten)]
    pub(super) fields: KeyFields,
    /// Read the secret from stdin (one line); it is hashed by the gateway and never stored.
    #[arg(long)]
    pub(super) secret_stdin: bool,
    /// The hex SHA-256 of the secret, for systems that kept only that.
    #[arg(long, value_name = "HEX", value_parser = parse_sha256)]
    pub(super) sha256: Option<String>,
    /// The displayed start of the secret (for --sha256 imports, where the gateway cannot see it).
    // `conflicts_with` as well as `requires`: clap counts a requirement as met when the required
    // argument conflicts with one that is present (here --secret-stdin, via the group).
    #[arg(long, requires = "sha256", conflicts_with = "secret_stdin")]
    pub(super) prefix: Option<String>,
    /// Bulk import: one JSON object per line with the import body fields (`name`, `secret` or
    /// `sha256`, and any others); `#` lines and blank lines are skipped; `-` reads stdin.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = [
            "name", "description", "scopes", "role", "expires_at", "expires_in", "ips", "owner",
            "metadata", "rate_limit", "quota", "prefix",
        ]
    )]
    pub(super) file: Option<PathBuf>,
}

/// Longest secret accepted on stdin; the API takes at most 256 characters.
const MAX_STDIN_SECRET: u64 = 4096;

/// The secret for `import --secret-stdin`: one line, surrounding whitespace removed (imported
/// secrets are printable characters without spaces). Never echoed back in any message.
pub(super) fn read_secret_from_stdin() -> Result<String, Failure> {
    let stdin = io::stdin();
    let mut text = String::new();
    let read = if stdin.is_terminal() {
        // No dependency to turn echo off; say so, and say how to avoid it.
        eprint!("Secret to import (shown as you type; pipe it in to keep it off the screen): ");
        let _ = io::stderr().flush();
        stdin.lock().read_line(&mut text)
    } else {
        stdin
            .lock()
            .take(MAX_STDIN_SECRET)
            .read_to_string(&mut text)
    };
    read.map_err(|e| Failure::Usage(format!("cannot read the secret from stdin: {e}")))?;
    secret_from_text(&text)
}

/// Checks what was read for `--secret-stdin` (messages never include the text).
fn secret_from_text(text: &str) -> Result<String, Failure> {
    let secret = text.trim();
    if secret.is_empty() {
        return Err(Failure::Usage(
            "--secret-stdin: stdin held no secret".into(),
        ));
    }
    if secret.chars().any(char::is_whitespace) {
        return Err(Failure::Usage(
            "--secret-stdin: expected one secret on one line without spaces (use --file for many keys)"
                .into(),
        ));
    }
    Ok(secret.to_owned())
}

/// Sends every line of `file` (`-` = stdin) to `path` and reports each.
pub(super) async fn run(
    client: &AdminClient,
    path: &str,
    file: &Path,
    json: bool,
) -> Result<(), Failure> {
    let cannot_read = |e: io::Error| Failure::Usage(format!("cannot read {}: {e}", file.display()));
    let mut reader: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        Box::new(BufReader::new(File::open(file).map_err(cannot_read)?))
    };
    let (mut imported, mut failed) = (0usize, 0usize);
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    while let Some(read) = read_line_capped(&mut reader, &mut buf).map_err(cannot_read)? {
        line_no += 1;
        let line = match read {
            LineRead::Line => parse_line(&buf),
            LineRead::TooLong => Line::Malformed(format!(
                "longer than {} KiB (the API's body limit)",
                MAX_LINE_BYTES / 1024
            )),
        };
        let outcome = match line {
            Line::Skip => continue,
            Line::Malformed(why) => {
                Outcome::Failed(json!({"code": "invalid_line", "message": why}))
            }
            Line::Body(body) => {
                match client
                    .call(Method::POST, path, Some(&Value::Object(body)))
                    .await
                {
                    Ok(Some(key)) => Outcome::Imported(key),
                    Err(Failure::Api(e)) if !stops_import(&e) => {
                        Outcome::Failed(api_error_json(&e))
                    }
                    Ok(None) => {
                        Outcome::Stop(Failure::Unexpected("an empty answer to an import".into()))
                    }
                    Err(other) => Outcome::Stop(other),
                }
            }
        };
        write_stdout(&report(line_no, &outcome, json))?;
        match outcome {
            Outcome::Imported(_) => imported += 1,
            Outcome::Failed(_) => failed += 1,
            Outcome::Stop(failure) => {
                eprintln!("stopped at line {line_no}: the lines after it were not sent");
                return Err(failure);
            }
        }
    }
    if !json {
        write_stdout(&format!("{imported} imported, {failed} failed.\n"))?;
    }
    if failed > 0 {
        return Err(Failure::ImportIncomplete {
            failed,
            total: imported + failed,
        });
    }
    Ok(())
}

/// Whether an error answer would repeat for every later line (see the module docs).
fn stops_import(e: &ApiError) -> bool {
    !e.status.is_client_error()
        || matches!(e.status.as_u16(), 401 | 404)
        || e.code == "upgrade_required"
}

/// What reading one line gave.
#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// A whole line is in the buffer (with its `\n`, if it had one).
    Line,
    /// The line was longer than [`MAX_LINE_BYTES`]; the rest of it was skipped.
    TooLong,
}

/// Reads the next line into `buf`, at most [`MAX_LINE_BYTES`] of it; `None` at the end.
fn read_line_capped<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>) -> io::Result<Option<LineRead>> {
    buf.clear();
    let cap = u64::try_from(MAX_LINE_BYTES).unwrap_or(u64::MAX) + 1;
    let n = reader.by_ref().take(cap).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() <= MAX_LINE_BYTES || buf.ends_with(b"\n") {
        return Ok(Some(LineRead::Line));
    }
    // Skip to the end of this line without keeping it.
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                break;
            }
            None => {
                let len = chunk.len();
                reader.consume(len);
            }
        }
    }
    buf.clear();
    Ok(Some(LineRead::TooLong))
}

/// One line of the file, understood.
#[derive(Debug, PartialEq)]
enum Line {
    /// Blank, or a `#` comment.
    Skip,
    /// An object to send as the import body.
    Body(Map<String, Value>),
    /// Why the line cannot be sent (never quoting the line: it may hold a secret).
    Malformed(String),
}

fn parse_line(raw: &[u8]) -> Line {
    let Ok(text) = std::str::from_utf8(raw) else {
        return Line::Malformed("not UTF-8 text".into());
    };
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return Line::Skip;
    }
    // Parsed as a generic value first: serde's syntax errors name a column, never the content.
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(body)) => Line::Body(body),
        Ok(_) => Line::Malformed("not a JSON object".into()),
        Err(e) => Line::Malformed(format!("not JSON: {e}")),
    }
}

/// What became of one line.
enum Outcome {
    /// The key object the API answered with.
    Imported(Value),
    /// `{"code", "message", …}`: this line failed, the next is sent.
    Failed(Value),
    /// The import stops here.
    Stop(Failure),
}

fn api_error_json(e: &ApiError) -> Value {
    let mut error = json!({"code": e.code, "message": e.message});
    if let Some(field) = &e.field {
        error["field"] = json!(field);
    }
    if let Some(id) = &e.request_id {
        error["request_id"] = json!(id);
    }
    error
}

/// The report of one line: `line 3: ok key_…` / `line 4: key_exists: …`, or with `--json` one
/// compact object per line (`{"line", "ok", "key" | "error"}`).
fn report(line_no: usize, outcome: &Outcome, json: bool) -> String {
    let stop_error;
    let (key, error) = match outcome {
        Outcome::Imported(key) => (Some(key), None),
        Outcome::Failed(error) => (None, Some(error)),
        Outcome::Stop(failure) => {
            let (code, message) = failure.code_and_message();
            stop_error = match failure {
                Failure::Api(e) => api_error_json(e),
                _ => json!({"code": code, "message": message}),
            };
            (None, Some(&stop_error))
        }
    };
    if json {
        // A struct rather than `json!`, to keep `line` and `ok` first on the line.
        #[derive(serde::Serialize)]
        struct LineResult<'a> {
            line: usize,
            ok: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            key: Option<&'a Value>,
            #[serde(skip_serializing_if = "Option::is_none")]
            error: Option<&'a Value>,
        }
        let line = LineResult {
            line: line_no,
            ok: key.is_some(),
            key,
            error,
        };
        // Serializing borrowed JSON values to a string cannot fail.
        let text = serde_json::to_string(&line).unwrap_or_default();
        return format!("{text}\n");
    }
    if let Some(key) = key {
        let id = key.get("id").and_then(Value::as_str).unwrap_or("-");
        return format!("line {line_no}: ok {}\n", render::sanitize(id));
    }
    let text = |v: Option<&Value>, k: &str| {
        v.and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(render::sanitize)
    };
    let code = text(error, "code").unwrap_or_else(|| "error".into());
    let mut message = text(error, "message").unwrap_or_default();
    if let Some(field) = text(error, "field") {
        message.push_str(&format!(" (field: {field})"));
    }
    format!("line {line_no}: {code}: {message}\n")
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;
    use crate::cli::EXIT_USAGE;

    #[test]
    fn blank_lines_and_comments_are_skipped() {
        for raw in [
            &b""[..],
            b"\n",
            b"   \r\n",
            b"# a comment\n",
            b"  # indented\n",
        ] {
            assert_eq!(parse_line(raw), Line::Skip, "{raw:?}");
        }
    }

    #[test]
    fn objects_are_sent_as_they_are() {
        let Line::Body(body) =
            parse_line(b"{\"name\":\"legacy\",\"secret\":\"edsk_live_abcdefghijklmnop\",\"scopes\":[\"a\"]}\r\n")
        else {
            panic!("body")
        };
        assert_eq!(body["name"], "legacy");
        assert_eq!(body["scopes"], json!(["a"]));
    }

    #[test]
    fn malformed_lines_say_why_without_quoting_the_line() {
        for (raw, why) in [
            (
                &b"{\"secret\": \"hunter2-hunter2-hunter2\", oops}"[..],
                "not JSON",
            ),
            (b"[\"hunter2-hunter2-hunter2\"]", "not a JSON object"),
            (b"\"hunter2-hunter2-hunter2\"", "not a JSON object"),
            (b"{\"secret\": \"hunter2\xff\"}", "not UTF-8"),
            (
                b"{\"secret\": \"hunter2-hunter2-hunter2\"} trailing",
                "not JSON",
            ),
        ] {
            match parse_line(raw) {
                Line::Malformed(m) => {
                    assert!(m.starts_with(why), "{m}");
                    assert!(!m.contains("hunter2"), "{m}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn lines_longer_than_the_cap_are_skipped_whole() {
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let text = format!("{{\"a\":1}}\n{long}\n# after\n{long}");
        let mut reader = io::Cursor::new(text.into_bytes());
        let mut buf = Vec::new();
        assert_eq!(
            read_line_capped(&mut reader, &mut buf).unwrap(),
            Some(LineRead::Line)
        );
        assert_eq!(buf, b"{\"a\":1}\n");
        assert_eq!(
            read_line_capped(&mut reader, &mut buf).unwrap(),
            Some(LineRead::TooLong)
        );
        assert!(buf.is_empty());
        assert_eq!(
            read_line_capped(&mut reader, &mut buf).unwrap(),
            Some(LineRead::Line)
        );
        assert_eq!(buf, b"# after\n");
        assert_eq!(
            read_line_capped(&mut reader, &mut buf).unwrap(),
            Some(LineRead::TooLong)
        );
        assert_eq!(read_line_capped(&mut reader, &mut buf).unwrap(), None);
        // Exactly at the cap, without a newline, is still a line.
        let mut reader = io::Cursor::new("y".repeat(MAX_LINE_BYTES).into_bytes());
        assert_eq!(
            read_line_capped(&mut reader, &mut buf).unwrap(),
            Some(LineRead::Line)
        );
        assert_eq!(buf.len(), MAX_LINE_BYTES);
    }

    fn api(status: u16, code: &str) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(status).unwrap(),
            code: code.into(),
            message: "m".into(),
            field: None,
            request_id: None,
        }
    }

    #[test]
    fn only_failures_every_line_would_meet_stop_the_import() {
        for (status, code) in [
            (400, "invalid_request"),
            (403, "forbidden"),
            (409, "key_exists"),
            (409, "key_limit_reached"),
            (413, "payload_too_large"),
        ] {
            assert!(!stops_import(&api(status, code)), "{code}");
        }
        for (status, code) in [
            (401, "unauthorized"),
            (403, "upgrade_required"),
            (404, "not_found"),
            (500, "http_500"),
            (503, "store_unavailable"),
        ] {
            assert!(stops_import(&api(status, code)), "{code}");
        }
    }

    #[test]
    fn reports_read_one_line_per_input_line() {
        let ok = Outcome::Imported(json!({"id": "key_abc", "name": "n"}));
        assert_eq!(report(3, &ok, false), "line 3: ok key_abc\n");
        let mut e = api(409, "key_exists");
        e.message = "this secret is already a key".into();
        e.request_id = Some("r1".into());
        let failed = Outcome::Failed(api_error_json(&e));
        assert_eq!(
            report(4, &failed, false),
            "line 4: key_exists: this secret is already a key\n"
        );
        let mut e = api(400, "invalid_request");
        e.field = Some("name".into());
        let failed = Outcome::Failed(api_error_json(&e));
        assert_eq!(
            report(5, &failed, false),
            "line 5: invalid_request: m (field: name)\n"
        );
        let malformed =
            Outcome::Failed(json!({"code": "invalid_line", "message": "not a JSON object"}));
        assert_eq!(
            report(6, &malformed, false),
            "line 6: invalid_line: not a JSON object\n"
        );
        let stop = Outcome::Stop(Failure::Unreachable("http://127.0.0.1:1: refused".into()));
        assert_eq!(
            report(7, &stop, false),
            "line 7: unreachable: cannot reach the admin API at http://127.0.0.1:1: refused\n"
        );
    }

    #[test]
    fn json_reports_are_one_object_per_line() {
        let ok = Outcome::Imported(json!({"id": "key_abc"}));
        let line = report(3, &ok, true);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        assert!(line.starts_with(r#"{"line":3,"ok":true,"key":"#), "{line}");
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap(),
            json!({"line": 3, "ok": true, "key": {"id": "key_abc"}})
        );
        let mut e = api(409, "key_exists");
        e.request_id = Some("r1".into());
        let line = report(4, &Outcome::Failed(api_error_json(&e)), true);
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap(),
            json!({"line": 4, "ok": false, "error": {"code": "key_exists", "message": "m", "request_id": "r1"}})
        );
        let line = report(
            5,
            &Outcome::Stop(Failure::Api(api(401, "unauthorized"))),
            true,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap(),
            json!({"line": 5, "ok": false, "error": {"code": "unauthorized", "message": "m"}})
        );
    }

    #[test]
    fn secrets_from_stdin_are_one_trimmed_line() {
        assert_eq!(
            secret_from_text("edsk_live_0123456789abcdef\n").unwrap(),
            "edsk_live_0123456789abcdef"
        );
        assert_eq!(secret_from_text("  abc\r\n").unwrap(), "abc");
        for bad in ["", "\n", "a b", "one\ntwo\n"] {
            let e = secret_from_text(bad).unwrap_err();
            assert_eq!(e.exit_code(), EXIT_USAGE);
        }
        let e = secret_from_text("hunter2-hunter2 x").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
