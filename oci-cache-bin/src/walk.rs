//! Walks an image from its top manifest: for an index every platform's
//! manifest (or only the chosen platforms), then every blob those manifests
//! name. One walk for warm, verify, export and import; only where manifests
//! come from differs (the engine, storage alone, upstream alone, a layout).

use bytes::Bytes;
use oci_cache_core::cache::accept_all_known;
use oci_cache_core::digest::Digest;
use oci_cache_core::manifest::media_type::{DOCKER_MANIFEST_LIST, OCI_INDEX};
use oci_cache_core::manifest::{Descriptor, Manifest, Platform};
use oci_cache_core::reference::ManifestRef;
use oci_cache_core::storage::{Storage, StoredManifest};
use oci_cache_core::Error;

use crate::engine::Engine;
use crate::images::Target;

/// Indexes of indexes are allowed this deep; deeper is refused as a loop.
const MAX_DEPTH: usize = 4;

/// Where a walk reads manifests from.
pub(crate) trait ManifestSource {
    /// The manifest `reference` of `target`'s repository; `hint` is the
    /// descriptor that pointed at it, when there was one.
    async fn manifest(
        &self,
        target: &Target,
        reference: &ManifestRef,
        hint: Option<&Descriptor>,
    ) -> Result<StoredManifest, Error>;
}

/// What an image consists of.
#[derive(Debug, Clone)]
pub(crate) struct Tree {
    /// The top manifest (an index or an image manifest).
    pub(crate) root: StoredManifest,
    /// The manifests below it, in walk order.
    pub(crate) children: Vec<StoredManifest>,
    /// Every blob (configs and layers), each digest once, in walk order.
    pub(crate) blobs: Vec<Descriptor>,
}

impl Tree {
    /// Total bytes of the blobs.
    pub(crate) fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }

    /// Root and children.
    pub(crate) fn manifests(&self) -> impl Iterator<Item = &StoredManifest> {
        std::iter::once(&self.root).chain(&self.children)
    }
}

/// What a walk does with an index entry its source does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Absent {
    /// It is an error: the image is incomplete (warm, verify, export).
    Fail,
    /// It is left out: a layout exported with `--platform` holds only the
    /// chosen platforms' manifests under the full index (import).
    Skip,
}

/// Walks `target` through `source`; `platforms` (empty: all) selects the
/// entries of an index. An index with none of the chosen platforms is an error.
pub(crate) async fn walk(
    source: &impl ManifestSource,
    target: &Target,
    platforms: &[Platform],
    hint: Option<&Descriptor>,
    absent: Absent,
) -> Result<Tree, Error> {
    let root = source.manifest(target, &target.manifest, hint).await?;
    let mut tree = Tree {
        root: root.clone(),
        children: Vec::new(),
        blobs: Vec::new(),
    };
    // (manifest, depth): an explicit stack instead of async recursion.
    let mut pending = vec![(root, 0usize)];
    while let Some((manifest, depth)) = pending.pop() {
        match Manifest::parse(&manifest.digest, &manifest.bytes)? {
            Manifest::Image(image) => {
                for blob in image.blobs() {
                    if !tree.blobs.iter().any(|b| b.digest == blob.digest) {
                        tree.blobs.push(blob.clone());
                    }
                }
            }
            Manifest::Index(index) => {
                if depth >= MAX_DEPTH {
                    return Err(invalid(&manifest.digest, "indexes nested too deep"));
                }
                let chosen: Vec<&Descriptor> = index
                    .manifests
                    .iter()
                    .filter(|d| wanted(d, platforms))
                    .collect();
                if chosen.is_empty() {
                    let names: Vec<String> = platforms.iter().map(ToString::to_string).collect();
                    return Err(Error::not_found(format!(
                        "a manifest for platform {} in index {}",
                        names.join(" or "),
                        manifest.digest
                    )));
                }
                let mut fetched = Vec::new();
                for child in chosen {
                    let reference = ManifestRef::Digest(child.digest.clone());
                    let child_manifest = match source
                        .manifest(target, &reference, Some(child))
                        .await
                    {
                        Err(e) if e.is_not_found() && absent == Absent::Skip => {
                            tracing::info!(digest = %child.digest, platform = ?child.platform, "index entry not in the source; skipped");
                            continue;
                        }
                        other => other?,
                    };
                    tree.children.push(child_manifest.clone());
                    fetched.push((child_manifest, depth + 1));
                }
                if fetched.is_empty() {
                    return Err(Error::not_found(format!(
                        "any manifest of index {}",
                        manifest.digest
                    )));
                }
                // Reversed so the stack pops them in index order.
                pending.extend(fetched.into_iter().rev());
            }
        }
    }
    Ok(tree)
}

