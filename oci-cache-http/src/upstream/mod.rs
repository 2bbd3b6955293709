//! [`HyperUpstream`]: the engine's [`Upstream`] over HTTP(S).
//!
//! Each call walks the registry's endpoint chain (mirrors, then the origin)
//! and moves on only when [`UpstreamError::is_retryable`] says so. Per
//! endpoint it answers `401` challenges (bearer token or basic), follows up
//! to `max_redirects` redirects without sending `Authorization` to another
//! host, asks for identity encoding, and streams blob bodies.
//!
//! Proxies ([`ProxyConfig`]): by default `HTTPS_PROXY`/`HTTP_PROXY`/
//! `ALL_PROXY`/`NO_PROXY` are read once at construction. Both `https://` and `http://` destinations are reached
//! through an HTTP `CONNECT` tunnel, so the proxy must allow `CONNECT` to the
//! registry's port.

mod auth;
mod breaker;
mod tls;

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::StreamExt;
use http::header::{
    ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_TYPE, LINK, LOCATION, RETRY_AFTER, USER_AGENT,
    WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyDataStream, BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use oci_cache_core::digest::Digest;
use oci_cache_core::mirror::{Addressing, Endpoint, MirrorConfig};
use oci_cache_core::reference::{Registry, Repository};
use oci_cache_core::upstream::{
    FetchedBlob, FetchedManifest, ManifestHead, ManifestRef, TagList, Upstream,
};
use oci_cache_core::{Error as CoreError, UpstreamError, UpstreamErrorKind};
use tokio::net::TcpStream;

use self::auth::{AuthCache, Challenge, TokenKey};
use self::breaker::{Breakers, Outcome};
use crate::body::content_length;
use crate::handlers::DOCKER_CONTENT_DIGEST;
use crate::routes::encode_query;

type CoreResult<T> = oci_cache_core::Result<T>;

/// The four manifest media types asked for when the client named none.
const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Most tag-list pages followed when the caller asked for all tags.
const MAX_TAG_PAGES: usize = 1000;

/// Largest read buffer of one upstream HTTP/1 connection (hyper's default is
/// ~400 KiB). A blob fill keeps recent chunks in memory for its clients, and
/// each chunk pins the read buffer it was cut from, so this bounds what one
/// fill holds; 128 KiB reads are still few per MiB.
const UPSTREAM_READ_BUFFER: usize = 128 * 1024;

/// How upstream connections reach the network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProxyConfig {
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (or their
    /// lower-case forms), read once when the client is built.
    #[default]
    FromEnv,
    /// Direct connections only, whatever the environment says.
    Direct,
    /// One proxy for every destination except those matching `no_proxy`
    /// (the `NO_PROXY` syntax: comma-separated domains, IPs and CIDR ranges).
    Explicit {
        /// Proxy URL, e.g. `http://user:pass@proxy.example:3128`.
        url: String,
        /// Destinations reached directly.
        no_proxy: String,
    },
}

impl ProxyConfig {
    fn matcher(&self) -> Option<Matcher> {
        match self {
            ProxyConfig::FromEnv => Some(Matcher::from_env()),
            ProxyConfig::Direct => None,
            ProxyConfig::Explicit { url, no_proxy } => Some(
                Matcher::builder()
                    .all(url.clone())
                    .no(no_proxy.clone())
                    .build(),
            ),
        }
    }
}

/// Tunables of the upstream client.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// TCP connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Time allowed for response headers to arrive (each redirect hop gets its own).
    pub request_timeout: Duration,
    /// Longest pause between two chunks of a body (blob, manifest, token, tag list).
    pub read_timeout: Duration,
    /// How long an unused pooled connection is kept.
    pub idle_timeout: Duration,
    /// Largest manifest body accepted; larger is [`CoreError::TooLarge`].
    pub max_manifest_size: u64,
    /// Most redirects followed per request.
    pub max_redirects: usize,
    /// The `User-Agent` sent upstream.
    pub user_agent: String,
    /// Proxy use; the environment's by default.
    pub proxy: ProxyConfig,
    /// Never dial out: every upstream call fails at once with
    /// [`UpstreamErrorKind::Skipped`], so only cached content is served.
    pub offline: bool,
    /// Connection failures, timeouts or 5xx in a row after which an
    /// endpoint's circuit breaker opens (0 disables the breaker).
    pub breaker_threshold: u32,
    /// How long an open breaker skips its endpoint before one request probes it.
    pub breaker_cooldown: Duration,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            max_manifest_size: 4 * 1024 * 1024,
            max_redirects: 10,
            user_agent: concat!("oci-cache/", env!("CARGO_PKG_VERSION")).to_owned(),
            proxy: ProxyConfig::FromEnv,
            offline: false,
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

type HttpClient = Client<HttpsConnector<ProxyConnector>, Empty<Bytes>>;

/// The HTTP implementation of [`Upstream`].
#[derive(Debug)]
pub struct HyperUpstream {
    mirrors: Arc<MirrorConfig>,
    client: HttpClient,
    /// Clients of endpoints with their own TLS settings, by endpoint URL.
    tls_clients: HashMap<String, HttpClient>,
    auth: AuthCache,
    breakers: Breakers,
    options: UpstreamOptions,
}

/// A client with `tls` (or the system roots, falling back to the bundled
/// Mozilla roots, when `None`).
fn build_client(
    options: &UpstreamOptions,
    provider: Arc<rustls::crypto::CryptoProvider>,
    tls: Option<rustls::ClientConfig>,
) -> crate::Result<HttpClient> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(options.connect_timeout));
    http.set_nodelay(true);
    let proxy = ProxyConnector {
        http,
        matcher: options.proxy.matcher().map(Arc::new),
    };
    let builder = match tls {
        Some(config) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config),
        None => match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(builder) => builder,
            Err(e) => {
                tracing::warn!(error = %e, "no usable system root certificates; using the bundled Mozilla roots");
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_provider_and_webpki_roots(provider)
                    .map_err(|e| crate::Error::Tls(e.to_string()))?
            }
        },
    };
    let connector = builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(proxy);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(options.idle_timeout)
        .http1_max_buf_size(UPSTREAM_READ_BUFFER)
        .build(connector))
}

