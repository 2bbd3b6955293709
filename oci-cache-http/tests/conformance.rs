//! Conformance-style tests of hosted repositories (`local/…`), written
//! against the text of the OCI distribution spec (spec.md, "Pull", "Push",
//! "Content Management"), run on the in-process service with memory and
//! filesystem storage. Every test also checks that nothing went upstream.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use oci_cache_core::digest::Digest;
use oci_cache_core::storage::{FsStorage, MemoryStorage, Storage};
use oci_cache_core::testing::BlobScript;
use oci_cache_http::{Mirror, OciService};

use crate::support::*;

const APP: &str = "/v2/local/app";

struct Registry {
    svc: OciService,
    fake: Arc<FakeUpstream>,
    storage: Arc<dyn Storage>,
    _dir: Option<tempfile::TempDir>,
}

fn build(storage: Arc<dyn Storage>, fake: Arc<FakeUpstream>) -> OciService {
    Mirror::builder()
        .upstreams(mirrors("http://127.0.0.1:9"))
        .storage(storage)
        .upstream(fake)
        .local_prefixes(["local"])
        .build()
        .unwrap()
        .service()
}

/// One registry per backend the suite runs on.
async fn registries() -> Vec<Registry> {
    let dir = tempfile::tempdir().unwrap();
    let fs: Arc<dyn Storage> = Arc::new(FsStorage::open(dir.path()).await.unwrap());
    let memory: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    [(memory, None), (fs, Some(dir))]
        .into_iter()
        .map(|(storage, dir)| {
            let fake = Arc::new(FakeUpstream::new());
            Registry {
                svc: build(Arc::clone(&storage), Arc::clone(&fake)),
                fake,
                storage,
                _dir: dir,
            }
        })
        .collect()
}

async fn send(
    svc: &OciService,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut builder = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = svc
        .handle(builder.body(Full::new(body.into())).unwrap())
        .await;
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// `POST {APP}/blobs/uploads/{query}` with no body: a new session, or a
/// mount when `query` names one.
async fn post_upload(svc: &OciService, query: &str) -> Answer {
    send(
        svc,
        Method::POST,
        &format!("{APP}/blobs/uploads/{query}"),
        &[],
        "",
    )
    .await
}

/// Opens an upload session in `APP`; returns its `Location`.
async fn start_upload(svc: &OciService) -> String {
    let a = post_upload(svc, "").await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    a.header("location").unwrap().to_owned()
}

/// Sends one chunk of a session with its `Content-Range` (`start-end`).
async fn patch(svc: &OciService, location: &str, range: &str, chunk: impl Into<Bytes>) -> Answer {
    send(
        svc,
        Method::PATCH,
        location,
        &[("content-range", range)],
        chunk,
    )
    .await
}

/// Closes a session with `PUT ?digest=`, sending `last` as the final chunk.
async fn finish(
    svc: &OciService,
    location: &str,
    digest: &Digest,
    last: impl Into<Bytes>,
) -> Answer {
    send(
        svc,
        Method::PUT,
        &format!("{location}?digest={digest}"),
        &[],
        last,
    )
    .await
}

async fn put_manifest(
    svc: &OciService,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: impl Into<Bytes>,
) -> Answer {
    send(
        svc,
        Method::PUT,
        &format!("{repo}/manifests/{reference}"),
        &[("content-type", media_type)],
        body,
    )
    .await
}

async fn delete(svc: &OciService, uri: &str) -> Answer {
    send(svc, Method::DELETE, uri, &[], "").await
}

/// The status and the spec's error `code` of an answer, together so a
/// failure shows both.
#[track_caller]
fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!((a.status.as_u16(), a.error_code().as_str()), (status, code));
}

/// Pushes a blob monolithically (`POST ?digest=`); returns its digest.
async fn push_blob(svc: &OciService, repo: &str, bytes: &[u8]) -> Digest {
    let digest = Digest::sha256_of(bytes);
    let a = send(
        svc,
        Method::POST,
        &format!("{repo}/blobs/uploads/?digest={digest}"),
        &[("content-type", "application/octet-stream")],
        Bytes::copy_from_slice(bytes),
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    digest
}

fn image_manifest(config: &Digest, config_size: usize, layers: &[(&Digest, usize)]) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, n)| {
            format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{n}}}"#)
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_size}}},"layers":[{}]}}"#,
        layers.join(",")
    )
}

