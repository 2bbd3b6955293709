//! OCI image references: `[registry/]repository[:tag][@digest]`.
//!
//! [`Reference::parse`] reads and normalises a reference exactly as Go's
//! `distribution/reference` `ParseNormalizedNamed` does, which is what Docker,
//! containerd and the Kubernetes tooling use: `alpine` is
//! `docker.io/library/alpine`, `index.docker.io/x/y` is `docker.io/x/y`,
//! `localhost:5000/app:1` names the registry `localhost:5000`. Parsing is
//! hand-written (no regex) and allocates only the parts it returns.
//!
//! ```
//! use oci_cache_core::reference::Reference;
//!
//! let reference: Reference = "alpine:3.20".parse().unwrap();
//! assert_eq!(reference.to_string(), "docker.io/library/alpine:3.20");
//! assert_eq!(reference.familiar(), "alpine:3.20");
//! assert_eq!(reference.registry().as_str(), "docker.io");
//! assert_eq!(reference.repository().as_str(), "library/alpine");
//!
//! let err = "foo/Bar".parse::<Reference>().unwrap_err();
//! assert_eq!(err.kind().as_str(), "uppercase");
//! assert_eq!(err.offset(), 4);
//! ```
//!
//! Where this parser deliberately differs from Go (each is a named case in
//! `tests/data/reference_vectors.tsv`):
//!
//! - a first component that looks like a domain but is none (`foo_bar.com/x`)
//!   is refused; Go returns a name without a domain, which cannot be pulled;
//! - digests must be sha256 or sha512; Go also accepts sha384;
//! - the empty string is [`ParseErrorKind::Empty`]; Go's `ParseNormalizedNamed`
//!   calls it an invalid format (its `Parse` says empty);
//! - errors about the registry host, the tag or the digest pattern get their own
//!   kinds where Go says only "invalid reference format".

mod manifest_ref;
mod normalize;
mod parse;

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

pub use manifest_ref::ManifestRef;
use normalize::OFFICIAL_PREFIX;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";

/// The tag a reference with neither tag nor digest stands for.
pub const DEFAULT_TAG: &str = "latest";

/// Why a reference (or one of its parts) did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The input is empty.
    Empty,
    /// The repository path does not follow the reference grammar.
    InvalidFormat,
    /// The repository path holds uppercase letters.
    Uppercase,
    /// The repository path is over 255 characters.
    NameTooLong,
    /// The tag does not follow `[\w][\w.-]{0,127}`.
    InvalidTag,
    /// The registry host or port is malformed.
    InvalidDomain,
    /// The digest is malformed (pattern or hex characters).
    InvalidDigest,
    /// A bare 64-hex string, which is an image ID, not a name.
    IdentifierNotName,
    /// The digest algorithm is well-formed but neither sha256 nor sha512.
    DigestUnsupported,
    /// The digest has the wrong number of hex characters for its algorithm.
    DigestInvalidLength,
}

impl ParseErrorKind {
    /// A stable snake_case name, for machine-readable output.
    pub fn as_str(self) -> &'static str {
        match self {
            ParseErrorKind::Empty => "empty",
            ParseErrorKind::InvalidFormat => "invalid_format",
            ParseErrorKind::Uppercase => "uppercase",
            ParseErrorKind::NameTooLong => "name_too_long",
            ParseErrorKind::InvalidTag => "invalid_tag",
            ParseErrorKind::InvalidDomain => "invalid_domain",
            ParseErrorKind::InvalidDigest => "invalid_digest",
            ParseErrorKind::IdentifierNotName => "identifier_not_name",
            ParseErrorKind::DigestUnsupported => "digest_unsupported",
            ParseErrorKind::DigestInvalidLength => "digest_invalid_length",
        }
    }

    /// What is wrong and what to do, in lowercase words.
    pub fn message(self) -> &'static str {
        match self {
            ParseErrorKind::Empty => "reference is empty",
            ParseErrorKind::InvalidFormat => {
                "repository path must be lowercase letters and digits, separated by \
                 '/', '.', '_', '__' or dashes"
            }
            ParseErrorKind::Uppercase => "repository path must be lowercase",
            ParseErrorKind::NameTooLong => "repository path must not be more than 255 characters",
            ParseErrorKind::InvalidTag => {
                "tag must be 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
            }
            ParseErrorKind::InvalidDomain => {
                "registry must be host[:port], e.g. registry.example.com:5000 or [::1]:5000"
            }
            ParseErrorKind::InvalidDigest => "digest must be algorithm:hex, e.g. sha256:<64 lowercase hex>",
            ParseErrorKind::IdentifierNotName => {
                "a 64-character hex string is an image id, not a name; use name@sha256:<id>"
            }
            ParseErrorKind::DigestUnsupported => "unsupported digest algorithm (use sha256 or sha512)",
            ParseErrorKind::DigestInvalidLength => {
                "digest has the wrong number of hex characters for its algorithm"
            }
        }
    }
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reference that did not parse: the kind, the input and the byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid reference {input:?}: {} (at offset {offset})", kind.message())]
pub struct ParseError {
    kind: ParseErrorKind,
    input: String,
    offset: usize,
}

