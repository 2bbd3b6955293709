//! A large cold blob over several ranged connections (issue 28).

use super::*;
use crate::testing::Cut;
use crate::upstream::BlobRange;

const MIB: usize = 1024 * 1024;

fn segmented() -> Setup {
    let segments = FillSegments::default()
        .with_connections(4)
        .with_min_size(MIB as u64);
    setup(CacheOptions::default().with_fill_segments(segments))
}

/// The ranges asked, as `start..end`, sorted; each must have an end.
fn spans(ranges: &[BlobRange]) -> Vec<std::ops::Range<u64>> {
    let mut spans: Vec<_> = ranges
        .iter()
        .map(|r| r.offset..r.end.expect("every GET of a segmented fill is bounded"))
        .collect();
    spans.sort_by_key(|r| r.start);
    spans
}

fn assert_tiles(spans: &[std::ops::Range<u64>], len: u64) {
    let mut at = 0;
    for span in spans {
        assert_eq!(span.start, at, "a gap or an overlap: {spans:?}");
        at = span.end;
    }
    assert_eq!(at, len, "{spans:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_blob_comes_in_parts_that_cover_it_once_and_is_stored_whole() {
    let s = segmented();
    let data = pattern(4 * MIB + 3000);
    let digest = s.upstream.add_blob(BlobScript::new(&data));
    let got = blob_bytes(&s.engine, &digest).await.unwrap();
    assert!(got == data, "the client got other bytes");
    fills_settled(&s.engine).await;
    assert!(stored_blob(&s.storage, &digest).await.as_deref() == Some(&data[..]));
    let ranges = s.upstream.blob_ranges();
    assert_eq!((ranges[0].offset, ranges[0].end), (0, Some(MIB as u64)));
    assert_eq!(ranges.len(), 4, "the first MiB and three parts: {ranges:?}");
    assert_tiles(&spans(&ranges), data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_first_answer_resumes_only_up_to_its_own_end() {
    let s = segmented();
    let data = pattern(4 * MIB + 3000);
    // Only the first answer (the first MiB) is cut.
    let digest = s
        .upstream
        .add_blob(BlobScript::new(&data).cut_every(500_000, Cut::Reset, 1));
    let got = blob_bytes(&s.engine, &digest).await.unwrap();
    assert!(got == data, "the client got other bytes");
    let mut spans = spans(&s.upstream.blob_ranges());
    let again = spans
        .iter()
        .position(|r| *r == (500_000..MIB as u64))
        .expect("the cut first answer is resumed up to its end, not beyond");
    spans.remove(again);
    assert_tiles(&spans, data.len() as u64);
}

#[tokio::test]
async fn an_upstream_that_ignores_the_range_is_read_on_one_connection() {
    let s = segmented();
    let data = pattern(3 * MIB);
    let digest = s.upstream.add_blob(BlobScript::new(&data).ignore_ranges());
    let got = blob_bytes(&s.engine, &digest).await.unwrap();
    assert!(got == data, "the client got other bytes");
    assert_eq!(s.upstream.blob_ranges().len(), 1, "one GET, answered whole");
}

#[tokio::test]
async fn a_blob_up_to_min_size_comes_in_the_first_answer() {
    let s = segmented();
    let data = pattern(MIB);
    let digest = s.upstream.add_blob(BlobScript::new(&data));
    let got = blob_bytes(&s.engine, &digest).await.unwrap();
    assert!(got == data, "the client got other bytes");
    assert_eq!(s.upstream.blob_ranges().len(), 1);
}

/// Waits (bounded) until `done` holds; whether it did.
async fn eventually(done: impl Fn() -> bool) -> bool {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_found_the_slots_taken_gets_workers_once_another_fill_frees_them() {
    // Two extra connections per upstream; blob A's workers take both and
    // stall until `gate_a` opens; blob B opens meanwhile, its first answer
    // stalled by `gate_b`.
    let segments = FillSegments::default()
        .with_connections(3)
        .with_min_size(MIB as u64);
    let s = setup(CacheOptions::default().with_fill_segments(segments));
    let (gate_a, gate_b) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    let (a, b) = (pattern(3 * MIB), pattern(5 * MIB));
    let digest_a = s.upstream.add_blob(BlobScript::new(&a).gated(&gate_a));
    let digest_b = s.upstream.add_blob(BlobScript::new(&b).gated(&gate_b));
    let upstream = Arc::clone(&s.upstream);
    let asked = move || spans(&upstream.blob_ranges());
    let b_parts = [MIB as u64..3 * MIB as u64, 3 * MIB as u64..5 * MIB as u64];
    let fill_a = blob_bytes(&s.engine, &digest_a);
    let fill_b = async {
        assert!(
            eventually(|| asked().len() == 3).await,
            "A: first answer and two parts"
        );
        blob_bytes(&s.engine, &digest_b).await
    };
    let control = async {
        assert!(eventually(|| asked().len() == 4).await, "B's first answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
        gate_a.add_permits(1 << 20);
        // B's first answer is still stalled: only workers started on the
        // slots A freed can ask for B's parts now.
        let b_parts_asked = eventually(|| {
            let asked = asked();
            b_parts.iter().all(|p| asked.contains(p))
        })
        .await;
        gate_b.add_permits(1 << 20);
        b_parts_asked
    };
    let (got_a, got_b, b_parts_asked) = tokio::join!(fill_a, fill_b, control);
    assert!(got_a.unwrap() == a && got_b.unwrap() == b, "other bytes");
    assert!(
        b_parts_asked,
        "B's parts were not fetched while its first answer was under way: {:?}",
        asked()
    );
    // Every byte of each blob asked for once: A's three spans, B's three.
    let m = MIB as u64;
    let mut want = vec![0..m, m..2 * m, 2 * m..3 * m, 0..m, m..3 * m, 3 * m..5 * m];
    want.sort_by_key(|r| (r.start, r.end));
    let mut got = asked();
    got.sort_by_key(|r| (r.start, r.end));
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_refuses_extra_connections_is_asked_for_fewer() {
    // Two answers at a time per client, paced so that the first answer is
    // still open when the workers ask (its MiB takes 0.64 s, the workers
    // ask within milliseconds): of three workers, two are refused.
    let s = segmented();
    let script = |data: &[u8]| {
        BlobScript::new(data)
            .chunk(64 * 1024)
            .paced(Duration::from_millis(40))
            .max_open(2)
    };
    let (a, b) = (pattern(4 * MIB + 3000), pattern(4 * MIB + 5000));
    let (script_a, script_b) = (script(&a), script(&b));
    let digest_a = s.upstream.add_blob(script_a.clone());
    let digest_b = s.upstream.add_blob(script_b.clone());

    let got = blob_bytes(&s.engine, &digest_a).await.unwrap();
    assert!(got == a, "the client got other bytes");
    fills_settled(&s.engine).await;
    assert!(stored_blob(&s.storage, &digest_a).await.as_deref() == Some(&a[..]));
    assert_eq!(script_a.refused(), 2, "two of three workers refused");
    // The refused parts were read by the fill itself, each byte sent once.
    assert_eq!(script_a.bytes_sent(), a.len() as u64);

    // The next fill asks the upstream for one extra connection only, which
    // it accepts: nothing is refused, and the parts still tile the blob.
    let before = s.upstream.blob_ranges().len();
    let got = blob_bytes(&s.engine, &digest_b).await.unwrap();
    assert!(got == b, "the client got other bytes");
    assert_eq!(script_b.refused(), 0, "asked for more than it accepts");
    assert_eq!(script_b.bytes_sent(), b.len() as u64);
    let ranges = s.upstream.blob_ranges()[before..].to_vec();
    assert_eq!(ranges.len(), 4, "the first MiB and three parts: {ranges:?}");
    assert!(
        ranges.iter().filter(|r| r.extra).count() >= 1,
        "the worker's GETs are marked extra: {ranges:?}"
    );
    assert_tiles(&spans(&ranges), b.len() as u64);
}
