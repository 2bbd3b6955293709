//! Issue 5, cases (a) and (g): mirror chains with real registries.
//!
//! (a) docker-registry processes as mirror endpoints and as the origin,
//! skopeo pulling through `oci-cache serve`, and each registry's access log
//! counting what reached it; the chains come from a Talos document.
//! (g) `oci-cache resolve --json` with a Talos file and a containerd
//! `certs.d` tree prints the chains the configuration describes.

use std::path::Path;
use std::process::Command;

use super::fixtures::small_image;
use crate::support::image::Layout;
use crate::support::mirror::{oci_cache_bin, Mirror};
use crate::support::registry::{AccessRecord, Origin};
use crate::support::{free_port, skopeo, tools_available};

/// The access-log records after the first `skip`.
fn since(registry: &Origin, skip: usize) -> Vec<AccessRecord> {
    registry.records().into_iter().skip(skip).collect()
}

/// Asserts that `records` include a successful GET of the manifest and of every blob of `image`.
fn served_whole_image(records: &[AccessRecord], image: &Layout, who: &str) {
    let ok_get = |needle: &str| {
        records
            .iter()
            .any(|r| r.method == "GET" && matches!(r.status, 200 | 206) && r.path.contains(needle))
    };
    assert!(
        ok_get("/manifests/"),
        "{who} served no manifest: {records:?}"
    );
    for blob in &image.images[0].blobs() {
        assert!(
            ok_get(&blob.digest),
            "{who} did not serve blob {}: {records:?}",
            blob.digest
        );
    }
}

#[test]
fn a_chain_moves_on_when_down_or_missing_and_skip_fallback_spares_the_origin() {
    if !tools_available("a_chain_moves_on_when_down_or_missing_and_skip_fallback_spares_the_origin")
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    // One image per case: blobs are cached by digest, so a shared image
    // would let a later case be served from the cache.
    let down_img = small_image(&work.path().join("down"), 60);
    let miss_img = small_image(&work.path().join("miss"), 61);
    let skip_img = small_image(&work.path().join("skip"), 62);
    let origin = Origin::start();
    for (image, repo) in [
        (&down_img, "e2e/down:v1"),
        (&miss_img, "e2e/miss:v1"),
        (&skip_img, "e2e/skip:v1"),
    ] {
        skopeo::push(image, &origin.host(), repo);
    }
    let second = Origin::start();
    skopeo::push(&down_img, &second.host(), "e2e/down:v1");
    let empty = Origin::start();
    // Nothing listens here: connection refused.
    let dead = format!("http://127.0.0.1:{}", free_port());

    let talos = work.path().join("talos.yaml");
    std::fs::write(
        &talos,
        format!(
            "apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: down.test\n\
             endpoints:\n  - url: {dead}\n  - url: {second}\n---\n\
             apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: miss.test\n\
             endpoints:\n  - url: {empty}\n---\n\
             apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: skip.test\n\
             endpoints:\n  - url: {empty}\nskipFallback: true\n",
            second = second.url(),
            empty = empty.url(),
        ),
    )
    .unwrap();
    let o = origin.url();
    let mut args: Vec<String> = Vec::new();
    for name in ["down.test", "miss.test", "skip.test"] {
        args.extend(["--upstream".into(), format!("{name}={o}")]);
    }
    args.extend([
        "--default-upstream".into(),
        "down.test".into(),
        "--tag-ttl".into(),
        "5m".into(),
        "--talos-config".into(),
        talos.display().to_string(),
    ]);
    let mirror = Mirror::start_oci_cache_args(&args);
    let m = mirror.host();

    // First endpoint down → the second serves; the origin sees nothing.
    let (origin_0, second_0) = (origin.records().len(), second.records().len());
    let got = skopeo::copy(
        &format!("{m}/down.test/e2e/down:v1"),
        &work.path().join("c1"),
    )
    .unwrap();
    assert_eq!(got.digest, down_img.digest);
    let from_second = since(&second, second_0);
    served_whole_image(&from_second, &down_img, "the second mirror");
    assert!(
        from_second.iter().all(|r| r.path.contains("ns=down.test")),
        "mirrors are asked with ns: {from_second:?}"
    );
    assert_eq!(
        since(&origin, origin_0),
        [],
        "the origin was asked although the second mirror had the image"
    );

    // First endpoint 404 → the origin serves.
    let (origin_1, empty_1) = (origin.records().len(), empty.records().len());
    let got = skopeo::copy(
        &format!("{m}/miss.test/e2e/miss:v1"),
        &work.path().join("c2"),
    )
    .unwrap();
    assert_eq!(got.digest, miss_img.digest);
    let from_empty = since(&empty, empty_1);
    assert!(
        from_empty
            .iter()
            .any(|r| r.path.starts_with("/v2/e2e/miss/manifests/v1?ns=miss.test")),
        "the mirror was not asked first: {from_empty:?}"
    );
    assert!(
        from_empty.iter().all(|r| r.status == 404),
        "the empty mirror answered something but 404: {from_empty:?}"
    );
    let from_origin = since(&origin, origin_1);
    served_whole_image(&from_origin, &miss_img, "the origin");
    assert!(
        from_origin.iter().all(|r| !r.path.contains("ns=")),
        "ns must not reach the origin: {from_origin:?}"
    );

    // skip_fallback: the mirror's 404 is final; no request reaches the origin.
    let (origin_2, empty_2) = (origin.records().len(), empty.records().len());
    let err = skopeo::copy(
        &format!("{m}/skip.test/e2e/skip:v1"),
        &work.path().join("c3"),
    )
    .unwrap_err();
    assert!(!err.is_empty());
    assert!(
        since(&empty, empty_2)
            .iter()
            .any(|r| r.path.contains("/e2e/skip/manifests/v1?ns=skip.test")),
        "the skip_fallback mirror was not asked"
    );
    assert_eq!(
        since(&origin, origin_2),
        [],
        "skip_fallback: a request reached the origin"
    );
}

