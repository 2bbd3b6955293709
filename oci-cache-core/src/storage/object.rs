//! [`ObjectStorage`]: the storage trait over an `object_store` backend
//! (S3 and S3-compatible servers with the `s3` feature).
//!
//! Verify before visible: a blob is uploaded with a multipart upload to its
//! final key, hashing as the parts go out. `CompleteMultipartUpload` — the
//! only call that makes an S3 object exist — is sent only after the digest
//! and size matched; on any failure the upload is aborted. Small blobs (less
//! than one part) are buffered, verified and sent as a single `PUT`, which S3
//! also applies atomically. So readers never see a partial or wrong object,
//! there is no second copy of the data, and no 5 GiB copy limit applies.
//! A crash mid-upload leaves an *incomplete multipart upload*: invisible to
//! readers, but billed until aborted; give the bucket a lifecycle rule
//! `AbortIncompleteMultipartUpload` (e.g. after 1 day) to reclaim them,
//! since `object_store` cannot list them for a cleanup at open.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, MultipartUpload, ObjectStore, ObjectStoreExt,
    PutOptions, PutPayload,
};
use tokio::task::JoinHandle;

use super::verified::{resolve_range, verify_bytes, write_verified, Staging};
use super::{
    keys, BlobInfo, BlobRead, BlobSource, RepositoryEntry, Storage, StoredManifest, TagKey,
    TagRecord,
};
use crate::digest::Digest;
use crate::reference::{Registry, Repository, Tag};
use crate::{Error, Result};

const BACKEND: &str = "object";
/// The smallest part S3 accepts (except the last).
const MIN_PART: u64 = 5 * 1024 * 1024;
/// S3 allows 10 000 parts; stay below so a blob of known size always fits.
const MAX_PARTS: u64 = 9_000;
/// Parts uploading at once while the next one is hashed and buffered; with
/// the part being filled this bounds memory to three parts per write.
const PARTS_IN_FLIGHT: usize = 2;

/// Storage in an object store bucket (optionally under a key prefix).
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    /// Prepended to every key, without a trailing `/`; empty for none.
    prefix: String,
    name: String,
}

/// Where and how to reach an S3 or S3-compatible bucket.
///
/// Fields left `None` fall back to the usual AWS environment variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT`), and then to the
/// instance or web-identity credentials `object_store` discovers.
#[cfg(feature = "s3")]
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// The bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket, e.g. `oci-cache`; none by default.
    pub prefix: Option<String>,
    /// Endpoint URL for S3-compatible servers, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// The region, e.g. `us-east-1`.
    pub region: Option<String>,
    /// Address the bucket as `endpoint/bucket` instead of `bucket.endpoint`;
    /// most S3-compatible servers need this.
    pub path_style: bool,
    /// Access key ID.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials.
    pub session_token: Option<String>,
}

#[cfg(feature = "s3")]
impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .finish()
    }
}

impl ObjectStorage {
    /// Storage in an S3 or S3-compatible bucket.
    ///
    /// Builds the client only; the first request shows whether the bucket
    /// and credentials work.
    #[cfg(feature = "s3")]
    pub fn s3(config: &S3Config) -> Result<Self> {
        use object_store::aws::AmazonS3Builder;

        if config.bucket.is_empty() {
            return Err(Error::Config(
                "the s3 storage needs a bucket name; set storage.s3.bucket".to_owned(),
            ));
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_virtual_hosted_style_request(!config.path_style);
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &config.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = &config.session_token {
            builder = builder.with_token(token);
        }
        let store = builder.build().map_err(|e| {
            Error::Config(format!(
                "cannot set up s3 bucket {:?}: {e}; check the endpoint, region and credentials",
                config.bucket
            ))
        })?;
        let name = match &config.endpoint {
            Some(endpoint) => format!("s3 bucket {} at {endpoint}", config.bucket),
            None => format!("s3 bucket {}", config.bucket),
        };
        Ok(Self::with_store(
            Arc::new(store),
            config.prefix.as_deref().unwrap_or_default(),
            name,
        ))
    }

    /// The object-store adapter over `object_store`'s in-memory store: the
    /// same code path as S3 without a server, for tests.
    pub fn in_memory() -> Self {
        Self::with_store(
            Arc::new(object_store::memory::InMemory::new()),
            "",
            "in-memory object store".to_owned(),
        )
    }

    fn with_store(store: Arc<dyn ObjectStore>, prefix: &str, name: String) -> Self {
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
        }
    }

    /// The object path of `key` (from [`keys`]) under the prefix.
    fn path(&self, key: &str) -> Result<Path> {
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

    /// The key of an object path, without the prefix.
    fn key_of<'a>(&self, location: &'a Path) -> Option<&'a str> {
        let raw: &str = location.as_ref();
        if self.prefix.is_empty() {
            Some(raw)
        } else {
            raw.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }

    /// Every object under `top` (a key), as (key, size, last modified).
    async fn list(&self, top: &str) -> Result<Vec<(String, u64, SystemTime)>> {
        let prefix = self.path(top)?;
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| failed(e, format!("cannot list {top}")))?;
        Ok(objects
            .into_iter()
            .filter_map(|meta| {
                let key = self.key_of(&meta.location)?.to_owned();
                Some((key, meta.size, SystemTime::from(meta.last_modified)))
            })
            .collect())
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