/// Pushes a config and one layer and a manifest under `tag`; returns the manifest digest.
async fn push_image(svc: &OciService, repo: &str, tag: &str, layer: &[u8]) -> (Digest, String) {
    let config = push_blob(svc, repo, b"{\"architecture\":\"amd64\"}").await;
    let layer_digest = push_blob(svc, repo, layer).await;
    let manifest = image_manifest(&config, 24, &[(&layer_digest, layer.len())]);
    let a = put_manifest(svc, repo, tag, OCI_MANIFEST, manifest.clone()).await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let digest = Digest::sha256_of(manifest.as_bytes());
    assert_eq!(a.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(
        a.header("location"),
        Some(format!("{repo}/manifests/{digest}").as_str())
    );
    (digest, manifest)
}

#[tokio::test]
async fn push_then_pull_by_tag_and_digest() {
    for r in registries().await {
        let svc = &r.svc;
        let (digest, manifest) = push_image(svc, APP, "v1", b"layer one").await;
        for reference in ["v1", digest.as_str()] {
            let a = get(svc, &format!("{APP}/manifests/{reference}")).await;
            assert_eq!(a.status, 200, "{reference}");
            assert_eq!(a.body, manifest.as_bytes());
            assert_eq!(a.header("content-type"), Some(OCI_MANIFEST));
            assert_eq!(a.header("docker-content-digest"), Some(digest.as_str()));
            let head = call(
                svc,
                Method::HEAD,
                &format!("{APP}/manifests/{reference}"),
                &[],
            )
            .await;
            assert_eq!(head.status, 200);
            assert_eq!(
                head.header("content-length"),
                Some(manifest.len().to_string().as_str())
            );
            assert!(head.body.is_empty());
        }
        let layer = Digest::sha256_of(b"layer one");
        let a = get(svc, &format!("{APP}/blobs/{layer}")).await;
        assert_eq!(
            (a.status.as_u16(), a.body.as_ref()),
            (200, &b"layer one"[..])
        );
        let ranged = call(
            svc,
            Method::GET,
            &format!("{APP}/blobs/{layer}"),
            &[("range", "bytes=6-")],
        )
        .await;
        assert_eq!(
            (ranged.status.as_u16(), ranged.body.as_ref()),
            (206, &b"one"[..])
        );
        assert_eq!(ranged.header("content-range"), Some("bytes 6-8/9"));
        // Missing content is a 404 with the spec's code, never an upstream fetch.
        let missing = Digest::sha256_of(b"nope");
        let a = get(svc, &format!("{APP}/manifests/v2")).await;
        assert_error(&a, 404, "MANIFEST_UNKNOWN");
        let a = get(svc, &format!("{APP}/blobs/{missing}")).await;
        assert_error(&a, 404, "BLOB_UNKNOWN");
        // Whatever upstream `ns` names (Kind's containerd sends its registry host).
        for ns in ["localhost%3A5001", "docker.io"] {
            let a = get(svc, &format!("{APP}/manifests/v1?ns={ns}")).await;
            assert_eq!(a.body, manifest.as_bytes(), "ns={ns}");
        }
        let a = get(svc, &format!("/v2/local/other/manifests/{digest}")).await;
        assert_eq!(
            a.status, 404,
            "a manifest belongs to the repository it was pushed to"
        );
        assert_eq!(r.fake.calls().total(), 0);
    }
}

#[tokio::test]
async fn post_then_put_and_chunked_patch_with_progress() {
    for r in registries().await {
        let svc = &r.svc;
        // POST then a single PUT with the whole body.
        let a = post_upload(svc, "").await;
        assert_eq!(a.status, 202);
        let location = a.header("location").unwrap().to_owned();
        assert!(
            location.starts_with(&format!("{APP}/blobs/uploads/")),
            "{location}"
        );
        assert_eq!(a.header("range"), Some("0-0"));
        let uuid = a.header("docker-upload-uuid").unwrap().to_owned();
        assert!(location.ends_with(&uuid));
        let body = b"monolithic via put";
        let digest = Digest::sha256_of(body);
        let a = finish(svc, &location, &digest, &body[..]).await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        assert_eq!(
            a.header("location"),
            Some(format!("{APP}/blobs/{digest}").as_str())
        );
        assert_eq!(
            get(svc, &format!("{APP}/blobs/{digest}")).await.body,
            &body[..]
        );

        // Chunks with Content-Range, progress after each, then PUT with no body.
        let content: Vec<u8> = (0..100u8).collect();
        let digest = Digest::sha256_of(&content);
        let mut location = start_upload(svc).await;
        for (start, end) in [(0usize, 39usize), (40, 79), (80, 99)] {
            let range = format!("{start}-{end}");
            // The spec's chunk headers in full, where `patch` sends only the range.
            let a = send(
                svc,
                Method::PATCH,
                &location,
                &[
                    ("content-range", &range),
                    ("content-type", "application/octet-stream"),
                ],
                content[start..=end].to_vec(),
            )
            .await;
            assert_eq!(a.status, 202, "{range}: {:?}", a.body);
            assert_eq!(a.header("range"), Some(format!("0-{end}").as_str()));
            location = a.header("location").unwrap().to_owned();
            let progress = get(svc, &location).await;
            assert_eq!(progress.status, 204);
            assert_eq!(progress.header("range"), Some(format!("0-{end}").as_str()));
            assert!(progress.header("docker-upload-uuid").is_some());
        }
        // Out of order: 416 with the current range; nothing changes.
        let a = patch(svc, &location, "150-159", vec![0u8; 10]).await;
        assert_eq!(a.status, 416);
        assert_eq!(a.header("range"), Some("0-99"));
        let a = finish(svc, &location, &digest, "").await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        assert_eq!(
            get(svc, &format!("{APP}/blobs/{digest}")).await.body,
            content
        );
        // The session is gone once finished.
        assert_error(&get(svc, &location).await, 404, "BLOB_UPLOAD_UNKNOWN");
        assert_eq!(r.fake.calls().total(), 0);
    }
}

#[tokio::test]
async fn corrupt_uploads_leave_nothing_visible() {
    for r in registries().await {
        let svc = &r.svc;
        let claimed = Digest::sha256_of(b"the real content");
        // Monolithic with the wrong bytes.
        let a = send(
            svc,
            Method::POST,
            &format!("{APP}/blobs/uploads/?digest={claimed}"),
            &[],
            "other content",
        )
        .await;
        assert_error(&a, 400, "DIGEST_INVALID");
        // A session whose chunks miss a part (a gap the client ignored).
        let location = start_upload(svc).await;
        patch(svc, &location, "0-7", "the real").await;
        let gap = patch(svc, &location, "9-15", "content").await;
        assert_eq!(gap.status, 416);
        let a = finish(svc, &location, &claimed, "").await;
        assert_error(&a, 400, "DIGEST_INVALID");
        // A short final body.
        let location = start_upload(svc).await;
        let a = finish(svc, &location, &claimed, "the real conten").await;
        assert_eq!(a.status, 400);
        // Nothing is visible, and no upload piece was left behind.
        let a = call(svc, Method::HEAD, &format!("{APP}/blobs/{claimed}"), &[]).await;
        assert_eq!(a.status, 404);
        assert!(r.storage.blob_stat(&claimed).await.unwrap().is_none());
        use futures::StreamExt;
        assert_eq!(r.storage.blob_list().count().await, 0);
        assert_eq!(r.fake.calls().total(), 0);
    }
}

#[tokio::test]
async fn cancelled_uploads_are_unknown_afterwards() {
    for r in registries().await {
        let svc = &r.svc;
        let location = start_upload(svc).await;
        // A stream-style chunk: no Content-Range.
        send(svc, Method::PATCH, &location, &[], "some bytes").await;
        assert_eq!(delete(svc, &location).await.status, 204);
        assert_error(&get(svc, &location).await, 404, "BLOB_UPLOAD_UNKNOWN");
        let a = get(svc, &format!("{APP}/blobs/uploads/not-an-id")).await;
        assert_eq!(a.error_code(), "BLOB_UPLOAD_UNKNOWN");
    }
}

#[tokio::test]
async fn upload_sessions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeUpstream::new());
    let content = b"first half|second half";
    let digest = Digest::sha256_of(content);
    let location = {
        let storage: Arc<dyn Storage> = Arc::new(FsStorage::open(dir.path()).await.unwrap());
        let svc = build(storage, Arc::clone(&fake));
        let location = start_upload(&svc).await;
        let a = patch(&svc, &location, "0-10", &content[..11]).await;
        assert_eq!(a.status, 202);
        location
    };
    let storage: Arc<dyn Storage> = Arc::new(FsStorage::open(dir.path()).await.unwrap());
    let svc = build(storage, fake);
    let progress = get(&svc, &location).await;
    assert_eq!(
        (progress.status.as_u16(), progress.header("range")),
        (204, Some("0-10"))
    );
    let a = patch(&svc, &location, "11-21", &content[11..]).await;
    assert_eq!(a.status, 202);
    let a = finish(&svc, &location, &digest, "").await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(
        get(&svc, &format!("{APP}/blobs/{digest}")).await.body,
        &content[..]
    );
}

