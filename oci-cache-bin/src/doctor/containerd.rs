//! containerd: `config.toml` (version 1/2 for containerd 1.x, 3 for 2.x),
//! its registry `config_path`, and the `certs.d` trees it names. hosts.toml
//! files are parsed by the same code `--containerd-hosts` uses.

use oci_cache_core::mirror::containerd::{parse_hosts_toml, DEFAULT_DIR};

use super::{Node, Problem, RuntimeReport, UpstreamRoute};

const CONFIG: &str = "/etc/containerd/config.toml";
/// containerd 2.x's `config_path` when config.toml sets none.
const DEFAULT_CONFIG_PATH_2X: &str = "/etc/containerd/certs.d:/etc/docker/certs.d";
/// The CRI images plugin in config version 3 (containerd 2.x).
const IMAGES_V3: &str = "io.containerd.cri.v1.images";
/// The CRI plugin in config version 2.
const CRI_V2: &str = "io.containerd.grpc.v1.cri";

/// What config.toml says about registry hosts.
struct RegistrySettings {
    version: i64,
    /// The table header `config_path` belongs under.
    table: String,
    config_path: Option<String>,
    /// The deprecated `registry.mirrors` is set.
    legacy_mirrors: bool,
    /// containerd 2.1+ pulls through the transfer service (config v3 and
    /// nothing that makes the CRI plugin fall back to its local pull).
    transfer_service: bool,
}

fn table_at<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Table> {
    path.iter()
        .try_fold(table, |t, key| t.get(*key).and_then(toml::Value::as_table))
}

fn settings(text: &str) -> Result<RegistrySettings, String> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| format!("{CONFIG}: {}", e.message()))?;
    let version = table
        .get("version")
        .and_then(toml::Value::as_integer)
        .unwrap_or(1);
    let (plugin, table_name) = match version {
        3.. => (IMAGES_V3, format!("[plugins.\"{IMAGES_V3}\".registry]")),
        2 => (CRI_V2, format!("[plugins.\"{CRI_V2}\".registry]")),
        _ => ("cri", "[plugins.cri.registry]".to_owned()),
    };
    let images = table_at(&table, &["plugins", plugin]);
    let registry = images.and_then(|t| table_at(t, &["registry"]));
    let config_path = registry
        .and_then(|r| r.get("config_path"))
        .and_then(toml::Value::as_str)
        .filter(|p| !p.is_empty())
        .map(str::to_owned);
    let non_empty = |key: &str| {
        registry
            .and_then(|r| r.get(key))
            .and_then(toml::Value::as_table)
            .is_some_and(|t| !t.is_empty())
    };
    let legacy_mirrors = non_empty("mirrors");
    let flag = |key: &str| {
        images
            .and_then(|t| t.get(key))
            .and_then(toml::Value::as_bool)
    };
    // The CRI plugin falls back to its local pull (which reads config_path
    // as a list) on these settings; see containerd's docs/cri/config.md.
    let local_pull = flag("use_local_image_pull") == Some(true)
        || flag("discard_unpacked_layers") == Some(true)
        || flag("disable_snapshot_annotations") == Some(false)
        || legacy_mirrors
        || non_empty("configs")
        || non_empty("auths");
    Ok(RegistrySettings {
        version,
        table: table_name,
        config_path,
        legacy_mirrors,
        transfer_service: version >= 3 && !local_pull,
    })
}

