//! One behaviour contract for every `KeyStore` backend: each scenario below is generic over the
//! store and runs against a fresh embedded store (redb file in a temporary directory) and a
//! fresh Redis store (its own `redis-server`). Backend-specific tests (restart of the file,
//! Redis outage, Redis key layout) follow the shared ones.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use keygate::config::{EmbeddedConfig, RedisConfig};
use keygate::keys::{KeyId, KeyRecord, KeyStatus, SecretFormat, SecretHasher};
use keygate::store::embedded::EmbeddedStore;
use keygate::store::redis::RedisStore;
use keygate::store::{KeyStore, ListQuery, RequestLogEntry, StoreError, UsageDelta};
use support::redis::RedisServer;
use time::OffsetDateTime;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// Now, in whole milliseconds: stores keep `last_used_at` and list positions at ms precision.
fn now_ms() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000)
        .expect("a truncated nanosecond is valid")
}

fn ms(n: i64) -> time::Duration {
    time::Duration::milliseconds(n)
}

/// A fresh active key of `ws` with a random id and secret, created now.
fn record(ws: &str, name: &str) -> KeyRecord {
    let secret = SecretFormat::new("kg", "test").generate();
    let now = now_ms();
    KeyRecord {
        id: KeyId::generate(),
        workspace: ws.into(),
        name: name.into(),
        description: None,
        prefix: "kg_test_abcd".into(),
        hash: SecretHasher::new("test-pepper-0123456789").hash(secret.expose()),
        hash_scheme: keygate::keys::HashScheme::KeyedBlake3,
        scopes: vec!["sessions:read".into()],
        role: None,
        ip_allowlist: Vec::new(),
        expires_at: None,
        rate_limit: None,
        quota: None,
        owner: None,
        metadata: None,
        created_at: now,
        created_by: "test".into(),
        updated_at: now,
        revoked_at: None,
        last_used_at: None,
        usage_count: 0,
    }
}

fn usage(r: &KeyRecord, count: u64, at: OffsetDateTime) -> UsageDelta {
    UsageDelta {
        workspace: r.workspace.clone(),
        id: r.id.clone(),
        count,
        last_used_at: at,
    }
}

fn log_entry(at: OffsetDateTime, path: &str) -> RequestLogEntry {
    RequestLogEntry {
        time: at,
        method: "GET".into(),
        path: path.into(),
        status: 200,
        client_ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        latency_ms: 1.5,
    }
}

fn query(limit: usize) -> ListQuery {
    ListQuery {
        limit,
        ..ListQuery::default()
    }
}

fn ids(records: &[KeyRecord]) -> Vec<KeyId> {
    records.iter().map(|r| r.id.clone()).collect()
}

/// Every page of a listing, following cursors; panics if it does not end.
async fn all_pages<S: KeyStore>(store: &S, ws: &str, mut q: ListQuery) -> Vec<Vec<KeyRecord>> {
    let mut pages = Vec::new();
    for _ in 0..100 {
        let page = store.list(ws, &q, now_ms()).await.expect("list");
        pages.push(page.keys);
        match page.next_cursor {
            Some(cursor) => q.cursor = Some(cursor),
            None => return pages,
        }
    }
    panic!("listing did not end after 100 pages");
}

// ---------------------------------------------------------------------------------------------
// Scenarios shared by every backend

async fn create_then_lookup_by_hash_and_id<S: KeyStore>(store: &S) {
    let r = record("acme", "first");
    store.create(&r, None, now_ms()).await.expect("create");

    assert_eq!(
        store.get_by_hash(&r.hash).await.expect("by hash"),
        Some(r.clone())
    );
    assert_eq!(
        store.get("acme", &r.id).await.expect("get"),
        Some(r.clone())
    );
    assert_eq!(
        store.get("other", &r.id).await.expect("get"),
        None,
        "another workspace's key"
    );
    assert_eq!(
        store.get("acme", &KeyId::generate()).await.expect("get"),
        None
    );
    let unknown = record("acme", "never stored");
    assert_eq!(
        store.get_by_hash(&unknown.hash).await.expect("by hash"),
        None
    );
    store.ping().await.expect("ping");
}

