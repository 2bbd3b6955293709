//! [`Pipeline`]: the whole request path as one service, assembled from
//! ordinary tower pieces by [`MirrorBuilder`](crate::MirrorBuilder):
//!
//! ```text
//! request ─▶ RoutingLayer ─▶ ClientAuthLayer (when configured) ─▶ OciService
//!            route once,      admit or refuse by the route;       span, handler by
//!            MatchedRoute     ClientIdentity on success           family, headers, log
//! ```
//!
//! One type whether client authentication is on or not, so a server makes
//! one [`serve_with`](crate::serve_with) call.

use std::convert::Infallible;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::Body;
use crate::client_auth::{ClientAuth, ClientAuthLayer, ClientAuthService};
use crate::routing::{Routing, RoutingLayer};
use crate::service::{OciService, ResponseFuture};

/// The request pipeline: routing, then client authentication when
/// configured, then the [`OciService`]. A hyper and tower service; cheap to
/// clone. Build it with [`Mirror::pipeline`](crate::Mirror::pipeline).
#[derive(Debug, Clone)]
pub struct Pipeline {
    routed: Routing<Guarded>,
}

/// The stack behind routing: with or without client authentication.
#[derive(Debug, Clone)]
enum Guarded {
    Open(OciService),
    Authenticated(ClientAuthService<OciService>),
}

impl Pipeline {
    /// `service` behind the routing layer, and behind client authentication
    /// with `auth` when given.
    pub fn new(service: OciService, auth: Option<Arc<ClientAuth>>) -> Self {
        let routing = RoutingLayer::from_table(service.route_table().clone());
        let guarded = match auth {
            Some(auth) => {
                let upstream = Arc::clone(service.engine().upstream());
                Guarded::Authenticated(ClientAuthLayer::new(auth, upstream).layer(service))
            }
            None => Guarded::Open(service),
        };
        Pipeline {
            routed: routing.layer(guarded),
        }
    }

    /// The service at the end of the pipeline.
    pub fn service(&self) -> &OciService {
        match self.routed.inner() {
            Guarded::Open(service) => service,
            Guarded::Authenticated(auth) => auth.inner(),
        }
    }

    /// Answers one request. Never fails: every refusal and error is an OCI
    /// error response.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let mut routed = self.routed.clone();
        match routed.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

impl<B> Service<Request<B>> for Guarded
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Neither the service nor the authentication applies back-pressure.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self {
            Guarded::Open(service) => Service::call(service, request),
            Guarded::Authenticated(auth) => auth.call(request),
        }
    }
}

impl<B> Service<Request<B>> for Pipeline
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request<B>>::poll_ready(&mut self.routed, cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.routed.call(request)
    }
}

impl<B> hyper::service::Service<Request<B>> for Pipeline
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: Request<B>) -> Self::Future {
        self.routed.clone().call(request)
    }
}

/// A [`Pipeline`] that can be replaced while serving (a configuration
/// reload): serve this instead of the pipeline, and
/// [`replace`](Self::replace) it with one built by
/// [`MirrorBuilder::reload_of`](crate::MirrorBuilder::reload_of).
///
/// Each request reads the current pipeline once, when it arrives (a
/// read lock held only to clone an `Arc`, never across an await) and is
/// answered by it to the end: requests and fills under way when the
/// pipeline is replaced finish on the old one. Cheap to clone; clones share
/// the current pipeline.
#[derive(Debug, Clone)]
pub struct ReloadablePipeline {
    current: Arc<RwLock<Arc<Pipeline>>>,
}

impl ReloadablePipeline {
    /// Serves `pipeline` until it is replaced.
    pub fn new(pipeline: Pipeline) -> Self {
        ReloadablePipeline {
            current: Arc::new(RwLock::new(Arc::new(pipeline))),
        }
    }

    /// The pipeline new requests go to.
    pub fn current(&self) -> Arc<Pipeline> {
        // A poisoned lock still holds a whole `Arc`: keep serving it.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Sends every request from now on to `pipeline`.
    pub fn replace(&self, pipeline: Pipeline) {
        let pipeline = Arc::new(pipeline);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = pipeline;
    }
}

impl<B> hyper::service::Service<Request<B>> for ReloadablePipeline
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: Request<B>) -> Self::Future {
        hyper::service::Service::call(&*self.current(), request)
    }
}
