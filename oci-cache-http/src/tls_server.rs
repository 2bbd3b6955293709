//! Serving over TLS: rustls with ALPN `h2` and `http/1.1`, the certificate
//! re-read when its files change (cert-manager rotates them in place) and
//! optional client-certificate authentication.
//!
//! Rotation never drops a connection: each new handshake asks
//! [`ServingCert`] for the certificate, which looks at the files' modification
//! times at most once a second and swaps in the new pair when both parse and
//! match. Established connections keep the keys they negotiated. A half-
//! written rotation (a new certificate with the old key) is ignored with a
//! warning until the pair matches again.
//!
//! [`ServingCert`] is the one place the serving certificate lives: a
//! configuration reload points it at other files
//! ([`ServingCert::reload`]), and another certificate source (ACME) can
//! install its certificates through the same resolver.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
/// The acceptor [`serve_with`](crate::serve_with) takes.
pub use tokio_rustls::TlsAcceptor;

use crate::pem::{read_certs, read_key};
use crate::{Error, Result};

/// How often the certificate files' modification times are looked at.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Files of the serving certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// PEM CA certificates client certificates must chain to; when set,
    /// every client must present one.
    pub client_ca: Option<PathBuf>,
}

/// A TLS acceptor over [`TlsFiles`], for [`serve_with`](crate::serve_with).
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor> {
    reloadable_acceptor(files).map(|(acceptor, _)| acceptor)
}

/// [`acceptor`], and the [`ServingCert`] its handshakes take the
/// certificate from (to point it at other files on a configuration reload).
/// The client CA is part of the acceptor: a new one needs a new acceptor.
pub fn reloadable_acceptor(files: &TlsFiles) -> Result<(TlsAcceptor, Arc<ServingCert>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = Arc::new(ServingCert::open(files, provider.clone())?);
    let serving = Arc::clone(&resolver);
    let acceptor = acceptor_over(resolver, files.client_ca.as_deref(), provider, false)?;
    Ok((acceptor, serving))
}

/// A TLS acceptor over the certificate of an ACME order
/// ([`acme::AcmeResolver`](crate::acme::AcmeResolver)); with `tls_alpn_01`
/// it also offers `acme-tls/1` (after `h2` and `http/1.1`, so no client
/// gets it unless it asks for nothing else) to answer TLS-ALPN-01.
pub fn acme_acceptor(
    resolver: Arc<crate::acme::AcmeResolver>,
    tls_alpn_01: bool,
) -> Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    acceptor_over(resolver, None, provider, tls_alpn_01)
}

fn acceptor_over(
    resolver: Arc<dyn ResolvesServerCert>,
    client_ca: Option<&Path>,
    provider: Arc<CryptoProvider>,
    tls_alpn_01: bool,
) -> Result<TlsAcceptor> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(format!("no usable TLS versions: {e}")))?;
    let builder = match client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(
                read_certs(path).map_err(|e| Error::Tls(format!("client CA file {e}")))?,
            );
            if added == 0 {
                return Err(Error::Tls(format!(
                    "client CA file {} holds no usable certificate",
                    path.display()
                )));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| Error::Tls(format!("client CA file {}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if tls_alpn_01 {
        config
            .alpn_protocols
            .push(crate::acme::ACME_TLS_ALPN.to_vec());
    }
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A TLS client configuration that trusts exactly the leaf certificate of
/// `cert_file` (the certificate this server serves): for probing the
/// server's own listener on a loopback address, which the certificate
/// does not name, with an issuer the prober need not know
/// (`oci-cache healthcheck`).
///
/// Errors: [`Error::Tls`] when the file cannot be read or holds no
/// certificate.
pub fn client_trusting(cert_file: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let leaf = read_certs(cert_file)
        .map_err(|e| Error::Tls(format!("certificate file {e}")))?
        .into_iter()
        .next()
        .ok_or_else(|| {
            Error::Tls(format!(
                "certificate file {} holds no certificate",
                cert_file.display()
            ))
        })?;
    crate::upstream::tls::pinned(leaf).map_err(Error::Tls)
}

/// The serving certificate: what each new handshake is answered with,
/// re-read when its files change, and swapped for other files by
/// [`reload`](Self::reload). Established connections keep theirs.
#[derive(Debug)]
pub struct ServingCert {
    files: RwLock<(PathBuf, PathBuf)>,
    provider: Arc<CryptoProvider>,
    current: RwLock<(Stamp, Arc<CertifiedKey>)>,
    checked: Mutex<Instant>,
}

type Stamp = Option<(SystemTime, SystemTime, u64, u64)>;

impl ServingCert {
    fn open(files: &TlsFiles, provider: Arc<CryptoProvider>) -> Result<Self> {
        let stamp = stamp(&files.cert, &files.key);
        let key = load(&files.cert, &files.key, &provider).map_err(Error::Tls)?;
        Ok(ServingCert {
            files: RwLock::new((files.cert.clone(), files.key.clone())),
            provider,
            current: RwLock::new((stamp, Arc::new(key))),
            checked: Mutex::new(Instant::now()),
        })
    }

    /// Serves the certificate and key of `files` from the next handshake
    /// on (and watches those files from now on), once both load and form a
    /// pair; on an error the previous certificate stays. `files.client_ca`
    /// is not looked at (see [`reloadable_acceptor`]).
    ///
    /// Errors: [`Error::Tls`] naming the file that cannot be read or used.
    pub fn reload(&self, files: &TlsFiles) -> Result<()> {
        let now = stamp(&files.cert, &files.key);
        let key = load(&files.cert, &files.key, &self.provider).map_err(Error::Tls)?;
        self.install(now, Arc::new(key));
        *self.files.write().unwrap_or_else(PoisonError::into_inner) =
            (files.cert.clone(), files.key.clone());
        tracing::info!(cert = %files.cert.display(), "serving the reloaded TLS certificate");
        Ok(())
    }

    /// Answers the next handshakes with `key` (the seam for a certificate
    /// source other than files; a later change of the watched files
    /// replaces it again).
    pub(crate) fn install(&self, stamp: Stamp, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = (stamp, key);
    }

    fn reload_if_changed(&self) {
        {
            let Ok(mut checked) = self.checked.lock() else {
                return;
            };
            if checked.elapsed() < RELOAD_CHECK {
                return;
            }
            *checked = Instant::now();
        }
        let (cert_path, key_path) = self
            .files
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let now = stamp(&cert_path, &key_path);
        if self.current.read().map(|c| c.0 == now).unwrap_or(true) {
            return;
        }
        match load(&cert_path, &key_path, &self.provider) {
            Ok(key) => {
                self.install(now, Arc::new(key));
                tracing::info!(cert = %cert_path.display(), "reloaded the TLS certificate");
            }
            Err(e) => {
                tracing::warn!(error = %e, "the TLS certificate files changed but cannot be used (yet); still serving the previous certificate");
            }
        }
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.reload_if_changed();
        self.current.read().ok().map(|c| c.1.clone())
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let c = std::fs::metadata(cert).ok()?;
    let k = std::fs::metadata(key).ok()?;
    Some((c.modified().ok()?, k.modified().ok()?, c.len(), k.len()))
}

fn load(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> std::result::Result<CertifiedKey, String> {
    let chain = read_certs(cert).map_err(|e| format!("certificate file {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "certificate file {} holds no certificate",
            cert.display()
        ));
    }
    let der = read_key(key).map_err(|e| format!("key file {e}"))?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        format!(
            "certificate {} and key {} do not form a usable pair: {e}",
            cert.display(),
            key.display()
        )
    })
}
