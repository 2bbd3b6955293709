//! [`HyperUpstream`]: the engine's [`Upstream`](oci_cache_core::upstream::Upstream) over HTTP(S).
//!
//! Each call walks the registry's endpoint chain (mirrors, then the origin)
//! and moves on only when [`UpstreamError::is_retryable`](oci_cache_core::UpstreamError::is_retryable) says so. Per
//! endpoint it answers `401` challenges (bearer token or basic), follows up
//! to `max_redirects` redirects without sending `Authorization` to another
//! host, asks for identity encoding, and streams blob bodies. Which realms
//! get credentials and which redirects are followed is decided in `trust`.
//!
//! Proxies ([`ProxyConfig`]): by default `HTTPS_PROXY`/`HTTP_PROXY`/
//! `ALL_PROXY`/`NO_PROXY` are read once at construction. Both `https://` and `http://` destinations are reached
//! through an HTTP `CONNECT` tunnel, so the proxy must allow `CONNECT` to the
//! registry's port.

pub(crate) mod auth;
mod backoff;
mod blob;
mod breaker;
mod budget;
mod chain;
mod options;
mod referrers;
pub(crate) mod registry;
mod report;
mod request;
pub(crate) mod tls;
mod transport;
mod trust;

pub(crate) use transport::{blob_stream, direct_client, HttpClient};

use std::collections::HashMap;
use std::sync::Arc;

use oci_cache_core::mirror::{Endpoint, MirrorConfig};
use oci_cache_core::observe::{self, SharedObserver};

use self::auth::AuthCache;
use self::backoff::{Allowance, Pauses};
use self::breaker::Breakers;
use self::budget::{Budget, BudgetLimits};
use self::transport::build_client;
use self::trust::RefusalLog;

pub use self::options::{ProxyConfig, UpstreamBudget, UpstreamOptions};

type CoreResult<T> = oci_cache_core::Result<T>;

/// The HTTP implementation of [`Upstream`](oci_cache_core::upstream::Upstream).
#[derive(Debug)]
pub struct HyperUpstream {
    mirrors: Arc<MirrorConfig>,
    client: HttpClient,
    /// Clients of endpoints with their own TLS settings, by endpoint URL.
    tls_clients: HashMap<String, HttpClient>,
    auth: AuthCache,
    breakers: Breakers,
    options: UpstreamOptions,
    observer: SharedObserver,
    refusals: RefusalLog,
    /// Each upstream's request budget and pull allowance, by upstream name.
    budgets: HashMap<String, UpstreamState>,
    /// Hosts that answered 429/503 with `Retry-After`, until then.
    pauses: Pauses,
}

/// What the client keeps per configured upstream.
#[derive(Debug)]
struct UpstreamState {
    budget: Arc<Budget>,
    allowance: Allowance,
}

impl HyperUpstream {
    /// A client for the upstreams in `mirrors`. Uses the system's root
    /// certificates, or the bundled Mozilla roots when the system has none.
    pub fn new(mirrors: Arc<MirrorConfig>, options: UpstreamOptions) -> crate::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = build_client(&options, provider.clone(), None)?;
        // Endpoints with their own TLS settings get their own client (and
        // connection pool); redirects and token requests made for such an
        // endpoint use it too.
        let mut tls_clients = HashMap::new();
        for upstream in &mirrors.upstreams {
            for endpoint in upstream.endpoints.iter().chain([&upstream.origin]) {
                if endpoint.tls.is_default() || tls_clients.contains_key(&endpoint.url) {
                    continue;
                }
                let config = tls::client_config(&endpoint.tls, &endpoint.url, provider.clone())?;
                let endpoint_client = build_client(&options, provider.clone(), Some(config))?;
                tls_clients.insert(endpoint.url.clone(), endpoint_client);
            }
        }
        if options.offline {
            tracing::info!("offline: serving only cached content, never contacting upstreams");
        }
        let budgets = budgets(&mirrors, &options, &observe::noop());
        Ok(HyperUpstream {
            budgets,
            pauses: Pauses::default(),
            mirrors,
            client,
            tls_clients,
            auth: AuthCache::default(),
            breakers: Breakers::new(options.breaker_threshold, options.breaker_cooldown),
            options,
            observer: observe::noop(),
            refusals: RefusalLog::default(),
        })
    }

    /// Reports every attempt on an endpoint, blob body ends, breaker
    /// changes and refused realms and redirects to `observer`.
    pub fn with_observer(mut self, observer: SharedObserver) -> Self {
        self.budgets = budgets(&self.mirrors, &self.options, &observer);
        self.observer = observer;
        self
    }

    /// The client for `endpoint`: its own when it has TLS settings.
    fn client_for(&self, endpoint: &Endpoint) -> &HttpClient {
        self.tls_clients.get(&endpoint.url).unwrap_or(&self.client)
    }
}

/// A budget for every configured upstream: its own limits when
/// [`UpstreamOptions::budgets`] has them, else the defaults.
fn budgets(
    mirrors: &MirrorConfig,
    options: &UpstreamOptions,
    observer: &SharedObserver,
) -> HashMap<String, UpstreamState> {
    mirrors
        .upstreams
        .iter()
        .map(|upstream| {
            let name = upstream.name.as_str();
            let own = options.budgets.get(name);
            let limits = BudgetLimits {
                max_concurrent: own
                    .and_then(|b| b.max_concurrent_requests)
                    .unwrap_or(options.max_concurrent_requests),
                per_second: own
                    .and_then(|b| b.requests_per_second)
                    .or(options.requests_per_second),
            };
            let budget = Budget::new(upstream.name.clone(), limits, observer.clone());
            let state = UpstreamState {
                budget: Arc::new(budget),
                allowance: Allowance::default(),
            };
            (name.to_owned(), state)
        })
        .collect()
}
