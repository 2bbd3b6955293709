//! `ParseNormalizedNamed` from `distribution/reference` (`normalize.go`):
//! familiar names such as `alpine:3.20` become `docker.io/library/alpine:3.20`.
//!
//! The steps, in Go's order (the order decides which error a bad input gets):
//!
//! 1. a bare 64-hex string is an image ID, not a name;
//! 2. the first `/`-separated component is a domain iff it is `localhost`, holds
//!    `.` or `:`, or holds an uppercase letter; `index.docker.io` becomes
//!    `docker.io` (both matched case-sensitively, as Go does: `DOCKER.IO` is
//!    just another domain); with no domain (or no `/` at all) the domain is
//!    `docker.io`;
//! 3. on `docker.io`, a path with no `/` gets `library/` in front;
//! 4. the text after the domain, up to the first `:`, must be lowercase;
//! 5. `domain/path[:tag][@digest]` must match the reference grammar; if it does
//!    not but its lowercased form does, the error is "must be lowercase";
//! 6. the path is at most 255 characters; the digest must be one we support.

use super::parse::{self, Fail, Parts, PATH_MAX};
use super::{ParseErrorKind, DOCKER_HUB};
use crate::digest::{Digest, DigestAlgorithm, DigestErrorKind};

/// Docker Hub's legacy name, folded into [`DOCKER_HUB`].
const LEGACY_DOCKER_HUB: &str = "index.docker.io";

/// Namespace of Docker Hub's official images.
pub(super) const OFFICIAL_PREFIX: &str = "library/";

/// A normalised reference, still borrowing from the input.
#[derive(Debug, Clone)]
pub(super) struct Normalized<'a> {
    /// The registry: a slice of the input, or [`DOCKER_HUB`].
    pub(super) domain: &'a str,
    /// Whether the repository is [`OFFICIAL_PREFIX`] followed by `path`.
    pub(super) official: bool,
    /// The repository path as written.
    pub(super) path: &'a str,
    pub(super) tag: Option<&'a str>,
    pub(super) digest: Option<Digest>,
}

/// Where `splitDockerDomain` puts the domain.
enum Domain<'a> {
    /// Docker Hub; the remainder starts at this byte offset.
    Hub(usize),
    /// The first component, which must parse as a domain; the input is parsed whole.
    Explicit(&'a str),
}

/// Parses and normalises `input`, or says what is wrong and where.
pub(super) fn normalize(input: &str) -> Result<Normalized<'_>, Fail> {
    if input.is_empty() {
        return Err(Fail::new(ParseErrorKind::Empty, 0));
    }
    if parse::is_identifier(input) {
        return Err(Fail::new(ParseErrorKind::IdentifierNotName, 0));
    }
    let domain = split_docker_domain(input);
    let rest_at = match domain {
        Domain::Hub(at) => at,
        Domain::Explicit(first) => first.len() + 1,
    };
    let rest = input.get(rest_at..).unwrap_or_default();
    let remote = rest.split(':').next().unwrap_or_default();
    if parse::has_upper(remote) {
        let at = rest_at + parse::first_upper(remote, 0);
        return Err(Fail::new(ParseErrorKind::Uppercase, at));
    }

    let (grammar, checked_at, checked) = match domain {
        Domain::Hub(_) => (match_hub as Matcher, rest_at, rest),
        Domain::Explicit(_) => (match_explicit as Matcher, 0, input),
    };
    let matched = grammar(checked).map_err(|fail| {
        // Go retries the lowercased text to tell "uppercase" from "malformed".
        if parse::has_upper(checked) && grammar(&parse::go_lowercase(checked)).is_ok() {
            let at = parse::first_upper(checked, fail.offset);
            Fail::new(ParseErrorKind::Uppercase, checked_at + at)
        } else {
            fail.shifted(checked_at)
        }
    })?;

    let official = matches!(domain, Domain::Hub(_)) && !rest.contains('/');
    let prefix_len = if official { OFFICIAL_PREFIX.len() } else { 0 };
    if prefix_len + matched.path.len() > PATH_MAX {
        let at = checked_at + matched.path_at + PATH_MAX.saturating_sub(prefix_len);
        return Err(Fail::new(ParseErrorKind::NameTooLong, at));
    }
    let digest = match matched.parts.digest {
        Some(text) => Some(
            parse_digest(text)
                .map_err(|fail| fail.shifted(checked_at + matched.parts.digest_at))?,
        ),
        None => None,
    };
    let domain = match (domain, matched.domain) {
        (Domain::Hub(_), _) => DOCKER_HUB,
        (Domain::Explicit(_), Some(domain)) => domain,
        // DIVERGENCE from Go: `foo_bar.com/x` has a domain-like first component
        // that is no domain, and Go then returns a name with an empty domain.
        // Such a name has no registry to pull from, so it is refused here.
        (Domain::Explicit(first), None) => {
            let at = parse::check_domain(first).err().unwrap_or(0);
            return Err(Fail::new(ParseErrorKind::InvalidDomain, at));
        }
    };
    Ok(Normalized {
        domain,
        official,
        path: matched.path,
        tag: matched.parts.tag,
        digest,
    })
}

