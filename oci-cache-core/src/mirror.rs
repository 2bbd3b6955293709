//! Upstream registries and their endpoint chains.
//!
//! Plain data (serde, `deny_unknown_fields`) that the binary reads from its
//! config file and the http crate routes by. Upstream selection is a closed
//! world: a name the client sends (`ns=`, a path prefix) is only ever a key into
//! the configured upstreams, never a host to dial.
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

pub mod containerd;
mod import;
pub mod talos;

use serde::{Deserialize, Serialize};

pub use self::import::{HostCredentials, HostTls, Import, ImportedMirror, MirrorScope};
use crate::reference::{Registry, Repository};
use crate::{Error, Result};

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
    /// TLS settings for this endpoint (custom CA, client certificate, skip verify).
    #[serde(default, skip_serializing_if = "EndpointTls::is_default")]
    pub tls: EndpointTls,
    /// Whether tags may be resolved here (containerd's `resolve` capability).
    /// `false` makes a digest-only mirror: it is asked for blobs and for
    /// manifests by digest, never for a tag or a tag list, because a tag it
    /// answers could be stale or forged while a digest is self-verifying.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub resolve: bool,
}

fn default_true() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if signature
fn is_true(value: &bool) -> bool {
    *value
}

/// What a request names, which decides the endpoints allowed to answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// Content named by digest (blobs, manifests by digest): every endpoint.
    Digest,
    /// A tag or a tag list: only endpoints with [`Endpoint::resolve`].
    Tag,
}

/// Per-endpoint TLS settings; each one explicit, all off by default (the
/// system's root certificates, no client certificate, full verification).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointTls {
    /// PEM file of CA certificates trusted for this endpoint, in addition to the system roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM certificate chain presented to the endpoint (mTLS); needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<std::path::PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<std::path::PathBuf>,
    /// Accept any server certificate. Only for test setups: anyone on the path
    /// can then read and alter what is fetched (digests are still verified).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

impl EndpointTls {
    /// True when nothing is set (the system roots and full verification).
    pub fn is_default(&self) -> bool {
        *self == EndpointTls::default()
    }

    /// Checks that a client certificate and key come together.
    pub fn validate(&self) -> Result<()> {
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(Error::Config(
                "tls.client_cert and tls.client_key must be set together".to_owned(),
            ));
        }
        Ok(())
    }
}

impl Endpoint {
    /// An anonymous endpoint at `url` (validated by [`MirrorConfig::validate`]).
    pub fn new(url: impl Into<String>) -> Self {
        Endpoint {
            url: url.into(),
            override_path: false,
            credentials: None,
            resolve: true,
            tls: EndpointTls::default(),
        }
    }

    /// Whether tags may be resolved here; `false` makes the endpoint digest-only.
    pub fn with_resolve(mut self, resolve: bool) -> Self {
        self.resolve = resolve;
        self
    }

    /// The API root requests are built on, containerd's rule: the URL
    /// without a trailing `/`, with `/v2` appended unless `override_path` is
    /// set or the path already ends in `/v2`.
    ///
    /// ```
    /// use oci_cache_core::mirror::Endpoint;
    ///
    /// assert_eq!(Endpoint::new("https://m.example/us/").api_root(), "https://m.example/us/v2");
    /// assert_eq!(Endpoint::new("https://m.example/v2").api_root(), "https://m.example/v2");
    /// let harbor = Endpoint::new("https://h.example/v2/hub").with_override_path(true);
    /// assert_eq!(harbor.api_root(), "https://h.example/v2/hub");
    /// ```
    pub fn api_root(&self) -> String {
        let base = self.url.trim_end_matches('/');
        if self.override_path || base.ends_with("/v2") {
            base.to_owned()
        } else {
            format!("{base}/v2")
        }
    }

