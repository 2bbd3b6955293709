//! Bounded disk: a byte cap with least-recently-used eviction, pins, purge.
//!
//! - [`DiskBudget`] is what the engine tells about blobs: stored (bytes
//!   added), read (a use), being filled or read right now (a [`BlobGuard`]).
//!   It is in-memory and cheap: a read costs a map insert, never a storage
//!   write.
//! - [`Evictor`] runs the policy: a *pass* lists the stored blobs once,
//!   protects what must stay (pins, [`ProtectedRoots`], guarded digests) and,
//!   when the stored bytes (plus the announced sizes of fills under way)
//!   exceed the cap, deletes the least recently used blobs until they are
//!   under the low watermark (90 % of the cap). [`Evictor::run`] is the
//!   background task: a pass whenever the budget goes over the cap, and a
//!   flush of the last-use times every interval. Requests never wait for it.
//! - [`purge`] removes an image's tag record, manifests and the blobs no
//!   other cached manifest uses.
//! - [`announce_removal`] and [`RemovalWatch`]: a command that removed blobs
//!   beside a running server tells it so through the storage.
//!
//! **Only blobs are evicted.** Manifests and tag records stay: they are a
//! few KiB, they are what lets a pin or a purge find an image's blobs, and a
//! later pull of an image whose layers were evicted simply refetches the
//! missing layers (a blob miss is an ordinary pull-through fill).
//!
//! **Last use** is the latest of: what this process saw (in memory), the
//! access index (records `access/<algorithm>/<shard>`, one per two-hex
//! shard, flushed every interval: the only last-use store an object store
//! has, where reads do not change anything), and what the backend reports
//! (the filesystem's access time, which its reads set).
//!
//! **Never evicted**: blobs with a [`BlobGuard`] (a fill writing them, a
//! client reading them; a read that starts while a blob is being deleted
//! treats it as a miss and refetches), blobs of pinned images ([`PinPattern`]
//! over the tag records: all platforms of an index), and blobs of the
//! manifests a [`ProtectedRoots`] names, and pushed content: every manifest
//! a record under a protecting prefix links ([`RecordPrefix::protecting`](crate::storage::RecordPrefix::protecting):
//! a hosted repository's `hosted/…` links, read from storage, so eviction
//! needs nothing from the push side), with its config, layers and
//! index children, kept by every pass without any wiring (open uploads keep
//! their bytes as records under `upload-pieces/…`, never as blobs, so there
//! is nothing of theirs to evict), and every blob a record under
//! [`RecordPrefix::protecting_blobs`](crate::storage::RecordPrefix::protecting_blobs)
//! keeps until its grace ends (a blob a push completed, waiting for the
//! manifest that names it). When protected
//! content alone is over the cap it is kept, with a warning and an
//! [`EvictionEvent`](crate::observe::EvictionEvent) saying so.

mod access;
mod pass;
mod pin;
mod purge;
mod removals;
mod size;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

pub use pass::{EvictReport, Evictor, ProtectedRoots};
pub use pin::PinPattern;
pub use purge::{purge, purge_target, PurgeReport};
pub use removals::{announce_removal, Removal, RemovalWatch};
pub(crate) use size::deserialize as deserialize_size_u64;
pub(crate) use size::deserialize_opt as deserialize_size;
pub use size::parse_size;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tokio::sync::Notify;

use crate::digest::Digest;

/// The low watermark, in per cent of the cap: a pass evicts down to here so
/// that the next few fills do not start another pass at once.
pub const LOW_WATERMARK_PERCENT: u64 = 90;

/// What the engine tells the evictor: bytes stored, blobs used, blobs busy.
///
/// Shared (`Arc`) by the engine and the [`Evictor`]; every method is a short
/// critical section with no await, so the request path never waits on a pass.
#[derive(Debug)]
pub struct DiskBudget {
    max_size: Option<u64>,
    stored: AtomicU64,
    pending: AtomicU64,
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Open guards per digest.
    guards: HashMap<Digest, u32>,
    /// Digests a pass or purge is deleting right now.
    deleting: HashSet<Digest>,
    /// Uses seen since the last flush.
    used: HashMap<Digest, SystemTime>,
}

impl State {
    /// One more guard on `digest`; its digest is copied only for the first
    /// (concurrent readers of a hot blob share the entry).
    fn add_guard(&mut self, digest: &Digest) {
        match self.guards.get_mut(digest) {
            Some(count) => *count += 1,
            None => {
                self.guards.insert(digest.clone(), 1);
            }
        }
    }
}

impl DiskBudget {
    /// A budget with a cap of `max_size` bytes of blobs (`None`: no cap, and
    /// no use tracking).
    pub fn new(max_size: Option<u64>) -> Self {
        DiskBudget {
            max_size,
            stored: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        }
    }

    /// The cap, if any.
    pub fn max_size(&self) -> Option<u64> {
        self.max_size
    }

