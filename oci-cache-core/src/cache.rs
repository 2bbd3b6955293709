//! The pull-through engine: local first, fetch on miss, verify, store, coalesce.
//!
//! CONTRACT (the http crate relies on these signatures; the engine helper
//! fills in the behaviour described in DESIGN.md "Cache engine").

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::digest::Digest;
use crate::reference::{Registry, Repository};
use crate::storage::{ByteStream, Storage};
use crate::upstream::{ManifestRef, TagList, Upstream};
use crate::Result;

/// How a request was answered, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from storage without asking upstream.
    Hit,
    /// Fetched from upstream (and stored).
    Miss,
    /// Fed from another request's in-flight fetch.
    Coalesced,
    /// A cached tag was confirmed (or updated) with a HEAD upstream.
    Revalidated,
    /// Upstream failed; a cached tag was served anyway (stale-if-error).
    Stale,
}

impl CacheOutcome {
    /// `hit`, `miss`, `coalesced`, `revalidated` or `stale`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Coalesced => "coalesced",
            CacheOutcome::Revalidated => "revalidated",
            CacheOutcome::Stale => "stale",
        }
    }
}

/// Tunables of the engine.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CacheOptions {
    /// How long a tag → digest mapping is trusted before a HEAD upstream.
    pub tag_ttl: Duration,
    /// Largest manifest accepted from upstream.
    pub max_manifest_size: u64,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            tag_ttl: Duration::from_secs(300),
            max_manifest_size: 4 * 1024 * 1024,
        }
    }
}

impl CacheOptions {
    /// Sets the tag TTL.
    pub fn with_tag_ttl(mut self, ttl: Duration) -> Self {
        self.tag_ttl = ttl;
        self
    }
}

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
#[derive(Debug)]
pub struct PullThrough<S: ?Sized, U: ?Sized> {
    storage: Arc<S>,
    upstream: Arc<U>,
    options: CacheOptions,
}

impl<S: Storage + ?Sized, U: Upstream + ?Sized> PullThrough<S, U> {
    /// An engine over `storage` and `upstream`.
    pub fn new(storage: Arc<S>, upstream: Arc<U>, options: CacheOptions) -> Self {
        PullThrough {
            storage,
            upstream,
            options,
        }
    }

    /// The storage backend.
    pub fn storage(&self) -> &Arc<S> {
        &self.storage
    }

    /// A manifest by tag or digest, honouring `accept` (empty = accept anything).
    pub async fn manifest(
        &self,
        registry: &Registry,
        repository: &Repository,
        reference: &ManifestRef,
        accept: &[String],
    ) -> Result<ManifestResponse> {
        let _ = (
            registry,
            repository,
            reference,
            accept,
            &self.upstream,
            &self.options,
        );
        Err(crate::Error::Unsupported("engine not built yet".into()))
    }

    /// A blob or a range of it; streams to the caller while storing on a miss.
    pub async fn blob(
        &self,
        registry: &Registry,
        repository: &Repository,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobResponse> {
        let _ = (registry, repository, digest, range);
        Err(crate::Error::Unsupported("engine not built yet".into()))
    }

    /// A blob's size without its bytes (HEAD).
    pub async fn blob_size(
        &self,
        registry: &Registry,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<(u64, CacheOutcome)> {
        let _ = (registry, repository, digest);
        Err(crate::Error::Unsupported("engine not built yet".into()))
    }

    /// Tags of a repository: upstream first, the cached tags when upstream fails.
    pub async fn tags(
        &self,
        registry: &Registry,
        repository: &Repository,
    ) -> Result<(TagList, CacheOutcome)> {
        let _ = (registry, repository);
        Err(crate::Error::Unsupported("engine not built yet".into()))
    }

    /// Cached repositories, as `registry/repository` names, sorted.
    pub async fn catalog(&self) -> Result<Vec<String>> {
        Err(crate::Error::Unsupported("engine not built yet".into()))
    }
}
