//! Building OCI responses: bodies with exact lengths, digest and blob
//! headers, byte ranges, pagination, and the mapping of engine errors. Shared
//! by every handler family, and importing none of them.

use std::ops::Range;

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, IF_NONE_MATCH, LINK, RANGE,
};
use http::{Response, StatusCode};
use oci_cache_core::digest::Digest;
use oci_cache_core::manifest::media_type::OCI_INDEX;
use oci_cache_core::observe::CacheOutcome;
use oci_cache_core::referrers::Referrer;

use crate::body::{self, Body};
use crate::error::{ErrorSubject, OciError};
use crate::wire::{encode_query, DOCKER_CONTENT_DIGEST};

/// The byte range a `Range` header asks for (end exclusive, unclamped);
/// `size` is awaited only for a suffix range.
pub(crate) async fn requested_range(
    headers: &HeaderMap,
    size: impl std::future::Future<Output = Result<u64, OciError>>,
) -> Result<Option<Range<u64>>, OciError> {
    let spec = headers
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range);
    Ok(match spec {
        None => None,
        Some(RangeSpec::From(start, end)) => {
            Some(start..end.map_or(u64::MAX, |e| e.saturating_add(1)))
        }
        Some(RangeSpec::Suffix(len)) => {
            let size = size.await?;
            if len == 0 || size == 0 {
                return Err(OciError::from_core(
                    &oci_cache_core::Error::RangeNotSatisfiable { start: size, size },
                    ErrorSubject::Blob,
                ));
            }
            Some(size.saturating_sub(len)..size)
        }
    })
}

/// A blob body: 200 with the whole blob, or 206 with `range` of it.
pub(crate) fn blob_response(
    digest: &Digest,
    size: u64,
    range: Range<u64>,
    stream: oci_cache_core::storage::ByteStream,
    partial: bool,
) -> Response<Body> {
    let mut response = Response::new(body::from_stream(stream));
    blob_headers(response.headers_mut(), digest, size);
    if partial {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let Range { start, end } = range;
        let headers = response.headers_mut();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(end.saturating_sub(start)));
        if let Ok(v) =
            HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end.saturating_sub(1)))
        {
            headers.insert(CONTENT_RANGE, v);
        }
    }
    response
}

/// Logs the full error (with causes) in the request span, then maps it.
pub(crate) fn fail(err: oci_cache_core::Error, subject: ErrorSubject) -> OciError {
    let api = OciError::from_core(&err, subject);
    let chain = oci_cache_core::ErrorChain(&err);
    if api.status.is_server_error() {
        tracing::warn!(error = %chain, "request failed");
    } else {
        tracing::debug!(error = %chain, "request refused");
    }
    api
}

/// [`fail`] for a request about one object, `what` (`docker.io/library/nginx:1.27`):
/// an offline mirror's "not cached (offline)" names it, so the operator
/// knows what to warm.
pub(crate) fn fail_naming(
    err: oci_cache_core::Error,
    subject: ErrorSubject,
    what: impl FnOnce() -> String,
) -> OciError {
    let offline = matches!(&err, oci_cache_core::Error::Upstream(up)
        if up.kind() == oci_cache_core::UpstreamErrorKind::Offline);
    let mut api = fail(err, subject);
    if offline {
        api.message = format!("{}: {}", api.message, what());
    }
    api
}

pub(crate) fn set_digest(headers: &mut HeaderMap, digest: &Digest) {
    if let Ok(v) = HeaderValue::from_str(digest.as_str()) {
        headers.insert(DOCKER_CONTENT_DIGEST, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        headers.insert(ETAG, v);
    }
}

pub(crate) fn blob_headers(headers: &mut HeaderMap, digest: &Digest, size: u64) {
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    set_digest(headers, digest);
}

pub(crate) fn with_body(status: StatusCode, content_type: &str, bytes: Bytes) -> Response<Body> {
    let len = bytes.len();
    let mut response = Response::new(body::full(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(CONTENT_TYPE, v);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    response
}

pub(crate) fn json_response(value: &serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    with_body(StatusCode::OK, "application/json", bytes.into())
}

/// The media types of every `Accept` header, comma-split, without parameters, deduplicated.
pub(crate) fn accept_list(headers: &HeaderMap) -> Vec<String> {
    let mut types: Vec<String> = Vec::new();
    for value in headers.get_all(ACCEPT) {
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            let media_type = item.split(';').next().unwrap_or_default().trim();
            if !media_type.is_empty() && !types.iter().any(|t| t == media_type) {
                types.push(media_type.to_owned());
            }
        }
    }
    types
}

/// True when `If-None-Match` names `digest` (quoted or not) or is `*`.
pub(crate) fn if_none_match(headers: &HeaderMap, digest: &Digest) -> bool {
    headers.get_all(IF_NONE_MATCH).iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',').any(|tag| {
                let tag = tag.trim();
                let tag = tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"');
                tag == "*" || tag == digest.as_str()
            })
        })
    })
}

/// A single byte range as sent in `Range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeSpec {
    /// `bytes=a-b` (inclusive end) or `bytes=a-`.
    From(u64, Option<u64>),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

