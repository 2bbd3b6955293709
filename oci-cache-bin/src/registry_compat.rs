//! A drop-in for `registry:2` pull-through containers: their `config.yml`
//! files (`--registry-config`, repeatable) and their `REGISTRY_*`
//! environment variables become mirror settings.
//!
//! Each file's `proxy.remoteurl` becomes an upstream named after its
//! registry (`https://registry-1.docker.io` → `docker.io`), with
//! `proxy.username`/`password` as the origin's credentials; so the one
//! container per upstream the seeds run becomes one process. `http.addr`
//! and `storage.filesystem.rootdirectory` / `storage.s3` give the listen
//! address and the storage (the first file that sets them wins; the others
//! are reported). The environment applies over the first file, as
//! registry:2 applies it over its one file. Sections this mirror does not
//! use are listed in one warning. `http.tls` becomes the mirror's serving
//! certificate and `auth.htpasswd` its client authentication; any other
//! `auth` scheme is refused, not ignored: silently serving
//! plain, open HTTP where the operator asked for neither would be worse.

use std::path::{Path, PathBuf};

use oci_cache_core::mirror::{Credentials, UpstreamConfig, DOCKER_HUB};
use oci_cache_core::reference::Registry;
use oci_cache_core::storage::S3Config;
use serde_norway::{Mapping, Value};

use crate::config::StorageConfig;

/// What registry:2 configuration says, for `config::resolve` to merge.
#[derive(Debug, Default)]
pub(crate) struct RegistrySettings {
    /// From `http.addr` / `REGISTRY_HTTP_ADDR` (`:5000` becomes `0.0.0.0:5000`).
    pub(crate) listen: Option<String>,
    /// From `storage.filesystem` / `storage.s3` / `REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY`.
    pub(crate) storage: Option<StorageConfig>,
    /// One per `proxy.remoteurl`, in file order (the environment's first).
    pub(crate) upstreams: Vec<UpstreamConfig>,
    /// From `http.tls.certificate`/`key`/`clientcas` or `REGISTRY_HTTP_TLS_*`.
    pub(crate) tls: Option<RegistryTls>,
    /// From `auth.htpasswd` or `REGISTRY_AUTH_HTPASSWD_PATH`/`_REALM`.
    pub(crate) htpasswd: Option<RegistryHtpasswd>,
}

/// registry:2's serving certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RegistryTls {
    pub(crate) certificate: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    /// registry:2 takes a list; oci-cache trusts one CA file (the first).
    pub(crate) client_ca: Option<PathBuf>,
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

