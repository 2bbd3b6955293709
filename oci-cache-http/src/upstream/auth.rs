//! Upstream authentication: `WWW-Authenticate` parsing (RFC 7235), the
//! bearer token request and a token cache.
//!
//! Tokens are cached per (realm, service, scope, credential) until 90 % of
//! their lifetime, as containerd does, so a long pull refreshes its token
//! before the registry starts refusing it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use oci_cache_core::mirror::Credentials;

use crate::wire::encode_query;

/// Lifetime assumed when the token response does not say (the spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// Lower-cased scheme (`bearer`, `basic`).
    pub(crate) scheme: String,
    /// Parameters with lower-cased names, values unquoted.
    pub(crate) params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of parameter `name` (lower case).
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn skip_ws(bytes: &[u8], i: &mut usize) {
    while bytes.get(*i).is_some_and(|b| *b == b' ' || *b == b'\t') {
        *i += 1;
    }
}

fn token(bytes: &[u8], i: &mut usize) -> String {
    let start = *i;
    while bytes.get(*i).copied().is_some_and(is_tchar) {
        *i += 1;
    }
    String::from_utf8_lossy(bytes.get(start..*i).unwrap_or_default()).into_owned()
}

/// A quoted-string starting at `bytes[*i] == '"'`, with `\` escapes.
fn quoted(bytes: &[u8], i: &mut usize) -> String {
    let mut out = Vec::new();
    *i += 1;
    while let Some(&b) = bytes.get(*i) {
        *i += 1;
        match b {
            b'"' => break,
            b'\\' => {
                if let Some(&escaped) = bytes.get(*i) {
                    out.push(escaped);
                    *i += 1;
                }
            }
            _ => out.push(b),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses every challenge of a `WWW-Authenticate` value. Commas inside quoted
/// strings (several scopes, `error_description`) are kept.
pub(crate) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let bytes = header.as_bytes();
    let mut i = 0;
    let mut challenges = Vec::new();
    while i < bytes.len() {
        while bytes
            .get(i)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b','))
        {
            i += 1;
        }
        let scheme = token(bytes, &mut i);
        if scheme.is_empty() {
            // Not a token: skip the byte so malformed input cannot loop forever.
            i += 1;
            continue;
        }
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        loop {
            skip_ws(bytes, &mut i);
            let start = i;
            let name = token(bytes, &mut i);
            skip_ws(bytes, &mut i);
            if name.is_empty() || bytes.get(i) != Some(&b'=') {
                // The next challenge's scheme (or the end): leave it for the outer loop.
                i = start;
                break;
            }
            i += 1;
            skip_ws(bytes, &mut i);
            let value = if bytes.get(i) == Some(&b'"') {
                quoted(bytes, &mut i)
            } else {
                // Lenient: registries send unquoted URLs, which are not RFC tokens.
                let start = i;
                while bytes
                    .get(i)
                    .is_some_and(|b| !matches!(b, b',' | b' ' | b'\t'))
                {
                    i += 1;
                }
                String::from_utf8_lossy(bytes.get(start..i).unwrap_or_default()).into_owned()
            };
            challenge.params.push((name.to_ascii_lowercase(), value));
            skip_ws(bytes, &mut i);
            if bytes.get(i) == Some(&b',') {
                i += 1;
            } else {
                break;
            }
        }
        challenges.push(challenge);
    }
    challenges
}

/// The challenge to answer: Bearer if offered, else Basic.
pub(crate) fn pick_challenge(challenges: Vec<Challenge>) -> Option<Challenge> {
    let mut basic = None;
    for c in challenges {
        match c.scheme.as_str() {
            "bearer" if c.param("realm").is_some() => return Some(c),
            "basic" => basic = Some(c),
            _ => {}
        }
    }
    basic
}

/// `Basic <base64(user:password)>`.
pub(crate) fn basic_header(credentials: &Credentials) -> String {
    let raw = format!("{}:{}", credentials.username, credentials.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The token endpoint URL: `realm?service=…&scope=…`.
pub(crate) fn token_url(realm: &str, service: Option<&str>, scope: &str) -> String {
    let mut url = realm.to_owned();
    let mut sep = if realm.contains('?') { '&' } else { '?' };
    if let Some(service) = service {
        url.push(sep);
        url.push_str("service=");
        url.push_str(&encode_query(service));
        sep = '&';
    }
    url.push(sep);
    url.push_str("scope=");
    url.push_str(&encode_query(scope));
    url
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The token and its lifetime from a token endpoint's JSON, or `None` when it has no token.
pub(crate) fn parse_token_response(body: &[u8]) -> Option<(String, Duration)> {
    let parsed: TokenResponse = serde_json::from_slice(body).ok()?;
    // containerd prefers access_token when both are present.
    let token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .or(parsed.token.filter(|t| !t.is_empty()))?;
    let lifetime = parsed
        .expires_in
        .filter(|s| *s > 0)
        .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
    Some((token, lifetime))
}

/// What a cached token was issued for.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct TokenKey {
    pub(crate) realm: String,
    pub(crate) service: Option<String>,
    pub(crate) scope: String,
    /// `user:password`, so that different credentials never share a token.
    pub(crate) credential: Option<String>,
}

/// Bearer tokens by [`TokenKey`], plus the last challenge seen per host so
/// later requests can fetch a token before being refused.
#[derive(Default)]
pub(crate) struct AuthCache {
    tokens: Mutex<HashMap<TokenKey, (String, Instant)>>,
    challenges: Mutex<HashMap<String, Challenge>>,
}

impl std::fmt::Debug for AuthCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.tokens.lock().map(|t| t.len()).unwrap_or(0);
        f.debug_struct("AuthCache")
            .field("tokens", &format_args!("<redacted; {entries} cached>"))
            .finish_non_exhaustive()
    }
}

