//! Hosted repositories: the push side beside the cache.
//!
//! Repositories under configured local prefixes (`local/…`) are not fetched
//! from anywhere: clients push them with the OCI distribution push API and
//! pull them back. [`Hosted`] is that API without HTTP, over any
//! [`Storage`], so it works the same on memory, filesystem and S3:
//!
//! - **Blobs and manifests are the cache's own.** A pushed blob is an
//!   ordinary content-addressed blob, a pushed manifest an ordinary manifest
//!   record; both are written through the same verified writes as a cache
//!   fill, so nothing becomes visible before its bytes hash to its digest.
//!   That is also why a cross-repository mount of anything the store holds
//!   (cached from upstream or pushed elsewhere) succeeds without a byte sent.
//! - **Repository membership is a link record**: `hosted/<repository…>/_tags/<tag>`
//!   (JSON `{digest}`) and `hosted/<repository…>/_manifests/<algorithm>/<hex>`,
//!   so a manifest pushed by digest only belongs to the repository it was
//!   pushed to. [`protected_manifests`] lists every linked manifest for eviction.
//! - **Upload sessions are records too** (`uploads/<id>`), holding the
//!   repository and the size of each piece received so far. Each chunk is
//!   cut into pieces of at most [`HostedOptions::piece_size`] bytes (the
//!   only request memory), stored as records under the session's own prefix
//!   (`upload-pieces/<id>/<n>`), **never as blobs**: nobody can mount, pull
//!   or reference an unfinished upload's bytes, so cancelling or expiring a
//!   session removes only what is its own, and eviction need not know about
//!   it. Finishing streams the pieces, in order, into a verified write of
//!   the final digest, removing each as it is read (the bytes are on disk
//!   once). A session survives a restart on every backend, and one left
//!   alone for [`HostedOptions::upload_max_age`] is removed by
//!   [`Hosted::cleanup_abandoned`].
//! - **Referrers are link records as well** (OCI 1.1 content discovery): a
//!   manifest pushed with a `subject` also writes
//!   `hosted/<repository…>/_referrers/<subject>/<manifest>` holding its
//!   descriptor, so [`Hosted::referrers`] lists one prefix instead of
//!   reading every manifest, and deleting the manifest removes the link.

mod manifest;
mod quota;
mod referrers;
mod upload;

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, TryStreamExt};

use crate::cache::catalog::{Loader, NameIndex, REFRESH};
use crate::digest::Digest;
use crate::evict::DiskBudget;
use crate::mirror::MirrorConfig;
use crate::reference::{Repository, Tag};
use crate::storage::{Record, RecordKey, RecordPrefix, RecordWrite, Storage};
use crate::{Error, Result};

pub use manifest::PushedManifest;
// `Referrer` moved to `referrers`, shared with cached repositories; the old path stays valid.
#[doc(hidden)]
pub use crate::referrers::Referrer;
pub use upload::UploadState;
// The link and upload-session key types moved to `storage`; the old paths stay valid.
#[doc(hidden)]
pub use crate::storage::{HostedKey, UploadId};

/// Limits and ages for hosted repositories.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HostedOptions {
    /// Largest manifest accepted by `PUT` (default 4 MiB, as distribution).
    pub max_manifest_size: u64,
    /// Largest blob accepted (default 64 GiB, as the cache's
    /// [`max_blob_size`](crate::cache::CacheOptions::max_blob_size); `None`: no limit).
    pub max_blob_size: Option<u64>,
    /// An upload session untouched this long is removed (default 24 h).
    pub upload_max_age: Duration,
    /// Chunk bytes held in memory per request before they are stored (default 4 MiB).
    pub piece_size: usize,
    /// Upload sessions one client address may hold open at once (default 64).
    pub max_uploads_per_client: usize,
    /// Bytes all open upload sessions may hold together (default: as
    /// [`max_blob_size`](Self::max_blob_size); `None`: no limit).
    pub max_upload_bytes: Option<u64>,
}

impl Default for HostedOptions {
    fn default() -> Self {
        HostedOptions {
            max_manifest_size: 4 * 1024 * 1024,
            max_blob_size: Some(crate::cache::CacheOptions::default().max_blob_size),
            upload_max_age: Duration::from_secs(24 * 60 * 60),
            piece_size: 4 * 1024 * 1024,
            max_uploads_per_client: 64,
            max_upload_bytes: Some(crate::cache::CacheOptions::default().max_blob_size),
        }
    }
}

impl HostedOptions {
    /// Sets [`max_manifest_size`](Self::max_manifest_size).
    pub fn with_max_manifest_size(mut self, bytes: u64) -> Self {
        self.max_manifest_size = bytes;
        self
    }

    /// Sets [`max_blob_size`](Self::max_blob_size).
    pub fn with_max_blob_size(mut self, bytes: Option<u64>) -> Self {
        self.max_blob_size = bytes;
        self
    }

