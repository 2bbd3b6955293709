//! `oci-cache import --registry2-dir DIR`: adopts what a registry:2
//! (distribution) pull-through container cached, so the first start after
//! switching is warm.
//!
//! distribution's filesystem layout, under `storage.filesystem.rootdirectory`:
//! - `docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data`: every blob and
//!   manifest, by digest;
//! - `docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link`:
//!   the digest a tag points at;
//! - `…/_manifests/revisions/sha256/<hex>/link`: each manifest the
//!   repository holds (including those pulled by digest).
//!
//! Every tag, then every revision no tag reached, is imported as one image
//! through the layout import's write path ([`super::import_image`]):
//! manifests and blobs are checked against their digests before anything is
//! written, so a corrupt blob is never imported. The link files hold digests
//! (parsed, never used as paths), and no link is followed out of the directory.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use oci_cache_core::digest::Digest;
use oci_cache_core::manifest::Platform;
use oci_cache_core::mirror::MirrorConfig;
use oci_cache_core::reference::{Reference, Registry, Tag};
use oci_cache_core::storage::Storage;
use oci_cache_core::Error;

use super::{import_image, BlobDir, Cached, DirKind, Imported};
use crate::cli::ImportArgs;
use crate::engine::{self, BoxError};
use crate::images::{self, Target};
use crate::progress::Reporter;
use crate::registry_compat::RegistryProxy;
use crate::warm::chain;

/// Where distribution keeps its data under the root directory.
const V2: &str = "docker/registry/v2";

/// One repository of the registry's storage.
#[derive(Debug)]
struct Repo {
    /// As registry:2 names it (`library/alpine`).
    name: String,
    dir: PathBuf,
}

/// What became of one image.
enum Outcome {
    Imported(Cached),
    /// Part of it is not in the directory (registry:2 caches what was
    /// pulled, which may be a manifest without its layers): not an error.
    Incomplete,
    /// Corrupt content, a link out of the directory, an unreadable file.
    Failed,
}

/// `oci-cache import --registry2-dir DIR [--upstream NAME | --registry2-config FILE]`.
///
/// A bare `--upstream NAME` (no `=URL`) names the upstream the repositories
/// belong to; `--upstream NAME=URL` still configures upstreams as everywhere.
pub(super) fn import(args: &ImportArgs, err: &mut impl Write) -> ExitCode {
    let mut serve = args.serve.clone();
    let (named, configured): (Vec<String>, Vec<String>) =
        std::mem::take(&mut serve.config.upstreams)
            .into_iter()
            .partition(|spec| !spec.contains('='));
    serve.config.upstreams = configured;
    engine::run(&serve, err, |settings| async move {
        let (engine, mirrors) = engine::build(&settings).await?;
        let platforms = images::platforms(&args.platforms)?;
        let proxy = match &args.registry2_config {
            Some(file) => Some(crate::registry_compat::proxy_of(file)?),
            None => None,
        };
        let upstream = chosen_upstream(&mirrors, &named, proxy.as_ref())?;
        let dir = args
            .registry2_dir
            .clone()
            .or_else(|| proxy.and_then(|p| p.root_directory))
            .ok_or(
                "give --registry2-dir DIR: the registry:2 container's storage directory \
                 (its /var/lib/registry volume)",
            )?;
        import_registry2(
            engine.storage().as_ref(),
            &mirrors,
            &dir,
            &upstream,
            &platforms,
        )
        .await
    })
}

