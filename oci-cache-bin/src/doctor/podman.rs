//! podman / CRI-O / skopeo: `registries.conf` and `registries.conf.d/*.conf`
//! (v2 `[[registry]]` tables; a later file's entry for the same prefix
//! replaces an earlier one). The mirror is reached by path prefix
//! (`MIRROR/NAME`), as `client-config podman` writes it.

use serde::Deserialize;

use super::{same_host, HostMatch, Node, Problem, RuntimeReport, UpstreamRoute};

const CONF: &str = "/etc/containers/registries.conf";
const CONF_D: &str = "/etc/containers/registries.conf.d";

#[derive(Debug, Default, Deserialize)]
struct ConfFile {
    #[serde(default)]
    registry: Vec<RegistryEntry>,
}

#[derive(Debug, Clone, Deserialize)]
struct RegistryEntry {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    mirror: Vec<MirrorEntry>,
    #[serde(default)]
    blocked: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct MirrorEntry {
    location: String,
    #[serde(default)]
    insecure: bool,
}

impl RegistryEntry {
    fn prefix(&self) -> &str {
        self.prefix
            .as_deref()
            .or(self.location.as_deref())
            .unwrap_or_default()
    }
}

/// The files podman reads, in order (paths on the node).
fn files(node: &Node<'_>) -> Result<Vec<String>, String> {
    let mut files = Vec::new();
    if node.path(CONF).is_file() {
        files.push(CONF.to_owned());
    }
    if let Ok(entries) = std::fs::read_dir(node.path(CONF_D)) {
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".conf"))
            .collect();
        names.sort();
        files.extend(names.into_iter().map(|n| format!("{CONF_D}/{n}")));
    }
    Ok(files)
}

/// podman's report, `None` without any registries.conf.
pub(crate) fn check(node: &Node<'_>) -> Result<Option<RuntimeReport>, String> {
    let files = files(node)?;
    if files.is_empty() {
        return Ok(None);
    }
    let mut entries: Vec<(RegistryEntry, String)> = Vec::new();
    let mut broken = Vec::new();
    for path in &files {
        let text = node.read(path)?.unwrap_or_default();
        match toml::from_str::<ConfFile>(&text) {
            Ok(conf) => {
                for entry in conf.registry {
                    entries.retain(|(e, _)| e.prefix() != entry.prefix());
                    entries.push((entry, path.clone()));
                }
            }
            Err(e) => broken.push(Problem::new(
                "invalid-registries-conf",
                format!("{path}: {}: podman refuses to pull", e.message()),
                "fix the TOML, or regenerate it with `oci-cache client-config podman`",
            )),
        }
    }
    let mut report = RuntimeReport {
        runtime: "podman",
        files,
        upstreams: Vec::new(),
        notes: Vec::new(),
    };
    for upstream in node.upstreams {
        report
            .upstreams
            .push(route(node, upstream, &entries, broken.clone()));
    }
    Ok(Some(report))
}

fn route(
    node: &Node<'_>,
    upstream: &str,
    entries: &[(RegistryEntry, String)],
    mut problems: Vec<Problem>,
) -> UpstreamRoute {
    let expected = format!("{}/{upstream}", node.mirror.authority());
    let Some((entry, path)) = entries.iter().find(|(e, _)| e.prefix() == upstream) else {
        if problems.is_empty() {
            problems.push(Problem::new(
                "no-registry-entry",
                format!("no [[registry]] with prefix {upstream:?} in registries.conf(.d): podman pulls {upstream} from the registry itself"),
                format!("install `oci-cache client-config podman --mirror {}` as {CONF_D}/oci-cache.conf", node.mirror.base()),
            ));
        }
        return UpstreamRoute::new(
            upstream,
            node.mirror,
            vec![format!("https://{upstream}")],
            None,
            problems,
        );
    };
    let scheme = |insecure: bool| if insecure { "http" } else { "https" };
    let mut endpoints: Vec<String> = entry
        .mirror
        .iter()
        .map(|m| format!("{}://{}", scheme(m.insecure), m.location))
        .collect();
    let location = entry.location.as_deref().unwrap_or(upstream);
    endpoints.push(format!("https://{location}"));
    if entry.blocked {
        problems.push(Problem::new(
            "registry-blocked",
            format!("{path}: {upstream} is blocked"),
            "remove `blocked = true`",
        ));
    }
    if let Some(first) = entry.mirror.first() {
        // Compared by host only: the scheme is `insecure`'s to decide, below.
        let as_mirror = format!("{}://{}", scheme(!node.mirror.is_https()), first.location);
        let same_authority = same_host(node.mirror, &as_mirror) == HostMatch::Same;
        if same_authority {
            let path_ok = first.location == expected
                || (first.location == node.mirror.authority() && upstream == node.default_upstream);
            if !path_ok {
                problems.push(Problem::new(
                    "wrong-path",
                    format!("{path}: the mirror location for {upstream} is {:?}; the mirror serves it at {expected:?}", first.location),
                    format!("set location = \"{expected}\" in its [[registry.mirror]]"),
                ));
            }
            if first.insecure == node.mirror.is_https() && !node.mirror.is_https() {
                problems.push(Problem::new(
                    "mirror-not-insecure",
                    format!("{path}: the mirror for {upstream} is plain HTTP but its [[registry.mirror]] lacks `insecure = true`: podman tries https, fails and pulls from {upstream}"),
                    "add `insecure = true` to the [[registry.mirror]]",
                ));
            }
            // The scheme was taken from the mirror: the route below sees it as ours.
            endpoints[0] = node.mirror.base()
                + first
                    .location
                    .strip_prefix(node.mirror.authority())
                    .unwrap_or_default();
        }
    }
    UpstreamRoute::new(
        upstream,
        node.mirror,
        endpoints,
        Some(path.clone()),
        problems,
    )
}
