//! The `--tar` form of a layout: one archive file, packed by `export` and
//! unpacked by `import`, neither of which follows a link it did not make.

use std::path::Path;

use super::parent_of;
use crate::engine::BoxError;

/// Packs a layout directory into `tar`: written to a new file of a fresh
/// name beside it (never through a link someone left there), then renamed
/// over `tar` (which replaces a link at that name rather than following it).
pub(super) async fn write_tar(dir: &Path, tar: &Path) -> Result<(), BoxError> {
    let (dir, tar) = (dir.to_owned(), tar.to_owned());
    tokio::task::spawn_blocking(move || -> Result<(), BoxError> {
        let tmp = tempfile::Builder::new()
            .prefix(".oci-cache-export-")
            .suffix(".partial")
            .tempfile_in(parent_of(&tar))
            .map_err(|e| format!("cannot create a file beside {}: {e}", tar.display()))?;
        let (file, tmp) = tmp.into_parts();
        let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
        // Top-level names without `./`, as skopeo's oci-archive writes them.
        builder.append_path_with_name(dir.join("oci-layout"), "oci-layout")?;
        builder.append_path_with_name(dir.join("index.json"), "index.json")?;
        builder.append_dir_all("blobs", dir.join("blobs"))?;
        let file = builder
            .into_inner()?
            .into_inner()
            .map_err(|e| e.into_error())?;
        file.sync_all()?;
        tmp.persist(&tar)
            .map_err(|e| format!("cannot write {}: {e}", tar.display()))?;
        Ok(())
    })
    .await?
}

/// Unpacks `tar` into `dir`. An image layout is files and directories only:
/// a link (which `import` would read through, to any file of this machine)
/// or a device or FIFO entry refuses the whole archive, as does a path that
/// would land outside `dir`.
pub(super) async fn read_tar(tar: &Path, dir: &Path) -> Result<(), BoxError> {
    let (tar, dir) = (tar.to_owned(), dir.to_owned());
    tokio::task::spawn_blocking(move || -> Result<(), BoxError> {
        let cannot = |e: std::io::Error| format!("cannot unpack {}: {e}", tar.display());
        let file =
            std::fs::File::open(&tar).map_err(|e| format!("cannot open {}: {e}", tar.display()))?;
        let mut archive = tar::Archive::new(std::io::BufReader::new(file));
        for entry in archive.entries().map_err(cannot)? {
            let mut entry = entry.map_err(cannot)?;
            let kind = entry.header().entry_type();
            if kind.is_pax_global_extensions() {
                continue;
            }
            let name = entry.path().map_err(cannot)?.display().to_string();
            if !(kind.is_file() || kind.is_dir()) {
                return Err(format!(
                    "{}: entry {name:?} is a {}; an OCI image layout holds only files and \
                     directories, so the archive is refused (re-create it without links)",
                    tar.display(),
                    entry_kind(kind)
                )
                .into());
            }
            if !entry.unpack_in(&dir).map_err(cannot)? {
                return Err(format!(
                    "{}: entry {name:?} would land outside the layout; the archive is refused",
                    tar.display()
                )
                .into());
            }
        }
        Ok(())
    })
    .await?
}

/// What a refused tar entry is, in words.
fn entry_kind(kind: tar::EntryType) -> &'static str {
    if kind.is_symlink() {
        "symbolic link"
    } else if kind.is_hard_link() {
        "hard link"
    } else if kind.is_character_special() || kind.is_block_special() {
        "device"
    } else if kind.is_fifo() {
        "FIFO"
    } else {
        "special entry"
    }
}
