//! `webhooks:` (SPEC §9): where key owners hear what happens to their keys, and which events
//! each endpoint wants. Checked here: the URL, the event names, the secret, the windows.

use std::time::Duration;

use serde::Deserialize;

use super::duration_text;

/// Every event a webhook can ask for.
pub const EVENTS: [&str; 9] = [
    "key.created",
    "key.updated",
    "key.rotated",
    "key.revoked",
    "key.deleted",
    "key.expiring",
    "key.expired",
    "key.leaked",
    "key.quota_exhausted",
];

/// Shortest secret accepted (HMAC keys shorter than this are guessable).
pub const MIN_SECRET_BYTES: usize = 16;

/// One webhook endpoint.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where events are POSTed (`http://` or `https://`).
    pub url: String,
    /// The events it receives (names from [`EVENTS`], or `"*"` for all).
    pub events: Vec<String>,
    /// The HMAC-SHA256 key of `Keygate-Signature`.
    pub secret: String,
    /// `key.expiring` is sent this many days before `expires_at`.
    #[serde(default = "d_expiring_days")]
    pub expiring_days: u32,
    /// How long one delivery attempt may take.
    #[serde(default = "d_timeout", with = "duration_text")]
    pub timeout: Duration,
    /// Wait before the first retry; each later one waits twice as long, up to an hour, until
    /// 24 hours after the event.
    #[serde(default = "d_first_retry", with = "duration_text")]
    pub first_retry: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log line or a panic message.
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &"<redacted>")
            .field("expiring_days", &self.expiring_days)
            .field("timeout", &self.timeout)
            .field("first_retry", &self.first_retry)
            .finish()
    }
}

impl Webhook {
    /// Whether this endpoint receives `event`.
    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == "*" || e == event)
    }

    /// Every problem of this endpoint, as `(field below webhooks[i], message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        match self.url.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some() => {}
            _ => out.push(("url", "must be an http:// or https:// URL".to_owned())),
        }
        if self.events.is_empty() {
            out.push((
                "events",
                "must name at least one event, or \"*\" for all".into(),
            ));
        }
        for e in &self.events {
            if e != "*" && !EVENTS.contains(&e.as_str()) {
                out.push((
                    "events",
                    format!("unknown event `{e}`: one of {}", EVENTS.join(", ")),
                ));
            }
        }
        if self.secret.len() < MIN_SECRET_BYTES {
            out.push((
                "secret",
                format!(
                    "must be at least {MIN_SECRET_BYTES} characters (32 random bytes recommended)"
                ),
            ));
        }
        if !(1..=365).contains(&self.expiring_days) {
            out.push(("expiring_days", "must be 1–365".into()));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            out.push(("timeout", "must be above 0 and at most 60s".into()));
        }
        if self.first_retry.is_zero() || self.first_retry > Duration::from_secs(3600) {
            out.push(("first_retry", "must be above 0 and at most 1h".into()));
        }
        out
    }
}

fn d_expiring_days() -> u32 {
    7
}

fn d_timeout() -> Duration {
    Duration::from_secs(10)
}

fn d_first_retry() -> Duration {
    Duration::from_secs(10)
}