#[tokio::test]
async fn mounts_from_other_repositories_and_from_the_cache() {
    for r in registries().await {
        let svc = &r.svc;
        let pushed = push_blob(svc, "/v2/local/base", b"base layer").await;
        let a = post_upload(svc, &format!("?mount={pushed}&from=local/base")).await;
        assert_eq!(a.status, 201);
        assert_eq!(
            a.header("location"),
            Some(format!("{APP}/blobs/{pushed}").as_str())
        );
        // A blob the cache fetched from upstream mounts too (content-addressed).
        let cached = r.fake.add_blob(BlobScript::new(b"alpine layer"));
        assert_eq!(
            get(svc, &format!("/v2/library/alpine/blobs/{cached}"))
                .await
                .status,
            200
        );
        // The fill commits just after the client got the last byte.
        for _ in 0..200 {
            if r.storage.blob_stat(&cached).await.unwrap().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let before = r.fake.calls().total();
        let a = post_upload(svc, &format!("?mount={cached}&from=library/alpine")).await;
        assert_eq!(a.status, 201);
        assert_eq!(
            r.fake.calls().total(),
            before,
            "a mount asks nobody upstream"
        );
        // An unknown blob: the spec's fallback is a new upload session.
        let unknown = Digest::sha256_of(b"unknown");
        let a = post_upload(svc, &format!("?mount={unknown}&from=local/base")).await;
        assert_eq!(a.status, 202);
        assert!(a.header("docker-upload-uuid").is_some());
    }
}

#[tokio::test]
async fn manifest_put_checks_references_digest_size_and_answers_the_subject() {
    for r in registries().await {
        let svc = &r.svc;
        let config = Digest::sha256_of(b"{}");
        let manifest = image_manifest(&config, 2, &[]);
        let a = put_manifest(svc, APP, "v1", OCI_MANIFEST, manifest.clone()).await;
        assert_error(&a, 400, "MANIFEST_BLOB_UNKNOWN");
        push_blob(svc, APP, b"{}").await;
        let wrong = Digest::sha256_of(b"not the manifest");
        let a = put_manifest(svc, APP, wrong.as_str(), OCI_MANIFEST, manifest.clone()).await;
        assert_error(&a, 400, "DIGEST_INVALID");
        let a = put_manifest(svc, APP, "v1", OCI_MANIFEST, "not json").await;
        assert_error(&a, 400, "MANIFEST_INVALID");
        let huge = format!("{}{}", manifest, " ".repeat(5 * 1024 * 1024));
        let a = put_manifest(svc, APP, "v1", OCI_MANIFEST, huge).await;
        assert_error(&a, 413, "SIZE_INVALID");
        let by_digest = Digest::sha256_of(manifest.as_bytes());
        let a = put_manifest(svc, APP, by_digest.as_str(), OCI_MANIFEST, manifest.clone()).await;
        assert_eq!(a.status, 201);
        // OCI 1.1: a subject that does not exist is accepted and echoed.
        let subject = Digest::sha256_of(b"some image elsewhere");
        let referrer = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/example","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":10}}}}"#
        );
        let a = put_manifest(svc, APP, "sig", OCI_MANIFEST, referrer).await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        assert_eq!(a.header("oci-subject"), Some(subject.as_str()));
        // An index needs its manifests in the repository.
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{by_digest}","size":{}}}]}}"#,
            manifest.len()
        );
        let a = put_manifest(svc, "/v2/local/empty", "multi", OCI_INDEX, index.clone()).await;
        assert_error(&a, 400, "MANIFEST_BLOB_UNKNOWN");
        let a = put_manifest(svc, APP, "multi", OCI_INDEX, index).await;
        assert_eq!(a.status, 201);
        assert_eq!(r.fake.calls().total(), 0);
    }
}

