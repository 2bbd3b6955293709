//! A fill's shared state: its phase, the window of recent chunks in memory,
//! and the file that holds the bytes that left the window: storage's own
//! staging file where it can be read before the commit (the filesystem), or
//! else a spool of the fill's own (see [`spill`](super::spill)).

use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::watch;

use super::super::aborted;
use crate::reference::{Registry, Repository};
use crate::storage::StagedBytes;
use crate::{Error, Result};

/// Largest single read from the staging file or spool (the filesystem
/// backend's chunk size).
const DISK_READ: u64 = 128 * 1024;

/// The registry and repository a fill fetches through.
pub(super) type Source = (Registry, Repository);

#[derive(Debug, Clone)]
pub(super) enum Phase {
    /// Waiting for upstream to answer.
    Connecting,
    /// Bytes are arriving; `size` as upstream announced it.
    Streaming { size: Option<u64> },
    /// Verified with this size, or failed.
    Done(Result<u64, Arc<Error>>),
}

/// One blob being fetched.
pub(super) struct Fill {
    /// Phase changes and every arrival of bytes notify the readers.
    pub(super) progress: watch::Sender<Phase>,
    buffer: Mutex<Buffer>,
    /// Where the bytes come from: a client asking through another source
    /// retries a failure of this one that is not about the content.
    pub(super) source: Source,
    /// Bytes of ranges ahead of this fill forwarded upstream on their own
    /// (see [`forward`](super::forward)).
    forwarded: AtomicU64,
}

/// Bytes `[0, start)` are behind the window ([`Behind`]), `[start, start +
/// len)` in `chunks`.
pub(super) struct Buffer {
    chunks: VecDeque<Bytes>,
    start: u64,
    pub(super) len: u64,
    behind: Behind,
}

/// Where the bytes before the window are.
enum Behind {
    /// Nowhere (yet, or since the spool failed).
    Gone,
    /// In the fill's spool, every one of them.
    Spool(Arc<File>),
    /// In storage's staging file, up to what it has written: bytes leave
    /// the window only once staged, except after the write failed.
    Staged(StagedBytes),
}

/// Where a reader finds the bytes at its position.
pub(super) enum Located {
    Memory(Bytes),
    /// In this file (the staging file or the spool), at most this many bytes.
    Disk(Arc<File>, u64),
    /// Left memory with no file to hold them: the reader needs its own fetch.
    Lost,
    NotYet,
}

impl Buffer {
    /// The bytes the fill has received so far.
    pub(super) fn written(&self) -> u64 {
        self.start + self.len
    }

    pub(super) fn locate(&self, pos: u64, end: u64) -> Located {
        if pos >= self.written() {
            return Located::NotYet;
        }
        if pos < self.start {
            let (file, on_disk) = match &self.behind {
                Behind::Spool(file) => (file, self.start),
                Behind::Staged(staged) => (staged.file(), staged.written().min(self.start)),
                Behind::Gone => return Located::Lost,
            };
            if pos >= on_disk {
                return Located::Lost;
            }
            let len = (end.min(on_disk) - pos).min(DISK_READ);
            return Located::Disk(Arc::clone(file), len);
        }
        let mut offset = self.start;
        for chunk in &self.chunks {
            let chunk_end = offset + chunk.len() as u64;
            if pos < chunk_end {
                let from = usize::try_from(pos - offset).unwrap_or_default();
                let to = usize::try_from(end.min(chunk_end) - offset).unwrap_or_default();
                return Located::Memory(chunk.slice(from..to));
            }
            offset = chunk_end;
        }
        Located::NotYet
    }

    /// The oldest chunks beyond `keep` bytes, and the offset of the first.
    fn oldest(&self, keep: u64) -> (Vec<Bytes>, u64) {
        let count = self.beyond(keep, u64::MAX).0;
        (
            self.chunks.iter().take(count).cloned().collect(),
            self.start,
        )
    }

    /// How many of the oldest chunks lie beyond `keep` bytes and end at or
    /// before offset `upto`, and the offset where they end.
    fn beyond(&self, keep: u64, upto: u64) -> (usize, u64) {
        let (mut count, mut end, mut remaining) = (0, self.start, self.len);
        for chunk in &self.chunks {
            let chunk_end = end + chunk.len() as u64;
            if remaining <= keep || chunk_end > upto {
                break;
            }
            remaining -= chunk.len() as u64;
            (count, end) = (count + 1, chunk_end);
        }
        (count, end)
    }

    /// Forgets the first `count` chunks, which end at offset `moved`.
    fn advance(&mut self, count: usize, moved: u64) {
        let count = count.min(self.chunks.len());
        self.chunks.drain(..count);
        self.len -= moved - self.start;
        self.start = moved;
    }
}

impl Fill {
    pub(super) fn new(source: Source) -> Self {
        Fill {
            progress: watch::Sender::new(Phase::Connecting),
            buffer: Mutex::new(Buffer {
                chunks: VecDeque::new(),
                start: 0,
                len: 0,
                behind: Behind::Gone,
            }),
            source,
            forwarded: AtomicU64::new(0),
        }
    }

