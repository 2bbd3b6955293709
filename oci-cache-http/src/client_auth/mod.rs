//! Client authentication on the mirror: an htpasswd file, a Basic challenge,
//! and per-upstream access (`public` or `authenticated`), as a service
//! wrapped around [`OciService`].
//!
//! - Every upstream and every local prefix (hosted repositories) is
//!   `authenticated` unless the configuration marks it `public`, as
//!   registry:2 protects everything behind its htpasswd file; each public one
//!   is named in a warning at start-up. Requests for an `authenticated`
//!   upstream or hosted repository, `/v2/_catalog`, `/metrics` and the `/v2/`
//!   ping need valid credentials (`/healthz` and `/readyz` do not); `public`
//!   ones are served anonymously (so runtimes that send no credentials to
//!   mirrors, such as the Docker daemon, keep working), but a request that
//!   presents wrong credentials is refused anywhere. Pushes and deletes
//!   always need credentials.
//! - The ping answers 401 without credentials, as registry:2 does: clients
//!   (skopeo, podman, Docker) learn from it to send credentials, and fetch
//!   public content anonymously when they have none.
//! - `DELETE /admin/purge?ref=IMAGE` (see `admin.rs`) exists only here,
//!   for authenticated clients: it purges one image while serving.
//! - Failed attempts are rate-limited per client address ([`PeerAddr`]),
//!   counted before the password is checked (see `limiter`).
//! - A refused request keeps its connection usable (see `refusal`).
//! - Content served through a non-public upstream or hosted repository is
//!   recorded by digest, so it is not readable by digest through a public
//!   path unless that public upstream has it too (see `provenance`).

pub(crate) mod htpasswd;
mod limiter;
mod provenance;
mod refusal;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use oci_cache_core::mirror::{MirrorConfig, UpstreamConfig};
use oci_cache_core::reference::{ManifestRef, Registry};
use serde::Deserialize;

use self::htpasswd::HtpasswdFile;
use self::limiter::FailureLimiter;
use self::provenance::PrivateDigests;
use crate::body::Body;
use crate::error::{OciError, OciErrorCode};
use crate::routes::{self, HostedOp, Route, Target};
use crate::wire::DOCKER_CONTENT_DIGEST;
use crate::{OciService, Result};

/// The client's address, put into each request's extensions by [`serve`](crate::serve).
/// An embedder mounting [`AuthService`] elsewhere should insert it too:
/// without it all clients share one failed-login budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Who may read an upstream through the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone who reaches the port.
    Public,
    /// Clients with valid htpasswd credentials.
    Authenticated,
}

/// `authenticated`, as registry:2 protects everything behind its htpasswd
/// file: turning on client authentication must never leave an upstream
/// open because nobody thought to list it.
impl Default for Access {
    fn default() -> Self {
        Access::Authenticated
    }
}

/// Checks the text of an htpasswd file as [`ClientAuth`] reads it, returning
/// the number of users (for validation tools and fuzzing).
pub fn parse_htpasswd(text: &str) -> std::result::Result<usize, String> {
    htpasswd::Htpasswd::parse(text).map(|h| h.len())
}

/// Whether any endpoint of `upstream` has credentials.
pub fn has_credentials(upstream: &UpstreamConfig) -> bool {
    upstream
        .endpoints
        .iter()
        .chain([&upstream.origin])
        .any(|e| e.credentials.is_some())
}

/// The upstreams whose credentials anyone reaching the port can use: all
/// with credentials when there is no client authentication. Logged as a
/// warning at start-up.
pub fn exposed_credentialed_upstreams(mirrors: &MirrorConfig) -> Vec<&Registry> {
    mirrors
        .upstreams
        .iter()
        .filter(|u| has_credentials(u))
        .map(|u| &u.name)
        .collect()
}

/// Settings of [`ClientAuth`].
#[derive(Debug, Clone)]
pub struct ClientAuthConfig {
    /// The htpasswd file (bcrypt entries), re-read when it changes.
    pub htpasswd: PathBuf,
    /// The realm named in the Basic challenge.
    pub realm: String,
    /// Access per upstream name or local prefix (the hosted repositories
    /// under it); unlisted ones are [`Access::Authenticated`].
    pub access: HashMap<String, Access>,
    /// Where digests served through non-public upstreams are recorded
    /// (kept in memory only when `None`).
    pub private_digests: Option<PathBuf>,
}

impl ClientAuthConfig {
    /// Who may read the upstream or local prefix `name`.
    pub fn access_of(&self, name: &str) -> Access {
        self.access.get(name).copied().unwrap_or_default()
    }
}

/// Client authentication state, shared by all connections.
#[derive(Debug)]
pub struct ClientAuth {
    htpasswd: HtpasswdFile,
    challenge: HeaderValue,
    access: HashMap<Registry, Access>,
    /// Access per local prefix.
    hosted_access: HashMap<String, Access>,
    limiter: Arc<FailureLimiter>,
    private: PrivateDigests,
    /// (upstream, digest) pairs a public upstream was found to have.
    public_too: Mutex<HashSet<(Registry, String)>>,
}

