//! The compact form of a key that the hot cache holds ([`CachedKey`]): only what the request
//! path reads (id, revoked, expiry, workspace, role, scopes, IP allowlist, rate limit, quota),
//! with the part that many keys have in common — a [`Grant`] — stored once and shared through
//! [`Grants`]. The full [`KeyRecord`] stays in the store, where the control plane reads it.
//!
//! Why: SPEC §8 allows a cached key under 450 bytes beyond its strings, and moka's own
//! bookkeeping takes about 300 of them. A `CachedKey` is 48 bytes (id inline, expiry as one
//! integer, one pointer to its grant) where a `KeyRecord` is over 500 plus its strings.
//!
//! Interned grants are kept only while something else holds them: whenever the interner has
//! doubled since its last sweep it drops those only it holds, so it never holds more than twice
//! the grants in use (and those are bounded by `cache.capacity`), however many distinct
//! workspaces, scope lists or allowlists come through. The sweep runs on a cache fill, under
//! the interner's lock (a std mutex: no await while it is held), and costs amortised O(1) per
//! new grant.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use ipnet::IpNet;
use time::OffsetDateTime;

use crate::config::{QuotaSpec, RateLimitSpec};
use crate::keys::{KeyId, KeyRecord, KeyStatus};

/// The interner sweeps no sooner than at this many grants: small sets are not worth a pass.
const MIN_SWEEP_AT: usize = 1024;
/// [`CachedKey::expires_at`] of a key without an expiry.
const NEVER: i64 = i64::MAX;

/// What the request path reads of a key, as the hot cache holds it.
#[derive(Debug, PartialEq)]
pub struct CachedKey {
    id: KeyId,
    revoked: bool,
    /// `expires_at` in Unix nanoseconds, [`NEVER`] without one. Expiries past 2262 (the end
    /// of the range) are clamped to it: none of them has come yet.
    expires_at: i64,
    grant: Arc<Grant>,
}

/// What a key is allowed, shared by every cached key with the same values: in practice most
/// keys of a workspace share one.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Grant {
    workspace: Box<str>,
    role: Option<Box<str>>,
    scopes: Box<[String]>,
    ip_allowlist: Box<[IpNet]>,
    rate_limit: Option<RateLimitSpec>,
    quota: Option<QuotaSpec>,
}

impl CachedKey {
    /// Public id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// Workspace the key belongs to.
    pub fn workspace(&self) -> &str {
        &self.grant.workspace
    }

    /// Named scope set from config.
    pub fn role(&self) -> Option<&str> {
        self.grant.role.as_deref()
    }

    /// Explicitly granted scopes.
    pub fn scopes(&self) -> &[String] {
        &self.grant.scopes
    }

    /// Client addresses allowed to use the key; empty means any.
    pub fn ip_allowlist(&self) -> &[IpNet] {
        &self.grant.ip_allowlist
    }

    /// Per-key rate limit override.
    pub fn rate_limit(&self) -> Option<&RateLimitSpec> {
        self.grant.rate_limit.as_ref()
    }

    /// Per-key usage allowance.
    pub fn quota(&self) -> Option<QuotaSpec> {
        self.grant.quota
    }

    /// Whether the key is revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked
    }

    /// When the key expires, if it does.
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        (self.expires_at != NEVER)
            .then(|| OffsetDateTime::from_unix_timestamp_nanos(self.expires_at.into()).ok())
            .flatten()
    }

    /// Whether the key is past its expiry at `now`.
    pub fn is_expired_at(&self, now: OffsetDateTime) -> bool {
        self.expires_at != NEVER && i128::from(self.expires_at) <= now.unix_timestamp_nanos()
    }

    /// Whether the key is past its expiry now (reads the clock only for a key that expires).
    pub fn is_expired(&self) -> bool {
        self.expires_at != NEVER && self.is_expired_at(OffsetDateTime::now_utc())
    }

    /// The derived status at `now`, as [`KeyRecord::status_at`]. Revocation wins over expiry.
    pub fn status_at(&self, now: OffsetDateTime) -> KeyStatus {
        if self.revoked {
            KeyStatus::Revoked
        } else if self.is_expired_at(now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }

    /// The grant this key shares with others.
    pub fn grant(&self) -> &Arc<Grant> {
        &self.grant
    }
}

/// The interner of [`Grant`]s (see the module docs).
#[derive(Debug, Default)]
pub struct Grants {
    inner: Mutex<Interned>,
}

