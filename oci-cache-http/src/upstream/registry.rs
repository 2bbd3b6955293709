//! The OCI pull endpoints over the chain: manifests, blobs and tag lists,
//! as core's [`Upstream`] trait.

use async_trait::async_trait;
use http::header::{CONTENT_TYPE, LINK};
use http::{Method, Response, Uri};
use hyper::body::Incoming;
use oci_cache_core::digest::Digest;
use oci_cache_core::manifest::media_type::KNOWN_MANIFEST_TYPES;
use oci_cache_core::mirror::Addressing;
use oci_cache_core::observe::UpstreamOperation;
use oci_cache_core::reference::{ManifestRef, Registry, Repository};
use oci_cache_core::referrers::Referrer;
use oci_cache_core::upstream::{
    BlobRange, FetchedBlob, FetchedManifest, FetchedRange, ManifestHead, TagList, Upstream,
};
use oci_cache_core::{UpstreamError, UpstreamErrorKind};

use super::chain::{addressing, Target};
use super::transport::{resolve, too_large};
use super::trust::{self, Purpose};
use super::{CoreResult, HyperUpstream};
use crate::wire::{content_length, encode_query, DOCKER_CONTENT_DIGEST};

/// Most tag-list pages followed when the caller asked for all tags.
const MAX_TAG_PAGES: usize = 1000;

/// The bounds of a paged list ([`HyperUpstream::read_pages`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct PageLimits {
    /// What is read, for errors ("tag list").
    pub(super) what: &'static str,
    /// Most pages followed.
    pub(super) max_pages: usize,
    /// Most body bytes over all pages.
    pub(super) max_bytes: u64,
}