#[tokio::test]
async fn content_management_tags_catalog_and_deletes() {
    for r in registries().await {
        let svc = &r.svc;
        let (digest, _) = push_image(svc, APP, "v1", b"layer").await;
        for tag in ["v2", "v3"] {
            let m = get(svc, &format!("{APP}/manifests/v1")).await;
            let a = put_manifest(svc, APP, tag, OCI_MANIFEST, m.body).await;
            assert_eq!(a.status, 201);
        }
        let a = get(svc, &format!("{APP}/tags/list")).await;
        assert_eq!(
            a.json(),
            serde_json::json!({"name": "local/app", "tags": ["v1", "v2", "v3"]})
        );
        let a = get(svc, &format!("{APP}/tags/list?n=1&last=v1")).await;
        assert_eq!(a.json()["tags"], serde_json::json!(["v2"]));
        assert!(
            a.header("link").unwrap().contains("last=v2"),
            "{:?}",
            a.header("link")
        );
        let a = get(svc, "/v2/local/nothing/tags/list").await;
        assert_error(&a, 404, "NAME_UNKNOWN");
        let catalog = get(svc, "/v2/_catalog").await.json();
        assert_eq!(catalog["repositories"], serde_json::json!(["local/app"]));

        // Deleting a tag leaves the manifest; deleting the manifest removes its tags.
        let a = delete(svc, &format!("{APP}/manifests/v3")).await;
        assert_eq!(a.status, 202);
        assert_eq!(get(svc, &format!("{APP}/manifests/v3")).await.status, 404);
        assert_eq!(
            get(svc, &format!("{APP}/manifests/{digest}")).await.status,
            200
        );
        let a = delete(svc, &format!("{APP}/manifests/{digest}")).await;
        assert_eq!(a.status, 202);
        for reference in ["v1", "v2", digest.as_str()] {
            assert_eq!(
                get(svc, &format!("{APP}/manifests/{reference}"))
                    .await
                    .status,
                404,
                "{reference}"
            );
        }
        let a = delete(svc, &format!("{APP}/manifests/{digest}")).await;
        assert_error(&a, 404, "MANIFEST_UNKNOWN");
        // Blobs are shared content: not deleted through one repository.
        let layer = Digest::sha256_of(b"layer");
        let a = delete(svc, &format!("{APP}/blobs/{layer}")).await;
        assert_error(&a, 405, "UNSUPPORTED");
        assert_eq!(r.fake.calls().total(), 0);
    }
}

