//! [`OciService`]: the hyper service value, one tracing span and one log
//! line per request, and the headers every response carries.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderName, HeaderValue, CONTENT_ENCODING, X_CONTENT_TYPE_OPTIONS};
use http::{Method, Request, Response};
use oci_cache_core::cache::PullThrough;
use oci_cache_core::mirror::MirrorConfig;
use oci_cache_core::storage::Storage;
use oci_cache_core::upstream::Upstream;
use tracing::{field, Instrument};

use crate::body::{self, Body};
use crate::handlers::{self, RequestInfo};
use crate::routes::{self, Route};
use crate::wire;

/// The engine as the service holds it: storage and upstream chosen at runtime.
pub type Engine = PullThrough<dyn Storage, dyn Upstream>;

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const OCI_NAMESPACE: HeaderName = HeaderName::from_static("oci-namespace");

/// What the service needs: the cache engine and the mirror configuration used for routing.
#[derive(Clone)]
pub struct AppState {
    engine: Arc<Engine>,
    mirrors: Arc<MirrorConfig>,
}

impl AppState {
    /// State over `engine`, routing requests to the upstreams in `mirrors`.
    pub fn new(engine: Arc<Engine>, mirrors: Arc<MirrorConfig>) -> Self {
        AppState { engine, mirrors }
    }

    /// The cache engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The mirror configuration.
    pub fn mirrors(&self) -> &MirrorConfig {
        &self.mirrors
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("mirrors", &self.mirrors)
            .finish_non_exhaustive()
    }
}

/// The registry pull API as a hyper service. Cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct OciService {
    state: Arc<AppState>,
}

/// Builds the service over `state`.
pub fn service(state: AppState) -> OciService {
    OciService {
        state: Arc::new(state),
    }
}

impl OciService {
    /// Answers one request. Never fails: every error becomes an OCI error
    /// response. The request body is ignored (only GET and HEAD are served).
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Body> {
        let started = Instant::now();
        // Only the head matters; dropping the body keeps the future `Send` for any `B`.
        let (request, _) = request.into_parts();
        let span = tracing::info_span!(
            "request",
            method = %request.method,
            route = field::Empty,
            repository = field::Empty,
            reference = field::Empty,
            upstream = field::Empty,
            cache = field::Empty,
            status = field::Empty,
            bytes = field::Empty,
            duration_ms = field::Empty,
        );
        async move {
            let response = self.respond(&request).await;
            let status = response.status().as_u16();
            let bytes = wire::content_length(response.headers()).unwrap_or(0);
            let cache = field::display(handlers::outcome_of(&response).map_or("-", |o| o.as_str()));
            let duration_ms = started.elapsed().as_millis() as u64;
            tracing::info!(
                path = request.uri.path(),
                cache,
                status,
                bytes,
                duration_ms,
                "request"
            );
            // Recorded after the line so the text log does not show them twice;
            // span-based consumers still get them when the span closes.
            let span = tracing::Span::current();
            span.record("cache", cache);
            span.record("status", status);
            span.record("bytes", bytes);
            span.record("duration_ms", duration_ms);
            response
        }
        .instrument(span)
        .await
    }

    async fn respond(&self, request: &http::request::Parts) -> Response<Body> {
        let state = &self.state;
        let method = &request.method;
        let path = request.uri.path();
        let query = request.uri.query();
        let ns = wire::query_param(query, "ns");
        let head = method == Method::HEAD;
        let span = tracing::Span::current();

        let result = match routes::route(method, path, query, state.mirrors()) {
            Ok(route) => {
                record_route(&span, &route);
                let info = RequestInfo {
                    path,
                    ns: ns.as_deref(),
                    headers: &request.headers,
                };
                handlers::dispatch(state, &route, &info, head).await
            }
            Err(e) => Err(e),
        };
        let mut response = result.unwrap_or_else(|e| e.into_response());
        let headers = response.headers_mut();
        headers.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
        // Upstream bytes are served under upstream's media types: a browser
        // must not sniff an "application/json" manifest into HTML.
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        // Digests are over stored bytes: never let anything re-encode them.
        headers.remove(CONTENT_ENCODING);
        if let Some(v) = ns.and_then(|ns| HeaderValue::from_str(&ns).ok()) {
            headers.insert(OCI_NAMESPACE, v);
        }
        if head {
            // Keep the exact Content-Length the GET would carry; drop only the body.
            let (parts, _) = response.into_parts();
            response = Response::from_parts(parts, body::empty());
        }
        response
    }
}

fn record_route(span: &tracing::Span, route: &Route) {
    span.record("route", field::display(route.name()));
    if let Some(target) = route.target() {
        span.record("repository", field::display(&target.repository));
        span.record("upstream", field::display(&target.upstream));
    }
    match route {
        Route::Manifest { reference, .. } => {
            span.record("reference", field::display(reference));
        }
        Route::Blob { digest, .. } => {
            span.record("reference", field::display(digest));
        }
        _ => {}
    }
}

impl<B: Send + 'static> hyper::service::Service<Request<B>> for OciService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(request).await) })
    }
}
