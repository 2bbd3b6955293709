//! Embeds the mirror in a program: memory storage, Docker Hub and ghcr.io as
//! upstreams, served on 127.0.0.1:5000 until Ctrl-C.
//!
//! ```text
//! cargo run -p oci-cache-http --example serve_memory
//! skopeo inspect --tls-verify=false docker://127.0.0.1:5000/library/alpine:3.20
//! ```

use std::sync::Arc;

use oci_cache_core::cache::{CacheOptions, PullThrough};
use oci_cache_core::mirror::{Endpoint, MirrorConfig, UpstreamConfig};
use oci_cache_core::storage::{MemoryStorage, Storage};
use oci_cache_core::upstream::Upstream;
use oci_cache_http::{serve, service, AppState, HyperUpstream, UpstreamOptions};

fn origin(url: &str) -> Endpoint {
    Endpoint {
        url: url.into(),
        override_path: false,
        credentials: None,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mirrors = Arc::new(MirrorConfig {
        upstreams: vec![
            UpstreamConfig {
                name: "docker.io".parse()?,
                aliases: vec!["index.docker.io".into(), "registry-1.docker.io".into()],
                endpoints: vec![],
                origin: origin("https://registry-1.docker.io"),
                skip_fallback: false,
            },
            UpstreamConfig {
                name: "ghcr.io".parse()?,
                aliases: vec![],
                endpoints: vec![],
                origin: origin("https://ghcr.io"),
                skip_fallback: false,
            },
        ],
        default_upstream: "docker.io".parse()?,
    });
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let upstream: Arc<dyn Upstream> = Arc::new(HyperUpstream::new(
        mirrors.clone(),
        UpstreamOptions::default(),
    )?);
    let engine = Arc::new(PullThrough::new(storage, upstream, CacheOptions::default()));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
    tracing::info!(addr = %listener.local_addr()?, "serving the registry mirror");
    serve(listener, service(AppState::new(engine, mirrors)), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
