//! Hostile upstreams and clients (issue 17): unverified bytes are never a
//! complete answer, one client's repository cannot fail another's request,
//! and a panicking fetch does not wedge its key.

use super::*;

/// Everything a stream yields before it ends, and the error it ended with.
async fn drain(mut stream: ByteStream) -> (Vec<u8>, Option<Error>) {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

fn at(repository: &str) -> Repository {
    Repository::new(repository).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_of_the_right_length_never_reach_a_client_complete() {
    // A busy disk: the fill waits on the storage write after handing the last
    // chunk to its clients, so the verdict comes well after the last byte
    // arrived (without the hold-back, clients had every byte by then).
    let s = super::degrade::degraded(CacheOptions::default().with_fill_window(4096));
    s.storage.set_slow(Some(Duration::from_millis(20)));
    let data = pattern(50_000);
    let digest = Digest::sha256_of(&data);
    let gate = Arc::new(Semaphore::new(0));
    let lie = vec![7u8; 50_000];
    s.upstream
        .add_blob_as(&digest, BlobScript::new(&lie).chunk(1000).gated(&gate));

    // The leader, a joiner, a range with the end, and a range before the end.
    let ranges = [None, None, Some(40_000..50_000), Some(100..2000)];
    let mut responses = Vec::new();
    for range in ranges {
        responses.push(
            s.engine
                .blob(&hub(), &repo(), &digest, range)
                .await
                .unwrap(),
        );
    }
    assert_eq!(responses[1].outcome, CacheOutcome::Coalesced);
    gate.add_permits(1000);
    for response in responses {
        let wanted = response.range.end - response.range.start;
        let (bytes, error) = drain(response.stream).await;
        assert!(
            (bytes.len() as u64) < wanted,
            "range {:?}: all {wanted} bytes were handed over before the verdict",
            response.range
        );
        let error = error.expect("the stream must end with the verification error");
        assert!(matches!(error, Error::DigestMismatch { .. }), "{error}");
    }
    assert!(s.storage.blob_stat(&digest).await.unwrap().is_none());
}

#[tokio::test]
async fn a_body_without_length_is_cut_at_max_blob_size() {
    let s = setup(one_connection().with_max_blob_size(10_000));
    // An endless body stands for one far over the cap.
    let digest = s
        .upstream
        .add_blob(BlobScript::new(&pattern(200_000)).announce(None));
    let err = blob_bytes(&s.engine, &digest).await.unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit: 10_000, actual, .. } if actual <= 11_024),
        "{err}"
    );
    // An announced length over the cap is refused before any byte is read.
    let digest2 = s.upstream.add_blob(BlobScript::new(&pattern(20_000)));
    let err = blob_bytes(&s.engine, &digest2).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                limit: 10_000,
                actual: 20_000,
                ..
            }
        ),
        "{err}"
    );
    fills_settled(&s.engine).await;
    assert!(stored_blob(&s.storage, &digest).await.is_none());
    assert!(stored_blob(&s.storage, &digest2).await.is_none());
}

