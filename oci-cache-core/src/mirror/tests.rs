//! Mirror configuration tests: lookup, validation, chains.

use super::*;

fn registry(name: &str) -> Registry {
    Registry::new(name).unwrap()
}

#[test]
fn common_has_five_upstreams_and_validates() {
    let config = MirrorConfig::common();
    config.validate().unwrap();
    let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
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
    assert_eq!(
        config.default_upstream_config().unwrap().name.as_str(),
        "docker.io"
    );
    assert_eq!(config, MirrorConfig::default());
}

#[test]
fn lookup_folds_aliases_case_and_default_port() {
    let config = MirrorConfig::common();
    for name in [
        "docker.io",
        "DOCKER.IO",
        "index.docker.io",
        "registry-1.docker.io",
        "docker.io:443",
    ] {
        assert_eq!(
            config.lookup(name).unwrap().name.as_str(),
            "docker.io",
            "{name}"
        );
    }
    assert_eq!(config.lookup("Quay.IO").unwrap().name.as_str(), "quay.io");
    assert!(config.lookup("docker.io:5000").is_none());
    assert!(config.lookup("evil.example").is_none());
    assert!(matches!(
        config.resolve("evil.example"),
        Err(Error::UnknownUpstream { name }) if name == "evil.example"
    ));
}

#[test]
fn lookup_keeps_explicit_ports() {
    let config = MirrorConfig::common().with_upstream(UpstreamConfig::new(
        registry("myregistry.io:5000"),
        "http://127.0.0.1:5001",
    ));
    config.validate().unwrap();
    assert_eq!(
        config.lookup("MyRegistry.io:5000").unwrap().origin.url,
        "http://127.0.0.1:5001"
    );
    assert!(config.lookup("myregistry.io").is_none());
}

#[test]
fn duplicate_names_and_aliases_are_refused() {
    let config = MirrorConfig::common().with_upstream(
        UpstreamConfig::new(registry("proxy.example"), "https://proxy.example")
            .with_alias("Index.Docker.io"),
    );
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("\"index.docker.io\""), "{err}");
    assert!(
        err.contains("docker.io and upstream proxy.example"),
        "{err}"
    );
}

#[test]
fn missing_default_is_refused() {
    let config = MirrorConfig::common().with_default_upstream(registry("example.com"));
    let err = config.validate().unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid configuration: default upstream example.com is not configured; add it to the upstreams or choose one of them"
    );
    assert!(MirrorConfig::new(Vec::new(), registry("docker.io")).is_err());
}

#[test]
fn endpoint_urls_must_be_plain_http_or_https() {
    for ok in [
        "https://mirror.example.com",
        "http://127.0.0.1:5001",
        "https://m.example/v2/docker.io",
        "http://[::1]:5000",
        "http://[::1]",
    ] {
        Endpoint::new(ok)
            .validate()
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for (bad, why) in [
        ("mirror.example.com", "has no scheme"),
        ("ftp://mirror.example.com", "http:// or https://"),
        ("https://", "has no host"),
        ("https://:5000", "has no host"),
        ("https://host:port", "invalid port"),
        ("https://user:secret@host", "must not contain credentials"),
        ("https://host/?x=1", "query or fragment"),
        ("https://ho st", "whitespace"),
    ] {
        let err = Endpoint::new(bad).validate().unwrap_err().to_string();
        assert!(err.contains(why), "{bad}: {err}");
        assert!(!err.contains("secret"), "{err}");
    }
    let config = MirrorConfig::common().with_upstream(
        UpstreamConfig::new(registry("ghcr.io"), "https://ghcr.io")
            .with_endpoint(Endpoint::new("ghcr-mirror.example")),
    );
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.starts_with("invalid configuration: upstream ghcr.io: endpoint url"),
        "{err}"
    );
}

#[test]
fn docker_hub_gets_library_prefix_only_for_single_components() {
    let config = MirrorConfig::common();
    let hub = config.lookup("docker.io").unwrap();
    let repo = |s: &str| Repository::new(s).unwrap();
    assert_eq!(
        hub.upstream_repository(&repo("alpine")).unwrap(),
        repo("library/alpine")
    );
    assert_eq!(
        hub.upstream_repository(&repo("org/app")).unwrap(),
        repo("org/app")
    );
    let quay = config.lookup("quay.io").unwrap();
    assert_eq!(
        quay.upstream_repository(&repo("alpine")).unwrap(),
        repo("alpine")
    );
}