    /// Counts `len` more forwarded bytes if the total stays within `budget`;
    /// false (and nothing counted) otherwise.
    pub(super) fn reserve_forward(&self, len: u64, budget: u64) -> bool {
        self.forwarded
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(len).filter(|&total| total <= budget)
            })
            .is_ok()
    }

    /// Gives back `len` bytes reserved by a forward that did not happen.
    pub(super) fn release_forward(&self, len: u64) {
        self.forwarded.fetch_sub(len, Ordering::SeqCst);
    }

    /// Waits until the blob's size is known: announced by upstream, or, when
    /// upstream sent no length, once the fill has finished.
    pub(super) async fn size(&self) -> Result<u64> {
        let mut rx = self.progress.subscribe();
        loop {
            let phase = rx.borrow_and_update().clone();
            match phase {
                Phase::Streaming { size: Some(size) } | Phase::Done(Ok(size)) => return Ok(size),
                Phase::Done(Err(e)) => return Err(e.duplicate()),
                Phase::Connecting | Phase::Streaming { size: None } => {}
            }
            if rx.changed().await.is_err() {
                return Err(aborted("blob fill"));
            }
        }
    }

    pub(super) fn finish(&self, result: Result<u64, Arc<Error>>) {
        self.progress.send_replace(Phase::Done(result));
    }

    pub(super) fn is_done(&self) -> bool {
        matches!(*self.progress.borrow(), Phase::Done(_))
    }

    pub(super) fn has_failed(&self) -> bool {
        matches!(*self.progress.borrow(), Phase::Done(Err(_)))
    }

    pub(super) fn buffer(&self) -> MutexGuard<'_, Buffer> {
        lock(&self.buffer)
    }

    pub(super) fn push(&self, chunk: Bytes) {
        {
            let mut buffer = self.buffer();
            buffer.len += chunk.len() as u64;
            buffer.chunks.push_back(chunk);
        }
        self.progress.send_modify(|_| ());
    }

    /// Moves the oldest chunks to the spool until at most `keep` bytes remain in
    /// memory. Chunks leave memory only once written, so readers never miss bytes.
    pub(super) async fn spill(&self, spool: &Arc<File>, keep: u64) -> Result<()> {
        let (batch, at) = self.buffer().oldest(keep);
        let file = Arc::clone(spool);
        let count = batch.len();
        let moved = blocking(move || {
            let mut at = at;
            for chunk in &batch {
                write_at(&file, chunk, at)?;
                at += chunk.len() as u64;
            }
            Ok(at)
        })
        .await?;
        let mut buffer = self.buffer();
        buffer.advance(count, moved);
        if !matches!(buffer.behind, Behind::Spool(_)) {
            buffer.behind = Behind::Spool(Arc::clone(spool));
        }
        Ok(())
    }

    /// Reads the bytes that leave the window from storage's staging file
    /// from now on (before any byte left it).
    pub(super) fn behind_staged(&self, staged: StagedBytes) {
        self.buffer().behind = Behind::Staged(staged);
    }

    /// Forgets the oldest chunks that storage has already staged, down to
    /// `keep` bytes: readers find them in the staging file. Chunks still on
    /// their way to the file stay (the storage channel bounds how many).
    pub(super) fn retire_staged(&self, keep: u64) {
        let mut buffer = self.buffer();
        let Behind::Staged(staged) = &buffer.behind else {
            return;
        };
        let (count, moved) = buffer.beyond(keep, staged.written());
        buffer.advance(count, moved);
    }

    /// Without a file to hold them: forgets the oldest chunks beyond `keep`
    /// bytes (and a spool, which the failure left incomplete). Readers that
    /// still need those bytes fetch their own copy ([`Located::Lost`]);
    /// memory stays bounded. A staging file still holds what it staged.
    pub(super) fn forget(&self, keep: u64) {
        let mut buffer = self.buffer();
        let (count, moved) = buffer.beyond(keep, u64::MAX);
        buffer.advance(count, moved);
        if matches!(buffer.behind, Behind::Spool(_)) {
            buffer.behind = Behind::Gone;
        }
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs blocking file I/O off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(aborted(&format!("spool i/o ({e})"))))
}

pub(super) fn spool_error(dir: &std::path::Path, e: std::io::Error) -> Error {
    Error::storage(
        "spool",
        format!(
            "cannot use the blob spool in {}; check that the directory exists, is writable and has free space",
            dir.display()
        ),
        e,
    )
}

pub(super) fn io_error(e: std::io::Error) -> Error {
    Error::storage("spool", "blob spool i/o failed", e)
}

pub(super) fn write_at(file: &File, bytes: &[u8], at: u64) -> Result<()> {
    write_all_at(file, bytes, at).map_err(io_error)
}

#[cfg(unix)]
fn write_all_at(file: &File, bytes: &[u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, at)
}

#[cfg(windows)]
fn write_all_at(file: &File, mut bytes: &[u8], mut at: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !bytes.is_empty() {
        let n = file.seek_write(bytes, at)?;
        bytes = &bytes[n..];
        at += n as u64;
    }
    Ok(())
}