impl HyperUpstream {
    /// A client for the upstreams in `mirrors`. Uses the system's root
    /// certificates, or the bundled Mozilla roots when the system has none.
    pub fn new(mirrors: Arc<MirrorConfig>, options: UpstreamOptions) -> crate::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = build_client(&options, provider.clone(), None)?;
        // Endpoints with their own TLS settings get their own client (and
        // connection pool); redirects and token requests made for such an
        // endpoint use it too.
        let mut tls_clients = HashMap::new();
        for upstream in &mirrors.upstreams {
            for endpoint in upstream.endpoints.iter().chain([&upstream.origin]) {
                if endpoint.tls.is_default() || tls_clients.contains_key(&endpoint.url) {
                    continue;
                }
                let config = tls::client_config(&endpoint.tls, &endpoint.url, provider.clone())?;
                let endpoint_client = build_client(&options, provider.clone(), Some(config))?;
                tls_clients.insert(endpoint.url.clone(), endpoint_client);
            }
        }
        if options.offline {
            tracing::info!("offline: serving only cached content, never contacting upstreams");
        }
        Ok(HyperUpstream {
            mirrors,
            client,
            tls_clients,
            auth: AuthCache::default(),
            breakers: Breakers::new(options.breaker_threshold, options.breaker_cooldown),
            options,
        })
    }

    /// The client for `endpoint`: its own when it has TLS settings.
    fn client_for(&self, endpoint: &Endpoint) -> &HttpClient {
        self.tls_clients.get(&endpoint.url).unwrap_or(&self.client)
    }

    /// Runs `op` on each endpoint of `registry`'s chain that may answer a
    /// request `addressing` its object (digest-only mirrors are left out for
    /// tags), until one succeeds or fails in a way the next endpoint cannot fix.
    async fn over_chain<'a, T>(
        &'a self,
        registry: &'a Registry,
        addressing: Addressing,
        op: impl Fn(Target<'a>) -> BoxFuture<'a, CoreResult<T>>,
    ) -> CoreResult<T> {
        let upstream =
            self.mirrors
                .lookup(registry.as_str())
                .ok_or_else(|| CoreError::UnknownUpstream {
                    name: registry.to_string(),
                })?;
        if self.options.offline {
            return Err(UpstreamError::new(
                UpstreamErrorKind::Skipped,
                &upstream.origin.url,
                "offline: not contacting upstream; only cached content is served",
            )
            .into());
        }
        let mut last_error = None;
        for endpoint in upstream.chain_for(addressing) {
            if let Some(open_for) = self.breakers.check(&endpoint.url) {
                tracing::debug!(endpoint = %endpoint.url, open_for_ms = open_for.as_millis() as u64,
                    "circuit breaker open; skipping the endpoint");
                // The client may retry once the breaker would let a probe through.
                let retry_after = Duration::from_secs(open_for.as_secs() + 1);
                last_error = Some(CoreError::from(
                    UpstreamError::new(
                        UpstreamErrorKind::Skipped,
                        &endpoint.url,
                        format!(
                            "skipped for another {:.1}s after repeated failures (circuit breaker open)",
                            open_for.as_secs_f64()
                        ),
                    )
                    .with_retry_after(Some(retry_after)),
                ));
                continue;
            }
            let target = Target {
                endpoint,
                registry,
                is_origin: upstream.is_origin(endpoint),
            };
            let result = op(target).await;
            let outcome = match &result {
                Err(CoreError::Upstream(e)) => Outcome::of_error(e.kind(), e.retry_after()),
                _ => Outcome::Answered,
            };
            self.breakers.record(&endpoint.url, outcome);
            match result {
                Ok(value) => return Ok(value),
                Err(e) if moves_on(&e) => {
                    tracing::debug!(endpoint = %endpoint.url, error = %e, "trying the next endpoint");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| CoreError::UnknownUpstream {
            name: registry.to_string(),
        }))
    }

    /// One request to one endpoint, authenticated as the endpoint demands;
    /// a non-2xx final status becomes a classified error.
    async fn send(
        &self,
        target: &Target<'_>,
        method: Method,
        url: &str,
        accept: Option<&str>,
        scope: &str,
    ) -> CoreResult<Response<Incoming>> {
        let endpoint = target.endpoint;
        // Invalid (not Config) so that one mistyped mirror does not block the origin.
        let uri: Uri = url.parse().map_err(|_| {
            UpstreamError::new(
                UpstreamErrorKind::Invalid,
                &endpoint.url,
                format!("invalid request url {url:?}; fix the endpoint url in the configuration"),
            )
        })?;
        let origin = origin_of(&uri);
        let mut authorization = match self.auth.challenge(&origin) {
            Some(challenge) => self.authorize(&challenge, endpoint, scope, false).await?,
            None => None,
        };
        let mut retried = false;
        loop {
            let response = self
                .follow(
                    self.client_for(endpoint),
                    method.clone(),
                    uri.clone(),
                    accept,
                    authorization.as_deref(),
                    &endpoint.url,
                )
                .await?;
            if response.status() == StatusCode::UNAUTHORIZED && !retried {
                retried = true;
                let challenge = response
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(auth::parse_challenges)
                    .collect::<Vec<_>>();
                if let Some(challenge) = auth::pick_challenge(challenge) {
                    self.auth.put_challenge(&origin, challenge.clone());
                    let refreshed = self.authorize(&challenge, endpoint, scope, true).await?;
                    if refreshed.is_some() {
                        authorization = refreshed;
                        continue;
                    }
                }
            }
            return check_status(response, &endpoint.url);
        }
    }

    /// The `Authorization` value answering `challenge`, fetching a bearer
    /// token when none is cached (or when `refresh` says the cached one was refused).
    async fn authorize(
        &self,
        challenge: &Challenge,
        endpoint: &Endpoint,
        scope: &str,
        refresh: bool,
    ) -> CoreResult<Option<String>> {
        let credentials = endpoint.credentials.as_ref();
        if challenge.scheme == "basic" {
            return Ok(credentials.map(auth::basic_header));
        }
        let Some(realm) = challenge.param("realm") else {
            return Ok(None);
        };
        let key = TokenKey {
            realm: realm.to_owned(),
            service: challenge.param("service").map(str::to_owned),
            scope: scope.to_owned(),
            credential: credentials.map(|c| format!("{}:{}", c.username, c.password)),
        };
        if refresh {
            self.auth.drop_token(&key);
        } else if let Some(token) = self.auth.token(&key) {
            return Ok(Some(format!("Bearer {token}")));
        }
        let url = auth::token_url(realm, key.service.as_deref(), scope);
        let uri: Uri = url.parse().map_err(|_| {
            UpstreamError::new(
                UpstreamErrorKind::Invalid,
                &endpoint.url,
                format!("token realm {realm:?} is not a valid url"),
            )
        })?;
        let basic = credentials.map(auth::basic_header);
        let response = self
            .follow(
                self.client_for(endpoint),
                Method::GET,
                uri,
                None,
                basic.as_deref(),
                realm,
            )
            .await?;
        let response = check_status(response, realm)?;
        let body = self
            .read_body(response.into_body(), 64 * 1024, realm, "token response")
            .await?;
        let (token, lifetime) = auth::parse_token_response(&body).ok_or_else(|| {
            UpstreamError::new(
                UpstreamErrorKind::Invalid,
                realm,
                "token endpoint answered without a token",
            )
        })?;
        tracing::debug!(
            realm,
            scope,
            lifetime_s = lifetime.as_secs(),
            "fetched a registry token"
        );
        self.auth.put_token(key, token.clone(), lifetime);
        Ok(Some(format!("Bearer {token}")))
    }

    /// Sends a request, following redirects; `Authorization` only goes to the first origin.
    async fn follow(
        &self,
        client: &HttpClient,
        method: Method,
        uri: Uri,
        accept: Option<&str>,
        authorization: Option<&str>,
        endpoint: &str,
    ) -> CoreResult<Response<Incoming>> {
        let first_origin = origin_of(&uri);
        let mut current = uri;
        for _ in 0..=self.options.max_redirects {
            let same_origin = origin_of(&current) == first_origin;
            let mut builder = Request::builder()
                .method(method.clone())
                .uri(current.clone())
                .header(USER_AGENT, &self.options.user_agent)
                .header(ACCEPT_ENCODING, "identity");
            if let Some(accept) = accept {
                builder = builder.header(ACCEPT, accept);
            }
            if let (Some(value), true) = (authorization, same_origin) {
                builder = builder.header(AUTHORIZATION, value);
            }
            let request = builder.body(Empty::new()).map_err(|e| {
                UpstreamError::new(
                    UpstreamErrorKind::Invalid,
                    endpoint,
                    "could not build the request",
                )
                .with_source(e)
            })?;
            let response =
                tokio::time::timeout(self.options.request_timeout, client.request(request))
                    .await
                    .map_err(|_| {
                        UpstreamError::new(
                            UpstreamErrorKind::Timeout,
                            endpoint,
                            format!("no response within {:?}", self.options.request_timeout),
                        )
                    })?
                    .map_err(|e| {
                        UpstreamError::new(
                            UpstreamErrorKind::Unavailable,
                            endpoint,
                            "request failed",
                        )
                        .with_source(e)
                    })?;
            let redirect = matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308);
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| resolve(&current, l));
            match (redirect, location) {
                (true, Some(next)) => {
                    tracing::debug!(from = %current, to = %origin_of(&next), "following redirect");
                    current = next;
                }
                _ => return Ok(response),
            }
        }
        Err(UpstreamError::new(
            UpstreamErrorKind::Invalid,
            endpoint,
            format!("more than {} redirects", self.options.max_redirects),
        )
        .into())
    }

    /// Reads a whole body of at most `limit` bytes, giving up when it stalls
    /// for the read timeout.
    async fn read_body(
        &self,
        mut body: Incoming,
        limit: u64,
        endpoint: &str,
        what: &str,
    ) -> CoreResult<Bytes> {
        let mut buffer = BytesMut::new();
        loop {
            let frame = tokio::time::timeout(self.options.read_timeout, body.frame())
                .await
                .map_err(|_| {
                    UpstreamError::new(
                        UpstreamErrorKind::Timeout,
                        endpoint,
                        format!("the {what} stalled for {:?}", self.options.read_timeout),
                    )
                })?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| {
                UpstreamError::new(
                    UpstreamErrorKind::Unavailable,
                    endpoint,
                    format!("connection failed while reading the {what}"),
                )
                .with_source(e)
            })?;
            if let Ok(data) = frame.into_data() {
                buffer.extend_from_slice(&data);
                if buffer.len() as u64 > limit {
                    return Err(too_large(what, limit, buffer.len() as u64));
                }
            }
        }
        Ok(buffer.freeze())
    }

    async fn manifest_request(
        &self,
        target: Target<'_>,
        method: Method,
        repository: &Repository,
        reference: &ManifestRef,
        accept: &[String],
    ) -> CoreResult<(Response<Incoming>, String)> {
        let accept = upstream_accept(accept);
        let url = target.url(repository, &format!("manifests/{reference}"), None);
        let response = self
            .send(
                &target,
                method,
                &url,
                Some(&accept),
                &pull_scope(repository),
            )
            .await?;
        Ok((response, target.endpoint.url.clone()))
    }

    async fn get_manifest_once(
        &self,
        target: Target<'_>,
        repository: &Repository,
        reference: &ManifestRef,
        accept: &[String],
    ) -> CoreResult<FetchedManifest> {
        let (response, endpoint) = self
            .manifest_request(target, Method::GET, repository, reference, accept)
            .await?;
        let mut head = manifest_head(response.headers());
        let limit = self.options.max_manifest_size;
        if let Some(size) = head.size.filter(|s| *s > limit) {
            return Err(too_large("manifest", limit, size));
        }
        let bytes = self
            .read_body(response.into_body(), limit, &endpoint, "manifest")
            .await?;
        head.size = Some(bytes.len() as u64);
        // A lying endpoint is skipped here (Invalid moves the chain on), so the
        // next one can serve the right bytes; the engine verifies again.
        if let ManifestRef::Digest(expected) = reference {
            let actual = Digest::compute(expected.algorithm(), &bytes);
            if actual != *expected {
                return Err(UpstreamError::new(
                    UpstreamErrorKind::Invalid,
                    &endpoint,
                    format!("manifest asked for as {expected} hashes to {actual}; trying the next endpoint"),
                )
                .into());
            }
        }
        if head.media_type.is_empty() {
            head.media_type = media_type_in_body(&bytes).ok_or_else(|| {
                UpstreamError::new(
                    UpstreamErrorKind::Invalid,
                    &endpoint,
                    "manifest has neither a Content-Type nor a mediaType field",
                )
            })?;
        }
        Ok(FetchedManifest { head, bytes })
    }

    async fn tags_once(
        &self,
        target: Target<'_>,
        repository: &Repository,
        n: Option<usize>,
        last: Option<&str>,
    ) -> CoreResult<TagList> {
        let mut query: Vec<String> = Vec::new();
        if let Some(n) = n {
            query.push(format!("n={n}"));
        }
        if let Some(last) = last {
            query.push(format!("last={}", encode_query(last)));
        }
        let query = (!query.is_empty()).then(|| query.join("&"));
        let mut url = target.url(repository, "tags/list", query.as_deref());
        let scope = pull_scope(repository);
        let mut all = TagList {
            name: repository.to_string(),
            tags: Vec::new(),
        };
        for _ in 0..MAX_TAG_PAGES {
            let response = self.send(&target, Method::GET, &url, None, &scope).await?;
            let next = next_link(&response, &url);
            let body = self
                .read_body(
                    response.into_body(),
                    16 * 1024 * 1024,
                    &target.endpoint.url,
                    "tag list",
                )
                .await?;
            #[derive(serde::Deserialize)]
            struct Page {
                name: String,
                #[serde(default)]
                tags: Option<Vec<String>>,
            }
            let page: Page = serde_json::from_slice(&body).map_err(|e| {
                UpstreamError::new(
                    UpstreamErrorKind::Invalid,
                    &target.endpoint.url,
                    "tag list is not valid json",
                )
                .with_source(e)
            })?;
            all.name = page.name;
            all.tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(next) if n.is_none() => url = next,
                _ => break,
            }
        }
        Ok(all)
    }
}

