//! Readiness: is the storage usable? ([`Readiness`])
//!
//! A probe writes a small blob unique to this process, reads it back and
//! deletes it, within a time limit, so an unreachable bucket, a read-only or
//! full disk and a hung mount all read as "not ready" with the reason. The
//! probe runs in the background at a fixed interval and
//! [`Readiness::state`] answers from its last result: a readiness check
//! (`/readyz`) never writes to storage itself, however often it is polled.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::digest::Digest;
use crate::error::ErrorChain;
use crate::storage::Storage;
use crate::{Error, Result};

/// What the last probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyState {
    /// No probe has finished yet.
    Starting,
    /// The last probe wrote, read back and deleted its blob.
    Ready,
    /// The last probe failed; the reason, with its causes.
    NotReady(String),
}

/// The storage readiness, kept up to date by a background probe.
#[derive(Debug, Clone)]
pub struct Readiness {
    state: Arc<RwLock<ReadyState>>,
}

/// How long one probe may take before the storage counts as unusable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl Readiness {
    /// Starts probing `storage` now and then every `interval`, on the
    /// current tokio runtime, until every clone of the handle is dropped.
    pub fn spawn(storage: Arc<dyn Storage>, interval: Duration) -> Readiness {
        let state = Arc::new(RwLock::new(ReadyState::Starting));
        let weak = Arc::downgrade(&state);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let found = match tokio::time::timeout(PROBE_TIMEOUT, probe(&*storage)).await {
                    Ok(Ok(())) => ReadyState::Ready,
                    Ok(Err(e)) => ReadyState::NotReady(ErrorChain(&e).to_string()),
                    Err(_) => ReadyState::NotReady(format!(
                        "storage {storage} did not answer within {PROBE_TIMEOUT:?}"
                    )),
                };
                let Some(state) = weak.upgrade() else { break };
                let mut current = state.write().unwrap_or_else(PoisonError::into_inner);
                if *current != found {
                    match &found {
                        ReadyState::NotReady(reason) => {
                            tracing::warn!(%reason, "storage is not ready")
                        }
                        _ => tracing::info!("storage is ready"),
                    }
                }
                *current = found;
            }
        });
        Readiness { state }
    }

    /// The last probe's result.
    pub fn state(&self) -> ReadyState {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One probe: write a blob unique to this call, read it back, delete it.
pub async fn probe(storage: &dyn Storage) -> Result<()> {
    let body = Bytes::from(format!(
        "oci-cache readiness probe {}\n",
        uuid::Uuid::new_v4()
    ));
    let digest = Digest::sha256_of(&body);
    let size = body.len() as u64;
    let stream = futures::stream::iter([Ok(body.clone())]).boxed();
    storage.blob_write(&digest, Some(size), stream).await?;
    let read = async {
        let mut read = storage.blob_read(&digest, None).await?.stream;
        let mut back = Vec::with_capacity(body.len());
        while let Some(chunk) = read.next().await {
            back.extend_from_slice(&chunk?);
        }
        if back != body {
            return Err(Error::Storage {
                backend: "probe",
                message: format!(
                    "storage {storage} returned other bytes for the probe blob {digest}"
                ),
                source: None,
            });
        }
        Ok(())
    }
    .await;
    // Delete even when the read failed, so probes leave nothing behind.
    let deleted = storage.blob_delete(&digest).await;
    read.and(deleted)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    #[tokio::test]
    async fn probe_leaves_nothing_behind() {
        let storage = MemoryStorage::new();
        probe(&storage).await.unwrap();
        probe(&storage).await.unwrap();
        assert!(storage.blob_list().next().await.is_none());
    }

    #[tokio::test]
    async fn readiness_reports_the_probe_result() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let readiness = Readiness::spawn(storage, Duration::from_secs(60));
        for _ in 0..100 {
            if readiness.state() != ReadyState::Starting {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(readiness.state(), ReadyState::Ready);
    }
}
