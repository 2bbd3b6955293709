//! Client authentication on the mirror: an htpasswd file, a Basic challenge,
//! and per-upstream access (`public` or `authenticated`), as a tower layer
//! ([`ClientAuthLayer`]) over any service, deciding by the route the routing
//! layer matched. [`MirrorBuilder::client_auth`](crate::MirrorBuilder::client_auth)
//! puts it into the [`Pipeline`](crate::Pipeline).
//!
//! - Every upstream and every local prefix (hosted repositories) is
//!   `authenticated` unless the configuration marks it `public`, as
//!   registry:2 protects everything behind its htpasswd file; each public one
//!   is named in a warning at start-up. Requests for an `authenticated`
//!   upstream or hosted repository, `/v2/_catalog`, `/metrics` and the `/v2/`
//!   ping need valid credentials (`/healthz` and `/readyz` do not); `public`
//!   ones are served anonymously (so runtimes that send no credentials to
//!   mirrors, such as the Docker daemon, keep working), but a request that
//!   presents wrong credentials is refused anywhere. Pushes and deletes
//!   always need credentials.
//! - The ping answers 401 without credentials, as registry:2 does: clients
//!   (skopeo, podman, Docker) learn from it to send credentials, and fetch
//!   public content anonymously when they have none.
//! - `DELETE /admin/purge?ref=IMAGE` (the admin route) is answered only for
//!   authenticated clients ([`ClientIdentity`]): it purges one image while
//!   serving. Without client authentication it is 404.
//! - Failed attempts are rate-limited per client address ([`PeerAddr`]),
//!   counted before the password is checked (see `limiter`).
//! - A refused request keeps its connection usable (see `refusal`).
//! - Content served through a non-public upstream or hosted repository is
//!   recorded by digest, so it is not readable by digest through a public
//!   path unless that public upstream has it too (see `provenance`).

pub(crate) mod htpasswd;
mod layer;
mod limiter;
mod provenance;
mod refusal;

pub use self::layer::{ClientAuthLayer, ClientAuthService, ClientIdentity};
pub use crate::peer::PeerAddr;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use http::header::WWW_AUTHENTICATE;
use http::{HeaderValue, Response, StatusCode};
use oci_cache_core::mirror::{MirrorConfig, UpstreamConfig};
use oci_cache_core::reference::Registry;
use serde::Deserialize;

use self::htpasswd::HtpasswdFile;
use self::limiter::FailureLimiter;
use self::provenance::PrivateDigests;
use crate::body::Body;
use crate::error::{OciError, OciErrorCode};
use crate::Result;

/// Who may read an upstream through the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone who reaches the port.
    Public,
    /// Clients with valid htpasswd credentials.
    Authenticated,
}

/// `authenticated`, as registry:2 protects everything behind its htpasswd
/// file: turning on client authentication must never leave an upstream
/// open because nobody thought to list it.
impl Default for Access {
    fn default() -> Self {
        Access::Authenticated
    }
}

/// Checks the text of an htpasswd file as [`ClientAuth`] reads it, returning
/// the number of users (for validation tools and fuzzing).
pub fn parse_htpasswd(text: &str) -> std::result::Result<usize, String> {
    htpasswd::Htpasswd::parse(text).map(|h| h.len())
}

/// Whether any endpoint of `upstream` has credentials.
pub fn has_credentials(upstream: &UpstreamConfig) -> bool {
    upstream
        .endpoints
        .iter()
        .chain([&upstream.origin])
        .any(|e| e.credentials.is_some())
}

/// The upstreams whose credentials anyone reaching the port can use: all
/// with credentials when there is no client authentication. Logged as a
/// warning at start-up.
pub fn exposed_credentialed_upstreams(mirrors: &MirrorConfig) -> Vec<&Registry> {
    mirrors
        .upstreams
        .iter()
        .filter(|u| has_credentials(u))
        .map(|u| &u.name)
        .collect()
}

