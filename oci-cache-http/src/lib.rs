//! The HTTP side of **oci-cache**: a hyper service for the OCI pull API and
//! an upstream registry client that implements
//! [`oci_cache_core::upstream::Upstream`].
//!
//! # Serving
//!
//! [`Mirror::builder`] takes the upstream list once (validated), a storage,
//! the option types ([`CacheOptions`](oci_cache_core::cache::CacheOptions),
//! [`UpstreamOptions`]) and an [`Observer`](oci_cache_core::observe::Observer),
//! and builds the upstream client, the engine and an [`OciService`]: a
//! `Clone` hyper *and* tower service that [`serve`] runs (HTTP/1.1 and h2c,
//! graceful shutdown), that any tower stack can mount (axum's
//! `Router::nest_service`, see `examples/axum.rs`), and that tests call with
//! [`OciService::handle`]. Errors become OCI error bodies in one place,
//! [`OciError`], which an embedder's own routes can use too.
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
//! - **Hosted repositories beside the cache.** With
//!   [`MirrorBuilder::local_prefixes`], repositories under those first path
//!   components (`local/…`) take the OCI push API (upload sessions, mounts,
//!   manifest `PUT`/`DELETE`) over
//!   [`Hosted`](oci_cache_core::hosted::Hosted) and are served from storage
//!   only; writes anywhere else stay `405 UNSUPPORTED`. Request bodies are
//!   streamed into storage, never held whole.
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
//! use oci_cache_core::cache::CacheOptions;
//! use oci_cache_core::mirror::MirrorConfig;
//! use oci_cache_core::storage::MemoryStorage;
//! use oci_cache_http::{serve, AccessLog, Mirror, UpstreamOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mirror = Mirror::builder()
//!     .upstreams(MirrorConfig::common()) // docker.io, ghcr.io, quay.io, …
//!     .storage(Arc::new(MemoryStorage::new()))
//!     .cache_options(CacheOptions::default().with_tag_ttl(std::time::Duration::from_secs(60)))
//!     .upstream_options(UpstreamOptions::default().with_breaker_threshold(5))
//!     .observer(Arc::new(AccessLog))
//!     .build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! serve(listener, mirror.service(), async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```

mod admin;
pub mod body;
pub mod client_auth;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod handlers;
pub mod metrics;
mod mirror;
mod observed;
mod push;
mod routes;
mod server;
mod service;
pub mod tls_server;
pub mod upstream;
mod wire;

pub use body::Body;
pub use error::{Error, ErrorEnvelope, ErrorInfo, ErrorSubject, OciError, OciErrorCode, Result};
pub use mirror::{Mirror, MirrorBuilder};
pub use observed::AccessLog;
pub use push::HostedEngine;
pub use server::{serve, serve_with, ServerOptions};
pub use service::{Engine, OciService, ResponseFuture};
pub use upstream::{HyperUpstream, ProxyConfig, UpstreamOptions};
