//! Manifests: by digest, by tag (TTL, revalidation, stale), Accept, single flight.

use super::*;

#[tokio::test]
async fn manifest_by_digest_is_fetched_once_then_immutable() {
    let s = setup(CacheOptions::default());
    s.upstream
        .set_tag("docker.io", "library/alpine", "3.20", &[(OCI_INDEX, INDEX)]);
    let digest = Digest::sha256_of(INDEX);
    let reference = ManifestRef::Digest(digest.clone());

    let miss = s.manifest(&reference, &[]).await.unwrap();
    assert_eq!(miss.outcome, CacheOutcome::Miss);
    assert_eq!(
        (miss.digest.clone(), miss.media_type.as_str()),
        (digest.clone(), OCI_INDEX)
    );
    assert_eq!(miss.bytes.as_ref(), INDEX);

    // Upstream down: a cached digest never asks it.
    s.upstream.set_down(true);
    let hit = s.manifest(&reference, &broad()).await.unwrap();
    assert_eq!(hit.outcome, CacheOutcome::Hit);
    assert_eq!(hit.bytes.as_ref(), INDEX);
    assert_eq!(s.upstream.calls().manifest_get(), 1);
    assert_eq!(s.upstream.calls().manifest_head(), 0);
}

#[tokio::test]
async fn manifest_whose_bytes_differ_from_the_digest_asked_for_is_refused() {
    let s = setup(CacheOptions::default());
    let digest = Digest::sha256_of(INDEX);
    s.upstream.add_manifest_as(&digest, OCI_INDEX, CHILD);
    let reference = ManifestRef::Digest(digest.clone());
    for attempt in 1..=2 {
        let err = s.manifest(&reference, &[]).await.unwrap_err();
        assert!(
            matches!(err, Error::DigestMismatch { ref expected, .. } if *expected == digest),
            "{err}"
        );
        assert_eq!(s.upstream.calls().manifest_get(), attempt);
    }
    assert!(s.storage.manifest_get(&digest).await.unwrap().is_none());
    assert!(s
        .storage
        .manifest_get(&Digest::sha256_of(CHILD))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn manifest_over_the_size_cap_is_refused() {
    let s = setup(CacheOptions::default().with_max_manifest_size(50));
    s.upstream
        .set_tag("docker.io", "library/alpine", "big", &[(OCI_INDEX, INDEX)]);
    let err = s.manifest(&tag("big"), &[]).await.unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit: 50, actual, .. } if actual == INDEX.len() as u64),
        "{err}"
    );
    assert!(s
        .storage
        .manifest_get(&Digest::sha256_of(INDEX))
        .await
        .unwrap()
        .is_none());
    assert!(s.storage.tag_get(&tag_key("big")).await.unwrap().is_none());
}

#[tokio::test]
async fn tag_is_fresh_for_the_ttl_then_revalidated_with_head() {
    let s = setup(CacheOptions::default().with_tag_ttl(Duration::from_secs(3600)));
    s.upstream
        .set_tag("docker.io", "library/alpine", "3.20", &[(OCI_INDEX, INDEX)]);

    let miss = s.manifest_by_tag("3.20").await;
    assert_eq!(miss.outcome, CacheOutcome::Miss);
    let record = s.storage.tag_get(&tag_key("3.20")).await.unwrap().unwrap();
    assert_eq!(record.digest, Digest::sha256_of(INDEX));

    let hit = s.manifest_by_tag("3.20").await;
    assert_eq!(hit.outcome, CacheOutcome::Hit);
    assert_eq!(hit.bytes.as_ref(), INDEX);
    assert_eq!(s.manifest_calls(), (0, 1));

    // Past the TTL: one HEAD, no GET, and checked_at moves forward.
    let old = SystemTime::now() - Duration::from_secs(7200);
    s.storage
        .tag_put(
            &tag_key("3.20"),
            &TagRecord {
                checked_at: old,
                ..record
            },
        )
        .await
        .unwrap();
    let revalidated = s.manifest_by_tag("3.20").await;
    assert_eq!(revalidated.outcome, CacheOutcome::Revalidated);
    assert_eq!(revalidated.bytes.as_ref(), INDEX);
    assert_eq!(s.manifest_calls(), (1, 1));
    let refreshed = s.storage.tag_get(&tag_key("3.20")).await.unwrap().unwrap();
    assert!(refreshed.checked_at > old + Duration::from_secs(3600));
}

