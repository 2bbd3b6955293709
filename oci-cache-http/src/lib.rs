//! The HTTP side of **oci-cache**: a hyper service for the OCI pull API and
//! an upstream registry client that implements
//! [`oci_cache_core::upstream::Upstream`].
//!
//! # Serving
//!
//! [`service`] turns an [`AppState`] (the cache engine plus the mirror
//! configuration) into an [`OciService`]: a `Clone` hyper service that any
//! program can mount, and that tests call directly with
//! [`OciService::handle`]. [`serve`] runs it on a listener with HTTP/1.1 and
//! h2c and graceful shutdown.
//!
//! # Design
//!
//! - **Routing is pure.** `(method, path, query)` → route, matched from the
//!   right because repository names have any number of segments. The upstream
//!   is chosen by `?ns=` (what containerd sends), else by a first path segment
//!   naming a configured upstream (`/v2/ghcr.io/org/app/…`, what podman and
//!   `override_path` setups send), else the default upstream.
//! - **No open proxy.** Only configured upstreams (and their aliases) are
//!   reachable. Any other name is answered `404 NAME_UNKNOWN` before the
//!   engine is called, so nothing is dialled. 404 rather than 403 because
//!   clients treat 404 as "try the next mirror".
//! - **Errors are OCI errors, mapped in one place** (`error.rs`). Internal
//!   causes are logged in the request span, never sent.
//! - **Upstream 401/403 become 403 `DENIED`.** A 401 would make clients try to
//!   authenticate against the mirror, which cannot help: the credentials that
//!   matter are the mirror's own, configured per upstream.
//! - **Bytes are never re-encoded.** No `Content-Encoding`, exact
//!   `Content-Length` on HEAD, manifests byte-for-byte.
//! - **The upstream client** ([`HyperUpstream`]) walks each registry's
//!   endpoint chain, does the anonymous or credentialed bearer-token dance,
//!   follows redirects to blob storage without leaking `Authorization`, and
//!   streams blobs without buffering them.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use oci_cache_core::cache::{CacheOptions, PullThrough};
//! use oci_cache_core::mirror::{Endpoint, MirrorConfig, UpstreamConfig};
//! use oci_cache_core::storage::Storage;
//! use oci_cache_core::upstream::Upstream;
//! use oci_cache_http::{service, serve, AppState, HyperUpstream, UpstreamOptions};
//!
//! # async fn run(storage: Arc<dyn Storage>) -> Result<(), Box<dyn std::error::Error>> {
//! let mirrors = Arc::new(MirrorConfig {
//!     upstreams: vec![UpstreamConfig {
//!         name: "docker.io".parse()?,
//!         aliases: vec!["index.docker.io".into(), "registry-1.docker.io".into()],
//!         endpoints: vec![],
//!         origin: Endpoint::new("https://registry-1.docker.io"),
//!         skip_fallback: false,
//!     }],
//!     default_upstream: "docker.io".parse()?,
//! });
//! let upstream: Arc<dyn Upstream> =
//!     Arc::new(HyperUpstream::new(mirrors.clone(), UpstreamOptions::default())?);
//! let engine = Arc::new(PullThrough::new(storage, upstream, CacheOptions::default()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! serve(listener, service(AppState::new(engine, mirrors)), async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```

pub mod body;
pub mod error;
mod handlers;
pub mod metrics;
mod routes;
mod server;
mod service;
pub mod upstream;
mod wire;

pub use body::Body;
pub use error::{Error, ErrorEnvelope, ErrorInfo, OciErrorCode, Result};
pub use server::serve;
pub use service::{service, AppState, Engine, OciService};
pub use upstream::{HyperUpstream, ProxyConfig, UpstreamOptions};
