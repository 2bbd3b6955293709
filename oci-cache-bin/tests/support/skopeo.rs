//! `skopeo` (Debian, 1.9) as the client: push layouts to the origin and copy
//! images through a mirror.
//!
//! Every call passes `--preserve-digests` so skopeo never recompresses a layer
//! or rewrites a manifest (by default it gzips uncompressed layers on push):
//! the digests the builder computed are the digests on the wire.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::image::Layout;

/// What one `skopeo copy` did.
#[derive(Debug)]
pub(crate) struct Copied {
    /// Digest of the top-level manifest (or index) skopeo copied.
    pub(crate) digest: String,
    /// Wall time of the copy.
    pub(crate) elapsed: Duration,
}

fn skopeo() -> Command {
    let mut cmd = Command::new("skopeo");
    // No policy.json is needed on the test machine, and no user auth file is read.
    cmd.arg("--insecure-policy");
    cmd
}

fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run skopeo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: skopeo failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Push `layout` to `registry_host` (`127.0.0.1:PORT`) as `repo_tag` (`repo:tag`),
/// all platforms of an index included.
pub(crate) fn push(layout: &Layout, registry_host: &str, repo_tag: &str) -> Duration {
    try_push(layout, registry_host, repo_tag).unwrap()
}

/// [`push`] that may fail (a refused push): skopeo's stderr on failure.
pub(crate) fn try_push(
    layout: &Layout,
    registry_host: &str,
    repo_tag: &str,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut cmd = skopeo();
    cmd.args(["copy", "--quiet", "--all", "--preserve-digests"])
        .arg("--dest-tls-verify=false")
        .arg(format!("oci:{}:{}", layout.dir.display(), layout.tag))
        .arg(format!("docker://{registry_host}/{repo_tag}"));
    run(cmd, &format!("push {repo_tag}"))?;
    Ok(start.elapsed())
}

/// `skopeo copy --all docker://<src_ref> oci:<dest_dir>:copy` over plain HTTP,
/// returning the copied top-level digest (skopeo verifies every blob's digest
/// while copying). `src_ref` is `127.0.0.1:PORT/repo:tag`.
pub(crate) fn copy(src_ref: &str, dest_dir: &Path) -> Result<Copied, String> {
    copy_with(src_ref, dest_dir, &["--src-tls-verify=false"])
}

/// [`copy`] with `source_args` (e.g. `--src-creds USER:PASS`,
/// `--src-cert-dir DIR`) instead of `--src-tls-verify=false`.
pub(crate) fn copy_with(
    src_ref: &str,
    dest_dir: &Path,
    source_args: &[&str],
) -> Result<Copied, String> {
    let start = Instant::now();
    let digest_file = dest_dir.with_extension("digest");
    let mut cmd = skopeo();
    cmd.args(["copy", "--quiet", "--all", "--preserve-digests"])
        .args(source_args)
        .arg("--digestfile")
        .arg(&digest_file)
        .arg(format!("docker://{src_ref}"))
        .arg(format!("oci:{}:copy", dest_dir.display()));
    run(cmd, &format!("copy {src_ref}"))?;
    let digest = std::fs::read_to_string(&digest_file)
        .map_err(|e| format!("copy {src_ref}: no digest file: {e}"))?
        .trim()
        .to_owned();
    Ok(Copied {
        digest,
        elapsed: start.elapsed(),
    })
}

/// Every blob file in an OCI layout directory written by [`copy`], as `sha256:<hex>`.
pub(crate) fn layout_blobs(dir: &Path) -> Vec<String> {
    let mut blobs: Vec<String> = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    blobs.sort();
    blobs
}
