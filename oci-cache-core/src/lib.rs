//! The domain core of **oci-cache**, a pull-through cache for OCI registries.
//!
//! This crate knows nothing of HTTP servers. It holds:
//!
//! - [`reference`]: OCI image references parsed and normalised exactly as
//!   `distribution/reference` does (implicit `docker.io`, `library/`).
//! - [`digest`]: content digests and a streaming verifier.
//! - [`storage`]: the [`Storage`](storage::Storage) trait and its backends.
//! - [`upstream`]: the [`Upstream`](upstream::Upstream) trait the engine fetches through.
//!
//! ```
//! use oci_cache_core::digest::Digest;
//!
//! let digest = Digest::sha256_of(b"");
//! assert_eq!(
//!     digest.to_string(),
//!     "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
//! );
//! ```

pub mod cache;
pub mod digest;
pub mod error;
pub mod mirror;
pub mod reference;
pub mod storage;
pub mod upstream;

pub use error::{Error, Result, UpstreamError, UpstreamErrorKind};
