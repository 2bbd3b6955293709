//! The pull-through engine: local first, fetch on miss, verify, store, coalesce.
//!
//! [`PullThrough`] wraps a [`Storage`] and an [`Upstream`]:
//!
//! - **Blobs**: a hit streams from storage (with ranges). A miss starts one
//!   detached *fill* per digest that streams to every client while it writes to
//!   storage (see "Blob fills" below).
//! - **Manifests by digest** are immutable: served from storage whenever the
//!   client accepts their media type, else fetched, verified against the digest
//!   and stored.
//! - **Manifests by tag** are trusted for [`CacheOptions::tag_ttl`], then
//!   revalidated with a HEAD upstream (free under Docker Hub's limits); a moved
//!   tag fetches the new manifest. When upstream fails, the cached tag is served
//!   ([`CacheOutcome::Stale`]).
//! - **Referrers** (OCI 1.1) are learned from upstream's referrers API, or
//!   its tag schema when it has none, and kept under the tag rules
//!   (`cache/referrers.rs`).
//! - **Accept** is honoured ([`AcceptSet`]): a cached manifest is served only to
//!   a client that accepts its media type, otherwise the request goes upstream
//!   with the client's `Accept`.
//!
//! Nothing unverified is stored: blobs must hash to their digest (and match the
//! announced size), manifests must hash to the digest asked for (or announced)
//! and fit [`CacheOptions::max_manifest_size`]. A failed fetch leaves nothing
//! behind, so the next request simply retries.
//!
//! Concurrent requests for the same missing object make exactly one upstream
//! request (single flight). The fetch runs as its own task, so it completes and
//! stores even when the client that started it disconnects. No lock is held
//! across an await.
//!
//! # Blob fills
//!
//! A fill reads the upstream body once, hashes it once, and tees every chunk
//! into the storage write (which commits atomically only after that digest
//! check passed) and into a buffer
//! that every client of that digest reads at its own pace. The buffer keeps
//! only the most recent [`CacheOptions::fill_window`] bytes in memory; older
//! bytes leave memory only once they are in a file: storage's own staging
//! file where it can be read before the commit (the filesystem: one disk
//! write per byte), else an anonymous spool file. A client that joins late,
//! or reads slowly, catches up from that file and then
//! follows live, without a second upstream fetch and without waiting for the
//! fill to end; memory per fill stays flat whatever the blob size. (Keeping
//! whole blobs in memory does not fit 1 GiB layers; a ring buffer alone
//! strands late joiners; waiting for the commit makes them wait for the whole
//! blob.) A range request on a miss is a slice of the same fill. A client's
//! stream yields its last byte only once the whole blob is verified; otherwise
//! it ends with the verification error, and nothing is stored.
//!
//! A full or read-only disk degrades caching, never serving: verified
//! manifests and blobs are served when storing them (or spooling a fill)
//! fails; the failure is logged as "disk full" / "read-only filesystem" and
//! reported to the observer ([`StorageEvent`](crate::observe::StorageEvent)).

mod accept;
mod allowed;
mod blob;
pub(crate) mod catalog;
mod flight;
mod hot;
mod manifest;
mod options;
mod referrers;
mod reload;
mod revalidated;
mod tags;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

pub use accept::{accept_all_known, AcceptSet};
// The media types moved to `manifest::media_type`; the old paths stay valid.
#[doc(hidden)]
pub use crate::manifest::media_type::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, KNOWN_MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST,
};
// `CacheOutcome` moved to `observe`; the old path stays valid.
#[doc(hidden)]
pub use crate::observe::CacheOutcome;

pub use blob::{FillProgress, FillRetry, FillSegments};
pub use manifest::ManifestHeadResponse;
pub use options::CacheOptions;
pub use referrers::{ReferrersResponse, ReferrersSource, MAX_TAG_SCHEMA_MANIFESTS};
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use tracing::{debug, warn};

use crate::digest::Digest;
use crate::error::{UpstreamError, UpstreamErrorKind};
use crate::evict::{DiskBudget, PurgeReport};
use crate::fleet::Fleet;
use crate::observe::{self, SharedObserver};
use crate::policy::SharedPolicy;
use crate::reference::{ManifestRef, Reference, Registry, Repository};
use crate::storage::{ByteStream, Storage, StoredManifest};
use crate::upstream::Upstream;
use crate::{Error, ErrorChain, Result};

