//! [`ClientAuthLayer`]: client authentication as a tower layer over any
//! service, reading the route the routing layer matched
//! ([`MatchedRoute`]), as tower-http's `AsyncRequireAuthorizationLayer`
//! reads what it needs from the request.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use http::header::AUTHORIZATION;
use http::{Method, Request, Response, StatusCode};
use oci_cache_core::reference::ManifestRef;
use oci_cache_core::upstream::Upstream;
use tower_layer::Layer;
use tower_service::Service;

use super::{refusal, Access, ClientAuth};
use crate::body::Body;
use crate::error::{OciError, OciErrorCode};
use crate::peer::PeerAddr;
use crate::routes::{HostedOp, Route, Target};
use crate::routing::MatchedRoute;
use crate::wire::DOCKER_CONTENT_DIGEST;

/// The user a request authenticated as, put into its extensions by
/// [`ClientAuthService`] for valid credentials. The purge endpoint answers
/// only requests that carry one; an embedder with its own authentication
/// inserts it to allow purging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity(pub String);

/// Wraps a service in [`ClientAuthService`]. Put it behind the
/// [`RoutingLayer`](crate::RoutingLayer): it decides by the matched route.
#[derive(Clone)]
pub struct ClientAuthLayer {
    auth: Arc<ClientAuth>,
    upstream: Arc<dyn Upstream>,
}

impl ClientAuthLayer {
    /// Authenticates clients with `auth`. `upstream` is asked, for an
    /// anonymous by-digest read of content recorded as private, whether the
    /// public upstream named in the request has that content too.
    pub fn new(auth: Arc<ClientAuth>, upstream: Arc<dyn Upstream>) -> Self {
        ClientAuthLayer { auth, upstream }
    }
}

impl std::fmt::Debug for ClientAuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuthLayer")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ClientAuthLayer {
    type Service = ClientAuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientAuthService {
            inner,
            guard: Guard {
                auth: Arc::clone(&self.auth),
                upstream: Arc::clone(&self.upstream),
            },
        }
    }
}

/// `inner` behind client authentication: a refused request is answered
/// here (401, 404 for private content, 429 after repeated failures) and
/// never reaches `inner`; an admitted one goes on with the
/// [`ClientIdentity`] it proved, and digests `inner` serves on a non-public
/// route are recorded as private.
#[derive(Debug, Clone)]
pub struct ClientAuthService<S> {
    inner: S,
    guard: Guard,
}

