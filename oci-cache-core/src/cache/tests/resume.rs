//! A fill whose upstream connection is cut continues with a range (issue 24).

use std::sync::Mutex;

use super::*;
use crate::cache::FillRetry;
use crate::observe::{FillEvent, FillPhase, Observer, RestartReason};
use crate::testing::Cut;

/// Records the resume and restart events of every fill.
#[derive(Debug, Default)]
struct Resumes(Mutex<Vec<FillPhase>>);

impl Observer for Resumes {
    fn fill(&self, event: &FillEvent) {
        if matches!(
            event.phase,
            FillPhase::Resumed { .. } | FillPhase::Restarted { .. }
        ) {
            self.0.lock().unwrap().push(event.phase.clone());
        }
    }
}

struct Resuming {
    storage: Arc<MemoryStorage>,
    upstream: Arc<FakeUpstream>,
    resumes: Arc<Resumes>,
    engine: Engine,
}

/// An engine that retries cut fills `attempts` times per endpoint, 1 ms apart.
fn resuming(attempts: u32) -> Resuming {
    let retry = FillRetry::default()
        .with_attempts(attempts)
        .with_backoff(Duration::from_millis(1));
    resuming_with(one_connection().with_fill_retry(retry))
}

fn resuming_with(options: CacheOptions) -> Resuming {
    let storage = Arc::new(MemoryStorage::new());
    let upstream = Arc::new(FakeUpstream::default());
    let resumes = Arc::new(Resumes::default());
    let engine = PullThrough::observed(
        Arc::clone(&storage),
        Arc::clone(&upstream),
        options,
        Arc::clone(&resumes) as _,
    );
    Resuming {
        storage,
        upstream,
        resumes,
        engine,
    }
}

impl Resuming {
    fn events(&self) -> Vec<FillPhase> {
        self.resumes.0.lock().unwrap().clone()
    }

    /// Fetches `digest` and checks that the client got `data` and storage holds it.
    async fn fetch_whole(&self, digest: &Digest, data: &[u8]) {
        let got = blob_bytes(&self.engine, digest).await.unwrap();
        assert!(got == data, "the client got other bytes than the blob");
        fills_settled(&self.engine).await;
        let stored = stored_blob(&self.storage, digest).await;
        assert!(stored.as_deref() == Some(data), "storage holds other bytes");
    }
}

#[tokio::test]
async fn every_kind_of_cut_resumes_from_the_byte_the_fill_reached() {
    for how in [Cut::Reset, Cut::Eof, Cut::Stall] {
        let s = resuming(3);
        let data = pattern(100_000);
        let digest = s
            .upstream
            .add_blob(
                BlobScript::new(&data)
                    .chunk(7000)
                    .cut_every(30_000, how, usize::MAX),
            );
        s.fetch_whole(&digest, &data).await;
        // Four answers of at most 30,000 bytes, each from where the last stopped.
        assert_eq!(
            s.upstream.blob_offsets(),
            [0, 30_000, 60_000, 90_000],
            "{how:?}"
        );
        assert_eq!(s.upstream.calls().blob_get(), 4, "{how:?}");
        assert_eq!(
            s.events(),
            [30_000, 60_000, 90_000].map(|offset| FillPhase::Resumed { offset }),
            "{how:?}"
        );
    }
}

#[tokio::test]
async fn clients_joined_to_a_cut_fill_never_see_the_cut() {
    let s = resuming(3);
    let data = pattern(200_000);
    let gate = Arc::new(Semaphore::new(0));
    let digest = s.upstream.add_blob(
        BlobScript::new(&data)
            .chunk(4000)
            .cut_every(50_000, Cut::Reset, usize::MAX)
            .gated(&gate),
    );
    let first = s.engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
    let joined = s.engine.blob(&hub(), &repo(), &digest, None).await.unwrap();
    let ranged = s
        .engine
        .blob(&hub(), &repo(), &digest, Some(40_000..160_000))
        .await
        .unwrap();
    assert_eq!(joined.outcome, CacheOutcome::Coalesced);
    gate.add_permits(10_000);
    let (a, b, c) = tokio::join!(
        collect(first.stream),
        collect(joined.stream),
        collect(ranged.stream)
    );
    assert!(a.unwrap() == data && b.unwrap() == data);
    assert!(c.unwrap() == data[40_000..160_000]);
    assert_eq!(s.upstream.blob_offsets(), [0, 50_000, 100_000, 150_000]);
    fills_settled(&s.engine).await;
    assert_eq!(stored_blob(&s.storage, &digest).await.unwrap(), data);
}

#[tokio::test]
async fn the_resume_asks_with_the_etag_of_the_bytes_so_far() {
    let s = resuming(3);
    let data = pattern(50_000);
    let digest = s.upstream.add_blob(
        BlobScript::new(&data)
            .etags("\"sha256:v1\"", usize::MAX, "\"unused\"")
            .cut_every(20_000, Cut::Reset, 1),
    );
    s.fetch_whole(&digest, &data).await;
    let ranges = s.upstream.blob_ranges();
    assert_eq!(ranges.len(), 2);
    assert_eq!(ranges[0].if_range, None);
    assert_eq!(
        (ranges[1].offset, ranges[1].if_range.as_deref()),
        (20_000, Some("\"sha256:v1\""))
    );
}

