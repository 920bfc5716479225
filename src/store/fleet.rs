//! The fleet: the gateway instances sharing one Redis store, each announcing itself, so that a
//! change to a key can wait until every live instance has dropped it (issue 13). The Redis
//! commands are in `store::redis::fleet`; the subscriber that runs the heartbeat is in
//! [`super::invalidation`].
//!
//! - **Identity.** Each instance takes an id at start, `<hostname>-<pid>-<4 hex>` (lowercase
//!   letters, digits, `-` and `.` only), shown in logs, in `/readyz` and in the admin API's
//!   propagation reports.
//! - **Heartbeat.** While its invalidation subscription is up, an instance announces itself in
//!   `P{fleet}` every [`HEARTBEAT_INTERVAL`] for [`HEARTBEAT_TTL`], timed by the Redis clock,
//!   and keeps the live ids each heartbeat returns. Only then: an instance without its
//!   subscription trusts nothing it has cached (it re-reads the store for every key), so
//!   nobody needs to wait for it, and it withdraws its announcement when it loses the
//!   subscription or stops.
//! - **Live count.** [`Fleet::live_count`] is the number of live instances as of the last
//!   heartbeat: never 0, and 1 when alone or unknown (not announced yet, or Redis unreachable),
//!   e.g. for a per-instance share of a global rate limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How often a subscribed instance renews its announcement.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long an announcement lasts unless renewed: three heartbeats, so that one slow or lost
/// heartbeat does not drop a live instance.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(3);
/// Longest instance id; a longer hostname is cut.
const MAX_ID_LEN: usize = 100;

/// This instance, and what it knows of the others (see the module docs).
#[derive(Debug)]
pub struct Fleet {
    id: Arc<str>,
    /// Live ids as of the last heartbeat, this one included; empty while unknown.
    live: Mutex<Arc<[Arc<str>]>>,
    live_count: Arc<AtomicUsize>,
}

impl Fleet {
    /// This instance, with a new id, alone as far as it knows.
    pub fn new() -> Fleet {
        Fleet::with_id(new_id(&hostname(), std::process::id()))
    }

    fn with_id(id: String) -> Fleet {
        Fleet {
            id: id.into(),
            live: Mutex::new(Arc::from([])),
            live_count: Arc::new(AtomicUsize::new(1)),
        }
    }

    /// This instance's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The number of live instances as of the last heartbeat: at least 1 (this one), and 1
    /// while unknown. A shared handle, updated in place: read it with one atomic load.
    pub fn live_count(&self) -> Arc<AtomicUsize> {
        self.live_count.clone()
    }

    /// The live ids as of the last heartbeat (this one included), or none while unknown.
    pub fn live(&self) -> Arc<[Arc<str>]> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes the live ids a heartbeat returned.
    pub fn heard(&self, ids: Vec<String>) {
        let mut live: Vec<Arc<str>> = ids.into_iter().map(Arc::from).collect();
        if !live.iter().any(|id| **id == *self.id) {
            live.push(self.id.clone());
        }
        live.sort_unstable();
        live.dedup();
        self.live_count.store(live.len(), Ordering::Release);
        *self.live.lock().unwrap_or_else(PoisonError::into_inner) = live.into();
    }

    /// Forgets the others (this instance left the fleet, or cannot reach it): alone as far as
    /// it knows.
    pub fn forget(&self) {
        self.live_count.store(1, Ordering::Release);
        *self.live.lock().unwrap_or_else(PoisonError::into_inner) = Arc::from([]);
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet::new()
    }
}

/// Whether `text` has the shape of an instance id (so it can travel in a message unquoted).
pub fn is_instance_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_ID_LEN + 20
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// `<hostname>-<pid>-<4 random hex>`, the hostname lowercased with anything but letters,
/// digits, `-` and `.` dropped (`keygate` if nothing is left).
fn new_id(hostname: &str, pid: u32) -> String {
    let mut host: String = hostname
        .trim()
        .chars()
        .filter_map(|c| {
            let c = c.to_ascii_lowercase();
            (c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.').then_some(c)
        })
        .take(MAX_ID_LEN)
        .collect();
    if host.is_empty() {
        host.push_str("keygate");
    }
    let mut bytes = [0u8; 2];
    // Without randomness the pid still tells instances of one host apart.
    let _ = getrandom::fill(&mut bytes);
    format!("{host}-{pid}-{:02x}{:02x}", bytes[0], bytes[1])
}

/// This host's name (Linux), or the `HOSTNAME` variable, or nothing.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_host_pid_and_random_hex_in_a_safe_alphabet() {
        let id = new_id("Web_1.Example.COM\n", 4242);
        assert!(id.starts_with("web1.example.com-4242-"), "{id}");
        assert_eq!(id.len(), "web1.example.com-4242-".len() + 4);
        assert!(is_instance_id(&id));
        assert!(new_id("", 7).starts_with("keygate-7-"));
        assert!(is_instance_id(&new_id(&"h".repeat(500), u32::MAX)));
        for bad in ["", "a b", "A", "a:b", "é"] {
            assert!(!is_instance_id(bad), "{bad}");
        }
    }

    #[test]
    fn the_live_count_is_never_zero_and_counts_this_instance() {
        let fleet = Fleet::with_id("a-1-0000".into());
        let count = fleet.live_count();
        assert_eq!(count.load(Ordering::Acquire), 1);
        fleet.heard(vec!["b-2-0000".into(), "c-3-0000".into()]);
        assert_eq!(count.load(Ordering::Acquire), 3, "this one is counted too");
        fleet.heard(vec!["a-1-0000".into(), "b-2-0000".into()]);
        assert_eq!(count.load(Ordering::Acquire), 2);
        assert_eq!(fleet.live().len(), 2);
        fleet.forget();
        assert_eq!(count.load(Ordering::Acquire), 1);
        assert!(fleet.live().is_empty());
    }
}
