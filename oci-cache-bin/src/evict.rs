//! `oci-cache purge` and `oci-cache gc`: the bounded-disk policy of the
//! library (`oci_cache_core::evict`) run once, offline, over `serve`'s storage.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use indicatif::HumanBytes;
use oci_cache_core::error::ErrorChain;
use oci_cache_core::evict::{self, DiskBudget, Evictor, Removal};
use oci_cache_core::observe;
use oci_cache_core::reference::Reference;
use oci_cache_core::storage::Storage;

use crate::cli::{GcArgs, PurgeArgs};
use crate::engine::{self, BoxError};

/// Leaves a removal notice for servers running on the same storage, so
/// their storage figures and disk budget follow (the blobs are gone either
/// way: a failure here only leaves their figures high until a restart).
async fn tell_servers(storage: &dyn Storage, blobs: u64, bytes: u64) {
    if let Err(e) = evict::announce_removal(storage, Removal { blobs, bytes }).await {
        tracing::warn!(error = %ErrorChain(&e), "cannot tell running servers what was removed; their storage figures stay high until they restart");
    }
}

pub(crate) fn purge(args: &PurgeArgs, out: &mut impl Write, err: &mut impl Write) -> ExitCode {
    engine::run(&args.serve, err, |settings| async move {
        let mut targets = Vec::new();
        for text in &args.refs {
            let reference = Reference::parse(text).map_err(|e| format!("{text}: {e}"))?;
            let target = evict::purge_target(&settings.mirrors, &reference)
                .map_err(|e| format!("{text}: {e}"))?;
            targets.push(target);
        }
        let storage = engine::open_storage(&settings.storage).await?;
        let budget = DiskBudget::new(settings.cache.max_size);
        let report =
            evict::purge(storage.as_ref(), &budget, &observe::NoopObserver, &targets).await?;
        tell_servers(storage.as_ref(), report.blobs, report.bytes).await;
        writeln!(
            out,
            "purged {} tag(s), {} manifest(s), {} blob(s) ({})",
            report.tags,
            report.manifests,
            report.blobs,
            HumanBytes(report.bytes)
        )?;
        if report.tags == 0 && report.manifests == 0 {
            writeln!(out, "nothing cached under {}", args.refs.join(", "))?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) fn gc(args: &GcArgs, out: &mut impl Write, err: &mut impl Write) -> ExitCode {
    engine::run(&args.serve, err, |settings| async move {
        let Some(max) = settings.cache.max_size else {
            return Err::<ExitCode, BoxError>(
                "gc evicts down to a cap: set --max-size (OCI_CACHE_MAX_SIZE) or [cache] max_size"
                    .into(),
            );
        };
        let storage = engine::open_storage(&settings.storage).await?;
        let budget = Arc::new(DiskBudget::new(Some(max)));
        let report = Evictor::new(
            Arc::clone(&storage),
            budget,
            settings.cache.pin.clone(),
            observe::noop(),
        )
        .pass()
        .await?;
        tell_servers(storage.as_ref(), report.evicted_blobs, report.evicted_bytes).await;
        writeln!(
            out,
            "stored {} in {} blob(s), cap {}; evicted {} blob(s) ({}); {} pinned",
            HumanBytes(report.stored_bytes),
            report.stored_blobs,
            HumanBytes(max),
            report.evicted_blobs,
            HumanBytes(report.evicted_bytes),
            HumanBytes(report.protected_bytes),
        )?;
        if report.protected_over_cap {
            writeln!(
                out,
                "warning: pinned content alone is over the cap; raise --max-size or pin less"
            )?;
        }
        Ok(ExitCode::SUCCESS)
    })
}
