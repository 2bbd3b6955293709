//! Every TOML and YAML block of the pages says what it is, after the
//! language: ` ```toml oci-cache`, ` ```yaml registry-config`,
//! ` ```yaml talos`, ` ```toml containerd-hosts` or ` ```toml other`
//! (GitHub highlights by the first word only). Configuration blocks are
//! handed to `oci-cache check-config` as the file, `--registry-config`,
//! `--talos-config` or `--containerd-hosts` tree they are and must be
//! accepted (a `hosts.toml` block starts with a comment naming its path,
//! `# certs.d/REGISTRY/hosts.toml`); `other` blocks (containerd `hosts.toml`, Kubernetes objects,
//! Cargo manifests) must at least parse as TOML or YAML.
//!
//! Files a block names (certificates, keys, htpasswd and password files)
//! are replaced by real ones made for the test, since `check-config` reads
//! them; variables a block names in `password_env` are set.
//!
//! `oci-cache.example.toml` and its commented blocks are checked by
//! `cli::every_commented_block_of_the_example_passes_check_config`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{pages, report, root, split_fences, Fence};
use crate::cli::{oci_cache_env, text};

/// What a block is, from its second info word.
const KINDS: &[&str] = &[
    "oci-cache",
    "registry-config",
    "talos",
    "containerd-hosts",
    "other",
];

/// Files for the paths a block names, made once per test run.
struct Fixtures {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    htpasswd: PathBuf,
    secret: PathBuf,
}

impl Fixtures {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=docs example", "-keyout"])
            .args([&key, Path::new("-out"), &cert])
            .output()
            .expect("openssl is needed; run scripts/install-test-deps");
        assert!(out.status.success(), "openssl: {}", text(&out.stderr));
        let htpasswd = dir.path().join("htpasswd");
        let out = Command::new("htpasswd")
            .args(["-Bbn", "node", "docs-example"])
            .output()
            .expect("htpasswd (apache2-utils) is needed; run scripts/install-test-deps");
        assert!(out.status.success(), "htpasswd: {}", text(&out.stderr));
        std::fs::write(&htpasswd, &out.stdout).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "docs-example\n").unwrap();
        Fixtures {
            _dir: dir,
            cert,
            key,
            htpasswd,
            secret,
        }
    }

    /// The fixture for an absolute path written after `key`, if the
    /// configuration reads that file.
    fn for_key(&self, key: &str) -> Option<&Path> {
        match key {
            "cert" | "certificate" | "client_cert" | "client_ca" | "ca_file" | "ca"
            | "clientcas" => Some(&self.cert),
            "key" | "client_key" => Some(&self.key),
            "htpasswd" => Some(&self.htpasswd),
            "password_file" => Some(&self.secret),
            _ => None,
        }
    }

    /// `body` with every absolute path the configuration would read replaced
    /// by its fixture (`key = "/etc/…"` in TOML, `key: /etc/…` in YAML).
    fn substitute(&self, body: &str) -> String {
        let mut out = String::with_capacity(body.len());
        let mut rest = body;
        loop {
            let next = [" = \"/", ": /", ": \"/"]
                .iter()
                .filter_map(|sep| rest.find(sep).map(|at| (at, *sep)))
                .min();
            let Some((at, sep)) = next else { break };
            let before = &rest[..at];
            let key_start = before
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |i| i + 1);
            let key = &before[key_start..];
            let path_start = at + sep.len() - 1;
            let path_end = rest[path_start..]
                .find(|c: char| c == '"' || c.is_whitespace())
                .map_or(rest.len(), |i| path_start + i);
            out.push_str(&rest[..path_start]);
            match self.for_key(key) {
                Some(fixture) => out.push_str(fixture.to_str().unwrap()),
                None => out.push_str(&rest[path_start..path_end]),
            }
            rest = &rest[path_end..];
        }
        out.push_str(rest);
        out
    }
}

