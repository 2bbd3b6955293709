//! A storage backend written outside oci-cache-core, in one file: a toy
//! that keeps blobs and records in two maps behind a mutex. It writes only
//! the blob and record primitives; manifests, tags and the repository list
//! come from the trait, and the verified write from `write_verified`. `main`
//! runs the conformance suite against it (a few seconds), then serves a
//! manifest by tag through `Arc<dyn Storage>`.
//!
//! ```sh
//! cargo run -p oci-cache-core --example custom_storage
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use oci_cache_core::digest::Digest;
use oci_cache_core::reference::{Registry, Repository, Tag};
use oci_cache_core::storage::{
    conformance, resolve_range, write_verified, BlobInfo, BlobRead, BlobSource, Record, RecordKey,
    RecordPrefix, RecordWrite, Staging, Storage, StoredManifest, TagKey, TagRecord,
};
use oci_cache_core::{Error, Result};

/// The toy backend. A real one would talk to a database, a KV store, …
#[derive(Debug, Default)]
struct ToyStorage {
    state: Arc<Mutex<ToyState>>,
}

#[derive(Debug, Default)]
struct ToyState {
    blobs: HashMap<Digest, (Bytes, SystemTime)>,
    records: BTreeMap<RecordKey, Record>,
}

fn lock(state: &Mutex<ToyState>) -> MutexGuard<'_, ToyState> {
    // Every critical section is one map operation: a poisoned lock still
    // guards consistent maps.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl fmt::Display for ToyStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("toy storage")
    }
}

/// Where a blob's bytes wait until `write_verified` has checked the digest.
struct ToyStaging {
    state: Arc<Mutex<ToyState>>,
    digest: Digest,
    buffer: BytesMut,
}

#[async_trait]
impl Staging for ToyStaging {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.buffer.extend_from_slice(&chunk);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let bytes = self.buffer.freeze();
        lock(&self.state)
            .blobs
            .entry(self.digest)
            .or_insert_with(|| (bytes, SystemTime::now()));
        Ok(())
    }

    // Nothing was visible; dropping the buffer is all there is to undo.
    async fn abort(self: Box<Self>) {}
}

#[async_trait]
impl Storage for ToyStorage {
    async fn blob_stat(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        Ok(lock(&self.state)
            .blobs
            .get(digest)
            .map(|(bytes, at)| BlobInfo {
                digest: digest.clone(),
                size: bytes.len() as u64,
                last_access: Some(*at),
            }))
    }

    async fn blob_read(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<BlobRead> {
        let bytes = lock(&self.state)
            .blobs
            .get(digest)
            .map(|(bytes, _)| bytes.clone())
            .ok_or_else(|| Error::not_found(format!("blob {digest}")))?;
        let size = bytes.len() as u64;
        // The shared range rules: clamped end, start past the end refused.
        let range = resolve_range(size, range)?;
        let slice = bytes.slice(range.start as usize..range.end as usize);
        Ok(BlobRead {
            size,
            range,
            stream: futures::stream::iter([Ok(slice)]).boxed(),
        })
    }

    async fn blob_write_from(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        data: BlobSource,
    ) -> Result<u64> {
        let staging = ToyStaging {
            state: Arc::clone(&self.state),
            digest: digest.clone(),
            buffer: BytesMut::new(),
        };
        write_verified(digest, expected_size, data, Box::new(staging)).await
    }

    async fn blob_delete(&self, digest: &Digest) -> Result<()> {
        lock(&self.state).blobs.remove(digest);
        Ok(())
    }

    fn blob_list(&self) -> BoxStream<'_, Result<BlobInfo>> {
        let list: Vec<Result<BlobInfo>> = lock(&self.state)
            .blobs
            .iter()
            .map(|(digest, (bytes, at))| {
                Ok(BlobInfo {
                    digest: digest.clone(),
                    size: bytes.len() as u64,
                    last_access: Some(*at),
                })
            })
            .collect();
        futures::stream::iter(list).boxed()
    }

    async fn record_get(&self, key: &RecordKey) -> Result<Option<Record>> {
        Ok(lock(&self.state).records.get(key).cloned())
    }

    async fn record_put(&self, key: &RecordKey, record: Record, mode: RecordWrite) -> Result<bool> {
        let mut state = lock(&self.state);
        match mode {
            RecordWrite::Create if state.records.contains_key(key) => return Ok(false),
            RecordWrite::Create | RecordWrite::Overwrite => {}
            // A mode added later: say so instead of guessing.
            other => return Err(Error::Unsupported(format!("record write mode {other:?}"))),
        }
        state.records.insert(key.clone(), record);
        Ok(true)
    }

    async fn record_delete(&self, key: &RecordKey) -> Result<()> {
        lock(&self.state).records.remove(key);
        Ok(())
    }

    fn record_list(&self, prefix: &RecordPrefix) -> BoxStream<'_, Result<RecordKey>> {
        let keys: Vec<Result<RecordKey>> = lock(&self.state)
            .records
            .keys()
            .filter(|key| prefix.contains(key))
            .map(|key| Ok(key.clone()))
            .collect();
        futures::stream::iter(keys).boxed()
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let toy = ToyStorage::default();
    conformance::run_all(&toy).await;

    // The provided methods at work, through `Arc<dyn Storage>`.
    let storage: Arc<dyn Storage> = Arc::new(toy);
    let bytes = Bytes::from_static(br#"{"schemaVersion":2}"#);
    let manifest = StoredManifest {
        digest: Digest::sha256_of(&bytes),
        media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
        bytes,
    };
    storage.manifest_put(&manifest).await?;
    let key = TagKey {
        upstream: Registry::new("docker.io")?,
        repository: Repository::new("library/alpine")?,
        tag: Tag::new("3.20")?,
    };
    let record = TagRecord {
        digest: manifest.digest.clone(),
        media_type: manifest.media_type.clone(),
        checked_at: SystemTime::now(),
    };
    storage.tag_put(&key, &record).await?;
    let tagged = storage.tag_get(&key).await?.ok_or("tag record lost")?;
    let found = storage
        .manifest_get(&tagged.digest)
        .await?
        .ok_or("manifest lost")?;
    if found != manifest {
        return Err("manifest changed on the way".into());
    }
    #[allow(clippy::print_stdout)]
    {
        println!("{storage}: passed the conformance suite");
        println!("docker.io/library/alpine:3.20 -> {}", found.digest);
    }
    Ok(())
}
