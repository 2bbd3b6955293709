//! [`HyperPeerFills`]: fetches a blob from the replica a fill lease names.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, USER_AGENT};
use http::uri::Scheme;
use http::{Request, StatusCode, Uri};
use http_body_util::Empty;
use oci_cache_core::digest::Digest;
use oci_cache_core::fleet::PeerFills;
use oci_cache_core::upstream::FetchedBlob;
use oci_cache_core::{Error as CoreError, UpstreamError, UpstreamErrorKind};

use super::{PeerSecret, PEER_BLOBS_PATH};
use crate::upstream::{blob_stream, direct_client, HttpClient};

type CoreResult<T> = oci_cache_core::Result<T>;

/// Bounds of a fetch from another replica.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerOptions {
    /// Longest wait for a connection to a replica (default 2 s: replicas
    /// are near each other, and a dead one should cost little).
    pub connect_timeout: Duration,
    /// Longest wait for the answer (status and headers; default 5 s, half
    /// the default lease TTL). A stopped holder's socket still accepts
    /// connections and then says nothing: after this the asking replica
    /// watches the holder's lease and takes it over once it is stale, so
    /// this must be shorter than the lease TTL (`serve` uses half of it).
    pub answer_timeout: Duration,
    /// Longest wait for each chunk of the body (default 15 s). A holder's
    /// fill pauses while it resumes a cut upstream connection, so this is
    /// longer than the connect timeout.
    pub read_timeout: Duration,
    /// Largest blob taken from a replica (the engine's `max_blob_size`).
    pub max_blob_size: u64,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            connect_timeout: Duration::from_secs(2),
            answer_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(15),
            max_blob_size: oci_cache_core::cache::CacheOptions::default().max_blob_size,
        }
    }
}

impl PeerOptions {
    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`answer_timeout`](Self::answer_timeout).
    pub fn with_answer_timeout(mut self, timeout: Duration) -> Self {
        self.answer_timeout = timeout;
        self
    }

    /// Sets [`read_timeout`](Self::read_timeout).
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Sets [`max_blob_size`](Self::max_blob_size).
    pub fn with_max_blob_size(mut self, bytes: u64) -> Self {
        self.max_blob_size = bytes;
        self
    }
}

/// Fetches blobs from other replicas over their internal route (see the
/// module docs of `peer`), with the fleet's shared secret.
#[derive(Debug, Clone)]
pub struct HyperPeerFills {
    client: HttpClient,
    secret: PeerSecret,
    options: PeerOptions,
    user_agent: String,
}

impl HyperPeerFills {
    /// A client that sends `secret` to the replicas it asks.
    pub fn new(secret: PeerSecret, options: PeerOptions) -> crate::Result<Self> {
        Ok(HyperPeerFills {
            client: direct_client(options.connect_timeout)?,
            secret,
            options,
            user_agent: format!("oci-cache/{} (peer)", env!("CARGO_PKG_VERSION")),
        })
    }

    async fn get(
        &self,
        uri: Uri,
        origin: &str,
    ) -> CoreResult<hyper::Response<hyper::body::Incoming>> {
        let request = Request::get(uri)
            .header(AUTHORIZATION, self.secret.header())
            .header(USER_AGENT, &self.user_agent)
            .body(Empty::<Bytes>::new())
            .map_err(|e| {
                peer_error(UpstreamErrorKind::Invalid, origin, "request not buildable")
                    .with_source(e)
            })?;
        let timeout = self.options.answer_timeout;
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(peer_error(
                UpstreamErrorKind::Unavailable,
                origin,
                "replica unreachable",
            )
            .with_source(e)
            .into()),
            Err(_) => Err(peer_error(
                UpstreamErrorKind::Timeout,
                origin,
                format!("replica did not answer within {timeout:?}"),
            )
            .into()),
        }
    }
}