async fn duplicate_id_or_secret_is_a_conflict<S: KeyStore>(store: &S) {
    let r = record("acme", "original");
    store.create(&r, Some(5), now_ms()).await.expect("create");

    let mut same_id = record("acme", "same id");
    same_id.id = r.id.clone();
    let mut same_hash = record("acme", "same secret");
    same_hash.hash = r.hash;
    let mut same_hash_elsewhere = record("globex", "same secret, other workspace");
    same_hash_elsewhere.hash = r.hash;
    for dup in [&same_id, &same_hash, &same_hash_elsewhere] {
        let got = store.create(dup, Some(5), now_ms()).await;
        assert!(
            matches!(got, Err(StoreError::Conflict)),
            "{}: {got:?}",
            dup.name
        );
    }

    // The original is untouched and a refused create leaves nothing behind.
    assert_eq!(
        store.get_by_hash(&r.hash).await.expect("by hash"),
        Some(r.clone())
    );
    assert_eq!(store.get("acme", &same_hash.id).await.expect("get"), None);
    assert_eq!(
        store
            .get("globex", &same_hash_elsewhere.id)
            .await
            .expect("get"),
        None
    );
    let listed = store
        .list("acme", &query(10), now_ms())
        .await
        .expect("list");
    assert_eq!(ids(&listed.keys), vec![r.id.clone()]);
    let listed = store
        .list("globex", &query(10), now_ms())
        .await
        .expect("list");
    assert!(listed.keys.is_empty(), "{listed:?}");
    // The refused duplicate took no active slot: four more fit under a limit of 5.
    for i in 0..4 {
        let more = record("acme", &format!("more {i}"));
        store
            .create(&more, Some(5), now_ms())
            .await
            .expect("slot free");
    }
}

async fn update_replaces_the_record_but_keeps_usage<S: KeyStore>(store: &S) {
    let r = record("acme", "before");
    store.create(&r, None, now_ms()).await.expect("create");
    let used_at = now_ms() + ms(1500);
    store
        .add_usage(&[usage(&r, 3, used_at)])
        .await
        .expect("usage");

    // The admin path edits the record it read before the flusher wrote.
    let mut edited = r.clone();
    edited.name = "after".into();
    edited.description = Some("renamed".into());
    edited.scopes = vec!["sessions:write".into()];
    edited.owner = Some("cust-9".into());
    edited.expires_at = Some(now_ms() + time::Duration::days(30));
    edited.updated_at = now_ms() + ms(2000);
    store.update(&edited).await.expect("update");

    let mut want = edited.clone();
    want.usage_count = 3;
    want.last_used_at = Some(used_at);
    assert_eq!(
        store.get("acme", &r.id).await.expect("get"),
        Some(want.clone())
    );
    assert_eq!(
        store.get_by_hash(&r.hash).await.expect("by hash"),
        Some(want)
    );

    let ghost = record("acme", "never created");
    assert!(matches!(
        store.update(&ghost).await,
        Err(StoreError::NotFound)
    ));
    let mut other_ws = edited.clone();
    other_ws.workspace = "globex".into();
    assert!(matches!(
        store.update(&other_ws).await,
        Err(StoreError::NotFound)
    ));
    store.delete("acme", &r.id).await.expect("delete");
    assert!(matches!(
        store.update(&edited).await,
        Err(StoreError::NotFound)
    ));
}

