//! `limits:`: what one client connection may hold of the gateway (how many connections at once,
//! how long a connection may stay silent before its first request head is complete).

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;

use super::duration_text;

/// Default cap on concurrent client connections, per listener. Each proxied connection can hold
/// a second descriptor upstream, so the cap stays well below the usual file-descriptor limits
/// (keygate raises its soft `RLIMIT_NOFILE` to the hard limit at start).
pub const DEFAULT_MAX_CONNECTIONS: NonZeroUsize = NonZeroUsize::new(10_000).expect("not 0");
/// Default time a client has, from accept, to send a complete request head (and, between the
/// requests of a kept-alive connection, the next one).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `header_read_timeout` accepted: beyond it silent connections are a resource leak.
pub const MAX_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// `limits:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Client connections open at once on each listener. A connection accepted beyond it is
    /// closed at once (and counted) rather than left waiting.
    #[serde(default = "d_max_connections")]
    pub max_connections: NonZeroUsize,
    /// Time a client has to send a complete request head, counted from accept for the first
    /// request (so a connection that sends nothing is closed after it too).
    #[serde(default = "d_header_read_timeout", with = "duration_text")]
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

impl Limits {
    /// Problems with the values, as `(field path, message)`.
    pub(super) fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.header_read_timeout.is_zero() || self.header_read_timeout > MAX_HEADER_READ_TIMEOUT
        {
            out.push((
                "limits.header_read_timeout".into(),
                format!(
                    "must be above 0 and at most {}",
                    humantime::format_duration(MAX_HEADER_READ_TIMEOUT)
                ),
            ));
        }
        out
    }
}

fn d_max_connections() -> NonZeroUsize {
    DEFAULT_MAX_CONNECTIONS
}
fn d_header_read_timeout() -> Duration {
    DEFAULT_HEADER_READ_TIMEOUT
}
