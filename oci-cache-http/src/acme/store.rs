//! The cache directory: the ACME account and the certificate with its key,
//! one subdirectory per CA directory URL (a certificate from a staging CA
//! is never served in place of a production one). Files are written
//! owner-only (0600, directories 0700), through a temporary file and a
//! rename, so a crash never leaves half a key.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::AcmeConfig;
use crate::{Error, Result};

const ACCOUNT: &str = "account.json";
const CHAIN: &str = "certificate.pem";
const KEY: &str = "key.pem";

/// The account and certificate files of one CA.
#[derive(Debug)]
pub(super) struct Store {
    dir: PathBuf,
}

/// A cached certificate still worth serving.
#[derive(Debug)]
pub(super) struct Cached {
    pub(super) chain_pem: String,
    pub(super) key_pem: String,
    pub(super) validity: Validity,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// When to renew: `renew_before` ahead of expiry, or after two thirds of
    /// the lifetime when not set.
    pub fn renew_at(&self, renew_before: Option<Duration>) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        let margin = renew_before.unwrap_or(lifetime / 3);
        self.not_after
            .checked_sub(margin)
            .filter(|at| *at >= self.not_before)
            .unwrap_or(self.not_before)
    }
}

impl Store {
    pub(super) fn new(config: &AcmeConfig) -> Self {
        let ca: String = config
            .directory_url
            .trim_start_matches("https://")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Store {
            dir: config.cache_dir.join(ca),
        }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn load_account(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join(ACCOUNT)).ok()
    }

    pub(super) fn save_account(&self, json: &str) -> Result<()> {
        self.write(ACCOUNT, json)
    }

    /// The cached certificate, if it parses, matches its key, covers every
    /// name in `domains` and has not expired at `now`.
    pub(super) fn load_certificate(&self, domains: &[String], now: SystemTime) -> Option<Cached> {
        let chain_pem = std::fs::read_to_string(self.dir.join(CHAIN)).ok()?;
        let key_pem = std::fs::read_to_string(self.dir.join(KEY)).ok()?;
        let leaf = first_certificate(&chain_pem)?;
        let (validity, names) = match inspect(&leaf) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, cache = %self.dir.display(), "the cached ACME certificate cannot be read; ordering a new one");
                return None;
            }
        };
        if let Some(missing) = domains
            .iter()
            .find(|d| !names.iter().any(|n| n.eq_ignore_ascii_case(d)))
        {
            tracing::info!(domain = %missing, "the cached ACME certificate does not cover {missing}; ordering a new one");
            return None;
        }
        if validity.not_after <= now {
            tracing::info!("the cached ACME certificate has expired; ordering a new one");
            return None;
        }
        Some(Cached {
            chain_pem,
            key_pem,
            validity,
        })
    }

    pub(super) fn save_certificate(&self, chain_pem: &str, key_pem: &str) -> Result<()> {
        // The key first: a chain beside the previous key would not load,
        // a key beside the previous chain would not either (and is reordered).
        self.write(KEY, key_pem)?;
        self.write(CHAIN, chain_pem)
    }

    fn write(&self, name: &str, contents: &str) -> Result<()> {
        let fail = |what: &str, path: &Path, e: std::io::Error| {
            Error::Acme(format!(
                "cannot {what} {}: {e}; check that the ACME cache directory is writable by this user",
                path.display()
            ))
        };
        create_private_dir(&self.dir).map_err(|e| fail("create", &self.dir, e))?;
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut file = private_file(&tmp).map_err(|e| fail("write", &tmp, e))?;
        file.write_all(contents.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| fail("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| fail("write", &path, e))
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// The DER of the first certificate of a PEM chain.
pub(super) fn first_certificate(chain_pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()?
        .ok()
        .map(|der| der.to_vec())
}

/// The validity and DNS names of a DER certificate.
pub(super) fn inspect(der: &[u8]) -> std::result::Result<(Validity, Vec<String>), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    let validity = Validity {
        not_before: at(cert.validity().not_before),
        not_after: at(cert.validity().not_after),
    };
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((validity, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_two_thirds_of_the_lifetime_or_the_margin_before_expiry() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let validity = Validity {
            not_before: start,
            not_after: start + Duration::from_secs(90 * 86_400),
        };
        assert_eq!(
            validity.renew_at(None),
            start + Duration::from_secs(60 * 86_400)
        );
        assert_eq!(
            validity.renew_at(Some(Duration::from_secs(10 * 86_400))),
            start + Duration::from_secs(80 * 86_400)
        );
        // A margin longer than the lifetime: renew at once.
        assert_eq!(
            validity.renew_at(Some(Duration::from_secs(900 * 86_400))),
            start
        );
    }
}
