//! `oci-cache serve`: wiring config to the library.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use std::time::Duration;

use futures::StreamExt;
use oci_cache_core::error::ErrorChain;
use oci_cache_core::evict::{Evictor, RemovalWatch};
use oci_cache_core::fleet::Fleet;
use oci_cache_core::health::Readiness;
use oci_cache_core::storage::Storage;
use oci_cache_http::acme::{Acme, Challenge, Http01Listener};
use oci_cache_http::client_auth;
use oci_cache_http::fleet::PeerSecret;
use oci_cache_http::metrics::{Metrics, MetricsService};
use oci_cache_http::{tls_server, AccessLog, Listening, MirrorBuilder, ReloadablePipeline};
use tokio::net::TcpListener;

use crate::cli::ServeArgs;
use crate::client_config::ServedClientConfig;
use crate::config::{Listener, Settings, StorageConfig};
use crate::engine::{self, BoxError};
use crate::reload::Reloader;

pub(crate) fn run(args: &ServeArgs, err: &mut impl Write) -> ExitCode {
    let reload_args = args.clone();
    engine::run(args, err, |settings| async move {
        serve(reload_args, settings)
            .await
            .map(|()| ExitCode::SUCCESS)
    })
}

async fn serve(args: ServeArgs, settings: Settings) -> Result<(), BoxError> {
    raise_fd_limit();
    // Everything that can fail comes before the listeners are bound, and
    // nothing says "serving" before they are. Without a certificate to
    // serve (cached, or a CA to order one from) the mirror must not start.
    let acme = match &settings.acme {
        Some(config) => Some(Acme::start(config.clone()).await?),
        None => None,
    };
    let (tls, serving_cert) = match (&settings.tls, &acme) {
        (Some(files), _) => {
            let (acceptor, serving) = tls_server::reloadable_acceptor(files)?;
            (Some(acceptor), Some(serving))
        }
        (None, Some(acme)) => (Some(acme_listeners(acme).await?), None),
        (None, None) => (None, None),
    };
    let (storage, fleet) = match (&settings.fleet, &settings.storage) {
        (Some(fleet), StorageConfig::S3(s3)) => {
            let (bucket, fleet) =
                crate::fleet::join(fleet, s3, settings.cache.max_blob_size).await?;
            let storage: Arc<dyn Storage> = bucket;
            (storage, Some(fleet))
        }
        _ => (engine::open_storage(&settings.storage).await?, None),
    };
    let metrics = Arc::new(Metrics::new());
    if let StorageConfig::S3(s3) = &settings.storage {
        let after = settings
            .fleet
            .as_ref()
            .map_or(crate::fleet::ABORT_UPLOADS_AFTER, |f| f.abort_uploads_after);
        crate::fleet::spawn_upload_sweep(s3, after, Arc::clone(&metrics) as _)?;
    }
    let parts = MirrorParts {
        metrics: Arc::clone(&metrics),
        readiness: Readiness::spawn(Arc::clone(&storage), READY_PROBE_INTERVAL),
        fleet: match (&fleet, &settings.fleet) {
            (Some(joined), Some(fleet)) => Some((joined.clone(), fleet.secret.clone())),
            _ => None,
        },
    };
    let mirror = mirror_builder(&settings, &parts).storage(storage).build()?;
    let service = mirror.service();
    follow_storage(service.engine(), Arc::clone(&metrics));
    let metrics_listener = match settings.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?,
        ),
        None => None,
    };
    let listeners = bind_all(&settings.listeners).await?;
    spawn_evictor(service.engine());
    spawn_sweeper(&service, settings.hosted.upload_max_age);
    if let (Some(listener), Some(addr)) = (metrics_listener, settings.metrics_listen) {
        tracing::info!(metrics_listen = %addr, "serving /metrics on its own listener");
        let metrics_service = MetricsService::new(Arc::clone(&metrics));
        tokio::spawn(async move {
            if let Err(e) =
                oci_cache_http::serve(listener, metrics_service, shutdown_signal()).await
            {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    let storage_name = service.engine().storage().to_string();
    let engine = service.engine().clone();
    let mirrors = service.mirrors();
    let listen: Vec<String> = settings.listeners.iter().map(ToString::to_string).collect();
    let upstreams: Vec<&str> = mirrors.upstreams.iter().map(|u| u.name.as_str()).collect();
    tracing::info!(
        listen = %listen.join(", "),
        metrics_listen = ?settings.metrics_listen,
        storage = %storage_name,
        upstreams = %upstreams.join(","),
        default_upstream = %mirrors.default_upstream,
        tag_ttl = ?settings.cache.tag_ttl,
        offline = settings.upstream_client.offline,
        client_auth = settings.client_auth.is_some(),
        tls = settings.tls.is_some() || acme.is_some(),
        advertise_url = settings.fleet.as_ref().map(|f| f.advertise_url.as_str()),
        fill_leases = fleet.as_ref().map(|f| f.leases_enabled()),
        "oci-cache serving"
    );
    if settings.client_auth.is_none() {
        for name in client_auth::exposed_credentialed_upstreams(mirrors) {
            tracing::warn!(upstream = %name,
                "upstream {name} has credentials but client authentication is off: anyone who reaches the port can read it through them; set --htpasswd");
        }
    }
    let pipeline = ReloadablePipeline::new(mirror.pipeline());
    let server = settings.server.clone();
    Reloader {
        args,
        running: settings,
        mirror,
        pipeline: pipeline.clone(),
        serving_cert,
        parts,
    }
    .spawn();
    let serving = oci_cache_http::serve_all(listeners, pipeline, tls, server, shutdown_signal());
    tokio::pin!(serving);
    let stopped = match acme {
        // The order needs the listeners up (the CA connects to them), and
        // fails the start when it fails.
        Some(mut acme) => tokio::select! {
            result = &mut serving => Some(result),
            ordered = acme.ensure_certificate() => {
                ordered?;
                acme.spawn_renewal();
                None
            }
        },
        None => None,
    };
    match stopped {
        Some(result) => result?,
        None => serving.await?,
    }
    drain_fills(&engine).await;
    tracing::info!("oci-cache stopped");
    Ok(())
}

/// What every mirror `serve` builds shares besides its settings: the
/// metrics, the readiness probe and the fleet it joined (kept for reloads).
#[derive(Clone)]
pub(crate) struct MirrorParts {
    metrics: Arc<Metrics>,
    readiness: Readiness,
    fleet: Option<(Fleet, PeerSecret)>,
}

/// The mirror `settings` describe as `serve` runs it (access log, metrics,
/// readiness, client authentication, fleet), storage still to be set.
pub(crate) fn mirror_builder(settings: &Settings, parts: &MirrorParts) -> MirrorBuilder {
    let mut builder = engine::settings_builder(settings)
        .observer(Arc::new(AccessLog))
        .metrics(Arc::clone(&parts.metrics))
        .readiness(parts.readiness.clone())
        // Served on its own listener when one is set.
        .metrics_endpoint(settings.metrics_listen.is_none());
    if let Some(config) = &settings.client_auth {
        builder = builder.client_auth(config.clone());
    }
    if let Some((fleet, secret)) = &parts.fleet {
        builder = builder.fleet(fleet.clone(), secret.clone());
    }
    // Built here, so a reload serves the reloaded upstreams too.
    builder.client_config(Arc::new(ServedClientConfig::new(
        settings.mirrors.clone(),
        settings.tls.is_some() || settings.acme.is_some(),
    )))
}

/// The TLS acceptor of an ACME certificate, and for HTTP-01 the plain
/// HTTP listener that answers its challenges.
async fn acme_listeners(acme: &Acme) -> Result<tls_server::TlsAcceptor, BoxError> {
    let config = acme.config();
    if config.challenge == Challenge::Http01 {
        let addr = config.http01_listen;
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            format!("cannot listen on {addr} for ACME HTTP-01 challenges: {e}; set [tls.acme] http01_listen, or use challenge = \"tls-alpn-01\"")
        })?;
        tracing::info!(http01_listen = %addr, "answering ACME HTTP-01 challenges");
        let tokens = acme.http01_tokens();
        tokio::spawn(async move {
            if let Err(e) = Http01Listener::serve(listener, tokens, shutdown_signal()).await {
                tracing::error!(error = %e, "the ACME HTTP-01 listener stopped");
            }
        });
    }
    Ok(tls_server::acme_acceptor(
        acme.resolver(),
        config.challenge == Challenge::TlsAlpn01,
    )?)
}

/// Binds every listener (all or none: a port taken fails the start, naming it).
async fn bind_all(listeners: &[Listener]) -> Result<Vec<Listening>, BoxError> {
    let mut bound = Vec::with_capacity(listeners.len());
    for listener in listeners {
        let socket = TcpListener::bind(listener.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", listener.addr))?;
        let mut listening = Listening::new(socket);
        if let Some(upstream) = &listener.default_upstream {
            listening = listening.with_default_upstream(upstream.clone());
        }
        bound.push(listening);
    }
    Ok(bound)
}

/// How long shutdown waits for blob fills to finish storing.
const FILL_DRAIN: Duration = Duration::from_secs(20);

/// Waits (up to [`FILL_DRAIN`]) for blob fills still under way once the
/// last request ended: a client may already have every byte of a blob whose
/// verified copy is still being committed, and stopping now would throw that
/// copy away, so the next pull fetches it again (or, offline, cannot). A
/// fill outlives its last client only by its commit (fsync and rename, or
/// the S3 upload's completion), so this is usually milliseconds.
async fn drain_fills(engine: &engine::Engine) {
    let deadline = tokio::time::Instant::now() + FILL_DRAIN;
    let mut logged = false;
    loop {
        let fills = engine.blob_fills_in_flight();
        if fills == 0 {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(fills, "stopping with blob fills unfinished; they are not stored (nothing partial is ever visible)");
            return;
        }
        if !logged {
            tracing::info!(fills, "waiting for blob fills to finish storing");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Raises the open-file soft limit to the hard limit: every client
/// connection is a descriptor, and the usual soft limit of 1024 would make
/// `accept` fail long before `limits.max_connections`. Returns the soft
/// limit now in force (`None`: unknown or unlimited).
pub(crate) fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::info!(from = ?limit.current, to = ?limit.maximum, "raised the open-file limit");
            }
            Err(e) => {
                tracing::warn!(error = %e, soft = ?limit.current, "cannot raise the open-file limit; clients beyond it are refused");
                return limit.current;
            }
        }
    }
    getrlimit(Resource::Nofile).current
}

/// How often `/readyz`'s storage probe runs.
const READY_PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// How often the storage is checked for blobs another process removed.
const REMOVALS_EVERY: Duration = Duration::from_secs(5);

/// Keeps the storage gauges right, in the background: counts what is
/// already stored, once (a large bucket takes a while to list and serving
/// need not wait for it), then applies what `purge` and `gc` run beside
/// this server removed (their removal notices; the process's own fills and
/// evictions reach the gauges as events). The disk budget follows too, so
/// eviction does not start early.
fn follow_storage(engine: &engine::Engine, metrics: Arc<Metrics>) {
    let storage = Arc::clone(engine.storage());
    let budget = Arc::clone(engine.budget());
    tokio::spawn(async move {
        // Before the count, so a removal during it is not applied twice.
        let watch = RemovalWatch::start(storage.as_ref()).await;
        count_stored(storage.as_ref(), &metrics).await;
        let mut watch = match watch {
            Ok(watch) => watch,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "cannot read removal notices; the storage gauges do not follow purge and gc run beside this server");
                return;
            }
        };
        let mut tick = tokio::time::interval(REMOVALS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match watch.poll(storage.as_ref()).await {
                Ok(removals) => {
                    for removal in removals {
                        tracing::info!(blobs = removal.blobs, bytes = removal.bytes, "blobs removed by another process (purge or gc); storage figures updated");
                        metrics.record_eviction(removal.blobs, removal.bytes);
                        budget.removed(removal.bytes);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %ErrorChain(&e), "reading removal notices failed; retrying");
                }
            }
        }
    });
}