#[tokio::test]
async fn writes_outside_local_prefixes_are_refused_without_upstream_requests() {
    for r in registries().await {
        let svc = &r.svc;
        for (method, path) in [
            (Method::POST, "/v2/library/alpine/blobs/uploads/"),
            (Method::PUT, "/v2/library/alpine/manifests/x"),
            (Method::DELETE, "/v2/library/alpine/manifests/x"),
            (
                Method::PATCH,
                "/v2/library/alpine/blobs/uploads/0123456789abcdef0123456789abcdef",
            ),
        ] {
            let a = send(svc, method.clone(), path, &[], "{}").await;
            assert_eq!(
                (a.status.as_u16(), a.error_code().as_str()),
                (405, "UNSUPPORTED"),
                "{method} {path}"
            );
        }
        assert_eq!(r.fake.calls().total(), 0);
    }
}

/// Pushes always need credentials; anonymous pulls of hosted repositories
/// only from a local prefix made public (issue 22: protected by default).
#[tokio::test]
async fn pushes_need_credentials_and_pulls_too_unless_the_prefix_is_public() {
    for public in [&["local"][..], &[]] {
        let dir = tempfile::tempdir().unwrap();
        let config = mirrors("http://127.0.0.1:9");
        let fake = Arc::new(FakeUpstream::new());
        let inner = build(Arc::new(MemoryStorage::new()), Arc::clone(&fake));
        let svc = behind_auth(inner, &config, dir.path(), "dev", public);
        let send =
            |method: Method, uri: String, user: Option<&'static str>, body: &'static [u8]| {
                let svc = svc.clone();
                async move {
                    let mut builder = Request::builder().method(method).uri(uri);
                    if let Some(user) = user {
                        builder = builder.header("authorization", user);
                    }
                    let response = svc
                        .handle(builder.body(Full::new(Bytes::from_static(body))).unwrap())
                        .await;
                    let status = response.status().as_u16();
                    (
                        status,
                        response.into_body().collect().await.unwrap().to_bytes(),
                    )
                }
            };
        const DEV: &str = "Basic ZGV2OnB3"; // dev:pw
        let layer: &'static [u8] = b"pushed layer";
        let digest = Digest::sha256_of(layer);
        let upload = format!("{APP}/blobs/uploads/?digest={digest}");
        let (status, _) = send(Method::POST, upload.clone(), None, layer).await;
        assert_eq!(status, 401, "an anonymous push");
        let (status, _) = send(Method::POST, upload.clone(), Some("Basic ZGV2Om5v"), layer).await;
        assert_eq!(status, 401, "wrong password");
        let (status, _) = send(Method::POST, upload, Some(DEV), layer).await;
        assert_eq!(status, 201);
        let blob = format!("{APP}/blobs/{digest}");
        let (status, body) = send(Method::GET, blob.clone(), None, b"").await;
        if public.is_empty() {
            assert_eq!(status, 401, "an anonymous pull of a protected prefix");
        } else {
            // Kind's containerd pulls without credentials.
            assert_eq!((status, body.as_ref()), (200, layer));
        }
        let (status, body) = send(Method::GET, blob, Some(DEV), b"").await;
        assert_eq!((status, body.as_ref()), (200, layer));
        let (status, _) = send(Method::DELETE, format!("{APP}/manifests/v1"), None, b"").await;
        assert_eq!(status, 401);
        assert_eq!(fake.calls().total(), 0);
    }
}

