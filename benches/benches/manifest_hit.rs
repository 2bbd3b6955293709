//! The manifest hit path of the engine: by digest and by tag (within the TTL),
//! over memory storage (the engine's own cost) and filesystem storage (what
//! `oci-cache serve` runs).

// criterion_group! generates an undocumented fn; a failed set-up should stop the bench.
#![allow(missing_docs, clippy::panic)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use oci_cache_benches::WarmCache;
use oci_cache_core::reference::ManifestRef;
use oci_cache_core::storage::{FsStorage, MemoryStorage, Storage};

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

fn bench_hits(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let fs: Arc<dyn Storage> = Arc::new(
        rt.block_on(FsStorage::open(dir.path()))
            .unwrap_or_else(|e| panic!("fs storage: {e}")),
    );
    let memory: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let accept = vec![ACCEPT.to_owned()];
    let mut group = c.benchmark_group("manifest_hit");
    for (name, storage) in [("memory", memory), ("fs", fs)] {
        let warm = rt
            .block_on(WarmCache::new(storage))
            .unwrap_or_else(|e| panic!("warm cache: {e}"));
        let by_digest = ManifestRef::Digest(warm.digest.clone());
        let by_tag = ManifestRef::Tag(warm.tag.clone());
        for (what, reference) in [("digest", &by_digest), ("tag", &by_tag)] {
            group.bench_function(format!("{name}/{what}"), |b| {
                b.to_async(&rt).iter(|| async {
                    let resp = warm
                        .engine
                        .manifest(&warm.registry, &warm.repository, reference, &accept)
                        .await
                        .unwrap_or_else(|e| panic!("hit path failed: {e}"));
                    assert_eq!(resp.digest, warm.digest);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_hits);
criterion_main!(benches);
