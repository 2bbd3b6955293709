//! The binary's command line, run as a user would: exit codes, stdout, stderr.

use std::process::{Command, Output};

use serde_json::Value;

fn oci_cache(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oci-cache"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn resolve_prints_canonical_and_familiar_forms() {
    let out = oci_cache(&["resolve", "alpine:3.20"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "canonical: docker.io/library/alpine:3.20\nfamiliar:  alpine:3.20\n\
         upstream:  docker.io\nendpoints (tried in order):\n\
         \x20 1. https://registry-1.docker.io/v2/library/alpine/manifests/3.20\n"
    );
}

#[test]
fn resolve_json_has_every_field() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let input = format!("index.docker.io/nginx:1.27@{digest}");
    let out = oci_cache(&["resolve", "--json", &input]);
    assert_eq!(out.status.code(), Some(0));
    let json = stdout_json(&out);
    assert_eq!(json["input"], input.as_str());
    assert_eq!(
        json["canonical"],
        format!("docker.io/library/nginx:1.27@{digest}").as_str()
    );
    assert_eq!(json["familiar"], format!("nginx:1.27@{digest}").as_str());
    assert_eq!(json["registry"], "docker.io");
    assert_eq!(json["repository"], "library/nginx");
    assert_eq!(json["tag"], "1.27");
    assert_eq!(json["digest"], digest.as_str());

    let plain = stdout_json(&oci_cache(&[
        "resolve",
        "--json",
        "localhost:5000/team/app",
    ]));
    assert_eq!(plain["registry"], "localhost:5000");
    assert_eq!(plain["tag"], Value::Null);
    assert_eq!(plain["digest"], Value::Null);
}

#[test]
fn resolve_rejects_bad_references_with_exit_2() {
    let out = oci_cache(&["resolve", "--json", "foo/Bar"]);
    assert_eq!(out.status.code(), Some(2));
    let json = stdout_json(&out);
    assert_eq!(json["error"]["kind"], "uppercase");
    assert_eq!(json["error"]["offset"], 4);
    assert!(json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("must be lowercase"));

    let out = oci_cache(&["resolve", "docker.io/library/alpine:-bad"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("error: invalid reference"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let hex = "a".repeat(64);
    let json = stdout_json(&oci_cache(&["resolve", "--json", &hex]));
    assert_eq!(json["error"]["kind"], "identifier_not_name");
}

#[test]
fn check_config_reports_a_bad_file_and_accepts_the_example() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listn = \"0.0.0.0:5000\"\n").unwrap();
    let out = oci_cache(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("unknown field `listn`"), "{stderr}");

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../oci-cache.example.toml");
    let out = oci_cache(&["check-config", example]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("upstream docker.io: https://registry-1.docker.io"),
        "{stdout}"
    );
    assert!(stdout.contains("default upstream: docker.io"), "{stdout}");
}

#[test]
fn serve_refuses_an_unconfigured_default_upstream() {
    let out = oci_cache(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "a.test=http://127.0.0.1:9",
        "--default-upstream",
        "b.test",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("b.test"), "{stderr}");
}
