//! Markers of multipart uploads in progress, so that a dead writer's
//! incomplete uploads can be aborted.
//!
//! S3 bills the parts of an incomplete multipart upload until it is
//! completed or aborted, and `object_store` cannot list incomplete uploads
//! (S3's `ListMultipartUploads` has no counterpart there). So a writer that
//! starts a multipart upload for a blob records it first-hand: one small
//! JSON object `leases/uploads/<algorithm>/<shard>/<hex>/<marker>` with the
//! upload id and the writer's name, rewritten every [`MARKER_REFRESH`] while
//! parts go out and deleted once the upload is completed or aborted. Then
//!
//! - a replica that takes over a dead replica's fill lease aborts that
//!   replica's uploads of the blob ([`ObjectStorage::abort_uploads_of`]);
//! - at start, a replica aborts every upload whose marker was not touched
//!   for a bound ([`ObjectStorage::abort_stale_uploads`]): a writer alone on
//!   its bucket that was killed mid-upload cleans up after itself when it
//!   comes back.
//!
//! An upload is only as visible as its marker: a writer killed between
//! `CreateMultipartUpload` and the marker's `PUT` leaves an upload nobody
//! knows of, so a bucket lifecycle rule `AbortIncompleteMultipartUpload`
//! stays the backstop.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{MultipartId, ObjectStore, ObjectStoreExt, PutPayload};
use tracing::{debug, info, warn};

use super::{failed, ObjectStorage};
use crate::digest::Digest;
use crate::storage::keys;
use crate::{ErrorChain, Result};

/// How often a writer rewrites the marker of an upload still in progress:
/// a marker older than a sweep's bound is a dead writer's, so the bound must
/// be longer than this (see [`MIN_STALE_BOUND`]).
pub(super) const MARKER_REFRESH: Duration = Duration::from_secs(10 * 60);

/// The shortest bound after which an untouched marker counts as a dead
/// writer's: three refreshes, so a live upload is never aborted.
pub const MIN_STALE_BOUND: Duration = Duration::from_secs(30 * 60);

/// What a marker holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct MarkerBody {
    /// The writer: a fleet replica's holder id, or a random name per store.
    holder: String,
    /// The multipart upload's id.
    upload_id: String,
}

/// Where an [`ObjectStorage`] records its multipart uploads: stores with the
/// low-level multipart API (S3, GCS, Azure, memory) only.
#[derive(Clone)]
pub(super) struct Tracking {
    pub(super) multipart: Arc<dyn MultipartStore>,
    /// This writer's name in the markers.
    pub(super) owner: Arc<str>,
}

impl std::fmt::Debug for Tracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracking")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// One multipart upload in progress, with its marker.
pub(super) struct MarkedUpload {
    pub(super) multipart: Arc<dyn MultipartStore>,
    store: Arc<dyn ObjectStore>,
    pub(super) location: Path,
    pub(super) id: MultipartId,
    marker: Path,
    body: Bytes,
    marked: tokio::time::Instant,
}

impl MarkedUpload {
    /// Starts an upload to `location` and records it at `marker`.
    pub(super) async fn start(
        tracking: &Tracking,
        store: Arc<dyn ObjectStore>,
        location: Path,
        marker: Path,
    ) -> object_store::Result<Self> {
        let id = tracking.multipart.create_multipart(&location).await?;
        let body = MarkerBody {
            holder: tracking.owner.to_string(),
            upload_id: id.clone(),
        };
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let upload = MarkedUpload {
            multipart: Arc::clone(&tracking.multipart),
            store,
            location,
            id,
            marker,
            body,
            marked: tokio::time::Instant::now(),
        };
        if let Err(e) = upload.mark().await {
            // Unmarked, the upload could not be cleaned up by anyone else.
            let _ = upload
                .multipart
                .abort_multipart(&upload.location, &upload.id)
                .await;
            return Err(e);
        }
        Ok(upload)
    }

    async fn mark(&self) -> object_store::Result<()> {
        let payload = PutPayload::from(self.body.clone());
        self.store.put(&self.marker, payload).await.map(|_| ())
    }

