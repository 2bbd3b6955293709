//! A drop-in for `registry:2` pull-through containers: their `config.yml`
//! files (`--registry-config`, repeatable) and their `REGISTRY_*`
//! environment variables become mirror settings.
//!
//! Each file's `proxy.remoteurl` becomes an upstream named after its
//! registry (`https://registry-1.docker.io` → `docker.io`), with
//! `proxy.username`/`password` as the origin's credentials; so the one
//! container per upstream the seeds run becomes one process. Each file's
//! `http.addr` stays a listening address, whose requests go to that file's
//! upstream when they name none, so nodes pointed at one port per upstream
//! need no change. `storage.filesystem.rootdirectory` / `storage.s3` give
//! the storage (the first file that sets it wins; the others are reported). The environment applies over the first file, as
//! registry:2 applies it over its one file. Sections this mirror does not
//! use are listed in one warning. `http.tls` becomes the mirror's serving
//! certificate (`letsencrypt`: `[tls.acme]`) and `auth.htpasswd` its client
//! authentication. A security
//! setting that cannot be honoured is refused, not ignored, whatever its
//! source: another `auth` scheme (`token`, `silly`, `REGISTRY_AUTH=token`),
//! `auth` written as a scalar, htpasswd without a path, `http.tls` without a
//! certificate or `letsencrypt.hosts`, and any
//! `REGISTRY_AUTH_*` / `REGISTRY_HTTP_TLS_*` variable it does not read:
//! silently serving plain, open HTTP where the operator asked for neither
//! would be worse.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use oci_cache_core::mirror::{Credentials, UpstreamConfig, DOCKER_HUB};
use oci_cache_core::reference::Registry;
use oci_cache_core::storage::S3Config;
use serde_norway::{Mapping, Value};

use crate::config::StorageConfig;

mod letsencrypt;

/// What registry:2 configuration says, for `config::resolve` to merge.
#[derive(Debug, Default)]
pub(crate) struct RegistrySettings {
    /// One per file with an `http.addr` (`REGISTRY_HTTP_ADDR` over the
    /// first), in file order: each serves its file's upstream by default.
    pub(crate) listeners: Vec<RegistryListener>,
    /// From `storage.filesystem` / `storage.s3` / `REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY`.
    pub(crate) storage: Option<StorageConfig>,
    /// One per `proxy.remoteurl`, in file order (the environment's first).
    pub(crate) upstreams: Vec<UpstreamConfig>,
    /// From `http.tls.certificate`/`key`/`clientcas` or `REGISTRY_HTTP_TLS_*`.
    pub(crate) tls: Option<RegistryTls>,
    /// From `auth.htpasswd` or `REGISTRY_AUTH_HTPASSWD_PATH`/`_REALM`.
    pub(crate) htpasswd: Option<RegistryHtpasswd>,
}

/// One container's port: `http.addr` (`:5000` becomes `0.0.0.0:5000`) and
/// the upstream its `proxy.remoteurl` names, which requests arriving there
/// get when they name none (nodes point one port per upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegistryListener {
    pub(crate) addr: String,
    pub(crate) upstream: Option<Registry>,
    /// The file (or the environment) it came from, for messages.
    pub(crate) source: String,
}

/// registry:2's serving certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RegistryTls {
    pub(crate) certificate: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    /// registry:2 takes a list; oci-cache trusts one CA file (the first).
    pub(crate) client_ca: Option<PathBuf>,
    /// `letsencrypt`: the certificate from an ACME CA instead.
    pub(crate) letsencrypt: Option<crate::trust::acme::AcmeFile>,
}

/// registry:2's htpasswd client authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegistryHtpasswd {
    pub(crate) path: PathBuf,
    pub(crate) realm: Option<String>,
}

/// One file (or the environment) as read, before merging.
#[derive(Debug, Default)]
struct Source {
    name: String,
    addr: Option<String>,
    storage: Option<StorageConfig>,
    remote_url: Option<String>,
    username: Option<String>,
    password: Option<String>,
    tls: Option<RegistryTls>,
    htpasswd: Option<RegistryHtpasswd>,
    /// An `auth` scheme other than htpasswd (token, silly): refused.
    other_auth: Option<String>,
    ignored: Vec<String>,
}

