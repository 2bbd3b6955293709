//! Talos machine configuration documents (Talos 1.12 and later):
//! `RegistryMirrorConfig`, `RegistryAuthConfig` and `RegistryTLSConfig`;
//! and the `machine.registries.mirrors` section older Talos versions read
//! (in a machine config or a patch; its `config` auth/TLS part is reported,
//! not applied).
//!
//! The text is a YAML stream, as `talosctl` writes it: documents of other
//! kinds (the `v1alpha1` machine config, network documents, …) are skipped,
//! so a whole machine configuration can be given.
//!
//! Mapping:
//! - `RegistryMirrorConfig` `name` → the upstream (`*`: every configured
//!   upstream without mirrors, see [`apply_import`](super::MirrorConfig::apply_import));
//!   `endpoints[].url` / `overridePath` → mirrors in order (Talos renders them
//!   with containerd's `pull` and `resolve`, so they resolve tags);
//!   `skipFallback` → `skip_fallback`.
//! - `RegistryAuthConfig` `name` (an endpoint's `host[:port]`) →
//!   credentials of every endpoint there; `username`/`password`, or `auth`
//!   (base64 `user:password`). `identityToken` is not supported (warning).
//! - `RegistryTLSConfig` `name` (an endpoint's `host[:port]`):
//!   `insecureSkipVerify` → [`EndpointTls::insecure_skip_verify`] of every
//!   endpoint there; inline PEM `ca` / `clientIdentity` are not applied
//!   (warning): endpoints take TLS material as files.
//!
//! ```
//! use oci_cache_core::mirror::{talos, MirrorConfig};
//!
//! let yaml = "apiVersion: v1alpha1
//! kind: RegistryMirrorConfig
//! name: ghcr.io
//! endpoints:
//!   - url: http://10.0.0.5:5000
//!   - url: https://harbor.example/v2/ghcr
//!     overridePath: true
//! skipFallback: true
//! ";
//! let import = talos::parse(yaml, "talos.yaml").unwrap();
//! let mut mirrors = MirrorConfig::common();
//! mirrors.apply_import(import).unwrap();
//! let chain = mirrors.lookup("ghcr.io").unwrap().chain();
//! assert_eq!(chain.len(), 2);
//! assert!(chain[1].override_path);
//! ```

use base64::Engine as _;
use serde::Deserialize;

use super::import::{located, HostCredentials, HostTls, Import, ImportedMirror, MirrorScope};
use super::{Credentials, Endpoint, EndpointTls};
use crate::reference::Registry;
use crate::{Error, Result};

