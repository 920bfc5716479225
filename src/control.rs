//! Key lifecycle operations (create, update, revoke, delete): each writes the store and then
//! invalidates the hot cache, here and on every instance sharing the store
//! ([`crate::store::invalidation`]), so the very next request sees the change. A change to an
//! existing key (update, revoke, delete, and so a rotation's end of the old key) answers only
//! once every live instance has confirmed dropping it, or after a bounded wait, and says which
//! did not ([`Applied`], [`crate::store::fleet`]). The admin API and the CLI go through here;
//! nothing else writes key records.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use ipnet::IpNet;
use time::OffsetDateTime;

use crate::config::{QuotaSpec, RateLimitSpec};
use crate::keys::{
    self, HashScheme, KeyId, KeyRecord, Secret, SecretFormat, SecretHash, SecretHasher, Shape,
};
use crate::store::cache::KeyCache;
use crate::store::fleet::Propagation;
use crate::store::invalidation::{
    invalidate_confirmed, invalidate_everywhere, invalidate_hash_confirmed,
};
use crate::store::{Admission, KeyStore, Store, StoreError};

/// The fields a caller chooses when creating a key.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    /// Workspace.
    pub workspace: String,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Role.
    pub role: Option<String>,
    /// IP allowlist.
    pub ip_allowlist: Vec<IpNet>,
    /// Expiry.
    pub expires_at: Option<OffsetDateTime>,
    /// Rate limit override.
    pub rate_limit: Option<RateLimitSpec>,
    /// Quota.
    pub quota: Option<QuotaSpec>,
    /// Owner.
    pub owner: Option<String>,
    /// Metadata object.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Who creates it.
    pub created_by: String,
}

impl NewKey {
    /// A key with the same settings as `record` (rotation), created by `created_by`.
    pub fn like(record: &KeyRecord, created_by: &str) -> NewKey {
        NewKey {
            workspace: record.workspace.clone(),
            name: record.name.clone(),
            description: record.description.clone(),
            scopes: record.scopes.clone(),
            role: record.role.clone(),
            ip_allowlist: record.ip_allowlist.clone(),
            expires_at: record.expires_at,
            rate_limit: record.rate_limit,
            quota: record.quota,
            owner: record.owner.clone(),
            metadata: record.metadata.clone(),
            created_by: created_by.to_owned(),
        }
    }
}

/// The secret of an imported key, as its previous system can give it.
#[derive(Debug)]
pub enum ImportedSecret {
    /// The plaintext: hashed with the pepper at once, never stored.
    Plaintext(Secret),
    /// Only the secret's SHA-256 (with the displayed prefix, if known): the key works at once and
    /// is re-hashed with the pepper on its first successful use.
    Sha256 {
        /// Raw SHA-256 digest of the secret.
        digest: SecretHash,
        /// Displayed start of the secret.
        prefix: String,
    },
}

/// Whether a [`KeyManager::modify`] edit changed the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    /// Write it.
    Yes,
    /// Leave it as stored.
    No,
}

/// A change to a key as written, and how far it reached the other instances' caches.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The key as written (as it was, for a delete).
    pub record: KeyRecord,
    /// The live instances and those that did not confirm dropping the key in time.
    pub propagation: Propagation,
}

/// Attempts of [`KeyManager::modify`] when the record keeps changing under it. An attempt fails
/// only when another write to the key landed since its read, so this many concurrent writers of
/// one key all get through.
const MODIFY_ATTEMPTS: usize = 16;

/// Key lifecycle over a store and its cache.
#[derive(Clone)]
pub struct KeyManager {
    cache: Arc<KeyCache<Store>>,
    format: SecretFormat,
    hasher: SecretHasher,
}

impl KeyManager {
    /// Operations over `cache` (and the store behind it) for one secret format and pepper.
    pub fn new(cache: Arc<KeyCache<Store>>, format: SecretFormat, hasher: SecretHasher) -> Self {
        KeyManager {
            cache,
            format,
            hasher,
        }
    }

    fn store(&self) -> &Store {
        self.cache.store()
    }

    /// Creates a key with a new secret; the secret is returned here and nowhere else.
    pub async fn create(
        &self,
        new: NewKey,
        admission: impl Into<Admission>,
    ) -> Result<(KeyRecord, Secret), StoreError> {
        self.create_with(new, admission.into(), None).await
    }

