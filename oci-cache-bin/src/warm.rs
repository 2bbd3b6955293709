//! `oci-cache warm`: fill the cache with a list of images through the same
//! engine as `serve` (chains, credentials, verification, single flight with
//! a server running on the same storage).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use indicatif::HumanBytes;
use oci_cache_core::digest::Digest;
use oci_cache_core::manifest::{Descriptor, Platform};
use oci_cache_core::observe::CacheOutcome;
use oci_cache_core::Error;
use tokio::sync::Semaphore;

use crate::cli::WarmArgs;
use crate::engine::{self, BoxError, Engine};
use crate::images::{self, Target};
use crate::progress::{ImageBar, Reporter};
use crate::walk::{walk, Absent, UpstreamOnly};

/// What warming one image did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Warmed {
    /// Manifests (index included).
    pub(crate) manifests: usize,
    /// Blobs.
    pub(crate) blobs: usize,
    /// Bytes of all blobs.
    pub(crate) bytes: u64,
    /// Bytes that were not cached yet and came from upstream.
    pub(crate) fetched: u64,
}

pub(crate) fn run(args: &WarmArgs, err: &mut impl Write) -> ExitCode {
    engine::run(&args.serve, err, |settings| async move {
        let (engine, mirrors) = engine::build(&settings).await?;
        let targets = images::from_args(&args.list, &mirrors)?;
        let platforms = images::platforms(&args.list.platforms)?;
        if args.dry_run {
            return dry_run(&engine, &targets, &platforms).await;
        }
        warm(&engine, &targets, &platforms, usize::from(args.jobs)).await
    })
}

async fn warm(
    engine: &Engine,
    targets: &[Target],
    platforms: &[Platform],
    jobs: usize,
) -> Result<ExitCode, BoxError> {
    let start = Instant::now();
    let reporter = Reporter::new("warm");
    let permits = Arc::new(Semaphore::new(jobs));
    let results: Vec<(&Target, Result<Warmed, Error>)> = futures::stream::iter(targets)
        .map(|target| {
            let bar = reporter.image(&target.to_string());
            let permits = permits.clone();
            let reporter = &reporter;
            async move {
                let result = warm_one(engine, target, platforms, &bar, &permits).await;
                bar.finish();
                reporter.line(&match &result {
                    Ok(w) => format!(
                        "warmed {target}: {} manifests, {} blobs, {} ({} fetched)",
                        w.manifests,
                        w.blobs,
                        HumanBytes(w.bytes),
                        HumanBytes(w.fetched)
                    ),
                    Err(e) => format!("FAILED {target}: {}", chain(e)),
                });
                (target, result)
            }
        })
        .buffer_unordered(jobs)
        .collect()
        .await;
    reporter.finish();
    let total =
        results
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .fold(Warmed::default(), |a, w| Warmed {
                manifests: a.manifests + w.manifests,
                blobs: a.blobs + w.blobs,
                bytes: a.bytes + w.bytes,
                fetched: a.fetched + w.fetched,
            });
    let failed: Vec<_> = results
        .iter()
        .filter_map(|(t, r)| r.as_ref().err().map(|e| (t, e)))
        .collect();
    let secs = start.elapsed().as_secs_f64();
    let rate = (total.fetched as f64 / secs.max(1e-3)) as u64;
    reporter.line(&format!(
        "warm: {} of {} images ready, {} blobs, {} ({} fetched) in {secs:.1}s, {}/s",
        results.len() - failed.len(),
        results.len(),
        total.blobs,
        HumanBytes(total.bytes),
        HumanBytes(total.fetched),
        HumanBytes(rate),
    ));
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let mut err = std::io::stderr();
    for (target, e) in failed {
        let _ = writeln!(err, "error: cannot warm {target}: {}", chain(e));
    }
    Ok(ExitCode::FAILURE)
}

