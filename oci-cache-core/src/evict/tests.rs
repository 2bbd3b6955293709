//! The policy against [`MemoryStorage`]: LRU order, watermark, pins, roots,
//! guards, the access index, purge; and the engine reporting to its budget.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::*;
use crate::cache::{CacheOptions, PullThrough};
use crate::manifest::media_type::{DOCKER_MANIFEST, OCI_INDEX};
use crate::observe::{self, EvictionEvent, Observer};
use crate::reference::{Reference, Registry, Repository, Tag};
use crate::storage::{MemoryStorage, RecordKey, Storage, StoredManifest, TagKey, TagRecord};
use crate::testing::{BlobScript, FakeUpstream};

fn blob_bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

async fn put_blob(storage: &MemoryStorage, seed: u8, len: usize) -> Digest {
    let bytes = blob_bytes(seed, len);
    let digest = Digest::sha256_of(&bytes);
    storage
        .blob_write(
            &digest,
            Some(len as u64),
            futures::stream::iter([Ok(Bytes::from(bytes))]).boxed(),
        )
        .await
        .unwrap();
    digest
}

async fn present(storage: &MemoryStorage, digest: &Digest) -> bool {
    storage.blob_stat(digest).await.unwrap().is_some()
}

/// Stores an image manifest naming `blobs` and tags it `upstream/repository:tag`.
async fn put_image(storage: &MemoryStorage, reference: &str, blobs: &[Digest]) -> Digest {
    let manifest = image_manifest(blobs);
    let digest = put_manifest(storage, DOCKER_MANIFEST, manifest).await;
    tag_it(storage, reference, &digest, DOCKER_MANIFEST).await;
    digest
}

fn image_manifest(blobs: &[Digest]) -> String {
    let (config, layers) = blobs.split_first().unwrap();
    let desc = |d: &Digest| {
        format!(r#"{{"mediaType":"application/octet-stream","size":1,"digest":"{d}"}}"#)
    };
    let layers: Vec<String> = layers.iter().map(desc).collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{},"layers":[{}]}}"#,
        desc(config),
        layers.join(",")
    )
}

async fn put_manifest(storage: &MemoryStorage, media_type: &str, json: String) -> Digest {
    let digest = Digest::sha256_of(json.as_bytes());
    storage
        .manifest_put(&StoredManifest {
            digest: digest.clone(),
            media_type: media_type.to_owned(),
            bytes: Bytes::from(json),
        })
        .await
        .unwrap();
    digest
}

async fn tag_it(storage: &MemoryStorage, reference: &str, digest: &Digest, media_type: &str) {
    let reference = Reference::parse(reference).unwrap();
    let key = TagKey {
        upstream: reference.registry().clone(),
        repository: reference.repository().clone(),
        tag: reference.tag().unwrap().clone(),
    };
    let record = TagRecord {
        digest: digest.clone(),
        media_type: media_type.to_owned(),
        checked_at: SystemTime::now(),
    };
    storage.tag_put(&key, &record).await.unwrap();
}

fn evictor(
    storage: &Arc<MemoryStorage>,
    budget: &Arc<DiskBudget>,
    pins: &[&str],
) -> Evictor<MemoryStorage> {
    let pins = pins.iter().map(|p| p.parse().unwrap()).collect();
    Evictor::new(
        Arc::clone(storage),
        Arc::clone(budget),
        pins,
        observe::noop(),
    )
}

/// Ten 100-byte blobs, written newest-first so the backend's own times
/// disagree with the uses the budget then records oldest-first.
async fn ten_blobs(storage: &MemoryStorage, budget: &DiskBudget) -> Vec<Digest> {
    let mut blobs = Vec::new();
    for seed in (0..10u8).rev() {
        blobs.push(put_blob(storage, seed, 100).await);
    }
    blobs.reverse();
    tokio::time::sleep(Duration::from_millis(5)).await;
    for digest in &blobs {
        budget.used(digest);
        std::thread::sleep(Duration::from_millis(2));
    }
    blobs
}

