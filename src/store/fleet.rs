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
//! - **Live count.** [`Fleet::instances`] is the number of live instances as of the last
//!   heartbeat: never 0, and 1 when alone or unknown (not announced yet, or Redis unreachable).
//!   [`Fleet::share_count`] is the same as of the last heartbeat that got through, kept while
//!   this instance is cut off (the others still serve): what a per-instance share of a global
//!   rate limit divides by.
//! - **Confirmation.** A change to a key (update, rotate, revoke, delete) is published as
//!   `<hash hex> <origin id> <seq>`. Every subscribed instance drops the hash (bumping its
//!   generation, so no fill under way can put the old record back) and then confirms with
//!   `<seq> <its id>` on the origin's own channel `Pack:<origin id>`, which the origin
//!   subscribes to beside the invalidation channel. The origin reads the live set fresh from
//!   Redis *after* its store write (an instance that announced itself since the last
//!   heartbeat must be waited for too), registers the wait, publishes, and answers when every
//!   live instance but itself has confirmed, or after [`CONFIRM_TIMEOUT`], saying which did
//!   not ([`Propagation`]). A confirmed instance refuses the changed key from its very next
//!   request; one that never announced itself, or whose announcement ran out, distrusts its
//!   cache already (see [`super::invalidation`]).
//! - **Lease.** An instance that stood still (SIGSTOP, a stalled runtime) may hold an
//!   invalidation unread, and the revoker stopped waiting for it after [`CONFIRM_TIMEOUT`]. So
//!   its cache trusts entries only under a lease that the subscriber renews every
//!   [`PULSE_INTERVAL`] for [`STALL_LIMIT`] (see [`super::cache::Lease`]): whoever finds it run
//!   out (the first request after SIGCONT, or the subscriber itself) marks every entry stale
//!   before renewing it, so the next use of any key re-reads the store, which already holds
//!   the change. `STALL_LIMIT` is well under `CONFIRM_TIMEOUT`: an instance that was
//!   unresponsive long enough to be reported unconfirmed was still for longer than the lease.
//!   A request costs one atomic load and one monotonic clock read (vDSO, no syscall).
//!
//! Why not more: waiting for every live instance bounds a revocation's latency by the slowest
//! one, so the wait is cut at [`CONFIRM_TIMEOUT`] and reported rather than unbounded; a
//! crashed instance stays in the set until its announcement runs out (3 s), and changes made
//! meanwhile report it unconfirmed after the full wait. Key creation publishes without
//! waiting: it only clears negative entries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::histogram::Histogram;

/// How often a subscribed instance renews its announcement.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long an announcement lasts unless renewed: three heartbeats, so that one slow or lost
/// heartbeat does not drop a live instance.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(3);
/// How long a change waits for the other live instances to confirm it.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_millis(100);
/// How often the subscriber renews the cache's lease.
pub const PULSE_INTERVAL: Duration = Duration::from_millis(10);
/// How long the cache's lease lasts: an instance still for longer re-reads every key it had
/// cached. Under [`CONFIRM_TIMEOUT`], with room for the message's own trip.
pub const STALL_LIMIT: Duration = Duration::from_millis(50);
/// Longest instance id; a longer hostname is cut.
const MAX_ID_LEN: usize = 100;

/// This instance, and what it knows of the others (see the module docs).
#[derive(Debug)]
pub struct Fleet {
    id: Arc<str>,
    /// Live ids as of the last heartbeat, this one included; empty while unknown.
    live: Mutex<Arc<[Arc<str>]>>,
    live_count: Arc<AtomicUsize>,
    /// `live_count` as of the last heartbeat that got through ([`Fleet::share_count`]).
    share_count: Arc<AtomicUsize>,
    /// Sequence numbers of this instance's confirmable messages.
    next_seq: AtomicU64,
    /// Waits under way, by sequence number.
    waits: Mutex<HashMap<u64, Waiting>>,
    /// Counters for metrics.
    stats: FleetStats,
}