#[async_trait]
impl Upstream for HyperUpstream {
    async fn manifest_head(
        &self,
        registry: &Registry,
        repository: &Repository,
        reference: &ManifestRef,
        accept: &[String],
    ) -> CoreResult<ManifestHead> {
        self.over_chain(registry, addressing(reference), |target| {
            Box::pin(async move {
                let (response, endpoint) = self
                    .manifest_request(target, Method::HEAD, repository, reference, accept)
                    .await?;
                let head = manifest_head(response.headers());
                if head.media_type.is_empty() {
                    return Err(UpstreamError::new(
                        UpstreamErrorKind::Invalid,
                        endpoint,
                        "manifest HEAD has no Content-Type",
                    )
                    .into());
                }
                Ok(head)
            })
        })
        .await
    }

    async fn manifest_get(
        &self,
        registry: &Registry,
        repository: &Repository,
        reference: &ManifestRef,
        accept: &[String],
    ) -> CoreResult<FetchedManifest> {
        self.over_chain(registry, addressing(reference), |target| {
            Box::pin(self.get_manifest_once(target, repository, reference, accept))
        })
        .await
    }

    async fn blob_get(
        &self,
        registry: &Registry,
        repository: &Repository,
        digest: &Digest,
    ) -> CoreResult<FetchedBlob> {
        self.over_chain(registry, Addressing::Digest, |target| {
            Box::pin(async move {
                let url = target.url(repository, &format!("blobs/{digest}"), None);
                let response = self
                    .send(&target, Method::GET, &url, None, &pull_scope(repository))
                    .await?;
                let size = content_length(response.headers());
                let stream = blob_stream(
                    response.into_body(),
                    self.options.read_timeout,
                    target.endpoint.url.clone(),
                );
                Ok(FetchedBlob { size, stream })
            })
        })
        .await
    }

