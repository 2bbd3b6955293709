//! `oci-cache verify`: every listed image is fully in storage and every
//! byte re-hashes to its digest. Storage only, never the network, unless
//! `--repair` refetches what is missing or corrupt.

use std::fmt;
use std::io::Write;
use std::process::ExitCode;

use futures::StreamExt;
use indicatif::HumanBytes;
use oci_cache_core::digest::{Digest, DigestVerifier};
use oci_cache_core::manifest::{Descriptor, Platform};
use oci_cache_core::storage::Storage;
use oci_cache_core::Error;
use tokio::sync::Semaphore;

use crate::cli::VerifyArgs;
use crate::engine::{self, BoxError, Engine};
use crate::images::{self, Target};
use crate::progress::Reporter;
use crate::walk::{walk, Absent, StorageOnly};
use crate::warm::{chain, warm_one};

/// Blobs re-hashed at the same time.
const HASH_JOBS: usize = 4;

/// Something wrong with a listed image.
#[derive(Debug)]
enum Problem {
    /// Not in storage: a tag record, a manifest or a blob.
    Missing(String),
    /// In storage with bytes that do not match the digest.
    Corrupt { object: Object, reason: String },
}

/// A stored object that verification failed.
#[derive(Debug)]
enum Object {
    Manifest(Digest),
    Blob(Digest),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing(what) => write!(f, "missing {what}"),
            Problem::Corrupt {
                object: Object::Manifest(d),
                reason,
            } => write!(f, "corrupt manifest {d}: {reason}"),
            Problem::Corrupt {
                object: Object::Blob(d),
                reason,
            } => write!(f, "corrupt blob {d}: {reason}"),
        }
    }
}

/// What a check of one image found.
#[derive(Debug, Default)]
struct Checked {
    manifests: usize,
    blobs: usize,
    bytes: u64,
    problems: Vec<Problem>,
}

pub(crate) fn run(args: &VerifyArgs, err: &mut impl Write) -> ExitCode {
    engine::run(&args.serve, err, |settings| async move {
        let (engine, mirrors) = engine::build(&settings).await?;
        let targets = images::from_args(&args.list, &mirrors)?;
        let platforms = images::platforms(&args.list.platforms)?;
        verify(&engine, &targets, &platforms, args.repair).await
    })
}

async fn verify(
    engine: &Engine,
    targets: &[Target],
    platforms: &[Platform],
    repair: bool,
) -> Result<ExitCode, BoxError> {
    let reporter = Reporter::new("verify");
    let storage = engine.storage().as_ref();
    let mut bad = 0usize;
    for target in targets {
        let mut checked = check(storage, target, platforms).await?;
        if repair && !checked.problems.is_empty() {
            for problem in &checked.problems {
                reporter.line(&format!("repairing {target}: {problem}"));
            }
            remove_corrupt(storage, &checked.problems).await?;
            let permits = Semaphore::new(HASH_JOBS);
            if let Err(e) = warm_one(
                engine,
                target,
                platforms,
                &reporter.image(&target.to_string()),
                &permits,
            )
            .await
            {
                reporter.line(&format!("FAILED {target}: cannot refetch: {}", chain(&e)));
            }
            checked = check(storage, target, platforms).await?;
        }
        if checked.problems.is_empty() {
            reporter.line(&format!(
                "ok {target}: {} manifests, {} blobs, {} verified",
                checked.manifests,
                checked.blobs,
                HumanBytes(checked.bytes)
            ));
            continue;
        }
        bad += 1;
        for problem in &checked.problems {
            reporter.line(&format!("FAILED {target}: {problem}"));
        }
    }
    reporter.finish();
    reporter.line(&format!(
        "verify: {} of {} images complete and intact",
        targets.len() - bad,
        targets.len()
    ));
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Checks one image in storage. Storage errors other than "absent" are
/// returned: they say nothing about the image.
async fn check(
    storage: &dyn Storage,
    target: &Target,
    platforms: &[Platform],
) -> Result<Checked, Error> {
    let tree = match walk(&StorageOnly(storage), target, platforms, None, Absent::Fail).await {
        Ok(tree) => tree,
        Err(e) => {
            let problem = match e {
                e if e.is_not_found() => Problem::Missing(e.to_string().replace(" not found", "")),
                Error::DigestMismatch { expected, actual } => Problem::Corrupt {
                    object: Object::Manifest(expected),
                    reason: format!("its bytes hash to {actual}"),
                },
                Error::InvalidManifest { digest, reason } => Problem::Corrupt {
                    object: Object::Manifest(digest),
                    reason,
                },
                e => return Err(e),
            };
            return Ok(Checked {
                problems: vec![problem],
                ..Checked::default()
            });
        }
    };
    let results: Vec<Option<Problem>> = futures::stream::iter(&tree.blobs)
        .map(|blob| check_blob(storage, blob))
        .buffer_unordered(HASH_JOBS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, Error>>()?;
    Ok(Checked {
        manifests: 1 + tree.children.len(),
        blobs: tree.blobs.len(),
        bytes: tree.blob_bytes(),
        problems: results.into_iter().flatten().collect(),
    })
}

/// Re-hashes one stored blob against its descriptor's digest and size.
async fn check_blob(storage: &dyn Storage, blob: &Descriptor) -> Result<Option<Problem>, Error> {
    let read = match storage.blob_read(&blob.digest, None).await {
        Ok(read) => read,
        Err(e) if e.is_not_found() => {
            return Ok(Some(Problem::Missing(format!("blob {}", blob.digest))))
        }
        Err(e) => return Err(e),
    };
    let mut verifier = DigestVerifier::new(blob.digest.clone(), Some(blob.size));
    let mut stream = read.stream;
    let corrupt = |e: Error| {
        Some(Problem::Corrupt {
            object: Object::Blob(blob.digest.clone()),
            reason: e.to_string(),
        })
    };
    while let Some(chunk) = stream.next().await {
        if let Err(e) = verifier.update(&chunk?) {
            return Ok(corrupt(e));
        }
    }
    Ok(verifier.finish().err().and_then(corrupt))
}

/// Deletes what failed verification, so the refetch replaces it.
async fn remove_corrupt(storage: &dyn Storage, problems: &[Problem]) -> Result<(), Error> {
    for problem in problems {
        match problem {
            Problem::Corrupt {
                object: Object::Blob(d),
                ..
            } => storage.blob_delete(d).await?,
            Problem::Corrupt {
                object: Object::Manifest(d),
                ..
            } => storage.manifest_delete(d).await?,
            Problem::Missing(_) => {}
        }
    }
    Ok(())
}
