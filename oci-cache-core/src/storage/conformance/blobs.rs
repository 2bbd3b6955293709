//! Blob checks: round trips, ranges, verification, atomicity, listing.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};

use super::{assert_absent, collect, list_blobs, read_all, stream_of, unique_bytes, write};
use crate::digest::{Digest, DigestAlgorithm, DigestHasher};
use crate::storage::{BlobSource, PreverifiedStream, StagedBytes, Storage};
use crate::Error;

/// Write, stat and read back a blob; sha512 digests work too.
pub async fn blob_round_trip(storage: &dyn Storage) {
    let bytes = unique_bytes(100_000);
    let digest = write(storage, &bytes, 4096).await;
    let info = storage.blob_stat(&digest).await.unwrap().expect("stat");
    assert_eq!((info.digest.clone(), info.size), (digest.clone(), 100_000));
    let read = storage.blob_read(&digest, None).await.unwrap();
    assert_eq!((read.size, read.range.clone()), (100_000, 0..100_000));
    assert_eq!(collect(read.stream).await.unwrap(), bytes);

    // Without an expected size, and with sha512.
    let bytes = unique_bytes(3000);
    let digest = Digest::compute(DigestAlgorithm::Sha512, &bytes);
    let written = storage
        .blob_write(&digest, None, stream_of(bytes.clone(), 1000))
        .await
        .unwrap();
    assert_eq!(written, 3000);
    assert_eq!(read_all(storage, &digest, None).await, bytes);
}

/// First byte, last byte, a middle slice, an end past the size, a start past the end.
pub async fn blob_ranges(storage: &dyn Storage) {
    let bytes = unique_bytes(10_000);
    let digest = write(storage, &bytes, 3333).await;
    assert_eq!(
        read_all(storage, &digest, Some(0..1)).await,
        bytes.slice(0..1)
    );
    assert_eq!(
        read_all(storage, &digest, Some(9_999..10_000)).await,
        bytes.slice(9_999..)
    );
    assert_eq!(
        read_all(storage, &digest, Some(1234..5678)).await,
        bytes.slice(1234..5678)
    );
    let clamped = storage
        .blob_read(&digest, Some(9_000..20_000))
        .await
        .unwrap();
    assert_eq!(
        (clamped.size, clamped.range.clone()),
        (10_000, 9_000..10_000)
    );
    assert_eq!(collect(clamped.stream).await.unwrap(), bytes.slice(9_000..));
    for bad in [10_000..10_001, 20_000..30_000] {
        match storage.blob_read(&digest, Some(bad.clone())).await {
            Err(Error::RangeNotSatisfiable { start, size }) => {
                assert_eq!((start, size), (bad.start, 10_000));
            }
            other => panic!("{storage}: range {bad:?} gave {other:?}, not RangeNotSatisfiable"),
        }
    }
}

/// A 0-byte blob is stored, listed and read like any other.
pub async fn empty_blob(storage: &dyn Storage) {
    let digest = Digest::sha256_of(b"");
    let written = storage
        .blob_write(&digest, Some(0), futures::stream::empty().boxed())
        .await
        .unwrap();
    assert_eq!(written, 0);
    assert_eq!(storage.blob_stat(&digest).await.unwrap().unwrap().size, 0);
    let read = storage.blob_read(&digest, None).await.unwrap();
    assert_eq!((read.size, read.range.clone()), (0, 0..0));
    assert!(collect(read.stream).await.unwrap().is_empty());
    assert!(matches!(
        storage.blob_read(&digest, Some(0..1)).await,
        Err(Error::RangeNotSatisfiable { start: 0, size: 0 })
    ));
}