/// A manifest ready to serve.
#[derive(Debug, Clone)]
pub struct ManifestResponse {
    /// Digest of `bytes`.
    pub digest: Digest,
    /// `Content-Type` to send.
    pub media_type: String,
    /// Exact bytes.
    pub bytes: Bytes,
    /// How it was obtained.
    pub outcome: CacheOutcome,
}

/// A blob (or a range of it) ready to serve.
pub struct BlobResponse {
    /// Size of the whole blob.
    pub size: u64,
    /// The range `stream` yields.
    pub range: Range<u64>,
    /// The bytes.
    pub stream: ByteStream,
    /// How it was obtained.
    pub outcome: CacheOutcome,
}

impl std::fmt::Debug for BlobResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobResponse")
            .field("size", &self.size)
            .field("range", &self.range)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

/// The pull-through cache over a [`Storage`] and an [`Upstream`].
///
/// Cheap to clone: clones share the storage, upstream and in-flight fetches.
/// Needs a tokio runtime (fetches run as spawned tasks).
pub struct PullThrough<S: ?Sized, U: ?Sized> {
    inner: Arc<Shared<S, U>>,
}

/// The state a [`PullThrough`] and its detached fetch tasks share.
struct Shared<S: ?Sized, U: ?Sized> {
    storage: Arc<S>,
    upstream: Arc<U>,
    options: CacheOptions,
    blob_fills: blob::BlobFills,
    manifest_flights: flight::Flights<manifest::FlightKey, manifest::Served>,
    referrer_flights: flight::Flights<referrers::FlightKey, referrers::Learned>,
    tag_lists: tags::TagLists,
    hot: hot::HotCache,
    observer: SharedObserver,
    budget: Arc<DiskBudget>,
    /// `upstream/repository` names of cached repositories, for `_catalog`.
    catalog: catalog::NameIndex,
    /// Tags this replica revalidated, on its own clock.
    revalidated: revalidated::Revalidated,
    /// Fleet mode ([`PullThrough::with_fleet`]): set at most once.
    fleet: std::sync::OnceLock<Fleet>,
    policy: SharedPolicy, // see `allowed`
}

/// Manifest storage behind the in-memory [`hot::HotCache`]: every manifest
/// access of the engine goes through these. Tag records are always read from
/// storage, the source of truth another process (or replica) may update.
impl<S: Storage + ?Sized, U: ?Sized> Shared<S, U> {
    async fn manifest_get(&self, digest: &Digest) -> Result<Option<StoredManifest>> {
        if let Some(manifest) = self.hot.manifest(digest) {
            return Ok(Some(manifest));
        }
        let manifest = self.storage.manifest_get(digest).await?;
        if let Some(manifest) = &manifest {
            self.hot.put_manifest(manifest);
        }
        Ok(manifest)
    }

    /// Stores a verified manifest. A failed write is logged and reported, not
    /// returned: the client is served all the same, and the next request for
    /// the manifest tries to store it again.
    async fn manifest_put(&self, manifest: &StoredManifest) {
        match self.storage.manifest_put(manifest).await {
            Ok(()) => self.hot.put_manifest(manifest),
            Err(e) => self.write_failed(observe::StorageOperation::ManifestWrite, &e),
        }
    }
}

impl<S: ?Sized, U: ?Sized> Shared<S, U> {
    /// Logs and reports a write that failed while serving went on: caching is
    /// skipped for this object only, nothing is remembered, so caching resumes
    /// by itself once the disk has room (or is writable) again.
    fn write_failed(&self, operation: observe::StorageOperation, error: &Error) {
        let reason = error.write_failure();
        warn!(
            operation = operation.as_str(),
            reason = reason.as_str(),
            error = %ErrorChain(error),
            "{}: {} skipped, the client is served without caching",
            reason.describe(),
            operation.as_str(),
        );
        self.observer.storage(&observe::StorageEvent::new(
            operation,
            reason,
            ErrorChain(error).to_string(),
        ));
    }
}

