//! Fleet mode settings: `serve` refuses, with exit 2 and a message saying
//! what to do, every half or unsafe fleet configuration before it listens.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{oci_cache_env, text};

const SECRET: &str = "3f9c2a7e5b1d40c8a6e2f7b9d1c3e5a7";

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn secret(&self, name: &str, content: &str, mode: u32) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn config(&self, toml: &str) -> PathBuf {
        let path = self.dir.path().join("oci-cache.toml");
        std::fs::write(&path, toml).unwrap();
        path
    }
}

const S3: &str = "[storage]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9\"\n\
                  region = \"us-east-1\"\npath_style = true\naccess_key_id = \"a\"\n\
                  secret_access_key = \"s\"\n";

/// `serve` (which must refuse before listening) and `check-config` with the
/// same settings: both exit 2 with the same message.
fn refused(config: &Path, flags: &[&str], expected: &[&str]) {
    let config = config.to_str().unwrap();
    let mut serve = vec!["serve", "--listen", "127.0.0.1:0", "--config", config];
    serve.extend_from_slice(flags);
    let mut check = vec!["check-config", config];
    check.extend_from_slice(flags);
    for args in [serve, check] {
        let out = oci_cache_env(&args, &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for needle in expected {
            assert!(
                stderr.contains(needle),
                "{args:?}: {needle:?} not in {stderr}"
            );
        }
        assert!(!stderr.contains(SECRET), "the secret leaked: {stderr}");
    }
}

#[test]
fn one_fleet_setting_without_the_other_is_refused() {
    let files = Files::new();
    let config = files.config(S3);
    let secret = files.secret("peer", SECRET, 0o600);
    let secret = secret.to_str().unwrap();
    refused(
        &config,
        &["--advertise-url", "http://127.0.0.2:5000"],
        &["--advertise-url", "--peer-secret-file", "give both"],
    );
    refused(
        &config,
        &["--peer-secret-file", secret],
        &[
            "--peer-secret-file",
            "--advertise-url",
            "http://POD_IP:5000",
        ],
    );
    // The same from the [fleet] table, named as the file's key.
    let config = files.config(&format!(
        "{S3}[fleet]\nadvertise_url = \"http://127.0.0.2:5000\"\n"
    ));
    refused(&config, &[], &["[fleet] advertise_url", "peer_secret_file"]);
}

#[test]
fn an_unreadable_empty_short_or_world_readable_secret_is_refused() {
    let files = Files::new();
    let config = files.config(S3);
    let url = ["--advertise-url", "http://127.0.0.2:5000"];
    let missing = files.dir.path().join("nope");
    let empty = files.secret("empty", "\n", 0o600);
    let short = files.secret("short", "abc", 0o600);
    let open = files.secret("open", SECRET, 0o644);
    for (path, expected) in [
        (&missing, "cannot read the peer secret file"),
        (&empty, "is empty"),
        (&short, "openssl rand -hex 32"),
        (&open, "chmod 600"),
    ] {
        let mut flags = url.to_vec();
        flags.extend(["--peer-secret-file", path.to_str().unwrap()]);
        refused(&config, &flags, &["--peer-secret-file", expected]);
    }
}

#[test]
fn fleet_mode_needs_s3_storage_and_a_bare_replica_url() {
    let files = Files::new();
    let secret = files.secret("peer", SECRET, 0o400);
    let secret = secret.to_str().unwrap();
    let filesystem = files.config("[storage]\nkind = \"filesystem\"\ndir = \"/tmp/x\"\n");
    refused(
        &filesystem,
        &[
            "--advertise-url",
            "http://127.0.0.2:5000",
            "--peer-secret-file",
            secret,
        ],
        &["fleet mode needs S3 storage", "one bucket"],
    );
    let s3 = files.config(S3);
    refused(
        &s3,
        &[
            "--advertise-url",
            "http://127.0.0.2:5000/v2/",
            "--peer-secret-file",
            secret,
        ],
        &["--advertise-url", "not a replica URL"],
    );
}

#[test]
fn a_complete_fleet_configuration_is_shown_by_check_config() {
    let files = Files::new();
    let secret = files.secret("peer", &format!("{SECRET}\n"), 0o640);
    let config = files.config(&format!(
        "{S3}[fleet]\nadvertise_url = \"http://127.0.0.2:5000\"\npeer_secret_file = \"{}\"\n",
        secret.display()
    ));
    let out = oci_cache_env(&["check-config", config.to_str().unwrap()], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains("fleet: advertised as http://127.0.0.2:5000, peer secret read"),
        "{stdout}"
    );
    assert!(!stdout.contains(SECRET), "{stdout}");
    // The flag wins over the file.
    let out = oci_cache_env(
        &[
            "check-config",
            config.to_str().unwrap(),
            "--advertise-url",
            "http://127.0.0.3:5000",
        ],
        &[],
    );
    assert!(text(&out.stdout).contains("advertised as http://127.0.0.3:5000"));
}

#[test]
fn lease_timings_that_would_let_a_live_holder_be_taken_over_are_refused() {
    let files = Files::new();
    let secret = files.secret("peer", SECRET, 0o600);
    let config = files.config(&format!(
        "{S3}[fleet]\nadvertise_url = \"http://127.0.0.2:5000\"\npeer_secret_file = \"{}\"\n\
         [fleet.lease]\nheartbeat = \"5s\"\nttl = \"6s\"\n",
        secret.display()
    ));
    refused(&config, &[], &["[fleet.lease]"]);
}