/// Content discovery, OCI 1.1 (spec.md, "Listing Referrers"): manifests
/// pushed with a `subject` are listed by `GET …/referrers/<digest>` as an
/// image index, filtered by `artifactType`, and gone once deleted.
#[tokio::test]
async fn referrers_list_filter_and_forget_manifests_with_a_subject() {
    const SBOM: &str = "application/vnd.example.sbom+json";
    const SIGNATURE_CONFIG: &str = "application/vnd.example.signature.config+json";
    for r in registries().await {
        let svc = &r.svc;
        let (image, image_manifest) = push_image(svc, APP, "v1", b"layer").await;
        let referrers = |subject: &Digest, query: &str| format!("{APP}/referrers/{subject}{query}");
        // Nothing refers to it yet: an empty index, not a 404.
        let a = get(svc, &referrers(&image, "")).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_eq!(a.header("content-type"), Some(OCI_INDEX));
        assert_eq!(
            a.json(),
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
        );

        let empty = push_blob(svc, APP, b"{}").await;
        let subject = format!(
            r#""subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{image}","size":{}}}"#,
            image_manifest.len()
        );
        let sbom = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{SBOM}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[],{subject},"annotations":{{"org.opencontainers.image.created":"2026-11-26T00:00:00Z"}}}}"#
        );
        let signature = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{SIGNATURE_CONFIG}","digest":"{empty}","size":2}},"layers":[],{subject}}}"#
        );
        let mut expected = Vec::new();
        for manifest in [&sbom, &signature] {
            let digest = Digest::sha256_of(manifest.as_bytes());
            let a = put_manifest(svc, APP, digest.as_str(), OCI_MANIFEST, manifest.clone()).await;
            assert_eq!(a.status, 201, "{:?}", a.body);
            assert_eq!(a.header("oci-subject"), Some(image.as_str()));
            expected.push((digest, manifest.len()));
        }
        let (sbom_digest, sbom_size) = expected[0].clone();
        let (signature_digest, signature_size) = expected[1].clone();
        let sbom_entry = serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": sbom_digest.as_str(),
            "size": sbom_size,
            "artifactType": SBOM,
            "annotations": {"org.opencontainers.image.created": "2026-11-26T00:00:00Z"},
        });
        // An image manifest without artifactType is listed with its config's type.
        let signature_entry = serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": signature_digest.as_str(),
            "size": signature_size,
            "artifactType": SIGNATURE_CONFIG,
        });
        let mut all = vec![
            (sbom_digest.clone(), sbom_entry.clone()),
            (signature_digest.clone(), signature_entry.clone()),
        ];
        all.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        let all: Vec<_> = all.into_iter().map(|(_, entry)| entry).collect();

        let a = get(svc, &referrers(&image, "")).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-type"), Some(OCI_INDEX));
        assert_eq!(a.header("oci-filters-applied"), None);
        assert_eq!(
            a.json(),
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": all})
        );
        let head = call(svc, Method::HEAD, &referrers(&image, ""), &[]).await;
        assert_eq!(head.status, 200);
        assert_eq!(
            head.header("content-length"),
            Some(a.body.len().to_string().as_str())
        );

        // The filter, escaped as clients send it, and the header saying it applied.
        let a = get(
            svc,
            &referrers(
                &image,
                "?artifactType=application%2Fvnd.example.sbom%2Bjson",
            ),
        )
        .await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("oci-filters-applied"), Some("artifactType"));
        assert_eq!(a.json()["manifests"], serde_json::json!([sbom_entry]));
        let a = get(svc, &referrers(&image, "?artifactType=application%2Fnone")).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("oci-filters-applied"), Some("artifactType"));
        assert_eq!(a.json()["manifests"], serde_json::json!([]));

        // Unknown subject, unknown repository: still 200 and empty.
        let unknown = Digest::sha256_of(b"never pushed");
        let a = get(svc, &referrers(&unknown, "")).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["manifests"], serde_json::json!([]));
        let a = get(svc, &format!("/v2/local/nothing/referrers/{image}")).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["manifests"], serde_json::json!([]));
        assert_error(
            &get(svc, &format!("{APP}/referrers/sha256:nothex")).await,
            400,
            "DIGEST_INVALID",
        );

        // Deleting a referrer drops it from the list.
        let a = delete(svc, &format!("{APP}/manifests/{sbom_digest}")).await;
        assert_eq!(a.status, 202);
        let a = get(svc, &referrers(&image, "")).await;
        assert_eq!(a.json()["manifests"], serde_json::json!([signature_entry]));

        // A cached repository answers from its upstream (tests/referrers.rs):
        // this one has neither the API nor a fallback tag, so none, still 200.
        // The hosted listings above asked it nothing.
        assert_eq!(r.fake.calls().total(), 0);
        let a = get(svc, &format!("/v2/library/alpine/referrers/{image}")).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["manifests"], serde_json::json!([]));
        assert_eq!(r.fake.calls().referrers(), 1);
    }
}

