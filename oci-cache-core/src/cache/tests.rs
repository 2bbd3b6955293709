//! Engine tests against [`MemoryStorage`] and a scripted in-process upstream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::Semaphore;

use super::*;
use crate::error::{UpstreamError, UpstreamErrorKind};
use crate::reference::Tag;
use crate::storage::{
    BlobSource, MemoryStorage, Record, RecordKey, RecordPrefix, RecordWrite, StoredManifest,
    TagKey, TagRecord,
};
use crate::upstream::{FetchedBlob, FetchedManifest, ManifestHead};

// ---------------------------------------------------------------- fake upstream

/// How the fake serves one blob.
#[derive(Clone)]
struct BlobScript {
    bytes: Bytes,
    chunk: usize,
    /// `Content-Length` to announce; `None` sends none.
    announced: Option<u64>,
    /// Stop after this many bytes, cleanly (a truncated body).
    truncate_at: Option<usize>,
    /// Fail the stream after this many bytes (a reset connection).
    reset_at: Option<usize>,
    /// Each chunk waits for one permit, so tests control the pace.
    gate: Option<Arc<Semaphore>>,
}

impl BlobScript {
    fn new(bytes: &[u8]) -> Self {
        BlobScript {
            bytes: Bytes::copy_from_slice(bytes),
            chunk: 1024,
            announced: Some(bytes.len() as u64),
            truncate_at: None,
            reset_at: None,
            gate: None,
        }
    }

    fn chunk(mut self, chunk: usize) -> Self {
        self.chunk = chunk;
        self
    }

    fn gated(mut self, gate: &Arc<Semaphore>) -> Self {
        self.gate = Some(Arc::clone(gate));
        self
    }
}

#[derive(Default)]
struct Calls {
    blob_get: AtomicUsize,
    blob_head: AtomicUsize,
    manifest_get: AtomicUsize,
    manifest_head: AtomicUsize,
    tag_list: AtomicUsize,
}

fn count(counter: &AtomicUsize) -> usize {
    counter.load(Ordering::SeqCst)
}

#[derive(Default)]
struct FakeUpstream {
    blobs: Mutex<HashMap<Digest, BlobScript>>,
    /// Per tag, the variants upstream has; the first the request accepts wins
    /// (as distribution picks a representation by `Accept`).
    tags: Mutex<HashMap<String, Vec<(String, Bytes)>>>,
    /// Manifests by the digest they are requested under; the bytes may lie.
    by_digest: Mutex<HashMap<Digest, (String, Bytes)>>,
    tag_list: Mutex<Vec<String>>,
    /// When set, every call fails as unavailable.
    down: AtomicBool,
    /// When set, HEAD answers without a digest.
    head_without_digest: AtomicBool,
    manifest_delay: Mutex<Duration>,
    accepts_seen: Mutex<Vec<Vec<String>>>,
    calls: Calls,
}

impl FakeUpstream {
    fn add_blob(&self, script: BlobScript) -> Digest {
        let digest = Digest::sha256_of(&script.bytes);
        self.blobs.lock().unwrap().insert(digest.clone(), script);
        digest
    }

    fn set_tag(&self, tag: &str, variants: &[(&str, &[u8])]) {
        let variants: Vec<(String, Bytes)> = variants
            .iter()
            .map(|(t, b)| (t.to_string(), Bytes::copy_from_slice(b)))
            .collect();
        for (media_type, bytes) in &variants {
            self.by_digest.lock().unwrap().insert(
                Digest::sha256_of(bytes),
                (media_type.clone(), bytes.clone()),
            );
        }
        self.tags.lock().unwrap().insert(tag.to_string(), variants);
    }

    fn check_up(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(UpstreamError::new(
                UpstreamErrorKind::Unavailable,
                "http://127.0.0.1:1",
                "connection refused",
            )
            .into());
        }
        Ok(())
    }

    fn pick(&self, reference: &ManifestRef, accept: &[String]) -> Result<(String, Bytes)> {
        self.accepts_seen.lock().unwrap().push(accept.to_vec());
        let found = match reference {
            ManifestRef::Digest(d) => self.by_digest.lock().unwrap().get(d).cloned(),
            ManifestRef::Tag(t) => {
                let accept = AcceptSet::parse(accept);
                self.tags
                    .lock()
                    .unwrap()
                    .get(t.as_str())
                    .and_then(|v| v.iter().find(|(m, _)| accept.accepts(m)).cloned())
            }
        };
        found.ok_or_else(|| {
            UpstreamError::new(UpstreamErrorKind::NotFound, "fake", "manifest unknown").into()
        })
    }
}

#[async_trait]
impl Upstream for FakeUpstream {
    async fn manifest_head(
        &self,
        _: &Registry,
        _: &Repository,
        reference: &ManifestRef,
        accept: &[String],
    ) -> Result<ManifestHead> {
        self.calls.manifest_head.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        let (media_type, bytes) = self.pick(reference, accept)?;
        let digest =
            (!self.head_without_digest.load(Ordering::SeqCst)).then(|| Digest::sha256_of(&bytes));
        Ok(ManifestHead {
            digest,
            media_type,
            size: Some(bytes.len() as u64),
        })
    }

