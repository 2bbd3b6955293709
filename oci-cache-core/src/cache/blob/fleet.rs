//! Where a fill's bytes come from when several replicas share a bucket.
//!
//! Before the first byte, a fill of an engine in fleet mode
//! ([`PullThrough::with_fleet`](crate::cache::PullThrough::with_fleet))
//! claims the digest's fill lease (see [`fleet`](crate::fleet)):
//!
//! - **mine**: it looks in the bucket once more (its miss may have come
//!   just before another replica committed the blob and released the
//!   lease), then fetches upstream and stores, as a single replica does,
//!   renewing the lease until the end and releasing it after the commit
//!   (or the failure);
//! - **held by a live replica**: it streams that replica's fill through
//!   [`PeerFills`](crate::fleet::PeerFills) instead of upstream. The fill
//!   hashes what it relays exactly as it hashes an upstream body, so its
//!   clients get nothing unverified. It stores nothing: the holder writes
//!   the one copy in the shared bucket, and a second upload of the same
//!   object would only double the bucket's requests and bytes;
//! - **held by a replica that does not answer** (killed, stopped,
//!   partitioned): it watches the lease as when a relayed stream breaks,
//!   below, from byte 0;
//! - **held by a replica that sent wrong bytes** (a relay from it failed
//!   verification within the last ten minutes): it fills alone, from
//!   upstream. The relay that found the lie fails its clients (they got no
//!   complete body: the last byte waits for the verdict) and their retry
//!   gets the right bytes from upstream;
//! - **anything else** (leases off, a failed or slow lease call): it fills
//!   alone, as without a fleet.
//!
//! When the holder does not answer or the relayed stream breaks mid-blob,
//! the fill first looks for the blob in the bucket (the holder may just
//! have committed it) and reads on from there. Otherwise it watches the
//! lease every heartbeat: a holder that renews is alive and asked again; a
//! lease released or left unchanged for the TTL (on this replica's clock)
//! is taken over; of several waiting replicas exactly one wins and the
//! others stream from it. The taker goes on **upstream with `Range: bytes=N-`**
//! from the byte it had relayed, and starts storing: its storage write
//! reads the bytes `0..N` back from the fill's own buffer and spool (they
//! were hashed as they were relayed) and then follows the fill live. The
//! dead holder's multipart parts are not reused: S3 offers no way to read
//! the parts of an incomplete multipart upload (nor `object_store` to list
//! them), so the bytes this replica already relayed are what it resumes
//! from; it aborts the dead holder's incomplete upload of the blob (found
//! through its marker, see `storage::object::uploads`), which would
//! otherwise be billed until a lifecycle rule reclaims it. Waiting is bounded (TTL plus two heartbeats): a holder that still
//! renews but never answers by then, or any lease error, means going on
//! upstream alone.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;
use tracing::{info, warn};

use super::buffer::lock;
use super::resume::{ResumingBody, Target};
use super::segments::{Job, SegmentedBody};
use super::{aborted, FillTask};
use crate::error::ErrorChain;
use crate::fleet::{Claim, Fleet, KeptLease, LeaseKey, Observed};
use crate::observe::{FillPhase, LeaseOutcome, UploadAbortReason, UploadsAbortedEvent};
use crate::storage::{BlobRead, ByteStream, Storage};
use crate::upstream::{FetchedBlob, Upstream};
use crate::{Error, Result};

/// The lease a fill holds, if any: taken before the first byte or on a
/// takeover, released once the fill has stored (or failed).
#[derive(Debug, Default)]
pub(super) struct LeaseSlot(Mutex<Option<KeptLease>>);

impl LeaseSlot {
    fn hold(&self, lease: KeptLease) {
        *lock(&self.0) = Some(lease);
    }

    /// Releases the lease, if one is held.
    pub(super) async fn release(&self) {
        let lease = lock(&self.0).take();
        if let Some(lease) = lease {
            lease.release().await;
        }
    }
}

/// A fill's body: upstream, or another replica's fill, or (after that one
/// committed) the bucket.
pub(super) struct FillBody<'a, S: ?Sized, U: ?Sized> {
    task: &'a FillTask<S, U>,
    lease: &'a LeaseSlot,
    from: From<'a, U>,
    /// Bytes handed to the fill so far.
    pos: u64,
    size: Option<u64>,
    /// The fill is the one that stores (not a relay).
    stores: bool,
    /// Set when a relay took over and must now store; the pump starts the
    /// storage write when it sees it ([`FillBody::start_storing`]).
    store_now: bool,
}

