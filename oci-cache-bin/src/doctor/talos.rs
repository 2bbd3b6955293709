//! Talos: machine configuration documents. Talos ≥ 1.12 reads
//! `RegistryMirrorConfig` documents (`name`, `endpoints[].url`,
//! `endpoints[].overridePath`, `skipFallback`); older Talos reads
//! `machine.registries.mirrors.<name>` (`endpoints`, `overridePath`,
//! `skipFallback`) in the `v1alpha1` document. Both are read, from a file
//! holding the machine config, a patch, or `talosctl get machineconfig -o
//! yaml` output (the config sits in its `spec` string).
//!
//! A Talos node has no shell to run doctor on: the file comes from
//! `--talos-machine-config FILE` (what `talosctl get machineconfig` printed, or the
//! patch about to be applied) or from the STATE partition of a mounted node
//! disk under `--root` (`/system/state/config.yaml`). Talos, like
//! containerd, falls back to the registry itself after the endpoints unless
//! `skipFallback` is set: that fallback is silent, so doctor warns about it.

use std::collections::BTreeMap;

use serde_norway::Value;

use super::{Node, Problem, RuntimeReport, UpstreamRoute};

/// Where Talos keeps the machine config on its STATE partition.
pub(crate) const STATE_CONFIG: &str = "/system/state/config.yaml";
/// The catch-all mirror name Talos passes on to containerd (`_default`).
const CATCH_ALL: &str = "*";

/// One endpoint of a mirror entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    url: String,
    override_path: bool,
}

/// One registry's mirror entry, from either syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MirrorEntry {
    endpoints: Vec<Endpoint>,
    skip_fallback: bool,
    /// `RegistryMirrorConfig` or `machine.registries.mirrors`.
    syntax: &'static str,
}

fn flag(value: &Value, key: &str) -> bool {
    value.get(key).and_then(Value::as_bool) == Some(true)
}

fn endpoint(value: &Value, override_path: bool) -> Option<Endpoint> {
    match value {
        Value::String(url) => Some(Endpoint {
            url: url.clone(),
            override_path,
        }),
        Value::Mapping(_) => Some(Endpoint {
            url: value.get("url")?.as_str()?.to_owned(),
            override_path: flag(value, "overridePath"),
        }),
        _ => None,
    }
}

/// Every mirror entry in `text` (several YAML documents), by registry name;
/// a later document's entry for a name replaces an earlier one.
fn mirror_entries(text: &str, path: &str) -> Result<BTreeMap<String, MirrorEntry>, String> {
    use serde::Deserialize as _;
    let mut entries = BTreeMap::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let doc = Value::deserialize(document).map_err(|e| format!("{path}: {e}"))?;
        collect(&doc, path, &mut entries)?;
    }
    Ok(entries)
}

fn collect(
    doc: &Value,
    path: &str,
    entries: &mut BTreeMap<String, MirrorEntry>,
) -> Result<(), String> {
    // `talosctl get machineconfig -o yaml`: the config is the `spec` string.
    if let Some(spec) = doc.get("spec").and_then(Value::as_str) {
        entries.extend(mirror_entries(spec, path)?);
        return Ok(());
    }
    if doc.get("kind").and_then(Value::as_str) == Some("RegistryMirrorConfig") {
        let name = doc
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{path}: a RegistryMirrorConfig document without a name"))?;
        let endpoints = doc
            .get("endpoints")
            .and_then(Value::as_sequence)
            .map(|list| list.iter().filter_map(|e| endpoint(e, false)).collect())
            .unwrap_or_default();
        entries.insert(
            name.to_owned(),
            MirrorEntry {
                endpoints,
                skip_fallback: flag(doc, "skipFallback"),
                syntax: "RegistryMirrorConfig",
            },
        );
        return Ok(());
    }
    let mirrors = doc
        .get("machine")
        .and_then(|m| m.get("registries"))
        .and_then(|r| r.get("mirrors"))
        .and_then(Value::as_mapping);
    for (name, entry) in mirrors.into_iter().flatten() {
        let Some(name) = name.as_str() else { continue };
        let override_path = flag(entry, "overridePath");
        let endpoints = entry
            .get("endpoints")
            .and_then(Value::as_sequence)
            .map(|list| {
                list.iter()
                    .filter_map(|e| endpoint(e, override_path))
                    .collect()
            })
            .unwrap_or_default();
        entries.insert(
            name.to_owned(),
            MirrorEntry {
                endpoints,
                skip_fallback: flag(entry, "skipFallback"),
                syntax: "machine.registries.mirrors",
            },
        );
    }
    Ok(())
}

/// The path of `url` after its authority (`""` when it has none).
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.find('/')
        .map_or("", |at| rest[at..].trim_end_matches('/'))
}

