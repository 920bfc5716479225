//! Cross-instance cache invalidation (SPEC §4, "revocation is immediate everywhere"): every change
//! to a key is published on the store's invalidation channel, and every instance sharing the
//! store drops the key from its hot cache when the message arrives. The channel and its message
//! format belong to the Redis layout (`store::redis`); this module owns what the cache does with
//! them.
//!
//! - **Publishing**, [`invalidate_everywhere`]: after the store write, the key is dropped from
//!   this instance's cache (so its very next request sees the change), then one message per
//!   keyed hash goes out, bounded by the store timeout. [`crate::control::KeyManager`] calls it
//!   for a new key (to clear negative entries), and the request path after upgrading a SHA-256
//!   import's hash. Changes to an existing key (update, revoke, delete; a rotation ends the old
//!   key with an update) go through [`invalidate_confirmed`], which also waits until every live
//!   instance has confirmed dropping the key, at most [`fleet::CONFIRM_TIMEOUT`], and reports
//!   who did not ([`super::fleet`]).
//! - **Confirming**: a message that asks for it is confirmed to its origin only after the hash
//!   is dropped and its generation bumped, off the subscriber's loop (a spawned publish).
//!   The loop also renews the cache's lease every [`fleet::PULSE_INTERVAL`], so a process that
//!   stood still re-reads what it cached (see [`KeyCache`]).
//! - **A missed message**: a publish that fails is logged and counted, never turned into an
//!   error, since the change is stored already. An instance that never hears of it keeps serving
//!   its cached record until the entry's `cache.ttl` runs out, then re-reads the store: `ttl` is
//!   the bound on how long a change can go unseen when the channel fails.
//! - **Subscribing**, [`Subscriber`]: one background task per instance, on a connection of its
//!   own, drops each hash it is told of. Its own messages come back too, which costs a second
//!   (harmless) invalidation. A fill that races a message cannot put the old record back: the
//!   message bumps the hash's generation, see [`KeyCache`].
//! - **No subscription** (not yet, or lost: connection closed, Redis restarted, no answer to
//!   the heartbeat): messages are missed, so the cache trusts nothing it holds
//!   ([`KeyCache::distrust`]) until the subscription is back: every lookup re-reads the store (one
//!   read per hash at a time), as if `cache.ttl` were 0. Were entries read meanwhile trusted for
//!   `ttl`, a change made elsewhere between Redis coming back and this instance resubscribing
//!   (retried with backoff, up to a second apart) would go unseen. Cached entries are not
//!   dropped: while the store is unreachable (the usual reason the channel is lost) they serve
//!   within `cache.max_stale`, so an outage keeps the documented degraded mode rather than
//!   failing every key at once. On subscribing, everything read before is marked stale once
//!   more ([`KeyCache::trust`]), for whatever was published in between, and since Redis
//!   evidently answers, the store's circuit breaker is closed.
//!
//! - **The fleet** ([`super::fleet`]): once subscribed, an instance announces itself in Redis
//!   and trusts its cache only from then on; the announcement is renewed every second while
//!   the subscription lasts. When renewals stop getting through for nearly as long as an
//!   announcement lasts, the subscription counts as lost (so the cache is distrusted before
//!   the others stop counting this instance); a lost subscription or a stop withdraws it.
//!
//! - **Workspaces**: a `ws:<name>` message asks this instance's [`Directory`] to read the
//!   stored workspace again; (re)subscribing and an unreadable message have it read them all.
//!
//! A lost connection is noticed at once when it closes (the feed ends: Redis stopped or
//! restarted, `CLIENT KILL`), and within the heartbeat otherwise.
//!
//! The embedded backend serves one node: nothing is published and no subscriber runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::cache::KeyCache;
use super::fleet::{self, Confirm, Propagation};
use super::redis::{InvalidationFeed, InvalidationMessage, RedisStore};
use super::{Store, StoreError};
use crate::keys::{HashScheme, KeyRecord, SecretHash};
use crate::workspaces::Directory;

