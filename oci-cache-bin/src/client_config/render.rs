//! One renderer per client: a [`Request`] in, the client's files out.
//!
//! Strings are written as JSON string literals ([`quote`]): that is valid in
//! TOML basic strings and YAML double-quoted scalars alike, so a registry
//! name such as `10.0.0.5:5000` or `*` can never break the syntax.

use std::fmt::Write as _;
use std::path::PathBuf;

use base64::Engine as _;
use oci_cache_core::mirror::{Credentials, DOCKER_HUB};
use serde_json::json;

use super::{ClientKind, Form, GeneratedFile, MirrorUrl, Request};

/// How long containerd waits to connect to the mirror before moving on
/// (its own default is 30 s, paid per blob when the mirror is down).
const DIAL_TIMEOUT: &str = "1s";
/// Where Kind nodes (and Kind's containerd config patch) read the hosts tree.
const KIND_CERTS_DIR: &str = "/etc/containerd/certs.d";
/// The `help` link of the generated `local-registry-hosting` ConfigMap.
const LOCAL_REGISTRY_HELP: &str = "https://kind.sigs.k8s.io/docs/user/local-registry/";

mod talos;

use talos::{talos_documents, talos_machine_patch, talosctl_flags};

/// Renders `kind`'s files for `request`.
pub(super) fn render(
    kind: ClientKind,
    request: &Request<'_>,
) -> Result<Vec<GeneratedFile>, String> {
    check_options(kind, request)?;
    match kind {
        ClientKind::Containerd => Ok(containerd_tree(request, "")),
        ClientKind::Talos => match request.form {
            Some(Form::MachinePatch) => Ok(vec![talos_machine_patch(request)]),
            Some(Form::Flags) => Ok(vec![talosctl_flags(request)]),
            _ => Ok(vec![talos_documents(request)?]),
        },
        ClientKind::Docker => docker(request).map(|f| vec![f]),
        ClientKind::Podman => Ok(vec![podman(request)]),
        ClientKind::Buildkit => Ok(vec![buildkit(request)]),
        ClientKind::Kind => Ok(kind_cluster(request)),
        ClientKind::K3s => Ok(vec![k3s(request)]),
    }
}

/// Options that do not apply to a KIND are refused rather than ignored.
fn check_options(kind: ClientKind, request: &Request<'_>) -> Result<(), String> {
    let path_prefix_kinds = [ClientKind::Containerd, ClientKind::Talos, ClientKind::Kind];
    if request.path_prefix && !path_prefix_kinds.contains(&kind) {
        return Err(format!(
            "--path-prefix applies to containerd, talos and kind; {} has one form only",
            kind_name(kind)
        ));
    }
    let form_fits = matches!(
        (kind, request.form),
        (_, None)
            | (
                ClientKind::Talos,
                Some(Form::Documents | Form::MachinePatch | Form::Flags)
            )
            | (ClientKind::Buildkit, Some(Form::Buildkitd | Form::Earthly))
    );
    if !form_fits {
        return Err(format!(
            "--form does not fit {}: talos takes documents, machine-patch or flags, buildkit takes buildkitd or earthly",
            kind_name(kind)
        ));
    }
    if request.skip_fallback && kind != ClientKind::Talos {
        return Err(format!(
            "--skip-fallback applies to talos; {} has no such setting",
            kind_name(kind)
        ));
    }
    if request.workers > 0 && kind != ClientKind::Kind {
        return Err("--workers applies to kind".to_owned());
    }
    if request.merge_into.is_some() && kind != ClientKind::Docker {
        return Err("--merge applies to docker (daemon.json)".to_owned());
    }
    if request.form == Some(Form::Flags) {
        if request.path_prefix || request.ca_file.is_some() || request.auth.is_some() {
            return Err("talosctl's --registry-mirror flag takes NAME=URL only: for --path-prefix, --ca-file or --username use the documents (or --form machine-patch) with `talosctl cluster create --config-patch @FILE`".to_owned());
        }
        if request.skip_fallback {
            return Err("talosctl's --registry-mirror flag has no skipFallback: use the documents with `talosctl cluster create --config-patch @FILE`".to_owned());
        }
    }
    if request.ca_file.is_some() && !request.mirror.is_https() {
        return Err("--ca-file needs an https:// --mirror".to_owned());
    }
    if request.local_registry.is_some()
        && !matches!(kind, ClientKind::Containerd | ClientKind::Kind)
    {
        return Err(format!(
            "--local-registry applies to kind and containerd; for {} push to the mirror's local prefix directly (MIRROR/local/app)",
            kind_name(kind)
        ));
    }
    if let Some(local) = &request.local_registry {
        let name = local.authority();
        if name == "_default" || request.upstreams.iter().any(|u| u.name.as_str() == name) {
            return Err(format!(
                "--local-registry {name} is also an upstream's name; give the name developers push to, such as localhost:5001/local"
            ));
        }
    }
    if request.upstreams.is_empty() {
        return Err("no upstream is configured; nothing to point clients at".to_owned());
    }
    Ok(())
}