/// Counters of confirmations, for metrics.
#[derive(Debug)]
pub struct FleetStats {
    /// Instances that did not confirm a change within [`CONFIRM_TIMEOUT`] (one per instance
    /// per change).
    pub unconfirmed: AtomicU64,
    /// Time from publishing a change to its last confirmation (or to giving up).
    pub confirm_wait: Histogram,
}

/// One wait for confirmations.
#[derive(Debug)]
struct Waiting {
    /// Instances that have not confirmed yet.
    missing: Vec<Arc<str>>,
    /// Told when `missing` empties.
    done: Option<oneshot::Sender<()>>,
}

/// A confirmation: instance `from` dropped what message `seq` of this instance named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The message's sequence number.
    pub seq: u64,
    /// The instance that confirms.
    pub from: String,
}

/// What a confirmable message asks: confirm to instance `origin`, under `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    /// The instance that made the change.
    pub origin: String,
    /// Its sequence number for the message.
    pub seq: u64,
}

/// How far a change reached: the live instances (the one that made it included) and those
/// that did not confirm in time. The instance that made the change dropped the key itself, so
/// it counts as confirmed; `confirmed() == instances` means every live instance did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Propagation {
    /// Live instances, this one included.
    pub instances: usize,
    /// Ids of those that did not confirm within [`CONFIRM_TIMEOUT`], sorted.
    pub unconfirmed: Vec<String>,
}

impl Propagation {
    /// A change on a store no other instance shares (the embedded backend).
    pub fn alone() -> Propagation {
        Propagation {
            instances: 1,
            unconfirmed: Vec::new(),
        }
    }

    /// Instances that dropped the key in time, this one included.
    pub fn confirmed(&self) -> usize {
        self.instances - self.unconfirmed.len()
    }

    /// The report of two messages of one change: an instance is confirmed only if it confirmed
    /// both.
    #[must_use]
    pub fn and(mut self, other: Propagation) -> Propagation {
        self.instances = self.instances.max(other.instances);
        self.unconfirmed.extend(other.unconfirmed);
        self.unconfirmed.sort_unstable();
        self.unconfirmed.dedup();
        self
    }

    /// `{"instances": N, "confirmed": M, "unconfirmed": [ids]}`, as the admin API shows it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "instances": self.instances,
            "confirmed": self.confirmed(),
            "unconfirmed": self.unconfirmed,
        })
    }

    /// The same as a structured-field dictionary (RFC 8941), for the `Keygate-Propagation`
    /// header: `instances=3, confirmed=2, unconfirmed=("web-1-42-ab12")`. Ids are tokens of
    /// a safe alphabet ([`is_instance_id`]), so nothing needs escaping.
    pub fn to_header(&self) -> String {
        let ids: Vec<String> = self
            .unconfirmed
            .iter()
            .map(|id| format!("\"{id}\""))
            .collect();
        format!(
            "instances={}, confirmed={}, unconfirmed=({})",
            self.instances,
            self.confirmed(),
            ids.join(" ")
        )
    }
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
            share_count: Arc::new(AtomicUsize::new(1)),
            next_seq: AtomicU64::new(0),
            waits: Mutex::new(HashMap::new()),
            stats: FleetStats {
                unconfirmed: AtomicU64::new(0),
                confirm_wait: Histogram::new(CONFIRM_BUCKETS),
            },
        }
    }

    /// Confirmation counters.
    pub fn stats(&self) -> &FleetStats {
        &self.stats
    }

    /// Starts waiting for confirmations from the instances of `live` but this one, before the
    /// message is published (a confirmation may come back before the publish returns).
    pub fn expect(&self, live: &[String]) -> AckWait<'_> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let mut missing: Vec<Arc<str>> = live
            .iter()
            .filter(|id| **id != *self.id)
            .map(|id| Arc::from(id.as_str()))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let instances = missing.len() + 1;
        let (tx, rx) = oneshot::channel();
        let done = if missing.is_empty() {
            drop(tx);
            None
        } else {
            self.lock_waits().insert(
                seq,
                Waiting {
                    missing,
                    done: Some(tx),
                },
            );
            Some(rx)
        };
        AckWait {
            fleet: self,
            seq,
            instances,
            done,
        }
    }

    /// Takes a confirmation that came back.
    pub fn acked(&self, ack: &Ack) {
        let mut waits = self.lock_waits();
        let Some(waiting) = waits.get_mut(&ack.seq) else {
            // Late (the wait gave up) or repeated: nothing waits for it.
            return;
        };
        waiting.missing.retain(|id| **id != *ack.from);
        if waiting.missing.is_empty()
            && let Some(done) = waiting.done.take()
        {
            let _ = done.send(());
        }
    }

    fn lock_waits(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
        self.waits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This instance's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The number of live instances as of the last heartbeat: at least 1 (this one), and 1
    /// while unknown or cut off.
    pub fn instances(&self) -> usize {
        self.live_count.load(Ordering::Acquire)
    }

    /// The number of live instances as of the last heartbeat that got through, not reset when
    /// this instance loses Redis: a shared handle, updated in place, for the global rate
    /// limiter's per-instance share (read with one atomic load).
    pub fn share_count(&self) -> Arc<AtomicUsize> {
        self.share_count.clone()
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
        self.share_count.store(live.len(), Ordering::Release);
        *self.live.lock().unwrap_or_else(PoisonError::into_inner) = live.into();
    }

    /// Forgets the others (this instance left the fleet, or cannot reach it): alone as far as
    /// it knows. The share count stays: the others go on serving.
    pub fn forget(&self) {
        self.live_count.store(1, Ordering::Release);
        *self.live.lock().unwrap_or_else(PoisonError::into_inner) = Arc::from([]);
    }
}