async fn revoking_through_update_frees_an_active_slot<S: KeyStore>(store: &S) {
    let now = now_ms();
    let a = record("acme", "a");
    let b = record("acme", "b");
    store.create(&a, Some(2), now).await.expect("a");
    store.create(&b, Some(2), now).await.expect("b");
    let c = record("acme", "c");
    assert!(matches!(
        store.create(&c, Some(2), now).await,
        Err(StoreError::LimitReached)
    ));

    let mut revoked = a.clone();
    revoked.revoked_at = Some(now);
    revoked.updated_at = now;
    store.update(&revoked).await.expect("revoke");
    let got = store
        .get("acme", &a.id)
        .await
        .expect("get")
        .expect("still there");
    assert_eq!(got.status_at(now), KeyStatus::Revoked);
    assert_eq!(
        store.get_by_hash(&a.hash).await.expect("by hash"),
        Some(revoked.clone())
    );

    store
        .create(&c, Some(2), now)
        .await
        .expect("the revoked key's slot is free");
    let d = record("acme", "d");
    assert!(matches!(
        store.create(&d, Some(2), now).await,
        Err(StoreError::LimitReached)
    ));

    // A later edit of the revoked key does not take its slot back.
    let mut renamed = revoked.clone();
    renamed.name = "a, revoked".into();
    store.update(&renamed).await.expect("edit revoked");
    assert!(matches!(
        store.create(&d, Some(2), now).await,
        Err(StoreError::LimitReached)
    ));
}

async fn delete_removes_record_lookup_listing_and_logs<S: KeyStore>(store: &S) {
    let r = record("acme", "doomed");
    let keep = record("acme", "kept");
    store.create(&r, None, now_ms()).await.expect("create");
    store.create(&keep, None, now_ms()).await.expect("create");
    let used_at = now_ms();
    store
        .add_usage(&[usage(&r, 2, used_at)])
        .await
        .expect("usage");
    store
        .append_request_logs("acme", &r.id, &[log_entry(used_at, "/a")], 10)
        .await
        .expect("logs");
    store
        .append_request_logs("acme", &keep.id, &[log_entry(used_at, "/k")], 10)
        .await
        .expect("logs");

    let mut want = r.clone();
    want.usage_count = 2;
    want.last_used_at = Some(used_at);
    assert_eq!(store.delete("other", &r.id).await.expect("delete"), None);
    assert_eq!(
        store.delete("acme", &r.id).await.expect("delete"),
        Some(want)
    );

    assert_eq!(store.get("acme", &r.id).await.expect("get"), None);
    assert_eq!(store.get_by_hash(&r.hash).await.expect("by hash"), None);
    let listed = store
        .list("acme", &query(10), now_ms())
        .await
        .expect("list");
    assert_eq!(ids(&listed.keys), vec![keep.id.clone()]);
    assert!(
        store
            .request_logs("acme", &r.id, 10)
            .await
            .expect("logs")
            .is_empty()
    );
    assert_eq!(
        store
            .request_logs("acme", &keep.id, 10)
            .await
            .expect("logs")
            .len(),
        1
    );
    assert_eq!(
        store.delete("acme", &r.id).await.expect("delete again"),
        None
    );

    // Late writes for the deleted key change nothing: no usage, no logs, no leftover state that
    // would block a new key with the same secret.
    store
        .add_usage(&[usage(&r, 5, now_ms())])
        .await
        .expect("usage");
    store
        .append_request_logs("acme", &r.id, &[log_entry(now_ms(), "/late")], 10)
        .await
        .expect("logs");
    assert!(
        store
            .request_logs("acme", &r.id, 10)
            .await
            .expect("logs")
            .is_empty()
    );
    assert_eq!(store.get_by_hash(&r.hash).await.expect("by hash"), None);
    let mut reborn = record("acme", "same secret, new key");
    reborn.hash = r.hash;
    store
        .create(&reborn, None, now_ms())
        .await
        .expect("the secret is free again");
    assert_eq!(
        store.get_by_hash(&r.hash).await.expect("by hash"),
        Some(reborn)
    );
}