/// First wait before subscribing again after a failure: short, so that a Redis restart costs
/// little more than the restart.
const RETRY_MIN_DELAY: Duration = Duration::from_millis(50);
/// Longest wait between subscription attempts.
const RETRY_MAX_DELAY: Duration = Duration::from_secs(1);
/// How often a quiet subscription is checked for life. It bounds, with the ping timeout, how
/// long a silently dead connection (no FIN, no RST) goes unnoticed.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long before its fleet announcement runs out (by the last heartbeat that got through) an
/// instance stops trusting its cache: room for the Redis clock to run faster than this one.
const ANNOUNCE_MARGIN: Duration = Duration::from_millis(500);

/// Counters and state of one store's invalidation channel, for metrics, readiness and tests.
#[derive(Debug, Default)]
pub struct InvalidationStats {
    /// Messages published.
    pub published: AtomicU64,
    /// Publishes that failed (other instances see those changes within `cache.ttl`).
    pub publish_failures: AtomicU64,
    /// Messages received and applied to the cache.
    pub received: AtomicU64,
    /// Messages received that could not be read (each one marks the whole cache stale).
    pub unreadable: AtomicU64,
    /// Times the subscription was lost after being established.
    pub subscription_losses: AtomicU64,
    /// Subscriptions established, the first one included.
    pub subscriptions: AtomicU64,
    /// Whether the subscriber is subscribed right now.
    pub subscribed: AtomicBool,
}

impl InvalidationStats {
    /// Whether the subscriber is subscribed right now.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }
}

/// Drops a changed key from this instance's cache, then tells the other instances to do the
/// same. Call it after the store write that changed the key, and after creating a key (to drop
/// negative entries of its hash).
pub async fn invalidate_everywhere(cache: &KeyCache<Store>, key: &KeyRecord) {
    cache.invalidate(&key.hash).await;
    match key.hash_scheme {
        HashScheme::KeyedBlake3 => publish(cache, &key.hash, key).await,
        // A SHA-256 import is read from the store uncached, by its digest: no cache anywhere
        // holds it under that hash, and the digest is not worth putting on the wire. But an
        // upgrade cut short (Redis) leaves a copy under the keyed hash, which lookups find and
        // caches hold: that hash goes out. Otherwise the keyed hash is published when the first
        // use upgrades the key.
        HashScheme::Sha256 => {
            if let Some(to) = cache.store().upgrade_target(key).await {
                invalidate_hash_everywhere(cache, &to, key).await;
            }
        }
    }
}

/// Tells every other instance sharing the store that stored workspace `name` changed (this
/// instance has refreshed its own copy already). A failed publish is logged, not returned:
/// the change is stored, and other instances re-read every workspace within `cache.ttl`.
pub async fn publish_workspace_change(store: &Store, name: &str) {
    let Store::Redis(redis) = store else { return };
    let outcome = redis.publish_workspace_change(name).await;
    if let Err(e) = counted(redis.invalidation_stats(), outcome) {
        tracing::warn!(
            error = %e,
            workspace = name,
            "workspace change not published; other instances see it within cache.ttl"
        );
    }
}

