//! The storage write of a relay that took a fill over: the bytes it
//! relayed so far are read back from the fill itself, not fetched again.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::aborted;
use super::buffer::{Fill, Source};
use super::reader::{Origin, Reader};
use crate::digest::Digest;
use crate::storage::{BlobSource, ByteStream, PreverifiedStream, Storage};
use crate::Result;

/// The storage write of a relay that took over: the whole blob read back
/// from the fill (its buffer and spool hold every byte relayed so far,
/// already hashed), then followed live; it ends cleanly only once the fill
/// verified the whole blob, so the write commits nothing unverified.
pub(super) fn store_from_fill<S: Storage + ?Sized>(
    storage: Arc<S>,
    fill: Arc<Fill>,
    digest: Digest,
    size: Option<u64>,
) -> tokio::task::JoinHandle<Result<u64>> {
    tokio::spawn(async move {
        let size = size.ok_or_else(|| {
            aborted("storing a relayed blob of unknown size (the replica sent no length)")
        })?;
        let origin = Arc::new(ReadBack(fill.source.clone(), Arc::clone(&fill)));
        let reader = Reader::new(fill, 0..size, size, origin, true).into_stream();
        let source = BlobSource::Preverified(PreverifiedStream::new(reader));
        storage.blob_write_from(&digest, Some(size), source).await
    })
}

/// The origin of a fill's read-back: the fill itself; bytes that left it
/// (no spool) are not fetched again, the write fails instead.
struct ReadBack(Source, Arc<Fill>);

impl Origin for ReadBack {
    fn source(&self) -> &Source {
        &self.0
    }

    fn own_fill(&self) -> Arc<Fill> {
        Arc::clone(&self.1)
    }

    fn direct(&self) -> BoxFuture<'static, Result<ByteStream>> {
        async {
            Err(aborted(
                "storing a relayed blob whose first bytes left memory without a spool",
            ))
        }
        .boxed()
    }
}
