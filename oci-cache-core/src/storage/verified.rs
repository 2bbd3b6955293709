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
use std::fs::File;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::oneshot;

use super::ByteStream;
use crate::digest::{Digest, DigestVerifier, SizeCheck};
use crate::{Error, Result};

/// A blob stream whose producer hashes every byte against the digest as it
/// goes: it ends cleanly only after the producer's digest check passed, and
/// with an error otherwise (including when the producer goes away). Only
/// this crate builds one: the cache engine's fill, which hashes each blob for
/// its clients anyway, so storing it need not hash it again.
pub struct PreverifiedStream {
    stream: ByteStream,
    /// Where [`write_verified`] hands the producer its [`StagedBytes`], when
    /// the backend's staging can be read before the commit.
    tap: Option<oneshot::Sender<StagedBytes>>,
}

impl PreverifiedStream {
    /// `stream` must keep the promise above; see the blob fill in `cache`.
    pub(crate) fn new(stream: ByteStream) -> Self {
        PreverifiedStream { stream, tap: None }
    }

    /// Asks the write to send the bytes it staged so far to `tap` before it
    /// takes the first chunk; the sender is dropped instead when the backend
    /// cannot be read before the commit (or never calls [`write_verified`]).
    pub(crate) fn staged_to(mut self, tap: oneshot::Sender<StagedBytes>) -> Self {
        self.tap = Some(tap);
        self
    }

    /// The bytes, for a backend that verifies them itself.
    pub fn into_stream(self) -> ByteStream {
        self.stream
    }
}

/// What a write has staged so far, readable before the commit: the staging
/// file's own descriptor, and how many bytes from its start have been
/// written to it. The blob fill reads the bytes that left its memory window
/// from here instead of writing them a second time to a spool.
///
/// The descriptor follows the file, not its path: after the commit renames
/// it, or an abort unlinks it, the bytes counted stay readable through it
/// (and nothing becomes visible as a blob by it). The count only grows, and
/// only once a chunk is entirely in the file.
#[derive(Debug, Clone)]
pub struct StagedBytes {
    file: Arc<File>,
    written: Arc<AtomicU64>,
}

impl StagedBytes {
    /// `file` must be open for reading on the staging file, and `written`
    /// raised (with `Release` ordering) only after bytes `[old, new)` are in it.
    pub fn new(file: Arc<File>, written: Arc<AtomicU64>) -> Self {
        StagedBytes { file, written }
    }

    /// The staging file, open for reading.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Bytes `[0, written)` of the blob are in [`file`](Self::file).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
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

    /// The bytes staged so far, for a backend whose staging can be read
    /// before the commit (a local file); `None`, the default, otherwise
    /// (multipart uploads, memory).
    fn staged(&self) -> Option<StagedBytes> {
        None
    }
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
        BlobSource::Preverified(data) => {
            if let (Some(tap), Some(staged)) = (data.tap, staging.staged()) {
                let _ = tap.send(staged);
            }
            (
                data.stream,
                Check::Count(SizeCheck::new(digest.clone(), expected_size)),
            )
        }
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