/// containerd's report, `None` when neither config.toml nor certs.d exist.
pub(crate) fn check(node: &Node<'_>) -> Result<Option<RuntimeReport>, String> {
    let text = node.read(CONFIG)?;
    if text.is_none() && !node.path("/etc/containerd/certs.d").is_dir() {
        return Ok(None);
    }
    let mut report = RuntimeReport {
        runtime: "containerd",
        files: vec![CONFIG.to_owned()],
        upstreams: Vec::new(),
        notes: Vec::new(),
    };
    let settings = match &text {
        Some(text) => settings(text)?,
        None => RegistrySettings {
            version: 1,
            table: format!("[plugins.\"{CRI_V2}\".registry]"),
            config_path: None,
            legacy_mirrors: false,
            transfer_service: false,
        },
    };
    let mut shared = Vec::new();
    if settings.legacy_mirrors {
        shared.push(Problem::new(
            "containerd-legacy-mirrors",
            format!("{CONFIG}: registry.mirrors is set; containerd uses it instead of certs.d (or refuses config_path next to it)"),
            format!("remove the mirrors tables under {} and keep config_path", settings.table),
        ));
    }
    let config_path = match (&settings.config_path, settings.version) {
        (Some(path), _) => path.clone(),
        (None, 3..) => {
            report.notes.push(format!(
                "config_path not set: containerd 2.x uses {DEFAULT_CONFIG_PATH_2X}"
            ));
            DEFAULT_CONFIG_PATH_2X.to_owned()
        }
        (None, _) => {
            let message = if text.is_some() {
                format!("{CONFIG}: containerd config_path not set: certs.d is ignored")
            } else {
                format!("{CONFIG} does not exist: containerd 1.x then sets no config_path and ignores certs.d")
            };
            shared.push(Problem::new(
                "config-path-not-set",
                message,
                format!(
                    "add `config_path = \"/etc/containerd/certs.d\"` under {} (config version {}) and restart containerd",
                    settings.table,
                    settings.version.max(2)
                ),
            ));
            String::new()
        }
    };
    let dirs: Vec<&str> = config_path.split(':').filter(|d| !d.is_empty()).collect();
    if settings.transfer_service && dirs.len() > 1 {
        shared.push(Problem::new(
            "transfer-service-config-path",
            format!("{CONFIG}: containerd 2.1+ pulls through the transfer service, which reads config_path {config_path:?} as one directory (that does not exist), so every hosts.toml is ignored"),
            format!("set config_path to one directory (config_path = \"/etc/containerd/certs.d\"), or `use_local_image_pull = true` under [plugins.\"{IMAGES_V3}\"]"),
        ));
    }
    if settings.transfer_service {
        report.notes.push(
            "containerd 2.1+ pulls through the transfer service (no use_local_image_pull)"
                .to_owned(),
        );
    }
    for upstream in node.upstreams {
        report
            .upstreams
            .push(route(node, upstream, &dirs, &shared)?);
    }
    Ok(Some(report))
}

/// The hosts.toml containerd picks for `upstream`: per directory of
/// config_path in order, `<host>` (or `host_port_`), then `_default`.
fn find_hosts(node: &Node<'_>, upstream: &str, dirs: &[&str]) -> Option<(String, String)> {
    let mut names = vec![upstream.to_owned()];
    if let Some((host, port)) = upstream.rsplit_once(':') {
        names.push(format!("{host}_{port}_"));
    }
    names.push(DEFAULT_DIR.to_owned());
    dirs.iter().find_map(|dir| {
        names.iter().find_map(|name| {
            let path = format!("{}/{name}/hosts.toml", dir.trim_end_matches('/'));
            node.path(&path).is_file().then(|| (name.clone(), path))
        })
    })
}

fn route(
    node: &Node<'_>,
    upstream: &str,
    dirs: &[&str],
    shared: &[Problem],
) -> Result<UpstreamRoute, String> {
    let mut problems = shared.to_vec();
    let origin = format!("https://{upstream}");
    let usable = !problems
        .iter()
        .any(|p| p.code != "containerd-legacy-mirrors");
    let found = if usable {
        find_hosts(node, upstream, dirs)
    } else {
        None
    };
    let Some((dir_name, path)) = found else {
        if usable {
            problems.push(Problem::new(
                "no-hosts-toml",
                format!("no {upstream}/hosts.toml and no {DEFAULT_DIR}/hosts.toml in {}: containerd pulls {upstream} from the registry itself", dirs.join(", ")),
                format!("write the tree with `oci-cache client-config containerd --mirror {} --output {}`", node.mirror.base(), dirs.first().copied().unwrap_or("/etc/containerd/certs.d")),
            ));
        }
        return Ok(UpstreamRoute::new(
            upstream,
            node.mirror,
            vec![origin],
            None,
            problems,
        ));
    };
    let text = node.read(&path)?.unwrap_or_default();
    let import = match parse_hosts_toml(&dir_name, &text, &path) {
        Ok(import) => import,
        Err(e) => {
            problems.push(Problem::new(
                "invalid-hosts-toml",
                format!("{e}: containerd cannot use this file"),
                "fix the TOML, or regenerate it with `oci-cache client-config containerd`",
            ));
            return Ok(UpstreamRoute::new(
                upstream,
                node.mirror,
                vec![origin],
                Some(path),
                problems,
            ));
        }
    };
    let mut endpoints = Vec::new();
    for mirror in &import.mirrors {
        endpoints.extend(mirror.endpoints.iter().map(|e| e.url.clone()));
        endpoints.extend(mirror.origin.iter().map(|e| e.url.clone()));
    }
    // Without a `server`, containerd falls back to the registry itself.
    if !import
        .mirrors
        .iter()
        .any(|m| m.origin.is_some() || m.skip_fallback)
    {
        endpoints.push(origin);
    }
    Ok(UpstreamRoute::new(
        upstream,
        node.mirror,
        endpoints,
        Some(path),
        problems,
    ))
}