    /// Creates the successor of `old` in a rotation: a new secret, the same settings, and
    /// `rotated_from` naming `old` (whose `replaced_by` the caller sets when it ends it).
    pub async fn create_successor(
        &self,
        old: &KeyRecord,
        created_by: &str,
    ) -> Result<(KeyRecord, Secret), StoreError> {
        // A successor takes no slot of its own: its predecessor ends with the rotation.
        self.create_with(
            NewKey::like(old, created_by),
            Admission::Open,
            Some(old.id.clone()),
        )
        .await
    }

    async fn create_with(
        &self,
        new: NewKey,
        admission: Admission,
        rotated_from: Option<KeyId>,
    ) -> Result<(KeyRecord, Secret), StoreError> {
        let secret = self.format.generate();
        let prefix = self.format.display_prefix(&secret);
        let mut record = self.record(new, self.keyed(&secret), prefix);
        record.rotated_from = rotated_from;
        self.store()
            .create(&record, admission, OffsetDateTime::now_utc())
            .await?;
        // A negative entry may exist if this secret was ever tried (practically never, but free).
        invalidate_everywhere(&self.cache, &record).await;
        Ok((record, secret))
    }

    /// Imports a key that already exists elsewhere; its clients keep their secret.
    /// [`StoreError::Conflict`] if a key has this secret already, whatever form either was
    /// imported in (plaintext or SHA-256; before or after the upgrade of a `sha256` import).
    pub async fn import(
        &self,
        new: NewKey,
        secret: ImportedSecret,
        admission: impl Into<Admission>,
    ) -> Result<KeyRecord, StoreError> {
        let admission = admission.into();
        let record = match secret {
            ImportedSecret::Plaintext(secret) => {
                let digest = SecretHash(Sha256::digest(secret.expose().as_bytes()).into());
                // Imports from before keys carried a tag are found by their digest only, as
                // long as they are not upgraded (once upgraded, `hash` is the same as ours).
                if self.store().get_by_sha256(&digest).await?.is_some() {
                    return Err(StoreError::Conflict);
                }
                let prefix = match self.format.shape(secret.expose()) {
                    Shape::Native => self.format.display_prefix(&secret),
                    Shape::Foreign | Shape::Malformed => keys::foreign_display_prefix(&secret),
                };
                let mut record = self.record(new, self.keyed(&secret), prefix);
                record.sha256_tag = Some(self.hasher.sha256_tag(&digest));
                record
            }
            ImportedSecret::Sha256 { digest, prefix } => {
                let mut record = self.record(new, (digest, HashScheme::Sha256), prefix);
                record.sha256_tag = Some(self.hasher.sha256_tag(&digest));
                record
            }
        };
        // The tag makes one secret one key whatever form either import came in: the store
        // refuses a taken tag in the same atomic step as the insert.
        self.store()
            .create(&record, admission, OffsetDateTime::now_utc())
            .await?;
        invalidate_everywhere(&self.cache, &record).await;
        Ok(record)
    }

    fn keyed(&self, secret: &Secret) -> (SecretHash, HashScheme) {
        (self.hasher.hash(secret.expose()), HashScheme::KeyedBlake3)
    }

    fn record(
        &self,
        new: NewKey,
        (hash, hash_scheme): (SecretHash, HashScheme),
        prefix: String,
    ) -> KeyRecord {
        let now = now_ms();
        KeyRecord {
            id: KeyId::generate(),
            workspace: new.workspace,
            name: new.name,
            description: new.description,
            prefix,
            hash,
            hash_scheme,
            scopes: new.scopes,
            role: new.role,
            ip_allowlist: new.ip_allowlist,
            expires_at: new.expires_at,
            rate_limit: new.rate_limit,
            quota: new.quota,
            owner: new.owner,
            metadata: new.metadata,
            created_at: now,
            created_by: new.created_by,
            updated_at: now,
            revoked_at: None,
            last_used_at: None,
            usage_count: 0,
            sha256_tag: None,
            rotated_from: None,
            replaced_by: None,
        }
    }

