//! What the fills under way have received so far, for status pages.

use super::buffer::{lock, Phase};
use super::BlobFills;
use crate::cache::PullThrough;
use crate::digest::Digest;
use crate::storage::Storage;
use crate::upstream::Upstream;

/// One blob fill under way, as [`PullThrough::fills_in_progress`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillProgress {
    /// The blob being fetched.
    pub digest: Digest,
    /// Bytes received from upstream (or a peer) so far.
    pub received: u64,
    /// The blob's size, once upstream announced it.
    pub size: Option<u64>,
}

impl BlobFills {
    /// The fills under way, sorted by digest (a stable order for pages).
    fn progress(&self) -> Vec<FillProgress> {
        let fills: Vec<_> = lock(&self.map)
            .iter()
            .map(|(digest, fill)| (digest.clone(), fill.clone()))
            .collect();
        // The map lock is released before each fill's own lock is taken.
        let mut progress: Vec<FillProgress> = fills
            .into_iter()
            .map(|(digest, fill)| {
                let size = match &*fill.progress.borrow() {
                    Phase::Streaming { size } => *size,
                    Phase::Done(Ok(size)) => Some(*size),
                    Phase::Connecting | Phase::Done(Err(_)) => None,
                };
                FillProgress {
                    digest,
                    received: fill.buffer().written(),
                    size,
                }
            })
            .collect();
        progress.sort_by(|a, b| a.digest.as_str().cmp(b.digest.as_str()));
        progress
    }
}

impl<S: Storage + ?Sized, U: Upstream + ?Sized> PullThrough<S, U> {
    /// The blob fills under way right now with what each has received (for
    /// status pages; [`blob_fills_in_flight`](Self::blob_fills_in_flight)
    /// counts them).
    pub fn fills_in_progress(&self) -> Vec<FillProgress> {
        self.inner.blob_fills.progress()
    }
}
