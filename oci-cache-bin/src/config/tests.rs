//! Configuration resolution tests: precedence, validation, error origins.

use super::*;

fn args() -> ServeArgs {
    ServeArgs::default()
}

#[test]
fn defaults_serve_the_common_upstreams_from_the_data_dir() {
    let settings = resolve(&args()).unwrap();
    assert_eq!(settings.primary_listen().to_string(), DEFAULT_LISTEN);
    assert_eq!(
        settings.storage,
        StorageConfig::Filesystem {
            dir: PathBuf::from(DEFAULT_STORAGE_DIR)
        }
    );
    let names: Vec<_> = settings
        .mirrors
        .upstreams
        .iter()
        .map(|u| u.name.as_str().to_owned())
        .collect();
    for expected in [
        "docker.io",
        "registry.k8s.io",
        "gcr.io",
        "ghcr.io",
        "quay.io",
    ] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    assert_eq!(settings.mirrors.default_upstream.as_str(), "docker.io");
    assert_eq!(settings.cache.tag_ttl, CacheOptions::default().tag_ttl);
}

#[test]
fn upstream_flags_replace_the_defaults() {
    let mut a = args();
    a.config.upstreams = vec!["origin.test=http://127.0.0.1:5001".into()];
    a.config.default_upstream = Some("origin.test".into());
    a.tag_ttl = Some("2s".into());
    let settings = resolve(&a).unwrap();
    assert_eq!(settings.mirrors.upstreams.len(), 1);
    assert_eq!(
        settings.mirrors.upstreams[0].origin.url,
        "http://127.0.0.1:5001"
    );
    assert_eq!(settings.cache.tag_ttl, Duration::from_secs(2));
}

#[test]
fn bad_values_say_what_to_write() {
    let mut a = args();
    a.config.upstreams = vec!["no-equals-sign".into()];
    assert!(resolve(&a).unwrap_err().contains("NAME=URL"));
    let mut a = args();
    a.listen = Some("localhost".into());
    assert!(resolve(&a).unwrap_err().contains("0.0.0.0:5000"));
    let mut a = args();
    a.config.default_upstream = Some("evil.example".into());
    assert!(resolve(&a).is_err());
}

#[test]
fn file_config_reads_storage_and_upstreams() {
    let text = r#"
            listen = "127.0.0.1:5001"
            tag_ttl = "1m"
            default_upstream = "origin.test"
            [storage]
            kind = "s3"
            bucket = "cache"
            endpoint = "http://127.0.0.1:9000"
            path_style = true
            [[upstream]]
            name = "origin.test"
            url = "http://127.0.0.1:5002"
            credentials = { username = "u", password = "p" }
        "#;
    let file: FileConfig = toml::from_str(text).unwrap();
    assert!(matches!(file.storage, Some(StorageConfig::S3(ref s3)) if s3.bucket == "cache"));
    let bad = toml::from_str::<FileConfig>("listn = \"x\"").unwrap_err();
    assert!(bad.to_string().contains("listn"), "{bad}");
}

#[test]
fn talos_and_containerd_imports_add_chains_after_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let talos = dir.path().join("talos.yaml");
    std::fs::write(
            &talos,
            "apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: a.test\nendpoints:\n  - url: http://127.0.0.1:7001\nskipFallback: true\n",
        )
        .unwrap();
    let hosts = dir.path().join("certs.d");
    std::fs::create_dir_all(hosts.join("b.test_5000_")).unwrap();
    std::fs::create_dir_all(hosts.join("certs-only.test")).unwrap();
    std::fs::write(
        hosts.join("b.test_5000_/hosts.toml"),
        "[host.\"http://127.0.0.1:7002\"]\nca = \"ca.pem\"\n",
    )
    .unwrap();
    let mut a = args();
    a.config.upstreams = vec!["a.test=http://127.0.0.1:7000".into()];
    a.config.default_upstream = Some("a.test".into());
    a.config.talos_config = Some(talos);
    a.config.containerd_hosts = Some(hosts.clone());
    let mirrors = resolve(&a).unwrap().mirrors;
    let chain = |name: &str| -> Vec<String> {
        mirrors
            .lookup(name)
            .unwrap()
            .chain()
            .iter()
            .map(|e| e.url.clone())
            .collect()
    };
    assert_eq!(chain("a.test"), ["http://127.0.0.1:7001"]);
    assert_eq!(
        chain("b.test:5000"),
        ["http://127.0.0.1:7002", "https://b.test:5000"]
    );
    assert_eq!(
        mirrors.lookup("b.test:5000").unwrap().endpoints[0]
            .tls
            .ca_file
            .as_deref(),
        Some(hosts.join("b.test_5000_/ca.pem").as_path())
    );

    let mut a = args();
    a.config.containerd_hosts = Some(dir.path().to_path_buf());
    let err = resolve(&a).unwrap_err();
    assert!(
        err.contains("point --containerd-hosts at the certs.d"),
        "{err}"
    );
    let mut a = args();
    a.config.talos_config = Some(dir.path().join("missing.yaml"));
    assert!(resolve(&a)
        .unwrap_err()
        .contains("cannot read talos config"));
}

