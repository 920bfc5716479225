//! The stored-workspace contract of every `KeyStore` backend (embedded and Redis, behind the
//! `Store` enum): conditional writes, listing by name, deletion only when empty, and
//! `Admission::Stored` creates that read the plan in the same atomic step as the insert.

#[macro_use]
mod support;

use std::sync::Arc;

use futures_util::future::join_all;
use keygate::config::Workspace;
use keygate::keys::KeyStatus;
use keygate::store::{Admission, KeyStore, Store, StoreError};
use keygate::workspaces::WorkspaceRecord;
use support::stores::{embedded_store, ms, now_ms, record, redis_cluster_store, redis_store};

fn workspace(name: &str, api_access: bool, max_active_keys: u32) -> WorkspaceRecord {
    let now = now_ms();
    WorkspaceRecord {
        name: name.into(),
        settings: Workspace {
            api_access,
            max_active_keys,
            ..Workspace::default()
        },
        created_at: now,
        updated_at: now,
    }
}

/// `w` changed by `change`, one millisecond later.
fn changed(w: &WorkspaceRecord, change: impl FnOnce(&mut Workspace)) -> WorkspaceRecord {
    let mut next = w.clone();
    change(&mut next.settings);
    next.updated_at = w.updated_at + ms(1);
    next
}

async fn writes_are_conditional_and_resends_are_harmless(store: &Store) {
    assert_eq!(store.get_workspace("acme").await.expect("get"), None);
    let w = workspace("acme", true, 5);
    store.put_workspace(&w, None).await.expect("create");
    assert_eq!(
        store.get_workspace("acme").await.expect("get"),
        Some(w.clone())
    );
    // The resend of the create that landed is not a conflict; another create is.
    store.put_workspace(&w, None).await.expect("resend");
    let other = changed(&w, |s| s.max_active_keys = 50);
    assert!(matches!(
        store.put_workspace(&other, None).await,
        Err(StoreError::Conflict)
    ));
    // A change from the current version lands; one from a stale version does not.
    store
        .put_workspace(&other, Some(w.updated_at))
        .await
        .expect("change");
    let stale = changed(&w, |s| s.api_access = false);
    assert!(matches!(
        store.put_workspace(&stale, Some(w.updated_at)).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        store.get_workspace("acme").await.expect("get"),
        Some(other.clone())
    );
    // A change of a workspace that is not there is a conflict, not a create.
    let ghost = changed(&workspace("ghost", true, 1), |_| {});
    assert!(matches!(
        store.put_workspace(&ghost, Some(now_ms())).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.get_workspace("ghost").await.expect("get"), None);
}

async fn listing_is_by_name_and_paginated(store: &Store) {
    let names = ["delta", "alpha", "charlie", "bravo", "echo"];
    for n in names {
        store
            .put_workspace(&workspace(n, true, 5), None)
            .await
            .expect("create");
    }
    let all = store.list_workspaces(None, 100).await.expect("list");
    let listed: Vec<&str> = all.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(listed, ["alpha", "bravo", "charlie", "delta", "echo"]);
    let first = store.list_workspaces(None, 2).await.expect("page 1");
    let second = store
        .list_workspaces(Some("bravo"), 2)
        .await
        .expect("page 2");
    let third = store
        .list_workspaces(Some("delta"), 2)
        .await
        .expect("page 3");
    let pages: Vec<Vec<&str>> = [&first, &second, &third]
        .iter()
        .map(|p| p.iter().map(|w| w.name.as_str()).collect())
        .collect();
    assert_eq!(
        pages,
        [
            vec!["alpha", "bravo"],
            vec!["charlie", "delta"],
            vec!["echo"]
        ]
    );
    store.delete_workspace("charlie").await.expect("delete");
    let after = store
        .list_workspaces(Some("bravo"), 2)
        .await
        .expect("after delete");
    let names: Vec<&str> = after.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        names,
        ["delta", "echo"],
        "a deleted workspace leaves no gap in a page"
    );
}

async fn a_workspace_with_keys_is_not_deleted(store: &Store) {
    let w = workspace("acme", true, 5);
    store.put_workspace(&w, None).await.expect("create");
    let key = record("acme", "one");
    store
        .create(&key, Admission::Stored, now_ms())
        .await
        .expect("key");
    // Revoked keys count too: they are still listed in the workspace.
    let mut revoked = key.clone();
    revoked.revoked_at = Some(now_ms());
    revoked.updated_at = key.updated_at + ms(1);
    store
        .update(&revoked, key.updated_at)
        .await
        .expect("revoke");
    assert!(matches!(
        store.delete_workspace("acme").await,
        Err(StoreError::WorkspaceNotEmpty(1))
    ));
    assert!(store.get_workspace("acme").await.expect("get").is_some());
    store.delete("acme", &key.id).await.expect("delete key");
    assert_eq!(
        store.delete_workspace("acme").await.expect("delete"),
        Some(w)
    );
    assert_eq!(store.get_workspace("acme").await.expect("get"), None);
    assert_eq!(store.delete_workspace("acme").await.expect("again"), None);
}

async fn stored_admission_reads_the_plan_in_the_create(store: &Store) {
    let now = now_ms();
    assert!(matches!(
        store
            .create(&record("nowhere", "k"), Admission::Stored, now)
            .await,
        Err(StoreError::NoWorkspace)
    ));
    let w = workspace("trial", false, 5);
    store.put_workspace(&w, None).await.expect("create");
    assert!(matches!(
        store
            .create(&record("trial", "k"), Admission::Stored, now)
            .await,
        Err(StoreError::NoApiAccess)
    ));
    // The upgrade is in force for the very next create.
    let upgraded = changed(&w, |s| {
        s.api_access = true;
        s.max_active_keys = 1;
    });
    store
        .put_workspace(&upgraded, Some(w.updated_at))
        .await
        .expect("upgrade");
    store
        .create(&record("trial", "first"), Admission::Stored, now)
        .await
        .expect("first key");
    assert!(matches!(
        store
            .create(&record("trial", "second"), Admission::Stored, now)
            .await,
        Err(StoreError::LimitReached)
    ));
    let raised = changed(&upgraded, |s| s.max_active_keys = 2);
    store
        .put_workspace(&raised, Some(upgraded.updated_at))
        .await
        .expect("raise");
    store
        .create(&record("trial", "second"), Admission::Stored, now)
        .await
        .expect("second key after the raise");
    assert_eq!(store.count_active("trial", now).await.expect("count"), 2);
    // A key born revoked takes no slot, but still needs the workspace to exist.
    let mut born_revoked = record("trial", "revoked");
    born_revoked.revoked_at = Some(now);
    store
        .create(&born_revoked, Admission::Stored, now)
        .await
        .expect("a revoked key takes no slot");
    born_revoked.id = keygate::keys::KeyId::generate();
    born_revoked.workspace = "nowhere".into();
    assert!(matches!(
        store.create(&born_revoked, Admission::Stored, now).await,
        Err(StoreError::NoWorkspace)
    ));
}

async fn the_stored_limit_is_exact_under_concurrent_creates(store: Store) {
    let store = Arc::new(store);
    store
        .put_workspace(&workspace("acme", true, 3), None)
        .await
        .expect("create");
    let tasks = (0..12).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create(
                    &record("acme", &format!("k{i}")),
                    Admission::Stored,
                    now_ms(),
                )
                .await
        })
    });
    let outcomes: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let created = outcomes.iter().filter(|o| o.is_ok()).count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Err(StoreError::LimitReached)))
        .count();
    assert_eq!((created, refused), (3, 9), "{outcomes:?}");
    let page = store
        .list(
            "acme",
            &keygate::store::ListQuery {
                limit: 100,
                ..Default::default()
            },
            now_ms(),
        )
        .await
        .expect("list");
    assert_eq!(
        page.keys
            .iter()
            .filter(|k| k.status_at(now_ms()) == KeyStatus::Active)
            .count(),
        3
    );
}

