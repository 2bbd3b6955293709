//! Builds OCI image layouts (index.json, oci-layout, blobs/sha256/…) with
//! deterministic bytes: the same spec always gives the same digests.
//!
//! Layers are uncompressed tars (`application/vnd.oci.image.layer.v1.tar`), one
//! file of seeded pseudo-random bytes each, so a layer's digest is also its
//! diff_id and nothing can be compressed away. Blobs are streamed to disk in
//! 64 KiB pieces while hashing, so memory stays flat for any size.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};

/// OCI image manifest media type.
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// What to build: one layer per entry of `layer_sizes` (file bytes inside the tar).
#[derive(Debug, Clone)]
pub(crate) struct ImageSpec {
    /// Seed: different seeds give different bytes, hence different digests.
    pub(crate) seed: u64,
    /// Size in bytes of the file in each layer.
    pub(crate) layer_sizes: Vec<u64>,
    /// Seed of the config alone (its label); `seed` when `None`. Two specs
    /// that differ only here give two images sharing every layer.
    pub(crate) config_seed: Option<u64>,
}

impl ImageSpec {
    /// `layers` layers of `layer_size` bytes each.
    pub(crate) fn new(seed: u64, layers: usize, layer_size: u64) -> ImageSpec {
        ImageSpec {
            seed,
            layer_sizes: vec![layer_size; layers],
            config_seed: None,
        }
    }

    /// The same layers under a config (hence an image) of its own.
    pub(crate) fn with_config_seed(mut self, seed: u64) -> ImageSpec {
        self.config_seed = Some(seed);
        self
    }
}

/// A blob written to the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Blob {
    /// `sha256:<hex>`.
    pub(crate) digest: String,
    /// Size in bytes.
    pub(crate) size: u64,
}

/// One platform image in a layout.
#[derive(Debug, Clone)]
pub(crate) struct BuiltImage {
    /// The image manifest.
    pub(crate) manifest: Blob,
    /// The config blob.
    pub(crate) config: Blob,
    /// The layers, in order.
    pub(crate) layers: Vec<Blob>,
}

impl BuiltImage {
    /// Config then layers: every blob a pull of this image fetches.
    pub(crate) fn blobs(&self) -> Vec<Blob> {
        std::iter::once(self.config.clone())
            .chain(self.layers.iter().cloned())
            .collect()
    }
}

/// An OCI layout directory holding one tag.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The layout directory.
    pub(crate) dir: PathBuf,
    /// The tag recorded in index.json (`org.opencontainers.image.ref.name`).
    pub(crate) tag: String,
    /// Digest the tag points at: the image manifest, or the index for multi-arch.
    pub(crate) digest: String,
    /// The platform images (one, or one per platform of the index).
    pub(crate) images: Vec<BuiltImage>,
}

impl Layout {
    /// Path of a blob in the layout.
    pub(crate) fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.dir, digest)
    }

    /// Every blob of every platform image (config and layers).
    pub(crate) fn all_blobs(&self) -> Vec<Blob> {
        self.images.iter().flat_map(BuiltImage::blobs).collect()
    }
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// A single-platform (linux/amd64) image tagged `tag` in a new layout at `dir`.
pub(crate) fn build_image(dir: &Path, tag: &str, spec: &ImageSpec) -> Layout {
    init_layout(dir);
    let image = write_image(dir, spec, "amd64");
    manifest_layout(dir, tag, image)
}

/// Tags the image manifest of `image` (already written) in the layout at `dir`.
fn manifest_layout(dir: &Path, tag: &str, image: BuiltImage) -> Layout {
    write_index_json(dir, tag, OCI_MANIFEST, &image.manifest);
    Layout {
        dir: dir.to_owned(),
        tag: tag.to_owned(),
        digest: image.manifest.digest.clone(),
        images: vec![image],
    }
}

/// A multi-arch OCI index (linux/amd64 and linux/arm64) tagged `tag` in a new
/// layout at `dir`; the arm64 image uses `spec.seed + 1`.
pub(crate) fn build_multiarch(dir: &Path, tag: &str, spec: &ImageSpec) -> Layout {
    init_layout(dir);
    let arm_spec = ImageSpec {
        seed: spec.seed.wrapping_add(1),
        ..spec.clone()
    };
    let images = vec![
        write_image(dir, spec, "amd64"),
        write_image(dir, &arm_spec, "arm64"),
    ];
    let manifests: Vec<_> = images
        .iter()
        .zip(["amd64", "arm64"])
        .map(|(img, arch)| {
            json!({
                "mediaType": OCI_MANIFEST,
                "digest": img.manifest.digest,
                "size": img.manifest.size,
                "platform": { "architecture": arch, "os": "linux" },
            })
        })
        .collect();
    index_layout(dir, tag, manifests, images)
}

