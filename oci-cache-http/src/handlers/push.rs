//! Hosted repositories on the wire: the OCI distribution push API (upload
//! sessions, monolithic uploads, mounts, manifest `PUT`), pulls, content
//! discovery (tags, referrers) and content management, over [`Hosted`](oci_cache_core::hosted::Hosted).
//!
//! Request bodies are streamed into storage, never buffered whole (a
//! manifest, capped at the hosted manifest limit, is the exception).

use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::{Method, Response, StatusCode};
use oci_cache_core::digest::Digest;
use oci_cache_core::hosted::UploadState;
use oci_cache_core::policy::SharedPolicy;
use oci_cache_core::reference::{ManifestRef, Repository};
use oci_cache_core::storage::{ByteStream, Storage, UploadId};
use oci_cache_core::{Error as CoreError, PushErrorKind};
use serde_json::json;

use super::{HostedEngine, RequestInfo};
use crate::body::{self, Body};
use crate::error::{ErrorSubject, OciError, OciErrorCode};
use crate::peer::PeerAddr;
use crate::response::{
    add_link, blob_headers, blob_response, fail, if_none_match, json_response, paginate,
    referrers_index, requested_range, set_digest, with_body,
};
use crate::routes::{cached_source, parse_digest, HostedOp};
use crate::wire::query_param;

const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
const RANGE: HeaderName = http::header::RANGE;
const CONTENT_RANGE: HeaderName = http::header::CONTENT_RANGE;

/// A request for a hosted repository.
struct HostedRequest<'a> {
    method: &'a Method,
    query: Option<&'a str>,
    repository: &'a Repository,
    op: &'a HostedOp,
    info: &'a RequestInfo<'a>,
    /// The client's address, for the per-client cap on upload sessions.
    client: Option<IpAddr>,
}

/// Answers a request for `op` on the hosted `repository`; `body` is the
/// request body.
pub(super) async fn dispatch(
    hosted: &HostedEngine,
    policy: &SharedPolicy,
    repository: &Repository,
    op: &HostedOp,
    info: &RequestInfo<'_>,
    body: ByteStream,
) -> Result<Response<Body>, OciError> {
    let req = HostedRequest {
        method: info.method,
        query: info.query,
        repository,
        op,
        info,
        client: info.extensions.get::<PeerAddr>().map(|peer| peer.0.ip()),
    };
    let repository = req.repository;
    let headers = req.info.headers;
    let method = req.method;
    match (req.op, method) {
        (HostedOp::Uploads, &Method::POST) => {
            mount_source_allowed(policy, &req)?;
            start(hosted, repository, req.query, req.client, body).await
        }
        (HostedOp::Upload(id), _) => {
            let id: UploadId = id.parse().map_err(|e| fail(e, ErrorSubject::Blob))?;
            upload(hosted, &req, &id, body).await
        }
        (HostedOp::Manifest(reference), &Method::GET | &Method::HEAD) => {
            let m = hosted
                .manifest(repository, reference)
                .await
                .map_err(|e| fail(e, ErrorSubject::Manifest))?;
            let mut response = if if_none_match(headers, &m.digest) {
                let mut r = Response::new(body::empty());
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                r
            } else {
                with_body(StatusCode::OK, &m.media_type, m.bytes)
            };
            set_digest(response.headers_mut(), &m.digest);
            Ok(response)
        }
        (HostedOp::Manifest(reference), &Method::PUT) => {
            put_manifest(hosted, repository, reference, headers, body).await
        }
        (HostedOp::Manifest(reference), &Method::DELETE) => {
            hosted
                .delete(repository, reference)
                .await
                .map_err(|e| fail(e, ErrorSubject::Manifest))?;
            Ok(status(StatusCode::ACCEPTED))
        }
        (HostedOp::Blob(digest), &Method::GET | &Method::HEAD) => {
            blob(hosted, digest, headers, method == Method::HEAD).await
        }
        (HostedOp::Blob(_), &Method::DELETE) => Err(OciError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            OciErrorCode::Unsupported,
            "blobs are shared by every repository and the cache; delete the manifest instead",
        )),
        (HostedOp::Tags { n, last }, &Method::GET | &Method::HEAD) => {
            let tags = hosted
                .tags(repository)
                .await
                .map_err(|e| fail(e, ErrorSubject::Repository))?;
            let tags = tags.iter().map(|t| t.as_str().to_owned()).collect();
            let (page, next) = paginate(tags, *n, last.as_deref());
            let mut response = json_response(&json!({ "name": repository.as_str(), "tags": page }));
            add_link(&mut response, req.info.path, req.info.ns, next);
            Ok(response)
        }
        (
            HostedOp::Referrers {
                subject,
                artifact_type,
            },
            &Method::GET | &Method::HEAD,
        ) => referrers(hosted, repository, subject, artifact_type.as_deref()).await,
        _ => Err(OciError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            OciErrorCode::Unsupported,
            format!("{method} is not supported on this path"),
        )),
    }
}