/// Bytes that hash to something else are rejected and leave nothing behind.
pub async fn blob_digest_mismatch_leaves_nothing(storage: &dyn Storage) {
    let claimed = Digest::sha256_of(&unique_bytes(64));
    let bytes = unique_bytes(50_000);
    let err = storage
        .blob_write(&claimed, Some(50_000), stream_of(bytes.clone(), 7000))
        .await
        .unwrap_err();
    match &err {
        Error::DigestMismatch { expected, actual } => {
            assert_eq!(expected, &claimed);
            assert_eq!(actual, &Digest::sha256_of(&bytes));
        }
        other => panic!("{storage}: mismatched write gave {other}"),
    }
    assert_absent(storage, &claimed, "after a digest mismatch").await;
    assert_absent(
        storage,
        &Digest::sha256_of(&bytes),
        "content stored under its real digest",
    )
    .await;
}

/// A stream shorter or longer than the expected size is rejected, leaving nothing.
pub async fn blob_size_mismatch_leaves_nothing(storage: &dyn Storage) {
    let bytes = unique_bytes(20_000);
    let digest = Digest::sha256_of(&bytes);
    // Short: the stream ends early.
    let err = storage
        .blob_write(
            &digest,
            Some(20_000),
            stream_of(bytes.slice(..15_000), 4096),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SizeMismatch {
                expected: 20_000,
                actual: 15_000,
                ..
            }
        ),
        "{storage}: short stream gave {err}"
    );
    assert_absent(storage, &digest, "after a short stream").await;
    // Short without an expected size: caught by the digest.
    let err = storage
        .blob_write(&digest, None, stream_of(bytes.slice(..15_000), 4096))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::DigestMismatch { .. }),
        "{storage}: short stream gave {err}"
    );
    assert_absent(storage, &digest, "after a short stream without size").await;
    // Long: the correct bytes but a smaller announced size.
    let err = storage
        .blob_write(&digest, Some(10_000), stream_of(bytes.clone(), 4096))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SizeMismatch {
                expected: 10_000,
                ..
            }
        ),
        "{storage}: long stream gave {err}"
    );
    assert_absent(storage, &digest, "after a long stream").await;
}

/// A source stream that fails part way (a dropped upstream) leaves nothing.
pub async fn blob_truncated_stream_leaves_nothing(storage: &dyn Storage) {
    let bytes = unique_bytes(8 * 1024 * 1024);
    let digest = Digest::sha256_of(&bytes);
    let failing = stream_of(bytes.slice(..6 * 1024 * 1024), 256 * 1024)
        .chain(futures::stream::once(async {
            Err(Error::storage(
                "conformance",
                "upstream connection reset",
                std::io::Error::from(std::io::ErrorKind::ConnectionReset),
            ))
        }))
        .boxed();
    let err = storage
        .blob_write(&digest, Some(bytes.len() as u64), failing)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("upstream connection reset"),
        "{storage}: the source error must come back, got {err}"
    );
    assert_absent(storage, &digest, "after a failed source stream").await;
    // The same digest can still be written afterwards.
    write(storage, &bytes, 1024 * 1024).await;
    assert_eq!(read_all(storage, &digest, None).await, bytes);
}

/// A preverified write (the engine's fill) stores what it is given, still
/// checks the size, and commits nothing when the producer's verdict is an
/// error, even for bytes that would have matched.
pub async fn blob_preverified_write(storage: &dyn Storage) {
    let bytes = unique_bytes(300_000);
    let digest = Digest::sha256_of(&bytes);
    let preverified = |stream| BlobSource::Preverified(PreverifiedStream::new(stream));

    // The producer's verdict is an error after the last byte: nothing stored.
    let failing = stream_of(bytes.clone(), 65_536)
        .chain(futures::stream::once(async {
            Err(Error::DigestMismatch {
                expected: Digest::sha256_of(b"other"),
                actual: Digest::sha256_of(b"bytes"),
            })
        }))
        .boxed();
    let err = storage
        .blob_write_from(&digest, Some(300_000), preverified(failing))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::DigestMismatch { .. }),
        "{storage}: the producer's verdict must come back, got {err}"
    );
    assert_absent(storage, &digest, "after a preverified stream that failed").await;

    // Fewer bytes than announced: refused on the size alone.
    let short = stream_of(bytes.slice(..200_000), 65_536);
    let err = storage
        .blob_write_from(&digest, Some(300_000), preverified(short))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SizeMismatch {
                expected: 300_000,
                actual: 200_000,
                ..
            }
        ),
        "{storage}: a short preverified stream gave {err}"
    );
    assert_absent(storage, &digest, "after a short preverified stream").await;

    let written = storage
        .blob_write_from(
            &digest,
            Some(300_000),
            preverified(stream_of(bytes.clone(), 65_536)),
        )
        .await
        .unwrap_or_else(|e| panic!("{storage}: preverified write of {digest}: {e}"));
    assert_eq!(written, 300_000);
    assert_eq!(read_all(storage, &digest, None).await, bytes);
}

