//! The fields of a manifest that pushes and referrers listings read besides
//! the shape [`Manifest::parse`](super::Manifest::parse) checks: its media
//! type, `subject`, `artifactType`, config type and annotations.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Descriptor;
use crate::digest::Digest;
use crate::{Error, PushErrorKind, Result};

/// The fields of a manifest's JSON that pushes and referrers listings read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestFields {
    media_type: Option<String>,
    subject: Option<Descriptor>,
    artifact_type: Option<String>,
    config: Option<ConfigType>,
    /// Kept loose: a manifest with odd annotations is still accepted, and
    /// its referrer descriptor then carries none.
    annotations: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigType {
    media_type: Option<String>,
}

impl ManifestFields {
    /// Parses `bytes`; not JSON (or fields of the wrong JSON type) is an
    /// invalid manifest.
    pub(crate) fn parse(bytes: &[u8]) -> Result<ManifestFields> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::push(PushErrorKind::ManifestInvalid, format!("not JSON: {e}")))
    }

    /// The manifest's own `mediaType`, when it has one.
    pub(crate) fn media_type(&self) -> Option<String> {
        self.media_type.clone()
    }

    /// The digest the manifest's `subject` names.
    pub(crate) fn subject_digest(&self) -> Option<Digest> {
        self.subject.as_ref().map(|s| s.digest.clone())
    }

    /// The artifact type a referrers listing reports: `artifactType`, else
    /// an image manifest's config media type.
    pub(crate) fn artifact_type(&self) -> Option<String> {
        self.artifact_type
            .clone()
            .filter(|t| !t.is_empty())
            .or_else(|| self.config.as_ref()?.media_type.clone())
    }

    /// The manifest's annotations (none when they are not a string map).
    pub(crate) fn annotations(&self) -> BTreeMap<String, String> {
        self.annotations
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }
}