/// What is wrong with how `endpoint` names the mirror's path for `upstream`.
fn path_problem(at: &str, upstream: &str, endpoint: &Endpoint) -> Option<Problem> {
    let path = url_path(&endpoint.url);
    let prefix = format!("/v2/{upstream}");
    match (path.is_empty(), endpoint.override_path) {
        (true, false) => None,
        (false, false) => Some(Problem::new(
            "path-without-override-path",
            format!(
                "{at}: {upstream} endpoint {} has a path but no overridePath: Talos appends /v2 to it, so every request misses the mirror's API",
                endpoint.url
            ),
            format!("drop the path, or set overridePath: true with the path {prefix}"),
        )),
        (true, true) => Some(Problem::new(
            "override-path-without-path",
            format!(
                "{at}: {upstream} endpoint {} sets overridePath without a /v2/NAME path: requests go to the mirror's root",
                endpoint.url
            ),
            format!("use the endpoint {}{prefix}, or drop overridePath", endpoint.url.trim_end_matches('/')),
        )),
        (false, true) if path == prefix || path == "/v2" => None,
        (false, true) => Some(Problem::new(
            "wrong-path",
            format!(
                "{at}: {upstream} endpoint {} names the path {path}, the mirror serves {upstream} at {prefix}",
                endpoint.url
            ),
            "regenerate the documents with `oci-cache client-config talos --path-prefix`",
        )),
    }
}

/// The Talos report for every machine config found: the `--talos-machine-config`
/// files, then the STATE partition's config under the root.
pub(crate) fn check(node: &Node<'_>) -> Result<Vec<RuntimeReport>, String> {
    let mut sources: Vec<(String, String)> = Vec::new();
    for file in node.talos_configs {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read --talos-machine-config {}: {e}", file.display()))?;
        sources.push((file.display().to_string(), text));
    }
    if let Some(text) = node.read(STATE_CONFIG)? {
        sources.push((STATE_CONFIG.to_owned(), text));
    }
    sources
        .into_iter()
        .map(|(path, text)| report(node, &path, &text))
        .collect()
}

fn report(node: &Node<'_>, path: &str, text: &str) -> Result<RuntimeReport, String> {
    let entries = mirror_entries(text, path);
    let mut report = RuntimeReport {
        runtime: "talos",
        files: vec![path.to_owned()],
        upstreams: Vec::new(),
        notes: vec![
            "Talos runs no shell, so doctor cannot probe it: prove a pull with `talosctl -n NODE image pull UPSTREAM/IMAGE` while the mirror's log or /status.json shows it"
                .to_owned(),
        ],
    };
    if entries.as_ref().is_ok_and(BTreeMap::is_empty) {
        report.notes.push(format!(
            "{path} has no RegistryMirrorConfig document and no machine.registries.mirrors: every pull goes to the registries themselves"
        ));
    }
    for upstream in node.upstreams {
        report
            .upstreams
            .push(route(node, path, upstream, entries.as_ref()));
    }
    Ok(report)
}

fn route(
    node: &Node<'_>,
    path: &str,
    upstream: &str,
    entries: Result<&BTreeMap<String, MirrorEntry>, &String>,
) -> UpstreamRoute {
    let fix_all = format!(
        "apply `oci-cache client-config talos --mirror {}` to the machine config",
        node.mirror.base()
    );
    // Pulled from the registry itself, for `problem`.
    let registry_only = |problem: Problem| {
        UpstreamRoute::new(
            upstream,
            node.mirror,
            vec![format!("https://{upstream}")],
            Some(path.to_owned()),
            vec![problem],
        )
    };
    let entries = match entries {
        Ok(entries) => entries,
        Err(e) => {
            return registry_only(Problem::new("invalid-talos-config", e.clone(), fix_all));
        }
    };
    let Some((name, entry)) = entries
        .get_key_value(upstream)
        .or_else(|| entries.get_key_value(CATCH_ALL))
    else {
        return registry_only(Problem::new(
            "no-mirror-entry",
            format!("{path}: no mirror for {upstream} and no \"*\": Talos pulls it from the registry itself"),
            fix_all,
        ));
    };
    let at = format!("{path} ({} {name})", entry.syntax);
    let problems: Vec<Problem> = entry
        .endpoints
        .iter()
        .filter(|e| super::same_host(node.mirror, &e.url) == super::HostMatch::Same)
        .filter_map(|e| path_problem(&at, upstream, e))
        .collect();
    let mut endpoints: Vec<String> = entry.endpoints.iter().map(|e| e.url.clone()).collect();
    let mut warnings = Vec::new();
    if !entry.skip_fallback {
        endpoints.push(format!("https://{upstream}"));
        warnings.push(Problem::new(
            "silent-fallback",
            format!(
                "{at}: no skipFallback, so when the mirror fails or refuses, {upstream} is pulled from the registry itself without an error: a broken mirror goes unnoticed"
            ),
            "once pulls are proven to go through the mirror, set skipFallback: true (`oci-cache client-config talos --skip-fallback`)",
        ));
    }
    UpstreamRoute::new(
        upstream,
        node.mirror,
        endpoints,
        Some(path.to_owned()),
        problems,
    )
    .with_warnings(warnings)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_after_the_authority() {
        assert_eq!(url_path("http://m:5000"), "");
        assert_eq!(url_path("http://m:5000/"), "");
        assert_eq!(url_path("http://m:5000/v2/docker.io/"), "/v2/docker.io");
    }
}
