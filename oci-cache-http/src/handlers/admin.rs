//! `DELETE /admin/purge?ref=REF`: purge one cached image while serving.
//!
//! Answered only for a request that carries a
//! [`ClientIdentity`](crate::client_auth::ClientIdentity), which the client
//! authentication layer puts there for valid credentials: a mirror without
//! client authentication answers 404 here, as for any unknown path, so the
//! endpoint cannot be used anonymously. Answers 200 with what was removed,
//! as JSON: `{"tags":1,"manifests":1,"blobs":2,"bytes":3145728,"busy":0}`.

use http::{Method, Response, StatusCode};
use oci_cache_core::evict::purge_target;
use oci_cache_core::reference::Reference;
use oci_cache_core::ErrorChain;

use super::{Engine, RequestInfo};
use crate::body::{self, Body};
use crate::client_auth::ClientIdentity;
use crate::error::{ErrorSubject, OciError, OciErrorCode};
use crate::routes::unknown_route;
use crate::wire::query_param;

/// Answers a request for the purge route.
pub(super) async fn purge(engine: &Engine, req: &RequestInfo<'_>) -> Response<Body> {
    if req.extensions.get::<ClientIdentity>().is_none() {
        return unknown_route(req.path).into_response();
    }
    if req.method != Method::DELETE {
        let mut response = OciError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            OciErrorCode::Unsupported,
            "purge with DELETE /admin/purge?ref=IMAGE",
        )
        .into_response();
        response.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("DELETE"),
        );
        return response;
    }
    let Some(text) = query_param(req.query, "ref") else {
        return OciError::new(
            StatusCode::BAD_REQUEST,
            OciErrorCode::NameInvalid,
            "name the image to purge: DELETE /admin/purge?ref=docker.io/library/alpine:3.20",
        )
        .into_response();
    };
    let target = match Reference::parse(&text)
        .map_err(oci_cache_core::Error::from)
        .and_then(|reference| purge_target(req.mirrors, &reference))
    {
        Ok(target) => target,
        Err(e) => return OciError::from_core(&e, ErrorSubject::Other).into_response(),
    };
    match engine.purge(std::slice::from_ref(&target)).await {
        Ok(report) => {
            tracing::info!(reference = %target, ?report, "purged through the admin endpoint");
            let json = serde_json::json!({
                "tags": report.tags,
                "manifests": report.manifests,
                "blobs": report.blobs,
                "bytes": report.bytes,
                "busy": report.busy,
            });
            let mut response = Response::new(body::full(json.to_string()));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => {
            tracing::warn!(reference = %target, error = %ErrorChain(&e), "purge failed");
            OciError::from_core(&e, ErrorSubject::Other).into_response()
        }
    }
}
