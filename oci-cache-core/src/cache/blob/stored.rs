//! A blob read from storage for a hit: the one place that holds the
//! eviction guard for the stream's lifetime (clients and peers alike).

use std::ops::Range;

use futures::StreamExt;

use crate::cache::{BlobResponse, Shared};
use crate::digest::Digest;
use crate::observe::CacheOutcome;
use crate::storage::Storage;
use crate::Result;

impl<S: Storage + ?Sized, U: ?Sized> Shared<S, U> {
    /// A blob (or a range of it) from storage, `None` when it is not there.
    /// The stream holds a budget guard until it is dropped, so eviction
    /// leaves the blob alone; while it is being deleted there is no guard
    /// and the blob counts as not there.
    pub(in crate::cache) async fn stored_blob(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobResponse>> {
        let Some(guard) = self.budget.guard(digest) else {
            return Ok(None);
        };
        match self.storage.blob_read(digest, range).await {
            Ok(read) => {
                self.budget.used(digest);
                Ok(Some(BlobResponse {
                    size: read.size,
                    range: read.range,
                    stream: read
                        .stream
                        .map(move |chunk| {
                            let _held = &guard;
                            chunk
                        })
                        .boxed(),
                    outcome: CacheOutcome::Hit,
                }))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}
