//! [`Mirror`]: one value that builds the whole cache (upstream client, engine,
//! service, the layers in front of it) from the upstream list, a storage and
//! the option types.

use crate::handlers::client_config::ClientConfigRenderer;
use std::sync::Arc;

use oci_cache_core::cache::{CacheOptions, PullThrough};
use oci_cache_core::fleet::Fleet;
use oci_cache_core::health::Readiness;
use oci_cache_core::hosted::{validate_local_prefix, Hosted, HostedOptions};
use oci_cache_core::mirror::MirrorConfig;
use oci_cache_core::observe::{self, SharedObserver};
use oci_cache_core::policy::PullPolicy;
use oci_cache_core::storage::Storage;
use oci_cache_core::upstream::Upstream;

use crate::client_auth::{ClientAuth, ClientAuthConfig};
use crate::fleet::PeerSecret;
use crate::handlers::Engine;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::service::OciService;
use crate::status::StatusBoard;
use crate::upstream::{HyperUpstream, UpstreamOptions};
use crate::{Error, Result};

/// A built mirror: the engine, the service over it and the layers in front.
#[derive(Debug, Clone)]
pub struct Mirror {
    service: OciService,
    client_auth: Option<Arc<ClientAuth>>,
    /// The status page's board, kept across reloads.
    board: Arc<StatusBoard>,
}

impl Mirror {
    /// Starts a [`MirrorBuilder`].
    pub fn builder() -> MirrorBuilder {
        MirrorBuilder::default()
    }

    /// The service alone, without the layers (cheap to clone): to mount in
    /// an embedder's own stack (axum's `nest_service`), where the embedder
    /// decides who may reach it. It routes each request itself.
    pub fn service(&self) -> OciService {
        self.service.clone()
    }

    /// The whole request pipeline to [`serve`](crate::serve): routing, client
    /// authentication when [`MirrorBuilder::client_auth`] set it up, then
    /// the service (cheap to clone).
    pub fn pipeline(&self) -> Pipeline {
        Pipeline::new(self.service.clone(), self.client_auth.clone())
    }

    /// The cache engine, for embedders that call it directly.
    pub fn engine(&self) -> &Engine {
        self.service.engine()
    }
}

/// Builds a [`Mirror`]. Required: [`upstreams`](Self::upstreams) and
/// [`storage`](Self::storage); everything else has defaults.
pub struct MirrorBuilder {
    upstreams: Option<MirrorConfig>,
    storage: Option<Arc<dyn Storage>>,
    upstream: Option<Arc<dyn Upstream>>,
    cache_options: CacheOptions,
    upstream_options: UpstreamOptions,
    observer: Option<SharedObserver>,
    metrics: Option<Arc<Metrics>>,
    readiness: Option<Readiness>,
    local_prefixes: Vec<String>,
    hosted_options: HostedOptions,
    client_auth: Option<ClientAuthConfig>,
    metrics_endpoint: bool,
    /// Fleet mode: the engine's fleet and the secret the peer route takes.
    fleet: Option<(Fleet, PeerSecret)>,
    policy: PullPolicy,
    /// A reload: the mirror this one replaces (see [`MirrorBuilder::reload_of`]).
    previous: Option<Mirror>,
    client_config: Option<Arc<dyn ClientConfigRenderer>>,
}

impl Default for MirrorBuilder {
    fn default() -> Self {
        MirrorBuilder {
            upstreams: None,
            storage: None,
            upstream: None,
            cache_options: CacheOptions::default(),
            upstream_options: UpstreamOptions::default(),
            observer: None,
            metrics: None,
            readiness: None,
            local_prefixes: Vec::new(),
            hosted_options: HostedOptions::default(),
            client_auth: None,
            metrics_endpoint: true,
            fleet: None,
            policy: PullPolicy::default(),
            previous: None,
            client_config: None,
        }
    }
}