    async fn manifest_get(
        &self,
        _: &Registry,
        _: &Repository,
        reference: &ManifestRef,
        accept: &[String],
    ) -> Result<FetchedManifest> {
        self.calls.manifest_get.fetch_add(1, Ordering::SeqCst);
        let delay = *self.manifest_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.check_up()?;
        let (media_type, bytes) = self.pick(reference, accept)?;
        Ok(FetchedManifest {
            head: ManifestHead {
                digest: None,
                media_type,
                size: Some(bytes.len() as u64),
            },
            bytes,
        })
    }

    async fn blob_get(&self, _: &Registry, _: &Repository, digest: &Digest) -> Result<FetchedBlob> {
        self.calls.blob_get.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        let script = self
            .blobs
            .lock()
            .unwrap()
            .get(digest)
            .cloned()
            .ok_or_else(|| {
                UpstreamError::new(UpstreamErrorKind::NotFound, "fake", "blob unknown")
            })?;
        let size = script.announced;
        let stream = futures::stream::unfold((script, 0usize), |(script, at)| async move {
            let end = script.truncate_at.unwrap_or(script.bytes.len());
            if at >= end {
                return None;
            }
            if let Some(gate) = &script.gate {
                gate.acquire().await.unwrap().forget();
            }
            if script.reset_at.is_some_and(|r| at >= r) {
                let reset: Error =
                    UpstreamError::new(UpstreamErrorKind::Unavailable, "fake", "connection reset")
                        .into();
                return Some((Err(reset), (script, usize::MAX)));
            }
            let next = (at + script.chunk).min(end);
            let chunk = script.bytes.slice(at..next);
            Some((Ok(chunk), (script, next)))
        })
        .boxed();
        Ok(FetchedBlob { size, stream })
    }

    async fn blob_head(&self, _: &Registry, _: &Repository, digest: &Digest) -> Result<u64> {
        self.calls.blob_head.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        self.blobs
            .lock()
            .unwrap()
            .get(digest)
            .map(|s| s.bytes.len() as u64)
            .ok_or_else(|| {
                UpstreamError::new(UpstreamErrorKind::NotFound, "fake", "blob unknown").into()
            })
    }

    async fn tag_list(
        &self,
        _: &Registry,
        repository: &Repository,
        _: Option<usize>,
        _: Option<&str>,
    ) -> Result<TagList> {
        self.calls.tag_list.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        Ok(TagList {
            name: repository.to_string(),
            tags: self.tag_list.lock().unwrap().clone(),
        })
    }
}

