//! The conformance suite every [`Storage`] backend must pass.
//!
//! Each check is a plain `async fn` taking the backend as a trait object and
//! panicking with a message on failure, so any test harness can call it:
//!
//! ```ignore
//! #[tokio::test]
//! async fn my_backend_conforms() {
//!     let storage = MyBackend::new();
//!     oci_cache_core::storage::conformance::run_all(&storage).await;
//! }
//! ```
//!
//! The checks only ever look at objects they wrote themselves (fresh random
//! content, a random upstream name), so they can run against a shared bucket
//! that already holds data, and several at once against the same backend.

// Test support: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ops::Range;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};

use super::{
    BlobSource, ByteStream, PreverifiedStream, RepositoryEntry, Storage, StoredManifest, TagKey,
    TagRecord,
};
use crate::digest::{Digest, DigestAlgorithm, DigestHasher};
use crate::reference::{Registry, Repository, Tag};
use crate::Error;

/// Runs every check in this module, one after another.
pub async fn run_all(storage: &dyn Storage) {
    blob_round_trip(storage).await;
    blob_ranges(storage).await;
    empty_blob(storage).await;
    blob_digest_mismatch_leaves_nothing(storage).await;
    blob_size_mismatch_leaves_nothing(storage).await;
    blob_truncated_stream_leaves_nothing(storage).await;
    blob_preverified_write(storage).await;
    blob_write_is_invisible_until_complete(storage).await;
    blob_concurrent_same_digest_writers(storage).await;
    blob_rewrite_is_idempotent(storage).await;
    blob_list_and_delete(storage).await;
    large_blob(storage).await;
    manifest_round_trip_and_delete(storage).await;
    manifest_digest_mismatch_is_rejected(storage).await;
    tags_round_trip_list_and_delete(storage).await;
}

/// `len` bytes that differ on every call (so checks never collide), made from `seed` and a fresh UUID.
pub fn unique_bytes(len: usize) -> Bytes {
    let mut out = Vec::with_capacity(len);
    let mut state = u64::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..8]
            .try_into()
            .expect("8 bytes"),
    ) | 1;
    while out.len() < len {
        // xorshift64: cheap, and good enough to make every block distinct.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// A stream yielding `bytes` in chunks of `chunk` bytes, yielding to the runtime between chunks.
pub fn stream_of(bytes: Bytes, chunk: usize) -> ByteStream {
    let chunks: Vec<Bytes> = (0..bytes.len())
        .step_by(chunk.max(1))
        .map(|start| bytes.slice(start..(start + chunk).min(bytes.len())))
        .collect();
    futures::stream::iter(chunks)
        .then(|chunk| async move {
            tokio::task::yield_now().await;
            Ok(chunk)
        })
        .boxed()
}

/// Reads a whole stream into memory.
pub async fn collect(mut stream: ByteStream) -> crate::Result<Bytes> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(Bytes::from(out))
}

async fn read_all(storage: &dyn Storage, digest: &Digest, range: Option<Range<u64>>) -> Bytes {
    let read = storage
        .blob_read(digest, range.clone())
        .await
        .unwrap_or_else(|e| panic!("{storage}: reading {digest} {range:?}: {e}"));
    let bytes = collect(read.stream)
        .await
        .unwrap_or_else(|e| panic!("{storage}: streaming {digest}: {e}"));
    assert_eq!(
        bytes.len() as u64,
        read.range.end - read.range.start,
        "{storage}: stream length must match the announced range {:?}",
        read.range
    );
    bytes
}

async fn assert_absent(storage: &dyn Storage, digest: &Digest, why: &str) {
    let stat = storage.blob_stat(digest).await.unwrap();
    assert!(stat.is_none(), "{storage}: {why}: stat found {stat:?}");
    match storage.blob_read(digest, None).await {
        Err(e) if e.is_not_found() => {}
        Err(e) => panic!("{storage}: {why}: read gave {e} instead of not found"),
        Ok(r) => panic!("{storage}: {why}: read found {r:?}"),
    }
    let listed = storage.blob_list().await.unwrap();
    assert!(
        listed.iter().all(|info| &info.digest != digest),
        "{storage}: {why}: blob_list still lists {digest}"
    );
}

async fn write(storage: &dyn Storage, bytes: &Bytes, chunk: usize) -> Digest {
    let digest = Digest::sha256_of(bytes);
    let written = storage
        .blob_write(
            &digest,
            Some(bytes.len() as u64),
            stream_of(bytes.clone(), chunk),
        )
        .await
        .unwrap_or_else(|e| panic!("{storage}: writing {digest}: {e}"));
    assert_eq!(written, bytes.len() as u64, "{storage}: size written");
    digest
}

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
    let listed = storage.blob_list().await.unwrap();
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
    let listed = storage.blob_list().await.unwrap();
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

fn manifest(media_type: &str) -> StoredManifest {
    let bytes = Bytes::from(format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{media_type}\",\"nonce\":\"{}\"}}",
        uuid::Uuid::new_v4()
    ));
    StoredManifest {
        digest: Digest::sha256_of(&bytes),
        media_type: media_type.to_owned(),
        bytes,
    }
}