/// `oci-cache resolve --json ARGS REF`, parsed.
fn resolve_json(args: &[&str], reference: &str) -> serde_json::Value {
    let out = Command::new(oci_cache_bin())
        .arg("resolve")
        .arg("--json")
        .args(args)
        .arg(reference)
        .env_remove("OCI_CACHE_CONFIG")
        .env_remove("OCI_CACHE_TALOS_CONFIG")
        .env_remove("OCI_CACHE_CONTAINERD_HOSTS")
        .output()
        .unwrap();
    // Exit 3: a valid reference that no configured upstream serves.
    let refused = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .is_ok_and(|json| json["upstream"].is_null());
    assert_eq!(
        out.status.code(),
        Some(if refused { 3 } else { 0 }),
        "resolve {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn g_talos_and_containerd_configs_give_the_chains_resolve_prints() {
    let dir = tempfile::tempdir().unwrap();
    let talos = dir.path().join("machine.yaml");
    write(
        &talos,
        "version: v1alpha1\nmachine:\n  type: worker\n---\n\
         apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: ghcr.io\nendpoints:\n\
         \x20 - url: http://10.0.0.5:5000\n\
         \x20 - url: https://harbor.example/v2/ghcr/\n    overridePath: true\nskipFallback: true\n---\n\
         apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: \"*\"\nendpoints:\n\
         \x20 - url: https://catch-all.example/cache\n---\n\
         apiVersion: v1alpha1\nkind: RegistryAuthConfig\nname: harbor.example\nusername: robot\npassword: pw\n",
    );
    let certs = dir.path().join("certs.d");
    write(
        &certs.join("docker.io/hosts.toml"),
        "server = \"https://registry-1.docker.io\"\n\
         [host.\"http://10.0.0.7:5000\"]\n  capabilities = [\"pull\"]\n\
         [host.\"https://hub-mirror.example\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
    );
    write(
        &certs.join("registry.example_5000_/hosts.toml"),
        "server = \"http://10.0.0.9:5000\"\n",
    );
    let args = [
        "--talos-config",
        talos.to_str().unwrap(),
        "--containerd-hosts",
        certs.to_str().unwrap(),
    ];

    let ghcr = resolve_json(&args, "ghcr.io/org/app:v1");
    assert_eq!(ghcr["upstream"], "ghcr.io");
    assert_eq!(
        ghcr["endpoints"],
        serde_json::json!([
            "http://10.0.0.5:5000/v2/org/app/manifests/v1?ns=ghcr.io",
            "https://harbor.example/v2/ghcr/org/app/manifests/v1?ns=ghcr.io",
        ]),
        "skipFallback drops https://ghcr.io"
    );
    assert_eq!(ghcr["canonical"], "ghcr.io/org/app:v1");

    // containerd: the digest-only host is left out for a tag, the server is the origin.
    let hub = resolve_json(&args, "alpine");
    assert_eq!(hub["upstream"], "docker.io");
    assert_eq!(
        hub["endpoints"],
        serde_json::json!([
            "https://hub-mirror.example/v2/library/alpine/manifests/latest?ns=docker.io",
            "https://registry-1.docker.io/v2/library/alpine/manifests/latest",
        ])
    );
    let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let pinned = resolve_json(&args, &format!("alpine@{digest}"));
    assert_eq!(
        pinned["endpoints"][0],
        format!("http://10.0.0.7:5000/v2/library/alpine/manifests/{digest}?ns=docker.io")
    );
    assert_eq!(pinned["endpoints"].as_array().unwrap().len(), 3);

    // A `host_port_` directory whose server is another host: no fallback.
    let private = resolve_json(&args, "registry.example:5000/team/tool:2");
    assert_eq!(private["upstream"], "registry.example:5000");
    assert_eq!(
        private["endpoints"],
        serde_json::json!([
            "http://10.0.0.9:5000/v2/team/tool/manifests/2?ns=registry.example%3A5000"
        ])
    );

    // The wildcard fills configured upstreams without their own chain...
    let quay = resolve_json(&args, "quay.io/org/x:1");
    assert_eq!(
        quay["endpoints"],
        serde_json::json!([
            "https://catch-all.example/cache/v2/org/x/manifests/1?ns=quay.io",
            "https://quay.io/v2/org/x/manifests/1",
        ])
    );
    // ...and never makes an unconfigured registry reachable.
    let unknown = resolve_json(&args, "evil.example/x:1");
    assert_eq!(unknown["upstream"], serde_json::Value::Null);
    assert_eq!(unknown["endpoints"], serde_json::json!([]));
    assert!(unknown["upstream_error"]
        .as_str()
        .unwrap()
        .contains("evil.example"));
}