// ---------------------------------------------------------------- helpers

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
            count(&self.upstream.calls.manifest_head),
            count(&self.upstream.calls.manifest_get),
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
async fn fills_settled(engine: &Engine) {
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

// ---------------------------------------------------------------- blobs

#[tokio::test]
async fn blob_miss_streams_stores_then_hits() {
    let s = setup(CacheOptions::default());
    let data = pattern(10_000);
    let digest = s.upstream.add_blob(BlobScript::new(&data));

    let miss = s.blob(&digest, None).await.unwrap();
    assert_eq!(miss.outcome, CacheOutcome::Miss);
    assert_eq!((miss.size, miss.range.clone()), (10_000, 0..10_000));
    assert_eq!(collect(miss.stream).await.unwrap(), data);
    fills_settled(&s.engine).await;
    assert_eq!(stored_blob(&s.storage, &digest).await.unwrap(), data);

    let hit = s.blob(&digest, None).await.unwrap();
    assert_eq!(hit.outcome, CacheOutcome::Hit);
    assert_eq!(collect(hit.stream).await.unwrap(), data);
    assert_eq!(count(&s.upstream.calls.blob_get), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_misses_make_one_fetch() {
    let s = setup(CacheOptions::default());
    let data = pattern(200_000);
    let gate = Arc::new(Semaphore::new(0));
    let digest = s
        .upstream
        .add_blob(BlobScript::new(&data).chunk(4096).gated(&gate));

    let (joined_tx, mut joined_rx) = tokio::sync::mpsc::channel(16);
    let mut clients = Vec::new();
    for _ in 0..16 {
        let engine = s.engine.clone();
        let digest = digest.clone();
        let joined = joined_tx.clone();
        clients.push(tokio::spawn(async move {
            let response = engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
            joined.send(()).await.unwrap();
            (response.outcome, collect(response.stream).await.unwrap())
        }));
    }
    for _ in 0..16 {
        joined_rx.recv().await.unwrap();
    }
    // Every client has its response before a single byte arrived upstream.
    gate.add_permits(usize::MAX >> 4);
    let mut misses = 0;
    for client in clients {
        let (outcome, bytes) = client.await.unwrap();
        assert_eq!(bytes, data);
        misses += usize::from(outcome == CacheOutcome::Miss);
    }
    assert_eq!(misses, 1);
    assert_eq!(count(&s.upstream.calls.blob_get), 1);
    fills_settled(&s.engine).await;
    assert_eq!(stored_blob(&s.storage, &digest).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_reads_spooled_bytes_then_follows_live() {
    // A 4 KiB window against a 64 KiB blob: most of what the late joiner needs
    // has already left memory for the spool.
    let s = setup(CacheOptions::default().with_fill_window(4096));
    let data = pattern(64 * 1024);
    let gate = Arc::new(Semaphore::new(0));
    let digest = s
        .upstream
        .add_blob(BlobScript::new(&data).chunk(1024).gated(&gate));

    let first = s.blob(&digest, None).await.unwrap();
    let mut first_stream = first.stream;
    gate.add_permits(40);
    let mut early = Vec::new();
    while early.len() < 40 * 1024 {
        early.extend_from_slice(&first_stream.next().await.unwrap().unwrap());
    }

    let late = s.blob(&digest, None).await.unwrap();
    assert_eq!(late.outcome, CacheOutcome::Coalesced);
    let late_task = tokio::spawn(collect(late.stream));
    gate.add_permits(24);
    early.extend(collect(first_stream).await.unwrap());
    assert_eq!(early, data);
    assert_eq!(late_task.await.unwrap().unwrap(), data);
    assert_eq!(count(&s.upstream.calls.blob_get), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blob_through_a_small_window_is_byte_exact_for_every_reader() {
    let s = setup(CacheOptions::default().with_fill_window(8 * 1024));
    let data = pattern(3 * 1024 * 1024 + 17);
    let digest = s.upstream.add_blob(BlobScript::new(&data).chunk(16 * 1024));
    let mut readers = Vec::new();
    for i in 0..4u64 {
        let engine = s.engine.clone();
        let digest = digest.clone();
        readers.push(tokio::spawn(async move {
            // Staggered joins land at different points of the fill.
            tokio::time::sleep(Duration::from_millis(i * 3)).await;
            let response = engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
            collect(response.stream).await.unwrap()
        }));
    }
    for reader in readers {
        assert!(reader.await.unwrap() == data);
    }
    fills_settled(&s.engine).await;
    assert!(stored_blob(&s.storage, &digest).await.unwrap() == data);
}

#[tokio::test]
async fn fill_completes_and_stores_when_the_first_client_leaves() {
    let s = setup(CacheOptions::default());
    let data = pattern(50_000);
    let gate = Arc::new(Semaphore::new(0));
    let digest = s
        .upstream
        .add_blob(BlobScript::new(&data).chunk(1000).gated(&gate));

    let response = s.blob(&digest, None).await.unwrap();
    let mut stream = response.stream;
    gate.add_permits(1);
    assert_eq!(stream.next().await.unwrap().unwrap().len(), 1000);
    drop(stream);
    gate.add_permits(1000);
    fills_settled(&s.engine).await;
    assert_eq!(stored_blob(&s.storage, &digest).await.unwrap(), data);
    assert_eq!(count(&s.upstream.calls.blob_get), 1);
}

#[tokio::test]
async fn wrong_digest_is_never_stored_and_the_next_request_refetches() {
    let s = setup(CacheOptions::default());
    let data = pattern(5000);
    let digest = s.upstream.add_blob(BlobScript::new(&data));
    // Upstream now answers that digest with other bytes of the same length.
    let mut lie = BlobScript::new(&data);
    lie.bytes = Bytes::from(vec![7u8; 5000]);
    s.upstream.blobs.lock().unwrap().insert(digest.clone(), lie);

    // Gated, so the client holds its response (headers sent) before bytes flow:
    // the error must arrive in the stream, after the bytes.
    let gate = Arc::new(Semaphore::new(0));
    s.upstream
        .blobs
        .lock()
        .unwrap()
        .get_mut(&digest)
        .unwrap()
        .gate = Some(Arc::clone(&gate));
    let response = s.blob(&digest, None).await.unwrap();
    gate.add_permits(100);
    let err = collect(response.stream).await.unwrap_err();
    assert!(
        matches!(err, Error::DigestMismatch { ref expected, .. } if *expected == digest),
        "{err}"
    );
    fills_settled(&s.engine).await;
    assert!(stored_blob(&s.storage, &digest).await.is_none());

    // Upstream fixed: a clean retry, not a cached failure.
    s.upstream.add_blob(BlobScript::new(&data));
    let retry = s.blob(&digest, None).await.unwrap();
    assert_eq!(retry.outcome, CacheOutcome::Miss);
    assert_eq!(collect(retry.stream).await.unwrap(), data);
    assert_eq!(count(&s.upstream.calls.blob_get), 2);
    fills_settled(&s.engine).await;
    assert_eq!(stored_blob(&s.storage, &digest).await.unwrap(), data);
}

#[tokio::test]
async fn truncated_or_reset_body_errors_and_stores_nothing() {
    let s = setup(CacheOptions::default());
    let data = pattern(8000);
    let digest = s.upstream.add_blob(BlobScript {
        truncate_at: Some(6000),
        ..BlobScript::new(&data)
    });
    let err = blob_bytes(&s.engine, &digest).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::SizeMismatch {
                expected: 8000,
                actual: 6000,
                ..
            }
        ),
        "{err}"
    );

    let data2 = pattern(9000);
    let digest2 = s.upstream.add_blob(BlobScript {
        reset_at: Some(4096),
        ..BlobScript::new(&data2)
    });
    let err = blob_bytes(&s.engine, &digest2).await.unwrap_err();
    assert!(
        matches!(&err, Error::Upstream(e) if e.kind() == UpstreamErrorKind::Unavailable),
        "{err}"
    );

    // Too long for the announced size fails as soon as the excess arrives.
    let data3 = pattern(3000);
    let digest3 = s.upstream.add_blob(BlobScript {
        announced: Some(2000),
        ..BlobScript::new(&data3)
    });
    let err = blob_bytes(&s.engine, &digest3).await.unwrap_err();
    assert!(
        matches!(err, Error::SizeMismatch { expected: 2000, .. }),
        "{err}"
    );

    fills_settled(&s.engine).await;
    for d in [&digest, &digest2, &digest3] {
        assert!(stored_blob(&s.storage, d).await.is_none());
    }
}

#[tokio::test]
async fn range_on_a_miss_is_served_from_the_single_fill() {
    let s = setup(CacheOptions::default());
    let data = pattern(10_000);
    let digest = s.upstream.add_blob(BlobScript::new(&data).chunk(700));

    let response = s.blob(&digest, Some(1234..5678)).await.unwrap();
    assert_eq!(response.outcome, CacheOutcome::Miss);
    assert_eq!(
        (response.size, response.range.clone()),
        (10_000, 1234..5678)
    );
    assert_eq!(collect(response.stream).await.unwrap(), data[1234..5678]);

    // An end past the size is clamped; a start past it is refused.
    fills_settled(&s.engine).await;
    let tail = s.blob(&digest, Some(9990..20_000)).await.unwrap();
    assert_eq!(tail.range, 9990..10_000);
    assert_eq!(collect(tail.stream).await.unwrap(), data[9990..]);
    assert_eq!(count(&s.upstream.calls.blob_get), 1);

    let digest2 = s.upstream.add_blob(BlobScript::new(&pattern(100)));
    let err = s.blob(&digest2, Some(100..200)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::RangeNotSatisfiable {
                start: 100,
                size: 100
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn blob_without_content_length_is_served_after_verification() {
    let s = setup(CacheOptions::default());
    let data = pattern(3000);
    let digest = s.upstream.add_blob(BlobScript {
        announced: None,
        ..BlobScript::new(&data)
    });
    let response = s.blob(&digest, None).await.unwrap();
    assert_eq!(response.size, 3000);
    assert_eq!(collect(response.stream).await.unwrap(), data);
}

#[tokio::test]
async fn missing_blob_is_not_found_and_not_remembered() {
    let s = setup(CacheOptions::default());
    let digest = Digest::sha256_of(b"nowhere");
    for attempt in 1..=2 {
        let err = s.blob(&digest, None).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        fills_settled(&s.engine).await;
        assert_eq!(count(&s.upstream.calls.blob_get), attempt);
    }
}

#[tokio::test]
async fn blob_size_from_storage_fill_or_upstream_head() {
    let s = setup(CacheOptions::default());
    let data = pattern(4321);
    let gate = Arc::new(Semaphore::new(0));
    let digest = s.upstream.add_blob(BlobScript::new(&data).gated(&gate));

    assert_eq!(
        s.engine.blob_size(&hub(), &repo(), &digest).await.unwrap(),
        (4321, CacheOutcome::Miss)
    );
    let response = s.blob(&digest, None).await.unwrap();
    assert_eq!(
        s.engine.blob_size(&hub(), &repo(), &digest).await.unwrap(),
        (4321, CacheOutcome::Coalesced)
    );
    gate.add_permits(100);
    collect(response.stream).await.unwrap();
    fills_settled(&s.engine).await;
    assert_eq!(
        s.engine.blob_size(&hub(), &repo(), &digest).await.unwrap(),
        (4321, CacheOutcome::Hit)
    );
    assert_eq!(count(&s.upstream.calls.blob_head), 1);
    assert!(stored_blob(&s.storage, &Digest::sha256_of(b"x"))
        .await
        .is_none());
}

/// Memory storage whose blob writes fail (a full disk), to show clients are
/// still served and nothing half-written remains.
#[derive(Debug)]
struct FailingBlobWrites(MemoryStorage);

impl std::fmt::Display for FailingBlobWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failing")
    }
}

#[async_trait]
impl Storage for FailingBlobWrites {
    async fn blob_stat(&self, d: &Digest) -> Result<Option<crate::storage::BlobInfo>> {
        self.0.blob_stat(d).await
    }
    async fn blob_read(
        &self,
        d: &Digest,
        r: Option<Range<u64>>,
    ) -> Result<crate::storage::BlobRead> {
        self.0.blob_read(d, r).await
    }
    async fn blob_write_from(&self, _: &Digest, _: Option<u64>, data: BlobSource) -> Result<u64> {
        let mut data = data.into_stream();
        // Take a little, then give up like a backend that ran out of space.
        let _ = data.next().await;
        Err(Error::Storage {
            backend: "failing",
            message: "no space left on device".into(),
            source: None,
        })
    }
    async fn blob_delete(&self, d: &Digest) -> Result<()> {
        self.0.blob_delete(d).await
    }
    fn blob_list(&self) -> BoxStream<'_, Result<crate::storage::BlobInfo>> {
        self.0.blob_list()
    }
    async fn record_get(&self, k: &RecordKey) -> Result<Option<Record>> {
        self.0.record_get(k).await
    }
    async fn record_put(&self, k: &RecordKey, r: Record, m: RecordWrite) -> Result<bool> {
        self.0.record_put(k, r, m).await
    }
    async fn record_delete(&self, k: &RecordKey) -> Result<()> {
        self.0.record_delete(k).await
    }
    fn record_list(&self, p: &RecordPrefix) -> BoxStream<'_, Result<RecordKey>> {
        self.0.record_list(p)
    }
}

#[tokio::test]
async fn storage_failure_still_serves_verified_bytes_and_retries_later() {
    let upstream = Arc::new(FakeUpstream::default());
    let data = pattern(20_000);
    let digest = upstream.add_blob(BlobScript::new(&data));
    let storage = Arc::new(FailingBlobWrites(MemoryStorage::new()));
    let engine = PullThrough::new(storage, Arc::clone(&upstream), CacheOptions::default());
    for attempt in 1..=2 {
        let response = engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
        assert_eq!(response.outcome, CacheOutcome::Miss);
        assert_eq!(collect(response.stream).await.unwrap(), data);
        tokio::time::timeout(Duration::from_secs(10), async {
            while engine.blob_fills_in_flight() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(count(&upstream.calls.blob_get), attempt);
    }
}

// ---------------------------------------------------------------- manifests

const INDEX: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
const CHILD: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","layers":[]}"#;

#[tokio::test]
async fn manifest_by_digest_is_fetched_once_then_immutable() {
    let s = setup(CacheOptions::default());
    s.upstream.set_tag("3.20", &[(OCI_INDEX, INDEX)]);
    let digest = Digest::sha256_of(INDEX);
    let reference = ManifestRef::Digest(digest.clone());

    let miss = s.manifest(&reference, &[]).await.unwrap();
    assert_eq!(miss.outcome, CacheOutcome::Miss);
    assert_eq!(
        (miss.digest.clone(), miss.media_type.as_str()),
        (digest.clone(), OCI_INDEX)
    );
    assert_eq!(miss.bytes.as_ref(), INDEX);

    // Upstream down: a cached digest never asks it.
    s.upstream.down.store(true, Ordering::SeqCst);
    let hit = s.manifest(&reference, &broad()).await.unwrap();
    assert_eq!(hit.outcome, CacheOutcome::Hit);
    assert_eq!(hit.bytes.as_ref(), INDEX);
    assert_eq!(count(&s.upstream.calls.manifest_get), 1);
    assert_eq!(count(&s.upstream.calls.manifest_head), 0);
}

#[tokio::test]
async fn manifest_whose_bytes_differ_from_the_digest_asked_for_is_refused() {
    let s = setup(CacheOptions::default());
    let digest = Digest::sha256_of(INDEX);
    s.upstream.by_digest.lock().unwrap().insert(
        digest.clone(),
        (OCI_INDEX.to_string(), Bytes::from_static(CHILD)),
    );
    let reference = ManifestRef::Digest(digest.clone());
    for attempt in 1..=2 {
        let err = s.manifest(&reference, &[]).await.unwrap_err();
        assert!(
            matches!(err, Error::DigestMismatch { ref expected, .. } if *expected == digest),
            "{err}"
        );
        assert_eq!(count(&s.upstream.calls.manifest_get), attempt);
    }
    assert!(s.storage.manifest_get(&digest).await.unwrap().is_none());
    assert!(s
        .storage
        .manifest_get(&Digest::sha256_of(CHILD))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn manifest_over_the_size_cap_is_refused() {
    let s = setup(CacheOptions::default().with_max_manifest_size(50));
    s.upstream.set_tag("big", &[(OCI_INDEX, INDEX)]);
    let err = s.manifest(&tag("big"), &[]).await.unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit: 50, actual, .. } if actual == INDEX.len() as u64),
        "{err}"
    );
    assert!(s
        .storage
        .manifest_get(&Digest::sha256_of(INDEX))
        .await
        .unwrap()
        .is_none());
    assert!(s.storage.tag_get(&tag_key("big")).await.unwrap().is_none());
}

#[tokio::test]
async fn tag_is_fresh_for_the_ttl_then_revalidated_with_head() {
    let s = setup(CacheOptions::default().with_tag_ttl(Duration::from_secs(3600)));
    s.upstream.set_tag("3.20", &[(OCI_INDEX, INDEX)]);

    let miss = s.manifest_by_tag("3.20").await;
    assert_eq!(miss.outcome, CacheOutcome::Miss);
    let record = s.storage.tag_get(&tag_key("3.20")).await.unwrap().unwrap();
    assert_eq!(record.digest, Digest::sha256_of(INDEX));

    let hit = s.manifest_by_tag("3.20").await;
    assert_eq!(hit.outcome, CacheOutcome::Hit);
    assert_eq!(hit.bytes.as_ref(), INDEX);
    assert_eq!(s.manifest_calls(), (0, 1));

    // Past the TTL: one HEAD, no GET, and checked_at moves forward.
    let old = SystemTime::now() - Duration::from_secs(7200);
    s.storage
        .tag_put(
            &tag_key("3.20"),
            &TagRecord {
                checked_at: old,
                ..record
            },
        )
        .await
        .unwrap();
    let revalidated = s.manifest_by_tag("3.20").await;
    assert_eq!(revalidated.outcome, CacheOutcome::Revalidated);
    assert_eq!(revalidated.bytes.as_ref(), INDEX);
    assert_eq!(s.manifest_calls(), (1, 1));
    let refreshed = s.storage.tag_get(&tag_key("3.20")).await.unwrap().unwrap();
    assert!(refreshed.checked_at > old + Duration::from_secs(3600));
}

#[tokio::test]
async fn moved_tag_fetches_and_records_the_new_manifest() {
    let s = setup(CacheOptions::default().with_tag_ttl(Duration::ZERO));
    s.upstream.set_tag("latest", &[(OCI_INDEX, INDEX)]);
    s.manifest_by_tag("latest").await;

    let moved: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}"#;
    s.upstream.set_tag("latest", &[(OCI_INDEX, moved)]);
    let response = s.manifest_by_tag("latest").await;
    assert_eq!(response.outcome, CacheOutcome::Miss);
    assert_eq!(response.bytes.as_ref(), moved);
    assert_eq!(response.digest, Digest::sha256_of(moved));
    assert_eq!(
        s.storage
            .tag_get(&tag_key("latest"))
            .await
            .unwrap()
            .unwrap()
            .digest,
        Digest::sha256_of(moved)
    );
    assert_eq!(s.manifest_calls(), (1, 2));

    // HEAD without a digest: GET and compare what the bytes hash to.
    s.upstream.head_without_digest.store(true, Ordering::SeqCst);
    let same = s.manifest_by_tag("latest").await;
    assert_eq!(same.outcome, CacheOutcome::Revalidated);
    assert_eq!(same.bytes.as_ref(), moved);
}

#[tokio::test]
async fn stale_tag_is_served_when_upstream_fails() {
    let s = setup(CacheOptions::default().with_tag_ttl(Duration::ZERO));
    s.upstream.set_tag("3.20", &[(OCI_INDEX, INDEX)]);
    s.manifest_by_tag("3.20").await;

    s.upstream.down.store(true, Ordering::SeqCst);
    let stale = s.manifest_by_tag("3.20").await;
    assert_eq!(stale.outcome, CacheOutcome::Stale);
    assert_eq!(stale.bytes.as_ref(), INDEX);

    // Nothing cached and upstream down: the upstream error, not a made-up answer.
    let err = s.manifest(&tag("other"), &broad()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Upstream(e) if e.kind() == UpstreamErrorKind::Unavailable),
        "{err}"
    );
}

#[tokio::test]
async fn cached_manifest_is_only_served_to_clients_that_accept_its_type() {
    let s = setup(CacheOptions::default());
    // Like Docker Hub: the index for clients that take indexes, the platform
    // manifest for clients that only take Docker manifests.
    s.upstream
        .set_tag("3.20", &[(OCI_INDEX, INDEX), (DOCKER_MANIFEST, CHILD)]);
    let first = s.manifest_by_tag("3.20").await;
    assert_eq!(first.media_type, OCI_INDEX);
    assert_eq!(
        s.upstream.accepts_seen.lock().unwrap().last().unwrap(),
        &accept(&KNOWN_MANIFEST_TYPES)
    );

    let narrow = accept(&[DOCKER_MANIFEST]);
    let response = s.manifest(&tag("3.20"), &narrow).await.unwrap();
    assert_eq!(response.media_type, DOCKER_MANIFEST);
    assert_eq!(response.bytes.as_ref(), CHILD);
    assert_eq!(response.outcome, CacheOutcome::Miss);
    assert_eq!(
        s.upstream.accepts_seen.lock().unwrap().last().unwrap(),
        &narrow
    );

    // The tag record still holds the broad answer for everyone else.
    let again = s.manifest_by_tag("3.20").await;
    assert_eq!(
        (again.outcome, again.bytes.as_ref()),
        (CacheOutcome::Hit, INDEX)
    );

    // By digest, a client that does not accept the stored type is not served it.
    let by_digest = ManifestRef::Digest(Digest::sha256_of(INDEX));
    let gets = count(&s.upstream.calls.manifest_get);
    let err = s.manifest(&by_digest, &narrow).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotAcceptable { media_type } if media_type == OCI_INDEX),
        "{err}"
    );
    assert_eq!(count(&s.upstream.calls.manifest_get), gets + 1);
}

#[tokio::test]
async fn narrow_client_is_served_from_storage_when_head_names_a_stored_digest() {
    let s = setup(CacheOptions::default());
    s.upstream
        .set_tag("3.20", &[(OCI_INDEX, INDEX), (DOCKER_MANIFEST, CHILD)]);
    // The platform manifest is already stored (pulled by digest earlier).
    let child = ManifestRef::Digest(Digest::sha256_of(CHILD));
    s.manifest(&child, &[]).await.unwrap();
    let gets = count(&s.upstream.calls.manifest_get);

    let narrow = accept(&[DOCKER_MANIFEST]);
    let response = s.manifest(&tag("3.20"), &narrow).await.unwrap();
    assert_eq!(response.outcome, CacheOutcome::Revalidated);
    assert_eq!(response.bytes.as_ref(), CHILD);
    assert_eq!(count(&s.upstream.calls.manifest_head), 1);
    assert_eq!(count(&s.upstream.calls.manifest_get), gets);
    // A narrow answer never becomes the tag's record.
    assert!(s.storage.tag_get(&tag_key("3.20")).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_manifest_misses_make_one_fetch() {
    let s = setup(CacheOptions::default());
    s.upstream.set_tag("3.20", &[(OCI_INDEX, INDEX)]);
    *s.upstream.manifest_delay.lock().unwrap() = Duration::from_millis(100);
    let mut clients = Vec::new();
    for _ in 0..16 {
        let engine = s.engine.clone();
        clients.push(tokio::spawn(async move {
            engine
                .manifest(&hub(), &repo(), &tag("3.20"), &broad())
                .await
                .unwrap()
        }));
    }
    let mut misses = 0;
    for client in clients {
        let response = client.await.unwrap();
        assert_eq!(response.bytes.as_ref(), INDEX);
        misses += usize::from(response.outcome == CacheOutcome::Miss);
    }
    assert_eq!(misses, 1);
    assert_eq!(count(&s.upstream.calls.manifest_get), 1);
}

#[tokio::test]
async fn manifest_fetch_finishes_when_the_client_gives_up() {
    let s = setup(CacheOptions::default());
    s.upstream.set_tag("3.20", &[(OCI_INDEX, INDEX)]);
    *s.upstream.manifest_delay.lock().unwrap() = Duration::from_millis(50);
    let gave_up =
        tokio::time::timeout(Duration::from_millis(5), s.manifest(&tag("3.20"), &broad())).await;
    assert!(gave_up.is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.storage.tag_get(&tag_key("3.20")).await.unwrap().is_some());
    let hit = s.manifest_by_tag("3.20").await;
    assert_eq!(hit.outcome, CacheOutcome::Hit);
    assert_eq!(count(&s.upstream.calls.manifest_get), 1);
}

// ---------------------------------------------------------------- tags, catalog

#[tokio::test]
async fn tags_come_from_upstream_or_from_cache_when_it_fails() {
    let s = setup(CacheOptions::default());
    *s.upstream.tag_list.lock().unwrap() = vec!["3.19".into(), "3.20".into()];
    s.upstream.set_tag("3.20", &[(OCI_INDEX, INDEX)]);
    let (list, outcome) = s.engine.tags(&hub(), &repo()).await.unwrap();
    assert_eq!(
        (list.tags, outcome),
        (
            vec!["3.19".to_string(), "3.20".to_string()],
            CacheOutcome::Miss
        )
    );

    s.manifest(&tag("3.20"), &[]).await.unwrap();
    s.upstream.down.store(true, Ordering::SeqCst);
    let (list, outcome) = s.engine.tags(&hub(), &repo()).await.unwrap();
    assert_eq!(
        (list.tags, outcome),
        (vec!["3.20".to_string()], CacheOutcome::Stale)
    );

    let other = Repository::new("library/busybox").unwrap();
    assert!(s.engine.tags(&hub(), &other).await.is_err());
    assert_eq!(
        s.engine.catalog().await.unwrap(),
        ["docker.io/library/alpine"]
    );
}

#[tokio::test]
async fn stale_digest_record_without_manifest_refetches() {
    // A tag record whose manifest was evicted behaves like a miss.
    let s = setup(CacheOptions::default());
    s.upstream.set_tag("3.20", &[(OCI_INDEX, INDEX)]);
    s.storage
        .tag_put(
            &tag_key("3.20"),
            &TagRecord {
                digest: Digest::sha256_of(INDEX),
                media_type: OCI_INDEX.into(),
                checked_at: SystemTime::now(),
            },
        )
        .await
        .unwrap();
    let response = s.manifest(&tag("3.20"), &[]).await.unwrap();
    assert_eq!(response.outcome, CacheOutcome::Miss);
    assert_eq!(
        s.storage
            .manifest_get(&Digest::sha256_of(INDEX))
            .await
            .unwrap(),
        Some(StoredManifest {
            digest: Digest::sha256_of(INDEX),
            media_type: OCI_INDEX.into(),
            bytes: Bytes::from_static(INDEX),
        })
    );
}

// ---------------------------------------------------------------- memory figure

/// An upstream that generates one large blob on the fly (never held whole).
struct GeneratedUpstream {
    size: u64,
    digest: Digest,
}

const GENERATED_CHUNK: usize = 64 * 1024;

fn generated_chunk(index: u64) -> Bytes {
    Bytes::from(vec![(index % 251) as u8; GENERATED_CHUNK])
}

impl GeneratedUpstream {
    fn new(size: u64) -> Self {
        let mut hasher = crate::digest::DigestHasher::new(crate::digest::DigestAlgorithm::Sha256);
        let mut at = 0;
        while at < size {
            let chunk = generated_chunk(at / GENERATED_CHUNK as u64);
            let take = (size - at).min(chunk.len() as u64) as usize;
            hasher.update(&chunk[..take]);
            at += take as u64;
        }
        GeneratedUpstream {
            size,
            digest: hasher.finish(),
        }
    }
}

#[async_trait]
impl Upstream for GeneratedUpstream {
    async fn manifest_head(
        &self,
        _: &Registry,
        _: &Repository,
        _: &ManifestRef,
        _: &[String],
    ) -> Result<ManifestHead> {
        Err(Error::not_found("manifest"))
    }
    async fn manifest_get(
        &self,
        _: &Registry,
        _: &Repository,
        _: &ManifestRef,
        _: &[String],
    ) -> Result<FetchedManifest> {
        Err(Error::not_found("manifest"))
    }
    async fn blob_get(&self, _: &Registry, _: &Repository, _: &Digest) -> Result<FetchedBlob> {
        let size = self.size;
        let stream = futures::stream::unfold(0u64, move |at| async move {
            if at >= size {
                return None;
            }
            let chunk = generated_chunk(at / GENERATED_CHUNK as u64);
            let take = (size - at).min(chunk.len() as u64) as usize;
            Some((Ok(chunk.slice(..take)), at + take as u64))
        })
        .boxed();
        Ok(FetchedBlob {
            size: Some(size),
            stream,
        })
    }
    async fn blob_head(&self, _: &Registry, _: &Repository, _: &Digest) -> Result<u64> {
        Ok(self.size)
    }
    async fn tag_list(
        &self,
        _: &Registry,
        _: &Repository,
        _: Option<usize>,
        _: Option<&str>,
    ) -> Result<TagList> {
        Err(Error::not_found("tags"))
    }
}

/// Storage that verifies-by-counting and keeps nothing, so the figure below is
/// the engine's memory alone.
#[derive(Debug)]
struct NullStorage;

impl std::fmt::Display for NullStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("null")
    }
}

#[async_trait]
impl Storage for NullStorage {
    async fn blob_stat(&self, _: &Digest) -> Result<Option<crate::storage::BlobInfo>> {
        Ok(None)
    }
    async fn blob_read(
        &self,
        digest: &Digest,
        _: Option<Range<u64>>,
    ) -> Result<crate::storage::BlobRead> {
        Err(Error::not_found(format!("blob {digest}")))
    }
    async fn blob_write_from(&self, _: &Digest, _: Option<u64>, data: BlobSource) -> Result<u64> {
        let mut data = data.into_stream();
        let mut size = 0;
        while let Some(chunk) = data.next().await {
            size += chunk?.len() as u64;
        }
        Ok(size)
    }
    async fn blob_delete(&self, _: &Digest) -> Result<()> {
        Ok(())
    }
    fn blob_list(&self) -> BoxStream<'_, Result<crate::storage::BlobInfo>> {
        futures::stream::empty().boxed()
    }
    async fn record_get(&self, _: &RecordKey) -> Result<Option<Record>> {
        Ok(None)
    }
    async fn record_put(&self, _: &RecordKey, _: Record, _: RecordWrite) -> Result<bool> {
        Ok(true)
    }
    async fn record_delete(&self, _: &RecordKey) -> Result<()> {
        Ok(())
    }
    fn record_list(&self, _: &RecordPrefix) -> BoxStream<'_, Result<RecordKey>> {
        futures::stream::empty().boxed()
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Streams a blob through one fill to three clients (one from the start, one
/// joining halfway, one slow) and reports peak RSS. Run alone, in release:
/// `OCI_CACHE_FILL_MIB=1024 cargo test --release -p oci-cache-core --lib fill_memory -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run alone in release mode"]
#[allow(clippy::print_stderr)]
async fn fill_memory_stays_flat() {
    let mib: u64 = std::env::var("OCI_CACHE_FILL_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let upstream = Arc::new(GeneratedUpstream::new(mib * 1024 * 1024));
    let digest = upstream.digest.clone();
    let size = upstream.size;
    let engine = PullThrough::new(Arc::new(NullStorage), upstream, CacheOptions::default());
    let before = peak_rss_kib();
    let started = std::time::Instant::now();

    let read = |engine: PullThrough<NullStorage, GeneratedUpstream>,
                digest: Digest,
                delay_ms: u64,
                pace: bool| {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let response = engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
            let mut stream = response.stream;
            let mut verifier = crate::digest::DigestVerifier::new(digest, Some(response.size));
            while let Some(chunk) = stream.next().await {
                verifier.update(&chunk.unwrap()).unwrap();
                if pace {
                    tokio::task::yield_now().await;
                }
            }
            (response.outcome, verifier.finish().unwrap())
        })
    };
    let first = read(engine.clone(), digest.clone(), 0, false);
    let late = read(engine.clone(), digest.clone(), 150, false);
    let slow = read(engine.clone(), digest.clone(), 10, true);
    for client in [first, late, slow] {
        let (_, bytes) = client.await.unwrap();
        assert_eq!(bytes, size);
    }
    let elapsed = started.elapsed();
    let after = peak_rss_kib();
    eprintln!(
        "fill of {mib} MiB to 3 clients: {:.0} MiB/s, peak RSS {} KiB -> {} KiB (+{} KiB)",
        mib as f64 / elapsed.as_secs_f64(),
        before,
        after,
        after.saturating_sub(before)
    );
    assert!(
        after.saturating_sub(before) < 32 * 1024,
        "memory grew with the blob"
    );
}
