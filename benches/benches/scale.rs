//! Bounded-disk scale figures (issue 13): a filesystem store with 10k and
//! 100k small synthetic blobs in 1k and 10k repositories (one tagged image of
//! ten blobs each). Measures, for each size: start-up (open, and the one
//! listing that makes the stored size known), one eviction pass (10 % over
//! the cap, pins on 1 % of the repositories), `_catalog`, and a manifest hit
//! by tag (warm: in the hot cache; cold: tag record and manifest read from
//! disk). A plain timed run, not criterion: building 100k files takes
//! longer than any one measurement. Run: `cargo bench -p oci-cache-benches
//! --bench scale` (`SCALE_SIZES=10000` for the small size only).

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use oci_cache_core::cache::{CacheOptions, PullThrough};
use oci_cache_core::digest::Digest;
use oci_cache_core::evict::{DiskBudget, Evictor};
use oci_cache_core::observe;
use oci_cache_core::reference::{ManifestRef, Registry, Repository, Tag};
use oci_cache_core::storage::{FsOptions, FsStorage, Storage, StoredManifest, TagKey, TagRecord};
use oci_cache_core::testing::FakeUpstream;

const BLOBS_PER_IMAGE: usize = 10;
const BLOB_SIZE: usize = 512;
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn blob(i: usize) -> Bytes {
    let mut bytes = format!("blob {i} ").into_bytes();
    bytes.resize(BLOB_SIZE, (i % 251) as u8);
    Bytes::from(bytes)
}

fn repository(r: usize) -> Repository {
    let name = if r % 100 == 0 {
        format!("pinned{r}/app")
    } else {
        format!("team{}/app{r}", r % 50)
    };
    Repository::new(&name).unwrap()
}

