//! `oci-cache export` and `oci-cache import`: cached images to and from an
//! OCI image layout (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`), the
//! format skopeo, umoci, crane and containerd read, so a site carries its
//! cache across an air gap on a disk.
//!
//! `index.json` names each image by its full reference in the
//! `org.opencontainers.image.ref.name` annotation
//! (`docker.io/library/alpine:3.20`), which is how `import` knows the
//! upstream and repository to record it under, and what `skopeo copy
//! oci:DIR:REF` selects by.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use futures::StreamExt;
use indicatif::HumanBytes;
use oci_cache_core::digest::{Digest, DigestVerifier};
use oci_cache_core::manifest::{Descriptor, Index, Platform, REF_NAME_ANNOTATION};
use oci_cache_core::mirror::MirrorConfig;
use oci_cache_core::observe::CacheOutcome;
use oci_cache_core::reference::{ManifestRef, Reference, Tag};
use oci_cache_core::storage::{ByteStream, Storage, TagRecord};
use oci_cache_core::Error;
use tokio::io::AsyncWriteExt;

use crate::cli::{ExportArgs, ImportArgs};
use crate::engine::{self, BoxError, Engine};
use crate::images::{self, Target};
use crate::progress::Reporter;
use crate::walk::{walk, Absent, Tree};
use crate::warm::{chain, wait_stored};
use archive::{read_tar, write_tar};

