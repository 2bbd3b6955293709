//! The mirror mounted in an axum application, beside routes of the app's own.
//!
//! ```text
//! cargo run -p oci-cache-http --example axum [ADDR]
//! curl http://127.0.0.1:3000/app/hello
//! curl http://127.0.0.1:3000/mirror/v2/library/alpine/tags/list   # the mirror under a prefix
//! skopeo inspect --tls-verify=false docker://127.0.0.1:3000/library/alpine:3   # at the root
//! ```
//!
//! `nest_service` strips its prefix before the mirror sees the request, so
//! the mirror routes `/mirror/v2/…` exactly like `/v2/…`. Registry clients
//! only speak `/v2/` at the root, hence the fallback too.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use http::StatusCode;
use oci_cache_core::mirror::MirrorConfig;
use oci_cache_core::storage::MemoryStorage;
use oci_cache_http::{AccessLog, Mirror, OciError, OciErrorCode};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let mirror = Mirror::builder()
        .upstreams(MirrorConfig::common())
        .storage(Arc::new(MemoryStorage::new()))
        .observer(Arc::new(AccessLog))
        .build()?;

    let app = Router::new()
        .route("/app/hello", get(|| async { "hello from the app\n" }))
        // The app's own route answering an OCI error body, as the mirror would.
        .route(
            "/app/v2/private",
            get(|| async {
                OciError::new(
                    StatusCode::FORBIDDEN,
                    OciErrorCode::Denied,
                    "this app keeps its own images private",
                )
                // An `http::Response`, which axum serves as it is.
                .into_response()
            }),
        )
        .nest_service("/mirror", mirror.service())
        .fallback_service(mirror.service());

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving the app with the mirror mounted");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
