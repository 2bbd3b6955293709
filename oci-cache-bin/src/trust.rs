//! Settings of the mirror's own trust boundary: client authentication
//! (`--htpasswd`, `[auth]`, per-upstream `access`) and TLS (`--tls-cert`,
//! `--tls-key`, `--tls-client-ca`, `[tls]`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_cache_core::mirror::MirrorConfig;
use oci_cache_http::acme::{AcmeConfig, Challenge};
use oci_cache_http::client_auth::{Access, ClientAuthConfig};
use oci_cache_http::tls_server::TlsFiles;
use serde::Deserialize;

use crate::config::StorageConfig;

pub(crate) mod acme;

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
    /// Upstreams and local prefixes served to anonymous clients too (as
    /// `--public-upstream`; an upstream's `access = "public"` does the same).
    #[serde(default)]
    pub(crate) public: Vec<String>,
}

/// Client authentication settings from the flag, the file and the
/// upstreams' `access` (flags included); `None` when no htpasswd file is
/// given. Every upstream and local prefix of `served` not set `public` is
/// protected; a name that is neither is refused.
pub(crate) fn client_auth(
    (flag, public_flags): (Option<&PathBuf>, &[String]),
    file: Option<AuthFile>,
    mut access: BTreeMap<String, Access>,
    served: (&MirrorConfig, &[String]),
    storage: &StorageConfig,
) -> Result<Option<ClientAuthConfig>, String> {
    let file = file.unwrap_or_default();
    // The flag wins over an upstream's `access`; `[auth] public` does not.
    for name in public_flags {
        access.insert(name.clone(), Access::Public);
    }
    for name in &file.public {
        access.entry(name.clone()).or_insert(Access::Public);
    }
    let Some(htpasswd) = flag.cloned().or(file.htpasswd) else {
        if !access.is_empty() {
            return Err(
                "an upstream is set public or authenticated (access, --public-upstream or [auth] public), but client authentication is off; give --htpasswd or [auth] htpasswd"
                    .to_owned(),
            );
        }
        return Ok(None);
    };
    let (mirrors, local_prefixes) = served;
    let mut unknown: Vec<&str> = access
        .keys()
        .map(String::as_str)
        .filter(|name| {
            !mirrors.upstreams.iter().any(|u| u.name.as_str() == *name)
                && !local_prefixes.iter().any(|p| p == name)
        })
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        let known: Vec<&str> = mirrors
            .upstreams
            .iter()
            .map(|u| u.name.as_str())
            .chain(local_prefixes.iter().map(String::as_str))
            .collect();
        return Err(format!(
            "access is set for {}, which is neither a configured upstream nor a local prefix (known: {})",
            unknown.join(", "),
            known.join(", ")
        ));
    }
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
    /// `[tls.acme]`: the certificate from an ACME CA instead of files.
    pub(crate) acme: Option<acme::AcmeFile>,
}

/// The ACME settings (`[tls.acme]`), taken out of `file`; refused beside a
/// certificate from files or flags, or beside client certificates (the CA
/// validating TLS-ALPN-01 presents none, and one listener cannot both
/// require and not require them).
pub(crate) fn take_acme(
    flags: (Option<&PathBuf>, Option<&PathBuf>, Option<&PathBuf>),
    file: &mut Option<TlsFile>,
    storage: &StorageConfig,
) -> Result<Option<oci_cache_http::acme::AcmeConfig>, String> {
    let Some(acme_file) = file.as_mut().and_then(|f| f.acme.take()) else {
        return Ok(None);
    };
    let (cert, key, client_ca) = flags;
    let from_files = file
        .as_ref()
        .is_some_and(|f| f.cert.is_some() || f.key.is_some() || f.client_ca.is_some());
    if from_files || cert.is_some() || key.is_some() || client_ca.is_some() {
        return Err(
            "[tls.acme] gets the certificate from an ACME CA, but a certificate or client CA is also given \
             (--tls-cert/--tls-key/--tls-client-ca or [tls] cert/key/client_ca); keep one of the two"
                .to_owned(),
        );
    }
    *file = None;
    acme::settings(acme_file, storage).map(Some)
}