/// `splitDockerDomain`: which part of the input names the registry.
fn split_docker_domain(input: &str) -> Domain<'_> {
    let Some((first, _)) = input.split_once('/') else {
        return Domain::Hub(0);
    };
    // Case-sensitive, as in Go: `DOCKER.IO/alpine` is repository `alpine` on
    // a registry named `DOCKER.IO` (no `library/`), so a reference reads the
    // same here as in docker and containerd. Which upstream serves it is
    // routing's question, where host names are case-insensitive.
    if first == LEGACY_DOCKER_HUB || first == DOCKER_HUB {
        Domain::Hub(first.len() + 1)
    } else if first == "localhost" || first.contains(['.', ':']) || parse::has_upper(first) {
        Domain::Explicit(first)
    } else {
        Domain::Hub(0)
    }
}

/// A reference that matched the grammar: its domain (if any), path and the rest.
struct Matched<'a> {
    domain: Option<&'a str>,
    path: &'a str,
    path_at: usize,
    parts: Parts<'a>,
}

type Matcher = for<'a> fn(&'a str) -> Result<Matched<'a>, Fail>;

/// The text after a Docker Hub domain: `path[:tag][@digest]`. Go parses
/// `docker.io/[library/]<text>`, which matches exactly when `<text>` does.
fn match_hub(text: &str) -> Result<Matched<'_>, Fail> {
    let parts = parse::split(text);
    parse::check_path(parts.name).map_err(|at| Fail::new(ParseErrorKind::InvalidFormat, at))?;
    parse::check_tail(&parts)?;
    Ok(Matched {
        domain: None,
        path: parts.name,
        path_at: 0,
        parts,
    })
}

/// A whole reference with an explicit domain, as Go's `Parse` reads it.
fn match_explicit(text: &str) -> Result<Matched<'_>, Fail> {
    let parts = parse::split(text);
    let (domain, path, path_at) = parse::match_name(parts.name)?;
    parse::check_tail(&parts)?;
    Ok(Matched {
        domain,
        path,
        path_at,
        parts,
    })
}

/// go-digest's `Parse`: the algorithm must be supported, then the length must
/// fit it, then the hex must be lowercase. Offsets are within `text`.
fn parse_digest(text: &str) -> Result<Digest, Fail> {
    if let Some((name, hex)) = text.split_once(':') {
        let expected = [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512]
            .into_iter()
            .find(|algorithm| algorithm.as_str() == name);
        // Go checks the length before the characters; our Digest does it the other way.
        if expected.is_some_and(|algorithm| algorithm.hex_len() != hex.len()) {
            return Err(Fail::new(
                ParseErrorKind::DigestInvalidLength,
                name.len() + 1,
            ));
        }
    }
    text.parse::<Digest>().map_err(|err| {
        let kind = match err.kind() {
            DigestErrorKind::UnsupportedAlgorithm => ParseErrorKind::DigestUnsupported,
            DigestErrorKind::InvalidLength => ParseErrorKind::DigestInvalidLength,
            _ => ParseErrorKind::InvalidDigest,
        };
        Fail::new(kind, err.offset())
    })
}