/// Counts a publish in `stats`, passing its outcome on.
fn counted(stats: &InvalidationStats, outcome: Result<(), StoreError>) -> Result<(), StoreError> {
    let counter = match outcome {
        Ok(()) => &stats.published,
        Err(_) => &stats.publish_failures,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    outcome
}

/// Drops `hash` (one that `key` answers to) here and everywhere: for a hash the key record does
/// not carry, such as the target of an unfinished upgrade.
pub async fn invalidate_hash_everywhere(
    cache: &KeyCache<Store>,
    hash: &SecretHash,
    key: &KeyRecord,
) {
    cache.invalidate(hash).await;
    publish(cache, hash, key).await;
}

/// Like [`invalidate_everywhere`], for a change to an existing key (update, rotate, revoke,
/// delete): then waits until every other live instance has confirmed dropping the key, at most
/// [`fleet::CONFIRM_TIMEOUT`], and reports how far it reached (see [`super::fleet`]).
pub async fn invalidate_confirmed(cache: &KeyCache<Store>, key: &KeyRecord) -> Propagation {
    cache.invalidate(&key.hash).await;
    match key.hash_scheme {
        HashScheme::KeyedBlake3 => publish_confirmed(cache, &key.hash, key).await,
        // As in `invalidate_everywhere`: only the copy of an unfinished upgrade is cached.
        HashScheme::Sha256 => match cache.store().upgrade_target(key).await {
            Some(to) => invalidate_hash_confirmed(cache, &to, key).await,
            None => nothing_cached(cache.store()),
        },
    }
}

/// Like [`invalidate_hash_everywhere`], waiting for confirmations as
/// [`invalidate_confirmed`] does.
pub async fn invalidate_hash_confirmed(
    cache: &KeyCache<Store>,
    hash: &SecretHash,
    key: &KeyRecord,
) -> Propagation {
    cache.invalidate(hash).await;
    publish_confirmed(cache, hash, key).await
}

/// The report of a change no cache can hold: every live instance is as good as confirmed.
fn nothing_cached(store: &Store) -> Propagation {
    match store.fleet() {
        Some(fleet) => Propagation {
            instances: fleet.instances(),
            unconfirmed: Vec::new(),
        },
        None => Propagation::alone(),
    }
}

async fn publish_confirmed(
    cache: &KeyCache<Store>,
    hash: &SecretHash,
    key: &KeyRecord,
) -> Propagation {
    let Store::Redis(store) = cache.store().as_ref() else {
        return Propagation::alone();
    };
    let fleet = store.fleet();
    // Read now, after the store write: an instance that announced itself since this one's last
    // heartbeat trusts its cache already and must be waited for. If Redis cannot say, the last
    // heartbeat's list is the best there is (the publish is likely to fail too).
    let live: Vec<String> = match store.live_instances().await {
        Ok(ids) => ids,
        Err(_) => fleet.live().iter().map(|id| id.to_string()).collect(),
    };
    let wait = fleet.expect(&live);
    let stats = store.invalidation_stats();
    // Confirmations come back on this instance's subscription: without it, none can be heard.
    let listening = stats.is_subscribed();
    let propagation = match counted(stats, store.publish_confirmable(hash, wait.seq()).await) {
        Ok(()) if listening => wait.finish(fleet::CONFIRM_TIMEOUT).await,
        Ok(()) => wait.unheard(),
        Err(e) => {
            tracing::warn!(
                error = %e,
                key_id = %key.id,
                "invalidation not published; other instances may serve the old record for up to cache.ttl"
            );
            wait.unheard()
        }
    };
    if !propagation.unconfirmed.is_empty() {
        tracing::warn!(
            key_id = %key.id,
            unconfirmed = ?propagation.unconfirmed,
            instances = propagation.instances,
            "change not confirmed by every live instance in time; those may serve the old record until they hear of it"
        );
    }
    propagation
}

async fn publish(cache: &KeyCache<Store>, hash: &SecretHash, key: &KeyRecord) {
    let store = cache.store();
    let Some(stats) = store.invalidation_stats() else {
        return;
    };
    if let Err(e) = counted(stats, store.publish_invalidation(hash).await) {
        // Not an error for the caller: the change is stored. Other instances that cached the
        // key keep the old record until their entry's `cache.ttl` runs out.
        tracing::warn!(
            error = %e,
            key_id = %key.id,
            "invalidation not published; other instances may serve the old record for up to cache.ttl"
        );
    }
}

/// The background task that applies other instances' invalidations to this instance's cache.
/// Stopped by [`Subscriber::stop`] or by dropping it.
pub struct Subscriber {
    cache: Arc<KeyCache<Store>>,
    task: Option<JoinHandle<()>>,
}

impl Subscriber {
    /// Starts subscribing for `cache` and the stored workspaces of `workspaces` if the store is
    /// shared (Redis); on the embedded backend this does nothing. Needs a Tokio runtime.
    pub fn start(cache: Arc<KeyCache<Store>>, workspaces: Arc<Directory>) -> Subscriber {
        let task = matches!(cache.store().as_ref(), Store::Redis(_)).then(|| {
            // Nothing is heard of other instances' changes until subscribed.
            cache.distrust();
            tokio::spawn(run(cache.clone(), workspaces))
        });
        Subscriber { cache, task }
    }

    /// Stops the task and waits until it has stopped (its connection is closed then).
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            // Aborting is safe at any await: the task holds nothing but its connection and
            // the cache, which every step leaves consistent.
            task.abort();
            let _ = task.await;
        }
        if let Some(stats) = self.cache.store().invalidation_stats() {
            self.cache.distrust();
            self.cache.lease().disarm();
            stats.subscribed.store(false, Ordering::Release);
        }
        if let Store::Redis(store) = self.cache.store().as_ref() {
            leave(store).await;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // Whoever owned it went away without `stop` (e.g. the serving future was dropped): the
        // task must not outlive it, reconnecting forever.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Subscribes, applies messages until the subscription is lost, and subscribes again, for ever.
async fn run(cache: Arc<KeyCache<Store>>, workspaces: Arc<Directory>) {
    let Store::Redis(store) = cache.store().as_ref() else {
        return;
    };
    let stats = store.invalidation_stats();
    let mut delay = RETRY_MIN_DELAY;
    let mut failures = 0u32;
    loop {
        match subscribe_and_announce(store).await {
            Ok((mut feed, announced)) => {
                // Whatever was published before now, since the last subscription (or since the
                // start: requests may have filled the cache before this), may have been missed;
                // from here on, changes are heard of. Only now that the announcement is in:
                // revokers wait for this instance from then on, so it may trust its cache.
                cache.lease().arm(std::time::Instant::now());
                cache.trust();
                workspaces.maybe_missed();
                store.breaker().close();
                stats.subscribed.store(true, Ordering::Release);
                let resubscribed = stats.subscriptions.fetch_add(1, Ordering::Relaxed) > 0;
                if resubscribed {
                    tracing::info!(
                        instance = store.fleet().id(),
                        "invalidation channel subscribed again; cached keys re-read"
                    );
                } else {
                    tracing::debug!(
                        instance = store.fleet().id(),
                        "invalidation channel subscribed"
                    );
                }
                delay = RETRY_MIN_DELAY;
                failures = 0;

                let why = listen(&cache, &workspaces, stats, &mut feed, announced).await;
                drop(feed);
                cache.distrust();
                cache.lease().disarm();
                stats.subscribed.store(false, Ordering::Release);
                stats.subscription_losses.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    reason = %why,
                    "invalidation channel lost; cached keys are re-read at every use until resubscribed"
                );
                // Distrusting now, this instance needs no confirming: revokers may stop waiting.
                leave(store).await;
            }
            Err(e) => {
                failures += 1;
                // One warning per streak: an outage would otherwise log every second.
                if failures == 1 {
                    tracing::warn!(error = %e, "cannot subscribe to the invalidation channel; retrying");
                } else {
                    tracing::debug!(error = %e, failures, "invalidation channel still unavailable");
                }
            }
        }
        tokio::time::sleep(with_jitter(delay)).await;
        delay = (delay * 2).min(RETRY_MAX_DELAY);
    }
}

/// Subscribes, then announces this instance in the fleet (the heartbeat's first beat); returns
/// the feed and when the announcement was sent.
async fn subscribe_and_announce(
    store: &RedisStore,
) -> Result<(InvalidationFeed, tokio::time::Instant), StoreError> {
    let feed = store.subscribe_invalidations().await?;
    let sent = tokio::time::Instant::now();
    let live = store.heartbeat(fleet::HEARTBEAT_TTL).await?;
    store.fleet().heard(live);
    Ok((feed, sent))
}

/// Confirms to the instance that asked that this one dropped what its message named; a
/// confirmation that does not get through leaves this instance reported unconfirmed.
fn confirm_to(store: Arc<Store>, confirm: Confirm) {
    tokio::spawn(async move {
        let Store::Redis(redis) = store.as_ref() else {
            return;
        };
        if let Err(e) = redis.publish_ack(&confirm.origin, confirm.seq).await {
            tracing::debug!(error = %e, origin = %confirm.origin, "invalidation not confirmed");
        }
    });
}

/// Withdraws this instance from the fleet, best effort (its announcement runs out anyway).
async fn leave(store: &RedisStore) {
    store.fleet().forget();
    if let Err(e) = store.leave_fleet().await {
        tracing::debug!(error = %e, "fleet announcement not withdrawn; it runs out by itself");
    }
}

/// Renews this instance's announcement every [`fleet::HEARTBEAT_INTERVAL`], keeping the live
/// ids each renewal returns. Resolves, saying why, once the last renewal that got through
/// (sent at `announced`) is so old that the announcement may have run out in Redis: revokers
/// no longer wait for this instance then, so it must stop trusting its cache first. The
/// margin covers the Redis clock running a little faster than this one.
async fn announce(store: &RedisStore, mut announced: tokio::time::Instant) -> String {
    loop {
        let lease_end = announced + fleet::HEARTBEAT_TTL - ANNOUNCE_MARGIN;
        let next = (tokio::time::Instant::now() + fleet::HEARTBEAT_INTERVAL).min(lease_end);
        tokio::time::sleep_until(next).await;
        let sent = tokio::time::Instant::now();
        if sent >= lease_end {
            break;
        }
        match tokio::time::timeout_at(lease_end, store.heartbeat(fleet::HEARTBEAT_TTL)).await {
            Ok(Ok(live)) => {
                store.fleet().heard(live);
                announced = sent;
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "fleet heartbeat failed; retrying"),
            Err(_) => break,
        }
    }
    format!(
        "no fleet heartbeat got through for {} ms",
        (fleet::HEARTBEAT_TTL - ANNOUNCE_MARGIN).as_millis()
    )
}

/// Applies messages until the feed ends or stops answering, or the fleet heartbeat stops
/// getting through; returns why.
async fn listen(
    cache: &KeyCache<Store>,
    workspaces: &Directory,
    stats: &InvalidationStats,
    feed: &mut InvalidationFeed,
    announced: tokio::time::Instant,
) -> String {
    let heartbeat = feed.heartbeat(HEARTBEAT_INTERVAL);
    tokio::pin!(heartbeat);
    let Store::Redis(store) = cache.store().as_ref() else {
        return "not a shared store".to_owned();
    };
    let announcing = announce(store, announced);
    tokio::pin!(announcing);
    let mut pulse = tokio::time::interval(fleet::PULSE_INTERVAL);
    // A tick missed (the process stood still) is one lapse, not a burst of catching up.
    pulse.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            dead = &mut heartbeat => return dead.to_string(),
            lapsed = &mut announcing => return lapsed,
            _ = pulse.tick() => {
                if cache.keep_lease(std::time::Instant::now()) {
                    tracing::info!(
                        "this instance stood still longer than the cache's lease; cached keys re-read"
                    );
                }
            }
            message = feed.next() => match message {
                Some(InvalidationMessage::Key { hash, confirm }) => {
                    cache.invalidate(&hash).await;
                    // Release: whoever reads the count sees the invalidation done.
                    stats.received.fetch_add(1, Ordering::Release);
                    // Only now, with the generation bumped: a request that arrives after the
                    // origin has heard this cannot take the old record, not even from a fill
                    // under way. Sent off this loop, which never waits on the store.
                    if let Some(confirm) = confirm.filter(|c| c.origin != store.fleet().id()) {
                        confirm_to(cache.store().clone(), confirm);
                    }
                }
                Some(InvalidationMessage::Ack(ack)) => store.fleet().acked(&ack),
                Some(InvalidationMessage::Workspace(name)) => {
                    // Read by the directory's own task: this loop never waits on the store.
                    workspaces.changed_elsewhere(&name);
                    stats.received.fetch_add(1, Ordering::Release);
                }
                Some(InvalidationMessage::Unreadable) => {
                    // It may name any key (a newer format during a rolling upgrade, say): trust
                    // nothing cached. The payload stays out of the log, whatever it holds.
                    cache.mark_all_stale();
                    workspaces.maybe_missed();
                    stats.unreadable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("unreadable invalidation message; cached keys re-read");
                }
                None => return "connection closed".to_owned(),
            },
        }
    }
}