enum From<'a, U: ?Sized> {
    Upstream(SegmentedBody<'a, U>),
    /// Another replica's fill (or, after it committed, the bucket).
    Relay {
        stream: ByteStream,
        /// Bytes of `stream` to drop: a replacement peer stream starts at 0.
        skip: u64,
        /// The lease key and holder the relay follows.
        key: LeaseKey,
        holder_url: String,
        seen: Option<Observed>,
    },
}

impl<'a, S: Storage + ?Sized, U: Upstream + ?Sized> FillBody<'a, S, U> {
    /// Claims the lease (in fleet mode) and opens the body it calls for.
    pub(super) async fn open(task: &'a FillTask<S, U>, lease: &'a LeaseSlot) -> Result<Self> {
        let body = |from, size, stores| FillBody {
            task,
            lease,
            from,
            pos: 0,
            size,
            stores,
            store_now: false,
        };
        let Some(fleet) = task.engine.fleet.get() else {
            return Self::upstream(task, lease, 0, None).await;
        };
        let Some((key, claim)) = claim(task, fleet).await else {
            task.report(FillPhase::Lease {
                outcome: LeaseOutcome::Unavailable,
            });
            return Self::upstream(task, lease, 0, None).await;
        };
        let outcome = match claim {
            Claim::Mine(held) => {
                lease.hold(held.keep());
                if let Some(read) = committed(task, 0).await {
                    lease.release().await;
                    return Ok(stored_meanwhile(body, read, key));
                }
                LeaseOutcome::Acquired
            }
            Claim::Held(seen) if seen.holder_id() == fleet.identity().holder_id => {
                // Only a second fill of this digest in this process (through
                // another repository) meets its own lease.
                LeaseOutcome::Unavailable
            }
            Claim::Held(seen) if !fleet.trusts(seen.holder_url()) => {
                info!(digest = %task.digest, holder = %seen.holder_url(), "the replica filling this blob sent wrong bytes before; fetching upstream instead");
                LeaseOutcome::BadPeer
            }
            Claim::Held(seen) => {
                let url = seen.holder_url().to_owned();
                let relay = |stream, size, holder_url, seen| {
                    let key = key.clone();
                    let from = From::Relay {
                        stream,
                        skip: 0,
                        key,
                        holder_url,
                        seen,
                    };
                    body(from, size, false)
                };
                let peer = |url: &str, fetched: &FetchedBlob| {
                    info!(digest = %task.digest, holder = %url, size = ?fetched.size, "another replica is filling this blob; streaming it from there");
                    task.report(FillPhase::Lease {
                        outcome: LeaseOutcome::Peer,
                    });
                };
                match fleet.peers().fetch(&url, &task.digest).await {
                    Ok(fetched) => {
                        peer(&url, &fetched);
                        return Ok(relay(fetched.stream, fetched.size, url, Some(seen)));
                    }
                    Err(e) => {
                        warn!(digest = %task.digest, holder = %url, error = %ErrorChain(&e), "the replica filling this blob does not answer; watching its lease");
                    }
                }
                match follow_lease(task, fleet, key.clone(), &url, Some(seen), 0).await {
                    Followed::Stored(read) => {
                        return Ok(relay(read.stream, Some(read.size), url, None));
                    }
                    Followed::Peer { url, seen, fetched } => {
                        peer(&url, &fetched);
                        return Ok(relay(fetched.stream, fetched.size, url, Some(seen)));
                    }
                    Followed::Mine(held) => {
                        lease.hold(held);
                        if let Some(read) = committed(task, 0).await {
                            lease.release().await;
                            return Ok(stored_meanwhile(body, read, key));
                        }
                        LeaseOutcome::Takeover
                    }
                    Followed::Alone => LeaseOutcome::Unavailable,
                }
            }
        };
        task.report(FillPhase::Lease { outcome });
        Self::upstream(task, lease, 0, None).await
    }

