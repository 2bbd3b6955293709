//! Where a fill's bytes go when they leave its memory window.
//!
//! Every byte that has arrived stays readable: a chunk leaves the window only
//! once it is in a file that late joiners can read.
//!
//! - **Storage's own staging file**, when the storage write can be read
//!   before its commit ([`StagedBytes`]: the filesystem backend). The bytes
//!   are on disk once, where the blob will live; chunks leave the window as
//!   soon as the write has staged them. The descriptor follows the file
//!   through the rename at the commit, and still reads after an abort
//!   removed it, when nothing can see it as a blob any more.
//! - **A spool** of the fill's own (an anonymous file in
//!   [`spool_dir`](crate::cache::CacheOptions::spool_dir)) where storage cannot
//!   be read before the commit (S3 multipart uploads, memory), or when the
//!   fill stores nothing (a relay in a fleet). Only then is a cold byte
//!   written twice, and its disk must hold the rest of the blob both in the
//!   spool and, on a shared disk, in storage's staging (else no spool: see
//!   [`FillTask::spool_fits`]).
//! - **Nowhere**, once the spool cannot be written (or storage's write
//!   failed): the window stays bounded and readers that need forgotten
//!   bytes fetch their own copy.

use std::fs::File;
use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::warn;

use super::buffer::{blocking, spool_error};
use super::FillTask;
use crate::observe::StorageOperation;
use crate::storage::StagedBytes;
use crate::Result;

/// The pump's choice of where bytes that leave the window go; made the
/// first time the window overflows (small blobs never need one).
pub(super) struct Spill {
    /// The storage write's answer: its staged bytes, or dropped when it
    /// cannot be read before the commit (or the fill stores nothing).
    staged: Option<oneshot::Receiver<StagedBytes>>,
    state: State,
}

enum State {
    Undecided,
    Staged,
    /// Spooling; the spool is created on first use.
    Spool(Option<Arc<File>>),
    Nowhere,
}

impl Spill {
    pub(super) fn new(staged: Option<oneshot::Receiver<StagedBytes>>) -> Self {
        Spill {
            staged,
            state: State::Undecided,
        }
    }

    /// Brings the window back under `keep` bytes (down to half, so spool
    /// writes come in batches) without losing a byte a reader may need.
    /// `storing` is false once storage's write gave up.
    pub(super) async fn overflow<S: ?Sized, U: ?Sized>(
        &mut self,
        task: &FillTask<S, U>,
        size: Option<u64>,
        received: u64,
        keep: u64,
        storing: bool,
    ) {
        if let State::Undecided = self.state {
            self.state = match self.staged.take() {
                // Sent before the write takes its first chunk: no wait on the fill.
                Some(staged) => match staged.await {
                    Ok(staged) => {
                        task.fill.behind_staged(staged);
                        State::Staged
                    }
                    Err(_) => State::Spool(None),
                },
                None => State::Spool(None),
            };
            if matches!(self.state, State::Spool(None)) && !task.spool_fits(size, received) {
                self.state = State::Nowhere;
            }
        }
        match &mut self.state {
            State::Staged if storing => task.fill.retire_staged(keep / 2),
            State::Spool(spool) => {
                if let Err(e) = task.spill(spool, keep / 2).await {
                    // Serving goes on without the spool (see the module docs).
                    task.engine.write_failed(StorageOperation::Spool, &e);
                    self.state = State::Nowhere;
                    task.fill.forget(keep / 2);
                }
            }
            State::Staged | State::Nowhere | State::Undecided => task.fill.forget(keep / 2),
        }
    }
}

impl<S: ?Sized, U: ?Sized> FillTask<S, U> {
    /// Whether the spool's disk can hold the rest of the blob twice: once in
    /// the spool, once in storage's staging (on a filesystem backend that
    /// cannot lend its staging file the two may share a disk). When not, the
    /// fill goes on without a spool so the stored copy gets the space: a cold
    /// blob needs its size free, not twice that. Readers that fall out of the
    /// window then fetch on their own, as after a spool write failure. An
    /// unknown size spools (and stops spooling if the disk fills).
    fn spool_fits(&self, size: Option<u64>, received: u64) -> bool {
        let Some(size) = size else {
            return true;
        };
        let dir = self.spool_dir();
        let Some(free) = crate::file_io::free_space(&dir) else {
            return true;
        };
        let remaining = size.saturating_sub(received);
        let needed = remaining.saturating_mul(2);
        if free >= needed {
            return true;
        }
        warn!(
            digest = %self.digest,
            free,
            needed,
            spool_dir = %dir.display(),
            "low disk space: this fill keeps no spool, so the blob itself fits; clients that fall behind fetch on their own"
        );
        false
    }

    /// Spills the window down to `keep` bytes, creating the spool on first use.
    async fn spill(&self, spool: &mut Option<Arc<File>>, keep: u64) -> Result<()> {
        let file = match spool {
            Some(file) => Arc::clone(file),
            None => {
                let file = Arc::new(self.create_spool().await?);
                *spool = Some(Arc::clone(&file));
                file
            }
        };
        self.fill.spill(&file, keep).await
    }

    pub(super) fn spool_dir(&self) -> std::path::PathBuf {
        self.engine
            .options
            .spool_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
    }

    async fn create_spool(&self) -> Result<File> {
        let dir = self.spool_dir();
        blocking(move || tempfile::tempfile_in(&dir).map_err(|e| spool_error(&dir, e))).await
    }
}