fn kind_name(kind: ClientKind) -> &'static str {
    match kind {
        ClientKind::Containerd => "containerd",
        ClientKind::Talos => "talos",
        ClientKind::Docker => "docker",
        ClientKind::Podman => "podman",
        ClientKind::Buildkit => "buildkit",
        ClientKind::Kind => "kind",
        ClientKind::K3s => "k3s",
    }
}

/// Why `kind` gets no mirror credentials from `client-config`, and what to
/// do instead; `None` where the generated files carry them.
pub(super) fn auth_note(kind: ClientKind, mirror: &str) -> Option<String> {
    let host = MirrorUrl::parse(mirror)
        .map(|m| m.authority().to_owned())
        .unwrap_or_else(|_| mirror.to_owned());
    match kind {
        ClientKind::Docker => Some(format!(
            "the Docker daemon sends no credentials to a registry-mirror and daemon.json has no field for them; if the mirror runs with client authentication (--htpasswd, which protects every upstream by default), docker.io must be public on it (`--public-upstream docker.io`, or access = \"public\" in its [[upstream]]), or else pull {host}/docker.io/IMAGE after `docker login {host}`"
        )),
        ClientKind::Podman => Some(format!(
            "registries.conf holds no credentials; run `podman login {host}` (it writes auth.json, which podman, CRI-O and skopeo read for the mirror location)"
        )),
        ClientKind::Buildkit => Some(format!(
            "buildkitd.toml holds no credentials for mirrors; BuildKit takes them from the client's docker config: run `docker login {host}` where builds are started"
        )),
        ClientKind::Containerd | ClientKind::Talos | ClientKind::Kind | ClientKind::K3s => None,
    }
}

