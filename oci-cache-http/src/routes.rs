//! Request routing: `(method, path, query)` → [`Route`], with no I/O.
//!
//! Repository names have a variable number of segments, so the path is
//! matched from the right (`…/manifests/<ref>`, `…/blobs/<digest>`,
//! `…/tags/list`). The upstream registry is chosen, in order, by the `ns`
//! query parameter (percent-decoded), by a first path segment that names a
//! configured upstream or alias (`/v2/ghcr.io/org/app/…`), or else the default
//! upstream. Only configured upstreams are ever selected: a name that is not
//! configured is an error here, before anything could dial out.
//!
//! A repository whose first path component is a configured local prefix
//! (`/v2/local/app/…`) is hosted ([`Route::Hosted`]): it has no upstream at
//! all, so neither a read nor a write of it can reach a mirror chain, whatever
//! `ns` says (containerd sends the registry host the client asked for, e.g.
//! Kind's `localhost:5001`). Pick a prefix no upstream uses as a namespace:
//! `docker.io/local/x` is not reachable through this mirror. Writes anywhere
//! else are `405 UNSUPPORTED`.

use http::{Method, StatusCode};
use oci_cache_core::digest::Digest;
use oci_cache_core::mirror::MirrorConfig;
use oci_cache_core::reference::{Registry, Repository, Tag};
use oci_cache_core::upstream::ManifestRef;
use percent_encoding::percent_decode_str;

use crate::error::{ErrorSubject, OciError, OciErrorCode};
use crate::wire::query_param;

/// Which upstream and repository a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) upstream: Registry,
    pub(crate) repository: Repository,
}

/// A recognised request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/healthz`.
    Health,
    /// `/readyz`.
    Ready,
    /// `/metrics`.
    Metrics,
    /// `/v2/`.
    Ping,
    /// `/v2/_catalog`.
    Catalog {
        n: Option<usize>,
        last: Option<String>,
    },
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        target: Target,
        reference: ManifestRef,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob { target: Target, digest: Digest },
    /// `/v2/<name>/tags/list`.
    Tags {
        target: Target,
        n: Option<usize>,
        last: Option<String>,
    },
    /// Anything under a hosted repository (the method decides what is done).
    Hosted {
        repository: Repository,
        op: HostedOp,
    },
}

/// What a request for a hosted repository is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostedOp {
    /// `…/manifests/<reference>`.
    Manifest(ManifestRef),
    /// `…/blobs/<digest>`.
    Blob(Digest),
    /// `…/tags/list`.
    Tags {
        n: Option<usize>,
        last: Option<String>,
    },
    /// `…/blobs/uploads/` (start an upload, monolithic or mount).
    Uploads,
    /// `…/blobs/uploads/<id>`.
    Upload(String),
}

impl Route {
    /// A short name for logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Route::Health => "healthz",
            Route::Ready => "readyz",
            Route::Metrics => "metrics",
            Route::Ping => "ping",
            Route::Catalog { .. } => "catalog",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::Tags { .. } => "tags",
            Route::Hosted { op, .. } => match op {
                HostedOp::Manifest(_) => "hosted_manifest",
                HostedOp::Blob(_) => "hosted_blob",
                HostedOp::Tags { .. } => "hosted_tags",
                HostedOp::Uploads | HostedOp::Upload(_) => "upload",
            },
        }
    }

    /// The upstream and repository, for routes that have one.
    pub(crate) fn target(&self) -> Option<&Target> {
        match self {
            Route::Manifest { target, .. }
            | Route::Blob { target, .. }
            | Route::Tags { target, .. } => Some(target),
            _ => None,
        }
    }
}

