//! One authenticated request to one endpoint: `401` challenges answered
//! with a bearer token or basic credentials, and the final status classified.

use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Response, StatusCode, Uri};
use hyper::body::Incoming;
use oci_cache_core::{UpstreamError, UpstreamErrorKind};

use super::auth::{self, Challenge, TokenKey};
use super::chain::Target;
use super::transport::origin_of;
use super::trust::{self, Purpose};
use super::{breaker, CoreResult, HyperUpstream};

impl HyperUpstream {
    /// One request to one endpoint, authenticated as the endpoint demands;
    /// a non-2xx final status becomes a classified error.
    pub(super) async fn send(
        &self,
        target: &Target<'_>,
        method: Method,
        url: &str,
        accept: Option<&str>,
        scope: &str,
        purpose: Purpose,
    ) -> CoreResult<Response<Incoming>> {
        let no_headers = HeaderMap::new();
        self.send_with(target, method, url, accept, scope, purpose, &no_headers)
            .await
    }

    /// [`send`](Self::send) with `headers` on every request (and redirect)
    /// of the exchange: a blob's `Range` and `If-Range`.
    #[allow(clippy::too_many_arguments)] // send's arguments and the headers
    pub(super) async fn send_with(
        &self,
        target: &Target<'_>,
        method: Method,
        url: &str,
        accept: Option<&str>,
        scope: &str,
        purpose: Purpose,
        headers: &HeaderMap,
    ) -> CoreResult<Response<Incoming>> {
        let endpoint = target.endpoint;
        // Invalid (not Config) so that one mistyped mirror does not block the origin.
        let uri: Uri = url.parse().map_err(|_| {
            UpstreamError::new(
                UpstreamErrorKind::Invalid,
                &endpoint.url,
                format!("invalid request url {url:?}; fix the endpoint url in the configuration"),
            )
        })?;
        let origin = origin_of(&uri);
        // A remembered challenge that cannot be answered now (refused realm,
        // token server down) must not block the host: go without, and let a
        // fresh 401 decide.
        let mut authorization = match self.auth.challenge(&origin) {
            Some(challenge) => self
                .authorize(&challenge, target, scope, false)
                .await
                .unwrap_or_else(|e| {
                    tracing::debug!(endpoint = %endpoint.url, error = %e, "could not pre-authorize");
                    None
                }),
            None => None,
        };
        let mut retried = false;
        loop {
            let response = self
                .follow(
                    target,
                    purpose,
                    method.clone(),
                    uri.clone(),
                    accept,
                    authorization.as_deref(),
                    &endpoint.url,
                    headers,
                )
                .await?;
            if response.status() == StatusCode::UNAUTHORIZED && !retried {
                retried = true;
                let challenge = response
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(auth::parse_challenges)
                    .collect::<Vec<_>>();
                if let Some(challenge) = auth::pick_challenge(challenge) {
                    // The 401 gives its budget permit back before the token
                    // request takes one: holding both could use up the budget.
                    let unauthorized = check_status(response, &endpoint.url);
                    let refreshed = self.authorize(&challenge, target, scope, true).await?;
                    // Remembered only once answerable, so a bad realm is not
                    // retried before every later request.
                    self.auth.put_challenge(&origin, challenge);
                    if refreshed.is_some() {
                        authorization = refreshed;
                        continue;
                    }
                    return unauthorized;
                }
            }
            return check_status(response, &endpoint.url);
        }
    }

    /// The `Authorization` value answering `challenge`, fetching a bearer
    /// token when none is cached (or when `refresh` says the cached one was refused).
    pub(super) async fn authorize(
        &self,
        challenge: &Challenge,
        target: &Target<'_>,
        scope: &str,
        refresh: bool,
    ) -> CoreResult<Option<String>> {
        let endpoint = target.endpoint;
        let credentials = endpoint.credentials.as_ref();
        if challenge.scheme == "basic" {
            return Ok(credentials.map(auth::basic_header));
        }
        let Some(realm) = challenge.param("realm") else {
            return Ok(None);
        };
        let key = TokenKey {
            realm: realm.to_owned(),
            service: challenge.param("service").map(str::to_owned),
            scope: scope.to_owned(),
            credential: credentials.map(|c| format!("{}:{}", c.username, c.password)),
        };
        if refresh {
            self.auth.drop_token(&key);
        } else if let Some(token) = self.auth.token(&key) {
            return Ok(Some(format!("Bearer {token}")));
        }
        let url = auth::token_url(realm, key.service.as_deref(), scope);
        let uri: Uri = url.parse().map_err(|_| {
            UpstreamError::new(
                UpstreamErrorKind::Invalid,
                &endpoint.url,
                format!("token realm {realm:?} is not a valid url"),
            )
        })?;
        if let Err(refusal) = trust::check(endpoint, Purpose::Realm, &uri, credentials.is_some()) {
            self.refusals.refused(
                &self.observer,
                endpoint,
                Purpose::Realm,
                &trust::host_of(&uri),
                &refusal,
            );
            return Err(UpstreamError::new(
                UpstreamErrorKind::Invalid,
                &endpoint.url,
                format!("token realm {realm:?} refused: {}", refusal.0),
            )
            .into());
        }
        let basic = credentials.map(auth::basic_header);
        let response = self
            .follow(
                target,
                Purpose::Realm,
                Method::GET,
                uri,
                None,
                basic.as_deref(),
                realm,
                &HeaderMap::new(),
            )
            .await?;
        let response = check_status(response, realm)?;
        let body = self
            .read_body(response, 64 * 1024, realm, "token response")
            .await?;
        let (token, lifetime) = auth::parse_token_response(&body).ok_or_else(|| {
            UpstreamError::new(
                UpstreamErrorKind::Invalid,
                realm,
                "token endpoint answered without a token",
            )
        })?;
        tracing::debug!(
            realm,
            scope,
            lifetime_s = lifetime.as_secs(),
            "fetched a registry token"
        );
        self.auth.put_token(key, token.clone(), lifetime);
        Ok(Some(format!("Bearer {token}")))
    }
}

/// 2xx passes; anything else becomes the matching [`UpstreamErrorKind`].
pub(super) fn check_status(
    response: Response<Incoming>,
    endpoint: &str,
) -> CoreResult<Response<Incoming>> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let kind = match status.as_u16() {
        404 => UpstreamErrorKind::NotFound,
        401 => UpstreamErrorKind::Unauthorized,
        403 => UpstreamErrorKind::Denied,
        429 => UpstreamErrorKind::TooManyRequests,
        408 => UpstreamErrorKind::Timeout,
        500..=599 => UpstreamErrorKind::Unavailable,
        _ => UpstreamErrorKind::Invalid,
    };
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| breaker::parse_retry_after(v, std::time::SystemTime::now()))
        // Passed on to clients: capped like the mirror's own back-off, so a
        // registry cannot tell every client to go away for a year.
        .map(|d| d.min(breaker::MAX_RETRY_AFTER));
    Err(
        UpstreamError::new(kind, endpoint, format!("answered {status}"))
            .with_retry_after(retry_after)
            .into(),
    )
}