async fn list_is_newest_first_filtered_and_paginated<S: KeyStore>(store: &S) {
    let base = now_ms() - time::Duration::hours(1);
    let now = now_ms();
    let mut created = Vec::new();
    for i in 0..7 {
        let mut r = record("acme", &format!("key {i}"));
        // Keys 3 and 4 share a millisecond: the id breaks the tie.
        r.created_at = base + ms(1000 * i.min(3) + 1000 * (i - 4).max(0));
        if i % 2 == 0 {
            r.owner = Some("cust-1".into());
        }
        created.push(r);
    }
    created[1].revoked_at = Some(base + ms(10_000));
    created[5].expires_at = Some(now - ms(1));
    for r in &created {
        store.create(r, None, now).await.expect("create");
    }
    store
        .create(&record("globex", "elsewhere"), None, now)
        .await
        .expect("create");

    let mut newest_first = created.clone();
    newest_first.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));

    let pages = all_pages(store, "acme", query(3)).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![3, 3, 1]);
    let flat: Vec<KeyRecord> = pages.concat();
    assert_eq!(
        ids(&flat),
        ids(&newest_first),
        "no duplicates, no gaps, newest first"
    );
    assert_eq!(flat, newest_first, "records come back whole");

    let one_page = store.list("acme", &query(7), now).await.expect("list");
    assert_eq!(ids(&one_page.keys), ids(&newest_first));
    assert_eq!(one_page.next_cursor, None, "no cursor when nothing follows");
    let at_least_one = store.list("acme", &query(0), now).await.expect("list");
    assert_eq!(at_least_one.keys.len(), 1, "limit 0 reads as 1");

    let pick = |f: &dyn Fn(&KeyRecord) -> bool| -> Vec<KeyId> {
        newest_first
            .iter()
            .filter(|r| f(r))
            .map(|r| r.id.clone())
            .collect()
    };
    for (status, want) in [
        (
            KeyStatus::Active,
            pick(&|r: &KeyRecord| r.status_at(now) == KeyStatus::Active),
        ),
        (KeyStatus::Revoked, vec![created[1].id.clone()]),
        (KeyStatus::Expired, vec![created[5].id.clone()]),
    ] {
        let q = ListQuery {
            status: Some(status),
            limit: 2,
            ..ListQuery::default()
        };
        let got: Vec<KeyRecord> = all_pages(store, "acme", q).await.concat();
        assert_eq!(ids(&got), want, "status {status:?}");
    }

    let q = ListQuery {
        owner: Some("cust-1".into()),
        limit: 1,
        ..ListQuery::default()
    };
    let pages = all_pages(store, "acme", q).await;
    assert!(pages.iter().all(|p| p.len() == 1), "{pages:?}");
    let want = pick(&|r: &KeyRecord| r.owner.as_deref() == Some("cust-1"));
    assert_eq!(want.len(), 4);
    assert_eq!(ids(&pages.concat()), want);

    let q = ListQuery {
        owner: Some("cust-1".into()),
        status: Some(KeyStatus::Active),
        limit: 10,
        ..ListQuery::default()
    };
    let got = store.list("acme", &q, now).await.expect("list");
    assert_eq!(
        ids(&got.keys),
        pick(&|r: &KeyRecord| r.owner.as_deref() == Some("cust-1")
            && r.status_at(now) == KeyStatus::Active)
    );

    // A key deleted between two pages leaves no gap and no duplicate. The 4th key is the
    // second of the two that share a millisecond, so its position has to be found among ties.
    let first = store.list("acme", &query(4), now).await.expect("list");
    assert_eq!(first.keys[2].created_at, first.keys[3].created_at);
    let boundary = first.keys.last().expect("four keys").clone();
    store.delete("acme", &boundary.id).await.expect("delete");
    let mut rest = query(10);
    rest.cursor = first.next_cursor.clone();
    let rest = store.list("acme", &rest, now).await.expect("list");
    assert_eq!(ids(&rest.keys), ids(&newest_first[4..]));

    let bad = ListQuery {
        cursor: Some("not a cursor".into()),
        limit: 3,
        ..ListQuery::default()
    };
    assert!(matches!(
        store.list("acme", &bad, now).await,
        Err(StoreError::NotFound)
    ));
    assert!(
        store
            .list("nobody", &query(5), now)
            .await
            .expect("list")
            .keys
            .is_empty()
    );
}

