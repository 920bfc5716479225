//! How the CLI shows things to people: the table layout every command uses, the key table, the
//! one-key view, the one-time secret, and the text helpers (times, limits, [`sanitize`]).
//! Everything here is a pure function from JSON to text, so it is tested without a server.
//!
//! Text from the API (names, messages) goes through [`sanitize`] first: a key name is chosen by
//! whoever created the key, and must not be able to move the cursor or recolour the terminal of
//! whoever lists it.

use comfy_table::{CellAlignment, ContentArrangement, Table};
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use super::Failure;

/// Widest NAME shown in a table, in terminal columns; `show` and `--json` have the whole name.
const NAME_WIDTH: usize = 32;
/// Widest SCOPES/ROLE shown in a table, in terminal columns.
const SCOPES_WIDTH: usize = 40;

/// The key object as the CLI reads it. Every field is optional and unknown fields are ignored,
/// so a newer server's answers still render.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct KeyView {
    id: Option<String>,
    workspace: Option<String>,
    name: Option<String>,
    description: Option<String>,
    prefix: Option<String>,
    scopes: Option<Vec<String>>,
    role: Option<String>,
    ip_allowlist: Option<Vec<String>>,
    expires_at: Option<String>,
    rate_limit: Option<Value>,
    quota: Option<Value>,
    owner: Option<String>,
    metadata: Option<Value>,
    created_at: Option<String>,
    created_by: Option<String>,
    updated_at: Option<String>,
    revoked_at: Option<String>,
    last_used_at: Option<String>,
    usage_count: Option<u64>,
    status: Option<String>,
    rotated_from: Option<String>,
    replaced_by: Option<String>,
}

impl KeyView {
    /// Reads a key object.
    pub(super) fn from_value(v: &Value) -> Result<KeyView, Failure> {
        KeyView::deserialize(v)
            .map_err(|e| Failure::Unexpected(format!("an answer that is not a key object: {e}")))
    }

    fn id(&self) -> String {
        text_or(self.id.as_deref(), "-")
    }
}

/// The keys of a list.
pub(super) fn key_views(keys: &[Value]) -> Result<Vec<KeyView>, Failure> {
    keys.iter().map(KeyView::from_value).collect()
}

