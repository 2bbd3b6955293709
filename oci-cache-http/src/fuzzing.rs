//! Entry points for the cargo-fuzz targets in `fuzz/`: every parser of
//! outside input that is private to this crate. Not a stable API.

use std::time::Duration;

use crate::response::RangeSpec;

/// One parsed `WWW-Authenticate` challenge: lower-cased scheme and
/// parameters (lower-cased names, unquoted values).
pub type Challenge = (String, Vec<(String, String)>);

/// Every challenge of a `WWW-Authenticate` value.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    crate::upstream::auth::parse_challenges(header)
        .into_iter()
        .map(|c| (c.scheme, c.params))
        .collect()
}

/// Renders challenges back as a `WWW-Authenticate` value, every value quoted.
pub fn render_challenges(challenges: &[Challenge]) -> String {
    challenges
        .iter()
        .map(|(scheme, params)| {
            let params: Vec<String> = params
                .iter()
                .map(|(name, value)| {
                    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
                    format!("{name}=\"{escaped}\"")
                })
                .collect();
            if params.is_empty() {
                scheme.clone()
            } else {
                format!("{scheme} {}", params.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The token and lifetime of a token endpoint's JSON answer.
pub fn parse_token_response(body: &[u8]) -> Option<(String, Duration)> {
    crate::upstream::auth::parse_token_response(body)
}

/// The longest token lifetime the client believes.
pub const MAX_TOKEN_LIFETIME: Duration = crate::upstream::auth::MAX_TOKEN_LIFETIME;

/// A `Range` request header: `(Some(start), end)` for `bytes=start-[end]`,
/// `(None, Some(n))` for the last `n` bytes.
pub fn parse_range(value: &str) -> Option<(Option<u64>, Option<u64>)> {
    crate::response::parse_range(value).map(|spec| match spec {
        RangeSpec::From(start, end) => (Some(start), end),
        RangeSpec::Suffix(n) => (None, Some(n)),
    })
}

/// The `rel="next"` target among `Link` values, resolved against `current`.
pub fn next_link(values: &[&str], current: &str) -> Option<String> {
    crate::upstream::registry::next_link_in(values.iter().copied(), current)
}

/// One page of an upstream tag list: repository name and tags.
pub fn parse_tag_page(body: &[u8]) -> Option<(String, Vec<String>)> {
    crate::upstream::registry::parse_tag_page(body)
        .ok()
        .map(|page| (page.name, page.tags.unwrap_or_default()))
}

/// The manifest media type of a manifest answer, `None` when it is not a manifest.
pub fn manifest_media_type(content_type: &str, body: &[u8]) -> Option<String> {
    crate::upstream::registry::manifest_media_type(content_type, body)
}

/// Parses `text` as an htpasswd file and, when it has entries and every hash
/// in it is cheap (cost 4 or 5, so the fuzzer stays fast; unknown users are
/// checked at the file's cost), checks `user:password` against it.
pub fn htpasswd_verify(text: &str, user: &str, password: &str) -> Result<Option<bool>, String> {
    let entries = crate::client_auth::htpasswd::Htpasswd::parse(text)?;
    Ok((4..=5)
        .contains(&entries.max_cost())
        .then(|| entries.verify(user, password)))
}