#[derive(Debug, Default)]
struct Interned {
    set: HashSet<Arc<Grant>>,
    /// Sweep before growing past this many.
    sweep_at: usize,
}

impl Grants {
    /// An empty interner.
    pub fn new() -> Self {
        Grants::default()
    }

    /// The compact cached form of `record`, its grant shared with every other key's that has
    /// the same values. Takes the record to move its strings rather than copy them.
    pub fn compact(&self, record: KeyRecord) -> CachedKey {
        let expires_at = record.expires_at.map_or(NEVER, |at| {
            let nanos = at.unix_timestamp_nanos();
            i64::try_from(nanos).unwrap_or(if nanos < 0 { i64::MIN } else { NEVER })
        });
        let grant = Grant {
            workspace: record.workspace.into_boxed_str(),
            role: record.role.map(String::into_boxed_str),
            scopes: record.scopes.into_boxed_slice(),
            ip_allowlist: record.ip_allowlist.into_boxed_slice(),
            rate_limit: record.rate_limit,
            quota: record.quota,
        };
        CachedKey {
            id: record.id,
            revoked: record.revoked_at.is_some(),
            expires_at,
            grant: self.intern(grant),
        }
    }

    /// The shared grant equal to `grant`, kept from now on if there was none.
    pub fn intern(&self, grant: Grant) -> Arc<Grant> {
        // A panic under the lock leaves the set whole (nothing is half-inserted), so a
        // poisoned lock is still usable.
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = inner.set.get(&grant) {
            return found.clone();
        }
        if inner.set.len() >= inner.sweep_at {
            // Only the set holds these: no cached key or request uses them any more, and none
            // can take one but through this lock.
            inner.set.retain(|g| Arc::strong_count(g) > 1);
            inner.sweep_at = (2 * inner.set.len()).max(MIN_SWEEP_AT);
        }
        let grant = Arc::new(grant);
        inner.set.insert(grant.clone());
        grant
    }

