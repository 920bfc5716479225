//! Logging: the tracing subscriber (JSON or text) configured by `log:`, whose level filter a
//! reload replaces ([`set_level`]).
//!
//! The Redis client's own log lines are off unless `log.level` names the `redis` target: while
//! a cluster node is down, its cluster client logs each reconnect attempt (measured: about 130
//! lines a second), where keygate logs the outage once (the store's breaker) and counts the rest
//! in metrics.

use std::io::IsTerminal as _;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::{Log, LogFormat};

/// The installed subscriber's filter, for reloads.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber. A second call (tests) keeps the first.
pub fn init(log: &Log) {
    let filter = filter(&log.level).unwrap_or_else(|_| EnvFilter::new("info,redis=off"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match log.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        // Colours only for a person at a terminal: escape codes in a file or a log pipeline
        // are noise.
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Replaces the level filter of the subscriber [`init`] installed (a validated `log.level`).
/// Without one (tests running the library), there is nothing to change.
pub fn set_level(level: &str) -> Result<(), String> {
    let Some(handle) = FILTER.get() else {
        return Ok(());
    };
    handle.reload(filter(level)?).map_err(|e| e.to_string())
}

/// The filter of `log.level`, with the Redis client silenced unless the level names it.
fn filter(level: &str) -> Result<EnvFilter, String> {
    // A directive for the `redis` crate itself; keygate's own `keygate::store::redis` is not one.
    let names_redis = level.split(',').any(|d| {
        let target = d.split(['=', '[']).next().unwrap_or("").trim();
        target == "redis" || target.starts_with("redis::")
    });
    let directives = if names_redis {
        level.to_owned()
    } else {
        format!("{level},redis=off")
    };
    EnvFilter::try_new(directives).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_client_is_quiet_unless_named() {
        // Directives print most specific first.
        assert_eq!(filter("info").unwrap().to_string(), "redis=off,info");
        assert_eq!(
            filter("debug,redis=warn").unwrap().to_string(),
            "redis=warn,debug"
        );
        assert_eq!(
            filter("info,keygate::store::redis=debug")
                .unwrap()
                .to_string(),
            "keygate::store::redis=debug,redis=off,info"
        );
        assert!(filter("info,keygate=loud").is_err());
    }
}