/// The configured upstream the registry:2 repositories belong to.
fn chosen_upstream(
    mirrors: &MirrorConfig,
    named: &[String],
    proxy: Option<&RegistryProxy>,
) -> Result<Registry, String> {
    let (name, source) = match (named, proxy.and_then(|p| p.upstream.as_ref())) {
        ([], None) => return Ok(mirrors.default_upstream.clone()),
        ([name], None) => (name.clone(), "--upstream".to_owned()),
        ([], Some(upstream)) => (upstream.name.as_str().to_owned(), proxy_label(proxy)),
        ([name], Some(upstream))
            if mirrors.lookup(name).map(|u| &u.name) == Some(&upstream.name) =>
        {
            (name.clone(), "--upstream".to_owned())
        }
        ([name], Some(upstream)) => {
            return Err(format!(
                "--upstream {name} and {} ({}) disagree; give one of them",
                proxy_label(proxy),
                upstream.origin.url
            ))
        }
        _ => {
            return Err(format!(
            "--upstream is given {} names ({}); one registry:2 directory belongs to one upstream",
            named.len(),
            named.join(", ")
        ))
        }
    };
    match mirrors.lookup(&name) {
        Some(upstream) => Ok(upstream.name.clone()),
        None => {
            let url = proxy
                .and_then(|p| p.upstream.as_ref())
                .map_or_else(|| "URL".to_owned(), |u| u.origin.url.clone());
            Err(format!(
                "{source} names upstream {name}, which is not configured here; add it \
                 (--upstream {name}={url}, an [[upstream]] table, or --registry-config FILE) \
                 as serve has it, and import again"
            ))
        }
    }
}

fn proxy_label(proxy: Option<&RegistryProxy>) -> String {
    proxy.map_or_else(String::new, |p| {
        format!("proxy.remoteurl of {}", p.file.display())
    })
}

