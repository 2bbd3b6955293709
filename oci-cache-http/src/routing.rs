//! The routing step of the pipeline: each request is routed once, and the
//! result travels in its extensions as a [`MatchedRoute`] (as axum's
//! `MatchedPath` does), where client authentication, the handlers and the
//! log line read it.
//!
//! [`RoutingLayer`] is the step as a tower layer, first in the
//! [`Pipeline`](crate::Pipeline). [`OciService`](crate::OciService) mounted
//! bare routes a request that arrives without a route with the same table,
//! so it works without the layer too (axum's `nest_service`).

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use oci_cache_core::mirror::MirrorConfig;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::OciError;
use crate::listening::ListenerUpstream;
use crate::routes::{self, Route};

/// The route a request matched (or the error answer when none did), in
/// the request's extensions once the routing step has run.
///
/// Shared, not copied: the extensions hold one and the service takes
/// another, and a route owns its names (upstream, repository, reference).
#[derive(Debug, Clone)]
pub struct MatchedRoute(Arc<Result<Route, OciError>>);

impl MatchedRoute {
    /// A short name of the route for logs and metrics (`manifest`, `blob`,
    /// `hosted_blob`, `purge`, …), `unknown` when no route matched.
    pub fn name(&self) -> &'static str {
        self.route().map_or("unknown", Route::name)
    }

    /// The route, or the error the request is answered with.
    pub(crate) fn route(&self) -> Result<&Route, &OciError> {
        self.0.as_ref().as_ref()
    }
}

/// What requests are routed by: the upstreams and the local prefixes of
/// hosted repositories. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct RouteTable {
    mirrors: Arc<MirrorConfig>,
    local: Arc<[String]>,
}

impl RouteTable {
    pub(crate) fn new(mirrors: Arc<MirrorConfig>, local: Arc<[String]>) -> Self {
        RouteTable { mirrors, local }
    }

    /// The same upstreams with `local` as the local prefixes.
    pub(crate) fn with_local_prefixes(&self, local: Arc<[String]>) -> Self {
        RouteTable {
            mirrors: Arc::clone(&self.mirrors),
            local,
        }
    }

    pub(crate) fn mirrors(&self) -> &MirrorConfig {
        &self.mirrors
    }

    pub(crate) fn local_prefixes(&self) -> &[String] {
        &self.local
    }

    /// Routes `request` unless a routing step already has, and returns its
    /// route: the one place a request is routed.
    pub(crate) fn ensure_routed<B>(&self, request: &mut Request<B>) -> MatchedRoute {
        if let Some(matched) = request.extensions().get::<MatchedRoute>() {
            return matched.clone();
        }
        let uri = request.uri();
        let listener = request.extensions().get::<ListenerUpstream>();
        let matched = MatchedRoute(Arc::new(routes::route(
            request.method(),
            uri.path(),
            uri.query(),
            &self.mirrors,
            &self.local,
            listener.map(|l| &l.0),
        )));
        request.extensions_mut().insert(matched.clone());
        matched
    }
}

/// Routes each request and puts the [`MatchedRoute`] into its extensions.
#[derive(Debug, Clone)]
pub struct RoutingLayer {
    table: RouteTable,
}

impl RoutingLayer {
    /// Routes to the upstreams in `mirrors`; repositories under
    /// `local_prefixes` are hosted.
    pub fn new(mirrors: Arc<MirrorConfig>, local_prefixes: Vec<String>) -> Self {
        RoutingLayer {
            table: RouteTable::new(mirrors, local_prefixes.into()),
        }
    }

    pub(crate) fn from_table(table: RouteTable) -> Self {
        RoutingLayer { table }
    }
}

impl<S> Layer<S> for RoutingLayer {
    type Service = Routing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Routing {
            inner,
            table: self.table.clone(),
        }
    }
}

/// `inner` with each request routed first (see [`RoutingLayer`]).
#[derive(Debug, Clone)]
pub struct Routing<S> {
    inner: S,
    table: RouteTable,
}

impl<S> Routing<S> {
    /// The wrapped service.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S, B> Service<Request<B>> for Routing<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        self.table.ensure_routed(&mut request);
        self.inner.call(request)
    }
}
