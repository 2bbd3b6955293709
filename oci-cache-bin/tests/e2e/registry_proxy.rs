//! The harness proven against a known mirror: docker-registry in proxy mode in
//! front of a docker-registry origin. These run on every `cargo test`; the same
//! helpers drive the `oci-cache` cases.

use super::fixtures::{big_image, multiarch_image, small_image};
use crate::support::containerd::Containerd;
use crate::support::http::ns_pull;
use crate::support::registry::Origin;
use crate::support::{skopeo, tools_available};

/// How often docker-registry 2.8 in proxy mode fetches each missing blob from
/// its remote (measured: twice; see above).
const REGISTRY_PROXY_FETCHES: usize = 2;

#[test]
fn proxy_registry_serves_origin_digests_and_caches_blobs() {
    if !tools_available("proxy_registry_serves_origin_digests_and_caches_blobs") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let small = small_image(&work.path().join("small"), 1);
    let multi = multiarch_image(&work.path().join("multi"), 2);
    skopeo::push(&small, &origin.host(), "e2e/small:v1");
    skopeo::push(&multi, &origin.host(), "e2e/multi:v1");
    assert_eq!(origin.manifest_digest("e2e/small", "v1"), small.digest);
    assert_eq!(origin.manifest_digest("e2e/multi", "v1"), multi.digest);
    let pushed_gets = origin.blob_gets().len();

    let proxy = Origin::start_proxy(&origin.url());
    let first = skopeo::copy(
        &format!("{}/e2e/small:v1", proxy.host()),
        &work.path().join("copy1"),
    )
    .unwrap();
    assert_eq!(first.digest, small.digest);
    let mut want: Vec<String> = small.all_blobs().into_iter().map(|b| b.digest).collect();
    want.sort();
    assert_eq!(
        skopeo::layout_blobs(&work.path().join("copy1")).len(),
        want.len() + 1
    );

    // Every blob came from the origin, and each the same number of times:
    // distribution 2.8's proxy fetches a missing blob twice (one stream to the
    // client, one to its own storage), the waste oci-cache must not repeat.
    let gets = origin.blob_gets();
    let per_blob = origin.blob_get_counts(pushed_gets);
    assert_eq!(per_blob.keys().cloned().collect::<Vec<_>>(), want);
    assert!(
        per_blob.values().all(|&n| n == REGISTRY_PROXY_FETCHES),
        "{per_blob:?}"
    );
    let bytes_after_first = origin.bytes_served();

    // The second pull is served from the proxy's storage: no blob reaches the origin.
    let second = skopeo::copy(
        &format!("{}/e2e/small:v1", proxy.host()),
        &work.path().join("copy2"),
    )
    .unwrap();
    assert_eq!(second.digest, small.digest);
    assert_eq!(
        origin.blob_gets().len(),
        gets.len(),
        "second pull hit origin blobs"
    );
    let manifest_bytes = origin.bytes_served() - bytes_after_first;
    assert!(
        manifest_bytes < 4096,
        "second pull moved {manifest_bytes} bytes from the origin"
    );

    // A multi-arch index, all platforms.
    let copied = skopeo::copy(
        &format!("{}/e2e/multi:v1", proxy.host()),
        &work.path().join("copy3"),
    )
    .unwrap();
    assert_eq!(copied.digest, multi.digest);
    // Both platforms' configs and layers, their manifests, and the index.
    assert_eq!(
        skopeo::layout_blobs(&work.path().join("copy3")).len(),
        multi.all_blobs().len() + 3
    );

    // The raw containerd-like client (the registry ignores `ns`).
    let pulled = ns_pull(&proxy.host(), "origin.test", "e2e/multi", "v1").unwrap();
    assert_eq!(pulled.digest, multi.digest);
    assert_eq!(
        pulled.manifests,
        vec![
            multi.digest.clone(),
            multi.images[0].manifest.digest.clone()
        ]
    );
    let amd64: Vec<String> = multi.images[0]
        .blobs()
        .into_iter()
        .map(|b| b.digest)
        .collect();
    assert_eq!(pulled.blobs, amd64);
    assert!(proxy.count("GET", "?ns=origin.test") >= 4);
}

#[test]
fn proxy_registry_big_image_reference_timings() {
    if !tools_available("proxy_registry_big_image_reference_timings") {
        return;
    }
    let (big, build_time) = big_image();
    let total: u64 = big.all_blobs().iter().map(|b| b.size).sum();
    assert!(total >= 100 << 20 && big.images[0].layers.len() >= 4);

    let origin = Origin::start();
    let push_time = skopeo::push(big, &origin.host(), "e2e/big:v1");
    let pushed_gets = origin.blob_gets().len();
    let proxy = Origin::start_proxy(&origin.url());
    let work = tempfile::tempdir().unwrap();
    let copy = skopeo::copy(
        &format!("{}/e2e/big:v1", proxy.host()),
        &work.path().join("copy"),
    )
    .unwrap();
    assert_eq!(copy.digest, big.digest);
    let per_blob = origin.blob_get_counts(pushed_gets);
    assert_eq!(per_blob.len(), big.all_blobs().len(), "{per_blob:?}");
    assert!(
        per_blob.values().all(|&n| n == REGISTRY_PROXY_FETCHES),
        "{per_blob:?}"
    );
    let fetched_bytes: u64 = origin.blob_gets()[pushed_gets..]
        .iter()
        .map(|r| r.bytes)
        .sum();
    assert_eq!(fetched_bytes, total * REGISTRY_PROXY_FETCHES as u64);
    let warm = skopeo::copy(
        &format!("{}/e2e/big:v1", proxy.host()),
        &work.path().join("copy-warm"),
    )
    .unwrap();
    eprintln!(
        "reference timings ({} MiB, {} layers): build {build_time:.2?}, push {push_time:.2?}, \
         cold copy via registry proxy {:.2?}, warm copy {:.2?}",
        total >> 20,
        big.images[0].layers.len(),
        copy.elapsed,
        warm.elapsed
    );
}

#[test]
fn containerd_pulls_through_the_proxy_registry_with_ns() {
    if !tools_available("containerd_pulls_through_the_proxy_registry_with_ns") {
        return;
    }
    let Some(ctrd) = Containerd::start("containerd_pulls_through_the_proxy_registry_with_ns")
    else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let multi = multiarch_image(&work.path().join("multi"), 3);
    let origin = Origin::start();
    skopeo::push(&multi, &origin.host(), "e2e/multi:v1");
    let proxy = Origin::start_proxy(&origin.url());

    let fetched = ctrd
        .fetch_via_mirror(&proxy.host(), "origin.test", "e2e/multi:v1")
        .unwrap();
    assert_eq!(fetched.digest, multi.digest);
    // The index, the linux/amd64 manifest and its blobs; nothing of arm64.
    let amd64 = &multi.images[0];
    let mut want: Vec<String> = amd64.blobs().into_iter().map(|b| b.digest).collect();
    want.extend([multi.digest.clone(), amd64.manifest.digest.clone()]);
    want.sort();
    assert_eq!(fetched.content, want);
    // containerd resolved the tag at the mirror and named the registry in `ns`.
    assert_eq!(
        proxy.count("HEAD", "/v2/e2e/multi/manifests/v1?ns=origin.test"),
        1
    );
    assert_eq!(proxy.count("GET", "?ns=origin.test"), want.len());
}
