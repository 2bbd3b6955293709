//! Removal notices: how a server learns that another process removed blobs
//! from its storage.
//!
//! A server counts its stored blobs once at start and then follows its own
//! fills and evictions, so a `purge` or `gc` command run beside it would
//! leave its figures (and its disk budget) too high until a restart. The
//! command leaves a small record, `removals/<id>`, saying how many blobs and
//! bytes it removed; the server lists that prefix every few seconds (one
//! listing of a prefix that is almost always empty) and applies each notice
//! it has not seen once. Every server on the storage sees every notice, and
//! notices are removed by the next command an hour later, so nothing needs
//! to know which servers are running.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::storage::{Record, RecordKey, RecordPrefix, RecordWrite, Storage};
use crate::Result;

/// How long a notice stays: far longer than any server takes to see it.
const NOTICE_KEEP: Duration = Duration::from_secs(60 * 60);

/// Blobs another process removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// Blobs removed.
    pub blobs: u64,
    /// Bytes of those blobs.
    pub bytes: u64,
}

/// Leaves a notice of `removal` for servers on `storage` (nothing when no
/// blob was removed), and drops notices older than an hour.
pub async fn announce_removal<S: Storage + ?Sized>(storage: &S, removal: Removal) -> Result<()> {
    if removal.blobs == 0 {
        return Ok(());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let id = format!("{}-{}", now.as_nanos(), std::process::id());
    let bytes = serde_json::to_vec(&removal).unwrap_or_default();
    storage
        .record_put(
            &RecordKey::removal(&id),
            Record::new(bytes),
            RecordWrite::Create,
        )
        .await?;
    let mut old = Vec::new();
    let mut keys = storage.record_list(&RecordPrefix::removals());
    while let Some(key) = keys.next().await {
        let key = key?;
        let written = key
            .removal_id()
            .and_then(|id| id.split('-').next()?.parse::<u128>().ok());
        if written.is_some_and(|at| now.as_nanos().saturating_sub(at) > NOTICE_KEEP.as_nanos()) {
            old.push(key);
        }
    }
    drop(keys);
    for key in old {
        storage.record_delete(&key).await?;
    }
    Ok(())
}

/// What a server has seen of the removal notices.
#[derive(Debug, Default)]
pub struct RemovalWatch {
    seen: HashSet<RecordKey>,
}

impl RemovalWatch {
    /// Starts watching: the notices already there are taken as seen (a
    /// count of the store made after this includes what they removed).
    pub async fn start<S: Storage + ?Sized>(storage: &S) -> Result<Self> {
        let mut watch = RemovalWatch::default();
        watch.poll(storage).await?;
        Ok(watch)
    }

    /// The notices left since the last call. A notice that cannot be read
    /// (removed meanwhile, or not ours) is skipped.
    pub async fn poll<S: Storage + ?Sized>(&mut self, storage: &S) -> Result<Vec<Removal>> {
        let mut listed = HashSet::new();
        let mut keys = storage.record_list(&RecordPrefix::removals());
        while let Some(key) = keys.next().await {
            listed.insert(key?);
        }
        drop(keys);
        let mut removals = Vec::new();
        for key in listed.difference(&self.seen) {
            if let Some(record) = storage.record_get(key).await? {
                if let Ok(removal) = serde_json::from_slice(&record.bytes) {
                    removals.push(removal);
                }
            }
        }
        // Notices dropped by a command are forgotten too: the set stays small.
        self.seen = listed;
        Ok(removals)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    #[tokio::test]
    async fn a_server_sees_each_removal_once_and_not_those_before_it_started() {
        let storage = MemoryStorage::new();
        let before = Removal {
            blobs: 1,
            bytes: 10,
        };
        announce_removal(&storage, before).await.unwrap();
        let mut watch = RemovalWatch::start(&storage).await.unwrap();
        assert_eq!(watch.poll(&storage).await.unwrap(), []);
        let purge = Removal {
            blobs: 3,
            bytes: 4096,
        };
        announce_removal(&storage, purge).await.unwrap();
        // Nothing removed: no notice.
        announce_removal(&storage, Removal { blobs: 0, bytes: 0 })
            .await
            .unwrap();
        assert_eq!(watch.poll(&storage).await.unwrap(), [purge]);
        assert_eq!(watch.poll(&storage).await.unwrap(), []);
        // A second server started now sees neither.
        let mut late = RemovalWatch::start(&storage).await.unwrap();
        assert_eq!(late.poll(&storage).await.unwrap(), []);
    }

    #[tokio::test]
    async fn notices_older_than_an_hour_are_dropped_by_the_next_command() {
        let storage = MemoryStorage::new();
        let hour_ago = SystemTime::now() - NOTICE_KEEP - Duration::from_secs(1);
        let nanos = hour_ago.duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let old = RecordKey::removal(&format!("{nanos}-1"));
        storage
            .record_put(&old, Record::new("{}"), RecordWrite::Create)
            .await
            .unwrap();
        announce_removal(&storage, Removal { blobs: 1, bytes: 1 })
            .await
            .unwrap();
        assert!(storage.record_get(&old).await.unwrap().is_none());
        let left: Vec<_> = storage
            .record_list(&RecordPrefix::removals())
            .collect()
            .await;
        assert_eq!(left.len(), 1);
        assert_eq!(
            RecordKey::parse(left[0].as_ref().unwrap().as_str()).as_ref(),
            left[0].as_ref().ok()
        );
    }
}
