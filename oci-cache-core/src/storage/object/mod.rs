//! [`ObjectStorage`]: the storage trait over any `object_store` backend
//! (S3 and S3-compatible servers with the `s3` feature; GCS, Azure, local
//! files, memory or any decorator through [`ObjectStorage::new`]).
//!
//! Verify before visible: a blob is uploaded with a multipart upload to its
//! final key, hashing as the parts go out. `CompleteMultipartUpload` — the
//! only call that makes an S3 object exist — is sent only after the digest
//! and size matched; on any failure the upload is aborted. Small blobs (less
//! than one part) are buffered, verified and sent as a single `PUT`, which S3
//! also applies atomically. So readers never see a partial or wrong object,
//! there is no second copy of the data, and no 5 GiB copy limit applies.
//! Parts are sized from the blob's size so that every blob up to S3's
//! largest object (5 TiB) fits in its 10,000 parts: 5 MiB up to ~44 GiB,
//! then size / 9,000 (583 MiB for 5 TiB); without a known size they start
//! at 5 MiB and double every 900 parts. At most two parts are in memory per
//! upload (the one being filled and the one being sent), so memory stays at
//! 10 MiB per upload for any blob under ~44 GiB.
//! A crash mid-upload leaves an *incomplete multipart upload*: invisible to
//! readers, but billed until aborted. `object_store` cannot list them, so on
//! stores with the low-level multipart API ([`ObjectStorage::multipart`],
//! which S3 gets) each upload is recorded in a marker object, and a dead
//! writer's uploads are aborted by the replica taking its fill over or by a
//! sweep at start (see [`uploads`]). A lifecycle rule
//! `AbortIncompleteMultipartUpload` (e.g. after 1 day) stays the backstop.
//!
//! A record's media type travels as the object's `Content-Type`, so a
//! manifest is one object and one atomic `PUT`. A store that refuses
//! attributes (`LocalFileSystem`) gets a `.media-type` object beside the
//! record instead, written first, as `FsStorage` does.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload,
};

use super::verified::{resolve_range, write_verified};
use super::Storage;
use super::{keys, BlobInfo, BlobRead, BlobSource, Record, RecordKey, RecordPrefix, RecordWrite};
use crate::digest::Digest;
use crate::{Error, Result};

#[cfg(feature = "s3")]
mod s3;
mod staging;
#[cfg(test)]
mod tests;
mod uploads;

#[cfg(feature = "s3")]
pub use s3::S3Config;
use staging::ObjectStaging;
use uploads::Tracking;
pub use uploads::MIN_STALE_BOUND;

const BACKEND: &str = "object";

/// Storage in an object store (optionally under a key prefix).
///
/// ```
/// use std::sync::Arc;
/// use oci_cache_core::storage::object_store::memory::InMemory;
/// use oci_cache_core::storage::ObjectStorage;
///
/// let storage = ObjectStorage::new(Arc::new(InMemory::new()), "cache");
/// assert_eq!(storage.to_string(), "object store InMemory under cache/");
/// ```
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    /// Prepended to every key, without a trailing `/`; empty for none.
    prefix: String,
    name: String,
    /// Set once the store refused object attributes: media types then go
    /// to sidecar objects, and deletes remove those too.
    sidecars: Arc<AtomicBool>,
    /// Where multipart uploads are recorded, on stores with the low-level
    /// multipart API.
    tracking: Option<Tracking>,
}

