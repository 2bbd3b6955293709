//! [`AcmeResolver`]: the serving certificate an ACME order produced, and
//! the TLS-ALPN-01 challenge certificates while an order is validated.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::store::{first_certificate, inspect, Validity};
use crate::{Error, Result};

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737): a handshake offering it is
/// the CA validating a challenge, never a client.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Resolves the serving certificate for new handshakes; swapped in place on
/// renewal. A handshake that offers `acme-tls/1` gets the challenge
/// certificate of the name it asks for, or fails when none is pending.
#[derive(Debug)]
pub struct AcmeResolver {
    provider: Arc<CryptoProvider>,
    current: RwLock<Option<(Validity, Arc<CertifiedKey>)>>,
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl AcmeResolver {
    pub(super) fn new(provider: Arc<CryptoProvider>) -> Self {
        AcmeResolver {
            provider,
            current: RwLock::new(None),
            challenges: RwLock::new(HashMap::new()),
        }
    }

    /// Whether a serving certificate is loaded.
    pub fn has_certificate(&self) -> bool {
        self.current.read().map(|c| c.is_some()).unwrap_or(false)
    }

    /// Validity of the serving certificate.
    pub fn validity(&self) -> Option<Validity> {
        self.current.read().ok()?.as_ref().map(|(v, _)| *v)
    }

    /// Serves `chain_pem` with `key_pem` from the next handshake on.
    pub(super) fn set_certificate(&self, chain_pem: &str, key_pem: &str) -> Result<()> {
        let bad = |what: String| {
            Error::Acme(format!(
                "the ACME certificate cannot be used: {what}; delete the ACME cache directory to order a new one"
            ))
        };
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let leaf = first_certificate(chain_pem)
            .ok_or_else(|| bad("no certificate in the chain".to_owned()))?;
        let (validity, _) = inspect(&leaf).map_err(bad)?;
        let certified =
            CertifiedKey::from_der(chain, key, &self.provider).map_err(|e| bad(e.to_string()))?;
        if let Ok(mut current) = self.current.write() {
            *current = Some((validity, Arc::new(certified)));
        }
        Ok(())
    }

    /// Answers TLS-ALPN-01 for `domain` with `key_authorization_digest`
    /// (the SHA-256 of the key authorization) until [`Self::clear_challenge`].
    pub(super) fn set_challenge(
        &self,
        domain: &str,
        key_authorization_digest: &[u8],
    ) -> Result<()> {
        let fail = |e: rcgen::Error| {
            Error::Acme(format!(
                "cannot make the TLS-ALPN-01 certificate for {domain}: {e}"
            ))
        };
        let key = rcgen::KeyPair::generate().map_err(fail)?;
        let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(fail)?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(
            key_authorization_digest,
        )];
        let cert = params.self_signed(&key).map_err(fail)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        // Not `CertifiedKey::from_der`: its key check parses the certificate
        // with webpki, which rejects the critical acmeIdentifier extension.
        let signing_key = self
            .provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| Error::Acme(format!("the TLS-ALPN-01 key for {domain}: {e}")))?;
        let certified = CertifiedKey::new(vec![cert.der().clone()], signing_key);
        if let Ok(mut challenges) = self.challenges.write() {
            challenges.insert(domain.to_ascii_lowercase(), Arc::new(certified));
        }
        Ok(())
    }

    /// Stops answering TLS-ALPN-01 for `domain`.
    pub(super) fn clear_challenge(&self, domain: &str) {
        if let Ok(mut challenges) = self.challenges.write() {
            challenges.remove(&domain.to_ascii_lowercase());
        }
    }
}

impl ResolvesServerCert for AcmeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validating = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if validating {
            let name = hello.server_name()?.to_ascii_lowercase();
            let challenge = self.challenges.read().ok()?.get(&name).cloned();
            if challenge.is_none() {
                tracing::debug!(domain = %name, "acme-tls/1 handshake without a pending challenge");
            }
            return challenge;
        }
        self.current
            .read()
            .ok()?
            .as_ref()
            .map(|(_, key)| Arc::clone(key))
    }
}
