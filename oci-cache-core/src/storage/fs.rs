//! [`FsStorage`]: a directory tree a person can inspect and back up.
//!
//! Writes go to `_staging/<uuid>` on the same filesystem, are hashed while
//! they stream, and are renamed into place only after the digest matched
//! (and, by default, after `fsync`), so a reader sees either no file or the
//! whole verified file. `_staging` is emptied when the storage is opened.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinHandle;

use super::verified::{resolve_range, verify_bytes, write_verified, Staging};
use super::{
    keys, BlobInfo, BlobRead, BlobSource, RepositoryEntry, Storage, StoredManifest, TagKey,
    TagRecord,
};
use crate::digest::Digest;
use crate::file_io::ChunkReader;
use crate::reference::{Registry, Repository, Tag};
use crate::{Error, Result};

const BACKEND: &str = "filesystem";
/// Size of the chunks reads yield: large enough that per-call overhead
/// vanishes (warm blob throughput is the same at 128 and 256 KiB), small
/// enough that the chunks many slow clients hold at once stay a small part of
/// the RSS.
const IO_CHUNK: usize = 128 * 1024;
/// Bytes a write collects before handing them to the blocking pool in one
/// call: fewer thread hops per blob; one batch per blob being written.
const WRITE_BATCH: usize = 256 * 1024;

/// How [`FsStorage`] trades durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsOptions {
    /// `fsync` each object before renaming it into place, and its directory
    /// after. On by default: without it, a power failure can leave a renamed
    /// but empty file under a digest on ext4 and similar filesystems. A
    /// process crash never leaves partial objects either way.
    pub durable: bool,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions { durable: true }
    }
}

impl FsOptions {
    /// Sets [`durable`](Self::durable).
    pub fn with_durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }
}

/// Storage in a local directory; see the [module docs](super) for the layout.
#[derive(Debug, Clone)]
pub struct FsStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    options: FsOptions,
    #[cfg(test)]
    quota: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl FsStorage {
    /// Opens (creating if needed) a store rooted at `root`, with default options.
    ///
    /// Leftovers of interrupted writes in `root/_staging` are deleted, so one
    /// root must be used by one process at a time.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(root, FsOptions::default()).await
    }

    /// Opens (creating if needed) a store rooted at `root`.
    pub async fn open_with(root: impl Into<PathBuf>, options: FsOptions) -> Result<Self> {
        let inner = Inner {
            root: root.into(),
            options,
            #[cfg(test)]
            quota: None,
        };
        Self::from_inner(inner).await
    }

    async fn from_inner(inner: Inner) -> Result<Self> {
        let inner = Arc::new(inner);
        let init = Arc::clone(&inner);
        blocking(move || init.prepare()).await?;
        Ok(FsStorage { inner })
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.inner.path(key)
    }
}

/// A staging file written to this recently may belong to another process
/// sharing the root; older ones are leftovers of interrupted writes.
const STAGING_IN_USE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