    async fn blob_head(
        &self,
        registry: &Registry,
        repository: &Repository,
        digest: &Digest,
    ) -> CoreResult<u64> {
        self.over_chain(registry, Addressing::Digest, |target| {
            Box::pin(async move {
                let url = target.url(repository, &format!("blobs/{digest}"), None);
                let response = self
                    .send(&target, Method::HEAD, &url, None, &pull_scope(repository))
                    .await?;
                content_length(response.headers()).ok_or_else(|| {
                    UpstreamError::new(
                        UpstreamErrorKind::Invalid,
                        &target.endpoint.url,
                        "blob HEAD has no Content-Length",
                    )
                    .into()
                })
            })
        })
        .await
    }

    async fn tag_list(
        &self,
        registry: &Registry,
        repository: &Repository,
        n: Option<usize>,
        last: Option<&str>,
    ) -> CoreResult<TagList> {
        self.over_chain(registry, Addressing::Tag, |target| {
            Box::pin(self.tags_once(target, repository, n, last))
        })
        .await
    }
}

/// One endpoint of a chain, and whether it is the registry's origin.
#[derive(Clone, Copy)]
struct Target<'a> {
    endpoint: &'a Endpoint,
    registry: &'a Registry,
    is_origin: bool,
}

impl Target<'_> {
    /// [`Endpoint::request_url`]: mirrors get `ns`, the origin does not.
    fn url(&self, repository: &Repository, suffix: &str, query: Option<&str>) -> String {
        self.endpoint
            .request_url(self.registry, repository, suffix, query, !self.is_origin)
    }
}

