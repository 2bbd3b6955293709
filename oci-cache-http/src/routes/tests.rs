#![allow(clippy::unwrap_used, clippy::panic)]

use super::*;
use oci_cache_core::mirror::{Endpoint, UpstreamConfig};

const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn upstream(name: &str, aliases: &[&str]) -> UpstreamConfig {
    UpstreamConfig {
        name: Registry::new(name).unwrap(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        endpoints: vec![],
        origin: Endpoint::new(format!("https://{name}")),
        skip_fallback: false,
    }
}

fn mirrors() -> MirrorConfig {
    MirrorConfig {
        upstreams: vec![
            upstream(
                "docker.io",
                &["index.docker.io", "registry-1.docker.io", "proxy-docker.io"],
            ),
            upstream("ghcr.io", &[]),
            upstream("localhost:5001", &[]),
        ],
        default_upstream: Registry::new("docker.io").unwrap(),
    }
}

fn get(path_and_query: &str) -> Result<Route, OciError> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    route(&Method::GET, path, query, &mirrors(), &[], None)
}

fn manifest(path: &str) -> (String, String, String) {
    match get(path).unwrap() {
        Route::Manifest { target, reference } => (
            target.upstream.to_string(),
            target.repository.to_string(),
            reference.to_string(),
        ),
        other => panic!("{path}: expected a manifest route, got {other:?}"),
    }
}

fn err(path: &str) -> (u16, &'static str) {
    let e = get(path).unwrap_err();
    (e.status.as_u16(), e.code.as_str())
}

#[test]
fn upstream_selection() {
    let cases = [
        (
            "/v2/library/alpine/manifests/3.20",
            "docker.io",
            "library/alpine",
        ),
        ("/v2/alpine/manifests/3.20", "docker.io", "library/alpine"),
        (
            "/v2/library/alpine/manifests/3.20?ns=docker.io",
            "docker.io",
            "library/alpine",
        ),
        (
            "/v2/alpine/manifests/3.20?ns=index.docker.io",
            "docker.io",
            "library/alpine",
        ),
        (
            "/v2/alpine/manifests/3.20?ns=registry-1.docker.io",
            "docker.io",
            "library/alpine",
        ),
        (
            "/v2/alpine/manifests/3.20?ns=DOCKER.IO",
            "docker.io",
            "library/alpine",
        ),
        ("/v2/org/app/manifests/v1?ns=ghcr.io", "ghcr.io", "org/app"),
        ("/v2/app/manifests/v1?ns=ghcr.io", "ghcr.io", "app"),
        ("/v2/ghcr.io/org/app/manifests/v1", "ghcr.io", "org/app"),
        (
            "/v2/docker.io/library/alpine/manifests/3",
            "docker.io",
            "library/alpine",
        ),
        (
            "/v2/docker.io/alpine/manifests/3",
            "docker.io",
            "library/alpine",
        ),
        (
            "/v2/proxy-docker.io/alpine/manifests/3",
            "docker.io",
            "library/alpine",
        ),
        (
            "/v2/docker.io/library/alpine/manifests/3?ns=docker.io",
            "docker.io",
            "library/alpine",
        ),
        (
            "/v2/img/manifests/t?ns=localhost%3A5001",
            "localhost:5001",
            "img",
        ),
        (
            "/v2/localhost:5001/img/manifests/t",
            "localhost:5001",
            "img",
        ),
        (
            "/v2/a/b/c/d/manifests/t?x=1&ns=ghcr.io&y",
            "ghcr.io",
            "a/b/c/d",
        ),
        // With `ns`, the path is the repository, whatever it looks like.
        (
            "/v2/quay.io/app/manifests/t?ns=ghcr.io",
            "ghcr.io",
            "quay.io/app",
        ),
        // A host-like first segment that is a configured upstream (or alias).
        (
            "/v2/registry-1.docker.io/a/b/manifests/t",
            "docker.io",
            "a/b",
        ),
        // A single segment is a repository, never a registry.
        ("/v2/my.app/manifests/t", "docker.io", "library/my.app"),
        // A single segment equal to an upstream name is a repository.
        ("/v2/ghcr.io/manifests/t", "docker.io", "library/ghcr.io"),
    ];
    for (path, up, repo) in cases {
        let (u, r, _) = manifest(path);
        assert_eq!((u.as_str(), r.as_str()), (up, repo), "{path}");
    }
}

