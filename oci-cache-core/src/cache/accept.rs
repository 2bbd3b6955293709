//! `Accept` negotiation for manifests (PROTOCOL.md §2).
//!
//! The same `repo:tag` can yield different bytes depending on `Accept`, so the
//! engine never serves a cached manifest to a client that does not accept its
//! media type. Clients send the list as one comma-joined header or as one header
//! per type (distribution's Go client); both forms parse to the same set.

use crate::manifest::media_type::KNOWN_MANIFEST_TYPES;

/// [`KNOWN_MANIFEST_TYPES`] as an `accept` list: what a caller that takes
/// any manifest (a tag lookup, `oci-cache warm`) asks upstream for.
pub fn accept_all_known() -> Vec<String> {
    KNOWN_MANIFEST_TYPES.iter().map(|t| t.to_string()).collect()
}

/// The media types a client accepts, parsed from its `Accept` header values.
///
/// Parameters (`;q=0.5`) are dropped and types compared case-insensitively;
/// `*/*`, or no types at all, accepts everything; `type/*` accepts that type.
///
/// ```
/// use oci_cache_core::cache::AcceptSet;
///
/// let accept = AcceptSet::parse(&["application/vnd.oci.image.index.v1+json; q=0.9, text/*"]);
/// assert!(accept.accepts("application/vnd.oci.image.index.v1+json"));
/// assert!(accept.accepts("text/plain"));
/// assert!(!accept.accepts("application/vnd.oci.image.manifest.v1+json"));
/// assert!(AcceptSet::parse::<&str>(&[]).accepts("anything/at-all"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AcceptSet {
    any: bool,
    /// Lowercase, parameter-free, sorted and deduplicated.
    types: Vec<String>,
}

impl AcceptSet {
    /// Parses `Accept` header values (each may hold a comma-joined list).
    pub fn parse<S: AsRef<str>>(values: &[S]) -> AcceptSet {
        let mut types: Vec<String> = values
            .iter()
            .flat_map(|value| value.as_ref().split(','))
            .map(essence)
            .filter(|t| !t.is_empty())
            .collect();
        types.sort_unstable();
        types.dedup();
        let any = types.is_empty() || types.iter().any(|t| t == "*/*");
        AcceptSet { any, types }
    }

    /// True when a manifest of `media_type` may be served to this client.
    pub fn accepts(&self, media_type: &str) -> bool {
        if self.any {
            return true;
        }
        let wanted = essence(media_type);
        self.types.iter().any(|t| match t.strip_suffix("/*") {
            Some(main) => wanted
                .split_once('/')
                .is_some_and(|(wanted_main, _)| wanted_main == main),
            None => *t == wanted,
        })
    }

    /// True when the client accepts every type in [`KNOWN_MANIFEST_TYPES`], so the
    /// answer upstream gives to the broad set is also right for this client.
    pub fn is_broad(&self) -> bool {
        KNOWN_MANIFEST_TYPES.iter().all(|t| self.accepts(t))
    }

    /// The accepted types, normalised and sorted (empty when the client sent none).
    pub fn types(&self) -> &[String] {
        &self.types
    }
}

/// The media type without parameters, trimmed and lowercased.
fn essence(media_type: &str) -> String {
    media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::manifest::media_type::{
        DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST,
    };

    #[test]
    fn repeated_and_comma_joined_headers_parse_alike() {
        let joined = AcceptSet::parse(&[format!("{OCI_MANIFEST}, {DOCKER_MANIFEST}")]);
        let repeated = AcceptSet::parse(&[DOCKER_MANIFEST, OCI_MANIFEST]);
        assert_eq!(joined, repeated);
        assert!(joined.accepts(OCI_MANIFEST));
        assert!(joined.accepts(DOCKER_MANIFEST));
        assert!(!joined.accepts(OCI_INDEX));
        assert!(!joined.is_broad());
    }

    #[test]
    fn parameters_and_case_are_ignored() {
        let accept = AcceptSet::parse(&["Application/VND.OCI.image.index.v1+json ; q=0.5"]);
        assert!(accept.accepts(OCI_INDEX));
        assert!(accept.accepts("application/vnd.oci.image.index.v1+json; charset=utf-8"));
        assert!(!accept.accepts("application/vnd.oci.image.index.v1+jsonx"));
    }

    #[test]
    fn star_and_empty_accept_everything() {
        for accept in [
            AcceptSet::parse::<&str>(&[]),
            AcceptSet::parse(&[""]),
            AcceptSet::parse(&[" , "]),
            AcceptSet::parse(&["text/plain, */*"]),
        ] {
            assert!(accept.accepts(OCI_INDEX));
            assert!(accept.is_broad());
        }
    }

    #[test]
    fn containerd_accept_is_broad_and_narrow_forwards_verbatim() {
        let containerd = AcceptSet::parse(&[format!(
            "{DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}, {OCI_MANIFEST}, {OCI_INDEX}"
        )]);
        assert!(containerd.is_broad());
        let narrow = AcceptSet::parse(&[DOCKER_MANIFEST]);
        assert!(!narrow.is_broad());
        assert_eq!(narrow.types(), [DOCKER_MANIFEST.to_string()]);
    }

    #[test]
    fn subtype_wildcard_matches_main_type_only() {
        let accept = AcceptSet::parse(&["application/*"]);
        assert!(accept.accepts(OCI_MANIFEST));
        assert!(!accept.accepts("text/plain"));
        assert!(!accept.accepts("application"));
    }
}
