//! Issue 17, hostile peers on the wire: lying or greedy upstreams (tag lists,
//! token lifetimes, Retry-After, non-manifests) and greedy clients
//! (connection count, idle HTTP/2 connections). Scripted upstreams and raw
//! sockets on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use oci_cache_core::upstream::Upstream;
use oci_cache_core::Error;
use oci_cache_http::{HyperUpstream, ProxyConfig, UpstreamOptions};

use crate::support::*;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const M: &[u8] = br#"{"schemaVersion":2}"#;

fn options() -> UpstreamOptions {
    UpstreamOptions {
        proxy: ProxyConfig::Direct,
        ..UpstreamOptions::default()
    }
}

fn client_with(origin: &MockRegistry, options: UpstreamOptions) -> Arc<HyperUpstream> {
    Arc::new(HyperUpstream::new(Arc::new(mirrors(&origin.url())), options).unwrap())
}

fn tag_page(tags: impl Iterator<Item = String>) -> String {
    let tags: Vec<String> = tags.collect();
    serde_json::json!({ "name": "library/alpine", "tags": tags }).to_string()
}

fn assert_too_large(err: Error, limit: u64) {
    match err {
        Error::TooLarge { limit: l, .. } => assert_eq!(l, limit),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

// ------------------------------------------------------------------ tag lists

#[tokio::test]
async fn a_huge_tag_list_stops_at_the_byte_cap() {
    let origin = MockRegistry::start().await;
    // 4 MiB of tags in one page against a 256 KiB cap.
    let huge = tag_page((0..300_000).map(|i| format!("tag-{i:012}")));
    assert!(huge.len() > 4 * 1024 * 1024);
    origin.push(Reply::ok(huge));
    let cap = 256 * 1024;
    let up = client_with(
        &origin,
        UpstreamOptions {
            max_tag_list_bytes: cap,
            ..options()
        },
    );
    let err = up
        .tag_list(&registry("docker.io"), &repo("library/alpine"), None, None)
        .await
        .unwrap_err();
    assert_too_large(err, cap);
}

#[tokio::test]
async fn the_byte_cap_covers_every_page() {
    let origin = MockRegistry::start().await;
    // Pages of ~100 KiB, each linking to the next: the old per-page cap let
    // 1000 of them (16 GiB) through.
    for page in 0..10 {
        origin.push(
            Reply::ok(tag_page((0..5_000).map(|i| format!("p{page}-{i:012}")))).header(
                "link",
                &format!("</v2/library/alpine/tags/list?last=p{page}>; rel=\"next\""),
            ),
        );
    }
    let cap = 256 * 1024;
    let up = client_with(
        &origin,
        UpstreamOptions {
            max_tag_list_bytes: cap,
            ..options()
        },
    );
    let err = up
        .tag_list(&registry("docker.io"), &repo("library/alpine"), None, None)
        .await
        .unwrap_err();
    assert_too_large(err, cap);
    assert_eq!(origin.count(), 3, "stops at the page that crosses the cap");
}

#[tokio::test]
async fn too_many_tags_is_an_error() {
    let origin = MockRegistry::start().await;
    origin.push(Reply::ok(tag_page((0..11).map(|i| i.to_string()))));
    let up = client_with(
        &origin,
        UpstreamOptions {
            max_tags: 10,
            ..options()
        },
    );
    let err = up
        .tag_list(&registry("docker.io"), &repo("library/alpine"), None, None)
        .await
        .unwrap_err();
    assert_too_large(err, 10);
}

#[tokio::test]
async fn n_and_last_go_upstream_and_one_more_tells_about_the_next_page() {
    let origin = MockRegistry::start().await;
    origin.push(Reply::ok(tag_page(
        ["b", "c", "d"].iter().map(|t| t.to_string()),
    )));
    let svc = service_with(client_with(&origin, options()), mirrors(&origin.url()));
    let answer = get(&svc, "/v2/library/alpine/tags/list?n=2&last=a").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["tags"], serde_json::json!(["b", "c"]));
    assert!(answer.header("link").unwrap().contains("last=c"));
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/v2/library/alpine/tags/list?n=3&last=a");
}

#[tokio::test]
async fn concurrent_tag_list_requests_make_one_upstream_request() {
    let origin = MockRegistry::start().await;
    origin.push(Reply::Delay(
        Duration::from_millis(300),
        Box::new(Reply::ok(tag_page(["1"].iter().map(|t| t.to_string())))),
    ));
    let svc = service_with(client_with(&origin, options()), mirrors(&origin.url()));
    let answers =
        futures::future::join_all((0..10).map(|_| get(&svc, "/v2/library/alpine/tags/list"))).await;
    for answer in answers {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json()["tags"], serde_json::json!(["1"]));
    }
    assert_eq!(origin.count(), 1);
}

// ------------------------------------------------------------------ tokens, Retry-After, manifests

#[tokio::test]
async fn a_token_that_never_expires_does_not_panic() {
    let origin = MockRegistry::start().await;
    origin
        .push(Reply::status(401).header(
            "www-authenticate",
            &format!("Bearer realm=\"{}/token\",service=\"mock\"", origin.url()),
        ))
        .push(Reply::ok(
            r#"{"token":"t","expires_in":18446744073709551615}"#,
        ))
        .push(Reply::ok(M).header("content-type", OCI));
    let up = client_with(&origin, options());
    let fetched = get_alpine_manifest(&up).await.unwrap();
    assert_eq!(&fetched.bytes[..], M);
    assert_eq!(origin.seen()[2].header("authorization"), Some("Bearer t"));
}

#[tokio::test]
async fn retry_after_passed_to_clients_is_capped() {
    let origin = MockRegistry::start().await;
    origin.push(Reply::status(429).header("retry-after", "31536000"));
    let svc = service_with(client_with(&origin, options()), mirrors(&origin.url()));
    let answer = get(&svc, "/v2/library/alpine/manifests/3").await;
    assert_eq!(answer.status, 429);
    let secs: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!(secs <= 300, "Retry-After {secs}");
}

#[tokio::test]
async fn a_manifest_answer_that_is_not_a_manifest_is_not_cached() {
    let origin = MockRegistry::start().await;
    let html = "<html><body>maintenance</body></html>";
    origin
        .push(Reply::ok(html).header("content-type", "text/html"))
        .push(Reply::ok(M).header("content-type", "application/octet-stream"))
        .push(Reply::ok(M).header("content-type", OCI));
    let svc = service_with(client_with(&origin, options()), mirrors(&origin.url()));
    for _ in 0..2 {
        let answer = get(&svc, "/v2/library/alpine/manifests/3").await;
        assert_ne!(answer.status, 200, "{:?}", answer.body);
        assert_ne!(&answer.body[..], html.as_bytes());
    }
    let answer = get(&svc, "/v2/library/alpine/manifests/3").await;
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.body[..], M);
    assert_eq!(
        origin.count(),
        3,
        "each refused answer was asked again, not cached"
    );
}

#[tokio::test]
async fn responses_carry_nosniff() {
    let (svc, fake) = fake_service();
    fake.set_tag("docker.io", "library/alpine", "3", &[(OCI, M)]);
    for uri in [
        "/v2/",
        "/v2/library/alpine/manifests/3",
        "/v2/nope/x/y/manifests/3",
    ] {
        let answer = call(&svc, Method::GET, uri, &[]).await;
        assert_eq!(
            answer.header("x-content-type-options"),
            Some("nosniff"),
            "{uri}: {}",
            answer.status
        );
    }
}
