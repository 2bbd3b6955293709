//! Leases in the shared bucket, over S3 conditional writes.
//!
//! A lease is one small JSON object (`{"holder", "url", "seq"}`) under
//! `leases/…` beside the cache's objects:
//!
//! - **acquire**: `PUT` with `If-None-Match: *` (`PutMode::Create`); of
//!   several replicas exactly one succeeds, the others read the lease;
//! - **heartbeat**: every [`LeaseTimings::heartbeat`] the holder rewrites it
//!   with `seq + 1` and `If-Match` its last `ETag` (`PutMode::Update`); a
//!   heartbeat that finds another `ETag` has been taken over and stops;
//! - **release**: `DELETE` once the work is done (committed, or failed);
//! - **takeover**: a waiter that sees the same (`ETag`, `seq`) for
//!   [`LeaseTimings::ttl`] *on its own monotonic clock* rewrites the lease in
//!   its own name with `If-Match` that `ETag`: of several takers exactly one
//!   wins. No wall clocks are compared between replicas, so clock skew
//!   cannot make a live holder look dead.
//!
//! Every call is bounded by [`LeaseTimings::call_timeout`]. A lease is an
//! optimisation, never a guarantee: callers treat every error as "no lease"
//! and do the work alone (content addressing and verify-before-visible keep
//! that correct).

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutResult, UpdateVersion,
};
use tokio::time::Instant;
use tracing::{debug, warn};

pub use super::timings::LeaseTimings;
use super::FleetIdentity;
use crate::storage::ObjectStorage;
use crate::{Error, Result};

const BACKEND: &str = "lease";

/// What a lease object holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct LeaseBody {
    /// [`FleetIdentity::holder_id`] of the holder.
    holder: String,
    /// [`FleetIdentity::advertise_url`] of the holder.
    url: String,
    /// Bumped by every heartbeat and takeover.
    seq: u64,
}

/// A lease another replica holds, as this one last read it.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    body: LeaseBody,
    version: UpdateVersion,
    /// When this replica first saw this (`ETag`, `seq`), on its own clock.
    since: Instant,
}

impl Observed {
    /// The holder's advertised URL.
    pub(crate) fn holder_url(&self) -> &str {
        &self.body.url
    }

    /// The holder's id.
    pub(crate) fn holder_id(&self) -> &str {
        &self.body.holder
    }

    /// Whether `other` is this very lease write (same `ETag` and `seq`):
    /// the holder has not renewed it in between.
    pub(crate) fn same_lease(&self, other: &Observed) -> bool {
        self.same(&other.body, &other.version)
    }

    fn same(&self, body: &LeaseBody, version: &UpdateVersion) -> bool {
        self.body.seq == body.seq && self.version == *version
    }
}

/// The answer to [`Leases::claim`].
#[derive(Debug)]
pub(crate) enum Claim {
    /// This replica holds the lease now (acquired, or taken over).
    Mine(HeldLease),
    /// Another replica holds it and renewed it within the TTL, as far as
    /// this replica has watched.
    Held(Observed),
}

/// Leases in one bucket, taken in this replica's name.
#[derive(Debug, Clone)]
pub struct Leases {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    storage: ObjectStorage,
    identity: FleetIdentity,
    timings: LeaseTimings,
}

/// A lease object's location.
pub(crate) type LeaseKey = Path;

impl Leases {
    /// Leases in `storage`'s bucket (under its prefix), in `identity`'s name.
    /// Nothing is sent yet; [`probe`](Self::probe) checks that the store
    /// honours conditional writes.
    pub fn new(storage: &ObjectStorage, identity: FleetIdentity, timings: LeaseTimings) -> Self {
        Leases {
            inner: Arc::new(Inner {
                storage: storage.clone(),
                identity,
                timings,
            }),
        }
    }

    /// The timings leases are kept with.
    pub fn timings(&self) -> LeaseTimings {
        self.inner.timings
    }

    /// This replica's identity.
    pub fn identity(&self) -> &FleetIdentity {
        &self.inner.identity
    }

