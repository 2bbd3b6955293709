//! Blob misses: one detached fill per digest, shared by every client that asks.
//!
//! # Design
//!
//! A fill is a tokio task, not tied to any request, that reads the upstream
//! body once and tees each chunk into
//!
//! 1. the storage write ([`BlobSource::Preverified`] fed through a
//!    bounded channel: the fill hashes every byte once, for its clients and
//!    for storage, and ends the channel with its verdict, so the backend
//!    commits atomically without hashing the blob a second time), and
//! 2. the fill's *buffer*, which every joined client reads at its own pace.
//!
//! The buffer is a window of the most recent chunks in memory (at most
//! [`CacheOptions::fill_window`](super::CacheOptions::fill_window) bytes, plus
//! what the storage write has not staged yet) backed by a file: chunks leave
//! the window only once they are in that file. On the filesystem the file is
//! storage's own staging file, read through the write's descriptor before
//! the commit, so each cold byte is written to disk once; where storage
//! cannot be read before the commit (S3 multipart, memory) it is a spool of
//! the fill's own (see [`spill`]). So every byte that has arrived is always
//! readable, either from memory or from that file, and memory stays flat
//! whatever the blob size. Blobs smaller than the window never touch it. A
//! client that joins late, or falls behind, reads from the file until it
//! reaches the window and then follows live; a slow client never slows the
//! fill or the other clients, and the fill never waits for clients.
//!
//! The alternatives were weaker: keeping every chunk in memory grows with the
//! blob (1 GiB layers against a 48 MiB budget); a fixed ring with a broadcast
//! leaves late joiners nowhere to get the bytes that already passed; waiting for
//! the commit and then reading storage makes late joiners wait for the whole
//! blob. Reading the staging file before the commit shows no client anything
//! unverified that a spool would not have shown: the last byte still waits
//! for the verdict, and a failed verification removes the file, which no
//! reader can then see as a blob.
//!
//! Clients are told about progress through a `watch` channel (no polling). A
//! client's stream of the whole blob, or of a range up to its end, yields its
//! last byte only after the fill has verified the whole blob against its
//! digest (see [`reader`]); a range that ends before the blob's end is
//! answered as soon as the fill has passed it, and a range far ahead of the
//! fill is forwarded upstream on its own ([`forward`]). When
//! verification fails, every joined stream ends with that error instead (the
//! http layer then cuts the connection) and nothing is stored. The fill leaves
//! the single-flight map only after the storage write has finished, so a
//! request arriving after that finds the blob in storage, or, after a failure,
//! starts a clean new fill.
//!
//! # Cut connections
//!
//! The fill reads upstream through a [`resume`] body: a connection cut
//! mid-body is continued with `Range: bytes=N-` from the first byte not yet
//! hashed and staged, so clients never see the cut and the staged write goes
//! on; see [`resume`] for the checks on the answer and the retry bounds.
//! A large blob comes over several ranged connections at once, still hashed
//! and handed on in order; see [`segments`].
//!
//! # Hostile peers and full disks
//!
//! - A fill that fails for a reason of its own repository or upstream (not
//!   found, denied, unauthorized, unavailable, timeout) does not fail the
//!   clients that joined it through another repository: they continue with a
//!   fill through their own, from the byte they reached. Only failures of the
//!   content itself (wrong digest, wrong size, over
//!   [`max_blob_size`](super::CacheOptions::max_blob_size)) are shared.
//! - A body without a `Content-Length` is cut at `max_blob_size`.
//! - A cold blob needs its size free, not twice that: on the filesystem its
//!   late joiners read the staging file, which is the stored copy. Where a
//!   spool is needed, and its disk cannot hold the rest of the blob both in
//!   the spool and in storage's staging, the fill keeps no spool (logged as
//!   "low disk space") and the stored copy gets the space.
//! - When the spool cannot be created or written (disk full, read-only), or
//!   the storage write whose staging file backs the window fails, the fill
//!   goes on without them: the window stays bounded, clients that keep up
//!   are served from memory (and from what was staged before the failure),
//!   and a client that needs bytes which left memory otherwise gets its own
//!   verified upstream stream. A failed storage write never fails a client.
//!   Both are logged ("disk full", "read-only") and reported as
//!   [`StorageEvent`](crate::observe::StorageEvent)s; nothing is sticky, so
//!   the next fill tries both again.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn, Instrument};

