//! Shared pieces of the criterion benchmarks in `benches/`.
//!
//! [`REFERENCES`] is what the `reference` bench parses: image references as they
//! appear in Dockerfiles, Kubernetes manifests and `docker pull` commands, in
//! the mix a pull-through cache sees (mostly short Docker Hub names and fully
//! qualified registry names, some pinned by digest). [`WarmCache`] is a warm
//! cache to measure hit paths against.

use std::sync::Arc;
use std::time::SystemTime;

use oci_cache_core::cache::{CacheOptions, PullThrough};
use oci_cache_core::digest::Digest;
use oci_cache_core::manifest::media_type::OCI_MANIFEST;
use oci_cache_core::mirror::{MirrorConfig, UpstreamConfig};
use oci_cache_core::reference::{Registry, Repository, Tag};
use oci_cache_core::storage::{Storage, StoredManifest, TagKey, TagRecord};
use oci_cache_core::testing::FakeUpstream;
use oci_cache_core::upstream::Upstream;
use oci_cache_core::Result;

/// A warm cache: one OCI manifest of a realistic size (about 1 KiB), stored by
/// digest and recorded under `library/bench:v1` on upstream `origin`.
#[derive(Debug)]
pub struct WarmCache {
    /// The engine, over the given storage and an upstream that is down.
    pub engine: Arc<PullThrough<dyn Storage, dyn Upstream>>,
    /// The upstream name the manifest is cached under.
    pub registry: Registry,
    /// The repository.
    pub repository: Repository,
    /// The tag.
    pub tag: Tag,
    /// The manifest's digest.
    pub digest: Digest,
}

/// A manifest body shaped like a real 5-layer image manifest.
pub fn sample_manifest() -> Vec<u8> {
    let layer = |i: u32| {
        format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{:064x}","size":{}}}"#,
            i,
            25_000_000 + i
        )
    };
    let layers: Vec<String> = (1..=5).map(layer).collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{:064x}","size":1234}},"layers":[{}]}}"#,
        0,
        layers.join(",")
    )
    .into_bytes()
}

impl WarmCache {
    /// Mirror settings with the cache's upstream as the only (and default)
    /// one; its URL leads nowhere, as a hit never asks it.
    pub fn mirrors(&self) -> Result<MirrorConfig> {
        MirrorConfig::new(
            vec![UpstreamConfig::new(
                self.registry.clone(),
                "http://127.0.0.1:9",
            )],
            self.registry.clone(),
        )
    }

