//! Talking to the CA: the account (created once, then restored from the
//! cache) and an order from new order to certificate chain.

use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use super::store::Store;
use super::{AcmeConfig, AcmeResolver, Challenge, Http01Tokens};
use crate::{Error, Result};

/// How long an order may take from the challenges being answered to the
/// certificate being issued.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// A signed-in ACME account.
#[derive(Clone)]
pub(super) struct Session {
    account: Account,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("account", &self.account.id())
            .finish()
    }
}

/// A certificate chain and its private key, in PEM.
#[derive(Debug)]
pub(super) struct Issued {
    pub(super) chain_pem: String,
    pub(super) key_pem: String,
}

fn unreachable(config: &AcmeConfig, e: &instant_acme::Error) -> Error {
    Error::Acme(format!(
        "cannot reach the ACME server at {}: {}; check the URL, the network and (for a private CA) ca_bundle, \
         or put a valid certificate in the cache directory {}",
        config.directory_url,
        error_chain(e),
        config.cache_dir.display()
    ))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    oci_cache_core::error::ErrorChain(e).to_string()
}

impl Session {
    /// Restores the cached account, or creates one (agreeing to the CA's
    /// terms of service, as configuring ACME asks for).
    pub(super) async fn sign_in(config: &AcmeConfig, store: &Store) -> Result<Self> {
        let builder = || {
            match &config.ca_bundle {
            Some(path) => Account::builder_with_root(path).map_err(|e| {
                Error::Acme(format!(
                    "ACME ca_bundle {}: {}; give a PEM file with the CA certificate of the ACME server",
                    path.display(),
                    error_chain(&e)
                ))
            }),
            None => Account::builder().map_err(|e| Error::Acme(error_chain(&e))),
        }
        };
        if let Some(json) = store.load_account() {
            match serde_json::from_str::<AccountCredentials>(&json) {
                Ok(credentials) => {
                    let account = builder()?
                        .from_credentials(credentials)
                        .await
                        .map_err(|e| unreachable(config, &e))?;
                    tracing::info!(account = %account.id(), "signed in to the ACME server with the cached account");
                    return Ok(Session { account });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the cached ACME account cannot be read; creating a new one")
                }
            }
        }
        let contact: Vec<String> = config
            .contact
            .iter()
            .map(|c| {
                if c.contains(':') {
                    c.clone()
                } else {
                    format!("mailto:{c}")
                }
            })
            .collect();
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                config.directory_url.clone(),
                None,
            )
            .await
            .map_err(|e| unreachable(config, &e))?;
        let json = serde_json::to_string(&credentials)
            .map_err(|e| Error::Acme(format!("cannot store the ACME account: {e}")))?;
        store.save_account(&json)?;
        tracing::info!(account = %account.id(), "created an ACME account");
        Ok(Session { account })
    }

    /// Orders a certificate for the configured names, answering the
    /// configured challenge through `resolver` or `tokens`.
    pub(super) async fn order(
        &self,
        config: &AcmeConfig,
        resolver: &AcmeResolver,
        tokens: &Http01Tokens,
    ) -> Result<Issued> {
        let failed = |step: &str, e: instant_acme::Error| {
            Error::Acme(format!(
                "ordering a certificate for {} from {} failed while {step}: {}",
                config.domains.join(", "),
                config.directory_url,
                error_chain(&e)
            ))
        };
        let identifiers: Vec<Identifier> = config
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        tracing::info!(domains = %config.domains.join(","), challenge = %config.challenge, "ordering an ACME certificate");
        let mut order = self
            .account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| failed("creating the order", e))?;
        let mut answered: Vec<(String, Option<String>)> = Vec::new();
        let mut authorizations = order.authorizations();
        let mut outcome = Ok(());
        while let Some(result) = authorizations.next().await {
            let mut authz = match result {
                Ok(authz) => authz,
                Err(e) => {
                    outcome = Err(failed("reading an authorization", e));
                    break;
                }
            };
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    outcome = Err(Error::Acme(format!(
                        "the ACME server says the authorization for {} is {other:?}",
                        authz.identifier()
                    )));
                    break;
                }
            }
            let kind = match config.challenge {
                Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
                Challenge::Http01 => ChallengeType::Http01,
            };
            let Some(mut challenge) = authz.challenge(kind) else {
                outcome = Err(Error::Acme(format!(
                    "the ACME server offers no {} challenge; choose another challenge",
                    config.challenge
                )));
                break;
            };
            let domain = challenge.identifier().to_string();
            let key_authorization = challenge.key_authorization();
            match config.challenge {
                Challenge::TlsAlpn01 => {
                    if let Err(e) =
                        resolver.set_challenge(&domain, key_authorization.digest().as_ref())
                    {
                        outcome = Err(e);
                        break;
                    }
                    answered.push((domain, None));
                }
                Challenge::Http01 => {
                    tokens.insert(&challenge.token, key_authorization.as_str());
                    answered.push((domain, Some(challenge.token.clone())));
                }
            }
            if let Err(e) = challenge.set_ready().await {
                outcome = Err(failed("telling the server the challenge is ready", e));
                break;
            }
        }
        let issued = match outcome {
            Ok(()) => finish(&mut order, &failed).await,
            Err(e) => Err(e),
        };
        for (domain, token) in answered {
            match token {
                Some(token) => tokens.remove(&token),
                None => resolver.clear_challenge(&domain),
            }
        }
        issued
    }
}

async fn finish(
    order: &mut instant_acme::Order,
    failed: &impl Fn(&str, instant_acme::Error) -> Error,
) -> Result<Issued> {
    let retries = RetryPolicy::new().timeout(ORDER_TIMEOUT);
    let status = order
        .poll_ready(&retries)
        .await
        .map_err(|e| failed("waiting for the challenges to be validated", e))?;
    if status != OrderStatus::Ready {
        return Err(Error::Acme(format!(
            "the ACME server did not validate the challenge (order {status:?}); check that the \
             names resolve to this host and the challenge port reaches this process"
        )));
    }
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| failed("finalizing the order", e))?;
    let chain_pem = order
        .poll_certificate(&retries)
        .await
        .map_err(|e| failed("downloading the certificate", e))?;
    tracing::info!("the ACME server issued the certificate");
    Ok(Issued { chain_pem, key_pem })
}