/// The `Accept` sent upstream: the client's list, with the four manifest types
/// spelled out when it is empty or has a wildcard. Registries negotiate on
/// explicit types only: distribution answers `Accept: */*` for an OCI
/// manifest with 404.
fn upstream_accept(accept: &[String]) -> String {
    let wildcard = |t: &str| t.ends_with("/*");
    if !accept.is_empty() && !accept.iter().any(|t| wildcard(t)) {
        return accept.join(", ");
    }
    let mut types: Vec<&str> = accept
        .iter()
        .map(String::as_str)
        .filter(|t| !wildcard(t))
        .collect();
    for known in MANIFEST_TYPES {
        if !types.contains(&known) {
            types.push(known);
        }
    }
    if accept.iter().any(|t| t == "*/*") {
        types.push("*/*");
    }
    types.join(", ")
}

/// Tags are resolved only where tags may be; digests anywhere.
fn addressing(reference: &ManifestRef) -> Addressing {
    match reference {
        ManifestRef::Tag(_) => Addressing::Tag,
        ManifestRef::Digest(_) => Addressing::Digest,
    }
}

/// Whether the chain should try the next endpoint after `err`: only for
/// kinds another endpoint can fix (not found, rate limited, unavailable,
/// timed out, invalid answer, skipped), never after a definitive 401/403 or
/// a local failure. Decided by kind, never by message text.
fn moves_on(err: &CoreError) -> bool {
    match err {
        CoreError::Upstream(e) => e.is_retryable(),
        _ => false,
    }
}

