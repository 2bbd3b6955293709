//! `GET /client-config/<kind>[?mirror=URL]`: the client configuration that
//! points a runtime at this mirror, as `oci-cache client-config KIND` prints
//! it. The generator belongs to whoever embeds the mirror (it knows the
//! configuration files); it is installed as a [`ClientConfigRenderer`] with
//! [`MirrorBuilder::client_config`](crate::MirrorBuilder::client_config),
//! and without one the path is unknown (404).
//!
//! The mirror URL written into the files is `mirror=`, or else the
//! request's own origin (`Host`, and the scheme the renderer says the
//! listeners speak). Either must be a bare `http(s)://host[:port]` of plain
//! host characters: it ends up inside TOML, YAML and shell text, so nothing
//! that could break out of a quoted string or a line is accepted.

use std::sync::Arc;

use http::{header, Response, StatusCode};
use oci_cache_core::reference::Registry;

use super::RequestInfo;
use crate::body::Body;
use crate::error::{OciError, OciErrorCode};
use crate::listening::ListenerUpstream;
use crate::response::with_body;
use crate::wire::query_param;

/// The path prefix; the kind follows.
pub(crate) const CLIENT_CONFIG_PATH: &str = "/client-config/";

/// What the renderer is asked for.
#[derive(Debug, Clone, Copy)]
pub struct ClientConfigRequest<'a> {
    /// The client kind from the path (`containerd`, `docker`, …), unchecked.
    pub kind: &'a str,
    /// The mirror as clients reach it: `http(s)://host[:port]`, validated.
    pub mirror: &'a str,
    /// The default upstream of the listener the request arrived on, when
    /// that listener has its own.
    pub listener_upstream: Option<&'a Registry>,
}

/// Why the renderer gives no configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientConfigRefusal {
    /// No such client kind (404); the message lists the known ones.
    UnknownKind(String),
    /// The kind cannot be pointed at this mirror as configured (409), e.g.
    /// Docker on a mirror whose default upstream is not docker.io.
    Unusable(String),
}

/// Renders client configuration for the mirror's real upstreams.
pub trait ClientConfigRenderer: Send + Sync + std::fmt::Debug {
    /// The configuration text for `request`.
    fn render(&self, request: &ClientConfigRequest<'_>) -> Result<String, ClientConfigRefusal>;

    /// True when the listeners speak TLS (the scheme of a URL made from `Host`).
    fn serves_tls(&self) -> bool {
        false
    }
}

/// The renderer as the service holds it.
pub(crate) type SharedRenderer = Arc<dyn ClientConfigRenderer>;

fn bad_request(message: String) -> OciError {
    OciError::new(StatusCode::BAD_REQUEST, OciErrorCode::Unsupported, message)
}

/// `host[:port]`: letters, digits, `.`, `-`, `:` and the brackets of an
/// IPv6 literal, nothing else.
fn valid_authority(authority: &str) -> bool {
    !authority.is_empty()
        && authority.len() <= 255
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        && !authority.starts_with([':', '.', '-'])
}

/// `mirror=` checked: `http(s)://host[:port]` with an optional trailing `/`.
pub(crate) fn parse_mirror(text: &str) -> Result<String, OciError> {
    let refuse = || {
        bad_request(format!(
            "mirror={text:?}: give the mirror as clients reach it, a bare origin such as http://10.0.0.5:5000 or https://mirror.example (no path, query, credentials or spaces)"
        ))
    };
    let (scheme, rest) = text.split_once("://").ok_or_else(refuse)?;
    if scheme != "http" && scheme != "https" {
        return Err(refuse());
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if !valid_authority(authority) {
        return Err(refuse());
    }
    Ok(format!("{scheme}://{authority}"))
}

/// Answers `GET /client-config/<kind>`.
pub(crate) fn answer(
    kind: &str,
    info: &RequestInfo<'_>,
    renderer: Option<&SharedRenderer>,
) -> Result<Response<Body>, OciError> {
    let Some(renderer) = renderer else {
        return Err(crate::routes::unknown_route(info.path));
    };
    let mirror = match query_param(info.query, "mirror") {
        Some(given) => parse_mirror(&given)?,
        None => {
            let host = info
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| valid_authority(h))
                .ok_or_else(|| {
                    bad_request(
                        "the request has no usable Host header: give the mirror URL as ?mirror=http://HOST:PORT".to_owned(),
                    )
                })?;
            let scheme = if renderer.serves_tls() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}")
        }
    };
    let listener_upstream = info.extensions.get::<ListenerUpstream>().map(|l| &l.0);
    let request = ClientConfigRequest {
        kind,
        mirror: &mirror,
        listener_upstream,
    };
    match renderer.render(&request) {
        Ok(text) => Ok(with_body(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            text.into(),
        )),
        Err(ClientConfigRefusal::UnknownKind(message)) => Err(OciError::new(
            StatusCode::NOT_FOUND,
            OciErrorCode::NameUnknown,
            message,
        )),
        Err(ClientConfigRefusal::Unusable(message)) => Err(OciError::new(
            StatusCode::CONFLICT,
            OciErrorCode::Unsupported,
            message,
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_origins_are_mirror_urls() {
        assert_eq!(
            parse_mirror("http://10.0.0.5:5000/").unwrap(),
            "http://10.0.0.5:5000"
        );
        assert_eq!(
            parse_mirror("https://[fd00::1]:8443").unwrap(),
            "https://[fd00::1]:8443"
        );
        for bad in [
            "10.0.0.5:5000",
            "ftp://m",
            "http://",
            "http://m:5000/v2",
            "http://u:p@m",
            "http://m\r\nX-Evil: 1",
            "http://m\"\n[host.\"http://evil\"]",
            "http://m 5000",
            "http://m?x=1",
            "http://m#x",
            "http://-m",
        ] {
            let err = parse_mirror(bad).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