    /// Grants held now, including any that only the interner holds until its next sweep.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set
            .len()
    }

    /// Whether no grant is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes of the grants held (their own allocations and the strings and lists in
    /// them), for the memory bench.
    pub fn heap_bytes(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .set
            .iter()
            .map(|g| {
                2 * size_of::<usize>()
                    + size_of::<Grant>()
                    + g.workspace.len()
                    + g.role.as_deref().map_or(0, str::len)
                    + g.scopes.len() * size_of::<String>()
                    + g.scopes.iter().map(String::len).sum::<usize>()
                    + g.ip_allowlist.len() * size_of::<IpNet>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Refill;
    use crate::keys::{HashScheme, SecretHash};
    use std::num::NonZeroU32;
    use std::time::Duration;

    fn record(workspace: &str, scopes: &[&str]) -> KeyRecord {
        let now = OffsetDateTime::now_utc();
        KeyRecord {
            id: KeyId::generate(),
            workspace: workspace.into(),
            name: "a name".into(),
            description: Some("a description".into()),
            prefix: "kg_live_abcd".into(),
            hash: SecretHash([7; 32]),
            hash_scheme: HashScheme::KeyedBlake3,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            role: None,
            ip_allowlist: vec![],
            expires_at: None,
            rate_limit: None,
            quota: None,
            owner: Some("cust-1".into()),
            metadata: None,
            created_at: now,
            created_by: "tests".into(),
            updated_at: now,
            revoked_at: None,
            last_used_at: None,
            usage_count: 3,
            sha256_tag: None,
            rotated_from: None,
            replaced_by: None,
        }
    }

    #[test]
    fn a_cached_key_keeps_every_field_the_request_path_reads() {
        let grants = Grants::new();
        let now = OffsetDateTime::now_utc();
        let mut full = record("acme", &["sessions:read", "sessions:write"]);
        full.role = Some("operator".into());
        full.ip_allowlist = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        full.expires_at = Some(now + time::Duration::hours(1));
        full.rate_limit = Some(RateLimitSpec {
            requests: NonZeroU32::new(5).unwrap(),
            period: Duration::from_secs(60),
            burst: NonZeroU32::new(7),
        });
        full.quota = Some(QuotaSpec {
            limit: 1000,
            refill: Refill::Monthly,
            refill_day: Some(3),
        });
        let key = grants.compact(full.clone());
        assert_eq!(key.id(), &full.id);
        assert_eq!(key.workspace(), "acme");
        assert_eq!(key.role(), Some("operator"));
        assert_eq!(key.scopes(), full.scopes.as_slice());
        assert_eq!(key.ip_allowlist(), full.ip_allowlist.as_slice());
        assert_eq!(key.rate_limit(), full.rate_limit.as_ref());
        assert_eq!(key.quota(), full.quota);
        assert!(!key.is_revoked());
        assert!(!key.is_expired());
        assert_eq!(key.status_at(now), KeyStatus::Active);
        for at in [
            now,
            now + time::Duration::minutes(59),
            now + time::Duration::hours(1),
            now + time::Duration::hours(2),
        ] {
            assert_eq!(key.status_at(at), full.status_at(at), "at {at}");
        }

        let mut revoked = full;
        revoked.revoked_at = Some(now);
        let key = grants.compact(revoked.clone());
        assert!(key.is_revoked());
        assert_eq!(key.status_at(now), KeyStatus::Revoked);
        assert_eq!(
            key.status_at(now + time::Duration::hours(2)),
            revoked.status_at(now + time::Duration::hours(2)),
            "revocation wins over expiry"
        );

        let mut past = record("acme", &[]);
        past.expires_at = Some(now - time::Duration::seconds(1));
        let key = grants.compact(past);
        assert!(key.is_expired());
        assert_eq!(key.status_at(now), KeyStatus::Expired);
        assert_eq!(key.role(), None);
        assert!(key.scopes().is_empty() && key.ip_allowlist().is_empty());
        assert_eq!((key.rate_limit(), key.quota()), (None, None));
    }

    #[test]
    fn a_cached_key_stays_compact() {
        // The SPEC §8 budget (see the module docs) is counted on these sizes.
        assert_eq!(size_of::<CachedKey>(), 48);
        assert!(size_of::<Grant>() <= 104, "{}", size_of::<Grant>());
    }

    #[test]
    fn expiries_outside_the_nanosecond_range_keep_their_meaning() {
        let grants = Grants::new();
        let now = OffsetDateTime::now_utc();
        let mut far = record("acme", &[]);
        far.expires_at = Some(time::macros::datetime!(9999-12-31 23:59:59 UTC));
        assert_eq!(grants.compact(far).status_at(now), KeyStatus::Active);
        let mut early = record("acme", &[]);
        early.expires_at = Some(time::macros::datetime!(1000-01-01 00:00 UTC));
        assert_eq!(grants.compact(early).status_at(now), KeyStatus::Expired);
        assert!(!grants.compact(record("acme", &[])).is_expired_at(now));
    }

    #[test]
    fn keys_with_the_same_grant_share_one() {
        let grants = Grants::new();
        let a = grants.compact(record("acme", &["sessions:read"]));
        let b = grants.compact(record("acme", &["sessions:read"]));
        assert_ne!(a.id(), b.id());
        assert!(Arc::ptr_eq(a.grant(), b.grant()));
        assert_eq!(grants.len(), 1);
        for other in [
            record("globex", &["sessions:read"]),
            record("acme", &["sessions:write"]),
            record("acme", &[]),
        ] {
            let c = grants.compact(other);
            assert!(!Arc::ptr_eq(a.grant(), c.grant()));
        }
        let mut with_role = record("acme", &["sessions:read"]);
        with_role.role = Some("operator".into());
        assert!(!Arc::ptr_eq(a.grant(), grants.compact(with_role).grant()));
        let mut with_ips = record("acme", &["sessions:read"]);
        with_ips.ip_allowlist = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(!Arc::ptr_eq(a.grant(), grants.compact(with_ips).grant()));
    }

    #[test]
    fn grants_no_key_holds_are_dropped_so_the_interner_stays_bounded() {
        let grants = Grants::new();
        let kept: Vec<CachedKey> = (0..100)
            .map(|i| grants.compact(record(&format!("kept-{i}"), &[])))
            .collect();
        // A flood of keys, each in a workspace of its own, none of them held for long.
        for i in 0..50 * MIN_SWEEP_AT {
            drop(grants.compact(record(&format!("flood-{i}"), &["x"])));
            assert!(grants.len() <= 2 * MIN_SWEEP_AT, "{} grants", grants.len());
        }
        // Grants still in use survive every sweep, and are still shared.
        for k in &kept {
            let again = grants.compact(record(k.workspace(), &[]));
            assert!(Arc::ptr_eq(k.grant(), again.grant()));
        }
    }
}
