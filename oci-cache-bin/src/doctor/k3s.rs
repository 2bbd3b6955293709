//! k3s / RKE2: `registries.yaml` `mirrors` (`"*"` for every registry). k3s
//! always falls back to the registry itself after the listed endpoints.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Node, Problem, RuntimeReport, UpstreamRoute};

const FILES: [(&str, &str); 2] = [
    ("k3s", "/etc/rancher/k3s/registries.yaml"),
    ("rke2", "/etc/rancher/rke2/registries.yaml"),
];

#[derive(Debug, Default, Deserialize)]
struct RegistriesYaml {
    #[serde(default)]
    mirrors: BTreeMap<String, MirrorEntry>,
}

#[derive(Debug, Default, Deserialize)]
struct MirrorEntry {
    #[serde(default)]
    endpoint: Vec<String>,
}

/// The k3s and RKE2 reports, one per file present.
pub(crate) fn check(node: &Node<'_>) -> Result<Vec<RuntimeReport>, String> {
    let mut reports = Vec::new();
    for (runtime, path) in FILES {
        let Some(text) = node.read(path)? else {
            continue;
        };
        let mut report = RuntimeReport {
            runtime,
            files: vec![path.to_owned()],
            upstreams: Vec::new(),
            notes: Vec::new(),
        };
        let parsed: Result<RegistriesYaml, _> = serde_norway::from_str(&text);
        for upstream in node.upstreams {
            let mut problems = Vec::new();
            let mut endpoints = Vec::new();
            match &parsed {
                Err(e) => problems.push(Problem::new(
                    "invalid-registries-yaml",
                    format!("{path}: {e}"),
                    "fix the YAML, or regenerate it with `oci-cache client-config k3s`",
                )),
                Ok(config) => match config.mirrors.get(upstream.as_str()).or_else(|| config.mirrors.get("*")) {
                    Some(entry) => endpoints.extend(entry.endpoint.iter().cloned()),
                    None => problems.push(Problem::new(
                        "no-mirror-entry",
                        format!("{path}: no mirrors entry for {upstream} and no \"*\": {runtime} pulls it from the registry itself"),
                        format!("install `oci-cache client-config k3s --mirror {}` there and restart {runtime}", node.mirror.base()),
                    )),
                },
            }
            endpoints.push(format!("https://{upstream}"));
            report.upstreams.push(UpstreamRoute::new(
                upstream,
                node.mirror,
                endpoints,
                Some(path.to_owned()),
                problems,
            ));
        }
        reports.push(report);
    }
    Ok(reports)
}