impl<S: ?Sized, U: ?Sized> Clone for PullThrough<S, U> {
    fn clone(&self) -> Self {
        PullThrough {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: Storage + ?Sized, U: ?Sized> std::fmt::Debug for PullThrough<S, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullThrough")
            .field("storage", &self.inner.storage)
            .field("options", &self.inner.options)
            .field("blob_fills", &self.inner.blob_fills)
            .field("manifest_flights", &self.inner.manifest_flights)
            .finish_non_exhaustive()
    }
}

impl<S: Storage + ?Sized, U: Upstream + ?Sized> PullThrough<S, U> {
    /// An engine over `storage` and `upstream`.
    pub fn new(storage: Arc<S>, upstream: Arc<U>, options: CacheOptions) -> Self {
        Self::observed(storage, upstream, options, observe::noop())
    }

    /// An engine that reports blob fills to `observer`.
    pub fn observed(
        storage: Arc<S>,
        upstream: Arc<U>,
        options: CacheOptions,
        observer: SharedObserver,
    ) -> Self {
        let budget = Arc::new(DiskBudget::new(options.max_size));
        let catalog = catalog::NameIndex::new(repository_lister(&storage), catalog::REFRESH);
        PullThrough {
            inner: Arc::new(Shared {
                catalog,
                storage,
                upstream,
                budget,
                options,
                blob_fills: blob::BlobFills::new(),
                manifest_flights: flight::Flights::new(),
                referrer_flights: flight::Flights::new(),
                tag_lists: tags::TagLists::new(),
                hot: hot::HotCache::new(),
                observer,
                fleet: std::sync::OnceLock::new(),
                revalidated: revalidated::Revalidated::default(),
                policy: SharedPolicy::default(),
            }),
        }
    }

    /// Fleet mode: replicas on one bucket coordinate their blob fills
    /// through `fleet`'s leases, and a miss another replica is filling is
    /// streamed from that replica instead of upstream (see `cache/blob/fleet.rs`).
    /// Set once; a second call keeps the first fleet (and logs it).
    pub fn with_fleet(self, fleet: Fleet) -> Self {
        if self.inner.fleet.set(fleet).is_err() {
            warn!("this engine is already in fleet mode; the second fleet is ignored");
        }
        self
    }

    /// The fleet this engine is part of, if any.
    pub fn fleet(&self) -> Option<&Fleet> {
        self.inner.fleet.get()
    }

    /// The storage backend.
    pub fn storage(&self) -> &Arc<S> {
        &self.inner.storage
    }

    /// The upstream.
    pub fn upstream(&self) -> &Arc<U> {
        &self.inner.upstream
    }

    /// The observer the engine reports to.
    pub fn observer(&self) -> &SharedObserver {
        &self.inner.observer
    }

    /// The budget the engine reports stored, used and busy blobs to; give it
    /// to an [`Evictor`](crate::evict::Evictor) to enforce
    /// [`CacheOptions::max_size`].
    pub fn budget(&self) -> &Arc<DiskBudget> {
        &self.inner.budget
    }

    /// The options the engine runs with.
    pub fn options(&self) -> &CacheOptions {
        &self.inner.options
    }

    /// Blob fills under way right now (for metrics).
    pub fn blob_fills_in_flight(&self) -> usize {
        self.inner.blob_fills.in_flight()
    }

    /// A manifest by tag or digest, honouring `accept` (the client's `Accept`
    /// header values, repeated or comma-joined; empty = accept anything).
    ///
    /// Errors: [`Error::NotAcceptable`] when the manifest exists but the client
    /// accepts none of its types; upstream and verification errors otherwise.
    pub async fn manifest(
        &self,
        registry: &Registry,
        repository: &Repository,
        reference: &ManifestRef,
        accept: &[String],
    ) -> Result<ManifestResponse> {
        self.allowed(registry, repository, Some(reference))?;
        let accept = AcceptSet::parse(accept);
        manifest::manifest(&self.inner, registry, repository, reference, &accept).await
    }