/// Routes a request; `local` are the local prefixes of hosted repositories.
pub(crate) fn route(
    method: &Method,
    path: &str,
    query: Option<&str>,
    mirrors: &MirrorConfig,
    local: &[String],
) -> Result<Route, OciError> {
    let read_only = method == Method::GET || method == Method::HEAD;
    let probe = match path {
        "/healthz" => Some(Route::Health),
        "/readyz" => Some(Route::Ready),
        "/metrics" => Some(Route::Metrics),
        _ => None,
    };
    if let Some(probe) = probe {
        return if read_only {
            Ok(probe)
        } else {
            Err(unsupported(method))
        };
    }
    let rest = match path.strip_prefix("/v2") {
        Some("") | Some("/") => None,
        Some(rest) => match rest.strip_prefix('/') {
            Some(rest) => Some(rest),
            None => return Err(unknown_route(path)),
        },
        None => return Err(unknown_route(path)),
    };
    if let Some(rest) = rest.filter(|_| !local.is_empty()) {
        if let Some(hosted) = hosted(rest, query, local) {
            return hosted;
        }
    }
    if !read_only {
        return Err(unsupported(method));
    }
    let Some(rest) = rest else {
        return Ok(Route::Ping);
    };
    if rest == "_catalog" {
        return Ok(Route::Catalog {
            n: page_size(query)?,
            last: query_param(query, "last"),
        });
    }

    let segments = segments(rest)?;

    match segments.as_slice() {
        [name @ .., t, l] if t == "tags" && l == "list" && !name.is_empty() => Ok(Route::Tags {
            target: target(name, query, mirrors)?,
            n: page_size(query)?,
            last: query_param(query, "last"),
        }),
        [name @ .., b, u, _] if b == "blobs" && u == "uploads" && !name.is_empty() => {
            Err(unsupported(method))
        }
        [name @ .., m, reference] if m == "manifests" && !name.is_empty() => {
            let target = target(name, query, mirrors)?;
            Ok(Route::Manifest {
                target,
                reference: manifest_ref(reference)?,
            })
        }
        [name @ .., b, digest] if b == "blobs" && !name.is_empty() => {
            let target = target(name, query, mirrors)?;
            Ok(Route::Blob {
                target,
                digest: parse_digest(digest)?,
            })
        }
        _ => Err(unknown_route(path)),
    }
}

fn segments(rest: &str) -> Result<Vec<String>, OciError> {
    rest.split('/')
        .map(|s| match percent_decode_str(s).decode_utf8() {
            Ok(d) if !d.contains('/') => Ok(d.into_owned()),
            _ => Err(OciError::new(
                StatusCode::BAD_REQUEST,
                OciErrorCode::NameInvalid,
                format!("invalid path segment {s:?}"),
            )),
        })
        .collect()
}

/// The route of a request for a hosted repository, or `None` when the path
/// is not under a local prefix.
fn hosted(rest: &str, query: Option<&str>, local: &[String]) -> Option<Result<Route, OciError>> {
    let first = rest.split('/').next()?;
    if !local.iter().any(|prefix| prefix == first) {
        return None;
    }
    let segments = match segments(rest) {
        Ok(segments) => segments,
        Err(e) => return Some(Err(e)),
    };
    let (name, op) = match segments.as_slice() {
        [name @ .., t, l] if t == "tags" && l == "list" => (
            name,
            page_size(query).map(|n| HostedOp::Tags {
                n,
                last: query_param(query, "last"),
            }),
        ),
        [name @ .., b, u, id] if b == "blobs" && u == "uploads" => {
            let op = if id.is_empty() {
                HostedOp::Uploads
            } else {
                HostedOp::Upload(id.clone())
            };
            (name, Ok(op))
        }
        [name @ .., b, u] if b == "blobs" && u == "uploads" => (name, Ok(HostedOp::Uploads)),
        [name @ .., m, reference] if m == "manifests" => {
            (name, manifest_ref(reference).map(HostedOp::Manifest))
        }
        [name @ .., b, digest] if b == "blobs" => (name, parse_digest(digest).map(HostedOp::Blob)),
        _ => return None,
    };
    if name.len() < 2 {
        // `/v2/local/manifests/x`: the prefix alone is not a repository.
        return Some(Err(OciError::new(
            StatusCode::BAD_REQUEST,
            OciErrorCode::NameInvalid,
            format!("a hosted repository needs a name below {first:?}, e.g. {first}/app"),
        )));
    }
    let joined = name.join("/");
    Some(
        Repository::new(&joined)
            .map_err(|_| {
                OciError::new(
                    StatusCode::BAD_REQUEST,
                    OciErrorCode::NameInvalid,
                    format!("invalid repository name {joined:?}"),
                )
            })
            .and_then(|repository| {
                Ok(Route::Hosted {
                    repository,
                    op: op?,
                })
            }),
    )
}

