//! The engine's view of an upstream registry.
//!
//! `oci-cache-http` implements [`Upstream`] over HTTP (token auth, redirects,
//! mirror chains); unit tests of the engine implement it in memory.

use async_trait::async_trait;
use bytes::Bytes;

use crate::digest::Digest;
use crate::reference::{Registry, Repository};
use crate::referrers::Referrer;
use crate::storage::ByteStream;
use crate::Result;

// `ManifestRef` moved to `reference`; the old path stays valid.
#[doc(hidden)]
pub use crate::reference::ManifestRef;

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

/// Where a ranged blob GET ([`Upstream::blob_get_range`]) starts, and what
/// the bytes before that came with. Built with [`BlobRange::from_offset`]
/// and the `with_*` setters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlobRange {
    /// The first byte wanted (`Range: bytes=offset-`); 0 (without an
    /// [`end`](Self::end)) asks for the whole blob.
    pub offset: u64,
    /// The byte after the last one wanted (`Range: bytes=offset-(end-1)`);
    /// `None`: up to the blob's end. An upstream may still send more (the
    /// whole blob, or up to the end): the caller takes what it asked for.
    pub end: Option<u64>,
    /// The entity tag the bytes before `offset` came with, sent as
    /// `If-Range`: an upstream whose entity changed answers with the whole
    /// blob rather than a part of another one.
    pub if_range: Option<String>,
    /// The endpoint that served the bytes before `offset`
    /// ([`FetchedRange::endpoint`]): tried first.
    pub prefer: Option<String>,
    /// Endpoints the caller gave up on for this blob: not tried.
    pub avoid: Vec<String>,
    /// An extra connection of a segmented fill: the blob is also being read
    /// on another one, and the caller reads this part itself when it is
    /// refused. A refusal (`429`, `503`) then means "fewer connections,
    /// please", not that the endpoint fails: implementations should return
    /// it at once, without counting it against the endpoint (a circuit
    /// breaker, a host-wide `Retry-After` pause) or trying another one.
    pub extra: bool,
}

impl BlobRange {
    /// From byte `offset` on (0: the whole blob), any endpoint.
    pub fn from_offset(offset: u64) -> Self {
        BlobRange {
            offset,
            ..BlobRange::default()
        }
    }

    /// Up to (not including) byte `end`.
    pub fn with_end(mut self, end: Option<u64>) -> Self {
        self.end = end;
        self
    }

    /// Sends `etag` as `If-Range`.
    pub fn with_if_range(mut self, etag: Option<String>) -> Self {
        self.if_range = etag;
        self
    }

    /// Tries `endpoint` first.
    pub fn with_prefer(mut self, endpoint: Option<String>) -> Self {
        self.prefer = endpoint;
        self
    }

    /// Leaves `endpoints` out.
    pub fn with_avoid(mut self, endpoints: Vec<String>) -> Self {
        self.avoid = endpoints;
        self
    }

    /// Marks the GET as an [`extra`](Self::extra) connection.
    pub fn with_extra(mut self, extra: bool) -> Self {
        self.extra = extra;
        self
    }
}

/// A blob body from [`Upstream::blob_get_range`]: the part asked for, or the
/// whole blob when upstream ignored the range.
#[non_exhaustive]
pub struct FetchedRange {
    /// Offset of the body's first byte: the offset asked for when upstream
    /// honoured the range (`206`), 0 when it sent the whole blob (`200`).
    pub start: u64,
    /// The whole blob's size: the `Content-Length` of a whole answer, the
    /// total of a `Content-Range`; `None` when upstream did not say.
    pub total: Option<u64>,
    /// The byte after the body's last one when upstream answered with a part
    /// (`206`, from its `Content-Range`); `None` for a whole-blob answer.
    /// A fill learns from it that the upstream serves ranges.
    pub end: Option<u64>,
    /// The `ETag`, when upstream sent one.
    pub etag: Option<String>,
    /// The endpoint that answered, when the implementation has several
    /// (for [`BlobRange::prefer`] and [`BlobRange::avoid`]).
    pub endpoint: Option<String>,
    /// The body, from `start` on.
    pub stream: ByteStream,
}

impl FetchedRange {
    /// A whole blob (`start` 0, `total` its size).
    pub fn whole(blob: FetchedBlob) -> Self {
        FetchedRange {
            start: 0,
            total: blob.size,
            end: None,
            etag: None,
            endpoint: None,
            stream: blob.stream,
        }
    }

    /// The blob from `start` on, of `total` bytes in all.
    pub fn partial(start: u64, total: Option<u64>, stream: ByteStream) -> Self {
        FetchedRange {
            start,
            total,
            end: None,
            etag: None,
            endpoint: None,
            stream,
        }
    }

    /// A part ending before byte `end` (a `206`'s `Content-Range`).
    pub fn with_end(mut self, end: Option<u64>) -> Self {
        self.end = end;
        self
    }

    /// With the answer's `ETag`.
    pub fn with_etag(mut self, etag: Option<String>) -> Self {
        self.etag = etag;
        self
    }

    /// With the endpoint that answered.
    pub fn with_endpoint(mut self, endpoint: Option<String>) -> Self {
        self.endpoint = endpoint;
        self
    }
}

/// The answer to a GET from offset 0 as a whole-blob fetch (`size` is the total).
impl From<FetchedRange> for FetchedBlob {
    fn from(answer: FetchedRange) -> Self {
        FetchedBlob {
            size: answer.total,
            stream: answer.stream,
        }
    }
}

impl std::fmt::Debug for FetchedRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchedRange")
            .field("start", &self.start)
            .field("total", &self.total)
            .field("end", &self.end)
            .field("etag", &self.etag)
            .field("endpoint", &self.endpoint)
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

    /// GET a blob from `range.offset` on (`Range: bytes=N-`), so a fill whose
    /// connection was cut continues where it stopped; offset 0 is the whole
    /// blob, with the `ETag` and endpoint the engine needs to resume it.
    ///
    /// The default knows no ranges: it GETs the whole blob
    /// ([`blob_get`](Self::blob_get)), and the engine drops the bytes it
    /// already has (a restart, reported as
    /// [`FillPhase::Restarted`](crate::observe::FillPhase::Restarted)).
    async fn blob_get_range(
        &self,
        registry: &Registry,
        repository: &Repository,
        digest: &Digest,
        range: &BlobRange,
    ) -> Result<FetchedRange> {
        let _ = range;
        let whole = self.blob_get(registry, repository, digest).await?;
        Ok(FetchedRange::whole(whole))
    }

    /// The referrers of `subject` in `repository` from the upstream's OCI 1.1
    /// referrers API (`GET …/referrers/<digest>`): every page, unfiltered.
    /// `Ok(None)` when the upstream has no such API (it answered `404`), so
    /// the engine falls back to the tag schema as clients do.
    ///
    /// The default knows no referrers API: `Ok(None)`.
    async fn referrers(
        &self,
        registry: &Registry,
        repository: &Repository,
        subject: &Digest,
    ) -> Result<Option<Vec<Referrer>>> {
        let _ = (registry, repository, subject);
        Ok(None)
    }
}
