//! The pull API through the service, with memory storage and a fake upstream.

use http::Method;
use oci_cache_core::UpstreamErrorKind;

use std::sync::Arc;

use oci_cache_core::storage::MemoryStorage;
use oci_cache_http::{AccessLog, Mirror};

use crate::support::*;

const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;

#[tokio::test]
async fn ping_and_health() {
    let (svc, fake) = fake_service();
    let a = get(&svc, "/v2/").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body.as_ref(), b"{}");
    assert_eq!(
        a.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    assert_eq!(a.header("content-type"), Some("application/json"));
    let h = get(&svc, "/healthz").await;
    assert_eq!(
        (h.status.as_u16(), h.body.as_ref()),
        (200, b"ok\n".as_ref())
    );
    assert_eq!(fake.calls().total(), 0);
}

#[tokio::test]
async fn manifest_by_tag_miss_then_hit_with_exact_headers() {
    let (svc, fake) = fake_service();
    let digest = fake.add_manifest(
        "docker.io",
        "library/alpine",
        "3.20",
        OCI_MANIFEST,
        MANIFEST,
    );

    let a = get(&svc, "/v2/library/alpine/manifests/3.20").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body.as_ref(), MANIFEST);
    assert_eq!(a.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(a.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(
        a.header("content-length"),
        Some(MANIFEST.len().to_string().as_str())
    );
    assert_eq!(a.header("etag"), Some(format!("\"{digest}\"").as_str()));
    assert!(a.header("content-encoding").is_none());
    let calls = fake.calls().total();
    assert!(calls >= 1);

    // By digest: immutable, served from storage without asking upstream.
    let b = get(&svc, &format!("/v2/library/alpine/manifests/{digest}")).await;
    assert_eq!((b.status.as_u16(), b.body.as_ref()), (200, MANIFEST));
    assert_eq!(fake.calls().total(), calls);

    // HEAD: same headers, exact Content-Length, no body.
    let h = call(
        &svc,
        Method::HEAD,
        &format!("/v2/library/alpine/manifests/{digest}"),
        &[],
    )
    .await;
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert_eq!(
        h.header("content-length"),
        Some(MANIFEST.len().to_string().as_str())
    );
    assert_eq!(h.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(h.header("content-type"), Some(OCI_MANIFEST));
}

#[tokio::test]
async fn if_none_match_gives_304() {
    let (svc, fake) = fake_service();
    let digest = fake.add_manifest(
        "docker.io",
        "library/alpine",
        "3.20",
        OCI_MANIFEST,
        MANIFEST,
    );
    let uri = format!("/v2/library/alpine/manifests/{digest}");
    for tag in [format!("\"{digest}\""), digest.to_string()] {
        let a = call(&svc, Method::GET, &uri, &[("if-none-match", &tag)]).await;
        assert_eq!(a.status, 304, "{tag}");
        assert!(a.body.is_empty());
        assert_eq!(a.header("docker-content-digest"), Some(digest.as_str()));
    }
    let other = call(
        &svc,
        Method::GET,
        &uri,
        &[("if-none-match", "\"sha256:other\"")],
    )
    .await;
    assert_eq!(other.status, 200);
}

#[tokio::test]
async fn accept_is_honoured_for_indexes() {
    let (svc, fake) = fake_service();
    let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    let digest = fake.add_manifest("docker.io", "library/multi", "1", OCI_INDEX, index);
    let uri = format!("/v2/library/multi/manifests/{digest}");
    let refused = call(&svc, Method::GET, &uri, &[("accept", OCI_MANIFEST)]).await;
    assert_eq!(refused.status, 404);
    assert_eq!(refused.error_code(), "MANIFEST_UNKNOWN");
    // Repeated Accept headers are merged.
    let mut builder = http::Request::builder().uri(&uri);
    builder = builder
        .header("accept", OCI_MANIFEST)
        .header("accept", OCI_INDEX);
    let response = svc
        .handle(
            builder
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn blobs_whole_ranges_and_416() {
    let (svc, fake) = fake_service();
    let data: Vec<u8> = (0..100u8).collect();
    let digest = fake.add_blob(BlobScript::new(&data));
    let uri = format!("/v2/library/alpine/blobs/{digest}");

    let head = call(&svc, Method::HEAD, &uri, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("100"));
    assert_eq!(head.header("docker-content-digest"), Some(digest.as_str()));

    let whole = get(&svc, &uri).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body.as_ref(), data.as_slice());
    assert_eq!(
        whole.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    let calls = fake.calls().total();

    let cases = [
        ("bytes=2-5", 2..6, "bytes 2-5/100"),
        ("bytes=90-", 90..100, "bytes 90-99/100"),
        ("bytes=-3", 97..100, "bytes 97-99/100"),
        ("bytes=95-200", 95..100, "bytes 95-99/100"),
    ];
    for (range, slice, content_range) in cases {
        let a = call(&svc, Method::GET, &uri, &[("range", range)]).await;
        assert_eq!(a.status, 206, "{range}");
        assert_eq!(a.body.as_ref(), &data[slice.clone()], "{range}");
        assert_eq!(a.header("content-range"), Some(content_range), "{range}");
        assert_eq!(
            a.header("content-length"),
            Some(slice.len().to_string().as_str())
        );
    }
    let bad = call(&svc, Method::GET, &uri, &[("range", "bytes=100-")]).await;
    assert_eq!(bad.status, 416);
    assert_eq!(bad.header("content-range"), Some("bytes */100"));
    // A malformed Range is ignored: the whole blob.
    let ignored = call(&svc, Method::GET, &uri, &[("range", "bytes=5-1")]).await;
    assert_eq!((ignored.status.as_u16(), ignored.body.len()), (200, 100));
    // Several ranges are answered with the whole representation as one 200,
    // as RFC 9110 (14.2) allows: never a 206 holding only the first range.
    for multi in ["bytes=0-1,5-9", "bytes=0-1, -3", "bytes=90-,0-0"] {
        let whole = call(&svc, Method::GET, &uri, &[("range", multi)]).await;
        assert_eq!(whole.status, 200, "{multi}");
        assert_eq!(whole.body.as_ref(), data.as_slice(), "{multi}");
        assert_eq!(whole.header("content-range"), None, "{multi}");
    }
    assert_eq!(
        fake.calls().total(),
        calls,
        "cached blob served without upstream calls"
    );
}

#[tokio::test]
async fn unknown_objects_get_the_right_codes() {
    let (svc, fake) = fake_service();
    let m = get(&svc, "/v2/library/none/manifests/latest").await;
    assert_eq!(
        (m.status.as_u16(), m.error_code().as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    let digest = oci_cache_core::digest::Digest::sha256_of(b"absent");
    let b = get(&svc, &format!("/v2/library/none/blobs/{digest}")).await;
    assert_eq!(
        (b.status.as_u16(), b.error_code().as_str()),
        (404, "BLOB_UNKNOWN")
    );
    let t = get(&svc, "/v2/library/none/tags/list").await;
    assert_eq!(
        (t.status.as_u16(), t.error_code().as_str()),
        (404, "NAME_UNKNOWN")
    );
    fake.fail_with(Some(UpstreamErrorKind::TooManyRequests));
    let r = get(&svc, "/v2/library/none/manifests/latest").await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (429, "TOOMANYREQUESTS")
    );
    fake.fail_with(Some(UpstreamErrorKind::Unavailable));
    let u = get(&svc, "/v2/library/none/manifests/latest").await;
    assert_eq!(
        (u.status.as_u16(), u.error_code().as_str()),
        (503, "UNAVAILABLE")
    );
    fake.fail_with(Some(UpstreamErrorKind::Unauthorized));
    let d = get(&svc, "/v2/library/none/manifests/latest").await;
    assert_eq!(
        (d.status.as_u16(), d.error_code().as_str()),
        (403, "DENIED")
    );
    // The message never carries internal causes.
    assert!(!String::from_utf8_lossy(&d.body).contains("scripted"));
}

#[tokio::test]
async fn tags_paginate_with_link_and_fall_back_to_cache() {
    let (svc, fake) = fake_service();
    for tag in ["b", "a", "d", "c"] {
        fake.add_manifest(
            "docker.io",
            "library/alpine",
            tag,
            OCI_MANIFEST,
            format!("{{\"t\":\"{tag}\"}}").as_bytes(),
        );
    }
    let all = get(&svc, "/v2/library/alpine/tags/list").await;
    assert_eq!(all.status, 200);
    assert_eq!(
        all.json(),
        serde_json::json!({"name":"library/alpine","tags":["a","b","c","d"]})
    );
    assert!(all.header("link").is_none());

    let page = get(&svc, "/v2/alpine/tags/list?ns=docker.io&n=2").await;
    assert_eq!(page.json()["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(
        page.header("link"),
        Some("</v2/alpine/tags/list?ns=docker.io&n=2&last=b>; rel=\"next\"")
    );
    let next = get(&svc, "/v2/alpine/tags/list?ns=docker%2Eio&n=2&last=b").await;
    assert_eq!(next.json()["tags"], serde_json::json!(["c", "d"]));
    assert!(next.header("link").is_none());
    let none = get(&svc, "/v2/library/alpine/tags/list?n=0").await;
    assert_eq!(none.json()["tags"], serde_json::json!([]));

    // Cache one tag, then lose upstream: the cached tag list is served.
    assert_eq!(
        get(&svc, "/v2/library/alpine/manifests/c").await.status,
        200
    );
    fake.fail_with(Some(UpstreamErrorKind::Unavailable));
    // A page not asked before: the full list is in the 5 s tag-list cache.
    let stale = get(&svc, "/v2/library/alpine/tags/list?n=10").await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.json()["tags"], serde_json::json!(["c"]));
}

#[tokio::test]
async fn catalog_lists_cached_repositories() {
    let (svc, fake) = fake_service();
    fake.add_manifest("docker.io", "library/alpine", "1", OCI_MANIFEST, MANIFEST);
    fake.add_manifest("ghcr.io", "org/app", "1", OCI_MANIFEST, b"{\"x\":1}");
    assert_eq!(
        get(&svc, "/v2/_catalog").await.json(),
        serde_json::json!({"repositories":[]})
    );
    assert_eq!(get(&svc, "/v2/alpine/manifests/1").await.status, 200);
    assert_eq!(
        get(&svc, "/v2/ghcr.io/org/app/manifests/1").await.status,
        200
    );
    let all = get(&svc, "/v2/_catalog").await;
    assert_eq!(
        all.json(),
        serde_json::json!({"repositories":["docker.io/library/alpine","ghcr.io/org/app"]})
    );
    let page = get(&svc, "/v2/_catalog?n=1").await;
    assert_eq!(
        page.json()["repositories"],
        serde_json::json!(["docker.io/library/alpine"])
    );
    assert_eq!(
        page.header("link"),
        Some("</v2/_catalog?n=1&last=docker.io%2Flibrary%2Falpine>; rel=\"next\"")
    );
    let rest = get(&svc, "/v2/_catalog?n=1&last=docker%2Eio%2Flibrary%2Falpine").await;
    assert_eq!(
        rest.json()["repositories"],
        serde_json::json!(["ghcr.io/org/app"])
    );
}

#[tokio::test]
async fn writes_are_refused_with_405() {
    let (svc, fake) = fake_service();
    for (method, uri) in [
        (Method::POST, "/v2/library/alpine/blobs/uploads/"),
        (Method::PUT, "/v2/library/alpine/manifests/latest"),
        (Method::DELETE, "/v2/library/alpine/manifests/latest"),
        (Method::PATCH, "/v2/library/alpine/blobs/uploads/abc"),
    ] {
        let a = call(&svc, method.clone(), uri, &[]).await;
        assert_eq!(a.status, 405, "{method} {uri}");
        assert_eq!(a.error_code(), "UNSUPPORTED");
        assert_eq!(
            a.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
    }
    assert_eq!(fake.calls().total(), 0);
}

/// Collects what the fmt subscriber writes.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process-wide log buffer. A global subscriber, because thread-scoped
/// ones lose events when other tests run callsites in parallel.
fn captured_logs() -> Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        captured
    })
    .clone()
}

#[tokio::test]
async fn one_log_line_per_request_with_cache_outcome() {
    let captured = captured_logs();
    let fake = Arc::new(FakeUpstream::default());
    let svc = Mirror::builder()
        .upstreams(mirrors("http://127.0.0.1:9"))
        .storage(Arc::new(MemoryStorage::new()))
        .upstream(fake.clone())
        .observer(Arc::new(AccessLog))
        .build()
        .unwrap()
        .service();
    let digest = fake.add_manifest(
        "docker.io",
        "library/logged",
        "3.20",
        OCI_MANIFEST,
        MANIFEST,
    );
    let uri = format!("/v2/logged/manifests/{digest}?ns=docker.io");
    assert_eq!(get(&svc, &uri).await.status, 200);
    assert_eq!(get(&svc, &uri).await.status, 200);

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("/v2/logged/") && l.contains(" request "))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (line, cache) in lines.iter().zip(["cache=miss", "cache=hit"]) {
        for field in [
            "method=GET",
            "route=manifest",
            "repository=library/logged",
            "upstream=docker.io",
            &format!("reference={digest}"),
            cache,
            "status=200",
            &format!("bytes={}", MANIFEST.len()),
            "duration_ms=",
            "completed=true",
        ] {
            assert!(line.contains(field), "{field} missing in {line}");
        }
    }
}

/// Through the real server on a socket: a blob larger than the per-connection
/// buffer arrives whole behind a 16 KiB request header (registry tokens are
/// long), while a head over the 64 KiB limit gets 431 instead of being buffered.
#[tokio::test]
async fn server_streams_past_its_buffer_limit_and_caps_request_heads() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (svc, fake) = fake_service();
    let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let digest = fake.add_blob(BlobScript::new(&data));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(oci_cache_http::serve(listener, svc, async {
        let _ = stopped.await;
    }));

    let exchange = |padding: usize| {
        let digest = digest.clone();
        async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let request = format!(
                "GET /v2/library/alpine/blobs/{digest} HTTP/1.1\r\nHost: mirror\r\n\
             X-Padding: {}\r\nConnection: close\r\n\r\n",
                "a".repeat(padding)
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.unwrap();
            let split = response
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a response head");
            let head = String::from_utf8_lossy(&response[..split]).into_owned();
            (head, response[split + 4..].to_vec())
        }
    };

    let (head, body) = exchange(16 * 1024).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body.len(), data.len());
    assert!(body == data, "the blob arrived altered");

    let (head, _) = exchange(100 * 1024).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
