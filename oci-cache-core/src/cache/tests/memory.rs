//! Memory per fill stays flat whatever the blob size.

use super::*;

/// An upstream that generates one large blob on the fly (never held whole).
pub(super) struct GeneratedUpstream {
    pub(super) size: u64,
    pub(super) digest: Digest,
}

const GENERATED_CHUNK: usize = 64 * 1024;

fn generated_chunk(index: u64) -> Bytes {
    Bytes::from(vec![(index % 251) as u8; GENERATED_CHUNK])
}

impl GeneratedUpstream {
    pub(super) fn new(size: u64) -> Self {
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