/// True when `text` is YAML with registry:2's top-level sections (`version`
/// and one of `proxy`, `http`, `storage`): a file given where oci-cache's
/// TOML was expected, to answer with what to type instead.
pub(crate) fn looks_like_registry_config(text: &str) -> bool {
    let Ok(Value::Mapping(top)) = serde_norway::from_str::<Value>(text) else {
        return false;
    };
    let has = |key: &str| top.contains_key(key);
    has("version") && (has("proxy") || has("http") || has("storage"))
}

/// What `import --registry2-config` reads from a registry:2 `config.yml`.
#[derive(Debug)]
pub(crate) struct RegistryProxy {
    /// The file, for messages.
    pub(crate) file: PathBuf,
    /// The upstream `proxy.remoteurl` names, if it is set.
    pub(crate) upstream: Option<UpstreamConfig>,
    /// `storage.filesystem.rootdirectory`, if set.
    pub(crate) root_directory: Option<PathBuf>,
}

/// The upstream and storage directory of the registry:2 `config.yml` at
/// `path`; only those two settings are read (the container is being retired,
/// its other settings do not matter to an import).
pub(crate) fn proxy_of(path: &Path) -> Result<RegistryProxy, String> {
    let (value, name) = read_yaml(path)?;
    let upstream = match value
        .get("proxy")
        .and_then(|p| p.get("remoteurl"))
        .and_then(text)
    {
        Some(url) => Some(upstream(&url, &name)?),
        None => None,
    };
    let root_directory = value
        .get("storage")
        .and_then(|s| s.get("filesystem"))
        .and_then(|f| f.get("rootdirectory"))
        .and_then(text)
        .map(PathBuf::from);
    Ok(RegistryProxy {
        file: path.to_path_buf(),
        upstream,
        root_directory,
    })
}

/// Reads `files` and the `REGISTRY_*` variables `env` returns.
pub(crate) fn load(
    files: &[PathBuf],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RegistrySettings, String> {
    let mut sources = files
        .iter()
        .map(|path| read_file(path))
        .collect::<Result<Vec<_>, _>>()?;
    let from_env = env_source(env)?;
    if from_env.touched() {
        match sources.first_mut() {
            Some(first) => first.overlay(from_env),
            None => sources.push(from_env),
        }
    }
    merge(sources)
}

fn read_file(path: &Path) -> Result<Source, String> {
    let (value, name) = read_yaml(path)?;
    parse(&value, name)
}

/// A registry:2 `config.yml` as YAML, with its name for messages.
fn read_yaml(path: &Path) -> Result<(Value, String), String> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read registry config {name}: {e}"))?;
    let value: Value =
        serde_norway::from_str(&text).map_err(|e| format!("registry config {name}: {e}"))?;
    Ok((value, name))
}

/// The settings of one registry:2 config document.
fn parse(value: &Value, name: String) -> Result<Source, String> {
    let mut source = Source {
        name,
        ..Source::default()
    };
    let Some(top) = value.as_mapping() else {
        return Err(format!(
            "registry config {}: not a registry:2 config.yml (a YAML mapping with proxy, http, storage…)",
            source.name
        ));
    };
    for (key, value) in top {
        let key = key.as_str().unwrap_or_default();
        match key {
            "version" => {}
            "proxy" => {
                for (k, v) in entries(value) {
                    match k {
                        "remoteurl" => source.remote_url = text(v),
                        "username" => source.username = text(v),
                        "password" => source.password = text(v),
                        other => source.ignored.push(format!("proxy.{other}")),
                    }
                }
            }
            "http" => {
                for (k, v) in entries(value) {
                    match k {
                        "addr" => source.addr = text(v),
                        "tls" => source.tls = Some(tls(v, &source.name)?),
                        other => source.ignored.push(format!("http.{other}")),
                    }
                }
            }
            "auth" => auth(value, &mut source)?,
            "storage" => {
                for (k, v) in entries(value) {
                    match k {
                        "filesystem" => {
                            if let Some(dir) = v.get("rootdirectory").and_then(text) {
                                source.storage =
                                    Some(StorageConfig::Filesystem { dir: dir.into() });
                            }
                        }
                        "s3" => source.storage = Some(StorageConfig::S3(s3(v))),
                        other => source.ignored.push(format!("storage.{other}")),
                    }
                }
            }
            other => source.ignored.push(other.to_owned()),
        }
    }
    Ok(source)
}

