//! Upstream selection and malformed requests, observed through the fake upstream.

use http::Method;

use crate::support::*;

const M: &[u8] = br#"{"schemaVersion":2}"#;

#[tokio::test]
async fn ns_path_prefix_and_default_reach_the_right_upstream() {
    let cases = [
        (
            "/v2/library/alpine/manifests/3?ns=docker.io",
            "docker.io",
            "library/alpine",
        ),
        (
            "/v2/alpine/manifests/3?ns=index.docker.io",
            "docker.io",
            "library/alpine",
        ),
        (
            "/v2/alpine/manifests/3?ns=registry-1.docker.io",
            "docker.io",
            "library/alpine",
        ),
        ("/v2/alpine/manifests/3", "docker.io", "library/alpine"),
        (
            "/v2/docker.io/alpine/manifests/3",
            "docker.io",
            "library/alpine",
        ),
        (
            "/v2/org/app/manifests/v1?ns=ghcr%2Eio",
            "ghcr.io",
            "org/app",
        ),
        ("/v2/ghcr.io/org/app/manifests/v1", "ghcr.io", "org/app"),
    ];
    for (uri, registry, repository) in cases {
        // A fresh cache each time, so every request has to ask upstream.
        let (svc, fake) = fake_service();
        fake.add_manifest("docker.io", "library/alpine", "3", OCI_MANIFEST, M);
        fake.add_manifest("ghcr.io", "org/app", "v1", OCI_MANIFEST, M);
        let a = get(&svc, uri).await;
        assert_eq!(a.status, 200, "{uri}: {:?}", a.body);
        let asked = fake.asked();
        assert!(!asked.is_empty(), "{uri}: upstream not asked");
        for (r, repo, _) in asked {
            assert_eq!((r.as_str(), repo.as_str()), (registry, repository), "{uri}");
        }
    }
}

#[tokio::test]
async fn ns_is_echoed() {
    let (svc, fake) = fake_service();
    fake.add_manifest("ghcr.io", "org/app", "v1", OCI_MANIFEST, M);
    let a = get(&svc, "/v2/org/app/manifests/v1?ns=ghcr.io").await;
    assert_eq!(a.header("oci-namespace"), Some("ghcr.io"));
    let b = get(&svc, "/v2/ghcr.io/org/app/manifests/v1").await;
    assert_eq!(b.header("oci-namespace"), None);
}

#[tokio::test]
async fn unconfigured_upstreams_are_refused_without_upstream_calls() {
    let (svc, fake) = fake_service();
    for uri in [
        "/v2/library/alpine/manifests/3?ns=evil.example",
        "/v2/library/alpine/manifests/3?ns=evil.example%3A443",
        "/v2/library/alpine/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855?ns=quay.io",
        "/v2/library/alpine/tags/list?ns=127.0.0.1",
    ] {
        let a = get(&svc, uri).await;
        assert_eq!(a.status, 404, "{uri}");
        assert_eq!(a.error_code(), "NAME_UNKNOWN", "{uri}");
    }
    assert_eq!(
        fake.calls().total(),
        0,
        "no outbound request for an unknown upstream"
    );
}

#[tokio::test]
async fn malformed_requests_get_oci_errors() {
    let (svc, fake) = fake_service();
    let cases = [
        ("/v2/Library/alpine/manifests/3", 400, "NAME_INVALID"),
        ("/v2/a//b/manifests/3", 400, "NAME_INVALID"),
        ("/v2/alpine/manifests/-bad", 404, "MANIFEST_UNKNOWN"),
        ("/v2/alpine/manifests/sha256:123", 400, "DIGEST_INVALID"),
        ("/v2/alpine/blobs/sha256:XYZ", 400, "DIGEST_INVALID"),
        (
            "/v2/alpine/tags/list?n=ten",
            400,
            "PAGINATION_NUMBER_INVALID",
        ),
        ("/v2/alpine/unknown/thing", 404, "NAME_UNKNOWN"),
        ("/other", 404, "NAME_UNKNOWN"),
    ];
    for (uri, status, code) in cases {
        let a = get(&svc, uri).await;
        assert_eq!(a.status, status, "{uri}");
        assert_eq!(a.error_code(), code, "{uri}");
        assert_eq!(a.header("content-type"), Some("application/json"));
    }
    // HEAD errors carry the status and length but no body.
    let h = call(&svc, Method::HEAD, "/v2/Library/alpine/manifests/3", &[]).await;
    assert_eq!(h.status, 400);
    assert!(h.body.is_empty());
    assert_eq!(fake.calls().total(), 0);
}

