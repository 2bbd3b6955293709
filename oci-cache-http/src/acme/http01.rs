//! The HTTP-01 challenge listener: plain HTTP that answers
//! `GET /.well-known/acme-challenge/TOKEN` with the key authorization while
//! an order is validated, and 404 to everything else (the registry itself
//! is never served without TLS).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::RwLock;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;

/// The path prefix the CA fetches.
const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Pending HTTP-01 tokens and their key authorizations.
#[derive(Debug, Default)]
pub struct Http01Tokens {
    tokens: RwLock<HashMap<String, String>>,
}

impl Http01Tokens {
    pub(super) fn insert(&self, token: &str, key_authorization: &str) {
        if let Ok(mut tokens) = self.tokens.write() {
            tokens.insert(token.to_owned(), key_authorization.to_owned());
        }
    }

    pub(super) fn remove(&self, token: &str) {
        if let Ok(mut tokens) = self.tokens.write() {
            tokens.remove(token);
        }
    }

    /// The answer to a request for `path`: the key authorization of a
    /// pending token, else 404.
    pub fn answer(&self, method: &Method, path: &str) -> (StatusCode, String) {
        let token = path.strip_prefix(CHALLENGE_PREFIX);
        if method != Method::GET && method != Method::HEAD {
            return (StatusCode::METHOD_NOT_ALLOWED, String::new());
        }
        match token.and_then(|t| self.tokens.read().ok()?.get(t).cloned()) {
            Some(key_authorization) => (StatusCode::OK, key_authorization),
            None => (
                StatusCode::NOT_FOUND,
                "this port answers ACME HTTP-01 challenges only; the registry is served over HTTPS\n"
                    .to_owned(),
            ),
        }
    }
}

/// The plain HTTP listener of HTTP-01.
#[derive(Debug)]
pub struct Http01Listener;

impl Http01Listener {
    /// Answers challenges from `tokens` on `listener` until `shutdown`.
    pub async fn serve(
        listener: TcpListener,
        tokens: std::sync::Arc<Http01Tokens>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> crate::Result<()> {
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let (status, body) = tokens.answer(request.method(), request.uri().path());
            tracing::debug!(path = %request.uri().path(), %status, "ACME HTTP-01 request");
            let response = Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, "text/plain")
                .body(Full::new(Bytes::from(body)));
            async move {
                Ok::<_, Infallible>(
                    response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
                )
            }
        });
        crate::serve(listener, service, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pending_tokens_are_answered() {
        let tokens = Http01Tokens::default();
        tokens.insert("abc", "abc.thumb");
        assert_eq!(
            tokens.answer(&Method::GET, "/.well-known/acme-challenge/abc"),
            (StatusCode::OK, "abc.thumb".to_owned())
        );
        assert_eq!(
            tokens
                .answer(&Method::GET, "/.well-known/acme-challenge/other")
                .0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(tokens.answer(&Method::GET, "/v2/").0, StatusCode::NOT_FOUND);
        assert_eq!(
            tokens
                .answer(&Method::PUT, "/.well-known/acme-challenge/abc")
                .0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        tokens.remove("abc");
        assert_eq!(
            tokens
                .answer(&Method::GET, "/.well-known/acme-challenge/abc")
                .0,
            StatusCode::NOT_FOUND
        );
    }
}
