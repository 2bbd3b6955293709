//! The OCI 1.1 referrers API upstream (`GET …/referrers/<digest>`), as
//! core's [`Upstream::referrers`](oci_cache_core::upstream::Upstream::referrers).

use oci_cache_core::digest::Digest;
use oci_cache_core::manifest::media_type::OCI_INDEX;
use oci_cache_core::mirror::Addressing;
use oci_cache_core::observe::UpstreamOperation;
use oci_cache_core::reference::{Registry, Repository};
use oci_cache_core::referrers::{self, Referrer};
use oci_cache_core::{Error as CoreError, UpstreamError, UpstreamErrorKind};

use super::chain::Target;
use super::registry::PageLimits;
use super::{CoreResult, HyperUpstream};

/// Most pages of a referrers list followed (`Link: rel="next"`): a
/// registry pages large lists, and each page is an upstream request.
pub(super) const MAX_REFERRER_PAGES: usize = 16;

impl HyperUpstream {
    /// The referrers of `subject` through the chain; `None` when every
    /// endpoint answered `404` (no referrers API: distribution 2.8 has none).
    /// The list is mutable, like a tag: digest-only mirrors are not asked.
    pub(super) async fn referrers_list(
        &self,
        registry: &Registry,
        repository: &Repository,
        subject: &Digest,
    ) -> CoreResult<Option<Vec<Referrer>>> {
        let answer = self
            .over_chain(
                registry,
                Addressing::Tag,
                UpstreamOperation::Referrers,
                |target| Box::pin(self.referrers_once(target, repository, subject)),
            )
            .await;
        match answer {
            Ok((referrers, _)) => Ok(Some(referrers)),
            Err(CoreError::Upstream(e)) if e.kind() == UpstreamErrorKind::NotFound => {
                tracing::debug!(%registry, %repository, error = %e, "no referrers API upstream");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Every page of one endpoint's referrers list: each an image index,
    /// its body within the manifest size limit.
    async fn referrers_once(
        &self,
        target: Target<'_>,
        repository: &Repository,
        subject: &Digest,
    ) -> CoreResult<(Vec<Referrer>, u64)> {
        let url = target.url(repository, &format!("referrers/{subject}"), None);
        let limits = PageLimits {
            what: "referrers list",
            max_pages: MAX_REFERRER_PAGES,
            max_bytes: self.options.max_manifest_size,
        };
        let endpoint = &target.endpoint.url;
        let mut all = Vec::new();
        let received = self
            .read_pages(&target, repository, url, Some(OCI_INDEX), limits, |headers, body| {
                let content_type = headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.split(';').next().unwrap_or_default().trim())
                    .unwrap_or_default();
                if !content_type.eq_ignore_ascii_case(OCI_INDEX) {
                    return Err(invalid(
                        endpoint,
                        format!("answered a referrers request with Content-Type {content_type:?}, not {OCI_INDEX}"),
                    ));
                }
                let page = referrers::parse_index(body).ok_or_else(|| {
                    invalid(endpoint, "answered a referrers request with a body that is not an image index of descriptors".to_owned())
                })?;
                all.extend(page);
                Ok(true)
            })
            .await?;
        Ok((all, received))
    }
}

fn invalid(endpoint: &str, message: String) -> CoreError {
    UpstreamError::new(UpstreamErrorKind::Invalid, endpoint, message).into()
}