/// Pretty JSON for `--json`, one document per command (bulk import prints compact lines).
pub(super) fn json(v: &Value) -> String {
    // Serializing a `Value` to a `String` cannot fail (string keys, no I/O).
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

/// The key table: ID, NAME, PREFIX, SCOPES/ROLE, STATUS, CREATED, LAST USED, USES, EXPIRES.
pub(super) fn list(keys: &[KeyView]) -> String {
    if keys.is_empty() {
        return "No keys.\n".into();
    }
    const HEADERS: [&str; 9] = [
        "ID",
        "NAME",
        "PREFIX",
        "SCOPES/ROLE",
        "STATUS",
        "CREATED",
        "LAST USED",
        "USES",
        "EXPIRES",
    ];
    /// USES is a number: right-aligned.
    const RIGHT: usize = 7;
    let rows = keys.iter().map(|k| {
        vec![
            k.id(),
            clip(&text_or(k.name.as_deref(), "-"), NAME_WIDTH),
            prefix(k.prefix.as_deref()),
            clip(&scopes_and_role(k), SCOPES_WIDTH),
            text_or(k.status.as_deref(), "-"),
            when(k.created_at.as_deref(), "-"),
            when(k.last_used_at.as_deref(), "never"),
            k.usage_count.map_or_else(|| "-".into(), |n| n.to_string()),
            when(k.expires_at.as_deref(), "never"),
        ]
    });
    table(&HEADERS, rows, &[RIGHT])
}

/// A table for people: a header row, then one line per row; no borders or rules; columns two
/// spaces apart, each as wide as its widest cell, and the columns in `right` aligned right
/// (numbers). Widths are terminal columns: comfy-table measures each cell's display width, so a
/// name in a wide script (CJK, most emoji) keeps the columns after it aligned, where counting
/// `char`s would not. Cells must be [`sanitize`]d (one line each).
pub(super) fn table(
    headers: &[&str],
    rows: impl IntoIterator<Item = Vec<String>>,
    right: &[usize],
) -> String {
    let mut t = Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.to_vec())
        .add_rows(rows);
    let last = headers.len().saturating_sub(1);
    for (i, column) in t.column_iter_mut().enumerate() {
        // One space either side of each column but the outer edges: two between columns.
        column.set_padding((u16::from(i > 0), u16::from(i < last)));
        if right.contains(&i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut out = t.trim_fmt();
    out.push('\n');
    out
}

/// Everything about one key, a field per line (`keys show`).
pub(super) fn detail(k: &KeyView) -> String {
    let list_or = |l: &Option<Vec<String>>, none: &str| match l.as_deref() {
        Some(items) if !items.is_empty() => sanitize(&items.join(", ")),
        _ => none.into(),
    };
    let created = match &k.created_by {
        Some(by) => format!(
            "{} by {}",
            when_utc(k.created_at.as_deref(), "-"),
            sanitize(by)
        ),
        None => when_utc(k.created_at.as_deref(), "-"),
    };
    let fields = [
        ("ID", k.id()),
        ("Workspace", text_or(k.workspace.as_deref(), "-")),
        ("Name", text_or(k.name.as_deref(), "-")),
        ("Description", text_or(k.description.as_deref(), "-")),
        ("Prefix", prefix(k.prefix.as_deref())),
        ("Status", text_or(k.status.as_deref(), "-")),
        ("Scopes", list_or(&k.scopes, "-")),
        ("Role", text_or(k.role.as_deref(), "-")),
        ("IP allowlist", list_or(&k.ip_allowlist, "any address")),
        ("Rate limit", rate_limit(k.rate_limit.as_ref(), "default")),
        ("Quota", quota(k.quota.as_ref(), "none")),
        ("Owner", text_or(k.owner.as_deref(), "-")),
        ("Metadata", compact(k.metadata.as_ref())),
        ("Created", created),
        ("Updated", when_utc(k.updated_at.as_deref(), "-")),
        ("Expires", when_utc(k.expires_at.as_deref(), "never")),
        ("Revoked", when_utc(k.revoked_at.as_deref(), "-")),
        ("Last used", when_utc(k.last_used_at.as_deref(), "never")),
        (
            "Uses",
            k.usage_count.map_or_else(|| "-".into(), |n| n.to_string()),
        ),
        ("Rotated from", text_or(k.rotated_from.as_deref(), "-")),
        ("Replaced by", text_or(k.replaced_by.as_deref(), "-")),
    ];
    let width = fields.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    fields
        .iter()
        .map(|(label, value)| format!("{label:<width$}  {value}\n"))
        .collect()
}

/// The answer to create: the key's row, then the secret, set apart so it is not missed.
pub(super) fn created(answer: &Value) -> Result<String, Failure> {
    let mut out = list(&[KeyView::from_value(answer)?]);
    out.push_str(&secret_block(answer)?);
    Ok(out)
}

/// The answer to rotate (`{"key": new + secret, "previous": old}`): the new key's row, its
/// secret, and until when the old one works.
pub(super) fn rotated(answer: &Value) -> Result<String, Failure> {
    let new = answer
        .get("key")
        .ok_or_else(|| Failure::Unexpected("a rotate answer without `key`".into()))?;
    let mut out = list(&[KeyView::from_value(new)?]);
    out.push_str(&secret_block(new)?);
    if let Some(previous) = answer.get("previous") {
        let old = KeyView::from_value(previous)?;
        out.push_str(&format!(
            "Previous key {} ({}) expires: {}\n",
            old.id(),
            text_or(old.status.as_deref(), "-"),
            when_utc(old.expires_at.as_deref(), "never")
        ));
    }
    out.push_str(&propagation(answer));
    Ok(out)
}

/// What an answer's `propagation` says (revoke, update, rotate on a shared store): a line when
/// some live instance did not confirm dropping the key in time, nothing otherwise.
pub(super) fn propagation(answer: &Value) -> String {
    let Some(p) = answer.get("propagation") else {
        return String::new();
    };
    let count = |field: &str| p.get(field).and_then(Value::as_u64).unwrap_or(0);
    let ids: Vec<String> = p
        .get("unconfirmed")
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(Value::as_str).map(sanitize).collect())
        .unwrap_or_default();
    if ids.is_empty() {
        return String::new();
    }
    format!(
        "Warning: {} of {} gateway instances confirmed in time; not yet: {} (each re-reads the key \
         within seconds)\n",
        count("confirmed"),
        count("instances"),
        ids.join(", ")
    )
}

/// The one place a secret is printed.
fn secret_block(key: &Value) -> Result<String, Failure> {
    match key.get("secret") {
        // Printed as received: sanitizing could change it, and the API only issues printable ones.
        Some(Value::String(secret)) => {
            Ok(format!("\nSecret (shown once, store it now): {secret}\n\n"))
        }
        _ => Err(Failure::Unexpected(
            "the answer has no `secret`; the key exists, but its secret was not shown: \
             revoke it and create another"
                .into(),
        )),
    }
}

/// `role:viewer sessions:read,sessions:write`, or `-`.
fn scopes_and_role(k: &KeyView) -> String {
    let mut parts = Vec::new();
    if let Some(role) = &k.role {
        parts.push(format!("role:{role}"));
    }
    if let Some(scopes) = k.scopes.as_deref().filter(|s| !s.is_empty()) {
        parts.push(scopes.join(","));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        sanitize(&parts.join(" "))
    }
}

/// The displayed start of the secret, marked as a start: `kg_live_7Hq2…`.
fn prefix(p: Option<&str>) -> String {
    match p {
        Some(p) if !p.is_empty() => format!("{}…", sanitize(p)),
        _ => "-".into(),
    }
}

/// `100/1s (burst 200)`, or `none` for null.
pub(super) fn rate_limit(v: Option<&Value>, none: &str) -> String {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return none.into();
    };
    match (v.get("requests"), v.get("period").and_then(Value::as_str)) {
        (Some(r), Some(p)) => {
            let mut s = format!("{r}/{}", sanitize(p));
            if let Some(b) = v.get("burst").filter(|b| !b.is_null()) {
                s.push_str(&format!(" (burst {b})"));
            }
            s
        }
        _ => compact(Some(v)),
    }
}

