//! Issue 29 item 1: referrers of a cached repository whose origin
//! (distribution 2.8) has no referrers API. The mirror learns them from the
//! `sha256-<hex>` tag schema, answers the OCI 1.1 referrers API with them,
//! caches the artifacts, and answers again with the origin stopped.

use serde_json::{json, Value};

use crate::support::http::{self, sha256_digest};
use crate::support::image::{build_artifact, build_image, ImageSpec, OCI_INDEX, OCI_MANIFEST};
use crate::support::mirror::Mirror;
use crate::support::registry::Origin;
use crate::support::{skopeo, tools_available};

const SPDX: &str = "application/spdx+json";
const SOURCE: &str = "oci-cache-referrers-source";

fn put(host: &str, path: &str, content_type: &str, body: &[u8]) {
    let put = http::request_with_body(host, "PUT", path, &[("Content-Type", content_type)], body)
        .unwrap();
    assert_eq!(
        put.status,
        201,
        "PUT {path}: {}",
        String::from_utf8_lossy(&put.body)
    );
}

/// `GET` of a referrers listing through the mirror: `200`, an image index;
/// its descriptors.
fn listing(mirror: &str, path: &str) -> (http::Response, Vec<Value>) {
    let got = http::request(mirror, "GET", path, &[]).unwrap();
    assert_eq!(
        got.status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&got.body)
    );
    assert_eq!(got.header("content-type"), Some(OCI_INDEX), "GET {path}");
    let index: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(index["mediaType"], OCI_INDEX);
    assert_eq!(index["schemaVersion"], 2);
    let manifests = index["manifests"].as_array().unwrap().clone();
    (got, manifests)
}

#[test]
fn referrers_come_from_the_tag_schema_of_an_origin_without_the_api_and_stay_when_it_stops() {
    let test =
        "referrers_come_from_the_tag_schema_of_an_origin_without_the_api_and_stay_when_it_stops";
    if !tools_available(test) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut origin = Origin::start();
    let o = origin.host();
    let image = build_image(
        &work.path().join("image"),
        "v1",
        &ImageSpec::new(2929, 1, 4096),
    );
    skopeo::push(&image, &o, "e2e/app:v1");
    let image_size = std::fs::read(image.blob_path(&image.digest)).unwrap().len();

    // An SBOM attached to the image as oras and cosign attach on a registry
    // without the API: its manifest names the image as `subject`, and the
    // `sha256-<hex>` tag holds an index listing it. skopeo uploads its blobs.
    let sbom = build_artifact(&work.path().join("sbom"), "t", &super::artifacts::sbom());
    skopeo::push(&sbom, &o, "e2e/app:sbom-blobs");
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(sbom.blob_path(&sbom.digest)).unwrap()).unwrap();
    manifest["subject"] =
        json!({"mediaType": OCI_MANIFEST, "digest": image.digest, "size": image_size});
    let attached = serde_json::to_vec(&manifest).unwrap();
    let referrer = sha256_digest(&attached);
    put(
        &o,
        &format!("/v2/e2e/app/manifests/{referrer}"),
        OCI_MANIFEST,
        &attached,
    );
    let fallback = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": referrer,
            "size": attached.len(),
            "artifactType": SPDX,
            "annotations": manifest["annotations"],
        }],
    });
    let fallback_tag = format!("sha256-{}", image.digest.trim_start_matches("sha256:"));
    put(
        &o,
        &format!("/v2/e2e/app/manifests/{fallback_tag}"),
        OCI_INDEX,
        &serde_json::to_vec(&fallback).unwrap(),
    );
    let path = format!("/v2/e2e/app/referrers/{}", image.digest);
    // The origin has no referrers API.
    assert_eq!(http::request(&o, "GET", &path, &[]).unwrap().status, 404);

    let origin_url = origin.url();
    let mirror = Mirror::start_oci_cache(&[("origin.test", &origin_url)], "origin.test", "1s");
    let m = mirror.host();
    let check = |manifests: &[Value]| {
        assert_eq!(manifests.len(), 1, "{manifests:?}");
        assert_eq!(manifests[0]["digest"], referrer.as_str());
        assert_eq!(manifests[0]["mediaType"], OCI_MANIFEST);
        assert_eq!(manifests[0]["size"], attached.len());
        assert_eq!(manifests[0]["artifactType"], SPDX);
        assert_eq!(manifests[0]["annotations"], manifest["annotations"]);
    };

    let (cold, manifests) = listing(&m, &path);
    check(&manifests);
    assert_eq!(cold.header(SOURCE), Some("tag-schema"));
    assert_eq!(cold.header("oci-filters-applied"), None);
    // The API was tried, then the tag schema read.
    assert!(
        origin.count("GET", "/referrers/") >= 2,
        "{}",
        origin.access_log()
    );
    assert_eq!(
        origin.count("GET", &format!("/manifests/{fallback_tag}")),
        1
    );

    let (filtered, manifests) = listing(&m, &format!("{path}?artifactType={SPDX}"));
    check(&manifests);
    assert_eq!(filtered.header("oci-filters-applied"), Some("artifactType"));
    let (_, none) = listing(&m, &format!("{path}?artifactType=application/x-none"));
    assert!(none.is_empty());
    // A subject nothing refers to: an empty index, not a 404.
    let other = sha256_digest(b"no such image");
    let (_, nothing) = listing(&m, &format!("/v2/e2e/app/referrers/{other}"));
    assert!(nothing.is_empty());

    // The origin gone, the tag TTL passed: the stored list, and the SBOM itself.
    origin.stop();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let (stale, manifests) = listing(&m, &path);
    check(&manifests);
    assert_eq!(stale.header(SOURCE), Some("cache"));
    let (_, manifests) = listing(&m, &format!("{path}?artifactType={SPDX}"));
    check(&manifests);
    let pulled = http::request(
        &m,
        "GET",
        &format!("/v2/e2e/app/manifests/{referrer}"),
        &[("Accept", OCI_MANIFEST)],
    )
    .unwrap();
    assert_eq!(pulled.status, 200);
    assert_eq!(pulled.body, attached);

    // The access log says how the list was learned and that it was served stale.
    let log = mirror.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("route=referrers") && l.contains(" request "))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("referrers=tag-schema") && l.contains("cache=miss")),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("referrers=tag-schema") && l.contains("cache=stale")),
        "{log}"
    );
}
