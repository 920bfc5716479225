//! One behaviour contract for every `KeyStore` backend: each scenario below is generic over the
//! store and runs against a fresh embedded store (redb file in a temporary directory) and a
//! fresh Redis store (its own `redis-server`), each behind the `Store` enum the gateway uses, so
//! its dispatch is checked too. Backend-specific tests (restart of the file, Redis outage, Redis
//! key layout, an upgrade cut short) follow the shared ones.

#[macro_use]
mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use keygate::config::{CacheConfig, EmbeddedConfig, RedisConfig};
use keygate::control::{Changed, KeyManager};
use keygate::keys::{HashScheme, KeyId, KeyRecord, KeyStatus, SecretFormat, SecretHash};
use keygate::store::cache::KeyCache;
use keygate::store::embedded::EmbeddedStore;
use keygate::store::redis::RedisStore;
use keygate::store::{
    AuditEntry, AuditPage, KeyLogs, KeyStore, ListQuery, QuotaCount, QuotaSpend, RequestLogEntry,
    Store, StoreError, USAGE_DAYS_KEPT, UsageDelta,
};
use support::redis::RedisServer;
use support::stores::{
    embedded_backend, embedded_store, hasher, ms, now_ms, record, redis_backend,
    redis_cluster_store, redis_config, redis_store,
};
use time::{Date, OffsetDateTime};

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A key imported with only a digest of its secret, and the keyed hash the gateway computes on
/// its first use. The store never computes either: unkeyed BLAKE3 stands in for SHA-256 here.
fn sha256_import(ws: &str, name: &str) -> (KeyRecord, SecretHash) {
    let secret = format!("edsk_live_{}", KeyId::generate().as_str());
    let mut r = record(ws, name);
    r.prefix = "edsk_live_abcd".into();
    r.hash = SecretHash(*blake3::hash(secret.as_bytes()).as_bytes());
    r.hash_scheme = HashScheme::Sha256;
    (r, hasher().hash(&secret))
}

/// `r` as it reads after `upgrade_hash(…, new_hash)`, with this usage.
fn upgraded(
    r: &KeyRecord,
    new_hash: SecretHash,
    count: u64,
    last: Option<OffsetDateTime>,
) -> KeyRecord {
    KeyRecord {
        hash: new_hash,
        hash_scheme: HashScheme::KeyedBlake3,
        usage_count: count,
        last_used_at: last,
        ..r.clone()
    }
}

fn usage(r: &KeyRecord, count: u64, at: OffsetDateTime) -> UsageDelta {
    UsageDelta {
        workspace: r.workspace.clone(),
        id: r.id.clone(),
        count,
        last_used_at: at,
        days: vec![(at.date(), count)],
    }
}

/// A delta of `r` whose uses fell on these days (`count` is their sum).
fn usage_on(r: &KeyRecord, days: &[(Date, u64)]) -> UsageDelta {
    UsageDelta {
        count: days.iter().map(|(_, n)| n).sum(),
        days: days.to_vec(),
        ..usage(r, 0, now_ms())
    }
}

/// Today (UTC) and `n` days before it.
fn days_ago(n: i64) -> Date {
    OffsetDateTime::now_utc().date() - time::Duration::days(n)
}

fn log_entry(at: OffsetDateTime, path: &str) -> RequestLogEntry {
    RequestLogEntry {
        time: at,
        method: "GET".into(),
        path: path.into(),
        status: 200,
        client_ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        latency_ms: 1.5,
        code: None,
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
    store.update(&edited, r.updated_at).await.expect("update");

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
        store.update(&ghost, ghost.updated_at).await,
        Err(StoreError::NotFound)
    ));
    let mut other_ws = edited.clone();
    other_ws.workspace = "globex".into();
    assert!(matches!(
        store.update(&other_ws, edited.updated_at).await,
        Err(StoreError::NotFound)
    ));
    store.delete("acme", &r.id).await.expect("delete");
    assert!(matches!(
        store.update(&edited, edited.updated_at).await,
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
    revoked.updated_at = a.updated_at + ms(1);
    store.update(&revoked, a.updated_at).await.expect("revoke");
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
    renamed.updated_at = revoked.updated_at + ms(1);
    store
        .update(&renamed, revoked.updated_at)
        .await
        .expect("edit revoked");
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
        Err(StoreError::InvalidCursor)
    ));
    for garbage in ["", ":", "12:not-a-key-id", "x:key_0000000000000000000000"] {
        let bad = ListQuery {
            cursor: Some(garbage.into()),
            limit: 3,
            ..ListQuery::default()
        };
        let got = store.list("acme", &bad, now).await;
        assert!(
            matches!(got, Err(StoreError::InvalidCursor)),
            "{garbage:?}: {got:?}"
        );
    }
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
    let read = revoked.updated_at;
    revoked.updated_at = read + ms(1);
    store.update(&revoked, read).await.expect("revoke");
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
    store
        .update(&revived, expiring.updated_at)
        .await
        .expect("extend");
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

