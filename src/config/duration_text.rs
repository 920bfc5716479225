//! Durations as text: `500ms`, `30s`, `1m`, `24h` (and bare `0`).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Parses a duration.
pub fn parse(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration like 500ms, 30s, 5m or 24h ({e})"))
}

/// Serde deserializer.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Int(u64),
    }
    match Raw::deserialize(d)? {
        Raw::Text(s) => parse(&s).map_err(serde::de::Error::custom),
        Raw::Int(0) => Ok(Duration::ZERO),
        Raw::Int(n) => Err(serde::de::Error::custom(format!(
            "`{n}` needs a unit, e.g. {n}s or {n}ms"
        ))),
    }
}

/// Serde serializer (humantime's format, which [`parse`] reads back).
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}
