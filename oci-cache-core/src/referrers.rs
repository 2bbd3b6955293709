//! OCI 1.1 referrers: the descriptors of the manifests that name a digest as
//! their `subject`, and the image index a referrers request is answered with.
//!
//! One place for the shape of the answer, whoever learned it: hosted
//! repositories from their own link records ([`Hosted::referrers`](crate::hosted::Hosted::referrers)),
//! cached repositories from the upstream's referrers API or its tag schema
//! ([`PullThrough::referrers`](crate::cache::PullThrough::referrers)).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::manifest::media_type::OCI_INDEX;
use crate::manifest::ManifestFields;
use crate::{Error, Result};

/// One manifest referring to a subject: an entry of the referrers index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Referrer {
    /// The referring manifest's media type.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its `artifactType`, or for an image manifest without one its config's
    /// media type; `None` for an index without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Its annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Referrer {
    /// The descriptor of a manifest as a referrers listing reports it: its
    /// `artifactType` (else an image manifest's config media type) and its
    /// annotations, read from its bytes.
    pub fn describe(media_type: &str, digest: &Digest, bytes: &Bytes) -> Result<Self> {
        let fields = ManifestFields::parse(bytes)?;
        Ok(Self::of(media_type, digest, bytes, &fields))
    }

    /// [`describe`](Self::describe) from fields already parsed.
    pub(crate) fn of(
        media_type: &str,
        digest: &Digest,
        bytes: &Bytes,
        fields: &ManifestFields,
    ) -> Self {
        Referrer {
            media_type: media_type.to_owned(),
            digest: digest.clone(),
            size: bytes.len() as u64,
            artifact_type: fields.artifact_type(),
            annotations: fields.annotations(),
        }
    }

    /// Whether the `artifactType` filter of a request (`None`: no filter)
    /// lets this referrer through.
    pub fn matches(&self, artifact_type: Option<&str>) -> bool {
        artifact_type.is_none_or(|wanted| self.artifact_type.as_deref() == Some(wanted))
    }
}

/// The referrers that pass the `artifactType` filter (`None`: all of them).
pub fn filtered(referrers: Vec<Referrer>, artifact_type: Option<&str>) -> Vec<Referrer> {
    referrers
        .into_iter()
        .filter(|r| r.matches(artifact_type))
        .collect()
}

/// The body of a referrers answer: an OCI image index
/// ([`OCI_INDEX`]) listing `referrers`; `{"manifests":[]}` when there are none.
pub fn index_bytes(referrers: &[Referrer]) -> Result<Bytes> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Index<'a> {
        schema_version: u32,
        media_type: &'static str,
        manifests: &'a [Referrer],
    }
    let index = Index {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests: referrers,
    };
    serde_json::to_vec(&index)
        .map(Bytes::from)
        .map_err(|e| Error::Storage {
            backend: "records",
            message: "cannot encode the referrers index".to_owned(),
            source: Some(Box::new(e)),
        })
}

/// The referrers an image index lists (a referrers API answer, or a tag
/// schema index): its `manifests`, each a descriptor. `None` when `bytes` is
/// not such an index.
pub fn parse_index(bytes: &[u8]) -> Option<Vec<Referrer>> {
    #[derive(Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Option<Vec<Referrer>>,
    }
    let index: Index = serde_json::from_slice(bytes).ok()?;
    Some(index.manifests.unwrap_or_default())
}

/// The tag the referrers tag schema keeps the referrers of `subject` under:
/// `<algorithm>-<hex>` (`sha256-abc…`), the hex cut to 64 characters (a
/// tag has at most 128), as OCI 1.1 clients push and read it on registries
/// without the referrers API.
pub fn fallback_tag(subject: &Digest) -> String {
    let hex = subject.hex();
    format!("{}-{}", subject.algorithm(), hex.get(..64).unwrap_or(hex))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn referrer(artifact_type: Option<&str>) -> Referrer {
        Referrer {
            media_type: crate::manifest::media_type::OCI_MANIFEST.to_owned(),
            digest: Digest::sha256_of(artifact_type.unwrap_or("none").as_bytes()),
            size: 3,
            artifact_type: artifact_type.map(str::to_owned),
            annotations: BTreeMap::from([("a".to_owned(), "b".to_owned())]),
        }
    }

    #[test]
    fn index_round_trips_and_filters() {
        let all = vec![referrer(Some("application/sig")), referrer(None)];
        let bytes = index_bytes(&all).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["mediaType"], OCI_INDEX);
        assert_eq!(value["schemaVersion"], 2);
        assert_eq!(value["manifests"][0]["artifactType"], "application/sig");
        assert_eq!(value["manifests"][0]["annotations"]["a"], "b");
        assert_eq!(parse_index(&bytes), Some(all.clone()));
        assert_eq!(
            filtered(all.clone(), Some("application/sig")),
            vec![all[0].clone()]
        );
        assert_eq!(filtered(all.clone(), None), all);
        let empty: serde_json::Value = serde_json::from_slice(&index_bytes(&[]).unwrap()).unwrap();
        assert_eq!(empty["manifests"], serde_json::json!([]));
        assert_eq!(parse_index(b"[1]"), None);
        assert_eq!(parse_index(br#"{"manifests":[{"digest":"x"}]}"#), None);
    }

    #[test]
    fn fallback_tag_is_algorithm_dash_hex() {
        let digest = Digest::sha256_of(b"x");
        assert_eq!(fallback_tag(&digest), format!("sha256-{}", digest.hex()));
        let long = Digest::compute(crate::digest::DigestAlgorithm::Sha512, b"x");
        assert_eq!(fallback_tag(&long), format!("sha512-{}", &long.hex()[..64]));
    }
}
