//! The JSON shapes of image manifests and indexes (OCI and Docker schema 2),
//! as far as a cache needs them: which manifests an index lists, for which
//! platform, and which blobs an image manifest references.
//!
//! Unknown fields are ignored and kept nowhere: the cache stores and serves
//! the exact bytes it fetched, and only reads them through these types.
//!
//! ```
//! use oci_cache_core::digest::Digest;
//! use oci_cache_core::manifest::{Manifest, Platform};
//!
//! let json = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",
//!   "digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":2,
//!   "platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}"#;
//! let digest = Digest::sha256_of(json);
//! let Manifest::Index(index) = Manifest::parse(&digest, json)? else { unreachable!() };
//! let arm: Platform = "linux/arm64".parse()?;
//! assert!(arm.matches(index.manifests[0].platform.as_ref().unwrap()));
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

mod fields;
pub mod media_type;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::{Error, Result};

pub(crate) use fields::ManifestFields;
use media_type::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};

/// The annotation an OCI image layout's `index.json` names an image by.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// A reference to content: media type, digest and size (OCI `descriptor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The referenced content's media type.
    #[serde(default)]
    pub media_type: String,
    /// The referenced content's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The platform an index entry is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations (an image layout's `index.json` names images here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// True when this descriptor points at a manifest or an index (rather than a blob).
    pub fn is_manifest(&self) -> bool {
        is_manifest_type(&self.media_type)
    }
}

/// True for the four manifest and index media types a registry serves.
pub fn is_manifest_type(media_type: &str) -> bool {
    [
        OCI_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST,
    ]
    .contains(&media_type)
}

/// An operating system and architecture (with optional variant), as in
/// `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (`amd64`, `arm64`, …).
    pub architecture: String,
    /// Operating system (`linux`, `windows`, …).
    pub os: String,
    /// CPU variant (`v7`, `v8`), when the image names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// True when an index entry for `other` is what a request for `self`
    /// wants: same OS and architecture, and the same variant when `self` names one.
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && self
                .variant
                .as_ref()
                .is_none_or(|v| other.variant.as_ref() == Some(v))
    }
}

impl FromStr for Platform {
    type Err = Error;

    /// `os/architecture[/variant]`, e.g. `linux/amd64` or `linux/arm/v7`.
    fn from_str(s: &str) -> Result<Platform> {
        let mut parts = s.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(os), Some(arch), variant, None)
                if !os.is_empty() && !arch.is_empty() && variant != Some("") =>
            {
                Ok(Platform {
                    os: os.to_owned(),
                    architecture: arch.to_owned(),
                    variant: variant.map(str::to_owned),
                })
            }
            _ => Err(Error::Config(format!(
                "platform {s:?} is not os/architecture[/variant], e.g. linux/amd64 or linux/arm/v7"
            ))),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// An index (OCI image index or Docker manifest list): one manifest per platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index's own media type, when the JSON names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests it lists.
    pub manifests: Vec<Descriptor>,
    /// Annotations of the index itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest (OCI or Docker schema 2): a config blob and layers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// The image configuration blob.
    pub config: Descriptor,
    /// The layers, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

impl ImageManifest {
    /// Every blob the image needs: config first, then the layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(&self.config).chain(&self.layers)
    }
}

/// A parsed manifest: an index or an image manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// An index or manifest list.
    Index(Index),
    /// A single-platform image.
    Image(ImageManifest),
}

impl Manifest {
    /// Parses manifest bytes; `digest` names the manifest in errors. An
    /// object with `manifests` is an index, one with `config` an image
    /// (the JSON `mediaType` is optional in OCI, so shape decides).
    pub fn parse(digest: &Digest, bytes: &[u8]) -> Result<Manifest> {
        #[derive(Deserialize)]
        struct Shape {
            #[serde(rename = "schemaVersion")]
            schema_version: Option<u32>,
            manifests: Option<serde_json::Value>,
            config: Option<serde_json::Value>,
        }
        let invalid = |reason: String| Error::InvalidManifest {
            digest: digest.clone(),
            reason,
        };
        let shape: Shape =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        if shape.schema_version != Some(2) {
            return Err(invalid(format!(
                "schemaVersion is {:?}, only 2 is supported (Docker schema 1 is not)",
                shape.schema_version
            )));
        }
        let parsed = match (shape.manifests.is_some(), shape.config.is_some()) {
            (true, false) => serde_json::from_slice(bytes).map(Manifest::Index),
            (false, true) => serde_json::from_slice(bytes).map(Manifest::Image),
            _ => return Err(invalid("has neither `manifests` nor `config`".to_owned())),
        };
        parsed.map_err(|e| invalid(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn docker_schema2_image_lists_config_then_layers() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":7,"digest":"{D}"}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":9,"digest":"{D}"}}]}}"#
        );
        let Manifest::Image(image) =
            Manifest::parse(&Digest::sha256_of(b"x"), json.as_bytes()).unwrap()
        else {
            panic!("an image manifest")
        };
        let sizes: Vec<u64> = image.blobs().map(|d| d.size).collect();
        assert_eq!(sizes, [7, 9]);
    }

    #[test]
    fn schema1_and_shapeless_json_are_refused_with_the_reason() {
        let digest = Digest::sha256_of(b"x");
        let e = Manifest::parse(&digest, br#"{"schemaVersion":1,"fsLayers":[]}"#).unwrap_err();
        assert!(e.to_string().contains("schema 1 is not"), "{e}");
        let e = Manifest::parse(&digest, br#"{"schemaVersion":2}"#).unwrap_err();
        assert!(e.to_string().contains("neither"), "{e}");
        let e = Manifest::parse(&digest, b"nope").unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
    }

    #[test]
    fn platforms_parse_print_and_match_by_variant_only_when_asked() {
        let arm7: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(arm7.to_string(), "linux/arm/v7");
        let arm: Platform = "linux/arm".parse().unwrap();
        assert!(arm.matches(&arm7));
        assert!(!arm7.matches(&"linux/arm/v6".parse().unwrap()));
        assert!(!arm.matches(&"linux/amd64".parse().unwrap()));
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/arm/"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }
}
