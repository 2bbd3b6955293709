//! HyperUpstream against the scripted mock registry: chains, redirects,
//! error classification, limits; and one end-to-end run over real sockets.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oci_cache_core::cache::{CacheOptions, PullThrough};
use oci_cache_core::digest::Digest;
use oci_cache_core::reference::ManifestRef;
use oci_cache_core::storage::{MemoryStorage, Storage};
use oci_cache_core::upstream::Upstream;
use oci_cache_core::{Error, UpstreamErrorKind};
use oci_cache_http::{serve, HyperUpstream, OciService, ProxyConfig, UpstreamOptions};

use crate::auth::client;
use crate::support::*;

const M: &[u8] = br#"{"schemaVersion":2}"#;

fn tag(t: &str) -> ManifestRef {
    ManifestRef::Tag(t.parse().unwrap())
}

fn kind(err: Error) -> UpstreamErrorKind {
    match err {
        Error::Upstream(e) => e.kind(),
        other => panic!("expected an upstream error, got {other:?}"),
    }
}

/// docker.io with `mirror` first and `origin` last.
async fn chain() -> (MockRegistry, MockRegistry, HyperUpstream) {
    let origin = MockRegistry::start().await;
    let mirror = MockRegistry::start().await;
    let config = mirror_then_origin(&mirror.url(), &origin.url());
    let up = client(config);
    (mirror, origin, up)
}