use super::{aborted, BlobResponse, Shared};
use crate::digest::{Digest, DigestVerifier};
use crate::error::ErrorChain;
use crate::observe::{CacheOutcome, FillEvent, FillPhase, StorageOperation};
use crate::reference::{Registry, Repository};
use crate::storage::{BlobSource, ByteStream, Storage};
use crate::upstream::Upstream;
use crate::Result;

mod buffer;
mod feed;
mod fleet;
mod forward;
mod peer;
mod progress;
mod readback;
pub(super) mod reader;
mod resume;
mod segments;
mod spill;
mod stored;

use buffer::{lock, Fill, Phase, Source};
use feed::{preverified_stream, Feed};
use fleet::{FillBody, LeaseSlot};
use reader::{check_cap, retries_own, Origin, Reader};
use spill::Spill;

pub use progress::FillProgress;
pub use resume::FillRetry;
pub use segments::FillSegments;

/// Chunks queued between the fill and the storage write.
const STORE_QUEUE: usize = 8;

/// The fills under way, by digest. Blobs are content-addressed and shared by all
/// upstreams, so one fill serves every repository that asks for the digest.
pub(super) struct BlobFills {
    map: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
    /// Extra segment connections per upstream ([`segments`]).
    segment_slots: Arc<segments::SegmentSlots>,
}

impl std::fmt::Debug for BlobFills {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobFills")
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// How a request got its fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Joined {
    /// Joined a fill under way.
    Existing,
    /// Started the fill for the digest (now in the map).
    Created,
    /// Started a fill of its own, outside the map: another source's fill is
    /// under way, and this request must not depend on it.
    Private,
}

impl BlobFills {
    pub(super) fn new() -> Self {
        BlobFills {
            map: Arc::new(Mutex::new(HashMap::new())),
            segment_slots: Arc::default(),
        }
    }

    /// The same fills, for an engine reconfigured from this one: a request
    /// to either joins a fill the other started.
    pub(super) fn shared(&self) -> Self {
        BlobFills {
            map: Arc::clone(&self.map),
            segment_slots: Arc::clone(&self.segment_slots),
        }
    }

    /// Number of fills under way.
    pub(super) fn in_flight(&self) -> usize {
        lock(&self.map).len()
    }

    /// Whether a fill for `digest` is under way (and has not failed).
    pub(super) fn is_filling(&self, digest: &Digest) -> bool {
        lock(&self.map)
            .get(digest)
            .is_some_and(|fill| !fill.has_failed())
    }

    /// The size of the blob if a fill for it is under way and knows it.
    pub(super) fn known_size(&self, digest: &Digest) -> Option<u64> {
        let fill = lock(&self.map).get(digest).cloned()?;
        let phase = fill.progress.borrow().clone();
        match phase {
            Phase::Streaming { size } => size,
            Phase::Done(Ok(size)) => Some(size),
            Phase::Connecting | Phase::Done(Err(_)) => None,
        }
    }

    /// The fill for `digest`: the one under way (from any source, or with
    /// `own_only` from `source` only), or a new one.
    fn join(&self, digest: &Digest, source: &Source, own_only: bool) -> (Arc<Fill>, Joined) {
        let mut map = lock(&self.map);
        match map.get(digest) {
            // A failed fill may linger until its task's guard removes it; it
            // is replaced rather than joined.
            Some(fill) if !fill.has_failed() && (!own_only || fill.source == *source) => {
                (Arc::clone(fill), Joined::Existing)
            }
            Some(fill) if !fill.has_failed() => {
                (Arc::new(Fill::new(source.clone())), Joined::Private)
            }
            _ => {
                let fill = Arc::new(Fill::new(source.clone()));
                map.insert(digest.clone(), Arc::clone(&fill));
                (fill, Joined::Created)
            }
        }
    }
}