/// `http.tls`: a certificate and key, or `letsencrypt` (an ACME CA). Plain
/// HTTP where TLS was asked for would be worse than not starting.
fn tls(value: &Value, name: &str) -> Result<RegistryTls, String> {
    let path = |key: &str| value.get(key).and_then(text).map(PathBuf::from);
    let client_ca = value
        .get("clientcas")
        .and_then(|cas| cas.as_sequence())
        .and_then(|cas| cas.first())
        .and_then(text)
        .map(PathBuf::from);
    let tls = RegistryTls {
        certificate: path("certificate"),
        key: path("key"),
        client_ca,
        letsencrypt: letsencrypt::letsencrypt(value.get("letsencrypt"), name)?,
    };
    if let Some(other) = entries(value)
        .map(|(k, _)| k)
        .find(|k| !["certificate", "key", "clientcas", "letsencrypt"].contains(k))
    {
        return Err(format!(
            "{name}: http.tls.{other} is set, but oci-cache serves TLS only from certificate and key files \
             or http.tls.letsencrypt; give http.tls.certificate and http.tls.key (or --tls-cert and --tls-key)"
        ));
    }
    match (&tls.certificate, &tls.letsencrypt) {
        (None, None) => Err(format!(
            "{name}: http.tls has no certificate, so TLS cannot be served; give http.tls.certificate \
             and http.tls.key (or --tls-cert and --tls-key) or http.tls.letsencrypt, or remove http.tls to serve plain HTTP"
        )),
        (Some(_), Some(_)) => Err(format!(
            "{name}: http.tls has both a certificate and letsencrypt; keep one (registry:2 would use letsencrypt)"
        )),
        _ => Ok(tls),
    }
}

/// `auth`: only `htpasswd` with a `path` is honoured; anything else is
/// refused rather than ignored, as ignoring it would serve an open mirror
/// where authentication was asked for.
fn auth(value: &Value, source: &mut Source) -> Result<(), String> {
    let name = &source.name;
    let Some(schemes) = value.as_mapping() else {
        if value.is_null() {
            return Ok(());
        }
        return Err(format!(
            "{name}: auth is written as a scalar ({}); write it as a mapping, e.g. \
             auth:\\n  htpasswd:\\n    realm: registry\\n    path: /auth/htpasswd",
            text(value).unwrap_or_else(|| "a list".to_owned())
        ));
    };
    for (scheme, v) in schemes {
        match scheme.as_str().unwrap_or_default() {
            "htpasswd" => {
                let Some(path) = v.get("path").and_then(text).filter(|p| !p.is_empty()) else {
                    return Err(format!(
                        "{name}: auth.htpasswd has no path; give auth.htpasswd.path (the htpasswd file)"
                    ));
                };
                source.htpasswd = Some(RegistryHtpasswd {
                    path: path.into(),
                    realm: v.get("realm").and_then(text),
                });
            }
            other => source.other_auth = Some(other.to_owned()),
        }
    }
    Ok(())
}

/// The `REGISTRY_*` variables this mirror reads; any other `REGISTRY_AUTH…`
/// or `REGISTRY_HTTP_TLS…` one is refused by [`check_env_names`].
const HONOURED_SECURITY_ENV: &[&str] = &[
    "REGISTRY_AUTH",
    "REGISTRY_AUTH_HTPASSWD_PATH",
    "REGISTRY_AUTH_HTPASSWD_REALM",
    "REGISTRY_HTTP_TLS_CERTIFICATE",
    "REGISTRY_HTTP_TLS_KEY",
];

/// Refuses security settings in the environment that oci-cache would
/// otherwise ignore (`REGISTRY_AUTH_TOKEN_REALM`,
/// `REGISTRY_HTTP_TLS_LETSENCRYPT_EMAIL`, …): a registry:2 container
/// started with them expects authentication or TLS it would not get.
pub(crate) fn check_env_names(names: impl IntoIterator<Item = OsString>) -> Result<(), String> {
    let mut refused: Vec<String> = names
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .filter(|n| n.starts_with("REGISTRY_AUTH") || n.starts_with("REGISTRY_HTTP_TLS"))
        .filter(|n| !HONOURED_SECURITY_ENV.contains(&n.as_str()))
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    refused.sort_unstable();
    Err(format!(
        "the REGISTRY_* environment sets {}, which oci-cache does not implement; it checks clients \
         only with htpasswd (REGISTRY_AUTH_HTPASSWD_PATH, _REALM) and serves TLS only from files \
         (REGISTRY_HTTP_TLS_CERTIFICATE, _KEY); unset {}",
        refused.join(", "),
        if refused.len() == 1 { "it" } else { "them" }
    ))
}

