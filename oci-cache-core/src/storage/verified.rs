//! The one place a [`ByteStream`] becomes a verified, atomic write.
//!
//! Every backend supplies a [`Staging`]: somewhere to put bytes that nobody
//! can read yet, a way to publish them, and a way to throw them away.
//! [`write_verified`] drives it: it hashes each chunk while the backend
//! stores it, and publishes only when digest and size match. Any error —
//! from the source stream, the verifier or the backend — discards the
//! staged bytes, so nothing partial is ever visible under the digest.
//! Backends outside this crate use the same helper.

use std::fmt::Debug;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::ByteStream;
use crate::digest::{Digest, DigestVerifier, SizeCheck};
use crate::{Error, Result};

/// A blob stream whose producer hashes every byte against the digest as it
/// goes: it ends cleanly only after the producer's digest check passed, and
/// with an error otherwise (including when the producer goes away). Only
/// this crate builds one: the cache engine's fill, which hashes each blob for
/// its clients anyway, so storing it need not hash it again.
pub struct PreverifiedStream(ByteStream);

impl PreverifiedStream {
    /// `stream` must keep the promise above; see the blob fill in `cache`.
    pub(crate) fn new(stream: ByteStream) -> Self {
        PreverifiedStream(stream)
    }

    /// The bytes, for a backend that verifies them itself.
    pub fn into_stream(self) -> ByteStream {
        self.0
    }
}

impl Debug for PreverifiedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreverifiedStream")
    }
}

/// The bytes of a blob write, and who checks them against the digest.
pub enum BlobSource {
    /// Any stream: the backend hashes it.
    Unchecked(ByteStream),
    /// A stream whose producer hashes it (see [`PreverifiedStream`]): the
    /// backend may only count its size.
    Preverified(PreverifiedStream),
}

impl Debug for BlobSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlobSource::Unchecked(_) => "BlobSource::Unchecked",
            BlobSource::Preverified(_) => "BlobSource::Preverified",
        })
    }
}

impl BlobSource {
    /// The bytes, for a backend that verifies every source itself.
    pub fn into_stream(self) -> ByteStream {
        match self {
            BlobSource::Unchecked(stream) => stream,
            BlobSource::Preverified(stream) => stream.into_stream(),
        }
    }
}

/// Bytes on their way into a backend, invisible until [`commit`](Self::commit).
///
/// A backend's half of [`write_verified`]. Dropping a `Staging` without
/// committing must also leave nothing visible (the write future may be
/// cancelled at any await point), so tidy up in `Drop` what `abort` would.
#[async_trait]
pub trait Staging: Send {
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
/// size written. The body of every backend's
/// [`blob_write_from`](super::Storage::blob_write_from).
pub async fn write_verified(
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
pub fn verify_bytes(digest: &Digest, bytes: &[u8]) -> Result<()> {
    let mut verifier = DigestVerifier::new(digest.clone(), Some(bytes.len() as u64));
    verifier.update(bytes)?;
    verifier.finish().map(|_| ())
}

/// Resolves an optional requested range against an object of `size` bytes.
///
/// The end is clamped to the size; a range that starts at or past the end,
/// or that is empty, is not satisfiable.
pub fn resolve_range(size: u64, range: Option<Range<u64>>) -> Result<Range<u64>> {
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