/// A client's request for a blob: the engine and the source it asked through.
struct ClientOrigin<S: ?Sized, U: ?Sized> {
    engine: Arc<Shared<S, U>>,
    source: Source,
    digest: Digest,
}

impl<S: Storage + ?Sized, U: Upstream + ?Sized> ClientOrigin<S, U> {
    /// Joins or starts a fill; a started one runs as its own task.
    fn fill(&self, own_only: bool) -> (Arc<Fill>, Joined) {
        let (fill, joined) = self
            .engine
            .blob_fills
            .join(&self.digest, &self.source, own_only);
        if joined == Joined::Existing {
            debug!(digest = %self.digest, "joining the blob fill under way");
        } else {
            // Nothing between the insert and this spawn can be cancelled (no
            // await), so a fill in the map always has a task behind it.
            let task = FillTask {
                engine: Arc::clone(&self.engine),
                fill: Arc::clone(&fill),
                registry: self.source.0.clone(),
                repository: self.source.1.clone(),
                digest: self.digest.clone(),
            };
            let span =
                tracing::info_span!("blob_fill", digest = %self.digest, upstream = %self.source.0);
            tokio::spawn(task.run().instrument(span));
        }
        (fill, joined)
    }
}

impl<S: Storage + ?Sized, U: Upstream + ?Sized> Origin for ClientOrigin<S, U> {
    fn source(&self) -> &Source {
        &self.source
    }

    fn own_fill(&self) -> Arc<Fill> {
        self.fill(true).0
    }

    fn direct(&self) -> BoxFuture<'static, Result<ByteStream>> {
        let engine = Arc::clone(&self.engine);
        let (registry, repository) = self.source.clone();
        let digest = self.digest.clone();
        async move {
            let fetched = engine
                .upstream
                .blob_get(&registry, &repository, &digest)
                .await?;
            let max = engine.options.max_blob_size;
            Ok(reader::verified(fetched.stream, digest, fetched.size, max))
        }
        .boxed()
    }
}

/// Serves a blob that is not in storage from the fill for it, starting one if
/// none is under way.
pub(super) async fn fetch<S, U>(
    engine: &Arc<Shared<S, U>>,
    registry: &Registry,
    repository: &Repository,
    digest: &Digest,
    range: Option<Range<u64>>,
) -> Result<BlobResponse>
where
    S: Storage + ?Sized,
    U: Upstream + ?Sized,
{
    if let Some(asked) = range.as_ref().filter(|_| !engine.options.fill_on_range) {
        if !engine.blob_fills.is_filling(digest) {
            let source = (registry, repository);
            if let Some(alone) =
                forward::alone(engine.upstream.as_ref(), source, digest, asked).await
            {
                return Ok(alone);
            }
        }
    }
    let origin = Arc::new(ClientOrigin {
        engine: Arc::clone(engine),
        source: (registry.clone(), repository.clone()),
        digest: digest.clone(),
    });
    let (mut fill, joined) = origin.fill(false);
    let mut retried = false;
    let size = match fill.size().await {
        Ok(size) => size,
        Err(e) if retries_own(&fill, origin.as_ref(), &e) => {
            debug!(%digest, error = %ErrorChain(&e), "the blob fill this request joined failed upstream; fetching through its own repository");
            fill = origin.fill(true).0;
            retried = true;
            fill.size().await?
        }
        Err(e) => return Err(e),
    };
    let range = crate::storage::resolve_range(size, range)?;
    let outcome = if joined == Joined::Existing {
        CacheOutcome::Coalesced
    } else {
        CacheOutcome::Miss
    };
    let source = (&origin.source.0, &origin.source.1);
    let upstream = engine.upstream.as_ref();
    let stream = match forward::ahead_of_fill(upstream, source, digest, &fill, &range, size).await {
        Some(forwarded) => forwarded,
        None => Reader::new(fill, range.clone(), size, origin, retried).into_stream(),
    };
    Ok(BlobResponse {
        size,
        range,
        stream,
        outcome,
    })
}