    /// Sets [`upload_max_age`](Self::upload_max_age).
    pub fn with_upload_max_age(mut self, age: Duration) -> Self {
        self.upload_max_age = age;
        self
    }

    /// Checks [`upload_max_age`](Self::upload_max_age) (a minute to a
    /// year), [`max_uploads_per_client`](Self::max_uploads_per_client) (1 to
    /// 65536) and [`max_upload_bytes`](Self::max_upload_bytes) (1 MiB to
    /// 1 EiB) against their ranges (the other sizes come from the cache's
    /// options, checked there); the error names the setting and the range.
    pub fn validate(&self) -> Result<()> {
        use crate::bounds::{count_in, size_in, EIB, MIB, YEAR};
        crate::bounds::duration_in(
            "upload_max_age",
            self.upload_max_age,
            Duration::from_secs(60)..=YEAR,
        )?;
        let sessions = u64::try_from(self.max_uploads_per_client).unwrap_or(u64::MAX);
        count_in("max_uploads_per_client", sessions, 1..=65_536)?;
        if let Some(bytes) = self.max_upload_bytes {
            size_in("max_upload_bytes", bytes, MIB..=EIB)?;
        }
        Ok(())
    }

    /// Sets [`max_uploads_per_client`](Self::max_uploads_per_client) (at least 1).
    pub fn with_max_uploads_per_client(mut self, sessions: usize) -> Self {
        self.max_uploads_per_client = sessions.max(1);
        self
    }

    /// Sets [`max_upload_bytes`](Self::max_upload_bytes).
    pub fn with_max_upload_bytes(mut self, bytes: Option<u64>) -> Self {
        self.max_upload_bytes = bytes;
        self
    }

    /// Sets [`piece_size`](Self::piece_size) (at least 1 byte).
    pub fn with_piece_size(mut self, bytes: usize) -> Self {
        self.piece_size = bytes.max(1);
        self
    }
}

/// The push API over a storage. Cheap to clone.
pub struct Hosted<S: ?Sized> {
    storage: Arc<S>,
    options: HostedOptions,
    last_cleanup: Arc<Mutex<Option<Instant>>>,
    /// Upload sessions a request of this process is writing right now.
    busy: Arc<Mutex<HashSet<UploadId>>>,
    /// Open upload sessions and the bytes they hold, for the caps.
    open: Arc<Mutex<quota::OpenUploads>>,
    /// The cache's disk budget, told about every blob a push stores or removes.
    budget: Option<Arc<DiskBudget>>,
    /// Names of hosted repositories, for `_catalog`.
    catalog: Arc<NameIndex>,
}

impl<S: ?Sized> Clone for Hosted<S> {
    fn clone(&self) -> Self {
        Hosted {
            storage: Arc::clone(&self.storage),
            options: self.options.clone(),
            last_cleanup: Arc::clone(&self.last_cleanup),
            busy: Arc::clone(&self.busy),
            open: Arc::clone(&self.open),
            budget: self.budget.clone(),
            catalog: Arc::clone(&self.catalog),
        }
    }
}

