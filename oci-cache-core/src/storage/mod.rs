//! Where the cache keeps what it fetched.
//!
//! One async trait, [`Storage`], with three backends that pass the same
//! conformance suite: [`MemoryStorage`], [`FsStorage`] (the default, feature
//! `fs`) and [`ObjectStorage`], which runs over any
//! [`object_store::ObjectStore`] (S3 and S3-compatible servers with feature
//! `s3`; GCS, Azure, `LocalFileSystem`, `InMemory` or any decorator through
//! [`ObjectStorage::new`]).
//!
//! ## Writing a backend
//!
//! A backend implements a handful of primitives; everything else is
//! provided once, here, over typed keys:
//!
//! - **blobs**: [`blob_stat`](Storage::blob_stat), [`blob_read`](Storage::blob_read),
//!   [`blob_write_from`](Storage::blob_write_from), [`blob_delete`](Storage::blob_delete),
//!   [`blob_list`](Storage::blob_list) (a stream). A write hands its bytes to
//!   [`write_verified`] with a [`Staging`] of the backend's own: the helper
//!   hashes while streaming and commits only on a match.
//! - **records**, small keyed objects: [`record_get`](Storage::record_get),
//!   [`record_put`](Storage::record_put) (overwrite or create-if-absent),
//!   [`record_delete`](Storage::record_delete), [`record_list`](Storage::record_list)
//!   (by [`RecordPrefix`], a stream). Manifests and tag records are records
//!   (see [`RecordKey`]); what comes next (upload sessions, last-use marks,
//!   pins) will be records under new prefixes, not new trait methods.
//!
//! Manifests, tags and the repository list are provided methods built on
//! those; a backend may override them only to answer the same thing faster.
//! `Arc<S>` and `Box<S>` are storages too. `oci-cache-core/examples/custom_storage.rs`
//! is a complete toy backend that passes [`conformance`] (feature `testing`).
//!
//! ## Keys and the on-disk layout
//!
//! Keys are derived in one module (`storage/keys.rs`) from parsed types only
//! (`Digest`, `Registry`, `Repository`, `Tag`), never from request text. Each
//! path segment is escaped once more there: bytes outside `[A-Za-z0-9._-]`,
//! and a leading `.` or `_`, become `%XX`, so no key can hold `..`, an empty
//! segment or a reserved `_` name, and none can leave the storage root.
//! [`FsStorage`] lays a root out like this (object stores use the same keys
//! under the optional prefix):
//!
//! ```text
//! <root>/
//!   blobs/sha256/e3/e3b0c442…b855              blob bytes, exactly (`sha256sum` checks them)
//!   manifests/sha256/4a/4a5b…                  manifest bytes, exactly
//!   manifests/sha256/4a/4a5b….media-type       its media type (S3: the object's Content-Type)
//!   tags/<registry>/<repository…>/_tags/<tag>  JSON {"digest","media_type","checked_at"}
//!   hosted/<repository…>/_tags/<tag>          hosted repositories: JSON {"digest"} (see `hosted`)
//!   hosted/<repository…>/_manifests/<alg>/<hex>  a manifest pushed to that repository
//!   uploads/<id>                               an upload session: JSON {repository, updated, parts}
//!   upload-pieces/<id>/<n>                     the bytes of that session, piece by piece (never blobs)
//!   pushed/sha256/e3/e3b0c442…b855             a pushed blob's grace: kept until this Unix time (decimal)
//!   _staging/<uuid>                            writes in progress; stale ones swept at open and while serving
//! ```
//!
//! for example `tags/localhost%3A5000/library/alpine/_tags/3.20`. Blobs are
//! content-addressed and shared by every upstream; tag records are per
//! upstream. Tags are case-sensitive, so keep the root on a case-sensitive
//! filesystem. An object store that cannot keep a Content-Type (for example
//! `object_store`'s `LocalFileSystem`) gets the `.media-type` object beside
//! the manifest, as on the filesystem.
//!
//! ## Verified, atomic writes
//!
//! Every backend's write goes through [`write_verified`], which hashes the
//! stream as it is stored and publishes the object only when digest and size
//! match; a mismatch, short stream, source error, I/O error or cancelled
//! future leaves nothing readable. The cache engine's fill, which hashes
//! every blob for its clients anyway, writes a [`BlobSource::Preverified`]:
//! its stream ends cleanly only after the engine's own digest check passed,
//! so the backend counts the size but does not hash the bytes again. On the
//! filesystem the bytes go to `_staging/<uuid>` (same filesystem), are
//! `fsync`ed ([`FsOptions::durable`], on by default) and renamed into place;
//! concurrent writers of one digest each rename a complete, identical file.
//! A full disk fails the write with a "the disk is full" error and removes
//! the staging file. A staging that can be read before the commit lends its
//! file ([`Staging::staged`], [`StagedBytes`]): the fill's late joiners read
//! the bytes that left its memory window from there, so a cold blob is
//! written to disk once (object stores and memory lend nothing, and the
//! fill spools instead).
//!
//! **S3: verify before visible.** A blob is sent as a multipart upload to its
//! final key while it is hashed; `CompleteMultipartUpload`, the only call
//! that makes the object exist, is sent only after the digest and size
//! matched, and the upload is aborted otherwise. Blobs smaller than one part
//! (5 MiB) are verified in memory and sent as a single `PUT`. This was chosen
//! over "stage under a temporary key, then copy": no second write of every
//! byte, and no 5 GiB limit on server-side copies. The cost: a crash
//! mid-upload leaves an incomplete multipart upload, invisible but stored
//! until aborted, so give the bucket an `AbortIncompleteMultipartUpload`
//! lifecycle rule (`object_store` cannot list uploads for a cleanup at open).

