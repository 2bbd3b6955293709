//! Mirror chains imported from other tools' configuration ([`talos`](super::talos),
//! [`containerd`](super::containerd)) and how they merge into a [`MirrorConfig`].
//!
//! Merge rules (applied after the config file and `--upstream` flags):
//! - an entry for one registry replaces that upstream's mirrors and
//!   `skip_fallback` (and its origin when the entry names one); an upstream
//!   that is not configured yet is added, with the registry's well-known
//!   origin (`https://<name>`, Docker Hub's `registry-1.docker.io`); the later
//!   entry wins when two name the same registry;
//! - a wildcard entry (Talos `*`, containerd `_default`) gives its chain to
//!   every configured upstream that no entry names and that has no mirrors of
//!   its own. It never adds an upstream: a client-chosen registry name must
//!   not become a host the cache dials. With several wildcards the last wins;
//! - credentials attach to every endpoint (mirror or origin) whose URL has
//!   the named `host[:port]`, and to the origin of the upstream of that name.

use super::{lookup_key, Credentials, Endpoint, EndpointTls, MirrorConfig, UpstreamConfig};
use crate::reference::Registry;
use crate::{Error, Result};

/// Which registries an imported entry applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorScope {
    /// One registry, as clients name it (`docker.io`, `registry.example:5000`).
    Registry(Registry),
    /// Talos `*` or containerd `_default`: configured upstreams without mirrors.
    Wildcard,
}

/// One registry's chain as another tool's configuration describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedMirror {
    /// The registries it applies to.
    pub scope: MirrorScope,
    /// Mirrors, in the order they are tried.
    pub endpoints: Vec<Endpoint>,
    /// A new origin for the upstream (containerd `server` naming the registry itself).
    pub origin: Option<Endpoint>,
    /// Do not fall back to the origin.
    pub skip_fallback: bool,
    /// Where the entry came from, for messages.
    pub source: String,
}

/// Credentials for every endpoint at one `host[:port]` (Talos `RegistryAuthConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCredentials {
    /// `host[:port]` as written (`my-mirror.local:5000`), or a registry name.
    pub host: String,
    /// The credentials.
    pub credentials: Credentials,
    /// Where they came from, for messages.
    pub source: String,
}

/// TLS settings for every endpoint at one `host[:port]` (Talos `RegistryTLSConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTls {
    /// `host[:port]` as written, or a registry name.
    pub host: String,
    /// The settings.
    pub tls: EndpointTls,
    /// Where they came from, for messages.
    pub source: String,
}

/// Everything read from imported configuration files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Import {
    /// Chains, in file order.
    pub mirrors: Vec<ImportedMirror>,
    /// Credentials by endpoint host.
    pub credentials: Vec<HostCredentials>,
    /// TLS settings by endpoint host.
    pub tls: Vec<HostTls>,
    /// Settings that were read but are not applied, each saying which and
    /// why; the caller logs them.
    pub warnings: Vec<String>,
}

impl Import {
    /// Appends `other`, whose entries then win over this one's.
    pub fn extend(&mut self, other: Import) {
        self.mirrors.extend(other.mirrors);
        self.credentials.extend(other.credentials);
        self.tls.extend(other.tls);
        self.warnings.extend(other.warnings);
    }
}

impl MirrorConfig {
    /// Merges `import` into this configuration (rules in the module docs)
    /// and validates the result. Returns the warnings: the import's own plus
    /// credentials that matched no endpoint.
    pub fn apply_import(&mut self, import: Import) -> Result<Vec<String>> {
        let Import {
            mirrors,
            credentials,
            tls,
            mut warnings,
        } = import;
        let mut named: Vec<String> = Vec::new();
        let mut wildcard = None;
        for entry in mirrors {
            let name = match &entry.scope {
                MirrorScope::Registry(name) => name.clone(),
                MirrorScope::Wildcard => {
                    wildcard = Some(entry);
                    continue;
                }
            };
            let upstream = self.upstream_entry(&name);
            upstream.endpoints = entry.endpoints;
            upstream.skip_fallback = entry.skip_fallback;
            if let Some(origin) = entry.origin {
                upstream.origin = origin;
            }
            named.push(lookup_key(upstream.name.as_str()));
        }
        if let Some(entry) = wildcard {
            for upstream in &mut self.upstreams {
                if upstream.endpoints.is_empty()
                    && !named.contains(&lookup_key(upstream.name.as_str()))
                {
                    upstream.endpoints = entry.endpoints.clone();
                    upstream.skip_fallback = entry.skip_fallback;
                }
            }
        }
        for host in credentials {
            if !self.for_each_endpoint_at(&host.host, |e| {
                e.credentials = Some(host.credentials.clone());
            }) {
                warnings.push(format!(
                    "{}: credentials for {} match no configured endpoint or upstream; they are not used",
                    host.source, host.host
                ));
            }
        }
        for host in tls {
            if !self.for_each_endpoint_at(&host.host, |e| e.tls = host.tls.clone()) {
                warnings.push(format!(
                    "{}: TLS settings for {} match no configured endpoint or upstream; they are not used",
                    host.source, host.host
                ));
            }
        }
        self.validate()?;
        Ok(warnings)
    }

    /// The upstream `name` routes to, added with its well-known origin when
    /// there is none.
    fn upstream_entry(&mut self, name: &Registry) -> &mut UpstreamConfig {
        let key = lookup_key(name.as_str());
        let position = self
            .upstreams
            .iter()
            .position(|u| u.keys().any(|k| k == key));
        let index = match position {
            Some(index) => index,
            None => {
                let upstream = MirrorConfig::common()
                    .lookup(name.as_str())
                    .cloned()
                    .unwrap_or_else(|| {
                        UpstreamConfig::new(name.clone(), format!("https://{name}"))
                    });
                self.upstreams.push(upstream);
                self.upstreams.len() - 1
            }
        };
        // `index` is a position in the vector or its last element.
        #[allow(clippy::indexing_slicing)]
        &mut self.upstreams[index]
    }