#[tokio::test]
async fn moved_tag_fetches_and_records_the_new_manifest() {
    let s = setup(CacheOptions::default().with_tag_ttl(Duration::ZERO));
    s.upstream.set_tag(
        "docker.io",
        "library/alpine",
        "latest",
        &[(OCI_INDEX, INDEX)],
    );
    s.manifest_by_tag("latest").await;

    let moved: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}"#;
    s.upstream.set_tag(
        "docker.io",
        "library/alpine",
        "latest",
        &[(OCI_INDEX, moved)],
    );
    let response = s.manifest_by_tag("latest").await;
    assert_eq!(response.outcome, CacheOutcome::Miss);
    assert_eq!(response.bytes.as_ref(), moved);
    assert_eq!(response.digest, Digest::sha256_of(moved));
    assert_eq!(
        s.storage
            .tag_get(&tag_key("latest"))
            .await
            .unwrap()
            .unwrap()
            .digest,
        Digest::sha256_of(moved)
    );
    assert_eq!(s.manifest_calls(), (1, 2));

    // HEAD without a digest: GET and compare what the bytes hash to.
    s.upstream.set_head_without_digest(true);
    let same = s.manifest_by_tag("latest").await;
    assert_eq!(same.outcome, CacheOutcome::Revalidated);
    assert_eq!(same.bytes.as_ref(), moved);
}

#[tokio::test]
async fn stale_tag_is_served_when_upstream_fails() {
    let s = setup(CacheOptions::default().with_tag_ttl(Duration::ZERO));
    s.upstream
        .set_tag("docker.io", "library/alpine", "3.20", &[(OCI_INDEX, INDEX)]);
    s.manifest_by_tag("3.20").await;

    s.upstream.set_down(true);
    let stale = s.manifest_by_tag("3.20").await;
    assert_eq!(stale.outcome, CacheOutcome::Stale);
    assert_eq!(stale.bytes.as_ref(), INDEX);

    // Nothing cached and upstream down: the upstream error, not a made-up answer.
    let err = s.manifest(&tag("other"), &broad()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Upstream(e) if e.kind() == UpstreamErrorKind::Unavailable),
        "{err}"
    );
}

#[tokio::test]
async fn cached_manifest_is_only_served_to_clients_that_accept_its_type() {
    let s = setup(CacheOptions::default());
    // Like Docker Hub: the index for clients that take indexes, the platform
    // manifest for clients that only take Docker manifests.
    s.upstream.set_tag(
        "docker.io",
        "library/alpine",
        "3.20",
        &[(OCI_INDEX, INDEX), (DOCKER_MANIFEST, CHILD)],
    );
    let first = s.manifest_by_tag("3.20").await;
    assert_eq!(first.media_type, OCI_INDEX);
    assert_eq!(
        s.upstream.accepts_seen().last().unwrap(),
        &accept(&KNOWN_MANIFEST_TYPES)
    );

    let narrow = accept(&[DOCKER_MANIFEST]);
    let response = s.manifest(&tag("3.20"), &narrow).await.unwrap();
    assert_eq!(response.media_type, DOCKER_MANIFEST);
    assert_eq!(response.bytes.as_ref(), CHILD);
    assert_eq!(response.outcome, CacheOutcome::Miss);
    assert_eq!(s.upstream.accepts_seen().last().unwrap(), &narrow);

    // The tag record still holds the broad answer for everyone else.
    let again = s.manifest_by_tag("3.20").await;
    assert_eq!(
        (again.outcome, again.bytes.as_ref()),
        (CacheOutcome::Hit, INDEX)
    );

    // By digest, a client that does not accept the stored type is not served it.
    let by_digest = ManifestRef::Digest(Digest::sha256_of(INDEX));
    let gets = s.upstream.calls().manifest_get();
    let err = s.manifest(&by_digest, &narrow).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotAcceptable { media_type } if media_type == OCI_INDEX),
        "{err}"
    );
    assert_eq!(s.upstream.calls().manifest_get(), gets + 1);
}