impl Inner {
    /// `key` comes from [`keys`], whose segments cannot escape `root`.
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn prepare(&self) -> Result<()> {
        for dir in [keys::BLOBS, keys::MANIFESTS, keys::TAGS, keys::STAGING] {
            let path = self.path(dir);
            std::fs::create_dir_all(&path).map_err(|e| {
                io_error(
                    e,
                    format!("cannot create {}; check the storage root", path.display()),
                )
            })?;
        }
        let staging = self.path(keys::STAGING);
        let entries = std::fs::read_dir(&staging)
            .map_err(|e| io_error(e, format!("cannot list {}", staging.display())))?;
        let mut removed = 0_u64;
        for entry in entries.flatten() {
            // Another process on the same root (a server while `oci-cache
            // warm` or `import` runs) may be writing this file right now: a
            // write in progress keeps its mtime fresh, a leftover does not.
            let recent = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < STAGING_IN_USE);
            if recent {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(path = %entry.path().display(), error = %e,
                    "cannot remove leftover staging file"),
            }
        }
        if removed > 0 {
            tracing::info!(removed, root = %self.root.display(), "removed leftovers of interrupted writes");
        }
        Ok(())
    }

    /// A new, empty, exclusively created staging file.
    fn create_staging(&self) -> io::Result<(PathBuf, File)> {
        let path = self
            .path(keys::STAGING)
            .join(uuid::Uuid::new_v4().simple().to_string());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((path, file))
    }

    fn write_all(&self, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(quota) = &self.quota {
            use std::sync::atomic::Ordering;
            let len = bytes.len() as u64;
            let left = quota.load(Ordering::SeqCst);
            if len > left {
                // Fill up to the limit first, as a real filesystem would.
                let (head, _) = bytes.split_at(usize::try_from(left).unwrap_or(0));
                file.write_all(head)?;
                quota.store(0, Ordering::SeqCst);
                return Err(io::Error::from(io::ErrorKind::StorageFull));
            }
            quota.fetch_sub(len, Ordering::SeqCst);
        }
        file.write_all(bytes)
    }

    /// Syncs (when durable) and renames a staged file to `key`.
    fn publish(&self, file: File, staged: &Path, key: &str) -> io::Result<()> {
        if self.options.durable {
            file.sync_all()?;
        }
        drop(file);
        let target = self.path(key);
        let parent = target.parent().unwrap_or(&self.root);
        // A concurrent delete may prune the directory between create and
        // rename; trying again is enough because it only prunes empty ones.
        let mut attempts = 0;
        loop {
            std::fs::create_dir_all(parent)?;
            match std::fs::rename(staged, &target) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
                other => break other?,
            }
        }
        if self.options.durable {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    }

    /// Writes small content (manifests, tag records) atomically under `key`.
    fn write_small(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let (staged, mut file) = self.create_staging()?;
        let result = self
            .write_all(&mut file, bytes)
            .and_then(|()| self.publish(file, &staged, key));
        if result.is_err() {
            let _ = std::fs::remove_file(&staged);
        }
        result
    }

    /// Removes `key`, then the directories above it that became empty, up to `stop`.
    fn remove(&self, key: &str, stop: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let stop = self.path(stop);
        let path = self.path(key);
        let mut dir = path.parent();
        while let Some(d) = dir {
            // Only empty directories go; a failure means it is in use, which is fine.
            if d == stop || !d.starts_with(&stop) || std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    /// Every file under `top`, as a key, with its metadata.
    fn walk(&self, top: &str) -> io::Result<Vec<(String, std::fs::Metadata)>> {
        let mut out = Vec::new();
        let mut pending = vec![top.to_owned()];
        while let Some(key) = pending.pop() {
            let entries = match std::fs::read_dir(self.path(&key)) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let child = format!("{key}/{name}");
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    // Deleted while listing.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                if meta.is_dir() {
                    pending.push(child);
                } else {
                    out.push((child, meta));
                }
            }
        }
        Ok(out)
    }
}

impl fmt::Display for FsStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "filesystem at {}", self.inner.root.display())
    }
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T, F>(work: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::storage(BACKEND, "filesystem task failed", e))?
}

fn is_disk_full(e: &io::Error) -> bool {
    // ENOSPC, EDQUOT and EFBIG: out of space, out of quota, over the file size limit.
    e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
        || e.kind() == io::ErrorKind::FileTooLarge
        || matches!(e.raw_os_error(), Some(28 | 122 | 27))
}

/// Wraps an I/O error with what we were doing; disk-full gets its own advice.
fn io_error(e: io::Error, doing: String) -> Error {
    if is_disk_full(&e) {
        Error::storage(
            BACKEND,
            format!("{doing}: the disk is full; free space or point the cache at a larger volume"),
            e,
        )
    } else {
        Error::storage(BACKEND, doing, e)
    }
}