/// Reads `files` and the `REGISTRY_*` variables `env` returns.
pub(crate) fn load(
    files: &[PathBuf],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RegistrySettings, String> {
    let mut sources = files
        .iter()
        .map(|path| read_file(path))
        .collect::<Result<Vec<_>, _>>()?;
    let from_env = env_source(env);
    if from_env.touched() {
        match sources.first_mut() {
            Some(first) => first.overlay(from_env),
            None => sources.push(from_env),
        }
    }
    merge(sources)
}

fn read_file(path: &Path) -> Result<Source, String> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read registry config {name}: {e}"))?;
    let value: Value =
        serde_norway::from_str(&text).map_err(|e| format!("registry config {name}: {e}"))?;
    parse(&value, name)
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
                        "tls" => {
                            let path = |key: &str| v.get(key).and_then(text).map(PathBuf::from);
                            let client_ca = v
                                .get("clientcas")
                                .and_then(|cas| cas.as_sequence())
                                .and_then(|cas| cas.first())
                                .and_then(text)
                                .map(PathBuf::from);
                            source.tls = Some(RegistryTls {
                                certificate: path("certificate"),
                                key: path("key"),
                                client_ca,
                            });
                            for (k, _) in entries(v) {
                                if !["certificate", "key", "clientcas"].contains(&k) {
                                    source.ignored.push(format!("http.tls.{k}"));
                                }
                            }
                        }
                        other => source.ignored.push(format!("http.{other}")),
                    }
                }
            }
            "auth" => {
                for (scheme, v) in entries(value) {
                    match (scheme, v.get("path").and_then(text)) {
                        ("htpasswd", Some(path)) => {
                            source.htpasswd = Some(RegistryHtpasswd {
                                path: path.into(),
                                realm: v.get("realm").and_then(text),
                            })
                        }
                        (other, _) => source.other_auth = Some(other.to_owned()),
                    }
                }
            }
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
fn env_source(env: &dyn Fn(&str) -> Option<String>) -> Source {
    let certificate = env("REGISTRY_HTTP_TLS_CERTIFICATE").map(PathBuf::from);
    let key = env("REGISTRY_HTTP_TLS_KEY").map(PathBuf::from);
    let tls = (certificate.is_some() || key.is_some()).then_some(RegistryTls {
        certificate,
        key,
        client_ca: None,
    });
    let htpasswd = env("REGISTRY_AUTH_HTPASSWD_PATH").map(|path| RegistryHtpasswd {
        path: path.into(),
        realm: env("REGISTRY_AUTH_HTPASSWD_REALM"),
    });
    Source {
        name: "the REGISTRY_* environment".to_owned(),
        addr: env("REGISTRY_HTTP_ADDR"),
        storage: env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY")
            .map(|dir| StorageConfig::Filesystem { dir: dir.into() }),
        remote_url: env("REGISTRY_PROXY_REMOTEURL"),
        username: env("REGISTRY_PROXY_USERNAME"),
        password: env("REGISTRY_PROXY_PASSWORD"),
        tls,
        htpasswd,
        other_auth: None,
        ignored: Vec::new(),
    }
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
        if let Some(addr) = source.addr.as_deref().map(listen_address) {
            match &settings.listen {
                None => settings.listen = Some(addr),
                Some(first) if *first != addr => ignored.push(format!(
                    "http.addr {addr} of {} (one process listens on {first})",
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
mod tests {
    use super::*;

    /// The registry config of the Earthly guide in the seeds, as written.
    const EARTHLY: &str = "version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
proxy:
  remoteurl: https://registry-1.docker.io
  username: [username]
  password: [password]
";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_earthly_seed_config_becomes_a_docker_hub_upstream() {
        let dir = tempfile::tempdir().unwrap();
        // The guide's placeholders are YAML lists; a real file has strings.
        let text = EARTHLY
            .replace("[username]", "robot")
            .replace("[password]", "s3cret");
        let file = write(dir.path(), "config.yml", &text);
        let settings = load(&[file], &no_env).unwrap();
        assert_eq!(settings.listen.as_deref(), Some("0.0.0.0:5000"));
        assert_eq!(
            settings.storage,
            Some(StorageConfig::Filesystem {
                dir: "/var/lib/registry".into()
            })
        );
        let [hub] = settings.upstreams.as_slice() else {
            panic!("{:?}", settings.upstreams);
        };
        assert_eq!(hub.name.as_str(), "docker.io");
        assert_eq!(hub.origin.url, "https://registry-1.docker.io");
        let credentials = hub.origin.credentials.as_ref().unwrap();
        assert_eq!(
            (credentials.username.as_str(), credentials.password.as_str()),
            ("robot", "s3cret")
        );
    }

    #[test]
    fn five_files_become_five_upstreams_in_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = [
            ("hub", "https://registry-1.docker.io", 5000),
            ("k8s", "https://registry.k8s.io", 5001),
            ("gcr", "https://gcr.io", 5002),
            ("ghcr", "https://ghcr.io", 5003),
            ("quay", "https://quay.io/", 5004),
        ]
        .iter()
        .map(|(name, url, port)| {
            write(
                dir.path(),
                name,
                &format!("version: 0.1\nproxy:\n  remoteurl: {url}\nhttp:\n  addr: :{port}\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/{name}\n"),
            )
        })
        .collect();
        let settings = load(&files, &no_env).unwrap();
        let names: Vec<&str> = settings.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "docker.io",
                "registry.k8s.io",
                "gcr.io",
                "ghcr.io",
                "quay.io"
            ]
        );
        assert_eq!(settings.upstreams[4].origin.url, "https://quay.io");
        assert_eq!(settings.listen.as_deref(), Some("0.0.0.0:5000"));
        assert_eq!(
            settings.storage,
            Some(StorageConfig::Filesystem {
                dir: "/var/lib/hub".into()
            })
        );
    }

    #[test]
    fn the_environment_applies_over_the_first_file_or_alone() {
        let env = |k: &str| match k {
            "REGISTRY_PROXY_REMOTEURL" => Some("http://127.0.0.1:5100".to_owned()),
            "REGISTRY_HTTP_ADDR" => Some("127.0.0.1:5555".to_owned()),
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY" => Some("/data".to_owned()),
            "REGISTRY_PROXY_USERNAME" => Some("u".to_owned()),
            _ => None,
        };
        let settings = load(&[], &env).unwrap();
        assert_eq!(settings.listen.as_deref(), Some("127.0.0.1:5555"));
        assert_eq!(settings.upstreams[0].name.as_str(), "127.0.0.1:5100");
        assert_eq!(settings.upstreams[0].origin.url, "http://127.0.0.1:5100");
        assert_eq!(
            settings.upstreams[0]
                .origin
                .credentials
                .as_ref()
                .unwrap()
                .username,
            "u"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "c.yml",
            EARTHLY
                .replace("  username: [username]\n  password: [password]\n", "")
                .as_str(),
        );
        let settings = load(&[file], &env).unwrap();
        assert_eq!(
            settings.upstreams.len(),
            1,
            "the env's remote replaces the file's"
        );
        assert_eq!(settings.upstreams[0].origin.url, "http://127.0.0.1:5100");
        assert_eq!(
            settings.storage,
            Some(StorageConfig::Filesystem {
                dir: "/data".into()
            })
        );
    }

    #[test]
    fn tls_and_htpasswd_become_the_mirrors_own_other_auth_is_refused() {
        let env = |k: &str| match k {
            "REGISTRY_HTTP_TLS_CERTIFICATE" => Some("/c.pem".to_owned()),
            "REGISTRY_HTTP_TLS_KEY" => Some("/k.pem".to_owned()),
            "REGISTRY_AUTH_HTPASSWD_PATH" => Some("/auth/htpasswd".to_owned()),
            "REGISTRY_AUTH_HTPASSWD_REALM" => Some("Registry Realm".to_owned()),
            _ => None,
        };
        let settings = load(&[], &env).unwrap();
        assert_eq!(
            settings.tls,
            Some(RegistryTls {
                certificate: Some("/c.pem".into()),
                key: Some("/k.pem".into()),
                client_ca: None,
            })
        );
        assert_eq!(
            settings.htpasswd,
            Some(RegistryHtpasswd {
                path: "/auth/htpasswd".into(),
                realm: Some("Registry Realm".into()),
            })
        );
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "c.yml",
            "http:\n  tls:\n    certificate: /etc/c.pem\n    key: /etc/k.pem\n    clientcas: [/etc/ca.pem]\nauth:\n  htpasswd:\n    realm: r\n    path: /auth/htpasswd\nproxy:\n  remoteurl: https://ghcr.io\n",
        );
        let settings = load(&[file], &no_env).unwrap();
        assert_eq!(
            settings.tls.and_then(|t| t.client_ca),
            Some(PathBuf::from("/etc/ca.pem"))
        );
        assert_eq!(
            settings.htpasswd.map(|h| h.path),
            Some("/auth/htpasswd".into())
        );
        let token = write(
            dir.path(),
            "t.yml",
            "auth:\n  token:\n    realm: https://auth.example/token\n",
        );
        let err = load(&[token], &no_env).unwrap_err();
        assert!(
            err.contains("auth.token") && err.contains("htpasswd"),
            "{err}"
        );
    }

    #[test]
    fn s3_storage_and_bad_urls() {
        let value: Value = serde_norway::from_str(
            "storage:\n  s3:\n    bucket: b\n    region: us-east-1\n    regionendpoint: http://127.0.0.1:9000\n    forcepathstyle: true\n    rootdirectory: /cache\n",
        )
        .unwrap();
        let source = parse(&value, "f".into()).unwrap();
        let Some(StorageConfig::S3(s3)) = source.storage else {
            panic!("{:?}", source.storage);
        };
        assert_eq!(s3.bucket, "b");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(s3.path_style);
        assert_eq!(s3.prefix.as_deref(), Some("cache"));
        let err = upstream("registry-1.docker.io", "f").unwrap_err();
        assert!(err.contains("http(s)://"), "{err}");
    }
}
