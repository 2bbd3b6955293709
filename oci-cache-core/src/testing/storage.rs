//! [`FaultyStorage`]: memory storage with the faults of a real disk.

use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::digest::Digest;
use crate::storage::{
    BlobInfo, BlobRead, BlobSource, MemoryStorage, PreverifiedStream, Record, RecordKey,
    RecordPrefix, RecordWrite, Storage,
};
use crate::{Error, Result};

/// How [`FaultyStorage`] answers writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskState {
    /// Writes succeed.
    Healthy,
    /// Writes fail with `ENOSPC` (after a blob write took its first chunk).
    Full,
    /// Writes fail with `EROFS`.
    ReadOnly,
}

/// [`MemoryStorage`] whose writes fail like a full or read-only disk while
/// told to ([`set_state`](Self::set_state)), and whose blob writes can be slow
/// ([`set_slow`](Self::set_slow)); reads always work.
#[derive(Debug, Default)]
pub struct FaultyStorage {
    inner: MemoryStorage,
    state: AtomicU8,
    slow: Mutex<Option<Duration>>,
}

impl std::fmt::Display for FaultyStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("faulty-memory")
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FaultyStorage {
    /// Healthy, fast storage.
    pub fn new() -> Self {
        FaultyStorage::default()
    }

    /// The storage underneath, to look at what was really stored.
    pub fn inner(&self) -> &MemoryStorage {
        &self.inner
    }

    /// Makes later writes succeed or fail.
    pub fn set_state(&self, state: DiskState) {
        let code = match state {
            DiskState::Healthy => 0,
            DiskState::Full => 1,
            DiskState::ReadOnly => 2,
        };
        self.state.store(code, Ordering::SeqCst);
    }

    /// Makes every blob write take `delay` per chunk (a busy disk); `None`: fast.
    pub fn set_slow(&self, delay: Option<Duration>) {
        *lock(&self.slow) = delay;
    }

    fn check(&self) -> Result<()> {
        let kind = match self.state.load(Ordering::SeqCst) {
            1 => std::io::ErrorKind::StorageFull,
            2 => std::io::ErrorKind::ReadOnlyFilesystem,
            _ => return Ok(()),
        };
        Err(Error::storage(
            "faulty-memory",
            "cannot write",
            std::io::Error::from(kind),
        ))
    }
}

#[async_trait]
impl Storage for FaultyStorage {
    async fn blob_stat(&self, d: &Digest) -> Result<Option<BlobInfo>> {
        self.inner.blob_stat(d).await
    }
    async fn blob_read(&self, d: &Digest, r: Option<Range<u64>>) -> Result<BlobRead> {
        self.inner.blob_read(d, r).await
    }
    async fn blob_write_from(&self, d: &Digest, s: Option<u64>, data: BlobSource) -> Result<u64> {
        if let Err(e) = self.check() {
            // Takes a little first, like a backend that runs out of space midway.
            let _ = data.into_stream().next().await;
            return Err(e);
        }
        let slow = *lock(&self.slow);
        let data = match (slow, data) {
            (Some(delay), BlobSource::Preverified(stream)) => {
                let stream = stream
                    .into_stream()
                    .then(move |chunk| async move {
                        tokio::time::sleep(delay).await;
                        chunk
                    })
                    .boxed();
                BlobSource::Preverified(PreverifiedStream::new(stream))
            }
            (_, data) => data,
        };
        self.inner.blob_write_from(d, s, data).await
    }
    async fn blob_delete(&self, d: &Digest) -> Result<()> {
        self.inner.blob_delete(d).await
    }
    fn blob_list(&self) -> BoxStream<'_, Result<BlobInfo>> {
        self.inner.blob_list()
    }
    async fn record_get(&self, k: &RecordKey) -> Result<Option<Record>> {
        self.inner.record_get(k).await
    }
    // Manifests and tag records are records: failing their writes fails
    // manifest_put and tag_put as a full or read-only disk would.
    async fn record_put(&self, k: &RecordKey, r: Record, m: RecordWrite) -> Result<bool> {
        self.check()?;
        self.inner.record_put(k, r, m).await
    }
    async fn record_delete(&self, k: &RecordKey) -> Result<()> {
        self.inner.record_delete(k).await
    }
    fn record_list(&self, p: &RecordPrefix) -> BoxStream<'_, Result<RecordKey>> {
        self.inner.record_list(p)
    }
}
