//! OCI 1.1 referrers of cached repositories over HTTP: the upstream client
//! against a scripted registry that has the referrers API, and the service
//! answering `…/referrers/<digest>` from it, from its record, and stale.

use oci_cache_core::digest::Digest;
use oci_cache_core::upstream::Upstream;
use oci_cache_core::{Error, UpstreamErrorKind};

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
