//! Issue 25: switching from registry:2 pull-through containers. Their cache
//! is adopted with `import --registry2-dir`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::fixtures::{multiarch_image, small_image};
use crate::support::image::Layout;
use crate::support::mirror::{oci_cache_bin, Mirror};
use crate::support::registry::Origin;
use crate::support::{skopeo, tools_available};

/// Runs `oci-cache ARGS` to completion.
fn oci_cache(args: &[String]) -> Output {
    super::airgap::oci_cache(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Waits until docker-registry in proxy mode has written every blob of
/// `layout` to its storage (it stores them after answering the client).
fn wait_stored(proxy: &Origin, layout: &Layout) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for blob in layout.all_blobs() {
        while !proxy.blob_file(&blob.digest).exists() {
            assert!(
                Instant::now() < deadline,
                "the proxy never stored {}",
                blob.digest
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Every blob file of a layout `skopeo::copy` wrote, as bytes by name.
fn layout_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    skopeo::layout_blobs(dir)
        .into_iter()
        .map(|digest| {
            let hex = digest.trim_start_matches("sha256:").to_owned();
            let bytes = std::fs::read(dir.join("blobs/sha256").join(&hex)).unwrap();
            (digest, bytes)
        })
        .collect()
}

#[test]
fn registry2_proxy_storage_is_imported_and_served_without_the_origin() {
    if !tools_available("registry2_proxy_storage_is_imported_and_served_without_the_origin") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut origin = Origin::start();
    let small = small_image(&work.path().join("small"), 2501);
    let multi = multiarch_image(&work.path().join("multi"), 2502);
    skopeo::push(&small, &origin.host(), "library/small:v1");
    skopeo::push(&multi, &origin.host(), "e2e/multi:v1");

    // A registry:2 pull-through cache, filled by real pulls, then retired.
    let mut proxy = Origin::start_proxy(&origin.url());
    let via_proxy = work.path().join("via-proxy");
    skopeo::copy(&format!("{}/library/small:v1", proxy.host()), &via_proxy).unwrap();
    skopeo::copy(
        &format!("{}/e2e/multi:v1", proxy.host()),
        &work.path().join("via-proxy-multi"),
    )
    .unwrap();
    wait_stored(&proxy, &small);
    wait_stored(&proxy, &multi);
    proxy.stop();

    let storage = work.path().join("cache");
    let config = vec![
        "--storage-dir".to_owned(),
        storage.display().to_string(),
        "--upstream".to_owned(),
        format!("docker.io={}", origin.url()),
    ];
    let mut import = vec![
        "import".to_owned(),
        "--registry2-dir".to_owned(),
        proxy.root().display().to_string(),
    ];
    import.extend(config.iter().cloned());
    let out = oci_cache(&import);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("imported docker.io/library/small:v1: 1 manifests"),
        "{stdout}"
    );
    assert!(
        stdout.contains("imported docker.io/e2e/multi:v1: 3 manifests"),
        "{stdout}"
    );
    assert!(stdout.contains("0 failed"), "{stdout}");

    // First pull after the switch: served from the import, nothing upstream.
    let before = origin.records().len();
    let mut serve = config.clone();
    serve.extend(["--tag-ttl".to_owned(), "1h".to_owned()]);
    let mirror = Mirror::start_oci_cache_args_env(&serve, &[]);
    let via_cache = work.path().join("via-cache");
    let copied = skopeo::copy(&format!("{}/library/small:v1", mirror.host()), &via_cache).unwrap();
    assert_eq!(copied.digest, small.digest);
    assert_eq!(layout_bytes(&via_cache), layout_bytes(&via_proxy));
    assert_eq!(
        origin.records().len(),
        before,
        "the origin was asked: {:?}",
        &origin.records()[before..]
    );

    // And with the origin gone.
    origin.stop();
    let copied = skopeo::copy(
        &format!("{}/e2e/multi:v1", mirror.host()),
        &work.path().join("via-cache-multi"),
    )
    .unwrap();
    assert_eq!(copied.digest, multi.digest);
}
