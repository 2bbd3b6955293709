//! The Docker daemon: `daemon.json` `registry-mirrors` (used for docker.io
//! only, sending no registry name) and `insecure-registries`.

use oci_cache_core::mirror::DOCKER_HUB;

use super::{same_host, HostMatch, Node, Problem, RuntimeReport, UpstreamRoute};

const DAEMON_JSON: &str = "/etc/docker/daemon.json";
/// Where dockerd pulls Docker Hub from without a mirror.
const HUB_API: &str = "https://registry-1.docker.io";

fn strings(config: &serde_json::Value, key: &str) -> Vec<String> {
    config
        .get(key)
        .and_then(serde_json::Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(serde_json::Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// True when dockerd talks plain HTTP to `authority`: it is listed in
/// `insecure-registries` (by name or a CIDR we do not evaluate) or loopback,
/// which dockerd always treats as insecure.
fn insecure(authority: &str, listed: &[String]) -> bool {
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    listed
        .iter()
        .any(|l| l == authority || l.trim_start_matches("http://") == authority)
        || host == "localhost"
        || host.starts_with("127.")
}

/// dockerd's report, `None` without daemon.json.
pub(crate) fn check(node: &Node<'_>) -> Result<Option<RuntimeReport>, String> {
    let Some(text) = node.read(DAEMON_JSON)? else {
        return Ok(None);
    };
    let mut report = RuntimeReport {
        runtime: "docker",
        files: vec![DAEMON_JSON.to_owned()],
        upstreams: Vec::new(),
        notes: vec![format!(
            "the Docker daemon mirrors {DOCKER_HUB} only: every other registry is pulled from the registry itself"
        )],
    };
    let mut problems = Vec::new();
    let config: serde_json::Value = match serde_json::from_str(&text) {
        Ok(config) => config,
        Err(e) => {
            problems.push(Problem::new(
                "invalid-daemon-json",
                format!("{DAEMON_JSON}: {e}: dockerd will not start"),
                "fix the JSON, or regenerate it with `oci-cache client-config docker`",
            ));
            serde_json::Value::Null
        }
    };
    if let Some(driver) = config
        .get("storage-driver")
        .and_then(serde_json::Value::as_str)
    {
        report.notes.push(format!("storage-driver: {driver}"));
    }
    let mirrors = strings(&config, "registry-mirrors");
    let ours = mirrors
        .iter()
        .any(|m| same_host(node.mirror, m) == HostMatch::Same);
    if ours
        && !node.mirror.is_https()
        && !insecure(
            node.mirror.authority(),
            &strings(&config, "insecure-registries"),
        )
    {
        problems.push(Problem::new(
            "mirror-not-insecure",
            format!("{DAEMON_JSON}: the mirror {} is plain HTTP and not in insecure-registries: dockerd tries https, fails and pulls from Docker Hub", node.mirror.base()),
            format!("add \"{}\" to insecure-registries", node.mirror.authority()),
        ));
    }
    if ours && node.default_upstream != DOCKER_HUB {
        problems.push(Problem::new(
            "docker-default-upstream",
            format!("the Docker daemon names no registry in its requests, and the mirror's default upstream is {}, not {DOCKER_HUB}: its answers would be another registry's images", node.default_upstream),
            format!("set default_upstream = \"{DOCKER_HUB}\" in the mirror's configuration (or OCI_CACHE_DEFAULT_UPSTREAM={DOCKER_HUB})"),
        ));
    }
    if !node.upstreams.iter().any(|u| u == DOCKER_HUB) && ours {
        problems.push(Problem::new(
            "docker-hub-not-served",
            format!("Docker's registry-mirrors only apply to {DOCKER_HUB}, and the mirror does not serve {DOCKER_HUB}"),
            format!("add a {DOCKER_HUB} upstream to the mirror, or remove it from registry-mirrors"),
        ));
    }
    if mirrors.is_empty() {
        problems.push(Problem::new(
            "no-registry-mirrors",
            format!("{DAEMON_JSON} has no registry-mirrors: dockerd pulls {DOCKER_HUB} from Docker Hub"),
            format!("install `oci-cache client-config docker --mirror {}` as {DAEMON_JSON} and restart dockerd", node.mirror.base()),
        ));
    }
    let mut endpoints = mirrors;
    endpoints.push(HUB_API.to_owned());
    report.upstreams.push(UpstreamRoute::new(
        DOCKER_HUB,
        node.mirror,
        endpoints,
        Some(DAEMON_JSON.to_owned()),
        problems,
    ));
    Ok(Some(report))
}