/// `Basic base64(user:password)`, the Authorization header value.
fn basic(auth: &Credentials) -> String {
    let pair = format!("{}:{}", auth.username, auth.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// `note` as `#` comment lines, one clause a line: a wrap inside a quoted
/// command would break copying it.
fn comment(note: &str) -> String {
    note.split("; ").fold(String::new(), |mut text, clause| {
        let _ = writeln!(text, "# {clause}");
        text
    })
}

/// The comment a KIND without credential support carries when `--username` is given.
fn auth_comment(kind: ClientKind, request: &Request<'_>) -> String {
    match (&request.auth, auth_note(kind, &request.mirror.base())) {
        (Some(_), Some(note)) => comment(&format!("Mirror credentials: {note}.")),
        _ => String::new(),
    }
}

/// A JSON string literal: also a TOML basic string and a YAML double-quoted scalar.
fn quote(text: &str) -> String {
    json!(text).to_string()
}

fn file(path: impl Into<PathBuf>, contents: String) -> GeneratedFile {
    GeneratedFile {
        path: path.into(),
        contents,
    }
}

/// The mirror endpoint for `upstream`: the mirror itself (the client names
/// the registry in `ns`), or `MIRROR/v2/NAME` for override_path.
fn endpoint_url(request: &Request<'_>, upstream: &str) -> String {
    if request.path_prefix {
        format!("{}/v2/{upstream}", request.mirror.base())
    } else {
        request.mirror.base()
    }
}

fn header(kind: &str) -> String {
    format!("# Points {kind} at the oci-cache mirror (generated by `oci-cache client-config`).\n")
}

/// containerd's directory name for a registry: `host:port` is used as is
/// (containerd on Linux looks it up so), `_default` for the catch-all.
fn containerd_host_block(request: &Request<'_>, url: &str, override_path: bool) -> String {
    let mut text = format!(
        "[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
        quote(url)
    );
    if override_path {
        text.push_str("  override_path = true\n");
    }
    let _ = writeln!(
        text,
        "  # Move on to the next host after {DIAL_TIMEOUT} when the mirror is unreachable\n  # (containerd's default is 30 s per request; containerd 1.6 ignores this key).\n  dial_timeout = {}",
        quote(DIAL_TIMEOUT)
    );
    if request.mirror.is_https() {
        match &request.ca_file {
            Some(ca) => {
                let _ = writeln!(text, "  ca = {}", quote(&ca.display().to_string()));
            }
            None => text.push_str(
                "  # For a certificate from a private CA: ca = \"/etc/containerd/certs.d/oci-cache-ca.pem\"\n",
            ),
        }
    }
    if let Some(auth) = &request.auth {
        // containerd sends a host's headers on every request to that host
        // only, so the origin after the mirror never sees them.
        let _ = write!(
            text,
            "  # The mirror's client credentials: keep this file readable by root only.\n  [host.{}.header]\n    Authorization = [{}]\n",
            quote(url),
            quote(&basic(auth))
        );
    }
    text
}

/// The `certs.d` tree, each path under `prefix`.
fn containerd_tree(request: &Request<'_>, prefix: &str) -> Vec<GeneratedFile> {
    let mut files = Vec::new();
    for upstream in &request.upstreams {
        let name = upstream.name.as_str();
        let text = format!(
            "{}# {name}: the mirror first, then the registry itself (server).\nserver = {}\n\n{}",
            header("containerd"),
            quote(&upstream.origin.url),
            containerd_host_block(request, &endpoint_url(request, name), request.path_prefix)
        );
        files.push(file(format!("{prefix}{name}/hosts.toml"), text));
    }
    if request.all_upstreams && !request.path_prefix {
        // The mirror refuses registries it does not serve; containerd then
        // goes to the registry itself, so the catch-all costs one request.
        let text = format!(
            "{}# Every other registry: the mirror first (it answers for the registries it\n# serves and refuses the rest), then the registry itself.\n\n{}",
            header("containerd"),
            containerd_host_block(request, &request.mirror.base(), request.path_prefix)
        );
        files.push(file(format!("{prefix}_default/hosts.toml"), text));
    }
    if let Some(local) = &request.local_registry {
        // Hosted repositories sit at the mirror's root (`/v2/local/app`),
        // so the mirror is this name's registry: no override_path, and
        // `server` is the mirror too, since the pushed name (`localhost`
        // in a Kind node is the node itself) may not reach it.
        let text = format!(
            "{}# {name}: the name developers push to, pulled from the mirror's hosted\n# repositories.\nserver = {}\n\n{}",
            header("containerd"),
            quote(&request.mirror.base()),
            containerd_host_block(request, &request.mirror.base(), false),
            name = local.name(),
        );
        files.push(file(
            format!("{prefix}{}/hosts.toml", local.authority()),
            text,
        ));
    }
    files
}

/// The KEP-1755 `local-registry-hosting` ConfigMap Tilt, ctlptl and
/// Skaffold read to learn where to push. The nodes pull the pushed name
/// itself (its `hosts.toml` sends them to the mirror), so image references
/// stay the same in and out of the cluster; pods reach the mirror by the
/// `--mirror` address.
fn local_registry_hosting(request: &Request<'_>) -> Option<GeneratedFile> {
    let local = request.local_registry.as_ref()?;
    let text = format!(
        "{}# Apply after creating the cluster: kubectl apply -f local-registry-hosting.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: local-registry-hosting\n  namespace: kube-public\ndata:\n  localRegistryHosting.v1: |\n    host: {name}\n    hostFromContainerRuntime: {name}\n    hostFromClusterNetwork: {cluster}\n    help: {help}\n",
        header("Tilt and other KEP-1755 tools"),
        name = quote(&local.name()),
        cluster = quote(&local.under(request.mirror.authority())),
        help = quote(LOCAL_REGISTRY_HELP),
    );
    Some(file("local-registry-hosting.yaml", text))
}

/// Docker mirrors Docker Hub only, and sends no registry name: the mirror
/// must serve docker.io as its default upstream.
fn docker(request: &Request<'_>) -> Result<GeneratedFile, String> {
    if !request.upstreams.iter().any(|u| u.serves_docker_hub()) {
        return Err(
            "the Docker daemon mirrors docker.io only; include --upstream docker.io".to_owned(),
        );
    }
    if request.default_upstream != DOCKER_HUB {
        return Err(format!(
            "the Docker daemon names no registry in its requests, so the mirror's default upstream must be docker.io (it is {}); set default_upstream = \"docker.io\"",
            request.default_upstream
        ));
    }
    let mut config = request.merge_into.clone().unwrap_or_default();
    prepend_unique(&mut config, "registry-mirrors", &request.mirror.base())?;
    if !request.mirror.is_https() {
        prepend_unique(
            &mut config,
            "insecure-registries",
            request.mirror.authority(),
        )?;
    }
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| format!("cannot render daemon.json: {e}"))?;
    Ok(file("daemon.json", text + "\n"))
}

/// Puts `value` first in the string list `key` of `config` (creating it),
/// dropping an equal entry further down: merging twice changes nothing, and
/// the mirror comes before any mirror already listed.
fn prepend_unique(
    config: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    value: &str,
) -> Result<(), String> {
    let mut list = match config.remove(key) {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(list)) => list,
        Some(other) => {
            return Err(format!(
                "daemon.json: \"{key}\" is {other}, not a list of strings; fix it before merging"
            ))
        }
    };
    let trimmed = |v: &serde_json::Value| v.as_str().map(|s| s.trim_end_matches('/').to_owned());
    list.retain(|v| trimmed(v).as_deref() != Some(value));
    list.insert(0, json!(value));
    config.insert(key.to_owned(), serde_json::Value::Array(list));
    Ok(())
}

