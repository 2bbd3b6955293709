//! containerd's `hosts.toml` registry host configuration (a `certs.d` tree:
//! one directory per registry, `host_port_` for `host:port`, `_default` for
//! every registry). The caller reads the files; this parses their text.
//!
//! Mapping:
//! - `[host."URL"]` tables → mirrors, in file order; a URL without a scheme
//!   is `https://`; `override_path` as is;
//! - `capabilities`: without `pull` the host is not used (a pull-through
//!   cache only pulls); without `resolve` it becomes digest-only
//!   ([`Endpoint::resolve`] `false`): asked for blobs and manifests by digest,
//!   never for tags. Default: both;
//! - `server`: when it is the registry itself (`https://ghcr.io` for
//!   `ghcr.io`, Docker Hub's API hosts for `docker.io`) it becomes the origin;
//!   any other server is tried last instead of the origin (a mirror made the
//!   server, containerd's way to disable fallback) and so gets `ns`, as
//!   containerd sends it. Without `server` the registry's origin is the fallback;
//! - `ca` (a path or list: the first), `client` (`"both.pem"`, `[cert, key]`
//!   or a list of pairs: the first), `skip_verify` → the endpoint's
//!   [`EndpointTls`](super::EndpointTls); relative paths are the caller's to
//!   resolve against the host directory. `header`, `dial_timeout`: not
//!   applied (warnings). Unknown keys: warnings, as containerd ignores them.
//!
//! ```
//! use oci_cache_core::mirror::containerd;
//!
//! let toml = r#"
//! server = "https://registry-1.docker.io"
//! [host."http://10.0.0.5:5000"]
//!   capabilities = ["pull"]
//! [host."https://mirror.example/hub"]
//! "#;
//! let import = containerd::parse_hosts_toml("docker.io", toml, "certs.d/docker.io/hosts.toml").unwrap();
//! let entry = &import.mirrors[0];
//! assert!(!entry.endpoints[0].resolve);
//! assert_eq!(entry.origin.as_ref().unwrap().url, "https://registry-1.docker.io");
//! ```

use super::import::{is_registry_host, located, Import, ImportedMirror, MirrorScope};
use std::path::PathBuf;

use super::Endpoint;
use crate::reference::Registry;
use crate::{Error, Result};

/// The directory containerd reads for every registry without its own.
pub const DEFAULT_DIR: &str = "_default";

/// The registries a `certs.d` directory configures: `_default` is the
/// wildcard, `host_port_` is `host:port`, anything else is the registry name.
pub fn scope_from_dir_name(dir: &str) -> Result<MirrorScope> {
    if dir == DEFAULT_DIR {
        return Ok(MirrorScope::Wildcard);
    }
    let host = match dir.strip_suffix('_').and_then(|d| d.rsplit_once('_')) {
        Some((host, port))
            if !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            format!("{host}:{port}")
        }
        _ => dir.to_owned(),
    };
    Registry::new(&host).map(MirrorScope::Registry).map_err(|e| {
        Error::Config(format!(
            "hosts directory {dir:?} does not name a registry ({e}); name it host, host_port_ or _default"
        ))
    })
}

/// Parses the `hosts.toml` of directory `dir` (its name, e.g. `docker.io`);
/// `source` names the file in messages.
pub fn parse_hosts_toml(dir: &str, text: &str, source: &str) -> Result<Import> {
    let scope = scope_from_dir_name(dir)?;
    let table: toml::Table =
        toml::from_str(text).map_err(|e| Error::Config(format!("{source}: {}", e.message())))?;
    let mut import = Import::default();
    let mut endpoints = Vec::new();
    let mut server = None;
    for (key, value) in &table {
        match key.as_str() {
            "server" => {
                let url = value.as_str().ok_or_else(|| {
                    Error::Config(format!("{source}: server must be a string URL"))
                })?;
                server = Some(url.to_owned());
            }
            "host" => {
                let hosts = value.as_table().ok_or_else(|| {
                    Error::Config(format!(
                        "{source}: host must be a table of [host.\"URL\"] tables"
                    ))
                })?;
                // In file order: `toml` keeps it (feature `preserve_order`).
                for (url, settings) in hosts {
                    let at = format!("{source}: [host.{url:?}]");
                    let settings = settings
                        .as_table()
                        .ok_or_else(|| Error::Config(format!("{at} must be a table")))?;
                    if let Some(endpoint) = host(url, settings, &at, &mut import.warnings)? {
                        endpoints.push(endpoint);
                    }
                }
            }
            _ => {}
        }
    }
    let mut skip_fallback = false;
    let mut origin = None;
    if let Some(url) = server {
        // Top-level settings belong to the server.
        let top: toml::Table = table
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "server" | "host"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let at = format!("{source}: server");
        if let Some(endpoint) = host(&url, &top, &at, &mut import.warnings)? {
            let is_origin = match (&scope, endpoint.authority()) {
                (MirrorScope::Registry(name), Some(authority)) => {
                    is_registry_host(&authority, name)
                }
                _ => false,
            };
            if is_origin {
                origin = Some(endpoint);
            } else {
                endpoints.push(endpoint);
                skip_fallback = true;
            }
        }
    } else if let Some(key) = table.keys().find(|k| k.as_str() != "host") {
        import.warnings.push(format!(
            "{source}: top-level {key} applies to the server, and there is none; it is ignored"
        ));
    }
    import.mirrors.push(ImportedMirror {
        scope,
        endpoints,
        origin,
        skip_fallback,
        source: source.to_owned(),
    });
    Ok(import)
}

