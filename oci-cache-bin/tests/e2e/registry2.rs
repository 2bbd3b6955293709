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

/// Copies `reference` as a client with `registries_conf` as its registries
/// configuration (the mirror configuration podman, CRI-O and skopeo read);
/// the copied digest.
fn skopeo_via_registries_conf(registries_conf: &Path, reference: &str, dest: &Path) -> String {
    let conf = registries_conf.display().to_string();
    skopeo::copy_with(reference, dest, &["--registries-conf", &conf])
        .unwrap()
        .digest
}

/// Waits until `host` answers `GET /v2/`.
pub(super) fn wait_listening(host: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while crate::support::http::request(host, "GET", "/v2/", &[]).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {host}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_registry2_configs_serve_three_ports_each_with_its_own_upstream() {
    if !tools_available("three_registry2_configs_serve_three_ports_each_with_its_own_upstream") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // Three upstreams (three origins), the same repository name on each with
    // different content: a request routed to the wrong one gets the wrong digest.
    let clients = ["docker.io", "registry.k8s.io", "gcr.io"];
    let origins: Vec<Origin> = (0..3).map(|_| Origin::start()).collect();
    let images: Vec<Layout> = (0..3u64)
        .map(|i| small_image(&w.join(format!("image{i}")), 2510 + i))
        .collect();
    for (origin, image) in origins.iter().zip(&images) {
        skopeo::push(image, &origin.host(), "e2e/app:v1");
    }
    let ports: Vec<u16> = (0..3).map(|_| crate::support::free_port()).collect();
    // One registry:2 config.yml per container, as the seeds run them.
    let files: Vec<String> = (0..3)
        .map(|i| {
            let file = w.join(format!("registry{i}.yml"));
            std::fs::write(
                &file,
                format!(
                    "version: 0.1\nproxy:\n  remoteurl: {}\nhttp:\n  addr: 127.0.0.1:{}\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n",
                    origins[i].url(),
                    ports[i],
                    w.join("storage").display()
                ),
            )
            .unwrap();
            file.display().to_string()
        })
        .collect();
    // The seed's literal command line, for the first file.
    let log = w.join("oci-cache.log");
    let mut cmd = Command::new(oci_cache_bin());
    cmd.args(["registry", "serve", &files[0]])
        .args([
            "--registry-config",
            &files[1],
            "--registry-config",
            &files[2],
        ])
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap());
    let _server =
        crate::support::ServerProcess::spawn("oci-cache", cmd, ports[0], log.clone(), "/v2/");
    for port in &ports[1..] {
        wait_listening(&format!("127.0.0.1:{port}"));
    }

    // The clients' mirror configuration: one registry per port, the
    // registry itself a closed port (no fallback can hide a failing mirror).
    let closed = crate::support::free_port();
    let conf = w.join("registries.conf");
    let mut text = String::new();
    for (client, port) in clients.iter().zip(&ports) {
        text.push_str(&format!(
            "[[registry]]\nprefix = \"{client}\"\nlocation = \"127.0.0.1:{closed}\"\ninsecure = true\n\
             [[registry.mirror]]\nlocation = \"127.0.0.1:{port}\"\ninsecure = true\n\n"
        ));
    }
    std::fs::write(&conf, text).unwrap();

    for i in 0..3 {
        let before: Vec<usize> = origins.iter().map(|o| o.records().len()).collect();
        let blob_gets_before = origins[i].blob_gets().len();
        let reference = format!("{}/e2e/app:v1", clients[i]);
        // A fill: the image comes from this port's upstream, and only from it.
        let digest = skopeo_via_registries_conf(&conf, &reference, &w.join(format!("fill{i}")));
        assert_eq!(
            digest, images[i].digest,
            "{reference} through port {}",
            ports[i]
        );
        let mut want: Vec<String> = images[i]
            .all_blobs()
            .into_iter()
            .map(|b| b.digest)
            .collect();
        want.sort();
        let fetched = origins[i].blob_get_counts(blob_gets_before);
        assert_eq!(
            fetched.keys().cloned().collect::<Vec<_>>(),
            want,
            "{reference}"
        );
        assert!(
            fetched.values().all(|&n| n == 1),
            "{reference}: {fetched:?}"
        );
        for (j, origin) in origins.iter().enumerate() {
            if j != i {
                assert_eq!(
                    origin.records().len(),
                    before[j],
                    "{reference} reached origin {j}"
                );
            }
        }
        // A hit: nothing reaches any origin.
        let after_fill: Vec<usize> = origins.iter().map(|o| o.records().len()).collect();
        let digest = skopeo_via_registries_conf(&conf, &reference, &w.join(format!("hit{i}")));
        assert_eq!(digest, images[i].digest);
        let after_hit: Vec<usize> = origins.iter().map(|o| o.records().len()).collect();
        assert_eq!(
            after_hit, after_fill,
            "{reference}: the second pull reached an origin"
        );
    }
}
