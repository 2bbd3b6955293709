//! Per-endpoint TLS: a custom CA file (added to the system roots), a client
//! certificate for mTLS, and skipping verification — each set explicitly in
//! the endpoint's [`EndpointTls`].

use std::sync::Arc;

use oci_cache_core::mirror::EndpointTls;
use oci_cache_core::Error as CoreError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::pem::{read_certs, read_key};

/// The rustls configuration for an endpoint at `url` with settings `tls`.
/// Errors name the endpoint, the setting and the file.
pub(crate) fn client_config(
    tls: &EndpointTls,
    url: &str,
    provider: Arc<CryptoProvider>,
) -> crate::Result<ClientConfig> {
    let bad =
        |what: String| crate::Error::Core(CoreError::Config(format!("endpoint {url}: {what}")));
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("no usable TLS versions: {e}")))?;
    let builder = if tls.insecure_skip_verify {
        tracing::warn!(
            endpoint = url,
            "tls.insecure_skip_verify is set: the server certificate is not checked"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LeafCheck {
                provider,
                pinned: None,
            }))
    } else {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if let Some(ca_file) = &tls.ca_file {
            let certs = read_certs(ca_file).map_err(|e| bad(format!("tls.ca_file {e}")))?;
            let (ca_added, _) = roots.add_parsable_certificates(certs);
            if ca_added == 0 {
                return Err(bad(format!(
                    "tls.ca_file {} holds no usable CA certificate; give a PEM file with at least one",
                    ca_file.display()
                )));
            }
        } else if added == 0 {
            return Err(bad(
                "no system root certificates found; install ca-certificates or set tls.ca_file"
                    .to_owned(),
            ));
        }
        builder.with_root_certificates(roots)
    };
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert).map_err(|e| bad(format!("tls.client_cert {e}")))?;
            if chain.is_empty() {
                return Err(bad(format!(
                    "tls.client_cert {} holds no certificate; give a PEM certificate chain",
                    cert.display()
                )));
            }
            let key = read_key(key).map_err(|e| bad(format!("tls.client_key {e}")))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                bad(format!(
                    "tls.client_cert/client_key do not fit together: {e}"
                ))
            })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(bad(
            "tls.client_cert and tls.client_key must be set together".to_owned(),
        )),
    }
}

/// A client configuration that accepts a server only when it presents
/// exactly `leaf` (and proves it holds its key), whatever its names and
/// issuer: for probing our own TLS listener (see
/// [`tls_server::client_trusting`](crate::tls_server::client_trusting)).
pub(crate) fn pinned(leaf: CertificateDer<'static>) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(LeafCheck {
        provider: Arc::clone(&provider),
        pinned: Some(leaf),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("no usable TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts one given server certificate, or with `pinned: None` any
/// (`insecure_skip_verify`); signatures are checked either way, so the
/// handshake stays well-formed.
#[derive(Debug)]
struct LeafCheck {
    provider: Arc<CryptoProvider>,
    pinned: Option<CertificateDer<'static>>,
}

impl ServerCertVerifier for LeafCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pinned {
            Some(leaf) if leaf.as_ref() != end_entity.as_ref() => Err(rustls::Error::General(
                "the server presented a certificate other than the one in its certificate file"
                    .to_owned(),
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