    /// The URL of one request: `<api root>/<repository>/<suffix>[?query]`,
    /// plus `ns=<registry>` when `send_ns` (for mirrors, so that a mirror
    /// serving several upstreams, such as another oci-cache, can route).
    pub fn request_url(
        &self,
        registry: &Registry,
        repository: &Repository,
        suffix: &str,
        query: Option<&str>,
        send_ns: bool,
    ) -> String {
        let mut url = format!("{}/{repository}/{suffix}", self.api_root());
        let mut params: Vec<String> = query.map(str::to_owned).into_iter().collect();
        if send_ns {
            // Escaped like Go's url.QueryEscape, as containerd sends it:
            // `ns=ghcr.io`, `ns=%5B%3A%3A1%5D%3A5000`.
            const QUERY_ESCAPE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
                .remove(b'-')
                .remove(b'.')
                .remove(b'_')
                .remove(b'~');
            params.push(format!(
                "ns={}",
                percent_encoding::utf8_percent_encode(registry.as_str(), QUERY_ESCAPE)
            ));
        }
        if !params.is_empty() {
            url.push('?');
            url.push_str(&params.join("&"));
        }
        url
    }

    /// `host[:port]` of the URL, lowercase, without the default port of its
    /// scheme: the key Talos' auth and TLS documents name an endpoint by.
    pub fn authority(&self) -> Option<String> {
        let (scheme, rest) = self.url.split_once("://")?;
        let authority = rest.split('/').next()?.to_ascii_lowercase();
        let default_port = if scheme.eq_ignore_ascii_case("https") {
            ":443"
        } else {
            ":80"
        };
        Some(match authority.strip_suffix(default_port) {
            Some(host) if !host.is_empty() => host.to_owned(),
            _ => authority,
        })
    }

    /// Uses the URL path verbatim as the API root.
    pub fn with_override_path(mut self, override_path: bool) -> Self {
        self.override_path = override_path;
        self
    }

    /// Sets the credentials.
    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials = Some(Credentials {
            username: username.into(),
            password: password.into(),
        });
        self
    }

    /// Checks that the URL is `http://` or `https://` with a host, and carries
    /// no credentials, query or fragment.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| {
            Err(Error::Config(format!(
                "endpoint url {:?} {why}",
                redact_userinfo(&self.url)
            )))
        };
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return bad("has no scheme; write it as https://host[:port][/path]");
        };
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return bad("must start with http:// or https://");
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            return bad("must not contain credentials; put them in the endpoint's credentials");
        }
        if authority.is_empty() || authority.starts_with(':') {
            return bad("has no host");
        }
        if let Some((host, port)) = authority.rsplit_once(':') {
            // `[::1]` alone has colons but no port.
            if !host.is_empty() && !port.ends_with(']') && port.parse::<u16>().is_err() {
                return bad("has an invalid port");
            }
        }
        if rest.contains(['?', '#']) {
            return bad("must not have a query or fragment");
        }
        if rest.contains(char::is_whitespace) {
            return bad("must not contain whitespace");
        }
        self.tls.validate().map_err(|e| match e {
            Error::Config(message) => Error::Config(format!(
                "endpoint {}: {message}",
                redact_userinfo(&self.url)
            )),
            other => other,
        })
    }
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

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";