    /// Stores the sample manifest and a fresh tag record in `storage`.
    pub async fn new(storage: Arc<dyn Storage>) -> Result<WarmCache> {
        let bytes = sample_manifest();
        let digest = Digest::sha256_of(&bytes);
        let manifest = StoredManifest {
            digest: digest.clone(),
            media_type: OCI_MANIFEST.to_owned(),
            bytes: bytes.into(),
        };
        storage.manifest_put(&manifest).await?;
        let registry = Registry::new("origin")?;
        let repository = Repository::new("library/bench")?;
        let tag = Tag::new("v1")?;
        let key = TagKey {
            upstream: registry.clone(),
            repository: repository.clone(),
            tag: tag.clone(),
        };
        let record = TagRecord {
            digest: digest.clone(),
            media_type: OCI_MANIFEST.to_owned(),
            checked_at: SystemTime::now(),
        };
        storage.tag_put(&key, &record).await?;
        // Down on purpose: a hit path that reached upstream would fail the
        // benchmark loudly (an error, not a number).
        let down = FakeUpstream::new();
        down.set_down(true);
        let upstream: Arc<dyn Upstream> = Arc::new(down);
        // A TTL far beyond any benchmark run: every tag request is a hit.
        let options = CacheOptions::default().with_tag_ttl(std::time::Duration::from_secs(86_400));
        let engine = Arc::new(PullThrough::new(storage, upstream, options));
        Ok(WarmCache {
            engine,
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// A sha256 digest used where a reference pins one (its value does not matter).
macro_rules! sha256 {
    () => {
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    };
}

/// Real-world image references: Docker Hub official and user images, the
/// Kubernetes, Google, GitHub and Quay registries, local registries (IPv4,
/// `localhost`), tags, digests and tag plus digest. Every entry must parse with
/// both parsers the bench compares, so there is no IPv6 host (oci-client
/// refuses them).
pub const REFERENCES: &[&str] = &[
    // Docker Hub official images, familiar forms.
    "alpine",
    "alpine:3.20",
    "ubuntu:24.04",
    "debian:bookworm-slim",
    "nginx:1.27-alpine",
    "redis:7.4.1",
    "postgres:16.4-bookworm",
    "python:3.12-slim",
    "node:22-alpine3.20",
    "golang:1.23",
    "busybox:1.36.1-musl",
    "library/httpd:2.4",
    concat!("mysql@", sha256!()),
    concat!("traefik:v3.1@", sha256!()),
    // Docker Hub, fully qualified and legacy spellings.
    "docker.io/library/alpine:3.20",
    "docker.io/library/nginx",
    "docker.io/nginx:stable",
    "index.docker.io/library/ubuntu:22.04",
    "registry-1.docker.io/library/busybox:latest",
    // Docker Hub user and organisation images.
    "bitnami/redis:7.4",
    "grafana/grafana:11.2.0",
    "prom/prometheus:v2.54.1",
    "hashicorp/terraform:1.9",
    "minio/minio:RELEASE.2024-09-13T20-26-02Z",
    "docker.io/bitnami/postgresql:16.4.0-debian-12-r9",
    "jenkins/jenkins:lts-jdk17",
    "rancher/k3s:v1.30.4-k3s1",
    // Kubernetes and Google.
    "registry.k8s.io/pause:3.10",
    "registry.k8s.io/kube-apiserver:v1.31.0",
    "registry.k8s.io/coredns/coredns:v1.11.3",
    concat!("registry.k8s.io/etcd:3.5.15-0@", sha256!()),
    concat!("registry.k8s.io/ingress-nginx/controller:v1.11.2@", sha256!()),
    "gcr.io/distroless/static-debian12:nonroot",
    "gcr.io/google-containers/busybox",
    "us-docker.pkg.dev/google-samples/containers/gke/hello-app:1.0",
    "k8s.gcr.io/kube-proxy:v1.23.17",
    // GitHub, Quay, cloud registries.
    "ghcr.io/fluxcd/source-controller:v1.4.1",
    "ghcr.io/home-assistant/home-assistant:2024.9",
    "ghcr.io/open-telemetry/opentelemetry-collector-releases/opentelemetry-collector-contrib:0.109.0",
    concat!("ghcr.io/actions/actions-runner:2.319.1@", sha256!()),
    "quay.io/prometheus/node-exporter:v1.8.2",
    "quay.io/jetstack/cert-manager-controller:v1.15.3",
    concat!("quay.io/coreos/etcd@", sha256!()),
    "public.ecr.aws/docker/library/redis:7",
    "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/service:git-3f2a9c1",
    "mcr.microsoft.com/dotnet/aspnet:8.0",
    "nvcr.io/nvidia/cuda:12.6.1-runtime-ubuntu24.04",
    "docker.elastic.co/elasticsearch/elasticsearch:8.15.1",
    "cgr.dev/chainguard/static:latest",
    "ghcr.io/siderolabs/talosctl:v1.8.0",
    // Local and private registries.
    "localhost:5000/myapp:dev",
    "localhost/team/app",
    concat!("localhost:5000/team/app:1.0.0@", sha256!()),
    "127.0.0.1:5000/library/alpine:3.20",
    "registry.internal.example.com:8443/platform/base-images/jdk:21",
    "192.168.49.2:5000/cache/alpine:3.20",
    "Registry.Example.COM/team/app:2",
    concat!("harbor.example.org/proxy-cache/library/nginx:1.27@", sha256!()),
];
