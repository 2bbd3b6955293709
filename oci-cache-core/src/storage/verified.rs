//! The one place a [`ByteStream`] becomes a verified, atomic write.
//!
//! Every backend supplies a [`Staging`]: somewhere to put bytes that nobody
//! can read yet, a way to publish them, and a way to throw them away.
//! [`write_verified`] drives it: it hashes each chunk while the backend
//! stores it, and publishes only when digest and size match. Any error —
//! from the source stream, the verifier or the backend — discards the
//! staged bytes, so nothing partial is ever visible under the digest.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::BlobSource;
use crate::digest::{Digest, DigestVerifier, SizeCheck};
use crate::{Error, Result};

/// Bytes on their way into a backend, invisible until [`commit`](Self::commit).
///
/// Dropping a `Staging` without committing must also leave nothing visible
/// (the write future may be cancelled at any await point).
#[async_trait]
pub(crate) trait Staging: Send {
    /// Stores one more chunk.
    async fn write(&mut self, chunk: Bytes) -> Result<()>;

    /// Makes the staged bytes visible under their final key.
    async fn commit(self: Box<Self>) -> Result<()>;

    /// Discards the staged bytes; best effort, errors are only logged.
    async fn abort(self: Box<Self>);
}

/// The check [`write_verified`] applies while the bytes go by.
enum Check {
    Hash(Box<DigestVerifier>),
    Count(SizeCheck),
}

impl Check {
    fn update(&mut self, chunk: &[u8]) -> Result<()> {
        match self {
            Check::Hash(verifier) => verifier.update(chunk),
            Check::Count(size) => size.add(chunk.len()),
        }
    }

    fn finish(self) -> Result<u64> {
        match self {
            Check::Hash(verifier) => verifier.finish(),
            Check::Count(size) => size.finish(),
        }
    }
}

/// Streams `data` into `staging`, checking it against `digest` and
/// `expected_size`, and commits only when everything matched. Returns the
/// size written.
pub(crate) async fn write_verified(
    digest: &Digest,
    expected_size: Option<u64>,
    data: BlobSource,
    mut staging: Box<dyn Staging>,
) -> Result<u64> {
    let (mut data, mut check) = match data {
        BlobSource::Unchecked(data) => (
            data,
            Check::Hash(Box::new(DigestVerifier::new(digest.clone(), expected_size))),
        ),
        BlobSource::Preverified(data) => (
            data.into_stream(),
            Check::Count(SizeCheck::new(digest.clone(), expected_size)),
        ),
    };
    while let Some(chunk) = data.next().await {
        let step = match chunk {
            Ok(chunk) => match check.update(&chunk) {
                Ok(()) => staging.write(chunk).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = step {
            staging.abort().await;
            return Err(e);
        }
    }
    match check.finish() {
        Ok(size) => {
            staging.commit().await?;
            Ok(size)
        }
        Err(e) => {
            tracing::debug!(%digest, error = %e, "discarding staged blob that failed verification");
            staging.abort().await;
            Err(e)
        }
    }
}

/// Checks in-memory content (a manifest) against its digest.
pub(crate) fn verify_bytes(digest: &Digest, bytes: &[u8]) -> Result<()> {
    let mut verifier = DigestVerifier::new(digest.clone(), Some(bytes.len() as u64));
    verifier.update(bytes)?;
    verifier.finish().map(|_| ())
}

/// Resolves an optional requested range against an object of `size` bytes.
///
/// The end is clamped to the size; a range that starts at or past the end,
/// or that is empty, is not satisfiable.
pub(crate) fn resolve_range(size: u64, range: Option<Range<u64>>) -> Result<Range<u64>> {
    match range {
        None => Ok(0..size),
        Some(r) if r.start >= size || r.end <= r.start => Err(Error::RangeNotSatisfiable {
            start: r.start,
            size,
        }),
        Some(r) => Ok(r.start..r.end.min(size)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges_clamp_and_reject() {
        assert_eq!(resolve_range(10, None).unwrap(), 0..10);
        assert_eq!(resolve_range(0, None).unwrap(), 0..0);
        assert_eq!(resolve_range(10, Some(0..1)).unwrap(), 0..1);
        assert_eq!(resolve_range(10, Some(9..100)).unwrap(), 9..10);
        assert!(matches!(
            resolve_range(10, Some(10..11)),
            Err(Error::RangeNotSatisfiable {
                start: 10,
                size: 10
            })
        ));
        assert!(matches!(
            resolve_range(10, Some(5..5)),
            Err(Error::RangeNotSatisfiable { start: 5, size: 10 })
        ));
        assert!(matches!(
            resolve_range(0, Some(0..1)),
            Err(Error::RangeNotSatisfiable { start: 0, size: 0 })
        ));
    }
}
