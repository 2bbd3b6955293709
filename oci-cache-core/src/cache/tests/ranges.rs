//! Ranges on cold blobs: answered from the fill once it passed them, or,
//! far ahead of it, forwarded upstream while the one fill runs.

use super::*;

const MIB: usize = 1024 * 1024;

/// A blob served in 64 KiB chunks, 2 ms apart: the fill takes a while, so
/// ranges far ahead of it are worth forwarding.
fn slow_blob(len: usize) -> (Vec<u8>, BlobScript) {
    let data = pattern(len);
    let script = BlobScript::new(&data)
        .chunk(64 * 1024)
        .paced(Duration::from_millis(2));
    (data, script)
}

/// The ranges upstream was asked for with an end (forwarded client ranges).
fn forwarded(upstream: &FakeUpstream) -> Vec<Range<u64>> {
    upstream
        .blob_ranges()
        .into_iter()
        .filter_map(|r| r.end.map(|end| r.offset..end))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_range_far_ahead_is_forwarded_while_one_fill_runs() {
    let s = setup(one_connection());
    let (data, script) = slow_blob(16 * MIB);
    let digest = s.upstream.add_blob(script.clone());
    let tail = (15 * MIB) as u64..(16 * MIB) as u64;

    let response = s.blob(&digest, Some(tail.clone())).await.unwrap();
    assert_eq!(
        (response.size, response.range.clone()),
        (16 * MIB as u64, tail.clone())
    );
    assert_eq!(collect(response.stream).await.unwrap(), data[15 * MIB..]);
    assert_eq!(forwarded(&s.upstream), vec![tail]);

    // The full fill ran alongside and stored the verified blob.
    fills_settled(&s.engine).await;
    assert_eq!(stored_blob(&s.storage, &digest).await.unwrap(), data);
    assert_eq!(s.upstream.calls().blob_get(), 2, "one fill and one range");
    assert_eq!(script.bytes_sent(), 17 * MIB as u64);

    // Afterwards it is a hit, ranged or whole, with no upstream blob request.
    let hit = s.blob(&digest, Some(100..200)).await.unwrap();
    assert_eq!(hit.outcome, CacheOutcome::Hit);
    assert_eq!(collect(hit.stream).await.unwrap(), data[100..200]);
    assert_eq!(blob_bytes(&s.engine, &digest).await.unwrap(), data);
    assert_eq!(s.upstream.calls().blob_get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_slices_of_a_cold_blob_cost_one_fill_and_few_ranges() {
    let s = setup(one_connection());
    let size = 32 * MIB;
    let slice = 4 * MIB;
    let (data, script) = slow_blob(size);
    let digest = s.upstream.add_blob(script.clone());

    let mut clients = Vec::new();
    for start in (0..size).step_by(slice) {
        let engine = s.engine.clone();
        let digest = digest.clone();
        let range = start as u64..(start + slice) as u64;
        clients.push(tokio::spawn(async move {
            let response = engine.blob(&hub(), &repo(), &digest, Some(range)).await?;
            collect(response.stream).await
        }));
    }
    for (i, client) in clients.into_iter().enumerate() {
        let bytes = client.await.unwrap().unwrap();
        assert!(
            bytes == data[i * slice..(i + 1) * slice],
            "slice {i} differs"
        );
    }
    fills_settled(&s.engine).await;
    assert_eq!(stored_blob(&s.storage, &digest).await.unwrap(), data);

    let sent = script.bytes_sent();
    assert!(
        sent * 10 <= size as u64 * 13,
        "upstream sent {sent} bytes for a {size}-byte blob"
    );
    let ranges = forwarded(&s.upstream);
    assert!(!ranges.is_empty(), "no slice was forwarded: {ranges:?}");
    assert_eq!(
        s.upstream.calls().blob_get(),
        1 + ranges.len(),
        "one fill plus the forwarded slices"
    );

    let calls = s.upstream.calls().blob_get();
    assert_eq!(blob_bytes(&s.engine, &digest).await.unwrap(), data);
    assert_eq!(s.upstream.calls().blob_get(), calls, "a hit afterwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_behind_the_fill_is_answered_before_the_blob_is_verified() {
    let s = setup(one_connection());
    let data = pattern(10_000);
    let gate = Arc::new(Semaphore::new(2));
    let digest = s
        .upstream
        .add_blob(BlobScript::new(&data).chunk(700).gated(&gate));

    // Two chunks (1400 bytes) arrived; the rest of the blob has not.
    let head = s.blob(&digest, Some(0..1000)).await.unwrap();
    let bytes = tokio::time::timeout(Duration::from_secs(5), collect(head.stream))
        .await
        .expect("the range waited for the whole blob")
        .unwrap();
    assert_eq!(bytes, data[..1000]);
    assert!(
        forwarded(&s.upstream).is_empty(),
        "near the fill: not forwarded"
    );

    // A range up to the blob's end still gets its last byte only once verified.
    let tail = s.blob(&digest, Some(9000..10_000)).await.unwrap();
    gate.add_permits(usize::MAX >> 4);
    assert_eq!(collect(tail.stream).await.unwrap(), data[9000..]);
    fills_settled(&s.engine).await;
    assert_eq!(stored_blob(&s.storage, &digest).await.unwrap(), data);
    assert_eq!(s.upstream.calls().blob_get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_range_answered_with_the_whole_blob_falls_back_to_the_fill() {
    let s = setup(one_connection());
    let (data, script) = slow_blob(8 * MIB);
    let digest = s.upstream.add_blob(script.ignore_ranges());
    let tail = (7 * MIB) as u64..(8 * MIB) as u64;

    let response = s.blob(&digest, Some(tail.clone())).await.unwrap();
    assert_eq!(collect(response.stream).await.unwrap(), data[7 * MIB..]);
    assert_eq!(forwarded(&s.upstream), vec![tail]);
    fills_settled(&s.engine).await;
    assert_eq!(stored_blob(&s.storage, &digest).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fill_on_range_a_cold_range_is_forwarded_alone_and_nothing_stored() {
    let s = setup(CacheOptions::default().with_fill_on_range(false));
    let (data, script) = slow_blob(4 * MIB);
    let digest = s.upstream.add_blob(script.clone());
    let slice = 1000u64..5000;

    let response = s.blob(&digest, Some(slice.clone())).await.unwrap();
    assert_eq!(
        (response.size, response.range.clone()),
        (4 * MIB as u64, slice.clone())
    );
    assert_eq!(response.outcome, CacheOutcome::Miss);
    assert_eq!(collect(response.stream).await.unwrap(), data[1000..5000]);
    // One ranged request, no fill: nothing stored, the next range asks again.
    fills_settled(&s.engine).await;
    assert_eq!(forwarded(&s.upstream), vec![slice.clone()]);
    assert_eq!(s.upstream.calls().blob_get(), 1);
    assert_eq!(stored_blob(&s.storage, &digest).await, None);
    let open_ended = s
        .blob(&digest, Some(4 * MIB as u64 - 10..u64::MAX))
        .await
        .unwrap();
    assert_eq!(
        collect(open_ended.stream).await.unwrap(),
        data[4 * MIB - 10..]
    );
    assert_eq!(s.upstream.calls().blob_get(), 2);

    // A whole-blob request still fills and stores; ranges are hits after.
    assert_eq!(blob_bytes(&s.engine, &digest).await.unwrap(), data);
    fills_settled(&s.engine).await;
    assert_eq!(stored_blob(&s.storage, &digest).await.unwrap(), data);
    let hit = s.blob(&digest, Some(slice)).await.unwrap();
    assert_eq!(hit.outcome, CacheOutcome::Hit);
}
