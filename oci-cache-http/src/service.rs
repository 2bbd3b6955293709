//! [`OciService`]: the registry pull API as a hyper and tower service, one
//! tracing span per request, the headers every response carries, and the
//! request event reported when the response body ends.

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_ENCODING, USER_AGENT, X_CONTENT_TYPE_OPTIONS};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use oci_cache_core::health::Readiness;
use oci_cache_core::mirror::MirrorConfig;
use oci_cache_core::observe::{RequestEvent, SharedObserver};
use oci_cache_core::storage::ByteStream;
use tracing::{field, Instrument};

use crate::body::{self, Body};
use crate::fleet::PeerSecret;
use crate::handlers::client_config::ClientConfigRenderer;
use crate::handlers::push::body_stream;
use crate::handlers::{self, Engine, HostedEngine, RequestInfo};
use crate::metrics::Metrics;
use crate::observed::ObservedBody;
use crate::peer::PeerAddr;
use crate::response::outcome_of;
use crate::routes::{HostedOp, Route};
use crate::routing::{MatchedRoute, RouteTable};
use crate::status::{StatusBoard, StatusSource};
use crate::wire;

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const OCI_NAMESPACE: HeaderName = HeaderName::from_static("oci-namespace");

/// The registry pull API as a hyper and tower service; build it with
/// [`Mirror::builder`](crate::Mirror::builder).
///
/// Cheap to clone (two `Arc`s and the engine handle). Mount it anywhere a
/// `tower::Service<Request<B>>` fits, e.g. axum's `Router::nest_service`:
/// routing uses the path it receives, so a prefix stripped by the router is
/// invisible to it. Requests are reported to the engine's observer when their
/// response body ends.
#[derive(Clone)]
pub struct OciService {
    engine: Engine,
    routes: RouteTable,
    observer: SharedObserver,
    metrics: Option<Arc<Metrics>>,
    readiness: Option<Readiness>,
    /// The push API of hosted repositories (none: a pure cache); their
    /// local prefixes are in `routes`.
    hosted: Option<Arc<HostedEngine>>,
    /// The doctor's probe pulls seen (shared by clones).
    probes: Arc<handlers::doctor::ProbeLog>,
    /// The fleet's shared secret: with it, other replicas may fetch blobs
    /// over the peer route (see [`crate::fleet`]); without it the route
    /// does not exist.
    peer_secret: Option<PeerSecret>,
    /// What the status page reads; without it `/` and `/status.json` are 404.
    status: Option<StatusSource>,
    /// Renders `/client-config/<kind>`; without it that path is 404.
    client_config: Option<handlers::client_config::SharedRenderer>,
}

impl std::fmt::Debug for OciService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciService")
            .field("engine", &self.engine)
            .field("observer", &self.observer)
            .field("metrics", &self.metrics.is_some())
            .field("readiness", &self.readiness)
            .field("local_prefixes", &self.local_prefixes())
            .field("peer_route", &self.peer_secret.is_some())
            .field("status_page", &self.status.is_some())
            .field("client_config", &self.client_config.is_some())
            .finish_non_exhaustive()
    }
}

impl OciService {
    /// The service over an engine built elsewhere, routing requests to the
    /// upstreams in `mirrors` and reporting to the engine's observer.
    /// [`Mirror::builder`](crate::Mirror::builder) builds both in one go.
    pub fn new(engine: Engine, mirrors: Arc<MirrorConfig>) -> Self {
        let observer = engine.observer().clone();
        OciService {
            engine,
            routes: RouteTable::new(mirrors, Arc::new([])),
            observer,
            metrics: None,
            readiness: None,
            hosted: None,
            probes: Arc::default(),
            peer_secret: None,
            status: None,
            client_config: None,
        }
    }

    /// Serves `GET /client-config/<kind>` with `renderer` (the generator of
    /// `oci-cache client-config`, which knows the configuration files).
    pub fn with_client_config(mut self, renderer: Arc<dyn ClientConfigRenderer>) -> Self {
        self.client_config = Some(renderer);
        self
    }

    /// Serves the status page at `/` and its data at `/status.json`:
    /// `board` must receive the engine's events (install it as one of the
    /// observers), `metrics` are read for every counted figure (`None`: the
    /// page counts nothing). [`Mirror::builder`](crate::Mirror::builder)
    /// does both.
    pub fn with_status(mut self, board: Arc<StatusBoard>, metrics: Option<Arc<Metrics>>) -> Self {
        self.status = Some(StatusSource { board, metrics });
        self
    }

    /// Serves blobs to the other replicas of a fleet that present `secret`
    /// at `/_oci-cache/peer/blobs/<digest>` (from a fill under way or
    /// storage, never from upstream). Without it that path is 404.
    /// [`Mirror::builder`](crate::Mirror::builder)'s `fleet` calls this.
    pub fn with_peer_secret(mut self, secret: PeerSecret) -> Self {
        self.peer_secret = Some(secret);
        self
    }

    /// Hosts the repositories under `prefixes` (first path components such
    /// as `local`) with `hosted`: they accept pushes and are never fetched
    /// upstream. [`Mirror::builder`](crate::Mirror::builder)'s
    /// `local_prefixes` validates the prefixes and calls this.
    pub fn with_hosted(mut self, prefixes: Vec<String>, hosted: HostedEngine) -> Self {
        if prefixes.is_empty() {
            self.hosted = None;
        } else {
            self.hosted = Some(Arc::new(hosted));
        }
        self.routes = self.routes.with_local_prefixes(prefixes.into());
        self
    }

    /// The push API of the hosted repositories, when there are any (for
    /// the server's periodic clean-up of abandoned uploads).
    pub fn hosted(&self) -> Option<&Arc<HostedEngine>> {
        self.hosted.as_ref()
    }