/// The detached task that fetches one blob.
struct FillTask<S: ?Sized, U: ?Sized> {
    engine: Arc<Shared<S, U>>,
    fill: Arc<Fill>,
    registry: Registry,
    repository: Repository,
    digest: Digest,
}

impl<S: Storage + ?Sized, U: Upstream + ?Sized> FillTask<S, U> {
    async fn run(self) {
        let _guard = FillGuard {
            map: Arc::clone(&self.engine.blob_fills.map),
            fill: Arc::clone(&self.fill),
            digest: self.digest.clone(),
        };
        // Eviction leaves a blob alone while it is being filled.
        let _held = self.engine.budget.hold(&self.digest);
        self.report(FillPhase::Started);
        let lease = LeaseSlot::default();
        self.fill_and_store(&lease).await;
        // After the commit (or the failure), never before: a replica that
        // then misses the blob finds it stored (or fills it itself).
        lease.release().await;
    }

    async fn fill_and_store(&self, lease: &LeaseSlot) {
        let digest = &self.digest;
        let body = match FillBody::open(self, lease).await {
            Ok(body) => body,
            Err(e) => {
                let error = ErrorChain(&e).to_string();
                warn!(%digest, registry = %self.registry, %error, "blob fetch failed");
                self.report(FillPhase::Failed { error });
                self.fill.finish(Err(Arc::new(e)));
                return;
            }
        };
        let size = body.size();
        let max = self.engine.options.max_blob_size;
        if let Some(announced) = size.filter(|&s| s > max) {
            let e = check_cap(announced, max)
                .err()
                .unwrap_or_else(|| aborted("blob fill"));
            warn!(%digest, error = %e, "blob announced over max_blob_size; not fetched");
            self.report(FillPhase::Failed {
                error: e.to_string(),
            });
            self.fill.finish(Err(Arc::new(e)));
            return;
        }
        info!(%digest, registry = %self.registry, repository = %self.repository, ?size, "filling blob");
        self.fill.progress.send_replace(Phase::Streaming { size });
        let reservation = size.map(|size| self.engine.budget.reserve(size));

        let stores = body.stores();
        let (to_store, store_rx) = mpsc::channel(STORE_QUEUE);
        let (staged_tx, staged_rx) = oneshot::channel();
        let mut taken_over = None;
        let pump = async {
            let to_store = stores.then_some(to_store);
            let spill = Spill::new(stores.then_some(staged_rx));
            let result = self
                .pump(body, size, to_store, spill, &mut taken_over)
                .await;
            // Readers are released as soon as the bytes are verified; the commit
            // below only decides what later requests find in storage.
            self.fill.finish(result.map_err(Arc::new));
        };
        let store = async {
            if !stores {
                return None;
            }
            let source = preverified_stream(store_rx).staged_to(staged_tx);
            let source = BlobSource::Preverified(source);
            let stored = self.engine.storage.blob_write_from(digest, size, source);
            Some(stored.await)
        };
        let ((), stored) = tokio::join!(pump, store);
        let stored = match (stored, taken_over) {
            (Some(stored), _) => Some(stored),
            (None, Some(write)) => Some(write.await.unwrap_or_else(|_| Err(aborted("blob write")))),
            (None, None) => None,
        };
        drop(reservation);
        self.conclude(stored);
    }