#[tokio::test]
async fn blob_redirect_to_another_host_drops_authorization() {
    let registry_mock = MockRegistry::start().await;
    let storage_mock = MockRegistry::start().await;
    let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let digest = Digest::sha256_of(&data);
    registry_mock
        .push(Reply::status(401).header(
            "www-authenticate",
            &format!("Bearer realm=\"{}/token\"", registry_mock.url()),
        ))
        .push(Reply::ok(r#"{"token":"secret-token"}"#))
        .push(Reply::status(307).header(
            "location",
            &format!("{}/data/{}?sig=abc", storage_mock.url(), digest.hex()),
        ));
    storage_mock.push(Reply::ok(data.clone()));
    let up = client(mirrors(&registry_mock.url()));
    let blob = up
        .blob_get(&registry("docker.io"), &repo("library/alpine"), &digest)
        .await
        .unwrap();
    assert_eq!(blob.size, Some(100_000));
    let chunks: Vec<Bytes> = blob.stream.try_collect().await.unwrap();
    assert_eq!(chunks.concat(), data);

    let seen = registry_mock.seen();
    assert_eq!(seen[2].header("authorization"), Some("Bearer secret-token"));
    assert_eq!(seen[2].uri, format!("/v2/library/alpine/blobs/{digest}"));
    let cdn = storage_mock.seen();
    assert_eq!(cdn.len(), 1);
    assert_eq!(cdn[0].uri, format!("/data/{}?sig=abc", digest.hex()));
    assert_eq!(
        cdn[0].header("authorization"),
        None,
        "token leaked to another host"
    );
    assert_eq!(cdn[0].header("accept-encoding"), Some("identity"));
}

#[tokio::test]
async fn redirect_loops_are_cut() {
    let mock = MockRegistry::start().await;
    for _ in 0..12 {
        mock.push(Reply::status(302).header("location", "/again"));
    }
    let err = get_alpine_manifest(&client(mirrors(&mock.url())))
        .await
        .unwrap_err();
    assert_eq!(kind(err), UpstreamErrorKind::Invalid);
    assert_eq!(mock.count(), 11, "first request plus 10 redirects");
}

#[tokio::test]
async fn chain_moves_on_after_429_404_5xx_and_dropped_connections() {
    for failure in [
        Reply::status(429).header("retry-after", "7"),
        Reply::status(404),
        Reply::status(503),
        Reply::Drop,
    ] {
        let (mirror, origin, up) = chain().await;
        mirror.push(failure.clone());
        origin.push(Reply::ok(M).header("content-type", OCI_MANIFEST));
        let m = get_alpine_manifest(&up).await.unwrap();
        assert_eq!(m.bytes.as_ref(), M, "{failure:?}");
        assert_eq!((mirror.count(), origin.count()), (1, 1), "{failure:?}");
        // The mirror is asked with ns so a multi-upstream mirror can route.
        assert_eq!(
            mirror.seen()[0].uri,
            "/v2/library/alpine/manifests/3?ns=docker.io"
        );
        assert_eq!(origin.seen()[0].uri, "/v2/library/alpine/manifests/3");
    }
}

#[tokio::test]
async fn chain_stops_on_403_and_reports_the_last_error() {
    let (mirror, origin, up) = chain().await;
    mirror.push(Reply::status(403));
    assert_eq!(
        kind(get_alpine_manifest(&up).await.unwrap_err()),
        UpstreamErrorKind::Denied
    );
    assert_eq!(origin.count(), 0);

    let (mirror, origin, up) = chain().await;
    mirror.push(Reply::status(502));
    origin.push(Reply::status(429).header("retry-after", "7"));
    match get_alpine_manifest(&up).await.unwrap_err() {
        Error::Upstream(e) => {
            assert_eq!(e.kind(), UpstreamErrorKind::TooManyRequests);
            assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unknown_registry_makes_no_request() {
    let mock = MockRegistry::start().await;
    let up = client(mirrors(&mock.url()));
    let err = up
        .manifest_get(&registry("evil.example"), &repo("x"), &tag("1"), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownUpstream { .. }), "{err:?}");
    assert_eq!(mock.count(), 0);
}

#[tokio::test]
async fn manifest_size_cap() {
    let mock = MockRegistry::start().await;
    let options = UpstreamOptions::default()
        .with_max_manifest_size(16)
        .with_proxy(ProxyConfig::Direct);
    let up = HyperUpstream::new(Arc::new(mirrors(&mock.url())), options).unwrap();
    mock.push(Reply::ok(vec![b' '; 17]).header("content-type", OCI_MANIFEST));
    let err = get_alpine_manifest(&up).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                limit: 16,
                actual: 17,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn slow_upstream_times_out() {
    let mock = MockRegistry::start().await;
    let options = UpstreamOptions::default()
        .with_request_timeout(Duration::from_millis(200))
        .with_proxy(ProxyConfig::Direct);
    let up = HyperUpstream::new(Arc::new(mirrors(&mock.url())), options).unwrap();
    mock.push(Reply::Delay(Duration::from_secs(2), Box::new(Reply::ok(M))));
    let started = std::time::Instant::now();
    assert_eq!(
        kind(get_alpine_manifest(&up).await.unwrap_err()),
        UpstreamErrorKind::Timeout
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn accept_is_forwarded_or_defaults_to_all_manifest_types() {
    let mock = MockRegistry::start().await;
    let up = client(mirrors(&mock.url()));
    for _ in 0..3 {
        mock.push(
            Reply::ok(M)
                .header(
                    "content-type",
                    "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
                )
                .header("docker-content-digest", Digest::sha256_of(M).as_str()),
        );
    }
    let m = get_alpine_manifest(&up).await.unwrap();
    assert_eq!(m.head.media_type, OCI_MANIFEST, "parameters dropped");
    assert_eq!(m.head.digest, Some(Digest::sha256_of(M)));
    let accept = vec![OCI_INDEX.to_string(), OCI_MANIFEST.to_string()];
    up.manifest_get(
        &registry("docker.io"),
        &repo("library/alpine"),
        &tag("3"),
        &accept,
    )
    .await
    .unwrap();
    let head = up
        .manifest_head(
            &registry("docker.io"),
            &repo("library/alpine"),
            &tag("3"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(head.size, Some(M.len() as u64));
    let seen = mock.seen();
    let defaults = seen[0].header("accept").unwrap();
    for t in [
        OCI_INDEX,
        OCI_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ] {
        assert!(defaults.contains(t), "{defaults}");
    }
    assert_eq!(
        seen[1].header("accept"),
        Some(format!("{OCI_INDEX}, {OCI_MANIFEST}").as_str())
    );
    assert_eq!(seen[2].method, http::Method::HEAD);
    assert!(seen
        .iter()
        .all(|s| s.header("accept-encoding") == Some("identity")));
    assert!(seen.iter().all(|s| s
        .header("user-agent")
        .is_some_and(|u| u.starts_with("oci-cache/"))));
}

#[tokio::test]
async fn tag_list_follows_link_pages() {
    let mock = MockRegistry::start().await;
    mock.push(
        Reply::ok(r#"{"name":"library/alpine","tags":["a","b"]}"#).header(
            "link",
            "</v2/library/alpine/tags/list?n=2&last=b>; rel=\"next\"",
        ),
    )
    .push(Reply::ok(r#"{"name":"library/alpine","tags":["c"]}"#));
    let up = client(mirrors(&mock.url()));
    let list = up
        .tag_list(&registry("docker.io"), &repo("library/alpine"), None, None)
        .await
        .unwrap();
    assert_eq!(list.tags, ["a", "b", "c"]);
    let seen = mock.seen();
    assert_eq!(seen[1].uri, "/v2/library/alpine/tags/list?n=2&last=b");
}

#[tokio::test]
async fn head_blob_and_missing_blob() {
    let mock = MockRegistry::start().await;
    let up = client(mirrors(&mock.url()));
    let digest = Digest::sha256_of(b"blob");
    mock.push(Reply::status(200).header("content-length", "4"))
        .push(Reply::status(404));
    let (r, repo_) = (registry("docker.io"), repo("library/alpine"));
    assert_eq!(up.blob_head(&r, &repo_, &digest).await.unwrap(), 4);
    assert_eq!(
        kind(up.blob_head(&r, &repo_, &digest).await.unwrap_err()),
        UpstreamErrorKind::NotFound
    );
}

/// The whole stack over sockets: client → serve(OciService) → engine →
/// HyperUpstream → mock registry. Checks HEAD's Content-Length on the wire,
/// a cache hit on the second GET, h2c, and graceful shutdown.
#[tokio::test]
async fn end_to_end_over_sockets() {
    let origin = MockRegistry::start().await;
    let blob: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::sha256_of(&blob);
    origin.push(Reply::ok(blob.clone()).header("content-length", &blob.len().to_string()));

    let mirrors = Arc::new(mirrors(&origin.url()));
    let upstream: Arc<dyn Upstream> = Arc::new(
        HyperUpstream::new(
            mirrors.clone(),
            UpstreamOptions::default().with_proxy(ProxyConfig::Direct),
        )
        .unwrap(),
    );
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let engine = PullThrough::new(storage, upstream, CacheOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, OciService::new(engine, mirrors), async {
        let _ = stopped.await;
    }));

    let http1 = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = format!("http://{addr}/v2/alpine/blobs/{digest}?ns=docker.io")
        .parse()
        .unwrap();
    let get = |client: &Client<_, Empty<Bytes>>, method: http::Method| {
        let request = http::Request::builder()
            .method(method)
            .uri(uri.clone())
            .body(Empty::new())
            .unwrap();
        client.request(request)
    };
    let first = get(&http1, http::Method::GET).await.unwrap();
    assert_eq!(first.status(), 200);
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), blob.as_slice());
    // Give the engine a moment to commit the verified blob.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let head = get(&http1, http::Method::HEAD).await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        blob.len().to_string().as_str()
    );
    assert_eq!(head.headers()["oci-namespace"], "docker.io");

    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    let second = get(&h2, http::Method::GET).await.unwrap();
    assert_eq!(second.version(), http::Version::HTTP_2);
    let body = second.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), blob.as_slice());
    assert_eq!(origin.count(), 1, "second GET and HEAD were cache hits");

    stop.send(()).unwrap();
    drop((http1, h2));
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stopped")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn explicit_proxy_tunnels_with_connect_and_honours_no_proxy() {
    let mock = MockRegistry::start().await;
    let proxy = ConnectProxy::start().await;
    let via_proxy = |no_proxy: &str| {
        UpstreamOptions::default().with_proxy(ProxyConfig::explicit(proxy.url(), no_proxy))
    };
    mock.push(Reply::ok(M).header("content-type", OCI_MANIFEST))
        .push(Reply::ok(M).header("content-type", OCI_MANIFEST));

    let tunnelled = HyperUpstream::new(Arc::new(mirrors(&mock.url())), via_proxy("")).unwrap();
    assert_eq!(
        get_alpine_manifest(&tunnelled)
            .await
            .unwrap()
            .bytes
            .as_ref(),
        M
    );
    let authority = mock.url().trim_start_matches("http://").to_string();
    assert_eq!(*proxy.targets.lock().unwrap(), vec![authority]);

    let direct =
        HyperUpstream::new(Arc::new(mirrors(&mock.url())), via_proxy("127.0.0.1")).unwrap();
    assert_eq!(
        get_alpine_manifest(&direct).await.unwrap().bytes.as_ref(),
        M
    );
    assert_eq!(
        proxy.targets.lock().unwrap().len(),
        1,
        "NO_PROXY host went direct"
    );
    assert_eq!(mock.count(), 2);
}

#[tokio::test]
async fn a_malformed_mirror_url_does_not_block_the_origin() {
    let origin = MockRegistry::start().await;
    let mut config = mirrors(&origin.url());
    config.upstreams[0].endpoints = vec![endpoint("http://bad host with spaces")];
    origin.push(Reply::ok(M).header("content-type", OCI_MANIFEST));
    let up = client(config);
    assert_eq!(get_alpine_manifest(&up).await.unwrap().bytes.as_ref(), M);
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn head_on_a_cold_manifest_costs_one_upstream_head_and_the_get_one_get() {
    let origin = MockRegistry::start().await;
    let digest = Digest::sha256_of(M);
    let answer = || {
        Reply::ok(M)
            .header("content-type", OCI_MANIFEST)
            .header("docker-content-digest", digest.as_str())
    };
    origin.push(answer()).push(answer());
    let config = mirrors(&origin.url());
    let svc = service_with(Arc::new(client(config.clone())), config);
    let uri = "/v2/library/alpine/manifests/1";

    let head = call(&svc, http::Method::HEAD, uri, &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(head.header("content-type"), Some(OCI_MANIFEST));
    let length = M.len().to_string();
    assert_eq!(head.header("content-length"), Some(length.as_str()));
    assert!(head.body.is_empty());
    let methods = |origin: &MockRegistry| -> Vec<http::Method> {
        origin.seen().into_iter().map(|s| s.method).collect()
    };
    assert_eq!(methods(&origin), [http::Method::HEAD]);

    let got = get(&svc, uri).await;
    assert_eq!((got.status.as_u16(), got.body.as_ref()), (200, M));
    assert_eq!(methods(&origin), [http::Method::HEAD, http::Method::GET]);

    // Warm: HEAD and GET by tag and by digest ask the origin nothing.
    let by_digest = format!("/v2/library/alpine/manifests/{digest}");
    for uri in [uri, by_digest.as_str()] {
        let head = call(&svc, http::Method::HEAD, uri, &[]).await;
        assert_eq!(head.header("content-length"), Some(length.as_str()));
        assert_eq!(get(&svc, uri).await.body.as_ref(), M);
    }
    assert_eq!(origin.count(), 2);
}
