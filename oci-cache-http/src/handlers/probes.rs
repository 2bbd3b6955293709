//! `/healthz`, `/readyz` and `/metrics`: what kubelet and Prometheus ask;
//! and the status page (`/`, `/status.json`): what a person asks.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY};
use http::{HeaderValue, Response, StatusCode};
use oci_cache_core::health::{Readiness, ReadyState};

use super::{Engine, RequestInfo};
use crate::body::Body;
use crate::error::{OciError, OciErrorCode};
use crate::metrics::CONTENT_TYPE as METRICS_CONTENT_TYPE;
use crate::response::{json_response, with_body};
use crate::routes::Route;
use crate::status::render_html;

/// Answers a probe route.
pub(super) fn answer(route: &Route, req: &RequestInfo<'_>) -> Result<Response<Body>, OciError> {
    match route {
        Route::Ready => Ok(ready(req.readiness)),
        Route::Metrics => match req.metrics {
            Some(metrics) => Ok(with_body(
                StatusCode::OK,
                METRICS_CONTENT_TYPE,
                Bytes::from(metrics.encode()),
            )),
            None => Err(OciError::new(
                StatusCode::NOT_FOUND,
                OciErrorCode::NameUnknown,
                "metrics are not served on this listener (see --metrics-listen)",
            )),
        },
        // `/healthz`: the process answers.
        _ => Ok(with_body(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"ok\n"),
        )),
    }
}

/// `/readyz`: 200 `ready`, or 503 with why (kubelet shows the body).
fn ready(readiness: Option<&Readiness>) -> Response<Body> {
    let (status, text) = match readiness.map(Readiness::state) {
        None | Some(ReadyState::Ready) => (StatusCode::OK, "ready\n".to_owned()),
        Some(ReadyState::Starting) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first storage probe has not finished yet\n".to_owned(),
        ),
        Some(ReadyState::NotReady(reason)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: storage probe failed: {reason}\n"),
        ),
    };
    with_body(status, "text/plain; charset=utf-8", Bytes::from(text))
}

/// The status page (`/`) or its data (`/status.json`).
pub(super) fn status(
    engine: &Engine,
    route: &Route,
    req: &RequestInfo<'_>,
) -> Result<Response<Body>, OciError> {
    let Some(source) = req.status else {
        return Err(OciError::new(
            StatusCode::NOT_FOUND,
            OciErrorCode::NameUnknown,
            "the status page is not served by this service (build it with Mirror::builder)",
        ));
    };
    let status = source.snapshot(engine, req.mirrors);
    let mut response = if *route == Route::StatusJson {
        let json = serde_json::to_value(&status).map_err(|e| {
            OciError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                OciErrorCode::Unknown,
                format!("the status could not be written as JSON: {e}"),
            )
        })?;
        json_response(&json)
    } else {
        with_body(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from(render_html(&status)),
        )
    };
    // A snapshot: never from a cache, and never framed by another site.
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    Ok(response)
}