/// Settings of [`ClientAuth`].
#[derive(Debug, Clone)]
pub struct ClientAuthConfig {
    /// The htpasswd file (bcrypt entries), re-read when it changes.
    pub htpasswd: PathBuf,
    /// The realm named in the Basic challenge.
    pub realm: String,
    /// Access per upstream name or local prefix (the hosted repositories
    /// under it); unlisted ones are [`Access::Authenticated`].
    pub access: BTreeMap<String, Access>,
    /// Where digests served through non-public upstreams are recorded
    /// (kept in memory only when `None`).
    pub private_digests: Option<PathBuf>,
}

impl ClientAuthConfig {
    /// Who may read the upstream or local prefix `name`.
    pub fn access_of(&self, name: &str) -> Access {
        self.access.get(name).copied().unwrap_or_default()
    }
}

/// Client authentication state, shared by all connections.
#[derive(Debug)]
pub struct ClientAuth {
    htpasswd: HtpasswdFile,
    challenge: HeaderValue,
    access: HashMap<Registry, Access>,
    /// Access per local prefix.
    hosted_access: HashMap<String, Access>,
    limiter: Arc<FailureLimiter>,
    private: PrivateDigests,
    /// (upstream, digest) pairs a public upstream was found to have.
    public_too: Mutex<HashSet<(Registry, String)>>,
}

impl ClientAuth {
    /// Loads the htpasswd file and resolves the access of every upstream
    /// and every local prefix (hosted repositories), warning once for each
    /// public one.
    pub fn new(
        config: &ClientAuthConfig,
        mirrors: &MirrorConfig,
        local_prefixes: &[String],
    ) -> Result<Self> {
        let htpasswd = HtpasswdFile::open(&config.htpasswd)?;
        let realm = config.realm.replace(['"', '\\'], "");
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
            .map_err(|_| crate::Error::ClientAuth(format!("invalid auth realm {realm:?}")))?;
        for name in config.access.keys() {
            let known = mirrors.upstreams.iter().any(|u| u.name.as_str() == name)
                || local_prefixes.contains(name);
            if !known {
                return Err(crate::Error::ClientAuth(format!(
                    "access is set for {name:?}, which is neither a configured upstream nor a local prefix"
                )));
            }
        }
        let access: HashMap<Registry, Access> = mirrors
            .upstreams
            .iter()
            .map(|u| (u.name.clone(), config.access_of(u.name.as_str())))
            .collect();
        let hosted_access: HashMap<String, Access> = local_prefixes
            .iter()
            .map(|prefix| (prefix.clone(), config.access_of(prefix)))
            .collect();
        for (name, chosen) in access.iter().map(|(r, a)| (r.as_str(), a)) {
            match chosen {
                Access::Public => tracing::warn!(upstream = %name,
                    "upstream {name} is public: anyone who reaches the port reads it without credentials"),
                Access::Authenticated => {
                    tracing::info!(upstream = %name, "upstream {name} is served to authenticated clients only")
                }
            }
        }
        for (prefix, chosen) in &hosted_access {
            match chosen {
                Access::Public => tracing::warn!(local_prefix = %prefix,
                    "hosted repositories {prefix}/… are public: anyone who reaches the port pulls them without credentials (pushes still need them)"),
                Access::Authenticated => {
                    tracing::info!(local_prefix = %prefix, "hosted repositories {prefix}/… are served to authenticated clients only")
                }
            }
        }
        Ok(ClientAuth {
            htpasswd,
            challenge,
            access,
            hosted_access,
            limiter: Arc::default(),
            private: PrivateDigests::open(config.private_digests.as_deref())?,
            public_too: Mutex::new(HashSet::new()),
        })
    }

    fn access(&self, upstream: &Registry) -> Access {
        self.access.get(upstream).copied().unwrap_or_default()
    }

    /// Who may read the hosted `repository` (by its first path component).
    fn hosted_access(&self, repository: &str) -> Access {
        let prefix = repository.split('/').next().unwrap_or_default();
        self.hosted_access.get(prefix).copied().unwrap_or_default()
    }

    fn unauthorized(&self, message: &str) -> Response<Body> {
        let mut response = OciError::new(
            StatusCode::UNAUTHORIZED,
            OciErrorCode::Unauthorized,
            message,
        )
        .into_response();
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, self.challenge.clone());
        response
    }
}
