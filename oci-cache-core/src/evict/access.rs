//! The persisted access index: last-use times of blobs, as records
//! `access/<algorithm>/<shard>` holding `{"<hex>": <unix seconds>, …}`.
//!
//! One record per two-hex shard (256 per algorithm) keeps a flush to a few
//! small writes (only the shards with new uses are rewritten) and a load at
//! start to at most 256 reads, whatever the number of blobs. Times are
//! whole seconds: LRU needs order, not precision.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;

use crate::digest::Digest;
use crate::storage::{Record, RecordKey, RecordPrefix, RecordWrite, Storage};
use crate::Result;

/// Last-use times loaded from and flushed to the access index, by shard.
#[derive(Debug, Default)]
pub(super) struct AccessIndex {
    loaded: bool,
    shards: HashMap<RecordKey, BTreeMap<String, u64>>,
}

impl AccessIndex {
    /// The last use recorded for `digest`.
    pub(super) fn last_use(&self, digest: &Digest) -> Option<SystemTime> {
        self.shards
            .get(&RecordKey::access(digest))?
            .get(digest.hex())
            .map(|&secs| UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// Reads every access record, once.
    pub(super) async fn load<S: Storage + ?Sized>(&mut self, storage: &S) -> Result<()> {
        if self.loaded {
            return Ok(());
        }
        let keys: Vec<RecordKey> = storage
            .record_list(&RecordPrefix::access())
            .filter_map(|key| async move { key.ok() })
            .collect()
            .await;
        for key in keys {
            let Some(record) = storage.record_get(&key).await? else {
                continue;
            };
            match serde_json::from_slice::<BTreeMap<String, u64>>(&record.bytes) {
                Ok(shard) => {
                    self.shards.insert(key, shard);
                }
                // Only an LRU hint: a damaged shard is rewritten by the next flush.
                Err(e) => {
                    tracing::warn!(record = %key, error = %e, "ignoring an unreadable access-index record");
                }
            }
        }
        self.loaded = true;
        Ok(())
    }

    /// Merges `uses` in, drops `gone`, and rewrites the shards that changed;
    /// returns how many were written.
    pub(super) async fn flush<S: Storage + ?Sized>(
        &mut self,
        storage: &S,
        uses: HashMap<Digest, SystemTime>,
        gone: &[Digest],
    ) -> Result<usize> {
        let mut dirty: HashSet<RecordKey> = HashSet::new();
        for (digest, at) in uses {
            let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let key = RecordKey::access(&digest);
            let entry = self
                .shards
                .entry(key.clone())
                .or_default()
                .entry(digest.hex().to_owned())
                .or_default();
            *entry = (*entry).max(secs);
            dirty.insert(key);
        }
        for digest in gone {
            let key = RecordKey::access(digest);
            if let Some(shard) = self.shards.get_mut(&key) {
                if shard.remove(digest.hex()).is_some() {
                    dirty.insert(key);
                }
            }
        }
        let written = dirty.len();
        for key in dirty {
            match self.shards.get(&key).filter(|shard| !shard.is_empty()) {
                None => storage.record_delete(&key).await?,
                Some(shard) => {
                    let bytes = serde_json::to_vec(shard).map_err(|e| {
                        crate::Error::Config(format!("cannot encode the access index: {e}"))
                    })?;
                    storage
                        .record_put(&key, Record::new(bytes), RecordWrite::Overwrite)
                        .await?;
                }
            }
        }
        Ok(written)
    }
}