impl ObjectStorage {
    /// Storage in any object store, every key under `prefix` (`""` for none;
    /// surrounding `/` are ignored). The layout is the one described in the
    /// [storage docs](super), so a bucket written by one oci-cache is read by
    /// another with the same prefix.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        let name = format!("object store {store}");
        Self::with_store(store, prefix, name, None)
    }

    /// Storage in a store with the low-level multipart API as well (S3,
    /// GCS, Azure, memory): every multipart upload of a blob is recorded in
    /// a marker object, so that an upload its writer left behind (killed
    /// mid-fill) can be aborted by another replica or by
    /// [`abort_stale_uploads`](Self::abort_stale_uploads) at start.
    pub fn multipart<T: ObjectStore + MultipartStore>(store: Arc<T>, prefix: &str) -> Self {
        let name = format!("object store {store}");
        let multipart: Arc<dyn MultipartStore> = Arc::clone(&store) as _;
        Self::with_store(store, prefix, name, Some(multipart))
    }

    /// Names this writer `owner` in its upload markers (a fleet replica's
    /// holder id, so the replica taking its fill over finds its uploads);
    /// a random name per storage by default.
    pub fn with_upload_owner(mut self, owner: &str) -> Self {
        if let Some(tracking) = &mut self.tracking {
            tracking.owner = owner.into();
        }
        self
    }

    /// The object-store adapter over `object_store`'s in-memory store: the
    /// same code path as S3 without a server.
    pub fn in_memory() -> Self {
        Self::multipart(Arc::new(object_store::memory::InMemory::new()), "")
    }

    fn with_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        name: String,
        multipart: Option<Arc<dyn MultipartStore>>,
    ) -> Self {
        let prefix = prefix.trim_matches('/').to_owned();
        let name = if prefix.is_empty() {
            name
        } else {
            format!("{name} under {prefix}/")
        };
        ObjectStorage {
            store,
            prefix,
            name,
            sidecars: Arc::new(AtomicBool::new(false)),
            tracking: multipart.map(|multipart| Tracking {
                multipart,
                owner: uuid::Uuid::new_v4().simple().to_string().into(),
            }),
        }
    }

    /// The object store underneath: the fleet's leases are conditional
    /// writes to it, beside the cache's objects.
    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The object path of `key` (from `keys`) under the prefix.
    pub(crate) fn path(&self, key: &str) -> Result<Path> {
        let full = if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        };
        Path::parse(&full).map_err(|e| {
            Error::storage(
                BACKEND,
                format!("{full:?} is not a valid object name; check the configured prefix"),
                e,
            )
        })
    }

    /// Every object under `top` (a key), as its key without the prefix and its metadata.
    fn list(&self, top: &str) -> BoxStream<'_, Result<(String, ObjectMeta)>> {
        let prefix = match self.path(top) {
            Ok(prefix) => prefix,
            Err(e) => return futures::stream::once(async { Err(e) }).boxed(),
        };
        let what = format!("cannot list {top}");
        self.store
            .list(Some(&prefix))
            .map_err(move |e| failed(e, what.clone()))
            .try_filter_map(move |meta| async move {
                let key = key_of(&self.prefix, &meta.location).map(str::to_owned);
                Ok(key.map(|key| (key, meta)))
            })
            .boxed()
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<(Bytes, Attributes)>> {
        match self.store.get(&self.path(key)?).await {
            Ok(result) => {
                let attributes = result.attributes.clone();
                let bytes = result
                    .bytes()
                    .await
                    .map_err(|e| failed(e, format!("cannot read {key}")))?;
                Ok(Some((bytes, attributes)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed(e, format!("cannot read {key}"))),
        }
    }

    /// Puts `bytes` under `key`; `Ok(false)` when `mode` is create and something is there.
    async fn put(&self, key: &str, bytes: Bytes, options: PutOptions) -> Result<bool> {
        let payload = PutPayload::from(bytes);
        match self
            .store
            .put_opts(&self.path(key)?, payload, options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(failed(e, format!("cannot store {key}"))),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(failed(e, format!("cannot delete {key}"))),
        }
    }

    /// A record with a media type, on a store without attributes: the
    /// sidecar first, since the record's own object is what makes it visible.
    async fn put_with_sidecar(
        &self,
        key: &RecordKey,
        record: Record,
        media_type: String,
        mode: PutMode,
    ) -> Result<bool> {
        let sidecar = keys::media_type_sidecar(key.as_str()).ok_or_else(|| Error::Storage {
            backend: BACKEND,
            message: format!("record {key} cannot carry a media type in {self}"),
            source: None,
        })?;
        if mode == PutMode::Create {
            match self.store.head(&self.path(key.as_str())?).await {
                Ok(_) => return Ok(false),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(failed(e, format!("cannot stat {key}"))),
            }
        }
        self.put(&sidecar, media_type.into(), PutOptions::default())
            .await?;
        let options = PutOptions::from(mode);
        self.put(key.as_str(), record.bytes, options).await
    }
}

/// The key of an object path, without the prefix.
fn key_of<'a>(prefix: &str, location: &'a Path) -> Option<&'a str> {
    let raw: &str = location.as_ref();
    if prefix.is_empty() {
        Some(raw)
    } else {
        raw.strip_prefix(prefix)?.strip_prefix('/')
    }
}

impl fmt::Display for ObjectStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

fn failed(e: object_store::Error, doing: String) -> Error {
    Error::storage(BACKEND, doing, e)
}

