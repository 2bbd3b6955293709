//! Memory stays flat: 512 MiB streamed through FsStorage and ObjectStorage
//! (S3) must grow peak RSS by less than 64 MiB.
//!
//! A binary of its own, with one test, so nothing else running in the
//! process (other tests' buffers, the 40 MiB conformance blob) can move the
//! peak. The peak is `VmHWM` from `/proc/self/status`, reset between phases
//! through `/proc/self/clear_refs` so each backend is measured on its own.

// Tests: failing loudly, and saying so on stderr, is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use oci_cache_core::digest::{Digest, DigestAlgorithm, DigestHasher};
use oci_cache_core::storage::{ByteStream, FsStorage, Storage};

#[path = "storage/s3_env.rs"]
mod s3_env;

const TOTAL: usize = 512 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;
const LIMIT: u64 = 64 * 1024 * 1024;

/// Chunk `i` of the test blob: a fixed pseudo-random block stamped with `i`,
/// made on demand so the blob itself never sits in memory.
fn chunk(base: &Bytes, i: usize) -> Bytes {
    let mut chunk = BytesMut::from(&base[..]);
    chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
    chunk.freeze()
}

fn blob_stream(base: Bytes) -> ByteStream {
    futures::stream::iter(0..TOTAL / CHUNK)
        .map(move |i| Ok(chunk(&base, i)))
        .boxed()
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Resets the peak to the current RSS; `false` on kernels without it.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

async fn stream_through(storage: &dyn Storage, base: &Bytes, digest: &Digest) -> u64 {
    let start = status_kib("VmRSS:") * 1024;
    let peak_before = if reset_peak() {
        start
    } else {
        status_kib("VmHWM:") * 1024
    };
    let written = storage
        .blob_write(digest, Some(TOTAL as u64), blob_stream(base.clone()))
        .await
        .unwrap();
    assert_eq!(written, TOTAL as u64);
    let read = storage.blob_read(digest, None).await.unwrap();
    assert_eq!(read.size, TOTAL as u64);
    let mut hasher = DigestHasher::new(DigestAlgorithm::Sha256);
    let mut stream = read.stream;
    let mut seen = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        seen += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(seen, TOTAL);
    assert_eq!(&hasher.finish(), digest, "{storage}: read back other bytes");
    storage.blob_delete(digest).await.unwrap();
    let growth = (status_kib("VmHWM:") * 1024).saturating_sub(peak_before);
    eprintln!(
        "{storage}: 512 MiB write + read grew peak RSS by {:.1} MiB",
        growth as f64 / 1048576.0
    );
    growth
}

#[test]
fn streaming_512_mib_keeps_memory_flat() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let base = oci_cache_core::storage::conformance::unique_bytes(CHUNK);
        let mut hasher = DigestHasher::new(DigestAlgorithm::Sha256);
        for i in 0..TOTAL / CHUNK {
            hasher.update(&chunk(&base, i));
        }
        let digest = hasher.finish();

        let dir = tempfile::tempdir().unwrap();
        let fs = FsStorage::open(dir.path()).await.unwrap();
        let growth = stream_through(&fs, &base, &digest).await;
        assert!(
            growth < LIMIT,
            "filesystem: peak RSS grew by {growth} bytes"
        );

        #[cfg(feature = "s3")]
        if let Some(config) = s3_env::s3_config() {
            let s3 = oci_cache_core::storage::ObjectStorage::s3(&config).unwrap();
            let growth = stream_through(&s3, &base, &digest).await;
            assert!(growth < LIMIT, "s3: peak RSS grew by {growth} bytes");
        }
        #[cfg(not(feature = "s3"))]
        s3_env::skip_s3("the `s3` feature is off");
    });
}