#[test]
fn references_and_other_routes() {
    assert_eq!(manifest(&format!("/v2/a/manifests/{DIGEST}")).2, DIGEST);
    assert_eq!(
        manifest(&format!("/v2/a/manifests/{}", DIGEST.replace(':', "%3A"))).2,
        DIGEST
    );
    assert_eq!(manifest("/v2/a/manifests/latest").2, "latest");
    assert_eq!(get("/v2/").unwrap(), Route::Ping);
    assert_eq!(get("/v2").unwrap(), Route::Ping);
    assert_eq!(get("/healthz").unwrap(), Route::Health);
    assert_eq!(get("/readyz").unwrap(), Route::Ready);
    assert_eq!(get("/metrics").unwrap(), Route::Metrics);
    assert_eq!(get("/").unwrap(), Route::StatusPage);
    assert_eq!(get("/status.json").unwrap(), Route::StatusJson);
    assert_eq!(
        get("/client-config/talos").unwrap(),
        Route::ClientConfig {
            kind: "talos".to_owned()
        }
    );
    for bad in ["/client-config/", "/client-config/a/b"] {
        assert_eq!(
            get(bad).unwrap_err().status(),
            StatusCode::NOT_FOUND,
            "{bad}"
        );
    }
    let post = route(
        &Method::POST,
        "/client-config/talos",
        None,
        &mirrors(),
        &[],
        None,
    );
    assert_eq!(post.unwrap_err().status(), StatusCode::METHOD_NOT_ALLOWED);
    // Purge is a route for every method: its handler names the one it takes
    // (405 otherwise), and refuses (404) without an authenticated client.
    for method in [Method::GET, Method::DELETE, Method::POST] {
        let routed = route(
            &method,
            "/admin/purge",
            Some("ref=alpine"),
            &mirrors(),
            &[],
            None,
        );
        assert_eq!(routed.unwrap(), Route::Purge, "{method}");
    }
    assert_eq!(
        get("/admin/purge/x").unwrap_err().status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get("/v2/_catalog?n=10&last=docker.io%2Fa").unwrap(),
        Route::Catalog {
            n: Some(10),
            last: Some("docker.io/a".into())
        }
    );
    match get(&format!("/v2/org/blobs/blobs/{DIGEST}?ns=ghcr.io")).unwrap() {
        Route::Blob { target, digest } => {
            assert_eq!(target.repository.as_str(), "org/blobs");
            assert_eq!(digest.as_str(), DIGEST);
        }
        other => panic!("{other:?}"),
    }
    match get("/v2/ghcr.io/o/tags/list/tags/list?n=2&last=a").unwrap() {
        Route::Tags { target, n, last } => {
            assert_eq!(target.repository.as_str(), "o/tags/list");
            assert_eq!((n, last.as_deref()), (Some(2), Some("a")));
        }
        other => panic!("{other:?}"),
    }
    // "manifests" as a repository component still matches from the right.
    assert_eq!(manifest("/v2/x/manifests/manifests/t").1, "x/manifests");
}

#[test]
fn malformed_requests() {
    let cases: [(&str, (u16, &str)); 21] = [
        // A registry that is not configured, named in the path.
        ("/v2/quay.io/app/manifests/t", (404, "NAME_UNKNOWN")),
        (
            "/v2/evil.example:443/a/b/manifests/t",
            (404, "NAME_UNKNOWN"),
        ),
        ("/v2/localhost/app/manifests/t", (404, "NAME_UNKNOWN")),
        ("/v2/127.0.0.1/app/blobs/sha256:0", (404, "NAME_UNKNOWN")),
        ("/v2/quay.io/app/tags/list", (404, "NAME_UNKNOWN")),
        ("/v2/UPPER/manifests/t", (400, "NAME_INVALID")),
        ("/v2/a//b/manifests/t", (400, "NAME_INVALID")),
        ("/v2/a%2Fb/manifests/t", (400, "NAME_INVALID")),
        ("/v2/a%ff/manifests/t", (400, "NAME_INVALID")),
        ("/v2/-a/manifests/t", (400, "NAME_INVALID")),
        // A tag that cannot exist names no manifest.
        ("/v2/a/manifests/.bad", (404, "MANIFEST_UNKNOWN")),
        ("/v2/a/manifests/sha256:abc", (400, "DIGEST_INVALID")),
        ("/v2/a/blobs/latest", (400, "DIGEST_INVALID")),
        ("/v2/a/blobs/md5:0123", (400, "DIGEST_INVALID")),
        ("/v2/a/tags/list?n=-1", (400, "PAGINATION_NUMBER_INVALID")),
        ("/v2/a/manifests/t?ns=evil.example", (404, "NAME_UNKNOWN")),
        ("/v2/a/manifests/t?ns=", (404, "NAME_UNKNOWN")),
        ("/v2/manifests/t", (404, "NAME_UNKNOWN")),
        ("/v2/a/tags/list/", (404, "NAME_UNKNOWN")),
        ("/v2x", (404, "NAME_UNKNOWN")),
        ("/v2/a/blobs/uploads/123", (405, "UNSUPPORTED")),
    ];
    for (path, expected) in cases {
        assert_eq!(err(path), expected, "{path}");
    }
    let long = format!("/v2/{}/manifests/t", "a".repeat(256));
    assert_eq!(err(&long), (400, "NAME_INVALID"));
}