/// Parses a single `bytes=` range. Anything else (other units, several
/// ranges, garbage) is ignored as RFC 9110 allows, and the whole blob is sent.
pub(crate) fn parse_range(value: &str) -> Option<RangeSpec> {
    let (unit, spec) = value.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (start, end) = spec.trim().split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (start.trim().is_empty(), end.trim().is_empty()) {
        (true, false) => Some(RangeSpec::Suffix(number(end)?)),
        (false, true) => Some(RangeSpec::From(number(start)?, None)),
        (false, false) => {
            let (a, b) = (number(start)?, number(end)?);
            (a <= b).then_some(RangeSpec::From(a, Some(b)))
        }
        (true, true) => None,
    }
}

/// The entries after `last`, at most `n`; and the last entry shown when more follow.
pub(crate) fn paginate(
    mut items: Vec<String>,
    n: Option<usize>,
    last: Option<&str>,
) -> (Vec<String>, Option<(usize, String)>) {
    items.sort();
    items.dedup();
    if let Some(last) = last {
        items.retain(|t| t.as_str() > last);
    }
    let Some(n) = n else {
        return (items, None);
    };
    let more = items.len() > n && n > 0;
    items.truncate(n);
    let next = if more {
        items.last().map(|l| (n, l.clone()))
    } else {
        None
    };
    (items, next)
}

/// `Link: <path?n=..&last=..>; rel="next"`, keeping `ns` so the next page routes the same way.
pub(crate) fn add_link(
    response: &mut Response<Body>,
    path: &str,
    ns: Option<&str>,
    next: Option<(usize, String)>,
) {
    let Some((n, last)) = next else { return };
    let ns = ns
        .map(|ns| format!("ns={}&", encode_query(ns)))
        .unwrap_or_default();
    let link = format!(
        "<{}?{ns}n={n}&last={}>; rel=\"next\"",
        path,
        encode_query(&last)
    );
    if let Ok(v) = HeaderValue::from_str(&link) {
        response.headers_mut().insert(LINK, v);
    }
}

/// Sent with a referrers answer whose `artifactType` filter was applied.
const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

/// The answer to `GET …/referrers/<digest>`, hosted or cached: an image
/// index of `referrers` (already filtered by `artifact_type`), `200` also
/// when empty as the spec requires, and `OCI-Filters-Applied: artifactType`
/// when filtered.
pub(crate) fn referrers_index(
    referrers: &[Referrer],
    artifact_type: Option<&str>,
) -> Result<Response<Body>, OciError> {
    let bytes = oci_cache_core::referrers::index_bytes(referrers)
        .map_err(|e| fail(e, ErrorSubject::Manifest))?;
    let mut response = with_body(StatusCode::OK, OCI_INDEX, bytes);
    if artifact_type.is_some() {
        response.headers_mut().insert(
            OCI_FILTERS_APPLIED,
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(response)
}

/// The outcome a handler recorded, for the log line.
pub(crate) fn outcome_of(response: &Response<Body>) -> Option<CacheOutcome> {
    response.extensions().get::<CacheOutcome>().copied()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ranges() {
        use RangeSpec::*;
        let cases = [
            ("bytes=0-9", Some(From(0, Some(9)))),
            ("bytes=5-", Some(From(5, None))),
            ("bytes=-3", Some(Suffix(3))),
            (" Bytes = 1 - 1 ", Some(From(1, Some(1)))),
            ("bytes=9-0", None),
            ("bytes=0-1,3-4", None),
            ("items=0-1", None),
            ("bytes=-", None),
            ("bytes=a-b", None),
            ("bytes=+1-2", None),
            ("bytes=99999999999999999999999-", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_range(text), expected, "{text:?}");
        }
    }

    #[test]
    fn accept_headers_are_merged_and_split() {
        let mut headers = HeaderMap::new();
        headers.append(
            ACCEPT,
            HeaderValue::from_static("application/a, application/b;q=0.5"),
        );
        headers.append(ACCEPT, HeaderValue::from_static("application/c"));
        headers.append(ACCEPT, HeaderValue::from_static("application/a,, */*"));
        assert_eq!(
            accept_list(&headers),
            ["application/a", "application/b", "application/c", "*/*"]
        );
    }

    #[test]
    fn pagination() {
        let tags: Vec<String> = ["c", "a", "b", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            paginate(tags.clone(), Some(2), None),
            (vec!["a".into(), "b".into()], Some((2, "b".into())))
        );
        assert_eq!(
            paginate(tags.clone(), Some(2), Some("b")),
            (vec!["c".into(), "d".into()], None)
        );
        assert_eq!(paginate(tags.clone(), Some(0), None), (vec![], None));
        assert_eq!(
            paginate(tags.clone(), None, Some("c")).0,
            vec!["d".to_string()]
        );
        assert_eq!(paginate(tags, Some(10), Some("zz")), (vec![], None));
    }

    #[test]
    fn etags() {
        let digest = Digest::sha256_of(b"x");
        let mut headers = HeaderMap::new();
        assert!(!if_none_match(&headers, &digest));
        headers.insert(
            IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"other\", W/\"{digest}\"")).unwrap(),
        );
        assert!(if_none_match(&headers, &digest));
        headers.insert(
            IF_NONE_MATCH,
            HeaderValue::from_str(digest.as_str()).unwrap(),
        );
        assert!(if_none_match(&headers, &digest));
    }
}
