//! A full or read-only disk degrades caching, not serving (issue 17, item 5).

use std::sync::Mutex;

use super::*;
use crate::error::WriteFailure;
use crate::observe::{Observer, StorageEvent, StorageOperation};
use crate::testing::{DiskState, FaultyStorage};

/// Records every storage event, as a metric would count them.
#[derive(Debug, Default)]
pub(super) struct Recorder(Mutex<Vec<(StorageOperation, WriteFailure)>>);

impl Observer for Recorder {
    fn storage(&self, event: &StorageEvent) {
        self.0.lock().unwrap().push((event.operation, event.reason));
    }
}

impl Recorder {
    pub(super) fn count(&self, operation: StorageOperation, reason: WriteFailure) -> usize {
        let events = self.0.lock().unwrap();
        events.iter().filter(|e| **e == (operation, reason)).count()
    }
}

pub(super) struct Degraded<S = FaultyStorage> {
    pub(super) storage: Arc<S>,
    pub(super) upstream: Arc<FakeUpstream>,
    pub(super) recorder: Arc<Recorder>,
    pub(super) engine: PullThrough<S, FakeUpstream>,
}

pub(super) fn degraded(options: CacheOptions) -> Degraded {
    observed_over(Arc::new(FaultyStorage::new()), options)
}

/// An engine over `storage` and a fake upstream, its storage events recorded.
pub(super) fn observed_over<S: crate::storage::Storage>(
    storage: Arc<S>,
    options: CacheOptions,
) -> Degraded<S> {
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
    d.storage.set_state(DiskState::Full);
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
        .inner()
        .manifest_get(&digest)
        .await
        .unwrap()
        .is_none());

    // Space is back: the next request caches, with no restart.
    d.storage.set_state(DiskState::Healthy);
    d.engine
        .manifest(&hub(), &repo(), &by_digest, &broad())
        .await
        .unwrap();
    assert!(d
        .storage
        .inner()
        .manifest_get(&digest)
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn a_read_only_disk_is_reported_as_such() {
    let d = degraded(CacheOptions::default());
    let digest = d
        .upstream
        .add_manifest("docker.io", "library/alpine", "3", OCI_INDEX, INDEX);
    d.storage.set_state(DiskState::ReadOnly);
    let served = d
        .engine
        .manifest(&hub(), &repo(), &tag("3"), &broad())
        .await
        .unwrap();
    assert_eq!(served.digest, digest);
    assert_eq!(
        d.recorder
            .count(StorageOperation::ManifestWrite, WriteFailure::ReadOnly),
        1
    );
    assert_eq!(
        d.recorder
            .count(StorageOperation::TagWrite, WriteFailure::ReadOnly),
        1
    );
}

#[tokio::test]
async fn blobs_stream_through_a_full_disk_and_are_cached_once_space_returns() {
    let d = degraded(CacheOptions::default());
    let data = pattern(50_000);
    let digest = d.upstream.add_blob(BlobScript::new(&data));
    d.storage.set_state(DiskState::Full);
    let response = d.engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
    assert!(collect(response.stream).await.unwrap() == data);
    wait_fills(&d.engine).await;
    assert_eq!(
        d.recorder
            .count(StorageOperation::BlobWrite, WriteFailure::DiskFull),
        1
    );
    assert!(d
        .storage
        .inner()
        .blob_stat(&digest)
        .await
        .unwrap()
        .is_none());

    d.storage.set_state(DiskState::Healthy);
    let response = d.engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
    assert!(collect(response.stream).await.unwrap() == data);
    wait_fills(&d.engine).await;
    assert!(d
        .storage
        .inner()
        .blob_stat(&digest)
        .await
        .unwrap()
        .is_some());
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
    gate.add_permits(40);
    // The fill gets 40 KiB in: most of it leaves memory with nowhere to go.
    // (The first client is not read yet: once behind, it too needs its own
    // copy, whose chunks pass the same gate.)
    tokio::time::timeout(Duration::from_secs(10), async {
        while d
            .recorder
            .count(StorageOperation::Spool, WriteFailure::Other)
            == 0
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the spool failure is reported");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = d.engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
    assert_eq!(late.outcome, CacheOutcome::Coalesced);
    gate.add_permits(1000);
    let (first_bytes, late_bytes) = tokio::join!(collect(first.stream), collect(late.stream));
    assert!(first_bytes.unwrap() == data);
    assert!(late_bytes.unwrap() == data);
    assert!(
        d.recorder
            .count(StorageOperation::Spool, WriteFailure::Other)
            >= 1
    );
    // Both clients fell behind the window and fetched their own copy; the
    // fill still stored the blob.
    assert_eq!(d.upstream.calls().blob_get(), 3);
    wait_fills(&d.engine).await;
    assert!(d
        .storage
        .inner()
        .blob_stat(&digest)
        .await
        .unwrap()
        .is_some());
}

async fn wait_fills<S: crate::storage::Storage + ?Sized>(engine: &PullThrough<S, FakeUpstream>) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while engine.blob_fills_in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("fills did not settle");
}

/// A 2 MiB tmpfs, unmounted on drop; `None` (and a message) when not root or
/// mounting fails.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    #[allow(clippy::print_stderr)] // The test's skip notice.
    fn mount() -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: mounting a tmpfs needs root (mount -t tmpfs)");
            return None;
        }
        Some(SmallDisk { dir })
    }
}

