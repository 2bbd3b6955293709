//! The read API of cached repositories: the `/v2/` ping, the catalog, tag
//! lists, manifests, blobs and referrers, each asked of the pull-through engine.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Response, StatusCode};
use oci_cache_core::cache::ManifestHeadResponse;
use oci_cache_core::digest::Digest;
use oci_cache_core::observe::CacheOutcome;
use oci_cache_core::reference::ManifestRef;
use serde_json::json;

use super::{Engine, RequestInfo};
use crate::body::{self, Body};
use crate::error::{ErrorSubject, OciError, OciErrorCode};
use crate::response::{
    accept_list, add_link, blob_headers, blob_response, fail, fail_naming, if_none_match,
    json_response, paginate, referrers_index, requested_range, set_digest,
};
use crate::routes::{Route, Target};

/// Answers a pull route (anything but probes, purge and hosted routes).
pub(super) async fn dispatch(
    engine: &Engine,
    route: &Route,
    req: &RequestInfo<'_>,
) -> Result<Response<Body>, OciError> {
    let head = req.method == Method::HEAD;
    match route {
        Route::Ping => Ok(json_response(&json!({}))),
        Route::Catalog { n, last } => {
            // One more than asked for tells whether a next page exists; the
            // first n + 1 of the union are among the first n + 1 of each.
            let limit = n.map(|n| n.saturating_add(1));
            let mut repositories = engine
                .catalog(last.as_deref(), limit)
                .await
                .map_err(|e| fail(e, ErrorSubject::Other))?;
            if let Some(hosted) = req.hosted {
                let local = hosted
                    .repositories(last.as_deref(), limit)
                    .await
                    .map_err(|e| fail(e, ErrorSubject::Other))?;
                repositories.extend(local.iter().map(|r| r.to_string()));
            }
            let (page, next) = paginate(repositories, *n, last.as_deref());
            let mut response = json_response(&json!({ "repositories": page }));
            add_link(&mut response, req.path, req.ns, next);
            Ok(response)
        }
        Route::Tags { target, n, last } => {
            let (list, outcome) = engine
                // One more than asked for tells whether a next page exists.
                .tags(
                    &target.upstream,
                    &target.repository,
                    n.map(|n| n.saturating_add(1)),
                    last.as_deref(),
                )
                .await
                .map_err(|e| fail(e, ErrorSubject::Repository))?;
            let (page, next) = paginate(list.tags, *n, last.as_deref());
            let mut response =
                json_response(&json!({ "name": target.repository.as_str(), "tags": page }));
            add_link(&mut response, req.path, req.ns, next);
            response.extensions_mut().insert(outcome);
            Ok(response)
        }
        Route::Manifest { target, reference } if head => {
            manifest_head(engine, target, reference, req).await
        }
        Route::Manifest { target, reference } => manifest(engine, target, reference, req).await,
        Route::Blob { target, digest } if head => blob_head(engine, target, digest).await,
        Route::Blob { target, digest } => blob_get(engine, target, digest, req).await,
        Route::Referrers {
            target,
            subject,
            artifact_type,
        } => referrers(engine, target, subject, artifact_type.as_deref()).await,
        // Probes, purge, the peer route and hosted routes are other families'.
        Route::Health
        | Route::Ready
        | Route::Metrics
        | Route::StatusPage
        | Route::StatusJson
        | Route::Purge
        | Route::DoctorProbe { .. }
        | Route::ClientConfig { .. }
        | Route::PeerBlob { .. }
        | Route::Hosted { .. } => Err(OciError::new(
            StatusCode::NOT_FOUND,
            OciErrorCode::NameUnknown,
            format!("no registry API route for {:?}", req.path),
        )),
    }
}

async fn manifest(
    engine: &Engine,
    target: &Target,
    reference: &ManifestRef,
    req: &RequestInfo<'_>,
) -> Result<Response<Body>, OciError> {
    let accept = accept_list(req.headers);
    let m = engine
        .manifest(&target.upstream, &target.repository, reference, &accept)
        .await
        .map_err(|e| {
            fail_naming(e, ErrorSubject::Manifest, || {
                manifest_name(target, reference)
            })
        })?;
    let size = m.bytes.len() as u64;
    let head = ManifestHeadResponse {
        digest: m.digest,
        media_type: m.media_type,
        size,
        outcome: m.outcome,
    };
    Ok(manifest_response(req.headers, head, body::full(m.bytes)))
}

