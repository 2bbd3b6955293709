//! Wire details shared by the server and the upstream client: header names,
//! header parsing and query-string encoding.

use http::header::HeaderName;
use oci_cache_core::mirror::QUERY_ESCAPE;
use percent_encoding::percent_decode_str;

/// `Docker-Content-Digest`.
pub(crate) const DOCKER_CONTENT_DIGEST: HeaderName =
    HeaderName::from_static("docker-content-digest");

/// The `Content-Length` header as a number, when present and valid.
pub(crate) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The decoded value of query parameter `key` (first occurrence).
pub(crate) fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_query(k)? == key).then(|| decode_query(v))?
    })
}

/// Percent-encodes a query value (all but ASCII letters, digits and `-._~`).
pub(crate) fn encode_query(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_ESCAPE).to_string()
}

fn decode_query(s: &str) -> Option<String> {
    let plus_as_space = s.replace('+', " ");
    percent_decode_str(&plus_as_space)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param(Some("ns=%5B%3A%3A1%5D%3A5000"), "ns").as_deref(),
            Some("[::1]:5000")
        );
        assert_eq!(
            query_param(Some("a=1&ns=x+y"), "ns").as_deref(),
            Some("x y")
        );
        assert_eq!(query_param(Some("nsx=1"), "ns"), None);
        assert_eq!(query_param(None, "ns"), None);
    }
}