fn entries(value: &Value) -> impl Iterator<Item = (&str, &Value)> {
    value
        .as_mapping()
        .into_iter()
        .flat_map(Mapping::iter)
        .map(|(k, v)| (k.as_str().unwrap_or_default(), v))
}

/// A scalar as text (registry:2 accepts `addr: 5000`-style numbers too).
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// registry:2's `storage.s3` keys; the rest of them are not ours to honour.
fn s3(value: &Value) -> S3Config {
    let get = |k: &str| value.get(k).and_then(text);
    S3Config {
        bucket: get("bucket").unwrap_or_default(),
        prefix: get("rootdirectory").map(|p| p.trim_matches('/').to_owned()),
        endpoint: get("regionendpoint"),
        region: get("region"),
        path_style: get("forcepathstyle").is_some_and(|v| v == "true"),
        access_key_id: get("accesskey"),
        secret_access_key: get("secretkey"),
        session_token: get("sessiontoken"),
    }
}

/// The variables registry:2 containers are started with in the seeds.
fn env_source(env: &dyn Fn(&str) -> Option<String>) -> Result<Source, String> {
    let certificate = env("REGISTRY_HTTP_TLS_CERTIFICATE").map(PathBuf::from);
    let key = env("REGISTRY_HTTP_TLS_KEY").map(PathBuf::from);
    let tls = (certificate.is_some() || key.is_some()).then_some(RegistryTls {
        certificate,
        key,
        client_ca: None,
        letsencrypt: None,
    });
    let htpasswd = env("REGISTRY_AUTH_HTPASSWD_PATH").map(|path| RegistryHtpasswd {
        path: path.into(),
        realm: env("REGISTRY_AUTH_HTPASSWD_REALM"),
    });
    // `REGISTRY_AUTH=htpasswd` needs the path; any other scheme is refused.
    let other_auth = match env("REGISTRY_AUTH") {
        Some(scheme) if scheme == "htpasswd" => {
            if htpasswd
                .as_ref()
                .is_none_or(|h| h.path.as_os_str().is_empty())
            {
                return Err(
                    "the REGISTRY_* environment: REGISTRY_AUTH=htpasswd has no path; set \
                     REGISTRY_AUTH_HTPASSWD_PATH to the htpasswd file"
                        .to_owned(),
                );
            }
            None
        }
        Some(scheme) => Some(scheme),
        None => None,
    };
    if htpasswd
        .as_ref()
        .is_some_and(|h| h.path.as_os_str().is_empty())
    {
        return Err(
            "the REGISTRY_* environment: REGISTRY_AUTH_HTPASSWD_PATH is empty; give the htpasswd file"
                .to_owned(),
        );
    }
    Ok(Source {
        name: "the REGISTRY_* environment".to_owned(),
        addr: env("REGISTRY_HTTP_ADDR"),
        storage: env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY")
            .map(|dir| StorageConfig::Filesystem { dir: dir.into() }),
        remote_url: env("REGISTRY_PROXY_REMOTEURL"),
        username: env("REGISTRY_PROXY_USERNAME"),
        password: env("REGISTRY_PROXY_PASSWORD"),
        tls,
        htpasswd,
        other_auth,
        ignored: Vec::new(),
    })
}

impl Source {
    fn touched(&self) -> bool {
        self.addr.is_some()
            || self.storage.is_some()
            || self.remote_url.is_some()
            || self.username.is_some()
            || self.password.is_some()
            || self.tls.is_some()
            || self.htpasswd.is_some()
            || self.other_auth.is_some()
    }

    /// `other`'s settings over this one's.
    fn overlay(&mut self, other: Source) {
        self.name = format!("{} with {}", self.name, other.name);
        self.addr = other.addr.or(self.addr.take());
        self.storage = other.storage.or(self.storage.take());
        self.remote_url = other.remote_url.or(self.remote_url.take());
        self.username = other.username.or(self.username.take());
        self.password = other.password.or(self.password.take());
        self.tls = other.tls.or(self.tls.take());
        self.htpasswd = other.htpasswd.or(self.htpasswd.take());
        self.other_auth = other.other_auth.or(self.other_auth.take());
    }
}

