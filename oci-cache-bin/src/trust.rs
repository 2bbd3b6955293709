//! Settings of the mirror's own trust boundary: client authentication
//! (`--htpasswd`, `[auth]`, per-upstream `access`) and TLS (`--tls-cert`,
//! `--tls-key`, `--tls-client-ca`, `[tls]`).

use std::collections::HashMap;
use std::path::PathBuf;

use oci_cache_core::mirror::MirrorConfig;
use oci_cache_http::client_auth::{Access, ClientAuthConfig};
use oci_cache_http::tls_server::TlsFiles;
use serde::Deserialize;

use crate::config::StorageConfig;

/// Realm of the Basic challenge when the configuration names none.
const DEFAULT_REALM: &str = "oci-cache";

/// The `[auth]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthFile {
    /// htpasswd file with bcrypt entries (`htpasswd -B`).
    pub(crate) htpasswd: Option<PathBuf>,
    /// Realm of the Basic challenge.
    pub(crate) realm: Option<String>,
    /// Where digests of private content are recorded (default: in the
    /// filesystem storage directory; in memory for other storages).
    pub(crate) private_digests: Option<PathBuf>,
}

/// Client authentication settings from the flag, the file and the
/// upstreams' `access`; `None` when no htpasswd file is given.
pub(crate) fn client_auth(
    flag: Option<&PathBuf>,
    file: Option<AuthFile>,
    access: HashMap<String, Access>,
    storage: &StorageConfig,
) -> Result<Option<ClientAuthConfig>, String> {
    let file = file.unwrap_or_default();
    let Some(htpasswd) = flag.cloned().or(file.htpasswd) else {
        if !access.is_empty() {
            return Err(
                "an upstream sets access, but client authentication is off; give --htpasswd or [auth] htpasswd"
                    .to_owned(),
            );
        }
        return Ok(None);
    };
    let private_digests = file.private_digests.or(match storage {
        StorageConfig::Filesystem { dir } => Some(dir.join("_private-digests")),
        _ => None,
    });
    Ok(Some(ClientAuthConfig {
        htpasswd,
        realm: file.realm.unwrap_or_else(|| DEFAULT_REALM.to_owned()),
        access,
        private_digests,
    }))
}

/// The `[tls]` table (the mirror's serving certificate, not an upstream's).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) client_ca: Option<PathBuf>,
}

/// The serving certificate from the flags over the file; `None` serves plain HTTP.
pub(crate) fn tls(
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    client_ca: Option<&PathBuf>,
    file: Option<TlsFile>,
) -> Result<Option<TlsFiles>, String> {
    let file = file.unwrap_or_default();
    let cert = cert.cloned().or(file.cert);
    let key = key.cloned().or(file.key);
    let client_ca = client_ca.cloned().or(file.client_ca);
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert,
            key,
            client_ca,
        })),
        (None, None) if client_ca.is_none() => Ok(None),
        (None, None) => Err("--tls-client-ca needs --tls-cert and --tls-key".to_owned()),
        _ => Err(
            "--tls-cert and --tls-key (or [tls] cert and key) must be given together".to_owned(),
        ),
    }
}

/// The trust settings as `check-config` prints them: TLS, client
/// authentication, and per upstream who may read it and whose credentials
/// it uses (never a password).
pub(crate) fn describe(
    tls: Option<&TlsFiles>,
    client_auth: Option<&ClientAuthConfig>,
    mirrors: &MirrorConfig,
) -> Vec<String> {
    let mut lines = Vec::new();
    lines.push(match tls {
        Some(files) => format!(
            "tls: cert {} key {}{}",
            files.cert.display(),
            files.key.display(),
            files
                .client_ca
                .as_ref()
                .map(|ca| format!(", client certificates from {}", ca.display()))
                .unwrap_or_default()
        ),
        None => "tls: off (plain HTTP)".to_owned(),
    });
    lines.push(match client_auth {
        Some(auth) => format!("client auth: htpasswd {}", auth.htpasswd.display()),
        None => "client auth: off".to_owned(),
    });
    for upstream in &mirrors.upstreams {
        let users: Vec<String> = upstream
            .endpoints
            .iter()
            .chain([&upstream.origin])
            .filter_map(|e| e.credentials.as_ref())
            .map(|c| format!("{} (password <redacted>)", c.username))
            .collect();
        let access = match client_auth {
            Some(auth) => match auth.access.get(upstream.name.as_str()) {
                Some(access) => *access,
                None => Access::default_for(upstream),
            },
            None => Access::Public,
        };
        let access = match access {
            Access::Public => "public",
            Access::Authenticated => "authenticated",
        };
        let mut line = format!("upstream {}: access {access}", upstream.name);
        if !users.is_empty() {
            line.push_str(&format!("; credentials: {}", users.join(", ")));
            if client_auth.is_none() {
                line.push_str(
                    " — WARNING: anyone who reaches the port can read it; set --htpasswd",
                );
            }
        }
        lines.push(line);
    }
    lines
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tls_needs_cert_and_key_together_and_flags_win() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(tls(None, None, None, None).unwrap(), None);
        assert!(tls(Some(&p("c")), None, None, None)
            .unwrap_err()
            .contains("together"));
        assert!(tls(None, None, Some(&p("ca")), None)
            .unwrap_err()
            .contains("--tls-cert"));
        let file: TlsFile = toml::from_str("cert = \"fc\"\nkey = \"fk\"").unwrap();
        let files = tls(Some(&p("c")), None, None, Some(file)).unwrap().unwrap();
        assert_eq!(
            (files.cert, files.key, files.client_ca),
            (p("c"), p("fk"), None)
        );
    }

    #[test]
    fn access_without_htpasswd_is_refused_and_digests_default_to_the_storage_dir() {
        let fs = StorageConfig::Filesystem {
            dir: PathBuf::from("/data"),
        };
        let access: HashMap<String, Access> = [("a".to_owned(), Access::Public)].into();
        assert!(client_auth(None, None, access.clone(), &fs)
            .unwrap_err()
            .contains("--htpasswd"));
        let auth = client_auth(Some(&PathBuf::from("/h")), None, access, &fs)
            .unwrap()
            .unwrap();
        assert_eq!(
            auth.private_digests,
            Some(PathBuf::from("/data/_private-digests"))
        );
        assert_eq!(auth.realm, "oci-cache");
        let memory = client_auth(
            Some(&PathBuf::from("/h")),
            None,
            HashMap::new(),
            &StorageConfig::Memory {},
        );
        assert_eq!(memory.unwrap().unwrap().private_digests, None);
    }
}