use std::fmt::{Debug, Display};
use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::digest::Digest;
use crate::reference::{Registry, Repository, Tag};
use crate::Result;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
mod forward;
#[cfg(feature = "fs")]
mod fs;
mod keys;
mod memory;
mod object;
mod record;
mod typed;
mod verified;

/// Bytes still free for an unprivileged writer on the filesystem holding a
/// directory (`None` where that cannot be asked): what a default limit that
/// must follow the disk is computed from.
pub use crate::file_io::free_space;
#[cfg(feature = "fs")]
pub use fs::{FsOptions, FsStorage};
pub(crate) use keys::{fill_lease, named_lease};
pub use keys::{HostedKey, UploadId};
pub use memory::MemoryStorage;
#[cfg(feature = "s3")]
pub use object::S3Config;
pub use object::{ObjectStorage, MIN_STALE_BOUND};
/// The `object_store` crate [`ObjectStorage::new`] takes, re-exported so an
/// embedder builds its store with the same version.
pub use object_store;
pub use record::{Record, RecordKey, RecordPrefix, RecordWrite};
pub(crate) use typed::now_secs;
pub use typed::{blob_graces, protected_blobs, protected_manifests};
pub use verified::{
    resolve_range, verify_bytes, write_verified, BlobSource, PreverifiedStream, StagedBytes,
    Staging,
};

/// A stream of byte chunks, as read from storage or fetched upstream.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// Size and last access time of a stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// The blob's digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// When the blob was last written or read, where the backend tracks it.
    pub last_access: Option<SystemTime>,
}

/// An open blob read: the whole object's size, the range being returned, and the bytes.
pub struct BlobRead {
    /// Size of the whole blob.
    pub size: u64,
    /// The byte range `stream` yields (the whole blob when no range was asked).
    pub range: Range<u64>,
    /// The bytes of `range`.
    pub stream: ByteStream,
}

impl Debug for BlobRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobRead")
            .field("size", &self.size)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// A manifest as stored: exact bytes plus the media type it was served with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    /// The digest of `bytes`.
    pub digest: Digest,
    /// The `Content-Type` the manifest was fetched with.
    pub media_type: String,
    /// The manifest, byte for byte.
    pub bytes: Bytes,
}

/// Which upstream, repository and tag a tag record belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagKey {
    /// The upstream registry (`docker.io`, `ghcr.io`, …).
    pub upstream: Registry,
    /// The repository within that registry.
    pub repository: Repository,
    /// The tag.
    pub tag: Tag,
}

/// What a tag pointed to when it was last checked upstream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TagRecord {
    /// The manifest digest the tag resolved to.
    pub digest: Digest,
    /// That manifest's media type.
    pub media_type: String,
    /// When the mapping was last confirmed upstream.
    pub checked_at: SystemTime,
}

/// A repository of an upstream, for `_catalog`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryEntry {
    /// The upstream registry.
    pub upstream: Registry,
    /// The repository path.
    pub repository: Repository,
}