#[test]
fn config_is_plain_serde_data_and_debug_hides_secrets() {
    let toml_like = serde_json::json!({
        "upstreams": [{
            "name": "ghcr.io",
            "origin": { "url": "https://ghcr.io", "credentials": { "username": "me", "password": "hunter2" } },
            "endpoints": [{ "url": "http://127.0.0.1:5001", "override_path": true }]
        }],
        "default_upstream": "ghcr.io"
    });
    let config: MirrorConfig = serde_json::from_value(toml_like).unwrap();
    config.validate().unwrap();
    let ghcr = config.lookup("ghcr.io").unwrap();
    assert_eq!(
        ghcr.chain()
            .iter()
            .map(|e| e.url.as_str())
            .collect::<Vec<_>>(),
        ["http://127.0.0.1:5001", "https://ghcr.io"]
    );
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("hunter2") && debug.contains("<redacted>"),
        "{debug}"
    );

    let unknown = serde_json::json!({ "upstreams": [], "default_upstream": "x.io", "extra": 1 });
    assert!(serde_json::from_value::<MirrorConfig>(unknown).is_err());
}

#[test]
fn skip_fallback_drops_the_origin_only_with_mirrors() {
    let base = UpstreamConfig::new(registry("quay.io"), "https://quay.io").with_skip_fallback(true);
    assert_eq!(base.chain().len(), 1);
    let mirrored = base.with_endpoint(Endpoint::new("http://127.0.0.1:1"));
    assert_eq!(
        mirrored
            .chain()
            .iter()
            .map(|e| e.url.as_str())
            .collect::<Vec<_>>(),
        ["http://127.0.0.1:1"]
    );
}

#[test]
fn request_urls_and_digest_only_validation() {
    let repo = Repository::new("library/alpine").unwrap();
    let hub = registry("docker.io");
    let mirror = Endpoint::new("https://m.example/us/");
    assert_eq!(
        mirror.request_url(&hub, &repo, "manifests/3", Some("n=1"), true),
        "https://m.example/us/v2/library/alpine/manifests/3?n=1&ns=docker.io"
    );
    assert_eq!(
        Endpoint::new("http://h/v2/hub")
            .with_override_path(true)
            .request_url(&hub, &repo, "tags/list", None, false),
        "http://h/v2/hub/library/alpine/tags/list"
    );
    assert_eq!(
        Endpoint::new("https://Host.Example:443/x")
            .authority()
            .unwrap(),
        "host.example"
    );
    assert_eq!(
        Endpoint::new("http://h:5000").authority().unwrap(),
        "h:5000"
    );

    let digest_only = UpstreamConfig::new(registry("quay.io"), "https://quay.io")
        .with_endpoint(Endpoint::new("http://m:5000").with_resolve(false))
        .with_skip_fallback(true);
    let err = MirrorConfig::common()
        .with_upstream(digest_only.clone())
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("upstream quay.io: no endpoint"), "{err}");
    MirrorConfig::common()
        .with_upstream(digest_only.with_skip_fallback(false))
        .validate()
        .unwrap();
}

#[test]
fn endpoint_tls_is_optional_explicit_and_checked() {
    let plain: Endpoint =
        serde_json::from_value(serde_json::json!({ "url": "https://r.example" })).unwrap();
    assert!(plain.tls.is_default());
    assert!(!serde_json::to_string(&plain).unwrap().contains("tls"));
    let mtls: Endpoint = serde_json::from_value(serde_json::json!({
        "url": "https://r.example",
        "tls": { "ca_file": "/etc/ca.pem", "client_cert": "/c.pem", "client_key": "/k.pem" }
    }))
    .unwrap();
    mtls.validate().unwrap();
    assert_eq!(
        mtls.tls.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/ca.pem"))
    );
    assert!(!mtls.tls.insecure_skip_verify);
    let half: Endpoint = serde_json::from_value(serde_json::json!({
        "url": "https://r.example", "tls": { "client_cert": "/c.pem" }
    }))
    .unwrap();
    let err = half.validate().unwrap_err().to_string();
    assert!(err.contains("client_cert and tls.client_key"), "{err}");
    let typo = serde_json::json!({ "url": "https://r.example", "tls": { "insecure": true } });
    assert!(serde_json::from_value::<Endpoint>(typo).is_err());
}