#[tokio::test]
async fn reads_of_an_impossible_tag_are_unknown_manifests_and_writes_are_invalid_tags() {
    for r in registries().await {
        let svc = &r.svc;
        let bad = "-not-a-tag";
        assert_error(
            &get(svc, &format!("{APP}/manifests/{bad}")).await,
            404,
            "MANIFEST_UNKNOWN",
        );
        let head = send(
            svc,
            Method::HEAD,
            &format!("{APP}/manifests/{bad}"),
            &[],
            "",
        )
        .await;
        assert_eq!(head.status, 404);
        assert!(head.body.is_empty());
        let manifest = image_manifest(&Digest::sha256_of(b"{}"), 2, &[]);
        push_blob(svc, APP, b"{}").await;
        let a = put_manifest(svc, APP, bad, OCI_MANIFEST, manifest).await;
        assert_error(&a, 400, "TAG_INVALID");
        assert_eq!(r.fake.calls().total(), 0);
    }
}

#[tokio::test]
async fn a_final_put_with_a_content_range_must_continue_the_upload() {
    for r in registries().await {
        let svc = &r.svc;
        let content: Vec<u8> = (0..20u8).collect();
        let digest = Digest::sha256_of(&content);
        let location = start_upload(svc).await;
        let a = patch(svc, &location, "0-9", content[..10].to_vec()).await;
        assert_eq!(a.status, 202, "{:?}", a.body);
        let location = a.header("location").unwrap().to_owned();
        let put = |range: &'static str, body: Vec<u8>| {
            let uri = format!("{location}?digest={digest}");
            async move { send(svc, Method::PUT, &uri, &[("content-range", range)], body).await }
        };
        // A last chunk that skips bytes (or repeats them) is not the upload's end.
        let a = put("12-21", content[10..].to_vec()).await;
        assert_error(&a, 416, "BLOB_UPLOAD_INVALID");
        assert_eq!(a.header("range"), Some("0-9"));
        let a = put("0-9", content[10..].to_vec()).await;
        assert_error(&a, 416, "BLOB_UPLOAD_INVALID");
        // Refused, the session is as it was; the right range completes it.
        assert_eq!(get(svc, &location).await.header("range"), Some("0-9"));
        let a = put("10-19", content[10..].to_vec()).await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        assert_eq!(
            get(svc, &format!("{APP}/blobs/{digest}")).await.body,
            content
        );
    }
}

