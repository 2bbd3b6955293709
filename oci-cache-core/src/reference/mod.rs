//! OCI image references: `[registry/]repository[:tag][@digest]`.
//!
//! CONTRACT (other modules rely on these signatures; the reference helper
//! replaces the bodies with the full distribution/reference grammar):
//! - `Registry`: validated `host[:port]` (the canonical name, `docker.io` for Hub).
//! - `Repository`: validated path (`library/alpine`), lowercase components.
//! - `Tag`: `[\w][\w.-]{0,127}`.
//! - `Reference`: registry + repository + optional tag + optional digest.
//! - `ParseError { kind, input, offset }`.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// Why a reference (or one of its parts) did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The input is empty.
    Empty,
    /// The input does not follow the reference grammar.
    InvalidFormat,
    /// A path component holds uppercase letters.
    Uppercase,
    /// The repository path is over 255 characters.
    NameTooLong,
    /// The tag does not follow `[\w][\w.-]{0,127}`.
    InvalidTag,
    /// The registry host or port is malformed.
    InvalidDomain,
    /// The digest part is malformed.
    InvalidDigest,
    /// A bare 64-hex string, which is an image ID, not a name.
    IdentifierNotName,
}

/// A reference that did not parse: the kind, the input and the byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid reference {input:?}: {kind:?} at offset {offset}")]
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
}

macro_rules! validated_string {
    ($(#[$meta:meta])* $name:ident, $validate:path) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Box<str>);

        impl $name {
            /// Validates `s`.
            pub fn new(s: &str) -> Result<Self, ParseError> {
                $validate(s)?;
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
    /// A registry host with optional port, e.g. `docker.io`, `localhost:5000`.
    Registry,
    validate_registry
);
validated_string!(
    /// A repository path without registry, e.g. `library/alpine`.
    Repository,
    validate_repository
);
validated_string!(
    /// A tag, e.g. `3.20`.
    Tag,
    validate_tag
);

fn validate_registry(s: &str) -> Result<(), ParseError> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    {
        return Err(ParseError::new(ParseErrorKind::InvalidDomain, s, 0));
    }
    Ok(())
}

fn validate_repository(s: &str) -> Result<(), ParseError> {
    if s.is_empty() {
        return Err(ParseError::new(ParseErrorKind::Empty, s, 0));
    }
    if s.len() > 255 {
        return Err(ParseError::new(ParseErrorKind::NameTooLong, s, 255));
    }
    for (start, component) in component_offsets(s) {
        let bytes = component.as_bytes();
        let ok = bytes
            .first()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && bytes
                .last()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && bytes.iter().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && !component.contains("..")
            && !component.contains("___");
        if !ok {
            return Err(ParseError::new(ParseErrorKind::InvalidFormat, s, start));
        }
    }
    Ok(())
}

fn component_offsets(s: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut start = 0;
    s.split('/').map(move |c| {
        let at = start;
        start += c.len() + 1;
        (at, c)
    })
}

fn validate_tag(s: &str) -> Result<(), ParseError> {
    let bytes = s.as_bytes();
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    if bytes.is_empty() || bytes.len() > 128 || !bytes.first().is_some_and(word) {
        return Err(ParseError::new(ParseErrorKind::InvalidTag, s, 0));
    }
    if let Some(bad) = bytes
        .iter()
        .position(|b| !(word(b) || matches!(b, b'.' | b'-')))
    {
        return Err(ParseError::new(ParseErrorKind::InvalidTag, s, bad));
    }
    Ok(())
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
    /// Builds a reference from parts that are already validated.
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
