//! Where `import` reads from: a directory of blobs named by digest (an OCI
//! image layout, or registry:2's storage), as files and as manifests.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use oci_cache_core::digest::Digest;
use oci_cache_core::manifest::{is_manifest_type, Descriptor, Manifest};
use oci_cache_core::reference::ManifestRef;
use oci_cache_core::storage::{ByteStream, StoredManifest};
use oci_cache_core::Error;
use tokio::io::AsyncReadExt;

use super::{blob_path, CHUNK, MAX_MANIFEST};
use crate::engine::BoxError;
use crate::images::Target;
use crate::walk::{check, ManifestSource};

/// A file as a stream of chunks.
pub(super) async fn read_file(path: PathBuf) -> Result<ByteStream, Error> {
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Error::not_found(format!("{} ({e})", path.display())))?;
    let stream = futures::stream::try_unfold(file, move |mut file| async move {
        let mut buf = vec![0u8; CHUNK];
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| Error::storage("layout", "cannot read a layout blob", e))?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), file)))
    });
    Ok(Box::pin(stream))
}

/// How a directory of content names the file of each blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirKind {
    /// An OCI image layout: `blobs/<alg>/<hex>`.
    Layout,
    /// registry:2 (distribution) filesystem storage:
    /// `docker/registry/v2/blobs/<alg>/<first two hex>/<hex>/data`.
    Registry2,
}

/// A directory import reads blobs and manifests from, by digest. Paths are
/// built only from parsed digests, and a file reached through a link that
/// leads out of the directory is refused: importing must not read other
/// files of this machine into the cache.
#[derive(Debug, Clone)]
pub(crate) struct BlobDir {
    /// The directory with every link resolved.
    root: PathBuf,
    kind: DirKind,
    /// What messages call it: the directory as given, or the archive it
    /// was unpacked from.
    named: PathBuf,
}

impl BlobDir {
    /// `dir`, which must exist.
    pub(crate) fn open(dir: &Path, kind: DirKind) -> Result<BlobDir, BoxError> {
        let root = std::fs::canonicalize(dir)
            .map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
        Ok(BlobDir {
            root,
            kind,
            named: dir.to_path_buf(),
        })
    }

    /// The same directory, called `named` in messages (the archive a
    /// layout was unpacked from).
    pub(crate) fn named(mut self, named: &Path) -> BlobDir {
        self.named = named.to_path_buf();
        self
    }

    /// The directory, links resolved.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The file holding `digest`, checked to lie inside the directory.
    pub(crate) fn file(&self, digest: &Digest) -> Result<PathBuf, Error> {
        let path = match self.kind {
            DirKind::Layout => blob_path(&self.root, digest),
            DirKind::Registry2 => {
                let hex = digest.hex();
                self.root
                    .join("docker/registry/v2/blobs")
                    .join(digest.algorithm().as_str())
                    .join(hex.get(..2).unwrap_or(hex))
                    .join(hex)
                    .join("data")
            }
        };
        self.inside(&path)?
            .ok_or_else(|| Error::not_found(format!("blob {digest} in {self}")))
    }

    /// `path` with links resolved, `None` if it does not exist; refused
    /// when it leads out of the directory.
    pub(crate) fn inside(&self, path: &Path) -> Result<Option<PathBuf>, Error> {
        let Ok(resolved) = std::fs::canonicalize(path) else {
            return Ok(None);
        };
        if resolved.starts_with(&self.root) {
            return Ok(Some(resolved));
        }
        Err(Error::Storage {
            backend: "import directory",
            message: format!(
                "{} is a link to {}, outside {}; links out of an import directory are not \
                 followed (copy the file in instead)",
                path.display(),
                resolved.display(),
                self.root.display()
            ),
            source: None,
        })
    }
}

impl std::fmt::Display for BlobDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.named.display().fmt(f)
    }
}

impl ManifestSource for BlobDir {
    async fn manifest(
        &self,
        _target: &Target,
        reference: &ManifestRef,
        hint: Option<&Descriptor>,
    ) -> Result<StoredManifest, Error> {
        let ManifestRef::Digest(digest) = reference else {
            return Err(Error::not_found(format!("manifest {reference} in {self}")));
        };
        let path = self.file(digest)?;
        let size = tokio::fs::metadata(&path)
            .await
            .map_err(|_| Error::not_found(format!("manifest {digest} in {self}")))?
            .len();
        if size > MAX_MANIFEST {
            return Err(Error::TooLarge {
                what: format!("manifest {digest}"),
                limit: MAX_MANIFEST,
                actual: size,
            });
        }
        let bytes = Bytes::from(
            tokio::fs::read(&path)
                .await
                .map_err(|e| Error::storage("layout", "cannot read a manifest", e))?,
        );
        check(digest, &bytes)?;
        let media_type = hint
            .map(|d| d.media_type.clone())
            .filter(|t| !t.is_empty())
            .or_else(|| json_media_type(&bytes))
            .unwrap_or_else(|| shape_media_type(digest, &bytes));
        // The cache serves a manifest with its media type as Content-Type.
        if !is_manifest_type(&media_type) {
            return Err(Error::InvalidManifest {
                digest: digest.clone(),
                reason: format!(
                    "its media type {media_type} is not a manifest media type \
                     (an OCI or Docker image manifest or index)"
                ),
            });
        }
        Ok(StoredManifest {
            digest: digest.clone(),
            media_type,
            bytes,
        })
    }
}

/// The OCI media type of a manifest without a `mediaType` field (optional
/// in OCI), by its shape: an index has `manifests`.
fn shape_media_type(digest: &Digest, bytes: &[u8]) -> String {
    use oci_cache_core::manifest::media_type::{OCI_INDEX, OCI_MANIFEST};
    match Manifest::parse(digest, bytes) {
        Ok(Manifest::Index(_)) => OCI_INDEX,
        _ => OCI_MANIFEST,
    }
    .to_owned()
}

fn json_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct MediaType {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<MediaType>(bytes).ok()?.media_type
}
