//! registry:2's `http.tls.letsencrypt` block as `[tls.acme]`.
//!
//! distribution asks Let's Encrypt (or `directoryurl`) through Go's
//! autocert, which answers TLS-ALPN-01 on the TLS port: the same challenge
//! here. Its `cachefile` is a file of autocert's own format, which oci-cache
//! cannot read; the account and certificate go to the directory
//! `oci-cache-acme` beside it instead (a first start orders a new
//! certificate). `hosts` is required here: autocert without it would ask
//! for a certificate for whatever name a client sends.

use std::path::Path;

use serde_norway::Value;

use super::{entries, text};
use crate::trust::acme::AcmeFile;

/// The directory beside `cachefile` that holds the ACME files.
const CACHE_DIR_BESIDE_CACHEFILE: &str = "oci-cache-acme";

/// `http.tls.letsencrypt` of the file `name`, when there is one.
pub(super) fn letsencrypt(value: Option<&Value>, name: &str) -> Result<Option<AcmeFile>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let mut acme = AcmeFile {
        challenge: Some("tls-alpn-01".to_owned()),
        ..AcmeFile::default()
    };
    for (key, v) in entries(value) {
        match key {
            "email" => acme.contact.extend(text(v)),
            "directoryurl" => acme.directory_url = text(v),
            "cachefile" => {
                acme.cache_dir = text(v).map(|file| {
                    Path::new(&file)
                        .parent()
                        .unwrap_or(Path::new("."))
                        .join(CACHE_DIR_BESIDE_CACHEFILE)
                })
            }
            "hosts" => {
                acme.domains = v
                    .as_sequence()
                    .map(|hosts| hosts.iter().filter_map(text).collect())
                    .unwrap_or_default()
            }
            other => {
                return Err(format!(
                "{name}: http.tls.letsencrypt.{other} is not a registry:2 setting oci-cache knows \
                     (cachefile, email, hosts, directoryurl); remove it"
            ))
            }
        }
    }
    if acme.domains.is_empty() {
        return Err(format!(
            "{name}: http.tls.letsencrypt has no hosts; list the DNS names the certificate is for \
             (oci-cache does not order certificates for whatever name a client asks for)"
        ));
    }
    Ok(Some(acme))
}