    /// The local prefixes of hosted repositories (empty: none).
    pub fn local_prefixes(&self) -> &[String] {
        self.routes.local_prefixes()
    }

    /// Serves `metrics` at `GET /metrics` (without it, `/metrics` is 404).
    /// Feeding them is the observer's job: [`Mirror::builder`](crate::Mirror::builder)'s
    /// `metrics` does both.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Stops serving `/metrics` here, for when another listener serves it
    /// ([`MetricsService`](crate::metrics::MetricsService)).
    pub fn without_metrics_endpoint(mut self) -> Self {
        self.metrics = None;
        self
    }

    /// Answers `GET /readyz` from `readiness` (without it, `/readyz` is
    /// always 200).
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// The cache engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The mirror configuration requests are routed by.
    pub fn mirrors(&self) -> &MirrorConfig {
        self.routes.mirrors()
    }

    /// What requests are routed by, for the routing layer in front.
    pub(crate) fn route_table(&self) -> &RouteTable {
        &self.routes
    }

    /// Answers one request. Never fails: every error becomes an OCI error
    /// response. The body is read only by pushes to hosted repositories.
    pub async fn handle<B>(&self, mut request: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let started = Instant::now();
        // Routed by the routing layer in front, or here when mounted bare.
        let matched = self.routes.ensure_routed(&mut request);
        let (request, body) = request.into_parts();
        let body = body_stream(body);
        let span = request_span(&request, &matched);
        let response = self
            .respond(&request, &matched, body)
            .instrument(span.clone())
            .await;
        if let (Some(status), Ok(route)) = (&self.status, matched.route()) {
            if response.status().is_success() && !route.is_doctor_probe() {
                if let Route::Manifest { target, reference } = route {
                    status
                        .board
                        .record_manifest(&target.upstream, &target.repository, reference);
                }
            }
        }
        let event = RequestEvent {
            method: request.method.to_string(),
            path: request.uri.path().to_owned(),
            route: matched.name(),
            upstream: matched
                .route()
                .ok()
                .and_then(Route::target)
                .map(|t| t.upstream.clone()),
            cache: outcome_of(&response),
            status: response.status().as_u16(),
            bytes_sent: 0,
            duration: started.elapsed(),
            completed: false,
        };
        let (parts, inner) = response.into_parts();
        let length = wire::content_length(&parts.headers);
        let observed =
            ObservedBody::new(inner, length, event, started, self.observer.clone(), span);
        Response::from_parts(parts, observed.boxed_unsync())
    }

    async fn respond(
        &self,
        request: &http::request::Parts,
        matched: &MatchedRoute,
        body: ByteStream,
    ) -> Response<Body> {
        let method = &request.method;
        let query = request.uri.query();
        let ns = wire::query_param(query, "ns");
        let head = method == Method::HEAD;
        let result = match matched.route() {
            Ok(route) => {
                let info = RequestInfo {
                    method,
                    path: request.uri.path(),
                    query,
                    ns: ns.as_deref(),
                    headers: &request.headers,
                    extensions: &request.extensions,
                    mirrors: self.mirrors(),
                    metrics: self.metrics.as_deref(),
                    readiness: self.readiness.as_ref(),
                    status: self.status.as_ref(),
                    hosted: self.hosted.as_deref(),
                    probes: &self.probes,
                    peer_secret: self.peer_secret.as_ref(),
                    client_config: self.client_config.as_ref(),
                };
                handlers::dispatch(&self.engine, route, &info, body).await
            }
            Err(e) => Err(e.clone()),
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

/// The request's span with its route fields set at once: one formatting
/// pass when the access log is on (recording each field afterwards
/// re-formatted the span's fields once per field), nothing when it is off.
fn request_span(request: &http::request::Parts, matched: &MatchedRoute) -> tracing::Span {
    // Who asked, for the access log: the address the connection came
    // from and the client's own name for itself (quoted: it may hold spaces).
    let client = request.extensions.get::<PeerAddr>().map(|peer| peer.0.ip());
    let user_agent = request
        .headers
        .get(USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()));
    let route = matched.route().ok();
    let (repository, reference): (Option<&dyn Display>, Option<&dyn Display>) = match route {
        Some(Route::Hosted { repository, op }) => {
            let reference: Option<&dyn Display> = match op {
                HostedOp::Manifest(reference) => Some(reference),
                HostedOp::Blob(digest)
                | HostedOp::Referrers {
                    subject: digest, ..
                } => Some(digest),
                _ => None,
            };
            (Some(repository), reference)
        }
        Some(Route::Manifest { target, reference }) => (Some(&target.repository), Some(reference)),
        Some(
            Route::Blob { target, digest }
            | Route::Referrers {
                target,
                subject: digest,
                ..
            },
        ) => (Some(&target.repository), Some(digest)),
        Some(route) => (route.target().map(|t| &t.repository as &dyn Display), None),
        None => (None, None),
    };
    let upstream = route
        .and_then(Route::target)
        .map(|t| field::display(&t.upstream));
    tracing::info_span!(
        "request",
        method = %request.method,
        client = client.map(field::display),
        user_agent = user_agent.as_deref().map(field::debug),
        route = route.map(|r| field::display(r.name())),
        repository = repository.map(field::display),
        upstream,
        reference = reference.map(field::display),
        // How a cached repository's referrers were learned (`api`, `tag-schema`).
        referrers = field::Empty,
    )
}

/// The future of one call: `Send` so servers can spawn it.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<B> hyper::service::Service<Request<B>> for OciService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(request).await) })
    }
}

impl<B> tower_service::Service<Request<B>> for OciService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // No back-pressure of its own: the engine bounds work per object.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(request).await) })
    }
}
