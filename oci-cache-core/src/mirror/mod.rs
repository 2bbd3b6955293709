//! Upstream registries and their endpoint chains.
//!
//! Plain data (serde, `deny_unknown_fields`) that the binary reads from its
//! config file and the http crate routes by. Upstream selection is a closed
//! world: a name the client sends (`ns=`, a path prefix) is only ever a key into
//! the configured upstreams, never a host to dial.
//!
//! The importers of other tools' files ([`talos`], [`containerd`], [`Import`])
//! are behind the default feature `mirror-import`, with their YAML and TOML
//! parsers; an embedder that builds its [`MirrorConfig`] itself can turn it off.
//!
//! ```
//! use oci_cache_core::mirror::MirrorConfig;
//!
//! let mirrors = MirrorConfig::common();
//! mirrors.validate().unwrap();
//! let hub = mirrors.lookup("INDEX.docker.io:443").unwrap();
//! assert_eq!(hub.name.as_str(), "docker.io");
//! assert_eq!(hub.origin.url, "https://registry-1.docker.io");
//! assert!(mirrors.lookup("evil.example").is_none());
//! ```

#[cfg(feature = "mirror-import")]
pub mod containerd;
mod endpoint;
#[cfg(feature = "mirror-import")]
mod import;
#[cfg(feature = "mirror-import")]
pub mod talos;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

use serde::{Deserialize, Serialize};

pub use self::endpoint::{Addressing, Credentials, Endpoint, EndpointTls, QUERY_ESCAPE};
#[cfg(feature = "mirror-import")]
pub use self::import::{HostCredentials, HostTls, Import, ImportedMirror, MirrorScope};
pub use crate::reference::DOCKER_HUB;
use crate::reference::{Registry, Repository};
use crate::{Error, Result};

/// A configured upstream registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Canonical registry name clients use in references (`docker.io`).
    pub name: Registry,
    /// Other names that route here (`index.docker.io`, `proxy-docker.io`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Mirrors tried in order before the origin.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// The registry's own API (`https://registry-1.docker.io`).
    pub origin: Endpoint,
    /// Do not fall back to the origin.
    #[serde(default)]
    pub skip_fallback: bool,
}

impl UpstreamConfig {
    /// An upstream `name` whose origin is `origin_url`, with no mirrors or aliases.
    ///
    /// A well-known origin gets the redirect hosts it needs: `registry.k8s.io`
    /// redirects every request, manifests included, to the nearest Artifact
    /// Registry region (`*.pkg.dev`).
    pub fn new(name: Registry, origin_url: impl Into<String>) -> Self {
        let mut origin = Endpoint::new(origin_url);
        origin.redirect_hosts = known_redirect_hosts(&origin.url);
        UpstreamConfig {
            name,
            aliases: Vec::new(),
            endpoints: Vec::new(),
            origin,
            skip_fallback: false,
        }
    }

    /// Adds another name that routes here.
    pub fn with_alias(mut self, alias: impl Into<String>) -> Self {
        self.aliases.push(alias.into());
        self
    }

    /// Adds a mirror endpoint, tried before the origin in the order added.
    pub fn with_endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// Do not fall back to the origin when the mirrors fail.
    pub fn with_skip_fallback(mut self, skip_fallback: bool) -> Self {
        self.skip_fallback = skip_fallback;
        self
    }

    /// The endpoints to try, in order: mirrors, then the origin unless `skip_fallback`.
    pub fn chain(&self) -> Vec<&Endpoint> {
        let mut chain: Vec<&Endpoint> = self.endpoints.iter().collect();
        if !self.skip_fallback || chain.is_empty() {
            chain.push(&self.origin);
        }
        chain
    }

