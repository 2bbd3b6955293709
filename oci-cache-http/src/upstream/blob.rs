//! Blob GETs over the chain, whole or from an offset: `Range: bytes=N-`
//! with `If-Range`, for a fill that resumes a cut connection.

use http::header::{CONTENT_ENCODING, CONTENT_RANGE, ETAG, IF_RANGE, RANGE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use oci_cache_core::digest::Digest;
use oci_cache_core::mirror::Addressing;
use oci_cache_core::observe::UpstreamOperation;
use oci_cache_core::reference::{Registry, Repository};
use oci_cache_core::upstream::{BlobRange, FetchedRange};
use oci_cache_core::{UpstreamError, UpstreamErrorKind};

use super::chain::{Route, Target};
use super::registry::pull_scope;
use super::transport::blob_stream;
use super::trust::Purpose;
use super::{CoreResult, HyperUpstream};
use crate::wire::content_length;

impl HyperUpstream {
    /// GETs `digest` from `range.offset` on, walking the chain in `range`'s
    /// order (its preferred endpoint first, without the avoided ones).
    pub(super) async fn blob_range(
        &self,
        registry: &Registry,
        repository: &Repository,
        digest: &Digest,
        range: &BlobRange,
    ) -> CoreResult<FetchedRange> {
        let route = Route {
            prefer: range.prefer.as_deref(),
            avoid: &range.avoid,
            extra: range.extra,
        };
        self.over_chain_routed(
            registry,
            Addressing::Digest,
            UpstreamOperation::BlobGet,
            route,
            |target| Box::pin(self.blob_range_once(target, repository, digest, range)),
        )
        .await
    }

    async fn blob_range_once(
        &self,
        target: Target<'_>,
        repository: &Repository,
        digest: &Digest,
        range: &BlobRange,
    ) -> CoreResult<FetchedRange> {
        let endpoint = &target.endpoint.url;
        let url = target.url(repository, &format!("blobs/{digest}"), None);
        let headers = range_headers(range);
        let response = self
            .send_with(
                &target,
                Method::GET,
                &url,
                None,
                &pull_scope(repository),
                Purpose::Blob,
                &headers,
            )
            .await?;
        // Asked for identity: an encoded body would not hash to the digest,
        // and decoding it is not ours to guess.
        if let Some(encoding) = response
            .headers()
            .get(CONTENT_ENCODING)
            .filter(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            return Err(UpstreamError::new(
                UpstreamErrorKind::Invalid,
                endpoint,
                format!(
                    "blob body sent with Content-Encoding {encoding:?} although identity was asked for; the upstream or a proxy in between must not encode blobs"
                ),
            )
            .into());
        }
        let (start, end, total) = if response.status() == StatusCode::PARTIAL_CONTENT {
            let value = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            match content_range(value) {
                Some((start, last, total)) if start == range.offset => {
                    (start, Some(last + 1), total)
                }
                _ => {
                    return Err(UpstreamError::new(
                        UpstreamErrorKind::Invalid,
                        endpoint,
                        format!(
                            "answered a request for bytes {}- with Content-Range {value:?}",
                            range.offset
                        ),
                    )
                    .into())
                }
            }
        } else {
            (0, None, content_length(response.headers()))
        };
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let stream = blob_stream(response, self.options.read_timeout, endpoint.clone());
        Ok(FetchedRange::partial(start, total, stream)
            .with_end(end)
            .with_etag(etag)
            .with_endpoint(Some(endpoint.clone())))
    }
}

/// `Range` (and `If-Range` with a strong entity tag) for a GET from
/// `range.offset` (to `range.end`); none for a whole blob.
fn range_headers(range: &BlobRange) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let last = range
        .end
        .map(|end| end.saturating_sub(1).to_string())
        .unwrap_or_default();
    if range.offset == 0 && last.is_empty() {
        return headers;
    }
    if let Ok(value) = HeaderValue::from_str(&format!("bytes={}-{last}", range.offset)) {
        headers.insert(RANGE, value);
    }
    // A weak tag cannot validate a range (RFC 9110, 13.1.5).
    if let Some(tag) = range
        .if_range
        .as_deref()
        .filter(|t| !t.starts_with("W/"))
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        headers.insert(IF_RANGE, tag);
    }
    headers
}

/// The first byte, the last byte and the total of a
/// `Content-Range: bytes FIRST-LAST/TOTAL` (`TOTAL` may be `*`: unknown).
fn content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let spec = value.trim().strip_prefix("bytes ")?;
    let (span, total) = spec.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse::<u64>().ok()?),
    };
    if last < first || total.is_some_and(|t| last >= t) {
        return None;
    }
    Some((first, last, total))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            content_range("bytes 100-199/1000"),
            Some((100, 199, Some(1000)))
        );
        assert_eq!(content_range("bytes 0-0/1"), Some((0, 0, Some(1))));
        assert_eq!(content_range("bytes 5-9/*"), Some((5, 9, None)));
        for bad in [
            "",
            "bytes */1000",
            "bytes 9-5/1000",
            "bytes 0-1000/1000",
            "items 0-1/2",
            "bytes 0-1",
        ] {
            assert_eq!(content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn range_headers_only_for_an_offset_and_if_range_only_for_strong_tags() {
        assert!(range_headers(&BlobRange::from_offset(0)).is_empty());
        let strong =
            range_headers(&BlobRange::from_offset(42).with_if_range(Some("\"sha256:ab\"".into())));
        assert_eq!(strong.get(RANGE).unwrap(), "bytes=42-");
        let bounded = range_headers(&BlobRange::from_offset(42).with_end(Some(100)));
        assert_eq!(bounded.get(RANGE).unwrap(), "bytes=42-99");
        let head = range_headers(&BlobRange::from_offset(0).with_end(Some(10)));
        assert_eq!(head.get(RANGE).unwrap(), "bytes=0-9");
        assert_eq!(strong.get(IF_RANGE).unwrap(), "\"sha256:ab\"");
        let weak = range_headers(&BlobRange::from_offset(42).with_if_range(Some("W/\"x\"".into())));
        assert!(weak.get(IF_RANGE).is_none());
    }
}
