//! [`FaultyStorage`]: memory storage with the faults of a real disk.

use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use crate::digest::Digest;
use crate::reference::{Registry, Repository, Tag};
use crate::storage::{
    BlobInfo, BlobRead, BlobSource, MemoryStorage, PreverifiedStream, RepositoryEntry, Storage,
    StoredManifest, TagKey, TagRecord,
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
    async fn blob_list(&self) -> Result<Vec<BlobInfo>> {
        self.inner.blob_list().await
    }
    async fn manifest_get(&self, d: &Digest) -> Result<Option<StoredManifest>> {
        self.inner.manifest_get(d).await
    }
    async fn manifest_put(&self, m: &StoredManifest) -> Result<()> {
        self.check()?;
        self.inner.manifest_put(m).await
    }
    async fn manifest_delete(&self, d: &Digest) -> Result<()> {
        self.inner.manifest_delete(d).await
    }
    async fn tag_get(&self, k: &TagKey) -> Result<Option<TagRecord>> {
        self.inner.tag_get(k).await
    }
    async fn tag_put(&self, k: &TagKey, r: &TagRecord) -> Result<()> {
        self.check()?;
        self.inner.tag_put(k, r).await
    }
    async fn tag_delete(&self, k: &TagKey) -> Result<()> {
        self.inner.tag_delete(k).await
    }
    async fn tag_list(&self, u: &Registry, r: &Repository) -> Result<Vec<Tag>> {
        self.inner.tag_list(u, r).await
    }
    async fn repository_list(&self) -> Result<Vec<RepositoryEntry>> {
        self.inner.repository_list().await
    }
}