/// `delay` plus up to half of it again at random, so that instances that lost Redis together
/// do not all come back in the same instant.
fn with_jitter(delay: Duration) -> Duration {
    let mut bytes = [0u8; 4];
    // Without randomness the plain delay is fine: jitter is a courtesy to the server.
    let r = getrandom::fill(&mut bytes).map_or(0, |()| u32::from_le_bytes(bytes));
    delay + delay.mul_f64(f64::from(r) / f64::from(u32::MAX) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretHash;

    #[test]
    fn messages_are_lowercase_hash_hex_and_nothing_else() {
        let hash = SecretHash([0xab; 32]);
        assert_eq!(
            InvalidationMessage::parse(hash.to_hex().as_bytes()),
            InvalidationMessage::Key {
                hash,
                confirm: None
            }
        );
        for bad in [
            &b""[..],
            b"not a hash",
            hash.to_hex().to_uppercase().as_bytes(),
            &hash.to_hex().as_bytes()[..63],
            format!("{}0", hash.to_hex()).as_bytes(),
            &[0xff; 64],
        ] {
            assert_eq!(
                InvalidationMessage::parse(bad),
                InvalidationMessage::Unreadable
            );
        }
    }

    #[test]
    fn a_change_may_ask_its_origin_to_be_confirmed() {
        let hash = SecretHash([0x5c; 32]);
        let hex = hash.to_hex();
        assert_eq!(
            InvalidationMessage::parse(format!("{hex} web-1.local-42-ab12 7").as_bytes()),
            InvalidationMessage::Key {
                hash,
                confirm: Some(Confirm {
                    origin: "web-1.local-42-ab12".into(),
                    seq: 7
                })
            }
        );
        assert_eq!(
            InvalidationMessage::parse(format!("{hex} a-1-0000 18446744073709551615").as_bytes()),
            InvalidationMessage::Key {
                hash,
                confirm: Some(Confirm {
                    origin: "a-1-0000".into(),
                    seq: u64::MAX
                })
            }
        );
        for bad in [
            format!("{hex} a-1-0000"),
            format!("{hex} a-1-0000 7 8"),
            format!("{hex}  a-1-0000 7"),
            format!("{hex} a-1-0000 -7"),
            format!("{hex} a-1-0000 +7"),
            format!("{hex} a-1-0000 18446744073709551616"),
            format!("{hex} A-1-0000 7"),
            format!("{hex} a:1 7"),
            format!("{hex} a-1-0000 7 "),
            format!("{} a-1-0000 7", &hex[..63]),
        ] {
            assert_eq!(
                InvalidationMessage::parse(bad.as_bytes()),
                InvalidationMessage::Unreadable,
                "{bad}"
            );
        }
    }

    #[test]
    fn workspace_messages_name_a_valid_workspace() {
        assert_eq!(
            InvalidationMessage::parse(b"ws:cust-42"),
            InvalidationMessage::Workspace("cust-42".into())
        );
        for bad in [&b"ws:"[..], b"ws:Cust", b"ws:a b", b"ws:\xff"] {
            assert_eq!(
                InvalidationMessage::parse(bad),
                InvalidationMessage::Unreadable
            );
        }
    }

    #[test]
    fn jitter_adds_at_most_half() {
        for _ in 0..100 {
            let d = with_jitter(Duration::from_millis(100));
            assert!((Duration::from_millis(100)..=Duration::from_millis(150)).contains(&d));
        }
    }
}
