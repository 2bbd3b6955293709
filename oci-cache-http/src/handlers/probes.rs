//! `/healthz`, `/readyz` and `/metrics`: what kubelet and Prometheus ask.

use bytes::Bytes;
use http::{Response, StatusCode};
use oci_cache_core::health::{Readiness, ReadyState};

use super::RequestInfo;
use crate::body::Body;
use crate::error::{OciError, OciErrorCode};
use crate::metrics::CONTENT_TYPE as METRICS_CONTENT_TYPE;
use crate::response::with_body;
use crate::routes::Route;

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
