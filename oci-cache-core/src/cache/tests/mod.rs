//! Engine tests against [`MemoryStorage`] and the shared scripted upstream
//! ([`FakeUpstream`](crate::testing::FakeUpstream)), one file per topic.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Semaphore;

use super::*;
use crate::error::UpstreamErrorKind;
use crate::reference::Tag;
use futures::stream::BoxStream;

use crate::storage::{
    BlobSource, MemoryStorage, Record, RecordKey, RecordPrefix, RecordWrite, StoredManifest,
    TagKey, TagRecord,
};
use crate::testing::{BlobScript, FakeUpstream};
use crate::upstream::{FetchedBlob, FetchedManifest, ManifestHead, TagList};

mod blob;
mod degrade;
mod fleet;
mod hostile;
mod manifest;
mod memory;
mod peer;
mod ranges;
mod referrers;
mod resume;
mod segments;
mod staged;
mod tags;

type Engine = PullThrough<MemoryStorage, FakeUpstream>;

struct Setup {
    storage: Arc<MemoryStorage>,
    upstream: Arc<FakeUpstream>,
    engine: Engine,
}

fn setup(options: CacheOptions) -> Setup {
    let storage = Arc::new(MemoryStorage::new());
    let upstream = Arc::new(FakeUpstream::default());
    let engine = PullThrough::new(Arc::clone(&storage), Arc::clone(&upstream), options);
    Setup {
        storage,
        upstream,
        engine,
    }
}

impl Setup {
    async fn manifest(
        &self,
        reference: &ManifestRef,
        accept: &[String],
    ) -> Result<ManifestResponse> {
        self.engine
            .manifest(&hub(), &repo(), reference, accept)
            .await
    }

    /// The manifest a tag names, asked for by a client that takes every type.
    async fn manifest_by_tag(&self, name: &str) -> ManifestResponse {
        self.manifest(&tag(name), &broad()).await.unwrap()
    }

    async fn blob(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<BlobResponse> {
        self.engine.blob(&hub(), &repo(), digest, range).await
    }

    /// Upstream manifest calls so far: (HEAD, GET).
    fn manifest_calls(&self) -> (usize, usize) {
        (
            self.upstream.calls().manifest_head(),
            self.upstream.calls().manifest_get(),
        )
    }
}

fn hub() -> Registry {
    Registry::new("docker.io").unwrap()
}

fn repo() -> Repository {
    Repository::new("library/alpine").unwrap()
}

fn tag(name: &str) -> ManifestRef {
    ManifestRef::Tag(Tag::new(name).unwrap())
}

fn tag_key(name: &str) -> TagKey {
    TagKey {
        upstream: hub(),
        repository: repo(),
        tag: Tag::new(name).unwrap(),
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Everything a stream yields, or its first error.
async fn collect(mut stream: ByteStream) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

async fn stored_blob(storage: &MemoryStorage, digest: &Digest) -> Option<Vec<u8>> {
    match storage.blob_read(digest, None).await {
        Ok(read) => Some(collect(read.stream).await.unwrap()),
        Err(e) if e.is_not_found() => None,
        Err(e) => panic!("storage failed: {e}"),
    }
}

/// The whole blob, or the error, whether it came before the response or in
/// its stream (a fill that fails before the client looks fails early).
async fn blob_bytes(engine: &Engine, digest: &Digest) -> Result<Vec<u8>> {
    let response = engine.blob(&hub(), &repo(), digest, None).await?;
    collect(response.stream).await
}

/// Waits (bounded) until no blob fill is under way.
async fn fills_settled<S: Storage + ?Sized, U: crate::upstream::Upstream + ?Sized>(
    engine: &PullThrough<S, U>,
) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while engine.blob_fills_in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("fills did not settle");
}

fn accept(types: &[&str]) -> Vec<String> {
    types.iter().map(|t| t.to_string()).collect()
}

fn broad() -> Vec<String> {
    accept(&[
        DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST,
        OCI_MANIFEST,
        OCI_INDEX,
        "*/*",
    ])
}

const INDEX: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
const CHILD: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","layers":[]}"#;

/// Options with one upstream connection per blob: for tests of what a
/// single body does (its first GET asks for no range).
fn one_connection() -> CacheOptions {
    CacheOptions::default().with_fill_segments(FillSegments::default().with_connections(1))
}
