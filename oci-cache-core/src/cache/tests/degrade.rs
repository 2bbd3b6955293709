//! A full or read-only disk degrades caching, not serving (issue 17, item 5).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::*;
use crate::error::WriteFailure;
use crate::observe::{Observer, StorageEvent, StorageOperation};

/// Memory storage whose writes fail like a full disk (`ENOSPC`) while `full`,
/// and whose blob writes take `slow` per chunk (a busy disk) when set.
#[derive(Debug, Default)]
pub(super) struct FullDisk {
    inner: MemoryStorage,
    full: AtomicBool,
    slow: Mutex<Option<Duration>>,
}

impl std::fmt::Display for FullDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("full-disk")
    }
}

impl FullDisk {
    /// Makes every blob write take `delay` per chunk.
    pub(super) fn set_slow(&self, delay: Duration) {
        *self.slow.lock().unwrap() = Some(delay);
    }

    fn check(&self) -> Result<()> {
        if self.full.load(Ordering::SeqCst) {
            return Err(Error::storage(
                "full-disk",
                "cannot write",
                std::io::Error::from(std::io::ErrorKind::StorageFull),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Storage for FullDisk {
    async fn blob_stat(&self, d: &Digest) -> Result<Option<crate::storage::BlobInfo>> {
        self.inner.blob_stat(d).await
    }
    async fn blob_read(
        &self,
        d: &Digest,
        r: Option<Range<u64>>,
    ) -> Result<crate::storage::BlobRead> {
        self.inner.blob_read(d, r).await
    }
    async fn blob_write_from(&self, d: &Digest, s: Option<u64>, data: BlobSource) -> Result<u64> {
        if let Err(e) = self.check() {
            // Take a little first, like a backend that runs out of space midway.
            let _ = data.into_stream().next().await;
            return Err(e);
        }
        let slow = *self.slow.lock().unwrap();
        let data = match (slow, data) {
            (Some(delay), BlobSource::Preverified(stream)) => {
                let stream = stream
                    .into_stream()
                    .then(move |chunk| async move {
                        tokio::time::sleep(delay).await;
                        chunk
                    })
                    .boxed();
                BlobSource::Preverified(crate::storage::PreverifiedStream::new(stream))
            }
            (_, data) => data,
        };
        self.inner.blob_write_from(d, s, data).await
    }
    async fn blob_delete(&self, d: &Digest) -> Result<()> {
        self.inner.blob_delete(d).await
    }
    async fn blob_list(&self) -> Result<Vec<crate::storage::BlobInfo>> {
        self.inner.blob_list().await
    }
    async fn manifest_get(&self, d: &Digest) -> Result<Option<StoredManifest>> {
        self.inner.manifest_get(d).await
    }
    async fn manifest_put(&self, m: &StoredManifest) -> Result<()> {
        self.check()?;
        self.inner.manifest_put(m).await
    }
    async fn manifest_delete(&self, d: &Digest) -> Result<()> {
        self.inner.manifest_delete(d).await
    }
    async fn tag_get(&self, k: &TagKey) -> Result<Option<TagRecord>> {
        self.inner.tag_get(k).await
    }
    async fn tag_put(&self, k: &TagKey, r: &TagRecord) -> Result<()> {
        self.check()?;
        self.inner.tag_put(k, r).await
    }
    async fn tag_delete(&self, k: &TagKey) -> Result<()> {
        self.inner.tag_delete(k).await
    }
    async fn tag_list(&self, u: &Registry, r: &Repository) -> Result<Vec<Tag>> {
        self.inner.tag_list(u, r).await
    }
    async fn repository_list(&self) -> Result<Vec<crate::storage::RepositoryEntry>> {
        self.inner.repository_list().await
    }
}

/// Records every storage event, as a metric would count them.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<(StorageOperation, WriteFailure)>>);

impl Observer for Recorder {
    fn storage(&self, event: &StorageEvent) {
        self.0.lock().unwrap().push((event.operation, event.reason));
    }
}

impl Recorder {
    fn count(&self, operation: StorageOperation, reason: WriteFailure) -> usize {
        let events = self.0.lock().unwrap();
        events.iter().filter(|e| **e == (operation, reason)).count()
    }
}

pub(super) struct Degraded {
    pub(super) storage: Arc<FullDisk>,
    pub(super) upstream: Arc<FakeUpstream>,
    recorder: Arc<Recorder>,
    pub(super) engine: PullThrough<FullDisk, FakeUpstream>,
}

pub(super) fn degraded(options: CacheOptions) -> Degraded {
    let storage = Arc::new(FullDisk::default());
    let upstream = Arc::new(FakeUpstream::default());
    let recorder = Arc::new(Recorder::default());
    let engine = PullThrough::observed(
        Arc::clone(&storage),
        Arc::clone(&upstream),
        options,
        Arc::clone(&recorder) as _,
    );
    Degraded {
        storage,
        upstream,
        recorder,
        engine,
    }
}

#[test]
fn write_failures_are_classified_from_the_io_error() {
    let io = |e: std::io::Error| Error::storage("fs", "cannot write", e);
    assert_eq!(
        io(std::io::Error::from_raw_os_error(28)).write_failure(),
        WriteFailure::DiskFull
    );
    assert_eq!(
        io(std::io::Error::from_raw_os_error(30)).write_failure(),
        WriteFailure::ReadOnly
    );
    assert_eq!(
        io(std::io::Error::other("boom")).write_failure(),
        WriteFailure::Other
    );
}

#[tokio::test]
async fn verified_manifests_are_served_when_storing_fails_and_cached_once_space_returns() {
    let d = degraded(CacheOptions::default());
    let digest = d
        .upstream
        .add_manifest("docker.io", "library/alpine", "3", OCI_INDEX, INDEX);
    d.storage.full.store(true, Ordering::SeqCst);
    let by_digest = ManifestRef::Digest(digest.clone());
    for reference in [&by_digest, &tag("3")] {
        let served = d
            .engine
            .manifest(&hub(), &repo(), reference, &broad())
            .await
            .unwrap();
        assert_eq!(served.bytes.as_ref(), INDEX);
    }
    assert!(
        d.recorder
            .count(StorageOperation::ManifestWrite, WriteFailure::DiskFull)
            >= 2
    );
    assert_eq!(
        d.recorder
            .count(StorageOperation::TagWrite, WriteFailure::DiskFull),
        1
    );
    assert!(d
        .storage
        .inner
        .manifest_get(&digest)
        .await
        .unwrap()
        .is_none());

    // Space is back: the next request caches, with no restart.
    d.storage.full.store(false, Ordering::SeqCst);
    d.engine
        .manifest(&hub(), &repo(), &by_digest, &broad())
        .await
        .unwrap();
    assert!(d
        .storage
        .inner
        .manifest_get(&digest)
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn blobs_stream_through_a_full_disk_and_are_cached_once_space_returns() {
    let d = degraded(CacheOptions::default());
    let data = pattern(50_000);
    let digest = d.upstream.add_blob(BlobScript::new(&data));
    d.storage.full.store(true, Ordering::SeqCst);
    let response = d.engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
    assert!(collect(response.stream).await.unwrap() == data);
    wait_fills(&d.engine).await;
    assert_eq!(
        d.recorder
            .count(StorageOperation::BlobWrite, WriteFailure::DiskFull),
        1
    );
    assert!(d.storage.inner.blob_stat(&digest).await.unwrap().is_none());

    d.storage.full.store(false, Ordering::SeqCst);
    let response = d.engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
    assert!(collect(response.stream).await.unwrap() == data);
    wait_fills(&d.engine).await;
    assert!(d.storage.inner.blob_stat(&digest).await.unwrap().is_some());
    assert_eq!(d.upstream.calls().blob_get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_served_when_the_spool_cannot_be_written() {
    // A spool directory that does not exist: every spool write fails, as on a
    // full or read-only disk. A 4 KiB window against a 64 KiB blob.
    let missing = std::env::temp_dir().join("oci-cache-no-such-spool-dir/nested");
    let d = degraded(
        CacheOptions::default()
            .with_fill_window(4096)
            .with_spool_dir(&missing),
    );
    let data = pattern(64 * 1024);
    let gate = Arc::new(Semaphore::new(0));
    let digest = d
        .upstream
        .add_blob(BlobScript::new(&data).chunk(1024).gated(&gate));
    let first = d.engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
    let mut first_stream = first.stream;
    gate.add_permits(40);
    let mut early = Vec::new();
    while early.len() < 40 * 1024 {
        early.extend_from_slice(&first_stream.next().await.unwrap().unwrap());
    }
    // Most of what a late joiner needs has left memory with nowhere to go.
    let late = d.engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
    assert_eq!(late.outcome, CacheOutcome::Coalesced);
    gate.add_permits(1000);
    let (rest, late_bytes) = tokio::join!(collect(first_stream), collect(late.stream));
    early.extend_from_slice(&rest.unwrap());
    assert!(early == data);
    assert!(late_bytes.unwrap() == data);
    assert!(
        d.recorder
            .count(StorageOperation::Spool, WriteFailure::Other)
            >= 1
    );
    // The late joiner (and the first client, if it fell behind the window)
    // fetched its own copy; the fill still stored the blob.
    assert!((2..=3).contains(&d.upstream.calls().blob_get()));
    wait_fills(&d.engine).await;
    assert!(d.storage.inner.blob_stat(&digest).await.unwrap().is_some());
}

async fn wait_fills(engine: &PullThrough<FullDisk, FakeUpstream>) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while engine.blob_fills_in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("fills did not settle");
}