/// Writes an OCI index of `manifests` (descriptors of `images`) and tags it.
fn index_layout(
    dir: &Path,
    tag: &str,
    manifests: Vec<serde_json::Value>,
    images: Vec<BuiltImage>,
) -> Layout {
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    let index_blob = write_bytes_blob(dir, &serde_json::to_vec(&index).unwrap());
    write_index_json(dir, tag, OCI_INDEX, &index_blob);
    Layout {
        dir: dir.to_owned(),
        tag: tag.to_owned(),
        digest: index_blob.digest,
        images,
    }
}

/// An OCI artifact: an image manifest with its own config type (or the empty
/// config) and blobs of any media type, as Helm, cosign and ORAS push them.
#[derive(Debug, Clone)]
pub(crate) struct ArtifactSpec {
    /// The manifest's `artifactType`, when set (OCI 1.1).
    pub(crate) artifact_type: Option<String>,
    /// `config.mediaType`.
    pub(crate) config_media_type: String,
    /// The config blob's bytes.
    pub(crate) config: Vec<u8>,
    /// The blobs: media type, bytes, annotations (a JSON object or null).
    pub(crate) layers: Vec<(String, Vec<u8>, serde_json::Value)>,
    /// Manifest annotations (a JSON object or null).
    pub(crate) annotations: serde_json::Value,
}

/// A layout holding one artifact, tagged `tag`.
pub(crate) fn build_artifact(dir: &Path, tag: &str, spec: &ArtifactSpec) -> Layout {
    init_layout(dir);
    let artifact = write_artifact(dir, spec);
    manifest_layout(dir, tag, artifact)
}

/// A layout holding an OCI index whose children are `specs` (each listed with
/// its `artifactType`), tagged `tag`.
pub(crate) fn build_artifact_index(dir: &Path, tag: &str, specs: &[ArtifactSpec]) -> Layout {
    init_layout(dir);
    let images: Vec<BuiltImage> = specs.iter().map(|s| write_artifact(dir, s)).collect();
    let manifests: Vec<_> = images
        .iter()
        .zip(specs)
        .map(|(built, spec)| {
            let mut entry = json!({
                "mediaType": OCI_MANIFEST,
                "digest": built.manifest.digest,
                "size": built.manifest.size,
            });
            if let Some(t) = &spec.artifact_type {
                entry["artifactType"] = json!(t);
            }
            entry
        })
        .collect();
    index_layout(dir, tag, manifests, images)
}

fn write_artifact(dir: &Path, spec: &ArtifactSpec) -> BuiltImage {
    let config = write_bytes_blob(dir, &spec.config);
    let layers: Vec<Blob> = spec
        .layers
        .iter()
        .map(|(_, bytes, _)| write_bytes_blob(dir, bytes))
        .collect();
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": spec.config_media_type, "digest": config.digest, "size": config.size },
        "layers": layers.iter().zip(&spec.layers).map(|(blob, (media_type, _, annotations))| {
            let mut d = json!({ "mediaType": media_type, "digest": blob.digest, "size": blob.size });
            if !annotations.is_null() {
                d["annotations"] = annotations.clone();
            }
            d
        }).collect::<Vec<_>>(),
    });
    if let Some(t) = &spec.artifact_type {
        manifest["artifactType"] = json!(t);
    }
    if !spec.annotations.is_null() {
        manifest["annotations"] = spec.annotations.clone();
    }
    let manifest = write_bytes_blob(dir, &serde_json::to_vec(&manifest).unwrap());
    BuiltImage {
        manifest,
        config,
        layers,
    }
}

fn init_layout(dir: &Path) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