    /// Where a pass stops evicting: [`LOW_WATERMARK_PERCENT`] of the cap.
    pub fn low_watermark(&self) -> Option<u64> {
        self.max_size
            .map(|max| max / 100 * LOW_WATERMARK_PERCENT + max % 100 * LOW_WATERMARK_PERCENT / 100)
    }

    /// Stored blob bytes as far as this process knows (the last pass's count
    /// plus what was stored and removed since).
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// Whether stored bytes plus fills under way exceed the cap.
    pub fn over_cap(&self) -> bool {
        self.max_size.is_some_and(|max| {
            self.stored()
                .saturating_add(self.pending.load(Ordering::Relaxed))
                > max
        })
    }

    /// A blob of `bytes` was stored; wakes the evictor when that crosses the cap.
    pub fn added(&self, bytes: u64) {
        self.stored.fetch_add(bytes, Ordering::Relaxed);
        if self.over_cap() {
            self.wake.notify_one();
        }
    }

    /// Blobs of `bytes` in all were removed.
    pub fn removed(&self, bytes: u64) {
        let _ = self
            .stored
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s.saturating_sub(bytes))
            });
    }

    /// Sets the stored bytes to what a full count found.
    pub(crate) fn set_stored(&self, bytes: u64) {
        self.stored.store(bytes, Ordering::Relaxed);
    }

    /// Fills under way announced this many bytes (not yet stored).
    pub(crate) fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// A fill of `size` bytes started: counted against the cap until the
    /// returned reservation is dropped, so eviction makes room ahead of it.
    pub fn reserve(self: &Arc<Self>, size: u64) -> Reservation {
        self.pending.fetch_add(size, Ordering::Relaxed);
        if self.over_cap() {
            self.wake.notify_one();
        }
        Reservation {
            budget: Arc::clone(self),
            size,
        }
    }

    /// Records a use of `digest` (a read, a fill) now.
    pub fn used(&self, digest: &Digest) {
        if self.max_size.is_some() {
            let now = SystemTime::now();
            let mut state = self.lock();
            // A hot blob is used over and over: update its time in place
            // rather than copy its digest for every read.
            match state.used.get_mut(digest) {
                Some(at) => *at = now,
                None => {
                    state.used.insert(digest.clone(), now);
                }
            }
        }
    }

    /// A guard that keeps `digest` from being evicted while held, or `None`
    /// while it is being deleted (the caller then treats it as absent).
    pub fn guard(self: &Arc<Self>, digest: &Digest) -> Option<BlobGuard> {
        let mut state = self.lock();
        if state.deleting.contains(digest) {
            return None;
        }
        state.add_guard(digest);
        Some(BlobGuard {
            budget: Arc::clone(self),
            digest: digest.clone(),
        })
    }

    /// A guard for a fill, which holds one even while an older copy is
    /// being deleted: the fill writes a new one.
    pub(crate) fn hold(self: &Arc<Self>, digest: &Digest) -> BlobGuard {
        self.lock().add_guard(digest);
        BlobGuard {
            budget: Arc::clone(self),
            digest: digest.clone(),
        }
    }

    /// Whether a guard on `digest` is held.
    pub fn is_guarded(&self, digest: &Digest) -> bool {
        self.lock().guards.contains_key(digest)
    }

    /// Marks `digest` as being deleted unless it is guarded; `false` when
    /// it is guarded (leave it).
    pub(crate) fn begin_delete(&self, digest: &Digest) -> bool {
        let mut state = self.lock();
        if state.guards.contains_key(digest) {
            return false;
        }
        state.deleting.insert(digest.clone());
        true
    }

    /// Ends what [`begin_delete`](Self::begin_delete) started.
    pub(crate) fn end_delete(&self, digest: &Digest) {
        let mut state = self.lock();
        state.deleting.remove(digest);
        state.used.remove(digest);
    }

    /// The uses seen since the last call.
    pub(crate) fn take_used(&self) -> HashMap<Digest, SystemTime> {
        std::mem::take(&mut self.lock().used)
    }

    /// The uses seen since the last [`take_used`](Self::take_used), copied.
    pub(crate) fn recent_use(&self, digest: &Digest) -> Option<SystemTime> {
        self.lock().used.get(digest).copied()
    }

    /// Resolves when the budget went over the cap since the last call.
    pub(crate) async fn over_cap_signal(&self) {
        self.wake.notified().await;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a set of counters and marks, each update complete in
        // itself: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps a blob from being evicted while held (a fill writing it, a client
/// reading it).
#[derive(Debug)]
pub struct BlobGuard {
    budget: Arc<DiskBudget>,
    digest: Digest,
}

impl Drop for BlobGuard {
    fn drop(&mut self) {
        let mut state = self.budget.lock();
        if let Some(count) = state.guards.get_mut(&self.digest) {
            *count -= 1;
            if *count == 0 {
                state.guards.remove(&self.digest);
            }
        }
    }
}

/// The announced size of a fill under way, counted against the cap until dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<DiskBudget>,
    size: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let size = self.size;
        let _ = self
            .budget
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(p.saturating_sub(size))
            });
    }
}