fn last_access(meta: &std::fs::Metadata) -> Option<SystemTime> {
    match (meta.accessed().ok(), meta.modified().ok()) {
        (Some(a), Some(m)) => Some(a.max(m)),
        (a, m) => a.or(m),
    }
}

/// An in-progress blob write: batches chunks and hands each batch to the
/// blocking pool, so hashing the next batch overlaps writing this one.
struct FsStaging {
    inner: Arc<Inner>,
    digest: Digest,
    key: String,
    staged: PathBuf,
    file: Option<File>,
    pending: Option<JoinHandle<io::Result<File>>>,
    batch: Vec<Bytes>,
    batch_len: usize,
    /// Set once the staged file is renamed or removed, so `Drop` leaves it alone.
    done: bool,
}

impl FsStaging {
    fn error(&self, e: io::Error) -> Error {
        io_error(
            e,
            format!(
                "cannot write blob {} under {}",
                self.digest,
                self.inner.root.display()
            ),
        )
    }

    /// Waits for the batch in flight and takes the file back.
    async fn settle(&mut self) -> Result<File> {
        if let Some(pending) = self.pending.take() {
            let file = pending
                .await
                .map_err(|e| Error::storage(BACKEND, "filesystem task failed", e))?;
            return file.map_err(|e| self.error(e));
        }
        self.file
            .take()
            .ok_or_else(|| self.error(io::Error::other("staging file already closed")))
    }

    async fn flush(&mut self) -> Result<()> {
        let mut file = self.settle().await?;
        let batch = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        let inner = Arc::clone(&self.inner);
        self.pending = Some(tokio::task::spawn_blocking(move || {
            for chunk in &batch {
                inner.write_all(&mut file, chunk)?;
            }
            Ok(file)
        }));
        Ok(())
    }
}

#[async_trait]
impl Staging for FsStaging {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.batch_len += chunk.len();
        self.batch.push(chunk);
        if self.batch_len >= WRITE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.flush().await?;
        let file = self.settle().await?;
        let inner = Arc::clone(&self.inner);
        let (staged, key) = (self.staged.clone(), self.key.clone());
        let published = tokio::task::spawn_blocking(move || inner.publish(file, &staged, &key))
            .await
            .map_err(|e| Error::storage(BACKEND, "filesystem task failed", e))?;
        published.map_err(|e| self.error(e))?;
        self.done = true;
        Ok(())
    }

    async fn abort(mut self: Box<Self>) {
        // Let the write in flight finish so the removal is the last word.
        if let Some(pending) = self.pending.take() {
            let _ = pending.await;
        }
        let staged = self.staged.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || std::fs::remove_file(staged)).await
        {
            tracing::warn!(path = %self.staged.display(), error = %e, "cannot remove staging file");
        }
        self.done = true;
    }
}

impl Drop for FsStaging {
    fn drop(&mut self) {
        // The write was cancelled: nothing is visible, only the staging file to tidy.
        if !self.done {
            let _ = std::fs::remove_file(&self.staged);
        }
    }
}

