//! Upstream authentication against the scripted mock registry.

use std::sync::Arc;

use oci_cache_core::mirror::{Credentials, MirrorConfig};
use oci_cache_core::reference::ManifestRef;
use oci_cache_core::upstream::Upstream;
use oci_cache_http::{HyperUpstream, ProxyConfig, UpstreamOptions};

use crate::support::*;

const M: &[u8] = br#"{"schemaVersion":2}"#;

fn options() -> UpstreamOptions {
    UpstreamOptions::default().with_proxy(ProxyConfig::Direct)
}

pub fn client(mirrors: MirrorConfig) -> HyperUpstream {
    HyperUpstream::new(Arc::new(mirrors), options()).unwrap()
}

fn tag(t: &str) -> ManifestRef {
    ManifestRef::Tag(t.parse().unwrap())
}

fn challenge(mock: &MockRegistry) -> Reply {
    Reply::status(401).header(
        "www-authenticate",
        &format!(
            "Bearer realm=\"{}/token\",service=\"mock.registry\",scope=\"repository:library/alpine:pull\"",
            mock.url()
        ),
    )
}

fn manifest_reply() -> Reply {
    Reply::ok(M).header("content-type", OCI_MANIFEST)
}

#[tokio::test]
async fn anonymous_bearer_flow_and_token_reuse() {
    let mock = MockRegistry::start().await;
    mock.push(challenge(&mock))
        .push(Reply::ok(r#"{"token":"tok-1","expires_in":300}"#))
        .push(manifest_reply())
        .push(manifest_reply());
    let up = client(mirrors(&mock.url()));
    let (r, repo_) = (registry("docker.io"), repo("library/alpine"));
    let m = up.manifest_get(&r, &repo_, &tag("3"), &[]).await.unwrap();
    assert_eq!(m.bytes.as_ref(), M);
    assert_eq!(m.head.media_type, OCI_MANIFEST);
    // The second call reuses the cached token: one request, no new 401.
    up.manifest_get(&r, &repo_, &tag("3"), &[]).await.unwrap();

    let seen = mock.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0].uri, "/v2/library/alpine/manifests/3");
    assert_eq!(seen[0].header("authorization"), None);
    assert_eq!(
        seen[1].uri,
        "/token?service=mock.registry&scope=repository%3Alibrary%2Falpine%3Apull"
    );
    assert_eq!(
        seen[1].header("authorization"),
        None,
        "anonymous token request"
    );
    assert_eq!(seen[2].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(seen[3].header("authorization"), Some("Bearer tok-1"));
}

#[tokio::test]
async fn credentials_go_to_the_token_endpoint_and_refused_tokens_are_refreshed() {
    let mock = MockRegistry::start().await;
    let mut config = mirrors(&mock.url());
    config.upstreams[0].origin.credentials = Some(Credentials {
        username: "user".into(),
        password: "pass".into(),
    });
    mock.push(challenge(&mock))
        .push(Reply::ok(r#"{"access_token":"tok-1"}"#))
        .push(manifest_reply())
        // The registry now refuses tok-1: one refresh, then success.
        .push(challenge(&mock))
        .push(Reply::ok(r#"{"token":"tok-2"}"#))
        .push(manifest_reply());
    let up = client(config);
    let (r, repo_) = (registry("docker.io"), repo("library/alpine"));
    up.manifest_get(&r, &repo_, &tag("3"), &[]).await.unwrap();
    up.manifest_get(&r, &repo_, &tag("3"), &[]).await.unwrap();
    let seen = mock.seen();
    assert_eq!(seen.len(), 6);
    assert_eq!(seen[1].header("authorization"), Some("Basic dXNlcjpwYXNz"));
    assert_eq!(seen[2].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(seen[3].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(seen[5].header("authorization"), Some("Bearer tok-2"));
}

#[tokio::test]
async fn basic_challenge_gets_basic_credentials() {
    let mock = MockRegistry::start().await;
    let mut config = mirrors(&mock.url());
    config.upstreams[0].origin.credentials = Some(Credentials {
        username: "user".into(),
        password: "pass".into(),
    });
    mock.push(Reply::status(401).header("www-authenticate", "Basic realm=\"registry\""))
        .push(manifest_reply());
    let up = client(config);
    get_alpine_manifest(&up).await.unwrap();
    let seen = mock.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("authorization"), Some("Basic dXNlcjpwYXNz"));
}

#[tokio::test]
async fn a_second_401_is_unauthorized_and_stops_the_chain() {
    let origin = MockRegistry::start().await;
    let mirror = MockRegistry::start().await;
    let config = mirror_then_origin(&mirror.url(), &origin.url());
    mirror
        .push(Reply::status(401).header(
            "www-authenticate",
            &format!("Bearer realm=\"{}/token\"", mirror.url()),
        ))
        .push(Reply::ok(r#"{"token":"t"}"#))
        .push(Reply::status(401));
    let up = client(config);
    let err = get_alpine_manifest(&up).await.unwrap_err();
    match err {
        oci_cache_core::Error::Upstream(e) => {
            assert_eq!(e.kind(), oci_cache_core::UpstreamErrorKind::Unauthorized)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(mirror.count(), 3);
    assert_eq!(origin.count(), 0, "401 after auth is definitive");
}

#[tokio::test]
async fn expiring_tokens_are_renewed_before_the_registry_refuses_them() {
    let mock = MockRegistry::start().await;
    mock.push(challenge(&mock))
        .push(Reply::ok(r#"{"token":"short","expires_in":1}"#))
        .push(manifest_reply())
        // After 90 % of a second the token is stale: a new one is fetched
        // up front, without another 401.
        .push(Reply::ok(r#"{"token":"fresh","expires_in":300}"#))
        .push(manifest_reply());
    let up = client(mirrors(&mock.url()));
    let (r, repo_) = (registry("docker.io"), repo("library/alpine"));
    up.manifest_get(&r, &repo_, &tag("3"), &[]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(950)).await;
    up.manifest_get(&r, &repo_, &tag("3"), &[]).await.unwrap();
    let seen = mock.seen();
    assert_eq!(seen.len(), 5);
    assert!(seen[3].uri.starts_with("/token?"), "{}", seen[3].uri);
    assert_eq!(seen[4].header("authorization"), Some("Bearer fresh"));
    assert_eq!(mock.remaining(), 0);
}