async fn daily_usage_is_split_by_day_kept_90_days_and_deleted_with_the_key<S: KeyStore>(store: &S) {
    let r = record("acme", "daily");
    let other = record("acme", "other");
    let gone = record("acme", "gone");
    for k in [&r, &other, &gone] {
        store.create(k, None, now_ms()).await.expect("create");
    }
    store.delete("acme", &gone.id).await.expect("delete");
    let kept = i64::from(USAGE_DAYS_KEPT);
    let (today, all) = (days_ago(0), days_ago(kept + 30));

    assert_eq!(
        store
            .daily_usage("acme", &r.id, all, today)
            .await
            .expect("no usage yet"),
        []
    );
    store
        .add_usage(&[
            usage_on(&r, &[(days_ago(2), 2), (today, 3)]),
            usage_on(&other, &[(today, 1)]),
            usage_on(&gone, &[(today, 9)]),
            usage_on(&r, &[(today, 4)]),
            // The oldest day kept, and the day before it (dropped).
            usage_on(&r, &[(days_ago(kept - 1), 1), (days_ago(kept), 6)]),
            UsageDelta {
                workspace: "globex".into(),
                ..usage_on(&r, &[(today, 100)])
            },
        ])
        .await
        .expect("usage");
    assert_eq!(
        store
            .daily_usage("acme", &r.id, all, today)
            .await
            .expect("daily"),
        [(days_ago(kept - 1), 1), (days_ago(2), 2), (today, 7)]
    );
    let got = store
        .get("acme", &r.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.usage_count, 16, "usage_count counts every use");
    // Only the days asked for.
    assert_eq!(
        store
            .daily_usage("acme", &r.id, days_ago(2), days_ago(1))
            .await
            .expect("daily"),
        [(days_ago(2), 2)]
    );
    // Later flushes add to the same day.
    store
        .add_usage(&[usage_on(&r, &[(today, 1)])])
        .await
        .expect("usage");
    assert_eq!(
        store
            .daily_usage("acme", &r.id, today, today)
            .await
            .expect("daily"),
        [(today, 8)]
    );
    assert_eq!(
        store
            .daily_usage("globex", &r.id, all, today)
            .await
            .expect("other workspace"),
        []
    );
    assert_eq!(
        store
            .daily_usage("acme", &gone.id, all, today)
            .await
            .expect("deleted key"),
        []
    );

    store.delete("acme", &r.id).await.expect("delete");
    assert_eq!(
        store
            .daily_usage("acme", &r.id, all, today)
            .await
            .expect("after delete"),
        []
    );
    store
        .add_usage(&[usage_on(&r, &[(today, 5)])])
        .await
        .expect("late usage");
    assert_eq!(
        store
            .daily_usage("acme", &r.id, all, today)
            .await
            .expect("late usage of a deleted key"),
        []
    );
    assert_eq!(
        store
            .daily_usage("acme", &other.id, all, today)
            .await
            .expect("other key"),
        [(today, 1)]
    );
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

/// Request-log entries `/<tag>/0` … of one key, a millisecond apart from `t`.
fn log_entries(t: OffsetDateTime, tag: &str, n: usize) -> Vec<RequestLogEntry> {
    (0..n)
        .map(|i| log_entry(t + ms(i as i64), &format!("/{tag}/{i}")))
        .collect()
}

fn logs_of<'a>(r: &'a KeyRecord, entries: &'a [RequestLogEntry]) -> KeyLogs<'a> {
    KeyLogs {
        workspace: &r.workspace,
        id: &r.id,
        entries,
    }
}

async fn a_usage_flush_writes_counts_and_logs_of_every_key<S: KeyStore>(store: &S) {
    let (a, b, c) = (
        record("acme", "a"),
        record("acme", "b"),
        record("other", "c"),
    );
    let gone = record("acme", "deleted");
    for r in [&a, &b, &c, &gone] {
        store.create(r, None, now_ms()).await.expect("create");
    }
    store.delete("acme", &gone.id).await.expect("delete");
    let t = now_ms();
    let earlier = log_entries(t, "a-earlier", 2);
    store
        .append_request_logs("acme", &a.id, &earlier, 4)
        .await
        .expect("append");

    let a_logs = log_entries(t + ms(10), "a", 3);
    let b_logs = log_entries(t + ms(10), "b", 6);
    let gone_logs = log_entries(t, "gone", 1);
    store
        .write_usage(
            &[
                usage(&a, 3, t + ms(12)),
                usage(&c, 2, t),
                usage(&gone, 5, t),
            ],
            // b has only refusals (logged, not counted); c has no log entries.
            &[
                logs_of(&a, &a_logs),
                logs_of(&b, &b_logs),
                logs_of(&c, &[]),
                logs_of(&gone, &gone_logs),
            ],
            4,
        )
        .await
        .expect("flush");

    let got_a = store.get("acme", &a.id).await.expect("get").expect("a");
    assert_eq!(
        (got_a.usage_count, got_a.last_used_at),
        (3, Some(t + ms(12)))
    );
    let got_b = store.get("acme", &b.id).await.expect("get").expect("b");
    assert_eq!((got_b.usage_count, got_b.last_used_at), (0, None));
    assert_eq!(
        store
            .get("other", &c.id)
            .await
            .expect("get")
            .expect("c")
            .usage_count,
        2
    );
    assert_eq!(
        store.get("acme", &gone.id).await.expect("get"),
        None,
        "not brought back"
    );

    let newest_first = |entries: &[RequestLogEntry]| -> Vec<RequestLogEntry> {
        entries.iter().rev().cloned().collect()
    };
    // Each key trimmed to its own newest 4, older entries included.
    let mut want_a = newest_first(&a_logs);
    want_a.push(earlier[1].clone());
    assert_eq!(
        store.request_logs("acme", &a.id, 10).await.expect("logs"),
        want_a
    );
    assert_eq!(
        store.request_logs("acme", &b.id, 10).await.expect("logs"),
        newest_first(&b_logs[2..])
    );
    assert!(
        store
            .request_logs("other", &c.id, 10)
            .await
            .expect("logs")
            .is_empty()
    );
    assert!(
        store
            .request_logs("acme", &gone.id, 10)
            .await
            .expect("logs")
            .is_empty(),
        "no log for a deleted key"
    );
    assert_eq!(
        store
            .daily_usage("acme", &a.id, days_ago(1), days_ago(0))
            .await
            .expect("days"),
        [(t.date(), 3)]
    );

    // A flush of logs alone, and one of counts alone.
    let more = log_entries(t + ms(20), "b-more", 1);
    store
        .write_usage(&[], &[logs_of(&b, &more)], 4)
        .await
        .expect("logs only");
    assert_eq!(
        store.request_logs("acme", &b.id, 1).await.expect("logs"),
        more.clone()
    );
    store
        .write_usage(&[usage(&b, 1, t + ms(30))], &[], 4)
        .await
        .expect("counts only");
    assert_eq!(
        store
            .get("acme", &b.id)
            .await
            .expect("get")
            .expect("b")
            .usage_count,
        1
    );
    store.write_usage(&[], &[], 4).await.expect("nothing");
}

async fn sha256_imports_are_indexed_apart_until_upgraded<S: KeyStore>(store: &S) {
    let (mut r, new_hash) = sha256_import("acme", "imported");
    // Older than `native`, so the listing order is known.
    r.created_at -= time::Duration::seconds(1);
    store.create(&r, Some(5), now_ms()).await.expect("create");
    let native = record("acme", "native");
    store
        .create(&native, Some(5), now_ms())
        .await
        .expect("create");

    // Only the SHA-256 index finds it, and only it.
    assert_eq!(store.get_by_hash(&r.hash).await.expect("by hash"), None);
    assert_eq!(store.get_by_hash(&new_hash).await.expect("by hash"), None);
    assert_eq!(
        store.get_by_sha256(&r.hash).await.expect("by sha256"),
        Some(r.clone())
    );
    assert_eq!(
        store.get_by_sha256(&native.hash).await.expect("by sha256"),
        None,
        "a keyed hash is not a SHA-256 digest"
    );
    assert_eq!(
        store.get("acme", &r.id).await.expect("get"),
        Some(r.clone())
    );
    // The two namespaces are apart: the same 32 bytes may index one key in each.
    let mut twin = record("acme", "keyed twin");
    twin.hash = r.hash;
    store
        .create(&twin, None, now_ms())
        .await
        .expect("other namespace");
    assert_eq!(
        store.get_by_hash(&r.hash).await.expect("by hash"),
        Some(twin.clone())
    );
    assert_eq!(
        store.get_by_sha256(&r.hash).await.expect("by sha256"),
        Some(r.clone())
    );
    store.delete("acme", &twin.id).await.expect("delete twin");
    // Within its namespace a digest is taken once.
    let mut dup = sha256_import("globex", "same digest").0;
    dup.hash = r.hash;
    assert!(matches!(
        store.create(&dup, None, now_ms()).await,
        Err(StoreError::Conflict)
    ));

    // Before the upgrade: usage, edits and listing work as for any key.
    let t = now_ms();
    store.add_usage(&[usage(&r, 3, t)]).await.expect("usage");
    let mut edited = r.clone();
    edited.name = "imported, renamed".into();
    edited.updated_at = t + ms(1);
    store.update(&edited, r.updated_at).await.expect("update");
    let before = KeyRecord {
        usage_count: 3,
        last_used_at: Some(t),
        ..edited.clone()
    };
    assert_eq!(
        store.get_by_sha256(&r.hash).await.expect("by sha256"),
        Some(before.clone())
    );
    let listed = store
        .list("acme", &query(10), now_ms())
        .await
        .expect("list");
    assert_eq!(listed.keys, vec![native.clone(), before.clone()]);
    // The scheme is part of the key's identity, like the hash.
    let mut wrong_scheme = edited.clone();
    wrong_scheme.hash_scheme = HashScheme::KeyedBlake3;
    assert!(matches!(
        store.update(&wrong_scheme, edited.updated_at).await,
        Err(StoreError::Conflict)
    ));

    let want = upgraded(&edited, new_hash, 3, Some(t));
    assert_eq!(
        store
            .upgrade_hash("acme", &r.id, &new_hash)
            .await
            .expect("upgrade"),
        want
    );
    assert_eq!(
        store.get_by_hash(&new_hash).await.expect("by hash"),
        Some(want.clone())
    );
    assert_eq!(store.get_by_sha256(&r.hash).await.expect("by sha256"), None);
    assert_eq!(
        store.get("acme", &r.id).await.expect("get"),
        Some(want.clone())
    );
    let listed = store
        .list("acme", &query(10), now_ms())
        .await
        .expect("list");
    assert_eq!(listed.keys, vec![native.clone(), want.clone()]);
    assert_eq!(
        store
            .upgrade_hash("acme", &r.id, &new_hash)
            .await
            .expect("again"),
        want,
        "upgrading twice changes nothing"
    );
    let elsewhere = record("acme", "x").hash;
    assert!(matches!(
        store.upgrade_hash("acme", &r.id, &elsewhere).await,
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        store.upgrade_hash("globex", &r.id, &new_hash).await,
        Err(StoreError::NotFound)
    ));

    // After: a record read before the upgrade is stale; the upgraded one edits fine, and usage
    // goes on adding up.
    assert!(matches!(
        store.update(&edited, edited.updated_at).await,
        Err(StoreError::Conflict)
    ));
    let mut renamed = want.clone();
    renamed.name = "upgraded".into();
    store
        .update(&renamed, want.updated_at)
        .await
        .expect("update upgraded");
    store
        .add_usage(&[usage(&r, 2, t + ms(5))])
        .await
        .expect("usage");
    let after = KeyRecord {
        usage_count: 5,
        last_used_at: Some(t + ms(5)),
        ..renamed.clone()
    };
    assert_eq!(
        store.get_by_hash(&new_hash).await.expect("by hash"),
        Some(after.clone())
    );
    assert_eq!(
        store.delete("acme", &r.id).await.expect("delete"),
        Some(after)
    );
    assert_eq!(store.get_by_hash(&new_hash).await.expect("by hash"), None);
    assert_eq!(store.get_by_sha256(&r.hash).await.expect("by sha256"), None);
    assert_eq!(store.get("acme", &r.id).await.expect("get"), None);
    let listed = store
        .list("acme", &query(10), now_ms())
        .await
        .expect("list");
    assert_eq!(ids(&listed.keys), vec![native.id.clone()]);
    assert!(matches!(
        store.upgrade_hash("acme", &r.id, &new_hash).await,
        Err(StoreError::NotFound)
    ));
    // Both hashes are free again.
    let mut reborn = record("acme", "same secret, new key");
    reborn.hash = new_hash;
    store
        .create(&reborn, None, now_ms())
        .await
        .expect("keyed hash is free");
    store
        .create(&r, None, now_ms())
        .await
        .expect("digest is free");
}

async fn a_sha256_import_deletes_and_refuses_a_taken_hash<S: KeyStore>(store: &S) {
    let (r, new_hash) = sha256_import("acme", "imported");
    store.create(&r, None, now_ms()).await.expect("create");
    let t = now_ms();
    store
        .append_request_logs("acme", &r.id, &[log_entry(t, "/a")], 10)
        .await
        .expect("logs");

    // Upgrading to a hash another key has fails and leaves the import as it was.
    let mut holder = record("acme", "holds the hash");
    holder.hash = new_hash;
    store.create(&holder, None, t).await.expect("create");
    assert!(matches!(
        store.upgrade_hash("acme", &r.id, &new_hash).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        store.get_by_sha256(&r.hash).await.expect("by sha256"),
        Some(r.clone())
    );
    assert_eq!(
        store.get("acme", &r.id).await.expect("get"),
        Some(r.clone())
    );
    assert_eq!(
        store.get_by_hash(&new_hash).await.expect("by hash"),
        Some(holder.clone())
    );
    let mut renamed = r.clone();
    renamed.name = "still a sha256 import".into();
    store.update(&renamed, r.updated_at).await.expect("update");
    // Refused, it is still a plain import: another, free hash upgrades it.
    let (other, other_new) = sha256_import("acme", "other import");
    store.create(&other, None, t).await.expect("create");
    assert!(matches!(
        store.upgrade_hash("acme", &other.id, &new_hash).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        store
            .upgrade_hash("acme", &other.id, &other_new)
            .await
            .expect("a free hash"),
        upgraded(&other, other_new, 0, None)
    );
    store.delete("acme", &other.id).await.expect("delete");
    // A native key is keyed already: the same hash is a no-op, another one a conflict.
    assert_eq!(
        store
            .upgrade_hash("acme", &holder.id, &new_hash)
            .await
            .expect("native key"),
        holder
    );
    assert!(matches!(
        store.upgrade_hash("acme", &holder.id, &r.hash).await,
        Err(StoreError::Conflict)
    ));

    // Deleted before any upgrade: nothing is left to find or to upgrade.
    assert_eq!(
        store.delete("acme", &r.id).await.expect("delete"),
        Some(renamed)
    );
    assert_eq!(store.get_by_sha256(&r.hash).await.expect("by sha256"), None);
    assert_eq!(store.get("acme", &r.id).await.expect("get"), None);
    assert!(
        store
            .request_logs("acme", &r.id, 10)
            .await
            .expect("logs")
            .is_empty()
    );
    assert!(matches!(
        store.upgrade_hash("acme", &r.id, &new_hash).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .upgrade_hash("acme", &KeyId::generate(), &new_hash)
            .await,
        Err(StoreError::NotFound)
    ));
    let listed = store
        .list("acme", &query(10), now_ms())
        .await
        .expect("list");
    assert_eq!(ids(&listed.keys), vec![holder.id.clone()]);
    store
        .create(&r, None, now_ms())
        .await
        .expect("digest is free again");
}

async fn concurrent_upgrades_agree_and_keep_usage<S: KeyStore>(store: &S) {
    let (r, new_hash) = sha256_import("acme", "popular");
    store.create(&r, None, now_ms()).await.expect("create");
    let t = now_ms();
    store.add_usage(&[usage(&r, 10, t)]).await.expect("usage");

    // Several gateway instances see the key's first use at once, while usage keeps flowing.
    let upgrades = join_all((0..4).map(|_| store.upgrade_hash("acme", &r.id, &new_hash)));
    let deltas: Vec<[UsageDelta; 1]> = (1..=4).map(|i| [usage(&r, 1, t + ms(i))]).collect();
    let flushes = join_all(deltas.iter().map(|d| store.add_usage(d)));
    let (upgrades, flushes) = tokio::join!(upgrades, flushes);
    for f in flushes {
        f.expect("usage");
    }
    for u in &upgrades {
        let got = u.as_ref().expect("every upgrade succeeds");
        assert_eq!(
            (&got.hash, got.hash_scheme),
            (&new_hash, HashScheme::KeyedBlake3)
        );
    }
    let got = store
        .get_by_hash(&new_hash)
        .await
        .expect("by hash")
        .expect("upgraded");
    assert_eq!(got, upgraded(&r, new_hash, 14, Some(t + ms(4))));
    assert_eq!(store.get_by_sha256(&r.hash).await.expect("by sha256"), None);
    // Per-day counts are exact too: none lost or doubled by a delta re-aimed at the new record.
    let days = store
        .daily_usage("acme", &r.id, t.date(), (t + ms(4)).date())
        .await
        .expect("daily");
    assert_eq!(days.iter().map(|(_, n)| n).sum::<u64>(), 14, "{days:?}");
}

async fn sha256_imports_count_against_max_active<S: KeyStore>(store: &S) {
    let now = now_ms();
    let native = record("acme", "native");
    let (imported, new_hash) = sha256_import("acme", "imported");
    store.create(&native, Some(2), now).await.expect("1st");
    store.create(&imported, Some(2), now).await.expect("2nd");
    assert_eq!(store.count_active("acme", now).await.expect("count"), 2);
    assert!(matches!(
        store.create(&record("acme", "3rd"), Some(2), now).await,
        Err(StoreError::LimitReached)
    ));
    assert!(matches!(
        store
            .create(&sha256_import("acme", "3rd import").0, Some(2), now)
            .await,
        Err(StoreError::LimitReached)
    ));
    // Upgrading neither frees nor takes a slot.
    store
        .upgrade_hash("acme", &imported.id, &new_hash)
        .await
        .expect("upgrade");
    assert_eq!(store.count_active("acme", now).await.expect("count"), 2);
    assert!(matches!(
        store.create(&record("acme", "3rd"), Some(2), now).await,
        Err(StoreError::LimitReached)
    ));
    // A revoked import gives its slot back.
    let (other, _) = sha256_import("globex", "revoked import");
    store.create(&other, Some(1), now).await.expect("globex");
    let mut revoked = other.clone();
    revoked.revoked_at = Some(now);
    store
        .update(&revoked, other.updated_at)
        .await
        .expect("revoke");
    assert_eq!(store.count_active("globex", now).await.expect("count"), 0);
    store
        .create(&record("globex", "next"), Some(1), now)
        .await
        .expect("slot free");
}

async fn count_active_counts_what_create_limits<S: KeyStore>(store: &S) {
    let now = now_ms();
    assert_eq!(store.count_active("acme", now).await.expect("count"), 0);
    let plain = record("acme", "plain");
    let mut expiring = record("acme", "expiring");
    expiring.expires_at = Some(now + ms(10_000));
    let mut expired = record("acme", "expired");
    expired.expires_at = Some(now);
    let mut born_revoked = record("acme", "born revoked");
    born_revoked.revoked_at = Some(now);
    let mut to_revoke = record("acme", "to revoke");
    for r in [&plain, &expiring, &expired, &born_revoked, &to_revoke] {
        store.create(r, None, now).await.expect("create");
    }
    store
        .create(&record("globex", "elsewhere"), None, now)
        .await
        .expect("create");

    assert_eq!(store.count_active("acme", now).await.expect("count"), 3);
    to_revoke.revoked_at = Some(now);
    let read = to_revoke.updated_at;
    to_revoke.updated_at = read + ms(1);
    store.update(&to_revoke, read).await.expect("revoke");
    assert_eq!(store.count_active("acme", now).await.expect("count"), 2);
    // At its expiry instant a key no longer counts (`expires_at <= now` is expired).
    let later = now + ms(10_000);
    assert_eq!(store.count_active("acme", later).await.expect("count"), 1);
    assert_eq!(store.count_active("globex", now).await.expect("count"), 1);
    assert_eq!(store.count_active("nobody", now).await.expect("count"), 0);
    // The same number `create` holds against the limit.
    assert!(matches!(
        store.create(&record("acme", "n"), Some(2), now).await,
        Err(StoreError::LimitReached)
    ));
    store
        .create(&record("acme", "n+1"), Some(3), now)
        .await
        .expect("room under 3");
    assert_eq!(store.count_active("acme", now).await.expect("count"), 3);
    // Counting changes nothing: the expired key is still listed as expired.
    let q = ListQuery {
        status: Some(KeyStatus::Expired),
        limit: 10,
        ..ListQuery::default()
    };
    let got = store.list("acme", &q, later).await.expect("list");
    assert_eq!(got.keys.len(), 2, "{got:?}");
}

/// An audit entry with a realistic id: `aud_` + 13-digit ms + `_` + 8 base62.
fn audit(ws: Option<&str>, at: OffsetDateTime, action: &str) -> AuditEntry {
    let ms = at.unix_timestamp_nanos() / 1_000_000;
    let key_id = KeyId::generate();
    let random = &key_id.as_str()[4..12];
    AuditEntry {
        id: format!("aud_{ms:013}_{random}"),
        time: at,
        actor: "token:ci".into(),
        action: action.into(),
        workspace: ws.map(str::to_owned),
        key_id: Some(KeyId::generate()),
        outcome: "ok".into(),
        detail: serde_json::json!({"fields": ["name"], "name": "renamed"}),
        client_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
    }
}

/// Newest first: by time to the millisecond, then id, descending.
fn newest_first(entries: &[AuditEntry]) -> Vec<AuditEntry> {
    let mut sorted = entries.to_vec();
    sorted.sort_by(|a, b| (b.time, &b.id).cmp(&(a.time, &a.id)));
    sorted
}

/// Every page of an audit log, following cursors; panics if it does not end.
async fn audit_pages<S: KeyStore>(
    store: &S,
    ws: Option<&str>,
    limit: usize,
) -> Vec<Vec<AuditEntry>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let page: AuditPage = store
            .list_audit(ws, limit, cursor.as_deref())
            .await
            .expect("list audit");
        pages.push(page.entries);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return pages,
        }
    }
    panic!("audit listing did not end after 100 pages");
}

