//! Referrers of cached repositories: from the upstream's API, from its tag
//! schema when it has none, kept under the tag rules, stale when it fails.

use std::collections::BTreeMap;

use super::*;
use crate::referrers::{fallback_tag, Referrer};

const SBOM: &str = "application/spdx+json";
const SIGNATURE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// The subject: an image manifest of the fake upstream.
fn subject() -> Digest {
    Digest::sha256_of(CHILD)
}

/// An artifact manifest of `artifact_type` whose `subject` is [`subject`].
fn artifact(artifact_type: &str) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{artifact_type}",
"config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}},
"layers":[],"subject":{{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":{}}},
"annotations":{{"org.example.kind":"{artifact_type}"}}}}"#,
        subject(),
        CHILD.len()
    )
    .into_bytes()
}

fn descriptor(bytes: &[u8], artifact_type: &str) -> Referrer {
    Referrer {
        media_type: OCI_MANIFEST.to_owned(),
        digest: Digest::sha256_of(bytes),
        size: bytes.len() as u64,
        artifact_type: Some(artifact_type.to_owned()),
        annotations: BTreeMap::from([("org.example.kind".to_owned(), artifact_type.to_owned())]),
    }
}

impl Setup {
    async fn referrers(&self, artifact_type: Option<&str>) -> Result<ReferrersResponse> {
        self.engine
            .referrers(&hub(), &repo(), &subject(), artifact_type)
            .await
    }

    /// Lists `bytes` (an artifact of `artifact_type`) for [`subject`]
    /// through the upstream's referrers API (which this enables).
    fn attach_via_api(&self, bytes: &[u8], artifact_type: &str) {
        self.upstream.add_referrer(
            "docker.io",
            "library/alpine",
            &subject(),
            descriptor(bytes, artifact_type),
        );
    }

    /// The tag schema of an upstream without the API: the fallback tag's
    /// index lists `artifacts` (descriptors without `artifactType`, as some
    /// pushers write them), each manifest reachable by digest.
    fn push_tag_schema(&self, artifacts: &[&[u8]]) {
        let entries: Vec<String> = artifacts
            .iter()
            .map(|bytes| {
                format!(
                    r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}}"#,
                    Digest::sha256_of(bytes),
                    bytes.len()
                )
            })
            .collect();
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            entries.join(",")
        );
        self.upstream.set_tag(
            "docker.io",
            "library/alpine",
            &fallback_tag(&subject()),
            &[(OCI_INDEX, index.as_bytes())],
        );
        for bytes in artifacts {
            self.upstream
                .add_manifest_as(&Digest::sha256_of(bytes), OCI_MANIFEST, bytes);
        }
    }
}

#[tokio::test]
async fn api_referrers_are_cached_for_the_tag_ttl_and_filtered() {
    let s = setup(CacheOptions::default().with_tag_ttl(Duration::from_secs(3600)));
    let (sbom, sig) = (artifact(SBOM), artifact(SIGNATURE));
    for (bytes, kind) in [(&sbom, SBOM), (&sig, SIGNATURE)] {
        s.attach_via_api(bytes, kind);
    }

    let learned = s.referrers(None).await.unwrap();
    assert_eq!(learned.source, ReferrersSource::Api);
    assert_eq!(learned.outcome, CacheOutcome::Miss);
    assert_eq!(
        learned.referrers,
        vec![descriptor(&sbom, SBOM), descriptor(&sig, SIGNATURE)]
    );

    // Fresh: the record answers, filtered, without asking upstream.
    let filtered = s.referrers(Some(SBOM)).await.unwrap();
    assert_eq!(filtered.outcome, CacheOutcome::Hit);
    assert_eq!(filtered.source, ReferrersSource::Api);
    assert_eq!(filtered.referrers, vec![descriptor(&sbom, SBOM)]);
    assert!(s
        .referrers(Some("application/x-none"))
        .await
        .unwrap()
        .referrers
        .is_empty());
    assert_eq!(s.upstream.calls().referrers(), 1);
    // The API answered: the tag schema was never read.
    assert_eq!(s.manifest_calls(), (0, 0));

    // A subject nobody refers to: an empty list, not an error.
    let other = s
        .engine
        .referrers(&hub(), &repo(), &Digest::sha256_of(b"other"), None)
        .await
        .unwrap();
    assert!(other.referrers.is_empty());
}

#[tokio::test]
async fn without_the_api_the_tag_schema_is_read_and_its_manifests_cached() {
    let s = setup(CacheOptions::default().with_tag_ttl(Duration::from_secs(3600)));
    let (sbom, sig) = (artifact(SBOM), artifact(SIGNATURE));
    s.push_tag_schema(&[&sbom, &sig]);

    let learned = s.referrers(None).await.unwrap();
    assert_eq!(learned.source, ReferrersSource::TagSchema);
    assert_eq!(learned.outcome, CacheOutcome::Miss);
    // Described from the manifests themselves: the same answer the API gives.
    assert_eq!(
        learned.referrers,
        vec![descriptor(&sbom, SBOM), descriptor(&sig, SIGNATURE)]
    );
    // The index and both artifacts are cached: pullable by digest offline.
    for bytes in [&sbom, &sig] {
        let stored = s
            .storage
            .manifest_get(&Digest::sha256_of(bytes))
            .await
            .unwrap();
        assert_eq!(stored.unwrap().bytes.as_ref(), bytes.as_slice());
    }
    assert!(s
        .storage
        .tag_get(&tag_key(&fallback_tag(&subject())))
        .await
        .unwrap()
        .is_some());

    let filtered = s.referrers(Some(SIGNATURE)).await.unwrap();
    assert_eq!(filtered.outcome, CacheOutcome::Hit);
    assert_eq!(filtered.source, ReferrersSource::TagSchema);
    assert_eq!(filtered.referrers, vec![descriptor(&sig, SIGNATURE)]);
    // One API probe, one index GET, two artifact GETs; nothing more.
    assert_eq!(s.upstream.calls().referrers(), 1);
    assert_eq!(s.manifest_calls(), (0, 3));
}