impl AuthCache {
    /// A token still inside 90 % of its lifetime.
    pub(crate) fn token(&self, key: &TokenKey) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        tokens
            .get(key)
            .filter(|(_, expiry)| *expiry > Instant::now())
            .map(|(token, _)| token.clone())
    }

    /// Stores a token valid for `lifetime` (trusted for 90 % of it).
    pub(crate) fn put_token(&self, key: TokenKey, token: String, lifetime: Duration) {
        let expiry = Instant::now() + lifetime.mul_f64(0.9);
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.retain(|_, (_, e)| *e > Instant::now());
            tokens.insert(key, (token, expiry));
        }
    }

    /// Forgets a token the registry refused.
    pub(crate) fn drop_token(&self, key: &TokenKey) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(key);
        }
    }

    /// The last challenge `origin` (`scheme://authority`) sent.
    pub(crate) fn challenge(&self, origin: &str) -> Option<Challenge> {
        self.challenges.lock().ok()?.get(origin).cloned()
    }

    /// Remembers `origin`'s challenge.
    pub(crate) fn put_challenge(&self, origin: &str, challenge: Challenge) {
        if let Ok(mut challenges) = self.challenges.lock() {
            challenges.insert(origin.to_owned(), challenge);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn docker_hub_challenge() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/ubuntu:pull"));
    }

    #[test]
    fn quoted_commas_escapes_and_several_challenges() {
        let c = parse_challenges(
            "Basic realm=\"a, \\\"b\\\"\" , BEARER Realm=https://t/x, scope=\"repository:a:pull,push repository:b:pull\", error=insufficient_scope",
        );
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("a, \"b\""));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("https://t/x"));
        assert_eq!(
            c[1].param("scope"),
            Some("repository:a:pull,push repository:b:pull")
        );
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
        assert_eq!(pick_challenge(c).unwrap().scheme, "bearer");
    }

    #[test]
    fn malformed_challenges_do_not_panic() {
        for text in [
            "",
            ",,,",
            "Bearer",
            "Bearer realm=",
            "Bearer realm=\"unterminated",
            "=\"x\"",
            "@@@",
        ] {
            let _ = parse_challenges(text);
        }
        assert_eq!(parse_challenges("Bearer")[0].params, vec![]);
        assert!(pick_challenge(parse_challenges("Bearer service=x")).is_none());
    }

    #[test]
    fn token_requests_and_responses() {
        assert_eq!(
            token_url("https://auth.docker.io/token", Some("registry.docker.io"), "repository:library/ubuntu:pull"),
            "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Fubuntu%3Apull"
        );
        assert_eq!(
            token_url("http://t/x?a=1", None, "s"),
            "http://t/x?a=1&scope=s"
        );
        assert_eq!(
            parse_token_response(br#"{"token":"a","access_token":"b","expires_in":300}"#),
            Some(("b".into(), Duration::from_secs(300)))
        );
        assert_eq!(
            parse_token_response(br#"{"token":"a"}"#),
            Some(("a".into(), Duration::from_secs(60)))
        );
        assert_eq!(parse_token_response(br#"{"expires_in":1}"#), None);
        assert_eq!(parse_token_response(b"not json"), None);
        let creds = Credentials {
            username: "user".into(),
            password: "pass".into(),
        };
        assert_eq!(basic_header(&creds), "Basic dXNlcjpwYXNz");
    }

    #[test]
    fn token_cache_expires_and_redacts() {
        let cache = AuthCache::default();
        let key = TokenKey {
            realm: "r".into(),
            service: None,
            scope: "s".into(),
            credential: Some("u:secret".into()),
        };
        cache.put_token(key.clone(), "tok-secret".into(), Duration::from_secs(100));
        assert_eq!(cache.token(&key).as_deref(), Some("tok-secret"));
        let other = TokenKey {
            credential: None,
            ..key.clone()
        };
        assert_eq!(cache.token(&other), None);
        cache.put_token(other.clone(), "t".into(), Duration::ZERO);
        assert_eq!(cache.token(&other), None);
        let debug = format!("{cache:?}");
        assert!(!debug.contains("secret"), "{debug}");
        cache.drop_token(&key);
        assert_eq!(cache.token(&key), None);
    }
}
