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

use async_trait::async_trait;

use crate::digest::Digest;
use crate::upstream::FetchedBlob;
use crate::Result;

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