/// The storage interface every backend implements.
///
/// Every write is verified and atomic: an object becomes visible only once
/// its bytes hash to the digest it is stored under; a failed or interrupted
/// write leaves nothing readable. See the [module docs](self) for which
/// methods a backend must write (the blob and record primitives) and which
/// it gets for free.
#[async_trait]
pub trait Storage: Debug + Display + Send + Sync + 'static {
    /// Size (and last access) of a blob, or `None` when absent.
    async fn blob_stat(&self, digest: &Digest) -> Result<Option<BlobInfo>>;

    /// Streams a blob, or the `range` of it (end exclusive, clamped to the size,
    /// see [`resolve_range`]). Absent → [`Error::NotFound`](crate::Error::NotFound);
    /// a range starting at or past the end →
    /// [`Error::RangeNotSatisfiable`](crate::Error::RangeNotSatisfiable).
    async fn blob_read(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<BlobRead>;

    /// Stores a blob; returns the size written. Visible only when the bytes
    /// match `digest` (and `expected_size`, if given): an
    /// [`Unchecked`](BlobSource::Unchecked) source is hashed as it is stored,
    /// a [`Preverified`](BlobSource::Preverified) one is checked by its
    /// producer and only its size is counted here. Writing a digest that
    /// already exists succeeds without changing it. Backends implement this
    /// with [`write_verified`].
    async fn blob_write_from(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        data: BlobSource,
    ) -> Result<u64>;

    /// Stores a blob from any stream, hashing as it goes
    /// ([`blob_write_from`](Self::blob_write_from) with an unchecked source).
    async fn blob_write(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        data: ByteStream,
    ) -> Result<u64> {
        self.blob_write_from(digest, expected_size, BlobSource::Unchecked(data))
            .await
    }

    /// Removes a blob; absent is not an error.
    async fn blob_delete(&self, digest: &Digest) -> Result<()>;

    /// Every stored blob with size and last access, in no particular order,
    /// as a stream: memory stays flat however many blobs there are.
    fn blob_list(&self) -> BoxStream<'_, Result<BlobInfo>>;

    /// The record under `key`, or `None`.
    async fn record_get(&self, key: &RecordKey) -> Result<Option<Record>>;

    /// Stores a record atomically (a reader sees the old or the new one,
    /// never a mix). Returns `false` only for [`RecordWrite::Create`] when a
    /// record already existed, which is then left unchanged.
    async fn record_put(&self, key: &RecordKey, record: Record, mode: RecordWrite) -> Result<bool>;

    /// Removes a record; absent is not an error.
    async fn record_delete(&self, key: &RecordKey) -> Result<()>;

    /// The keys of every record under `prefix`, in no particular order, as a stream.
    fn record_list(&self, prefix: &RecordPrefix) -> BoxStream<'_, Result<RecordKey>>;

    /// A manifest by digest, or `None`.
    async fn manifest_get(&self, digest: &Digest) -> Result<Option<StoredManifest>> {
        typed::manifest_get(self, digest).await
    }

    /// Stores a manifest after checking its bytes hash to `manifest.digest`.
    async fn manifest_put(&self, manifest: &StoredManifest) -> Result<()> {
        typed::manifest_put(self, manifest).await
    }

    /// Removes a manifest; absent is not an error.
    async fn manifest_delete(&self, digest: &Digest) -> Result<()> {
        self.record_delete(&RecordKey::manifest(digest)).await
    }

    /// The record of a tag, or `None`.
    async fn tag_get(&self, key: &TagKey) -> Result<Option<TagRecord>> {
        typed::tag_get(self, key).await
    }

    /// Creates or replaces a tag record.
    async fn tag_put(&self, key: &TagKey, record: &TagRecord) -> Result<()> {
        typed::tag_put(self, key, record).await
    }

    /// Removes a tag record; absent is not an error.
    async fn tag_delete(&self, key: &TagKey) -> Result<()> {
        self.record_delete(&RecordKey::tag(key)).await
    }

    /// Cached tags of one repository of one upstream, sorted.
    async fn tag_list(&self, upstream: &Registry, repository: &Repository) -> Result<Vec<Tag>> {
        typed::tag_list(self, upstream, repository).await
    }

    /// Repositories with at least one tag record, sorted.
    async fn repository_list(&self) -> Result<Vec<RepositoryEntry>> {
        typed::repository_list(self).await
    }

    /// Removes what interrupted writes (a crash, a killed process) left
    /// behind and nobody touched for long enough that no writer can own it;
    /// returns how many objects went. Servers call it periodically. The
    /// filesystem removes `_staging` files untouched for 15 minutes;
    /// backends without such leftovers (memory; object stores, whose
    /// incomplete multipart uploads a bucket lifecycle rule aborts) do nothing.
    async fn sweep_leftovers(&self) -> Result<u64> {
        Ok(0)
    }
}