#[tokio::test]
async fn a_pass_evicts_the_least_recently_used_down_to_the_low_watermark() {
    let storage = Arc::new(MemoryStorage::new());
    let budget = Arc::new(DiskBudget::new(Some(500)));
    assert_eq!(budget.low_watermark(), Some(450));
    let blobs = ten_blobs(&storage, &budget).await;
    let report = evictor(&storage, &budget, &[]).pass().await.unwrap();
    assert_eq!(report.stored_bytes, 1000);
    // 1000 → at most 450: six go, the six used longest ago.
    assert_eq!((report.evicted_blobs, report.evicted_bytes), (6, 600));
    for (i, digest) in blobs.iter().enumerate() {
        assert_eq!(present(&storage, digest).await, i >= 6, "blob {i}");
    }
    assert_eq!(budget.stored(), 400);
    assert!(!budget.over_cap());
    // Under the cap, a pass deletes nothing.
    let again = evictor(&storage, &budget, &[]).pass().await.unwrap();
    assert_eq!((again.evicted_blobs, again.stored_bytes), (0, 400));
}

#[tokio::test]
async fn without_a_cap_a_pass_only_counts() {
    let storage = Arc::new(MemoryStorage::new());
    let budget = Arc::new(DiskBudget::new(None));
    put_blob(&storage, 1, 100).await;
    let report = evictor(&storage, &budget, &[]).pass().await.unwrap();
    assert_eq!((report.stored_bytes, report.evicted_blobs), (100, 0));
    assert_eq!(budget.stored(), 100);
}

#[tokio::test]
async fn a_read_makes_a_blob_recent() {
    let storage = Arc::new(MemoryStorage::new());
    let budget = Arc::new(DiskBudget::new(Some(500)));
    let blobs = ten_blobs(&storage, &budget).await;
    // The oldest, read again, is now the most recent.
    budget.used(&blobs[0]);
    evictor(&storage, &budget, &[]).pass().await.unwrap();
    assert!(present(&storage, &blobs[0]).await);
    assert!(!present(&storage, &blobs[6]).await);
    assert!(present(&storage, &blobs[7]).await);
}

#[tokio::test]
async fn guarded_blobs_are_skipped_and_a_read_of_a_deleting_blob_is_refused() {
    let storage = Arc::new(MemoryStorage::new());
    let budget = Arc::new(DiskBudget::new(Some(500)));
    let blobs = ten_blobs(&storage, &budget).await;
    let guard = budget.guard(&blobs[0]).unwrap();
    let report = evictor(&storage, &budget, &[]).pass().await.unwrap();
    assert_eq!(report.skipped_busy, 1);
    assert!(present(&storage, &blobs[0]).await);
    // The next least recently used went instead.
    assert!(!present(&storage, &blobs[6]).await);
    drop(guard);
    assert!(!budget.is_guarded(&blobs[0]));
    // While a delete is under way, a reader gets no guard (a miss).
    assert!(budget.begin_delete(&blobs[0]));
    assert!(budget.guard(&blobs[0]).is_none());
    budget.end_delete(&blobs[0]);
    assert!(budget.guard(&blobs[0]).is_some());
    // A held guard stops a delete from starting.
    let _held = budget.hold(&blobs[1]);
    assert!(!budget.begin_delete(&blobs[1]));
}

#[tokio::test]
async fn pinned_images_keep_every_platform_and_over_cap_pins_are_reported() {
    let storage = Arc::new(MemoryStorage::new());
    let budget = Arc::new(DiskBudget::new(Some(500)));
    let amd = [
        put_blob(&storage, 1, 100).await,
        put_blob(&storage, 2, 100).await,
    ];
    let arm = [
        put_blob(&storage, 3, 100).await,
        put_blob(&storage, 4, 100).await,
    ];
    let other = [
        put_blob(&storage, 5, 100).await,
        put_blob(&storage, 6, 100).await,
    ];
    let amd_m = put_manifest(&storage, DOCKER_MANIFEST, image_manifest(&amd)).await;
    let arm_m = put_manifest(&storage, DOCKER_MANIFEST, image_manifest(&arm)).await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","size":1,"digest":"{amd_m}"}},{{"mediaType":"{DOCKER_MANIFEST}","size":1,"digest":"{arm_m}"}}]}}"#
    );
    let index = put_manifest(&storage, OCI_INDEX, index).await;
    tag_it(&storage, "docker.io/library/alpine:3.20", &index, OCI_INDEX).await;
    put_image(&storage, "docker.io/library/busybox:1", &other).await;

    let events = Arc::new(Events::default());
    let pins = vec!["docker.io/library/alpine:*".parse().unwrap()];
    let run = Evictor::new(
        Arc::clone(&storage),
        Arc::clone(&budget),
        pins,
        Arc::clone(&events) as observe::SharedObserver,
    );
    let report = run.pass().await.unwrap();
    assert_eq!(report.protected_bytes, 400);
    assert!(!report.protected_over_cap);
    for digest in amd.iter().chain(&arm) {
        assert!(present(&storage, digest).await, "pinned {digest}");
    }
    // 600 stored, 400 pinned: both unpinned blobs go to reach 450.
    assert_eq!(report.evicted_blobs, 2);
    for digest in &other {
        assert!(!present(&storage, digest).await);
    }
    // Manifests and tags stay.
    assert!(storage.manifest_get(&amd_m).await.unwrap().is_some());

    let tight = Arc::new(DiskBudget::new(Some(300)));
    let report = Evictor::new(
        Arc::clone(&storage),
        tight,
        vec!["docker.io/library/alpine:*".parse().unwrap()],
        Arc::clone(&events) as observe::SharedObserver,
    )
    .pass()
    .await
    .unwrap();
    assert!(report.protected_over_cap);
    assert_eq!(report.evicted_blobs, 0);
    let seen = events.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!((seen[0].blobs, seen[0].bytes), (2, 200));
    assert!(seen[1].protected_over_cap);
}