    /// Rewrites the marker when it is due, so a sweep sees a live writer.
    pub(super) async fn refresh(&mut self) {
        if self.marked.elapsed() < MARKER_REFRESH {
            return;
        }
        match self.mark().await {
            Ok(()) => self.marked = tokio::time::Instant::now(),
            Err(e) => debug!(marker = %self.marker, error = %e, "upload marker not refreshed"),
        }
    }

    /// Deletes the marker once the upload is completed or aborted.
    pub(super) async fn unmark(&self) {
        if let Err(e) = self.store.delete(&self.marker).await {
            debug!(marker = %self.marker, error = %e, "upload marker not deleted; a sweep will");
        }
    }

    /// Aborts the upload and deletes its marker.
    pub(super) async fn abort(&self) -> object_store::Result<()> {
        let aborted = self
            .multipart
            .abort_multipart(&self.location, &self.id)
            .await;
        if aborted.is_ok() {
            self.unmark().await;
        }
        aborted
    }
}

/// Which markers a cleanup aborts the uploads of.
enum Sweep<'a> {
    /// Those of one blob written by `holder`.
    Holder(&'a str),
    /// Those not touched since this time.
    Before(SystemTime),
}

impl ObjectStorage {
    /// Aborts the incomplete multipart uploads of `digest` that `holder` (a
    /// replica whose fill lease this one took over) left behind; the number
    /// aborted. Uploads of other writers, live ones included, are left alone.
    pub(crate) async fn abort_uploads_of(&self, holder: &str, digest: &Digest) -> Result<u64> {
        self.sweep(&keys::upload_markers(digest), Sweep::Holder(holder))
            .await
    }

    /// Aborts every incomplete multipart upload whose marker was not
    /// touched for `older_than` (a live writer rewrites its marker every
    /// ten minutes: use at least [`MIN_STALE_BOUND`]); the number aborted.
    /// Run at start; a store without the low-level multipart API (see
    /// [`ObjectStorage::multipart`]) has no markers and aborts nothing.
    pub async fn abort_stale_uploads(&self, older_than: Duration) -> Result<u64> {
        let before = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.sweep(keys::UPLOAD_MARKERS, Sweep::Before(before))
            .await
    }

    async fn sweep(&self, top: &str, which: Sweep<'_>) -> Result<u64> {
        let Some(tracking) = &self.tracking else {
            return Ok(0);
        };
        let markers: Vec<_> = self.list(top).try_collect().await?;
        let mut aborted = 0;
        for (key, meta) in markers {
            let Some(digest) = keys::parse_upload_marker(&key) else {
                continue;
            };
            if let Sweep::Before(before) = which {
                if SystemTime::from(meta.last_modified) > before {
                    continue;
                }
            }
            let Some((bytes, _)) = self.get_bytes(&key).await? else {
                continue;
            };
            let Ok(body) = serde_json::from_slice::<MarkerBody>(&bytes) else {
                warn!(marker = %key, "not an upload marker; deleting it");
                self.delete(&key).await?;
                continue;
            };
            if let Sweep::Holder(holder) = which {
                if body.holder != holder {
                    continue;
                }
            }
            let location = self.path(&keys::blob(&digest))?;
            match tracking
                .multipart
                .abort_multipart(&location, &body.upload_id)
                .await
            {
                Ok(()) => {
                    info!(%digest, holder = %body.holder, "aborted an incomplete multipart upload its writer left behind");
                    aborted += 1;
                }
                // Completed or aborted already: only the marker was left.
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    let e = failed(e, format!("cannot abort the upload of {digest}"));
                    warn!(%digest, error = %ErrorChain(&e), "incomplete upload not aborted; the next sweep retries");
                    continue;
                }
            }
            self.delete(&key).await?;
        }
        Ok(aborted)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::storage::{BlobSource, Storage};
    use object_store::memory::InMemory;

    /// A writer named `owner` on `bucket` that started an upload of
    /// `digest` and died (never completed nor aborted it).
    async fn left_behind(bucket: &Arc<InMemory>, owner: &str, digest: &Digest) -> MultipartId {
        let storage =
            ObjectStorage::multipart(Arc::clone(bucket), "cache").with_upload_owner(owner);
        let tracking = storage.tracking.clone().unwrap();
        let location = storage.path(&keys::blob(digest)).unwrap();
        let marker = storage.path(&keys::upload_marker(digest, owner)).unwrap();
        let upload = MarkedUpload::start(&tracking, Arc::clone(&storage.store), location, marker)
            .await
            .unwrap();
        upload.id.clone()
    }