impl UpstreamConfig {
    /// An upstream `name` whose origin is `origin_url`, with no mirrors or aliases.
    pub fn new(name: Registry, origin_url: impl Into<String>) -> Self {
        UpstreamConfig {
            name,
            aliases: Vec::new(),
            endpoints: Vec::new(),
            origin: Endpoint::new(origin_url),
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

    /// True for Docker Hub, whose single-component names live under `library/`.
    pub fn is_docker_hub(&self) -> bool {
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
        if self.is_docker_hub() && !repository.as_str().contains('/') {
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
        if self.default_upstream().is_none() {
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

    /// The default upstream.
    pub fn default_upstream(&self) -> Option<&UpstreamConfig> {
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

/// A URL for error messages, with any `user:password@` removed.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://<redacted>@{host}{path}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn registry(name: &str) -> Registry {
        Registry::new(name).unwrap()
    }

    #[test]
    fn common_has_five_upstreams_and_validates() {
        let config = MirrorConfig::common();
        config.validate().unwrap();
        let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "docker.io",
                "registry.k8s.io",
                "gcr.io",
                "ghcr.io",
                "quay.io"
            ]
        );
        assert_eq!(
            config.default_upstream().unwrap().name.as_str(),
            "docker.io"
        );
        assert_eq!(config, MirrorConfig::default());
    }

    #[test]
    fn lookup_folds_aliases_case_and_default_port() {
        let config = MirrorConfig::common();
        for name in [
            "docker.io",
            "DOCKER.IO",
            "index.docker.io",
            "registry-1.docker.io",
            "docker.io:443",
        ] {
            assert_eq!(
                config.lookup(name).unwrap().name.as_str(),
                "docker.io",
                "{name}"
            );
        }
        assert_eq!(config.lookup("Quay.IO").unwrap().name.as_str(), "quay.io");
        assert!(config.lookup("docker.io:5000").is_none());
        assert!(config.lookup("evil.example").is_none());
        assert!(matches!(
            config.resolve("evil.example"),
            Err(Error::UnknownUpstream { name }) if name == "evil.example"
        ));
    }

    #[test]
    fn lookup_keeps_explicit_ports() {
        let config = MirrorConfig::common().with_upstream(UpstreamConfig::new(
            registry("myregistry.io:5000"),
            "http://127.0.0.1:5001",
        ));
        config.validate().unwrap();
        assert_eq!(
            config.lookup("MyRegistry.io:5000").unwrap().origin.url,
            "http://127.0.0.1:5001"
        );
        assert!(config.lookup("myregistry.io").is_none());
    }

    #[test]
    fn duplicate_names_and_aliases_are_refused() {
        let config = MirrorConfig::common().with_upstream(
            UpstreamConfig::new(registry("proxy.example"), "https://proxy.example")
                .with_alias("Index.Docker.io"),
        );
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("\"index.docker.io\""), "{err}");
        assert!(
            err.contains("docker.io and upstream proxy.example"),
            "{err}"
        );
    }

    #[test]
    fn missing_default_is_refused() {
        let config = MirrorConfig::common().with_default_upstream(registry("example.com"));
        let err = config.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid configuration: default upstream example.com is not configured; add it to the upstreams or choose one of them"
        );
        assert!(MirrorConfig::new(Vec::new(), registry("docker.io")).is_err());
    }

    #[test]
    fn endpoint_urls_must_be_plain_http_or_https() {
        for ok in [
            "https://mirror.example.com",
            "http://127.0.0.1:5001",
            "https://m.example/v2/docker.io",
            "http://[::1]:5000",
            "http://[::1]",
        ] {
            Endpoint::new(ok)
                .validate()
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("mirror.example.com", "has no scheme"),
            ("ftp://mirror.example.com", "http:// or https://"),
            ("https://", "has no host"),
            ("https://:5000", "has no host"),
            ("https://host:port", "invalid port"),
            ("https://user:secret@host", "must not contain credentials"),
            ("https://host/?x=1", "query or fragment"),
            ("https://ho st", "whitespace"),
        ] {
            let err = Endpoint::new(bad).validate().unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
        let config = MirrorConfig::common().with_upstream(
            UpstreamConfig::new(registry("ghcr.io"), "https://ghcr.io")
                .with_endpoint(Endpoint::new("ghcr-mirror.example")),
        );
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("invalid configuration: upstream ghcr.io: endpoint url"),
            "{err}"
        );
    }

    #[test]
    fn docker_hub_gets_library_prefix_only_for_single_components() {
        let config = MirrorConfig::common();
        let hub = config.lookup("docker.io").unwrap();
        let repo = |s: &str| Repository::new(s).unwrap();
        assert_eq!(
            hub.upstream_repository(&repo("alpine")).unwrap(),
            repo("library/alpine")
        );
        assert_eq!(
            hub.upstream_repository(&repo("org/app")).unwrap(),
            repo("org/app")
        );
        let quay = config.lookup("quay.io").unwrap();
        assert_eq!(
            quay.upstream_repository(&repo("alpine")).unwrap(),
            repo("alpine")
        );
    }

    #[test]
    fn config_is_plain_serde_data_and_debug_hides_secrets() {
        let toml_like = serde_json::json!({
            "upstreams": [{
                "name": "ghcr.io",
                "origin": { "url": "https://ghcr.io", "credentials": { "username": "me", "password": "hunter2" } },
                "endpoints": [{ "url": "http://127.0.0.1:5001", "override_path": true }]
            }],
            "default_upstream": "ghcr.io"
        });
        let config: MirrorConfig = serde_json::from_value(toml_like).unwrap();
        config.validate().unwrap();
        let ghcr = config.lookup("ghcr.io").unwrap();
        assert_eq!(
            ghcr.chain()
                .iter()
                .map(|e| e.url.as_str())
                .collect::<Vec<_>>(),
            ["http://127.0.0.1:5001", "https://ghcr.io"]
        );
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("<redacted>"),
            "{debug}"
        );

        let unknown =
            serde_json::json!({ "upstreams": [], "default_upstream": "x.io", "extra": 1 });
        assert!(serde_json::from_value::<MirrorConfig>(unknown).is_err());
    }