#[tokio::test]
async fn a_registry_in_the_path_that_is_not_configured_is_unknown_not_a_repository() {
    let (svc, fake) = fake_service();
    // What the default upstream would have been asked for, were these names.
    fake.add_manifest("docker.io", "quay.io/app", "v1", OCI_MANIFEST, M);
    fake.add_manifest("docker.io", "localhost/app", "v1", OCI_MANIFEST, M);
    for (uri, registry) in [
        ("/v2/quay.io/app/manifests/v1", "quay.io"),
        (
            "/v2/evil.example:8443/org/app/manifests/v1",
            "evil.example:8443",
        ),
        ("/v2/localhost/app/manifests/v1", "localhost"),
        ("/v2/10.0.0.1/app/tags/list", "10.0.0.1"),
    ] {
        for method in [Method::GET, Method::HEAD] {
            let a = call(&svc, method.clone(), uri, &[]).await;
            assert_eq!(a.status, 404, "{method} {uri}");
            if method == Method::GET {
                assert_eq!(a.error_code(), "NAME_UNKNOWN", "{uri}");
                let body = String::from_utf8_lossy(&a.body);
                assert!(body.contains(registry), "{uri}: {body}");
            }
        }
    }
    assert_eq!(
        fake.calls().total(),
        0,
        "nothing may leave for an unconfigured registry"
    );
}

/// The doctor's probe repository is answered from memory under every
/// upstream, never asked upstream, and each nonce pulled is recorded.
#[tokio::test]
async fn the_doctor_probe_is_served_from_memory_and_recorded() {
    let (svc, fake) = fake_service();
    let unseen = get(&svc, "/doctor/probe/n1").await;
    assert_eq!(unseen.status, 200);
    assert_eq!(unseen.json()["seen"], false);
    for uri in [
        "/v2/oci-cache-doctor/probe/manifests/n1?ns=docker.io",
        "/v2/ghcr.io/oci-cache-doctor/probe/manifests/n1",
        "/v2/oci-cache-doctor/probe/manifests/n1",
    ] {
        let manifest = get(&svc, uri).await;
        assert_eq!(manifest.status, 200, "{uri}: {:?}", manifest.body);
        let json = manifest.json();
        for blob in [&json["config"], &json["layers"][0]] {
            let digest = blob["digest"].as_str().unwrap();
            let got = get(
                &svc,
                &format!("/v2/oci-cache-doctor/probe/blobs/{digest}?ns=docker.io"),
            )
            .await;
            assert_eq!(got.status, 200);
            assert_eq!(got.body.len() as u64, blob["size"].as_u64().unwrap());
            assert_eq!(got.header("docker-content-digest"), Some(digest));
        }
    }
    let seen = get(&svc, "/doctor/probe/n1").await.json();
    assert_eq!(seen["seen"], true);
    assert_eq!(seen["requests"].as_array().unwrap().len(), 3);
    assert_eq!(get(&svc, "/doctor/probe/n2").await.json()["seen"], false);
    let other = get(
        &svc,
        "/v2/oci-cache-doctor/probe/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    )
    .await;
    assert_eq!(other.status, 404);
    assert_eq!(
        call(&svc, Method::POST, "/doctor/probe/n1", &[])
            .await
            .status,
        405
    );
    assert_eq!(fake.calls().total(), 0, "the probe reached upstream");
}