/// `password_env = "NAME"` of a block, so the variable can be set.
fn password_envs(body: &str) -> Vec<(String, String)> {
    body.split("password_env = \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|name| (name.to_owned(), "docs-example".to_owned()))
        .collect()
}

/// Runs `check-config` on a block of `kind`; `Err` with what went wrong.
fn check(kind: &str, fence: &Fence, fixtures: &Fixtures) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let body = fixtures.substitute(&fence.body);
    let path = match kind {
        "oci-cache" => dir.path().join("block.toml"),
        // The tree --containerd-hosts reads: certs.d/REGISTRY/hosts.toml.
        "containerd-hosts" => {
            let registry = body
                .lines()
                .next()
                .and_then(|first| first.strip_suffix("/hosts.toml"))
                .and_then(|first| first.rsplit('/').next())
                .ok_or_else(|| {
                    "a hosts.toml block must start with `# certs.d/REGISTRY/hosts.toml`".to_owned()
                })?;
            std::fs::create_dir_all(dir.path().join(registry)).unwrap();
            std::fs::write(dir.path().join(registry).join("hosts.toml"), &body).unwrap();
            dir.path().to_owned()
        }
        _ => dir.path().join("block.yaml"),
    };
    if kind != "containerd-hosts" {
        std::fs::write(&path, &body).unwrap();
    }
    let path = path.to_str().unwrap();
    let args: Vec<&str> = match kind {
        "oci-cache" => vec!["check-config", path],
        "registry-config" => vec!["check-config", "--registry-config", path],
        "talos" => vec!["check-config", "--talos-config", path],
        "containerd-hosts" => vec!["check-config", "--containerd-hosts", path],
        _ => unreachable!("only configuration kinds are checked"),
    };
    let envs = password_envs(&body);
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = oci_cache_env(&args, &envs);
    if out.status.code() == Some(0) {
        Ok(())
    } else {
        Err(format!(
            "`oci-cache {}` refused it (exit {:?}): {}",
            args.join(" ").replace(path, "BLOCK"),
            out.status.code(),
            text(&out.stderr).trim()
        ))
    }
}

/// An `other` block must still be valid TOML or YAML.
fn parses(language: &str, body: &str) -> Result<(), String> {
    match language {
        "toml" => toml::from_str::<toml::Value>(body)
            .map(drop)
            .map_err(|e| e.to_string()),
        _ => {
            for document in serde_norway::Deserializer::from_str(body) {
                <serde_norway::Value as serde::Deserialize>::deserialize(document)
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    }
}

#[test]
fn every_configuration_example_is_accepted() {
    let fixtures = Fixtures::new();
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(root().join(&page)).unwrap();
        let (fences, _) = split_fences(&text);
        for fence in fences {
            let Some(language) = fence.info.first().map(String::as_str) else {
                continue;
            };
            if !matches!(language, "toml" | "yaml" | "yml") {
                continue;
            }
            let at = format!("{}:{}", page.display(), fence.line);
            let kind = fence.info.get(1).map(String::as_str).unwrap_or("");
            if !KINDS.contains(&kind) {
                problems.push(format!(
                    "{at}: a ```{language} block must say what it is: ```{language} KIND \
                     with KIND one of {KINDS:?} (`other` is only syntax-checked)"
                ));
                continue;
            }
            let result = if kind == "other" {
                parses(language, &fence.body).map_err(|e| format!("not valid {language}: {e}"))
            } else {
                checked += 1;
                check(kind, &fence, &fixtures)
            };
            if let Err(e) = result {
                problems.push(format!("{at}: ```{language} {kind} block: {e}"));
            }
        }
    }
    assert!(checked >= 10, "only {checked} configuration blocks found");
    report("documentation examples that do not work", &problems);
}

#[test]
fn substitution_replaces_only_files_the_configuration_reads() {
    let fixtures = Fixtures::new();
    let body = "dir = \"/var/lib/oci-cache\"\ncert = \"/etc/tls.crt\"\n\
                credentials = { username = \"r\", password_file = \"/run/secrets/r\" }\n";
    let out = fixtures.substitute(body);
    assert!(out.contains("dir = \"/var/lib/oci-cache\""), "{out}");
    assert!(out.contains(fixtures.cert.to_str().unwrap()), "{out}");
    assert!(out.contains(fixtures.secret.to_str().unwrap()), "{out}");
    assert!(
        !out.contains("/etc/tls.crt") && !out.contains("/run/secrets"),
        "{out}"
    );
}