fn write_index_json(dir: &Path, tag: &str, media_type: &str, target: &Blob) {
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type,
            "digest": target.digest,
            "size": target.size,
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn write_image(dir: &Path, spec: &ImageSpec, arch: &str) -> BuiltImage {
    let layers: Vec<Blob> = spec
        .layer_sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| write_layer(dir, spec.seed, i as u64, size))
        .collect();
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": { "Labels": { "e2e.seed": spec.config_seed.unwrap_or(spec.seed).to_string() } },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": layers.iter().map(|_| json!({ "created_by": "oci-cache e2e" })).collect::<Vec<_>>(),
    });
    let config = write_bytes_blob(dir, &serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size },
        "layers": layers.iter().map(|l| json!({
            "mediaType": OCI_LAYER_TAR, "digest": l.digest, "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest = write_bytes_blob(dir, &serde_json::to_vec(&manifest).unwrap());
    BuiltImage {
        manifest,
        config,
        layers,
    }
}

fn write_bytes_blob(dir: &Path, bytes: &[u8]) -> Blob {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    std::fs::write(blob_path(dir, &digest), bytes).unwrap();
    Blob {
        digest,
        size: bytes.len() as u64,
    }
}

/// Writes to a temp file in the blobs dir while hashing, renamed to its digest at the end.
struct BlobWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    hasher: Sha256,
    size: u64,
}

impl BlobWriter {
    fn new(dir: &Path, name: &str) -> BlobWriter {
        let tmp = dir.join("blobs/sha256").join(format!(".tmp-{name}"));
        BlobWriter {
            out: BufWriter::with_capacity(1 << 16, File::create(&tmp).unwrap()),
            tmp,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.out.write_all(bytes).unwrap();
        self.size += bytes.len() as u64;
    }

    fn finish(mut self, dir: &Path) -> Blob {
        self.out.flush().unwrap();
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        std::fs::rename(&self.tmp, blob_path(dir, &digest)).unwrap();
        Blob {
            digest,
            size: self.size,
        }
    }
}

/// A tar with one regular file `layer-<index>.bin` of `size` pseudo-random bytes.
fn write_layer(dir: &Path, seed: u64, index: u64, size: u64) -> Blob {
    let mut w = BlobWriter::new(dir, &format!("{seed}-{index}"));
    w.write(&ustar_header(&format!("layer-{index}.bin"), size));
    let mut rng = SplitMix64(seed.wrapping_mul(1_000_003).wrapping_add(index));
    let mut chunk = vec![0u8; 1 << 16];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        rng.fill(&mut chunk[..n]);
        w.write(&chunk[..n]);
        left -= n as u64;
    }
    // Pad the file to a 512-byte record, then the two zero records that end the archive.
    let pad = (512 - size % 512) % 512;
    w.write(&vec![0u8; pad as usize + 1024]);
    w.finish(dir)
}

/// A POSIX ustar header for a regular file, mode 0644, owner 0:0, mtime 0.
fn ustar_header(name: &str, size: u64) -> [u8; 512] {
    fn put(h: &mut [u8; 512], at: usize, bytes: &[u8]) {
        h[at..at + bytes.len()].copy_from_slice(bytes);
    }
    let mut h = [0u8; 512];
    assert!(name.len() < 100, "tar name too long: {name}");
    put(&mut h, 0, name.as_bytes());
    put(&mut h, 100, b"0000644\0");
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{size:011o}\0").as_bytes());
    put(&mut h, 136, b"00000000000\0");
    h[156] = b'0';
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    // The checksum is computed with its own field taken as eight spaces.
    put(&mut h, 148, b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    h
}

/// SplitMix64: tiny, fast, and the same bytes on every platform.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[test]
fn builds_are_deterministic_and_valid() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let spec = ImageSpec::new(7, 2, 1000);
    let la = build_multiarch(a.path(), "v1", &spec);
    let lb = build_multiarch(b.path(), "v1", &spec);
    assert_eq!(la.digest, lb.digest, "same spec, same index digest");
    assert_ne!(la.images[0].layers, la.images[1].layers, "platforms differ");
    for blob in la.all_blobs() {
        let bytes = std::fs::read(la.blob_path(&blob.digest)).unwrap();
        assert_eq!(bytes.len() as u64, blob.size);
        assert_eq!(super::http::sha256_digest(&bytes), blob.digest);
    }
    // Header + 1000 bytes padded to 1024 + the 1024-byte end of archive.
    assert_eq!(la.images[0].layers[0].size, 512 + 1024 + 1024);
    let other = build_image(a.path(), "v2", &ImageSpec::new(8, 1, 10));
    assert_ne!(other.digest, la.images[0].manifest.digest);
}
