//! Workspaces, one per customer of the protected API: what a stored workspace is, and this
//! instance's [`Directory`], its copy of the stored ones.
//!
//! - **Config workspaces** (`workspaces:`) are the running config's (a reload changes them).
//!   The admin API lists them with `source: config` and refuses to change them (409
//!   `managed_by_config`); a stored workspace of the same name is shadowed by them.
//! - **Stored workspaces** are created and changed through the admin API (`PUT
//!   /v1/workspaces/{ws}`) and kept in the store ([`crate::store::KeyStore::put_workspace`]), so
//!   that onboarding a customer or changing its plan needs no edit and no restart.
//!
//! # Who reads what
//!
//! - **Creating a key** reads no copy: the store's create checks a stored workspace's plan
//!   (`api_access`, `max_active_keys`) in the same atomic step as the insert
//!   ([`crate::store::Admission::Stored`]), so a plan change is in force for the next create on
//!   every instance as soon as its `PUT` has answered, and the key limit is exact under
//!   concurrent creates. The admin API also reads stored workspaces from the store, not from the
//!   copy, for the same reason.
//! - **The request path** reads the copy, for a workspace's default `rate_limit` and `quota`
//!   ([`Directory::defaults`], after the running config's workspaces, which shadow stored ones
//!   of the same name): a lock-free flag skips the copy when no stored workspace has defaults.
//!
//! # Keeping the copy current
//!
//! Every read of the store into the copy happens under one lock, read and apply together, so
//! the copy always ends at the newest state read ([`Directory::refresh`]). It is refreshed:
//! by the instance that wrote, right after its write; on every instance sharing Redis, when the
//! `ws:<name>` message of the invalidation channel arrives (the channel of key revocations, see
//! [`crate::store::invalidation`]), so a change reaches the fleet as fast as a revocation; whole,
//! when the subscription is (re)established (messages may have been missed), at start, and
//! every `cache.ttl` (the same bound on an unseen change as for keys when the channel fails).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{Mutex, mpsc};

use crate::config::{QuotaSpec, RateLimitSpec, Workspace};
use crate::store::{KeyStore, Store, StoreError};

/// Largest page of stored workspaces read at once when the copy is refreshed whole.
const REFRESH_PAGE: usize = 1000;

/// A workspace created through the admin API, as the store keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceRecord {
    /// Its name (see [`crate::config::is_workspace_name`]).
    pub name: String,
    /// Plan and defaults.
    pub settings: Workspace,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was last changed; a conditional write compares it
    /// ([`crate::store::KeyStore::put_workspace`]).
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Where a workspace is declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `workspaces:` in the config file.
    Config,
    /// Created through the admin API and stored.
    Api,
}

impl Source {
    /// As the admin API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Api => "api",
        }
    }
}

/// What a refresher is asked to re-read.
enum Refresh {
    One(String),
    All,
}

/// This instance's copy of the stored workspaces (config workspaces are the running config's,
/// and shadow a stored one of the same name: callers look there first).
pub struct Directory {
    stored: RwLock<HashMap<String, Arc<WorkspaceRecord>>>,
    /// Whether any stored workspace has a default rate limit or quota.
    any_defaults: AtomicBool,
    /// Held across each read of the store and its apply.
    refreshing: Mutex<()>,
    wake: mpsc::UnboundedSender<Refresh>,
    woken: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Refresh>>>,
}

impl Default for Directory {
    fn default() -> Self {
        Directory::new()
    }
}

impl Directory {
    /// An empty copy, filled by the first refresh.
    pub fn new() -> Directory {
        let (wake, woken) = mpsc::unbounded_channel();
        Directory {
            stored: RwLock::new(HashMap::new()),
            any_defaults: AtomicBool::new(false),
            refreshing: Mutex::new(()),
            wake,
            woken: std::sync::Mutex::new(Some(woken)),
        }
    }

    /// This instance's copy of a stored workspace.
    pub fn stored(&self, name: &str) -> Option<Arc<WorkspaceRecord>> {
        self.read().get(name).cloned()
    }

    /// Whether any stored workspace has a default rate limit or quota (one atomic load).
    pub fn any_defaults(&self) -> bool {
        self.any_defaults.load(Ordering::Acquire)
    }