#[tokio::test]
async fn without_the_api_or_a_fallback_tag_the_list_is_empty() {
    let s = setup(CacheOptions::default());
    let learned = s.referrers(None).await.unwrap();
    assert!(learned.referrers.is_empty());
    assert_eq!(learned.source, ReferrersSource::TagSchema);
}

#[tokio::test]
async fn a_failing_upstream_gets_the_cached_list_stale() {
    // TTL zero: every request asks upstream again.
    let s = setup(CacheOptions::default().with_tag_ttl(Duration::ZERO));
    let sbom = artifact(SBOM);
    s.push_tag_schema(&[&sbom]);
    assert_eq!(s.referrers(None).await.unwrap().outcome, CacheOutcome::Miss);

    s.upstream.set_down(true);
    let stale = s.referrers(Some(SBOM)).await.unwrap();
    assert_eq!(stale.outcome, CacheOutcome::Stale);
    assert_eq!(stale.source, ReferrersSource::TagSchema);
    assert_eq!(stale.referrers, vec![descriptor(&sbom, SBOM)]);
    // And the artifact itself is served from the cache too.
    let pulled = s
        .manifest(&ManifestRef::Digest(Digest::sha256_of(&sbom)), &[])
        .await
        .unwrap();
    assert_eq!(pulled.bytes.as_ref(), sbom.as_slice());

    // Nothing cached for another subject: the upstream's error.
    let err = s
        .engine
        .referrers(&hub(), &repo(), &Digest::sha256_of(b"other"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Upstream(e) if e.kind() == UpstreamErrorKind::Unavailable),
        "{err}"
    );

    // Upstream back with a new list: learned again, not the stale one.
    s.upstream.set_down(false);
    let sig = artifact(SIGNATURE);
    s.attach_via_api(&sig, SIGNATURE);
    let fresh = s.referrers(None).await.unwrap();
    assert_eq!(fresh.outcome, CacheOutcome::Miss);
    assert_eq!(fresh.source, ReferrersSource::Api);
    assert_eq!(fresh.referrers, vec![descriptor(&sig, SIGNATURE)]);
}

#[tokio::test]
async fn offline_serves_the_cached_list() {
    let s = setup(CacheOptions::default().with_tag_ttl(Duration::ZERO));
    let sig = artifact(SIGNATURE);
    s.attach_via_api(&sig, SIGNATURE);
    s.referrers(None).await.unwrap();

    // What the HTTP upstream answers every call with under `--offline`.
    s.upstream.fail_with(Some(UpstreamErrorKind::Skipped));
    let offline = s.referrers(None).await.unwrap();
    assert_eq!(offline.outcome, CacheOutcome::Stale);
    assert_eq!(offline.source, ReferrersSource::Api);
    assert_eq!(offline.referrers, vec![descriptor(&sig, SIGNATURE)]);
}

#[tokio::test]
async fn concurrent_requests_share_one_upstream_flight() {
    let s = setup(CacheOptions::default());
    let sbom = artifact(SBOM);
    s.push_tag_schema(&[&sbom]);
    s.upstream.set_manifest_delay(Duration::from_millis(50));
    let (a, b) = tokio::join!(s.referrers(None), s.referrers(Some(SBOM)));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.referrers, b.referrers);
    let mut outcomes = [a.outcome, b.outcome];
    outcomes.sort_by_key(|o| o.as_str());
    assert_eq!(outcomes, [CacheOutcome::Coalesced, CacheOutcome::Miss]);
    assert_eq!(s.upstream.calls().referrers(), 1);
    assert_eq!(s.manifest_calls(), (0, 2));
}

#[tokio::test]
async fn a_denied_repository_has_no_referrers_and_upstream_is_not_asked() {
    use crate::policy::{PolicyAction, PolicyRule, PullPolicy};
    let s = setup(CacheOptions::default());
    s.attach_via_api(&artifact(SBOM), SBOM);
    s.engine.policy().replace(
        PullPolicy::new(vec![
            PolicyRule::new("no-alpine", PolicyAction::Deny).with_repository("library/alpine")
        ])
        .unwrap(),
    );
    let err = s.referrers(None).await.unwrap_err();
    assert!(
        matches!(&err, Error::Denied { rule, .. } if rule == "no-alpine"),
        "{err}"
    );
    assert_eq!(s.upstream.calls().referrers(), 0);
}
