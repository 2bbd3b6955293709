//! Request routing: `(method, path, query)` → [`Route`], with no I/O.
//!
//! Repository names have a variable number of segments, so the path is
//! matched from the right (`…/manifests/<ref>`, `…/blobs/<digest>`,
//! `…/tags/list`). The upstream registry is chosen, in order, by the `ns`
//! query parameter (percent-decoded), by a first path segment that names a
//! configured upstream or alias (`/v2/ghcr.io/org/app/…`), or else the default
//! upstream. Only configured upstreams are ever selected: a name that is not
//! configured is an error here, before anything could dial out; that includes
//! a first segment that is a host name (`/v2/quay.io/app/…`: it holds a `.` or
//! `:`, or is `localhost`), which is never taken for a repository of the
//! default upstream.
//!
//! A repository whose first path component is a configured local prefix
//! (`/v2/local/app/…`) is hosted ([`Route::Hosted`]): it has no upstream at
//! all, so neither a read nor a write of it can reach a mirror chain, whatever
//! `ns` says (containerd sends the registry host the client asked for, e.g.
//! Kind's `localhost:5001`). Pick a prefix no upstream uses as a namespace:
//! `docker.io/local/x` is not reachable through this mirror. Writes anywhere
//! else are `405 UNSUPPORTED`. The referrers API (`…/referrers/<digest>`) is
//! answered for both: hosted repositories from their own links, cached ones
//! from what their upstream knows ([`Route::Referrers`]).

use std::borrow::Cow;

use http::{Method, StatusCode};
use oci_cache_core::digest::Digest;
use oci_cache_core::mirror::MirrorConfig;
use oci_cache_core::reference::{ManifestRef, Registry, Repository, Tag};
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
    /// `/`: the status page, HTML.
    StatusPage,
    /// `/status.json`: the status page's data.
    StatusJson,
    /// `/admin/purge` (any method: the handler says which one it takes).
    Purge,
    /// `/doctor/probe/<nonce>`: whether the doctor's probe pull arrived.
    DoctorProbe { nonce: String },
    /// `/client-config/<kind>`: the configuration that points a client at
    /// this mirror.
    ClientConfig { kind: String },
    /// `/_oci-cache/peer/blobs/<digest>`: a blob for another replica of a
    /// fleet (any method: the handler says which one it takes). The digest
    /// is the raw text: the handler checks the fleet's secret before it
    /// looks at anything else, a malformed digest included.
    PeerBlob { digest: String },
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
    /// `/v2/<name>/referrers/<digest>[?artifactType=…]` of a cached repository.
    Referrers {
        target: Target,
        subject: Digest,
        artifact_type: Option<String>,
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
    /// `…/referrers/<digest>[?artifactType=…]` (OCI 1.1 content discovery).
    Referrers {
        subject: Digest,
        artifact_type: Option<String>,
    },
}

impl Route {
    /// A short name for logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Route::Health => "healthz",
            Route::Ready => "readyz",
            Route::Metrics => "metrics",
            Route::StatusPage | Route::StatusJson => "status",
            Route::Purge => "purge",
            Route::DoctorProbe { .. } => "doctor_probe",
            Route::ClientConfig { .. } => "client_config",
            Route::PeerBlob { .. } => "peer_blob",
            Route::Ping => "ping",
            Route::Catalog { .. } => "catalog",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::Tags { .. } => "tags",
            Route::Referrers { .. } => "referrers",
            Route::Hosted { op, .. } => match op {
                HostedOp::Manifest(_) => "hosted_manifest",
                HostedOp::Blob(_) => "hosted_blob",
                HostedOp::Tags { .. } => "hosted_tags",
                HostedOp::Uploads | HostedOp::Upload(_) => "upload",
                HostedOp::Referrers { .. } => "hosted_referrers",
            },
        }
    }

    /// True for a pull route of the doctor's probe repository (under any
    /// upstream), which is answered from memory, never upstream.
    pub(crate) fn is_doctor_probe(&self) -> bool {
        self.target()
            .is_some_and(|t| t.repository.as_str() == DOCTOR_PROBE_REPOSITORY)
    }

    /// The upstream and repository, for routes that have one.
    pub(crate) fn target(&self) -> Option<&Target> {
        match self {
            Route::Manifest { target, .. }
            | Route::Blob { target, .. }
            | Route::Tags { target, .. }
            | Route::Referrers { target, .. } => Some(target),
            _ => None,
        }
    }
}

/// The path of the status page's data (probes family; the page is `/`).
pub(crate) const STATUS_JSON_PATH: &str = "/status.json";

