//! The domain core of **oci-cache**, a pull-through cache for OCI registries.
//!
//! This crate knows nothing of HTTP servers or config files. It holds:
//!
//! - [`reference`](mod@reference): OCI image references parsed and normalised exactly as
//!   `distribution/reference` does (implicit `docker.io`, `library/`).
//! - [`digest`]: content digests and a streaming verifier.
//! - [`mirror`]: the configured upstream registries and their endpoint chains.
//! - [`storage`]: the [`Storage`](storage::Storage) trait and its memory,
//!   filesystem and object-store backends (S3, or any `object_store::ObjectStore`
//!   through [`ObjectStorage::new`](storage::ObjectStorage::new)). A new backend
//!   writes a handful of blob and record primitives; manifests and tags come
//!   with the trait, and [`write_verified`](storage::write_verified) gives it
//!   the verified, atomic blob write.
//! - [`upstream`]: the [`Upstream`](upstream::Upstream) trait the engine fetches through.
//! - [`manifest`]: the JSON shapes of image manifests and indexes.
//! - [`referrers`]: OCI 1.1 referrers and the index a referrers request gets.
//! - [`cache`]: [`PullThrough`](cache::PullThrough), the engine: local first,
//!   one upstream fetch per missing object, verify, then store.
//! - [`fleet`]: several replicas on one bucket: fill leases, and fetching an
//!   in-flight fill from the replica that holds its lease.
//!
//! # Design
//!
//! Arrows point down only: `oci-cache-http` implements [`Upstream`](upstream::Upstream)
//! over HTTP and serves the engine over hyper; this crate can be tested, and
//! embedded, with [`MemoryStorage`](storage::MemoryStorage) and an in-process
//! upstream. Everything that crosses a trust boundary is parsed once into a
//! validated type ([`Reference`](reference::Reference), [`Digest`](digest::Digest)),
//! and storage keys are derived only from those types, so a request string
//! never becomes a path. Nothing enters storage unless its bytes hash to the
//! digest it is stored under.
//!
//! # Example
//!
//! ```
//! use oci_cache_core::digest::Digest;
//! use oci_cache_core::reference::Reference;
//! use oci_cache_core::storage::{MemoryStorage, Storage};
//!
//! let reference: Reference = "alpine:3.20".parse()?;
//! assert_eq!(reference.to_string(), "docker.io/library/alpine:3.20");
//! assert_eq!(reference.familiar(), "alpine:3.20");
//!
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! let storage = MemoryStorage::new();
//! let manifest = bytes::Bytes::from_static(b"{}");
//! let digest = Digest::sha256_of(&manifest);
//! let stream = futures::stream::iter([Ok(manifest.clone())]);
//! storage.blob_write(&digest, Some(2), Box::pin(stream)).await?;
//! assert_eq!(storage.blob_stat(&digest).await?.map(|b| b.size), Some(2));
//! # Ok::<_, oci_cache_core::Error>(())
//! # })?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

pub mod bounds;
pub mod cache;
pub mod digest;
pub mod duration;
pub mod error;
pub mod evict;
mod file_io;
pub mod fleet;
pub mod health;
pub mod hosted;
pub mod manifest;
pub mod mirror;
pub mod observe;
pub mod policy;
pub mod reference;
pub mod referrers;
pub mod storage;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod unreadable;
pub mod upstream;

pub use error::{Error, ErrorChain, PushErrorKind, Result, UpstreamError, UpstreamErrorKind};
