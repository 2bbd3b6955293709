//! Ranges far ahead of a fill: forwarded upstream as ranges, relayed, never
//! stored.
//!
//! A `Range` request for a blob that is not in storage joins (or starts) the
//! fill for the whole blob, which stays the only way bytes get stored. When
//! the range starts more than [`AHEAD`] bytes beyond what the fill has
//! received, waiting for the fill would cost the time to fetch everything
//! before the range: the range is then also asked of upstream on its own
//! (`Range: bytes=a-b`) and its bytes are relayed to the client as they
//! arrive. They are not checked against the digest (a slice cannot be), as no
//! ranged answer of a registry is; the fill verifies the whole blob and stores
//! it, so the next request is a hit.
//!
//! The forwarded bytes of one fill are capped at a quarter of the blob
//! ([`BUDGET_DIVISOR`]): many parallel ranges of one cold blob (chunked
//! pulls) cost at most 1.25× the blob upstream; ranges over the cap wait for
//! the fill. A range that starts within [`AHEAD`] of the fill's position, or
//! that the upstream does not answer as asked, is served by the fill.

use std::ops::Range;

use bytes::Bytes;
use futures::StreamExt;
use tracing::debug;

use super::super::aborted;
use super::buffer::Fill;
use crate::cache::BlobResponse;
use crate::digest::Digest;
use crate::error::ErrorChain;
use crate::observe::CacheOutcome;
use crate::reference::{Registry, Repository};
use crate::storage::ByteStream;
use crate::upstream::{BlobRange, Upstream};

/// A range that starts more than this many bytes beyond the fill's position
/// is forwarded; nearer ones wait for the fill, which gets there about as
/// fast as a new upstream request would (a round trip at tens of MiB/s).
pub(super) const AHEAD: u64 = 4 * 1024 * 1024;

/// The bytes forwarded for one fill stay within its blob's size divided by this.
const BUDGET_DIVISOR: u64 = 4;

/// `range` of the blob (`size` bytes) straight from upstream, when it is
/// worth forwarding past `fill` (see the module docs); `None` when the fill
/// should serve it.
pub(super) async fn ahead_of_fill<U: Upstream + ?Sized>(
    upstream: &U,
    source: (&Registry, &Repository),
    digest: &Digest,
    fill: &Fill,
    range: &Range<u64>,
    size: u64,
) -> Option<ByteStream> {
    let len = range.end.checked_sub(range.start)?;
    let position = fill.buffer().written();
    if fill.is_done() || range.start <= position.saturating_add(AHEAD) {
        return None;
    }
    if !fill.reserve_forward(len, size / BUDGET_DIVISOR) {
        debug!(%digest, ?range, "range ahead of the fill over the forward budget; waiting for the fill");
        return None;
    }
    let asked = BlobRange::from_offset(range.start).with_end(Some(range.end));
    let (registry, repository) = source;
    match upstream
        .blob_get_range(registry, repository, digest, &asked)
        .await
    {
        Ok(answer) if answer.start == range.start && answer.total == Some(size) => {
            debug!(%digest, ?range, position, "range ahead of the fill forwarded upstream");
            Some(exactly(answer.stream, len))
        }
        Ok(answer) => {
            debug!(%digest, ?range, start = answer.start, total = ?answer.total, "upstream did not answer the forwarded range as asked; waiting for the fill");
            fill.release_forward(len);
            None
        }
        Err(e) => {
            debug!(%digest, ?range, error = %ErrorChain(&e), "forwarded range failed; waiting for the fill");
            fill.release_forward(len);
            None
        }
    }
}

/// A range of a cold blob forwarded upstream alone, no fill started
/// ([`CacheOptions::fill_on_range`](crate::cache::CacheOptions::fill_on_range)
/// off): its bytes relayed, nothing stored. `None` when the upstream did not
/// answer it as asked (a whole blob, no total, an error): the fill path then
/// serves it (and answers `416` for a range past the end).
pub(super) async fn alone<U: Upstream + ?Sized>(
    upstream: &U,
    source: (&Registry, &Repository),
    digest: &Digest,
    range: &Range<u64>,
) -> Option<BlobResponse> {
    let end = (range.end != u64::MAX).then_some(range.end);
    let asked = BlobRange::from_offset(range.start).with_end(end);
    let (registry, repository) = source;
    let answer = match upstream
        .blob_get_range(registry, repository, digest, &asked)
        .await
    {
        Ok(answer) => answer,
        Err(e) => {
            debug!(%digest, ?range, error = %ErrorChain(&e), "range forwarded alone failed; filling instead");
            return None;
        }
    };
    let size = answer.total.filter(|_| answer.start == range.start)?;
    let range = crate::storage::resolve_range(size, Some(range.clone())).ok()?;
    debug!(%digest, ?range, "range of a cold blob forwarded alone, nothing stored");
    Some(BlobResponse {
        size,
        stream: exactly(answer.stream, range.end - range.start),
        range,
        outcome: CacheOutcome::Miss,
    })
}

/// The first `len` bytes of `stream`; shorter is an error, never a clean end.
fn exactly(stream: ByteStream, len: u64) -> ByteStream {
    futures::stream::unfold((stream, len), |(mut stream, left)| async move {
        if left == 0 {
            return None;
        }
        match stream.next().await {
            Some(Ok(chunk)) => {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
                let piece: Bytes = chunk.slice(..take);
                Some((Ok(piece), (stream, left - take as u64)))
            }
            Some(Err(e)) => Some((Err(e), (stream, 0))),
            None => Some((Err(aborted("forwarded blob range")), (stream, 0))),
        }
    })
    .boxed()
}
