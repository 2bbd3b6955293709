//! Issue 22: a setting that asks for security never starts an open mirror.

use super::{oci_cache_env, text};

/// `check-config` with `args` and `env`: (exit code, stdout, stderr).
fn check(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut all = vec!["check-config", "--storage-dir", "/tmp/oci-cache-unused"];
    all.extend_from_slice(args);
    let out = oci_cache_env(&all, env);
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn htpasswd_protects_every_upstream_unless_made_public() {
    let (code, out, err) = check(&["--htpasswd", "/etc/oci-cache/htpasswd"], &[]);
    assert_eq!(code, Some(0), "{err}");
    for upstream in ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"] {
        assert!(
            out.contains(&format!("upstream {upstream}: access authenticated")),
            "{upstream}: {out}"
        );
    }

    let (code, out, err) = check(
        &[
            "--htpasswd",
            "/h",
            "--local-prefix",
            "local",
            "--public-upstream",
            "docker.io",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("upstream docker.io: access public"), "{out}");
    assert!(
        out.contains("upstream ghcr.io: access authenticated"),
        "{out}"
    );
    assert!(
        out.contains("hosted local/…: pull access authenticated"),
        "{out}"
    );

    let (code, out, err) = check(
        &["--htpasswd", "/h", "--local-prefix", "local"],
        &[("OCI_CACHE_PUBLIC_UPSTREAMS", "ghcr.io,local")],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("upstream ghcr.io: access public"), "{out}");
    assert!(
        out.contains("upstream docker.io: access authenticated"),
        "{out}"
    );
    assert!(out.contains("hosted local/…: pull access public"), "{out}");
}

#[test]
fn a_public_upstream_that_is_not_served_or_without_htpasswd_is_refused() {
    let (code, _, err) = check(&["--htpasswd", "/h", "--public-upstream", "dockerio"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("dockerio")
            && err.contains("neither a configured upstream nor a local prefix"),
        "{err}"
    );
    let (code, _, err) = check(&["--public-upstream", "docker.io"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--htpasswd"), "{err}");
}

/// The Docker daemon sends no credentials to `registry-mirrors`: the note
/// says so on stderr even without `--username`.
#[test]
fn client_config_docker_says_docker_io_must_be_public() {
    let out = oci_cache_env(
        &[
            "client-config",
            "docker",
            "--mirror",
            "http://10.0.0.5:5000",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("docker.io must be public") && err.contains("--public-upstream docker.io"),
        "{err}"
    );
    assert!(text(&out.stdout).contains("registry-mirrors"));
}

/// registry:2 settings that cannot be honoured stop the start with exit 2
/// and a message naming them, from a config.yml or the environment; so does
/// an empty `[tls]` table in our own file.
#[test]
fn registry_settings_that_cannot_be_honoured_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let proxy = "proxy:\n  remoteurl: https://ghcr.io\n";
    for (file, expected) in [
        (
            yaml(
                "token.yml",
                &format!("{proxy}auth:\n  token:\n    realm: https://a/t\n"),
            ),
            "auth.token is set",
        ),
        (
            yaml("scalar.yml", &format!("{proxy}auth: htpasswd\n")),
            "auth is written as a scalar",
        ),
        (
            yaml(
                "nopath.yml",
                &format!("{proxy}auth:\n  htpasswd:\n    realm: r\n"),
            ),
            "auth.htpasswd has no path",
        ),
        (
            yaml("tls.yml", &format!("{proxy}http:\n  tls: {{}}\n")),
            "http.tls has no certificate",
        ),
        (
            yaml(
                "acme.yml",
                &format!("{proxy}http:\n  tls:\n    letsencrypt:\n      cachefile: /c\n"),
            ),
            "http.tls.letsencrypt has no hosts",
        ),
    ] {
        let (code, _, err) = check(&["--registry-config", &file], &[]);
        assert_eq!(code, Some(2), "{file}: {err}");
        assert!(err.contains(expected), "{file}: {err}");
    }
    for (vars, expected) in [
        (&[("REGISTRY_AUTH", "token")][..], "auth.token is set"),
        (&[("REGISTRY_AUTH", "silly")][..], "auth.silly is set"),
        (
            &[("REGISTRY_AUTH", "htpasswd")][..],
            "REGISTRY_AUTH=htpasswd has no path",
        ),
        (
            &[("REGISTRY_AUTH_TOKEN_REALM", "https://a/t")][..],
            "REGISTRY_AUTH_TOKEN_REALM, which oci-cache does not implement",
        ),
        (
            &[("REGISTRY_HTTP_TLS_LETSENCRYPT_EMAIL", "a@b.c")][..],
            "REGISTRY_HTTP_TLS_LETSENCRYPT_EMAIL",
        ),
    ] {
        let (code, _, err) = check(&[], vars);
        assert_eq!(code, Some(2), "{vars:?}: {err}");
        assert!(err.contains(expected), "{vars:?}: {err}");
    }
    let toml = dir.path().join("empty-tls.toml");
    std::fs::write(&toml, "[tls]\n").unwrap();
    let (code, _, err) = check(&["--config", &toml.display().to_string()], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("[tls] is empty"), "{err}");
}