/// Fetches every manifest and blob of `target` through the engine; blob
/// fetches share `permits` with the other images.
pub(crate) async fn warm_one(
    engine: &Engine,
    target: &Target,
    platforms: &[Platform],
    bar: &ImageBar,
    permits: &Semaphore,
) -> Result<Warmed, Error> {
    let tree = walk(engine, target, platforms, None, Absent::Fail).await?;
    bar.set_total(tree.blob_bytes());
    let fetched: Vec<(&Descriptor, u64)> = futures::stream::iter(&tree.blobs)
        .map(|blob| async move {
            let _permit = permits.acquire().await;
            let (outcome, bytes) = drain_blob(engine, target, blob, bar).await?;
            let fetched = if outcome == CacheOutcome::Hit {
                0
            } else {
                bytes
            };
            Ok::<_, Error>((blob, fetched))
        })
        .buffer_unordered(tree.blobs.len().max(1))
        .try_collect()
        .await?;
    let filled: Vec<&Digest> = fetched
        .iter()
        .filter(|(_, bytes)| *bytes > 0)
        .map(|(blob, _)| &blob.digest)
        .collect();
    wait_stored(engine, &filled).await?;
    Ok(Warmed {
        manifests: 1 + tree.children.len(),
        blobs: tree.blobs.len(),
        bytes: tree.blob_bytes(),
        fetched: fetched.iter().map(|(_, bytes)| bytes).sum(),
    })
}

/// Waits until every blob in `digests` is in storage.
///
/// A fill's readers are released once the bytes are verified; the commit to
/// storage finishes in the engine's detached task a moment later. A command
/// that exits right after reading would cancel that commit, so it waits here
/// for the stored copies (the engine offers no completion signal; polling
/// the fill count is cheap and happens only at the end of an image).
pub(crate) async fn wait_stored(engine: &Engine, digests: &[&Digest]) -> Result<(), Error> {
    let mut pending: Vec<&Digest> = digests.to_vec();
    loop {
        // Read before the stats: a fill that ends in between is then seen stored.
        let idle = engine.blob_fills_in_flight() == 0;
        let mut still = Vec::new();
        for digest in pending {
            if engine.storage().blob_stat(digest).await?.is_none() {
                still.push(digest);
            }
        }
        pending = still;
        let Some(first) = pending.first() else {
            return Ok(());
        };
        if idle {
            return Err(Error::not_found(format!(
                "blob {first} in storage after it was fetched and verified (the log says why it was not stored)"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Reads a blob through the engine to the end, so a fill completes (its
/// stream ends cleanly only once the digest matched).
async fn drain_blob(
    engine: &Engine,
    target: &Target,
    blob: &Descriptor,
    bar: &ImageBar,
) -> Result<(CacheOutcome, u64), Error> {
    let response = engine
        .blob(&target.upstream, &target.repository, &blob.digest, None)
        .await?;
    let mut stream = response.stream;
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        bar.inc(chunk.len() as u64);
    }
    Ok((response.outcome, bytes))
}

/// Resolves each image upstream, stores nothing, and prints what `warm` would fetch.
async fn dry_run(
    engine: &Engine,
    targets: &[Target],
    platforms: &[Platform],
) -> Result<ExitCode, BoxError> {
    let mut out = std::io::stdout();
    let (mut missing, mut missing_bytes, mut failures) = (0usize, 0u64, 0usize);
    for target in targets {
        let tree = match walk(&UpstreamOnly(engine), target, platforms, None, Absent::Fail).await {
            Ok(tree) => tree,
            Err(e) => {
                writeln!(out, "FAILED {target}: {}", chain(&e))?;
                failures += 1;
                continue;
            }
        };
        writeln!(
            out,
            "{target} {} ({}, {} manifests)",
            tree.root.digest,
            tree.root.media_type,
            1 + tree.children.len()
        )?;
        for blob in &tree.blobs {
            let cached = engine.storage().blob_stat(&blob.digest).await?.is_some();
            if !cached {
                missing += 1;
                missing_bytes += blob.size;
            }
            let what = if cached { "cached" } else { "fetch " };
            writeln!(out, "  {what} {} {}", blob.digest, HumanBytes(blob.size))?;
        }
    }
    writeln!(
        out,
        "would fetch {missing} blobs, {}",
        HumanBytes(missing_bytes)
    )?;
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The error and its causes on one line.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
