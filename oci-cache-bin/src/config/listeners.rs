//! Where `serve` listens: one address, or several (`[[listener]]` tables,
//! or one per registry:2 `config.yml`), each with the upstream requests
//! arriving there get when they name none. This is how the seeds' one
//! container per upstream, each on its own port, becomes one process
//! without touching a node: `docker.io → :5000`, `registry.k8s.io → :5001`.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use oci_cache_core::mirror::MirrorConfig;
use oci_cache_core::reference::Registry;
use serde::Deserialize;

use super::{pick, Origin, DEFAULT_LISTEN};
use crate::registry_compat::RegistryListener;

/// One `[[listener]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerEntry {
    /// `HOST:PORT`.
    addr: String,
    /// The upstream of requests that arrive here and name none (default:
    /// the top-level `default_upstream`).
    default_upstream: Option<String>,
}

/// A resolved listening address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listener {
    pub(crate) addr: SocketAddr,
    /// The upstream of requests that name none (`?ns=` and path prefixes
    /// still choose any); `None`: the mirror's default upstream.
    pub(crate) default_upstream: Option<Registry>,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.default_upstream {
            Some(upstream) => write!(f, "{} (default upstream {upstream})", self.addr),
            None => self.addr.fmt(f),
        }
    }
}

/// The listening sources, highest precedence first: `--listen` (one
/// address), registry:2 files' `http.addr`s, the TOML file's `listen` and
/// `[[listener]]` tables, the built-in default.
#[derive(Debug, Default)]
pub(crate) struct ListenSources {
    pub(crate) flag: Option<String>,
    pub(crate) registry: Vec<RegistryListener>,
    pub(crate) file_listen: Option<String>,
    pub(crate) file_listeners: Vec<ListenerEntry>,
}

/// Resolves and validates the listeners: every address parses, none is
/// given twice, and every per-listener upstream is configured.
pub(crate) fn resolve(
    sources: ListenSources,
    path: Option<&Path>,
    mirrors: &MirrorConfig,
) -> Result<Vec<Listener>, String> {
    let mut listeners = Vec::new();
    if sources.flag.is_none() && !sources.registry.is_empty() {
        for listener in sources.registry {
            let origin = format!("registry config {}: http.addr", listener.source);
            listeners.push(Listener {
                addr: parse_addr(&listener.addr, &origin)?,
                default_upstream: listener
                    .upstream
                    .map(|name| configured(mirrors, name.as_str(), &origin))
                    .transpose()?,
            });
        }
        return Ok(listeners);
    }
    let ignored_tables = sources.flag.is_some() && !sources.file_listeners.is_empty();
    if let Some((text, origin)) = pick(
        sources.flag,
        sources.file_listen,
        path,
        ("--listen", "OCI_CACHE_LISTEN", "listen"),
    ) {
        listeners.push(Listener {
            addr: parse_addr(&text, &origin.to_string())?,
            default_upstream: None,
        });
        if ignored_tables {
            tracing::warn!(
                "--listen replaces the config file's [[listener]] tables; serving only {text}"
            );
            return Ok(listeners);
        }
    }
    for (i, entry) in sources.file_listeners.into_iter().enumerate() {
        let origin = format!("{}: [[listener]] #{}", super::file_label(path), i + 1);
        let addr = parse_addr(&entry.addr, &origin)?;
        if listeners.iter().any(|l: &Listener| l.addr == addr) {
            return Err(format!(
                "{origin}: {addr} is already a listening address; give each listener its own"
            ));
        }
        listeners.push(Listener {
            addr,
            default_upstream: entry
                .default_upstream
                .map(|name| configured(mirrors, &name, &origin))
                .transpose()?,
        });
    }
    if listeners.is_empty() {
        let origin = Origin::Default { key: "listen" }.to_string();
        listeners.push(Listener {
            addr: parse_addr(DEFAULT_LISTEN, &origin)?,
            default_upstream: None,
        });
    }
    Ok(listeners)
}

fn parse_addr(text: &str, origin: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("{origin}: invalid listen address {text:?}: write it like 0.0.0.0:5000")
    })
}

/// The configured upstream `name` (or alias) names, by its canonical name.
fn configured(mirrors: &MirrorConfig, name: &str, origin: &str) -> Result<Registry, String> {
    mirrors.lookup(name).map(|u| u.name.clone()).ok_or_else(|| {
        let names: Vec<&str> = mirrors.upstreams.iter().map(|u| u.name.as_str()).collect();
        format!(
            "{origin}: default upstream {name} is not a configured upstream ({}); \
                 add an [[upstream]] named {name} or name one of those",
            names.join(", ")
        )
    })
}