async fn a_delete_racing_creates_never_strands_a_key(store: Store) {
    let store = Arc::new(store);
    for round in 0..20 {
        let name = format!("race-{round}");
        store
            .put_workspace(&workspace(&name, true, 100), None)
            .await
            .expect("create");
        let creates = (0..4).map(|i| {
            let (store, name) = (store.clone(), name.clone());
            tokio::spawn(async move {
                store
                    .create(
                        &record(&name, &format!("k{i}")),
                        Admission::Stored,
                        now_ms(),
                    )
                    .await
            })
        });
        let delete = {
            let (store, name) = (store.clone(), name.clone());
            tokio::spawn(async move { store.delete_workspace(&name).await })
        };
        let created = join_all(creates)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(Ok(()))))
            .count();
        let deleted = delete.await.expect("task");
        let keys = store
            .list(
                &name,
                &keygate::store::ListQuery {
                    limit: 100,
                    ..Default::default()
                },
                now_ms(),
            )
            .await
            .expect("list")
            .keys
            .len();
        assert_eq!(keys, created, "round {round}");
        match deleted {
            Ok(Some(_)) => assert_eq!(created, 0, "round {round}: deleted with keys in it"),
            Err(StoreError::WorkspaceNotEmpty(_)) => assert!(created > 0, "round {round}"),
            other => panic!("round {round}: {other:?}"),
        }
    }
}

on_both_stores!(
    writes_are_conditional_and_resends_are_harmless,
    listing_is_by_name_and_paginated,
    a_workspace_with_keys_is_not_deleted,
    stored_admission_reads_the_plan_in_the_create;
    owning:
    the_stored_limit_is_exact_under_concurrent_creates,
    a_delete_racing_creates_never_strands_a_key,
);
