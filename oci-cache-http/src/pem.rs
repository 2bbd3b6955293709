//! Reading PEM certificate chains and private keys, for the TLS server (its
//! certificate, the CA of client certificates) and the upstream client (a
//! custom CA, a client certificate for mTLS).
//!
//! Errors are plain text that starts with the path, so each caller puts the
//! setting it came from in front (`tls.client_key /etc/…: …`).

use std::path::Path;

use oci_cache_core::unreadable::unreadable;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Every certificate in the PEM file at `path` (none is not an error here:
/// callers say what they needed).
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}; give a readable PEM file", path.display()))
}

/// The first private key in the PEM file at `path`.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{}: {e}; give a PEM private key", path.display()))
}

/// The file's bytes; a refused permission names the user to grant it to.
fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path)
        .map_err(|e| format!("{}: {}", path.display(), unreadable("the file", path, &e)))
}
