//! Where the cache keeps what it fetched.
//!
//! One async trait, [`Storage`], with three backends that pass the same
//! conformance suite: [`MemoryStorage`], [`FsStorage`] (the default, feature
//! `fs`) and [`ObjectStorage`] (S3 and S3-compatible servers with feature `s3`).
//!
//! ## Keys and the on-disk layout
//!
//! Keys are derived in one module (`storage/keys.rs`) from parsed types only
//! (`Digest`, `Registry`, `Repository`, `Tag`), never from request text. Each
//! path segment is escaped once more there: bytes outside `[A-Za-z0-9._-]`,
//! and a leading `.` or `_`, become `%XX`, so no key can hold `..`, an empty
//! segment or a reserved `_` name, and none can leave the storage root.
//! [`FsStorage`] lays a root out like this (S3 uses the same keys under the
//! optional prefix):
//!
//! ```text
//! <root>/
//!   blobs/sha256/e3/e3b0c442…b855              blob bytes, exactly (`sha256sum` checks them)
//!   manifests/sha256/4a/4a5b…                  manifest bytes, exactly
//!   manifests/sha256/4a/4a5b….media-type       its media type (S3: the object's Content-Type)
//!   tags/<registry>/<repository…>/_tags/<tag>  JSON {"digest","media_type","checked_at"}
//!   _staging/<uuid>                            writes in progress; emptied at open
//! ```
//!
//! for example `tags/localhost%3A5000/library/alpine/_tags/3.20`. Blobs are
//! content-addressed and shared by every upstream; tag records are per
//! upstream. Tags are case-sensitive, so keep the root on a case-sensitive
//! filesystem.
//!
//! ## Verified, atomic writes
//!
//! Every backend's write goes through one helper that hashes the stream as
//! it is stored and publishes the object only when digest and size match; a
//! mismatch, short stream, source error, I/O error or cancelled future
//! leaves nothing readable. The cache engine's fill, which hashes every blob
//! for its clients anyway, writes a [`BlobSource::Preverified`]: its stream
//! ends cleanly only after
//! the engine's own digest check passed, so the backend counts the size but
//! does not hash the bytes again. On the filesystem the bytes go to
//! `_staging/<uuid>` (same filesystem), are `fsync`ed ([`FsOptions::durable`],
//! on by default) and renamed into place; concurrent writers of one digest
//! each rename a complete, identical file. A full disk fails the write with
//! a "the disk is full" error and removes the staging file.
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
#[cfg(feature = "fs")]
mod fs;
mod keys;
mod memory;
mod object;
mod verified;

pub(crate) use verified::resolve_range;

#[cfg(feature = "fs")]
pub use fs::{FsOptions, FsStorage};
pub use memory::MemoryStorage;
pub use object::ObjectStorage;
#[cfg(feature = "s3")]
pub use object::S3Config;

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

/// A blob stream whose producer hashes every byte against the digest as it
/// goes: it ends cleanly only after the producer's digest check passed, and
/// with an error otherwise (including when the producer goes away). Only
/// this crate builds one: the cache engine's fill, which hashes each blob for
/// its clients anyway, so storing it need not hash it again.
pub struct PreverifiedStream(ByteStream);

impl PreverifiedStream {
    /// `stream` must keep the promise above; see the blob fill in `cache`.
    pub(crate) fn new(stream: ByteStream) -> Self {
        PreverifiedStream(stream)
    }

    /// The bytes, for a backend that verifies them itself.
    pub fn into_stream(self) -> ByteStream {
        self.0
    }
}

impl Debug for PreverifiedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreverifiedStream")
    }
}

/// The bytes of a blob write, and who checks them against the digest.
pub enum BlobSource {
    /// Any stream: the backend hashes it.
    Unchecked(ByteStream),
    /// A stream whose producer hashes it (see [`PreverifiedStream`]): the
    /// backend may only count its size.
    Preverified(PreverifiedStream),
}

impl Debug for BlobSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlobSource::Unchecked(_) => "BlobSource::Unchecked",
            BlobSource::Preverified(_) => "BlobSource::Preverified",
        })
    }
}

impl BlobSource {
    /// The bytes, for a backend that verifies every source itself.
    pub fn into_stream(self) -> ByteStream {
        match self {
            BlobSource::Unchecked(stream) => stream,
            BlobSource::Preverified(stream) => stream.into_stream(),
        }
    }
}

/// The storage interface every backend implements.
///
/// Every write is verified and atomic: an object becomes visible only once
/// its bytes hash to the digest it is stored under; a failed or interrupted
/// write leaves nothing readable.
#[async_trait]
pub trait Storage: Debug + Display + Send + Sync + 'static {
    /// Size (and last access) of a blob, or `None` when absent.
    async fn blob_stat(&self, digest: &Digest) -> Result<Option<BlobInfo>>;

    /// Streams a blob, or the `range` of it (end exclusive, clamped to the size).
    /// Absent → [`Error::NotFound`](crate::Error::NotFound); a range starting at or
    /// past the end → [`Error::RangeNotSatisfiable`](crate::Error::RangeNotSatisfiable).
    async fn blob_read(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<BlobRead>;

    /// Stores a blob; returns the size written. Visible only when the bytes
    /// match `digest` (and `expected_size`, if given): an
    /// [`Unchecked`](BlobSource::Unchecked) source is hashed as it is stored,
    /// a [`Preverified`](BlobSource::Preverified) one is checked by its
    /// producer and only its size is counted here. Writing a digest that
    /// already exists succeeds without changing it.
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

    /// Every stored blob with size and last access, for eviction.
    async fn blob_list(&self) -> Result<Vec<BlobInfo>>;

    /// A manifest by digest, or `None`.
    async fn manifest_get(&self, digest: &Digest) -> Result<Option<StoredManifest>>;

    /// Stores a manifest after checking its bytes hash to `manifest.digest`.
    async fn manifest_put(&self, manifest: &StoredManifest) -> Result<()>;

    /// Removes a manifest; absent is not an error.
    async fn manifest_delete(&self, digest: &Digest) -> Result<()>;

    /// The record of a tag, or `None`.
    async fn tag_get(&self, key: &TagKey) -> Result<Option<TagRecord>>;

    /// Creates or replaces a tag record.
    async fn tag_put(&self, key: &TagKey, record: &TagRecord) -> Result<()>;

    /// Removes a tag record; absent is not an error.
    async fn tag_delete(&self, key: &TagKey) -> Result<()>;

    /// Cached tags of one repository of one upstream, sorted.
    async fn tag_list(&self, upstream: &Registry, repository: &Repository) -> Result<Vec<Tag>>;

    /// Repositories with at least one tag record, sorted.
    async fn repository_list(&self) -> Result<Vec<RepositoryEntry>>;
}