    async fn upstream(
        task: &'a FillTask<S, U>,
        lease: &'a LeaseSlot,
        offset: u64,
        size: Option<u64>,
    ) -> Result<Self> {
        let retry = task.engine.options.fill_retry;
        let body = if offset == 0 {
            let slots = &task.engine.blob_fills.segment_slots;
            SegmentedBody::open(target(task), job(task), slots).await?
        } else {
            let body = ResumingBody::open_at(target(task), retry, offset, size).await?;
            SegmentedBody::single(body, target(task))
        };
        let size = size.or(body.size());
        Ok(FillBody {
            task,
            lease,
            from: From::Upstream(body),
            pos: offset,
            size,
            stores: true,
            store_now: false,
        })
    }

    /// The blob's size, as announced.
    pub(super) fn size(&self) -> Option<u64> {
        self.size
    }

    /// Whether this fill writes storage from its first byte (false for a relay).
    pub(super) fn stores(&self) -> bool {
        self.stores
    }

    /// True once, when a relay has taken over and must store from now on.
    pub(super) fn start_storing(&mut self) -> bool {
        std::mem::take(&mut self.store_now)
    }

    /// The next bytes of the blob; `None` at its end.
    pub(super) async fn next(&mut self) -> Option<Result<Bytes>> {
        loop {
            let cut = match &mut self.from {
                From::Upstream(body) => {
                    let item = body.next().await;
                    if let Some(Ok(chunk)) = &item {
                        self.pos += chunk.len() as u64;
                    }
                    return item;
                }
                From::Relay { stream, skip, .. } => match stream.next().await {
                    Some(Ok(mut chunk)) => {
                        let dropped = (*skip).min(chunk.len() as u64);
                        *skip -= dropped;
                        let _ = chunk.split_to(usize::try_from(dropped).unwrap_or(chunk.len()));
                        if chunk.is_empty() {
                            continue;
                        }
                        self.pos += chunk.len() as u64;
                        return Some(Ok(chunk));
                    }
                    None if self.size.is_none_or(|size| self.pos >= size) => return None,
                    None => aborted("the relayed blob stream"),
                    Some(Err(e)) => e,
                },
            };
            if let Err(e) = self.recover(cut).await {
                return Some(Err(e));
            }
        }
    }

    /// Called with the fill's error: relayed bytes that failed verification
    /// make their replica untrusted for a while, so the next fill of the
    /// blob fetches upstream instead of relaying the same lie.
    pub(super) fn blame(&self, error: &Error) {
        let (Some(fleet), From::Relay { holder_url, .. }) =
            (self.task.engine.fleet.get(), &self.from)
        else {
            return;
        };
        // An empty URL is a read of the bucket, not of a replica.
        if error.is_content_failure() && !holder_url.is_empty() {
            warn!(digest = %self.task.digest, holder = %holder_url, error = %ErrorChain(error), "the replica this blob was relayed from sent wrong bytes; not relaying from it for a while");
            fleet.distrust(holder_url);
        }
    }

    /// After the relayed stream broke (`cut`): reads on from the bucket,
    /// another replica, or upstream under a taken-over lease (or alone).
    async fn recover(&mut self, cut: Error) -> Result<()> {
        let task = self.task;
        let digest = &task.digest;
        let From::Relay {
            key,
            holder_url,
            seen,
            ..
        } = &mut self.from
        else {
            return Err(cut);
        };
        let (key, failed_url, seen) = (key.clone(), holder_url.clone(), seen.take());
        warn!(%digest, holder = %failed_url, offset = self.pos, error = %ErrorChain(&cut), "the replica this blob was streamed from went away; recovering");
        let Some(fleet) = task.engine.fleet.get() else {
            return self.continue_upstream().await;
        };
        match follow_lease(task, fleet, key.clone(), &failed_url, seen, self.pos).await {
            Followed::Stored(read) => {
                info!(%digest, offset = self.pos, "the blob was committed meanwhile; reading on from storage");
                self.relay(read.stream, 0, key, failed_url, None);
                Ok(())
            }
            Followed::Peer { url, seen, fetched } => {
                info!(%digest, holder = %url, offset = self.pos, "another replica took this fill over; streaming from it");
                let skip = self.pos;
                self.relay(fetched.stream, skip, key, url, Some(seen));
                Ok(())
            }
            Followed::Mine(held) => {
                self.lease.hold(held);
                task.report(FillPhase::Lease {
                    outcome: LeaseOutcome::Takeover,
                });
                self.continue_upstream().await
            }
            Followed::Alone => {
                task.report(FillPhase::Lease {
                    outcome: LeaseOutcome::Unavailable,
                });
                self.continue_upstream().await
            }
        }
    }