async fn audit_log_pages_newest_first_per_workspace_and_globally<S: KeyStore>(store: &S) {
    let base = now_ms() - time::Duration::hours(1);
    // Seven for acme, appended out of order; three of them share a millisecond (the id breaks
    // the tie), and one is plain, without a key, an IP or a detail.
    let mut acme: Vec<AuditEntry> = [5, 0, 3, 3, 6, 3, 1]
        .iter()
        .map(|&s| audit(Some("acme"), base + ms(1000 * s), "key.update"))
        .collect();
    acme[6].key_id = None;
    acme[6].client_ip = None;
    acme[6].detail = serde_json::Value::Null;
    acme[6].action = "admin.refused".into();
    acme[6].outcome = "forbidden".into();
    let globex: Vec<AuditEntry> = (0..2)
        .map(|s| audit(Some("globex"), base + ms(500 + 1000 * s), "key.create"))
        .collect();
    let global_only = audit(None, base + ms(4000), "admin.refused");
    for e in acme.iter().chain(&globex).chain([&global_only]) {
        store.append_audit(e).await.expect("append");
    }
    // A retried append keeps one copy.
    store.append_audit(&acme[1]).await.expect("append again");

    let pages = audit_pages(store, Some("acme"), 3).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![3, 3, 1]);
    assert_eq!(pages.concat(), newest_first(&acme), "no gap, no duplicate");

    let everything: Vec<AuditEntry> = acme
        .iter()
        .chain(&globex)
        .chain([&global_only])
        .cloned()
        .collect();
    let pages = audit_pages(store, None, 4).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![4, 4, 2]);
    assert_eq!(pages.concat(), newest_first(&everything));

    assert_eq!(
        audit_pages(store, Some("globex"), 10).await,
        vec![newest_first(&globex)]
    );
    let nobody = store
        .list_audit(Some("nobody"), 5, None)
        .await
        .expect("list");
    assert!(nobody.entries.is_empty() && nobody.next_cursor.is_none());
    let one = store.list_audit(Some("acme"), 0, None).await.expect("list");
    assert_eq!(one.entries.len(), 1, "limit 0 reads as 1");
    let all = store.list_audit(Some("acme"), 7, None).await.expect("list");
    assert_eq!(all.next_cursor, None, "no cursor when nothing follows");

    // Entries appended after the first page was read, newer or older, shift nothing: the next
    // page starts right after the last entry seen.
    let first = store.list_audit(Some("acme"), 3, None).await.expect("list");
    let seen_last = first.entries.last().expect("three entries").clone();
    assert_eq!(
        seen_last.time,
        base + ms(3000),
        "the page ends inside the tie"
    );
    let newer = audit(Some("acme"), base + ms(9000), "key.delete");
    // Same millisecond as the last entry seen, and an id just below its own: the very next.
    let mut older = audit(Some("acme"), seen_last.time, "key.revoke");
    older.id = seen_last.id[..seen_last.id.len() - 1].to_owned();
    store.append_audit(&newer).await.expect("append");
    store.append_audit(&older).await.expect("append");
    let rest = store
        .list_audit(Some("acme"), 10, first.next_cursor.as_deref())
        .await
        .expect("list");
    let want: Vec<AuditEntry> = newest_first(&[acme.clone(), vec![older.clone()]].concat())
        .into_iter()
        .filter(|e| (e.time, &e.id) < (seen_last.time, &seen_last.id))
        .collect();
    assert_eq!(rest.entries.first(), Some(&older));
    assert_eq!(rest.entries, want);
    assert_eq!(rest.next_cursor, None);

    for garbage in ["not a cursor", "", "x:aud_1", "12.5:aud_1"] {
        for ws in [None, Some("acme")] {
            let got = store.list_audit(ws, 3, Some(garbage)).await;
            assert!(
                matches!(got, Err(StoreError::InvalidCursor)),
                "{garbage:?} on {ws:?}: {got:?}"
            );
        }
    }
}

