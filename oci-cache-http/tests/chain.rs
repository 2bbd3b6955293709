//! The mirror chain's decisions in HyperUpstream (issue 5 item 1): which
//! endpoint is asked next, by error kind, and which endpoints a request may
//! reach at all (skip_fallback, digest-only mirrors, override_path).

use std::sync::Arc;
use std::time::Duration;

use oci_cache_core::digest::Digest;
use oci_cache_core::mirror::{Endpoint, MirrorConfig};
use oci_cache_core::reference::ManifestRef;
use oci_cache_core::upstream::Upstream;
use oci_cache_core::{Error, UpstreamErrorKind};
use oci_cache_http::{HyperUpstream, ProxyConfig, UpstreamOptions};

use crate::auth::client;
use crate::support::*;

const M: &[u8] = br#"{"schemaVersion":2}"#;

fn client_with_timeout(mirrors: MirrorConfig, request_timeout: Duration) -> HyperUpstream {
    let options = UpstreamOptions::default()
        .with_request_timeout(request_timeout)
        .with_proxy(ProxyConfig::Direct);
    HyperUpstream::new(Arc::new(mirrors), options).unwrap()
}

/// docker.io with `endpoints` as mirrors before `origin`.
fn config(origin: &MockRegistry, endpoints: Vec<Endpoint>, skip_fallback: bool) -> MirrorConfig {
    let mut config = mirrors(&origin.url());
    config.upstreams[0].endpoints = endpoints;
    config.upstreams[0].skip_fallback = skip_fallback;
    config.validate().unwrap();
    config
}

fn manifest_ok() -> Reply {
    Reply::ok(M).header("content-type", OCI_MANIFEST)
}

async fn get(up: &HyperUpstream, reference: ManifestRef) -> Result<Vec<u8>, Error> {
    up.manifest_get(
        &registry("docker.io"),
        &repo("library/alpine"),
        &reference,
        &[],
    )
    .await
    .map(|m| m.bytes.to_vec())
}

fn tag() -> ManifestRef {
    ManifestRef::Tag("3".parse().unwrap())
}

fn kind(err: Error) -> UpstreamErrorKind {
    match err {
        Error::Upstream(e) => e.kind(),
        other => panic!("expected an upstream error, got {other:?}"),
    }
}

#[tokio::test]
async fn three_endpoints_are_tried_in_order_until_one_has_it() {
    let (first, second, origin) = (
        MockRegistry::start().await,
        MockRegistry::start().await,
        MockRegistry::start().await,
    );
    first.push(Reply::status(500));
    second.push(Reply::status(404));
    origin.push(manifest_ok());
    let up = client(config(
        &origin,
        vec![endpoint(&first.url()), endpoint(&second.url())],
        false,
    ));
    assert_eq!(get(&up, tag()).await.unwrap(), M);
    assert_eq!((first.count(), second.count(), origin.count()), (1, 1, 1));
}

#[tokio::test]
async fn a_timed_out_or_unreachable_mirror_moves_the_chain_on() {
    let (slow, origin) = (MockRegistry::start().await, MockRegistry::start().await);
    slow.push(Reply::Delay(
        Duration::from_secs(5),
        Box::new(manifest_ok()),
    ));
    origin.push(manifest_ok());
    // A port nothing listens on: connection refused.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let up = client_with_timeout(
        config(&origin, vec![endpoint(&dead), endpoint(&slow.url())], false),
        Duration::from_millis(300),
    );
    let started = std::time::Instant::now();
    assert_eq!(get(&up, tag()).await.unwrap(), M);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!((slow.count(), origin.count()), (1, 1));
}

#[tokio::test]
async fn a_definitive_401_stops_the_chain() {
    let (mirror, origin) = (MockRegistry::start().await, MockRegistry::start().await);
    // Basic auth demanded and no credentials configured: no retry can help.
    mirror.push(Reply::status(401).header("www-authenticate", "Basic realm=\"mirror\""));
    origin.push(manifest_ok());
    let up = client(config(&origin, vec![endpoint(&mirror.url())], false));
    assert_eq!(
        kind(get(&up, tag()).await.unwrap_err()),
        UpstreamErrorKind::Unauthorized
    );
    assert_eq!((mirror.count(), origin.count()), (1, 0));
}

#[tokio::test]
async fn skip_fallback_never_reaches_the_origin() {
    let (mirror, origin) = (MockRegistry::start().await, MockRegistry::start().await);
    mirror.push(Reply::status(404)).push(Reply::status(503));
    origin.push(manifest_ok()).push(manifest_ok());
    let up = client(config(&origin, vec![endpoint(&mirror.url())], true));
    assert_eq!(
        kind(get(&up, tag()).await.unwrap_err()),
        UpstreamErrorKind::NotFound
    );
    assert_eq!(
        kind(get(&up, tag()).await.unwrap_err()),
        UpstreamErrorKind::Unavailable
    );
    assert_eq!((mirror.count(), origin.count()), (2, 0));
}

#[tokio::test]
async fn digest_only_mirrors_serve_digests_but_never_resolve_tags() {
    let (public, origin) = (MockRegistry::start().await, MockRegistry::start().await);
    let digest = Digest::sha256_of(M);
    public.push(manifest_ok());
    origin.push(manifest_ok());
    let up = client(config(
        &origin,
        vec![endpoint(&public.url()).with_resolve(false)],
        false,
    ));

    assert_eq!(get(&up, tag()).await.unwrap(), M);
    assert_eq!((public.count(), origin.count()), (0, 1));
    let tags = up
        .tag_list(&registry("docker.io"), &repo("library/alpine"), None, None)
        .await;
    assert!(tags.is_err(), "the origin's script is used up");
    assert_eq!(public.count(), 0, "a tag list is tag resolution");

    assert_eq!(
        get(&up, ManifestRef::Digest(digest.clone())).await.unwrap(),
        M
    );
    assert_eq!(public.count(), 1);
    assert_eq!(
        public.seen()[0].uri,
        format!("/v2/library/alpine/manifests/{digest}?ns=docker.io")
    );
}

#[tokio::test]
async fn override_path_is_the_api_root_verbatim() {
    let (harbor, origin) = (MockRegistry::start().await, MockRegistry::start().await);
    harbor.push(manifest_ok());
    let proxy_project =
        Endpoint::new(format!("{}/v2/proxy-hub/", harbor.url())).with_override_path(true);
    let up = client(config(&origin, vec![proxy_project], false));
    assert_eq!(get(&up, tag()).await.unwrap(), M);
    assert_eq!(
        harbor.seen()[0].uri,
        "/v2/proxy-hub/library/alpine/manifests/3?ns=docker.io"
    );
    assert_eq!(origin.count(), 0);
}