/// `registries.conf` (v2): every upstream mirrored by path prefix.
fn podman(request: &Request<'_>) -> GeneratedFile {
    let mut text = format!(
        "{}# Each registry is pulled through the mirror's path prefix first, then from\n# the registry itself. Use as /etc/containers/registries.conf.d/oci-cache.conf.\n",
        header("podman, CRI-O and skopeo")
    );
    if request.mirror.is_https() {
        let _ = writeln!(
            text,
            "# A private CA for the mirror goes in /etc/containers/certs.d/{}/ca.crt.",
            request.mirror.authority()
        );
    }
    text.push_str(&auth_comment(ClientKind::Podman, request));
    for upstream in &request.upstreams {
        let name = upstream.name.as_str();
        let _ = write!(
            text,
            "\n[[registry]]\nprefix = {q}\nlocation = {q}\n\n[[registry.mirror]]\nlocation = {}\n",
            quote(&format!("{}/{name}", request.mirror.authority())),
            q = quote(name),
        );
        if !request.mirror.is_https() {
            text.push_str("insecure = true\n");
        }
    }
    file("registries.conf", text)
}

/// The `[registry]` tables BuildKit reads (buildkitd.toml syntax).
fn buildkit_tables(request: &Request<'_>) -> String {
    let mirror = request.mirror.authority();
    let mut text = String::new();
    for upstream in &request.upstreams {
        let _ = write!(
            text,
            "[registry.{}]\n  mirrors = [{}]\n\n",
            quote(upstream.name.as_str()),
            quote(mirror)
        );
    }
    let _ = writeln!(text, "[registry.{}]", quote(mirror));
    if request.mirror.is_https() {
        match &request.ca_file {
            Some(ca) => {
                let _ = writeln!(text, "  ca = [{}]", quote(&ca.display().to_string()));
            }
            None => {
                text.push_str("  # For a private CA: ca = [\"/etc/buildkit/oci-cache-ca.pem\"]\n")
            }
        }
    } else {
        text.push_str("  http = true\n");
    }
    text
}