/// Shared by the two backend tests below: a log capped at 5 keeps the newest 5.
async fn audit_logs_keep_their_newest_entries<S: KeyStore>(store: &S) {
    let base = now_ms();
    let acme: Vec<AuditEntry> = (0..8)
        .map(|i| audit(Some("acme"), base + ms(i), "key.update"))
        .collect();
    // Oldest of all: appended last, it is trimmed at once.
    let stale = audit(Some("acme"), base - ms(1000), "key.update");
    let globex: Vec<AuditEntry> = (0..3)
        .map(|i| audit(Some("globex"), base + ms(100 + i), "key.create"))
        .collect();
    for e in acme.iter().chain([&stale]).chain(&globex) {
        store.append_audit(e).await.expect("append");
    }
    let got = store
        .list_audit(Some("acme"), 100, None)
        .await
        .expect("list");
    assert_eq!(got.entries, newest_first(&acme[3..]));
    // The global log is capped on its own: globex's entries pushed acme's out of it, but not
    // out of acme's log.
    let got = store.list_audit(None, 100, None).await.expect("list");
    let mut want = globex.clone();
    want.extend_from_slice(&acme[6..]);
    assert_eq!(got.entries, newest_first(&want));
    let got = store
        .list_audit(Some("globex"), 100, None)
        .await
        .expect("list");
    assert_eq!(got.entries, newest_first(&globex));
    // Paging over a trimmed log still ends cleanly.
    let pages = audit_pages(store, Some("acme"), 2).await;
    assert_eq!(pages.concat(), newest_first(&acme[3..]));
}

fn quota_spend(id: &KeyId, period_start: i64, n: u64, limit: u64) -> QuotaSpend {
    QuotaSpend {
        id: id.clone(),
        period_start,
        // Far in the future: no count expires during a test.
        expires_at: Some(4_000_000_000),
        n,
        limit,
    }
}

fn counted(used: u64, spent: bool) -> QuotaCount {
    QuotaCount { used, spent }
}

async fn quota_spends_are_exact_per_key_and_period<S: KeyStore>(store: &S) {
    let (a, b) = (KeyId::generate(), KeyId::generate());
    let spend_one = |id: KeyId, start, n, limit| async move {
        let counts = store
            .consume_quota(&[quota_spend(&id, start, n, limit)])
            .await
            .expect("consume_quota");
        assert_eq!(counts.len(), 1);
        counts[0]
    };
    // A count starts at 0; n = 0 only reads it.
    assert_eq!(spend_one(a.clone(), 100, 0, 3).await, counted(0, true));
    // Units are added while the count stays within the limit, and only then.
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(spend_one(a.clone(), 100, 1, 3).await);
    }
    assert_eq!(
        got,
        [
            counted(1, true),
            counted(2, true),
            counted(3, true),
            counted(3, false),
            counted(3, false)
        ]
    );
    // Several units at once: all or none.
    assert_eq!(spend_one(a.clone(), 100, 2, 4).await, counted(3, false));
    assert_eq!(spend_one(a.clone(), 100, 1, 4).await, counted(4, true));
    // Periods and keys count apart; one call spends several, in order.
    let counts = store
        .consume_quota(&[
            quota_spend(&a, 200, 1, 1),
            quota_spend(&b, 100, 1, 1),
            quota_spend(&b, 100, 1, 1),
        ])
        .await
        .expect("batch");
    assert_eq!(
        counts,
        [counted(1, true), counted(1, true), counted(1, false)]
    );
    // Units already served are added whatever the limit.
    assert_eq!(
        spend_one(a.clone(), 100, 10, u64::MAX).await,
        counted(14, true)
    );
    assert_eq!(
        spend_one(a.clone(), 100, 0, u64::MAX).await,
        counted(14, true)
    );
    assert_eq!(store.consume_quota(&[]).await.expect("empty"), []);

    // Exact under concurrency: 300 spends of a count limited to 200, without expiry.
    let c = KeyId::generate();
    let forever = QuotaSpend {
        expires_at: None,
        ..quota_spend(&c, 0, 1, 200)
    };
    let spends =
        join_all((0..300).map(|_| store.consume_quota(std::slice::from_ref(&forever)))).await;
    let spent = spends
        .into_iter()
        .map(|r| r.expect("concurrent spend")[0])
        .filter(|q| q.spent)
        .count();
    assert_eq!(spent, 200);
    assert_eq!(spend_one(c, 0, 0, u64::MAX).await, counted(200, true));
}

// ---------------------------------------------------------------------------------------------
// Conditional updates: a write lands only on the version it read

/// `r` with a new name, as an edit that read `r` writes it: one millisecond later.
fn renamed(r: &KeyRecord, name: &str) -> KeyRecord {
    KeyRecord {
        name: name.into(),
        updated_at: r.updated_at + ms(1),
        ..r.clone()
    }
}

