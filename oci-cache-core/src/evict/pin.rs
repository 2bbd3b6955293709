//! Pin patterns: which cached images eviction never touches.

use std::fmt;
use std::str::FromStr;

use crate::policy::glob;
use crate::storage::TagKey;
use crate::Error;

/// A glob over `upstream/repository:tag`, such as `docker.io/library/alpine:*`
/// or `registry.k8s.io/*`; `*` matches any run of characters (`/` and `:`
/// included). The upstream is always written out (`docker.io/library/…`,
/// not `alpine`), as tags are recorded per upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinPattern(String);

impl PinPattern {
    /// Whether the tag `key` is pinned by this pattern.
    pub fn matches(&self, key: &TagKey) -> bool {
        let text = format!("{}/{}:{}", key.upstream, key.repository, key.tag);
        glob(self.0.as_bytes(), text.as_bytes())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PinPattern {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Config(format!("pin pattern `{text}` {why}"));
        if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("is empty or contains spaces"));
        }
        let Some((upstream, _)) = text.split_once('/') else {
            return Err(bad("names no repository; write upstream/repository:tag, e.g. docker.io/library/alpine:*"));
        };
        let names_host = upstream == "*"
            || upstream == "localhost"
            || upstream.contains('.')
            || upstream.contains(':');
        if !names_host {
            return Err(bad(
                "names no upstream; write it in full, e.g. docker.io/library/alpine:* for alpine:*",
            ));
        }
        Ok(PinPattern(text.to_owned()))
    }
}

impl fmt::Display for PinPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for PinPattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for PinPattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::reference::{Registry, Repository, Tag};

    fn key(upstream: &str, repository: &str, tag: &str) -> TagKey {
        TagKey {
            upstream: Registry::new(upstream).unwrap(),
            repository: Repository::new(repository).unwrap(),
            tag: Tag::new(tag).unwrap(),
        }
    }

    #[test]
    fn patterns_match_upstream_repository_and_tag() {
        let alpine: PinPattern = "docker.io/library/alpine:*".parse().unwrap();
        assert!(alpine.matches(&key("docker.io", "library/alpine", "3.20")));
        assert!(!alpine.matches(&key("docker.io", "library/alpine-extra", "3.20")));
        assert!(!alpine.matches(&key("quay.io", "library/alpine", "3.20")));
        let k8s: PinPattern = "registry.k8s.io/*".parse().unwrap();
        assert!(k8s.matches(&key("registry.k8s.io", "pause", "3.9")));
        assert!(k8s.matches(&key("registry.k8s.io", "a/b/c", "v1")));
        assert!(!k8s.matches(&key("docker.io", "registry.k8s.io", "v1")));
        let exact: PinPattern = "ghcr.io/org/app:v1".parse().unwrap();
        assert!(exact.matches(&key("ghcr.io", "org/app", "v1")));
        assert!(!exact.matches(&key("ghcr.io", "org/app", "v10")));
        let middle: PinPattern = "*/library/*:3.*".parse().unwrap();
        assert!(middle.matches(&key("localhost:5000", "library/x", "3.1")));
        assert!(!middle.matches(&key("localhost:5000", "library/x", "4.1")));
    }

    #[test]
    fn patterns_without_an_upstream_are_refused_with_the_fix() {
        let e = "alpine:*".parse::<PinPattern>().unwrap_err().to_string();
        assert!(e.contains("docker.io/library/alpine"), "{e}");
        let e = "library/alpine:*"
            .parse::<PinPattern>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("names no upstream"), "{e}");
        assert!("".parse::<PinPattern>().is_err());
        assert!("docker.io/a b".parse::<PinPattern>().is_err());
    }
}
