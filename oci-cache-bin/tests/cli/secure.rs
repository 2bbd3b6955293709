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
