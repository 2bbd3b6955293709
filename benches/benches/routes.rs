//! Routing and dispatch through the hyper service value, without a socket:
//! the version check, a manifest path with a nested repository (a hit), and
//! a path the router must refuse; each once with no observer and once with
//! the Prometheus [`Metrics`] observer installed (`…_metrics`), to show what
//! counting costs per request.

// criterion_group! generates an undocumented fn; a failed set-up should stop the bench.
#![allow(missing_docs, clippy::panic)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use oci_cache_benches::WarmCache;
use oci_cache_core::cache::PullThrough;
use oci_cache_core::observe::SharedObserver;
use oci_cache_core::storage::{MemoryStorage, Storage};
use oci_cache_http::metrics::Metrics;
use oci_cache_http::OciService;

fn bench_routes(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let warm = rt
        .block_on(WarmCache::new(storage))
        .unwrap_or_else(|e| panic!("warm cache: {e}"));
    let mirrors = warm
        .mirrors()
        .unwrap_or_else(|e| panic!("mirror config: {e}"));
    let mirrors = Arc::new(mirrors);
    let svc = OciService::new((*warm.engine).clone(), Arc::clone(&mirrors));
    let metrics = Arc::new(Metrics::new());
    let observed = PullThrough::observed(
        Arc::clone(warm.engine.storage()),
        Arc::clone(warm.engine.upstream()),
        warm.engine.options().clone(),
        Arc::clone(&metrics) as SharedObserver,
    );
    let svc_metrics = OciService::new(observed, mirrors).with_metrics(metrics);
    let paths = [
        ("version", "/v2/".to_owned(), 200),
        (
            "manifest_by_digest",
            format!("/v2/library/bench/manifests/{}", warm.digest),
            200,
        ),
        (
            "manifest_by_tag",
            "/v2/library/bench/manifests/v1".to_owned(),
            200,
        ),
        ("bad_path", "/v2/library/bench/nonsense/x".to_owned(), 404),
    ];
    let mut group = c.benchmark_group("routes");
    let cases = paths.iter().flat_map(|(name, path, want)| {
        [
            (name.to_string(), path, want, &svc),
            (format!("{name}_metrics"), path, want, &svc_metrics),
        ]
    });
    for (name, path, want, svc) in cases {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let req = Request::get(path.as_str())
                    .header("accept", "application/vnd.oci.image.manifest.v1+json")
                    .body(String::new())
                    .unwrap_or_else(|e| panic!("request: {e}"));
                let resp = svc.handle(req).await;
                assert_eq!(resp.status().as_u16(), *want, "{path}");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_routes);
criterion_main!(benches);