/// The path of the purge endpoint (admin family).
pub(crate) const PURGE_PATH: &str = "/admin/purge";

/// The repository the doctor's probe image is served under, for every upstream.
pub(crate) const DOCTOR_PROBE_REPOSITORY: &str = "oci-cache-doctor/probe";

/// The path under which the doctor asks whether its probe pull arrived.
pub(crate) const DOCTOR_PROBE_PATH: &str = "/doctor/probe/";

/// The path prefix of the client configuration route; the kind follows.
pub(crate) use crate::handlers::client_config::CLIENT_CONFIG_PATH;

/// The path prefix of the peer blob route (fleet family); the digest follows.
pub(crate) use crate::fleet::PEER_BLOBS_PATH;

/// Routes a request; `local` are the local prefixes of hosted repositories,
/// `listener` the [`ListenerUpstream`](crate::ListenerUpstream) of the
/// listener it arrived on (the upstream when the request names none).
pub(crate) fn route(
    method: &Method,
    path: &str,
    query: Option<&str>,
    mirrors: &MirrorConfig,
    local: &[String],
    listener: Option<&Registry>,
) -> Result<Route, OciError> {
    let read_only = method == Method::GET || method == Method::HEAD;
    let probe = match path {
        "/healthz" => Some(Route::Health),
        "/readyz" => Some(Route::Ready),
        "/metrics" => Some(Route::Metrics),
        "/" => Some(Route::StatusPage),
        STATUS_JSON_PATH => Some(Route::StatusJson),
        _ => None,
    };
    if path == PURGE_PATH {
        return Ok(Route::Purge);
    }
    if let Some(nonce) = path.strip_prefix(DOCTOR_PROBE_PATH) {
        if !read_only {
            return Err(unsupported(method));
        }
        // The nonce is a tag of the probe repository.
        return Tag::new(nonce)
            .map(|_| Route::DoctorProbe {
                nonce: nonce.to_owned(),
            })
            .map_err(|_| unknown_route(path));
    }
    if let Some(kind) = path.strip_prefix(CLIENT_CONFIG_PATH) {
        if !read_only {
            return Err(unsupported(method));
        }
        if kind.is_empty() || kind.contains('/') {
            return Err(unknown_route(path));
        }
        return Ok(Route::ClientConfig {
            kind: kind.to_owned(),
        });
    }
    if let Some(digest) = path.strip_prefix(PEER_BLOBS_PATH) {
        return Ok(Route::PeerBlob {
            digest: digest.to_owned(),
        });
    }
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
        if let Some(hosted) = hosted(rest, query, local, read_only) {
            return hosted;
        }
    }
    if !read_only {
        return Err(write_outside_hosted(method, path, local));
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
            target: target(name, query, mirrors, listener)?,
            n: page_size(query)?,
            last: query_param(query, "last"),
        }),
        [name @ .., b, u, _] if b == "blobs" && u == "uploads" && !name.is_empty() => {
            Err(unsupported(method))
        }
        [name @ .., m, reference] if m == "manifests" && !name.is_empty() => {
            let target = target(name, query, mirrors, listener)?;
            Ok(Route::Manifest {
                target,
                reference: manifest_ref(reference, read_only)?,
            })
        }
        [name @ .., b, digest] if b == "blobs" && !name.is_empty() => {
            let target = target(name, query, mirrors, listener)?;
            Ok(Route::Blob {
                target,
                digest: parse_digest(digest)?,
            })
        }
        [name @ .., r, digest] if r == "referrers" && !name.is_empty() => {
            let target = target(name, query, mirrors, listener)?;
            Ok(Route::Referrers {
                target,
                subject: parse_digest(digest)?,
                artifact_type: artifact_type(query),
            })
        }
        _ => Err(unknown_route(path)),
    }
}

