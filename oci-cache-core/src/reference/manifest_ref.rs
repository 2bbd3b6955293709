//! What a manifest request names: a tag or a digest.

use crate::digest::Digest;

use super::Tag;

/// What a manifest request names: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ManifestRef {
    /// A mutable tag.
    Tag(Tag),
    /// An immutable digest.
    Digest(Digest),
}

impl std::fmt::Display for ManifestRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManifestRef::Tag(t) => t.fmt(f),
            ManifestRef::Digest(d) => d.fmt(f),
        }
    }
}