/// `10000, refill monthly (day 1)`, or `none` for null.
pub(super) fn quota(v: Option<&Value>, none: &str) -> String {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return none.into();
    };
    match (v.get("limit"), v.get("refill").and_then(Value::as_str)) {
        (Some(l), Some(r)) => {
            let mut s = format!("{l}, refill {}", sanitize(r));
            if let Some(d) = v.get("refill_day").filter(|d| !d.is_null()) {
                s.push_str(&format!(" (day {d})"));
            }
            s
        }
        _ => compact(Some(v)),
    }
}

/// A JSON value on one line, or `-` for none or null.
pub(super) fn compact(v: Option<&Value>) -> String {
    match v {
        Some(v) if !v.is_null() => sanitize(&v.to_string()),
        _ => "-".into(),
    }
}

/// The text, sanitized, or `none`.
pub(super) fn text_or(s: Option<&str>, none: &str) -> String {
    s.map_or_else(|| none.into(), sanitize)
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM` UTC; `none` for null; as received (sanitized) if the
/// API sent something else.
pub(super) fn when(t: Option<&str>, none: &str) -> String {
    let Some(t) = t else {
        return none.into();
    };
    OffsetDateTime::parse(t, &Rfc3339)
        .ok()
        .and_then(|at| {
            at.to_offset(time::UtcOffset::UTC)
                .format(format_description!("[year]-[month]-[day] [hour]:[minute]"))
                .ok()
        })
        .unwrap_or_else(|| sanitize(t))
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` UTC, for events (requests, audit entries) where
/// the minute is too coarse; like [`when`] otherwise.
pub(super) fn when_to_second(t: Option<&str>, none: &str) -> String {
    let Some(t) = t else {
        return none.into();
    };
    OffsetDateTime::parse(t, &Rfc3339)
        .ok()
        .and_then(|at| {
            at.to_offset(time::UtcOffset::UTC)
                .format(format_description!(
                    "[year]-[month]-[day] [hour]:[minute]:[second]"
                ))
                .ok()
        })
        .unwrap_or_else(|| sanitize(t))
}

/// [`when`] with ` UTC` after a time, for the one-key view where there is room to say it.
fn when_utc(t: Option<&str>, none: &str) -> String {
    match t {
        Some(_) => format!("{} UTC", when(t, none)),
        None => none.into(),
    }
}

/// Cuts to `max` terminal columns, marking the cut with `…` (one column).
pub(super) fn clip(s: &str, max: usize) -> String {
    if s.width() <= max {
        return s.into();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > max.saturating_sub(1) {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    out
}

/// Replaces control characters (escape sequences, newlines, tabs) with `�`, so text from the API
/// stays on its line and cannot drive the terminal.
pub(super) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(id: &str, name: &str) -> Value {
        json!({
            "id": id,
            "workspace": "acme",
            "name": name,
            "description": null,
            "prefix": "kg_live_7Hq2",
            "scopes": ["sessions:read"],
            "role": "viewer",
            "ip_allowlist": [],
            "expires_at": "2027-01-01T00:00:00Z",
            "rate_limit": null,
            "quota": null,
            "owner": null,
            "metadata": null,
            "created_at": "2026-11-23T12:00:59.999Z",
            "created_by": "token:ops",
            "updated_at": "2026-11-23T12:00:00Z",
            "revoked_at": null,
            "last_used_at": null,
            "usage_count": 0,
            "status": "active"
        })
    }

    #[test]
    fn the_table_aligns_columns_and_says_never_for_null_times() {
        let mut used = key("key_3fJ9x0mQ2kLw8ZrT5vYb1c", "Production server");
        used["last_used_at"] = json!("2026-11-24T08:15:00+02:00");
        used["usage_count"] = json!(12345);
        used["expires_at"] = json!(null);
        used["role"] = json!(null);
        let keys = [used, key("key_000000000000000000000b", "ci")];
        let views: Vec<KeyView> = keys
            .iter()
            .map(|k| KeyView::from_value(k).unwrap())
            .collect();
        let table = list(&views);
        let expected = "\
ID                          NAME               PREFIX         SCOPES/ROLE                STATUS  CREATED           LAST USED          USES  EXPIRES
key_3fJ9x0mQ2kLw8ZrT5vYb1c  Production server  kg_live_7Hq2…  sessions:read              active  2026-11-23 12:00  2026-11-24 06:15  12345  never
key_000000000000000000000b  ci                 kg_live_7Hq2…  role:viewer sessions:read  active  2026-11-23 12:00  never                 0  2027-01-01 00:00
";
        assert_eq!(table, expected);
    }

    #[test]
    fn a_change_some_instance_did_not_confirm_is_a_warning_and_a_confirmed_one_is_quiet() {
        let mut revoked = key("key_a", "a");
        revoked["propagation"] = json!({"instances": 3, "confirmed": 3, "unconfirmed": []});
        assert_eq!(propagation(&revoked), "");
        assert_eq!(propagation(&key("key_a", "a")), "");
        revoked["propagation"] =
            json!({"instances": 3, "confirmed": 2, "unconfirmed": ["gw-c-41\u{1b}[2J"]});
        let note = propagation(&revoked);
        assert!(
            note.starts_with(
                "Warning: 2 of 3 gateway instances confirmed in time; not yet: gw-c-41"
            ),
            "{note}"
        );
        assert!(!note.contains('\u{1b}'), "{note:?}");
    }

    #[test]
    fn an_empty_list_says_so() {
        assert_eq!(list(&[]), "No keys.\n");
        assert_eq!(key_views(&[]).unwrap().len(), 0);
        assert_eq!(key_views(&[json!([1])]).unwrap_err().exit_code(), 6);
    }

    #[test]
    fn long_names_are_clipped_and_control_characters_replaced() {
        let k = key("key_a", &format!("evil\u{1b}[2J{}", "x".repeat(60)));
        let table = list(&[KeyView::from_value(&k).unwrap()]);
        assert!(!table.contains('\u{1b}'), "{table:?}");
        let row = table.lines().nth(1).unwrap();
        let name = row.split("  ").nth(1).unwrap();
        assert_eq!(name.chars().count(), NAME_WIDTH);
        assert!(
            name.starts_with("evil\u{FFFD}[2J") && name.ends_with('…'),
            "{name}"
        );
        assert_eq!(table.lines().count(), 2, "a name cannot add lines");
    }

    #[test]
    fn wide_characters_keep_the_columns_aligned_and_are_clipped_by_width() {
        // Each of these characters takes two terminal columns.
        let wide = key("key_000000000000000000000a", "本番サーバー");
        let narrow = key("key_000000000000000000000b", "ci");
        let views: Vec<KeyView> = [wide, narrow]
            .iter()
            .map(|k| KeyView::from_value(k).unwrap())
            .collect();
        let table = list(&views);
        // PREFIX starts at the same terminal column on every line.
        let columns: Vec<usize> = table
            .lines()
            .map(|l| {
                let at = l.find("kg_live").or_else(|| l.find("PREFIX")).unwrap();
                l[..at].width()
            })
            .collect();
        assert_eq!(columns.len(), 3, "{table}");
        assert!(
            columns.iter().all(|&c| c == columns[0]),
            "{columns:?}\n{table}"
        );
        assert_eq!(
            columns[0],
            "key_000000000000000000000a  本番サーバー  ".width()
        );

        let clipped = clip(&"名".repeat(40), NAME_WIDTH);
        assert!(clipped.ends_with('…'), "{clipped}");
        assert_eq!(
            clipped.width(),
            NAME_WIDTH - 1,
            "15 wide characters and the mark"
        );
        assert_eq!(clip("短い", NAME_WIDTH), "短い");
    }

    #[test]
    fn unknown_fields_and_missing_fields_still_render() {
        let v = json!({"id": "key_a", "brand_new_field": {"x": 1}});
        let table = list(&[KeyView::from_value(&v).unwrap()]);
        let cells: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            cells,
            ["key_a", "-", "-", "-", "-", "-", "never", "-", "never"],
            "{table}"
        );
        assert_eq!(KeyView::from_value(&json!([1])).unwrap_err().exit_code(), 6);
    }

    #[test]
    fn times_are_utc_minutes_or_the_text_received() {
        assert_eq!(
            when(Some("2026-11-23T23:59:59-01:00"), "-"),
            "2026-11-24 00:59"
        );
        assert_eq!(when(None, "never"), "never");
        assert_eq!(when(Some("yesterday"), "-"), "yesterday");
        assert_eq!(
            when_utc(Some("2026-11-23T12:00:00Z"), "-"),
            "2026-11-23 12:00 UTC"
        );
        assert_eq!(when_utc(None, "never"), "never");
        assert_eq!(
            when_to_second(Some("2026-11-23T23:59:59.9-01:00"), "-"),
            "2026-11-24 00:59:59"
        );
        assert_eq!(when_to_second(Some("soon"), "-"), "soon");
    }

    #[test]
    fn create_shows_the_row_and_the_secret_once() {
        let mut v = key("key_a", "n");
        v["secret"] = json!("kg_live_SECRET");
        let out = created(&v).unwrap();
        assert!(out.starts_with("ID "), "{out}");
        assert_eq!(out.matches("kg_live_SECRET").count(), 1, "{out}");
        assert!(
            out.contains("\nSecret (shown once, store it now): kg_live_SECRET\n"),
            "{out}"
        );
        let e = created(&key("key_a", "n")).unwrap_err();
        assert_eq!(e.exit_code(), 6);
    }

    #[test]
    fn rotate_shows_the_new_secret_and_the_old_keys_expiry() {
        let mut new = key("key_new", "n");
        new["secret"] = json!("kg_live_NEW");
        let mut old = key("key_old", "n");
        old["expires_at"] = json!("2026-11-24T12:00:00Z");
        let out = rotated(&json!({"key": new, "previous": old})).unwrap();
        assert!(out.contains("key_new"), "{out}");
        assert!(
            out.contains("Secret (shown once, store it now): kg_live_NEW"),
            "{out}"
        );
        assert!(
            out.ends_with("Previous key key_old (active) expires: 2026-11-24 12:00 UTC\n"),
            "{out}"
        );
        assert_eq!(rotated(&json!({})).unwrap_err().exit_code(), 6);
    }

    #[test]
    fn the_detail_view_shows_every_field() {
        let mut v = key("key_a", "Production server");
        v["ip_allowlist"] = json!(["203.0.113.7", "10.0.0.0/8"]);
        v["rate_limit"] = json!({"requests": 100, "period": "1s", "burst": 200});
        v["quota"] = json!({"limit": 10000, "refill": "monthly", "refill_day": 1});
        v["metadata"] = json!({"team": "payments"});
        v["owner"] = json!("cust_42");
        let out = detail(&KeyView::from_value(&v).unwrap());
        for line in [
            "ID            key_a\n",
            "Name          Production server\n",
            "Prefix        kg_live_7Hq2…\n",
            "Scopes        sessions:read\n",
            "Role          viewer\n",
            "IP allowlist  203.0.113.7, 10.0.0.0/8\n",
            "Rate limit    100/1s (burst 200)\n",
            "Quota         10000, refill monthly (day 1)\n",
            "Owner         cust_42\n",
            "Metadata      {\"team\":\"payments\"}\n",
            "Created       2026-11-23 12:00 UTC by token:ops\n",
            "Expires       2027-01-01 00:00 UTC\n",
            "Revoked       -\n",
            "Last used     never\n",
            "Uses          0\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        let bare = detail(&KeyView::from_value(&key("key_b", "b")).unwrap());
        assert!(bare.contains("IP allowlist  any address\n"), "{bare}");
        assert!(bare.contains("Rate limit    default\n"), "{bare}");
        assert!(bare.contains("Quota         none\n"), "{bare}");
    }
}