/// A manifest `HEAD`: the headers a `GET` would send, without fetching a
/// cold manifest's body from upstream.
async fn manifest_head(
    engine: &Engine,
    target: &Target,
    reference: &ManifestRef,
    req: &RequestInfo<'_>,
) -> Result<Response<Body>, OciError> {
    let accept = accept_list(req.headers);
    let head = engine
        .manifest_head(&target.upstream, &target.repository, reference, &accept)
        .await
        .map_err(|e| {
            fail_naming(e, ErrorSubject::Manifest, || {
                manifest_name(target, reference)
            })
        })?;
    Ok(manifest_response(req.headers, head, body::empty()))
}

/// `304` when the client holds the digest, else `200` with `body` and the
/// manifest's type and length; the digest headers either way.
fn manifest_response(
    request_headers: &HeaderMap,
    head: ManifestHeadResponse,
    body: Body,
) -> Response<Body> {
    let mut response = if if_none_match(request_headers, &head.digest) {
        let mut r = Response::new(body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(body);
        let headers = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&head.media_type) {
            headers.insert(CONTENT_TYPE, v);
        }
        headers.insert(CONTENT_LENGTH, HeaderValue::from(head.size));
        r
    };
    set_digest(response.headers_mut(), &head.digest);
    response.extensions_mut().insert(head.outcome);
    response
}

async fn blob_head(
    engine: &Engine,
    target: &Target,
    digest: &Digest,
) -> Result<Response<Body>, OciError> {
    let (size, outcome) = engine
        .blob_size(&target.upstream, &target.repository, digest)
        .await
        .map_err(|e| fail_naming(e, ErrorSubject::Blob, || blob_name(target, digest)))?;
    let mut response = Response::new(body::empty());
    blob_headers(response.headers_mut(), digest, size);
    response.extensions_mut().insert(outcome);
    Ok(response)
}

async fn blob_get(
    engine: &Engine,
    target: &Target,
    digest: &Digest,
    req: &RequestInfo<'_>,
) -> Result<Response<Body>, OciError> {
    let size = async {
        // A suffix needs the size first; HEAD-like lookups are cheap on a hit.
        engine
            .blob_size(&target.upstream, &target.repository, digest)
            .await
            .map(|(size, _)| size)
            .map_err(|e| fail_naming(e, ErrorSubject::Blob, || blob_name(target, digest)))
    };
    let range = requested_range(req.headers, size).await?;
    let asked_start = range.as_ref().map(|r| r.start);
    let blob = engine
        .blob(&target.upstream, &target.repository, digest, range)
        .await
        .map_err(|e| fail_naming(e, ErrorSubject::Blob, || blob_name(target, digest)))?;
    let whole = blob.range == (0..blob.size);
    // When the engine could only give the whole blob (a miss it streams from
    // upstream), a plain 200 is what clients handle: they skip to their offset.
    let partial = match asked_start {
        Some(start) => !(whole && start != 0),
        None => false,
    };
    let mut response = blob_response(digest, blob.size, blob.range, blob.stream, partial);
    response.extensions_mut().insert(blob.outcome);
    Ok(response)
}

/// `docker.io/library/nginx:1.27` (or `…@sha256:…`), for messages.
fn manifest_name(target: &Target, reference: &ManifestRef) -> String {
    let separator = match reference {
        ManifestRef::Tag(_) => ':',
        ManifestRef::Digest(_) => '@',
    };
    format!(
        "{}/{}{separator}{reference}",
        target.upstream, target.repository
    )
}

/// `docker.io/library/nginx@sha256:…`, for messages.
fn blob_name(target: &Target, digest: &Digest) -> String {
    format!("{}/{}@{digest}", target.upstream, target.repository)
}

/// How a cached repository's referrers answer was learned: `api` or
/// `tag-schema` (upstream asked for this request), or `cache` (the stored
/// list answered, fresh or stale).
const REFERRERS_SOURCE: HeaderName = HeaderName::from_static("oci-cache-referrers-source");

/// `GET …/referrers/<digest>` of a cached repository: the index of what its
/// upstream says refers to `subject`, with how it was learned in
/// [`REFERRERS_SOURCE`] and in the request span (`referrers=`, on the
/// access log line).
async fn referrers(
    engine: &Engine,
    target: &Target,
    subject: &Digest,
    artifact_type: Option<&str>,
) -> Result<Response<Body>, OciError> {
    let answer = engine
        .referrers(&target.upstream, &target.repository, subject, artifact_type)
        .await
        .map_err(|e| fail(e, ErrorSubject::Manifest))?;
    let mut response = referrers_index(&answer.referrers, artifact_type)?;
    let source = match answer.outcome {
        CacheOutcome::Hit | CacheOutcome::Stale => "cache",
        _ => answer.source.as_str(),
    };
    response
        .headers_mut()
        .insert(REFERRERS_SOURCE, HeaderValue::from_static(source));
    tracing::Span::current().record("referrers", tracing::field::display(answer.source.as_str()));
    response.extensions_mut().insert(answer.outcome);
    Ok(response)
}