    /// The endpoints to try for a request `addressing` its object:
    /// [`chain`](Self::chain), less the digest-only endpoints for tags.
    ///
    /// ```
    /// use oci_cache_core::mirror::{Addressing, Endpoint, UpstreamConfig};
    /// use oci_cache_core::reference::Registry;
    ///
    /// let quay = UpstreamConfig::new(Registry::new("quay.io").unwrap(), "https://quay.io")
    ///     .with_endpoint(Endpoint::new("https://public-mirror.example").with_resolve(false))
    ///     .with_endpoint(Endpoint::new("https://private-mirror.example"));
    /// let urls = |a| quay.chain_for(a).iter().map(|e| e.url.as_str()).collect::<Vec<_>>();
    /// assert_eq!(urls(Addressing::Tag), ["https://private-mirror.example", "https://quay.io"]);
    /// assert_eq!(urls(Addressing::Digest).len(), 3);
    /// ```
    pub fn chain_for(&self, addressing: Addressing) -> Vec<&Endpoint> {
        let mut chain = self.chain();
        if addressing == Addressing::Tag {
            chain.retain(|e| e.resolve);
        }
        chain
    }

    /// Whether `endpoint` is this upstream's origin (which is not sent `ns`).
    pub fn is_origin(&self, endpoint: &Endpoint) -> bool {
        std::ptr::eq(endpoint, &self.origin)
    }

    /// True when this upstream serves Docker Hub, whose single-component
    /// names live under `library/`. Its name is a host name, compared
    /// ignoring ASCII case as routing compares it (`Docker.IO` serves Docker
    /// Hub too); whether a parsed reference names Docker Hub is
    /// [`Registry::is_docker_hub`](crate::reference::Registry::is_docker_hub),
    /// which compares as `distribution/reference` does.
    pub fn serves_docker_hub(&self) -> bool {
        self.name.as_str().eq_ignore_ascii_case(DOCKER_HUB)
    }

    /// The repository as this upstream names it: on Docker Hub a single
    /// component gets the implicit `library/` (`alpine` → `library/alpine`);
    /// everything else is unchanged.
    ///
    /// ```
    /// use oci_cache_core::mirror::MirrorConfig;
    /// use oci_cache_core::reference::Repository;
    ///
    /// let mirrors = MirrorConfig::common();
    /// let alpine = Repository::new("alpine").unwrap();
    /// let hub = mirrors.lookup("docker.io").unwrap();
    /// assert_eq!(hub.upstream_repository(&alpine).unwrap().as_str(), "library/alpine");
    /// let ghcr = mirrors.lookup("ghcr.io").unwrap();
    /// assert_eq!(ghcr.upstream_repository(&alpine).unwrap().as_str(), "alpine");
    /// ```
    pub fn upstream_repository(&self, repository: &Repository) -> Result<Repository> {
        if self.serves_docker_hub() && !repository.as_str().contains('/') {
            return Ok(Repository::new(&format!("library/{repository}"))?);
        }
        Ok(repository.clone())
    }

    /// Every name this upstream answers to, normalised for lookup.
    fn keys(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(self.name.as_str())
            .chain(self.aliases.iter().map(String::as_str))
            .map(lookup_key)
    }
}

/// Hosts a well-known origin redirects manifest requests to (see
/// [`Endpoint::redirect_hosts`]).
fn known_redirect_hosts(origin_url: &str) -> Vec<String> {
    let host = origin_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', ':']).next())
        .unwrap_or_default();
    if host.eq_ignore_ascii_case("registry.k8s.io") {
        vec!["*.pkg.dev".to_owned()]
    } else {
        Vec::new()
    }
}

/// All configured upstreams and the default one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The configured upstreams.
    pub upstreams: Vec<UpstreamConfig>,
    /// Where requests that name no upstream go (`docker.io`).
    pub default_upstream: Registry,
}

impl Default for MirrorConfig {
    /// [`MirrorConfig::common`].
    fn default() -> Self {
        MirrorConfig::common()
    }
}

impl MirrorConfig {
    /// A configuration of `upstreams` with `default_upstream`, validated.
    pub fn new(upstreams: Vec<UpstreamConfig>, default_upstream: Registry) -> Result<Self> {
        let config = MirrorConfig {
            upstreams,
            default_upstream,
        };
        config.validate()?;
        Ok(config)
    }