    /// Checks that the store honours both conditions leases rely on: a
    /// second create of one object fails, and an update with a stale `ETag`
    /// fails while one with the current `ETag` succeeds. A store (or an
    /// S3-compatible server) that ignores `If-None-Match` or `If-Match`
    /// fails the probe: leases are then off and every replica fills alone.
    pub async fn probe(&self) -> Result<()> {
        let key = self.probe_key()?;
        let result = self.probe_at(&key).await;
        // Best effort: a leftover probe object is a few bytes.
        let _ = self
            .bounded("delete the probe lease", self.store().delete(&key))
            .await;
        result
    }

    async fn probe_at(&self, key: &LeaseKey) -> Result<()> {
        let refused = |what: &str| {
            Error::Config(format!(
                "the bucket does not honour conditional writes ({what}); fill leases are off and every replica fills alone"
            ))
        };
        let first = match self.put(key, 0, PutMode::Create).await {
            Ok(first) => first,
            Err(PutRefused::Precondition) => return Err(refused("a first create failed")),
            Err(PutRefused::Failed(e)) => return Err(e),
        };
        match self.put(key, 0, PutMode::Create).await {
            Err(PutRefused::Precondition) => {}
            Ok(_) => return Err(refused("a second If-None-Match: * create succeeded")),
            Err(PutRefused::Failed(e)) => return Err(e),
        }
        let stale = UpdateVersion {
            e_tag: Some("\"oci-cache-stale-probe\"".to_owned()),
            version: None,
        };
        match self.put(key, 1, PutMode::Update(stale)).await {
            Err(PutRefused::Precondition) => {}
            Ok(_) => return Err(refused("an If-Match update with a wrong ETag succeeded")),
            Err(PutRefused::Failed(e)) => return Err(e),
        }
        match self.put(key, 1, PutMode::Update(version_of(&first))).await {
            Ok(_) => Ok(()),
            Err(PutRefused::Precondition) => {
                Err(refused("an If-Match update with the current ETag failed"))
            }
            Err(PutRefused::Failed(e)) => Err(e),
        }
    }

    fn probe_key(&self) -> Result<LeaseKey> {
        let name = format!(
            "{}/{}",
            crate::storage::named_lease("probe"),
            uuid::Uuid::new_v4().simple()
        );
        self.inner.storage.path(&name)
    }

    /// The lease of the fill of `digest`.
    pub(crate) fn fill_key(&self, digest: &crate::digest::Digest) -> Result<LeaseKey> {
        self.inner.storage.path(&crate::storage::fill_lease(digest))
    }

    /// Aborts the incomplete multipart uploads of `digest` that `holder` (a
    /// replica whose lease this one took over) left in the bucket; the
    /// number aborted.
    pub(crate) async fn abort_uploads_of(
        &self,
        holder: &str,
        digest: &crate::digest::Digest,
    ) -> Result<u64> {
        self.inner.storage.abort_uploads_of(holder, digest).await
    }

    /// A fleet-wide lease by name (`eviction`).
    pub(crate) fn named_key(&self, name: &'static str) -> Result<LeaseKey> {
        self.inner.storage.path(&crate::storage::named_lease(name))
    }

