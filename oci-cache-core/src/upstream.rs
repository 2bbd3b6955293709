//! The engine's view of an upstream registry.
//!
//! `oci-cache-http` implements [`Upstream`] over HTTP (token auth, redirects,
//! mirror chains); unit tests of the engine implement it in memory.

use async_trait::async_trait;
use bytes::Bytes;

use crate::digest::Digest;
use crate::reference::{Registry, Repository, Tag};
use crate::storage::ByteStream;
use crate::Result;

/// What a manifest request names: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ManifestRef {
    /// A mutable tag.
    Tag(Tag),
    /// An immutable digest.
    Digest(Digest),
}

impl std::fmt::Display for ManifestRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManifestRef::Tag(t) => t.fmt(f),
            ManifestRef::Digest(d) => d.fmt(f),
        }
    }
}

/// The headers of a manifest (from HEAD, or alongside a GET body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    /// `Docker-Content-Digest`, when upstream sent it.
    pub digest: Option<Digest>,
    /// `Content-Type`.
    pub media_type: String,
    /// `Content-Length`, when upstream sent it.
    pub size: Option<u64>,
}

/// A manifest fetched from upstream, not yet verified.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The headers.
    pub head: ManifestHead,
    /// The body, byte for byte.
    pub bytes: Bytes,
}

/// A blob fetch under way.
pub struct FetchedBlob {
    /// `Content-Length`, when known.
    pub size: Option<u64>,
    /// The body; the engine verifies it against the digest.
    pub stream: ByteStream,
}

impl std::fmt::Debug for FetchedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchedBlob")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// One page of a tag list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TagList {
    /// Repository name as upstream reports it.
    pub name: String,
    /// Tags, lexically sorted.
    pub tags: Vec<String>,
}

/// Fetches from upstream registries. `registry` names a configured upstream;
/// the implementation maps it to its endpoint chain and refuses unknown names.
/// `accept` lists the media types the client accepts (empty = all known).
///
/// Methods are named like [`Storage`](crate::storage::Storage)'s: object
/// first, then the verb (`manifest_get`, `blob_head`, `tag_list`). Methods
/// added after these five come with a default implementation, so an
/// implementor written today keeps compiling.
#[async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// HEAD a manifest by tag or digest.
    async fn manifest_head(
        &self,
        registry: &Registry,
        repository: &Repository,
        reference: &ManifestRef,
        accept: &[String],
    ) -> Result<ManifestHead>;

    /// GET a manifest by tag or digest. The body is capped (4 MiB by default):
    /// a larger one is [`Error::TooLarge`](crate::Error::TooLarge).
    async fn manifest_get(
        &self,
        registry: &Registry,
        repository: &Repository,
        reference: &ManifestRef,
        accept: &[String],
    ) -> Result<FetchedManifest>;

    /// GET a whole blob as a stream.
    async fn blob_get(
        &self,
        registry: &Registry,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<FetchedBlob>;

    /// HEAD a blob: its size.
    async fn blob_head(
        &self,
        registry: &Registry,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<u64>;

    /// The repository's tags (all pages when `n` is `None`).
    async fn tag_list(
        &self,
        registry: &Registry,
        repository: &Repository,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagList>;
}