    /// Runs `set` on every endpoint at `host` (and on the origin of the
    /// upstream named `host`); whether any matched.
    fn for_each_endpoint_at(&mut self, host: &str, mut set: impl FnMut(&mut Endpoint)) -> bool {
        let key = lookup_key(host);
        let at_host = |e: &Endpoint| e.authority().map(|a| lookup_key(&a)).as_deref() == Some(&key);
        let mut matched = false;
        for upstream in &mut self.upstreams {
            let names_upstream = upstream.keys().any(|k| k == key);
            for endpoint in upstream.endpoints.iter_mut().filter(|e| at_host(e)) {
                set(endpoint);
                matched = true;
            }
            if names_upstream || at_host(&upstream.origin) {
                set(&mut upstream.origin);
                matched = true;
            }
        }
        matched
    }
}

/// A configuration error prefixed with where it was found.
pub(super) fn located(at: &str, error: Error) -> Error {
    match error {
        Error::Config(message) => Error::Config(format!("{at}: {message}")),
        other => other,
    }
}

/// Whether `authority` (an endpoint's `host[:port]`) is the registry `name`
/// itself, Docker Hub's API hosts counting as `docker.io`.
pub(super) fn is_registry_host(authority: &str, name: &Registry) -> bool {
    let hub = MirrorConfig::common();
    let folded = |s: &str| {
        hub.lookup(s)
            .filter(|u| u.serves_docker_hub())
            .map_or_else(|| lookup_key(s), |u| u.name.as_str().to_owned())
    };
    folded(authority) == folded(name.as_str())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn registry(name: &str) -> Registry {
        Registry::new(name).unwrap()
    }

    fn entry(scope: MirrorScope, urls: &[&str], skip_fallback: bool) -> ImportedMirror {
        ImportedMirror {
            scope,
            endpoints: urls.iter().map(|u| Endpoint::new(*u)).collect(),
            origin: None,
            skip_fallback,
            source: "test".into(),
        }
    }

    fn urls(config: &MirrorConfig, name: &str) -> Vec<String> {
        config
            .lookup(name)
            .unwrap()
            .chain()
            .iter()
            .map(|e| e.url.clone())
            .collect()
    }

    #[test]
    fn specific_entries_replace_or_add_and_wildcards_fill_the_rest() {
        let mut config = MirrorConfig::common();
        let import = Import {
            mirrors: vec![
                entry(
                    MirrorScope::Registry(registry("ghcr.io")),
                    &["http://a:5000"],
                    true,
                ),
                entry(MirrorScope::Wildcard, &["http://all:5000"], false),
                entry(
                    MirrorScope::Registry(registry("private.example:5000")),
                    &["http://b:5000"],
                    false,
                ),
            ],
            ..Import::default()
        };
        assert!(config.apply_import(import).unwrap().is_empty());
        assert_eq!(urls(&config, "ghcr.io"), ["http://a:5000"]);
        assert_eq!(
            urls(&config, "private.example:5000"),
            ["http://b:5000", "https://private.example:5000"]
        );
        assert_eq!(
            urls(&config, "docker.io"),
            ["http://all:5000", "https://registry-1.docker.io"]
        );
        // The wildcard never opens the proxy to names nobody configured.
        assert!(config.lookup("evil.example").is_none());
    }

    #[test]
    fn an_added_docker_hub_keeps_its_aliases_and_origin() {
        let ghcr = UpstreamConfig::new(registry("ghcr.io"), "https://ghcr.io");
        let mut config = MirrorConfig::new(vec![ghcr], registry("ghcr.io")).unwrap();
        let import = Import {
            mirrors: vec![entry(
                MirrorScope::Registry(registry("docker.io")),
                &["http://hub-mirror:5000"],
                false,
            )],
            ..Import::default()
        };
        config.apply_import(import).unwrap();
        assert_eq!(
            urls(&config, "index.docker.io"),
            ["http://hub-mirror:5000", "https://registry-1.docker.io"]
        );
    }

    #[test]
    fn credentials_attach_by_host_and_by_registry_name() {
        let mut config = MirrorConfig::common();
        let creds = |host: &str, user: &str| HostCredentials {
            host: host.into(),
            credentials: Credentials {
                username: user.into(),
                password: "pw".into(),
            },
            source: "test".into(),
        };
        let import = Import {
            mirrors: vec![entry(
                MirrorScope::Registry(registry("quay.io")),
                &["https://Mirror.local:443/quay", "http://other:5000"],
                false,
            )],
            credentials: vec![
                creds("mirror.local", "m"),
                creds("docker.io", "hub"),
                creds("nowhere.example", "x"),
            ],
            ..Import::default()
        };
        let warnings = config.apply_import(import).unwrap();
        let quay = config.lookup("quay.io").unwrap();
        assert_eq!(
            quay.endpoints[0].credentials.as_ref().unwrap().username,
            "m"
        );
        assert!(quay.endpoints[1].credentials.is_none());
        assert!(quay.origin.credentials.is_none());
        let hub = config.lookup("docker.io").unwrap();
        assert_eq!(hub.origin.credentials.as_ref().unwrap().username, "hub");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("nowhere.example"), "{warnings:?}");
    }

    #[test]
    fn registry_hosts_fold_docker_hub() {
        assert!(is_registry_host(
            "registry-1.docker.io",
            &registry("docker.io")
        ));
        assert!(is_registry_host("GHCR.io:443", &registry("ghcr.io")));
        assert!(!is_registry_host("mirror.local", &registry("ghcr.io")));
    }
}