impl ParseError {
    /// A new error.
    pub fn new(kind: ParseErrorKind, input: &str, offset: usize) -> Self {
        ParseError {
            kind,
            input: input.to_owned(),
            offset,
        }
    }
    /// What is wrong.
    pub fn kind(&self) -> ParseErrorKind {
        self.kind
    }
    /// The text that failed to parse.
    pub fn input(&self) -> &str {
        &self.input
    }
    /// Byte offset of the problem in [`input`](Self::input).
    pub fn offset(&self) -> usize {
        self.offset
    }

    fn from_fail(fail: parse::Fail, input: &str) -> Self {
        ParseError::new(fail.kind, input, fail.offset)
    }
}

macro_rules! validated_string {
    ($(#[$meta:meta])* $name:ident, $validate:path) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Box<str>);

        impl $name {
            /// Validates `s`.
            pub fn new(s: &str) -> Result<Self, ParseError> {
                $validate(s).map_err(|fail| ParseError::from_fail(fail, s))?;
                Ok($name(s.into()))
            }
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                Self::new(s)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::new(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

validated_string!(
    /// A registry host with optional port, e.g. `docker.io`, `localhost:5000`,
    /// `[::1]:5000`. Uppercase is allowed, as in the reference grammar.
    ///
    /// `new` only validates: `index.docker.io` stays `index.docker.io` (mirror
    /// configuration lists it as an alias); [`Reference::parse`] folds it.
    Registry,
    validate_registry
);
validated_string!(
    /// A repository path without registry, e.g. `library/alpine`: lowercase
    /// components separated by `/`, at most 255 characters.
    Repository,
    validate_repository
);
validated_string!(
    /// A tag, e.g. `3.20`: `[\w][\w.-]{0,127}`.
    Tag,
    validate_tag
);

fn validate_registry(s: &str) -> Result<(), parse::Fail> {
    if s.is_empty() {
        return Err(parse::Fail::new(ParseErrorKind::Empty, 0));
    }
    parse::check_domain(s).map_err(|at| parse::Fail::new(ParseErrorKind::InvalidDomain, at))
}

fn validate_repository(s: &str) -> Result<(), parse::Fail> {
    if s.is_empty() {
        return Err(parse::Fail::new(ParseErrorKind::Empty, 0));
    }
    if let Err(at) = parse::check_path(s) {
        let kind = if parse::has_upper(s) && parse::check_path(&parse::go_lowercase(s)).is_ok() {
            ParseErrorKind::Uppercase
        } else {
            ParseErrorKind::InvalidFormat
        };
        return Err(parse::Fail::new(kind, at));
    }
    if s.len() > parse::PATH_MAX {
        return Err(parse::Fail::new(
            ParseErrorKind::NameTooLong,
            parse::PATH_MAX,
        ));
    }
    Ok(())
}

fn validate_tag(s: &str) -> Result<(), parse::Fail> {
    parse::check_tag(s).map_err(|at| parse::Fail::new(ParseErrorKind::InvalidTag, at))
}

impl Registry {
    /// Docker Hub, `docker.io`.
    pub fn docker_hub() -> Self {
        Registry(DOCKER_HUB.into())
    }
    /// Whether this is Docker Hub's canonical name, `docker.io`, compared
    /// case-sensitively as `distribution/reference` compares it: `DOCKER.IO`
    /// is another registry name here (routing finds upstreams ignoring
    /// case; see [`MirrorConfig::lookup`](crate::mirror::MirrorConfig::lookup)).
    pub fn is_docker_hub(&self) -> bool {
        &*self.0 == DOCKER_HUB
    }
}

impl Tag {
    /// The default tag, `latest`.
    pub fn latest() -> Self {
        Tag(DEFAULT_TAG.into())
    }
}

/// A fully qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: Registry,
    repository: Repository,
    tag: Option<Tag>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises a reference as `docker pull` does (see the module docs).
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let parsed =
            normalize::normalize(input).map_err(|fail| ParseError::from_fail(fail, input))?;
        let repository = if parsed.official {
            let mut path = String::with_capacity(OFFICIAL_PREFIX.len() + parsed.path.len());
            path.push_str(OFFICIAL_PREFIX);
            path.push_str(parsed.path);
            Repository(path.into_boxed_str())
        } else {
            Repository(parsed.path.into())
        };
        Ok(Reference {
            registry: Registry(parsed.domain.into()),
            repository,
            tag: parsed.tag.map(|tag| Tag(tag.into())),
            digest: parsed.digest,
        })
    }

    /// Builds a reference from parts that are already validated. The parts are
    /// taken as given: `docker.io` + `alpine` is not rewritten to `library/alpine`,
    /// so only references from [`parse`](Self::parse) are sure to round-trip.
    pub fn from_parts(
        registry: Registry,
        repository: Repository,
        tag: Option<Tag>,
        digest: Option<Digest>,
    ) -> Self {
        Reference {
            registry,
            repository,
            tag,
            digest,
        }
    }
    /// The registry, `docker.io` for Docker Hub.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
    /// The repository path, with `library/` for Docker Hub official images.
    pub fn repository(&self) -> &Repository {
        &self.repository
    }
    /// The tag, if one was given.
    pub fn tag(&self) -> Option<&Tag> {
        self.tag.as_ref()
    }
    /// The digest, if one was given.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        let mut name = String::with_capacity(self.registry.0.len() + 1 + self.repository.0.len());
        name.push_str(&self.registry.0);
        name.push('/');
        name.push_str(&self.repository.0);
        name
    }

    /// The short form Docker prints: `docker.io/` dropped, then `library/` when
    /// no further `/` follows (`alpine:3.20`, `bitnami/redis`, `ghcr.io/a/b`).
    pub fn familiar(&self) -> String {
        let mut out = String::new();
        if self.registry.is_docker_hub() {
            let path = &*self.repository.0;
            match path.strip_prefix(OFFICIAL_PREFIX) {
                Some(rest) if !rest.contains('/') => out.push_str(rest),
                _ => out.push_str(path),
            }
        } else {
            out.push_str(&self.registry.0);
            out.push('/');
            out.push_str(&self.repository.0);
        }
        self.push_tag_and_digest(&mut out);
        out
    }

    /// This reference with tag `latest` when it has neither tag nor digest
    /// (Go's `TagNameOnly`).
    pub fn with_default_tag(mut self) -> Self {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(Tag::latest());
        }
        self
    }

    /// What to ask the registry for, as `docker pull` does (Go's `ParseDockerRef`):
    /// the digest when there is one (a tag next to it is ignored), else the tag,
    /// else `latest`.
    pub fn manifest_ref(&self) -> ManifestRef {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => ManifestRef::Digest(digest.clone()),
            (None, Some(tag)) => ManifestRef::Tag(tag.clone()),
            (None, None) => ManifestRef::Tag(Tag::latest()),
        }
    }

    fn push_tag_and_digest(&self, out: &mut String) {
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(&tag.0);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest.as_str());
        }
    }
}

