//! Serving another replica: only a fill under way or a stored blob, never upstream.

use super::*;

#[tokio::test]
async fn peer_asking_for_an_unknown_blob_gets_nothing_and_upstream_is_not_asked() {
    let s = setup(CacheOptions::default());
    let digest = s.upstream.add_blob(BlobScript::new(&pattern(1000)));

    assert!(s
        .engine
        .blob_for_peer(&digest, None)
        .await
        .unwrap()
        .is_none());
    assert_eq!(s.upstream.calls().total(), 0);
    assert_eq!(s.engine.blob_fills_in_flight(), 0);
}

#[tokio::test]
async fn peer_gets_a_stored_blob_and_ranges_of_it() {
    let s = setup(CacheOptions::default());
    let data = pattern(10_000);
    let digest = s.upstream.add_blob(BlobScript::new(&data));
    blob_bytes(&s.engine, &digest).await.unwrap();
    fills_settled(&s.engine).await;

    let whole = s
        .engine
        .blob_for_peer(&digest, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(whole.outcome, CacheOutcome::Hit);
    assert_eq!(collect(whole.stream).await.unwrap(), data);
    let tail = s
        .engine
        .blob_for_peer(&digest, Some(4000..10_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tail.range, 4000..10_000);
    assert_eq!(collect(tail.stream).await.unwrap(), &data[4000..]);
    assert_eq!(s.upstream.calls().blob_get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_joins_the_fill_under_way_from_its_spool_and_follows_it_live() {
    let s = setup(CacheOptions::default().with_fill_window(4096));
    let data = pattern(64 * 1024);
    let gate = Arc::new(Semaphore::new(0));
    let digest = s
        .upstream
        .add_blob(BlobScript::new(&data).chunk(1024).gated(&gate));

    let client = s.blob(&digest, None).await.unwrap();
    let mut client_stream = client.stream;
    gate.add_permits(40);
    // The fill is well past the window when the client has 40 KiB, so the
    // peer starts in the spool.
    let mut early = Vec::new();
    while early.len() < 40 * 1024 {
        early.extend_from_slice(&client_stream.next().await.unwrap().unwrap());
    }
    let peer = s
        .engine
        .blob_for_peer(&digest, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peer.outcome, CacheOutcome::Coalesced);
    assert_eq!(peer.size, data.len() as u64);
    let peer = tokio::spawn(collect(peer.stream));
    gate.add_permits(usize::MAX >> 4);
    assert_eq!(peer.await.unwrap().unwrap(), data);
    early.extend(collect(client_stream).await.unwrap());
    assert_eq!(early, data);
    assert_eq!(s.upstream.calls().blob_get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_stream_of_a_fill_that_fails_verification_ends_with_the_error() {
    let s = setup(CacheOptions::default());
    let data = pattern(8192);
    let digest = Digest::sha256_of(b"something else");
    let gate = Arc::new(Semaphore::new(0));
    s.upstream
        .add_blob_as(&digest, BlobScript::new(&data).chunk(1024).gated(&gate));

    let client = s.blob(&digest, None).await.unwrap();
    let client = tokio::spawn(collect(client.stream));
    while s.engine.inner.blob_fills.known_size(&digest).is_none() {
        tokio::task::yield_now().await;
    }
    let peer = s
        .engine
        .blob_for_peer(&digest, None)
        .await
        .unwrap()
        .unwrap();
    let peer = tokio::spawn(collect(peer.stream));
    gate.add_permits(usize::MAX >> 4);
    assert!(peer.await.unwrap().unwrap_err().is_content_failure());
    assert!(client.await.unwrap().is_err());
    fills_settled(&s.engine).await;
    assert!(s
        .engine
        .blob_for_peer(&digest, None)
        .await
        .unwrap()
        .is_none());
    assert_eq!(s.upstream.calls().blob_get(), 1);
}