/// `GET …/referrers/<digest>`: an image index of the manifests whose
/// `subject` is the digest; empty, never 404, when there are none.
async fn referrers(
    hosted: &HostedEngine,
    repository: &Repository,
    subject: &Digest,
    artifact_type: Option<&str>,
) -> Result<Response<Body>, OciError> {
    let manifests = hosted
        .referrers(repository, subject, artifact_type)
        .await
        .map_err(|e| fail(e, ErrorSubject::Manifest))?;
    referrers_index(&manifests, artifact_type)
}

/// A mount `from` a cached repository the pull policy denies is refused
/// (`403 DENIED` naming the rule): copying it into a hosted repository
/// would be a pull by another name.
fn mount_source_allowed(policy: &SharedPolicy, req: &HostedRequest<'_>) -> Result<(), OciError> {
    if query_param(req.query, "mount").is_none() {
        return Ok(());
    }
    let Some(source) =
        query_param(req.query, "from").and_then(|from| cached_source(&from, req.info.mirrors))
    else {
        return Ok(());
    };
    policy
        .current()
        .check(&source.upstream, &source.repository, None)
        .map_err(|e| fail(e, ErrorSubject::Blob))
}

/// `POST …/blobs/uploads/`: a mount, a monolithic upload, or a new session.
async fn start(
    hosted: &HostedEngine,
    repository: &Repository,
    query: Option<&str>,
    client: Option<IpAddr>,
    body: ByteStream,
) -> Result<Response<Body>, OciError> {
    if let Some(mount) = query_param(query, "mount") {
        // Content-addressed: any stored blob (cached from upstream or pushed
        // to any repository) mounts, whatever `from` says.
        if let Ok(digest) = mount.parse::<Digest>() {
            if let Some(size) = hosted
                .mount(&digest)
                .await
                .map_err(|e| fail(e, ErrorSubject::Blob))?
            {
                tracing::debug!(%digest, size, "blob mounted");
                return Ok(blob_created(repository, &digest));
            }
        }
        // Not here: the spec's answer is a new session for the client to upload into.
    } else if let Some(digest) = query_param(query, "digest") {
        let digest = parse_digest(&digest)?;
        hosted
            .put_blob(&digest, body)
            .await
            .map_err(|e| fail(e, ErrorSubject::Blob))?;
        return Ok(blob_created(repository, &digest));
    }
    let state = hosted
        .start_upload(repository, client)
        .await
        .map_err(|e| fail(e, ErrorSubject::Blob))?;
    Ok(upload_response(StatusCode::ACCEPTED, &state))
}