/// While a write is half done, readers see nothing; once it commits, the whole blob.
pub async fn blob_write_is_invisible_until_complete(storage: &dyn Storage) {
    let bytes = unique_bytes(6 * 1024 * 1024 + 17);
    let digest = Digest::sha256_of(&bytes);
    let (mut tx, rx) = futures::channel::mpsc::channel::<crate::Result<Bytes>>(1);
    let writer = storage.blob_write(&digest, Some(bytes.len() as u64), rx.boxed());
    let feeder = async {
        let half = bytes.len() / 2;
        for chunk in [bytes.slice(..half / 2), bytes.slice(half / 2..half)] {
            tx.send(Ok(chunk)).await.unwrap();
        }
        // Let the writer drain what it was given.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_absent(storage, &digest, "while the write is in progress").await;
        tx.send(Ok(bytes.slice(half..))).await.unwrap();
        tx.close_channel();
    };
    let (written, ()) = futures::join!(writer, feeder);
    assert_eq!(written.unwrap(), bytes.len() as u64);
    assert_eq!(read_all(storage, &digest, None).await, bytes);
}

/// Several writers of the same digest at once all succeed, and the blob is intact.
pub async fn blob_concurrent_same_digest_writers(storage: &dyn Storage) {
    let bytes = unique_bytes(3 * 1024 * 1024 + 5);
    let digest = Digest::sha256_of(&bytes);
    let writers = (0..4).map(|i| {
        storage.blob_write(
            &digest,
            Some(bytes.len() as u64),
            stream_of(bytes.clone(), 64 * 1024 + i),
        )
    });
    for result in futures::future::join_all(writers).await {
        assert_eq!(result.unwrap(), bytes.len() as u64);
    }
    assert_eq!(read_all(storage, &digest, None).await, bytes);
    let listed = list_blobs(storage).await;
    assert_eq!(
        listed.iter().filter(|info| info.digest == digest).count(),
        1,
        "{storage}: one blob listed after concurrent writes"
    );
}

/// Writing a digest that exists succeeds and leaves it as it was.
pub async fn blob_rewrite_is_idempotent(storage: &dyn Storage) {
    let bytes = unique_bytes(1000);
    let digest = write(storage, &bytes, 100).await;
    let again = storage
        .blob_write(&digest, None, stream_of(bytes.clone(), 999))
        .await
        .unwrap();
    assert_eq!(again, 1000);
    // A wrong rewrite fails and does not damage the stored copy.
    assert!(storage
        .blob_write(&digest, None, stream_of(unique_bytes(1000), 100))
        .await
        .unwrap_err()
        .is_verification_failure());
    assert_eq!(read_all(storage, &digest, None).await, bytes);
}

/// Listing shows size and access time; delete removes, and deleting twice is fine.
pub async fn blob_list_and_delete(storage: &dyn Storage) {
    let before = SystemTime::now() - Duration::from_secs(5);
    let a = unique_bytes(123);
    let b = unique_bytes(4567);
    let da = write(storage, &a, 50).await;
    let db = write(storage, &b, 1000).await;
    let listed = list_blobs(storage).await;
    for (digest, size) in [(&da, 123), (&db, 4567)] {
        let info = listed
            .iter()
            .find(|info| &info.digest == digest)
            .unwrap_or_else(|| panic!("{storage}: {digest} not listed"));
        assert_eq!(info.size, size);
        if let Some(at) = info.last_access {
            assert!(at >= before, "{storage}: last access {at:?} is too old");
        }
    }
    storage.blob_delete(&da).await.unwrap();
    assert_absent(storage, &da, "after delete").await;
    storage.blob_delete(&da).await.unwrap();
    assert_eq!(read_all(storage, &db, None).await, b);
    storage.blob_delete(&db).await.unwrap();
    assert_absent(storage, &db, "after delete").await;
}

