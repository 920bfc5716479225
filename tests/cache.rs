//! The hot cache against a real embedded store: concurrent misses coalesce into one store call,
//! and a fill that races an invalidation cannot put the old record back.
//!
//! The store is wrapped (not replaced) so the test can count lookups and hold one lookup between
//! its read and its return, which is exactly where the race lives.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keygate::config::{CacheConfig, EmbeddedConfig};
use keygate::keys::{KeyId, KeyRecord, SecretHash, SecretHasher};
use keygate::store::cache::KeyCache;
use keygate::store::embedded::EmbeddedStore;
use keygate::store::{
    Admission, KeyPage, KeyStore, ListQuery, RequestLogEntry, StoreError, UsageDelta,
};
use time::OffsetDateTime;
use tokio::sync::{Mutex, oneshot};

/// A real store whose `get_by_hash` is counted and can be held after it has read.
struct Instrumented {
    inner: EmbeddedStore,
    lookups: AtomicU64,
    hold: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

impl KeyStore for Instrumented {
    async fn create(
        &self,
        r: &KeyRecord,
        admission: impl Into<Admission> + Send,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.inner.create(r, admission, now).await
    }
    async fn get_by_hash(&self, hash: &SecretHash) -> Result<Option<KeyRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let found = self.inner.get_by_hash(hash).await;
        let hold = self.hold.lock().await.take();
        if let Some((read_done, release)) = hold {
            let _ = read_done.send(());
            let _ = release.await;
        }
        found
    }
    async fn get(&self, ws: &str, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get(ws, id).await
    }
    async fn update(&self, r: &KeyRecord, expected: OffsetDateTime) -> Result<(), StoreError> {
        self.inner.update(r, expected).await
    }
    async fn delete(&self, ws: &str, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.delete(ws, id).await
    }
    async fn list(
        &self,
        ws: &str,
        q: &ListQuery,
        now: OffsetDateTime,
    ) -> Result<KeyPage, StoreError> {
        self.inner.list(ws, q, now).await
    }
    async fn add_usage(&self, d: &[UsageDelta]) -> Result<(), StoreError> {
        self.inner.add_usage(d).await
    }
    async fn append_request_logs(
        &self,
        ws: &str,
        id: &KeyId,
        e: &[RequestLogEntry],
        max: usize,
    ) -> Result<(), StoreError> {
        self.inner.append_request_logs(ws, id, e, max).await
    }
    async fn request_logs(
        &self,
        ws: &str,
        id: &KeyId,
        limit: usize,
    ) -> Result<Vec<RequestLogEntry>, StoreError> {
        self.inner.request_logs(ws, id, limit).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

struct Fixture {
    store: Arc<Instrumented>,
    cache: Arc<KeyCache<Instrumented>>,
    record: KeyRecord,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let inner = EmbeddedStore::open(&EmbeddedConfig {
        path: dir.path().join("cache.redb"),
    })
    .unwrap();
    let store = Arc::new(Instrumented {
        inner,
        lookups: AtomicU64::new(0),
        hold: Mutex::new(None),
    });
    let now = keygate::control::now_ms();
    let record = KeyRecord {
        id: KeyId::generate(),
        workspace: "acme".into(),
        name: "race".into(),
        description: None,
        prefix: "kg_live_abcd".into(),
        hash: SecretHasher::new("cache-test-pepper-0123").hash("kg_live_secret"),
        hash_scheme: keygate::keys::HashScheme::KeyedBlake3,
        scopes: vec!["sessions:read".into()],
        role: None,
        ip_allowlist: vec![],
        expires_at: None,
        rate_limit: None,
        quota: None,
        owner: None,
        metadata: None,
        created_at: now,
        created_by: "tests".into(),
        updated_at: now,
        revoked_at: None,
        last_used_at: None,
        usage_count: 0,
        sha256_tag: None,
        rotated_from: None,
        replaced_by: None,
    };
    store.create(&record, None, now).await.unwrap();
    let cache = Arc::new(KeyCache::new(store.clone(), &CacheConfig::default()));
    Fixture {
        store,
        cache,
        record,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_make_one_store_call() {
    let f = fixture().await;
    let hash = f.record.hash;
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let cache = f.cache.clone();
            tokio::spawn(async move { cache.get(&hash).await.unwrap().unwrap().id().clone() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), f.record.id);
    }
    assert_eq!(f.store.lookups.load(Ordering::SeqCst), 1);
    // And hits stay hits.
    f.cache.get(&hash).await.unwrap().unwrap();
    assert_eq!(f.store.lookups.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_racing_an_invalidation_cannot_restore_the_old_record() {
    let f = fixture().await;
    let hash = f.record.hash;
    let (read_done_tx, read_done_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    *f.store.hold.lock().await = Some((read_done_tx, release_rx));

    // A lookup reads the active record, and is held before it returns to the cache.
    let racing = {
        let cache = f.cache.clone();
        tokio::spawn(async move { cache.get(&hash).await.unwrap().unwrap() })
    };
    read_done_rx.await.unwrap();

    // Meanwhile the key is revoked: store write, then invalidation.
    let mut revoked = f.record.clone();
    revoked.revoked_at = Some(OffsetDateTime::now_utc());
    revoked.updated_at = f.record.updated_at + time::Duration::milliseconds(1);
    f.store.update(&revoked, f.record.updated_at).await.unwrap();
    f.cache.invalidate(&hash).await;

    release_tx.send(()).unwrap();
    let seen_by_racer = racing.await.unwrap();
    assert!(
        seen_by_racer.is_revoked(),
        "the racing lookup noticed the invalidation and re-read"
    );
    for _ in 0..3 {
        let now = f.cache.get(&hash).await.unwrap().unwrap();
        assert!(now.is_revoked(), "the old record came back into the cache");
    }
}

#[tokio::test]
async fn unknown_hashes_are_cached_negatively() {
    let f = fixture().await;
    let unknown = SecretHasher::new("cache-test-pepper-0123").hash("kg_live_nobody");
    for _ in 0..5 {
        assert!(f.cache.get(&unknown).await.unwrap().is_none());
    }
    assert_eq!(f.store.lookups.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_read_before_mark_all_stale_are_re_read_once() {
    let f = fixture().await;
    let hash = f.record.hash;
    let unknown = SecretHasher::new("cache-test-pepper-0123").hash("kg_live_nobody");
    assert!(f.cache.get(&unknown).await.unwrap().is_none());
    let (read_done_tx, read_done_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    *f.store.hold.lock().await = Some((read_done_tx, release_rx));

    // A lookup reads the active record and is held before it returns to the cache.
    let racing = {
        let cache = f.cache.clone();
        tokio::spawn(async move { cache.get(&hash).await.unwrap().unwrap() })
    };
    read_done_rx.await.unwrap();
    // The key is revoked elsewhere and the message is lost: the cache only learns that it may
    // have missed something.
    let mut revoked = f.record.clone();
    revoked.revoked_at = Some(OffsetDateTime::now_utc());
    revoked.updated_at = f.record.updated_at + time::Duration::milliseconds(1);
    f.store.update(&revoked, f.record.updated_at).await.unwrap();
    f.cache.mark_all_stale();
    release_tx.send(()).unwrap();
    racing.await.unwrap();

    let lookups = f.store.lookups.load(Ordering::SeqCst);
    for _ in 0..3 {
        let now = f.cache.get(&hash).await.unwrap().unwrap();
        assert!(
            now.is_revoked(),
            "an entry read before the mark was trusted"
        );
    }
    assert!(f.cache.get(&unknown).await.unwrap().is_none());
    assert!(f.cache.get(&unknown).await.unwrap().is_none());
    assert_eq!(
        f.store.lookups.load(Ordering::SeqCst),
        lookups + 2,
        "each entry re-read once (the record and the negative one), then cached again"
    );
}

#[tokio::test]
async fn while_distrusted_records_are_re_read_but_unknown_hashes_stay_cached() {
    let f = fixture().await;
    let hash = f.record.hash;
    let unknown = SecretHasher::new("cache-test-pepper-0123").hash("kg_live_nobody");
    f.cache.distrust();
    let before = f.store.lookups.load(Ordering::SeqCst);
    for _ in 0..3 {
        f.cache.get(&hash).await.unwrap().unwrap();
        assert!(f.cache.get(&unknown).await.unwrap().is_none());
    }
    // The record at every use; the unknown hash once (a flood of wrong keys stays off a store
    // that is likely struggling).
    assert_eq!(f.store.lookups.load(Ordering::SeqCst), before + 3 + 1);
}

/// A process that stood still (SIGSTOP) longer than the cache's lease may hold an invalidation
/// unread after the revoker stopped waiting for it: its first lookup after it goes on re-reads
/// the store (and the lease, renewed, trusts what it read).
#[tokio::test]
async fn a_run_out_lease_makes_cached_entries_re_read_once() {
    let f = fixture().await;
    let hash = f.record.hash;
    f.cache.lease().arm(std::time::Instant::now());
    assert!(!f.cache.get(&hash).await.unwrap().unwrap().is_revoked());
    // Revoked elsewhere; the message waits unread. The lease was last renewed an hour ago.
    let mut revoked = f.record.clone();
    revoked.revoked_at = Some(OffsetDateTime::now_utc());
    revoked.updated_at = f.record.updated_at + time::Duration::milliseconds(1);
    f.store.update(&revoked, f.record.updated_at).await.unwrap();
    f.cache
        .lease()
        .arm(std::time::Instant::now() - std::time::Duration::from_secs(3600));
    let lookups = f.store.lookups.load(Ordering::SeqCst);

    for _ in 0..3 {
        let now = f.cache.get(&hash).await.unwrap().unwrap();
        assert!(now.is_revoked(), "served from before the lapse");
    }
    assert_eq!(
        f.store.lookups.load(Ordering::SeqCst),
        lookups + 1,
        "re-read once, then trusted under the renewed lease"
    );
    assert_eq!(f.cache.stats().lease_lapses.load(Ordering::SeqCst), 1);
}
