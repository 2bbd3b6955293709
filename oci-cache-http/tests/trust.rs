//! Where upstream credentials go and which redirects are followed (issue 11),
//! against scripted registries on 127.0.0.1 and token servers / CDNs on
//! 127.0.0.2. Host names (`*.oci.test`) reach them through a mapping
//! `CONNECT` proxy, so that Docker Hub's layout (registry and realm on two
//! hosts of one domain) and public-looking endpoints can be played locally.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::TryStreamExt;
use oci_cache_core::digest::Digest;
use oci_cache_core::mirror::{Credentials, Endpoint, MirrorConfig};
use oci_cache_core::observe::{Observer, TrustEvent, TrustTarget};
use oci_cache_core::upstream::Upstream;
use oci_cache_core::{Error, UpstreamErrorKind};
use oci_cache_http::{HyperUpstream, ProxyConfig, UpstreamOptions};

use crate::support::*;

const M: &[u8] = br#"{"schemaVersion":2}"#;

#[derive(Debug, Default)]
struct Refusals {
    count: AtomicUsize,
    last: Mutex<Option<TrustEvent>>,
}

impl Observer for Refusals {
    fn trust_refused(&self, event: &TrustEvent) {
        self.count.fetch_add(1, Ordering::SeqCst);
        *self.last.lock().unwrap() = Some(event.clone());
    }
}

impl Refusals {
    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
    fn last(&self) -> TrustEvent {
        self.last.lock().unwrap().clone().expect("a refusal")
    }
}

fn client_with(mirrors: MirrorConfig, proxy: ProxyConfig) -> (HyperUpstream, Arc<Refusals>) {
    let refusals = Arc::new(Refusals::default());
    let options = UpstreamOptions::default().with_proxy(proxy);
    let up = HyperUpstream::new(Arc::new(mirrors), options)
        .unwrap()
        .with_observer(refusals.clone());
    (up, refusals)
}

fn direct(mirrors: MirrorConfig) -> (HyperUpstream, Arc<Refusals>) {
    client_with(mirrors, ProxyConfig::Direct)
}

fn credentials() -> Option<Credentials> {
    Some(Credentials {
        username: "user".into(),
        password: "pass".into(),
    })
}

fn bearer(realm: &str) -> Reply {
    Reply::status(401).header(
        "www-authenticate",
        &format!("Bearer realm=\"{realm}\",service=\"s\",scope=\"repository:library/alpine:pull\""),
    )
}

fn manifest_reply() -> Reply {
    Reply::ok(M).header("content-type", OCI_MANIFEST)
}

fn kind(err: Error) -> UpstreamErrorKind {
    match err {
        Error::Upstream(e) => e.kind(),
        other => panic!("expected an upstream error, got {other:?}"),
    }
}

fn with_authorization(mock: &MockRegistry) -> usize {
    mock.seen()
        .iter()
        .filter(|s| s.header("authorization").is_some())
        .count()
}

/// A mapping proxy and the mirrors whose origin is `http://NAME:PORT`.
async fn named(hosts: &[(&str, &str)], origin: &str) -> (ConnectProxy, MirrorConfig, ProxyConfig) {
    let proxy = ConnectProxy::start_with_hosts(hosts).await;
    let config = ProxyConfig::explicit(proxy.url(), "");
    (proxy, mirrors(origin), config)
}

async fn blob(up: &HyperUpstream, digest: &Digest) -> Result<Bytes, Error> {
    let blob = up
        .blob_get(&registry("docker.io"), &repo("library/alpine"), digest)
        .await?;
    let chunks: Vec<Bytes> = blob.stream.try_collect().await?;
    Ok(chunks.concat().into())
}