#[derive(Debug)]
struct Hosted(Vec<Digest>, Vec<Digest>);

#[async_trait]
impl ProtectedRoots for Hosted {
    async fn manifest_roots(&self) -> crate::Result<Vec<Digest>> {
        Ok(self.0.clone())
    }

    async fn blob_roots(&self) -> crate::Result<Vec<Digest>> {
        Ok(self.1.clone())
    }
}

#[tokio::test]
async fn protected_roots_keep_their_blobs() {
    let storage = Arc::new(MemoryStorage::new());
    let budget = Arc::new(DiskBudget::new(Some(100)));
    let hosted = [
        put_blob(&storage, 1, 100).await,
        put_blob(&storage, 2, 100).await,
    ];
    let loose = put_blob(&storage, 3, 100).await;
    let pushed_alone = put_blob(&storage, 4, 100).await;
    // An untagged manifest (hosted content is found by the hook, not by tags),
    // and a blob pushed before any manifest names it.
    let root = put_manifest(&storage, DOCKER_MANIFEST, image_manifest(&hosted)).await;
    let report = evictor(&storage, &budget, &[])
        .with_roots(Arc::new(Hosted(vec![root], vec![pushed_alone.clone()])))
        .pass()
        .await
        .unwrap();
    assert!(report.protected_over_cap);
    assert_eq!(report.protected_bytes, 300);
    assert!(present(&storage, &hosted[0]).await && present(&storage, &hosted[1]).await);
    assert!(present(&storage, &pushed_alone).await);
    assert!(!present(&storage, &loose).await);
}

#[tokio::test]
async fn last_uses_survive_a_restart_through_the_access_index() {
    let storage = Arc::new(MemoryStorage::new());
    let budget = Arc::new(DiskBudget::new(Some(500)));
    let blobs = ten_blobs(&storage, &budget).await;
    evictor(&storage, &budget, &[]).flush().await.unwrap();
    let record = storage
        .record_get(&RecordKey::access(&blobs[3]))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&record.bytes).contains(blobs[3].hex()));
    // A new process: nothing in memory; the index orders blobs.
    let fresh = Arc::new(DiskBudget::new(Some(500)));
    let run = evictor(&storage, &fresh, &[]);
    run.flush().await.unwrap();
    let index = run.index.lock().await;
    let times: Vec<SystemTime> = blobs.iter().map(|d| index.last_use(d).unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
}

