//! `[tls.acme]`: the serving certificate from an ACME CA (Let's Encrypt by
//! default) instead of files.

use std::net::SocketAddr;
use std::path::PathBuf;

use oci_cache_core::duration::parse_duration;
use oci_cache_http::acme::{AcmeConfig, Challenge, LETS_ENCRYPT_PRODUCTION};
use serde::Deserialize;

use crate::config::StorageConfig;

/// Where the HTTP-01 listener binds unless told: port 80, where the CA looks.
const DEFAULT_HTTP01_LISTEN: &str = "0.0.0.0:80";

/// The `[tls.acme]` table.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcmeFile {
    /// DNS names of the certificate.
    #[serde(default)]
    pub(crate) domains: Vec<String>,
    /// Contact e-mail addresses of the ACME account.
    #[serde(default)]
    pub(crate) contact: Vec<String>,
    /// The CA's directory (default: Let's Encrypt production).
    pub(crate) directory_url: Option<String>,
    /// `tls-alpn-01` (default) or `http-01`.
    pub(crate) challenge: Option<String>,
    /// Where the HTTP-01 listener binds (default `0.0.0.0:80`).
    pub(crate) http01_listen: Option<String>,
    /// Account and certificate files (default `<storage dir>/_acme`).
    pub(crate) cache_dir: Option<PathBuf>,
    /// PEM CA certificate the ACME server's HTTPS chains to (a private CA).
    pub(crate) ca_bundle: Option<PathBuf>,
    /// Renew this long before expiry (default: after two thirds of the lifetime).
    pub(crate) renew_before: Option<String>,
}

/// The ACME settings of `file`, checked.
pub(crate) fn settings(file: AcmeFile, storage: &StorageConfig) -> Result<AcmeConfig, String> {
    if file.domains.is_empty() {
        return Err(
            "[tls.acme] domains is empty: give the DNS names the certificate is for (they must resolve to this host)"
                .to_owned(),
        );
    }
    if let Some(bad) = file
        .domains
        .iter()
        .find(|d| d.is_empty() || d.starts_with('*') || d.parse::<std::net::IpAddr>().is_ok())
    {
        return Err(format!(
            "[tls.acme] domains: {bad:?} cannot be validated by tls-alpn-01 or http-01 (no wildcards or IP addresses); give DNS names"
        ));
    }
    let challenge = match file.challenge.as_deref() {
        None | Some("tls-alpn-01") => Challenge::TlsAlpn01,
        Some("http-01") => Challenge::Http01,
        Some(other) => {
            return Err(format!(
                "[tls.acme] challenge = {other:?} is not supported; use \"tls-alpn-01\" (answered on the TLS port) or \"http-01\" (answered on port 80)"
            ))
        }
    };
    let http01_listen: SocketAddr = file
        .http01_listen
        .as_deref()
        .unwrap_or(DEFAULT_HTTP01_LISTEN)
        .parse()
        .map_err(|e| format!("[tls.acme] http01_listen: {e}; write it like 0.0.0.0:80"))?;
    let cache_dir = match (file.cache_dir, storage) {
        (Some(dir), _) => dir,
        (None, StorageConfig::Filesystem { dir }) => dir.join("_acme"),
        (None, _) => {
            return Err(
                "[tls.acme] cache_dir is needed with this storage: give a local directory for the ACME account and certificate"
                    .to_owned(),
            )
        }
    };
    let renew_before = file
        .renew_before
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| format!("[tls.acme] renew_before: {e}"))?;
    Ok(AcmeConfig {
        directory_url: file
            .directory_url
            .unwrap_or_else(|| LETS_ENCRYPT_PRODUCTION.to_owned()),
        contact: file.contact,
        domains: file.domains,
        challenge,
        http01_listen,
        cache_dir,
        ca_bundle: file.ca_bundle,
        renew_before,
    })
}