impl FromStr for Reference {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Reference::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parts_validate_with_the_reference_grammar() {
        assert!(Registry::new("[::1]:5000").is_ok());
        assert!(Registry::new("Example.COM").is_ok());
        assert_eq!(
            Registry::new("a_b.com").unwrap_err().kind(),
            ParseErrorKind::InvalidDomain
        );
        assert_eq!(Registry::new("").unwrap_err().kind(), ParseErrorKind::Empty);
        let err = Repository::new("library/Alpine").unwrap_err();
        assert_eq!((err.kind(), err.offset()), (ParseErrorKind::Uppercase, 8));
        let err = Repository::new("a//b").unwrap_err();
        assert_eq!(
            (err.kind(), err.offset()),
            (ParseErrorKind::InvalidFormat, 2)
        );
        let too_long = format!("{}a", "a/".repeat(128));
        assert_eq!(
            Repository::new(&too_long).unwrap_err().kind(),
            ParseErrorKind::NameTooLong
        );
        assert!(Repository::new(&too_long[2..]).is_ok());
        assert_eq!(
            Tag::new("-x").unwrap_err().kind(),
            ParseErrorKind::InvalidTag
        );
    }

    #[test]
    fn error_message_names_the_problem_and_offset() {
        let err = Reference::parse("foo/Bar").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid reference \"foo/Bar\": repository path must be lowercase (at offset 4)"
        );
    }

    #[test]
    fn default_tag_and_manifest_ref() {
        let bare = Reference::parse("alpine").unwrap();
        assert_eq!(bare.manifest_ref().to_string(), "latest");
        assert_eq!(
            bare.with_default_tag().to_string(),
            "docker.io/library/alpine:latest"
        );
        let both = Reference::parse(
            "alpine:3@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )
        .unwrap();
        assert!(matches!(both.manifest_ref(), ManifestRef::Digest(_)));
        assert_eq!(both.clone().with_default_tag(), both);
    }

    #[test]
    fn serde_goes_through_parse() {
        let reference: Reference = serde_json::from_str("\"redis\"").unwrap();
        assert_eq!(
            serde_json::to_string(&reference).unwrap(),
            "\"docker.io/library/redis\""
        );
        assert!(serde_json::from_str::<Reference>("\"Redis\"").is_err());
    }
}
