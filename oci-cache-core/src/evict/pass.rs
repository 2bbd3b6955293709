//! The eviction pass and the background task that runs it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use tracing::{debug, info, warn};

use super::access::AccessIndex;
use super::{DiskBudget, PinPattern};
use crate::digest::Digest;
use crate::error::ErrorChain;
use crate::fleet::{Claim, Fleet, KeptLease, Leases};
use crate::manifest::Manifest;
use crate::observe::{EvictionEvent, SharedObserver};
use crate::storage::{RecordPrefix, Storage};
use crate::Result;

/// Manifests whose content eviction must keep besides the pinned images:
/// each root's blobs, and for an index its child manifests' blobs. For an
/// embedder's own content; hosted (pushed) repositories are always kept
/// without one.
#[async_trait]
pub trait ProtectedRoots: Send + Sync + std::fmt::Debug {
    /// The manifest digests to keep, asked once per pass that must evict.
    async fn manifest_roots(&self) -> Result<Vec<Digest>>;

    /// Blobs to keep that no kept manifest names yet (e.g. layers pushed
    /// before their manifest). None by default.
    async fn blob_roots(&self) -> Result<Vec<Digest>> {
        Ok(Vec::new())
    }
}

/// What one pass found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EvictReport {
    /// Blob bytes stored when the pass listed them.
    pub stored_bytes: u64,
    /// Blobs stored when the pass listed them.
    pub stored_blobs: u64,
    /// Bytes of blobs that pins and protected roots keep (counted only by
    /// a pass that had to evict: one under the cap does not look them up).
    pub protected_bytes: u64,
    /// Blobs deleted.
    pub evicted_blobs: u64,
    /// Bytes deleted.
    pub evicted_bytes: u64,
    /// Over the cap but left alone because a client or fill held them.
    pub skipped_busy: u64,
    /// Over the cap, but another replica on the same bucket holds the
    /// eviction lease and is evicting: this pass deleted nothing.
    pub left_to_another_replica: bool,
    /// Protected content alone is over the cap (it is kept).
    pub protected_over_cap: bool,
}

/// Runs eviction passes over `storage` for a [`DiskBudget`].
#[derive(Debug)]
pub struct Evictor<S: ?Sized> {
    storage: Arc<S>,
    budget: Arc<DiskBudget>,
    pins: Vec<PinPattern>,
    roots: Vec<Arc<dyn ProtectedRoots>>,
    observer: SharedObserver,
    pub(super) index: tokio::sync::Mutex<AccessIndex>,
    /// Replicas on one bucket elect one evicting pass at a time.
    leases: Option<Leases>,
}

/// Whether this pass may delete ([`Evictor::with_fleet`]).
enum Election {
    /// No fleet, or leases off or failing: evict as a single replica does.
    Alone,
    /// Elected: the eviction lease is held (renewed) until the pass ends.
    Mine(KeptLease),
    /// Another replica is evicting.
    Other,
}

impl<S: Storage + ?Sized> Evictor<S> {
    /// An evictor that keeps what `pins` match.
    pub fn new(
        storage: Arc<S>,
        budget: Arc<DiskBudget>,
        pins: Vec<PinPattern>,
        observer: SharedObserver,
    ) -> Self {
        Evictor {
            storage,
            budget,
            pins,
            roots: Vec::new(),
            observer,
            index: tokio::sync::Mutex::new(AccessIndex::default()),
            leases: None,
        }
    }

    /// Replicas on one bucket: a pass deletes only while it holds the
    /// fleet's eviction lease, so one replica evicts at a time and two
    /// passes never pick their victims from the same listing. Without
    /// usable leases (off, or a failing call) every pass evicts as alone.
    pub fn with_fleet(mut self, fleet: &Fleet) -> Self {
        self.leases = fleet.leases().cloned();
        self
    }

    /// Whether passes are elected through the fleet's eviction lease
    /// ([`with_fleet`](Self::with_fleet) on a bucket with leases on).
    pub fn elected_in_fleet(&self) -> bool {
        self.leases.is_some()
    }