async fn max_active_is_exact_under_concurrent_creates<S: KeyStore>(store: &S) {
    let now = now_ms();
    let candidates: Vec<KeyRecord> = (0..20).map(|i| record("acme", &format!("k{i}"))).collect();
    let results = join_all(candidates.iter().map(|r| store.create(r, Some(5), now))).await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::LimitReached)))
        .count();
    assert_eq!((created, refused), (5, 15), "{results:?}");
    let listed = store.list("acme", &query(50), now).await.expect("list");
    assert_eq!(listed.keys.len(), 5);
    for (r, result) in candidates.iter().zip(&results) {
        let stored = store.get_by_hash(&r.hash).await.expect("by hash");
        assert_eq!(stored.is_some(), result.is_ok(), "{}", r.name);
    }

    // Another workspace has its own count.
    store
        .create(&record("globex", "g"), Some(5), now)
        .await
        .expect("globex is empty");
    // Without a limit the count is not checked.
    store
        .create(&record("acme", "unlimited"), None, now)
        .await
        .expect("no limit");
}

async fn expired_and_revoked_keys_do_not_count<S: KeyStore>(store: &S) {
    let now = now_ms();
    let mut expiring = record("acme", "expiring");
    expiring.expires_at = Some(now + ms(10_000));
    store.create(&expiring, Some(2), now).await.expect("1st");
    let mut revoked = record("acme", "revoked");
    store.create(&revoked, Some(2), now).await.expect("2nd");
    let next = record("acme", "next");
    assert!(matches!(
        store.create(&next, Some(2), now).await,
        Err(StoreError::LimitReached)
    ));

    // At its expiry instant the key is expired (`expires_at <= now`): its slot is free.
    let later = now + ms(10_000);
    store
        .create(&next, Some(2), later)
        .await
        .expect("expired key does not count");
    let after = record("acme", "after");
    assert!(matches!(
        store.create(&after, Some(2), later).await,
        Err(StoreError::LimitReached)
    ));
    revoked.revoked_at = Some(later);
    store.update(&revoked).await.expect("revoke");
    store
        .create(&after, Some(2), later)
        .await
        .expect("revoked key does not count");

    // A key born expired or revoked is stored whatever the count, and takes no slot.
    let mut born_expired = record("acme", "born expired");
    born_expired.expires_at = Some(later - ms(1));
    store
        .create(&born_expired, Some(2), later)
        .await
        .expect("born expired");
    let mut born_revoked = record("acme", "born revoked");
    born_revoked.revoked_at = Some(later);
    store
        .create(&born_revoked, Some(2), later)
        .await
        .expect("born revoked");
    let one_more = record("acme", "one more");
    assert!(matches!(
        store.create(&one_more, Some(2), later).await,
        Err(StoreError::LimitReached)
    ));
    // Extending an expired key's expiry makes it count again.
    let mut revived = expiring.clone();
    revived.expires_at = Some(later + time::Duration::days(1));
    store.update(&revived).await.expect("extend");
    assert!(matches!(
        store.create(&one_more, Some(3), later).await,
        Err(StoreError::LimitReached)
    ));
    store
        .create(&one_more, Some(4), later)
        .await
        .expect("room under 4");
}