fn local() -> Vec<String> {
    vec!["local".to_owned()]
}

#[test]
fn hosted_repositories_route_every_method() {
    let hosted = |method: Method, path_and_query: &str| {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        match route(&method, path, query, &mirrors(), &local(), None) {
            Ok(Route::Hosted { repository, op }) => Ok((repository.to_string(), op)),
            Ok(other) => panic!("{path_and_query}: not hosted: {other:?}"),
            Err(e) => Err((e.status.as_u16(), e.code.as_str())),
        }
    };
    let app = || "local/app".to_owned();
    assert_eq!(
        hosted(Method::POST, "/v2/local/app/blobs/uploads/"),
        Ok((app(), HostedOp::Uploads))
    );
    assert_eq!(
        hosted(Method::POST, "/v2/local/app/blobs/uploads"),
        Ok((app(), HostedOp::Uploads))
    );
    assert_eq!(
        hosted(Method::PATCH, "/v2/local/app/blobs/uploads/abc"),
        Ok((app(), HostedOp::Upload("abc".into())))
    );
    assert_eq!(
        hosted(Method::PUT, "/v2/local/a/b/manifests/v1"),
        Ok((
            "local/a/b".into(),
            HostedOp::Manifest(manifest_ref("v1", true).unwrap())
        ))
    );
    // Kind's containerd names the registry it asked for in `ns`.
    assert_eq!(
        hosted(
            Method::GET,
            &format!("/v2/local/app/blobs/{DIGEST}?ns=localhost%3A5009")
        ),
        Ok((app(), HostedOp::Blob(DIGEST.parse().unwrap())))
    );
    assert_eq!(
        hosted(Method::GET, "/v2/local/app/tags/list?n=1"),
        Ok((
            app(),
            HostedOp::Tags {
                n: Some(1),
                last: None
            }
        ))
    );
    assert_eq!(
        hosted(Method::PUT, "/v2/local/manifests/v1"),
        Err((400, "NAME_INVALID"))
    );
    // An impossible tag: nothing to read (404), nothing to write under (400).
    assert_eq!(
        hosted(Method::HEAD, "/v2/local/app/manifests/.bad"),
        Err((404, "MANIFEST_UNKNOWN"))
    );
    assert_eq!(
        hosted(Method::PUT, "/v2/local/app/manifests/.bad"),
        Err((400, "TAG_INVALID"))
    );
    assert_eq!(
        hosted(Method::GET, &format!("/v2/local/a/b/referrers/{DIGEST}")),
        Ok((
            "local/a/b".into(),
            HostedOp::Referrers {
                subject: DIGEST.parse().unwrap(),
                artifact_type: None
            }
        ))
    );
    // Escaped or not, the `+` of a media type survives; an empty filter is none.
    for (query, wanted) in [
        (
            "artifactType=application%2Fspdx%2Bjson",
            Some("application/spdx+json"),
        ),
        (
            "artifactType=application/spdx+json",
            Some("application/spdx+json"),
        ),
        ("artifactType=", None),
    ] {
        assert_eq!(
            hosted(
                Method::GET,
                &format!("/v2/local/app/referrers/{DIGEST}?{query}")
            ),
            Ok((
                app(),
                HostedOp::Referrers {
                    subject: DIGEST.parse().unwrap(),
                    artifact_type: wanted.map(str::to_owned)
                }
            )),
            "{query}"
        );
    }
    assert_eq!(
        hosted(Method::GET, "/v2/local/app/referrers/sha256:nothex"),
        Err((400, "DIGEST_INVALID"))
    );
    // A cached repository answers the referrers API too, through its upstream.
    let cached = route(
        &Method::GET,
        &format!("/v2/ghcr.io/org/app/referrers/{DIGEST}"),
        Some("artifactType=application/spdx+json"),
        &mirrors(),
        &local(),
        None,
    )
    .unwrap();
    assert_eq!(
        cached,
        Route::Referrers {
            target: Target {
                upstream: Registry::new("ghcr.io").unwrap(),
                repository: Repository::new("org/app").unwrap(),
            },
            subject: DIGEST.parse().unwrap(),
            artifact_type: Some("application/spdx+json".into()),
        }
    );
    // An upstream that is not configured: refused before anything dials out.
    let e = route(
        &Method::GET,
        &format!("/v2/evil.example/app/referrers/{DIGEST}"),
        None,
        &mirrors(),
        &local(),
        None,
    )
    .unwrap_err();
    assert_eq!((e.status.as_u16(), e.code.as_str()), (404, "NAME_UNKNOWN"));
    // Whatever `ns` names, a hosted repository never reaches an upstream.
    assert_eq!(
        hosted(Method::GET, "/v2/local/app/manifests/v1?ns=docker.io"),
        Ok((app(), HostedOp::Manifest(manifest_ref("v1", true).unwrap())))
    );
    // Writes elsewhere stay refused, and `localx/…` is not under `local`.
    for path in [
        "/v2/library/alpine/manifests/x",
        "/v2/localx/app/manifests/x",
    ] {
        let e = route(&Method::PUT, path, None, &mirrors(), &local(), None).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code.as_str()), (405, "UNSUPPORTED"));
        // The refusal names where pushes go.
        assert!(
            e.message
                .contains("pushes are accepted only under the hosted prefixes local/…"),
            "{}",
            e.message
        );
    }
}