    /// Takes the eviction lease for a pass that must delete.
    async fn elect(&self) -> Election {
        let Some(leases) = &self.leases else {
            return Election::Alone;
        };
        let claimed = match leases.named_key("eviction") {
            Ok(key) => leases.claim(&key, None).await,
            Err(e) => Err(e),
        };
        match claimed {
            Ok(Claim::Mine(held)) => Election::Mine(held.keep()),
            Ok(Claim::Held(other)) => {
                debug!(
                    holder = other.holder_id(),
                    "another replica is evicting; this pass deletes nothing"
                );
                Election::Other
            }
            Err(e) => {
                warn!(error = %ErrorChain(&e), "eviction lease unavailable; evicting as a single replica");
                Election::Alone
            }
        }
    }

    /// Also keeps the content of the manifests `roots` names (e.g. hosted repositories).
    pub fn with_roots(mut self, roots: Arc<dyn ProtectedRoots>) -> Self {
        self.roots.push(roots);
        self
    }

    /// The background task: one pass at start (it also learns the stored
    /// size), then a pass whenever the budget goes over the cap, and a flush
    /// of the last-use times every `flush_every`. Runs until dropped.
    pub async fn run(self, flush_every: Duration) {
        let mut tick = tokio::time::interval(flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut need_pass = true;
        loop {
            if need_pass {
                let started = Instant::now();
                match self.pass().await {
                    Ok(report) => {
                        debug!(?report, elapsed = ?started.elapsed(), "eviction pass done");
                        if report.protected_over_cap {
                            // Nothing more can go: wait a little before the next
                            // listing rather than one per stored blob.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                    Err(e) => {
                        warn!(error = %ErrorChain(&e), "eviction pass failed; retrying at the next flush interval");
                    }
                }
            }
            need_pass = tokio::select! {
                () = self.budget.over_cap_signal() => true,
                _ = tick.tick() => {
                    if let Err(e) = self.flush().await {
                        warn!(error = %ErrorChain(&e), "writing the access index failed; last-use times stay in memory until the next flush");
                    }
                    self.budget.over_cap()
                }
            };
        }
    }

    /// Writes the last-use times seen since the last flush to the access index.
    pub async fn flush(&self) -> Result<()> {
        let mut index = self.index.lock().await;
        index.load(self.storage.as_ref()).await?;
        let uses = self.budget.take_used();
        let count = uses.len();
        let shards = index.flush(self.storage.as_ref(), uses, &[]).await?;
        if shards > 0 {
            debug!(uses = count, shards, "flushed the access index");
        }
        Ok(())
    }

    /// One pass: lists the blobs, and when they (with fills under way) are
    /// over the cap deletes the least recently used unprotected, unguarded
    /// ones down to the low watermark. Without a cap it only counts.
    pub async fn pass(&self) -> Result<EvictReport> {
        let mut index = self.index.lock().await;
        index.load(self.storage.as_ref()).await?;
        let mut report = EvictReport::default();
        let mut listed = Vec::new();
        let mut list = self.storage.blob_list();
        while let Some(info) = list.next().await {
            let info = info?;
            report.stored_bytes += info.size;
            report.stored_blobs += 1;
            listed.push(info);
        }
        drop(list);
        self.budget.set_stored(report.stored_bytes);
        let (Some(max), Some(low)) = (self.budget.max_size(), self.budget.low_watermark()) else {
            return Ok(report);
        };
        let pending = self.budget.pending();
        let mut total = report.stored_bytes;
        let mut gone = Vec::new();
        let over = total.saturating_add(pending) > max;
        let election = if over {
            self.elect().await
        } else {
            Election::Alone
        };
        if let Election::Other = election {
            report.left_to_another_replica = true;
            return Ok(report);
        }
        // Pins and roots are only looked up when something has to go: a pass
        // under the cap (the one at start, most passes) costs one listing.
        if over {
            let protected = self.protected().await?;
            let mut candidates: Vec<(SystemTime, u64, Digest)> = Vec::with_capacity(listed.len());
            for info in listed {
                if protected.contains(&info.digest) {
                    report.protected_bytes += info.size;
                    continue;
                }
                let last = [
                    self.budget.recent_use(&info.digest),
                    index.last_use(&info.digest),
                    info.last_access,
                ]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(SystemTime::UNIX_EPOCH);
                candidates.push((last, info.size, info.digest));
            }
            candidates.sort_unstable_by_key(|(last, _, _)| *last);
            for (_, size, digest) in candidates {
                if total.saturating_add(pending) <= low {
                    break;
                }
                if !self.budget.begin_delete(&digest) {
                    report.skipped_busy += 1;
                    continue;
                }
                let deleted = self.storage.blob_delete(&digest).await;
                self.budget.end_delete(&digest);
                match deleted {
                    Ok(()) => {
                        total -= size;
                        self.budget.removed(size);
                        report.evicted_blobs += 1;
                        report.evicted_bytes += size;
                        debug!(%digest, size, "evicted");
                        gone.push(digest);
                    }
                    Err(e) => {
                        warn!(%digest, error = %ErrorChain(&e), "cannot evict a blob; trying the next one");
                    }
                }
            }
        }
        report.protected_over_cap = report.protected_bytes > max;
        if report.protected_over_cap {
            warn!(
                protected_bytes = report.protected_bytes,
                max_size = max,
                "pinned and hosted content alone is over max_size; it is kept: raise max_size or pin less"
            );
        }
        if report.evicted_blobs > 0 {
            info!(
                blobs = report.evicted_blobs,
                bytes = report.evicted_bytes,
                stored_before = report.stored_bytes,
                stored_after = total,
                max_size = max,
                "evicted least recently used blobs"
            );
            if let Err(e) = index
                .flush(self.storage.as_ref(), HashMap::new(), &gone)
                .await
            {
                debug!(error = %ErrorChain(&e), "cannot drop evicted blobs from the access index");
            }
        }
        self.observer.eviction(&EvictionEvent {
            blobs: report.evicted_blobs,
            bytes: report.evicted_bytes,
            stored_bytes: total,
            protected_bytes: report.protected_bytes,
            protected_over_cap: report.protected_over_cap,
        });
        if let Election::Mine(lease) = election {
            lease.release().await;
        }
        Ok(report)
    }

    /// Blobs of pinned images and protected roots.
    async fn protected(&self) -> Result<HashSet<Digest>> {
        let mut roots = Vec::new();
        if !self.pins.is_empty() {
            let mut tags = self.storage.record_list(&RecordPrefix::tags());
            while let Some(key) = tags.next().await {
                let Some(tag) = key?.tag_key() else { continue };
                if self.pins.iter().any(|pin| pin.matches(&tag)) {
                    if let Some(record) = self.storage.tag_get(&tag).await? {
                        roots.push(record.digest);
                    }
                }
            }
        }
        // Pushed content (hosted repositories) is never evicted, whoever
        // built this evictor and whatever roots it got. (Open uploads keep
        // their bytes as records, not blobs: nothing here to protect.)
        roots.extend(crate::storage::protected_manifests(self.storage.as_ref()).await?);
        // Blobs a push completed, in their grace until a manifest names them.
        let mut loose = crate::storage::protected_blobs(self.storage.as_ref()).await?;
        for source in &self.roots {
            roots.extend(source.manifest_roots().await?);
            loose.extend(source.blob_roots().await?);
        }
        let mut blobs = reachable(self.storage.as_ref(), roots).await?.blobs;
        blobs.extend(loose);
        Ok(blobs)
    }
}

/// Manifests and blobs reachable from some root manifests.
#[derive(Debug, Default)]
pub(super) struct Reachable {
    pub(super) manifests: HashSet<Digest>,
    pub(super) blobs: HashSet<Digest>,
}

/// Follows `roots` through storage: an index's child manifests, an image's
/// config and layers. Manifests not stored (or unreadable) are skipped.
pub(super) async fn reachable<S: Storage + ?Sized>(
    storage: &S,
    roots: Vec<Digest>,
) -> Result<Reachable> {
    let mut found = Reachable::default();
    let mut queue = roots;
    while let Some(digest) = queue.pop() {
        if !found.manifests.insert(digest.clone()) {
            continue;
        }
        let Some(stored) = storage.manifest_get(&digest).await? else {
            continue;
        };
        match Manifest::parse(&digest, &stored.bytes) {
            Ok(Manifest::Index(index)) => {
                queue.extend(index.manifests.into_iter().map(|d| d.digest));
            }
            Ok(Manifest::Image(image)) => {
                found.blobs.extend(image.blobs().map(|d| d.digest.clone()));
            }
            Err(e) => {
                debug!(%digest, error = %e, "a stored manifest does not parse; nothing below it is protected");
            }
        }
    }
    Ok(found)
}
