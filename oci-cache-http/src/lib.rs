//! The HTTP side of **oci-cache**: a hyper service for the OCI pull API and
//! an upstream registry client that implements
//! [`oci_cache_core::upstream::Upstream`].
//!
//! # Serving
//!
//! [`Mirror::builder`] takes the upstream list once (validated), a storage,
//! the option types ([`CacheOptions`](oci_cache_core::cache::CacheOptions),
//! [`UpstreamOptions`]) and an [`Observer`](oci_cache_core::observe::Observer),
//! and builds the upstream client, the engine, an [`OciService`] and the
//! layers in front of it. [`Mirror::pipeline`] is the whole request path
//! that [`serve`] runs (HTTP/1.1 and h2c, graceful shutdown);
//! [`Mirror::service`] is the `Clone` hyper *and* tower service alone, which
//! any tower stack can mount (axum's `Router::nest_service`, see
//! `examples/axum.rs`) and tests call with [`OciService::handle`]. Errors
//! become OCI error bodies in one place, [`OciError`], which an embedder's
//! own routes can use too.
//!
//! # The life of a request
//!
//! The [`Pipeline`] is ordinary tower pieces, each reading what the one
//! before it put into the request's extensions:
//!
//! 1. [`serve`] inserts the client's [`PeerAddr`].
//! 2. [`RoutingLayer`] routes the request once (`(method, path, query)` →
//!    route, pure) and inserts the [`MatchedRoute`], as axum's
//!    `MatchedPath`; nothing after it parses the path again.
//! 3. [`ClientAuthLayer`](client_auth::ClientAuthLayer), when
//!    [`MirrorBuilder::client_auth`] configured it, admits or refuses by the
//!    matched route and inserts the [`ClientIdentity`](client_auth::ClientIdentity)
//!    a client proved; it wraps any tower service.
//! 4. [`OciService`] opens the request span, answers with the handler of the
//!    route's family (pull, push, probes, admin), adds the headers every
//!    answer carries, and reports the request when its body ends. Mounted
//!    bare, it routes a request that carries no [`MatchedRoute`] itself.
//!
//! # Design
//!
//! - **Routing is pure and done once.** `(method, path, query)` → route, matched from the
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
//! serve(listener, mirror.pipeline(), async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```

pub mod acme;
pub mod body;
pub mod client_auth;
pub mod error;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
mod handlers;
mod listening;
pub mod metrics;
mod mirror;
mod observed;
mod peer;
mod pem;
mod pipeline;
mod response;
mod routes;
mod routing;
mod server;
mod service;
mod status;
pub mod tls_server;
pub mod upstream;
mod wire;

pub use body::Body;
pub use error::{Error, ErrorEnvelope, ErrorInfo, ErrorSubject, OciError, OciErrorCode, Result};
pub use handlers::client_config::{ClientConfigRefusal, ClientConfigRenderer, ClientConfigRequest};
pub use handlers::{Engine, HostedEngine};
pub use listening::{ListenerUpstream, Listening};
pub use mirror::{Mirror, MirrorBuilder};
pub use observed::AccessLog;
pub use peer::PeerAddr;
pub use pipeline::{Pipeline, ReloadablePipeline};
pub use routing::{MatchedRoute, Routing, RoutingLayer};
pub use server::{serve, serve_all, serve_with, ServerOptions};
pub use service::{OciService, ResponseFuture};
pub use status::StatusBoard;
pub use upstream::{HyperUpstream, ProxyConfig, UpstreamBudget, UpstreamOptions};