#[test]
fn limits_table() {
    let file: FileConfig =
        toml::from_str("[limits]\nmax_connections = 10\nidle_timeout = \"5s\"\n").unwrap();
    let server = file.limits.resolve().unwrap();
    assert_eq!(server.max_connections, 10);
    assert_eq!(server.idle_timeout, Duration::from_secs(5));
    let defaults = FileConfig::default().limits.resolve().unwrap();
    assert_eq!(defaults, ServerOptions::default());
    let zero: FileConfig = toml::from_str("[limits]\nmax_connections = 0\n").unwrap();
    assert!(zero
        .limits
        .resolve()
        .unwrap_err()
        .contains("max_connections"));
    assert!(toml::from_str::<FileConfig>("[limits]\nmax_conections = 1\n").is_err());
}

/// `text` written to `name` in a fresh directory; the directory is kept
/// alive by the returned guard.
fn file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn listeners(settings: &Settings) -> Vec<String> {
    settings.listeners.iter().map(ToString::to_string).collect()
}

#[test]
fn listener_tables_add_addresses_with_their_own_default_upstream() {
    let (_dir, path) = file(
        "oci-cache.toml",
        "listen = \"127.0.0.1:5000\"\n\
         [[listener]]\naddr = \"127.0.0.1:5001\"\ndefault_upstream = \"registry.k8s.io\"\n\
         [[listener]]\naddr = \"127.0.0.1:5002\"\n",
    );
    let mut a = args();
    a.config.config = Some(path.clone());
    let settings = resolve(&a).unwrap();
    assert_eq!(
        listeners(&settings),
        [
            "127.0.0.1:5000",
            "127.0.0.1:5001 (default upstream registry.k8s.io)",
            "127.0.0.1:5002"
        ]
    );
    // --listen is one address: it replaces the tables.
    a.listen = Some("127.0.0.1:6000".into());
    assert_eq!(listeners(&resolve(&a).unwrap()), ["127.0.0.1:6000"]);
}

#[test]
fn a_listener_upstream_that_is_not_configured_or_a_repeated_address_is_refused() {
    let (_dir, path) = file(
        "oci-cache.toml",
        "[[listener]]\naddr = \"127.0.0.1:5001\"\ndefault_upstream = \"quay.example\"\n",
    );
    let mut a = args();
    a.config.config = Some(path);
    let e = resolve(&a).unwrap_err();
    assert!(
        e.contains("[[listener]] #1: default upstream quay.example is not a configured upstream"),
        "{e}"
    );
    let (_dir, path) = file(
        "oci-cache.toml",
        "listen = \"127.0.0.1:5001\"\n[[listener]]\naddr = \"127.0.0.1:5001\"\n",
    );
    a.config.config = Some(path);
    let e = resolve(&a).unwrap_err();
    assert!(
        e.contains("127.0.0.1:5001 is already a listening address"),
        "{e}"
    );
}

const HUB_YML: &str = "version: 0.1\nproxy:\n  remoteurl: https://registry-1.docker.io\nhttp:\n  addr: 127.0.0.1:5000\n";
const K8S_YML: &str =
    "version: 0.1\nproxy:\n  remoteurl: https://registry.k8s.io\nhttp:\n  addr: 127.0.0.1:5001\n";

#[test]
fn every_registry_config_keeps_its_port_and_its_upstream() {
    let (_hub_dir, hub) = file("hub.yml", HUB_YML);
    let (_k8s_dir, k8s) = file("k8s.yml", K8S_YML);
    let mut a = args();
    a.config.registry_configs = vec![hub, k8s];
    let settings = resolve(&a).unwrap();
    assert_eq!(
        listeners(&settings),
        [
            "127.0.0.1:5000 (default upstream docker.io)",
            "127.0.0.1:5001 (default upstream registry.k8s.io)"
        ]
    );
}

