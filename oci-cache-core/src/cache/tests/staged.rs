//! Late joiners of a fill on the filesystem read the bytes that left the
//! window from storage's own staging file: one disk write per cold byte.

use super::degrade::{observed_over, Degraded};
use super::*;
use crate::error::WriteFailure;
use crate::observe::StorageOperation;
use crate::storage::FsStorage;

/// A 4 KiB window over `FsStorage`, with a spool directory that does not
/// exist: any attempt to spool is reported (and its readers would have to
/// fetch their own copy), so a fill that never touches it shows in the counts.
async fn fs_engine(root: &std::path::Path) -> Degraded<FsStorage> {
    let missing = root.join("no-such-spool-dir/nested");
    let storage = Arc::new(FsStorage::open(root.join("store")).await.unwrap());
    let options = CacheOptions::default()
        .with_fill_window(4096)
        .with_spool_dir(missing);
    observed_over(storage, options)
}

fn staging_files(root: &std::path::Path) -> usize {
    std::fs::read_dir(root.join("store/_staging"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_reads_what_left_the_window_from_the_staging_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = fs_engine(dir.path()).await;
    let data = pattern(1024 * 1024 + 7);
    let gate = Arc::new(Semaphore::new(0));
    let digest = d
        .upstream
        .add_blob(BlobScript::new(&data).chunk(16 * 1024).gated(&gate));

    let first = d.engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
    let mut first_stream = first.stream;
    // 40 chunks (640 KiB) in: all but the window left memory, and the
    // storage write has staged them (it writes in 256 KiB batches).
    gate.add_permits(40);
    let mut early = Vec::new();
    while early.len() < 40 * 16 * 1024 {
        early.extend_from_slice(&first_stream.next().await.unwrap().unwrap());
    }
    assert_eq!(staging_files(dir.path()), 1);

    let late = d.engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
    assert_eq!(late.outcome, CacheOutcome::Coalesced);
    let late_task = tokio::spawn(collect(late.stream));
    gate.add_permits(1000);
    early.extend(collect(first_stream).await.unwrap());
    assert!(early == data);
    assert!(late_task.await.unwrap().unwrap() == data);
    // One upstream fetch, no spool tried: the late joiner's first 640 KiB
    // came from the staging file (the old spool would have failed here and
    // sent it to fetch its own copy).
    assert_eq!(d.upstream.calls().blob_get(), 1);
    assert_eq!(
        d.recorder
            .count(StorageOperation::Spool, WriteFailure::Other),
        0
    );
    fills_settled(&d.engine).await;
    let stored = d.storage.blob_read(&digest, None).await.unwrap();
    assert!(collect(stored.stream).await.unwrap() == data);
    assert_eq!(staging_files(dir.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_fails_verification_leaves_no_staging_file_and_no_blob() {
    let dir = tempfile::tempdir().unwrap();
    let d = fs_engine(dir.path()).await;
    let data = pattern(1024 * 1024);
    let digest = Digest::sha256_of(&data);
    let lie = vec![7u8; data.len()];
    let gate = Arc::new(Semaphore::new(0));
    d.upstream
        .add_blob_as(&digest, BlobScript::new(&lie).chunk(16 * 1024).gated(&gate));

    let first = d.engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
    let mut first_stream = first.stream;
    gate.add_permits(40);
    let mut early = 0;
    while early < 40 * 16 * 1024 {
        early += first_stream.next().await.unwrap().unwrap().len();
    }
    // A late joiner reads the staged (unverified) prefix, but never the end.
    let late = d.engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
    gate.add_permits(1000);
    for stream in [first_stream, late.stream] {
        let error = collect(stream)
            .await
            .expect_err("never a complete response");
        assert!(matches!(error, Error::DigestMismatch { .. }), "{error}");
    }
    fills_settled(&d.engine).await;
    assert!(d.storage.blob_stat(&digest).await.unwrap().is_none());
    assert_eq!(staging_files(dir.path()), 0);
    assert_eq!(
        d.recorder
            .count(StorageOperation::Spool, WriteFailure::Other),
        0
    );
}

/// Where storage cannot be read before the commit (memory here, S3 alike)
/// the fill still spools: the same late joiner is served from the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_without_a_readable_staging_still_spools() {
    let spool = tempfile::tempdir().unwrap();
    let options = CacheOptions::default()
        .with_fill_window(4096)
        .with_spool_dir(spool.path().join("missing"));
    let d = observed_over(Arc::new(MemoryStorage::new()), options);
    let data = pattern(256 * 1024);
    let digest = d.upstream.add_blob(BlobScript::new(&data).chunk(16 * 1024));
    let response = d.engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
    // The client reads along, but the spool was tried (and failed here).
    assert!(collect(response.stream).await.unwrap() == data);
    fills_settled(&d.engine).await;
    assert_eq!(
        d.recorder
            .count(StorageOperation::Spool, WriteFailure::Other),
        1
    );
}

/// `FsStorage` that does not lend its staging file, as every backend did
/// before: its fills spool (the second write of each cold byte).
#[derive(Debug)]
struct Unlent(FsStorage);

impl std::fmt::Display for Unlent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (staging not lent)", self.0)
    }
}

#[async_trait]
impl Storage for Unlent {
    async fn blob_stat(&self, d: &Digest) -> Result<Option<crate::storage::BlobInfo>> {
        self.0.blob_stat(d).await
    }
    async fn blob_read(
        &self,
        d: &Digest,
        r: Option<std::ops::Range<u64>>,
    ) -> Result<crate::storage::BlobRead> {
        self.0.blob_read(d, r).await
    }
    async fn blob_write_from(&self, d: &Digest, s: Option<u64>, data: BlobSource) -> Result<u64> {
        // Taking the stream out drops the request for the staged bytes.
        let data = match data {
            BlobSource::Preverified(stream) => BlobSource::Preverified(
                crate::storage::PreverifiedStream::new(stream.into_stream()),
            ),
            unchecked => unchecked,
        };
        self.0.blob_write_from(d, s, data).await
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

/// Process CPU seconds so far (user + system, all threads).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// One cold fill of `upstream`'s blob into `storage` for a client from the
/// start and a late joiner a quarter in (clients only count bytes); the
/// process CPU seconds and wall seconds it took.
async fn timed_fill<S: Storage>(
    storage: S,
    upstream: Arc<super::memory::GeneratedUpstream>,
    spool_dir: &std::path::Path,
) -> (f64, f64) {
    let (digest, size) = (upstream.digest.clone(), upstream.size);
    let options = CacheOptions::default().with_spool_dir(spool_dir);
    let engine = PullThrough::new(Arc::new(storage), upstream, options);
    let (cpu, started) = (cpu_seconds(), std::time::Instant::now());
    let response = engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
    let mut first = response.stream;
    let mut read = 0u64;
    let mut late = None;
    while let Some(chunk) = first.next().await {
        read += chunk.unwrap().len() as u64;
        if late.is_none() && read >= size / 4 {
            let response = engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
            late = Some(tokio::spawn(async move {
                let mut stream = response.stream;
                let mut n = 0u64;
                while let Some(chunk) = stream.next().await {
                    n += chunk.unwrap().len() as u64;
                }
                n
            }));
        }
    }
    assert_eq!(read, size);
    assert_eq!(late.unwrap().await.unwrap(), size);
    fills_settled(&engine).await;
    (cpu_seconds() - cpu, started.elapsed().as_secs_f64())
}

/// CPU per MiB of a cold fill on `FsStorage` (durable), late joiners reading
/// the staging file, against the same fill spooling ([`Unlent`]), in
/// alternating runs. Run alone, in release: `OCI_CACHE_FILL_MIB=256 cargo
/// test --release -p oci-cache-core --lib fill_cpu -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run alone in release mode"]
#[allow(clippy::print_stderr)]
async fn fill_cpu_per_mib() {
    let mib: u64 = std::env::var("OCI_CACHE_FILL_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let upstream = Arc::new(super::memory::GeneratedUpstream::new(mib * 1024 * 1024));
    for run in 1..=3 {
        for lent in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let storage = FsStorage::open(dir.path().join("store")).await.unwrap();
            let upstream = Arc::clone(&upstream);
            let (cpu, wall) = if lent {
                timed_fill(storage, upstream, dir.path()).await
            } else {
                timed_fill(Unlent(storage), upstream, dir.path()).await
            };
            let how = if lent { "staging file" } else { "spool" };
            eprintln!(
                "run {run}, late joiner reads the {how}: {:.2} ms CPU per MiB, {:.0} MiB/s wall",
                cpu * 1000.0 / mib as f64,
                mib as f64 / wall
            );
        }
    }
}