async fn an_update_from_a_stale_read_is_a_conflict_and_changes_nothing<S: KeyStore>(store: &S) {
    // Stored with nanoseconds and an offset (as a record written by hand or by an older
    // version could be): the version compares to the millisecond, whatever the offset.
    let mut r = record("acme", "original");
    let offset = time::UtcOffset::from_hms(5, 30, 0).expect("offset");
    r.updated_at = (now_ms() + time::Duration::nanoseconds(123_456)).to_offset(offset);
    store.create(&r, None, now_ms()).await.expect("create");
    let read_ms = whole_ms_utc(r.updated_at);
    for off_by in [ms(-1), ms(1)] {
        assert!(matches!(
            store
                .update(&renamed(&r, "off by 1 ms"), read_ms + off_by)
                .await,
            Err(StoreError::Conflict)
        ));
    }
    let first = renamed(&r, "first");
    store
        .update(&first, read_ms)
        .await
        .expect("the version read, to the millisecond, in UTC");
    // The same write sent again (a retry after its connection dropped, when the first one had
    // landed): done already, not a conflict with itself.
    store
        .update(&first, read_ms)
        .await
        .expect("a resend of a write that landed");

    // A second writer read `r` too: its edit would overwrite the first one.
    let stale = renamed(&r, "stale");
    assert!(matches!(
        store.update(&stale, r.updated_at).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        store.get("acme", &r.id).await.expect("get"),
        Some(first.clone())
    );

    // The race this guards against: an edit that read the key before it was revoked.
    let mut revoked = renamed(&first, "first");
    revoked.revoked_at = Some(revoked.updated_at);
    store
        .update(&revoked, first.updated_at)
        .await
        .expect("revoke");
    let late_edit = renamed(&first, "edited before the revoke");
    assert!(matches!(
        store.update(&late_edit, first.updated_at).await,
        Err(StoreError::Conflict)
    ));
    assert_stored(
        store,
        &revoked,
        0,
        "the refused edit gave the revoked key its slot back",
    )
    .await;
}

/// The store answers `want` by id and by hash, and counts `active` active keys in `acme`.
async fn assert_stored<S: KeyStore>(store: &S, want: &KeyRecord, active: u32, why: &str) {
    assert_eq!(
        store.get("acme", &want.id).await.expect("get"),
        Some(want.clone())
    );
    assert_eq!(
        store.get_by_hash(&want.hash).await.expect("by hash"),
        Some(want.clone())
    );
    assert_eq!(
        store.count_active("acme", now_ms()).await.expect("count"),
        active,
        "{why}"
    );
}

/// `t` rounded down to the millisecond, in UTC.
fn whole_ms_utc(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .expect("a truncated nanosecond is valid")
}

async fn an_update_never_clears_a_revocation<S: KeyStore>(store: &S) {
    let r = record("acme", "to revoke");
    store.create(&r, None, now_ms()).await.expect("create");
    let mut revoked = renamed(&r, "to revoke");
    revoked.revoked_at = Some(revoked.updated_at);
    store.update(&revoked, r.updated_at).await.expect("revoke");

    // Even from the current version, clearing `revoked_at` is refused and changes nothing.
    let mut unrevoked = renamed(&revoked, "unrevoked");
    unrevoked.revoked_at = None;
    assert!(matches!(
        store.update(&unrevoked, revoked.updated_at).await,
        Err(StoreError::Conflict)
    ));
    assert_stored(store, &revoked, 0, "a revoked key holds no active slot").await;

    // A revoked key can still be edited, and stays revoked.
    let edited = renamed(&revoked, "revoked, renamed");
    store
        .update(&edited, revoked.updated_at)
        .await
        .expect("edit revoked");
    assert_stored(store, &edited, 0, "a revoked key edited stays inactive").await;
}

/// `r` as an import carrying the `sha256_tag` of the secret whose digest is `digest`.
fn tagged(mut r: KeyRecord, digest: &SecretHash) -> KeyRecord {
    r.sha256_tag = Some(hasher().sha256_tag(digest));
    r
}

/// One secret is one key whatever form it was imported in: the `sha256_tag` is refused while
/// a key holds it (before and after the upgrade of a `sha256` import, and for a plaintext
/// import), and is free again once that key is deleted.
async fn an_imported_secret_is_one_key_whatever_its_form<S: KeyStore>(store: &S) {
    let t = now_ms();
    let (a, a_new) = sha256_import("acme", "by digest");
    let a = tagged(a.clone(), &a.hash);
    store.create(&a, None, t).await.expect("create");
    // The same secret imported as plaintext: another hash namespace, the same tag.
    let mut plain = tagged(record("acme", "by plaintext"), &a.hash);
    plain.hash = a_new;
    assert!(matches!(
        store.create(&plain, None, t).await,
        Err(StoreError::Conflict)
    ));
    store
        .upgrade_hash("acme", &a.id, &a_new)
        .await
        .expect("upgrade");
    // Upgraded: the digest is free in the SHA-256 index, the tag is still held.
    let mut again = tagged(sha256_import("globex", "again").0, &a.hash);
    again.hash = a.hash;
    assert!(matches!(
        store.create(&again, None, t).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.get_by_sha256(&a.hash).await.expect("by sha256"), None);
    assert_eq!(store.get("globex", &again.id).await.expect("get"), None);

    // A plaintext import holds its tag the same way.
    let (digest_b, _) = sha256_import("acme", "b");
    let b = tagged(record("acme", "plaintext b"), &digest_b.hash);
    store.create(&b, None, t).await.expect("create");
    let mut b_by_digest = tagged(digest_b.clone(), &digest_b.hash);
    b_by_digest.id = KeyId::generate();
    assert!(matches!(
        store.create(&b_by_digest, None, t).await,
        Err(StoreError::Conflict)
    ));

    // Deleting the key frees its tag and every index entry.
    store.delete("acme", &a.id).await.expect("delete");
    assert_eq!(store.get_by_hash(&a_new).await.expect("by hash"), None);
    assert_eq!(store.get_by_sha256(&a.hash).await.expect("by sha256"), None);
    store.create(&again, None, t).await.expect("free again");
    assert_eq!(
        store.get_by_sha256(&a.hash).await.expect("by sha256"),
        Some(again.clone())
    );
    store.delete("acme", &b.id).await.expect("delete");
    store
        .create(&b_by_digest, None, t)
        .await
        .expect("free again");
}

/// Concurrent imports of one secret, in both forms: exactly one becomes a key.
async fn concurrent_imports_of_one_secret_make_one_key<S: KeyStore>(store: &S) {
    for round in 0..5 {
        let (digest, _) = sha256_import("acme", "contender");
        let contenders: Vec<KeyRecord> = (0..8)
            .map(|i| {
                let mut r = tagged(digest.clone(), &digest.hash);
                r.id = KeyId::generate();
                if i % 2 == 1 {
                    // Plaintext imports of the same secret.
                    r.hash =
                        SecretHash(*blake3::hash(format!("{round}/{i}").as_bytes()).as_bytes());
                    r.hash_scheme = HashScheme::KeyedBlake3;
                }
                r
            })
            .collect();
        let results = join_all(contenders.iter().map(|r| store.create(r, None, now_ms()))).await;
        let won: Vec<&KeyRecord> = contenders
            .iter()
            .zip(&results)
            .filter(|(_, res)| res.is_ok())
            .map(|(r, _)| r)
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        for res in &results {
            assert!(matches!(res, Ok(()) | Err(StoreError::Conflict)), "{res:?}");
        }
        let listed = store
            .list("acme", &query(100), now_ms())
            .await
            .expect("list");
        assert_eq!(ids(&listed.keys), vec![won[0].id.clone()]);
        store.delete("acme", &won[0].id).await.expect("delete");
    }
}

/// A `KeyManager` over `store`, as the admin API and the CLI use it.
fn key_manager(store: Store) -> (Arc<Store>, KeyManager) {
    let store = Arc::new(store);
    let cache = Arc::new(KeyCache::new(store.clone(), &CacheConfig::default()));
    let keys = KeyManager::new(cache, SecretFormat::new("kg", "test"), hasher());
    (store, keys)
}

async fn the_key_manager_writes_a_strictly_later_version(store: Store) {
    let (store, keys) = key_manager(store);
    // Written by an instance whose clock is ahead of ours: our writes must still come after it.
    let mut r = record("acme", "ahead");
    r.updated_at = now_ms() + time::Duration::days(1);
    store.create(&r, None, now_ms()).await.expect("create");
    for (i, name) in ["one", "two"].into_iter().enumerate() {
        let written = keys
            .modify("acme", &r.id, |record| {
                record.name = name.into();
                Ok::<_, StoreError>(Changed::Yes)
            })
            .await
            .expect("edit")
            .record;
        let i = i64::try_from(i).expect("small");
        assert_eq!(written.updated_at, r.updated_at + ms(i + 1));
        assert_eq!(store.get("acme", &r.id).await.expect("get"), Some(written));
    }
}

/// Edits through `KeyManager::modify` racing one another and a revoke: each either lands on
/// the version it read or is re-applied to a newer one, so none is lost and none un-revokes.
async fn edits_racing_a_revoke_are_reapplied_and_the_key_stays_revoked(store: Store) {
    const EDITORS: usize = 10;
    let (store, keys) = key_manager(store);
    for round in 0..5 {
        let ws = format!("ws{round}");
        let r = record(&ws, "original");
        store.create(&r, None, now_ms()).await.expect("create");
        let start = Arc::new(tokio::sync::Barrier::new(EDITORS + 1));
        let editors: Vec<_> = (0..EDITORS)
            .map(|i| {
                let (keys, start, ws, id) = (keys.clone(), start.clone(), ws.clone(), r.id.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    keys.modify(&ws, &id, |record| {
                        record.name = format!("edit {i}");
                        // Appended, not set: an edit written over another loses the other's tag.
                        let tags = record.description.get_or_insert_with(String::new);
                        tags.push_str(&format!("[{i}]"));
                        Ok::<_, StoreError>(Changed::Yes)
                    })
                    .await
                })
            })
            .collect();
        let revoker = {
            let (keys, start, ws, id) = (keys.clone(), start.clone(), ws.clone(), r.id.clone());
            tokio::spawn(async move {
                start.wait().await;
                keys.revoke(&ws, &id).await
            })
        };
        for editor in editors {
            editor
                .await
                .expect("editor task")
                .expect("every edit lands, re-applied if another write came first");
        }
        let revoked = revoker.await.expect("revoker task").expect("revoke").record;

        let stored = store
            .get(&ws, &r.id)
            .await
            .expect("get")
            .expect("still there");
        assert!(
            stored.revoked_at.is_some(),
            "round {round}: an edit un-revoked the key"
        );
        assert_eq!(stored.revoked_at, revoked.revoked_at);
        let names: Vec<String> = (0..EDITORS).map(|i| format!("edit {i}")).collect();
        assert!(names.contains(&stored.name), "{}", stored.name);
        let tags = stored.description.clone().unwrap_or_default();
        for i in 0..EDITORS {
            assert_eq!(
                tags.matches(&format!("[{i}]")).count(),
                1,
                "round {round}: edit {i} was lost or applied twice: {tags}"
            );
        }
        assert_eq!(
            store.get_by_hash(&r.hash).await.expect("by hash"),
            Some(stored)
        );
        assert_eq!(
            store.count_active(&ws, now_ms()).await.expect("count"),
            0,
            "round {round}: the revoked key holds an active slot"
        );
    }
}

/// A revoke racing the hash upgrade of a `sha256` import, the upgrade stopped (as by a crash)
/// as soon as the revoke returns: whatever the upgrade had done by then, no copy of the record
/// answers unrevoked, by either hash, and resuming the upgrade keeps the key revoked.
async fn a_revoke_racing_an_upgrade_is_never_lost(store: Store) {
    let store = Arc::new(store);
    for round in 0..200 {
        let ws = format!("ws{round}");
        let (r, new_hash) = sha256_import(&ws, "racing");
        store.create(&r, None, now_ms()).await.expect("create");
        let upgrade = {
            let (store, ws, id) = (store.clone(), ws.clone(), r.id.clone());
            tokio::spawn(async move { store.upgrade_hash(&ws, &id, &new_hash).await })
        };
        // Shifts the revoke across the upgrade's steps from round to round.
        for _ in 0..round % 7 {
            tokio::task::yield_now().await;
        }
        let mut revoked = r.clone();
        revoked.revoked_at = Some(now_ms());
        revoked.updated_at = r.updated_at + ms(1);
        match store.update(&revoked, r.updated_at).await {
            Ok(()) => {}
            // Upgraded first: the record read before it is stale; revoke the upgraded one.
            Err(StoreError::Conflict) => {
                let mut now = store.get(&ws, &r.id).await.expect("get").expect("there");
                let read = now.updated_at;
                now.revoked_at = Some(now_ms());
                now.updated_at = read + ms(1);
                store.update(&now, read).await.expect("revoke upgraded");
            }
            Err(e) => panic!("round {round}: revoke failed: {e}"),
        }
        upgrade.abort();
        let _ = upgrade.await;
        let by_id = store.get(&ws, &r.id).await.expect("get").expect("there");
        assert!(by_id.revoked_at.is_some(), "round {round}: by id");
        for (how, found) in [
            (
                "by new hash",
                store.get_by_hash(&new_hash).await.expect("by hash"),
            ),
            (
                "by sha256",
                store.get_by_sha256(&r.hash).await.expect("by sha256"),
            ),
        ] {
            if let Some(found) = found {
                assert!(
                    found.revoked_at.is_some(),
                    "round {round}: an unrevoked copy answers {how}"
                );
            }
        }
        match store.upgrade_hash(&ws, &r.id, &new_hash).await {
            Ok(resumed) => assert!(resumed.revoked_at.is_some(), "round {round}: resumed"),
            Err(e) => panic!("round {round}: resuming the upgrade failed: {e}"),
        }
        let done = store
            .get_by_hash(&new_hash)
            .await
            .expect("by hash")
            .expect("upgraded");
        assert!(done.revoked_at.is_some(), "round {round}: after resuming");
    }
}

// ---------------------------------------------------------------------------------------------
// Backends

on_both_stores!(
    create_then_lookup_by_hash_and_id,
    duplicate_id_or_secret_is_a_conflict,
    update_replaces_the_record_but_keeps_usage,
    revoking_through_update_frees_an_active_slot,
    delete_removes_record_lookup_listing_and_logs,
    list_is_newest_first_filtered_and_paginated,
    max_active_is_exact_under_concurrent_creates,
    expired_and_revoked_keys_do_not_count,
    add_usage_adds_counts_and_only_moves_last_use_forward,
    daily_usage_is_split_by_day_kept_90_days_and_deleted_with_the_key,
    request_logs_keep_the_newest_entries_newest_first,
    a_usage_flush_writes_counts_and_logs_of_every_key,
    sha256_imports_are_indexed_apart_until_upgraded,
    a_sha256_import_deletes_and_refuses_a_taken_hash,
    concurrent_upgrades_agree_and_keep_usage,
    sha256_imports_count_against_max_active,
    count_active_counts_what_create_limits,
    audit_log_pages_newest_first_per_workspace_and_globally,
    quota_spends_are_exact_per_key_and_period,
    an_update_from_a_stale_read_is_a_conflict_and_changes_nothing,
    an_update_never_clears_a_revocation,
    an_imported_secret_is_one_key_whatever_its_form,
    concurrent_imports_of_one_secret_make_one_key;
    owning:
    the_key_manager_writes_a_strictly_later_version,
    edits_racing_a_revoke_are_reapplied_and_the_key_stays_revoked,
    a_revoke_racing_an_upgrade_is_never_lost,
);

#[tokio::test]
async fn embedded_usage_flush_is_one_write_transaction_whatever_the_keys() {
    // Per-key transactions (a commit and an fsync each) halved throughput with 100,000 keys in
    // rotation.
    let (store, _dir) = embedded_backend();
    let keys: Vec<KeyRecord> = (0..300).map(|i| record("acme", &format!("k{i}"))).collect();
    for r in &keys {
        store.create(r, None, now_ms()).await.expect("create");
    }
    let t = now_ms();
    let entries: Vec<Vec<RequestLogEntry>> = keys
        .iter()
        .enumerate()
        .map(|(i, _)| log_entries(t, &format!("k{i}"), 1 + i % 3))
        .collect();
    let deltas: Vec<UsageDelta> = keys.iter().map(|r| usage(r, 2, t)).collect();
    let logs: Vec<KeyLogs<'_>> = keys
        .iter()
        .zip(&entries)
        .map(|(r, e)| logs_of(r, e))
        .collect();
    let before = store.write_transactions();
    store.write_usage(&deltas, &logs, 2).await.expect("flush");
    assert_eq!(store.write_transactions() - before, 1);
    for (i, r) in keys.iter().enumerate().step_by(37) {
        let got = store.get("acme", &r.id).await.expect("get").expect("key");
        assert_eq!(got.usage_count, 2);
        let logged = store.request_logs("acme", &r.id, 10).await.expect("logs");
        assert_eq!(logged.len(), (1 + i % 3).min(2), "key {i}");
        assert_eq!(logged[0], *entries[i].last().expect("entries"));
    }
}

#[tokio::test]
async fn embedded_days_older_than_kept_go_when_usage_is_next_written() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = EmbeddedConfig {
        path: dir.path().join("keygate.redb"),
    };
    let r = record("acme", "long lived");
    let store = EmbeddedStore::open(&config).expect("open");
    store.create(&r, None, now_ms()).await.expect("create");
    drop(store);
    // A day counted long ago, as it would be left after 90 days.
    let old = days_ago(i64::from(USAGE_DAYS_KEPT));
    {
        let table: redb::TableDefinition<(&str, &str, i32), u64> =
            redb::TableDefinition::new("usage_days_v1");
        let db = redb::Database::open(&config.path).expect("raw open");
        let txn = db.begin_write().expect("write");
        txn.open_table(table)
            .expect("table")
            .insert(("acme", r.id.as_str(), old.to_julian_day()), 9)
            .expect("insert");
        txn.commit().expect("commit");
    }
    let store = EmbeddedStore::open(&config).expect("reopen");
    let all = days_ago(i64::from(USAGE_DAYS_KEPT) + 30);
    assert_eq!(
        store
            .daily_usage("acme", &r.id, all, days_ago(0))
            .await
            .expect("daily"),
        [(old, 9)],
        "the raw row is where the store reads"
    );
    store
        .add_usage(&[usage_on(&r, &[(days_ago(0), 1)])])
        .await
        .expect("usage");
    assert_eq!(
        store
            .daily_usage("acme", &r.id, all, days_ago(0))
            .await
            .expect("daily"),
        [(days_ago(0), 1)]
    );
}