/// `"file"` or `["file", …]`.
fn paths(value: &toml::Value, at: &str, key: &str) -> Result<Vec<String>> {
    let bad = || Error::Config(format!("{at}: {key} must be a path or a list of paths"));
    match value {
        toml::Value::String(path) => Ok(vec![path.clone()]),
        toml::Value::Array(list) => list
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

/// containerd's `client`: `"both.pem"`, `["cert", "key"]` or `[["cert", "key"], …]`;
/// the first pair, and whether there were more.
fn client_pair(value: &toml::Value, at: &str) -> Result<(String, String, bool)> {
    let bad = || {
        Error::Config(format!(
            "{at}: client must be \"file.pem\", [\"cert\", \"key\"] or [[\"cert\", \"key\"]]"
        ))
    };
    let pair = |v: &toml::Value| -> Option<(String, String)> {
        match v {
            // One PEM file holding both the certificate and the key.
            toml::Value::String(both) => Some((both.clone(), both.clone())),
            toml::Value::Array(items) => match items.as_slice() {
                [toml::Value::String(cert), toml::Value::String(key)] => {
                    Some((cert.clone(), key.clone()))
                }
                _ => None,
            },
            _ => None,
        }
    };
    if let Some((cert, key)) = pair(value) {
        return Ok((cert, key, false));
    }
    let list = value.as_array().ok_or_else(bad)?;
    let first = list.first().and_then(pair).ok_or_else(bad)?;
    Ok((first.0, first.1, list.len() > 1))
}

/// One host (or the server) as an endpoint; `None` when it cannot pull.
fn host(
    url: &str,
    settings: &toml::Table,
    at: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<Endpoint>> {
    let url = if url.contains("://") {
        url.to_owned()
    } else {
        format!("https://{url}")
    };
    let mut endpoint = Endpoint::new(url);
    let mut capabilities = vec!["pull".to_owned(), "resolve".to_owned()];
    for (key, value) in settings {
        match key.as_str() {
            "override_path" => {
                endpoint.override_path = value.as_bool().ok_or_else(|| {
                    Error::Config(format!("{at}: override_path must be true or false"))
                })?;
            }
            "capabilities" => {
                capabilities = value
                    .as_array()
                    .map(|list| {
                        list.iter()
                            .filter_map(|c| c.as_str().map(str::to_owned))
                            .collect()
                    })
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "{at}: capabilities must be a list such as [\"pull\", \"resolve\"]"
                        ))
                    })?;
            }
            "skip_verify" => {
                endpoint.tls.insecure_skip_verify = value.as_bool().ok_or_else(|| {
                    Error::Config(format!("{at}: skip_verify must be true or false"))
                })?;
            }
            "ca" => {
                let files = paths(value, at, "ca")?;
                if files.len() > 1 {
                    warnings.push(format!("{at}: only the first ca file is used"));
                }
                endpoint.tls.ca_file = files.into_iter().next().map(PathBuf::from);
            }
            "client" => {
                let (cert, key, more) = client_pair(value, at)?;
                if more {
                    warnings.push(format!("{at}: only the first client pair is used"));
                }
                endpoint.tls.client_cert = Some(PathBuf::from(cert));
                endpoint.tls.client_key = Some(PathBuf::from(key));
            }
            "header" | "dial_timeout" => warnings.push(format!(
                "{at}: {key} not applied: this build does not support it per endpoint"
            )),
            _ => warnings.push(format!("{at}: unknown key {key} ignored")),
        }
    }
    endpoint.validate().map_err(|e| located(at, e))?;
    if !capabilities.iter().any(|c| c == "pull") {
        warnings.push(format!(
            "{at}: no pull capability, so the cache never uses this host"
        ));
        return Ok(None);
    }
    endpoint.resolve = capabilities.iter().any(|c| c == "resolve");
    Ok(Some(endpoint))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn registry(name: &str) -> MirrorScope {
        MirrorScope::Registry(Registry::new(name).unwrap())
    }

    #[test]
    fn directory_names() {
        assert_eq!(
            scope_from_dir_name("_default").unwrap(),
            MirrorScope::Wildcard
        );
        assert_eq!(
            scope_from_dir_name("docker.io").unwrap(),
            registry("docker.io")
        );
        assert_eq!(
            scope_from_dir_name("myregistry.io_5000_").unwrap(),
            registry("myregistry.io:5000")
        );
        assert_eq!(
            scope_from_dir_name("myregistry.io:5000").unwrap(),
            registry("myregistry.io:5000")
        );
        let err = scope_from_dir_name("Not A Host").unwrap_err().to_string();
        assert!(err.contains("host_port_"), "{err}");
    }

    #[test]
    fn hosts_keep_file_order_and_capabilities() {
        // Deliberately not in sorted order.
        let text = r#"
[host."https://zeta.example"]
  capabilities = ["pull", "resolve"]
[host."alpha.example:5000"]
  capabilities = ["pull"]
  override_path = true
[host."https://push-only.example"]
  capabilities = ["push"]
[host."https://middle.example/v2/hub"]
  skip_verify = true
  ca = ["/etc/ca.pem"]
  client = [["/c.pem", "/k.pem"]]
  header = { x = "y" }
"#;
        let import = parse_hosts_toml("ghcr.io", text, "h.toml").unwrap();
        let entry = &import.mirrors[0];
        assert_eq!(entry.scope, registry("ghcr.io"));
        assert_eq!(
            entry
                .endpoints
                .iter()
                .map(|e| (e.url.as_str(), e.override_path, e.resolve))
                .collect::<Vec<_>>(),
            [
                ("https://zeta.example", false, true),
                ("https://alpha.example:5000", true, false),
                ("https://middle.example/v2/hub", false, true),
            ]
        );
        assert!(entry.origin.is_none() && !entry.skip_fallback);
        assert_eq!(import.warnings.len(), 2, "{:?}", import.warnings);
        assert!(import.warnings[0].contains("no pull capability"));
        assert!(import.warnings[1].contains("header not applied"));
        let tls = &entry.endpoints[2].tls;
        assert!(tls.insecure_skip_verify);
        assert_eq!(
            tls.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(
            tls.client_key.as_deref(),
            Some(std::path::Path::new("/k.pem"))
        );
        assert!(entry.endpoints[0].tls.is_default());
    }

    #[test]
    fn a_foreign_server_replaces_the_fallback() {
        let text = "server = \"http://10.0.0.9:5000\"\ncapabilities = [\"pull\", \"resolve\"]\n[host.\"http://10.0.0.5:5000\"]\n";
        let import = parse_hosts_toml("_default", text, "h.toml").unwrap();
        let entry = &import.mirrors[0];
        assert_eq!(entry.scope, MirrorScope::Wildcard);
        assert_eq!(
            entry
                .endpoints
                .iter()
                .map(|e| e.url.as_str())
                .collect::<Vec<_>>(),
            ["http://10.0.0.5:5000", "http://10.0.0.9:5000"]
        );
        assert!(entry.skip_fallback && entry.origin.is_none());
        assert!(import.warnings.is_empty(), "{:?}", import.warnings);

        let own = parse_hosts_toml("quay.io", "server = \"https://quay.io\"\n", "h.toml").unwrap();
        assert_eq!(
            own.mirrors[0].origin.as_ref().unwrap().url,
            "https://quay.io"
        );
        assert!(!own.mirrors[0].skip_fallback);
    }

    #[test]
    fn errors_name_the_file() {
        for (text, expected) in [
            ("server = 1", "server must be a string"),
            ("[host.\"ftp://x\"]", "must start with http"),
            (
                "[host.\"https://x\"]\noverride_path = \"yes\"",
                "override_path must be true or false",
            ),
            ("[host.\"https://x\"\n", "h.toml"),
        ] {
            let err = parse_hosts_toml("ghcr.io", text, "h.toml")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected) && err.contains("h.toml"),
                "{text:?}: {err}"
            );
        }
    }
}
