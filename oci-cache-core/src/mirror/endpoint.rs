//! Endpoints of an upstream: where content is fetched from, with which
//! credentials and TLS settings, and which requests each may answer.

use serde::{Deserialize, Serialize};

use crate::reference::{Registry, Repository};
use crate::{Error, Result};

/// What a query value escapes, like Go's `url.QueryEscape` and so as
/// containerd sends it: `ns=ghcr.io`, `ns=%5B%3A%3A1%5D%3A5000`.
pub const QUERY_ESCAPE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Credentials for one upstream or endpoint. `Debug` and `Serialize` never
/// show the password.
///
/// In configuration the password comes from exactly one of `password`
/// (inline), `password_file` (the file's content without its trailing
/// newline, e.g. a mounted Kubernetes secret) or `password_env` (an
/// environment variable), read when the configuration is loaded.
///
/// ```
/// use oci_cache_core::mirror::Credentials;
///
/// std::env::set_var("DOC_REGISTRY_TOKEN", "s3cret");
/// let c: Credentials =
///     serde_json::from_str(r#"{"username":"ci","password_env":"DOC_REGISTRY_TOKEN"}"#).unwrap();
/// assert_eq!(c.password, "s3cret");
/// assert!(!format!("{c:?}").contains("s3cret"));
/// assert!(!serde_json::to_string(&c).unwrap().contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "CredentialsSpec")]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or access token (already read from its file or variable).
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

impl Serialize for Credentials {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Credentials", 2)?;
        s.serialize_field("username", &self.username)?;
        s.serialize_field("password", "<redacted>")?;
        s.end()
    }
}

/// Credentials as written in configuration.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsSpec {
    username: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_file: Option<std::path::PathBuf>,
    #[serde(default)]
    password_env: Option<String>,
}

impl TryFrom<CredentialsSpec> for Credentials {
    type Error = String;

    fn try_from(spec: CredentialsSpec) -> std::result::Result<Self, String> {
        let user = &spec.username;
        let password = match (spec.password, spec.password_file, spec.password_env) {
            (Some(password), None, None) => password,
            (None, Some(path), None) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    format!(
                        "credentials of {user:?}: cannot read password_file {}: {e}",
                        path.display()
                    )
                })?;
                let password = text.strip_suffix('\n').unwrap_or(&text);
                let password = password.strip_suffix('\r').unwrap_or(password);
                if password.is_empty() {
                    return Err(format!(
                        "credentials of {user:?}: password_file {} is empty",
                        path.display()
                    ));
                }
                password.to_owned()
            }
            (None, None, Some(var)) => match std::env::var(&var) {
                Ok(password) if !password.is_empty() => password,
                _ => {
                    return Err(format!(
                        "credentials of {user:?}: environment variable {var} (password_env) is not set or empty"
                    ))
                }
            },
            _ => {
                return Err(format!(
                    "credentials of {user:?}: set exactly one of password, password_file or password_env"
                ))
            }
        };
        Ok(Credentials {
            username: spec.username,
            password,
        })
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
    /// Hosts of token servers (`realm`s) that may receive this endpoint's
    /// credentials besides its own host and registrable domain (`*.domain`
    /// names every host below `domain`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_realms: Vec<String>,
    /// Hosts that manifest and tag-list requests may be redirected to besides
    /// the endpoint's own origin, as in `token_realms` (blob redirects may go
    /// to any public host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redirect_hosts: Vec<String>,
    /// Allow realms and redirects on loopback, link-local and private
    /// addresses although the endpoint is not on one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_private_targets: bool,
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
            token_realms: Vec::new(),
            redirect_hosts: Vec::new(),
            allow_private_targets: false,
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

/// A URL for error messages, with any `user:password@` removed.
pub(crate) fn redact_userinfo(url: &str) -> String {
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
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(toml_text: &str) -> std::result::Result<Credentials, String> {
        toml::from_str::<Credentials>(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn passwords_come_from_a_file_or_the_environment_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file-secret\n").unwrap();
        let c = parse(&format!(
            "username = \"u\"\npassword_file = {:?}",
            file.display().to_string()
        ))
        .unwrap();
        assert_eq!(c.password, "from-file-secret");
        for shown in [format!("{c:?}"), serde_json::to_string(&c).unwrap()] {
            assert!(!shown.contains("from-file-secret"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }

        // A variable name no other test sets.
        std::env::set_var("OCI_CACHE_TEST_ENDPOINT_PASSWORD", "from-env");
        let c =
            parse("username = \"u\"\npassword_env = \"OCI_CACHE_TEST_ENDPOINT_PASSWORD\"").unwrap();
        assert_eq!(c.password, "from-env");
        assert_eq!(
            parse("username = \"u\"\npassword = \"inline\"")
                .unwrap()
                .password,
            "inline"
        );
    }

    #[test]
    fn registry_k8s_io_may_redirect_manifests_to_artifact_registry() {
        use crate::mirror::{MirrorConfig, UpstreamConfig};
        let k8s = UpstreamConfig::new(
            Registry::new("registry.k8s.io").unwrap(),
            "https://registry.k8s.io",
        );
        assert_eq!(k8s.origin.redirect_hosts, ["*.pkg.dev"]);
        let common = MirrorConfig::common();
        assert_eq!(
            common
                .lookup("registry.k8s.io")
                .unwrap()
                .origin
                .redirect_hosts,
            ["*.pkg.dev"]
        );
        let other = UpstreamConfig::new(Registry::new("ghcr.io").unwrap(), "https://ghcr.io");
        assert!(other.origin.redirect_hosts.is_empty());
    }

    #[test]
    fn missing_or_ambiguous_passwords_are_refused_with_the_reason() {
        let cases = [
            ("username = \"u\"", "exactly one"),
            (
                "username = \"u\"\npassword = \"a\"\npassword_env = \"B\"",
                "exactly one",
            ),
            (
                "username = \"u\"\npassword_env = \"OCI_CACHE_TEST_UNSET_VARIABLE\"",
                "not set",
            ),
            (
                "username = \"u\"\npassword_file = \"/nonexistent/oci-cache\"",
                "cannot read",
            ),
            ("username = \"u\"\npasswd = \"x\"", "unknown field"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