/// Upper bounds of the confirmation wait histogram, in seconds: a few milliseconds when every
/// instance answers, [`CONFIRM_TIMEOUT`] when one does not.
const CONFIRM_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
];

/// A wait for the confirmations of one message, from [`Fleet::expect`]. Dropping it (the
/// caller went away) forgets the wait.
#[derive(Debug)]
pub struct AckWait<'a> {
    fleet: &'a Fleet,
    seq: u64,
    instances: usize,
    done: Option<oneshot::Receiver<()>>,
}

impl AckWait<'_> {
    /// The sequence number to publish the message under.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Waits until every expected instance has confirmed, or `timeout`; reports which did not
    /// and counts them (and the time waited) in the fleet's stats.
    pub async fn finish(mut self, timeout: Duration) -> Propagation {
        let started = std::time::Instant::now();
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(timeout, done).await;
        }
        let propagation = self.report();
        let stats = &self.fleet.stats;
        stats.confirm_wait.observe(started.elapsed());
        stats
            .unconfirmed
            .fetch_add(propagation.unconfirmed.len() as u64, Ordering::Relaxed);
        propagation
    }

    /// Nobody heard the message (the publish failed): every other instance is unconfirmed.
    pub fn unheard(self) -> Propagation {
        let propagation = self.report();
        self.fleet
            .stats
            .unconfirmed
            .fetch_add(propagation.unconfirmed.len() as u64, Ordering::Relaxed);
        propagation
    }

    fn report(&self) -> Propagation {
        let missing = self
            .fleet
            .lock_waits()
            .remove(&self.seq)
            .map(|w| w.missing)
            .unwrap_or_default();
        Propagation {
            instances: self.instances,
            unconfirmed: missing.iter().map(|id| id.to_string()).collect(),
        }
    }
}

impl Drop for AckWait<'_> {
    fn drop(&mut self) {
        self.fleet.lock_waits().remove(&self.seq);
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
        let share = fleet.share_count();
        assert_eq!((fleet.instances(), share.load(Ordering::Acquire)), (1, 1));
        fleet.heard(vec!["b-2-0000".into(), "c-3-0000".into()]);
        assert_eq!(fleet.instances(), 3, "this one is counted too");
        fleet.heard(vec!["a-1-0000".into(), "b-2-0000".into()]);
        assert_eq!((fleet.instances(), share.load(Ordering::Acquire)), (2, 2));
        assert_eq!(fleet.live().len(), 2);
        fleet.forget();
        assert_eq!(fleet.instances(), 1);
        assert!(fleet.live().is_empty());
        // Cut off, this instance still shares global limits with the others it last heard of.
        assert_eq!(share.load(Ordering::Acquire), 2);
    }
}
