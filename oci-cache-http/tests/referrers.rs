//! OCI 1.1 referrers of cached repositories over HTTP: the upstream client
//! against a scripted registry that has the referrers API, and the service
//! answering `…/referrers/<digest>` from it, from its record, and stale.

use std::sync::Arc;
use std::time::Duration;

use oci_cache_core::cache::CacheOptions;
use oci_cache_core::digest::Digest;
use oci_cache_core::storage::{MemoryStorage, Storage};
use oci_cache_core::upstream::Upstream;
use oci_cache_core::{Error, UpstreamErrorKind};
use oci_cache_http::{Mirror, OciService};

use crate::auth::client;
use crate::support::*;

const SBOM: &str = "application/spdx+json";
const SIGNATURE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

fn subject() -> Digest {
    Digest::sha256_of(b"the image")
}

/// A referrers descriptor as a registry with the API lists it.
fn descriptor(name: &str, artifact_type: &str) -> serde_json::Value {
    serde_json::json!({
        "mediaType": OCI_MANIFEST,
        "digest": Digest::sha256_of(name.as_bytes()).to_string(),
        "size": 321,
        "artifactType": artifact_type,
        "annotations": {"org.example.name": name},
    })
}

fn page(entries: &[serde_json::Value]) -> Reply {
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
    });
    Reply::ok(serde_json::to_vec(&body).unwrap()).header("content-type", OCI_INDEX)
}

#[tokio::test]
async fn the_upstream_client_reads_every_page_of_the_referrers_api() {
    let origin = MockRegistry::start().await;
    let up = client(mirrors(&origin.url()));
    let path = format!("/v2/org/app/referrers/{}", subject());
    origin
        .push(
            page(&[descriptor("sbom", SBOM)])
                .header("link", &format!("<{path}?last=1>; rel=\"next\"")),
        )
        .push(page(&[descriptor("sig", SIGNATURE)]));
    let listed = up
        .referrers(&registry("docker.io"), &repo("org/app"), &subject())
        .await
        .unwrap()
        .expect("the upstream has the API");
    let types: Vec<_> = listed.iter().map(|r| r.artifact_type.as_deref()).collect();
    assert_eq!(types, [Some(SBOM), Some(SIGNATURE)]);
    assert_eq!(listed[1].annotations["org.example.name"], "sig");
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].uri, path);
    assert_eq!(seen[0].header("accept"), Some(OCI_INDEX));
    assert_eq!(seen[1].uri, format!("{path}?last=1"));
}

#[tokio::test]
async fn the_upstream_client_reads_a_404_as_no_api_and_refuses_what_is_no_index() {
    let origin = MockRegistry::start().await;
    let up = client(mirrors(&origin.url()));
    let (hub, app, subject) = (registry("docker.io"), repo("org/app"), subject());
    let ask = || up.referrers(&hub, &app, &subject);

    // distribution 2.8: no such route.
    origin.push(Reply::status(404).body("404 page not found\n"));
    assert_eq!(ask().await.unwrap(), None);

    // A body that is not an image index, or not sent as one: not cached as a list.
    origin.push(Reply::ok("<html></html>").header("content-type", "text/html"));
    let err = ask().await.unwrap_err();
    assert!(
        matches!(&err, Error::Upstream(e) if e.kind() == UpstreamErrorKind::Invalid),
        "{err}"
    );
    origin.push(Reply::ok("[1,2]").header("content-type", OCI_INDEX));
    assert!(ask().await.is_err());

    // Larger than a manifest may be: refused, not buffered.
    let huge = vec![descriptor("x", SBOM); 40_000];
    origin.push(page(&huge));
    let err = ask().await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
}

/// A mirror of `origin` over `storage`, trusting what it learned for `ttl`.
fn mirror_of(origin: &MockRegistry, storage: &Arc<MemoryStorage>, ttl: Duration) -> OciService {
    let storage: Arc<dyn Storage> = storage.clone();
    Mirror::builder()
        .upstreams(mirrors(&origin.url()))
        .storage(storage)
        .cache_options(CacheOptions::default().with_tag_ttl(ttl))
        .build()
        .unwrap()
        .service()
}

fn artifact_types(answer: &Answer) -> Vec<String> {
    answer.json()["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["artifactType"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_cached_repository_answers_referrers_from_the_upstream_api_then_from_its_record() {
    let origin = MockRegistry::start().await;
    let storage = Arc::new(MemoryStorage::new());
    let svc = mirror_of(&origin, &storage, Duration::from_secs(3600));
    let path = format!("/v2/ghcr.io/org/app/referrers/{}", subject());
    origin.push(page(&[
        descriptor("sbom", SBOM),
        descriptor("sig", SIGNATURE),
    ]));

    let learned = get(&svc, &path).await;
    assert_eq!(learned.status, 200);
    assert_eq!(learned.header("content-type"), Some(OCI_INDEX));
    assert_eq!(learned.header("oci-cache-referrers-source"), Some("api"));
    assert_eq!(learned.header("oci-filters-applied"), None);
    assert_eq!(learned.json()["mediaType"], OCI_INDEX);
    assert_eq!(artifact_types(&learned), [SBOM, SIGNATURE]);
    assert_eq!(
        learned.json()["manifests"][0],
        descriptor("sbom", SBOM),
        "descriptors pass through whole"
    );
    // The whole list is asked for once, unfiltered; filters apply locally.
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, format!("/v2/org/app/referrers/{}", subject()));

    let filtered = get(&svc, &format!("{path}?artifactType={SBOM}")).await;
    assert_eq!(filtered.status, 200);
    assert_eq!(filtered.header("oci-filters-applied"), Some("artifactType"));
    assert_eq!(filtered.header("oci-cache-referrers-source"), Some("cache"));
    assert_eq!(artifact_types(&filtered), [SBOM]);
    assert_eq!(origin.count(), 1, "a fresh list is not asked again");

    // Nothing refers to it: an empty index, 200.
    origin.push(page(&[]));
    let empty = get(
        &svc,
        &format!("/v2/ghcr.io/org/app/referrers/{}", Digest::sha256_of(b"x")),
    )
    .await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.json()["manifests"], serde_json::json!([]));

    // An upstream that is not configured: 404 NAME_UNKNOWN, nothing asked.
    let unknown = get(
        &svc,
        &format!("/v2/evil.example/org/app/referrers/{}", subject()),
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error_code(), "NAME_UNKNOWN");
    assert_eq!(origin.count(), 2);

    // Past the TTL with the upstream failing: the stored list, stale.
    let stale_svc = mirror_of(&origin, &storage, Duration::ZERO);
    for _ in 0..3 {
        origin.push(Reply::status(503));
    }
    let stale = get(&stale_svc, &format!("{path}?artifactType={SIGNATURE}")).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.header("oci-cache-referrers-source"), Some("cache"));
    assert_eq!(artifact_types(&stale), [SIGNATURE]);
    assert!(origin.count() > 2, "the upstream was asked again");
}