impl<S: ?Sized> fmt::Debug for Hosted<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hosted")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<S: Storage + ?Sized> Hosted<S> {
    /// The push API over `storage`.
    pub fn new(storage: Arc<S>, options: HostedOptions) -> Self {
        Hosted {
            catalog: Arc::new(NameIndex::new(repository_lister(&storage), REFRESH)),
            storage,
            options,
            last_cleanup: Arc::new(Mutex::new(None)),
            busy: Arc::default(),
            open: Arc::default(),
            budget: None,
        }
    }

    /// Reports the bytes pushes store and remove to `budget` (the cache
    /// engine's, [`PullThrough::budget`](crate::cache::PullThrough::budget)),
    /// so a size cap counts them at once instead of at the next full count.
    pub fn with_budget(mut self, budget: Arc<DiskBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Keeps the blob `digest` a push is about to complete from eviction
    /// and purge for [`upload_max_age`](HostedOptions::upload_max_age):
    /// clients push layers and config before the manifest that names them,
    /// and until it arrives nothing else protects them. Written before the
    /// blob, so there is no moment it is stored unprotected; the manifest
    /// ([`release_pushed`](Self::release_pushed)) or the sweep of ended
    /// graces removes it.
    async fn protect_pushed(&self, digest: &Digest) -> Result<()> {
        let until =
            crate::storage::now_secs().saturating_add(self.options.upload_max_age.as_secs());
        self.storage
            .record_put(
                &RecordKey::pushed_blob(digest),
                Record::new(Bytes::from(until.to_string())),
                RecordWrite::Overwrite,
            )
            .await?;
        Ok(())
    }

    /// Drops the grace records of `blobs`: a manifest of a hosted
    /// repository names them now and keeps them itself. A failure only
    /// leaves a record the sweep removes when its grace ends.
    async fn release_pushed(&self, blobs: &[Digest]) {
        for digest in blobs {
            if let Err(e) = self
                .storage
                .record_delete(&RecordKey::pushed_blob(digest))
                .await
            {
                tracing::warn!(%digest, error = %e, "cannot drop a pushed blob's grace record");
            }
        }
    }

    /// Removes the grace records whose grace has ended (see
    /// [`protect_pushed`](Self::protect_pushed)); returns how many.
    async fn sweep_ended_graces(&self) -> Result<usize> {
        let now = crate::storage::now_secs();
        let mut removed = 0;
        for (digest, until) in crate::storage::blob_graces(self.storage.as_ref()).await? {
            if until <= now {
                self.storage
                    .record_delete(&RecordKey::pushed_blob(&digest))
                    .await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// A blob of `size` bytes was stored (and just used).
    fn stored(&self, digest: &Digest, size: u64) {
        if let Some(budget) = &self.budget {
            budget.added(size);
            budget.used(digest);
        }
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<S> {
        &self.storage
    }

    /// The options.
    pub fn options(&self) -> &HostedOptions {
        &self.options
    }

    /// Size of a stored blob, for a cross-repository mount: any blob the
    /// store holds (pushed or cached from upstream) can be mounted, since
    /// blobs are content-addressed. `None` when absent. A mounted blob is
    /// pushed as much as an uploaded one: it gets the same grace record,
    /// which keeps eviction and purge off it until its manifest arrives.
    pub async fn mount(&self, digest: &Digest) -> Result<Option<u64>> {
        self.protect_pushed(digest).await?;
        let size = self.storage.blob_stat(digest).await?.map(|info| info.size);
        if size.is_none() {
            self.release_pushed(std::slice::from_ref(digest)).await;
        }
        Ok(size)
    }

    /// The tags linked in `repository` (not in repositories nested below it), unsorted.
    async fn tag_links(&self, repository: &Repository) -> Result<Vec<Tag>> {
        self.storage
            .record_list(&RecordPrefix::hosted_tags(repository))
            .try_filter_map(|key| async move {
                Ok(match key.hosted_key() {
                    Some(HostedKey::Tag(repo, tag)) if &repo == repository => Some(tag),
                    _ => None,
                })
            })
            .try_collect()
            .await
    }

    /// Tags of a hosted repository, sorted;
    /// [`NotFound`](Error::NotFound) when nothing was ever pushed there.
    pub async fn tags(&self, repository: &Repository) -> Result<Vec<Tag>> {
        let mut tags = self.tag_links(repository).await?;
        if tags.is_empty() && !self.exists(repository).await? {
            return Err(Error::not_found(format!("repository {repository}")));
        }
        tags.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(tags)
    }

    /// Whether anything (a tag or a manifest) was pushed to `repository`.
    async fn exists(&self, repository: &Repository) -> Result<bool> {
        let mut links = self
            .storage
            .record_list(&RecordPrefix::hosted_repository(repository));
        while let Some(key) = links.try_next().await? {
            if key
                .hosted_key()
                .is_some_and(|k| k.repository() == repository)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Hosted repositories holding at least one tag or manifest, sorted: up
    /// to `limit` after `last`, from an in-memory index (as the cache's
    /// `_catalog`).
    pub async fn repositories(
        &self,
        last: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<Repository>> {
        let names = self.catalog.page(last, limit).await?;
        names
            .iter()
            .map(|name| Ok(Repository::new(name)?))
            .collect()
    }
}

/// Lists every hosted repository's name from storage (the index's loader).
fn repository_lister<S: Storage + ?Sized>(storage: &Arc<S>) -> Loader {
    let storage = Arc::clone(storage);
    Box::new(move || {
        let storage = Arc::clone(&storage);
        async move {
            storage
                .record_list(&RecordPrefix::hosted())
                .try_filter_map(|key| async move {
                    Ok(key.hosted_key().map(|k| k.repository().to_string()))
                })
                .try_collect()
                .await
        }
        .boxed()
    })
}

/// Checks a local prefix: one repository path component (`local`), naming
/// no configured upstream or alias (a path starting with it would be ambiguous).
pub fn validate_local_prefix(prefix: &str, upstreams: &MirrorConfig) -> Result<()> {
    if prefix.contains('/') || Repository::new(prefix).is_err() {
        return Err(Error::Config(format!(
            "local prefix {prefix:?} is not one repository path component \
             (lowercase letters, digits and . _ -, e.g. \"local\")"
        )));
    }
    if upstreams.lookup(prefix).is_some() {
        return Err(Error::Config(format!(
            "local prefix {prefix:?} is also the name of a configured upstream; pick another prefix"
        )));
    }
    Ok(())
}

/// Every manifest digest linked from any hosted repository, sorted and
/// deduplicated: what eviction and purge never remove (with the blobs they
/// reference). Stable name and signature; eviction reads the same records
/// through [`storage::protected_manifests`](crate::storage::protected_manifests).
pub use crate::storage::protected_manifests;

#[cfg(test)]
mod tests;
