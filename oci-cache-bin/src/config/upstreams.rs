//! `[[upstream]]` tables and `--upstream NAME=URL` flags as upstream configurations.

use oci_cache_core::mirror::{Credentials, Endpoint, EndpointTls, UpstreamConfig};
use oci_cache_core::reference::Registry;
use oci_cache_http::client_auth::Access;
use oci_cache_http::UpstreamBudget;
use serde::Deserialize;

/// One `[[upstream]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamEntry {
    /// The registry name clients use (`docker.io`, `ghcr.io`, `registry.example:5000`).
    pub(super) name: String,
    /// The registry's own API base URL.
    pub(super) url: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    mirrors: Vec<Endpoint>,
    #[serde(default)]
    skip_fallback: bool,
    #[serde(default)]
    credentials: Option<Credentials>,
    /// TLS settings of the origin (`ca_file`, `client_cert`, `client_key`, `insecure_skip_verify`).
    #[serde(default)]
    tls: EndpointTls,
    /// Other hosts whose token servers may receive the origin's credentials.
    #[serde(default)]
    token_realms: Vec<String>,
    /// Other hosts manifest and tag-list requests may be redirected to.
    #[serde(default)]
    redirect_hosts: Vec<String>,
    /// Allow realms and redirects on loopback/private addresses.
    #[serde(default)]
    allow_private_targets: bool,
    /// Who may read this upstream when client authentication is on.
    #[serde(default)]
    pub(super) access: Option<Access>,
    /// This upstream's own cap on requests in flight.
    #[serde(default)]
    max_concurrent_requests: Option<usize>,
    /// This upstream's own request rate.
    #[serde(default)]
    requests_per_second: Option<f64>,
}

impl UpstreamEntry {
    /// The entry's own request budget, if it sets one.
    pub(super) fn budget(&self) -> Option<UpstreamBudget> {
        (self.max_concurrent_requests.is_some() || self.requests_per_second.is_some())
            .then(|| UpstreamBudget::new(self.max_concurrent_requests, self.requests_per_second))
    }
}

pub(super) fn registry(name: &str) -> Result<Registry, String> {
    Registry::new(name).map_err(|e| format!("invalid upstream name {name:?}: {e}"))
}

/// `NAME=URL`, as given to `--upstream`.
pub(super) fn upstream_from_flag(spec: &str) -> Result<UpstreamConfig, String> {
    let (name, url) = spec.split_once('=').ok_or_else(|| {
        format!("invalid --upstream {spec:?}: write it as NAME=URL, e.g. ghcr.io=https://ghcr.io")
    })?;
    upstream_from_entry(UpstreamEntry {
        name: name.to_owned(),
        url: url.to_owned(),
        ..UpstreamEntry::default()
    })
}

pub(super) fn upstream_from_entry(entry: UpstreamEntry) -> Result<UpstreamConfig, String> {
    let mut upstream = UpstreamConfig::new(registry(&entry.name)?, &entry.url);
    upstream.aliases = entry.aliases;
    upstream.endpoints = entry.mirrors;
    upstream.skip_fallback = entry.skip_fallback;
    upstream.origin.credentials = entry.credentials;
    upstream.origin.tls = entry.tls;
    upstream.origin.token_realms = entry.token_realms;
    // Empty keeps what UpstreamConfig::new knows the origin needs.
    if !entry.redirect_hosts.is_empty() {
        upstream.origin.redirect_hosts = entry.redirect_hosts;
    }
    upstream.origin.allow_private_targets = entry.allow_private_targets;
    Ok(upstream)
}
