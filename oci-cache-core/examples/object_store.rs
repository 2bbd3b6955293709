//! Any `object_store::ObjectStore` as the cache's storage: here a
//! `LocalFileSystem` in a temporary directory behind `object_store`'s
//! `LimitStore` decorator (at most 8 requests at once). GCS, Azure, S3 or
//! your own decorator plug in the same way, with no code in oci-cache.
//! `main` runs the conformance suite through `ObjectStorage::new` (a few
//! seconds), stores a blob and shows where it landed.
//!
//! ```sh
//! cargo run -p oci-cache-core --example object_store
//! ```

use std::sync::Arc;

use bytes::Bytes;
use oci_cache_core::digest::Digest;
use oci_cache_core::storage::conformance::{self, stream_of};
use oci_cache_core::storage::object_store::limit::LimitStore;
use oci_cache_core::storage::object_store::local::LocalFileSystem;
use oci_cache_core::storage::{ObjectStorage, Storage};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let local = LocalFileSystem::new_with_prefix(dir.path())?;
    let store = Arc::new(LimitStore::new(local, 8));
    let storage = ObjectStorage::new(store, "oci-cache");

    conformance::run_all(&storage).await;

    let layer = Bytes::from_static(b"a layer, verified on the way in");
    let digest = Digest::sha256_of(&layer);
    storage
        .blob_write(&digest, Some(layer.len() as u64), stream_of(layer, 8))
        .await?;
    let hex = digest.hex();
    let path = dir
        .path()
        .join("oci-cache/blobs/sha256")
        .join(&hex[..2])
        .join(hex);
    if !path.is_file() {
        return Err(format!("{} was not written", path.display()).into());
    }
    #[allow(clippy::print_stdout)]
    {
        println!("{storage}: passed the conformance suite");
        println!("{digest} stored at {}", path.display());
    }
    Ok(())
}