/// The serving certificate from the flags over the file; `None` serves plain HTTP.
pub(crate) fn tls(
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    client_ca: Option<&PathBuf>,
    file: Option<TlsFile>,
) -> Result<Option<TlsFiles>, String> {
    let empty_table = matches!(
        file,
        Some(TlsFile {
            cert: None,
            key: None,
            client_ca: None,
            acme: None,
        })
    );
    if empty_table && cert.is_none() && key.is_none() {
        // An empty table asks for TLS without saying with what: serving
        // plain HTTP instead would silently drop it.
        return Err(
            "[tls] is empty: give cert and key (the serving certificate and its key), or remove the [tls] table to serve plain HTTP"
                .to_owned(),
        );
    }
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
/// authentication, and per upstream and local prefix who may read it and
/// whose credentials it uses (never a password).
pub(crate) fn describe(
    (tls, acme): (Option<&TlsFiles>, Option<&AcmeConfig>),
    client_auth: Option<&ClientAuthConfig>,
    (mirrors, local_prefixes): (&MirrorConfig, &[String]),
) -> Vec<String> {
    let mut lines = Vec::new();
    lines.push(match (tls, acme) {
        (None, Some(acme)) => format!(
            "tls: ACME certificate for {} from {} ({}), cached in {}",
            acme.domains.join(", "),
            acme.directory_url,
            match acme.challenge {
                Challenge::TlsAlpn01 => "tls-alpn-01 on the TLS listener".to_owned(),
                Challenge::Http01 => format!("http-01 on {}", acme.http01_listen),
            },
            acme.cache_dir.display()
        ),
        (Some(files), _) => format!(
            "tls: cert {} key {}{}",
            files.cert.display(),
            files.key.display(),
            files
                .client_ca
                .as_ref()
                .map(|ca| format!(", client certificates from {}", ca.display()))
                .unwrap_or_default()
        ),
        (None, None) => "tls: off (plain HTTP)".to_owned(),
    });
    lines.push(match client_auth {
        Some(auth) => format!(
            "client auth: htpasswd {} (every upstream and hosted repository not set public needs credentials)",
            auth.htpasswd.display()
        ),
        None => "client auth: off".to_owned(),
    });
    let access_of = |name: &str| match client_auth {
        Some(auth) => match auth.access_of(name) {
            Access::Public => "public",
            Access::Authenticated => "authenticated",
        },
        None => "public",
    };
    for upstream in &mirrors.upstreams {
        let users: Vec<String> = upstream
            .endpoints
            .iter()
            .chain([&upstream.origin])
            .filter_map(|e| e.credentials.as_ref())
            .map(|c| format!("{} (password <redacted>)", c.username))
            .collect();
        let mut line = format!(
            "upstream {}: access {}",
            upstream.name,
            access_of(upstream.name.as_str())
        );
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
    for prefix in local_prefixes {
        lines.push(format!(
            "hosted {prefix}/…: pull access {}",
            access_of(prefix)
        ));
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
        assert!(tls(None, None, None, Some(TlsFile::default()))
            .unwrap_err()
            .contains("[tls] is empty"));
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
        let mirrors = MirrorConfig::common();
        let served = (&mirrors, &["local".to_owned()][..]);
        let access: BTreeMap<String, Access> = [("docker.io".to_owned(), Access::Public)].into();
        assert!(client_auth((None, &[]), None, access.clone(), served, &fs)
            .unwrap_err()
            .contains("--htpasswd"));
        let auth = client_auth((Some(&PathBuf::from("/h")), &[]), None, access, served, &fs)
            .unwrap()
            .unwrap();
        assert_eq!(
            auth.private_digests,
            Some(PathBuf::from("/data/_private-digests"))
        );
        assert_eq!(auth.realm, "oci-cache");
        let memory = client_auth(
            (Some(&PathBuf::from("/h")), &[]),
            None,
            BTreeMap::new(),
            served,
            &StorageConfig::Memory {},
        );
        assert_eq!(memory.unwrap().unwrap().private_digests, None);
    }

    /// Issue 22: with an htpasswd file every upstream and local prefix is
    /// authenticated unless named public (by `access`, the flag or `[auth]
    /// public`); a public name that is nothing served is refused.
    #[test]
    fn everything_is_authenticated_unless_named_public() {
        let mirrors = MirrorConfig::common();
        let local = ["local".to_owned()];
        let served = (&mirrors, &local[..]);
        let file: AuthFile = toml::from_str("htpasswd = \"/h\"\npublic = [\"local\"]").unwrap();
        let access: BTreeMap<String, Access> = [
            ("docker.io".to_owned(), Access::Public),
            ("quay.io".to_owned(), Access::Authenticated),
        ]
        .into();
        let flags = ["quay.io".to_owned()];
        let auth = client_auth(
            (None, &flags),
            Some(file),
            access,
            served,
            &StorageConfig::Memory {},
        )
        .unwrap()
        .unwrap();
        for upstream in &mirrors.upstreams {
            let expected = match upstream.name.as_str() {
                "docker.io" | "quay.io" => Access::Public,
                _ => Access::Authenticated,
            };
            assert_eq!(
                auth.access_of(upstream.name.as_str()),
                expected,
                "{}",
                upstream.name
            );
        }
        assert_eq!(auth.access_of("local"), Access::Public);
        let lines = describe((None, None), Some(&auth), served).join("\n");
        assert!(
            lines.contains("upstream ghcr.io: access authenticated"),
            "{lines}"
        );
        assert!(
            lines.contains("upstream docker.io: access public"),
            "{lines}"
        );
        assert!(
            lines.contains("hosted local/…: pull access public"),
            "{lines}"
        );

        let typo: BTreeMap<String, Access> = [("dockerio".to_owned(), Access::Public)].into();
        let err = client_auth(
            (Some(&PathBuf::from("/h")), &[]),
            None,
            typo,
            served,
            &StorageConfig::Memory {},
        )
        .unwrap_err();
        assert!(
            err.contains("\"dockerio\"") || err.contains("dockerio"),
            "{err}"
        );
        assert!(err.contains("docker.io"), "names the known ones: {err}");
    }
}