/// The `oci-layout` file's content.
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Manifests larger than this in a layout are refused (the engine's default cap).
const MAX_MANIFEST: u64 = 4 << 20;
/// Read size for blob files.
const CHUNK: usize = 256 << 10;

pub(crate) fn export(args: &ExportArgs, err: &mut impl Write) -> ExitCode {
    engine::run(&args.serve, err, |settings| async move {
        let (engine, mirrors) = engine::build(&settings).await?;
        let targets = images::from_args(&args.list, &mirrors)?;
        let platforms = images::platforms(&args.list.platforms)?;
        match (&args.output, &args.tar) {
            (Some(dir), _) => export_to(&engine, &targets, &platforms, dir, dir).await,
            (None, Some(tar)) => {
                let staging = tempfile::Builder::new()
                    .prefix(".oci-cache-export-")
                    .tempdir_in(parent_of(tar))?;
                let code = export_to(&engine, &targets, &platforms, staging.path(), tar).await?;
                write_tar(staging.path(), tar).await?;
                Ok(code)
            }
            (None, None) => Err("export needs --output DIR or --tar FILE".into()),
        }
    })
}

pub(crate) fn import(args: &ImportArgs, err: &mut impl Write) -> ExitCode {
    if args.registry2_dir.is_some() || args.registry2_config.is_some() {
        return registry2::import(args, err);
    }
    engine::run(&args.serve, err, |settings| async move {
        let (engine, mirrors) = engine::build(&settings).await?;
        let platforms = images::platforms(&args.platforms)?;
        let repository = args.repository.as_deref();
        match (&args.dir, &args.tar) {
            (Some(dir), _) => {
                let layout = Layout { dir, named: dir };
                import_from(
                    engine.storage().as_ref(),
                    &mirrors,
                    &layout,
                    repository,
                    &platforms,
                )
                .await
            }
            (None, Some(tar)) => {
                // Unpacked under $TMPDIR: the tar's own disk may be read-only.
                let staging = tempfile::Builder::new()
                    .prefix("oci-cache-import-")
                    .tempdir()?;
                read_tar(tar, staging.path()).await?;
                let storage = engine.storage().as_ref();
                let layout = Layout {
                    dir: staging.path(),
                    named: tar,
                };
                import_from(storage, &mirrors, &layout, repository, &platforms).await
            }
            (None, None) => Err("import needs a layout DIR or --tar FILE".into()),
        }
    })
}

fn parent_of(file: &Path) -> &Path {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs")
        .join(digest.algorithm().as_str())
        .join(digest.hex())
}

/// Exports `targets` into the layout directory `dir`; `named` is what the
/// operator named (the directory, or the tar file it becomes).
async fn export_to(
    engine: &Engine,
    targets: &[Target],
    platforms: &[Platform],
    dir: &Path,
    named: &Path,
) -> Result<ExitCode, BoxError> {
    let reporter = Reporter::new("export");
    tokio::fs::create_dir_all(dir.join("blobs/sha256")).await?;
    tokio::fs::write(dir.join("oci-layout"), OCI_LAYOUT).await?;
    // Exporting into an existing layout adds to it (and replaces images of
    // the same name); a damaged index.json is an error, not overwritten.
    let mut index = if tokio::fs::try_exists(dir.join("index.json")).await? {
        read_index(dir).await?
    } else {
        Index {
            schema_version: 2,
            media_type: Some(oci_cache_core::manifest::media_type::OCI_INDEX.to_owned()),
            manifests: Vec::new(),
            annotations: Default::default(),
        }
    };
    let mut failed = 0usize;
    for target in targets {
        let bar = reporter.image(&target.to_string());
        let result = export_image(engine, target, platforms, dir, &bar).await;
        bar.finish();
        match result {
            Ok(tree) => {
                reporter.line(&format!(
                    "exported {target}: {} manifests, {} blobs, {}",
                    1 + tree.children.len(),
                    tree.blobs.len(),
                    HumanBytes(tree.blob_bytes())
                ));
                let name = target.reference.to_string();
                index
                    .manifests
                    .retain(|d| d.annotations.get(REF_NAME_ANNOTATION) != Some(&name));
                index.manifests.push(Descriptor {
                    media_type: tree.root.media_type.clone(),
                    digest: tree.root.digest.clone(),
                    size: tree.root.bytes.len() as u64,
                    platform: None,
                    annotations: [(REF_NAME_ANNOTATION.to_owned(), name)].into(),
                });
            }
            Err(e) => {
                failed += 1;
                reporter.line(&format!("FAILED {target}: {}", chain(e.as_ref())));
            }
        }
    }
    reporter.finish();
    // index.json last, and atomically: a layout never names an image whose
    // blobs are not all written.
    let tmp = dir.join(".index.json.tmp");
    tokio::fs::write(&tmp, serde_json::to_vec_pretty(&index)?).await?;
    tokio::fs::rename(&tmp, dir.join("index.json")).await?;
    reporter.line(&format!(
        "export: {} of {} images written to {}",
        targets.len() - failed,
        targets.len(),
        named.display()
    ));
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Writes one image's manifests and blobs into the layout, each verified
/// against its digest on the way (a blob corrupt in storage is not exported).
async fn export_image(
    engine: &Engine,
    target: &Target,
    platforms: &[Platform],
    dir: &Path,
    bar: &crate::progress::ImageBar,
) -> Result<Tree, BoxError> {
    let tree = walk(engine, target, platforms, None, Absent::Fail).await?;
    bar.set_total(tree.blob_bytes());
    for manifest in tree.manifests() {
        let stream: ByteStream = Box::pin(futures::stream::iter([Ok::<_, Error>(
            manifest.bytes.clone(),
        )]));
        write_blob(dir, &manifest.digest, manifest.bytes.len() as u64, stream).await?;
    }
    let mut filled = Vec::new();
    for blob in &tree.blobs {
        let path = blob_path(dir, &blob.digest);
        if tokio::fs::try_exists(&path).await? {
            bar.inc(blob.size);
            continue;
        }
        let response = engine
            .blob(&target.upstream, &target.repository, &blob.digest, None)
            .await?;
        if response.outcome != CacheOutcome::Hit {
            filled.push(&blob.digest);
        }
        let bar = bar.clone();
        let stream: ByteStream = Box::pin(response.stream.inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                bar.inc(chunk.len() as u64);
            }
        }));
        write_blob(dir, &blob.digest, blob.size, stream).await?;
    }
    // Blobs export had to fetch stay cached, as with warm.
    wait_stored(engine, &filled).await?;
    Ok(tree)
}

/// Writes a blob file beside its final name, checks digest and size, then renames it.
async fn write_blob(
    dir: &Path,
    digest: &Digest,
    size: u64,
    mut stream: ByteStream,
) -> Result<(), BoxError> {
    let path = blob_path(dir, digest);
    match tokio::fs::symlink_metadata(&path).await {
        Ok(meta) if meta.is_file() => return Ok(()),
        Ok(_) => {
            return Err(format!(
                "{} is not a regular file (a link or a directory); remove it and export again",
                path.display()
            )
            .into())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot check {}: {e}", path.display()).into()),
    }
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let tmp = path.with_extension("partial");
    // A leftover (or planted) `.partial` is removed, not followed: creating
    // with O_EXCL refuses any link someone left at that name.
    match tokio::fs::remove_file(&tmp).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot remove {}: {e}", tmp.display()).into())
        }
        _ => {}
    }
    let result = async {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await?;
        let mut verifier = DigestVerifier::new(digest.clone(), Some(size));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            verifier.update(&chunk)?;
            file.write_all(&chunk).await?;
        }
        verifier.finish()?;
        file.sync_all().await?;
        tokio::fs::rename(&tmp, &path).await?;
        Ok::<_, BoxError>(())
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

async fn read_index(dir: &Path) -> Result<Index, BoxError> {
    let path = dir.join("index.json");
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not an OCI image index: {e}", path.display()).into())
}