async fn add_usage_adds_counts_and_only_moves_last_use_forward<S: KeyStore>(store: &S) {
    let r = record("acme", "busy");
    let other = record("acme", "other");
    let gone = record("acme", "gone");
    for k in [&r, &other, &gone] {
        store.create(k, None, now_ms()).await.expect("create");
    }
    store.delete("acme", &gone.id).await.expect("delete");
    let t = now_ms();

    store
        .add_usage(&[
            usage(&r, 2, t + ms(5000)),
            usage(&gone, 7, t),
            usage(&r, 3, t + ms(2000)),
            usage(&other, 1, t),
            UsageDelta {
                workspace: "globex".into(),
                ..usage(&r, 100, t + ms(9000))
            },
        ])
        .await
        .expect("usage");
    let got = store
        .get("acme", &r.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!((got.usage_count, got.last_used_at), (5, Some(t + ms(5000))));
    let got = store
        .get("acme", &other.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!((got.usage_count, got.last_used_at), (1, Some(t)));

    store
        .add_usage(&[usage(&r, 1, t + ms(1000))])
        .await
        .expect("older use");
    let got = store
        .get_by_hash(&r.hash)
        .await
        .expect("by hash")
        .expect("exists");
    assert_eq!((got.usage_count, got.last_used_at), (6, Some(t + ms(5000))));

    store
        .add_usage(&[usage(&r, 4, t + ms(9000))])
        .await
        .expect("newer use");
    let got = store
        .get_by_hash(&r.hash)
        .await
        .expect("by hash")
        .expect("exists");
    assert_eq!(
        (got.usage_count, got.last_used_at),
        (10, Some(t + ms(9000)))
    );

    store.add_usage(&[]).await.expect("nothing to add");
    assert_eq!(store.get("acme", &gone.id).await.expect("get"), None);
    assert_eq!(store.get_by_hash(&gone.hash).await.expect("by hash"), None);
}

async fn request_logs_keep_the_newest_entries_newest_first<S: KeyStore>(store: &S) {
    let r = record("acme", "logged");
    let other = record("acme", "quiet");
    store.create(&r, None, now_ms()).await.expect("create");
    store.create(&other, None, now_ms()).await.expect("create");
    let t = now_ms();
    let entries: Vec<RequestLogEntry> = (0..7)
        .map(|i| log_entry(t + ms(i), &format!("/r/{i}")))
        .collect();

    store
        .append_request_logs("acme", &r.id, &entries[..5], 3)
        .await
        .expect("append");
    let got = store.request_logs("acme", &r.id, 10).await.expect("logs");
    assert_eq!(
        got,
        vec![entries[4].clone(), entries[3].clone(), entries[2].clone()]
    );

    store
        .append_request_logs("acme", &r.id, &entries[5..], 3)
        .await
        .expect("append");
    let got = store.request_logs("acme", &r.id, 10).await.expect("logs");
    assert_eq!(
        got,
        vec![entries[6].clone(), entries[5].clone(), entries[4].clone()]
    );
    let got = store.request_logs("acme", &r.id, 2).await.expect("logs");
    assert_eq!(got, vec![entries[6].clone(), entries[5].clone()]);
    assert!(
        store
            .request_logs("acme", &r.id, 0)
            .await
            .expect("logs")
            .is_empty()
    );

    assert!(
        store
            .request_logs("acme", &other.id, 10)
            .await
            .expect("logs")
            .is_empty()
    );
    assert!(
        store
            .request_logs("globex", &r.id, 10)
            .await
            .expect("logs")
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------
// Backends

fn embedded_store() -> (EmbeddedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = EmbeddedConfig {
        path: dir.path().join("nested/dir/keygate.redb"),
    };
    (
        EmbeddedStore::open(&config).expect("open embedded store"),
        dir,
    )
}

fn redis_config(server: &RedisServer, timeout: Duration) -> RedisConfig {
    RedisConfig {
        url: Some(server.url()),
        timeout,
        ..RedisConfig::default()
    }
}

async fn redis_store() -> (RedisStore, RedisServer) {
    let server = RedisServer::start();
    // Generous: tests share two cores; outage tests set their own.
    let config = redis_config(&server, Duration::from_secs(2));
    let store = RedisStore::connect(&config).await.expect("connect");
    (store, server)
}

/// Runs each scenario once per backend: `embedded::<name>` and `redis::<name>`.
macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let (store, _dir) = super::embedded_store();
                    super::$scenario(&store).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let (store, _server) = super::redis_store().await;
                    super::$scenario(&store).await;
                }
            )*
        }
    };
}