/// Chooses the upstream and builds the repository name.
fn target(
    name: &[String],
    query: Option<&str>,
    mirrors: &MirrorConfig,
) -> Result<Target, OciError> {
    let unknown = |name: &str| {
        OciError::from_core(
            &oci_cache_core::Error::UnknownUpstream {
                name: name.to_owned(),
            },
            ErrorSubject::Repository,
        )
    };
    let prefixed = match name {
        [first, rest @ ..] if !rest.is_empty() => mirrors.lookup(first).map(|u| (u, rest)),
        _ => None,
    };
    let (upstream, path) = match query_param(query, "ns") {
        Some(ns) => {
            let upstream = mirrors.lookup(&ns).ok_or_else(|| unknown(&ns))?;
            // A client configured with both a path prefix and `ns` (containerd
            // with `override_path`) names the same upstream twice.
            match prefixed {
                Some((p, rest)) if p.name == upstream.name => (upstream, rest),
                _ => (upstream, name),
            }
        }
        None => match prefixed {
            Some((upstream, rest)) => (upstream, rest),
            None => {
                let default = mirrors.default_upstream.as_str();
                (
                    mirrors.default_upstream().ok_or_else(|| unknown(default))?,
                    name,
                )
            }
        },
    };
    let joined = path.join("/");
    let invalid = || {
        OciError::new(
            StatusCode::BAD_REQUEST,
            OciErrorCode::NameInvalid,
            format!("invalid repository name {joined:?}"),
        )
    };
    let repository = Repository::new(&joined).map_err(|_| invalid())?;
    // Docker Hub's implicit `library/` is the upstream's rule, kept in core.
    let repository = upstream
        .upstream_repository(&repository)
        .map_err(|_| invalid())?;
    Ok(Target {
        upstream: upstream.name.clone(),
        repository,
    })
}

fn manifest_ref(reference: &str) -> Result<ManifestRef, OciError> {
    if reference.contains(':') {
        return parse_digest(reference).map(ManifestRef::Digest);
    }
    Tag::new(reference).map(ManifestRef::Tag).map_err(|_| {
        OciError::new(
            StatusCode::BAD_REQUEST,
            OciErrorCode::TagInvalid,
            format!("invalid reference {reference:?}: expected a tag or a digest"),
        )
    })
}

fn parse_digest(digest: &str) -> Result<Digest, OciError> {
    digest.parse().map_err(|_| {
        OciError::new(
            StatusCode::BAD_REQUEST,
            OciErrorCode::DigestInvalid,
            format!("invalid digest {digest:?}"),
        )
    })
}

fn page_size(query: Option<&str>) -> Result<Option<usize>, OciError> {
    query_param(query, "n")
        .map(|n| {
            n.parse().map_err(|_| {
                OciError::new(
                    StatusCode::BAD_REQUEST,
                    OciErrorCode::PaginationNumberInvalid,
                    format!("invalid page size n={n:?}: expected a non-negative integer"),
                )
            })
        })
        .transpose()
}

fn unsupported(method: &Method) -> OciError {
    OciError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        OciErrorCode::Unsupported,
        format!("{method} is not supported by a pull-through cache"),
    )
}

fn unknown_route(path: &str) -> OciError {
    OciError::new(
        StatusCode::NOT_FOUND,
        OciErrorCode::NameUnknown,
        format!("no registry API route for {path:?}"),
    )
}

#[cfg(test)]
mod tests {
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
        route(&Method::GET, path, query, &mirrors(), &[])
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
            // A segment that merely looks like a registry is part of the name.
            ("/v2/quay.io/app/manifests/t", "docker.io", "quay.io/app"),
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
        let cases: [(&str, (u16, &str)); 16] = [
            ("/v2/UPPER/manifests/t", (400, "NAME_INVALID")),
            ("/v2/a//b/manifests/t", (400, "NAME_INVALID")),
            ("/v2/a%2Fb/manifests/t", (400, "NAME_INVALID")),
            ("/v2/a%ff/manifests/t", (400, "NAME_INVALID")),
            ("/v2/-a/manifests/t", (400, "NAME_INVALID")),
            ("/v2/a/manifests/.bad", (400, "TAG_INVALID")),
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
            match route(&method, path, query, &mirrors(), &local()) {
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
                HostedOp::Manifest(manifest_ref("v1").unwrap())
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
        // Whatever `ns` names, a hosted repository never reaches an upstream.
        assert_eq!(
            hosted(Method::GET, "/v2/local/app/manifests/v1?ns=docker.io"),
            Ok((app(), HostedOp::Manifest(manifest_ref("v1").unwrap())))
        );
        // Writes elsewhere stay refused, and `localx/…` is not under `local`.
        for path in [
            "/v2/library/alpine/manifests/x",
            "/v2/localx/app/manifests/x",
        ] {
            let e = route(&Method::PUT, path, None, &mirrors(), &local()).unwrap_err();
            assert_eq!((e.status.as_u16(), e.code.as_str()), (405, "UNSUPPORTED"));
        }
    }

    #[test]
    fn write_methods_are_unsupported() {
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            for path in ["/v2/a/blobs/uploads/", "/v2/a/manifests/t", "/v2/"] {
                let e = route(&method, path, None, &mirrors(), &local()).unwrap_err();
                assert_eq!((e.status.as_u16(), e.code.as_str()), (405, "UNSUPPORTED"));
            }
        }
    }
}
