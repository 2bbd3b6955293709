//! Connections and single HTTP exchanges: the hyper client (direct or
//! through a `CONNECT` proxy), redirects, bounded body reads and blob streams.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::StreamExt;
use http::header::{ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, LOCATION, USER_AGENT};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyDataStream, BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use oci_cache_core::mirror::Endpoint;
use oci_cache_core::{Error as CoreError, UpstreamError, UpstreamErrorKind};
use tokio::net::TcpStream;

use super::budget::{Permit, Priority};
use super::chain::Target;
use super::trust::{self, Purpose, Refusal};
use super::{CoreResult, HyperUpstream, UpstreamOptions};

/// Largest read buffer of one upstream HTTP/1 connection (hyper's default is
/// ~400 KiB). A blob fill keeps recent chunks in memory for its clients, and
/// each chunk pins the read buffer it was cut from, so this bounds what one
/// fill holds; 128 KiB reads are still few per MiB.
const UPSTREAM_READ_BUFFER: usize = 128 * 1024;

pub(crate) type HttpClient = Client<HttpsConnector<ProxyConnector>, Empty<Bytes>>;

/// A client with `tls` (or the system roots, falling back to the bundled
/// Mozilla roots, when `None`).
pub(super) fn build_client(
    options: &UpstreamOptions,
    provider: Arc<rustls::crypto::CryptoProvider>,
    tls: Option<rustls::ClientConfig>,
) -> crate::Result<HttpClient> {
    let proxy = ProxyConnector {
        http: http_connector(options.connect_timeout),
        matcher: options.proxy.matcher().map(Arc::new),
    };
    let pool = (options.idle_timeout, options.max_idle_per_host);
    client_over(proxy, pool, provider, tls)
}

/// A client that never goes through a proxy, with the system roots: for the
/// replicas of a fleet, which reach each other directly and send each other
/// a secret no proxy should see.
pub(crate) fn direct_client(connect_timeout: Duration) -> crate::Result<HttpClient> {
    let direct = ProxyConnector {
        http: http_connector(connect_timeout),
        matcher: None,
    };
    let defaults = UpstreamOptions::default();
    let pool = (defaults.idle_timeout, defaults.max_idle_per_host);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    client_over(direct, pool, provider, None)
}

fn http_connector(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http
}

/// The client over `proxy`; `pool` is (idle timeout, idle connections per host).
fn client_over(
    proxy: ProxyConnector,
    pool: (Duration, usize),
    provider: Arc<rustls::crypto::CryptoProvider>,
    tls: Option<rustls::ClientConfig>,
) -> crate::Result<HttpClient> {
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
        .pool_idle_timeout(pool.0)
        .pool_max_idle_per_host(pool.1)
        .http1_max_buf_size(UPSTREAM_READ_BUFFER)
        .build(connector))
}

impl HyperUpstream {
    /// Sends a request for `target`'s endpoint, following the redirects
    /// `purpose` allows (see `trust`); `Authorization` only goes to the first
    /// origin. `label` names the request in errors (the endpoint, or the realm).
    ///
    /// Every request to an upstream passes here, so this is where its budget
    /// is taken (the [`Permit`] travels in the response's extensions until
    /// the answer is read, see [`permit_of`]) and where a host that asked to
    /// be left alone is not asked (see `backoff`).
    #[allow(clippy::too_many_arguments)] // one request's parts; a struct would only rename them
    pub(super) async fn follow(
        &self,
        target: &Target<'_>,
        purpose: Purpose,
        method: Method,
        uri: Uri,
        accept: Option<&str>,
        authorization: Option<&str>,
        label: &str,
        headers: &http::HeaderMap,
    ) -> CoreResult<Response<Incoming>> {
        let endpoint = target.endpoint;
        let client = self.client_for(endpoint);
        let first_origin = origin_of(&uri);
        self.pauses.check(&first_origin, label)?;
        let priority = match purpose {
            Purpose::Blob => Priority::Bulk,
            Purpose::Api | Purpose::Realm => Priority::Urgent,
        };
        let permit = Arc::new(target.budget.budget.acquire(priority).await);
        // The pause may have begun while this request queued.
        self.pauses.check(&first_origin, label)?;
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
            for (name, value) in headers {
                builder = builder.header(name, value);
            }
            let request = builder.body(Empty::new()).map_err(|e| {
                UpstreamError::new(
                    UpstreamErrorKind::Invalid,
                    label,
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
                            label,
                            format!("no response within {:?}", self.options.request_timeout),
                        )
                    })?
                    .map_err(|e| {
                        UpstreamError::new(UpstreamErrorKind::Unavailable, label, "request failed")
                            .with_source(e)
                    })?;
            let mut response = response;
            if !target.extra {
                self.pauses
                    .record(&origin_of(&current), response.status(), response.headers());
            }
            target
                .budget
                .allowance
                .record(target.upstream, response.headers(), &self.observer);
            let redirect = matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308);
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .filter(|_| redirect)
                .map(str::to_owned);
            let Some(location) = location else {
                response.extensions_mut().insert(permit);
                return Ok(response);
            };
            let location = location.as_str();
            current = self.redirect_target(endpoint, purpose, &current, location, label)?;
            tracing::debug!(to = %origin_of(&current), "following redirect");
        }
        Err(UpstreamError::new(
            UpstreamErrorKind::Invalid,
            label,
            format!("more than {} redirects", self.options.max_redirects),
        )
        .into())
    }

    /// Where a redirect to `location` leads, if `trust` lets `purpose` go there;
    /// a refusal is logged, reported and an `Invalid` answer (the chain moves on).
    fn redirect_target(
        &self,
        endpoint: &Endpoint,
        purpose: Purpose,
        current: &Uri,
        location: &str,
        label: &str,
    ) -> CoreResult<Uri> {
        let refuse = |host: &str, refusal: Refusal| {
            self.refusals
                .refused(&self.observer, endpoint, purpose, host, &refusal);
            UpstreamError::new(
                UpstreamErrorKind::Invalid,
                label,
                format!("redirect refused: {}", refusal.0),
            )
            .into()
        };
        let Some(next) = resolve(current, location) else {
            let refusal = Refusal(format!("{location:?} is not an http(s) url"));
            return Err(refuse(
                location.split('/').next().unwrap_or_default(),
                refusal,
            ));
        };
        match trust::check(endpoint, purpose, &next, false) {
            Ok(()) => Ok(next),
            Err(refusal) => Err(refuse(&trust::host_of(&next), refusal)),
        }
    }

    /// Reads a whole body of at most `limit` bytes, giving up when it stalls
    /// for the read timeout.
    /// The response's budget permit is held until the body is in.
    pub(super) async fn read_body(
        &self,
        response: Response<Incoming>,
        limit: u64,
        endpoint: &str,
        what: &str,
    ) -> CoreResult<Bytes> {
        let (_held, mut body) = response.into_parts();
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
}

