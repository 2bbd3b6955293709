//! Issue 29 items 2 and 4: artifacts of any media type (Helm charts, cosign
//! signatures and attestations, SBOMs, WASM, ORAS-style artifacts with the
//! empty config, an index of artifacts) pass through the mirror byte-exact,
//! by tag and by digest, with skopeo and a plain HTTP client; and a `HEAD`
//! on a cold manifest reaches the origin as a `HEAD` only.

use serde_json::{json, Value};

use crate::support::http::{self, sha256_digest};
use crate::support::image::{
    build_artifact, build_artifact_index, ArtifactSpec, Layout, OCI_INDEX, OCI_MANIFEST,
};
use crate::support::mirror::Mirror;
use crate::support::registry::Origin;
use crate::support::{skopeo, tools_available};

const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
/// The `Accept` of docker, containerd and oras-go: all four manifest types.
/// (A client accepting fewer is served by digest from the cache, but by tag
/// the mirror asks upstream with its own `Accept` each time.)
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// How skopeo 1.9 refuses to copy an index of artifacts with `--preserve-digests`.
const SKOPEO_INDEX_REFUSAL: &str = "Manifest list must be converted";

fn spec(
    artifact_type: Option<&str>,
    config: (&str, &[u8]),
    layers: &[(&str, &[u8], Value)],
    annotations: Value,
) -> ArtifactSpec {
    ArtifactSpec {
        artifact_type: artifact_type.map(str::to_owned),
        config_media_type: config.0.to_owned(),
        config: config.1.to_vec(),
        layers: layers
            .iter()
            .map(|(t, b, a)| ((*t).to_owned(), b.to_vec(), a.clone()))
            .collect(),
        annotations,
    }
}

fn helm_chart() -> ArtifactSpec {
    spec(
        None,
        (
            "application/vnd.cncf.helm.config.v1+json",
            br#"{"name":"e2e-chart","version":"0.1.0","apiVersion":"v2"}"#,
        ),
        &[(
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
            // Not a real tarball: the mirror must not care.
            b"\x1f\x8b\x08\x00chart-bytes-e2e",
            Value::Null,
        )],
        Value::Null,
    )
}

fn cosign_signature() -> ArtifactSpec {
    let payload = br#"{"critical":{"identity":{"docker-reference":"origin.test/e2e/app"},"image":{"docker-manifest-digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"},"type":"cosign container image signature"},"optional":null}"#;
    spec(
        None,
        (
            "application/vnd.oci.image.config.v1+json",
            br#"{"architecture":"","config":{},"created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":[]}}"#,
        ),
        &[(
            "application/vnd.dev.cosign.simplesigning.v1+json",
            payload,
            json!({"dev.cosignproject.cosign/signature": "MEUCIQDe2eSignatureBytesNotChecked=="}),
        )],
        Value::Null,
    )
}