conformance!(
    create_then_lookup_by_hash_and_id,
    duplicate_id_or_secret_is_a_conflict,
    update_replaces_the_record_but_keeps_usage,
    revoking_through_update_frees_an_active_slot,
    delete_removes_record_lookup_listing_and_logs,
    list_is_newest_first_filtered_and_paginated,
    max_active_is_exact_under_concurrent_creates,
    expired_and_revoked_keys_do_not_count,
    add_usage_adds_counts_and_only_moves_last_use_forward,
    request_logs_keep_the_newest_entries_newest_first,
);

// ---------------------------------------------------------------------------------------------
// Backend-specific behaviour

#[tokio::test]
async fn embedded_data_survives_closing_and_reopening_the_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = EmbeddedConfig {
        path: dir.path().join("keygate.redb"),
    };
    let r = record("acme", "durable");
    let used_at = now_ms();
    {
        let store = EmbeddedStore::open(&config).expect("open");
        store.create(&r, Some(1), now_ms()).await.expect("create");
        store
            .add_usage(&[usage(&r, 4, used_at)])
            .await
            .expect("usage");
        store
            .append_request_logs("acme", &r.id, &[log_entry(used_at, "/x")], 10)
            .await
            .expect("logs");
        // The file is locked while open: a second handle is refused, not corrupted.
        assert!(matches!(
            EmbeddedStore::open(&config),
            Err(StoreError::Unavailable(_))
        ));
    }
    let store = EmbeddedStore::open(&config).expect("reopen");
    let mut want = r.clone();
    want.usage_count = 4;
    want.last_used_at = Some(used_at);
    assert_eq!(
        store.get_by_hash(&r.hash).await.expect("by hash"),
        Some(want)
    );
    assert_eq!(
        store
            .request_logs("acme", &r.id, 10)
            .await
            .expect("logs")
            .len(),
        1
    );
    // The active count survived too.
    let next = record("acme", "next");
    assert!(matches!(
        store.create(&next, Some(1), now_ms()).await,
        Err(StoreError::LimitReached)
    ));
}

/// Asserts `call` fails as `Unavailable`, and soon (it must not wait for Redis to come back).
async fn assert_unavailable<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) {
    let started = Instant::now();
    let got = call.await;
    let took = started.elapsed();
    assert!(
        matches!(got, Err(StoreError::Unavailable(_))),
        "{what}: {got:?}"
    );
    assert!(took < Duration::from_secs(2), "{what} took {took:?}");
}

/// Polls `ping` until Redis answers again, through the same store.
async fn wait_until_reachable(store: &RedisStore) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.ping().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "store did not reconnect within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn redis_outage_reports_unavailable_in_time_and_recovers() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(&redis_config(&server, Duration::from_millis(300)))
        .await
        .expect("connect");
    let r = record("acme", "before the outage");
    store.create(&r, Some(5), now_ms()).await.expect("create");

    server.stop();
    assert_unavailable("get_by_hash", store.get_by_hash(&r.hash)).await;
    assert_unavailable("ping", store.ping()).await;
    let during = record("acme", "during the outage");
    assert_unavailable("create", store.create(&during, Some(5), now_ms())).await;
    assert_unavailable("list", store.list("acme", &query(5), now_ms())).await;
    assert_unavailable("add_usage", store.add_usage(&[usage(&r, 1, now_ms())])).await;
    // Every call keeps failing fast while Redis stays down (reconnect attempts do not pile up).
    for _ in 0..5 {
        assert_unavailable("get_by_hash", store.get_by_hash(&r.hash)).await;
    }

    server.start_again();
    wait_until_reachable(&store).await;
    // The restarted server has no persistence: it is empty, and fully usable.
    let after = record("acme", "after the outage");
    store
        .create(&after, Some(5), now_ms())
        .await
        .expect("create after outage");
    assert_eq!(
        store.get_by_hash(&after.hash).await.expect("by hash"),
        Some(after)
    );
}

