//! Serving a blob to another replica of a fleet: only what this replica
//! already has.
//!
//! A replica that misses a blob another replica is filling streams the fill
//! from that holder instead of fetching it upstream a second time. The holder
//! answers from its own fill (joined the way a late client joins it, so the
//! peer reads from the spool and then follows live) or from storage once the
//! blob is committed. It never starts a fill and never asks upstream: a
//! holder that asked upstream on a peer's behalf could send two replicas
//! asking each other in a loop, and the lease says who fetches, not the
//! replica that happens to be asked. Everything else is "not here", and the
//! asking replica fills alone.
//!
//! The stream holds back its last byte until the holder's fill verified the
//! whole blob, as for any client ([`reader`](super::reader)); the asking
//! replica re-hashes what it relays all the same.

use std::ops::Range;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use tracing::debug;

use super::buffer::{lock, Fill, Source};
use super::reader::{Origin, Reader};
use super::BlobFills;
use crate::cache::{BlobResponse, PullThrough};
use crate::digest::Digest;
use crate::observe::CacheOutcome;
use crate::storage::{ByteStream, Storage};
use crate::{Error, Result};

impl BlobFills {
    /// The fill under way for `digest`, if one is and has not failed; never
    /// starts one.
    fn under_way(&self, digest: &Digest) -> Option<Arc<Fill>> {
        lock(&self.map)
            .get(digest)
            .filter(|fill| !fill.has_failed())
            .cloned()
    }
}

/// A peer's view of a fill: it has no source of its own to fall back to.
struct PeerOrigin {
    fill: Arc<Fill>,
    source: Source,
}

impl Origin for PeerOrigin {
    fn source(&self) -> &Source {
        // The fill's own source: a failure of the fill is never retried
        // through another one (see `reader::retries_own`).
        &self.source
    }

    fn own_fill(&self) -> Arc<Fill> {
        Arc::clone(&self.fill)
    }

    fn direct(&self) -> BoxFuture<'static, Result<ByteStream>> {
        // Bytes that left the window of a fill without a spool: fetching them
        // again is the asking replica's business, not this one's.
        async { Err(not_here()) }.boxed()
    }
}

fn not_here() -> Error {
    Error::not_found("blob bytes on this replica (its fill lost them; fetch elsewhere)")
}

impl<S: Storage + ?Sized, U: ?Sized> PullThrough<S, U> {
    /// A blob (or a range of it) for another replica of a fleet: from the
    /// fill under way on this replica, or from storage; `None` when neither
    /// has it. Never fetches upstream (see the module docs of `blob::peer`).
    ///
    /// A stream from a fill yields its last byte only after the fill verified
    /// the whole blob; when the fill fails, the stream ends with that error.
    pub async fn blob_for_peer(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobResponse>> {
        // The fill first: a fill leaves the map only after its storage write
        // ended, so a fill missed here is committed by the time storage is
        // read below (or failed, and then nobody has the blob).
        if let Some(fill) = self.inner.blob_fills.under_way(digest) {
            // A fill that fails before it knows the size has nothing to give.
            let size = match fill.size().await {
                Ok(size) => size,
                Err(e) => {
                    debug!(%digest, error = %e, "the fill a peer asked for failed; not here");
                    return Ok(None);
                }
            };
            let range = crate::storage::resolve_range(size, range)?;
            let origin = Arc::new(PeerOrigin {
                fill: Arc::clone(&fill),
                source: fill.source.clone(),
            });
            let stream = Reader::new(fill, range.clone(), size, origin, false).into_stream();
            return Ok(Some(BlobResponse {
                size,
                range,
                stream,
                outcome: CacheOutcome::Coalesced,
            }));
        }
        self.inner.stored_blob(digest, range).await
    }
}