/// Counts what is already stored into the storage gauges.
async fn count_stored(storage: &dyn Storage, metrics: &Metrics) {
    let (mut bytes, mut objects) = (0u64, 0u64);
    let mut list = storage.blob_list();
    while let Some(info) = list.next().await {
        match info {
            Ok(info) => {
                bytes += info.size;
                objects += 1;
            }
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "counting the stored blobs failed; the storage gauges count only what this process stores from now on");
                return;
            }
        }
    }
    metrics.add_stored(bytes, objects);
    tracing::info!(bytes, objects, "counted the stored blobs");
}

/// How often, at most, leftovers of interrupted writes and abandoned
/// uploads are swept while serving (a crash of another process on the same
/// storage leaves staging files a restart would otherwise have to find).
const SWEEP_EVERY: Duration = Duration::from_secs(5 * 60);

/// Starts the periodic sweep: storage leftovers (stale staging files) and,
/// when hosting, upload sessions untouched for `upload_max_age` — every
/// [`SWEEP_EVERY`], or a quarter of that age when it is shorter.
fn spawn_sweeper(service: &oci_cache_http::OciService, upload_max_age: Duration) {
    let storage = Arc::clone(service.engine().storage());
    let hosted = service.hosted().cloned();
    let every = SWEEP_EVERY
        .min(upload_max_age / 4)
        .max(Duration::from_secs(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Opening the storage has just swept it.
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = storage.sweep_leftovers().await {
                tracing::warn!(error = %ErrorChain(&e), "sweeping leftovers of interrupted writes failed; retrying at the next sweep");
            }
            if let Some(hosted) = &hosted {
                if let Err(e) = hosted.cleanup_abandoned().await {
                    tracing::warn!(error = %ErrorChain(&e), "removing abandoned uploads failed; retrying at the next sweep");
                }
            }
        }
    });
}

