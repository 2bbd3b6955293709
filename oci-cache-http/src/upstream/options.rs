//! The client's tunables: [`UpstreamOptions`] and [`ProxyConfig`].

use std::collections::BTreeMap;
use std::time::Duration;

use hyper_util::client::proxy::matcher::Matcher;
use oci_cache_core::duration;

/// How upstream connections reach the network.
///
/// In a config file: `proxy = "from_env"`, `proxy = "direct"`, or
/// `proxy = { explicit = { url = "http://proxy:3128", no_proxy = "10.0.0.0/8" } }`.
/// `Debug` hides the password of a proxy URL.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
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
        #[serde(default)]
        no_proxy: String,
    },
}

impl ProxyConfig {
    /// One proxy for everything but `no_proxy`.
    pub fn explicit(url: impl Into<String>, no_proxy: impl Into<String>) -> Self {
        ProxyConfig::Explicit {
            url: url.into(),
            no_proxy: no_proxy.into(),
        }
    }

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

/// As written in a config file, with the password of a proxy URL as `***`
/// (as [`Debug`] shows it): serialized settings are for people to read.
impl serde::Serialize for ProxyConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        #[derive(serde::Serialize)]
        struct Explicit<'a> {
            url: String,
            no_proxy: &'a str,
        }
        match self {
            ProxyConfig::FromEnv => s.serialize_str("from_env"),
            ProxyConfig::Direct => s.serialize_str("direct"),
            ProxyConfig::Explicit { url, no_proxy } => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry(
                    "explicit",
                    &Explicit {
                        url: redact_userinfo(url),
                        no_proxy,
                    },
                )?;
                map.end()
            }
        }
    }
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyConfig::FromEnv => f.write_str("FromEnv"),
            ProxyConfig::Direct => f.write_str("Direct"),
            ProxyConfig::Explicit { url, no_proxy } => f
                .debug_struct("Explicit")
                .field("url", &redact_userinfo(url))
                .field("no_proxy", no_proxy)
                .finish(),
        }
    }
}

/// `url` with any `user:password@` replaced by `***@`.
fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let sep = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{sep}***@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

/// The default cap on requests in flight to one upstream: safe for Docker Hub.
const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 8;

/// Tunables of the upstream client.
///
/// Deserializes from a table of the field names, all optional (durations as
/// `"30s"`), e.g. a config file's `[upstream_client]`.
///
/// Serializes as it deserializes (the password of a proxy URL written as
/// `***`), so a program can print the effective settings as a config file.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct UpstreamOptions {
    /// TCP connect timeout per attempt.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Time allowed for response headers to arrive (each redirect hop gets its own).
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Longest pause between two chunks of a body (blob, manifest, token, tag list).
    #[serde(with = "duration")]
    pub read_timeout: Duration,
    /// How long an unused pooled connection is kept.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Largest manifest body accepted; larger is
    /// [`oci_cache_core::Error::TooLarge`]. [`crate::Mirror`] sets it from
    /// [`CacheOptions::max_manifest_size`](oci_cache_core::cache::CacheOptions::max_manifest_size),
    /// so a config file sets it once, under `[cache]`.
    #[serde(skip)]
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
    #[serde(with = "duration")]
    pub breaker_cooldown: Duration,
    /// Requests in flight to one upstream at most (a blob counts until its
    /// body has streamed); a quarter of them (at least one) is kept for
    /// tokens and manifests. At least 2.
    pub max_concurrent_requests: usize,
    /// Requests started per second to one upstream at most; unlimited when unset.
    pub requests_per_second: Option<f64>,
    /// Limits of single upstreams, by upstream name, over the two above
    /// (a config file sets them in the upstream's `[[upstream]]` table).
    #[serde(skip)]
    pub budgets: BTreeMap<String, UpstreamBudget>,
}

/// One upstream's own request budget; a field left `None` takes
/// [`UpstreamOptions`]' default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct UpstreamBudget {
    /// See [`UpstreamOptions::max_concurrent_requests`].
    pub max_concurrent_requests: Option<usize>,
    /// See [`UpstreamOptions::requests_per_second`].
    pub requests_per_second: Option<f64>,
}

impl UpstreamBudget {
    /// A budget of at most `max_concurrent_requests` in flight and
    /// `requests_per_second` started per second (`None`: the defaults).
    pub fn new(max_concurrent_requests: Option<usize>, requests_per_second: Option<f64>) -> Self {
        UpstreamBudget {
            max_concurrent_requests,
            requests_per_second,
        }
    }
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
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            requests_per_second: None,
            budgets: BTreeMap::new(),
        }
    }
}

impl UpstreamOptions {
    /// Sets the TCP connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the time allowed for response headers.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the longest pause allowed between two body chunks.
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Sets how long idle pooled connections are kept.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets the largest manifest accepted.
    pub fn with_max_manifest_size(mut self, bytes: u64) -> Self {
        self.max_manifest_size = bytes;
        self
    }

    /// Sets the most redirects followed per request.
    pub fn with_max_redirects(mut self, redirects: usize) -> Self {
        self.max_redirects = redirects;
        self
    }

    /// Sets the `User-Agent`.
    pub fn with_user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// Sets how connections reach the network.
    pub fn with_proxy(mut self, proxy: ProxyConfig) -> Self {
        self.proxy = proxy;
        self
    }