fn empty_config_artifact(artifact_type: &str, media_type: &str, bytes: &[u8]) -> ArtifactSpec {
    spec(
        Some(artifact_type),
        (EMPTY_CONFIG, b"{}"),
        &[(
            media_type,
            bytes,
            json!({"org.opencontainers.image.title": "payload"}),
        )],
        json!({"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}),
    )
}

pub(super) fn sbom() -> ArtifactSpec {
    empty_config_artifact(
        "application/spdx+json",
        "application/spdx+json",
        br#"{"spdxVersion":"SPDX-2.3","name":"e2e"}"#,
    )
}

/// Every single artifact pushed, as (`repo:tag`, layout).
fn artifacts(dir: &std::path::Path) -> Vec<(&'static str, Layout)> {
    let attestation = empty_config_artifact(
        "application/vnd.dsse.envelope.v1+json",
        "application/vnd.dsse.envelope.v1+json",
        br#"{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[]}"#,
    );
    let wasm = spec(
        Some("application/vnd.wasm.content.layer.v1+wasm"),
        (
            "application/vnd.wasm.config.v0+json",
            br#"{"created":"2024-01-01T00:00:00Z"}"#,
        ),
        &[(
            "application/vnd.wasm.content.layer.v1+wasm",
            b"\0asm\x01\0\0\0",
            Value::Null,
        )],
        Value::Null,
    );
    let model = empty_config_artifact(
        "application/vnd.example.model.v1",
        "application/octet-stream",
        &(0..=255u8).cycle().take(70_000).collect::<Vec<u8>>(),
    );
    vec![
        (
            "e2e/chart:0.1.0",
            build_artifact(&dir.join("chart"), "t", &helm_chart()),
        ),
        (
            "e2e/app:sha256-0000.sig",
            build_artifact(&dir.join("sig"), "t", &cosign_signature()),
        ),
        (
            "e2e/app:att",
            build_artifact(&dir.join("att"), "t", &attestation),
        ),
        (
            "e2e/sbom:v1",
            build_artifact(&dir.join("sbom"), "t", &sbom()),
        ),
        ("e2e/wasm:v1", build_artifact(&dir.join("wasm"), "t", &wasm)),
        (
            "e2e/model:v1",
            build_artifact(&dir.join("model"), "t", &model),
        ),
    ]
}

/// An index of a chart, a signature and an SBOM, pushed to `origin` as
/// `e2e/bundle:v1`. skopeo 1.9 refuses to push an index of artifacts with
/// `--preserve-digests` ([`SKOPEO_INDEX_REFUSAL`]), so the children
/// go with skopeo and the index with a plain `PUT`.
fn push_bundle(dir: &std::path::Path, origin: &Origin) -> Layout {
    let children = [helm_chart(), cosign_signature(), sbom()];
    for (i, child) in children.iter().enumerate() {
        let layout = build_artifact(&dir.join(format!("bundle-{i}")), "t", child);
        skopeo::push(&layout, &origin.host(), &format!("e2e/bundle:child-{i}"));
    }
    let bundle = build_artifact_index(&dir.join("bundle"), "t", &children);
    let put = http::request_with_body(
        &origin.host(),
        "PUT",
        "/v2/e2e/bundle/manifests/v1",
        &[("Content-Type", OCI_INDEX)],
        &read(&bundle, &bundle.digest),
    )
    .unwrap();
    assert_eq!(put.status, 201, "{}", String::from_utf8_lossy(&put.body));
    bundle
}

fn is_index(layout: &Layout) -> bool {
    layout.digest != layout.images[0].manifest.digest
}

fn read(layout: &Layout, digest: &str) -> Vec<u8> {
    std::fs::read(layout.blob_path(digest)).unwrap()
}

/// Every manifest (the top one and an index's children) and blob of `layout`.
fn manifests_and_blobs(layout: &Layout) -> (Vec<String>, Vec<String>) {
    let mut manifests = vec![layout.digest.clone()];
    if is_index(layout) {
        manifests.extend(layout.images.iter().map(|i| i.manifest.digest.clone()));
    }
    let mut blobs: Vec<String> = layout.all_blobs().into_iter().map(|b| b.digest).collect();
    blobs.sort();
    blobs.dedup();
    (manifests, blobs)
}

/// GETs every manifest (by tag and by digest) and blob of `layout` through
/// the mirror with a plain HTTP client and checks the bytes.
fn pull_by_http(mirror: &str, repo_tag: &str, layout: &Layout) {
    let (repo, tag) = repo_tag.split_once(':').unwrap();
    let (manifests, blobs) = manifests_and_blobs(layout);
    let top_type = if is_index(layout) {
        OCI_INDEX
    } else {
        OCI_MANIFEST
    };
    for (i, reference) in std::iter::once(tag.to_owned())
        .chain(manifests.clone())
        .enumerate()
    {
        let digest = if i == 0 { &layout.digest } else { &reference };
        let path = format!("/v2/{repo}/manifests/{reference}");
        let got = http::request(mirror, "GET", &path, &[("Accept", ACCEPT)]).unwrap();
        assert_eq!(
            got.status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&got.body)
        );
        assert_eq!(got.body, read(layout, digest), "GET {path}: bytes differ");
        assert_eq!(
            got.header("docker-content-digest"),
            Some(digest.as_str()),
            "GET {path}"
        );
        assert_eq!(sha256_digest(&got.body), *digest);
        if i < 2 {
            assert_eq!(got.header("content-type"), Some(top_type), "GET {path}");
        }
    }
    for digest in blobs {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let got = http::request(mirror, "GET", &path, &[]).unwrap();
        assert_eq!(got.status, 200, "GET {path}");
        assert_eq!(got.body, read(layout, &digest), "GET {path}: bytes differ");
    }
}

#[test]
fn artifacts_of_any_media_type_pass_through_byte_exact() {
    if !tools_available("artifacts_of_any_media_type_pass_through_byte_exact") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut pushed = artifacts(work.path());
    let origin = Origin::start();
    for (repo_tag, layout) in &pushed {
        skopeo::push(layout, &origin.host(), repo_tag);
        // distribution 2.8 keeps what it does not know (`artifactType`).
        let (repo, tag) = repo_tag.split_once(':').unwrap();
        assert_eq!(
            origin.manifest_digest(repo, tag),
            layout.digest,
            "{repo_tag} on the origin"
        );
    }
    let bundle = push_bundle(work.path(), &origin);
    assert_eq!(origin.manifest_digest("e2e/bundle", "v1"), bundle.digest);
    pushed.push(("e2e/bundle:v1", bundle));
    let origin_url = origin.url();
    let mirror = Mirror::start_oci_cache(&[("origin.test", &origin_url)], "origin.test", "5m");
    let m = mirror.host();

    // Cold then warm, by a plain HTTP client: byte-exact, and warm asks nothing.
    for (repo_tag, layout) in &pushed {
        pull_by_http(&m, repo_tag, layout);
    }
    let cold = origin.records().len();
    for (repo_tag, layout) in &pushed {
        pull_by_http(&m, repo_tag, layout);
    }
    assert_eq!(
        origin.records().len(),
        cold,
        "warm pulls reached the origin"
    );

    // skopeo by tag and by digest: the same digests, every blob (it verifies them).
    let mut refused = Vec::new();
    for (i, (repo_tag, layout)) in pushed.iter().enumerate() {
        let (repo, _) = repo_tag.split_once(':').unwrap();
        for (j, src) in [
            format!("{m}/{repo_tag}"),
            format!("{m}/{repo}@{}", layout.digest),
        ]
        .iter()
        .enumerate()
        {
            let dest = work.path().join(format!("copy-{i}-{j}"));
            let got = match skopeo::copy(src, &dest) {
                // The index of artifacts is checked by the HTTP client above.
                // skopeo's own limit, not the mirror's: the origin gets the same refusal.
                Err(e) if is_index(layout) && e.contains(SKOPEO_INDEX_REFUSAL) => {
                    refused.push(format!("{}/{repo}@{}", origin.host(), layout.digest));
                    continue;
                }
                got => got.unwrap_or_else(|e| panic!("{e}")),
            };
            assert_eq!(got.digest, layout.digest, "skopeo {src}");
            let (manifests, blobs) = manifests_and_blobs(layout);
            let mut want: Vec<String> = manifests.into_iter().chain(blobs).collect();
            want.sort();
            want.dedup();
            assert_eq!(skopeo::layout_blobs(&dest), want, "skopeo {src}");
            for digest in &want {
                assert_eq!(
                    std::fs::read(dest.join("blobs/sha256").join(&digest[7..])).unwrap(),
                    read(layout, digest)
                );
            }
        }
    }
    assert_eq!(
        origin.records().len(),
        cold,
        "skopeo of cached artifacts reached the origin"
    );
    for (k, src) in refused.iter().enumerate() {
        let direct = skopeo::copy(src, &work.path().join(format!("direct-{k}")));
        assert!(
            direct
                .as_ref()
                .is_err_and(|e| e.contains(SKOPEO_INDEX_REFUSAL)),
            "skopeo copies {src} from the origin but not through the mirror: {direct:?}"
        );
    }
}

#[test]
fn head_on_a_cold_manifest_reaches_the_origin_as_a_head() {
    if !tools_available("head_on_a_cold_manifest_reaches_the_origin_as_a_head") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let chart = build_artifact(&work.path().join("chart"), "t", &helm_chart());
    let origin = Origin::start();
    skopeo::push(&chart, &origin.host(), "e2e/chart:0.1.0");
    let before = origin.records().len();
    let origin_url = origin.url();
    let mirror = Mirror::start_oci_cache(&[("origin.test", &origin_url)], "origin.test", "5m");
    let m = mirror.host();
    let manifest = read(&chart, &chart.digest);
    let path = "/v2/e2e/chart/manifests/0.1.0";

    let head = http::request(&m, "HEAD", path, &[("Accept", ACCEPT)]).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("docker-content-digest"),
        Some(chart.digest.as_str())
    );
    assert_eq!(head.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(
        head.header("content-length"),
        Some(manifest.len().to_string().as_str())
    );
    let methods = || -> Vec<String> {
        origin.records()[before..]
            .iter()
            .map(|r| r.method.clone())
            .collect()
    };
    assert_eq!(methods(), ["HEAD"], "a cold HEAD");

    let got = http::request(&m, "GET", path, &[("Accept", ACCEPT)]).unwrap();
    assert_eq!(got.body, manifest);
    assert_eq!(methods(), ["HEAD", "GET"], "the GET after it fetches once");
    let again = http::request(&m, "HEAD", path, &[("Accept", ACCEPT)]).unwrap();
    assert_eq!(
        again.header("docker-content-digest"),
        Some(chart.digest.as_str())
    );
    assert_eq!(methods(), ["HEAD", "GET"], "a warm HEAD asks nothing");
}