async fn populate(storage: &FsStorage, repos: usize) -> (Vec<Digest>, u64) {
    let hub = Registry::new("docker.io").unwrap();
    let images = futures::stream::iter(0..repos)
        .map(|r| {
            let hub = hub.clone();
            async move {
                let mut descriptors = Vec::new();
                for b in 0..BLOBS_PER_IMAGE {
                    let bytes = blob(r * BLOBS_PER_IMAGE + b);
                    let digest = Digest::sha256_of(&bytes);
                    storage
                        .blob_write(
                            &digest,
                            Some(bytes.len() as u64),
                            futures::stream::iter([Ok(bytes)]).boxed(),
                        )
                        .await
                        .unwrap();
                    descriptors.push(format!(
                        r#"{{"mediaType":"application/octet-stream","size":{BLOB_SIZE},"digest":"{digest}"}}"#
                    ));
                }
                let (config, layers) = descriptors.split_first().unwrap();
                let json = format!(
                    r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{config},"layers":[{}]}}"#,
                    layers.join(",")
                );
                let manifest = StoredManifest {
                    digest: Digest::sha256_of(json.as_bytes()),
                    media_type: MANIFEST.to_owned(),
                    bytes: Bytes::from(json),
                };
                storage.manifest_put(&manifest).await.unwrap();
                let key = TagKey {
                    upstream: hub,
                    repository: repository(r),
                    tag: Tag::new("v1").unwrap(),
                };
                let record = TagRecord {
                    digest: manifest.digest.clone(),
                    media_type: MANIFEST.to_owned(),
                    checked_at: SystemTime::now(),
                };
                storage.tag_put(&key, &record).await.unwrap();
                manifest.digest
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    (images, (repos * BLOBS_PER_IMAGE * BLOB_SIZE) as u64)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

async fn run(blobs: usize) {
    let repos = blobs / BLOBS_PER_IMAGE;
    // On the build's disk (target/tmp), not a /tmp that may be RAM;
    // SCALE_DIR picks another filesystem to measure.
    let root = std::env::var_os("SCALE_DIR").unwrap_or_else(|| env!("CARGO_TARGET_TMPDIR").into());
    let dir = tempfile::tempdir_in(root).unwrap();
    let fast = FsOptions::default().with_durable(false);
    let started = Instant::now();
    let (_, bytes) = populate(
        &FsStorage::open_with(dir.path(), fast).await.unwrap(),
        repos,
    )
    .await;
    println!(
        "\n{blobs} blobs ({} MiB), {repos} repositories: built in {:.1} s",
        bytes >> 20,
        started.elapsed().as_secs_f64()
    );

    // Start-up: open, then the one listing that makes the size known.
    let t = Instant::now();
    let storage = Arc::new(FsStorage::open(dir.path()).await.unwrap());
    let open = t.elapsed();
    let budget = Arc::new(DiskBudget::new(None));
    let t = Instant::now();
    let counted = Evictor::new(
        Arc::clone(&storage),
        Arc::clone(&budget),
        vec![],
        observe::noop(),
    )
    .pass()
    .await
    .unwrap();
    let walk = t.elapsed();
    assert_eq!(counted.stored_bytes, bytes);
    println!(
        "  start-up: open {}, size known after {} (one listing of {} blobs)",
        ms(open),
        ms(walk),
        counted.stored_blobs
    );

    // _catalog.
    let upstream = Arc::new(FakeUpstream::new());
    let engine = PullThrough::new(Arc::clone(&storage), upstream, CacheOptions::default());
    // The first request lists the tag records once; later ones read the
    // in-memory index.
    let t = Instant::now();
    let all = engine.catalog(None, None).await.unwrap();
    let first = t.elapsed();
    assert_eq!(all.len(), repos);
    let (mut whole, mut page) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(engine.catalog(None, None).await.unwrap().len(), repos);
        whole = whole.min(t.elapsed());
        let t = Instant::now();
        let names = engine
            .catalog(Some(&all[repos / 2]), Some(100))
            .await
            .unwrap();
        page = page.min(t.elapsed());
        assert_eq!(names.len(), 100.min(repos - repos / 2 - 1));
    }
    println!(
        "  _catalog ({repos} repositories): first request (one listing) {}, then the whole list {}, a page of 100 {}",
        ms(first),
        us(whole),
        us(page)
    );

    // Manifest hits by tag: cold (records from disk), then warm (hot cache).
    let hub = Registry::new("docker.io").unwrap();
    let tag = ManifestRef::Tag(Tag::new("v1").unwrap());
    let sample: Vec<usize> = (0..500).map(|i| (i * 7919) % repos).collect();
    let t = Instant::now();
    for &r in &sample {
        engine
            .manifest(&hub, &repository(r), &tag, &[])
            .await
            .unwrap();
    }
    let cold = t.elapsed() / sample.len() as u32;
    let t = Instant::now();
    for _ in 0..4 {
        for &r in &sample {
            engine
                .manifest(&hub, &repository(r), &tag, &[])
                .await
                .unwrap();
        }
    }
    let warm = t.elapsed() / (4 * sample.len()) as u32;
    println!(
        "  manifest by tag: first hit {}, warm hit {}",
        us(cold),
        us(warm)
    );

    // One eviction pass: cap 10 % under what is stored, 1 % of repositories pinned.
    let cap = bytes / 10 * 9;
    let budget = Arc::new(DiskBudget::new(Some(cap)));
    let evictor = Evictor::new(
        Arc::clone(&storage),
        budget,
        vec!["docker.io/pinned*".parse().unwrap()],
        observe::noop(),
    );
    let t = Instant::now();
    let report = evictor.pass().await.unwrap();
    let pass = t.elapsed();
    println!(
        "  eviction pass (cap {} MiB): {} — evicted {} blobs ({} KiB), {} KiB pinned",
        cap >> 20,
        ms(pass),
        report.evicted_blobs,
        report.evicted_bytes >> 10,
        report.protected_bytes >> 10
    );
    let t = Instant::now();
    let idle = evictor.pass().await.unwrap();
    println!(
        "  a pass under the cap (listing only): {} ({} blobs)",
        ms(t.elapsed()),
        idle.stored_blobs
    );
}

fn main() {
    let sizes: Vec<usize> = std::env::var("SCALE_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then only
    // check that it runs, at a tiny size.
    let sizes = if std::env::args().any(|a| a == "--bench") {
        sizes
    } else {
        vec![1_000]
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for blobs in sizes {
        rt.block_on(run(blobs));
    }
}
