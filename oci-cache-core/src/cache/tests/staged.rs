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