    /// Writes a changed record and drops it from the caches. `record` is a record as read from
    /// the store, then edited: its `updated_at` must be the one read, since the write only
    /// lands if the key has not changed since ([`KeyStore::update`]); otherwise
    /// [`StoreError::Conflict`] (use [`KeyManager::modify`], which reads again and retries).
    /// The record written and returned has a new `updated_at`.
    pub async fn update(&self, mut record: KeyRecord) -> Result<Applied, StoreError> {
        let read = record.updated_at;
        // Strictly later than the version read, even within its millisecond or with a clock
        // behind the one that wrote it: else a writer that read this version could not tell.
        record.updated_at = now_ms().max(read.saturating_add(time::Duration::MILLISECOND));
        let written = self.store().update(&record, read).await;
        match written {
            Err(e @ (StoreError::Conflict | StoreError::NotFound)) => Err(e),
            // A call that failed in transit may still have landed (a timed-out redb task
            // commits anyway; a Redis reply can be lost): drop the cached copies all the same.
            written => {
                let propagation = invalidate_confirmed(&self.cache, &record).await;
                written.map(|()| Applied {
                    record,
                    propagation,
                })
            }
        }
    }

    /// Reads a key, lets `change` edit it, and writes it back if the key has not changed since
    /// the read. When it has (a concurrent edit or revoke, or a SHA-256 import upgraded by its
    /// first use), reads it again and re-applies `change` to the newer record, so no edit is
    /// lost, none undoes another (a revoke above all), and none is refused for it. Only a key
    /// still changing after [`MODIFY_ATTEMPTS`] tries fails, as [`StoreError::Unavailable`]:
    /// retrying later can succeed, and the key is as the other writers left it.
    pub async fn modify<E: From<StoreError>>(
        &self,
        workspace: &str,
        id: &KeyId,
        mut change: impl FnMut(&mut KeyRecord) -> Result<Changed, E>,
    ) -> Result<Applied, E> {
        for _ in 0..MODIFY_ATTEMPTS {
            let mut record = self
                .store()
                .get(workspace, id)
                .await?
                .ok_or(StoreError::NotFound)?;
            if change(&mut record)? == Changed::No {
                // Nothing to write, but a cache may still hold what an earlier call that failed
                // in transit did write (a retried revoke lands here): drop it.
                let propagation = invalidate_confirmed(&self.cache, &record).await;
                return Ok(Applied {
                    record,
                    propagation,
                });
            }
            match self.update(record).await {
                Err(StoreError::Conflict) => continue,
                other => return Ok(other?),
            }
        }
        Err(
            StoreError::Unavailable(format!("key {id} kept changing while it was being edited"))
                .into(),
        )
    }

    /// Revokes a key (irreversible). Revoking a revoked key changes nothing.
    pub async fn revoke(&self, workspace: &str, id: &KeyId) -> Result<Applied, StoreError> {
        self.modify(workspace, id, |record| {
            if record.revoked_at.is_some() {
                return Ok::<_, StoreError>(Changed::No);
            }
            record.revoked_at = Some(now_ms());
            Ok(Changed::Yes)
        })
        .await
    }

    /// Deletes a key and its request logs.
    pub async fn delete(&self, workspace: &str, id: &KeyId) -> Result<Applied, StoreError> {
        // Read first: a delete that fails in transit may have landed, and its hash is what
        // the caches must drop.
        let known = self
            .store()
            .get(workspace, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        // Before the delete, which removes the mark: the copy of an unfinished upgrade may be
        // cached under its target.
        let target = self.store().upgrade_target(&known).await;
        // Whatever the outcome but "not there", the caches drop the key: a failed delete may
        // have landed.
        let deleted = match self.store().delete(workspace, id).await {
            Ok(None) => return Err(StoreError::NotFound),
            Ok(Some(record)) => Ok(record),
            Err(e) => Err(e),
        };
        let mut propagation = invalidate_confirmed(&self.cache, &known).await;
        if let Some(to) = target {
            propagation =
                propagation.and(invalidate_hash_confirmed(&self.cache, &to, &known).await);
        }
        let record = deleted?;
        Ok(Applied {
            record,
            propagation,
        })
    }
}

/// Now, at millisecond precision (what both stores keep).
pub fn now_ms() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000)
        .expect("a whole number of milliseconds is a valid nanosecond value")
}