#[tokio::test]
async fn the_background_task_evicts_when_a_fill_crosses_the_cap() {
    let storage = Arc::new(MemoryStorage::new());
    let upstream = Arc::new(FakeUpstream::new());
    let options = CacheOptions::default().with_max_size(1000);
    let engine = PullThrough::new(Arc::clone(&storage), Arc::clone(&upstream), options);
    let budget = Arc::clone(engine.budget());
    let task = tokio::spawn(evictor(&storage, &budget, &[]).run(Duration::from_secs(3600)));
    let (hub, repo) = (
        Registry::new("docker.io").unwrap(),
        Repository::new("library/x").unwrap(),
    );
    let mut digests = Vec::new();
    for seed in 0..4u8 {
        let digest = upstream.add_blob(BlobScript::new(&blob_bytes(seed, 400)));
        let response = engine.blob(&hub, &repo, &digest, None).await.unwrap();
        let mut stream = response.stream;
        while let Some(chunk) = stream.next().await {
            chunk.unwrap();
        }
        digests.push(digest);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // 1600 bytes were filled under a 1000-byte cap: the oldest went.
    let mut stored = 0;
    for _ in 0..200 {
        stored = 0;
        for digest in &digests {
            if present(&storage, digest).await {
                stored += 400;
            }
        }
        if stored <= 900 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stored <= 900, "still {stored} bytes stored");
    assert!(present(&storage, &digests[3]).await);
    assert!(!present(&storage, &digests[0]).await);

    // A client reading a stored blob holds it until its stream is dropped.
    let open = engine.blob(&hub, &repo, &digests[3], None).await.unwrap();
    assert!(budget.is_guarded(&digests[3]));
    drop(open);
    assert!(!budget.is_guarded(&digests[3]));
    task.abort();
}

#[tokio::test]
async fn purge_removes_the_tag_manifest_and_unshared_blobs() {
    let storage = Arc::new(MemoryStorage::new());
    let budget = DiskBudget::new(None);
    let shared = put_blob(&storage, 1, 10).await;
    let only_a = put_blob(&storage, 2, 10).await;
    let only_b = put_blob(&storage, 3, 10).await;
    let a = put_image(
        &storage,
        "docker.io/library/a:1",
        &[shared.clone(), only_a.clone()],
    )
    .await;
    let b = put_image(
        &storage,
        "docker.io/library/b:1",
        &[shared.clone(), only_b.clone()],
    )
    .await;
    // A second tag of image a keeps its manifest when one tag is purged…
    tag_it(&storage, "docker.io/library/a:also", &a, DOCKER_MANIFEST).await;
    let target = [Reference::parse("docker.io/library/a:1").unwrap()];
    let report = purge(storage.as_ref(), &budget, &observe::NoopObserver, &target)
        .await
        .unwrap();
    assert_eq!((report.tags, report.manifests, report.blobs), (1, 0, 0));
    assert!(storage.manifest_get(&a).await.unwrap().is_some());

    // …and purging the other tag removes the manifest and its own blob only.
    let target = [Reference::parse("a:also").unwrap()];
    let report = purge(storage.as_ref(), &budget, &observe::NoopObserver, &target)
        .await
        .unwrap();
    assert_eq!(
        (report.tags, report.manifests, report.blobs, report.bytes),
        (1, 1, 1, 10)
    );
    assert!(storage.manifest_get(&a).await.unwrap().is_none());
    assert!(!present(&storage, &only_a).await);
    assert!(present(&storage, &shared).await && present(&storage, &only_b).await);
    assert!(storage.manifest_get(&b).await.unwrap().is_some());
    let key = TagKey {
        upstream: Registry::new("docker.io").unwrap(),
        repository: Repository::new("library/a").unwrap(),
        tag: Tag::new("1").unwrap(),
    };
    assert!(storage.tag_get(&key).await.unwrap().is_none());

    // By digest: every tag of the repository pointing at it goes.
    let target = [Reference::parse(&format!("docker.io/library/b@{b}")).unwrap()];
    let report = purge(storage.as_ref(), &budget, &observe::NoopObserver, &target)
        .await
        .unwrap();
    assert_eq!((report.tags, report.manifests, report.blobs), (1, 1, 2));
}

#[derive(Debug, Default)]
struct Events(std::sync::Mutex<Vec<EvictionEvent>>);

impl Observer for Events {
    fn eviction(&self, event: &EvictionEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

#[test]
fn sizes_parse_with_binary_and_decimal_units() {
    assert_eq!(parse_size("150MiB").unwrap(), 150 << 20);
    assert_eq!(parse_size("50GiB").unwrap(), 50 << 30);
    assert_eq!(parse_size("1 kb").unwrap(), 1000);
    assert_eq!(parse_size("42").unwrap(), 42);
    for bad in ["", "MiB", "1.5GiB", "10 parsecs", "-1"] {
        let e = parse_size(bad).unwrap_err().to_string();
        assert!(e.contains("150MiB"), "{bad}: {e}");
    }
    assert!(parse_size("99999999999TiB").is_err());
    let options: CacheOptions =
        serde_json::from_str(r#"{"max_size": "150MiB", "pin": ["registry.k8s.io/*"]}"#).unwrap();
    assert_eq!(options.max_size, Some(150 << 20));
    assert_eq!(options.pin[0].as_str(), "registry.k8s.io/*");
    assert!(serde_json::from_str::<CacheOptions>(r#"{"pin": ["alpine"]}"#).is_err());
}

/// A hosted `local/app` over a new store with a `cap`: storage, budget,
/// hosted side and repository of the tests of pushed content.
fn hosted_store(
    cap: u64,
) -> (
    Arc<MemoryStorage>,
    Arc<DiskBudget>,
    crate::hosted::Hosted<MemoryStorage>,
    Repository,
) {
    let storage = Arc::new(MemoryStorage::new());
    let budget = Arc::new(DiskBudget::new(Some(cap)));
    let hosted = crate::hosted::Hosted::new(
        Arc::clone(&storage),
        crate::hosted::HostedOptions::default(),
    );
    (
        storage,
        budget,
        hosted,
        Repository::new("local/app").unwrap(),
    )
}

/// `bytes` as a one-chunk body.
fn body(bytes: Vec<u8>) -> crate::storage::ByteStream {
    futures::stream::iter([Ok(Bytes::from(bytes))]).boxed()
}

/// Pushes `bytes` whole (`POST …?digest=`) through `hosted`; returns the digest.
async fn push_whole(hosted: &crate::hosted::Hosted<MemoryStorage>, bytes: Vec<u8>) -> Digest {
    let digest = Digest::sha256_of(&bytes);
    hosted.put_blob(&digest, body(bytes)).await.unwrap();
    digest
}

/// Pushed content is kept by an evictor built without any roots: the hosted
/// repositories' manifests and blobs; an open upload (whose pieces are not
/// blobs) still finishes after the pass.
#[tokio::test]
async fn pushed_content_is_never_evicted_without_any_wiring() {
    use crate::reference::ManifestRef;

    let (storage, budget, hosted, app) = hosted_store(10);
    let layer_digest = push_whole(&hosted, blob_bytes(1, 100)).await;
    let config_digest = push_whole(&hosted, br#"{"architecture":"amd64"}"#.to_vec()).await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":24}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":100}}]}}"#
    );
    hosted
        .put_manifest(
            &app,
            &ManifestRef::Tag(Tag::new("v1").unwrap()),
            None,
            Bytes::from(manifest),
        )
        .await
        .unwrap();
    let upload = hosted.start_upload(&app, None).await.unwrap();
    hosted
        .append(&app, &upload.id, None, body(blob_bytes(2, 50)))
        .await
        .unwrap();
    let uploaded = Digest::sha256_of(&blob_bytes(2, 50));
    let cached = put_blob(&storage, 3, 100).await;

    let report = evictor(&storage, &budget, &[]).pass().await.unwrap();
    assert!(report.protected_over_cap, "{report:?}");
    for kept in [&layer_digest, &config_digest] {
        assert!(present(&storage, kept).await, "{kept} was evicted");
    }
    assert!(!present(&storage, &cached).await, "the cached blob stayed");
    hosted
        .finish(&app, &upload.id, &uploaded, None)
        .await
        .unwrap();
    assert!(present(&storage, &uploaded).await);
}

/// Issue 22: a cached index (with its child image) that was also pushed to
/// a hosted repository, by the same digest. Before, purging the cached tag
/// removed the shared manifests and then every blob no manifest named any
/// more: the pushed image was gone for good.
#[tokio::test]
async fn purge_and_eviction_never_remove_what_a_hosted_repository_references() {
    use crate::hosted::{Hosted, HostedOptions};
    use crate::reference::ManifestRef;

    let storage = Arc::new(MemoryStorage::new());
    let config = put_blob(&storage, 1, 10).await;
    let layer = put_blob(&storage, 2, 10).await;
    let child = put_manifest(
        &storage,
        DOCKER_MANIFEST,
        image_manifest(&[config.clone(), layer.clone()]),
    )
    .await;
    let index_json = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","size":1,"digest":"{child}"}}]}}"#
    );
    let index = put_manifest(&storage, OCI_INDEX, index_json.clone()).await;
    tag_it(&storage, "docker.io/library/app:1", &index, OCI_INDEX).await;
    // The same index pushed (its child and blobs mounted) into local/app.
    let hosted = Hosted::new(Arc::clone(&storage), HostedOptions::default());
    let app = Repository::new("local/app").unwrap();
    hosted
        .put_manifest(
            &app,
            &ManifestRef::Digest(child.clone()),
            Some(DOCKER_MANIFEST),
            Bytes::from(image_manifest(&[config.clone(), layer.clone()])),
        )
        .await
        .unwrap();
    hosted
        .put_manifest(
            &app,
            &ManifestRef::Tag(Tag::new("v1").unwrap()),
            Some(OCI_INDEX),
            Bytes::from(index_json),
        )
        .await
        .unwrap();

    let budget = Arc::new(DiskBudget::new(Some(1)));
    let target = [Reference::parse("docker.io/library/app:1").unwrap()];
    let report = purge(storage.as_ref(), &budget, &observe::NoopObserver, &target)
        .await
        .unwrap();
    assert_eq!(
        (report.tags, report.manifests, report.blobs),
        (1, 0, 0),
        "{report:?}"
    );
    // Eviction under a 1-byte cap keeps them too.
    let report = evictor(&storage, &budget, &[]).pass().await.unwrap();
    assert_eq!(report.evicted_blobs, 0, "{report:?}");
    let pulled = hosted
        .manifest(&app, &ManifestRef::Tag(Tag::new("v1").unwrap()))
        .await
        .unwrap();
    assert_eq!(pulled.digest, index);
    assert!(storage.manifest_get(&child).await.unwrap().is_some());
    assert!(present(&storage, &config).await && present(&storage, &layer).await);
}

/// A push sends layers and config before the manifest naming them. Before,
/// an eviction pass (or a purge of a cached image sharing them) in between
/// deleted them, and the manifest was then refused with
/// `MANIFEST_BLOB_UNKNOWN`. Now a grace record keeps each until the
/// manifest arrives; once a grace ends, a blob no manifest names is
/// evictable again and the sweep drops the record.
#[tokio::test]
async fn blobs_pushed_before_their_manifest_are_kept_until_it_arrives() {
    use crate::hosted::{Hosted, HostedOptions};
    use crate::reference::ManifestRef;

    let (storage, budget, hosted, app) = hosted_store(10);
    // The layer through a session (PATCH, then PUT), the config monolithic.
    let layer = blob_bytes(1, 100);
    let layer_digest = Digest::sha256_of(&layer);
    let upload = hosted.start_upload(&app, None).await.unwrap();
    hosted
        .append(&app, &upload.id, None, body(layer))
        .await
        .unwrap();
    hosted
        .finish(&app, &upload.id, &layer_digest, None)
        .await
        .unwrap();
    let config_digest = push_whole(&hosted, blob_bytes(2, 100)).await;
    let blobs = [config_digest.clone(), layer_digest.clone()];
    // A cached image naming the same blobs, purged in the window.
    put_image(&storage, "docker.io/library/base:1", &blobs).await;
    let cached = put_blob(&storage, 3, 100).await;

    let target = [Reference::parse("docker.io/library/base:1").unwrap()];
    let purged = purge(storage.as_ref(), &budget, &observe::NoopObserver, &target)
        .await
        .unwrap();
    assert_eq!(purged.blobs, 0, "{purged:?}");
    let report = evictor(&storage, &budget, &[]).pass().await.unwrap();
    assert_eq!(report.evicted_blobs, 1, "{report:?}");
    assert!(!present(&storage, &cached).await, "the cap did not bite");
    for kept in &blobs {
        assert!(present(&storage, kept).await, "{kept} was evicted");
    }
    hosted
        .put_manifest(
            &app,
            &ManifestRef::Tag(Tag::new("v1").unwrap()),
            Some(DOCKER_MANIFEST),
            Bytes::from(image_manifest(&blobs)),
        )
        .await
        .unwrap();
    // The manifest keeps them now: their grace records are gone.
    for digest in &blobs {
        let grace = storage
            .record_get(&RecordKey::pushed_blob(digest))
            .await
            .unwrap();
        assert!(grace.is_none(), "{digest} is still in its grace");
    }

    // A blob whose grace ended and that no manifest names is evicted, and
    // the sweep drops its record.
    let no_grace = Hosted::new(
        Arc::clone(&storage),
        HostedOptions::default().with_upload_max_age(Duration::ZERO),
    );
    let orphan_digest = push_whole(&no_grace, blob_bytes(4, 100)).await;
    let report = evictor(&storage, &budget, &[]).pass().await.unwrap();
    assert_eq!(report.evicted_blobs, 1, "{report:?}");
    assert!(!present(&storage, &orphan_digest).await);
    no_grace.cleanup_abandoned().await.unwrap();
    let grace = storage
        .record_get(&RecordKey::pushed_blob(&orphan_digest))
        .await
        .unwrap();
    assert!(grace.is_none(), "the ended grace was not swept");
}

fn replica_identity(n: u32) -> crate::fleet::FleetIdentity {
    crate::fleet::FleetIdentity {
        holder_id: format!("replica-{n}"),
        advertise_url: format!("http://127.0.0.{n}:5000"),
    }
}

/// Ten 100-byte blobs in one in-memory bucket.
async fn shared_bucket_of_ten_blobs() -> Arc<crate::storage::ObjectStorage> {
    let storage = Arc::new(crate::storage::ObjectStorage::in_memory());
    for seed in 0..10u8 {
        let bytes = blob_bytes(seed, 100);
        let digest = Digest::sha256_of(&bytes);
        let stream = futures::stream::iter([Ok(Bytes::from(bytes))]).boxed();
        storage
            .blob_write(&digest, Some(100), stream)
            .await
            .unwrap();
    }
    storage
}

/// Replica `n`'s evictor on `storage` with a 500-byte cap, in fleet mode.
async fn fleet_evictor(
    storage: &Arc<crate::storage::ObjectStorage>,
    n: u32,
) -> Evictor<crate::storage::ObjectStorage> {
    use crate::fleet::{Fleet, LeaseTimings};
    let peers = Arc::new(crate::fleet::tests::NoPeers);
    let fleet = Fleet::connect(storage, replica_identity(n), LeaseTimings::default(), peers).await;
    let budget = Arc::new(DiskBudget::new(Some(500)));
    let evictor =
        Evictor::new(Arc::clone(storage), budget, Vec::new(), observe::noop()).with_fleet(&fleet);
    assert!(evictor.elected_in_fleet());
    evictor
}

/// Replicas on one bucket: a pass deletes only while it holds the eviction lease.
#[tokio::test]
async fn one_replica_evicts_at_a_time() {
    use crate::fleet::{Claim, LeaseTimings, Leases};
    let storage = shared_bucket_of_ten_blobs().await;
    let identity = replica_identity;
    let evictor = fleet_evictor(&storage, 1).await;

    // Replica 2 is evicting.
    let other = Leases::new(&storage, identity(2), LeaseTimings::default());
    let key = other.named_key("eviction").unwrap();
    let Ok(Claim::Mine(held)) = other.claim(&key, None).await else {
        panic!("replica 2 could not take the eviction lease");
    };
    let report = evictor.pass().await.unwrap();
    assert!(report.left_to_another_replica);
    assert_eq!((report.evicted_blobs, report.stored_bytes), (0, 1000));

    held.release().await;
    let report = evictor.pass().await.unwrap();
    assert!(!report.left_to_another_replica);
    assert_eq!(report.evicted_blobs, 6);
    // Released after the pass: the next replica's pass may evict.
    assert!(matches!(other.claim(&key, None).await, Ok(Claim::Mine(_))));
}

/// Two replicas over the cap at the same moment: the excess is deleted
/// once, by one of them (without the election both would pick the same
/// victims from the same listing and count them twice).
#[tokio::test]
async fn two_replicas_passing_at_once_delete_the_excess_once() {
    let storage = shared_bucket_of_ten_blobs().await;
    let (a, b) = (
        fleet_evictor(&storage, 1).await,
        fleet_evictor(&storage, 2).await,
    );
    let (from_a, from_b) = tokio::join!(a.pass(), b.pass());
    let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
    let evicted = [from_a.evicted_blobs, from_b.evicted_blobs];
    assert!(evicted.contains(&0), "{evicted:?}");
    assert_eq!(evicted.iter().sum::<u64>(), 6, "{evicted:?}");
    let left: Vec<_> = storage.blob_list().collect().await;
    assert_eq!(left.len(), 4);
}
