//! Filesystem-only behaviour: layout, leftovers, cancellation, a full disk.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::*;
use crate::storage::conformance::{self, stream_of, unique_bytes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FsStorage::open(dir.path()).await.unwrap();
    conformance::run_all(&storage).await;
    // Nothing left behind in staging by any of the failure cases.
    assert_eq!(
        std::fs::read_dir(dir.path().join("_staging"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn layout_is_inspectable() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FsStorage::open(dir.path()).await.unwrap();
    let bytes = Bytes::from_static(b"hello");
    let digest = Digest::sha256_of(&bytes);
    storage
        .blob_write(&digest, Some(5), stream_of(bytes.clone(), 2))
        .await
        .unwrap();
    let on_disk = dir
        .path()
        .join("blobs/sha256")
        .join(&digest.hex()[..2])
        .join(digest.hex());
    assert_eq!(std::fs::read(on_disk).unwrap(), b"hello");
}

/// A staging file under `root` last written an hour ago: what an
/// interrupted write leaves.
fn stale_staging_file(root: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = root.join("_staging").join(name);
    std::fs::write(&path, b"half a blob").unwrap();
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    path
}

#[tokio::test]
async fn open_removes_staging_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    drop(FsStorage::open(dir.path()).await.unwrap());
    let leftover = stale_staging_file(dir.path(), "interrupted");
    // Another process's write in progress (fresh mtime) is left alone.
    let in_use = dir.path().join("_staging/in-use");
    std::fs::write(&in_use, b"being written").unwrap();
    let storage = FsStorage::open(dir.path()).await.unwrap();
    assert!(!leftover.exists());
    assert!(in_use.exists());
    let listed: Vec<BlobInfo> = storage.blob_list().try_collect().await.unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}

/// A crash of another process on the same root (an `import` beside the
/// server) leaves staging files while this one serves: the periodic sweep
/// removes them without a restart, and leaves writes in progress alone.
#[tokio::test]
async fn sweeping_while_open_removes_stale_staging_files() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FsStorage::open(dir.path()).await.unwrap();
    let leftover = stale_staging_file(dir.path(), "crashed");
    let in_use = dir.path().join("_staging/in-use");
    std::fs::write(&in_use, b"being written").unwrap();
    assert_eq!(storage.sweep_leftovers().await.unwrap(), 1);
    assert!(!leftover.exists());
    assert!(in_use.exists());
    assert_eq!(
        crate::storage::MemoryStorage::new()
            .sweep_leftovers()
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn cancelled_write_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FsStorage::open(dir.path()).await.unwrap();
    let bytes = unique_bytes(4 * WRITE_BATCH);
    let digest = Digest::sha256_of(&bytes);
    let (mut tx, rx) = futures::channel::mpsc::channel(1);
    let write = storage.blob_write(&digest, None, rx.boxed());
    let feed = async {
        use futures::SinkExt;
        tx.send(Ok(bytes.slice(..2 * WRITE_BATCH))).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // The feeder finishes first; `select` then drops the unfinished write.
    tokio::select! {
        _ = write => panic!("the write cannot finish without the rest of the stream"),
        () = feed => {}
    }
    assert!(storage.blob_stat(&digest).await.unwrap().is_none());
    assert_eq!(
        std::fs::read_dir(dir.path().join("_staging"))
            .unwrap()
            .count(),
        0
    );
}

/// Always runs: a write quota at the file layer (the same `write_all` real
/// writes go through) fails with `StorageFull`, as ENOSPC would.
#[tokio::test]
async fn disk_full_is_a_clear_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FsStorage::from_inner(Inner {
        root: dir.path().to_owned(),
        options: FsOptions::default(),
        quota: Some(Arc::new(AtomicU64::new(3 * WRITE_BATCH as u64 + 5))),
    })
    .await
    .unwrap();
    let bytes = unique_bytes(8 * WRITE_BATCH);
    let digest = Digest::sha256_of(&bytes);
    let err = storage
        .blob_write(
            &digest,
            Some(bytes.len() as u64),
            stream_of(bytes, 64 * 1024),
        )
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("the disk is full"), "{message}");
    assert!(message.contains(digest.as_str()), "{message}");
    assert!(storage.blob_stat(&digest).await.unwrap().is_none());
    assert_eq!(
        std::fs::read_dir(dir.path().join("_staging"))
            .unwrap()
            .count(),
        0
    );
}

/// A preverified write lends its staging file before the commit: bytes
/// counted as written are readable through the descriptor while the write
/// goes on; a failed verdict removes the file (nothing under `blobs/`,
/// nothing in `_staging`) though the descriptor still reads what it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_bytes_are_readable_before_the_commit_and_never_a_blob() {
    use crate::storage::{BlobSource, PreverifiedStream};

    let dir = tempfile::tempdir().unwrap();
    let storage = FsStorage::open(dir.path()).await.unwrap();
    let bytes = unique_bytes(3 * WRITE_BATCH);
    let digest = Digest::sha256_of(&bytes);
    let (chunks, rx) = tokio::sync::mpsc::channel::<crate::Result<Bytes>>(4);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed();
    let (tap, staged) = tokio::sync::oneshot::channel();
    let source = BlobSource::Preverified(PreverifiedStream::new(stream).staged_to(tap));
    let write = tokio::spawn({
        let storage = storage.clone();
        let digest = digest.clone();
        async move { storage.blob_write_from(&digest, None, source).await }
    });
    let staged = staged.await.expect("the filesystem lends its staging file");
    // Two batches in: the first is written while the write waits for more.
    for piece in bytes.slice(..2 * WRITE_BATCH).chunks(64 * 1024) {
        chunks
            .send(Ok(Bytes::copy_from_slice(piece)))
            .await
            .unwrap();
    }
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while staged.written() < WRITE_BATCH as u64 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the first batch is staged");
    let early = staged.written();
    let read = crate::file_io::read_blocking(staged.file(), 0, usize::try_from(early).unwrap());
    assert!(read.unwrap() == bytes.slice(..usize::try_from(early).unwrap()));
    assert!(!write.is_finished());
    assert_eq!(
        std::fs::read_dir(dir.path().join("_staging"))
            .unwrap()
            .count(),
        1
    );

    // The producer's verdict: a mismatch.
    chunks
        .send(Err(Error::DigestMismatch {
            expected: digest.clone(),
            actual: Digest::sha256_of(b"other"),
        }))
        .await
        .unwrap();
    assert!(write.await.unwrap().is_err());
    assert!(storage.blob_stat(&digest).await.unwrap().is_none());
    assert_eq!(
        std::fs::read_dir(dir.path().join("_staging"))
            .unwrap()
            .count(),
        0
    );
    let kept = crate::file_io::read_blocking(staged.file(), 0, usize::try_from(early).unwrap());
    assert!(kept.unwrap() == bytes.slice(..usize::try_from(early).unwrap()));
}