/// How often last-use times go to the access index.
const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(30);

/// Starts the background eviction task when a cap is set.
fn spawn_evictor(engine: &engine::Engine) {
    if let Some(evictor) = evictor(engine) {
        tokio::spawn(evictor.run(ACCESS_FLUSH_INTERVAL));
    }
}

/// The evictor of a bounded cache (`max_size`), `None` without a bound. In
/// fleet mode its passes are elected through the bucket's eviction lease:
/// one replica evicts at a time, from the access times every replica
/// flushed to the shared index.
fn evictor(engine: &engine::Engine) -> Option<Evictor<dyn Storage>> {
    let max_size = engine.options().max_size?;
    let pins = engine.options().pin.clone();
    let fleet = engine.fleet().filter(|fleet| fleet.leases_enabled());
    tracing::info!(max_size, pins = ?pins.iter().map(|p| p.as_str()).collect::<Vec<_>>(), one_pass_per_fleet = fleet.is_some(), "bounded disk: evicting least recently used blobs over max_size");
    let evictor = Evictor::new(
        Arc::clone(engine.storage()),
        Arc::clone(engine.budget()),
        pins,
        Arc::clone(engine.observer()),
    );
    Some(match fleet {
        Some(fleet) => evictor.with_fleet(fleet),
        None => evictor,
    })
}