    fn relay(
        &mut self,
        stream: ByteStream,
        skip: u64,
        key: LeaseKey,
        holder_url: String,
        seen: Option<Observed>,
    ) {
        self.from = From::Relay {
            stream,
            skip,
            key,
            holder_url,
            seen,
        };
    }

    /// Goes on upstream from the byte reached, and stores from now on.
    async fn continue_upstream(&mut self) -> Result<()> {
        let task = self.task;
        let retry = task.engine.options.fill_retry;
        let body = ResumingBody::open_at(target(task), retry, self.pos, self.size).await?;
        self.from = From::Upstream(SegmentedBody::single(body, target(task)));
        if !self.stores {
            self.stores = true;
            self.store_now = true;
        }
        Ok(())
    }
}

/// The fill lease of the task's digest, claimed; `None` (logged) when
/// leases are off or the claim failed.
async fn claim<S: ?Sized, U: ?Sized>(
    task: &FillTask<S, U>,
    fleet: &Fleet,
) -> Option<(LeaseKey, Claim)> {
    let leases = fleet.leases()?;
    let key = leases.fill_key(&task.digest);
    let claimed = match key {
        Ok(key) => leases.claim(&key, None).await.map(|claim| (key, claim)),
        Err(e) => Err(e),
    };
    match claimed {
        Ok(claimed) => Some(claimed),
        Err(e) => {
            warn!(digest = %task.digest, error = %ErrorChain(&e), "fill lease unavailable; filling alone");
            None
        }
    }
}

/// Where a fill goes on after the replica it followed stopped answering
/// ([`follow_lease`]).
enum Followed {
    /// The blob was committed meanwhile: the rest of it, from storage.
    Stored(BlobRead),
    /// Another replica holds the lease now (or the holder renews it and
    /// answers again): its stream, from byte 0.
    Peer {
        url: String,
        seen: Observed,
        fetched: FetchedBlob,
    },
    /// This replica took the lease over: it fetches upstream and stores.
    Mine(KeptLease),
    /// No lease to follow (a lease call failed, or the holder renews but
    /// never answers within the wait): this replica goes on alone.
    Alone,
}

/// After the holder at `failed_url` did not answer or its stream broke at
/// byte `pos`: watches the lease every heartbeat until the blob is
/// committed, another replica holds the lease and answers, the holder
/// renews and answers again, or the lease is released or unchanged for the
/// TTL on this replica's clock (then this replica takes it over; of several
/// waiters exactly one wins, the conditional write decides). Bounded by the
/// TTL plus two heartbeats; a holder that renews but never answers by then
/// (a partition between replicas) means going on alone.
///
/// (Not a method: a `&FillBody` held across the awaits would make the
/// fill's future not `Send`.)
async fn follow_lease<S: Storage + ?Sized, U: ?Sized>(
    task: &FillTask<S, U>,
    fleet: &Fleet,
    key: LeaseKey,
    failed_url: &str,
    mut seen: Option<Observed>,
    pos: u64,
) -> Followed {
    let digest = &task.digest;
    let Some(leases) = fleet.leases() else {
        return Followed::Alone;
    };
    let timings = leases.timings();
    let deadline = Instant::now() + timings.ttl + timings.heartbeat.saturating_mul(2);
    loop {
        if let Some(read) = committed(task, pos).await {
            return Followed::Stored(read);
        }
        let before = seen.take();
        match leases.claim(&key, before.clone()).await {
            Ok(Claim::Mine(held)) => {
                if let Some(holder) = held.taken_from() {
                    abort_uploads_left(task, leases, holder);
                }
                return Followed::Mine(held.keep());
            }
            Ok(Claim::Held(now)) if !fleet.trusts(now.holder_url()) => {
                warn!(%digest, holder = %now.holder_url(), "the lease holder sent wrong bytes before; going on alone");
                return Followed::Alone;
            }
            Ok(Claim::Held(now)) => {
                let url = now.holder_url().to_owned();
                // Another holder, or the same one renewing (alive): ask it.
                let renewed = before.is_none_or(|before| !before.same_lease(&now));
                if url != failed_url || renewed {
                    if let Ok(fetched) = fleet.peers().fetch(&url, digest).await {
                        return Followed::Peer {
                            url,
                            seen: now,
                            fetched,
                        };
                    }
                }
                seen = Some(now);
            }
            Err(e) => {
                warn!(%digest, error = %ErrorChain(&e), "lease call failed; going on alone");
                return Followed::Alone;
            }
        }
        if Instant::now() >= deadline {
            warn!(%digest, holder = %failed_url, "the lease holder still renews but cannot be streamed from; going on alone");
            return Followed::Alone;
        }
        tokio::time::sleep(timings.heartbeat).await;
    }
}

