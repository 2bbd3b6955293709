//! Certificates from an ACME (RFC 8555) certificate authority such as Let's
//! Encrypt, without manual work: the account, the certificate and its key
//! are kept in a cache directory (files readable by the owner only), loaded
//! at start while still valid, and renewed in the background before they
//! expire; a renewed certificate is swapped into [`AcmeResolver`] for new
//! handshakes, without a restart.
//!
//! Two challenges prove control of the names:
//! - TLS-ALPN-01 (RFC 8737): the CA connects to port 443 of each name with
//!   the `acme-tls/1` protocol; the mirror's own TLS listener answers with a
//!   challenge certificate ([`AcmeResolver`] serves it).
//! - HTTP-01: the CA fetches `http://NAME/.well-known/acme-challenge/TOKEN`
//!   on port 80; [`Http01Listener`] answers it (and nothing else) on a plain
//!   HTTP listener of its own, so the registry is never served unencrypted.
//!
//! [`Acme::start`] refuses to go on without a certificate it can serve: a
//! cached valid one, or an ACME server it can reach to order one.

mod http01;
mod issue;
mod resolver;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use http01::{Http01Listener, Http01Tokens};
pub use resolver::{AcmeResolver, ACME_TLS_ALPN};
pub use store::Validity;

use crate::{Error, Result};

/// Let's Encrypt's production directory, the default CA.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The longest single wait for the renewal time.
const RECHECK: Duration = Duration::from_secs(86_400);

/// How long to wait before trying again after a failed renewal.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(3600);

/// The challenge the CA is asked to validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// TLS-ALPN-01, answered by the TLS listener itself (port 443 to the CA).
    TlsAlpn01,
    /// HTTP-01, answered on a plain HTTP listener (port 80 to the CA).
    Http01,
}

impl std::fmt::Display for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Http01 => "http-01",
        })
    }
}

/// What to ask which CA for, and where to keep the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory_url: String,
    /// Contact addresses for the account (`mailto:` is added to a bare address).
    pub contact: Vec<String>,
    /// DNS names the certificate is for (the first is its subject).
    pub domains: Vec<String>,
    /// The challenge to answer.
    pub challenge: Challenge,
    /// Where the HTTP-01 listener binds (unused for TLS-ALPN-01).
    pub http01_listen: SocketAddr,
    /// Directory of the account and certificate files.
    pub cache_dir: PathBuf,
    /// PEM certificate of a CA to trust for the ACME server's own HTTPS
    /// (a private or test CA); the system's roots otherwise.
    pub ca_bundle: Option<PathBuf>,
    /// Renew this long before expiry; `None`: after two thirds of the
    /// certificate's lifetime.
    pub renew_before: Option<Duration>,
}

/// A running ACME certificate: its resolver for the TLS listener, and the
/// HTTP-01 tokens when that challenge is used.
#[derive(Debug, Clone)]
pub struct Acme {
    config: Arc<AcmeConfig>,
    resolver: Arc<AcmeResolver>,
    tokens: Arc<Http01Tokens>,
    account: Option<issue::Session>,
}

impl Acme {
    /// Loads the cached certificate if it is still valid for the configured
    /// names; without one, signs in to the CA (creating the account on first
    /// use), so that an unreachable CA fails the start here. The
    /// certificate itself is ordered by [`Acme::ensure_certificate`] once the
    /// challenge listener is up.
    pub async fn start(config: AcmeConfig) -> Result<Self> {
        if config.domains.is_empty() {
            return Err(Error::Acme(
                "no domain names to order a certificate for".to_owned(),
            ));
        }
        // The ACME client builds its rustls config from the process-wide
        // provider, which rustls cannot pick itself when both ring and
        // aws-lc-rs are in the build (the S3 client brings the latter).
        // Ours is ring everywhere; an embedder's own choice stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = store::Store::new(&config);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = Arc::new(AcmeResolver::new(provider));
        let cached = store.load_certificate(&config.domains, SystemTime::now());
        let account = match &cached {
            Some(cached) => {
                tracing::info!(
                    cache = %store.dir().display(),
                    not_after = ?cached.validity.not_after,
                    "using the cached ACME certificate"
                );
                resolver.set_certificate(&cached.chain_pem, &cached.key_pem)?;
                None
            }
            None => Some(issue::Session::sign_in(&config, &store).await?),
        };
        Ok(Acme {
            config: Arc::new(config),
            resolver,
            tokens: Arc::new(Http01Tokens::default()),
            account,
        })
    }

    /// The certificate resolver for the TLS listener.
    pub fn resolver(&self) -> Arc<AcmeResolver> {
        Arc::clone(&self.resolver)
    }

    /// The configuration.
    pub fn config(&self) -> &AcmeConfig {
        &self.config
    }

    /// The tokens the HTTP-01 listener answers.
    pub fn http01_tokens(&self) -> Arc<Http01Tokens> {
        Arc::clone(&self.tokens)
    }

    /// Orders a certificate now when none was cached (the challenge
    /// listener must be up: the CA connects to it during the order).
    pub async fn ensure_certificate(&mut self) -> Result<()> {
        if self.resolver.has_certificate() {
            return Ok(());
        }
        let session = match self.account.take() {
            Some(session) => session,
            None => issue::Session::sign_in(&self.config, &store::Store::new(&self.config)).await?,
        };
        let result = self.order(&session).await;
        self.account = Some(session);
        result
    }

    async fn order(&self, session: &issue::Session) -> Result<()> {
        let store = store::Store::new(&self.config);
        let issued = session
            .order(&self.config, &self.resolver, &self.tokens)
            .await?;
        store.save_certificate(&issued.chain_pem, &issued.key_pem)?;
        self.resolver
            .set_certificate(&issued.chain_pem, &issued.key_pem)?;
        Ok(())
    }

    /// Renews the certificate in the background before it expires, until
    /// the process ends. A failed renewal is retried hourly while the
    /// current certificate keeps being served.
    pub fn spawn_renewal(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let wait = self.until_renewal();
                if !wait.is_zero() {
                    tracing::debug!(in_seconds = wait.as_secs(), "next ACME renewal");
                    // In steps: tokio's timer does not take years, and a
                    // clock step is noticed within a day.
                    tokio::time::sleep(wait.min(RECHECK)).await;
                    continue;
                }
                let attempt = async {
                    let session = match self.account.take() {
                        Some(session) => session,
                        None => {
                            issue::Session::sign_in(&self.config, &store::Store::new(&self.config))
                                .await?
                        }
                    };
                    let result = self.order(&session).await;
                    self.account = Some(session);
                    result
                };
                match attempt.await {
                    Ok(()) => tracing::info!("renewed the ACME certificate"),
                    Err(e) => {
                        tracing::warn!(error = %e, "ACME renewal failed; still serving the current certificate, retrying in an hour");
                        tokio::time::sleep(RETRY_AFTER_FAILURE).await;
                    }
                }
            }
        })
    }

    fn until_renewal(&self) -> Duration {
        match self.resolver.validity() {
            Some(validity) => validity
                .renew_at(self.config.renew_before)
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            None => Duration::ZERO,
        }
    }
}