/// `GET`, `PATCH`, `PUT`, `DELETE` on `…/blobs/uploads/<id>`.
async fn upload(
    hosted: &HostedEngine,
    req: &HostedRequest<'_>,
    id: &UploadId,
    body: ByteStream,
) -> Result<Response<Body>, OciError> {
    let repository = req.repository;
    let upload_error = |e| fail(e, ErrorSubject::Blob);
    match *req.method {
        Method::GET | Method::HEAD => {
            let state = hosted.upload(repository, id).await.map_err(upload_error)?;
            Ok(upload_response(StatusCode::NO_CONTENT, &state))
        }
        Method::PATCH => {
            let range = content_range(req.info.headers)?;
            match append(hosted, req, id, range, body).await {
                Ok(state) => Ok(upload_response(StatusCode::ACCEPTED, &state)),
                Err(refused) => Ok(refused),
            }
        }
        Method::PUT => {
            let digest = query_param(req.query, "digest").ok_or_else(|| {
                OciError::new(
                    StatusCode::BAD_REQUEST,
                    OciErrorCode::DigestInvalid,
                    "finishing an upload needs ?digest=<digest of the whole blob>",
                )
            })?;
            let digest = parse_digest(&digest)?;
            // A last chunk with a `Content-Range` must continue the upload,
            // as a `PATCH` must; without one, the body is simply appended.
            let body = match content_range(req.info.headers)? {
                Some(range) => match append(hosted, req, id, Some(range), body).await {
                    Ok(_) => None,
                    Err(refused) => return Ok(refused),
                },
                None => Some(body),
            };
            hosted
                .finish(repository, id, &digest, body)
                .await
                .map_err(upload_error)?;
            Ok(blob_created(repository, &digest))
        }
        Method::DELETE => {
            hosted.cancel(repository, id).await.map_err(upload_error)?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        _ => Err(OciError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            OciErrorCode::Unsupported,
            format!("{} is not supported on an upload", req.method),
        )),
    }
}

/// Appends a chunk (`PATCH`, or the body of the final `PUT`) to an upload;
/// a refusal is the response to send, with the upload's `Range` when the
/// chunk does not continue it.
///
/// A `Content-Range` whose length is not the body's is refused with `416`,
/// as the spec says: before the body is read when `Content-Length` already
/// disagrees, else once it has been (what arrived stays, and the `Range` of
/// the answer says where the upload now ends).
async fn append(
    hosted: &HostedEngine,
    req: &HostedRequest<'_>,
    id: &UploadId,
    range: Option<(u64, u64)>,
    body: ByteStream,
) -> Result<UploadState, Response<Body>> {
    let repository = req.repository;
    let mismatch = |start: u64, end: u64, length: u64| {
        OciError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            OciErrorCode::BlobUploadInvalid,
            format!(
                "Content-Range {start}-{end} is not the {length} bytes of the body; \
                 send the range the body covers"
            ),
        )
    };
    let refuse_at = |error: OciError, offset: u64| {
        let mut response = error.into_response();
        set_range(response.headers_mut(), offset);
        response
    };
    if let Some((start, end)) = range {
        let declared = req
            .info
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(length) = declared.filter(|&l| Some(l) != range_length(start, end)) {
            let state = hosted
                .upload(repository, id)
                .await
                .map_err(|e| fail(e, ErrorSubject::Blob).into_response())?;
            return Err(refuse_at(mismatch(start, end, length), state.offset));
        }
    }
    match hosted.append(repository, id, range, body).await {
        Ok(state) => match range {
            Some((start, end)) if Some(state.offset) != end.checked_add(1) => {
                let length = state.offset.saturating_sub(start);
                Err(refuse_at(mismatch(start, end, length), state.offset))
            }
            _ => Ok(state),
        },
        Err(e) => {
            let offset = match &e {
                CoreError::Push {
                    kind: PushErrorKind::OutOfOrder { offset },
                    ..
                } => Some(*offset),
                _ => None,
            };
            let mut response = fail(e, ErrorSubject::Blob).into_response();
            if let Some(offset) = offset {
                set_range(response.headers_mut(), offset);
            }
            Err(response)
        }
    }
}

/// The number of bytes of the inclusive range `start-end`; `None` when `end`
/// is before `start`.
fn range_length(start: u64, end: u64) -> Option<u64> {
    end.checked_sub(start)?.checked_add(1)
}

async fn put_manifest(
    hosted: &HostedEngine,
    repository: &Repository,
    reference: &ManifestRef,
    headers: &HeaderMap,
    body: ByteStream,
) -> Result<Response<Body>, OciError> {
    let limit = hosted.options().max_manifest_size;
    let bytes = read_limited(body, limit)
        .await
        .map_err(|e| fail(e, ErrorSubject::Manifest))?;
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let pushed = hosted
        .put_manifest(repository, reference, content_type, bytes)
        .await
        .map_err(|e| fail(e, ErrorSubject::Manifest))?;
    let mut response = status(StatusCode::CREATED);
    let headers = response.headers_mut();
    set_location(
        headers,
        &format!("/v2/{repository}/manifests/{}", pushed.digest),
    );
    set_digest(headers, &pushed.digest);
    if let Some(subject) = pushed
        .subject
        .and_then(|s| HeaderValue::from_str(s.as_str()).ok())
    {
        headers.insert(OCI_SUBJECT, subject);
    }
    Ok(response)
}

