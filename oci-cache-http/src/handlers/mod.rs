//! The handlers, one module per family of routes: [`pull`] (the read API of
//! cached repositories), [`push`] (hosted repositories), [`probes`]
//! (`/healthz`, `/readyz`, `/metrics`, the status page at `/` and
//! `/status.json`), [`admin`] (purge), [`doctor`]
//! (the doctor's probe image and whether its pull arrived) and
//! [`client_config`] (the configuration that points clients here). Each asks the
//! engine and shapes its answer with [`crate::response`]; none imports
//! another family or the service, so the service sits on top and the
//! response helpers at the bottom.
//!
//! The cache outcome of a request travels to the log line as a response
//! extension, so handlers return plain responses.

pub(crate) mod admin;
pub(crate) mod client_config;
pub(crate) mod doctor;
pub(crate) mod fleet;
pub(crate) mod probes;
pub(crate) mod pull;
pub(crate) mod push;

use http::{Extensions, HeaderMap, Method, Response, StatusCode};
use oci_cache_core::cache::PullThrough;
use oci_cache_core::health::Readiness;
use oci_cache_core::hosted::Hosted;
use oci_cache_core::mirror::MirrorConfig;
use oci_cache_core::storage::{ByteStream, Storage};
use oci_cache_core::upstream::Upstream;

use crate::body::Body;
use crate::error::{OciError, OciErrorCode};
use crate::fleet::PeerSecret;
use crate::metrics::Metrics;
use crate::routes::Route;
use crate::status::StatusSource;

/// The engine as the service holds it: storage and upstream chosen at
/// runtime. Cheap to clone (one `Arc`).
pub type Engine = PullThrough<dyn Storage, dyn Upstream>;

/// The push API as the service holds it.
pub type HostedEngine = Hosted<dyn Storage>;

/// What handlers need besides the route: the request head and the parts of
/// the service a family may use.
#[derive(Debug)]
pub(crate) struct RequestInfo<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    /// The `ns` query parameter (the upstream containerd asked for).
    pub(crate) ns: Option<&'a str>,
    pub(crate) headers: &'a HeaderMap,
    /// What layers in front put there: [`PeerAddr`](crate::PeerAddr),
    /// [`ClientIdentity`](crate::client_auth::ClientIdentity).
    pub(crate) extensions: &'a Extensions,
    /// The upstreams requests are routed to (purge resolves references by them).
    pub(crate) mirrors: &'a MirrorConfig,
    /// Served at `/metrics` when set; otherwise that path is unknown here.
    pub(crate) metrics: Option<&'a Metrics>,
    /// Answers `/` and `/status.json` when set; otherwise they are unknown here.
    pub(crate) status: Option<&'a StatusSource>,
    /// Answers `/readyz` when set; otherwise `/readyz` is always ready.
    pub(crate) readiness: Option<&'a Readiness>,
    /// Hosted repositories, listed in `_catalog` beside cached ones.
    pub(crate) hosted: Option<&'a HostedEngine>,
    /// The doctor's probe pulls seen.
    pub(crate) probes: &'a doctor::ProbeLog,
    /// The fleet's shared secret: without it the peer route does not exist.
    pub(crate) peer_secret: Option<&'a PeerSecret>,
    /// Renders `/client-config/<kind>`; without it that path is unknown.
    pub(crate) client_config: Option<&'a client_config::SharedRenderer>,
}

/// Answers a routed request by its family; `body` is read by pushes only.
pub(crate) async fn dispatch(
    engine: &Engine,
    route: &Route,
    info: &RequestInfo<'_>,
    body: ByteStream,
) -> Result<Response<Body>, OciError> {
    match route {
        Route::Health | Route::Ready | Route::Metrics => probes::answer(route, info),
        Route::StatusPage | Route::StatusJson => probes::status(engine, route, info),
        Route::Purge => Ok(admin::purge(engine, info).await),
        Route::DoctorProbe { nonce } => Ok(doctor::seen(nonce, info.probes)),
        Route::ClientConfig { kind } => client_config::answer(kind, info, info.client_config),
        // Never fetched upstream, whatever the upstream.
        _ if route.is_doctor_probe() => doctor::answer_pull(route, info, info.probes),
        Route::PeerBlob { digest } => fleet::peer_blob(engine, digest, info).await,
        Route::Hosted { repository, op } => match info.hosted {
            Some(hosted) => {
                push::dispatch(hosted, engine.policy(), repository, op, info, body).await
            }
            None => Err(OciError::new(
                StatusCode::NOT_FOUND,
                OciErrorCode::NameUnknown,
                "no hosted repositories are configured here",
            )),
        },
        _ => pull::dispatch(engine, route, info).await,
    }
}