/// The path's segments, percent-decoded; borrowed from `rest` unless a
/// segment had escapes (a request allocates nothing for its name).
fn segments(rest: &str) -> Result<Vec<Cow<'_, str>>, OciError> {
    rest.split('/')
        .map(|s| match percent_decode_str(s).decode_utf8() {
            Ok(d) if !d.contains('/') => Ok(d),
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
fn hosted(
    rest: &str,
    query: Option<&str>,
    local: &[String],
    read_only: bool,
) -> Option<Result<Route, OciError>> {
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
                HostedOp::Upload(id.to_string())
            };
            (name, Ok(op))
        }
        [name @ .., b, u] if b == "blobs" && u == "uploads" => (name, Ok(HostedOp::Uploads)),
        [name @ .., m, reference] if m == "manifests" => (
            name,
            manifest_ref(reference, read_only).map(HostedOp::Manifest),
        ),
        [name @ .., b, digest] if b == "blobs" => (name, parse_digest(digest).map(HostedOp::Blob)),
        [name @ .., r, digest] if r == "referrers" => (
            name,
            parse_digest(digest).map(|subject| HostedOp::Referrers {
                subject,
                artifact_type: artifact_type(query),
            }),
        ),
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

/// The cached repository a mount's `from` names by its upstream
/// (`docker.io/library/alpine`, as pulls through this mirror name it);
/// `None` for anything else (a hosted repository, an unknown name).
pub(crate) fn cached_source(from: &str, mirrors: &MirrorConfig) -> Option<Target> {
    let name: Vec<Cow<'_, str>> = from.split('/').map(Cow::Borrowed).collect();
    let (first, rest) = name.split_first()?;
    if rest.is_empty() || mirrors.lookup(first).is_none() {
        return None;
    }
    target(&name, None, mirrors, None).ok()
}

/// Chooses the upstream and builds the repository name.
fn target(
    name: &[Cow<'_, str>],
    query: Option<&str>,
    mirrors: &MirrorConfig,
    listener: Option<&Registry>,
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
                // `quay.io/app` names a registry, as distribution/reference
                // reads it; sending it to the default upstream as a repository
                // would ask a registry the client never meant for a name it
                // never had.
                if let [first, _, ..] = name {
                    if looks_like_host(first) {
                        return Err(unknown(first));
                    }
                }
                let default = listener.unwrap_or(&mirrors.default_upstream).as_str();
                (
                    mirrors.lookup(default).ok_or_else(|| unknown(default))?,
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

/// True when the first component of a name is a registry host, by the rule
/// of distribution/reference: it holds a `.` or a `:`, or is `localhost`.
fn looks_like_host(component: &str) -> bool {
    component.contains(['.', ':']) || component == "localhost"
}

/// The reference of a manifest path. A tag that cannot exist names no
/// manifest: a read of it is `404 MANIFEST_UNKNOWN`, as the distribution
/// spec has it; a write of it (`read_only` false) is `400 TAG_INVALID`.
fn manifest_ref(reference: &str, read_only: bool) -> Result<ManifestRef, OciError> {
    if reference.contains(':') {
        return parse_digest(reference).map(ManifestRef::Digest);
    }
    Tag::new(reference).map(ManifestRef::Tag).map_err(|_| {
        let message = format!("invalid reference {reference:?}: expected a tag or a digest");
        if read_only {
            OciError::new(
                StatusCode::NOT_FOUND,
                OciErrorCode::ManifestUnknown,
                message,
            )
        } else {
            OciError::new(StatusCode::BAD_REQUEST, OciErrorCode::TagInvalid, message)
        }
    })
}

/// A digest from a path segment or query parameter, or `400 DIGEST_INVALID`.
pub(crate) fn parse_digest(digest: &str) -> Result<Digest, OciError> {
    digest.parse().map_err(|_| {
        OciError::new(
            StatusCode::BAD_REQUEST,
            OciErrorCode::DigestInvalid,
            format!("invalid digest {digest:?}"),
        )
    })
}

/// The `artifactType` filter of a referrers request. A media type has no
/// spaces, so a space is a `+` a client sent unescaped (`…/spdx+json`).
fn artifact_type(query: Option<&str>) -> Option<String> {
    query_param(query, "artifactType")
        .map(|t| t.replace(' ', "+"))
        .filter(|t| !t.is_empty())
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

/// A write (push, delete) that is not under a hosted prefix: refused as
/// [`unsupported`], naming where pushes go, or how to accept them.
fn write_outside_hosted(method: &Method, path: &str, local: &[String]) -> OciError {
    let message = if local.is_empty() {
        format!(
            "{method} {path}: this mirror is a pull-through cache and hosts no repositories; \
             to accept pushes, start it with --local-prefix NAME and push to NAME/…"
        )
    } else {
        let prefixes: Vec<String> = local.iter().map(|p| format!("{p}/…")).collect();
        format!(
            "{method} {path}: pushes are accepted only under the hosted prefixes {}; \
             every other repository is a pull-through cache of its upstream",
            prefixes.join(", ")
        )
    };
    OciError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        OciErrorCode::Unsupported,
        message,
    )
}

pub(crate) fn unknown_route(path: &str) -> OciError {
    OciError::new(
        StatusCode::NOT_FOUND,
        OciErrorCode::NameUnknown,
        format!("no registry API route for {path:?}"),
    )
}

#[cfg(test)]
mod tests;
