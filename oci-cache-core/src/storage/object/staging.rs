//! The verified blob upload of [`ObjectStorage`](super::ObjectStorage): a
//! multipart upload completed only after the digest matched; see the
//! [module docs](super).

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};
use tokio::task::JoinHandle;

use super::uploads::{MarkedUpload, Tracking};
use super::{failed, BACKEND};
use crate::digest::Digest;
use crate::storage::Staging;
use crate::{Error, Result};

const MIB: u64 = 1024 * 1024;
/// The smallest part S3 accepts (except the last).
const MIN_PART: u64 = 5 * MIB;
/// The largest part S3 accepts.
const MAX_PART: u64 = 5 * 1024 * MIB;
/// The most parts a blob of known size is cut into: S3 allows 10,000.
const TARGET_PARTS: u64 = 9_000;
/// With the size unknown, parts double every this many parts (from 5 MiB,
/// up to 5 GiB): blobs up to ~4.4 GiB keep 5 MiB parts, and 5 TiB (S3's
/// largest object) fits in 9,125 parts.
const GROWTH_EVERY: u64 = 900;
/// Parts uploading while the next one is hashed and buffered: with the part
/// being filled, memory holds at most two parts per write.
const PARTS_IN_FLIGHT: usize = 1;

/// The size of part `index` (from 0) of a blob of `size` bytes: one size for
/// every part of a blob of known size (some S3-compatible stores require
/// that), so that it fits in 9,000 parts; growing as parts accumulate when
/// the size is unknown. Always between S3's 5 MiB and 5 GiB.
pub(super) fn part_size(size: Option<u64>, index: u64) -> u64 {
    let bytes = match size {
        Some(size) => size.div_ceil(TARGET_PARTS).next_multiple_of(MIB),
        None => MIN_PART.saturating_mul(1 << (index / GROWTH_EVERY).min(10)),
    };
    bytes.clamp(MIN_PART, MAX_PART)
}

/// An in-progress blob upload; see the [module docs](super) for why it is safe.
pub(super) struct ObjectStaging {
    store: Arc<dyn ObjectStore>,
    location: Path,
    digest: Digest,
    expected_size: Option<u64>,
    /// The size of the part being filled ([`part_size`]).
    part_size: usize,
    /// Parts sent so far.
    parts: u64,
    /// Where multipart uploads are recorded (stores with the low-level API).
    tracking: Option<(Tracking, Path)>,
    /// Created with the first full part, so small blobs need a single `PUT`.
    upload: Option<Upload>,
    /// The ids of the parts sent, in order.
    sent: Vec<PartId>,
    buffer: Vec<Bytes>,
    buffered: usize,
    in_flight: VecDeque<JoinHandle<object_store::Result<PartId>>>,
    done: bool,
}

/// A multipart upload: recorded in a marker when the store has the
/// low-level API (see [`uploads`](super::uploads)), else `object_store`'s own.
enum Upload {
    Marked(MarkedUpload),
    Plain(Box<dyn MultipartUpload>),
}

impl Upload {
    async fn start(
        store: &Arc<dyn ObjectStore>,
        location: &Path,
        tracking: Option<&(Tracking, Path)>,
    ) -> object_store::Result<Self> {
        Ok(match tracking {
            Some((tracking, marker)) => Upload::Marked(
                MarkedUpload::start(
                    tracking,
                    Arc::clone(store),
                    location.clone(),
                    marker.clone(),
                )
                .await?,
            ),
            None => Upload::Plain(store.put_multipart(location).await?),
        })
    }

    /// Sends part `index` (from 0) in a task of its own.
    async fn put_part(
        &mut self,
        index: usize,
        payload: PutPayload,
    ) -> JoinHandle<object_store::Result<PartId>> {
        match self {
            Upload::Marked(upload) => {
                upload.refresh().await;
                let multipart = Arc::clone(&upload.multipart);
                let (location, id) = (upload.location.clone(), upload.id.clone());
                tokio::spawn(
                    async move { multipart.put_part(&location, &id, index, payload).await },
                )
            }
            Upload::Plain(upload) => {
                let part = upload.put_part(payload);
                tokio::spawn(async move {
                    part.await.map(|()| PartId {
                        content_id: String::new(),
                    })
                })
            }
        }
    }

    async fn complete(&mut self, parts: Vec<PartId>) -> object_store::Result<()> {
        match self {
            Upload::Marked(upload) => {
                let completed = upload
                    .multipart
                    .complete_multipart(&upload.location, &upload.id, parts)
                    .await;
                if completed.is_ok() {
                    upload.unmark().await;
                }
                completed.map(|_| ())
            }
            Upload::Plain(upload) => upload.complete().await.map(|_| ()),
        }
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        match self {
            Upload::Marked(upload) => upload.abort().await,
            Upload::Plain(upload) => upload.abort().await,
        }
    }
}

impl ObjectStaging {
    fn error(&self, e: object_store::Error) -> Error {
        failed(e, format!("cannot upload blob {}", self.digest))
    }

    async fn wait_for_parts(&mut self, keep: usize) -> Result<()> {
        while self.in_flight.len() > keep {
            if let Some(part) = self.in_flight.pop_front() {
                let part = part
                    .await
                    .map_err(|e| Error::storage(BACKEND, "upload task failed", e))?
                    .map_err(|e| self.error(e))?;
                self.sent.push(part);
            }
        }
        Ok(())
    }