impl SmallDisk {
    /// An engine over `FsStorage` on this disk, spooling there too.
    async fn engine(&self) -> Degraded<crate::storage::FsStorage> {
        let root = self.dir.path().join("store");
        let storage = Arc::new(crate::storage::FsStorage::open(&root).await.unwrap());
        let options = CacheOptions::default()
            .with_fill_window(64 * 1024)
            .with_spool_dir(self.dir.path());
        observed_over(storage, options)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_full_disk_degrades_to_streaming_and_says_disk_full() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let Degraded {
        storage,
        upstream,
        recorder,
        engine,
    } = disk.engine().await;
    // 3 MiB into 2 MiB: neither the staging file nor the spool fits.
    let data = pattern(3 * 1024 * 1024);
    let digest = upstream.add_blob(BlobScript::new(&data).chunk(64 * 1024));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let engine = engine.clone();
            let digest = digest.clone();
            tokio::spawn(async move {
                let response = engine.blob(&hub(), &repo(), &digest, None).await?;
                collect(response.stream).await
            })
        })
        .collect();
    for client in clients {
        assert!(client.await.unwrap().unwrap() == data);
    }
    wait_fills(&engine).await;
    let full = recorder.count(StorageOperation::BlobWrite, WriteFailure::DiskFull)
        + recorder.count(StorageOperation::Spool, WriteFailure::DiskFull);
    assert!(full >= 1, "{:?}", recorder.0.lock().unwrap());
    assert!(storage.blob_stat(&digest).await.unwrap().is_none());

    // Space comes back (a small blob fits): caching resumes by itself.
    let small = pattern(100_000);
    let small_digest = upstream.add_blob(BlobScript::new(&small));
    let response = engine
        .blob(&hub(), &repo(), &small_digest, None)
        .await
        .unwrap();
    assert!(collect(response.stream).await.unwrap() == small);
    tokio::time::timeout(Duration::from_secs(10), async {
        while storage.blob_stat(&small_digest).await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the small blob is cached");
}

/// Before, a fill wrote the spool and storage's staging file side by side, so
/// a 1.5 MiB blob needed 3 MiB free and was never cached on a 2 MiB disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_blob_needs_its_size_free_not_twice_that() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let Degraded {
        storage,
        upstream,
        recorder,
        engine,
    } = disk.engine().await;
    let data = pattern(1536 * 1024);
    let digest = upstream.add_blob(BlobScript::new(&data).chunk(64 * 1024));
    let response = engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
    assert!(collect(response.stream).await.unwrap() == data);
    wait_fills(&engine).await;
    let stored = storage.blob_stat(&digest).await.unwrap();
    assert_eq!(
        stored.map(|info| info.size),
        Some(data.len() as u64),
        "not cached; storage events: {:?}",
        recorder.0.lock().unwrap()
    );
    // One fetch: a client that fell behind the fill's window read from the
    // staging file (before, with no room for a spool, it fetched the rest
    // on its own). Served from the disk now.
    let fetched = upstream.calls().blob_get();
    assert_eq!(fetched, 1);
    let again = engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
    assert!(collect(again.stream).await.unwrap() == data);
    assert_eq!(upstream.calls().blob_get(), fetched);
}