    /// Takes the lease at `key`, or tells who holds it. With `seen` (what
    /// an earlier call returned as [`Claim::Held`]), a lease unchanged for
    /// the TTL since it was first seen is taken over.
    pub(crate) async fn claim(&self, key: &LeaseKey, seen: Option<Observed>) -> Result<Claim> {
        let mut seen = seen;
        // A lease released between our create and our read is created again;
        // twice is plenty (a third race means a busy digest: wait).
        for _ in 0..3 {
            match self.put(key, 0, PutMode::Create).await {
                Ok(put) => return Ok(Claim::Mine(self.held(key, 0, &put))),
                Err(PutRefused::Precondition) => {}
                Err(PutRefused::Failed(e)) => return Err(e),
            }
            let Some((body, version)) = self.read(key).await? else {
                continue;
            };
            let takeover = match &seen {
                Some(seen) if seen.same(&body, &version) => {
                    seen.since.elapsed() >= self.inner.timings.ttl
                }
                _ => false,
            };
            if !takeover {
                let since = match &seen {
                    Some(seen) if seen.same(&body, &version) => seen.since,
                    _ => Instant::now(),
                };
                return Ok(Claim::Held(Observed {
                    body,
                    version,
                    since,
                }));
            }
            let seq = body.seq + 1;
            match self.put(key, seq, PutMode::Update(version)).await {
                Ok(put) => {
                    warn!(lease = %key, holder = %body.holder, "lease holder stopped renewing; taken over");
                    let mut held = self.held(key, seq, &put);
                    held.taken_from = Some(body.holder);
                    return Ok(Claim::Mine(held));
                }
                // Another taker won, or the holder renewed at the last moment.
                Err(PutRefused::Precondition) => seen = None,
                Err(PutRefused::Failed(e)) => return Err(e),
            }
        }
        match self.read(key).await? {
            Some((body, version)) => Ok(Claim::Held(Observed {
                body,
                version,
                since: Instant::now(),
            })),
            None => Err(Error::Storage {
                backend: BACKEND,
                message: format!("lease {key} keeps changing; working without it"),
                source: None,
            }),
        }
    }

    /// Whether the lease at `key` is gone or changed since `seen`: the
    /// holder released it (its work is done) or someone took it over.
    #[cfg(test)]
    pub(crate) async fn changed(&self, key: &LeaseKey, seen: &Observed) -> Result<bool> {
        Ok(match self.read(key).await? {
            None => true,
            Some((body, version)) => !seen.same(&body, &version),
        })
    }

    fn held(&self, key: &LeaseKey, seq: u64, put: &PutResult) -> HeldLease {
        HeldLease {
            leases: self.clone(),
            key: key.clone(),
            seq,
            version: version_of(put),
            lost: false,
            taken_from: None,
        }
    }

    fn store(&self) -> &Arc<dyn ObjectStore> {
        self.inner.storage.store()
    }

    fn body(&self, seq: u64) -> LeaseBody {
        LeaseBody {
            holder: self.inner.identity.holder_id.clone(),
            url: self.inner.identity.advertise_url.clone(),
            seq,
        }
    }

    /// One conditional put of this replica's lease body with `seq`.
    async fn put(
        &self,
        key: &LeaseKey,
        seq: u64,
        mode: PutMode,
    ) -> std::result::Result<PutResult, PutRefused> {
        let bytes = serde_json::to_vec(&self.body(seq))
            .map_err(|e| PutRefused::Failed(Error::storage(BACKEND, "cannot encode a lease", e)))?;
        let payload = PutPayload::from(Bytes::from(bytes));
        let put = self.store().put_opts(key, payload, PutOptions::from(mode));
        match tokio::time::timeout(self.inner.timings.call_timeout, put).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::NotFound { .. },
            )) => Err(PutRefused::Precondition),
            Ok(Err(e)) => Err(PutRefused::Failed(Error::storage(
                BACKEND,
                format!("cannot write lease {key}"),
                e,
            ))),
            Err(_) => Err(PutRefused::Failed(
                self.timed_out(&format!("write lease {key}")),
            )),
        }
    }

    /// The lease at `key` and its version, or `None`.
    async fn read(&self, key: &LeaseKey) -> Result<Option<(LeaseBody, UpdateVersion)>> {
        let what = format!("read lease {key}");
        let get = async {
            let result = self.store().get(key).await?;
            let version = UpdateVersion {
                e_tag: result.meta.e_tag.clone(),
                version: result.meta.version.clone(),
            };
            Ok::<_, object_store::Error>((result.bytes().await?, version))
        };
        match self.bounded(&what, get).await? {
            Ok((bytes, version)) => {
                let body = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::storage(BACKEND, format!("lease {key} is not a lease; delete it"), e)
                })?;
                Ok(Some((body, version)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::storage(BACKEND, format!("cannot {what}"), e)),
        }
    }

    async fn delete(&self, key: &LeaseKey) -> Result<()> {
        let what = format!("delete lease {key}");
        match self.bounded(&what, self.store().delete(key)).await? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::storage(BACKEND, format!("cannot {what}"), e)),
        }
    }

    /// `call` within the call timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T> {
        tokio::time::timeout(self.inner.timings.call_timeout, call)
            .await
            .map_err(|_| self.timed_out(what))
    }

    fn timed_out(&self, what: &str) -> Error {
        Error::Storage {
            backend: BACKEND,
            message: format!(
                "cannot {what} within {:?}; working without the lease",
                self.inner.timings.call_timeout
            ),
            source: None,
        }
    }
}