    /// The default rate limit and quota of stored workspace `name`'s keys.
    pub fn defaults(&self, name: &str) -> (Option<RateLimitSpec>, Option<QuotaSpec>) {
        if !self.any_defaults() {
            return (None, None);
        }
        self.read()
            .get(name)
            .map_or((None, None), |r| (r.settings.rate_limit, r.settings.quota))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<WorkspaceRecord>>> {
        // Writers swap whole entries: a poisoned map is still consistent.
        self.stored.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn recount(&self, stored: &HashMap<String, Arc<WorkspaceRecord>>) {
        let any = stored
            .values()
            .any(|r| r.settings.rate_limit.is_some() || r.settings.quota.is_some());
        self.any_defaults.store(any, Ordering::Release);
    }

    fn apply(&self, f: impl FnOnce(&mut HashMap<String, Arc<WorkspaceRecord>>)) {
        let mut stored = self.stored.write().unwrap_or_else(PoisonError::into_inner);
        f(&mut stored);
        self.recount(&stored);
    }

    /// Re-reads one stored workspace into the copy (dropping it if the store has none).
    pub async fn refresh(&self, store: &Store, name: &str) -> Result<(), StoreError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let record = store.get_workspace(name).await?;
        self.apply(|stored| match record {
            Some(r) => {
                stored.insert(r.name.clone(), Arc::new(r));
            }
            None => {
                stored.remove(name);
            }
        });
        Ok(())
    }

    /// Re-reads every stored workspace, replacing the copy.
    pub async fn refresh_all(&self, store: &Store) -> Result<(), StoreError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let mut all = HashMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = store
                .list_workspaces(after.as_deref(), REFRESH_PAGE)
                .await?;
            let full = page.len() == REFRESH_PAGE;
            after = page.last().map(|r| r.name.clone());
            all.extend(page.into_iter().map(|r| (r.name.clone(), Arc::new(r))));
            if !full {
                break;
            }
        }
        self.apply(|stored| *stored = all);
        Ok(())
    }

    /// Asks the refresher ([`Directory::run`]) to re-read `name`: another instance changed it.
    pub fn changed_elsewhere(&self, name: &str) {
        let _ = self.wake.send(Refresh::One(name.to_owned()));
    }

    /// Asks the refresher to re-read everything: changes may have been missed.
    pub fn maybe_missed(&self) {
        let _ = self.wake.send(Refresh::All);
    }

    /// Keeps the copy current until dropped: re-reads everything every `every`, and whatever
    /// [`Directory::changed_elsewhere`] and [`Directory::maybe_missed`] ask for, retrying a
    /// failed read every second until the store answers. (Read the copy once with
    /// [`Directory::refresh_all`] before serving.) Runs once per directory; a second call
    /// returns.
    pub async fn run(self: Arc<Self>, store: Arc<Store>, every: Duration) {
        let Some(mut woken) = self
            .woken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let retry = Duration::from_secs(1);
        let mut whole_due = tokio::time::Instant::now() + every;
        let mut failed = false;
        loop {
            let asked = tokio::select! {
                asked = woken.recv() => asked,
                () = tokio::time::sleep_until(whole_due) => Some(Refresh::All),
            };
            let whole = matches!(asked, Some(Refresh::All));
            let outcome = match asked {
                Some(Refresh::One(name)) => self.refresh(&store, &name).await,
                Some(Refresh::All) => self.refresh_all(&store).await,
                None => return,
            };
            match outcome {
                Ok(()) => {
                    if failed {
                        tracing::info!("stored workspaces read again");
                        failed = false;
                    }
                    if whole {
                        whole_due = tokio::time::Instant::now() + every;
                    }
                }
                Err(e) => {
                    if !failed {
                        tracing::warn!(error = %e, "stored workspaces could not be read; retrying every second");
                        failed = true;
                    }
                    // Whatever was asked, a whole re-read a second from now covers it.
                    whole_due = tokio::time::Instant::now() + retry;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_their_settings_through_json() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("a valid time");
        let record = WorkspaceRecord {
            name: "acme".into(),
            settings: Workspace {
                api_access: false,
                max_active_keys: 9,
                metadata: serde_json::json!({"plan": "pro"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                ..Workspace::default()
            },
            created_at: at,
            updated_at: at,
        };
        let json = serde_json::to_string(&record).expect("encodes");
        let back: WorkspaceRecord = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, record);
    }
}
