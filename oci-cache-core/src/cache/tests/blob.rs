//! Blob fills: single flight, spooling, verification, ranges, storage failures.

use super::*;
use crate::testing::{DiskState, FaultyStorage};

#[tokio::test]
async fn blob_miss_streams_stores_then_hits() {
    let s = setup(CacheOptions::default());
    let data = pattern(10_000);
    let digest = s.upstream.add_blob(BlobScript::new(&data));

    let miss = s.blob(&digest, None).await.unwrap();
    assert_eq!(miss.outcome, CacheOutcome::Miss);
    assert_eq!((miss.size, miss.range.clone()), (10_000, 0..10_000));
    assert_eq!(collect(miss.stream).await.unwrap(), data);
    fills_settled(&s.engine).await;
    assert_eq!(stored_blob(&s.storage, &digest).await.unwrap(), data);

    let hit = s.blob(&digest, None).await.unwrap();
    assert_eq!(hit.outcome, CacheOutcome::Hit);
    assert_eq!(collect(hit.stream).await.unwrap(), data);
    assert_eq!(s.upstream.calls().blob_get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_misses_make_one_fetch() {
    let s = setup(CacheOptions::default());
    let data = pattern(200_000);
    let gate = Arc::new(Semaphore::new(0));
    let digest = s
        .upstream
        .add_blob(BlobScript::new(&data).chunk(4096).gated(&gate));

    let (joined_tx, mut joined_rx) = tokio::sync::mpsc::channel(16);
    let mut clients = Vec::new();
    for _ in 0..16 {
        let engine = s.engine.clone();
        let digest = digest.clone();
        let joined = joined_tx.clone();
        clients.push(tokio::spawn(async move {
            let response = engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
            joined.send(()).await.unwrap();
            (response.outcome, collect(response.stream).await.unwrap())
        }));
    }
    for _ in 0..16 {
        joined_rx.recv().await.unwrap();
    }
    // Every client has its response before a single byte arrived upstream.
    gate.add_permits(usize::MAX >> 4);
    let mut misses = 0;
    for client in clients {
        let (outcome, bytes) = client.await.unwrap();
        assert_eq!(bytes, data);
        misses += usize::from(outcome == CacheOutcome::Miss);
    }
    assert_eq!(misses, 1);
    assert_eq!(s.upstream.calls().blob_get(), 1);
    fills_settled(&s.engine).await;
    assert_eq!(stored_blob(&s.storage, &digest).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_reads_spooled_bytes_then_follows_live() {
    // A 4 KiB window against a 64 KiB blob: most of what the late joiner needs
    // has already left memory for the spool.
    let s = setup(CacheOptions::default().with_fill_window(4096));
    let data = pattern(64 * 1024);
    let gate = Arc::new(Semaphore::new(0));
    let digest = s
        .upstream
        .add_blob(BlobScript::new(&data).chunk(1024).gated(&gate));

    let first = s.blob(&digest, None).await.unwrap();
    let mut first_stream = first.stream;
    gate.add_permits(40);
    let mut early = Vec::new();
    while early.len() < 40 * 1024 {
        early.extend_from_slice(&first_stream.next().await.unwrap().unwrap());
    }

    let late = s.blob(&digest, None).await.unwrap();
    assert_eq!(late.outcome, CacheOutcome::Coalesced);
    let late_task = tokio::spawn(collect(late.stream));
    gate.add_permits(24);
    early.extend(collect(first_stream).await.unwrap());
    assert_eq!(early, data);
    assert_eq!(late_task.await.unwrap().unwrap(), data);
    assert_eq!(s.upstream.calls().blob_get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blob_through_a_small_window_is_byte_exact_for_every_reader() {
    let s = setup(CacheOptions::default().with_fill_window(8 * 1024));
    let data = pattern(3 * 1024 * 1024 + 17);
    let digest = s.upstream.add_blob(BlobScript::new(&data).chunk(16 * 1024));
    let mut readers = Vec::new();
    for i in 0..4u64 {
        let engine = s.engine.clone();
        let digest = digest.clone();
        readers.push(tokio::spawn(async move {
            // Staggered joins land at different points of the fill.
            tokio::time::sleep(Duration::from_millis(i * 3)).await;
            let response = engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
            collect(response.stream).await.unwrap()
        }));
    }
    for reader in readers {
        assert!(reader.await.unwrap() == data);
    }
    fills_settled(&s.engine).await;
    assert!(stored_blob(&s.storage, &digest).await.unwrap() == data);
}

#[tokio::test]
async fn fill_completes_and_stores_when_the_first_client_leaves() {
    let s = setup(CacheOptions::default());
    let data = pattern(50_000);
    let gate = Arc::new(Semaphore::new(0));
    let digest = s
        .upstream
        .add_blob(BlobScript::new(&data).chunk(1000).gated(&gate));

    let response = s.blob(&digest, None).await.unwrap();
    let mut stream = response.stream;
    gate.add_permits(1);
    assert_eq!(stream.next().await.unwrap().unwrap().len(), 1000);
    drop(stream);
    gate.add_permits(1000);
    fills_settled(&s.engine).await;
    assert_eq!(stored_blob(&s.storage, &digest).await.unwrap(), data);
    assert_eq!(s.upstream.calls().blob_get(), 1);
}

#[tokio::test]
async fn wrong_digest_is_never_stored_and_the_next_request_refetches() {
    let s = setup(CacheOptions::default());
    let data = pattern(5000);
    let digest = s.upstream.add_blob(BlobScript::new(&data));
    // Upstream now answers that digest with other bytes of the same length.
    // Gated, so the client holds its response (headers sent) before bytes flow:
    // the error must arrive in the stream, after the bytes.
    let gate = Arc::new(Semaphore::new(0));
    s.upstream
        .add_blob_as(&digest, BlobScript::new(&[7u8; 5000]).gated(&gate));
    let response = s.blob(&digest, None).await.unwrap();
    gate.add_permits(100);
    let err = collect(response.stream).await.unwrap_err();
    assert!(
        matches!(err, Error::DigestMismatch { ref expected, .. } if *expected == digest),
        "{err}"
    );
    fills_settled(&s.engine).await;
    assert!(stored_blob(&s.storage, &digest).await.is_none());

    // Upstream fixed: a clean retry, not a cached failure.
    s.upstream.add_blob(BlobScript::new(&data));
    let retry = s.blob(&digest, None).await.unwrap();
    assert_eq!(retry.outcome, CacheOutcome::Miss);
    assert_eq!(collect(retry.stream).await.unwrap(), data);
    assert_eq!(s.upstream.calls().blob_get(), 2);
    fills_settled(&s.engine).await;
    assert_eq!(stored_blob(&s.storage, &digest).await.unwrap(), data);
}

/// Faults that asking again does not mend (every answer ends at the same
/// byte): the fill gives up after its attempts. Cuts a range mends are in `resume`.
#[tokio::test]
async fn truncated_or_reset_body_errors_and_stores_nothing() {
    let s = setup(one_connection());
    let data = pattern(8000);
    let digest = s
        .upstream
        .add_blob(BlobScript::new(&data).truncate_at(6000));
    let err = blob_bytes(&s.engine, &digest).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::SizeMismatch {
                expected: 8000,
                actual: 6000,
                ..
            }
        ),
        "{err}"
    );

    let data2 = pattern(9000);
    let digest2 = s.upstream.add_blob(BlobScript::new(&data2).reset_at(4096));
    let err = blob_bytes(&s.engine, &digest2).await.unwrap_err();
    assert!(
        matches!(&err, Error::Upstream(e) if e.kind() == UpstreamErrorKind::Unavailable),
        "{err}"
    );

    // Too long for the announced size fails as soon as the excess arrives.
    let data3 = pattern(3000);
    let digest3 = s
        .upstream
        .add_blob(BlobScript::new(&data3).announce(Some(2000)));
    let err = blob_bytes(&s.engine, &digest3).await.unwrap_err();
    assert!(
        matches!(err, Error::SizeMismatch { expected: 2000, .. }),
        "{err}"
    );

    fills_settled(&s.engine).await;
    for d in [&digest, &digest2, &digest3] {
        assert!(stored_blob(&s.storage, d).await.is_none());
    }
}

#[tokio::test]
async fn range_on_a_miss_is_served_from_the_single_fill() {
    let s = setup(CacheOptions::default());
    let data = pattern(10_000);
    let digest = s.upstream.add_blob(BlobScript::new(&data).chunk(700));

    let response = s.blob(&digest, Some(1234..5678)).await.unwrap();
    assert_eq!(response.outcome, CacheOutcome::Miss);
    assert_eq!(
        (response.size, response.range.clone()),
        (10_000, 1234..5678)
    );
    assert_eq!(collect(response.stream).await.unwrap(), data[1234..5678]);

    // An end past the size is clamped; a start past it is refused.
    fills_settled(&s.engine).await;
    let tail = s.blob(&digest, Some(9990..20_000)).await.unwrap();
    assert_eq!(tail.range, 9990..10_000);
    assert_eq!(collect(tail.stream).await.unwrap(), data[9990..]);
    assert_eq!(s.upstream.calls().blob_get(), 1);

    let digest2 = s.upstream.add_blob(BlobScript::new(&pattern(100)));
    let err = s.blob(&digest2, Some(100..200)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::RangeNotSatisfiable {
                start: 100,
                size: 100
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn blob_without_content_length_is_served_after_verification() {
    let s = setup(CacheOptions::default());
    let data = pattern(3000);
    let digest = s.upstream.add_blob(BlobScript::new(&data).announce(None));
    let response = s.blob(&digest, None).await.unwrap();
    assert_eq!(response.size, 3000);
    assert_eq!(collect(response.stream).await.unwrap(), data);
}

#[tokio::test]
async fn missing_blob_is_not_found_and_not_remembered() {
    let s = setup(CacheOptions::default());
    let digest = Digest::sha256_of(b"nowhere");
    for attempt in 1..=2 {
        let err = s.blob(&digest, None).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        fills_settled(&s.engine).await;
        assert_eq!(s.upstream.calls().blob_get(), attempt);
    }
}

#[tokio::test]
async fn blob_size_from_storage_fill_or_upstream_head() {
    let s = setup(CacheOptions::default());
    let data = pattern(4321);
    let gate = Arc::new(Semaphore::new(0));
    let digest = s.upstream.add_blob(BlobScript::new(&data).gated(&gate));

    assert_eq!(
        s.engine.blob_size(&hub(), &repo(), &digest).await.unwrap(),
        (4321, CacheOutcome::Miss)
    );
    let response = s.blob(&digest, None).await.unwrap();
    assert_eq!(
        s.engine.blob_size(&hub(), &repo(), &digest).await.unwrap(),
        (4321, CacheOutcome::Coalesced)
    );
    gate.add_permits(100);
    collect(response.stream).await.unwrap();
    fills_settled(&s.engine).await;
    assert_eq!(
        s.engine.blob_size(&hub(), &repo(), &digest).await.unwrap(),
        (4321, CacheOutcome::Hit)
    );
    assert_eq!(s.upstream.calls().blob_head(), 1);
    assert!(stored_blob(&s.storage, &Digest::sha256_of(b"x"))
        .await
        .is_none());
}

#[tokio::test]
async fn storage_failure_still_serves_verified_bytes_and_retries_later() {
    let upstream = Arc::new(FakeUpstream::default());
    let data = pattern(20_000);
    let digest = upstream.add_blob(BlobScript::new(&data));
    // A full disk: blob writes take a little, then fail.
    let storage = Arc::new(FaultyStorage::new());
    storage.set_state(DiskState::Full);
    let engine = PullThrough::new(storage, Arc::clone(&upstream), CacheOptions::default());
    for attempt in 1..=2 {
        let response = engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
        assert_eq!(response.outcome, CacheOutcome::Miss);
        assert_eq!(collect(response.stream).await.unwrap(), data);
        tokio::time::timeout(Duration::from_secs(10), async {
            while engine.blob_fills_in_flight() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(upstream.calls().blob_get(), attempt);
    }
}