fn pull_scope(repository: &Repository) -> String {
    format!("repository:{repository}:pull")
}

/// `scheme://authority`, the unit `Authorization` is scoped to.
fn origin_of(uri: &Uri) -> String {
    format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map_or("", |a| a.as_str())
    )
}

/// Resolves a `Location` or `Link` target against the current URL.
fn resolve(base: &Uri, location: &str) -> Option<Uri> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().ok();
    }
    let origin = origin_of(base);
    if location.starts_with('/') {
        return format!("{origin}{location}").parse().ok();
    }
    let path = base.path();
    let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
    format!("{origin}{dir}/{location}").parse().ok()
}

/// 2xx passes; anything else becomes the matching [`UpstreamErrorKind`].
fn check_status(response: Response<Incoming>, endpoint: &str) -> CoreResult<Response<Incoming>> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let kind = match status.as_u16() {
        404 => UpstreamErrorKind::NotFound,
        401 => UpstreamErrorKind::Unauthorized,
        403 => UpstreamErrorKind::Denied,
        429 => UpstreamErrorKind::TooManyRequests,
        408 => UpstreamErrorKind::Timeout,
        500..=599 => UpstreamErrorKind::Unavailable,
        _ => UpstreamErrorKind::Invalid,
    };
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| breaker::parse_retry_after(v, std::time::SystemTime::now()));
    Err(
        UpstreamError::new(kind, endpoint, format!("answered {status}"))
            .with_retry_after(retry_after)
            .into(),
    )
}

