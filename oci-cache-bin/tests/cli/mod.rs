//! The binary's command line, run as a user would: exit codes, stdout, stderr.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

mod fleet;
mod secure;

fn oci_cache(args: &[&str]) -> Output {
    oci_cache_env(args, &[])
}

/// Runs the binary with only `env` of the `OCI_CACHE_*` variables set, so a
/// developer's own settings cannot change the outcome.
pub(crate) fn oci_cache_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_oci-cache"));
    command.args(args).env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OCI_CACHE_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied()).output().unwrap()
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../oci-cache.example.toml");

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
fn a_key_in_the_wrong_table_says_where_it_belongs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("oci-cache.toml");
    std::fs::write(&file, "max_size = \"50GiB\"\n").unwrap();
    for command in ["check-config", "serve", "gc"] {
        let out = oci_cache(&[command, "--config", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains("`max_size` belongs in the [cache] table; move it there"),
            "{command}: {stderr}"
        );
    }
}

/// `serve` and `gc` read the cap from the same file: gc needs no flag.
#[test]
fn gc_reads_the_cap_from_the_config_file_serve_reads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("oci-cache.toml");
    std::fs::write(
        &file,
        format!(
            "[storage]\nkind = \"filesystem\"\ndir = \"{}\"\n[cache]\nmax_size = \"10MiB\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = oci_cache(&["gc", "--config", file.to_str().unwrap()]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("cap 10.00 MiB"), "{stdout}");
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

/// A line of the example file that is TOML commented out (a table header or
/// `key = value`), as opposed to prose.
fn commented_toml(line: &str) -> Option<&str> {
    let code = line.strip_prefix("# ")?;
    let is_key = code.split_once(" = ").is_some_and(|(key, _)| {
        !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    });
    (code.starts_with('[') || is_key).then_some(code)
}

/// Regression (issue 10): the commented S3 block named fields that do not
/// exist. Every commented block of the example, uncommented on its own, must
/// pass `check-config` and show up in its output.
#[test]
fn every_commented_block_of_the_example_passes_check_config() {
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    let lines: Vec<&str> = example.lines().collect();
    // Runs of consecutive commented TOML lines, as (first, end) line indexes.
    let mut blocks = Vec::new();
    let mut start = None;
    for (i, line) in lines.iter().enumerate() {
        match (commented_toml(line), start) {
            (Some(_), None) => start = Some(i),
            (None, Some(first)) => {
                blocks.push((first, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(first) = start {
        blocks.push((first, lines.len()));
    }
    let firsts: Vec<&str> = blocks.iter().map(|&(first, _)| lines[first]).collect();
    assert!(
        blocks.len() >= 5,
        "too few commented blocks found: {firsts:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut kinds = Vec::new();
    for &(first, end) in &blocks {
        let mut edited: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
        for line in &mut edited[first..end] {
            *line = commented_toml(line).unwrap().to_owned();
        }
        let path = dir.path().join(format!("block-{first}.toml"));
        std::fs::write(&path, edited.join("\n")).unwrap();
        // The credentials block reads its password from this variable.
        let out = oci_cache_env(
            &["check-config", path.to_str().unwrap()],
            &[("DOCKERHUB_TOKEN", "dckr_pat_example")],
        );
        let stdout = text(&out.stdout);
        assert!(!stdout.contains("dckr_pat_example"), "{stdout}");
        assert_eq!(
            out.status.code(),
            Some(0),
            "block at line {}: {}\n{stdout}",
            first + 1,
            text(&out.stderr)
        );
        let storage = stdout.lines().find(|l| l.starts_with("storage: ")).unwrap();
        kinds.push(storage.to_owned());
        if lines[first].starts_with("# metrics_listen = ") {
            assert!(stdout.contains("metrics listen: "), "{stdout}");
        }
        if lines[first] == "# [cache]" {
            assert!(stdout.contains("fill_window = 262144\n"), "{stdout}");
        }
        if lines[first] == "# [upstream_client]" {
            assert!(stdout.contains("proxy = \"direct\"\n"), "{stdout}");
        }
        if lines[first].contains("[[upstream]]") {
            let name = lines[first + 1]
                .trim_start_matches("# name = ")
                .trim_matches('"');
            assert!(stdout.contains(&format!("upstream {name}: ")), "{stdout}");
        }
    }
    for expected in [
        "storage: filesystem at /var/lib/oci-cache",
        "storage: memory",
        "storage: s3 bucket oci-cache at http://127.0.0.1:9000",
    ] {
        assert!(
            kinds.iter().any(|k| k.starts_with(expected)),
            "{expected:?} not among {kinds:?}"
        );
    }
}

#[test]
fn check_config_runs_serves_validation() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = dir.path().join("s3.toml");
    std::fs::write(
        &s3,
        "[storage]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let s3 = s3.to_str().unwrap();
    let check = oci_cache(&["check-config", s3]);
    let serve = oci_cache(&["serve", "--listen", "127.0.0.1:0", "--config", s3]);
    for out in [&check, &serve] {
        assert_eq!(out.status.code(), Some(2));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("[storage]: kind = \"s3\" needs a bucket; add bucket = \"NAME\""),
            "{stderr}"
        );
    }
    assert_eq!(check.stderr, serve.stderr);

    // A CA file that is not there fails the check, as it would fail start-up.
    let tls = dir.path().join("tls.toml");
    std::fs::write(
        &tls,
        "default_upstream = \"a.test\"\n[[upstream]]\nname = \"a.test\"\nurl = \"https://a.test\"\ntls = { ca_file = \"/nonexistent/ca.pem\" }\n",
    )
    .unwrap();
    let out = oci_cache(&["check-config", tls.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("tls.ca_file /nonexistent/ca.pem"));
}

#[test]
fn check_config_shows_the_effective_settings_from_env_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:7000\"\ntag_ttl = \"1m\"\n").unwrap();
    let file = file.to_str().unwrap();
    let env = [
        ("OCI_CACHE_CONFIG", file),
        ("OCI_CACHE_LISTEN", "127.0.0.1:7001"),
        ("OCI_CACHE_TAG_TTL", "90s"),
        ("OCI_CACHE_OFFLINE", "1"),
        ("OCI_CACHE_STORAGE_DIR", "/srv/cache"),
        ("OCI_CACHE_DEFAULT_UPSTREAM", "ghcr.io"),
    ];
    let out = oci_cache_env(&["check-config"], &env);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        stdout.lines().take(6).collect::<Vec<_>>(),
        [
            format!("{file}: ok").as_str(),
            "listen: 127.0.0.1:7001",
            "storage: filesystem at /srv/cache",
            "tag ttl: 1m30s",
            "offline: true",
            "default upstream: ghcr.io",
        ]
    );
    // Flags win over the variables; without either the file decides.
    let out = oci_cache_env(&["check-config", "--listen", "127.0.0.1:7002", file], &[]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("listen: 127.0.0.1:7002\n"), "{stdout}");
    assert!(stdout.contains("tag ttl: 1m\n"), "{stdout}");
    assert!(stdout.contains("offline: false\n"), "{stdout}");
}

/// The tunables are printed as the TOML that sets them, which reads back
/// to the same settings (not as Rust `Debug`), a proxy password as `***`.
#[test]
fn check_config_prints_settings_in_the_config_file_syntax() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("oci-cache.toml");
    std::fs::write(
        &file,
        "[cache]\nmax_size = \"10MiB\"\npin = [\"docker.io/library/alpine:*\"]\n\
         [upstream_client]\nread_timeout = \"90s\"\n\
         proxy = { explicit = { url = \"http://user:PROXY-PASSWORD@proxy.test:3128\", no_proxy = \"10.0.0.0/8\" } }\n",
    )
    .unwrap();
    let out = oci_cache(&["check-config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("CacheOptions {"), "{stdout}");
    assert!(!stdout.contains("PROXY-PASSWORD"), "{stdout}");
    let (_, toml_part) = stdout
        .split_once("# in effect (config file syntax)\n")
        .unwrap_or_else(|| panic!("{stdout}"));
    for line in [
        "[cache]\n",
        "max_size = 10485760\n",
        "pin = [\"docker.io/library/alpine:*\"]\n",
        "[cache.fill_retry]\n",
        "[upstream_client]\n",
        "read_timeout = \"1m30s\"\n",
        "url = \"http://***@proxy.test:3128\"\n",
    ] {
        assert!(toml_part.contains(line), "{line:?} not in {toml_part}");
    }
    // Read back (the redacted proxy aside), it is the same configuration.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, toml_part.replace("***@", "")).unwrap();
    let out = oci_cache(&["check-config", again.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let reread = text(&out.stdout);
    let (_, reread_toml) = reread
        .split_once("# in effect (config file syntax)\n")
        .unwrap();
    assert_eq!(reread_toml, toml_part.replace("***@", ""));
}

#[test]
fn check_config_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret.toml");
    std::fs::write(
        &file,
        r#"
default_upstream = "a.test"
[storage]
kind = "s3"
bucket = "b"
endpoint = "http://127.0.0.1:9"
access_key_id = "AKIAKEYID"
secret_access_key = "S3-SECRET"
[[upstream]]
name = "a.test"
url = "https://a.test"
credentials = { username = "robot", password = "UPSTREAM-PASSWORD" }
mirrors = [{ url = "https://m.test", credentials = { username = "m", password = "MIRROR-PASSWORD" } }]
"#,
    )
    .unwrap();
    let out = oci_cache(&["check-config", file.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for secret in [
        "AKIAKEYID",
        "S3-SECRET",
        "UPSTREAM-PASSWORD",
        "MIRROR-PASSWORD",
    ] {
        assert!(!stdout.contains(secret), "{secret} in {stdout}");
    }
    assert!(
        stdout.contains(
            "upstream a.test: https://m.test [user m, password <redacted>] -> https://a.test [user robot, password <redacted>]"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("secret_access_key <redacted>"), "{stdout}");
}

/// Regression (issue 10): `OCI_CACHE_OFFLINE=1` was rejected.
#[test]
fn boolean_variables_take_the_usual_spellings() {
    for (value, offline) in [
        ("1", true),
        ("true", true),
        ("yes", true),
        ("on", true),
        ("0", false),
        ("false", false),
        ("no", false),
        ("off", false),
    ] {
        let out = oci_cache_env(
            &["check-config"],
            &[("OCI_CACHE_OFFLINE", value), ("OCI_CACHE_LOG_JSON", value)],
        );
        assert_eq!(out.status.code(), Some(0), "{value}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains(&format!("offline: {offline}\n")),
            "{value}"
        );
    }
    let out = oci_cache_env(&["check-config"], &[("OCI_CACHE_OFFLINE", "maybe")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("maybe"));
}

/// Regression (issue 10): `tag_ttl = "0s"` was accepted.
#[test]
fn a_zero_tag_ttl_is_refused_naming_where_it_was_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ttl.toml");
    std::fs::write(&file, "tag_ttl = \"0s\"\n").unwrap();
    let out = oci_cache(&["check-config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: config file {}: tag_ttl: \"0s\" is zero, which would check every tag pull upstream; write a positive duration such as 30s or 5m\n",
            file.display()
        )
    );
    let out = oci_cache_env(&["check-config"], &[("OCI_CACHE_TAG_TTL", "0")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("error: --tag-ttl (or OCI_CACHE_TAG_TTL): \"0\" is zero"),
        "{}",
        text(&out.stderr)
    );
}

/// Regression (issue 10): `kind = "filesystem"` without `dir` failed despite the default.
#[test]
fn filesystem_storage_defaults_its_dir() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fs.toml");
    std::fs::write(&file, "[storage]\nkind = \"filesystem\"\n").unwrap();
    let out = oci_cache(&["check-config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("storage: filesystem at ./oci-cache-data\n"));
}

/// `DOCKER.IO/alpine` reads as `distribution/reference` reads it: repository
/// `alpine` on a registry named `DOCKER.IO`, no `library/` (issue 23). The
/// upstream is found ignoring case, as host names are compared, and Docker
/// Hub's upstream names the repository its own way, which the endpoints
/// show. (Issue 10 had folded the domain into `docker.io`.)
#[test]
fn resolve_reads_an_uppercase_docker_hub_domain_as_distribution_does() {
    let out = oci_cache(&["resolve", "--json", "DOCKER.IO/alpine:3"]);
    assert_eq!(out.status.code(), Some(0));
    let json = stdout_json(&out);
    assert_eq!(json["canonical"], "DOCKER.IO/alpine:3");
    assert_eq!(json["familiar"], "DOCKER.IO/alpine:3");
    assert_eq!(json["registry"], "DOCKER.IO");
    assert_eq!(json["repository"], "alpine");
    assert_eq!(json["upstream"], "docker.io");
    assert_eq!(
        json["endpoints"],
        serde_json::json!(["https://registry-1.docker.io/v2/library/alpine/manifests/3"])
    );
}

/// Regression (issue 10): a reference no upstream serves exited 0.
#[test]
fn resolve_exits_3_for_a_reference_the_cache_refuses() {
    let out = oci_cache(&["resolve", "--json", "evil.example/app:1"]);
    assert_eq!(out.status.code(), Some(3));
    let json = stdout_json(&out);
    assert_eq!(json["upstream"], Value::Null);
    assert_eq!(json["canonical"], "evil.example/app:1");

    let out = oci_cache(&["resolve", "evil.example/app:1"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stdout).contains("upstream:  none (no configured upstream is named evil.example")
    );
}

/// `resolve` reads the configuration through the same flags and variables as `serve`.
#[test]
fn resolve_reads_the_shared_config_sources() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.toml");
    std::fs::write(
        &file,
        "default_upstream = \"a.test\"\n[[upstream]]\nname = \"a.test\"\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let expected = "http://127.0.0.1:9/v2/app/manifests/1";
    for out in [
        oci_cache(&["resolve", "--json", "--config", file, "a.test/app:1"]),
        oci_cache_env(
            &["resolve", "--json", "a.test/app:1"],
            &[("OCI_CACHE_CONFIG", file)],
        ),
    ] {
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(
            stdout_json(&out)["endpoints"],
            serde_json::json!([expected])
        );
    }
    // docker.io is not among the file's upstreams.
    let out = oci_cache(&["resolve", "--config", file, "alpine"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(Path::new(file).exists());
}

/// Issue 15: local prefixes from the flag, the variable or the file, validated.
#[test]
fn local_prefixes_are_shown_and_checked() {
    let out = oci_cache_env(
        &["check-config"],
        &[("OCI_CACHE_LOCAL_PREFIXES", "local,team")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .contains("hosted (push): local/…, team/… (abandoned uploads removed after 1d)"),
        "{}",
        text(&out.stdout)
    );
    // The push limits: defaults that follow the disk, then flag, variable and file.
    assert!(
        text(&out.stdout).contains("push limits: 64 open uploads per client"),
        "{}",
        text(&out.stdout)
    );
    let out = oci_cache_env(
        &[
            "check-config",
            "--local-prefix",
            "local",
            "--max-size",
            "1GiB",
        ],
        &[("OCI_CACHE_MAX_UPLOADS_PER_CLIENT", "3")],
    );
    assert!(
        text(&out.stdout).contains("push limits: 3 open uploads per client"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains("blobs up to 512.00 MiB"),
        "{}",
        text(&out.stdout)
    );
    let out = oci_cache(&[
        "check-config",
        "--local-prefix",
        "local",
        "--max-upload-bytes",
        "1GiB",
    ]);
    assert!(
        text(&out.stdout).contains("1.00 GiB held by open uploads in all"),
        "{}",
        text(&out.stdout)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limits.toml");
    std::fs::write(
        &file,
        "local_prefixes = [\"local\"]\nmax_uploads_per_client = 5\nmax_upload_bytes = \"2GiB\"\n",
    )
    .unwrap();
    let out = oci_cache(&["check-config", file.to_str().unwrap()]);
    assert!(
        text(&out.stdout).contains("push limits: 5 open uploads per client, 2.00 GiB held"),
        "{}",
        text(&out.stdout)
    );
    let out = oci_cache(&["check-config", "--max-upload-bytes", "1KiB"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("max_upload_bytes = 1KiB is out of range"),
        "{}",
        text(&out.stderr)
    );
    let out = oci_cache(&["check-config", "--max-uploads-per-client", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--max-uploads-per-client"),
        "{}",
        text(&out.stderr)
    );
    let out = oci_cache(&["check-config", "--local-prefix", "docker.io"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: --local-prefix (or OCI_CACHE_LOCAL_PREFIXES): invalid configuration: local prefix \"docker.io\" is also the name of a configured upstream; pick another prefix\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hosted.toml");
    std::fs::write(&file, "local_prefixes = [\"local/dev\"]\n").unwrap();
    let out = oci_cache(&["check-config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("local_prefixes: invalid configuration: local prefix \"local/dev\" is not one repository path component"), "{}", text(&out.stderr));
}

/// Every duration and size setting has a range; a value outside it is exit 2
/// naming the key and the range. `breaker_cooldown = "18446744073709551615s"`
/// used to pass check-config and then panic a worker on every request that
/// opened the breaker.
#[test]
fn durations_and_sizes_out_of_range_are_refused_naming_key_and_range() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bounds.toml");
    let cases = [
        (
            "[upstream_client]\nbreaker_cooldown = \"18446744073709551615s\"\n",
            "[upstream_client] breaker_cooldown = 213503982334601d7h15s is out of range: write a duration from 0 to 1d",
        ),
        (
            "[upstream_client]\nconnect_timeout = \"0\"\n",
            "[upstream_client] connect_timeout = 0 is out of range: write a duration from 10ms to 10m",
        ),
        (
            "[upstream_client]\nread_timeout = \"30d\"\n",
            "[upstream_client] read_timeout = 30d is out of range: write a duration from 10ms to 1h",
        ),
        (
            "[upstream_client]\nmax_redirects = 1000\n",
            "[upstream_client] max_redirects = 1000 is out of range: write a number from 0 to 50",
        ),
        (
            "[cache]\nfill_window = 1\n",
            "[cache] fill_window = 1 is out of range: write a size from 4KiB to 1GiB",
        ),
        (
            "[cache]\nmax_size = \"2000000TiB\"\n",
            "[cache] max_size = 2000000TiB is out of range: write a size from 1MiB to 1EiB",
        ),
        (
            "tag_ttl = \"400d\"\n",
            "tag_ttl = 400d is out of range: write a duration from 1s to 365d",
        ),
        (
            "upload_max_age = \"10s\"\n",
            "upload_max_age = 10s is out of range: write a duration from 1m to 365d",
        ),
        (
            "[limits]\nidle_timeout = \"99999d\"\n",
            "[limits] idle_timeout = 99999d is out of range: write a duration from 1s to 1d",
        ),
        (
            "[limits]\nmax_connections = 9223372036854775807\n",
            "[limits] max_connections = 9223372036854775807 is out of range: write a number from 1 to 1000000",
        ),
    ];
    for (toml, message) in cases {
        std::fs::write(&file, toml).unwrap();
        let out = oci_cache(&["check-config", file.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: config file {}: ", file.display())),
            "{toml}: {stderr}"
        );
        assert!(stderr.contains(message), "{toml}: {stderr}");
    }
    // Flags and their variables name themselves.
    let out = oci_cache_env(&["check-config"], &[("OCI_CACHE_MAX_SIZE", "1KiB")]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: --max-size (OCI_CACHE_MAX_SIZE) = 1KiB is out of range: write a size from 1MiB to 1EiB\n"
    );
    let out = oci_cache(&["check-config", "--tag-ttl", "1000d"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--tag-ttl (or OCI_CACHE_TAG_TTL) = 1000d is out of range"),
        "{}",
        text(&out.stderr)
    );
    // `warm -j` sizes a semaphore, which panics above 2^61 permits.
    for jobs in ["0", "1000"] {
        let out = oci_cache(&["warm", "-j", jobs, "a.test/x:v1"]);
        assert_eq!(out.status.code(), Some(2), "{jobs}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("{jobs} is not in 1..=256")),
            "{stderr}"
        );
    }
    // The ends of each range are accepted.
    std::fs::write(
        &file,
        "tag_ttl = \"365d\"\nupload_max_age = \"1m\"\n\
         [upstream_client]\nbreaker_cooldown = \"1d\"\nconnect_timeout = \"10ms\"\nmax_redirects = 50\n\
         [cache]\nfill_window = 4096\nmax_size = \"1MiB\"\n\
         [limits]\nmax_connections = 1\nidle_timeout = \"1d\"\n",
    )
    .unwrap();
    let out = oci_cache(&["check-config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// `warm` goes through the pull policy: a denied image fails naming the
/// rule, and the upstream is never contacted.
#[test]
fn warm_refuses_a_denied_image_without_contacting_upstream() {
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    upstream.set_nonblocking(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(
        &file,
        format!(
            "default_upstream = \"a.test\"\n[storage]\nkind = \"memory\"\n\
             [[upstream]]\nname = \"a.test\"\nurl = \"http://{}\"\n\
             [[policy.rule]]\nname = \"no-team-x\"\naction = \"deny\"\nrepository = \"team-x/*\"\n",
            upstream.local_addr().unwrap()
        ),
    )
    .unwrap();
    let out = oci_cache(&[
        "warm",
        "--config",
        file.to_str().unwrap(),
        "a.test/team-x/app:v1",
    ]);
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("no-team-x"), "{stderr}");
    assert!(
        matches!(upstream.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the upstream was contacted"
    );
}