/// An index entry is wanted when it is a manifest or index a registry
/// serves, and no platform was chosen or it is for one of them.
fn wanted(entry: &Descriptor, platforms: &[Platform]) -> bool {
    if !entry.is_manifest() {
        // Artifacts and future types: not pullable as images, so not part of one.
        tracing::warn!(digest = %entry.digest, media_type = %entry.media_type, "skipping index entry of a media type that is not an image manifest");
        return false;
    }
    if platforms.is_empty() {
        return true;
    }
    match &entry.platform {
        Some(p) => platforms.iter().any(|want| want.matches(p)),
        // A nested index without a platform may hold the chosen ones.
        None => [OCI_INDEX, DOCKER_MANIFEST_LIST].contains(&entry.media_type.as_str()),
    }
}

fn invalid(digest: &Digest, reason: &str) -> Error {
    Error::InvalidManifest {
        digest: digest.clone(),
        reason: reason.to_owned(),
    }
}

/// Manifests through the engine: cached, or fetched, verified and stored.
impl ManifestSource for Engine {
    async fn manifest(
        &self,
        target: &Target,
        reference: &ManifestRef,
        _hint: Option<&Descriptor>,
    ) -> Result<StoredManifest, Error> {
        let accept = accept_all_known();
        let response = Engine::manifest(
            self,
            &target.upstream,
            &target.repository,
            reference,
            &accept,
        )
        .await?;
        Ok(StoredManifest {
            digest: response.digest,
            media_type: response.media_type,
            bytes: response.bytes,
        })
    }
}

/// Manifests from storage alone, re-hashed: what `verify` trusts.
#[derive(Debug)]
pub(crate) struct StorageOnly<'a>(pub(crate) &'a dyn Storage);

impl ManifestSource for StorageOnly<'_> {
    async fn manifest(
        &self,
        target: &Target,
        reference: &ManifestRef,
        _hint: Option<&Descriptor>,
    ) -> Result<StoredManifest, Error> {
        let digest = match reference {
            ManifestRef::Digest(digest) => digest.clone(),
            ManifestRef::Tag(tag) => match self.0.tag_get(&target.key_for(tag)).await? {
                Some(record) => record.digest,
                None => return Err(Error::not_found(format!("tag record {target}"))),
            },
        };
        let Some(manifest) = self.0.manifest_get(&digest).await? else {
            return Err(Error::not_found(format!("manifest {digest}")));
        };
        check(&manifest.digest, &manifest.bytes)?;
        Ok(manifest)
    }
}

/// Manifests straight from upstream, stored nowhere: what `warm --dry-run` reads.
#[derive(Debug)]
pub(crate) struct UpstreamOnly<'a>(pub(crate) &'a Engine);

impl ManifestSource for UpstreamOnly<'_> {
    async fn manifest(
        &self,
        target: &Target,
        reference: &ManifestRef,
        _hint: Option<&Descriptor>,
    ) -> Result<StoredManifest, Error> {
        let accept = accept_all_known();
        let fetched = self
            .0
            .upstream()
            .manifest_get(&target.upstream, &target.repository, reference, &accept)
            .await?;
        let digest = match reference {
            ManifestRef::Digest(d) => {
                check(d, &fetched.bytes)?;
                d.clone()
            }
            ManifestRef::Tag(_) => Digest::sha256_of(&fetched.bytes),
        };
        Ok(StoredManifest {
            digest,
            media_type: fetched.head.media_type,
            bytes: fetched.bytes,
        })
    }
}