async fn blob(
    hosted: &HostedEngine,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response<Body>, OciError> {
    let storage = hosted.storage();
    let not_found = || {
        OciError::from_core(
            &CoreError::not_found(format!("blob {digest}")),
            ErrorSubject::Blob,
        )
    };
    let size = storage
        .blob_stat(digest)
        .await
        .map_err(|e| fail(e, ErrorSubject::Blob))?
        .ok_or_else(not_found)?
        .size;
    if head {
        let mut response = status(StatusCode::OK);
        blob_headers(response.headers_mut(), digest, size);
        return Ok(response);
    }
    let range = requested_range(headers, async { Ok(size) }).await?;
    let partial = range.is_some();
    let read = storage
        .blob_read(digest, range)
        .await
        .map_err(|e| fail(e, ErrorSubject::Blob))?;
    Ok(blob_response(
        digest,
        read.size,
        read.range,
        read.stream,
        partial,
    ))
}

/// Reads a body of at most `limit` bytes.
async fn read_limited(mut body: ByteStream, limit: u64) -> oci_cache_core::Result<Bytes> {
    let mut buffer = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if (buffer.len() + chunk.len()) as u64 > limit {
            return Err(CoreError::push(
                PushErrorKind::SizeInvalid,
                format!("the manifest is over the limit of {limit} bytes"),
            ));
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

/// The request body as a stream of bytes; a body that breaks off ends the
/// stream with an upload error.
pub(crate) fn body_stream<B>(body: B) -> ByteStream
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    http_body_util::BodyExt::into_data_stream(Box::pin(body))
        .map_err(|e| {
            CoreError::push(
                PushErrorKind::UploadInvalid,
                format!("the request body broke off: {e}"),
            )
        })
        .boxed()
}

/// `Content-Range: <start>-<end>` of a `PATCH` (also `bytes <start>-<end>[/…]`).
fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, OciError> {
    let Some(value) = headers.get(CONTENT_RANGE) else {
        return Ok(None);
    };
    let invalid = || {
        OciError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            OciErrorCode::BlobUploadInvalid,
            "Content-Range must be <start>-<end>",
        )
    };
    let text = value.to_str().map_err(|_| invalid())?.trim();
    let text = text.strip_prefix("bytes").unwrap_or(text);
    let text = text.trim_start_matches([' ', '=']);
    let text = text.split('/').next().unwrap_or(text);
    let (start, end) = text.split_once('-').ok_or_else(invalid)?;
    let start = start.trim().parse().map_err(|_| invalid())?;
    let end = end.trim().parse().map_err(|_| invalid())?;
    Ok(Some((start, end)))
}

fn status(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(0));
    response
}

fn set_location(headers: &mut HeaderMap, location: &str) {
    if let Ok(v) = HeaderValue::from_str(location) {
        headers.insert(LOCATION, v);
    }
}

/// `Range: 0-<last byte>`, as distribution sends it (`0-0` when empty).
fn set_range(headers: &mut HeaderMap, offset: u64) {
    if let Ok(v) = HeaderValue::from_str(&format!("0-{}", offset.saturating_sub(1))) {
        headers.insert(RANGE, v);
    }
}

fn blob_created(repository: &Repository, digest: &Digest) -> Response<Body> {
    let mut response = status(StatusCode::CREATED);
    let headers = response.headers_mut();
    set_location(headers, &format!("/v2/{repository}/blobs/{digest}"));
    set_digest(headers, digest);
    response
}

fn upload_response(code: StatusCode, state: &UploadState) -> Response<Body> {
    let mut response = status(code);
    let headers = response.headers_mut();
    set_location(
        headers,
        &format!("/v2/{}/blobs/uploads/{}", state.repository, state.id),
    );
    set_range(headers, state.offset);
    if let Ok(v) = HeaderValue::from_str(state.id.as_str()) {
        headers.insert(UPLOAD_UUID, v);
    }
    response
}