    async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(failed(e, format!("cannot delete {key}"))),
        }
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

/// An in-progress blob upload; see the [module docs](self) for why it is safe.
struct ObjectStaging {
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
        let part_size =
            expected_size.map_or(MIN_PART, |size| size.div_ceil(MAX_PARTS).max(MIN_PART));
        let staging = ObjectStaging {
            store: Arc::clone(&self.store),
            location: self.path(&keys::blob(digest))?,
            digest: digest.clone(),
            part_size: usize::try_from(part_size).unwrap_or(usize::MAX),
            upload: None,
            buffer: Vec::new(),
            buffered: 0,
            in_flight: VecDeque::new(),
            done: false,
        };
        write_verified(digest, expected_size, data, Box::new(staging)).await
    }

    async fn blob_delete(&self, digest: &Digest) -> Result<()> {
        self.delete(&keys::blob(digest)).await
    }

    async fn blob_list(&self) -> Result<Vec<BlobInfo>> {
        let mut list: Vec<BlobInfo> = self
            .list(keys::BLOBS)
            .await?
            .into_iter()
            .filter_map(|(key, size, modified)| {
                Some(BlobInfo {
                    digest: keys::parse_blob(&key)?,
                    size,
                    last_access: Some(modified),
                })
            })
            .collect();
        list.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(list)
    }

    async fn manifest_get(&self, digest: &Digest) -> Result<Option<StoredManifest>> {
        let Some((bytes, attributes)) = self.get_bytes(&keys::manifest(digest)).await? else {
            return Ok(None);
        };
        let media_type = attributes
            .get(&Attribute::ContentType)
            .map(|value| value.as_ref().to_owned())
            .ok_or_else(|| Error::Storage {
                backend: BACKEND,
                message: format!("manifest {digest} was stored without a media type; delete it"),
                source: None,
            })?;
        Ok(Some(StoredManifest {
            digest: digest.clone(),
            media_type,
            bytes,
        }))
    }

    async fn manifest_put(&self, manifest: &StoredManifest) -> Result<()> {
        verify_bytes(&manifest.digest, &manifest.bytes)?;
        // The media type travels as the object's Content-Type, so the
        // manifest is one object and one atomic PUT.
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, manifest.media_type.clone().into());
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.store
            .put_opts(
                &self.path(&keys::manifest(&manifest.digest))?,
                manifest.bytes.clone().into(),
                options,
            )
            .await
            .map_err(|e| failed(e, format!("cannot store manifest {}", manifest.digest)))?;
        Ok(())
    }

    async fn manifest_delete(&self, digest: &Digest) -> Result<()> {
        self.delete(&keys::manifest(digest)).await
    }

    async fn tag_get(&self, key: &TagKey) -> Result<Option<TagRecord>> {
        let object = keys::tag(key);
        let Some((bytes, _)) = self.get_bytes(&object).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::storage(
                BACKEND,
                format!("tag record {object} is corrupt; delete it"),
                e,
            )
        })
    }

    async fn tag_put(&self, key: &TagKey, record: &TagRecord) -> Result<()> {
        let object = keys::tag(key);
        let json = serde_json::to_vec(record)
            .map_err(|e| Error::storage(BACKEND, "cannot encode tag record", e))?;
        self.store
            .put(&self.path(&object)?, json.into())
            .await
            .map_err(|e| failed(e, format!("cannot store {object}")))?;
        Ok(())
    }

    async fn tag_delete(&self, key: &TagKey) -> Result<()> {
        self.delete(&keys::tag(key)).await
    }

    async fn tag_list(&self, upstream: &Registry, repository: &Repository) -> Result<Vec<Tag>> {
        let dir = keys::tag_dir(upstream, repository);
        let listing = self
            .store
            .list_with_delimiter(Some(&self.path(&dir)?))
            .await
            .map_err(|e| failed(e, format!("cannot list {dir}")))?;
        let mut tags: Vec<Tag> = listing
            .objects
            .iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?;
                Tag::new(&keys::unsegment(name)?).ok()
            })
            .collect();
        tags.sort();
        Ok(tags)
    }

    async fn repository_list(&self) -> Result<Vec<RepositoryEntry>> {
        let listed = self.list(keys::TAGS).await?;
        Ok(keys::repositories_of_tag_keys(
            listed.iter().map(|(key, _, _)| key.as_str()),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::conformance;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_memory_object_store_conforms() {
        conformance::run_all(&ObjectStorage::in_memory()).await;
    }

    #[tokio::test]
    async fn prefix_is_applied_and_stripped() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let storage = ObjectStorage::with_store(Arc::clone(&store), "/cache/", "test".into());
        let bytes = Bytes::from_static(b"abc");
        let digest = Digest::sha256_of(&bytes);
        storage
            .blob_write(&digest, None, conformance::stream_of(bytes, 1))
            .await
            .unwrap();
        let listed: Vec<_> = store.list(None).try_collect().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0]
            .location
            .as_ref()
            .starts_with("cache/blobs/sha256/"));
        assert_eq!(storage.blob_list().await.unwrap()[0].digest, digest);
    }
}
