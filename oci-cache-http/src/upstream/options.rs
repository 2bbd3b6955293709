//! The client's tunables: [`UpstreamOptions`] and [`ProxyConfig`].

use std::time::Duration;

use hyper_util::client::proxy::matcher::Matcher;

/// How upstream connections reach the network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProxyConfig {
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (or their
    /// lower-case forms), read once when the client is built.
    #[default]
    FromEnv,
    /// Direct connections only, whatever the environment says.
    Direct,
    /// One proxy for every destination except those matching `no_proxy`
    /// (the `NO_PROXY` syntax: comma-separated domains, IPs and CIDR ranges).
    Explicit {
        /// Proxy URL, e.g. `http://user:pass@proxy.example:3128`.
        url: String,
        /// Destinations reached directly.
        no_proxy: String,
    },
}

impl ProxyConfig {
    pub(super) fn matcher(&self) -> Option<Matcher> {
        match self {
            ProxyConfig::FromEnv => Some(Matcher::from_env()),
            ProxyConfig::Direct => None,
            ProxyConfig::Explicit { url, no_proxy } => Some(
                Matcher::builder()
                    .all(url.clone())
                    .no(no_proxy.clone())
                    .build(),
            ),
        }
    }
}

/// Tunables of the upstream client.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// TCP connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Time allowed for response headers to arrive (each redirect hop gets its own).
    pub request_timeout: Duration,
    /// Longest pause between two chunks of a body (blob, manifest, token, tag list).
    pub read_timeout: Duration,
    /// How long an unused pooled connection is kept.
    pub idle_timeout: Duration,
    /// Largest manifest body accepted; larger is [`oci_cache_core::Error::TooLarge`].
    pub max_manifest_size: u64,
    /// Largest tag list accepted, in bytes over all its pages; larger is
    /// [`oci_cache_core::Error::TooLarge`].
    pub max_tag_list_bytes: u64,
    /// Most tags accepted in one tag list; more is [`oci_cache_core::Error::TooLarge`].
    pub max_tags: usize,
    /// Most idle pooled connections kept per upstream host.
    pub max_idle_per_host: usize,
    /// Most redirects followed per request.
    pub max_redirects: usize,
    /// The `User-Agent` sent upstream.
    pub user_agent: String,
    /// Proxy use; the environment's by default.
    pub proxy: ProxyConfig,
    /// Never dial out: every upstream call fails at once with
    /// [`oci_cache_core::UpstreamErrorKind::Skipped`], so only cached content is served.
    pub offline: bool,
    /// Connection failures, timeouts or 5xx in a row after which an
    /// endpoint's circuit breaker opens (0 disables the breaker).
    pub breaker_threshold: u32,
    /// How long an open breaker skips its endpoint before one request probes it.
    pub breaker_cooldown: Duration,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            max_manifest_size: 4 * 1024 * 1024,
            max_tag_list_bytes: 8 * 1024 * 1024,
            max_tags: 100_000,
            max_idle_per_host: 16,
            max_redirects: 10,
            user_agent: concat!("oci-cache/", env!("CARGO_PKG_VERSION")).to_owned(),
            proxy: ProxyConfig::FromEnv,
            offline: false,
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}
