//! Walking a registry's endpoint chain: mirrors, then the origin, with
//! circuit breakers, moving on only when another endpoint could do better.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use oci_cache_core::mirror::{Addressing, Endpoint};
use oci_cache_core::observe::{UpstreamOperation, UpstreamOutcome};
use oci_cache_core::reference::{ManifestRef, Registry, Repository};
use oci_cache_core::{Error as CoreError, ErrorChain, UpstreamError, UpstreamErrorKind};

use super::breaker::Outcome;
use super::report::{outcome_of, Received, Reporter};
use super::{CoreResult, HyperUpstream, UpstreamState};

impl HyperUpstream {
    /// Runs `op` on each endpoint of `registry`'s chain that may answer a
    /// request `addressing` its object (digest-only mirrors are left out for
    /// tags), until one succeeds or fails in a way the next endpoint cannot fix.
    pub(super) async fn over_chain<'a, T: Received>(
        &'a self,
        registry: &'a Registry,
        addressing: Addressing,
        operation: UpstreamOperation,
        op: impl Fn(Target<'a>) -> BoxFuture<'a, CoreResult<T>>,
    ) -> CoreResult<T> {
        self.over_chain_routed(registry, addressing, operation, Route::default(), op)
            .await
    }

    /// [`over_chain`](Self::over_chain) in `route`'s order: its preferred
    /// endpoint first, then the rest of the chain, leaving out the endpoints
    /// it avoids (a resumed blob fill goes back to the endpoint that was
    /// serving it, and on to the next one once it gave that up).
    pub(super) async fn over_chain_routed<'a, T: Received>(
        &'a self,
        registry: &'a Registry,
        addressing: Addressing,
        operation: UpstreamOperation,
        route: Route<'_>,
        op: impl Fn(Target<'a>) -> BoxFuture<'a, CoreResult<T>>,
    ) -> CoreResult<T> {
        let upstream =
            self.mirrors
                .lookup(registry.as_str())
                .ok_or_else(|| CoreError::UnknownUpstream {
                    name: registry.to_string(),
                })?;
        let budget =
            self.budgets
                .get(upstream.name.as_str())
                .ok_or_else(|| CoreError::UnknownUpstream {
                    name: registry.to_string(),
                })?;
        if self.options.offline {
            return Err(UpstreamError::new(
                UpstreamErrorKind::Offline,
                &upstream.origin.url,
                "offline: not contacting upstream; only cached content is served",
            )
            .into());
        }
        let mut chain: Vec<&Endpoint> = upstream
            .chain_for(addressing)
            .into_iter()
            .filter(|e| !route.avoid.contains(&e.url))
            .collect();
        if let Some(first) = chain
            .iter()
            .position(|e| Some(e.url.as_str()) == route.prefer)
        {
            let preferred = chain.remove(first);
            chain.insert(0, preferred);
        }
        if chain.is_empty() {
            return Err(UpstreamError::new(
                UpstreamErrorKind::Skipped,
                &upstream.origin.url,
                "every endpoint of the chain was given up on for this blob",
            )
            .into());
        }
        let mut last_error = None;
        for endpoint in chain {
            let reporter = Reporter {
                observer: self.observer.clone(),
                upstream: registry.clone(),
                endpoint: endpoint.url.clone(),
                operation,
            };
            if let Some(open_for) = self.breakers.check(&endpoint.url) {
                reporter.attempt(
                    UpstreamOutcome::Failed(UpstreamErrorKind::Skipped),
                    0,
                    Duration::ZERO,
                );
                tracing::debug!(endpoint = %endpoint.url, open_for_ms = open_for.as_millis() as u64,
                    "circuit breaker open; skipping the endpoint");
                // The client may retry once the breaker would let a probe through.
                let retry_after = Duration::from_secs(open_for.as_secs().saturating_add(1));
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
                upstream: &upstream.name,
                budget,
                extra: route.extra,
            };
            let started = Instant::now();
            let result = op(target).await;
            reporter.attempt(
                outcome_of(&result),
                result.as_ref().map_or(0, Received::body_bytes),
                started.elapsed(),
            );
            let outcome = match &result {
                Err(CoreError::Upstream(e)) => Outcome::of_error(e.kind(), e.retry_after()),
                _ => Outcome::Answered,
            };
            // An extra connection's refusal asks for fewer connections; the
            // endpoint still serves the fill's own (see `BlobRange::extra`).
            if !route.extra || outcome == Outcome::Answered {
                if let Some(open) = self.breakers.record(&endpoint.url, outcome) {
                    reporter.breaker(open);
                }
            }
            match result {
                Ok(value) => return Ok(value.observe_body(reporter)),
                Err(e) if moves_on(&e) && !route.extra => {
                    tracing::debug!(endpoint = %endpoint.url, error = %ErrorChain(&e), "trying the next endpoint");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| CoreError::UnknownUpstream {
            name: registry.to_string(),
        }))
    }
}

/// The order a chain is walked in: [`Route::default`] is the configured order.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Route<'r> {
    /// Tried first, when it is in the chain.
    pub(super) prefer: Option<&'r str>,
    /// Left out.
    pub(super) avoid: &'r [String],
    /// An extra connection ([`BlobRange::extra`](oci_cache_core::upstream::BlobRange::extra)):
    /// its refusals neither count against the endpoint nor pause the host,
    /// and the chain does not move on after a failure.
    pub(super) extra: bool,
}

/// One endpoint of a chain, whether it is the registry's origin, and the
/// budget of the upstream it serves.
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
    pub(super) endpoint: &'a Endpoint,
    pub(super) registry: &'a Registry,
    pub(super) is_origin: bool,
    /// The configured upstream's name (`registry` may be an alias).
    pub(super) upstream: &'a Registry,
    pub(super) budget: &'a UpstreamState,
    /// [`Route::extra`].
    pub(super) extra: bool,
}

impl Target<'_> {
    /// [`Endpoint::request_url`]: mirrors get `ns`, the origin does not.
    pub(super) fn url(&self, repository: &Repository, suffix: &str, query: Option<&str>) -> String {
        self.endpoint
            .request_url(self.registry, repository, suffix, query, !self.is_origin)
    }
}

/// Tags are resolved only where tags may be; digests anywhere.
pub(super) fn addressing(reference: &ManifestRef) -> Addressing {
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
                "https://m.example/v2/library/alpine/manifests/3?ns=docker.io",
            ),
            (
                "https://m.example/us",
                false,
                false,
                "https://m.example/us/v2/library/alpine/manifests/3?ns=docker.io",
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
        let limits = super::super::BudgetLimits {
            max_concurrent: 8,
            per_second: None,
        };
        let state = UpstreamState {
            budget: std::sync::Arc::new(super::super::Budget::new(
                registry.clone(),
                limits,
                oci_cache_core::observe::noop(),
            )),
            allowance: Default::default(),
        };
        for (base, override_path, is_origin, expected) in cases {
            let ep = endpoint(base, override_path);
            let target = Target {
                endpoint: &ep,
                registry: &registry,
                is_origin,
                upstream: &registry,
                budget: &state,
                extra: false,
            };
            assert_eq!(target.url(&repo, "manifests/3", None), expected);
        }
    }
}
