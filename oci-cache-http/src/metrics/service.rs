//! [`MetricsService`]: the metrics alone, for a listener of their own.

use super::{Metrics, CONTENT_TYPE};

/// A service that answers only `GET /metrics` (and `/healthz`), for a
/// separate metrics listener (`--metrics-listen`); everything else is 404.
#[derive(Debug, Clone)]
pub struct MetricsService {
    metrics: std::sync::Arc<Metrics>,
}

impl MetricsService {
    /// Serves `metrics`.
    pub fn new(metrics: std::sync::Arc<Metrics>) -> Self {
        MetricsService { metrics }
    }

    fn answer(&self, method: &http::Method, path: &str) -> http::Response<crate::Body> {
        use http::{Method, StatusCode};
        let read_only = method == Method::GET || method == Method::HEAD;
        let (status, content_type, body) = match path {
            "/metrics" if read_only => (StatusCode::OK, CONTENT_TYPE, self.metrics.encode()),
            "/healthz" if read_only => (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "ok\n".to_owned(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "this listener serves only GET /metrics and /healthz\n".to_owned(),
            ),
        };
        let len = body.len();
        let body = if method == Method::HEAD {
            crate::body::empty()
        } else {
            crate::body::full(bytes::Bytes::from(body))
        };
        let mut response = http::Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        response
    }
}

impl<B> hyper::service::Service<http::Request<B>> for MetricsService {
    type Response = http::Response<crate::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn call(&self, request: http::Request<B>) -> Self::Future {
        std::future::ready(Ok(self.answer(request.method(), request.uri().path())))
    }
}