const API_VERSION: &str = "v1alpha1";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MirrorDoc {
    name: String,
    #[serde(default)]
    endpoints: Vec<EndpointDoc>,
    #[serde(default)]
    skip_fallback: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EndpointDoc {
    url: String,
    #[serde(default)]
    override_path: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuthDoc {
    name: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
    #[serde(default)]
    identity_token: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TlsDoc {
    name: String,
    #[serde(default)]
    client_identity: Option<CertificateAndKey>,
    #[serde(default)]
    ca: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateAndKey {
    #[serde(default)]
    #[allow(dead_code)] // checked for presence by serde only
    cert: String,
    #[serde(default)]
    #[allow(dead_code)]
    key: String,
}

/// The three document kinds read here; everything else is skipped.
const KINDS: [&str; 3] = [
    "RegistryMirrorConfig",
    "RegistryAuthConfig",
    "RegistryTLSConfig",
];

/// Reads the registry documents of a Talos configuration; `source` names the
/// file in messages. Fails on YAML errors, unknown fields and invalid values
/// of the three kinds, naming the document.
pub fn parse(text: &str, source: &str) -> Result<Import> {
    let mut import = Import::default();
    let mut found = 0usize;
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value = serde_norway::Value::deserialize(document)
            .map_err(|e| Error::Config(format!("{source}: document {number}: {e}")))?;
        let Some(mut map) = value.as_mapping().cloned() else {
            continue; // empty document (a leading or trailing `---`)
        };
        let at = format!("{source}: document {number} (machine.registries)");
        if legacy_registries(&map, &at, &mut import)? {
            found += 1;
        }
        let kind = map
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        if !KINDS.contains(&kind.as_str()) {
            tracing::debug!(source, number, kind, "skipping a talos document");
            continue;
        }
        found += 1;
        let at = format!("{source}: document {number} ({kind})");
        let version = map.remove("apiVersion");
        map.remove("kind");
        if version.as_ref().and_then(|v| v.as_str()) != Some(API_VERSION) {
            return Err(Error::Config(format!(
                "{at}: apiVersion must be {API_VERSION}, found {version:?}"
            )));
        }
        let value = serde_norway::Value::Mapping(map);
        let bad = |e: serde_norway::Error| Error::Config(format!("{at}: {e}"));
        match kind.as_str() {
            "RegistryMirrorConfig" => {
                let doc: MirrorDoc = serde_norway::from_value(value).map_err(bad)?;
                import.mirrors.push(mirror(doc, &at)?);
            }
            "RegistryAuthConfig" => {
                let doc: AuthDoc = serde_norway::from_value(value).map_err(bad)?;
                match credentials(&doc, &at)? {
                    Some(credentials) => import.credentials.push(HostCredentials {
                        host: doc.name,
                        credentials,
                        source: at,
                    }),
                    None => import.warnings.push(format!(
                        "{at}: identityToken authentication is not supported; the endpoints at {} stay anonymous (use username and password)",
                        doc.name
                    )),
                }
            }
            _ => {
                let doc: TlsDoc = serde_norway::from_value(value).map_err(bad)?;
                name_required(&doc.name, &at)?;
                let mut what = Vec::new();
                if doc.ca.is_some() {
                    what.push("ca");
                }
                if doc.client_identity.is_some() {
                    what.push("clientIdentity");
                }
                if !what.is_empty() {
                    import.warnings.push(format!(
                        "{at}: {} for {} not applied: inline PEM is not supported; set tls.ca_file / tls.client_cert / tls.client_key on the endpoint in the config file",
                        what.join(", "),
                        doc.name
                    ));
                }
                if doc.insecure_skip_verify {
                    import.tls.push(HostTls {
                        host: doc.name,
                        tls: EndpointTls {
                            insecure_skip_verify: true,
                            ..EndpointTls::default()
                        },
                        source: at,
                    });
                }
            }
        }
    }
    if found == 0 {
        return Err(Error::Config(format!(
            "{source}: no RegistryMirrorConfig, RegistryAuthConfig or RegistryTLSConfig document (apiVersion {API_VERSION}) and no machine.registries.mirrors section found"
        )));
    }
    Ok(import)
}

/// One registry of the pre-1.12 `machine.registries.mirrors` section, where
/// `overridePath` is per registry rather than per endpoint.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LegacyMirror {
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    override_path: bool,
    #[serde(default)]
    skip_fallback: bool,
}

/// Reads `machine.registries.mirrors` of a v1alpha1 machine config or of a
/// patch (Talos before 1.12) into `import`; true when the section was there.
/// `machine.registries.config` (auth, TLS) is reported, not applied.
fn legacy_registries(map: &serde_norway::Mapping, at: &str, import: &mut Import) -> Result<bool> {
    let Some(registries) = map
        .get("machine")
        .and_then(|m| m.get("registries"))
        .and_then(|r| r.as_mapping())
    else {
        return Ok(false);
    };
    if registries.get("config").is_some() {
        import.warnings.push(format!(
            "{at}: machine.registries.config (auth, TLS) is not read; write RegistryAuthConfig / RegistryTLSConfig documents or set them in the config file"
        ));
    }
    let Some(mirrors) = registries.get("mirrors") else {
        return Ok(false);
    };
    let mirrors: std::collections::BTreeMap<String, LegacyMirror> =
        serde_norway::from_value(mirrors.clone())
            .map_err(|e| Error::Config(format!("{at}: mirrors: {e}")))?;
    for (name, legacy) in mirrors {
        let doc = MirrorDoc {
            name,
            endpoints: legacy
                .endpoints
                .into_iter()
                .map(|url| EndpointDoc {
                    url,
                    override_path: legacy.override_path,
                })
                .collect(),
            skip_fallback: legacy.skip_fallback,
        };
        import.mirrors.push(mirror(doc, at)?);
    }
    Ok(true)
}

fn name_required(name: &str, at: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::Config(format!("{at}: name must be set")));
    }
    Ok(())
}