/// Manifests keep their exact bytes and media type; delete removes them.
pub async fn manifest_round_trip_and_delete(storage: &dyn Storage) {
    let index = manifest("application/vnd.oci.image.index.v1+json");
    let docker = manifest("application/vnd.docker.distribution.manifest.v2+json");
    for m in [&index, &docker] {
        storage.manifest_put(m).await.unwrap();
        // Idempotent.
        storage.manifest_put(m).await.unwrap();
    }
    for m in [&index, &docker] {
        let got = storage.manifest_get(&m.digest).await.unwrap();
        assert_eq!(got.as_ref(), Some(m), "{storage}: manifest round trip");
    }
    storage.manifest_delete(&index.digest).await.unwrap();
    assert_eq!(storage.manifest_get(&index.digest).await.unwrap(), None);
    storage.manifest_delete(&index.digest).await.unwrap();
    assert!(storage
        .manifest_get(&docker.digest)
        .await
        .unwrap()
        .is_some());
    storage.manifest_delete(&docker.digest).await.unwrap();
    // A manifest and a blob with the same digest are different objects.
    let m = manifest("application/vnd.oci.image.manifest.v1+json");
    storage.manifest_put(&m).await.unwrap();
    assert!(storage.blob_stat(&m.digest).await.unwrap().is_none());
    storage.manifest_delete(&m.digest).await.unwrap();
}

/// A manifest whose bytes do not hash to its digest is not stored.
pub async fn manifest_digest_mismatch_is_rejected(storage: &dyn Storage) {
    let mut m = manifest("application/vnd.oci.image.manifest.v1+json");
    m.digest = Digest::sha256_of(b"something else");
    let err = storage.manifest_put(&m).await.unwrap_err();
    assert!(
        matches!(err, Error::DigestMismatch { .. }),
        "{storage}: got {err}"
    );
    assert_eq!(storage.manifest_get(&m.digest).await.unwrap(), None);
}

/// Tag records per (upstream, repository, tag): put, replace, list, delete.
pub async fn tags_round_trip_list_and_delete(storage: &dyn Storage) {
    let upstream = Registry::new(&format!(
        "conformance-{}.example:5000",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ))
    .unwrap();
    let other = Registry::new("other.example").unwrap();
    let alpine = Repository::new("library/alpine").unwrap();
    let deep = Repository::new("team/sub/group/app").unwrap();
    let key = |repository: &Repository, tag: &str| TagKey {
        upstream: upstream.clone(),
        repository: repository.clone(),
        tag: Tag::new(tag).unwrap(),
    };
    let record = |n: u8| TagRecord {
        digest: Digest::sha256_of(&[n]),
        media_type: "application/vnd.oci.image.index.v1+json".to_owned(),
        checked_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123 + n as u64),
    };

    assert_eq!(storage.tag_get(&key(&alpine, "3.20")).await.unwrap(), None);
    for (tag, n) in [("3.20", 1), ("latest", 2), ("3.19", 3), ("Edge_1.x-y", 4)] {
        storage
            .tag_put(&key(&alpine, tag), &record(n))
            .await
            .unwrap();
    }
    storage
        .tag_put(&key(&deep, "v1"), &record(5))
        .await
        .unwrap();
    // Replace.
    storage
        .tag_put(&key(&alpine, "latest"), &record(6))
        .await
        .unwrap();
    assert_eq!(
        storage.tag_get(&key(&alpine, "latest")).await.unwrap(),
        Some(record(6))
    );
    // The same repository and tag under another upstream is a different record.
    let elsewhere = TagKey {
        upstream: other.clone(),
        ..key(&alpine, "latest")
    };
    assert_ne!(storage.tag_get(&elsewhere).await.unwrap(), Some(record(6)));

    let tags: Vec<String> = storage
        .tag_list(&upstream, &alpine)
        .await
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(tags, ["3.19", "3.20", "Edge_1.x-y", "latest"]);
    assert_eq!(
        storage.tag_list(&upstream, &deep).await.unwrap(),
        [Tag::new("v1").unwrap()]
    );
    assert!(storage
        .tag_list(&upstream, &Repository::new("library/none").unwrap())
        .await
        .unwrap()
        .is_empty());

    let repos: Vec<RepositoryEntry> = storage
        .repository_list()
        .await
        .unwrap()
        .into_iter()
        .filter(|entry| entry.upstream == upstream)
        .collect();
    let expected: Vec<RepositoryEntry> = [&alpine, &deep]
        .into_iter()
        .map(|repository| RepositoryEntry {
            upstream: upstream.clone(),
            repository: repository.clone(),
        })
        .collect();
    assert_eq!(repos, expected, "{storage}: repository_list");
    let all = storage.repository_list().await.unwrap();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "{storage}: repository_list must be sorted");

    for tag in ["3.20", "latest", "3.19", "Edge_1.x-y"] {
        storage.tag_delete(&key(&alpine, tag)).await.unwrap();
    }
    storage.tag_delete(&key(&alpine, "latest")).await.unwrap();
    assert!(storage
        .tag_list(&upstream, &alpine)
        .await
        .unwrap()
        .is_empty());
    storage.tag_delete(&key(&deep, "v1")).await.unwrap();
    assert!(storage
        .repository_list()
        .await
        .unwrap()
        .iter()
        .all(|entry| entry.upstream != upstream));
}
