//! `client-config` argument handling, printing and writing.

#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn mirror_urls_keep_scheme_and_authority_only() {
    let m = MirrorUrl::parse("http://10.0.0.5:5000/").unwrap();
    assert!(!m.is_https());
    assert_eq!(m.authority(), "10.0.0.5:5000");
    assert_eq!(m.base(), "http://10.0.0.5:5000");
    assert_eq!(
        MirrorUrl::parse("https://mirror.example").unwrap().base(),
        "https://mirror.example"
    );
    for (bad, why) in [
        ("10.0.0.5:5000", "scheme"),
        ("http://", "host is missing"),
        ("http://m:5000/v2/docker.io", "no path"),
        ("http://u:p@m:5000", "no path, query or credentials"),
    ] {
        let err = MirrorUrl::parse(bad).unwrap_err();
        assert!(
            err.contains(why) && err.contains("http://10.0.0.5:5000"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn upstreams_are_chosen_by_name_or_alias_and_must_be_configured() {
    let mirrors = MirrorConfig::common();
    let all = select(&mirrors, &[]).unwrap();
    assert_eq!(all.len(), 5);
    let some = select(&mirrors, &["ghcr.io".into(), "index.docker.io".into()]).unwrap();
    let names: Vec<&str> = some.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["docker.io", "ghcr.io"]);
    let err = select(&mirrors, &["evil.example".into()]).unwrap_err();
    assert!(
        err.contains("evil.example") && err.contains("ghcr.io"),
        "{err}"
    );
}

#[test]
fn several_files_are_printed_with_their_paths_or_written() {
    let files = vec![
        GeneratedFile {
            path: "a/hosts.toml".into(),
            contents: "x = 1\n".into(),
        },
        GeneratedFile {
            path: "b/hosts.toml".into(),
            contents: "y = 2\n".into(),
        },
    ];
    let mut out = Vec::new();
    emit(&files, None, false, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "# ==> a/hosts.toml <==\nx = 1\n\n# ==> b/hosts.toml <==\ny = 2\n\n"
    );
    let mut out = Vec::new();
    emit(&files[..1], None, false, &mut out).unwrap();
    assert_eq!(out, b"x = 1\n");
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    emit(&files, Some(dir.path()), false, &mut out).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("b/hosts.toml")).unwrap(),
        "y = 2\n"
    );
}

/// `oci-cache client-config ARGS…` parsed as the binary parses it.
fn parse(args: &[&str]) -> ClientConfigArgs {
    use clap::Parser as _;
    let argv = ["oci-cache", "client-config"].iter().chain(args);
    match crate::cli::Cli::try_parse_from(argv).unwrap().command {
        crate::cli::Command::ClientConfig(args) => args,
        other => panic!("parsed as {other:?}"),
    }
}

#[test]
fn one_upstream_flag_defines_with_a_url_and_selects_without() {
    let args = parse(&[
        "k3s",
        "--mirror",
        "http://m:5000",
        "--default-upstream",
        "b.test",
        "--upstream",
        "b.test=http://127.0.0.1:9",
        "--upstream",
        "c.test=http://127.0.0.1:10",
        "--upstream",
        "c.test",
    ]);
    let text = String::from_utf8({
        let mut out = Vec::new();
        emit(&generate(&args).unwrap(), None, false, &mut out).unwrap();
        out
    })
    .unwrap();
    assert!(text.contains("\"c.test\":"), "{text}");
    assert!(!text.contains("b.test"), "{text}");
}

#[test]
fn the_password_comes_from_a_file_or_variable_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "s3cret\n").unwrap();
    let file = file.display().to_string();
    let base = ["k3s", "--mirror", "http://m:5000"];
    let with = |extra: &[&str]| {
        let all: Vec<&str> = base.iter().chain(extra).copied().collect();
        credentials(&parse(&all))
    };
    let auth = with(&["--username", "node", "--password-file", &file])
        .unwrap()
        .unwrap();
    assert_eq!(
        (auth.username.as_str(), auth.password.as_str()),
        ("node", "s3cret")
    );
    assert_eq!(with(&[]).unwrap(), None);
    let err = with(&["--username", "node"]).unwrap_err();
    assert!(
        err.contains("--password-file FILE or --password-env VAR"),
        "{err}"
    );
    let err = with(&[
        "--username",
        "node",
        "--password-file",
        &file,
        "--password-env",
        "HOME",
    ])
    .unwrap_err();
    assert!(err.contains("exactly one"), "{err}");
    let err = with(&["--password-file", &file]).unwrap_err();
    assert!(err.contains("need --username"), "{err}");
    let err = with(&["--username", "a:b", "--password-file", &file]).unwrap_err();
    assert!(err.contains("no ':'"), "{err}");
    let err = with(&[
        "--username",
        "node",
        "--password-env",
        "OCI_CACHE_TEST_UNSET_9F",
    ])
    .unwrap_err();
    assert!(err.contains("OCI_CACHE_TEST_UNSET_9F"), "{err}");
}

#[test]
fn files_with_credentials_are_written_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let files = vec![GeneratedFile {
        path: "registries.yaml".into(),
        contents: "configs: {}\n".into(),
    }];
    let path = dir.path().join("registries.yaml");
    std::fs::write(&path, "old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    emit(&files, Some(dir.path()), true, &mut Vec::new()).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "configs: {}\n");
}

#[test]
fn merge_refuses_a_daemon_json_that_is_not_an_object() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("daemon.json");
    for (text, why) in [
        ("[1, 2]", "not a JSON object"),
        ("{\"debug\": tru", "not valid JSON"),
    ] {
        std::fs::write(&file, text).unwrap();
        let err = read_daemon_json(&file).unwrap_err();
        assert!(err.contains(why) && err.contains("daemon.json"), "{err}");
    }
    std::fs::write(&file, "\n").unwrap();
    assert!(read_daemon_json(&file).unwrap().is_empty());
    let path = file.display().to_string();
    let args = parse(&["docker", "--mirror", "http://m:5000", "--merge", &path]);
    std::fs::write(&file, "{\"debug\": true}").unwrap();
    let merged: serde_json::Value =
        serde_json::from_str(&generate(&args).unwrap()[0].contents).unwrap();
    assert_eq!(merged["debug"], true);
    assert_eq!(merged["registry-mirrors"][0], "http://m:5000");
}