/// Imports the registry:2 storage under `dir` into `storage`, its
/// repositories under `upstream` (a configured upstream's name).
async fn import_registry2(
    storage: &dyn Storage,
    mirrors: &MirrorConfig,
    dir: &Path,
    upstream: &Registry,
    platforms: &[Platform],
) -> Result<ExitCode, BoxError> {
    let source = BlobDir::open(dir, DirKind::Registry2)?;
    let repositories = source.root().join(V2).join("repositories");
    if !repositories.is_dir() {
        return Err(format!(
            "{} is not registry:2 storage (it has no {V2}/repositories); give the directory \
             registry:2's storage.filesystem.rootdirectory names (the container's \
             /var/lib/registry volume)",
            dir.display()
        )
        .into());
    }
    let reporter = Reporter::new("import");
    let (mut imported, mut incomplete, mut failed) = (0usize, 0usize, 0usize);
    let mut cached = Cached::default();
    let mut count = |outcome: Outcome| match outcome {
        Outcome::Imported(skipped) => {
            imported += 1;
            cached.add(&skipped);
        }
        Outcome::Incomplete => incomplete += 1,
        Outcome::Failed => failed += 1,
    };
    for repo in list_repositories(&repositories, &reporter) {
        let mut done: HashSet<Digest> = HashSet::new();
        let tags = match tag_links(&source, &repo) {
            Ok(tags) => tags,
            Err(e) => {
                reporter.line(&format!("FAILED {}: {e}", repo.name));
                count(Outcome::Failed);
                continue;
            }
        };
        for (tag, digest) in tags {
            let name = format!("{upstream}/{}:{tag}", repo.name);
            let outcome = import_one(
                storage, mirrors, &source, &name, &digest, platforms, &mut done,
            );
            count(report(&reporter, &name, outcome.await));
            // Reported once, under its tag, however it went.
            done.insert(digest);
        }
        let revisions = match revision_links(&source, &repo) {
            Ok(revisions) => revisions,
            Err(e) => {
                reporter.line(&format!("FAILED {}: {e}", repo.name));
                count(Outcome::Failed);
                continue;
            }
        };
        for digest in revisions {
            if done.contains(&digest) {
                continue;
            }
            let name = format!("{upstream}/{}@{digest}", repo.name);
            let outcome = import_one(
                storage, mirrors, &source, &name, &digest, platforms, &mut done,
            );
            count(report(&reporter, &name, outcome.await));
        }
    }
    reporter.finish();
    reporter.line(&format!(
        "import: {imported} images imported from registry:2 storage {} as upstream {upstream}; \
         {incomplete} incomplete (not imported; the first pull fetches them), {failed} failed{}",
        dir.display(),
        cached.skipped_note()
    ));
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Imports the image `name` (whose top manifest is `root`) and adds its
/// manifests to `done`.
async fn import_one(
    storage: &dyn Storage,
    mirrors: &MirrorConfig,
    source: &BlobDir,
    name: &str,
    root: &Digest,
    platforms: &[Platform],
    done: &mut HashSet<Digest>,
) -> Result<Imported, BoxError> {
    let reference: Reference = name.parse().map_err(|e| format!("{name}: {e}"))?;
    let target = Target::new(reference, mirrors)?;
    let imported = import_image(storage, source, &target, root, None, platforms).await?;
    done.extend(imported.tree.manifests().map(|m| m.digest.clone()));
    Ok(imported)
}

fn report(reporter: &Reporter, name: &str, result: Result<Imported, BoxError>) -> Outcome {
    match result {
        Ok(imported) => {
            reporter.line(&format!("imported {name}: {imported}"));
            Outcome::Imported(imported.cached)
        }
        Err(e) if e.downcast_ref::<Error>().is_some_and(Error::is_not_found) => {
            reporter.line(&format!(
                "incomplete {name}: {} (registry:2 holds only what was pulled)",
                chain(e.as_ref())
            ));
            Outcome::Incomplete
        }
        Err(e) => {
            reporter.line(&format!("FAILED {name}: {}", chain(e.as_ref())));
            Outcome::Failed
        }
    }
}

/// The repositories under `dir` (`repositories/`), by name: a directory
/// with `_manifests` is one; others are namespaces to descend into. A link
/// is not followed (reported instead): it could lead anywhere.
fn list_repositories(dir: &Path, reporter: &Reporter) -> Vec<Repo> {
    let mut found = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, prefix)) = pending.pop() {
        let entries = match sorted_entries(&path) {
            Ok(entries) => entries,
            Err(e) => {
                reporter.line(&format!("FAILED {}: {e}", path.display()));
                continue;
            }
        };
        for (name, kind, child) in entries {
            if name.starts_with('_') {
                continue;
            }
            let full = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if kind.is_symlink() {
                reporter.line(&format!(
                    "skipped {}: a link, not followed ({})",
                    full,
                    child.display()
                ));
                continue;
            }
            if !kind.is_dir() {
                continue;
            }
            if child.join("_manifests").is_dir() {
                found.push(Repo {
                    name: full.clone(),
                    dir: child.clone(),
                });
            }
            pending.push((child, full));
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// The entries of `dir` with their types (links not followed), by name.
fn sorted_entries(dir: &Path) -> std::io::Result<Vec<(String, std::fs::FileType, PathBuf)>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        entries.push((name, entry.file_type()?, entry.path()));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// The digest in a link file (`sha256:<hex>`), read only inside the directory.
fn read_link(source: &BlobDir, path: &Path) -> Result<Option<Digest>, BoxError> {
    let Some(file) = source.inside(path)? else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let digest = text
        .trim()
        .parse()
        .map_err(|e| format!("{} holds no digest: {e}", path.display()))?;
    Ok(Some(digest))
}

/// `_manifests/tags/<tag>/current/link` of each tag.
fn tag_links(source: &BlobDir, repo: &Repo) -> Result<Vec<(Tag, Digest)>, BoxError> {
    let dir = repo.dir.join("_manifests/tags");
    let mut tags = Vec::new();
    if !dir.is_dir() {
        return Ok(tags);
    }
    for (name, kind, path) in sorted_entries(&dir)? {
        if !kind.is_dir() {
            continue;
        }
        let tag = Tag::new(&name).map_err(|e| format!("{}: tag {name:?}: {e}", repo.name))?;
        if let Some(digest) = read_link(source, &path.join("current/link"))? {
            tags.push((tag, digest));
        }
    }
    Ok(tags)
}

/// `_manifests/revisions/<alg>/<hex>/link` of each manifest.
fn revision_links(source: &BlobDir, repo: &Repo) -> Result<Vec<Digest>, BoxError> {
    let dir = repo.dir.join("_manifests/revisions");
    let mut digests = Vec::new();
    if !dir.is_dir() {
        return Ok(digests);
    }
    for (_, kind, algorithm) in sorted_entries(&dir)? {
        if !kind.is_dir() {
            continue;
        }
        for (_, kind, revision) in sorted_entries(&algorithm)? {
            if kind.is_dir() {
                if let Some(digest) = read_link(source, &revision.join("link"))? {
                    digests.push(digest);
                }
            }
        }
    }
    Ok(digests)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
