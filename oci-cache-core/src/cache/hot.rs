//! Hot manifests in memory, so a manifest hit costs no storage round trip
//! (two file reads on the filesystem, a GET on S3).
//!
//! Bounded by entry count and bytes; the oldest insertions leave first (FIFO:
//! cheap, and good enough when the working set fits, which is what the bounds
//! are sized for). Manifests are content-addressed, so a copy in memory is
//! never wrong. Tag records are not kept here: storage is their source of
//! truth, which another process or replica may move.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

use crate::digest::Digest;
use crate::storage::StoredManifest;

/// Most manifests kept.
const MAX_MANIFESTS: usize = 4096;
/// Most manifest bytes kept (manifests are usually 1-10 KiB).
const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;

/// A bounded map whose oldest insertions are evicted first.
struct Fifo<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    bytes: usize,
}

impl<K: Eq + Hash + Clone, V> Fifo<K, V> {
    fn new() -> Self {
        Fifo {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }

    fn insert(
        &mut self,
        key: K,
        value: V,
        size: usize,
        max_len: usize,
        max_bytes: usize,
        size_of: fn(&V) -> usize,
    ) {
        if let Some(old) = self.map.insert(key.clone(), value) {
            self.bytes -= size_of(&old);
        } else {
            self.order.push_back(key);
        }
        self.bytes += size;
        while self.map.len() > max_len || self.bytes > max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.map.remove(&oldest) {
                self.bytes -= size_of(&gone);
            }
        }
    }
}

/// The in-memory front of the manifest storage.
pub(super) struct HotCache {
    manifests: Mutex<Fifo<Digest, StoredManifest>>,
}

impl std::fmt::Debug for HotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let manifests = self
            .manifests
            .lock()
            .map(|m| m.map.len())
            .unwrap_or_default();
        f.debug_struct("HotCache")
            .field("manifests", &manifests)
            .finish()
    }
}

fn manifest_size(m: &StoredManifest) -> usize {
    m.bytes.len()
}

impl HotCache {
    pub(super) fn new() -> Self {
        HotCache {
            manifests: Mutex::new(Fifo::new()),
        }
    }

    pub(super) fn manifest(&self, digest: &Digest) -> Option<StoredManifest> {
        let map = self
            .manifests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.map.get(digest).cloned()
    }

    /// Forgets every manifest (after a purge deleted some from storage).
    pub(super) fn clear(&self) {
        let mut map = self
            .manifests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *map = Fifo::new();
    }

    pub(super) fn put_manifest(&self, manifest: &StoredManifest) {
        let size = manifest.bytes.len();
        if size > MAX_MANIFEST_BYTES / 16 {
            // A huge manifest would push out many small hot ones.
            return;
        }
        let mut map = self
            .manifests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.insert(
            manifest.digest.clone(),
            manifest.clone(),
            size,
            MAX_MANIFESTS,
            MAX_MANIFEST_BYTES,
            manifest_size,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_evicts_oldest_by_count_and_bytes() {
        let mut f: Fifo<u32, Vec<u8>> = Fifo::new();
        let len = |v: &Vec<u8>| v.len();
        for i in 0..5 {
            f.insert(i, vec![0; 10], 10, 3, 1000, len);
        }
        let mut keys: Vec<u32> = f.map.keys().copied().collect();
        keys.sort_unstable();
        assert_eq!(keys, vec![2, 3, 4]);
        assert_eq!(f.bytes, 30);
        // Replacing a key keeps one entry and recounts its bytes.
        f.insert(4, vec![0; 25], 25, 3, 1000, len);
        assert_eq!(f.bytes, 45);
        // The byte bound evicts from the oldest.
        f.insert(9, vec![0; 20], 20, 10, 50, len);
        let mut keys: Vec<u32> = f.map.keys().copied().collect();
        keys.sort_unstable();
        assert_eq!(keys, vec![4, 9]);
        assert_eq!(f.bytes, 45);
    }
}