/// Digest, media type (without parameters; empty when absent) and size from the headers.
fn manifest_head(headers: &http::HeaderMap) -> ManifestHead {
    let digest = headers
        .get(DOCKER_CONTENT_DIGEST)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<Digest>().ok());
    let media_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned())
        .unwrap_or_default();
    ManifestHead {
        digest,
        media_type,
        size: content_length(headers),
    }
}

fn media_type_in_body(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Probe>(bytes).ok()?.media_type
}

fn too_large(what: &str, limit: u64, actual: u64) -> CoreError {
    CoreError::TooLarge {
        what: what.into(),
        limit,
        actual,
    }
}

/// A blob body as a stream that fails when no chunk arrives for `read_timeout`.
fn blob_stream(
    body: Incoming,
    read_timeout: Duration,
    endpoint: String,
) -> oci_cache_core::storage::ByteStream {
    let chunks = BodyDataStream::new(body);
    futures::stream::unfold(Some(chunks), move |state| {
        let endpoint = endpoint.clone();
        async move {
            let mut chunks = state?;
            match tokio::time::timeout(read_timeout, chunks.next()).await {
                Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(chunks))),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some((
                    Err(UpstreamError::new(
                        UpstreamErrorKind::Unavailable,
                        endpoint,
                        "connection failed during the blob download",
                    )
                    .with_source(e)
                    .into()),
                    None,
                )),
                Err(_) => Some((
                    Err(UpstreamError::new(
                        UpstreamErrorKind::Timeout,
                        endpoint,
                        format!("blob download stalled for {read_timeout:?}"),
                    )
                    .into()),
                    None,
                )),
            }
        }
    })
    .boxed()
}