#[tokio::test]
async fn narrow_client_is_served_from_storage_when_head_names_a_stored_digest() {
    let s = setup(CacheOptions::default());
    s.upstream.set_tag(
        "docker.io",
        "library/alpine",
        "3.20",
        &[(OCI_INDEX, INDEX), (DOCKER_MANIFEST, CHILD)],
    );
    // The platform manifest is already stored (pulled by digest earlier).
    let child = ManifestRef::Digest(Digest::sha256_of(CHILD));
    s.manifest(&child, &[]).await.unwrap();
    let gets = s.upstream.calls().manifest_get();

    let narrow = accept(&[DOCKER_MANIFEST]);
    let response = s.manifest(&tag("3.20"), &narrow).await.unwrap();
    assert_eq!(response.outcome, CacheOutcome::Revalidated);
    assert_eq!(response.bytes.as_ref(), CHILD);
    assert_eq!(s.upstream.calls().manifest_head(), 1);
    assert_eq!(s.upstream.calls().manifest_get(), gets);
    // A narrow answer never becomes the tag's record.
    assert!(s.storage.tag_get(&tag_key("3.20")).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_manifest_misses_make_one_fetch() {
    let s = setup(CacheOptions::default());
    s.upstream
        .set_tag("docker.io", "library/alpine", "3.20", &[(OCI_INDEX, INDEX)]);
    s.upstream.set_manifest_delay(Duration::from_millis(100));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let engine = s.engine.clone();
        clients.push(tokio::spawn(async move {
            engine
                .manifest(&hub(), &repo(), &tag("3.20"), &broad())
                .await
                .unwrap()
        }));
    }
    let mut misses = 0;
    for client in clients {
        let response = client.await.unwrap();
        assert_eq!(response.bytes.as_ref(), INDEX);
        misses += usize::from(response.outcome == CacheOutcome::Miss);
    }
    assert_eq!(misses, 1);
    assert_eq!(s.upstream.calls().manifest_get(), 1);
}

#[tokio::test]
async fn manifest_fetch_finishes_when_the_client_gives_up() {
    let s = setup(CacheOptions::default());
    s.upstream
        .set_tag("docker.io", "library/alpine", "3.20", &[(OCI_INDEX, INDEX)]);
    s.upstream.set_manifest_delay(Duration::from_millis(50));
    let gave_up =
        tokio::time::timeout(Duration::from_millis(5), s.manifest(&tag("3.20"), &broad())).await;
    assert!(gave_up.is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.storage.tag_get(&tag_key("3.20")).await.unwrap().is_some());
    let hit = s.manifest_by_tag("3.20").await;
    assert_eq!(hit.outcome, CacheOutcome::Hit);
    assert_eq!(s.upstream.calls().manifest_get(), 1);
}

impl Setup {
    async fn manifest_head(
        &self,
        reference: &ManifestRef,
    ) -> Result<crate::cache::ManifestHeadResponse> {
        self.engine
            .manifest_head(&hub(), &repo(), reference, &broad())
            .await
    }
}

#[tokio::test]
async fn head_on_a_cold_manifest_asks_upstream_head_only_and_stores_nothing() {
    let s = setup(CacheOptions::default());
    s.upstream
        .set_tag("docker.io", "library/alpine", "3.20", &[(OCI_INDEX, INDEX)]);
    let digest = Digest::sha256_of(INDEX);
    let by_digest = ManifestRef::Digest(digest.clone());

    for (reference, heads) in [(tag("3.20"), 1), (by_digest.clone(), 2)] {
        let head = s.manifest_head(&reference).await.unwrap();
        assert_eq!(head.outcome, CacheOutcome::Miss);
        assert_eq!(
            (&head.digest, head.media_type.as_str(), head.size),
            (&digest, OCI_INDEX, INDEX.len() as u64)
        );
        assert_eq!(s.manifest_calls(), (heads, 0), "{reference}: no GET");
    }
    assert!(s.storage.manifest_get(&digest).await.unwrap().is_none());
    assert!(s.storage.tag_get(&tag_key("3.20")).await.unwrap().is_none());

    // The later GET fetches the body once; then HEAD and GET are hits.
    let got = s.manifest_by_tag("3.20").await;
    assert_eq!(
        (got.outcome, got.bytes.as_ref()),
        (CacheOutcome::Miss, INDEX)
    );
    assert_eq!(s.manifest_calls(), (2, 1));
    for reference in [tag("3.20"), by_digest.clone()] {
        let head = s.manifest_head(&reference).await.unwrap();
        assert_eq!(head.outcome, CacheOutcome::Hit);
        assert_eq!(head.size, INDEX.len() as u64);
    }
    let hit = s.manifest(&by_digest, &broad()).await.unwrap();
    assert_eq!(hit.outcome, CacheOutcome::Hit);
    assert_eq!(s.manifest_calls(), (2, 1));
}

#[tokio::test]
async fn head_on_a_cold_manifest_goes_the_get_way_when_upstream_head_lacks_the_digest() {
    let s = setup(CacheOptions::default());
    s.upstream
        .set_tag("docker.io", "library/alpine", "3.20", &[(OCI_INDEX, INDEX)]);
    s.upstream.set_head_without_digest(true);
    let head = s.manifest_head(&tag("3.20")).await.unwrap();
    assert_eq!(head.outcome, CacheOutcome::Miss);
    assert_eq!(head.digest, Digest::sha256_of(INDEX));
    assert_eq!(s.manifest_calls(), (1, 1));
    // What the GET fetched was verified and stored.
    let stored = s.storage.manifest_get(&head.digest).await.unwrap().unwrap();
    assert_eq!(stored.bytes.as_ref(), INDEX);
}

#[tokio::test]
async fn head_on_a_missing_manifest_is_not_found_without_a_get() {
    let s = setup(CacheOptions::default());
    let err = s.manifest_head(&tag("nope")).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(s.manifest_calls(), (1, 0));
}

#[tokio::test]
async fn head_on_a_cold_manifest_with_upstream_down_fails_without_a_get() {
    let s = setup(CacheOptions::default());
    s.upstream
        .set_tag("docker.io", "library/alpine", "3.20", &[(OCI_INDEX, INDEX)]);
    s.upstream.fail_with(Some(UpstreamErrorKind::Unavailable));
    let err = s.manifest_head(&tag("3.20")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Upstream(e) if e.kind() == UpstreamErrorKind::Unavailable),
        "{err}"
    );
    assert_eq!(s.manifest_calls(), (1, 0));
}

