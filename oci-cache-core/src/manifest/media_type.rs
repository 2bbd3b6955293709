//! The media types of image manifests and indexes (OCI and Docker schema 2).
//!
//! They live beside the manifest shapes, on the lowest floor that uses them:
//! the manifest parser, the engine's `Accept` negotiation and the push path
//! all read them from here.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-platform).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The four manifest types every current client accepts; what the engine asks
/// upstream for when it resolves a tag on behalf of any such client.
pub const KNOWN_MANIFEST_TYPES: [&str; 4] = [
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    OCI_INDEX,
];