/// `bytes` must hash to `digest`.
pub(crate) fn check(digest: &Digest, bytes: &Bytes) -> Result<(), Error> {
    let actual = Digest::compute(digest.algorithm(), bytes);
    if &actual != digest {
        return Err(Error::DigestMismatch {
            expected: digest.clone(),
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use oci_cache_core::manifest::media_type::OCI_MANIFEST;
    use oci_cache_core::mirror::MirrorConfig;
    use serde_json::json;

    use super::*;

    /// Manifests by digest, as a layout or storage would hold them.
    struct Map(HashMap<Digest, StoredManifest>);

    impl Map {
        fn add(&mut self, media_type: &str, value: serde_json::Value) -> (Digest, u64) {
            let bytes = Bytes::from(serde_json::to_vec(&value).unwrap());
            let digest = Digest::sha256_of(&bytes);
            let size = bytes.len() as u64;
            self.0.insert(
                digest.clone(),
                StoredManifest {
                    digest: digest.clone(),
                    media_type: media_type.to_owned(),
                    bytes,
                },
            );
            (digest, size)
        }
    }

    impl ManifestSource for Map {
        async fn manifest(
            &self,
            _target: &Target,
            reference: &ManifestRef,
            _hint: Option<&Descriptor>,
        ) -> Result<StoredManifest, Error> {
            let ManifestRef::Digest(d) = reference else {
                return Err(Error::not_found("tag"));
            };
            self.0
                .get(d)
                .cloned()
                .ok_or_else(|| Error::not_found(d.to_string()))
        }
    }

    fn image(map: &mut Map, seed: &str, shared: &str) -> serde_json::Value {
        let blob = |s: &str| json!({"mediaType": "x", "digest": Digest::sha256_of(s.as_bytes()), "size": s.len()});
        let (digest, size) = map.add(
            OCI_MANIFEST,
            json!({"schemaVersion": 2, "config": blob(seed), "layers": [blob(shared), blob(&format!("{seed}-layer"))]}),
        );
        json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": size})
    }

    async fn walk_with(platforms: &[&str], absent: Absent, drop_arm: bool) -> Result<Tree, Error> {
        let mut map = Map(HashMap::new());
        let mut amd = image(&mut map, "amd", "base");
        amd["platform"] = json!({"os": "linux", "architecture": "amd64"});
        let mut arm = image(&mut map, "arm", "base");
        arm["platform"] = json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
        let artifact = json!({"mediaType": "application/vnd.example.sbom", "digest": Digest::sha256_of(b"sbom"), "size": 4});
        if drop_arm {
            let arm_digest: Digest = serde_json::from_value(arm["digest"].clone()).unwrap();
            map.0.remove(&arm_digest);
        }
        let (index, _) = map.add(
            OCI_INDEX,
            json!({"schemaVersion": 2, "manifests": [amd, arm, artifact]}),
        );
        let reference: oci_cache_core::reference::Reference =
            format!("docker.io/library/x@{index}").parse().unwrap();
        let target = Target::new(reference, &MirrorConfig::common()).unwrap();
        let platforms: Vec<Platform> = platforms.iter().map(|p| p.parse().unwrap()).collect();
        walk(&map, &target, &platforms, None, absent).await
    }

    #[tokio::test]
    async fn an_index_walks_every_platform_or_the_chosen_ones_and_shares_blobs() {
        let all = walk_with(&[], Absent::Fail, false).await.unwrap();
        assert_eq!(all.children.len(), 2, "the artifact entry is skipped");
        // Two configs, two own layers, one shared base layer.
        assert_eq!(all.blobs.len(), 5);
        let arm = walk_with(&["linux/arm64"], Absent::Fail, false)
            .await
            .unwrap();
        assert_eq!(arm.children.len(), 1);
        assert_eq!(arm.blobs.len(), 3);
        let e = walk_with(&["linux/s390x"], Absent::Fail, false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("platform linux/s390x"), "{e}");
    }

    #[tokio::test]
    async fn an_absent_platform_fails_a_walk_or_is_skipped_when_asked() {
        let e = walk_with(&[], Absent::Fail, true).await.unwrap_err();
        assert!(e.is_not_found(), "{e}");
        let partial = walk_with(&[], Absent::Skip, true).await.unwrap();
        assert_eq!(partial.children.len(), 1);
        assert_eq!(partial.blobs.len(), 3);
        let e = walk_with(&["linux/arm64"], Absent::Skip, true)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("any manifest of index"), "{e}");
    }
}
