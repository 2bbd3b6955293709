//! `Arc<S>` and `Box<S>` are storages: every method forwards, provided ones
//! included, so a backend's override is never bypassed by the wrapper.
//! `clippy::missing_trait_methods` is denied on these impls so a method
//! added to the trait cannot be forgotten here.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use super::{
    BlobInfo, BlobRead, BlobSource, ByteStream, Record, RecordKey, RecordPrefix, RecordWrite,
    RepositoryEntry, Storage, StoredManifest, TagKey, TagRecord,
};
use crate::digest::Digest;
use crate::reference::{Registry, Repository, Tag};
use crate::Result;

macro_rules! forward_storage {
    ($wrapper:ident) => {
        #[async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl<S: Storage + ?Sized> Storage for $wrapper<S> {
            async fn blob_stat(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
                (**self).blob_stat(digest).await
            }

            async fn blob_read(
                &self,
                digest: &Digest,
                range: Option<Range<u64>>,
            ) -> Result<BlobRead> {
                (**self).blob_read(digest, range).await
            }

            async fn blob_write_from(
                &self,
                digest: &Digest,
                expected_size: Option<u64>,
                data: BlobSource,
            ) -> Result<u64> {
                (**self).blob_write_from(digest, expected_size, data).await
            }

            async fn blob_write(
                &self,
                digest: &Digest,
                expected_size: Option<u64>,
                data: ByteStream,
            ) -> Result<u64> {
                (**self).blob_write(digest, expected_size, data).await
            }

            async fn blob_delete(&self, digest: &Digest) -> Result<()> {
                (**self).blob_delete(digest).await
            }

            fn blob_list(&self) -> BoxStream<'_, Result<BlobInfo>> {
                (**self).blob_list()
            }

            async fn record_get(&self, key: &RecordKey) -> Result<Option<Record>> {
                (**self).record_get(key).await
            }

            async fn record_put(
                &self,
                key: &RecordKey,
                record: Record,
                mode: RecordWrite,
            ) -> Result<bool> {
                (**self).record_put(key, record, mode).await
            }

            async fn record_delete(&self, key: &RecordKey) -> Result<()> {
                (**self).record_delete(key).await
            }

            fn record_list(&self, prefix: &RecordPrefix) -> BoxStream<'_, Result<RecordKey>> {
                (**self).record_list(prefix)
            }

            async fn manifest_get(&self, digest: &Digest) -> Result<Option<StoredManifest>> {
                (**self).manifest_get(digest).await
            }

            async fn manifest_put(&self, manifest: &StoredManifest) -> Result<()> {
                (**self).manifest_put(manifest).await
            }

            async fn manifest_delete(&self, digest: &Digest) -> Result<()> {
                (**self).manifest_delete(digest).await
            }

            async fn tag_get(&self, key: &TagKey) -> Result<Option<TagRecord>> {
                (**self).tag_get(key).await
            }

            async fn tag_put(&self, key: &TagKey, record: &TagRecord) -> Result<()> {
                (**self).tag_put(key, record).await
            }

            async fn tag_delete(&self, key: &TagKey) -> Result<()> {
                (**self).tag_delete(key).await
            }

            async fn tag_list(
                &self,
                upstream: &Registry,
                repository: &Repository,
            ) -> Result<Vec<Tag>> {
                (**self).tag_list(upstream, repository).await
            }

            async fn repository_list(&self) -> Result<Vec<RepositoryEntry>> {
                (**self).repository_list().await
            }

            async fn sweep_leftovers(&self) -> Result<u64> {
                (**self).sweep_leftovers().await
            }
        }
    };
}

forward_storage!(Arc);
forward_storage!(Box);