#[async_trait]
impl PeerFills for HyperPeerFills {
    async fn fetch(&self, holder_url: &str, digest: &Digest) -> CoreResult<FetchedBlob> {
        let (origin, uri) = blob_uri(holder_url, digest)?;
        let response = self.get(uri, &origin).await?;
        let status = response.status();
        match status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(peer_error(
                    UpstreamErrorKind::NotFound,
                    &origin,
                    format!("the replica has no fill or copy of {digest}"),
                )
                .into())
            }
            StatusCode::UNAUTHORIZED => {
                return Err(peer_error(
                    UpstreamErrorKind::Unauthorized,
                    &origin,
                    "the replica refused the peer secret: every replica needs the same --peer-secret-file",
                )
                .into())
            }
            _ => {
                return Err(peer_error(
                    UpstreamErrorKind::Unavailable,
                    &origin,
                    format!("the replica answered {status}"),
                )
                .into())
            }
        }
        // hyper ends the body at this length and fails a shorter one, so the
        // stream is exactly `size` bytes or an error.
        let size = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                peer_error(
                    UpstreamErrorKind::Invalid,
                    &origin,
                    "blob answer without a Content-Length",
                )
            })?;
        if size > self.options.max_blob_size {
            return Err(CoreError::TooLarge {
                what: format!("blob {digest} from replica {origin}"),
                limit: self.options.max_blob_size,
                actual: size,
            });
        }
        let stream = blob_stream(response, self.options.read_timeout, origin);
        Ok(FetchedBlob {
            size: Some(size),
            stream,
        })
    }
}

fn peer_error(kind: UpstreamErrorKind, origin: &str, message: impl Into<String>) -> UpstreamError {
    UpstreamError::new(kind, format!("replica {origin}"), message)
}

/// The origin of `holder_url` and the URI of `digest` on it.
fn blob_uri(holder_url: &str, digest: &Digest) -> CoreResult<(String, Uri)> {
    let origin = replica_origin(holder_url).map_err(|e| {
        CoreError::from(peer_error(
            UpstreamErrorKind::Invalid,
            holder_url,
            e.to_string(),
        ))
    })?;
    let uri = format!("{origin}{PEER_BLOBS_PATH}{digest}")
        .parse()
        .map_err(|e| {
            peer_error(UpstreamErrorKind::Invalid, holder_url, "unusable URL").with_source(e)
        })?;
    Ok((origin, uri))
}

/// The origin (`scheme://host[:port]`) of a URL a replica advertises. Only
/// a bare `http(s)://host[:port]` (a trailing `/` allowed) is taken:
/// credentials, a path or a query would mean the URL is not one a replica
/// advertises, and the secret must not go there.
pub fn replica_origin(url: &str) -> crate::Result<String> {
    let refuse = |why: &str| {
        crate::Error::Fleet(format!(
            "{url:?} is not a replica URL ({why}); write it like http://10.0.0.7:5000"
        ))
    };
    let uri: Uri = url.parse().map_err(|_| refuse("unparsable"))?;
    let scheme = uri.scheme().ok_or_else(|| refuse("no scheme"))?;
    if *scheme != Scheme::HTTP && *scheme != Scheme::HTTPS {
        return Err(refuse("scheme other than http or https"));
    }
    let authority = uri.authority().ok_or_else(|| refuse("no host"))?;
    if authority.as_str().contains('@') {
        return Err(refuse("credentials in the URL"));
    }
    if authority.host().is_empty() {
        return Err(refuse("no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(refuse("a path or query"));
    }
    Ok(format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_bare_replica_urls_are_asked() {
        let digest = Digest::sha256_of(b"x");
        let (origin, uri) = blob_uri("http://10.0.0.7:5000", &digest).unwrap();
        assert_eq!(origin, "http://10.0.0.7:5000");
        assert_eq!(
            uri.to_string(),
            format!("http://10.0.0.7:5000/_oci-cache/peer/blobs/{digest}")
        );
        assert!(blob_uri("https://replica-1.peers:5000/", &digest).is_ok());
        for bad in [
            "10.0.0.7:5000",
            "ftp://10.0.0.7",
            "http://user:pw@10.0.0.7:5000",
            "http://10.0.0.7:5000/v2/",
            "http://10.0.0.7:5000/?x=1",
            "http:///x",
            "",
        ] {
            assert!(blob_uri(bad, &digest).is_err(), "{bad}");
        }
    }

    /// A stopped replica: the kernel completes the connection (the socket
    /// listens), nobody reads the request. The fetch gives up after the
    /// answer timeout, not the longer body timeout, so the asking replica
    /// gets to watch the lease well before it could go stale.
    #[tokio::test]
    async fn a_replica_that_accepts_and_never_answers_costs_the_answer_timeout() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let options = PeerOptions::default()
            .with_answer_timeout(Duration::from_millis(300))
            .with_read_timeout(Duration::from_secs(30));
        let secret = PeerSecret::new("0123456789abcdef0123").unwrap();
        let peers = HyperPeerFills::new(secret, options).unwrap();
        let started = std::time::Instant::now();
        let err = peers
            .fetch(&url, &Digest::sha256_of(b"x"))
            .await
            .err()
            .unwrap();
        let waited = started.elapsed();
        assert!(err.to_string().contains("did not answer within"), "{err}");
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        drop(silent);
    }
}