#[tokio::test]
async fn redis_store_starts_while_redis_is_down() {
    let mut server = RedisServer::start();
    server.stop();
    let store = RedisStore::connect(&redis_config(&server, Duration::from_millis(300)))
        .await
        .expect("connect does not need Redis");
    let r = record("acme", "early");
    assert_unavailable("ping", store.ping()).await;
    assert_unavailable("get_by_hash", store.get_by_hash(&r.hash)).await;

    server.start_again();
    wait_until_reachable(&store).await;
    store.create(&r, None, now_ms()).await.expect("create");
    assert_eq!(store.get_by_hash(&r.hash).await.expect("by hash"), Some(r));
}

#[tokio::test]
async fn redis_cluster_config_is_refused_for_now() {
    let config = RedisConfig {
        cluster: vec!["redis://127.0.0.1:1/".into()],
        ..RedisConfig::default()
    };
    let got = RedisStore::connect(&config).await;
    assert!(matches!(got, Err(StoreError::Unavailable(_))));
}

#[tokio::test]
async fn redis_key_layout_matches_the_documented_one() {
    let server = RedisServer::start();
    let config = RedisConfig {
        key_prefix: "kgtest:".into(),
        ..redis_config(&server, Duration::from_secs(2))
    };
    let store = RedisStore::connect(&config).await.expect("connect");
    let r = record("acme", "laid out");
    store.create(&r, Some(5), now_ms()).await.expect("create");
    store
        .add_usage(&[usage(&r, 2, now_ms())])
        .await
        .expect("usage");
    store
        .append_request_logs("acme", &r.id, &[log_entry(now_ms(), "/x")], 10)
        .await
        .expect("logs");

    let client = ::redis::Client::open(server.url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let mut keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    keys.sort();
    let hex = r.hash.to_hex();
    let mut want = vec![
        format!("kgtest:{{h:{hex}}}"),
        "kgtest:{ws:acme}:keys".to_owned(),
        "kgtest:{ws:acme}:created".to_owned(),
        "kgtest:{ws:acme}:active".to_owned(),
        format!("kgtest:{{ws:acme}}:logs:{}", r.id),
    ];
    want.sort();
    assert_eq!(keys, want);

    let fields: std::collections::HashMap<String, String> = ::redis::cmd("HGETALL")
        .arg(format!("kgtest:{{h:{hex}}}"))
        .query_async(&mut conn)
        .await
        .expect("HGETALL");
    assert_eq!(fields.get("uc").map(String::as_str), Some("2"));
    assert!(fields.contains_key("lu"));
    let stored: KeyRecord = serde_json::from_str(&fields["rec"]).expect("rec is a KeyRecord");
    assert_eq!(
        (stored.usage_count, stored.last_used_at),
        (0, None),
        "usage lives apart"
    );
    let hash_of: Option<String> = ::redis::cmd("HGET")
        .arg("kgtest:{ws:acme}:keys")
        .arg(r.id.as_str())
        .query_async(&mut conn)
        .await
        .expect("HGET");
    assert_eq!(hash_of.as_deref(), Some(hex.as_str()));

    // A delete that lands between add_usage's id lookup and its increment leaves the index
    // entry and drops the record: the increment must not bring the record hash back.
    let _: i64 = ::redis::cmd("DEL")
        .arg(format!("kgtest:{{h:{hex}}}"))
        .query_async(&mut conn)
        .await
        .expect("DEL");
    store
        .add_usage(&[usage(&r, 1, now_ms())])
        .await
        .expect("usage");
    let exists: i64 = ::redis::cmd("EXISTS")
        .arg(format!("kgtest:{{h:{hex}}}"))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(exists, 0, "usage recreated a deleted record");
    assert_eq!(store.get("acme", &r.id).await.expect("get"), None);
    // Such a leftover index entry lists nothing, and delete clears it.
    assert!(
        store
            .list("acme", &query(5), now_ms())
            .await
            .expect("list")
            .keys
            .is_empty()
    );
    assert_eq!(store.delete("acme", &r.id).await.expect("delete"), None);
    let left: Vec<String> = ::redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert!(left.is_empty(), "delete leaves nothing behind: {left:?}");
}
