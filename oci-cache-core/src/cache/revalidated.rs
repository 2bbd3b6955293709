//! When this replica last revalidated each tag, on its own monotonic clock.
//!
//! A tag record's `checked_at` is the wall-clock time of the replica that
//! wrote it. Replicas on one bucket whose clocks disagree by more than the
//! TTL would each find the other's record stale (or from the future) and
//! revalidate on every request, each write making the other's next read
//! stale again. Remembering its own last check of a tag, measured on
//! `Instant`, bounds every replica to one revalidation per tag per TTL
//! whatever the clocks say.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::storage::TagKey;

/// Entries kept before the ones older than the TTL are dropped.
const PRUNE_AT: usize = 4096;

/// Tags this replica revalidated, and when.
#[derive(Debug, Default)]
pub(super) struct Revalidated(Mutex<HashMap<TagKey, Instant>>);

impl Revalidated {
    /// Notes that `key` was just revalidated.
    pub(super) fn checked(&self, key: &TagKey, ttl: Duration) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= PRUNE_AT {
            map.retain(|_, at| at.elapsed() < ttl);
        }
        map.insert(key.clone(), Instant::now());
    }

    /// Whether this replica revalidated `key` less than `ttl` ago.
    pub(super) fn within(&self, key: &TagKey, ttl: Duration) -> bool {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(key).is_some_and(|at| at.elapsed() < ttl)
    }
}