/// Attackers ask for a digest through a repository that fails it (after a
/// delay, so victims join their fill); victims ask through one that has it.
async fn victims_survive(kind: UpstreamErrorKind) {
    let s = setup(CacheOptions::default());
    let data = pattern(30_000);
    let digest = s
        .upstream
        .add_blob_at("docker.io", "good/app", BlobScript::new(&data));
    s.upstream.add_blob_at_as(
        "docker.io",
        "evil/app",
        &digest,
        BlobScript::new(b"").fail_after(kind, Duration::from_millis(300)),
    );
    let mut attackers = Vec::new();
    let mut victims = Vec::new();
    for round in 0..4 {
        let engine = s.engine.clone();
        let d = digest.clone();
        attackers.push(tokio::spawn(async move {
            let response = engine.blob(&hub(), &at("evil/app"), &d, None).await?;
            collect(response.stream).await
        }));
        // The first attacker leads; every victim joins an attacker's fill.
        tokio::time::sleep(Duration::from_millis(if round == 0 { 50 } else { 5 })).await;
        let engine = s.engine.clone();
        let d = digest.clone();
        victims.push(tokio::spawn(async move {
            let response = engine.blob(&hub(), &at("good/app"), &d, None).await?;
            collect(response.stream).await
        }));
    }
    for victim in victims {
        let bytes = victim
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{kind:?}: victim failed: {e}"));
        assert!(bytes == data, "{kind:?}: victim got wrong bytes");
    }
    for attacker in attackers {
        // Attackers that started after the victim's fill may be served by it;
        // the ones that led get their own repository's answer.
        if let Err(e) = attacker.await.unwrap() {
            assert!(matches!(&e, Error::Upstream(u) if u.kind() == kind), "{e}");
        }
    }
    fills_settled(&s.engine).await;
    assert_eq!(stored_blob(&s.storage, &digest).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_request_retries_through_its_own_repository() {
    for kind in [
        UpstreamErrorKind::NotFound,
        UpstreamErrorKind::Denied,
        UpstreamErrorKind::Unauthorized,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Unavailable,
    ] {
        victims_survive(kind).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_reset_mid_body_continues_for_a_victim_through_its_own_repository() {
    let s = setup(CacheOptions::default().with_fill_window(4096));
    let data = pattern(40_000);
    let gate = Arc::new(Semaphore::new(0));
    let digest = s
        .upstream
        .add_blob_at("docker.io", "good/app", BlobScript::new(&data));
    s.upstream.add_blob_at_as(
        "docker.io",
        "evil/app",
        &digest,
        BlobScript::new(&data)
            .chunk(1000)
            .reset_at(20_000)
            .gated(&gate),
    );
    let attacker = s
        .engine
        .blob(&hub(), &at("evil/app"), &digest, None)
        .await
        .unwrap();
    let victim = s
        .engine
        .blob(&hub(), &at("good/app"), &digest, None)
        .await
        .unwrap();
    assert_eq!(victim.outcome, CacheOutcome::Coalesced);
    gate.add_permits(1000);
    let (victim_bytes, attacker_result) =
        tokio::join!(collect(victim.stream), drain(attacker.stream));
    assert!(victim_bytes.unwrap() == data);
    let err = attacker_result.1.expect("the attacker's own fill fails");
    assert!(
        matches!(&err, Error::Upstream(e) if e.kind() == UpstreamErrorKind::Unavailable),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_is_shared_with_joined_requests() {
    // Only failures of the bytes themselves are shared: the digest names the
    // content, so wrong bytes for it are wrong for every repository.
    let s = setup(CacheOptions::default());
    let data = pattern(10_000);
    let gate = Arc::new(Semaphore::new(0));
    let digest = s
        .upstream
        .add_blob_at("docker.io", "good/app", BlobScript::new(&data));
    s.upstream.add_blob_at_as(
        "docker.io",
        "evil/app",
        &digest,
        BlobScript::new(&[1u8; 10_000]).gated(&gate),
    );
    let attacker = s
        .engine
        .blob(&hub(), &at("evil/app"), &digest, None)
        .await
        .unwrap();
    let victim = s
        .engine
        .blob(&hub(), &at("good/app"), &digest, None)
        .await
        .unwrap();
    gate.add_permits(100);
    let (victim, _) = tokio::join!(drain(victim.stream), drain(attacker.stream));
    assert!(matches!(victim.1, Some(Error::DigestMismatch { .. })));
    assert_eq!(s.upstream.calls().blob_get(), 1);
}

#[tokio::test]
async fn a_panicking_manifest_fetch_does_not_wedge_its_key() {
    let s = setup(CacheOptions::default());
    let digest = s
        .upstream
        .add_manifest("docker.io", "library/alpine", "3", OCI_INDEX, INDEX);
    s.upstream.panic_next();
    let by_digest = ManifestRef::Digest(digest.clone());
    let err = s.manifest(&by_digest, &broad()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Upstream(e) if e.kind() == UpstreamErrorKind::Unavailable),
        "{err}"
    );
    assert_eq!(s.engine.inner.manifest_flights.in_flight(), 0);
    // The very next request fetches afresh instead of answering 503 forever.
    let served = s.manifest(&by_digest, &broad()).await.unwrap();
    assert_eq!(served.bytes.as_ref(), INDEX);
    s.upstream.panic_next();
    assert!(s.manifest(&tag("3"), &broad()).await.is_err());
    assert_eq!(s.manifest_by_tag("3").await.digest, digest);
}

#[tokio::test]
async fn a_panicking_blob_fetch_does_not_wedge_its_digest() {
    let s = setup(CacheOptions::default());
    let data = pattern(5000);
    let digest = s.upstream.add_blob(BlobScript::new(&data));
    s.upstream.panic_next();
    assert!(blob_bytes(&s.engine, &digest).await.is_err());
    fills_settled(&s.engine).await;
    assert_eq!(blob_bytes(&s.engine, &digest).await.unwrap(), data);
}