    /// Whether `id` is still an open upload of `bucket`.
    async fn open(bucket: &InMemory, digest: &Digest, id: &MultipartId) -> bool {
        let location = Path::from(format!("cache/{}", keys::blob(digest)));
        bucket
            .put_part(&location, id, 0, PutPayload::from_static(b"x"))
            .await
            .is_ok()
    }

    fn chunked(data: &[u8]) -> BlobSource {
        use futures::StreamExt;
        let chunks: Vec<crate::Result<Bytes>> = data
            .chunks(1 << 20)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        BlobSource::Unchecked(futures::stream::iter(chunks).boxed())
    }

    async fn markers(storage: &ObjectStorage) -> usize {
        let listed: Vec<_> = storage
            .list(keys::UPLOAD_MARKERS)
            .try_collect()
            .await
            .unwrap();
        listed.len()
    }

    #[tokio::test]
    async fn a_taker_aborts_the_dead_holders_upload_of_the_blob_only() {
        let bucket = Arc::new(InMemory::new());
        let (blob, other) = (Digest::sha256_of(b"blob"), Digest::sha256_of(b"other"));
        let dead = left_behind(&bucket, "dead", &blob).await;
        let live = left_behind(&bucket, "live", &blob).await;
        let dead_other = left_behind(&bucket, "dead", &other).await;
        let taker = ObjectStorage::multipart(Arc::clone(&bucket), "cache");

        assert_eq!(taker.abort_uploads_of("dead", &blob).await.unwrap(), 1);
        assert!(
            !open(&bucket, &blob, &dead).await,
            "the dead holder's upload was aborted"
        );
        assert!(
            open(&bucket, &blob, &live).await,
            "another writer's upload is left alone"
        );
        assert!(
            open(&bucket, &other, &dead_other).await,
            "uploads of other blobs are left alone"
        );
        assert_eq!(
            markers(&taker).await,
            2,
            "the aborted upload's marker is gone"
        );
        assert_eq!(taker.abort_uploads_of("dead", &blob).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_sweep_aborts_uploads_whose_markers_are_older_than_the_bound() {
        let bucket = Arc::new(InMemory::new());
        let digest = Digest::sha256_of(b"blob");
        let id = left_behind(&bucket, "crashed", &digest).await;
        let storage = ObjectStorage::multipart(Arc::clone(&bucket), "cache");

        // Touched just now: a live writer's, for any sensible bound.
        assert_eq!(
            storage.abort_stale_uploads(MIN_STALE_BOUND).await.unwrap(),
            0
        );
        assert!(open(&bucket, &digest, &id).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            storage
                .abort_stale_uploads(Duration::from_millis(10))
                .await
                .unwrap(),
            1
        );
        assert!(!open(&bucket, &digest, &id).await);
        assert_eq!(markers(&storage).await, 0);
    }

    #[tokio::test]
    async fn a_completed_or_failed_write_leaves_no_marker_and_no_upload() {
        let bucket = Arc::new(InMemory::new());
        let storage = ObjectStorage::multipart(Arc::clone(&bucket), "cache");
        // Two full parts and a tail: a multipart upload.
        let data = vec![7u8; 11 << 20];
        let digest = Digest::sha256_of(&data);
        let source = chunked(&data);
        storage
            .blob_write_from(&digest, Some(data.len() as u64), source)
            .await
            .unwrap();
        assert_eq!(markers(&storage).await, 0);
        assert_eq!(
            storage.blob_stat(&digest).await.unwrap().unwrap().size,
            data.len() as u64
        );

        let wrong = Digest::sha256_of(b"not these bytes");
        let source = chunked(&data);
        assert!(storage.blob_write_from(&wrong, None, source).await.is_err());
        assert_eq!(markers(&storage).await, 0);
        assert_eq!(
            storage.abort_stale_uploads(Duration::ZERO).await.unwrap(),
            0
        );
    }
}