#[tokio::test]
async fn credentials_never_reach_a_realm_on_another_host() {
    let origin = MockRegistry::start().await;
    let tokens = MockRegistry::start_on("127.0.0.2").await;
    let mut config = mirrors(&origin.url());
    config.upstreams[0].origin.credentials = credentials();
    let realm = format!("{}/token", tokens.url());
    origin.push(bearer(&realm)).push(bearer(&realm));
    let (up, refusals) = direct(config);
    for _ in 0..2 {
        let err = get_alpine_manifest(&up).await.unwrap_err();
        assert_eq!(kind(err), UpstreamErrorKind::Invalid);
    }
    assert_eq!(tokens.count(), 0, "the foreign token server was contacted");
    assert_eq!(origin.count(), 2);
    assert_eq!(refusals.count(), 2, "every refusal is counted");
    let event = refusals.last();
    assert_eq!(event.target, TrustTarget::Realm);
    assert_eq!(event.target_host, "127.0.0.2");
    assert!(event.reason.contains("token_realms"), "{}", event.reason);
}

#[tokio::test]
async fn an_operator_listed_realm_gets_the_credentials() {
    let origin = MockRegistry::start().await;
    let tokens = MockRegistry::start_on("127.0.0.2").await;
    let mut config = mirrors(&origin.url());
    config.upstreams[0].origin.credentials = credentials();
    config.upstreams[0].origin.token_realms = vec!["127.0.0.2".into()];
    origin
        .push(bearer(&format!("{}/token", tokens.url())))
        .push(manifest_reply());
    tokens.push(Reply::ok(r#"{"token":"t-1"}"#));
    let (up, refusals) = direct(config);
    let m = get_alpine_manifest(&up).await.unwrap();
    assert_eq!(m.bytes.as_ref(), M);
    assert_eq!(
        tokens.seen()[0].header("authorization"),
        Some("Basic dXNlcjpwYXNz")
    );
    assert_eq!(origin.seen()[1].header("authorization"), Some("Bearer t-1"));
    assert_eq!(refusals.count(), 0);
}

#[tokio::test]
async fn an_anonymous_endpoint_may_use_another_hosts_realm_without_credentials() {
    let origin = MockRegistry::start().await;
    let tokens = MockRegistry::start_on("127.0.0.2").await;
    origin
        .push(bearer(&format!("{}/token", tokens.url())))
        .push(manifest_reply());
    tokens.push(Reply::ok(r#"{"token":"anon"}"#));
    let (up, _) = direct(mirrors(&origin.url()));
    get_alpine_manifest(&up).await.unwrap();
    assert_eq!(tokens.count(), 1);
    assert_eq!(with_authorization(&tokens), 0);
}

#[tokio::test]
async fn docker_hub_layout_realm_on_a_sibling_host_of_the_same_domain() {
    let registry_mock = MockRegistry::start().await;
    let tokens = MockRegistry::start_on("127.0.0.2").await;
    let origin = format!("http://registry-1.hub.oci.test:{}", registry_mock.port());
    let (_proxy, mut config, proxy) = named(
        &[
            ("registry-1.hub.oci.test", "127.0.0.1"),
            ("auth.hub.oci.test", "127.0.0.2"),
            ("auth.evil.test", "127.0.0.2"),
        ],
        &origin,
    )
    .await;
    config.upstreams[0].origin.credentials = credentials();
    let sibling = format!("http://auth.hub.oci.test:{}/token", tokens.port());
    let foreign = format!("http://auth.evil.test:{}/token", tokens.port());
    registry_mock
        .push(bearer(&sibling))
        .push(manifest_reply())
        // A later challenge names a realm on another domain: refused, and
        // the sibling realm keeps working for the next request.
        .push(bearer(&foreign))
        .push(manifest_reply());
    tokens.push(Reply::ok(r#"{"token":"hub"}"#));
    let (up, refusals) = client_with(config, proxy);
    get_alpine_manifest(&up).await.unwrap();
    assert_eq!(tokens.count(), 1);
    assert_eq!(
        tokens.seen()[0].header("authorization"),
        Some("Basic dXNlcjpwYXNz")
    );
    assert_eq!(
        registry_mock.seen()[1].header("authorization"),
        Some("Bearer hub")
    );
    // The cached token goes first; the registry answers with a foreign realm.
    let err = get_alpine_manifest(&up).await.unwrap_err();
    assert_eq!(kind(err), UpstreamErrorKind::Invalid);
    assert_eq!(tokens.count(), 1, "credentials went to auth.evil.test");
    assert_eq!(refusals.last().target_host, "auth.evil.test");
    // The refused realm is not remembered: the next request goes without
    // asking it (the registry now answers anonymously).
    get_alpine_manifest(&up).await.unwrap();
    assert_eq!(tokens.count(), 1);
}

#[tokio::test]
async fn manifests_are_not_redirected_to_another_host_blobs_are() {
    let registry_mock = MockRegistry::start().await;
    let cdn = MockRegistry::start_on("127.0.0.2").await;
    let origin = format!("http://registry.oci.test:{}", registry_mock.port());
    let (_proxy, config, proxy) = named(
        &[
            ("registry.oci.test", "127.0.0.1"),
            ("cdn.oci.test", "127.0.0.2"),
        ],
        &origin,
    )
    .await;
    let cdn_url = format!("http://cdn.oci.test:{}", cdn.port());
    let data = Bytes::from_static(b"layer bytes");
    let digest = Digest::sha256_of(&data);
    registry_mock
        .push(Reply::status(307).header("location", &format!("{cdn_url}/manifest")))
        .push(Reply::status(302).header("location", &format!("{cdn_url}/blob?sig=1")));
    cdn.push(Reply::ok(data.clone()));
    let (up, refusals) = client_with(config, proxy);
    let err = get_alpine_manifest(&up).await.unwrap_err();
    assert_eq!(kind(err), UpstreamErrorKind::Invalid);
    assert_eq!(refusals.last().target, TrustTarget::ApiRedirect);
    assert_eq!(blob(&up, &digest).await.unwrap(), data);
    let seen = cdn.seen();
    assert_eq!(seen.len(), 1, "the manifest redirect was followed");
    assert_eq!(seen[0].uri, "/blob?sig=1");
}

#[tokio::test]
async fn redirects_to_internal_addresses_and_other_schemes_are_refused() {
    let registry_mock = MockRegistry::start().await;
    let internal = MockRegistry::start_on("127.0.0.2").await;
    let origin = format!("http://registry.oci.test:{}", registry_mock.port());
    let (_proxy, config, proxy) = named(&[("registry.oci.test", "127.0.0.1")], &origin).await;
    let digest = Digest::sha256_of(b"x");
    registry_mock
        .push(Reply::status(302).header("location", &format!("{}/meta-data", internal.url())))
        .push(Reply::status(302).header("location", "ftp://cdn.oci.test/blob"))
        .push(Reply::status(302).header("location", "file:///etc/passwd"));
    let (up, refusals) = client_with(config.clone(), proxy.clone());
    for _ in 0..3 {
        let err = blob(&up, &digest).await.unwrap_err();
        assert_eq!(kind(err), UpstreamErrorKind::Invalid);
    }
    assert_eq!(internal.count(), 0, "an internal address was reached");
    assert_eq!(
        registry_mock.count(),
        3,
        "a scheme was read as a relative path"
    );
    assert_eq!(refusals.count(), 3);
    assert_eq!(refusals.last().target, TrustTarget::BlobRedirect);

    // The operator may allow internal targets.
    let mut allowed = config;
    allowed.upstreams[0].origin.allow_private_targets = true;
    registry_mock.push(Reply::status(302).header("location", &format!("{}/blob", internal.url())));
    internal.push(Reply::ok("x"));
    let (up, refusals) = client_with(allowed, proxy);
    assert_eq!(blob(&up, &digest).await.unwrap().as_ref(), b"x");
    assert_eq!(refusals.count(), 0);
}

#[tokio::test]
async fn a_tag_list_link_to_another_host_is_not_followed() {
    let origin = MockRegistry::start().await;
    let other = MockRegistry::start_on("127.0.0.2").await;
    origin.push(
        Reply::ok(r#"{"name":"library/alpine","tags":["a"]}"#).header(
            "link",
            &format!(
                "<{}/v2/library/alpine/tags/list?last=a>; rel=\"next\"",
                other.url()
            ),
        ),
    );
    other.push(Reply::ok(r#"{"name":"library/alpine","tags":["evil"]}"#));
    let (up, refusals) = direct(mirrors(&origin.url()));
    let list = up
        .tag_list(&registry("docker.io"), &repo("library/alpine"), None, None)
        .await
        .unwrap();
    assert_eq!(list.tags, vec!["a".to_owned()]);
    assert_eq!(other.count(), 0);
    assert_eq!(refusals.last().target, TrustTarget::ApiRedirect);
}

#[tokio::test]
async fn a_mirror_with_a_refused_realm_falls_back_to_the_origin() {
    let origin = MockRegistry::start().await;
    let mirror = MockRegistry::start().await;
    let tokens = MockRegistry::start_on("127.0.0.2").await;
    let mut config = mirrors(&origin.url());
    let mut mirror_endpoint = Endpoint::new(mirror.url());
    mirror_endpoint.credentials = credentials();
    config.upstreams[0].endpoints = vec![mirror_endpoint];
    mirror.push(bearer(&format!("{}/token", tokens.url())));
    origin.push(manifest_reply());
    let (up, _) = direct(config);
    get_alpine_manifest(&up).await.unwrap();
    assert_eq!(tokens.count(), 0);
    assert_eq!(origin.count(), 1);
}

// ---------------------------------------------------------------- client authentication

mod client_auth {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http::{Method, Request, StatusCode};
    use http_body_util::{BodyExt, Empty};
    use oci_cache_http::client_auth::PeerAddr;
    use oci_cache_http::Pipeline;

    use super::*;

    struct Guarded {
        svc: Pipeline,
        _dir: tempfile::TempDir,
    }

    /// docker.io made public, ghcr.io (with credentials) at the default,
    /// authenticated; one client `node:pw` in the htpasswd file.
    fn guarded() -> (Guarded, Arc<FakeUpstream>) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = mirrors("http://127.0.0.1:9");
        config.upstreams[1].origin.credentials = credentials();
        let fake = Arc::new(FakeUpstream::default());
        let inner = service_with(fake.clone(), config.clone())
            .with_metrics(Arc::new(oci_cache_http::metrics::Metrics::new()));
        let svc = behind_auth(inner, &config, dir.path(), "node", &["docker.io"]);
        (Guarded { svc, _dir: dir }, fake)
    }

    async fn get(
        g: &Guarded,
        uri: &str,
        authorization: Option<&str>,
        peer: [u8; 4],
    ) -> (StatusCode, http::HeaderMap, Bytes) {
        let mut request = Request::builder().method(Method::GET).uri(uri);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let mut request = request.body(Empty::<Bytes>::new()).unwrap();
        request
            .extensions_mut()
            .insert(PeerAddr(SocketAddr::from((peer, 40000))));
        let response = g.svc.handle(request).await;
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    const NODE: &str = "Basic bm9kZTpwdw=="; // node:pw
    const WRONG: &str = "Basic bm9kZTpubw=="; // node:no
    const EMPTY: &str = "Basic Og=="; // ":" as containers/image sends without credentials

    #[tokio::test]
    async fn public_upstreams_are_anonymous_authenticated_ones_need_the_htpasswd_user() {
        let (g, fake) = guarded();
        let digest = fake.add_blob(BlobScript::new(b"layer"));
        let public = format!("/v2/library/alpine/blobs/{digest}");
        let private = format!("/v2/ghcr.io/org/app/blobs/{digest}");

        let (status, headers, _) = get(&g, "/v2/", None, [10, 0, 0, 1]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers["www-authenticate"], "Basic realm=\"test-realm\"");
        assert_eq!(
            get(&g, "/v2/", Some(NODE), [10, 0, 0, 1]).await.0,
            StatusCode::OK
        );

        for anonymous in [None, Some(EMPTY)] {
            let (status, _, body) = get(&g, &public, anonymous, [10, 0, 0, 1]).await;
            assert_eq!((status, body.as_ref()), (StatusCode::OK, b"layer".as_ref()));
            assert_eq!(
                get(&g, &private, anonymous, [10, 0, 0, 1]).await.0,
                StatusCode::UNAUTHORIZED
            );
        }
        let calls = fake.calls().total();
        assert_eq!(
            get(&g, &private, Some(WRONG), [10, 0, 0, 1]).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(&g, &public, Some(WRONG), [10, 0, 0, 1]).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            fake.calls().total(),
            calls,
            "a refused request reached the upstream"
        );
        let (status, _, body) = get(&g, &private, Some(NODE), [10, 0, 0, 1]).await;
        assert_eq!((status, body.as_ref()), (StatusCode::OK, b"layer".as_ref()));
    }

    /// The doctor's probe: its record is open like `/healthz`, its image
    /// follows each upstream's access, and an authenticated pull of it
    /// through a protected upstream does not make it private for the next
    /// anonymous probe through a public one.
    #[tokio::test]
    async fn the_doctor_probe_follows_upstream_access_and_is_never_private() {
        let (g, fake) = guarded();
        let peer = [10, 0, 0, 4];
        let (status, _, body) = get(&g, "/doctor/probe/n1", None, peer).await;
        assert_eq!(status, StatusCode::OK);
        assert!(String::from_utf8_lossy(&body).contains("\"seen\":false"));
        let protected = "/v2/ghcr.io/oci-cache-doctor/probe/manifests/n1";
        assert_eq!(
            get(&g, protected, None, peer).await.0,
            StatusCode::UNAUTHORIZED
        );
        let (status, _, manifest) = get(&g, protected, Some(NODE), peer).await;
        assert_eq!(status, StatusCode::OK);
        let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        let config = manifest["config"]["digest"].as_str().unwrap();
        let by_digest =
            |upstream: &str| format!("/v2/{upstream}/oci-cache-doctor/probe/blobs/{config}");
        assert_eq!(
            get(&g, &by_digest("ghcr.io"), Some(NODE), peer).await.0,
            StatusCode::OK
        );
        assert_eq!(
            get(&g, &by_digest("docker.io"), None, peer).await.0,
            StatusCode::OK
        );
        let (_, _, body) = get(&g, "/doctor/probe/n1", None, peer).await;
        assert!(String::from_utf8_lossy(&body).contains("\"seen\":true"));
        assert_eq!(fake.calls().total(), 0, "the probe reached upstream");
    }

    #[tokio::test]
    async fn metrics_need_credentials_probes_do_not() {
        let (g, _) = guarded();
        let peer = [10, 0, 0, 3];
        assert_eq!(
            get(&g, "/metrics", None, peer).await.0,
            StatusCode::UNAUTHORIZED
        );
        let (status, _, body) = get(&g, "/metrics", Some(NODE), peer).await;
        assert_eq!(status, StatusCode::OK);
        assert!(String::from_utf8_lossy(&body).contains("# EOF"));
        for probe in ["/healthz", "/readyz"] {
            assert_eq!(
                get(&g, probe, None, peer).await.0,
                StatusCode::OK,
                "{probe}"
            );
        }
    }

    #[tokio::test]
    async fn failed_logins_are_limited_per_client_address() {
        let (g, _) = guarded();
        let mut statuses = Vec::new();
        for _ in 0..11 {
            statuses.push(get(&g, "/v2/", Some(WRONG), [10, 0, 0, 2]).await.0);
        }
        assert!(
            statuses[..10]
                .iter()
                .all(|s| *s == StatusCode::UNAUTHORIZED),
            "{statuses:?}"
        );
        let (status, headers, _) = get(&g, "/v2/", Some(NODE), [10, 0, 0, 2]).await;
        assert_eq!(statuses[10], StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "the right password is not tried while blocked"
        );
        assert!(headers.contains_key("retry-after"));
        // Another address is not affected.
        assert_eq!(
            get(&g, "/v2/", Some(NODE), [10, 0, 0, 3]).await.0,
            StatusCode::OK
        );
    }

    /// Issue 22: a burst of concurrent guesses gets the same ten checks as
    /// guesses one after another (counted after the check, all 60 were checked).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_guesses_are_limited_before_they_are_checked() {
        let (g, _) = guarded();
        let guesses = (0..60).map(|_| get(&g, "/v2/", Some(WRONG), [10, 0, 0, 4]));
        let statuses: Vec<StatusCode> = futures::future::join_all(guesses)
            .await
            .into_iter()
            .map(|(status, _, _)| status)
            .collect();
        let checked = statuses
            .iter()
            .filter(|s| **s == StatusCode::UNAUTHORIZED)
            .count();
        let refused = statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count();
        assert_eq!((checked, refused), (10, 50), "{statuses:?}");

        // The right password from many requests at once is slowed, never refused.
        let pulls = (0..30).map(|_| get(&g, "/v2/", Some(NODE), [10, 0, 0, 5]));
        for (status, _, _) in futures::future::join_all(pulls).await {
            assert_eq!(status, StatusCode::OK);
        }
    }

    async fn send(
        g: &Guarded,
        method: Method,
        uri: &str,
        authorization: Option<&str>,
    ) -> (StatusCode, Bytes) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let request = request.body(Empty::<Bytes>::new()).unwrap();
        let (parts, body) = g.svc.handle(request).await.into_parts();
        (parts.status, body.collect().await.unwrap().to_bytes())
    }

    /// Issue 13: the purge endpoint needs credentials, and after it the
    /// next pull goes upstream; without client auth it does not exist.
    #[tokio::test]
    async fn the_admin_purge_endpoint_needs_credentials_and_forces_a_miss() {
        let (g, fake) = guarded();
        let layer = fake.add_blob(BlobScript::new(b"layer"));
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":5,"digest":"{layer}"}},"layers":[]}}"#
        );
        fake.set_tag(
            "docker.io",
            "library/alpine",
            "3.20",
            &[(
                "application/vnd.oci.image.manifest.v1+json",
                manifest.as_bytes(),
            )],
        );
        let tag_uri = "/v2/library/alpine/manifests/3.20";
        assert_eq!(send(&g, Method::GET, tag_uri, None).await.0, StatusCode::OK);
        let blob_uri = format!("/v2/library/alpine/blobs/{layer}");
        assert_eq!(
            send(&g, Method::GET, &blob_uri, None).await.0,
            StatusCode::OK
        );
        let gets = (fake.calls().manifest_get(), fake.calls().blob_get());
        assert_eq!(send(&g, Method::GET, tag_uri, None).await.0, StatusCode::OK);
        assert_eq!(
            (fake.calls().manifest_get(), fake.calls().blob_get()),
            gets,
            "cached"
        );

        let purge = "/admin/purge?ref=alpine:3.20";
        assert_eq!(
            send(&g, Method::DELETE, purge, None).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            send(&g, Method::DELETE, purge, Some(WRONG)).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            send(&g, Method::GET, purge, Some(NODE)).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        let (status, body) = send(&g, Method::DELETE, purge, Some(NODE)).await;
        assert_eq!(status, StatusCode::OK);
        let report: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (&report["tags"], &report["manifests"], &report["blobs"]),
            (&1.into(), &1.into(), &1.into()),
            "{report}"
        );
        assert_eq!(send(&g, Method::GET, tag_uri, None).await.0, StatusCode::OK);
        assert_eq!(
            send(&g, Method::GET, &blob_uri, None).await.0,
            StatusCode::OK
        );
        assert_eq!(
            (fake.calls().manifest_get(), fake.calls().blob_get()),
            (gets.0 + 1, gets.1 + 1),
            "after the purge both came from upstream again"
        );
        let (status, _) = send(
            &g,
            Method::DELETE,
            "/admin/purge?ref=nope.example/x:1",
            Some(NODE),
        )
        .await;
        assert!(status.is_client_error(), "{status}");

        // Without client authentication there is no such endpoint.
        let plain = service_with(fake.clone(), mirrors("http://127.0.0.1:9"));
        let request = Request::builder()
            .method(Method::DELETE)
            .uri(purge)
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(plain.handle(request).await.status(), StatusCode::NOT_FOUND);
    }
}
