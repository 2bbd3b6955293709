//! Upstream registries and their endpoint chains.
//!
//! CONTRACT (the http crate and the binary rely on these signatures; the
//! engine helper fills in the behaviour).

use serde::{Deserialize, Serialize};

use crate::reference::Registry;

/// Credentials for one upstream or endpoint. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One place an upstream's content can be fetched from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Base URL, e.g. `https://mirror.example.com` or `http://127.0.0.1:5001`.
    pub url: String,
    /// Use the URL path verbatim as the API root instead of appending `/v2`.
    #[serde(default)]
    pub override_path: bool,
    /// Credentials for this endpoint.
    #[serde(default)]
    pub credentials: Option<Credentials>,
}

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
    /// The endpoints to try, in order: mirrors, then the origin unless `skip_fallback`.
    pub fn chain(&self) -> Vec<&Endpoint> {
        let mut chain: Vec<&Endpoint> = self.endpoints.iter().collect();
        if !self.skip_fallback || chain.is_empty() {
            chain.push(&self.origin);
        }
        chain
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

impl MirrorConfig {
    /// The upstream `name` refers to (canonical name or alias, case-insensitive,
    /// Docker Hub's aliases folded), or `None`: never a host to dial.
    pub fn lookup(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| {
            u.name.as_str().eq_ignore_ascii_case(name)
                || u.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
        })
    }

    /// The default upstream.
    pub fn default_upstream(&self) -> Option<&UpstreamConfig> {
        self.lookup(self.default_upstream.as_str())
    }
}