impl ClientAuth {
    /// Loads the htpasswd file and resolves the access of every upstream
    /// and every local prefix (hosted repositories), warning once for each
    /// public one.
    pub fn new(
        config: &ClientAuthConfig,
        mirrors: &MirrorConfig,
        local_prefixes: &[String],
    ) -> Result<Self> {
        let htpasswd = HtpasswdFile::open(&config.htpasswd)?;
        let realm = config.realm.replace(['"', '\\'], "");
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
            .map_err(|_| crate::Error::ClientAuth(format!("invalid auth realm {realm:?}")))?;
        for name in config.access.keys() {
            let known = mirrors.upstreams.iter().any(|u| u.name.as_str() == name)
                || local_prefixes.contains(name);
            if !known {
                return Err(crate::Error::ClientAuth(format!(
                    "access is set for {name:?}, which is neither a configured upstream nor a local prefix"
                )));
            }
        }
        let access: HashMap<Registry, Access> = mirrors
            .upstreams
            .iter()
            .map(|u| (u.name.clone(), config.access_of(u.name.as_str())))
            .collect();
        let hosted_access: HashMap<String, Access> = local_prefixes
            .iter()
            .map(|prefix| (prefix.clone(), config.access_of(prefix)))
            .collect();
        for (name, chosen) in access.iter().map(|(r, a)| (r.as_str(), a)) {
            match chosen {
                Access::Public => tracing::warn!(upstream = %name,
                    "upstream {name} is public: anyone who reaches the port reads it without credentials"),
                Access::Authenticated => {
                    tracing::info!(upstream = %name, "upstream {name} is served to authenticated clients only")
                }
            }
        }
        for (prefix, chosen) in &hosted_access {
            match chosen {
                Access::Public => tracing::warn!(local_prefix = %prefix,
                    "hosted repositories {prefix}/… are public: anyone who reaches the port pulls them without credentials (pushes still need them)"),
                Access::Authenticated => {
                    tracing::info!(local_prefix = %prefix, "hosted repositories {prefix}/… are served to authenticated clients only")
                }
            }
        }
        Ok(ClientAuth {
            htpasswd,
            challenge,
            access,
            hosted_access,
            limiter: Arc::default(),
            private: PrivateDigests::open(config.private_digests.as_deref())?,
            public_too: Mutex::new(HashSet::new()),
        })
    }

    fn access(&self, upstream: &Registry) -> Access {
        self.access.get(upstream).copied().unwrap_or_default()
    }

    /// Who may read the hosted `repository` (by its first path component).
    fn hosted_access(&self, repository: &str) -> Access {
        let prefix = repository.split('/').next().unwrap_or_default();
        self.hosted_access.get(prefix).copied().unwrap_or_default()
    }

    fn unauthorized(&self, message: &str) -> Response<Body> {
        let mut response = OciError::new(
            StatusCode::UNAUTHORIZED,
            OciErrorCode::Unauthorized,
            message,
        )
        .into_response();
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, self.challenge.clone());
        response
    }
}

/// What [`AuthService::admit`] lets through.
enum Admitted {
    /// The purge endpoint, for an authenticated client.
    Purge,
    /// On to the inner service; `private_target` records what it serves
    /// as private content.
    Forward { private_target: bool },
}

/// [`OciService`] behind client authentication.
#[derive(Debug, Clone)]
pub struct AuthService {
    inner: OciService,
    auth: Arc<ClientAuth>,
}

impl AuthService {
    /// Wraps `inner`.
    pub fn new(inner: OciService, auth: Arc<ClientAuth>) -> Self {
        AuthService { inner, auth }
    }

    /// Answers one request: refused here, or passed to the inner service.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        // The head alone is looked at (a body need not be `Sync`).
        let (head, body) = request.into_parts();
        let admitted = self.admit(&head).await;
        let request = Request::from_parts(head, body);
        let private_target = match admitted {
            Ok(Admitted::Forward { private_target }) => private_target,
            Ok(Admitted::Purge) => {
                let uri = request.uri();
                return crate::admin::purge(&self.inner, request.method(), uri.query()).await;
            }
            Err(refusal) => return refusal::answer(request, refusal).await,
        };
        let response = self.inner.handle(request).await;
        if private_target && response.status().is_success() {
            if let Some(digest) = response
                .headers()
                .get(DOCKER_CONTENT_DIGEST)
                .and_then(|v| v.to_str().ok())
            {
                self.auth.private.insert(digest);
            }
        }
        response
    }

    /// Whether `request` may go on, and how; `Err` holds the refusal.
    async fn admit(
        &self,
        request: &http::request::Parts,
    ) -> std::result::Result<Admitted, Response<Body>> {
        let auth = &self.auth;
        let peer = request.extensions.get::<PeerAddr>().map(|p| p.0.ip());
        let authenticated = match basic_credentials(&request.headers) {
            None => false,
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
                true
            }
        };
        let uri = &request.uri;
        if uri.path() == crate::admin::PURGE_PATH {
            if !authenticated {
                return Err(auth.unauthorized("purging needs credentials"));
            }
            return Ok(Admitted::Purge);
        }
        let route = routes::route(
            &request.method,
            uri.path(),
            uri.query(),
            self.inner.mirrors(),
            self.inner.local_prefixes(),
        );
        let private_target = match &route {
            // `/metrics` names every upstream and its traffic, like the catalog;
            // `/healthz` and `/readyz` stay open for kubelet probes.
            Ok(Route::Ping | Route::Catalog { .. } | Route::Metrics) if !authenticated => {
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
                    if let Some(digest) = by_digest(route) {
                        auth.private.insert(&digest);
                    }
                    true
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
        Ok(Admitted::Forward { private_target })
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
        let upstream = self.inner.engine().upstream();
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

impl<B> hyper::service::Service<Request<B>> for AuthService
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(request).await) })
    }
}

#[cfg(test)]
mod tests {
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
