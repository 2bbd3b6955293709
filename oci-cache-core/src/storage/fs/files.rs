//! The blocking file operations behind [`FsStorage`](super::FsStorage): staging,
//! publishing, removing with empty-directory pruning, and the directory walk
//! that listings stream from.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{io_error, Inner};
use crate::storage::keys;
use crate::Result;

/// Entries a listing walks ahead of its consumer.
const WALK_AHEAD: usize = 256;

impl Inner {
    /// `key` comes from `keys`, whose segments cannot escape `root`.
    pub(super) fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// A new, empty, exclusively created staging file, open for reading
    /// too: a blob fill reads what is staged before the commit.
    pub(super) fn create_staging(&self) -> io::Result<(PathBuf, File)> {
        let path = self
            .path(keys::STAGING)
            .join(uuid::Uuid::new_v4().simple().to_string());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((path, file))
    }

    pub(super) fn write_all(&self, file: &mut File, bytes: &[u8]) -> io::Result<()> {
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

    /// Syncs (when durable) and moves a staged file to `key`: replacing what
    /// is there, or, with `create`, only when nothing is (then `Ok(false)`
    /// if something was, and the staged file is gone either way).
    pub(super) fn publish(
        &self,
        file: File,
        staged: &Path,
        key: &str,
        create: bool,
    ) -> io::Result<bool> {
        if self.options.durable {
            file.sync_all()?;
        }
        drop(file);
        let target = self.path(key);
        let parent = target.parent().unwrap_or(&self.root);
        // A concurrent delete may prune the directory between create and
        // rename; trying again is enough because it only prunes empty ones.
        let mut attempts = 0;
        let created = loop {
            std::fs::create_dir_all(parent)?;
            // A hard link fails on an existing target, which rename would replace.
            let moved = if create {
                std::fs::hard_link(staged, &target)
            } else {
                std::fs::rename(staged, &target)
            };
            match moved {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
                Err(e) if create && e.kind() == io::ErrorKind::AlreadyExists => break false,
                other => {
                    other?;
                    break true;
                }
            }
        };
        if create {
            std::fs::remove_file(staged)?;
        }
        if created && self.options.durable {
            File::open(parent)?.sync_all()?;
        }
        Ok(created)
    }

    /// Writes small content (a record) atomically under `key`; see
    /// [`publish`](Self::publish) for `create`.
    pub(super) fn write_small(&self, key: &str, bytes: &[u8], create: bool) -> io::Result<bool> {
        let (staged, mut file) = self.create_staging()?;
        let result = self
            .write_all(&mut file, bytes)
            .and_then(|()| self.publish(file, &staged, key, create));
        if result.is_err() {
            let _ = std::fs::remove_file(&staged);
        }
        result
    }

    /// The content of `key`, or `None` when there is no such file.
    pub(super) fn read_optional(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(key)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes `key`, then the directories above it that became empty, up
    /// to its top-level directory (`blobs`, `tags`, …), which stays.
    pub(super) fn remove(&self, key: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let stop = self.path(key.split('/').next().unwrap_or_default());
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

    /// Every file at or below `top` (a key), as a key with its metadata,
    /// streamed from one blocking task that walks at most [`WALK_AHEAD`]
    /// entries ahead of the consumer and stops when the stream is dropped.
    pub(super) fn walk(
        self: &Arc<Self>,
        top: &str,
    ) -> BoxStream<'static, Result<(String, Metadata)>> {
        let inner = Arc::clone(self);
        let top = top.to_owned();
        // Started on first poll, so building the stream needs no runtime.
        let start = async move {
            let (tx, rx) = mpsc::channel(WALK_AHEAD);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = inner.walk_into(&top, &tx) {
                    let _ = tx.blocking_send(Err(io_error(e, format!("cannot list {top}"))));
                }
            });
            futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            })
        };
        futures::stream::once(start).flatten().boxed()
    }

    fn walk_into(
        &self,
        top: &str,
        tx: &mpsc::Sender<Result<(String, Metadata)>>,
    ) -> io::Result<()> {
        let meta = match std::fs::symlink_metadata(self.path(top)) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if !meta.is_dir() {
            let _ = tx.blocking_send(Ok((top.to_owned(), meta)));
            return Ok(());
        }
        let mut pending = vec![top.to_owned()];
        while let Some(key) = pending.pop() {
            let entries = match std::fs::read_dir(self.path(&key)) {
                Ok(entries) => entries,
                // Pruned by a delete while listing.
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
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                if meta.is_dir() {
                    pending.push(child);
                } else if tx.blocking_send(Ok((child, meta))).is_err() {
                    // The consumer dropped the stream.
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
