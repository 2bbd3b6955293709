//! Several replicas on one shared bucket: who fills a blob, and how the
//! others get it from that replica rather than from upstream.
//!
//! A replica that misses a blob takes a *fill lease* for its digest in the
//! bucket (a conditional put). Another replica that misses the same blob
//! while the lease is held streams the in-flight fill from the holder
//! through [`PeerFills`] and re-hashes it, so the fleet fetches each blob
//! from upstream once. Correctness never depends on the lease: content is
//! addressed by digest and verified before it becomes visible, so any lease
//! trouble means filling alone, as a single replica does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tracing::{info, warn};

use crate::digest::Digest;
use crate::storage::ObjectStorage;
use crate::upstream::FetchedBlob;
use crate::{ErrorChain, Result};

mod lease;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests;
mod timings;

#[cfg(test)]
pub(crate) use lease::HeldLease;
pub(crate) use lease::{Claim, KeptLease, LeaseKey, Observed};
pub use lease::{LeaseTimings, Leases};

/// Fetches a blob that another replica is filling, from that replica.
///
/// `oci-cache-http` implements it over the replicas' internal route; engine
/// tests use an in-process fake.
#[async_trait]
pub trait PeerFills: Send + Sync + 'static {
    /// Streams `digest` from the replica advertised at `holder_url` (its
    /// in-flight fill or its committed blob). Errors mean "peer unusable":
    /// the caller fills alone.
    async fn fetch(&self, holder_url: &str, digest: &Digest) -> Result<FetchedBlob>;
}

/// This replica's identity in the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetIdentity {
    /// Names this replica in the leases it holds; unique per process run
    /// (a restarted replica is a new holder).
    pub holder_id: String,
    /// The URL other replicas reach this replica's internal routes at.
    pub advertise_url: String,
}

/// Fleet mode of an engine ([`PullThrough::with_fleet`]): this replica's
/// leases in the shared bucket and the way to fetch from the others.
///
/// [`PullThrough::with_fleet`]: crate::cache::PullThrough::with_fleet
#[derive(Clone)]
pub struct Fleet {
    leases: Leases,
    /// False when the bucket failed the conditional-write probe: every
    /// replica then fills alone.
    enabled: bool,
    peers: Arc<dyn PeerFills>,
    /// Replicas whose relayed bytes failed verification, by URL, with when.
    distrusted: Arc<Mutex<HashMap<String, tokio::time::Instant>>>,
}

/// How long a replica that sent wrong bytes is not relayed from.
const DISTRUST_FOR: Duration = Duration::from_secs(10 * 60);
/// The most replicas remembered as untrusted (the oldest is forgotten first).
const DISTRUSTED_MAX: usize = 64;

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("identity", self.leases.identity())
            .field("timings", &self.leases.timings())
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// A fleet over `leases`, trusted to honour conditional writes (see
    /// [`connect`](Self::connect) for the probing constructor).
    pub fn new(leases: Leases, peers: Arc<dyn PeerFills>) -> Self {
        Fleet {
            leases,
            enabled: true,
            peers,
            distrusted: Arc::default(),
        }
    }

    /// A fleet on `storage`'s bucket: probes once that the bucket honours
    /// conditional writes ([`Leases::probe`]); when it does not, or the probe
    /// fails, warns and leaves leases off (every replica fills alone, as
    /// without a fleet).
    pub async fn connect(
        storage: &ObjectStorage,
        identity: FleetIdentity,
        timings: LeaseTimings,
        peers: Arc<dyn PeerFills>,
    ) -> Self {
        let leases = Leases::new(storage, identity, timings);
        let enabled = match leases.probe().await {
            Ok(()) => {
                info!(storage = %storage, "bucket honours conditional writes: fill leases on");
                true
            }
            Err(e) => {
                warn!(storage = %storage, error = %ErrorChain(&e), "fill leases off: every replica fills alone");
                false
            }
        };
        Fleet {
            leases,
            enabled,
            peers,
            distrusted: Arc::default(),
        }
    }

    /// Whether leases are in use (the probe passed).
    pub fn leases_enabled(&self) -> bool {
        self.enabled
    }

    /// This replica's identity.
    pub fn identity(&self) -> &FleetIdentity {
        self.leases.identity()
    }

    /// The leases, when in use.
    pub(crate) fn leases(&self) -> Option<&Leases> {
        self.enabled.then_some(&self.leases)
    }

    /// How blobs are fetched from other replicas.
    pub(crate) fn peers(&self) -> &Arc<dyn PeerFills> {
        &self.peers
    }

    /// Whether this replica relays from the replica at `url`: not within
    /// ten minutes of its relayed bytes failing verification.
    pub(crate) fn trusts(&self, url: &str) -> bool {
        let mut distrusted = self.distrusted.lock().unwrap_or_else(|e| e.into_inner());
        distrusted.retain(|_, since| since.elapsed() < DISTRUST_FOR);
        !distrusted.contains_key(url)
    }

    /// Remembers that the replica at `url` sent bytes that failed
    /// verification (bounded: the oldest entry goes first).
    pub(crate) fn distrust(&self, url: &str) {
        let mut distrusted = self.distrusted.lock().unwrap_or_else(|e| e.into_inner());
        if distrusted.len() >= DISTRUSTED_MAX && !distrusted.contains_key(url) {
            let oldest = distrusted
                .iter()
                .min_by_key(|(_, since)| **since)
                .map(|(url, _)| url.clone());
            if let Some(oldest) = oldest {
                distrusted.remove(&oldest);
            }
        }
        distrusted.insert(url.to_owned(), tokio::time::Instant::now());
    }
}