#[test]
fn a_yaml_config_file_is_read_as_registry2_configuration() {
    let (_dir, path) = file("config.yml", K8S_YML);
    let mut a = args();
    a.config.config = Some(path);
    let settings = resolve(&a).unwrap();
    assert_eq!(
        listeners(&settings),
        ["127.0.0.1:5001 (default upstream registry.k8s.io)"]
    );
    assert_eq!(
        settings.mirrors.default_upstream.as_str(),
        "registry.k8s.io"
    );
    // Under another name it is refused with the command to type.
    let (_dir, path) = file("config", K8S_YML);
    a.config.config = Some(path.clone());
    let e = resolve(&a).unwrap_err();
    assert!(
        e.contains(&format!(
            "looks like a registry:2 config.yml; run `oci-cache serve --registry-config {}`",
            path.display()
        )),
        "{e}"
    );
}

#[test]
fn budgets_and_the_pull_policy_are_read_and_checked() {
    let text = r#"
            [upstream_client]
            max_concurrent_requests = 6
            [[upstream]]
            name = "docker.io"
            url = "https://registry-1.docker.io"
            max_concurrent_requests = 4
            requests_per_second = 0.5
            [[upstream]]
            name = "ghcr.io"
            url = "https://ghcr.io"
            [[policy.rule]]
            name = "no-latest"
            action = "deny"
            tag = "latest"
            [[policy.rule]]
            name = "alpine"
            action = "allow"
            upstream = "docker.io"
            repository = "library/alpine"
        "#;
    let settings = resolve_with(&args(), toml::from_str(text).unwrap()).unwrap();
    let client = &settings.upstream_client;
    assert_eq!(client.max_concurrent_requests, 6);
    assert_eq!(
        client.budgets.get("docker.io"),
        Some(&oci_cache_http::UpstreamBudget::new(Some(4), Some(0.5)))
    );
    assert!(!client.budgets.contains_key("ghcr.io"));
    let rules = settings.policy.rules();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].name, "no-latest");

    for (bad, says) in [
        ("[upstream_client]\nmax_concurrent_requests = 1\n", "max_concurrent_requests"),
        (
            "[[upstream]]\nname = \"a.test\"\nurl = \"http://a\"\nrequests_per_second = 0\n",
            "requests_per_second",
        ),
        (
            "[[policy.rule]]\nname = \"x\"\naction = \"deny\"\n[[policy.rule]]\nname = \"x\"\naction = \"allow\"\n",
            "two policy rules",
        ),
    ] {
        let err = resolve_with(&args(), toml::from_str(bad).unwrap()).unwrap_err();
        assert!(err.contains(says), "{bad}: {err}");
    }
    let err = toml::from_str::<FileConfig>("[[policy.rule]]\nname = \"x\"\naction = \"block\"\n")
        .unwrap_err();
    assert!(err.to_string().contains("block"), "{err}");
}

#[test]
fn tls_acme_table_defaults_to_lets_encrypt_tls_alpn_and_a_cache_in_the_storage_dir() {
    let (_dir, path) = file(
        "acme.toml",
        "[storage]\nkind = \"filesystem\"\ndir = \"/var/lib/oci-cache\"\n\n\
         [tls.acme]\ndomains = [\"mirror.example.com\"]\ncontact = [\"ops@example.com\"]\n",
    );
    let mut a = args();
    a.config.config = Some(path);
    let settings = resolve(&a).unwrap();
    assert_eq!(settings.tls, None);
    let acme = settings.acme.unwrap();
    assert_eq!(acme.domains, ["mirror.example.com"]);
    assert_eq!(
        acme.directory_url,
        "https://acme-v02.api.letsencrypt.org/directory"
    );
    assert_eq!(acme.challenge, oci_cache_http::acme::Challenge::TlsAlpn01);
    assert_eq!(acme.cache_dir, PathBuf::from("/var/lib/oci-cache/_acme"));
    assert_eq!(acme.renew_before, None);

    for (text, expected) in [
        ("[tls.acme]\n", "domains is empty"),
        (
            "[tls.acme]\ndomains = [\"*.example.com\"]\n",
            "no wildcards or IP addresses",
        ),
        (
            "[tls.acme]\ndomains = [\"a.example\"]\nchallenge = \"dns-01\"\n",
            "use \"tls-alpn-01\"",
        ),
        (
            "[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n[tls.acme]\ndomains = [\"a.example\"]\n",
            "keep one of the two",
        ),
        (
            "[storage]\nkind = \"memory\"\n[tls.acme]\ndomains = [\"a.example\"]\n",
            "cache_dir is needed",
        ),
        (
            "[tls.acme]\ndomains = [\"a.example\"]\nrenew_before = \"soon\"\n",
            "renew_before",
        ),
    ] {
        let (_dir, path) = file("bad.toml", text);
        let mut a = args();
        a.config.config = Some(path);
        let err = resolve(&a).unwrap_err();
        assert!(err.contains(expected), "{text}: {err}");
    }
}
