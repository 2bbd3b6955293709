//! Reading PEM certificate chains and private keys, for the TLS server (its
//! certificate, the CA of client certificates) and the upstream client (a
//! custom CA, a client certificate for mTLS).
//!
//! Errors are plain text that starts with the path, so each caller puts the
//! setting it came from in front (`tls.client_key /etc/…: …`).

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Every certificate in the PEM file at `path` (none is not an error here:
/// callers say what they needed).
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}; give a readable PEM file", path.display()))
}

/// The first private key in the PEM file at `path`.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: {e}; give a PEM private key", path.display()))
}