    /// Sets [`UpstreamOptions::max_tag_list_bytes`].
    pub fn with_max_tag_list_bytes(mut self, bytes: u64) -> Self {
        self.max_tag_list_bytes = bytes;
        self
    }

    /// Sets [`UpstreamOptions::max_tags`].
    pub fn with_max_tags(mut self, tags: usize) -> Self {
        self.max_tags = tags;
        self
    }

    /// Sets [`UpstreamOptions::max_idle_per_host`].
    pub fn with_max_idle_per_host(mut self, connections: usize) -> Self {
        self.max_idle_per_host = connections;
        self
    }

    /// Serves only cached content when `offline`.
    pub fn with_offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// Sets the failures in a row that open a breaker (0 disables breakers).
    pub fn with_breaker_threshold(mut self, failures: u32) -> Self {
        self.breaker_threshold = failures;
        self
    }

    /// Sets how long an open breaker skips its endpoint.
    pub fn with_breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }

    /// Sets the default cap on requests in flight per upstream.
    pub fn with_max_concurrent_requests(mut self, requests: usize) -> Self {
        self.max_concurrent_requests = requests;
        self
    }

    /// Sets the default request rate per upstream (`None`: unlimited).
    pub fn with_requests_per_second(mut self, rate: Option<f64>) -> Self {
        self.requests_per_second = rate;
        self
    }

    /// Gives the upstream named `upstream` its own budget.
    pub fn with_budget(mut self, upstream: impl Into<String>, budget: UpstreamBudget) -> Self {
        self.budgets.insert(upstream.into(), budget);
        self
    }
    /// Checks every duration and count against its allowed range (see
    /// [`oci_cache_core::bounds`]); the error names the field and the range.
    pub fn validate(&self) -> oci_cache_core::Result<()> {
        use oci_cache_core::bounds::{count_in, duration_in, size_in, DAY, GIB, KIB};
        let ms = Duration::from_millis;
        duration_in(
            "connect_timeout",
            self.connect_timeout,
            ms(10)..=ms(600_000),
        )?;
        duration_in(
            "request_timeout",
            self.request_timeout,
            ms(10)..=ms(3_600_000),
        )?;
        duration_in("read_timeout", self.read_timeout, ms(10)..=ms(3_600_000))?;
        duration_in("idle_timeout", self.idle_timeout, Duration::ZERO..=DAY)?;
        duration_in(
            "breaker_cooldown",
            self.breaker_cooldown,
            Duration::ZERO..=DAY,
        )?;
        size_in("max_tag_list_bytes", self.max_tag_list_bytes, KIB..=GIB)?;
        count_in("max_tags", self.max_tags as u64, 1..=10_000_000)?;
        count_in(
            "max_idle_per_host",
            self.max_idle_per_host as u64,
            0..=10_000,
        )?;
        count_in("max_redirects", self.max_redirects as u64, 0..=50)?;
        count_in(
            "breaker_threshold",
            u64::from(self.breaker_threshold),
            0..=10_000,
        )?;
        validate_budget("", self.max_concurrent_requests, self.requests_per_second)?;
        for (name, budget) in &self.budgets {
            validate_budget(
                &format!("upstream {name:?}: "),
                budget
                    .max_concurrent_requests
                    .unwrap_or(self.max_concurrent_requests),
                budget.requests_per_second,
            )?;
        }
        Ok(())
    }
}

/// A cap of 2..=10000 requests in flight and a rate of 0.01..=100000 per second.
fn validate_budget(
    prefix: &str,
    max_concurrent: usize,
    per_second: Option<f64>,
) -> oci_cache_core::Result<()> {
    use oci_cache_core::bounds::count_in;
    count_in(
        &format!("{prefix}max_concurrent_requests"),
        max_concurrent as u64,
        2..=10_000,
    )?;
    match per_second {
        Some(rate) if !(0.01..=100_000.0).contains(&rate) => {
            Err(oci_cache_core::Error::Config(format!(
                "{prefix}requests_per_second is {rate}; write a rate from 0.01 to 100000 \
                 (0.5 is one request every two seconds), or leave it out for no rate limit"
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn proxy_password_is_not_in_debug() {
        let options = UpstreamOptions::default()
            .with_proxy(ProxyConfig::explicit("http://user:s3cret@proxy:3128/", ""));
        let text = format!("{options:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("http://***@proxy:3128/"), "{text}");
        assert_eq!(redact_userinfo("http://proxy:3128"), "http://proxy:3128");
    }

    #[test]
    fn deserializes_with_defaults_and_rejects_unknown_keys() {
        let options: UpstreamOptions = serde_json::from_str(
            r#"{"connect_timeout": "2s", "breaker_threshold": 0,
                "proxy": {"explicit": {"url": "http://p:1"}}}"#,
        )
        .unwrap();
        assert_eq!(options.connect_timeout, Duration::from_secs(2));
        assert_eq!(options.breaker_threshold, 0);
        assert_eq!(options.proxy, ProxyConfig::explicit("http://p:1", ""));
        assert_eq!(
            options.read_timeout,
            UpstreamOptions::default().read_timeout
        );
        let err = serde_json::from_str::<UpstreamOptions>(r#"{"conect_timeout": "2s"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
        let direct: UpstreamOptions = serde_json::from_str(r#"{"proxy": "direct"}"#).unwrap();
        assert_eq!(direct.proxy, ProxyConfig::Direct);
    }
}
