//! Object-store-only behaviour: the prefix, and the media-type sidecar on a
//! store without attributes.

#![allow(clippy::unwrap_used)]

use futures::TryStreamExt;

use super::*;
use crate::storage::conformance;
use crate::storage::StoredManifest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_object_store_conforms() {
    conformance::run_all(&ObjectStorage::in_memory()).await;
}

#[tokio::test]
async fn prefix_is_applied_and_stripped() {
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let storage = ObjectStorage::new(Arc::clone(&store), "/cache/");
    assert_eq!(storage.to_string(), "object store InMemory under cache/");
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
    let blobs: Vec<BlobInfo> = storage.blob_list().try_collect().await.unwrap();
    assert_eq!(blobs.len(), 1);
    assert_eq!(blobs[0].digest, digest);
}

/// A manifest keeps its media type as the object's Content-Type where the
/// store has attributes: one object, no sidecar (the S3 layout).
#[tokio::test]
async fn media_type_is_the_content_type() {
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let storage = ObjectStorage::new(Arc::clone(&store), "");
    let bytes = Bytes::from_static(b"{\"schemaVersion\":2}");
    let manifest = StoredManifest {
        digest: Digest::sha256_of(&bytes),
        media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
        bytes,
    };
    storage.manifest_put(&manifest).await.unwrap();
    let listed: Vec<_> = store.list(None).try_collect().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let got = store.get(&listed[0].location).await.unwrap();
    assert_eq!(
        got.attributes
            .get(&Attribute::ContentType)
            .map(|v| v.as_ref().to_owned()),
        Some(manifest.media_type.clone())
    );
}
