//! Tag lists and the catalog.

use super::*;

#[tokio::test]
async fn tags_come_from_upstream_or_from_cache_when_it_fails() {
    let s = setup(CacheOptions::default());
    s.upstream
        .set_tag_list("docker.io", "library/alpine", &["3.19", "3.20"]);
    s.upstream
        .set_tag("docker.io", "library/alpine", "3.20", &[(OCI_INDEX, INDEX)]);
    let (list, outcome) = s.engine.tags(&hub(), &repo(), None, None).await.unwrap();
    assert_eq!(
        (list.tags, outcome),
        (
            vec!["3.19".to_string(), "3.20".to_string()],
            CacheOutcome::Miss
        )
    );

    s.manifest(&tag("3.20"), &[]).await.unwrap();
    s.upstream.set_down(true);
    // Another page than the one asked above: not in the short cache.
    let (list, outcome) = s
        .engine
        .tags(&hub(), &repo(), Some(10), None)
        .await
        .unwrap();
    assert_eq!(
        (list.tags, outcome),
        (vec!["3.20".to_string()], CacheOutcome::Stale)
    );

    let other = Repository::new("library/busybox").unwrap();
    assert!(s.engine.tags(&hub(), &other, None, None).await.is_err());
    assert_eq!(
        s.engine.catalog(None, None).await.unwrap(),
        ["docker.io/library/alpine"]
    );
}

#[tokio::test]
async fn concurrent_identical_tag_lists_share_one_upstream_fetch() {
    let s = setup(CacheOptions::default());
    s.upstream
        .set_tag_list("docker.io", "library/alpine", &["3.19", "3.20"]);
    let engine = &s.engine;
    let lists = futures::future::join_all(
        (0..20).map(|_| async move { engine.tags(&hub(), &repo(), None, None).await }),
    )
    .await;
    for list in lists {
        assert_eq!(list.unwrap().0.tags, ["3.19", "3.20"]);
    }
    // A request moments later is answered from the short cache too.
    engine.tags(&hub(), &repo(), None, None).await.unwrap();
    assert_eq!(s.upstream.calls().tag_list(), 1);
    // Another page is another upstream request, with n and last forwarded.
    engine
        .tags(&hub(), &repo(), Some(1), Some("3.19"))
        .await
        .unwrap();
    assert_eq!(s.upstream.calls().tag_list(), 2);
}

#[tokio::test]
async fn the_tag_list_cache_is_bounded() {
    let s = setup(CacheOptions::default());
    for i in 0..(super::super::tags::MAX_CACHED_LISTS + 50) {
        let name = format!("made-up-{i}");
        s.upstream.set_tag_list("docker.io", &name, &["1"]);
        let repository = Repository::new(&name).unwrap();
        s.engine
            .tags(&hub(), &repository, None, None)
            .await
            .unwrap();
    }
    assert!(s.engine.inner.tag_lists.cached() <= super::super::tags::MAX_CACHED_LISTS);
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

/// `_catalog` lists the store once, then follows what the engine caches and
/// purges: before, every request listed every tag record.
#[tokio::test]
async fn the_catalog_follows_what_is_cached_and_purged_without_listing_again() {
    let s = setup(CacheOptions::default());
    let busybox = TagKey {
        upstream: hub(),
        repository: Repository::new("library/busybox").unwrap(),
        tag: Tag::new("1").unwrap(),
    };
    let record = TagRecord {
        digest: Digest::sha256_of(b"x"),
        media_type: OCI_INDEX.to_owned(),
        checked_at: SystemTime::now(),
    };
    s.storage.tag_put(&busybox, &record).await.unwrap();
    assert_eq!(
        s.engine.catalog(None, None).await.unwrap(),
        ["docker.io/library/busybox"]
    );
    // Written behind the engine's back: the index does not list again per
    // request (another process's tags appear at the next background refresh).
    let mut hidden = busybox.clone();
    hidden.repository = Repository::new("library/hidden").unwrap();
    s.storage.tag_put(&hidden, &record).await.unwrap();

    s.upstream
        .set_tag("docker.io", "library/alpine", "3.20", &[(OCI_INDEX, INDEX)]);
    s.manifest_by_tag("3.20").await;
    assert_eq!(
        s.engine.catalog(None, None).await.unwrap(),
        ["docker.io/library/alpine", "docker.io/library/busybox"]
    );
    assert_eq!(
        s.engine
            .catalog(Some("docker.io/library/alpine"), Some(1))
            .await
            .unwrap(),
        ["docker.io/library/busybox"]
    );
    let alpine = crate::reference::Reference::parse("alpine:3.20").unwrap();
    s.engine.purge(&[alpine]).await.unwrap();
    // A purge lists again: alpine is gone, and the hidden one shows up.
    assert_eq!(
        s.engine.catalog(None, None).await.unwrap(),
        ["docker.io/library/busybox", "docker.io/library/hidden"]
    );
}