impl std::fmt::Debug for MirrorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorBuilder")
            .field("upstreams", &self.upstreams)
            .field("cache_options", &self.cache_options)
            .field("upstream_options", &self.upstream_options)
            .field("local_prefixes", &self.local_prefixes)
            .field("hosted_options", &self.hosted_options)
            .field("client_auth", &self.client_auth)
            .field("metrics_endpoint", &self.metrics_endpoint)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl MirrorBuilder {
    /// The upstream registries, their endpoint chains and the default one;
    /// validated by [`build`](Self::build).
    pub fn upstreams(mut self, upstreams: MirrorConfig) -> Self {
        self.upstreams = Some(upstreams);
        self
    }

    /// Where cached content lives.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Engine options (tag TTL, manifest size cap, fill window, spool dir).
    pub fn cache_options(mut self, options: CacheOptions) -> Self {
        self.cache_options = options;
        self
    }

    /// Upstream client options (timeouts, breaker, proxy, offline).
    pub fn upstream_options(mut self, options: UpstreamOptions) -> Self {
        self.upstream_options = options;
        self
    }

    /// Receives request, upstream, fill and breaker events
    /// ([`AccessLog`](crate::AccessLog) for the usual log line,
    /// [`Fanout`](oci_cache_core::observe::Fanout) for several). Default: none.
    pub fn observer(mut self, observer: SharedObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Feeds `metrics` from the same events as the observer (both receive
    /// them) and serves them at `GET /metrics`; turn the route off with
    /// [`metrics_endpoint`](Self::metrics_endpoint) to serve them elsewhere.
    /// Embedders that want the figures without HTTP read
    /// [`Metrics::encode`] or pass their own [`observer`](Self::observer).
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Whether `GET /metrics` is served here (default: yes, when
    /// [`metrics`](Self::metrics) is set). Off when another listener serves
    /// them ([`MetricsService`](crate::metrics::MetricsService)).
    pub fn metrics_endpoint(mut self, served: bool) -> Self {
        self.metrics_endpoint = served;
        self
    }

    /// Puts client authentication into the [`Pipeline`]: an htpasswd file
    /// and access per upstream and local prefix (see
    /// [`client_auth`](crate::client_auth)). Loaded and checked against the
    /// upstreams and local prefixes by [`build`](Self::build). Default: none,
    /// every route is open (and the purge endpoint is 404).
    pub fn client_auth(mut self, config: ClientAuthConfig) -> Self {
        self.client_auth = Some(config);
        self
    }

    /// Answers `GET /readyz` from `readiness` (start it with
    /// [`Readiness::spawn`] on the same storage). Default: always ready.
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Hosts the repositories whose first path component is one of
    /// `prefixes` (`["local"]` hosts `local/app`, `local/team/api`, …): they
    /// accept the OCI push API, are never fetched upstream and never
    /// evicted. Validated by [`build`](Self::build): each prefix is one
    /// repository path component and names no configured upstream or alias.
    pub fn local_prefixes<I, P>(mut self, prefixes: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.local_prefixes = prefixes.into_iter().map(Into::into).collect();
        self
    }

    /// Limits of hosted repositories (manifest and blob size, age of
    /// abandoned uploads). Default: [`HostedOptions::default`].
    pub fn hosted_options(mut self, options: HostedOptions) -> Self {
        self.hosted_options = options;
        self
    }

    /// The pull policy checked before anything is fetched or served
    /// (default: allow everything). To change it while serving, replace it
    /// in [`Engine::policy`](oci_cache_core::cache::PullThrough::policy) of
    /// [`Mirror::engine`].
    pub fn pull_policy(mut self, policy: PullPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Fetches through `upstream` instead of the built-in HTTP client (tests,
    /// or an embedder's own transport); the upstream options are then unused,
    /// and upstream and breaker events are whatever that upstream reports.
    pub fn upstream(mut self, upstream: Arc<dyn Upstream>) -> Self {
        self.upstream = Some(upstream);
        self
    }

    /// Fleet mode: the engine coordinates its blob fills with the other
    /// replicas on the bucket through `fleet`
    /// ([`PullThrough::with_fleet`]), and the service serves them blobs at
    /// the peer route to requests carrying `secret` (see [`crate::fleet`]).
    /// The two go together: a replica that advertises itself in a lease
    /// must answer its peers.
    pub fn fleet(mut self, fleet: Fleet, secret: PeerSecret) -> Self {
        self.fleet = Some((fleet, secret));
        self
    }

    /// Builds a replacement for `previous` (a configuration reload): the
    /// new mirror's engine is [`PullThrough::reconfigured`] from the old
    /// one, so it shares its storage, disk budget, pull policy, fleet, the
    /// blob fills under way and the events' observers (metrics, access log,
    /// status page) with it, and takes everything else (upstreams and their
    /// credentials, upstream client and cache options, client
    /// authentication, local prefixes) from this builder. The storage,
    /// [`observer`](Self::observer) and [`fleet`](Self::fleet) given here
    /// are unused: they are the old mirror's. Serve the new
    /// [`pipeline`](Mirror::pipeline) in place of the old one (see
    /// [`ReloadablePipeline`](crate::ReloadablePipeline)); requests already
    /// under way finish on the old mirror.
    pub fn reload_of(mut self, previous: &Mirror) -> Self {
        self.storage = Some(Arc::clone(previous.engine().storage()));
        self.previous = Some(previous.clone());
        self
    }

    /// Serves `GET /client-config/<kind>` with `renderer` (behind client
    /// authentication when that is on); without it the path is 404.
    pub fn client_config(mut self, renderer: Arc<dyn ClientConfigRenderer>) -> Self {
        self.client_config = Some(renderer);
        self
    }

    /// Validates the upstream list and builds the client, engine, service
    /// and client authentication.
    ///
    /// Errors: [`Error::Core`] with a configuration error when the upstream
    /// list or storage is missing or invalid; [`Error::Tls`] when an
    /// endpoint's TLS settings cannot be loaded; [`Error::ClientAuth`] when
    /// the htpasswd file cannot be read or access names an unknown upstream.
    pub fn build(self) -> Result<Mirror> {
        let missing = |what: &str| {
            Error::Core(oci_cache_core::Error::Config(format!(
                "the mirror needs {what}; call MirrorBuilder::{what}"
            )))
        };
        let upstreams = self.upstreams.ok_or_else(|| missing("upstreams"))?;
        upstreams.validate()?;
        let storage = self.storage.ok_or_else(|| missing("storage"))?;
        if let Some(metrics) = &self.metrics {
            // Label values for the upstreams of this build (a reload may
            // bring new ones) and the cap, once, not per request.
            metrics.label_upstreams(&upstreams);
            metrics.set_storage_cap(self.cache_options.max_size);
        }
        let (board, observer) = match &self.previous {
            Some(previous) => (
                Arc::clone(&previous.board),
                previous.engine().observer().clone(),
            ),
            None => {
                // The status page's board hears every event too.
                let board = Arc::new(StatusBoard::new());
                let mut observers: Vec<SharedObserver> = self.observer.into_iter().collect();
                if let Some(metrics) = &self.metrics {
                    observers.push(Arc::clone(metrics) as SharedObserver);
                }
                observers.push(Arc::clone(&board) as SharedObserver);
                let observer: SharedObserver = Arc::new(observe::Fanout::new(observers));
                (board, observer)
            }
        };
        for prefix in &self.local_prefixes {
            validate_local_prefix(prefix, &upstreams)?;
        }
        let client_auth = match &self.client_auth {
            Some(config) => Some(Arc::new(ClientAuth::new(
                config,
                &upstreams,
                &self.local_prefixes,
            )?)),
            None => None,
        };
        let mirrors = Arc::new(upstreams);
        let upstream = match self.upstream {
            Some(upstream) => upstream,
            None => {
                // One manifest size cap: the engine's.
                let options = self
                    .upstream_options
                    .with_max_manifest_size(self.cache_options.max_manifest_size);
                Arc::new(
                    HyperUpstream::new(Arc::clone(&mirrors), options)?
                        .with_observer(observer.clone()),
                )
            }
        };
        let hosted = Hosted::new(Arc::clone(&storage), self.hosted_options);
        let mut engine = match &self.previous {
            Some(previous) => previous.engine().reconfigured(upstream, self.cache_options),
            None => PullThrough::observed(storage, upstream, self.cache_options, observer),
        };
        let mut peer_secret = None;
        if let Some((fleet, secret)) = self.fleet {
            if engine.fleet().is_none() {
                engine = engine.with_fleet(fleet);
            }
            peer_secret = Some(secret);
        }
        engine.policy().replace(self.policy);
        // Pushed bytes count against the same size cap as cached ones.
        let hosted = hosted.with_budget(Arc::clone(engine.budget()));
        let mut service = OciService::new(engine, mirrors).with_hosted(self.local_prefixes, hosted);
        if let Some(secret) = peer_secret {
            service = service.with_peer_secret(secret);
        }
        // The page reads the metrics wherever they are served.
        service = service.with_status(Arc::clone(&board), self.metrics.clone());
        if let Some(metrics) = self.metrics.filter(|_| self.metrics_endpoint) {
            service = service.with_metrics(metrics);
        }
        if let Some(readiness) = self.readiness {
            service = service.with_readiness(readiness);
        }
        if let Some(renderer) = self.client_config {
            service = service.with_client_config(renderer);
        }
        Ok(Mirror {
            service,
            client_auth,
            board,
        })
    }
}