impl<S> ClientAuthService<S> {
    /// The wrapped service.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

/// What decides, shared by the clones of a [`ClientAuthService`].
#[derive(Clone)]
struct Guard {
    auth: Arc<ClientAuth>,
    upstream: Arc<dyn Upstream>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// What [`Guard::admit`] lets through.
struct Admitted {
    /// The user the request authenticated as.
    identity: Option<ClientIdentity>,
    /// Whether what `inner` serves is recorded as private content.
    private_target: bool,
}

impl<S, B> Service<Request<B>> for ClientAuthService<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone that was polled ready serves this request (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        Box::pin(async move {
            // The head alone is looked at (a body need not be `Sync`).
            let (mut head, body) = request.into_parts();
            let admitted = match guard.admit(&head).await {
                Ok(admitted) => admitted,
                Err(refusal) => {
                    let request = Request::from_parts(head, body);
                    return Ok(refusal::answer(request, refusal).await);
                }
            };
            if let Some(identity) = admitted.identity {
                head.extensions.insert(identity);
            }
            let response = inner.call(Request::from_parts(head, body)).await?;
            if admitted.private_target && response.status().is_success() {
                if let Some(digest) = response
                    .headers()
                    .get(DOCKER_CONTENT_DIGEST)
                    .and_then(|v| v.to_str().ok())
                {
                    guard.auth.private.insert(digest);
                }
            }
            Ok(response)
        })
    }
}

impl Guard {
    /// Whether `request` may go on, and how; `Err` holds the refusal.
    async fn admit(
        &self,
        request: &http::request::Parts,
    ) -> std::result::Result<Admitted, Response<Body>> {
        let auth = &self.auth;
        let Some(matched) = request.extensions.get::<MatchedRoute>() else {
            tracing::error!(
                "client authentication saw a request no routing layer had routed; refused"
            );
            return Err(OciError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                OciErrorCode::Unknown,
                "the server is misassembled: client authentication needs the routing layer in front of it",
            )
            .into_response());
        };
        let peer = request.extensions.get::<PeerAddr>().map(|p| p.0.ip());
        let identity = match basic_credentials(&request.headers) {
            None => None,
            Some((user, password)) => {
                let client = peer.unwrap_or(IpAddr::from([0, 0, 0, 0]));
                // Reserved before the check, so a burst of guesses cannot
                // all be checked before the first failure is counted.
                let attempt = match auth.limiter.reserve(client).await {
                    Ok(attempt) => attempt,
                    Err(wait) => {
                        let mut error = OciError::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            OciErrorCode::TooManyRequests,
                            "too many failed logins from this address; wait and retry",
                        );
                        error.retry_after = Some(wait);
                        return Err(error.into_response());
                    }
                };
                // bcrypt takes milliseconds of CPU: off the async workers.
                let checker = auth.clone();
                let name = user.clone();
                let ok =
                    tokio::task::spawn_blocking(move || checker.htpasswd.verify(&name, &password))
                        .await
                        .unwrap_or(false);
                if !ok {
                    drop(attempt);
                    tracing::warn!(user = %user, client = ?peer, "client authentication failed");
                    return Err(auth.unauthorized("invalid user name or password"));
                }
                attempt.succeeded();
                Some(ClientIdentity(user))
            }
        };
        let authenticated = identity.is_some();
        let private_target = match matched.route() {
            // The purge handler answers only requests that carry an identity.
            Ok(Route::Purge) if !authenticated => {
                return Err(auth.unauthorized("purging needs credentials"));
            }
            // Replicas of a fleet send no user: the handler checks the
            // fleet's secret instead.
            Ok(Route::PeerBlob { .. }) => false,
            // `/metrics` names every upstream and its traffic, like the
            // catalog, and the status page the images pulled; `/healthz`
            // and `/readyz` stay open for kubelet probes.
            Ok(
                Route::Ping
                | Route::Catalog { .. }
                | Route::Metrics
                | Route::StatusPage
                | Route::StatusJson
                | Route::ClientConfig { .. },
            ) if !authenticated => {
                return Err(auth.unauthorized("authentication required"));
            }
            // Pushes and deletes always need a user; pulls too unless the
            // local prefix is public (what a Kind node's containerd, which
            // sends no credentials, needs), and never of content recorded
            // as private.
            Ok(Route::Hosted { repository, op }) => {
                let public = auth.hosted_access(repository.as_str()) == Access::Public;
                if authenticated {
                    if let HostedOp::Blob(digest)
                    | HostedOp::Manifest(ManifestRef::Digest(digest)) = op
                    {
                        if !public {
                            auth.private.insert(digest.as_str());
                        }
                    }
                    !public
                } else {
                    let read = matches!(request.method, Method::GET | Method::HEAD);
                    if !read {
                        return Err(auth.unauthorized("pushing needs credentials (docker login)"));
                    }
                    if !public {
                        return Err(auth.unauthorized(&format!(
                            "{repository} is only served to authenticated clients"
                        )));
                    }
                    let private = match op {
                        HostedOp::Blob(digest) => auth.private.contains(digest.as_str()),
                        HostedOp::Manifest(ManifestRef::Digest(digest)) => {
                            auth.private.contains(digest.as_str())
                        }
                        _ => false,
                    };
                    if private {
                        return Err(auth
                            .unauthorized("this content is only served to authenticated clients"));
                    }
                    false
                }
            }
            Ok(route) => match route.target() {
                Some(target) if auth.access(&target.upstream) == Access::Authenticated => {
                    if !authenticated {
                        return Err(auth.unauthorized(&format!(
                            "{} is only served to authenticated clients",
                            target.upstream
                        )));
                    }
                    // The doctor's probe image is no upstream's content:
                    // recorded as private, it would refuse the next
                    // anonymous probe through a public upstream.
                    let private = !route.is_doctor_probe();
                    if let Some(digest) = by_digest(route).filter(|_| private) {
                        auth.private.insert(&digest);
                    }
                    private
                }
                Some(target) if !authenticated => {
                    if let Some(refusal) = self.private_elsewhere(route, target).await {
                        return Err(refusal);
                    }
                    false
                }
                _ => false,
            },
            Err(_) => false,
        };
        Ok(Admitted {
            identity,
            private_target,
        })
    }

    /// A refusal when `route` asks anonymously, through public `target`, for
    /// content recorded as private that the public upstream does not have.
    async fn private_elsewhere(&self, route: &Route, target: &Target) -> Option<Response<Body>> {
        let digest = by_digest(route)?;
        if !self.auth.private.contains(&digest) {
            return None;
        }
        let key = (target.upstream.clone(), digest.clone());
        if self
            .auth
            .public_too
            .lock()
            .map(|s| s.contains(&key))
            .unwrap_or(false)
        {
            return None;
        }
        let upstream = &self.upstream;
        let repository = &target.repository;
        let found = match route {
            Route::Blob { digest, .. } => upstream
                .blob_head(&target.upstream, repository, digest)
                .await
                .is_ok(),
            Route::Manifest { reference, .. } => upstream
                .manifest_head(&target.upstream, repository, reference, &[])
                .await
                .is_ok(),
            _ => false,
        };
        if found {
            if let Ok(mut set) = self.auth.public_too.lock() {
                set.insert(key);
            }
            return None;
        }
        tracing::warn!(upstream = %target.upstream, %digest,
            "refused an anonymous read of private content through a public upstream");
        let (code, what) = match route {
            Route::Manifest { .. } => (OciErrorCode::ManifestUnknown, "manifest"),
            _ => (OciErrorCode::BlobUnknown, "blob"),
        };
        Some(OciError::new(StatusCode::NOT_FOUND, code, format!("{what} unknown")).into_response())
    }
}

/// The digest a blob or by-digest manifest route names.
fn by_digest(route: &Route) -> Option<String> {
    match route {
        Route::Blob { digest, .. } => Some(digest.to_string()),
        Route::Manifest {
            reference: ManifestRef::Digest(digest),
            ..
        } => Some(digest.to_string()),
        _ => None,
    }
}

/// `user` and `password` of a `Basic` `Authorization` header.
fn basic_credentials(headers: &http::HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    // containers/image (skopeo, podman) answers a Basic challenge it has no
    // credentials for with an empty `:`: that is an anonymous request.
    if user.is_empty() && password.is_empty() {
        return None;
    }
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn basic_header_parsing() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(basic_credentials(&headers), None);
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwOmFzcw=="),
        );
        assert_eq!(
            basic_credentials(&headers),
            Some(("user".into(), "p:ass".into()))
        );
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer dXNlcjpwYXNz"),
        );
        assert_eq!(basic_credentials(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(basic_credentials(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic Og=="));
        assert_eq!(basic_credentials(&headers), None, "skopeo's anonymous `:`");
    }
}
