//! Talos: `RegistryMirrorConfig` documents (Talos ≥ 1.12), the
//! `machine.registries` patch for older Talos, and the `talosctl cluster
//! create --registry-mirror` flags of local clusters.

use std::fmt::Write as _;

use super::{endpoint_url, file, header, quote};
use crate::client_config::{GeneratedFile, Request};

fn talos_endpoint(request: &Request<'_>, name: &str) -> String {
    let mut text = format!("  - url: {}\n", quote(&endpoint_url(request, name)));
    if request.path_prefix {
        text.push_str("    overridePath: true\n");
    }
    text
}

/// Talos ≥ 1.12: one `RegistryMirrorConfig` per upstream (and `*`), plus a
/// `RegistryTLSConfig` carrying the CA for an https mirror.
pub(super) fn talos_documents(request: &Request<'_>) -> Result<GeneratedFile, String> {
    let mut docs = Vec::new();
    let mut names: Vec<&str> = request.upstreams.iter().map(|u| u.name.as_str()).collect();
    if request.all_upstreams && !request.path_prefix {
        names.push("*");
    }
    for name in names {
        docs.push(format!(
            "apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: {}\nendpoints:\n{}{}",
            quote(name),
            talos_endpoint(request, name),
            skip_fallback_line(request, "")
        ));
    }
    if let Some(ca) = &request.ca_file {
        let pem = std::fs::read_to_string(ca)
            .map_err(|e| format!("cannot read --ca-file {}: {e}", ca.display()))?;
        let mut doc = format!(
            "apiVersion: v1alpha1\nkind: RegistryTLSConfig\nname: {}\nca: |\n",
            quote(request.mirror.authority())
        );
        for line in pem.lines() {
            let _ = writeln!(doc, "  {line}");
        }
        docs.push(doc);
    }
    if let Some(auth) = &request.auth {
        docs.push(format!(
            "apiVersion: v1alpha1\nkind: RegistryAuthConfig\nname: {}\nusername: {}\npassword: {}\n",
            quote(request.mirror.authority()),
            quote(&auth.username),
            quote(&auth.password)
        ));
    }
    let text = format!(
        "{}# Talos 1.12 and later; older Talos: --form machine-patch.\n{}",
        header("Talos"),
        docs.join("---\n")
    );
    Ok(file("registry-mirrors.yaml", text))
}

/// `skipFallback: true` at `indent` with `--skip-fallback`, else nothing.
fn skip_fallback_line(request: &Request<'_>, indent: &str) -> String {
    if request.skip_fallback {
        format!("{indent}skipFallback: true\n")
    } else {
        String::new()
    }
}

/// `talosctl cluster create` with one `--registry-mirror NAME=URL` per
/// upstream (seed 000's command line), for local Talos clusters. The catch-all
/// `*` is left out: the flag is meant for named registries.
pub(super) fn talosctl_flags(request: &Request<'_>) -> GeneratedFile {
    let mut text = format!(
        "{}# A local Talos cluster (docker or QEMU provisioner) pulling through the mirror;\n# the mirror URL must be an address the nodes reach (the bridge IP, not 127.0.0.1).\n# Each registry falls back to itself when the mirror fails.\ntalosctl cluster create",
        header("talosctl")
    );
    for upstream in &request.upstreams {
        let _ = write!(
            text,
            " \\\n    --registry-mirror {}={}",
            upstream.name.as_str(),
            request.mirror.base()
        );
    }
    text.push('\n');
    file("talosctl-cluster-create.sh", text)
}

/// Talos before 1.12: the `machine.registries` patch.
pub(super) fn talos_machine_patch(request: &Request<'_>) -> GeneratedFile {
    let mut text = format!(
        "{}# Talos before 1.12: apply with `talosctl patch machineconfig --patch @FILE`.\nmachine:\n  registries:\n    mirrors:\n",
        header("Talos")
    );
    let mut names: Vec<&str> = request.upstreams.iter().map(|u| u.name.as_str()).collect();
    if request.all_upstreams && !request.path_prefix {
        names.push("*");
    }
    for name in names {
        let _ = write!(
            text,
            "      {}:\n        endpoints:\n          - {}\n",
            quote(name),
            quote(&endpoint_url(request, name))
        );
        if request.path_prefix {
            text.push_str("        overridePath: true\n");
        }
        text.push_str(&skip_fallback_line(request, "        "));
    }
    if request.mirror.is_https() {
        text.push_str("    # A private CA for the mirror goes in machine.registries.config.<host:port>.tls.ca.\n");
    }
    if let Some(auth) = &request.auth {
        let _ = write!(
            text,
            "    config:\n      {}:\n        auth:\n          username: {}\n          password: {}\n",
            quote(request.mirror.authority()),
            quote(&auth.username),
            quote(&auth.password)
        );
    }
    file("machine-registries.patch.yaml", text)
}
