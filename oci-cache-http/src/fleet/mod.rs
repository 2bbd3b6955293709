//! Replicas of a fleet talking to each other: the shared secret, the
//! client that fetches a blob from another replica ([`HyperPeerFills`], the
//! HTTP side of [`PeerFills`](oci_cache_core::fleet::PeerFills)), and the
//! internal route that serves it (its handler is the `fleet` family of
//! `handlers`).
//!
//! # Design
//!
//! - **Outside the registry API.** The route lives at
//!   `/_oci-cache/peer/blobs/<digest>`, never under `/v2/`, so no registry
//!   client reaches it by accident and no client authentication or pull
//!   policy of `/v2/` applies to it; the shared secret does instead.
//! - **Off unless configured.** Without a secret the route answers 404 like
//!   any unknown path. With one, a request without the right
//!   `Authorization: Bearer <secret>` is 401 before anything else is done.
//!   The secret is compared through its SHA-256 with a comparison that does
//!   not stop at the first difference, so timing says nothing about it.
//! - **Never upstream.** The route answers only from this replica's fill
//!   under way or its storage
//!   ([`PullThrough::blob_for_peer`](oci_cache_core::cache::PullThrough::blob_for_peer)):
//!   two replicas can never ask each other in a loop, and a peer cannot make
//!   this replica spend upstream requests.
//! - **The client goes only where a lease points, and only there.** It takes
//!   a plain `http(s)://host[:port]` base URL (no credentials, path or
//!   query), asks that origin for the one fixed path, follows no redirect
//!   and uses no proxy, so the secret is sent to the advertised replica and
//!   nowhere else. Anyone who can write the bucket could advertise a URL of
//!   their own and collect the secret; the secret only opens the blobs of
//!   the bucket, which such a writer can read already.

use std::fmt;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use oci_cache_core::digest::Digest;

mod client;

pub use client::{replica_origin, HyperPeerFills, PeerOptions};

/// The path prefix of the internal blob route; the digest follows.
pub const PEER_BLOBS_PATH: &str = "/_oci-cache/peer/blobs/";

/// Shortest secret accepted: 16 characters (`openssl rand -hex 32` gives 64).
const MIN_SECRET_LEN: usize = 16;

/// The secret the replicas of a fleet share. Its `Debug` shows no part of it.
#[derive(Clone)]
pub struct PeerSecret {
    /// `Bearer <secret>`, marked sensitive (kept out of HTTP/2 header tables).
    header: HeaderValue,
    /// SHA-256 of the secret, what requests are compared against.
    fingerprint: Arc<Digest>,
}

impl fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerSecret(<redacted>)")
    }
}

impl PeerSecret {
    /// The secret from the text of a secret file: surrounding whitespace
    /// (a trailing newline) is ignored; what remains must be at least 16
    /// visible ASCII characters.
    pub fn new(text: &str) -> crate::Result<Self> {
        let secret = text.trim();
        if secret.len() < MIN_SECRET_LEN {
            return Err(crate::Error::Fleet(format!(
                "the peer secret is shorter than {MIN_SECRET_LEN} characters; generate one with `openssl rand -hex 32`"
            )));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(crate::Error::Fleet(
                "the peer secret must be visible ASCII characters without spaces; generate one with `openssl rand -hex 32`".into(),
            ));
        }
        let mut header = HeaderValue::try_from(format!("Bearer {secret}")).map_err(|e| {
            crate::Error::Fleet(format!("the peer secret is not a header value: {e}"))
        })?;
        header.set_sensitive(true);
        Ok(PeerSecret {
            header,
            fingerprint: Arc::new(Digest::sha256_of(secret.as_bytes())),
        })
    }

    /// The `Authorization` value a replica sends.
    pub(crate) fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// Whether `headers` carry `Authorization: Bearer <this secret>`.
    pub(crate) fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(presented) = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token)
        else {
            return false;
        };
        let presented = Digest::sha256_of(presented.as_bytes());
        same_bytes(
            presented.hex().as_bytes(),
            self.fingerprint.hex().as_bytes(),
        )
    }
}

/// The token of a `Bearer` authorization (the scheme is case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Equal slices, compared without stopping at the first difference. The
/// inputs are hashes of the secrets, so even a leak would reveal a hash.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| std::hint::black_box(acc | (x ^ y)));
    difference == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn secret_admits_only_itself_as_a_bearer_token() {
        let secret = PeerSecret::new("0123456789abcdef0123\n").unwrap();
        assert!(secret.admits(&headers("Bearer 0123456789abcdef0123")));
        assert!(secret.admits(&headers("bearer 0123456789abcdef0123")));
        assert!(!secret.admits(&headers("Bearer 0123456789abcdef0124")));
        assert!(!secret.admits(&headers("Bearer 0123456789abcdef012")));
        assert!(!secret.admits(&headers("Basic 0123456789abcdef0123")));
        assert!(!secret.admits(&headers("0123456789abcdef0123")));
        assert!(!secret.admits(&HeaderMap::new()));
        assert_eq!(
            secret.header().to_str().unwrap(),
            "Bearer 0123456789abcdef0123"
        );
        assert!(secret.header().is_sensitive());
        assert_eq!(format!("{secret:?}"), "PeerSecret(<redacted>)");
    }

    #[test]
    fn short_empty_or_spaced_secrets_are_refused() {
        for text in [
            "",
            "  \n",
            "short",
            "0123456789 abcdef0123",
            "0123456789abcdéf0123",
        ] {
            let error = PeerSecret::new(text).unwrap_err().to_string();
            assert!(error.contains("openssl rand -hex 32"), "{text:?}: {error}");
        }
    }
}
