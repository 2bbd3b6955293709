//! [`MemoryStorage`]: everything in a map, for tests and embedding.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;

use super::verified::{resolve_range, write_verified, Staging};
use super::{
    BlobInfo, BlobRead, BlobSource, Record, RecordKey, RecordPrefix, RecordWrite, Storage,
};
use crate::digest::Digest;
use crate::Result;

/// Storage that keeps everything in memory; lost when dropped.
///
/// Cloning is cheap and the clones share the same contents, so a test can
/// hand one clone to the code under test and inspect the other.
///
/// ```
/// # tokio_test_block_on(async {
/// use futures::StreamExt;
/// use oci_cache_core::digest::Digest;
/// use oci_cache_core::storage::{MemoryStorage, Storage};
///
/// let storage = MemoryStorage::new();
/// let digest = Digest::sha256_of(b"layer");
/// let data = futures::stream::iter([Ok(bytes::Bytes::from_static(b"layer"))]).boxed();
/// assert_eq!(storage.blob_write(&digest, Some(5), data).await.unwrap(), 5);
/// assert_eq!(storage.blob_stat(&digest).await.unwrap().unwrap().size, 5);
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    blobs: HashMap<Digest, MemoryBlob>,
    records: BTreeMap<RecordKey, Record>,
}

#[derive(Debug)]
struct MemoryBlob {
    bytes: Bytes,
    last_access: SystemTime,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// Every critical section is a plain map operation that cannot leave the
/// maps half-updated, so a poisoned lock still guards consistent data.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl fmt::Display for MemoryStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("memory")
    }
}

struct MemoryStaging {
    state: Arc<Mutex<State>>,
    digest: Digest,
    buffer: BytesMut,
}

#[async_trait]
impl Staging for MemoryStaging {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.buffer.extend_from_slice(&chunk);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let MemoryStaging {
            state,
            digest,
            buffer,
        } = *self;
        lock(&state)
            .blobs
            .entry(digest)
            .or_insert_with(|| MemoryBlob {
                bytes: buffer.freeze(),
                last_access: SystemTime::now(),
            });
        Ok(())
    }

    async fn abort(self: Box<Self>) {}
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn blob_stat(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        Ok(self.lock().blobs.get(digest).map(|blob| BlobInfo {
            digest: digest.clone(),
            size: blob.bytes.len() as u64,
            last_access: Some(blob.last_access),
        }))
    }

    async fn blob_read(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<BlobRead> {
        let bytes = {
            let mut state = self.lock();
            let blob = state
                .blobs
                .get_mut(digest)
                .ok_or_else(|| crate::Error::not_found(format!("blob {digest}")))?;
            blob.last_access = SystemTime::now();
            blob.bytes.clone()
        };
        let size = bytes.len() as u64;
        let range = resolve_range(size, range)?;
        // `resolve_range` keeps the range within `size`, which came from `usize`.
        let slice = bytes.slice(range.start as usize..range.end as usize);
        Ok(BlobRead {
            size,
            range,
            stream: Box::pin(futures::stream::iter([Ok(slice)])),
        })
    }

    async fn blob_write_from(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        data: BlobSource,
    ) -> Result<u64> {
        let staging = MemoryStaging {
            state: Arc::clone(&self.state),
            digest: digest.clone(),
            buffer: BytesMut::new(),
        };
        write_verified(digest, expected_size, data, Box::new(staging)).await
    }

    async fn blob_delete(&self, digest: &Digest) -> Result<()> {
        self.lock().blobs.remove(digest);
        Ok(())
    }

    fn blob_list(&self) -> BoxStream<'_, Result<BlobInfo>> {
        // A snapshot: the maps are in memory already, and holding the lock
        // across the consumer's awaits would stall every other call.
        let list: Vec<Result<BlobInfo>> = self
            .lock()
            .blobs
            .iter()
            .map(|(digest, blob)| {
                Ok(BlobInfo {
                    digest: digest.clone(),
                    size: blob.bytes.len() as u64,
                    last_access: Some(blob.last_access),
                })
            })
            .collect();
        futures::stream::iter(list).boxed()
    }

    async fn record_get(&self, key: &RecordKey) -> Result<Option<Record>> {
        Ok(self.lock().records.get(key).cloned())
    }

    async fn record_put(&self, key: &RecordKey, record: Record, mode: RecordWrite) -> Result<bool> {
        let mut state = self.lock();
        if mode == RecordWrite::Create && state.records.contains_key(key) {
            return Ok(false);
        }
        state.records.insert(key.clone(), record);
        Ok(true)
    }

    async fn record_delete(&self, key: &RecordKey) -> Result<()> {
        self.lock().records.remove(key);
        Ok(())
    }

    fn record_list(&self, prefix: &RecordPrefix) -> BoxStream<'_, Result<RecordKey>> {
        let keys: Vec<Result<RecordKey>> = self
            .lock()
            .records
            .keys()
            .filter(|key| prefix.contains(key))
            .map(|key| Ok(key.clone()))
            .collect();
        futures::stream::iter(keys).boxed()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conforms() {
        super::super::conformance::run_all(&MemoryStorage::new()).await;
    }

    #[tokio::test]
    async fn clones_share_contents() {
        let a = MemoryStorage::new();
        let b = a.clone();
        let digest = Digest::sha256_of(b"x");
        let data = Box::pin(futures::stream::iter([Ok(Bytes::from_static(b"x"))]));
        a.blob_write(&digest, Some(1), data).await.unwrap();
        assert_eq!(b.blob_stat(&digest).await.unwrap().unwrap().size, 1);
    }
}
