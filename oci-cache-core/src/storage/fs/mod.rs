//! [`FsStorage`]: a directory tree a person can inspect and back up.
//!
//! Writes go to `_staging/<uuid>` on the same filesystem, are hashed while
//! they stream, and are renamed into place only after the digest matched
//! (and, by default, after `fsync`), so a reader sees either no file or the
//! whole verified file. `_staging` is emptied when the storage is opened.

use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::verified::{resolve_range, write_verified};
use super::{
    keys, BlobInfo, BlobRead, BlobSource, Record, RecordKey, RecordPrefix, RecordWrite, Storage,
};
use crate::digest::Digest;
use crate::{Error, Result};

mod blob_io;
mod files;
#[cfg(test)]
mod tests;

use blob_io::{read_stream, FsStaging};

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
/// sharing the root; older ones are leftovers of interrupted writes (swept
/// at open, and by [`Storage::sweep_leftovers`] while serving).
const STAGING_IN_USE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

impl Inner {
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
        self.sweep_staging(STAGING_IN_USE)?;
        Ok(())
    }
}

impl Inner {
    /// Removes the staging files untouched for `older_than`: leftovers of
    /// interrupted writes. Returns how many went.
    fn sweep_staging(&self, older_than: std::time::Duration) -> Result<u64> {
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
                .is_none_or(|age| age < older_than);
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
        Ok(removed)
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

/// An I/O error about record `key`.
fn record_error(e: io::Error, doing: &str, key: &RecordKey) -> Error {
    io_error(e, format!("cannot {doing} {key}"))
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
        Ok(BlobRead {
            size,
            stream: read_stream(file, range.clone(), digest.clone()),
            range,
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
        let inner = Arc::clone(&self.inner);
        let staging = FsStaging::new(inner, digest.clone(), keys::blob(digest), staged, file);
        write_verified(digest, expected_size, data, Box::new(staging)).await
    }

    async fn blob_delete(&self, digest: &Digest) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        let key = keys::blob(digest);
        blocking(move || {
            inner
                .remove(&key)
                .map_err(|e| io_error(e, format!("cannot delete {key}")))
        })
        .await
    }

    fn blob_list(&self) -> BoxStream<'_, Result<BlobInfo>> {
        self.inner
            .walk(keys::BLOBS)
            .filter_map(|entry| async move {
                match entry {
                    Ok((key, meta)) => Some(Ok(BlobInfo {
                        digest: keys::parse_blob(&key)?,
                        size: meta.len(),
                        last_access: last_access(&meta),
                    })),
                    Err(e) => Some(Err(e)),
                }
            })
            .boxed()
    }

    async fn record_get(&self, key: &RecordKey) -> Result<Option<Record>> {
        let inner = Arc::clone(&self.inner);
        let key = key.clone();
        blocking(move || {
            let read = |name: &str| {
                inner
                    .read_optional(name)
                    .map_err(|e| record_error(e, "read", &key))
            };
            let Some(bytes) = read(key.as_str())? else {
                return Ok(None);
            };
            let mut record = Record::new(bytes);
            if let Some(sidecar) = keys::media_type_sidecar(key.as_str()) {
                match read(&sidecar)? {
                    Some(media_type) => {
                        let media_type = String::from_utf8(media_type).map_err(|e| {
                            Error::storage(
                                BACKEND,
                                format!("media type of {key} is not utf-8; delete it"),
                                e,
                            )
                        })?;
                        record = record.with_media_type(media_type);
                    }
                    // Deleted between the two reads (the record goes first): absent.
                    None if !inner.path(key.as_str()).exists() => return Ok(None),
                    None => {}
                }
            }
            Ok(Some(record))
        })
        .await
    }

    async fn record_put(&self, key: &RecordKey, record: Record, mode: RecordWrite) -> Result<bool> {
        let inner = Arc::clone(&self.inner);
        let key = key.clone();
        let create = match mode {
            RecordWrite::Overwrite => false,
            RecordWrite::Create => true,
        };
        blocking(move || {
            let failed = |e| record_error(e, "store", &key);
            if let Some(media_type) = &record.media_type {
                let Some(sidecar) = keys::media_type_sidecar(key.as_str()) else {
                    return Err(Error::Storage {
                        backend: BACKEND,
                        message: format!("record {key} cannot carry a media type on a filesystem"),
                        source: None,
                    });
                };
                if create && inner.path(key.as_str()).exists() {
                    return Ok(false);
                }
                // Media type first: the record's own file is what makes it visible.
                inner
                    .write_small(&sidecar, media_type.as_bytes(), false)
                    .map_err(failed)?;
            }
            inner
                .write_small(key.as_str(), &record.bytes, create)
                .map_err(failed)
        })
        .await
    }

    async fn record_delete(&self, key: &RecordKey) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        let key = key.clone();
        blocking(move || {
            inner
                .remove(key.as_str())
                .map_err(|e| record_error(e, "delete", &key))?;
            if let Some(sidecar) = keys::media_type_sidecar(key.as_str()) {
                inner
                    .remove(&sidecar)
                    .map_err(|e| record_error(e, "delete", &key))?;
            }
            Ok(())
        })
        .await
    }

    fn record_list(&self, prefix: &RecordPrefix) -> BoxStream<'_, Result<RecordKey>> {
        self.inner
            .walk(prefix.as_str())
            .filter_map(|entry| async move {
                match entry {
                    Ok((key, _)) => RecordKey::parse(&key).map(Ok),
                    Err(e) => Some(Err(e)),
                }
            })
            .boxed()
    }

    async fn sweep_leftovers(&self) -> Result<u64> {
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.sweep_staging(STAGING_IN_USE)).await
    }
}