/// A body over the stored blob, for a fill that won a lease only because
/// another replica had just committed and released it: the storage miss
/// that started this fill came before that commit, so the bucket is asked
/// once more before anything is fetched upstream.
fn stored_meanwhile<'a, S: ?Sized, U: ?Sized>(
    body: impl FnOnce(From<'a, U>, Option<u64>, bool) -> FillBody<'a, S, U>,
    read: BlobRead,
    key: LeaseKey,
) -> FillBody<'a, S, U> {
    let from = From::Relay {
        stream: read.stream,
        skip: 0,
        key,
        holder_url: String::new(),
        seen: None,
    };
    body(from, Some(read.size), false)
}

/// Aborts, in the background, the incomplete multipart uploads of the
/// task's blob that `holder` (whose lease this replica just took over) left
/// in the bucket: they are billed until aborted, and the holder will never
/// complete them (a stopped one that comes back fails its commit, which
/// costs its clients nothing: they are served from its fill).
fn abort_uploads_left<S: ?Sized, U: ?Sized>(
    task: &FillTask<S, U>,
    leases: &crate::fleet::Leases,
    holder: &str,
) {
    let (leases, holder) = (leases.clone(), holder.to_owned());
    let (digest, observer) = (task.digest.clone(), task.engine.observer.clone());
    tokio::spawn(async move {
        match leases.abort_uploads_of(&holder, &digest).await {
            Ok(0) => {}
            Ok(count) => observer.uploads_aborted(&UploadsAbortedEvent {
                count,
                reason: UploadAbortReason::Takeover,
            }),
            Err(e) => {
                warn!(%digest, %holder, error = %ErrorChain(&e), "the previous holder's upload was not aborted; the sweep at start will");
            }
        }
    });
}

/// The rest of the blob from byte `pos` on, from storage, if it was
/// committed meanwhile.
async fn committed<S: Storage + ?Sized, U: ?Sized>(
    task: &FillTask<S, U>,
    pos: u64,
) -> Option<BlobRead> {
    let storage = &task.engine.storage;
    // From byte 0, a plain read: one GET, where a range costs a HEAD too.
    let range = (pos > 0).then_some(pos..u64::MAX);
    storage.blob_read(&task.digest, range).await.ok()
}

/// What a segment worker of `task` needs, owned.
///
/// Under fill leases a blob comes over one connection: parts fetched ahead
/// of what the holder's followers have relayed are lost if the holder dies
/// (S3 serves no bytes of an incomplete upload), so parallel parts would
/// cost the fleet up to `connections - 1` parts more per crash, against
/// the promise of each byte from upstream once.
fn job<S: Storage + ?Sized, U: Upstream + ?Sized>(task: &FillTask<S, U>) -> Job<U> {
    let options = &task.engine.options;
    let leased = task.engine.fleet.get().and_then(Fleet::leases).is_some();
    let segments = if leased {
        options.fill_segments.with_connections(1)
    } else {
        options.fill_segments
    };
    Job {
        upstream: Arc::clone(&task.engine.upstream),
        registry: task.registry.clone(),
        repository: task.repository.clone(),
        digest: task.digest.clone(),
        observer: Arc::clone(&task.engine.observer),
        retry: options.fill_retry,
        spool_dir: task.spool_dir(),
        options: segments,
    }
}

fn target<S: ?Sized, U: ?Sized>(task: &FillTask<S, U>) -> Target<'_, U> {
    Target {
        upstream: task.engine.upstream.as_ref(),
        registry: &task.registry,
        repository: &task.repository,
        digest: &task.digest,
        observer: &task.engine.observer,
    }
}