/// Resolves on SIGINT or SIGTERM, so in-flight requests can finish.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use oci_cache_core::fleet::{Fleet, FleetIdentity, LeaseTimings};
    use oci_cache_core::storage::{ObjectStorage, Storage};
    use oci_cache_http::fleet::{HyperPeerFills, PeerOptions, PeerSecret};

    use crate::engine::{builder_over, Engine};

    fn engine(builder: oci_cache_http::MirrorBuilder) -> Engine {
        builder.build().unwrap().service().engine().clone()
    }

    /// A bounded cache in fleet mode elects one eviction pass per bucket;
    /// alone (or unbounded) it does not ask for any lease.
    #[tokio::test]
    async fn a_bounded_replica_in_a_fleet_evicts_under_the_fleet_lease() {
        let mut settings = crate::config::resolve(&crate::cli::ServeArgs::default()).unwrap();
        let bucket = Arc::new(ObjectStorage::in_memory());
        let storage = || -> Arc<dyn Storage> { bucket.clone() };
        assert!(super::evictor(&engine(builder_over(&settings, storage()))).is_none());
        settings.cache.max_size = Some(1 << 20);
        let alone = engine(builder_over(&settings, storage()));
        assert!(!super::evictor(&alone).unwrap().elected_in_fleet());

        let secret = PeerSecret::new("0123456789abcdef0123").unwrap();
        let peers = Arc::new(HyperPeerFills::new(secret.clone(), PeerOptions::default()).unwrap());
        let identity = FleetIdentity {
            holder_id: "replica-1".to_owned(),
            advertise_url: "http://127.0.0.2:5000".to_owned(),
        };
        let fleet = Fleet::connect(&bucket, identity, LeaseTimings::default(), peers).await;
        assert!(fleet.leases_enabled());
        let replica = engine(builder_over(&settings, storage()).fleet(fleet, secret));
        assert!(super::evictor(&replica).unwrap().elected_in_fleet());
    }

    #[test]
    fn the_open_file_soft_limit_is_raised_to_the_hard_limit() {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let before = getrlimit(Resource::Nofile);
        // Start below the hard limit, as a default 1024 soft limit does.
        let low = before.maximum.map_or(1024, |max| max.min(1024) / 2);
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(low),
                maximum: before.maximum,
            },
        )
        .unwrap();
        assert_eq!(super::raise_fd_limit(), before.maximum);
        assert_eq!(getrlimit(Resource::Nofile).current, before.maximum);
    }
}