/// Why a conditional put did not happen.
enum PutRefused {
    /// The condition failed: the object exists (create), or has another
    /// `ETag` or is gone (update).
    Precondition,
    /// The store failed, or did not answer in time.
    Failed(Error),
}

fn version_of(put: &PutResult) -> UpdateVersion {
    UpdateVersion {
        e_tag: put.e_tag.clone(),
        version: put.version.clone(),
    }
}

/// A lease this replica holds.
#[derive(Debug)]
pub(crate) struct HeldLease {
    leases: Leases,
    key: LeaseKey,
    seq: u64,
    version: UpdateVersion,
    /// A heartbeat found the lease taken over (or deleted).
    lost: bool,
    /// The holder this replica took the lease over from, if it did.
    taken_from: Option<String>,
}

impl HeldLease {
    /// Renews the lease; `Ok(false)` once it was taken over (then it stays
    /// lost: a holder never takes its lease back).
    pub(crate) async fn heartbeat(&mut self) -> Result<bool> {
        if self.lost {
            return Ok(false);
        }
        let seq = self.seq + 1;
        let mode = PutMode::Update(self.version.clone());
        match self.leases.put(&self.key, seq, mode).await {
            Ok(put) => {
                self.seq = seq;
                self.version = version_of(&put);
                Ok(true)
            }
            Err(PutRefused::Precondition) => {
                warn!(lease = %self.key, "lease taken over by another replica; no longer renewing it");
                self.lost = true;
                Ok(false)
            }
            Err(PutRefused::Failed(e)) => Err(e),
        }
    }

    /// The holder id of the replica this lease was taken over from (`None`
    /// when it was free).
    pub(crate) fn taken_from(&self) -> Option<&str> {
        self.taken_from.as_deref()
    }

    /// Whether a heartbeat found the lease taken over.
    #[cfg(test)]
    pub(crate) fn is_lost(&self) -> bool {
        self.lost
    }

    /// The sequence number of the last write.
    #[cfg(test)]
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Gives the lease up (deletes it) unless it was taken over: then it is
    /// the taker's to release. The object store offers no conditional
    /// delete; a taker can only have won after a TTL without heartbeats,
    /// and a holder that saw its last heartbeat succeed releases well
    /// within that.
    pub(crate) async fn release(self) {
        if self.lost {
            return;
        }
        if let Err(e) = self.leases.delete(&self.key).await {
            // Waiters take it over after the TTL.
            debug!(lease = %self.key, error = %crate::ErrorChain(&e), "lease not released");
        }
    }

    /// Renews the lease every heartbeat interval in a task of its own
    /// until [`KeptLease::release`] (or drop).
    pub(crate) fn keep(self) -> KeptLease {
        let interval = self.leases.timings().heartbeat;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut lease = self;
            loop {
                tokio::select! {
                    _ = &mut stopped => return Some(lease),
                    () = tokio::time::sleep(interval) => {}
                }
                match lease.heartbeat().await {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(e) => {
                        warn!(lease = %lease.key, error = %crate::ErrorChain(&e), "lease heartbeat failed; retrying at the next one");
                    }
                }
            }
        });
        KeptLease {
            stop: Some(stop),
            task,
        }
    }
}

/// A lease renewed in the background ([`HeldLease::keep`]).
#[derive(Debug)]
pub(crate) struct KeptLease {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Option<HeldLease>>,
}

impl KeptLease {
    /// Stops renewing and releases the lease (unless it was taken over).
    pub(crate) async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Ok(Some(lease)) = (&mut self.task).await {
            lease.release().await;
        }
    }
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        // Not released (a panic, a cancelled task): stop renewing, so the
        // lease goes stale and a waiter takes it over after the TTL.
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}
