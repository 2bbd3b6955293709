//! Single flight for small fetches (manifests): one detached task per key,
//! every concurrent caller awaits the same shared result.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::{BoxFuture, FutureExt, Shared};
use tracing::Instrument;

use crate::{Error, Result};

type SharedResult<V> = Shared<BoxFuture<'static, Result<V, Arc<Error>>>>;

/// A flight in the map, with a number telling it apart from later flights of
/// the same key.
struct Entry<V> {
    id: u64,
    shared: SharedResult<V>,
}

type Map<K, V> = Arc<Mutex<HashMap<K, Entry<V>>>>;

/// In-flight work by key. The map lock is only held to look up or insert, never
/// across an await.
pub(super) struct Flights<K, V> {
    map: Map<K, V>,
    next_id: AtomicU64,
}

impl<K, V> std::fmt::Debug for Flights<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let in_flight = self.map.lock().map(|m| m.len()).unwrap_or_default();
        f.debug_struct("Flights")
            .field("in_flight", &in_flight)
            .finish()
    }
}

/// Takes a flight out of the map when its task ends, whichever way: a result,
/// an error, a panic, or the runtime dropping the task. Without it a panicking
/// fetch left its key answering "stopped before finishing" until restart.
struct Departure<K: Eq + Hash, V> {
    map: Map<K, V>,
    key: K,
    id: u64,
}

impl<K: Eq + Hash, V> Drop for Departure<K, V> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        // A later flight of the same key is not ours to remove.
        if map.get(&self.key).is_some_and(|e| e.id == self.id) {
            map.remove(&self.key);
        }
    }
}

impl<K, V> Flights<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(super) fn new() -> Self {
        Flights {
            map: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
        }
    }

    /// Flights under way.
    #[cfg(test)]
    pub(super) fn in_flight(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or_default()
    }

    /// Awaits the flight for `key`, starting `work()` as a detached task when none
    /// is under way. The task runs to completion even if every caller goes away,
    /// so a fetch once started always ends in storage. Returns whether this call
    /// started the flight.
    pub(super) async fn run<F, W>(&self, key: K, work: W) -> (Result<V>, bool)
    where
        W: FnOnce() -> F,
        F: Future<Output = Result<V>> + Send + 'static,
    {
        let (shared, started) = {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            match map.get(&key) {
                Some(entry) => (entry.shared.clone(), false),
                None => {
                    let fut = work();
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let departure = Departure {
                        map: Arc::clone(&self.map),
                        key: key.clone(),
                        id,
                    };
                    let task = tokio::spawn(
                        async move {
                            let result = fut.await.map_err(Arc::new);
                            // Removed before waiters wake: whoever comes next finds the
                            // result in storage or starts a clean retry.
                            drop(departure);
                            result
                        }
                        // Logs of the fetch stay attributed to the request that started it.
                        .in_current_span(),
                    );
                    let shared = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(Arc::new(super::aborted(&format!("manifest fetch ({e})"))))
                        })
                    }
                    .boxed()
                    .shared();
                    map.insert(
                        key,
                        Entry {
                            id,
                            shared: shared.clone(),
                        },
                    );
                    (shared, true)
                }
            }
        };
        (shared.await.map_err(|e| e.duplicate()), started)
    }
}
