//! The fleet family: `GET /_oci-cache/peer/blobs/<digest>` serves a blob to
//! another replica, from this replica's fill under way or its storage,
//! never from upstream (see [`crate::fleet`]).

use http::header::WWW_AUTHENTICATE;
use http::{HeaderValue, Method, Response, StatusCode};
use oci_cache_core::digest::{Digest, DigestError};

use super::{Engine, RequestInfo};
use crate::body::Body;
use crate::error::{ErrorSubject, OciError, OciErrorCode};
use crate::response::{blob_response, fail, requested_range};
use crate::routes::unknown_route;

/// Answers the peer route. Without a configured secret the route does not
/// exist (404 as any unknown path); with one, a request without it is 401
/// before anything else is looked at, the digest and the body included.
pub(crate) async fn peer_blob(
    engine: &Engine,
    digest: &str,
    info: &RequestInfo<'_>,
) -> Result<Response<Body>, OciError> {
    let Some(secret) = info.peer_secret else {
        return Err(unknown_route(info.path));
    };
    if !secret.admits(info.headers) {
        tracing::warn!("peer request without the fleet's secret refused");
        return Ok(unauthorized());
    }
    if info.method != Method::GET {
        return Err(OciError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            OciErrorCode::Unsupported,
            "the peer route answers GET only",
        ));
    }
    let digest: Digest = digest
        .parse()
        .map_err(|e: DigestError| fail(e.into(), ErrorSubject::Blob))?;
    // Replicas resume with `bytes=N-`; a suffix range has no use between them.
    let no_suffix = async {
        Err(OciError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            OciErrorCode::RangeInvalid,
            "the peer route takes bytes=N- ranges only",
        ))
    };
    let range = requested_range(info.headers, no_suffix).await?;
    let partial = range.is_some();
    let blob = engine
        .blob_for_peer(&digest, range)
        .await
        .map_err(|e| fail(e, ErrorSubject::Blob))?;
    let Some(blob) = blob else {
        tracing::debug!(%digest, "peer asked for a blob this replica neither fills nor holds");
        return Err(OciError::new(
            StatusCode::NOT_FOUND,
            OciErrorCode::BlobUnknown,
            "not on this replica: no fill under way and not stored",
        ));
    };
    tracing::debug!(%digest, outcome = ?blob.outcome, "serving a blob to a peer");
    let mut response = blob_response(&digest, blob.size, blob.range, blob.stream, partial);
    response.extensions_mut().insert(blob.outcome);
    Ok(response)
}

fn unauthorized() -> Response<Body> {
    let mut response = OciError::new(
        StatusCode::UNAUTHORIZED,
        OciErrorCode::Unauthorized,
        "replicas authenticate with the fleet's peer secret",
    )
    .into_response();
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"oci-cache peers\""),
    );
    response
}