fn mirror(doc: MirrorDoc, at: &str) -> Result<ImportedMirror> {
    name_required(&doc.name, at)?;
    let scope = if doc.name == "*" {
        MirrorScope::Wildcard
    } else {
        MirrorScope::Registry(Registry::new(&doc.name).map_err(|e| {
            Error::Config(format!(
                "{at}: name {:?} is not a registry name ({e}); write a host[:port] such as docker.io, or *",
                doc.name
            ))
        })?)
    };
    let endpoints = doc
        .endpoints
        .into_iter()
        .map(|e| Endpoint::new(e.url).with_override_path(e.override_path))
        .collect::<Vec<_>>();
    for endpoint in &endpoints {
        endpoint.validate().map_err(|e| located(at, e))?;
    }
    Ok(ImportedMirror {
        scope,
        endpoints,
        origin: None,
        skip_fallback: doc.skip_fallback,
        source: at.to_owned(),
    })
}

/// The document's credentials; `None` for an identity token (unsupported).
fn credentials(doc: &AuthDoc, at: &str) -> Result<Option<Credentials>> {
    name_required(&doc.name, at)?;
    let given = [
        !doc.username.is_empty(),
        !doc.auth.is_empty(),
        !doc.identity_token.is_empty(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(Error::Config(format!(
            "{at}: set exactly one of username/password, auth or identityToken"
        )));
    }
    if !doc.identity_token.is_empty() {
        return Ok(None);
    }
    if !doc.username.is_empty() {
        return Ok(Some(Credentials {
            username: doc.username.clone(),
            password: doc.password.clone(),
        }));
    }
    let invalid = || {
        Error::Config(format!(
            "{at}: auth must be base64 of user:password (as in a docker config.json)"
        ))
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(doc.auth.trim())
        .map_err(|_| invalid())?;
    let text = String::from_utf8(decoded).map_err(|_| invalid())?;
    let (username, password) = text.split_once(':').ok_or_else(invalid)?;
    Ok(Some(Credentials {
        username: username.to_owned(),
        password: password.to_owned(),
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const FULL: &str = r#"
version: v1alpha1
machine:
  type: worker
---
apiVersion: v1alpha1
kind: RegistryMirrorConfig
name: docker.io
endpoints:
  - url: http://10.0.0.5:5000
  - url: https://harbor.example/v2/docker.io/
    overridePath: true
---
apiVersion: v1alpha1
kind: RegistryMirrorConfig
name: "*"
endpoints:
  - url: https://catch-all.example
skipFallback: true
---
apiVersion: v1alpha1
kind: RegistryAuthConfig
name: harbor.example
username: robot
password: s3cret
---
apiVersion: v1alpha1
kind: RegistryAuthConfig
name: 10.0.0.5:5000
auth: dXNlcjpwYTpzcw==
---
apiVersion: v1alpha1
kind: RegistryTLSConfig
name: harbor.example
insecureSkipVerify: true
ca: |
  -----BEGIN CERTIFICATE-----
  -----END CERTIFICATE-----
---
apiVersion: v1alpha1
kind: HostnameConfig
hostname: node-1
"#;

    #[test]
    fn a_machine_config_yields_chains_credentials_and_tls_warnings() {
        let import = parse(FULL, "node.yaml").unwrap();
        assert_eq!(import.mirrors.len(), 2);
        let hub = &import.mirrors[0];
        assert_eq!(
            hub.scope,
            MirrorScope::Registry(Registry::new("docker.io").unwrap())
        );
        assert_eq!(
            hub.endpoints
                .iter()
                .map(|e| (e.url.as_str(), e.override_path, e.resolve))
                .collect::<Vec<_>>(),
            [
                ("http://10.0.0.5:5000", false, true),
                ("https://harbor.example/v2/docker.io/", true, true)
            ]
        );
        assert!(!hub.skip_fallback);
        assert_eq!(import.mirrors[1].scope, MirrorScope::Wildcard);
        assert!(import.mirrors[1].skip_fallback);
        assert_eq!(import.credentials.len(), 2);
        assert_eq!(import.credentials[0].credentials.username, "robot");
        let decoded = &import.credentials[1].credentials;
        assert_eq!(
            (decoded.username.as_str(), decoded.password.as_str()),
            ("user", "pa:ss")
        );
        assert_eq!(import.warnings.len(), 1);
        assert!(
            import.warnings[0].contains("ca for harbor.example not applied"),
            "{:?}",
            import.warnings
        );
        assert_eq!(import.tls.len(), 1);
        assert_eq!(import.tls[0].host, "harbor.example");
        assert!(import.tls[0].tls.insecure_skip_verify);
        assert!(
            import.warnings[0].contains("node.yaml: document 6"),
            "{:?}",
            import.warnings
        );
    }

    #[test]
    fn errors_name_the_document_and_the_fix() {
        let cases = [
            (
                "apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: x.io\nendpoint: []\n",
                "document 1 (RegistryMirrorConfig): unknown field `endpoint`",
            ),
            (
                "apiVersion: v1alpha2\nkind: RegistryMirrorConfig\nname: x.io\n",
                "apiVersion must be v1alpha1",
            ),
            (
                "---\napiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: x.io\nendpoints:\n  - url: mirror.local\n",
                "document 1 (RegistryMirrorConfig): endpoint url \"mirror.local\" has no scheme",
            ),
            (
                "apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: 'bad name'\n",
                "is not a registry name",
            ),
            (
                "apiVersion: v1alpha1\nkind: RegistryAuthConfig\nname: x.io\nusername: u\nauth: dTpw\n",
                "set exactly one of",
            ),
            (
                "apiVersion: v1alpha1\nkind: RegistryAuthConfig\nname: x.io\nauth: '%%%'\n",
                "auth must be base64",
            ),
            ("version: v1alpha1\nmachine: {}\n", "no RegistryMirrorConfig"),
            (
                "machine:\n  registries:\n    mirrors:\n      docker.io:\n        endpoint: [x]\n",
                "unknown field `endpoint`",
            ),
            ("kind: [unclosed\n", "node.yaml: document 1"),
        ];
        for (yaml, expected) in cases {
            let err = parse(yaml, "node.yaml").unwrap_err().to_string();
            assert!(err.contains(expected), "{yaml:?}: {err}");
            assert!(err.contains("node.yaml"), "{err}");
        }
    }

    #[test]
    fn the_pre_1_12_machine_registries_patch_reads_like_the_documents() {
        let patch = "machine:\n  registries:\n    mirrors:\n      docker.io:\n        endpoints:\n          - http://10.0.0.5:5000/v2/docker.io\n        overridePath: true\n      \"*\":\n        endpoints: [http://10.0.0.5:5000]\n        skipFallback: true\n    config:\n      10.0.0.5:5000:\n        tls:\n          insecureSkipVerify: true\n";
        let import = parse(patch, "patch.yaml").unwrap();
        assert_eq!(import.mirrors.len(), 2);
        // BTreeMap order: "*" sorts before "docker.io".
        assert_eq!(import.mirrors[0].scope, MirrorScope::Wildcard);
        assert!(import.mirrors[0].skip_fallback);
        let hub = &import.mirrors[1];
        assert_eq!(
            hub.scope,
            MirrorScope::Registry(Registry::new("docker.io").unwrap())
        );
        assert_eq!(hub.endpoints[0].url, "http://10.0.0.5:5000/v2/docker.io");
        assert!(hub.endpoints[0].override_path);
        assert!(import.warnings[0].contains("machine.registries.config"));
    }

    #[test]
    fn identity_tokens_are_reported_not_used() {
        let yaml = "apiVersion: v1alpha1\nkind: RegistryAuthConfig\nname: x.io\nidentityToken: t\n";
        let import = parse(yaml, "f").unwrap();
        assert!(import.credentials.is_empty());
        assert!(import.warnings[0].contains("identityToken"));
    }
}