#[test]
fn write_methods_are_unsupported() {
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        for path in ["/v2/a/blobs/uploads/", "/v2/a/manifests/t", "/v2/"] {
            let e = route(&method, path, None, &mirrors(), &[], None).unwrap_err();
            assert_eq!((e.status.as_u16(), e.code.as_str()), (405, "UNSUPPORTED"));
            assert!(e.message.contains("--local-prefix NAME"), "{}", e.message);
        }
    }
}

#[test]
fn a_local_prefix_that_looks_like_a_host_is_hosted() {
    let local = vec!["registry.local".to_owned()];
    let r = route(
        &Method::GET,
        "/v2/registry.local/app/manifests/v1",
        None,
        &mirrors(),
        &local,
        None,
    );
    assert!(matches!(r, Ok(Route::Hosted { .. })), "{r:?}");
    // Any other host-like first segment is still an unknown registry.
    let e = route(
        &Method::GET,
        "/v2/other.local/app/manifests/v1",
        None,
        &mirrors(),
        &local,
        None,
    )
    .unwrap_err();
    assert_eq!((e.status.as_u16(), e.code.as_str()), (404, "NAME_UNKNOWN"));
    assert!(e.message.contains("other.local"), "{}", e.message);
}

/// A request that names no upstream goes to the upstream of the listener it
/// arrived on; `?ns=` and path prefixes still choose any upstream there.
#[test]
fn the_listener_upstream_is_the_default_for_requests_that_name_none() {
    let ghcr = Registry::new("ghcr.io").unwrap();
    let on_ghcr = |path_and_query: &str| {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        match route(&Method::GET, path, query, &mirrors(), &[], Some(&ghcr)) {
            Ok(Route::Manifest { target, .. }) => {
                format!("{}/{}", target.upstream, target.repository)
            }
            other => panic!("{path_and_query}: {other:?}"),
        }
    };
    assert_eq!(on_ghcr("/v2/org/app/manifests/v1"), "ghcr.io/org/app");
    assert_eq!(
        on_ghcr("/v2/library/alpine/manifests/3?ns=docker.io"),
        "docker.io/library/alpine"
    );
    assert_eq!(
        on_ghcr("/v2/docker.io/library/alpine/manifests/3"),
        "docker.io/library/alpine"
    );
}