    /// Reports how the fill ended: `stored` is the storage write's result,
    /// `None` for a relay that stored nothing (another replica did).
    fn conclude(&self, stored: Option<Result<u64>>) {
        let digest = &self.digest;
        let verified = match &*self.fill.progress.borrow() {
            Phase::Done(Ok(bytes)) => Some(*bytes),
            _ => None,
        };
        let failed = match (verified, stored) {
            (Some(_), Some(Ok(bytes))) => {
                self.engine.budget.used(digest);
                self.engine.budget.added(bytes);
                info!(%digest, bytes, "blob verified and stored");
                self.report(FillPhase::Stored { bytes });
                return;
            }
            (Some(bytes), None) => {
                info!(%digest, bytes, "blob relayed from another replica and verified");
                self.report(FillPhase::Relayed { bytes });
                return;
            }
            (Some(_), Some(Err(e))) => {
                self.engine.write_failed(StorageOperation::BlobWrite, &e);
                ErrorChain(&e).to_string()
            }
            (None, _) => match &*self.fill.progress.borrow() {
                Phase::Done(Err(e)) => {
                    let error = ErrorChain(e.as_ref()).to_string();
                    warn!(%digest, %error, "blob fill failed; nothing stored");
                    error
                }
                _ => "blob fill ended without a verdict".to_owned(),
            },
        };
        self.report(FillPhase::Failed { error: failed });
    }

    fn report(&self, phase: FillPhase) {
        self.engine.observer.fill(&FillEvent {
            digest: self.digest.clone(),
            upstream: self.registry.clone(),
            phase,
        });
    }

    /// Reads upstream to the end, feeding the buffer first (clients) and then
    /// storage; the total size when the bytes match the digest.
    async fn pump(
        &self,
        mut upstream: FillBody<'_, S, U>,
        size: Option<u64>,
        to_store: Option<mpsc::Sender<Result<Feed>>>,
        mut spill: Spill,
        taken_over: &mut Option<tokio::task::JoinHandle<Result<u64>>>,
    ) -> Result<u64> {
        let mut verifier = DigestVerifier::new(self.digest.clone(), size);
        let keep = self.engine.options.fill_window as u64;
        let max = self.engine.options.max_blob_size;
        let mut received = 0u64;
        let mut storing = true;
        let result = async {
            while let Some(chunk) = upstream.next().await {
                let chunk = chunk?;
                if chunk.is_empty() {
                    continue;
                }
                received += chunk.len() as u64;
                check_cap(received, max)?;
                verifier.update(&chunk)?;
                self.fill.push(chunk.clone());
                if self.fill.buffer().len > keep {
                    spill.overflow(self, size, received, keep, storing).await;
                }
                if upstream.start_storing() {
                    let storage = Arc::clone(&self.engine.storage);
                    let fill = Arc::clone(&self.fill);
                    let write = readback::store_from_fill(storage, fill, self.digest.clone(), size);
                    *taken_over = Some(write);
                }
                if let (true, Some(to_store)) = (storing, &to_store) {
                    if to_store.send(Ok(Feed::Chunk(chunk))).await.is_err() {
                        // The backend gave up (its error is reported when the
                        // write returns); the clients are still served.
                        storing = false;
                    }
                }
            }
            verifier.finish()
        }
        .await;
        if let Err(e) = &result {
            upstream.blame(e);
        }
        // Storage hashes nothing itself (a preverified write): this verdict is
        // what lets it commit, or makes it discard the staged bytes.
        let verdict = match &result {
            Ok(_) => Ok(Feed::Verified),
            Err(e) => Err(e.duplicate()),
        };
        if let (true, Some(to_store)) = (storing, &to_store) {
            let _ = to_store.send(verdict).await;
        }
        result
    }
}

/// Ends the fill if its task stops without finishing (a panic, runtime
/// shutdown), and takes it out of the single-flight map in every case.
struct FillGuard {
    map: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
    fill: Arc<Fill>,
    digest: Digest,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if !self.fill.is_done() {
            self.fill.finish(Err(Arc::new(aborted("blob fill"))));
        }
        let mut map = lock(&self.map);
        if map
            .get(&self.digest)
            .is_some_and(|f| Arc::ptr_eq(f, &self.fill))
        {
            map.remove(&self.digest);
        }
    }
}