#[tokio::test]
async fn embedded_quota_counts_of_ended_periods_are_dropped() {
    let (store, _dir) = embedded_backend();
    let id = KeyId::generate();
    let day = |start: i64| QuotaSpend {
        expires_at: Some(start + 86_400),
        ..quota_spend(&id, start, 1, 10)
    };
    store.consume_quota(&[day(0)]).await.expect("day 0");
    store.consume_quota(&[day(86_400)]).await.expect("day 1");
    // Day 0 ended before day 1 began: writing day 1 dropped it. Day 1 is still there.
    let read = |start| QuotaSpend { n: 0, ..day(start) };
    let counts = store
        .consume_quota(&[read(0), read(86_400)])
        .await
        .expect("read");
    assert_eq!(counts, [counted(0, true), counted(1, true)]);
}

#[tokio::test]
async fn redis_quota_counts_are_laid_out_as_documented() {
    let server = RedisServer::start();
    let config = RedisConfig {
        key_prefix: "kgtest:".into(),
        ..redis_config(&server, Duration::from_secs(2))
    };
    let store = RedisStore::connect(&config).await.expect("connect");
    let (monthly, forever) = (KeyId::generate(), KeyId::generate());
    let expires = OffsetDateTime::now_utc().unix_timestamp() + 100;
    store
        .consume_quota(&[
            QuotaSpend {
                expires_at: Some(expires),
                ..quota_spend(&monthly, 1_767_225_600, 2, 5)
            },
            QuotaSpend {
                expires_at: None,
                ..quota_spend(&forever, 0, 1, 5)
            },
        ])
        .await
        .expect("spend");
    let mut conn = raw_connection(&server).await;
    let mut keys = raw_keys(&mut conn).await;
    keys.sort();
    let mut want = vec![
        format!("kgtest:{{q:{monthly}}}:1767225600"),
        format!("kgtest:{{q:{forever}}}:0"),
    ];
    want.sort();
    assert_eq!(keys, want);
    let count: u64 = ::redis::cmd("GET")
        .arg(format!("kgtest:{{q:{monthly}}}:1767225600"))
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(count, 2);
    for (key, expect_ttl) in [
        (format!("kgtest:{{q:{monthly}}}:1767225600"), true),
        (format!("kgtest:{{q:{forever}}}:0"), false),
    ] {
        let ttl: i64 = ::redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("TTL");
        if expect_ttl {
            assert!((95..=100).contains(&ttl), "{key}: TTL {ttl}");
        } else {
            assert_eq!(ttl, -1, "{key} never expires");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backend-specific behaviour

#[tokio::test]
async fn embedded_data_survives_closing_and_reopening_the_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = EmbeddedConfig {
        path: dir.path().join("keygate.redb"),
    };
    let r = record("acme", "durable");
    let (imported, _) = sha256_import("acme", "imported");
    let entry = audit(Some("acme"), now_ms(), "key.import");
    let used_at = now_ms();
    {
        let store = EmbeddedStore::open(&config).expect("open");
        store.create(&r, Some(1), now_ms()).await.expect("create");
        store
            .create(&imported, None, now_ms())
            .await
            .expect("import");
        store.append_audit(&entry).await.expect("audit");
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
    assert_eq!(
        store
            .get_by_sha256(&imported.hash)
            .await
            .expect("by sha256"),
        Some(imported)
    );
    let log = store
        .list_audit(Some("acme"), 10, None)
        .await
        .expect("audit");
    assert_eq!(log.entries, vec![entry.clone()]);
    let log = store.list_audit(None, 10, None).await.expect("audit");
    assert_eq!(log.entries, vec![entry]);
    // The active count survived too (the import counts).
    assert_eq!(
        store.count_active("acme", now_ms()).await.expect("count"),
        2
    );
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
        format!("kgtest:{{ws:acme}}:days:{}", r.id),
    ];
    want.sort();
    assert_eq!(keys, want);

    // Per-day usage: a field per UTC day, expiring a day after the last day it keeps; a day
    // left from long ago goes when a new day is first counted.
    let days_key = format!("kgtest:{{ws:acme}}:days:{}", r.id);
    let today = days_ago(0).to_string();
    let old = days_ago(i64::from(USAGE_DAYS_KEPT)).to_string();
    let ttl: i64 = ::redis::cmd("TTL")
        .arg(&days_key)
        .query_async(&mut conn)
        .await
        .expect("TTL");
    let kept_secs = i64::from(USAGE_DAYS_KEPT) * 86_400;
    assert!((kept_secs..=kept_secs + 86_400).contains(&ttl), "TTL {ttl}");
    let _: i64 = ::redis::cmd("HSET")
        .arg(&days_key)
        .arg(&old)
        .arg(9)
        .query_async(&mut conn)
        .await
        .expect("HSET");
    store
        .add_usage(&[usage_on(&r, &[(days_ago(0), 1)])])
        .await
        .expect("same day");
    assert_eq!(
        raw_hash(&mut conn, &days_key)
            .await
            .get(&old)
            .map(String::as_str),
        Some("9"),
        "a day already counted does not trim"
    );
    store
        .add_usage(&[usage_on(&r, &[(days_ago(1), 1)])])
        .await
        .expect("a new day");
    let stored = raw_hash(&mut conn, &days_key).await;
    assert_eq!(
        (stored.get(&today).map(String::as_str), stored.len()),
        (Some("3"), 2),
        "{stored:?}"
    );

    let fields: std::collections::HashMap<String, String> = ::redis::cmd("HGETALL")
        .arg(format!("kgtest:{{h:{hex}}}"))
        .query_async(&mut conn)
        .await
        .expect("HGETALL");
    assert_eq!(fields.get("uc").map(String::as_str), Some("4"));
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

#[tokio::test]
async fn embedded_audit_logs_keep_their_newest_entries() {
    let (store, _dir) = embedded_backend();
    audit_logs_keep_their_newest_entries(&store.with_audit_max_entries(5)).await;
}

#[tokio::test]
async fn redis_audit_logs_keep_their_newest_entries() {
    let (store, server) = redis_backend().await;
    audit_logs_keep_their_newest_entries(&store.with_audit_max_entries(5)).await;
    // Trimmed ids take their JSON with them.
    let mut conn = raw_connection(&server).await;
    let prefix = RedisConfig::default().key_prefix;
    for log in ["{audit}", "{ws:acme}:audit", "{ws:globex}:audit"] {
        let log = format!("{prefix}{log}");
        let (ids, jsons): (u64, u64) = ::redis::pipe()
            .cmd("ZCARD")
            .arg(&log)
            .cmd("HLEN")
            .arg(format!("{log}:entries"))
            .query_async(&mut conn)
            .await
            .expect("ZCARD, HLEN");
        assert_eq!((ids, jsons), (ids.min(5), ids), "{log}");
    }
}

/// A plain connection to the test's server, to look at and arrange the raw layout.
async fn raw_connection(server: &RedisServer) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

async fn raw_keys(conn: &mut ::redis::aio::MultiplexedConnection) -> Vec<String> {
    let mut keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("*")
        .query_async(conn)
        .await
        .expect("KEYS");
    keys.sort();
    keys
}

async fn raw_hash(
    conn: &mut ::redis::aio::MultiplexedConnection,
    key: &str,
) -> std::collections::HashMap<String, String> {
    ::redis::cmd("HGETALL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("HGETALL")
}

#[tokio::test]
async fn redis_layout_of_imports_upgrades_and_audit() {
    let server = RedisServer::start();
    let config = RedisConfig {
        key_prefix: "kgtest:".into(),
        ..redis_config(&server, Duration::from_secs(2))
    };
    let store = RedisStore::connect(&config).await.expect("connect");
    let mut conn = raw_connection(&server).await;
    let (r, new_hash) = sha256_import("acme", "imported");
    store.create(&r, Some(5), now_ms()).await.expect("create");
    store
        .add_usage(&[usage(&r, 2, now_ms())])
        .await
        .expect("usage");
    let (sha, new) = (r.hash.to_hex(), new_hash.to_hex());

    let mut want = vec![
        format!("kgtest:{{s:{sha}}}"),
        "kgtest:{ws:acme}:keys".to_owned(),
        "kgtest:{ws:acme}:created".to_owned(),
        "kgtest:{ws:acme}:active".to_owned(),
        // Per-day usage stays on the workspace's slot, whatever the record's hash.
        format!("kgtest:{{ws:acme}}:days:{}", r.id),
    ];
    want.sort();
    assert_eq!(raw_keys(&mut conn).await, want);
    let fields = raw_hash(&mut conn, &format!("kgtest:{{s:{sha}}}")).await;
    assert_eq!(fields.get("uc").map(String::as_str), Some("2"));
    assert!(fields.contains_key("lu") && fields.contains_key("rec"));
    let index = raw_hash(&mut conn, "kgtest:{ws:acme}:keys").await;
    assert_eq!(index.get(r.id.as_str()), Some(&format!("s:{sha}")));

    store
        .upgrade_hash("acme", &r.id, &new_hash)
        .await
        .expect("upgrade");
    let mut want = vec![
        format!("kgtest:{{h:{new}}}"),
        "kgtest:{ws:acme}:keys".to_owned(),
        "kgtest:{ws:acme}:created".to_owned(),
        "kgtest:{ws:acme}:active".to_owned(),
        // Per-day usage stays on the workspace's slot, whatever the record's hash.
        format!("kgtest:{{ws:acme}}:days:{}", r.id),
    ];
    want.sort();
    assert_eq!(raw_keys(&mut conn).await, want);
    let fields = raw_hash(&mut conn, &format!("kgtest:{{h:{new}}}")).await;
    let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["lu", "rec", "uc"], "no upgrade bookkeeping left");
    assert_eq!(fields.get("uc").map(String::as_str), Some("2"));
    let index = raw_hash(&mut conn, "kgtest:{ws:acme}:keys").await;
    assert_eq!(index.get(r.id.as_str()), Some(&new));

    let entry = audit(Some("acme"), now_ms(), "key.import");
    store.append_audit(&entry).await.expect("append");
    store
        .append_audit(&audit(None, now_ms(), "admin.refused"))
        .await
        .expect("append");
    let keys = raw_keys(&mut conn).await;
    for key in [
        "kgtest:{audit}",
        "kgtest:{audit}:entries",
        "kgtest:{ws:acme}:audit",
        "kgtest:{ws:acme}:audit:entries",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
    }
    let score: f64 = ::redis::cmd("ZSCORE")
        .arg("kgtest:{ws:acme}:audit")
        .arg(&entry.id)
        .query_async(&mut conn)
        .await
        .expect("ZSCORE");
    assert_eq!(score as i128, entry.time.unix_timestamp_nanos() / 1_000_000);
    let json: String = ::redis::cmd("HGET")
        .arg("kgtest:{ws:acme}:audit:entries")
        .arg(&entry.id)
        .query_async(&mut conn)
        .await
        .expect("HGET");
    assert_eq!(
        serde_json::from_str::<AuditEntry>(&json).expect("an AuditEntry"),
        entry
    );
    let global: u64 = ::redis::cmd("ZCARD")
        .arg("kgtest:{audit}")
        .query_async(&mut conn)
        .await
        .expect("ZCARD");
    assert_eq!(global, 2);

    // Deleting the key leaves its audit entries, and nothing else of it.
    store.delete("acme", &r.id).await.expect("delete");
    let mut left = raw_keys(&mut conn).await;
    left.retain(|k| !k.contains("audit"));
    assert!(left.is_empty(), "{left:?}");
}

/// Arranges the raw state an upgrade of `r` to `new_hash` leaves when cut short: after step 1
/// (`copy` false, `repointed` false), step 2 (`copy` true) or step 3 (`repointed` true too).
async fn cut_upgrade_short(
    conn: &mut ::redis::aio::MultiplexedConnection,
    r: &KeyRecord,
    new_hash: SecretHash,
    copy: bool,
    repointed: bool,
) {
    let prefix = RedisConfig::default().key_prefix;
    let (sha, new) = (r.hash.to_hex(), new_hash.to_hex());
    let old = raw_hash(conn, &format!("{prefix}{{s:{sha}}}")).await;
    if copy {
        let json = serde_json::to_string(&upgraded(r, new_hash, 0, None)).expect("json");
        let uc = old.get("uc").cloned().unwrap_or_else(|| "0".into());
        let mut cmd = ::redis::cmd("HSET");
        cmd.arg(format!("{prefix}{{h:{new}}}"))
            .arg("rec")
            .arg(json)
            .arg("uc")
            .arg(&uc)
            .arg("mv")
            .arg(&uc)
            .arg("from")
            .arg(&sha);
        if let Some(lu) = old.get("lu") {
            cmd.arg("lu").arg(lu);
        }
        let _: i64 = cmd.query_async(conn).await.expect("HSET copy");
    }
    let entry = if repointed {
        new
    } else {
        format!("u:{sha}:{new}")
    };
    let _: i64 = ::redis::cmd("HSET")
        .arg(format!("{prefix}{{ws:{}}}:keys", r.workspace))
        .arg(r.id.as_str())
        .arg(entry)
        .query_async(conn)
        .await
        .expect("HSET index");
}

#[tokio::test]
async fn redis_upgrade_cut_short_stays_consistent_and_resumes() {
    let (store, server) = redis_backend().await;
    let mut conn = raw_connection(&server).await;
    let prefix = RedisConfig::default().key_prefix;
    let t = now_ms();

    // After step 1: still the import, and the next upgrade finishes the job.
    let (a, a_new) = sha256_import("acme", "a");
    store.create(&a, None, t).await.expect("create");
    cut_upgrade_short(&mut conn, &a, a_new, false, false).await;
    assert_eq!(store.get_by_hash(&a_new).await.expect("by hash"), None);
    assert_eq!(
        store.get_by_sha256(&a.hash).await.expect("by sha256"),
        Some(a.clone())
    );
    store.add_usage(&[usage(&a, 2, t)]).await.expect("usage");
    let listed = store.list("acme", &query(10), t).await.expect("list");
    assert_eq!(ids(&listed.keys), vec![a.id.clone()]);
    assert_eq!(
        store
            .upgrade_hash("acme", &a.id, &a_new)
            .await
            .expect("resume"),
        upgraded(&a, a_new, 2, Some(t))
    );
    assert_eq!(store.get_by_sha256(&a.hash).await.expect("by sha256"), None);

    // After step 2 the copy answers by the new hash: a revoke must reach it, and usage counted
    // meanwhile must not be lost.
    let (b, b_new) = sha256_import("acme", "b");
    store.create(&b, None, t).await.expect("create");
    store.add_usage(&[usage(&b, 1, t)]).await.expect("usage");
    cut_upgrade_short(&mut conn, &b, b_new, true, false).await;
    assert_eq!(
        store.get_by_hash(&b_new).await.expect("by hash"),
        Some(upgraded(&b, b_new, 1, Some(t)))
    );
    let mut revoked = b.clone();
    revoked.revoked_at = Some(t);
    store.update(&revoked, b.updated_at).await.expect("revoke");
    let copy = store
        .get_by_hash(&b_new)
        .await
        .expect("by hash")
        .expect("copy");
    assert_eq!(
        copy.status_at(t),
        KeyStatus::Revoked,
        "the copy was revoked too"
    );
    store
        .add_usage(&[usage(&b, 4, t + ms(1))])
        .await
        .expect("usage");
    assert_eq!(
        store
            .upgrade_hash("acme", &b.id, &b_new)
            .await
            .expect("resume"),
        upgraded(&revoked, b_new, 5, Some(t + ms(1)))
    );

    // After step 2, then deleted: neither record survives.
    let (c, c_new) = sha256_import("acme", "c");
    store.create(&c, None, t).await.expect("create");
    cut_upgrade_short(&mut conn, &c, c_new, true, false).await;
    assert_eq!(
        store.delete("acme", &c.id).await.expect("delete"),
        Some(c.clone())
    );
    assert_eq!(store.get_by_hash(&c_new).await.expect("by hash"), None);
    assert_eq!(store.get_by_sha256(&c.hash).await.expect("by sha256"), None);

    // After step 3 the copy is the record. Usage and an edit that reached the old one after
    // the copy (from instances that read the index before step 1) are carried over when the
    // upgrade is resumed.
    let (d, d_new) = sha256_import("acme", "d");
    store.create(&d, None, t).await.expect("create");
    store.add_usage(&[usage(&d, 3, t)]).await.expect("usage");
    cut_upgrade_short(&mut conn, &d, d_new, true, true).await;
    let mut late_edit = d.clone();
    late_edit.name = "edited during the upgrade".into();
    let _: () = ::redis::pipe()
        .cmd("HINCRBY")
        .arg(format!("{prefix}{{s:{}}}", d.hash.to_hex()))
        .arg("uc")
        .arg(2)
        .ignore()
        .cmd("HSET")
        .arg(format!("{prefix}{{s:{}}}", d.hash.to_hex()))
        .arg("rec")
        .arg(serde_json::to_string(&late_edit).expect("json"))
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("late usage and edit");
    assert_eq!(
        store.get("acme", &d.id).await.expect("get"),
        Some(upgraded(&d, d_new, 3, Some(t)))
    );
    assert_eq!(
        store
            .upgrade_hash("acme", &d.id, &d_new)
            .await
            .expect("resume"),
        upgraded(&late_edit, d_new, 5, Some(t))
    );

    // After step 3, then deleted: the SHA-256 record left behind goes with the key.
    let (e, e_new) = sha256_import("acme", "e");
    store.create(&e, None, t).await.expect("create");
    cut_upgrade_short(&mut conn, &e, e_new, true, true).await;
    store.delete("acme", &e.id).await.expect("delete");
    assert_eq!(store.get_by_sha256(&e.hash).await.expect("by sha256"), None);
    assert_eq!(store.get_by_hash(&e_new).await.expect("by hash"), None);

    // What is left are exactly the three finished upgrades.
    let mut want = vec![
        format!("{prefix}{{h:{}}}", a_new.to_hex()),
        format!("{prefix}{{h:{}}}", b_new.to_hex()),
        format!("{prefix}{{h:{}}}", d_new.to_hex()),
        format!("{prefix}{{ws:acme}}:keys"),
        format!("{prefix}{{ws:acme}}:created"),
        format!("{prefix}{{ws:acme}}:active"),
        // Their per-day usage, on the workspace's slot, untouched by the upgrades.
        format!("{prefix}{{ws:acme}}:days:{}", a.id),
        format!("{prefix}{{ws:acme}}:days:{}", b.id),
        format!("{prefix}{{ws:acme}}:days:{}", d.id),
    ];
    want.sort();
    assert_eq!(raw_keys(&mut conn).await, want);
    for hash in [a_new, b_new, d_new] {
        let fields = raw_hash(&mut conn, &format!("{prefix}{{h:{}}}", hash.to_hex())).await;
        assert!(
            !fields.contains_key("from") && !fields.contains_key("mv"),
            "{fields:?}"
        );
    }
}

/// Gateway instances, each with its own connection, use a key while another upgrades it: one
/// flushes usage without pause, one reads it by id, one lists it, one edits it. Whatever read the
/// key's place before the upgrade moved it and acts after must follow the key: no increment
/// dropped, no read or listing that misses it, no edit answered `NotFound` (a stale record is a
/// `Conflict`). The window is a round trip wide, so many keys go through it.
#[tokio::test]
async fn redis_instances_using_a_key_while_another_upgrades_it_miss_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let (flushing, server) = redis_backend().await;
    let config = redis_config(&server, Duration::from_secs(2));
    let upgrading = RedisStore::connect(&config).await.expect("connect");
    let reading = RedisStore::connect(&config).await.expect("connect");
    let listing = RedisStore::connect(&config).await.expect("connect");
    let editing = RedisStore::connect(&config).await.expect("connect");
    let (mut lost, mut misses) = (0, Vec::new());
    for round in 0..150 {
        let (r, new_hash) = sha256_import(&format!("ws{round}"), "popular");
        let ws = r.workspace.as_str();
        flushing.create(&r, None, now_ms()).await.expect("create");
        let t = now_ms();
        let (flushed, upgraded) = (AtomicU64::new(0), AtomicBool::new(false));
        let flusher = async {
            while !upgraded.load(Ordering::SeqCst) {
                flushing.add_usage(&[usage(&r, 1, t)]).await.expect("usage");
                flushed.fetch_add(1, Ordering::SeqCst);
            }
        };
        let reader = async {
            let mut missed = Vec::new();
            while !upgraded.load(Ordering::SeqCst) {
                if reading.get(ws, &r.id).await.expect("get").is_none() {
                    missed.push("get");
                }
            }
            missed
        };
        let lister = async {
            let mut missed = Vec::new();
            while !upgraded.load(Ordering::SeqCst) {
                let page = listing.list(ws, &query(5), t).await.expect("list");
                if page.keys.len() != 1 {
                    missed.push("list");
                }
            }
            missed
        };
        let editor = async {
            let mut renamed = r.clone();
            renamed.name = "renamed".into();
            loop {
                // Not a new version: the same edit lands again until the upgrade moves the key.
                match editing.update(&renamed, r.updated_at).await {
                    Ok(()) if !upgraded.load(Ordering::SeqCst) => {}
                    Ok(()) => return None,
                    Err(StoreError::Conflict) => return None,
                    Err(other) => return Some(other),
                }
            }
        };
        let upgrader = async {
            // Start at different points of the others' cycles.
            for _ in 0..round % 5 {
                tokio::task::yield_now().await;
            }
            upgrading
                .upgrade_hash(ws, &r.id, &new_hash)
                .await
                .expect("upgrade");
            upgraded.store(true, Ordering::SeqCst);
        };
        let ((), read_misses, list_misses, edit_error, ()) =
            tokio::join!(flusher, reader, lister, editor, upgrader);
        misses.extend(read_misses.into_iter().chain(list_misses));
        if let Some(e) = edit_error {
            misses.push(if matches!(e, StoreError::NotFound) {
                "update: not found"
            } else {
                "update"
            });
        }
        let stored = upgrading
            .get_by_hash(&new_hash)
            .await
            .expect("by hash")
            .expect("upgraded");
        lost += flushed.load(Ordering::SeqCst) - stored.usage_count;
    }
    assert_eq!(lost, 0, "increments lost over 150 upgrades");
    assert!(misses.is_empty(), "{misses:?}");
}

#[tokio::test]
async fn a_redis_flush_whose_logs_fail_says_its_counts_are_stored() {
    let (store, server) = redis_backend().await;
    let (a, b) = (record("acme", "a"), record("acme", "b"));
    store.create(&a, Some(5), now_ms()).await.expect("create a");
    store.create(&b, Some(5), now_ms()).await.expect("create b");
    // B's log key holds a string: its log script fails with WRONGTYPE.
    let client = ::redis::Client::open(server.url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let _: () = ::redis::cmd("SET")
        .arg(format!("keygate:{{ws:acme}}:logs:{}", b.id))
        .arg("not a list")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let entries = [log_entry(now_ms(), "/x")];
    let failed = store
        .write_usage(
            &[usage(&a, 2, now_ms()), usage(&b, 3, now_ms())],
            &[logs_of(&a, &entries), logs_of(&b, &entries)],
            10,
        )
        .await
        .expect_err("B's log cannot be written");
    assert!(failed.counts_written, "{failed:?}");
    // The counts are in, once: a retry of the logs alone must not add them again.
    let stored = |r: &KeyRecord| {
        let (store, ws, id) = (&store, r.workspace.clone(), r.id.clone());
        async move { store.get(&ws, &id).await.unwrap().unwrap().usage_count }
    };
    assert_eq!((stored(&a).await, stored(&b).await), (2, 3));
    let failed = store.write_usage(&[usage(&a, 1, now_ms())], &[], 10).await;
    assert!(failed.is_ok(), "counts alone are written");
}