    /// The five common public registries, anonymous, Docker Hub by default:
    /// `docker.io` (origin `https://registry-1.docker.io`, aliases
    /// `index.docker.io` and `registry-1.docker.io`), `registry.k8s.io`,
    /// `gcr.io`, `ghcr.io` and `quay.io`.
    pub fn common() -> Self {
        let hub = UpstreamConfig::new(
            constant_registry(DOCKER_HUB),
            "https://registry-1.docker.io",
        )
        .with_alias("index.docker.io")
        .with_alias("registry-1.docker.io");
        let mut upstreams = vec![hub];
        for name in ["registry.k8s.io", "gcr.io", "ghcr.io", "quay.io"] {
            upstreams.push(UpstreamConfig::new(
                constant_registry(name),
                format!("https://{name}"),
            ));
        }
        MirrorConfig {
            upstreams,
            default_upstream: constant_registry(DOCKER_HUB),
        }
    }

    /// Adds an upstream (or replaces the one with the same name).
    pub fn with_upstream(mut self, upstream: UpstreamConfig) -> Self {
        self.upstreams
            .retain(|u| lookup_key(u.name.as_str()) != lookup_key(upstream.name.as_str()));
        self.upstreams.push(upstream);
        self
    }

    /// Sets the default upstream.
    pub fn with_default_upstream(mut self, name: Registry) -> Self {
        self.default_upstream = name;
        self
    }

    /// Checks the configuration: every name and alias is unique (ignoring case
    /// and default ports), the default upstream is configured, and every
    /// endpoint URL is http(s).
    pub fn validate(&self) -> Result<()> {
        let mut seen: Vec<(String, &Registry)> = Vec::new();
        for upstream in &self.upstreams {
            for key in upstream.keys() {
                if key.is_empty() {
                    return Err(Error::Config(format!(
                        "upstream {} has an empty alias; remove it",
                        upstream.name
                    )));
                }
                if let Some((_, owner)) = seen.iter().find(|(k, _)| *k == key) {
                    return Err(Error::Config(format!(
                        "the name {key:?} is used by both upstream {owner} and upstream {}; each name and alias must route to one upstream",
                        upstream.name
                    )));
                }
                seen.push((key, &upstream.name));
            }
            for endpoint in upstream.endpoints.iter().chain([&upstream.origin]) {
                endpoint.validate().map_err(|e| match e {
                    Error::Config(message) => {
                        Error::Config(format!("upstream {}: {message}", upstream.name))
                    }
                    other => other,
                })?;
            }
            if upstream.chain_for(Addressing::Tag).is_empty() {
                return Err(Error::Config(format!(
                    "upstream {}: no endpoint of its chain may resolve tags (all are digest-only and skip_fallback is set); give one mirror the resolve capability or unset skip_fallback",
                    upstream.name
                )));
            }
        }
        if self.default_upstream_config().is_none() {
            return Err(Error::Config(format!(
                "default upstream {} is not configured; add it to the upstreams or choose one of them",
                self.default_upstream
            )));
        }
        Ok(())
    }

    /// The upstream `name` refers to (canonical name or alias, case-insensitive,
    /// default port ignored, Docker Hub's aliases folded), or `None`: never a
    /// host to dial.
    pub fn lookup(&self, name: &str) -> Option<&UpstreamConfig> {
        let key = lookup_key(name);
        self.upstreams.iter().find(|u| u.keys().any(|k| k == key))
    }

    /// The upstream `name` refers to, or [`Error::UnknownUpstream`].
    pub fn resolve(&self, name: &str) -> Result<&UpstreamConfig> {
        self.lookup(name).ok_or_else(|| Error::UnknownUpstream {
            name: name.to_string(),
        })
    }

    /// The configuration of the [`default_upstream`](Self::default_upstream),
    /// if it is one of [`upstreams`](Self::upstreams).
    pub fn default_upstream_config(&self) -> Option<&UpstreamConfig> {
        self.lookup(self.default_upstream.as_str())
    }
}

/// A registry name written in this file. Not input-dependent: the names are
/// constants, and `common_has_five_upstreams_and_validates` parses them all.
#[allow(clippy::expect_used)]
fn constant_registry(name: &str) -> Registry {
    Registry::new(name).expect("built-in registry names are valid")
}

/// A registry name as compared: trimmed, lowercase, without the default HTTPS
/// port (`ghcr.io:443` is `ghcr.io`; `myregistry.io:5000` keeps its port).
fn lookup_key(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    match name.strip_suffix(":443") {
        Some(host) if !host.is_empty() => host.to_string(),
        _ => name,
    }
}