#[async_trait]
impl Storage for ObjectStorage {
    async fn blob_stat(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        match self.store.head(&self.path(&keys::blob(digest))?).await {
            Ok(meta) => Ok(Some(BlobInfo {
                digest: digest.clone(),
                size: meta.size,
                last_access: Some(SystemTime::from(meta.last_modified)),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed(e, format!("cannot stat blob {digest}"))),
        }
    }

    async fn blob_read(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<BlobRead> {
        let location = self.path(&keys::blob(digest))?;
        let not_found = |e: object_store::Error| match e {
            object_store::Error::NotFound { .. } => Error::not_found(format!("blob {digest}")),
            e => failed(e, format!("cannot read blob {digest}")),
        };
        // A range is checked against the size first, so an unsatisfiable one
        // gets the same error from every backend.
        let options = match range {
            None => GetOptions::default(),
            Some(range) => {
                let size = self.store.head(&location).await.map_err(not_found)?.size;
                let range = resolve_range(size, Some(range))?;
                GetOptions {
                    range: Some(GetRange::Bounded(range)),
                    ..GetOptions::default()
                }
            }
        };
        let result = self
            .store
            .get_opts(&location, options)
            .await
            .map_err(not_found)?;
        let (size, range) = (result.meta.size, result.range.clone());
        let what = format!("cannot read blob {digest}");
        let stream = result
            .into_stream()
            .map_err(move |e| failed(e, what.clone()))
            .boxed();
        Ok(BlobRead {
            size,
            range,
            stream,
        })
    }

    async fn blob_write_from(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        data: BlobSource,
    ) -> Result<u64> {
        let location = self.path(&keys::blob(digest))?;
        let tracking = match &self.tracking {
            Some(tracking) => {
                let marker = uuid::Uuid::new_v4().simple().to_string();
                let marker = self.path(&keys::upload_marker(digest, &marker))?;
                Some((tracking.clone(), marker))
            }
            None => None,
        };
        let staging = ObjectStaging::new(
            Arc::clone(&self.store),
            location,
            digest.clone(),
            expected_size,
            tracking,
        );
        write_verified(digest, expected_size, data, Box::new(staging)).await
    }

    async fn blob_delete(&self, digest: &Digest) -> Result<()> {
        self.delete(&keys::blob(digest)).await
    }

    fn blob_list(&self) -> BoxStream<'_, Result<BlobInfo>> {
        self.list(keys::BLOBS)
            .try_filter_map(|(key, meta)| async move {
                Ok(keys::parse_blob(&key).map(|digest| BlobInfo {
                    digest,
                    size: meta.size,
                    last_access: Some(SystemTime::from(meta.last_modified)),
                }))
            })
            .boxed()
    }

    async fn record_get(&self, key: &RecordKey) -> Result<Option<Record>> {
        let Some((bytes, attributes)) = self.get_bytes(key.as_str()).await? else {
            return Ok(None);
        };
        let mut record = Record::new(bytes);
        if let Some(media_type) = attributes.get(&Attribute::ContentType) {
            return Ok(Some(record.with_media_type(media_type.as_ref())));
        }
        if let Some(sidecar) = keys::media_type_sidecar(key.as_str()) {
            if let Some((media_type, _)) = self.get_bytes(&sidecar).await? {
                self.sidecars.store(true, Ordering::Relaxed);
                let media_type = String::from_utf8(media_type.to_vec()).map_err(|e| {
                    Error::storage(
                        BACKEND,
                        format!("media type of {key} is not utf-8; delete it"),
                        e,
                    )
                })?;
                record = record.with_media_type(media_type);
            }
        }
        Ok(Some(record))
    }

    async fn record_put(&self, key: &RecordKey, record: Record, mode: RecordWrite) -> Result<bool> {
        let mode = match mode {
            RecordWrite::Overwrite => PutMode::Overwrite,
            RecordWrite::Create => PutMode::Create,
        };
        let Some(media_type) = record.media_type.clone() else {
            return self
                .put(key.as_str(), record.bytes, PutOptions::from(mode))
                .await;
        };
        if self.sidecars.load(Ordering::Relaxed) {
            return self.put_with_sidecar(key, record, media_type, mode).await;
        }
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, media_type.clone().into());
        let options = PutOptions {
            mode: mode.clone(),
            attributes,
            ..PutOptions::default()
        };
        let payload = PutPayload::from(record.bytes.clone());
        match self
            .store
            .put_opts(&self.path(key.as_str())?, payload, options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(object_store::Error::NotImplemented { .. }) => {
                tracing::debug!(storage = %self, "object store keeps no content type; using media-type sidecars");
                self.sidecars.store(true, Ordering::Relaxed);
                self.put_with_sidecar(key, record, media_type, mode).await
            }
            Err(e) => Err(failed(e, format!("cannot store {key}"))),
        }
    }

    async fn record_delete(&self, key: &RecordKey) -> Result<()> {
        self.delete(key.as_str()).await?;
        if self.sidecars.load(Ordering::Relaxed) {
            if let Some(sidecar) = keys::media_type_sidecar(key.as_str()) {
                self.delete(&sidecar).await?;
            }
        }
        Ok(())
    }

    fn record_list(&self, prefix: &RecordPrefix) -> BoxStream<'_, Result<RecordKey>> {
        self.list(prefix.as_str())
            .try_filter_map(|(key, _)| async move { Ok(RecordKey::parse(&key)) })
            .boxed()
    }
}