    #[test]
    fn skip_fallback_drops_the_origin_only_with_mirrors() {
        let base =
            UpstreamConfig::new(registry("quay.io"), "https://quay.io").with_skip_fallback(true);
        assert_eq!(base.chain().len(), 1);
        let mirrored = base.with_endpoint(Endpoint::new("http://127.0.0.1:1"));
        assert_eq!(
            mirrored
                .chain()
                .iter()
                .map(|e| e.url.as_str())
                .collect::<Vec<_>>(),
            ["http://127.0.0.1:1"]
        );
    }

    #[test]
    fn request_urls_and_digest_only_validation() {
        let repo = Repository::new("library/alpine").unwrap();
        let hub = registry("docker.io");
        let mirror = Endpoint::new("https://m.example/us/");
        assert_eq!(
            mirror.request_url(&hub, &repo, "manifests/3", Some("n=1"), true),
            "https://m.example/us/v2/library/alpine/manifests/3?n=1&ns=docker.io"
        );
        assert_eq!(
            Endpoint::new("http://h/v2/hub")
                .with_override_path(true)
                .request_url(&hub, &repo, "tags/list", None, false),
            "http://h/v2/hub/library/alpine/tags/list"
        );
        assert_eq!(
            Endpoint::new("https://Host.Example:443/x")
                .authority()
                .unwrap(),
            "host.example"
        );
        assert_eq!(
            Endpoint::new("http://h:5000").authority().unwrap(),
            "h:5000"
        );

        let digest_only = UpstreamConfig::new(registry("quay.io"), "https://quay.io")
            .with_endpoint(Endpoint::new("http://m:5000").with_resolve(false))
            .with_skip_fallback(true);
        let err = MirrorConfig::common()
            .with_upstream(digest_only.clone())
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstream quay.io: no endpoint"), "{err}");
        MirrorConfig::common()
            .with_upstream(digest_only.with_skip_fallback(false))
            .validate()
            .unwrap();
    }

    #[test]
    fn endpoint_tls_is_optional_explicit_and_checked() {
        let plain: Endpoint =
            serde_json::from_value(serde_json::json!({ "url": "https://r.example" })).unwrap();
        assert!(plain.tls.is_default());
        assert!(!serde_json::to_string(&plain).unwrap().contains("tls"));
        let mtls: Endpoint = serde_json::from_value(serde_json::json!({
            "url": "https://r.example",
            "tls": { "ca_file": "/etc/ca.pem", "client_cert": "/c.pem", "client_key": "/k.pem" }
        }))
        .unwrap();
        mtls.validate().unwrap();
        assert_eq!(
            mtls.tls.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert!(!mtls.tls.insecure_skip_verify);
        let half: Endpoint = serde_json::from_value(serde_json::json!({
            "url": "https://r.example", "tls": { "client_cert": "/c.pem" }
        }))
        .unwrap();
        let err = half.validate().unwrap_err().to_string();
        assert!(err.contains("client_cert and tls.client_key"), "{err}");
        let typo = serde_json::json!({ "url": "https://r.example", "tls": { "insecure": true } });
        assert!(serde_json::from_value::<Endpoint>(typo).is_err());
    }
}
