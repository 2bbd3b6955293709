//! A manifest hit through the whole request pipeline as `oci-cache serve`
//! assembles it ([`Mirror::pipeline`]: routing, the service, the status
//! board, the observed body drained to its end), with the per-request
//! features off (`bare`: no observer, no metrics, no subscriber) and on
//! (`full`: the access log through a `fmt` subscriber at `info` writing to
//! a sink, and the Prometheus metrics), by tag and by digest.
//!
//! What the features cost per request is the difference between the two.

// criterion_group! generates an undocumented fn; a failed set-up should stop the bench.
#![allow(missing_docs, clippy::panic)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use http_body_util::BodyExt;
use oci_cache_benches::WarmCache;
use oci_cache_core::cache::CacheOptions;
use oci_cache_http::metrics::Metrics;
use oci_cache_http::{AccessLog, Mirror, Pipeline};

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

fn pipeline(warm: &WarmCache, full: bool) -> Pipeline {
    let mirrors = warm
        .mirrors()
        .unwrap_or_else(|e| panic!("mirror config: {e}"));
    let mut builder = Mirror::builder()
        .upstreams(mirrors)
        .storage(Arc::clone(warm.engine.storage()))
        .upstream(Arc::clone(warm.engine.upstream()))
        .cache_options(
            CacheOptions::default().with_tag_ttl(std::time::Duration::from_secs(86_400)),
        );
    if full {
        builder = builder
            .observer(Arc::new(AccessLog))
            .metrics(Arc::new(Metrics::new()));
    }
    builder
        .build()
        .unwrap_or_else(|e| panic!("mirror: {e}"))
        .pipeline()
}

fn bench_pipeline(c: &mut Criterion) {
    // One thread: the subscriber of the `full` runs is the thread's default.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    let storage = Arc::new(oci_cache_core::storage::MemoryStorage::new());
    let warm = rt
        .block_on(WarmCache::new(storage))
        .unwrap_or_else(|e| panic!("warm cache: {e}"));
    let paths = [
        ("tag", "/v2/library/bench/manifests/v1".to_owned()),
        (
            "digest",
            format!("/v2/library/bench/manifests/{}", warm.digest),
        ),
    ];
    let mut group = c.benchmark_group("pipeline_manifest_hit");
    for (features, full) in [("bare", false), ("full", true)] {
        let pipeline = pipeline(&warm, full);
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(if full { "info" } else { "off" })
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for (by, path) in &paths {
                group.bench_function(format!("{features}/{by}"), |b| {
                    b.iter(|| {
                        rt.block_on(async {
                            let req = Request::get(path.as_str())
                                .header("accept", ACCEPT)
                                .body(String::new())
                                .unwrap_or_else(|e| panic!("request: {e}"));
                            let resp = pipeline.handle(req).await;
                            assert_eq!(resp.status().as_u16(), 200, "{path}");
                            let body = resp
                                .into_body()
                                .collect()
                                .await
                                .unwrap_or_else(|e| panic!("body: {e}"));
                            assert!(!body.to_bytes().is_empty());
                        })
                    })
                });
            }
        });
    }
    group.finish();
}

criterion_group!(benches, bench_pipeline);
criterion_main!(benches);