fn buildkit(request: &Request<'_>) -> GeneratedFile {
    let tables = buildkit_tables(request);
    let auth = auth_comment(ClientKind::Buildkit, request);
    if request.form == Some(Form::Earthly) {
        let mut text = format!(
            "{}{auth}# Merge into ~/.earthly/config.yml, then restart: earthly bootstrap --no-buildkit-update\nglobal:\n  buildkit_additional_config: |\n",
            header("Earthly")
        );
        for line in tables.lines() {
            if line.is_empty() {
                text.push('\n');
            } else {
                let _ = writeln!(text, "    {line}");
            }
        }
        return file("earthly-config.yml", text);
    }
    file(
        "buildkitd.toml",
        format!("{}{auth}\n{tables}", header("BuildKit")),
    )
}

/// A Kind cluster config whose nodes mount the generated `certs.d` tree.
fn kind_cluster(request: &Request<'_>) -> Vec<GeneratedFile> {
    let host_path = match &request.output {
        Some(dir) => dir.join("certs.d").display().to_string(),
        None => "./certs.d".to_owned(),
    };
    let mut text = format!(
        "{}# Create the cluster with `kind create cluster --config kind-config.yaml`. The\n# nodes are containers: the mirror URL must be an address they reach (not 127.0.0.1).\n",
        header("Kind")
    );
    let _ = write!(
        text,
        "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\ncontainerdConfigPatches:\n  - |-\n    [plugins.\"io.containerd.grpc.v1.cri\".registry]\n      config_path = {dir}\n# Every node needs the mount: the patch applies to all, and a node without\n# the tree pulls from the registries themselves. A worker added by hand\n# needs the same extraMounts (or regenerate with --workers N).\nnodes:\n",
        dir = quote(KIND_CERTS_DIR),
    );
    let roles = std::iter::once("control-plane")
        .chain(std::iter::repeat_n("worker", usize::from(request.workers)));
    for role in roles {
        let _ = write!(
            text,
            "  - role: {role}\n    extraMounts:\n      - hostPath: {host}\n        containerPath: {dir}\n        readOnly: true\n",
            dir = quote(KIND_CERTS_DIR),
            host = quote(&host_path),
        );
    }
    let mut files = vec![file("kind-config.yaml", text)];
    files.extend(local_registry_hosting(request));
    files.extend(containerd_tree(request, "certs.d/"));
    files
}

/// k3s / RKE2 `registries.yaml`.
fn k3s(request: &Request<'_>) -> GeneratedFile {
    let mut text = format!(
        "{}# Install as /etc/rancher/k3s/registries.yaml (RKE2: /etc/rancher/rke2/) and restart.\nmirrors:\n",
        header("k3s")
    );
    for upstream in &request.upstreams {
        let _ = write!(
            text,
            "  {}:\n    endpoint:\n      - {}\n",
            quote(upstream.name.as_str()),
            quote(&request.mirror.base())
        );
    }
    if request.ca_file.is_none() && request.auth.is_none() {
        return file("registries.yaml", text);
    }
    let _ = writeln!(text, "configs:\n  {}:", quote(request.mirror.authority()));
    if let Some(auth) = &request.auth {
        let _ = write!(
            text,
            "    # The mirror's client credentials: keep this file readable by root only.\n    auth:\n      username: {}\n      password: {}\n",
            quote(&auth.username),
            quote(&auth.password)
        );
    }
    if let Some(ca) = &request.ca_file {
        let _ = writeln!(
            text,
            "    tls:\n      ca_file: {}",
            quote(&ca.display().to_string())
        );
    }
    file("registries.yaml", text)
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "render_forms_tests.rs"]
mod forms_tests;

#[cfg(test)]
#[path = "render_local_registry_tests.rs"]
mod local_registry_tests;