    async fn send_part(&mut self) -> Result<()> {
        self.wait_for_parts(PARTS_IN_FLIGHT - 1).await?;
        let upload = match &mut self.upload {
            Some(upload) => upload,
            None => {
                let upload = Upload::start(&self.store, &self.location, self.tracking.as_ref())
                    .await
                    .map_err(|e| self.error(e))?;
                self.upload.insert(upload)
            }
        };
        let payload: PutPayload = std::mem::take(&mut self.buffer).into_iter().collect();
        self.buffered = 0;
        let index = usize::try_from(self.parts).unwrap_or(usize::MAX);
        let part = upload.put_part(index, payload).await;
        self.in_flight.push_back(part);
        self.parts += 1;
        self.part_size = part_bytes(self.expected_size, self.parts);
        Ok(())
    }
}

#[async_trait]
impl Staging for ObjectStaging {
    async fn write(&mut self, mut chunk: Bytes) -> Result<()> {
        // Parts are cut to exactly `part_size` (zero-copy slices), since some
        // S3-compatible stores require equal part sizes.
        while !chunk.is_empty() {
            let take = (self.part_size - self.buffered).min(chunk.len());
            self.buffer.push(chunk.split_to(take));
            self.buffered += take;
            if self.buffered == self.part_size {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if self.upload.is_none() {
            let payload: PutPayload = std::mem::take(&mut self.buffer).into_iter().collect();
            self.store
                .put(&self.location, payload)
                .await
                .map_err(|e| self.error(e))?;
            self.done = true;
            return Ok(());
        }
        if self.buffered > 0 {
            self.send_part().await?;
        }
        self.wait_for_parts(0).await?;
        if let Some(mut upload) = self.upload.take() {
            let parts = std::mem::take(&mut self.sent);
            if let Err(e) = upload.complete(parts).await {
                let _ = upload.abort().await;
                self.done = true;
                return Err(self.error(e));
            }
        }
        self.done = true;
        Ok(())
    }

    async fn abort(mut self: Box<Self>) {
        self.done = true;
        for part in self.in_flight.drain(..) {
            part.abort();
        }
        if let Some(mut upload) = self.upload.take() {
            if let Err(e) = upload.abort().await {
                tracing::warn!(digest = %self.digest, error = %e,
                    "cannot abort multipart upload; a bucket lifecycle rule will reclaim it");
            }
        }
    }
}

impl Drop for ObjectStaging {
    fn drop(&mut self) {
        // Cancelled mid-upload: nothing is visible, but the parts cost money.
        if self.done {
            return;
        }
        for part in self.in_flight.drain(..) {
            part.abort();
        }
        if let (Some(mut upload), Ok(runtime)) =
            (self.upload.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                let _ = upload.abort().await;
            });
        }
    }
}

impl ObjectStaging {
    /// An upload of `digest` to `location`, in parts sized so that a blob of
    /// `expected_size` fits in S3's part limit; with `tracking`, a multipart
    /// upload is recorded in the marker at the path given beside it.
    pub(super) fn new(
        store: Arc<dyn ObjectStore>,
        location: Path,
        digest: Digest,
        expected_size: Option<u64>,
        tracking: Option<(Tracking, Path)>,
    ) -> Self {
        ObjectStaging {
            store,
            location,
            digest,
            expected_size,
            part_size: part_bytes(expected_size, 0),
            parts: 0,
            tracking,
            upload: None,
            sent: Vec::new(),
            buffer: Vec::new(),
            buffered: 0,
            in_flight: VecDeque::new(),
            done: false,
        }
    }
}

/// [`part_size`] as a buffer length.
fn part_bytes(size: Option<u64>, index: u64) -> usize {
    usize::try_from(part_size(size, index)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * MIB;
    const TIB: u64 = 1024 * GIB;
    /// S3's largest object.
    const S3_MAX_OBJECT: u64 = 5 * TIB;

    /// Parts needed for `size` bytes cut as [`part_size`] says.
    fn parts_for(size: u64, known: bool) -> u64 {
        let (mut sent, mut parts) = (0u64, 0u64);
        while sent < size {
            sent += part_size(known.then_some(size), parts);
            parts += 1;
        }
        parts
    }

    #[test]
    fn a_known_size_gets_one_part_size_that_fits_s3s_part_limit() {
        assert_eq!(part_size(Some(0), 0), MIN_PART);
        assert_eq!(part_size(Some(300 * MIB), 0), MIN_PART);
        // At 5 MiB parts, 10,000 parts end at 48.8 GiB: larger blobs get larger parts.
        assert_eq!(part_size(Some(100 * GIB), 0), 12 * MIB);
        for size in [
            MIN_PART,
            44 * GIB,
            49 * GIB,
            TIB,
            S3_MAX_OBJECT - 1,
            S3_MAX_OBJECT,
        ] {
            let parts = parts_for(size, true);
            assert!(parts < 10_000, "{size} bytes in {parts} parts");
            assert_eq!(part_size(Some(size), 0), part_size(Some(size), parts - 1));
        }
        assert_eq!(part_size(Some(S3_MAX_OBJECT), 0), 583 * MIB);
        assert_eq!(parts_for(S3_MAX_OBJECT, true), 8_993);
        assert_eq!(part_size(Some(u64::MAX), 0), MAX_PART);
    }

    #[test]
    fn an_unknown_size_grows_the_parts_as_they_accumulate() {
        assert_eq!(part_size(None, 0), MIN_PART);
        assert_eq!(part_size(None, 899), MIN_PART);
        assert_eq!(part_size(None, 900), 2 * MIN_PART);
        assert_eq!(part_size(None, 1_800), 4 * MIN_PART);
        assert_eq!(part_size(None, 9_000), MAX_PART);
        assert_eq!(part_size(None, u64::MAX), MAX_PART);
        // A typical layer never leaves 5 MiB parts; S3's largest object fits.
        assert_eq!(parts_for(4 * GIB, false), 820);
        assert_eq!(parts_for(S3_MAX_OBJECT, false), 9_125);
        assert!(parts_for(S3_MAX_OBJECT, false) < 10_000);
    }
}