    /// A manifest's headers without its body (`HEAD`), honouring `accept` as
    /// [`manifest`](Self::manifest) does: from storage when held, else from
    /// upstream's `HEAD` alone, storing nothing (see `cache/manifest.rs`).
    pub async fn manifest_head(
        &self,
        registry: &Registry,
        repository: &Repository,
        reference: &ManifestRef,
        accept: &[String],
    ) -> Result<ManifestHeadResponse> {
        self.allowed(registry, repository, Some(reference))?;
        let accept = AcceptSet::parse(accept);
        manifest::manifest_head(&self.inner, registry, repository, reference, &accept).await
    }

    /// A blob or a range of it (end exclusive, clamped to the size); streams to
    /// the caller while storing on a miss.
    ///
    /// On a miss the stream yields bytes as they arrive from upstream, but the
    /// last byte of the range only once the whole blob is verified (also for a
    /// range, which is cut from the same single fetch); on a verification
    /// failure it ends with that error instead, and nothing is stored. A
    /// request that joined another repository's fill continues through its
    /// own when that fill fails upstream. A fill that has already
    /// failed when the request arrives is returned as the error directly.
    pub async fn blob(
        &self,
        registry: &Registry,
        repository: &Repository,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobResponse> {
        self.allowed(registry, repository, None)?;
        if let Some(hit) = self.inner.stored_blob(digest, range.clone()).await? {
            return Ok(hit);
        }
        blob::fetch(&self.inner, registry, repository, digest, range).await
    }

    /// A blob's size without its bytes (HEAD): from storage, from a fill under
    /// way, or from a HEAD upstream (which stores nothing).
    pub async fn blob_size(
        &self,
        registry: &Registry,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<(u64, CacheOutcome)> {
        self.allowed(registry, repository, None)?;
        if let Some(info) = self.inner.storage.blob_stat(digest).await? {
            return Ok((info.size, CacheOutcome::Hit));
        }
        if let Some(size) = self.inner.blob_fills.known_size(digest) {
            return Ok((size, CacheOutcome::Coalesced));
        }
        let size = self
            .inner
            .upstream
            .blob_head(registry, repository, digest)
            .await?;
        Ok((size, CacheOutcome::Miss))
    }

    /// Removes cached images ([`evict::purge`](crate::evict::purge), with
    /// references as [`purge_target`](crate::evict::purge_target) makes
    /// them) while serving: blobs being read or filled are left for a later
    /// pass, and the in-memory manifests are dropped so none is served from
    /// memory after its record is gone.
    pub async fn purge(&self, targets: &[Reference]) -> Result<PurgeReport> {
        let report = crate::evict::purge(
            self.inner.storage.as_ref(),
            &self.inner.budget,
            self.inner.observer.as_ref(),
            targets,
        )
        .await?;
        self.inner.hot.clear();
        // Repositories may have lost their last tag.
        self.inner.catalog.invalidate();
        Ok(report)
    }

    /// Cached repositories, as `registry/repository` names, sorted: up to
    /// `limit` after `last`. Answered from an in-memory index (see
    /// `cache/catalog.rs`), so a request does not list the store.
    pub async fn catalog(&self, last: Option<&str>, limit: Option<usize>) -> Result<Vec<String>> {
        let names = self.inner.catalog.page(last, limit).await?;
        debug!(repositories = names.len(), "catalog");
        Ok(names)
    }
}

/// The `_catalog` name of a cached repository.
fn catalog_name(upstream: &Registry, repository: &Repository) -> String {
    format!("{upstream}/{repository}")
}

/// Lists every cached repository's name from storage (the index's loader).
fn repository_lister<S: Storage + ?Sized>(storage: &Arc<S>) -> catalog::Loader {
    let storage = Arc::clone(storage);
    Box::new(move || {
        let storage = Arc::clone(&storage);
        async move {
            let entries = storage.repository_list().await?;
            Ok(entries
                .iter()
                .map(|entry| catalog_name(&entry.upstream, &entry.repository))
                .collect())
        }
        .boxed()
    })
}

/// The error every waiter of a fetch sees when the fetch's task ended without
/// an answer (a bug or a runtime shutdown); retryable, like an unavailable upstream.
fn aborted(what: &str) -> Error {
    Error::Upstream(UpstreamError::new(
        UpstreamErrorKind::Unavailable,
        "oci-cache",
        format!("{what} stopped before finishing; retry the request"),
    ))
}
