//! Shared pieces of the criterion benchmarks in `benches/`: a warm cache to
//! measure hit paths against.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use oci_cache_core::cache::{CacheOptions, PullThrough, OCI_MANIFEST};
use oci_cache_core::digest::Digest;
use oci_cache_core::reference::{Registry, Repository, Tag};
use oci_cache_core::storage::{Storage, StoredManifest, TagKey, TagRecord};
use oci_cache_core::upstream::{
    FetchedBlob, FetchedManifest, ManifestHead, ManifestRef, TagList, Upstream,
};
use oci_cache_core::{Error, Result, UpstreamError, UpstreamErrorKind};

/// An upstream that is always down: a benchmark of a hit path fails loudly
/// (with an error, not a number) if the path ever goes upstream.
#[derive(Debug, Default)]
pub struct DownUpstream;

fn down() -> Error {
    Error::Upstream(UpstreamError::new(
        UpstreamErrorKind::Unavailable,
        "bench",
        "the benchmark upstream is down on purpose; a hit path must not reach it",
    ))
}

#[async_trait]
impl Upstream for DownUpstream {
    async fn head_manifest(
        &self,
        _: &Registry,
        _: &Repository,
        _: &ManifestRef,
        _: &[String],
    ) -> Result<ManifestHead> {
        Err(down())
    }

    async fn get_manifest(
        &self,
        _: &Registry,
        _: &Repository,
        _: &ManifestRef,
        _: &[String],
    ) -> Result<FetchedManifest> {
        Err(down())
    }

    async fn get_blob(&self, _: &Registry, _: &Repository, _: &Digest) -> Result<FetchedBlob> {
        Err(down())
    }

    async fn head_blob(&self, _: &Registry, _: &Repository, _: &Digest) -> Result<u64> {
        Err(down())
    }

    async fn list_tags(
        &self,
        _: &Registry,
        _: &Repository,
        _: Option<usize>,
        _: Option<&str>,
    ) -> Result<TagList> {
        Err(down())
    }
}

/// A warm cache: one OCI manifest of a realistic size (about 1 KiB), stored by
/// digest and recorded under `library/bench:v1` on upstream `origin`.
#[derive(Debug)]
pub struct WarmCache {
    /// The engine, over the given storage and a [`DownUpstream`].
    pub engine: Arc<PullThrough<dyn Storage, dyn Upstream>>,
    /// The upstream name the manifest is cached under.
    pub registry: Registry,
    /// The repository.
    pub repository: Repository,
    /// The tag.
    pub tag: Tag,
    /// The manifest's digest.
    pub digest: Digest,
}

/// A manifest body shaped like a real 5-layer image manifest.
pub fn sample_manifest() -> Vec<u8> {
    let layer = |i: u32| {
        format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{:064x}","size":{}}}"#,
            i,
            25_000_000 + i
        )
    };
    let layers: Vec<String> = (1..=5).map(layer).collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{:064x}","size":1234}},"layers":[{}]}}"#,
        0,
        layers.join(",")
    )
    .into_bytes()
}

impl WarmCache {
    /// Stores the sample manifest and a fresh tag record in `storage`.
    pub async fn new(storage: Arc<dyn Storage>) -> Result<WarmCache> {
        let bytes = sample_manifest();
        let digest = Digest::sha256_of(&bytes);
        let manifest = StoredManifest {
            digest: digest.clone(),
            media_type: OCI_MANIFEST.to_owned(),
            bytes: bytes.into(),
        };
        storage.manifest_put(&manifest).await?;
        let registry = Registry::new("origin")?;
        let repository = Repository::new("library/bench")?;
        let tag = Tag::new("v1")?;
        let key = TagKey {
            upstream: registry.clone(),
            repository: repository.clone(),
            tag: tag.clone(),
        };
        let record = TagRecord {
            digest: digest.clone(),
            media_type: OCI_MANIFEST.to_owned(),
            checked_at: SystemTime::now(),
        };
        storage.tag_put(&key, &record).await?;
        let upstream: Arc<dyn Upstream> = Arc::new(DownUpstream);
        // A TTL far beyond any benchmark run: every tag request is a hit.
        let options = CacheOptions::default().with_tag_ttl(std::time::Duration::from_secs(86_400));
        let engine = Arc::new(PullThrough::new(storage, upstream, options));
        Ok(WarmCache {
            engine,
            registry,
            repository,
            tag,
            digest,
        })
    }
}