fn merge(sources: Vec<Source>) -> Result<RegistrySettings, String> {
    let mut settings = RegistrySettings::default();
    let mut ignored: Vec<String> = Vec::new();
    for source in sources {
        if let Some(scheme) = &source.other_auth {
            return Err(format!(
                "{}: auth.{scheme} is set, but oci-cache checks clients only with htpasswd; use auth.htpasswd (or --htpasswd) instead",
                source.name
            ));
        }
        // One process serves one certificate and one htpasswd file: the first wins.
        if let Some(tls) = source.tls {
            match &settings.tls {
                None => settings.tls = Some(tls),
                Some(first) if *first != tls => ignored.push(format!(
                    "http.tls of {} (one process serves the first)",
                    source.name
                )),
                Some(_) => {}
            }
        }
        if let Some(htpasswd) = source.htpasswd {
            match &settings.htpasswd {
                None => settings.htpasswd = Some(htpasswd),
                Some(first) if *first != htpasswd => ignored.push(format!(
                    "auth.htpasswd of {} (one process checks the first)",
                    source.name
                )),
                Some(_) => {}
            }
        }
        if let Some(storage) = source.storage {
            match &settings.storage {
                None => settings.storage = Some(storage),
                Some(first) if *first != storage => ignored.push(format!(
                    "storage of {} (all upstreams share the first file's storage)",
                    source.name
                )),
                Some(_) => {}
            }
        }
        let proxied = match &source.remote_url {
            Some(url) => Some(upstream(url, &source.name)?.name),
            None => None,
        };
        if let Some(addr) = source.addr.as_deref().map(listen_address) {
            add_listener(
                &mut settings.listeners,
                RegistryListener {
                    addr,
                    upstream: proxied,
                    source: source.name.clone(),
                },
            )?;
        }
        if let Some(url) = source.remote_url {
            let mut upstream = upstream(&url, &source.name)?;
            if source.username.is_some() || source.password.is_some() {
                upstream.origin.credentials = Some(Credentials {
                    username: source.username.unwrap_or_default(),
                    password: source.password.unwrap_or_default(),
                });
            }
            settings.upstreams.retain(|u| u.name != upstream.name);
            settings.upstreams.push(upstream);
        }
        ignored.extend(
            source
                .ignored
                .into_iter()
                .map(|key| format!("{key} ({})", source.name)),
        );
    }
    if !ignored.is_empty() {
        tracing::warn!(
            "registry config settings not used by oci-cache: {}",
            ignored.join(", ")
        );
    }
    Ok(settings)
}

/// Adds `listener`, unless a file before it listens on the same address:
/// the same upstream there is the same container twice; another one is
/// refused, as one port has one default upstream.
fn add_listener(
    listeners: &mut Vec<RegistryListener>,
    listener: RegistryListener,
) -> Result<(), String> {
    let Some(first) = listeners.iter().find(|l| l.addr == listener.addr) else {
        listeners.push(listener);
        return Ok(());
    };
    if first.upstream == listener.upstream {
        return Ok(());
    }
    let name = |l: &RegistryListener| {
        l.upstream
            .as_ref()
            .map_or_else(|| "no upstream".to_owned(), ToString::to_string)
    };
    Err(format!(
        "{} and {} both set http.addr {} but proxy different registries ({} and {}); \
         one port serves one upstream by default, so give each file its own http.addr \
         (as each container had its own port: -p 5000:5000, -p 5001:5000, …)",
        first.source,
        listener.source,
        listener.addr,
        name(first),
        name(&listener)
    ))
}

/// registry:2 writes `:5000` for every interface.
fn listen_address(addr: &str) -> String {
    match addr.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => addr.to_owned(),
    }
}

/// `proxy.remoteurl` as an upstream named after its registry.
fn upstream(url: &str, source: &str) -> Result<UpstreamConfig, String> {
    let url = url.trim_end_matches('/');
    let authority = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .map(|rest| rest.split('/').next().unwrap_or_default())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            format!("{source}: proxy.remoteurl {url:?} must be an http(s):// URL such as https://registry-1.docker.io")
        })?;
    let name = match authority {
        "registry-1.docker.io" | "index.docker.io" | DOCKER_HUB => DOCKER_HUB,
        other => other,
    };
    let registry = Registry::new(name)
        .map_err(|e| format!("{source}: proxy.remoteurl {url:?} names no registry: {e}"))?;
    Ok(UpstreamConfig::new(registry, url))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests;