/// The reference an `index.json` entry is imported as.
fn entry_reference(entry: &Descriptor, repository: Option<&str>) -> Result<Reference, String> {
    let Some(name) = entry.annotations.get(REF_NAME_ANNOTATION) else {
        return Err(format!(
            "index.json entry {} has no {REF_NAME_ANNOTATION} annotation; it cannot be named in the cache",
            entry.digest
        ));
    };
    // A bare tag (what `skopeo copy … oci:DIR:v1` writes) belongs to --repository.
    if let (Some(repository), Ok(tag)) = (repository, Tag::new(name)) {
        return format!("{repository}:{tag}")
            .parse()
            .map_err(|e| format!("--repository {repository}: {e}"));
    }
    if !name.contains('/') {
        return Err(format!(
            "index.json names an image {name:?}, not a full reference; pass --repository REGISTRY/REPOSITORY to import it as REGISTRY/REPOSITORY:{name}"
        ));
    }
    let reference: Reference = name
        .parse()
        .map_err(|e| format!("index.json names {name:?}: {e}"))?;
    if let Some(digest) = reference.digest() {
        if digest != &entry.digest {
            return Err(format!(
                "index.json names {name} but points at {}",
                entry.digest
            ));
        }
    }
    Ok(reference)
}

/// A layout directory to import, and what the operator named: the
/// directory, or the archive it was unpacked from (messages name that).
struct Layout<'a> {
    dir: &'a Path,
    named: &'a Path,
}

async fn import_from(
    storage: &dyn Storage,
    mirrors: &MirrorConfig,
    layout: &Layout<'_>,
    repository: Option<&str>,
    platforms: &[Platform],
) -> Result<ExitCode, BoxError> {
    let dir = layout.dir;
    if !tokio::fs::try_exists(dir.join("oci-layout")).await? {
        return Err(format!(
            "{} is not an OCI image layout (no oci-layout file)",
            layout.named.display()
        )
        .into());
    }
    let index = read_index(dir).await?;
    let source = BlobDir::open(dir, DirKind::Layout)?.named(layout.named);
    let reporter = Reporter::new("import");
    let mut failed = 0usize;
    let mut cached = Cached::default();
    for entry in &index.manifests {
        let target = entry_reference(entry, repository).and_then(|r| Target::new(r, mirrors));
        let label = target
            .as_ref()
            .map_or_else(|_| entry.digest.to_string(), ToString::to_string);
        let result = match target {
            Ok(target) => {
                import_image(
                    storage,
                    &source,
                    &target,
                    &entry.digest,
                    Some(entry),
                    platforms,
                )
                .await
            }
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(imported) => {
                reporter.line(&format!("imported {label}: {imported}"));
                cached.add(&imported.cached);
            }
            Err(e) => {
                failed += 1;
                reporter.line(&format!("FAILED {label}: {}", chain(e.as_ref())));
            }
        }
    }
    reporter.finish();
    reporter.line(&format!(
        "import: {} of {} images imported from {}{}",
        index.manifests.len() - failed,
        index.manifests.len(),
        layout.named.display(),
        cached.skipped_note()
    ));
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Imports one image from `source`, starting at manifest `root` (`hint`:
/// the descriptor that names it, when there is one): every manifest and
/// blob is verified in the source first, so a bad source leaves nothing of
/// the image behind; then blobs, manifests bottom-up, and the tag record
/// last. The one write path of `import` for layouts and registry:2
/// directories alike.
pub(crate) async fn import_image(
    storage: &dyn Storage,
    source: &BlobDir,
    target: &Target,
    root: &Digest,
    hint: Option<&Descriptor>,
    platforms: &[Platform],
) -> Result<Imported, BoxError> {
    let by_digest = Target {
        manifest: ManifestRef::Digest(root.clone()),
        ..target.clone()
    };
    let tree = walk(source, &by_digest, platforms, hint, Absent::Skip).await?;
    for blob in &tree.blobs {
        let mut verifier = DigestVerifier::new(blob.digest.clone(), Some(blob.size));
        let mut stream = read_file(source.file(&blob.digest)?).await?;
        while let Some(chunk) = stream.next().await {
            verifier.update(&chunk?)?;
        }
        verifier
            .finish()
            .map_err(|e| format!("blob {} in {source}: {e}", blob.digest))?;
    }
    let mut cached = Cached::default();
    for blob in &tree.blobs {
        if storage.blob_stat(&blob.digest).await?.is_some() {
            cached.blobs += 1;
            cached.bytes += blob.size;
            continue;
        }
        let stream = read_file(source.file(&blob.digest)?).await?;
        storage
            .blob_write(&blob.digest, Some(blob.size), stream)
            .await?;
    }
    for manifest in tree.children.iter().rev().chain([&tree.root]) {
        storage.manifest_put(manifest).await?;
    }
    if let ManifestRef::Tag(tag) = &target.manifest {
        let record = TagRecord {
            digest: tree.root.digest.clone(),
            media_type: tree.root.media_type.clone(),
            checked_at: SystemTime::now(),
        };
        storage.tag_put(&target.key_for(tag), &record).await?;
    }
    Ok(Imported { tree, cached })
}

/// What [`import_image`] brought in.
pub(crate) struct Imported {
    pub(crate) tree: Tree,
    /// Blobs of the image the cache already held (not written again).
    pub(crate) cached: Cached,
}

/// Blobs an import found already in the cache and skipped.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Cached {
    pub(crate) blobs: usize,
    pub(crate) bytes: u64,
}

impl Cached {
    pub(crate) fn add(&mut self, other: &Cached) {
        self.blobs += other.blobs;
        self.bytes += other.bytes;
    }

    /// `; N blobs (SIZE) already in the cache were skipped`, or nothing.
    pub(crate) fn skipped_note(&self) -> String {
        if self.blobs == 0 {
            return String::new();
        }
        format!(
            "; {} blobs ({}) already in the cache were skipped",
            self.blobs,
            HumanBytes(self.bytes)
        )
    }
}

/// `N manifests, M blobs, SIZE`, and what was already cached.
impl std::fmt::Display for Imported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tree = &self.tree;
        write!(
            f,
            "{} manifests, {} blobs, {}",
            1 + tree.children.len(),
            tree.blobs.len(),
            HumanBytes(tree.blob_bytes())
        )?;
        match self.cached.blobs {
            0 => Ok(()),
            n if n == tree.blobs.len() => f.write_str(" (every blob already cached; skipped)"),
            n => write!(
                f,
                " ({n} blobs, {} already cached; skipped)",
                HumanBytes(self.cached.bytes)
            ),
        }
    }
}