#[tokio::test]
async fn head_on_a_stale_tag_revalidates_with_head_only() {
    let s = setup(CacheOptions::default().with_tag_ttl(Duration::ZERO));
    s.upstream
        .set_tag("docker.io", "library/alpine", "3.20", &[(OCI_INDEX, INDEX)]);
    s.manifest_by_tag("3.20").await;
    assert_eq!(s.manifest_calls(), (0, 1));
    let head = s.manifest_head(&tag("3.20")).await.unwrap();
    assert_eq!(head.outcome, CacheOutcome::Revalidated);
    assert_eq!(s.manifest_calls(), (1, 1));
}

/// Replicas on one bucket whose clocks disagree (issue 24): an engine with
/// a 300 s tag TTL that has cached `name`, and the tag's record.
async fn cached_tag(name: &str) -> (Setup, TagRecord) {
    let s = setup(CacheOptions::default().with_tag_ttl(Duration::from_secs(300)));
    s.upstream
        .set_tag("docker.io", "library/alpine", name, &[(OCI_INDEX, INDEX)]);
    s.manifest_by_tag(name).await;
    let record = s.storage.tag_get(&tag_key(name)).await.unwrap().unwrap();
    (s, record)
}

#[tokio::test]
async fn a_tag_checked_by_a_replica_whose_clock_is_ahead_is_not_revalidated() {
    let (s, record) = cached_tag("3.20").await;
    // Written by a replica 60 s ahead.
    let ahead = TagRecord {
        checked_at: SystemTime::now() + Duration::from_secs(60),
        ..record
    };
    s.storage.tag_put(&tag_key("3.20"), &ahead).await.unwrap();
    assert_eq!(s.manifest_by_tag("3.20").await.outcome, CacheOutcome::Hit);
    assert_eq!(s.manifest_calls(), (0, 1));
}

#[tokio::test]
async fn a_replica_revalidates_a_tag_once_per_ttl_whatever_the_other_clocks_write() {
    let (s, record) = cached_tag("3.20").await;
    // Another replica, two hours behind, keeps writing what it sees as now.
    let behind = TagRecord {
        checked_at: SystemTime::now() - Duration::from_secs(7200),
        ..record
    };
    for round in 0..3 {
        s.storage.tag_put(&tag_key("3.20"), &behind).await.unwrap();
        let served = s.manifest_by_tag("3.20").await;
        assert_eq!(served.bytes.as_ref(), INDEX, "round {round}");
    }
    assert_eq!(s.manifest_calls(), (1, 1), "one HEAD, not one per request");
}

#[tokio::test]
async fn a_revalidation_keeps_the_record_another_replica_wrote_meanwhile() {
    let (s, record) = cached_tag("latest").await;
    let stale = TagRecord {
        checked_at: SystemTime::now() - Duration::from_secs(3600),
        ..record
    };
    s.storage.tag_put(&tag_key("latest"), &stale).await.unwrap();
    let moved: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}"#;
    s.upstream.set_tag(
        "docker.io",
        "library/alpine",
        "latest",
        &[(OCI_INDEX, moved)],
    );
    s.upstream.set_manifest_delay(Duration::from_millis(200));

    let request = s.manifest_by_tag("latest");
    let other_replica = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let newer = TagRecord {
            digest: Digest::sha256_of(moved),
            media_type: OCI_INDEX.to_owned(),
            checked_at: SystemTime::now() - Duration::from_secs(30),
        };
        s.storage.tag_put(&tag_key("latest"), &newer).await.unwrap();
        newer
    };
    let (served, newer) = tokio::join!(request, other_replica);
    assert_eq!(served.bytes.as_ref(), moved);
    let kept = s
        .storage
        .tag_get(&tag_key("latest"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept, newer, "the other replica's record is not overwritten");
}
