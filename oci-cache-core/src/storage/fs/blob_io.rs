//! Blob bytes in and out of [`FsStorage`](super::FsStorage): the staged,
//! batched write that [`write_verified`](crate::storage::write_verified)
//! drives, and the chunked read stream.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinHandle;

use super::{io_error, Inner, BACKEND, IO_CHUNK, WRITE_BATCH};
use crate::digest::Digest;
use crate::file_io::ChunkReader;
use crate::storage::{ByteStream, StagedBytes, Staging};
use crate::{Error, Result};

/// An in-progress blob write: batches chunks and hands each batch to the
/// blocking pool, so hashing the next batch overlaps writing this one.
pub(super) struct FsStaging {
    inner: Arc<Inner>,
    digest: Digest,
    key: String,
    staged: PathBuf,
    file: Option<File>,
    pending: Option<JoinHandle<io::Result<File>>>,
    batch: Vec<Bytes>,
    batch_len: usize,
    /// The staging file for readers of the bytes staged so far (see
    /// [`Staging::staged`]): a second descriptor of the same file, so it
    /// follows the file through the rename and survives the removal.
    reader: Option<Arc<File>>,
    /// Bytes entirely written to the staging file.
    written: Arc<AtomicU64>,
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
        let written = Arc::clone(&self.written);
        self.pending = Some(tokio::task::spawn_blocking(move || {
            for chunk in &batch {
                inner.write_all(&mut file, chunk)?;
                // Counted per chunk, so a reader follows the write closely.
                written.fetch_add(chunk.len() as u64, Ordering::Release);
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
        let published =
            tokio::task::spawn_blocking(move || inner.publish(file, &staged, &key, false))
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

    fn staged(&self) -> Option<StagedBytes> {
        let file = Arc::clone(self.reader.as_ref()?);
        Some(StagedBytes::new(file, Arc::clone(&self.written)))
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

impl FsStaging {
    /// A write into the fresh staging file `staged`, to be published as `key`.
    pub(super) fn new(
        inner: Arc<Inner>,
        digest: Digest,
        key: String,
        staged: PathBuf,
        file: File,
    ) -> Self {
        // Without a second descriptor the write goes on; readers then use a spool.
        let reader = match file.try_clone() {
            Ok(reader) => Some(Arc::new(reader)),
            Err(e) => {
                tracing::debug!(path = %staged.display(), error = %e, "cannot share the staging file with readers");
                None
            }
        };
        FsStaging {
            inner,
            digest,
            key,
            staged,
            file: Some(file),
            pending: None,
            batch: Vec::new(),
            batch_len: 0,
            reader,
            written: Arc::new(AtomicU64::new(0)),
            done: false,
        }
    }
}

/// Streams `range` of an open blob file in chunks of at most [`IO_CHUNK`] bytes.
pub(super) fn read_stream(file: File, range: Range<u64>, digest: Digest) -> ByteStream {
    let reader = ChunkReader::new(Arc::new(file));
    futures::stream::try_unfold(
        (reader, range, digest),
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
    )
    .boxed()
}
