//! Mirror chains imported from other tools' files: a Talos machine
//! configuration (`--talos-config`) and a containerd `certs.d` tree
//! (`--containerd-hosts`).

use std::path::Path;

use oci_cache_core::mirror::{containerd, talos, Import};

/// The registry documents of a Talos machine configuration.
pub(super) fn load_talos(path: &Path) -> Result<Import, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read talos config {}: {e}", path.display()))?;
    talos::parse(&text, &path.display().to_string()).map_err(|e| e.to_string())
}

/// Every `<dir>/<registry>/hosts.toml` of a containerd `certs.d` tree, in
/// name order; directories without one (certificates only) are skipped.
pub(super) fn load_containerd_hosts(dir: &Path) -> Result<Import, String> {
    let cannot =
        |e: std::io::Error| format!("cannot read containerd hosts dir {}: {e}", dir.display());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(cannot)? {
        let entry = entry.map_err(cannot)?;
        if entry.file_type().map_err(cannot)?.is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    let mut import = Import::default();
    for name in names {
        let file = dir.join(&name).join("hosts.toml");
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                import.warnings.push(format!(
                    "{}: no hosts.toml; the directory is skipped (its certificates are not used)",
                    dir.join(&name).display()
                ));
                continue;
            }
            Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
        };
        let mut parsed = containerd::parse_hosts_toml(&name, &text, &file.display().to_string())
            .map_err(|e| e.to_string())?;
        // containerd reads relative certificate paths from the host's directory.
        let host_dir = dir.join(&name);
        for entry in &mut parsed.mirrors {
            for endpoint in entry.endpoints.iter_mut().chain(entry.origin.as_mut()) {
                let tls = &mut endpoint.tls;
                for path in [&mut tls.ca_file, &mut tls.client_cert, &mut tls.client_key]
                    .into_iter()
                    .flatten()
                {
                    if path.is_relative() {
                        *path = host_dir.join(&*path);
                    }
                }
            }
        }
        import.extend(parsed);
    }
    if import.mirrors.is_empty() {
        return Err(format!(
            "containerd hosts dir {} has no <registry>/hosts.toml; point --containerd-hosts at the certs.d directory itself",
            dir.display()
        ));
    }
    Ok(import)
}