#[async_trait]
impl Storage for FsStorage {
    async fn blob_stat(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        let path = self.path(&keys::blob(digest));
        let digest = digest.clone();
        blocking(move || match std::fs::metadata(&path) {
            Ok(meta) => Ok(Some(BlobInfo {
                last_access: last_access(&meta),
                size: meta.len(),
                digest,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(e, format!("cannot stat {}", path.display()))),
        })
        .await
    }

    async fn blob_read(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<BlobRead> {
        let path = self.path(&keys::blob(digest));
        let what = format!("blob {digest}");
        let (file, size, range) = blocking(move || {
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Error::not_found(what));
                }
                Err(e) => return Err(io_error(e, format!("cannot open {}", path.display()))),
            };
            let size = file
                .metadata()
                .map_err(|e| io_error(e, format!("cannot stat {}", path.display())))?
                .len();
            let range = resolve_range(size, range)?;
            // Eviction reads the access time; relatime would update it only daily.
            let now = std::fs::FileTimes::new().set_accessed(SystemTime::now());
            if let Err(e) = file.set_times(now) {
                tracing::debug!(path = %path.display(), error = %e, "cannot record blob access");
            }
            Ok((file, size, range))
        })
        .await?;
        let digest = digest.clone();
        let reader = ChunkReader::new(Arc::new(file));
        let stream = futures::stream::try_unfold(
            (reader, range.clone(), digest),
            |(mut reader, mut left, digest)| async move {
                if left.is_empty() {
                    return Ok(None);
                }
                let len = usize::try_from(left.end - left.start)
                    .unwrap_or(IO_CHUNK)
                    .min(IO_CHUNK);
                let chunk = reader
                    .read_at(left.start, len)
                    .await
                    .map_err(|e| io_error(e, format!("cannot read blob {digest}")))?;
                if chunk.is_empty() {
                    return Err(Error::storage(
                        BACKEND,
                        format!(
                            "blob {digest} ended {} bytes early; delete it so it is fetched again",
                            left.end - left.start
                        ),
                        io::Error::from(io::ErrorKind::UnexpectedEof),
                    ));
                }
                left.start += chunk.len() as u64;
                Ok(Some((chunk, (reader, left, digest))))
            },
        );
        Ok(BlobRead {
            size,
            range,
            stream: stream.boxed(),
        })
    }

    async fn blob_write_from(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        data: BlobSource,
    ) -> Result<u64> {
        let inner = Arc::clone(&self.inner);
        let (staged, file) = blocking(move || {
            inner.create_staging().map_err(|e| {
                io_error(
                    e,
                    format!(
                        "cannot create a staging file under {}",
                        inner.root.display()
                    ),
                )
            })
        })
        .await?;
        let staging = FsStaging {
            inner: Arc::clone(&self.inner),
            digest: digest.clone(),
            key: keys::blob(digest),
            staged,
            file: Some(file),
            pending: None,
            batch: Vec::new(),
            batch_len: 0,
            done: false,
        };
        write_verified(digest, expected_size, data, Box::new(staging)).await
    }