impl HyperUpstream {
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
                Purpose::Api,
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
            .read_body(response, limit, &endpoint, "manifest")
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
        // Only a manifest is cached as one: an HTML error page or a blob
        // answered with 200 must not become a tag's content.
        head.media_type = manifest_media_type(&head.media_type, &bytes).ok_or_else(|| {
            UpstreamError::new(
                UpstreamErrorKind::Invalid,
                &endpoint,
                format!(
                    "answered a manifest request with Content-Type {:?} and a body that is not a \
                     manifest (a JSON object with a manifest media type); not caching it",
                    head.media_type
                ),
            )
        })?;
        Ok(FetchedManifest { head, bytes })
    }

    async fn tags_once(
        &self,
        target: Target<'_>,
        repository: &Repository,
        n: Option<usize>,
        last: Option<&str>,
    ) -> CoreResult<(TagList, u64)> {
        let mut query: Vec<String> = Vec::new();
        if let Some(n) = n {
            query.push(format!("n={n}"));
        }
        if let Some(last) = last {
            query.push(format!("last={}", encode_query(last)));
        }
        let query = (!query.is_empty()).then(|| query.join("&"));
        let url = target.url(repository, "tags/list", query.as_deref());
        let mut all = TagList {
            name: repository.to_string(),
            tags: Vec::new(),
        };
        let limits = PageLimits {
            what: "tag list",
            max_pages: MAX_TAG_PAGES,
            max_bytes: self.options.max_tag_list_bytes,
        };
        let received = self
            .read_pages(&target, repository, url, None, limits, |_, body| {
                let page = parse_tag_page(body).map_err(|e| {
                    UpstreamError::new(
                        UpstreamErrorKind::Invalid,
                        &target.endpoint.url,
                        "tag list is not valid json",
                    )
                    .with_source(e)
                })?;
                all.name = page.name;
                all.tags.extend(page.tags.unwrap_or_default());
                if all.tags.len() > self.options.max_tags {
                    return Err(too_large(
                        "tag list (entries)",
                        self.options.max_tags as u64,
                        all.tags.len() as u64,
                    ));
                }
                // A page asked for (`n`) is one page.
                Ok(n.is_none())
            })
            .await?;
        Ok((all, received))
    }

    /// Reads a paged list from `url` on, following `Link: <…>; rel="next"`
    /// where a redirect of the list could go, within `limits`: one byte
    /// budget over every page, so a registry cannot get past the cap by
    /// paging. `page` reads each page's headers and body and says whether
    /// to go on. Returns the body bytes read.
    pub(super) async fn read_pages(
        &self,
        target: &Target<'_>,
        repository: &Repository,
        mut url: String,
        accept: Option<&str>,
        limits: PageLimits,
        mut page: impl FnMut(&http::HeaderMap, &[u8]) -> CoreResult<bool>,
    ) -> CoreResult<u64> {
        let scope = pull_scope(repository);
        let mut received: u64 = 0;
        let max_bytes = limits.max_bytes;
        for _ in 0..limits.max_pages {
            let response = self
                .send(target, Method::GET, &url, accept, &scope, Purpose::Api)
                .await?;
            let next = next_link(&response, &url).and_then(|next| self.link_allowed(target, next));
            let headers = response.headers().clone();
            let body = self
                .read_body(
                    response,
                    max_bytes.saturating_sub(received),
                    &target.endpoint.url,
                    limits.what,
                )
                .await
                .map_err(|e| match e {
                    oci_cache_core::Error::TooLarge { what, limit, .. } => too_large(
                        &what,
                        max_bytes,
                        received.saturating_add(limit).saturating_add(1),
                    ),
                    other => other,
                })?;
            received += body.len() as u64;
            let go_on = page(&headers, &body)?;
            match next {
                Some(next) if go_on => url = next,
                _ => break,
            }
        }
        Ok(received)
    }

    /// A tag-list `Link` is followed only where a redirect of the list could go.
    fn link_allowed(&self, target: &Target<'_>, next: String) -> Option<String> {
        let uri: Uri = next.parse().ok()?;
        match trust::check(target.endpoint, Purpose::Api, &uri, false) {
            Ok(()) => Some(next),
            Err(refusal) => {
                self.refusals.refused(
                    &self.observer,
                    target.endpoint,
                    Purpose::Api,
                    &trust::host_of(&uri),
                    &refusal,
                );
                None
            }
        }
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
        self.over_chain(
            registry,
            addressing(reference),
            UpstreamOperation::ManifestHead,
            |target| {
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
            },
        )
        .await
    }

    async fn manifest_get(
        &self,
        registry: &Registry,
        repository: &Repository,
        reference: &ManifestRef,
        accept: &[String],
    ) -> CoreResult<FetchedManifest> {
        self.over_chain(
            registry,
            addressing(reference),
            UpstreamOperation::ManifestGet,
            |target| Box::pin(self.get_manifest_once(target, repository, reference, accept)),
        )
        .await
    }

    async fn blob_get(
        &self,
        registry: &Registry,
        repository: &Repository,
        digest: &Digest,
    ) -> CoreResult<FetchedBlob> {
        self.blob_range(registry, repository, digest, &BlobRange::default())
            .await
            .map(FetchedBlob::from)
    }

    async fn blob_get_range(
        &self,
        registry: &Registry,
        repository: &Repository,
        digest: &Digest,
        range: &BlobRange,
    ) -> CoreResult<FetchedRange> {
        self.blob_range(registry, repository, digest, range).await
    }

    async fn blob_head(
        &self,
        registry: &Registry,
        repository: &Repository,
        digest: &Digest,
    ) -> CoreResult<u64> {
        self.over_chain(
            registry,
            Addressing::Digest,
            UpstreamOperation::BlobHead,
            |target| {
                Box::pin(async move {
                    let url = target.url(repository, &format!("blobs/{digest}"), None);
                    let response = self
                        .send(
                            &target,
                            Method::HEAD,
                            &url,
                            None,
                            &pull_scope(repository),
                            Purpose::Blob,
                        )
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
            },
        )
        .await
    }

    async fn tag_list(
        &self,
        registry: &Registry,
        repository: &Repository,
        n: Option<usize>,
        last: Option<&str>,
    ) -> CoreResult<TagList> {
        self.over_chain(
            registry,
            Addressing::Tag,
            UpstreamOperation::TagList,
            |target| Box::pin(self.tags_once(target, repository, n, last)),
        )
        .await
        .map(|(list, _)| list)
    }

    async fn referrers(
        &self,
        registry: &Registry,
        repository: &Repository,
        subject: &Digest,
    ) -> CoreResult<Option<Vec<Referrer>>> {
        self.referrers_list(registry, repository, subject).await
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
    for known in KNOWN_MANIFEST_TYPES {
        if !types.contains(&known) {
            types.push(known);
        }
    }
    if accept.iter().any(|t| t == "*/*") {
        types.push("*/*");
    }
    types.join(", ")
}

pub(super) fn pull_scope(repository: &Repository) -> String {
    format!("repository:{repository}:pull")
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

/// The manifest media type of a fetched manifest: the `Content-Type` when it
/// names a manifest type, else (no or a generic JSON `Content-Type`) the
/// body's `mediaType`. `None` when the body is not a JSON object or no
/// manifest type is found.
pub(crate) fn manifest_media_type(content_type: &str, body: &[u8]) -> Option<String> {
    // Parsed whole: skipping unknown fields would let invalid JSON (a bad
    // `\u` escape deep inside) pass as a manifest. Bodies are already capped.
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let known = |t: &str| KNOWN_MANIFEST_TYPES.contains(&t);
    if known(content_type) {
        return Some(content_type.to_owned());
    }
    let generic = content_type.is_empty()
        || content_type.eq_ignore_ascii_case("application/json")
        || content_type.eq_ignore_ascii_case("text/plain");
    object
        .get("mediaType")
        .and_then(serde_json::Value::as_str)
        .filter(|t| generic && known(t))
        .map(str::to_owned)
}

/// One page of an upstream tag list.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TagPage {
    /// The repository, as upstream names it.
    pub(crate) name: String,
    /// The tags of this page (`null` for a repository without tags).
    #[serde(default)]
    pub(crate) tags: Option<Vec<String>>,
}

/// Parses one page of a tag list.
pub(crate) fn parse_tag_page(body: &[u8]) -> Result<TagPage, serde_json::Error> {
    serde_json::from_slice(body)
}

/// The `rel="next"` target of a `Link` header, resolved against `current`.
fn next_link(response: &Response<Incoming>, current: &str) -> Option<String> {
    let values = response
        .headers()
        .get_all(LINK)
        .iter()
        .filter_map(|v| v.to_str().ok());
    next_link_in(values, current)
}

/// The `rel="next"` target among `Link` header values, resolved against `current`.
pub(crate) fn next_link_in<'a>(
    values: impl Iterator<Item = &'a str>,
    current: &str,
) -> Option<String> {
    let base: Uri = current.parse().ok()?;
    values
        .flat_map(|v| v.split(','))
        .find(|part| part.contains("rel=\"next\"") || part.contains("rel=next"))
        .and_then(|part| {
            let start = part.find('<')?;
            let end = part.find('>')?;
            part.get(start.checked_add(1)?..end)
        })
        .and_then(|target| resolve(&base, target))
        .map(|uri| uri.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn accept_sent_upstream() {
        let list = |types: &[&str]| types.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        let all = KNOWN_MANIFEST_TYPES.join(", ");
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
            "application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.index.v1+json, */*"
        );
    }

    #[test]
    fn only_manifests_are_manifests() {
        let oci = "application/vnd.oci.image.manifest.v1+json";
        let body = br#"{"schemaVersion":2}"#;
        assert_eq!(manifest_media_type(oci, body).as_deref(), Some(oci));
        let typed = format!(r#"{{"schemaVersion":2,"mediaType":"{oci}"}}"#);
        assert_eq!(
            manifest_media_type("", typed.as_bytes()).as_deref(),
            Some(oci)
        );
        assert_eq!(
            manifest_media_type("application/json", typed.as_bytes()).as_deref(),
            Some(oci)
        );
        assert_eq!(manifest_media_type("text/html", b"<html></html>"), None);
        assert_eq!(manifest_media_type("text/html", typed.as_bytes()), None);
        assert_eq!(manifest_media_type(oci, b"<html></html>"), None);
        assert_eq!(manifest_media_type(oci, b"[1,2]"), None);
        // Found by the manifest_json fuzz target: an invalid escape in a field
        // nobody reads was accepted as JSON.
        assert_eq!(
            manifest_media_type(oci, br#"{"schemaVersion":2,"x":"\ud800"}"#),
            None
        );
        assert_eq!(manifest_media_type("application/octet-stream", body), None);
        assert_eq!(manifest_media_type("", body), None);
    }
}
