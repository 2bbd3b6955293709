//! Embeds the mirror in a program: memory storage, Docker Hub and ghcr.io as
//! upstreams, served on 127.0.0.1:5000 until Ctrl-C.
//!
//! ```text
//! cargo run -p oci-cache-http --example serve_memory [ADDR [DOCKER_HUB_ORIGIN]]
//! skopeo inspect --tls-verify=false docker://127.0.0.1:5000/library/alpine:3.20
//! ```
//!
//! The optional arguments let it front a local registry instead of Docker Hub,
//! e.g. `127.0.0.1:5002 http://127.0.0.1:5001`.

use std::sync::Arc;

use oci_cache_core::mirror::{Endpoint, MirrorConfig, UpstreamConfig};
use oci_cache_core::storage::MemoryStorage;
use oci_cache_http::{serve, AccessLog, Mirror};

fn origin(url: &str) -> Endpoint {
    Endpoint::new(url)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:5000".into());
    let hub = args
        .next()
        .unwrap_or_else(|| "https://registry-1.docker.io".into());
    let mirrors = MirrorConfig {
        upstreams: vec![
            UpstreamConfig {
                name: "docker.io".parse()?,
                aliases: vec!["index.docker.io".into(), "registry-1.docker.io".into()],
                endpoints: vec![],
                origin: origin(&hub),
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
    };
    let mirror = Mirror::builder()
        .upstreams(mirrors)
        .storage(Arc::new(MemoryStorage::new()))
        .observer(Arc::new(AccessLog))
        .build()?;

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing_subscriber::fmt().init();
    tracing::info!(addr = %listener.local_addr()?, "serving the registry mirror");
    serve(listener, mirror.service(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