/// Fetches an 80,000-byte blob served by `script` with its first answer cut
/// at 30,000; checks the offsets asked for and the one restart reported.
async fn restarts_once(
    script: impl FnOnce(BlobScript) -> BlobScript,
    offsets: &[u64],
    reason: RestartReason,
) {
    let s = resuming(3);
    let data = pattern(80_000);
    let cut_once = BlobScript::new(&data).cut_every(30_000, Cut::Reset, 1);
    let digest = s.upstream.add_blob(script(cut_once));
    s.fetch_whole(&digest, &data).await;
    assert_eq!(s.upstream.blob_offsets(), offsets);
    let offset = 30_000;
    assert_eq!(s.events(), [FillPhase::Restarted { offset, reason }]);
}

#[tokio::test]
async fn an_upstream_that_ignores_the_range_restarts_from_zero_and_is_counted() {
    restarts_once(
        BlobScript::ignore_ranges,
        &[0, 30_000],
        RestartReason::RangeIgnored,
    )
    .await;
}

#[tokio::test]
async fn a_changed_etag_restarts_from_zero_and_is_counted() {
    // The resume's If-Range names the old tag: upstream sends the whole blob.
    restarts_once(
        |script| script.etags("\"a\"", 1, "\"b\""),
        &[0, 30_000],
        RestartReason::EntityChanged,
    )
    .await;
}

#[tokio::test]
async fn a_part_of_another_length_is_dropped_for_the_whole_blob() {
    // A 206 whose Content-Range total is not the blob's size is a part of
    // another entity: the fill asks for the whole blob instead.
    restarts_once(
        |script| script.ranged_total(123_456),
        &[0, 30_000, 0],
        RestartReason::EntityChanged,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn failed_resumes_back_off_doubling_then_succeed() {
    let retry = FillRetry::default()
        .with_attempts(4)
        .with_backoff(Duration::from_secs(1));
    let s = resuming_with(CacheOptions::default().with_fill_retry(retry));
    let data = pattern(60_000);
    let digest = s.upstream.add_blob(
        BlobScript::new(&data)
            .cut_every(25_000, Cut::Reset, 1)
            .fail_resumes(2, UpstreamErrorKind::Unavailable),
    );
    let started = tokio::time::Instant::now();
    s.fetch_whole(&digest, &data).await;
    // The cut brought bytes: resumed at once; then 503, wait 1 s; 503, wait 2 s.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert_eq!(s.upstream.blob_offsets(), [0, 25_000, 25_000, 25_000]);
    assert_eq!(s.events(), [FillPhase::Resumed { offset: 25_000 }]);
}

#[tokio::test]
async fn a_cut_that_asking_again_does_not_mend_fails_after_the_attempts() {
    let s = resuming(3);
    let data = pattern(50_000);
    let digest = s
        .upstream
        .add_blob(BlobScript::new(&data).chunk(1000).reset_at(20_000));
    let err = blob_bytes(&s.engine, &digest).await.unwrap_err();
    assert!(
        matches!(&err, Error::Upstream(e) if e.kind() == UpstreamErrorKind::Unavailable),
        "{err}"
    );
    // The first answer brought 20,000 bytes; three resumes brought none.
    assert_eq!(s.upstream.blob_offsets(), [0, 20_000, 20_000, 20_000]);
    fills_settled(&s.engine).await;
    assert!(stored_blob(&s.storage, &digest).await.is_none());

    // A blob that is gone upstream is not asked for again.
    let s = resuming(3);
    let digest = s.upstream.add_blob(
        BlobScript::new(&data)
            .cut_every(20_000, Cut::Reset, usize::MAX)
            .fail_resumes(usize::MAX, UpstreamErrorKind::NotFound),
    );
    let err = blob_bytes(&s.engine, &digest).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(s.upstream.blob_offsets(), [0, 20_000]);
}

#[tokio::test]
async fn an_upstream_that_drips_bytes_per_connection_is_given_up() {
    // Each answer brings 10 bytes, then resets: every cut is progress, but
    // the fill earns one more cut per 64 KiB only.
    let s = resuming(3);
    let data = pattern(200_000);
    let digest =
        s.upstream.add_blob(
            BlobScript::new(&data)
                .chunk(10)
                .cut_every(10, Cut::Reset, usize::MAX),
        );
    let err = blob_bytes(&s.engine, &digest).await.unwrap_err();
    assert!(matches!(&err, Error::Upstream(_)), "{err}");
    assert_eq!(s.upstream.calls().blob_get(), 4);
    fills_settled(&s.engine).await;
    assert!(stored_blob(&s.storage, &digest).await.is_none());
}

#[tokio::test]
async fn a_body_without_a_length_resumes_too() {
    let s = resuming(3);
    let data = pattern(70_000);
    let digest = s
        .upstream
        .add_blob(
            BlobScript::new(&data)
                .announce(None)
                .cut_every(30_000, Cut::Reset, usize::MAX),
        );
    s.fetch_whole(&digest, &data).await;
    assert_eq!(s.upstream.blob_offsets(), [0, 30_000, 60_000]);
}

#[tokio::test]
async fn bytes_resumed_from_a_lying_upstream_still_fail_the_digest() {
    // The resumed part comes from other bytes: the whole-blob digest check
    // catches it, and nothing is stored.
    let s = resuming(3);
    let data = pattern(60_000);
    let mut other = data.clone();
    other[45_000] ^= 0xff;
    let digest = Digest::sha256_of(&data);
    s.upstream.add_blob_as(
        &digest,
        BlobScript::new(&other).cut_every(30_000, Cut::Reset, usize::MAX),
    );
    let err = blob_bytes(&s.engine, &digest).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert_eq!(s.upstream.blob_offsets(), [0, 30_000]);
    fills_settled(&s.engine).await;
    assert!(stored_blob(&s.storage, &digest).await.is_none());
}
