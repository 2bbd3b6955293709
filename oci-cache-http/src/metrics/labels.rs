//! The `upstream` label of the request families: one shared name per
//! configured upstream, looked up (never formatted) on every request.

use std::sync::{Arc, RwLock};

use oci_cache_core::reference::Registry;
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// Requests routed to an upstream that is not configured (only possible
/// with `allow_any_upstream`): one label for all, so a client cannot grow
/// the exposition by naming registries.
const OTHER: &str = "other";
/// Requests to hosted (pushed) repositories.
const HOSTED: &str = "hosted";
/// Requests that name no repository (`/v2/`, health, metrics, errors).
const NONE: &str = "none";

/// An `upstream` label value: a configured upstream's name, `hosted`,
/// `none` or `other`. Cloning it is a reference count, never a copy.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct UpstreamName(Arc<str>);

impl EncodeLabelValue for UpstreamName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

/// The label values, made once per configured upstream.
#[derive(Debug)]
pub(super) struct UpstreamNames {
    /// `None` until [`configure`](Self::configure): every upstream is then
    /// labelled by its own name (an embedder feeding [`Metrics`](super::Metrics)
    /// without the builder, on its own upstreams).
    configured: RwLock<Option<Vec<(Registry, UpstreamName)>>>,
    other: UpstreamName,
    hosted: UpstreamName,
    none: UpstreamName,
}

impl Default for UpstreamNames {
    fn default() -> Self {
        UpstreamNames {
            configured: RwLock::default(),
            other: UpstreamName(OTHER.into()),
            hosted: UpstreamName(HOSTED.into()),
            none: UpstreamName(NONE.into()),
        }
    }
}

impl UpstreamNames {
    /// Replaces the configured upstreams (at build, and on a reload).
    pub(super) fn configure<'a>(&self, upstreams: impl IntoIterator<Item = &'a Registry>) {
        let names = upstreams
            .into_iter()
            .map(|u| (u.clone(), UpstreamName(u.as_str().into())))
            .collect();
        if let Ok(mut configured) = self.configured.write() {
            *configured = Some(names);
        }
    }

    /// The label of a request routed as `route` to `upstream`. A handful of
    /// upstreams: a scan of a short list beats hashing the name.
    pub(super) fn of(&self, route: &str, upstream: Option<&Registry>) -> UpstreamName {
        let Some(upstream) = upstream else {
            let hosted = route.starts_with("hosted") || route == "upload";
            return if hosted { &self.hosted } else { &self.none }.clone();
        };
        let Ok(configured) = self.configured.read() else {
            return self.other.clone();
        };
        match configured.as_deref() {
            Some(names) => names
                .iter()
                .find(|(name, _)| name == upstream)
                .map_or_else(|| self.other.clone(), |(_, label)| label.clone()),
            None => UpstreamName(upstream.as_str().into()),
        }
    }

    /// The label of an upstream's own traffic (attempts, bytes fetched):
    /// always a configured upstream, or `other`.
    pub(super) fn upstream(&self, upstream: &Registry) -> UpstreamName {
        self.of("", Some(upstream))
    }
}
