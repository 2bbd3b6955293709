//! The workers of a segmented fill: each fetches parts nobody took into
//! files of their own, on a connection of its own (one slot of the
//! upstream's extra connections).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use super::super::buffer::{blocking, spool_error, write_at};
use super::super::resume::ResumingBody;
use super::{Job, Plan, Spooled, Written, BATCH};
use crate::error::{ErrorChain, UpstreamErrorKind};
use crate::upstream::Upstream;

/// How long a slot given up after a refusal stays given up: the upstream
/// gets one extra connection fewer for this long, then is offered it again.
const REFUSED_SLOT_BACK_AFTER: Duration = Duration::from_secs(300);

/// A worker holding `slot` (one extra connection to the upstream) until it
/// is done. When the upstream refused the connection, the slot is not handed
/// back but put aside for [`REFUSED_SLOT_BACK_AFTER`]: an upstream that caps
/// connections per client (or is overloaded) is asked for fewer.
pub(super) async fn work_in_slot<U: Upstream + ?Sized>(
    job: Arc<Job<U>>,
    plan: Arc<Plan>,
    slot: OwnedSemaphorePermit,
) {
    if work(&job, &plan).await == Ended::Refused {
        let slots = Arc::clone(slot.semaphore());
        slot.forget();
        info!(registry = %job.registry, digest = %job.digest,
            back_after_s = REFUSED_SLOT_BACK_AFTER.as_secs(),
            "upstream refused an extra connection; asking it for one fewer");
        tokio::spawn(async move {
            tokio::time::sleep(REFUSED_SLOT_BACK_AFTER).await;
            slots.add_permits(1);
        });
    }
}

/// How a worker ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// No part left, or one it could not spool.
    Done,
    /// The upstream refused a connection (`429`, `503`): the worker stopped.
    Refused,
}

/// Starts up to `missing` more workers as other fills free the upstream's
/// slots (first come, first served: the semaphore is fair), while parts are
/// left that nobody took. A fill that opened while the slots were in use
/// (several layers of one image start at once) so still gets its extra
/// connections once the others' small parts are done, instead of reading
/// all of a large blob on one. Its workers are aborted with it.
pub(super) async fn recruit<U: Upstream + ?Sized + 'static>(
    job: Arc<Job<U>>,
    plan: Arc<Plan>,
    slots: Arc<Semaphore>,
    missing: usize,
) {
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..missing {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        if !plan.has_open() {
            break;
        }
        debug!(digest = %job.digest, "a segment slot freed: one more connection");
        workers.spawn(work_in_slot(Arc::clone(&job), Arc::clone(&plan), slot));
    }
    while workers.join_next().await.is_some() {}
}

/// A worker: fetches open parts into files of their own until none is left,
/// or until the upstream refuses to open a part (the fill then reads that
/// part itself, on its own connection).
async fn work<U: Upstream + ?Sized>(job: &Job<U>, plan: &Plan) -> Ended {
    // Checked before the part's file is made, so that a worker's last
    // round does not create a file for nothing (another worker may still
    // take the last part in between: then this file is dropped unused).
    while plan.has_open() {
        let dir = job.spool_dir.clone();
        let file = match blocking(move || {
            tempfile::tempfile_in(&dir).map_err(|e| spool_error(&dir, e))
        })
        .await
        {
            Ok(file) => Arc::new(file),
            Err(e) => {
                warn!(digest = %job.digest, error = %ErrorChain(&e), "cannot spool a segment; the fill reads it itself");
                return Ended::Done;
            }
        };
        let Some((part, spooled)) = plan.take_for_worker(&file) else {
            return Ended::Done;
        };
        let body = ResumingBody::open_part(
            job.target(),
            job.retry,
            part.clone(),
            Some(plan.size),
            plan.etag.clone(),
            true,
        )
        .await;
        let body = match body {
            Ok(body) => body,
            Err(e) => {
                spooled.written.send_replace(Written::GaveUp(0));
                if is_refusal(&e) {
                    debug!(digest = %job.digest, error = %ErrorChain(&e), "extra connection refused");
                    return Ended::Refused;
                }
                warn!(digest = %job.digest, start = part.start, end = part.end, error = %ErrorChain(&e),
                    "a segment's first request failed; the fill fetches the part itself");
                return Ended::Done;
            }
        };
        let written = fetch_part(body, part.clone(), &spooled).await;
        let state = match written {
            Ok(()) => Written::Done,
            Err((n, e)) => {
                warn!(digest = %job.digest, start = part.start, end = part.end, received = n,
                    error = %ErrorChain(&e), "a segment's connection failed; the fill fetches the rest of it again");
                Written::GaveUp(n)
            }
        };
        spooled.written.send_replace(state);
    }
    Ended::Done
}

/// Whether `error` is an upstream asking for fewer connections (a `429`, a
/// `503` or a refused connection) rather than a fault of this request.
fn is_refusal(error: &crate::Error) -> bool {
    matches!(error, crate::Error::Upstream(e)
        if matches!(e.kind(), UpstreamErrorKind::TooManyRequests | UpstreamErrorKind::Unavailable))
}

/// Reads `part` from `body` into its file; on failure, the bytes written and why.
async fn fetch_part<U: Upstream + ?Sized>(
    mut body: ResumingBody<'_, U>,
    part: Range<u64>,
    spooled: &Spooled,
) -> std::result::Result<(), (u64, crate::Error)> {
    let len = part.end - part.start;
    let mut written = 0u64;
    let mut batch = BytesMut::new();
    loop {
        let next = body.next().await;
        if let Some(Ok(chunk)) = &next {
            batch.extend_from_slice(chunk);
        }
        let last = !matches!(next, Some(Ok(_)));
        if !batch.is_empty() && (last || batch.len() >= BATCH) {
            let bytes = batch.split().freeze();
            let file = Arc::clone(&spooled.file);
            let (at, n) = (written, bytes.len() as u64);
            blocking(move || write_at(&file, &bytes, at))
                .await
                .map_err(|e| (written, e))?;
            written += n;
            spooled.written.send_replace(Written::Growing(written));
        }
        match next {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err((written, e)),
            None if written == len => return Ok(()),
            None => {
                let short = crate::error::UpstreamError::new(
                    UpstreamErrorKind::Invalid,
                    "",
                    format!("a segment ended after {written} of its {len} bytes"),
                );
                return Err((written, short.into()));
            }
        }
    }
}
