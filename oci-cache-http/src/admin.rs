//! `DELETE /admin/purge?ref=REF`: purge one cached image while serving.
//!
//! Reached only through [`AuthService`](crate::client_auth::AuthService),
//! and only with valid credentials: a mirror without client authentication
//! answers 404 here (the plain [`OciService`] has no such route), so the
//! endpoint cannot be used anonymously. Answers 200 with what was removed,
//! as JSON: `{"tags":1,"manifests":1,"blobs":2,"bytes":3145728,"busy":0}`.

use http::{Method, Response, StatusCode};
use oci_cache_core::evict::purge_target;
use oci_cache_core::reference::Reference;
use oci_cache_core::ErrorChain;

use crate::body::{self, Body};
use crate::error::{ErrorSubject, OciError, OciErrorCode};
use crate::wire::query_param;
use crate::OciService;

/// The path of the purge endpoint.
pub(crate) const PURGE_PATH: &str = "/admin/purge";

/// Answers a request for [`PURGE_PATH`] from an authenticated client.
pub(crate) async fn purge(
    service: &OciService,
    method: &Method,
    query: Option<&str>,
) -> Response<Body> {
    if method != Method::DELETE {
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
    let Some(text) = query_param(query, "ref") else {
        return OciError::new(
            StatusCode::BAD_REQUEST,
            OciErrorCode::NameInvalid,
            "name the image to purge: DELETE /admin/purge?ref=docker.io/library/alpine:3.20",
        )
        .into_response();
    };
    let target = match Reference::parse(&text)
        .map_err(oci_cache_core::Error::from)
        .and_then(|reference| purge_target(service.mirrors(), &reference))
    {
        Ok(target) => target,
        Err(e) => return OciError::from_core(&e, ErrorSubject::Other).into_response(),
    };
    match service.engine().purge(std::slice::from_ref(&target)).await {
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