/// The `rel="next"` target of a `Link` header, resolved against `current`.
fn next_link(response: &Response<Incoming>, current: &str) -> Option<String> {
    let base: Uri = current.parse().ok()?;
    response
        .headers()
        .get_all(LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find(|part| part.contains("rel=\"next\"") || part.contains("rel=next"))
        .and_then(|part| {
            let start = part.find('<')?;
            let end = part.find('>')?;
            part.get(start + 1..end)
        })
        .and_then(|target| resolve(&base, target))
        .map(|uri| uri.to_string())
}

/// Connects directly, or through an HTTP `CONNECT` tunnel when the proxy
/// environment says so for this destination.
#[derive(Debug, Clone)]
struct ProxyConnector {
    http: HttpConnector,
    matcher: Option<Arc<Matcher>>,
}

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = TokioIo<TcpStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let intercept = self.matcher.as_ref().and_then(|m| m.intercept(&dst));
        let mut http = self.http.clone();
        Box::pin(async move {
            match intercept {
                Some(intercept) => {
                    let mut tunnel = Tunnel::new(intercept.uri().clone(), http);
                    if let Some(auth) = intercept.basic_auth() {
                        tunnel = tunnel.with_auth(auth.clone());
                    }
                    Ok(tunnel.call(dst).await?)
                }
                None => Ok(http.call(dst).await?),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn endpoint(url: &str, override_path: bool) -> Endpoint {
        Endpoint::new(url).with_override_path(override_path)
    }

    #[test]
    fn endpoint_urls() {
        let registry = Registry::new("docker.io").unwrap();
        let repo = Repository::new("library/alpine").unwrap();
        let cases = [
            (
                "https://registry-1.docker.io",
                false,
                true,
                "https://registry-1.docker.io/v2/library/alpine/manifests/3",
            ),
            (
                "https://m.example/",
                false,
                false,
                "https://m.example/v2/library/alpine/manifests/3?ns=docker%2Eio",
            ),
            (
                "https://m.example/us",
                false,
                false,
                "https://m.example/us/v2/library/alpine/manifests/3?ns=docker%2Eio",
            ),
            (
                "https://m.example/v2",
                false,
                true,
                "https://m.example/v2/library/alpine/manifests/3",
            ),
            (
                "http://h/v2/docker.io",
                true,
                true,
                "http://h/v2/docker.io/library/alpine/manifests/3",
            ),
        ];
        for (base, override_path, is_origin, expected) in cases {
            let ep = endpoint(base, override_path);
            let target = Target {
                endpoint: &ep,
                registry: &registry,
                is_origin,
            };
            assert_eq!(target.url(&repo, "manifests/3", None), expected);
        }
    }

    #[test]
    fn accept_sent_upstream() {
        let list = |types: &[&str]| types.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        let all = MANIFEST_TYPES.join(", ");
        assert_eq!(upstream_accept(&[]), all);
        assert_eq!(
            upstream_accept(&list(&["application/vnd.oci.image.manifest.v1+json"])),
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(upstream_accept(&list(&["*/*"])), format!("{all}, */*"));
        assert_eq!(
            upstream_accept(&list(&["application/x", "application/*"])),
            format!("application/x, {all}")
        );
        assert_eq!(
            upstream_accept(&list(&[
                "application/vnd.oci.image.manifest.v1+json",
                "*/*"
            ])),
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json, */*"
        );
    }

    #[test]
    fn redirect_targets() {
        let base: Uri = "https://r.example/v2/a/blobs/sha256:x?q=1".parse().unwrap();
        assert_eq!(
            resolve(&base, "https://cdn.example/data?sig=1")
                .unwrap()
                .to_string(),
            "https://cdn.example/data?sig=1"
        );
        assert_eq!(
            resolve(&base, "/other").unwrap().to_string(),
            "https://r.example/other"
        );
        assert_eq!(
            resolve(&base, "rel").unwrap().to_string(),
            "https://r.example/v2/a/blobs/rel"
        );
        assert_eq!(origin_of(&base), "https://r.example");
    }
}
