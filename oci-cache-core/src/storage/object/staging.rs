//! The verified blob upload of [`ObjectStorage`](super::ObjectStorage): a
//! multipart upload completed only after the digest matched; see the
//! [module docs](super).

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};
use tokio::task::JoinHandle;

use super::{failed, BACKEND};
use crate::digest::Digest;
use crate::storage::Staging;
use crate::{Error, Result};

/// The smallest part S3 accepts (except the last).
const MIN_PART: u64 = 5 * 1024 * 1024;
/// S3 allows 10 000 parts; stay below so a blob of known size always fits.
const MAX_PARTS: u64 = 9_000;
/// Parts uploading at once while the next one is hashed and buffered; with
/// the part being filled this bounds memory to three parts per write.
const PARTS_IN_FLIGHT: usize = 2;

/// An in-progress blob upload; see the [module docs](super) for why it is safe.
pub(super) struct ObjectStaging {
    store: Arc<dyn ObjectStore>,
    location: Path,
    digest: Digest,
    part_size: usize,
    /// Created with the first full part, so small blobs need a single `PUT`.
    upload: Option<Box<dyn MultipartUpload>>,
    buffer: Vec<Bytes>,
    buffered: usize,
    in_flight: VecDeque<JoinHandle<object_store::Result<()>>>,
    done: bool,
}

impl ObjectStaging {
    fn error(&self, e: object_store::Error) -> Error {
        failed(e, format!("cannot upload blob {}", self.digest))
    }

    async fn wait_for_parts(&mut self, keep: usize) -> Result<()> {
        while self.in_flight.len() > keep {
            if let Some(part) = self.in_flight.pop_front() {
                part.await
                    .map_err(|e| Error::storage(BACKEND, "upload task failed", e))?
                    .map_err(|e| self.error(e))?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self) -> Result<()> {
        self.wait_for_parts(PARTS_IN_FLIGHT - 1).await?;
        let upload = match &mut self.upload {
            Some(upload) => upload,
            None => {
                let upload = self
                    .store
                    .put_multipart(&self.location)
                    .await
                    .map_err(|e| self.error(e))?;
                self.upload.insert(upload)
            }
        };
        let payload: PutPayload = std::mem::take(&mut self.buffer).into_iter().collect();
        self.buffered = 0;
        self.in_flight
            .push_back(tokio::spawn(upload.put_part(payload)));
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
            if let Err(e) = upload.complete().await {
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
    /// `expected_size` fits in S3's part limit.
    pub(super) fn new(
        store: Arc<dyn ObjectStore>,
        location: Path,
        digest: Digest,
        expected_size: Option<u64>,
    ) -> Self {
        let part_size =
            expected_size.map_or(MIN_PART, |size| size.div_ceil(MAX_PARTS).max(MIN_PART));
        ObjectStaging {
            store,
            location,
            digest,
            part_size: usize::try_from(part_size).unwrap_or(usize::MAX),
            upload: None,
            buffer: Vec::new(),
            buffered: 0,
            in_flight: VecDeque::new(),
            done: false,
        }
    }
}
