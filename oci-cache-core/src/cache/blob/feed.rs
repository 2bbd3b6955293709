//! What a fill sends its storage write: the bytes, then its verdict.

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::aborted;
#[cfg(doc)]
use crate::storage::BlobSource;
use crate::storage::PreverifiedStream;
use crate::Result;

/// What the fill sends the storage write: bytes, then the verdict.
pub(super) enum Feed {
    /// The next bytes of the blob.
    Chunk(Bytes),
    /// Every byte matched the digest: the write may commit.
    Verified,
}

/// Turns the storage channel into the stream
/// [`BlobSource::Preverified`] consumes. It ends cleanly only on
/// [`Feed::Verified`]; a channel closed without a verdict (the fill task went
/// away) is an error, so the backend never commits unverified bytes.
pub(super) fn preverified_stream(rx: mpsc::Receiver<Result<Feed>>) -> PreverifiedStream {
    let stream = futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Ok(Feed::Chunk(chunk))) => Some((Ok(chunk), Some(rx))),
            Some(Ok(Feed::Verified)) => None,
            Some(Err(e)) => Some((Err(e), None)),
            None => Some((Err(aborted("blob fill")), None)),
        }
    })
    .boxed();
    PreverifiedStream::new(stream)
}