/// A blob far larger than any buffer, streamed in and out, hashing on the way back.
pub async fn large_blob(storage: &dyn Storage) {
    const SIZE: usize = 40 * 1024 * 1024;
    let bytes = unique_bytes(SIZE);
    let digest = write(storage, &bytes, 1024 * 1024 - 1).await;
    let read = storage.blob_read(&digest, None).await.unwrap();
    assert_eq!(read.size, SIZE as u64);
    let mut hasher = DigestHasher::new(DigestAlgorithm::Sha256);
    let mut seen = 0;
    let mut stream = read.stream;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        seen += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(seen, SIZE);
    assert_eq!(hasher.finish(), digest);
    let tail = read_range_len(storage, &digest, (SIZE - 10) as u64..u64::MAX).await;
    assert_eq!(tail, bytes.slice(SIZE - 10..));
    storage.blob_delete(&digest).await.unwrap();
}

async fn read_range_len(storage: &dyn Storage, digest: &Digest, range: Range<u64>) -> Bytes {
    read_all(storage, digest, Some(range)).await
}

/// A preverified write that asks for its staged bytes gets them only from a
/// backend that can lend them, and then they are exactly the blob's
/// prefix: the whole blob after a commit, a prefix after a failed write
/// (which leaves nothing visible); the descriptor still reads them after
/// the rename or the removal. Backends that cannot (memory, object stores)
/// drop the request and write as usual.
pub async fn blob_staged_bytes_are_the_blobs_prefix(storage: &dyn Storage) {
    let bytes = unique_bytes(700_000);
    let digest = Digest::sha256_of(&bytes);
    let failing = stream_of(bytes.clone(), 100_000)
        .chain(futures::stream::once(async {
            Err(Error::DigestMismatch {
                expected: Digest::sha256_of(b"other"),
                actual: Digest::sha256_of(b"bytes"),
            })
        }))
        .boxed();
    let (tap, staged) = tokio::sync::oneshot::channel();
    let source = BlobSource::Preverified(PreverifiedStream::new(failing).staged_to(tap));
    let failed = storage
        .blob_write_from(&digest, Some(700_000), source)
        .await;
    assert!(
        failed.is_err(),
        "{storage}: a failed verdict must fail the write"
    );
    assert_absent(storage, &digest, "after a staged write that failed").await;
    if let Ok(staged) = staged.await {
        let prefix = staged_contents(&staged);
        assert!(
            prefix.len() <= bytes.len(),
            "{storage}: staged more than written"
        );
        assert!(
            prefix == bytes.slice(..prefix.len()),
            "{storage}: staged bytes differ"
        );
    }

    let (tap, staged) = tokio::sync::oneshot::channel();
    let source = PreverifiedStream::new(stream_of(bytes.clone(), 100_000)).staged_to(tap);
    let written = storage
        .blob_write_from(&digest, Some(700_000), BlobSource::Preverified(source))
        .await
        .unwrap();
    assert_eq!(written, 700_000);
    assert_eq!(read_all(storage, &digest, None).await, bytes);
    if let Ok(staged) = staged.await {
        assert!(
            staged_contents(&staged) == bytes,
            "{storage}: after the commit the staged bytes are the whole blob"
        );
    }
    storage.blob_delete(&digest).await.unwrap();
}

/// Bytes `[0, written)` of a staging file, read through its descriptor.
fn staged_contents(staged: &StagedBytes) -> Bytes {
    let len = usize::try_from(staged.written()).unwrap();
    crate::file_io::read_blocking(staged.file(), 0, len).unwrap()
}