#[tokio::test]
async fn a_patch_whose_content_range_is_not_its_body_length_is_refused() {
    for r in registries().await {
        let svc = &r.svc;
        let location = start_upload(svc).await;
        // Content-Length disagrees with the range: refused before anything is stored.
        let a = send(
            svc,
            Method::PATCH,
            &location,
            &[("content-range", "0-9"), ("content-length", "4")],
            vec![7u8; 4],
        )
        .await;
        assert_error(&a, 416, "BLOB_UPLOAD_INVALID");
        assert_eq!(a.header("range"), Some("0-0"));
        assert_eq!(get(svc, &location).await.header("range"), Some("0-0"));
        // No Content-Length (a chunked body): the range's end is checked
        // against what arrived, which stays, and the answer says so.
        let a = patch(svc, &location, "0-9", vec![7u8; 4]).await;
        assert_error(&a, 416, "BLOB_UPLOAD_INVALID");
        assert_eq!(a.header("range"), Some("0-3"));
        let a = patch(svc, &location, "4-5", vec![7u8; 6]).await;
        assert_error(&a, 416, "BLOB_UPLOAD_INVALID");
        assert_eq!(a.header("range"), Some("0-9"));
        // The client carries on from what the registry holds.
        let a = patch(svc, &location, "10-11", vec![7u8; 2]).await;
        assert_eq!(a.status, 202, "{:?}", a.body);
        let digest = Digest::sha256_of(&[7u8; 12]);
        assert_eq!(finish(svc, &location, &digest, "").await.status, 201);
    }
}

#[tokio::test]
async fn a_manifest_needs_a_manifest_media_type() {
    for r in registries().await {
        let svc = &r.svc;
        push_blob(svc, APP, b"{}").await;
        // A valid image manifest without mediaType, sent as a web page.
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[]}}"#,
            Digest::sha256_of(b"{}")
        );
        for media_type in ["text/html", "text/html; charset=utf-8", "image/svg+xml"] {
            let a = put_manifest(svc, APP, "page", media_type, manifest.clone()).await;
            assert_error(&a, 400, "MANIFEST_INVALID");
            assert!(
                String::from_utf8_lossy(&a.body).contains("not a manifest media type"),
                "{:?}",
                a.body
            );
        }
        assert_error(
            &get(svc, &format!("{APP}/manifests/page")).await,
            404,
            "MANIFEST_UNKNOWN",
        );
        let a = put_manifest(svc, APP, "page", OCI_MANIFEST, manifest).await;
        assert_eq!(a.status, 201, "{:?}", a.body);
    }
}

/// Issue 22: open upload sessions are capped per client address and in
/// total bytes; a refusal is `429 TOOMANYREQUESTS` naming the limit.
#[tokio::test]
async fn open_uploads_are_capped_per_client_with_a_429_naming_the_limit() {
    use oci_cache_core::hosted::HostedOptions;
    use oci_cache_http::client_auth::PeerAddr;

    let svc = Mirror::builder()
        .upstreams(mirrors("http://127.0.0.1:9"))
        .storage(Arc::new(MemoryStorage::new()))
        .upstream(Arc::new(FakeUpstream::new()))
        .local_prefixes(["local"])
        .hosted_options(
            HostedOptions::default()
                .with_max_uploads_per_client(2)
                .with_max_upload_bytes(Some(8)),
        )
        .build()
        .unwrap()
        .service();
    let post_from = |last: u8| {
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{APP}/blobs/uploads/"))
            .extension(PeerAddr(([192, 0, 2, last], 40000).into()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        svc.handle(request)
    };
    assert_eq!(post_from(1).await.status(), 202);
    let second = post_from(1).await;
    assert_eq!(second.status(), 202);
    let refused = post_from(1).await;
    assert_eq!(refused.status(), 429);
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("TOOMANYREQUESTS") && text.contains("max_uploads_per_client = 2"),
        "{text}"
    );
    assert_eq!(
        post_from(2).await.status(),
        202,
        "another client is refused"
    );

    let location = second.headers()["location"].to_str().unwrap().to_owned();
    let over = patch(&svc, &location, "0-8", &b"123456789"[..]).await;
    assert_eq!(over.status, 429, "{:?}", over.body);
    assert!(String::from_utf8_lossy(&over.body).contains("max_upload_bytes"));
}
