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
