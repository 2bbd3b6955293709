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

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{BlobInfo, ByteStream, Storage};
use crate::digest::Digest;

mod blobs;
mod records;

pub use blobs::*;
pub use records::*;

/// Runs every check in this module, one after another.
pub async fn run_all(storage: &dyn Storage) {
    blob_round_trip(storage).await;
    blob_ranges(storage).await;
    empty_blob(storage).await;
    blob_digest_mismatch_leaves_nothing(storage).await;
    blob_size_mismatch_leaves_nothing(storage).await;
    blob_truncated_stream_leaves_nothing(storage).await;
    blob_preverified_write(storage).await;
    blob_staged_bytes_are_the_blobs_prefix(storage).await;
    blob_write_is_invisible_until_complete(storage).await;
    blob_concurrent_same_digest_writers(storage).await;
    blob_rewrite_is_idempotent(storage).await;
    blob_list_and_delete(storage).await;
    large_blob(storage).await;
    manifest_round_trip_and_delete(storage).await;
    manifest_digest_mismatch_is_rejected(storage).await;
    tags_round_trip_list_and_delete(storage).await;
    records_create_only_if_absent(storage).await;
    records_list_by_prefix(storage).await;
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
    let listed = list_blobs(storage).await;
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

/// Every listed blob, collected from the stream.
async fn list_blobs(storage: &dyn Storage) -> Vec<BlobInfo> {
    storage
        .blob_list()
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{storage}: listing blobs: {e}"))
}