mod archive;
mod registry2;
mod source;

use source::read_file;
pub(crate) use source::{BlobDir, DirKind};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn entry(name: &str) -> Descriptor {
        Descriptor {
            media_type: oci_cache_core::manifest::media_type::OCI_MANIFEST.to_owned(),
            digest: D.parse().unwrap(),
            size: 2,
            platform: None,
            annotations: [(REF_NAME_ANNOTATION.to_owned(), name.to_owned())].into(),
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn export_writes_through_no_link_planted_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let bytes = b"layer bytes".to_vec();
        let digest = Digest::sha256_of(&bytes);
        let path = blob_path(dir.path(), &digest);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&victim, path.with_extension("partial")).unwrap();
        let stream = futures::stream::iter([Ok(bytes::Bytes::from(bytes.clone()))]).boxed();
        write_blob(dir.path(), &digest, bytes.len() as u64, stream)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());

        // A link at the blob's own name is refused, not taken as the blob.
        let other = b"other layer".to_vec();
        let other_digest = Digest::sha256_of(&other);
        let other_path = blob_path(dir.path(), &other_digest);
        std::os::unix::fs::symlink(&victim, &other_path).unwrap();
        let stream = futures::stream::iter([Ok(bytes::Bytes::from(other.clone()))]).boxed();
        let e = write_blob(dir.path(), &other_digest, other.len() as u64, stream)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    }

    #[test]
    fn layout_names_become_references() {
        let full = entry_reference(&entry("ghcr.io/org/app:v1"), None).unwrap();
        assert_eq!(full.to_string(), "ghcr.io/org/app:v1");
        let by_digest = entry_reference(&entry(&format!("docker.io/library/x@{D}")), None);
        assert_eq!(by_digest.unwrap().digest().unwrap().as_str(), D);
        let tag = entry_reference(&entry("v1"), Some("ghcr.io/org/app")).unwrap();
        assert_eq!(tag.to_string(), "ghcr.io/org/app:v1");
    }

    #[test]
    fn bare_tags_and_mismatched_digests_are_refused_with_the_fix() {
        let e = entry_reference(&entry("v1"), None).unwrap_err();
        assert!(e.contains("pass --repository"), "{e}");
        let other = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        let e = entry_reference(&entry(&format!("ghcr.io/a/b@{other}")), None).unwrap_err();
        assert!(e.contains(&format!("points at {D}")), "{e}");
        let mut unnamed = entry("x");
        unnamed.annotations.clear();
        assert!(entry_reference(&unnamed, None)
            .unwrap_err()
            .contains("no org.opencontainers"));
    }
}