    async fn blob_delete(&self, digest: &Digest) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        let key = keys::blob(digest);
        blocking(move || {
            inner
                .remove(&key, keys::BLOBS)
                .map_err(|e| io_error(e, format!("cannot delete {key}")))
        })
        .await
    }

    async fn blob_list(&self) -> Result<Vec<BlobInfo>> {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let files = inner
                .walk(keys::BLOBS)
                .map_err(|e| io_error(e, "cannot list blobs".to_owned()))?;
            let mut list: Vec<BlobInfo> = files
                .into_iter()
                .filter_map(|(key, meta)| {
                    Some(BlobInfo {
                        digest: keys::parse_blob(&key)?,
                        size: meta.len(),
                        last_access: last_access(&meta),
                    })
                })
                .collect();
            list.sort_by(|a, b| a.digest.cmp(&b.digest));
            Ok(list)
        })
        .await
    }

    async fn manifest_get(&self, digest: &Digest) -> Result<Option<StoredManifest>> {
        let inner = Arc::clone(&self.inner);
        let digest = digest.clone();
        blocking(move || {
            let read = |key: String| match std::fs::read(inner.path(&key)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_error(e, format!("cannot read {key}"))),
            };
            let Some(bytes) = read(keys::manifest(&digest))? else {
                return Ok(None);
            };
            // Deleted between the two reads: treat as absent.
            let Some(media_type) = read(keys::manifest_media_type(&digest))? else {
                return Ok(None);
            };
            let media_type = String::from_utf8(media_type).map_err(|e| {
                Error::storage(
                    BACKEND,
                    format!("media type of manifest {digest} is not utf-8; delete it"),
                    e,
                )
            })?;
            Ok(Some(StoredManifest {
                digest,
                media_type,
                bytes: Bytes::from(bytes),
            }))
        })
        .await
    }

    async fn manifest_put(&self, manifest: &StoredManifest) -> Result<()> {
        verify_bytes(&manifest.digest, &manifest.bytes)?;
        let inner = Arc::clone(&self.inner);
        let manifest = manifest.clone();
        blocking(move || {
            // Media type first: the manifest file is what makes it visible.
            let digest = &manifest.digest;
            inner
                .write_small(
                    &keys::manifest_media_type(digest),
                    manifest.media_type.as_bytes(),
                )
                .and_then(|()| inner.write_small(&keys::manifest(digest), &manifest.bytes))
                .map_err(|e| io_error(e, format!("cannot store manifest {digest}")))
        })
        .await
    }

    async fn manifest_delete(&self, digest: &Digest) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        let digest = digest.clone();
        blocking(move || {
            inner
                .remove(&keys::manifest(&digest), keys::MANIFESTS)
                .and_then(|()| inner.remove(&keys::manifest_media_type(&digest), keys::MANIFESTS))
                .map_err(|e| io_error(e, format!("cannot delete manifest {digest}")))
        })
        .await
    }

    async fn tag_get(&self, key: &TagKey) -> Result<Option<TagRecord>> {
        let path = self.path(&keys::tag(key));
        blocking(move || match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::storage(
                    BACKEND,
                    format!("tag record {} is corrupt; delete it", path.display()),
                    e,
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(e, format!("cannot read {}", path.display()))),
        })
        .await
    }

    async fn tag_put(&self, key: &TagKey, record: &TagRecord) -> Result<()> {
        let json = serde_json::to_vec(record)
            .map_err(|e| Error::storage(BACKEND, "cannot encode tag record", e))?;
        let inner = Arc::clone(&self.inner);
        let key = keys::tag(key);
        blocking(move || {
            inner
                .write_small(&key, &json)
                .map_err(|e| io_error(e, format!("cannot store {key}")))
        })
        .await
    }

    async fn tag_delete(&self, key: &TagKey) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        let key = keys::tag(key);
        blocking(move || {
            inner
                .remove(&key, keys::TAGS)
                .map_err(|e| io_error(e, format!("cannot delete {key}")))
        })
        .await
    }

    async fn tag_list(&self, upstream: &Registry, repository: &Repository) -> Result<Vec<Tag>> {
        let dir = self.path(&keys::tag_dir(upstream, repository));
        blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(io_error(e, format!("cannot list {}", dir.display()))),
            };
            let mut tags: Vec<Tag> = entries
                .flatten()
                .filter_map(|entry| {
                    let name = keys::unsegment(entry.file_name().to_str()?)?;
                    Tag::new(&name).ok()
                })
                .collect();
            tags.sort();
            Ok(tags)
        })
        .await
    }

    async fn repository_list(&self) -> Result<Vec<RepositoryEntry>> {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let files = inner
                .walk(keys::TAGS)
                .map_err(|e| io_error(e, "cannot list tags".to_owned()))?;
            Ok(keys::repositories_of_tag_keys(
                files.iter().map(|(key, _)| key.as_str()),
            ))
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::AtomicU64;

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

    #[tokio::test]
    async fn open_removes_staging_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        drop(FsStorage::open(dir.path()).await.unwrap());
        let leftover = dir.path().join("_staging/interrupted");
        std::fs::write(&leftover, b"half a blob").unwrap();
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&leftover)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        // Another process's write in progress (fresh mtime) is left alone.
        let in_use = dir.path().join("_staging/in-use");
        std::fs::write(&in_use, b"being written").unwrap();
        let storage = FsStorage::open(dir.path()).await.unwrap();
        assert!(!leftover.exists());
        assert!(in_use.exists());
        assert!(storage.blob_list().await.unwrap().is_empty());
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
}