/// `scheme://authority`, the unit `Authorization` is scoped to.
pub(super) fn origin_of(uri: &Uri) -> String {
    format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map_or("", |a| a.as_str())
    )
}

/// Resolves a `Location` or `Link` target against the current URL; `None`
/// for a target with another scheme (`ftp:`, `file:`), which must never be
/// read as a relative path.
pub(super) fn resolve(base: &Uri, location: &str) -> Option<Uri> {
    if let Some((scheme, rest)) = location.split_once(':') {
        let is_scheme = scheme
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if is_scheme {
            let web = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
            if !web || !rest.starts_with("//") {
                return None;
            }
            return location.parse::<Uri>().ok().filter(|u| u.host().is_some());
        }
    }
    let origin = origin_of(base);
    if location.starts_with("//") {
        return format!("{}:{location}", base.scheme_str().unwrap_or("http"))
            .parse()
            .ok();
    }
    if location.starts_with('/') {
        return format!("{origin}{location}").parse().ok();
    }
    let path = base.path();
    let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
    format!("{origin}{dir}/{location}").parse().ok()
}

pub(super) fn too_large(what: &str, limit: u64, actual: u64) -> CoreError {
    CoreError::TooLarge {
        what: what.into(),
        limit,
        actual,
    }
}

/// The budget permit `follow` put in a response, to hold while its body is read.
pub(super) fn permit_of(response: &mut Response<Incoming>) -> Option<Arc<Permit>> {
    response.extensions_mut().remove::<Arc<Permit>>()
}

/// A blob body as a stream that fails when no chunk arrives for
/// `read_timeout`; `permit` is held until the stream ends or is dropped.
pub(crate) fn blob_stream(
    mut response: Response<Incoming>,
    read_timeout: Duration,
    endpoint: String,
) -> oci_cache_core::storage::ByteStream {
    let permit = permit_of(&mut response);
    let chunks = BodyDataStream::new(response.into_body());
    futures::stream::unfold(Some((chunks, permit)), move |state| {
        let endpoint = endpoint.clone();
        async move {
            let (mut chunks, permit) = state?;
            match tokio::time::timeout(read_timeout, chunks.next()).await {
                Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some((chunks, permit)))),
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

/// Connects directly, or through an HTTP `CONNECT` tunnel when the proxy
/// environment says so for this destination.
#[derive(Debug, Clone)]
pub(crate) struct ProxyConnector {
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
        assert_eq!(
            resolve(&base, "//cdn.example/x").unwrap().to_string(),
            "https://cdn.example/x"
        );
        for other in [
            "ftp://cdn.example/x",
            "file:///etc/passwd",
            "gopher:x",
            "HTTPS:",
        ] {
            assert!(resolve(&base, other).is_none(), "{other}");
        }
        // RFC 3986: a first segment with a colon is a scheme, not a path.
        assert!(resolve(&base, "sha256:abc").is_none());
    }
}
