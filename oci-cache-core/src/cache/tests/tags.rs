//! Tag lists and the catalog.

use super::*;

#[tokio::test]
async fn tags_come_from_upstream_or_from_cache_when_it_fails() {
    let s = setup(CacheOptions::default());
    s.upstream
        .set_tag_list("docker.io", "library/alpine", &["3.19", "3.20"]);
    s.upstream
        .set_tag("docker.io", "library/alpine", "3.20", &[(OCI_INDEX, INDEX)]);
    let (list, outcome) = s.engine.tags(&hub(), &repo()).await.unwrap();
    assert_eq!(
        (list.tags, outcome),
        (
            vec!["3.19".to_string(), "3.20".to_string()],
            CacheOutcome::Miss
        )
    );

    s.manifest(&tag("3.20"), &[]).await.unwrap();
    s.upstream.set_down(true);
    let (list, outcome) = s.engine.tags(&hub(), &repo()).await.unwrap();
    assert_eq!(
        (list.tags, outcome),
        (vec!["3.20".to_string()], CacheOutcome::Stale)
    );

    let other = Repository::new("library/busybox").unwrap();
    assert!(s.engine.tags(&hub(), &other).await.is_err());
    assert_eq!(
        s.engine.catalog().await.unwrap(),
        ["docker.io/library/alpine"]
    );
}

#[tokio::test]
async fn stale_digest_record_without_manifest_refetches() {
    // A tag record whose manifest was evicted behaves like a miss.
    let s = setup(CacheOptions::default());
    s.upstream
        .set_tag("docker.io", "library/alpine", "3.20", &[(OCI_INDEX, INDEX)]);
    s.storage
        .tag_put(
            &tag_key("3.20"),
            &TagRecord {
                digest: Digest::sha256_of(INDEX),
                media_type: OCI_INDEX.into(),
                checked_at: SystemTime::now(),
            },
        )
        .await
        .unwrap();
    let response = s.manifest(&tag("3.20"), &[]).await.unwrap();
    assert_eq!(response.outcome, CacheOutcome::Miss);
    assert_eq!(
        s.storage
            .manifest_get(&Digest::sha256_of(INDEX))
            .await
            .unwrap(),
        Some(StoredManifest {
            digest: Digest::sha256_of(INDEX),
            media_type: OCI_INDEX.into(),
            bytes: Bytes::from_static(INDEX),
        })
    );
}
