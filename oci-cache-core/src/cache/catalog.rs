//! The repository names `_catalog` answers from, kept in memory.
//!
//! Listing repositories means listing every tag record, which grows with the
//! store (0.3 s for 10,000 repositories on the filesystem); doing that per
//! request made `_catalog` linear in the store's size. The index is loaded
//! by the first request (one listing, shared by concurrent first requests),
//! grows as this process records tags, and is replaced by a background
//! listing when older than [`REFRESH`], so what other processes sharing the
//! storage cached shows up too. A request then costs a range of a sorted set:
//! `O(log N + page)`.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::Result;

/// How old the index may get before a request starts a background re-listing.
pub(crate) const REFRESH: Duration = Duration::from_secs(60);

/// Loads every name from storage.
pub(crate) type Loader =
    Box<dyn Fn() -> BoxFuture<'static, Result<BTreeSet<String>>> + Send + Sync>;

/// A sorted set of names, loaded once and refreshed in the background.
pub(crate) struct NameIndex {
    state: Arc<Mutex<State>>,
    /// Single flight for the first load (and the load after an invalidation).
    loading: tokio::sync::Mutex<()>,
    loader: Arc<Loader>,
    refresh: Duration,
}

#[derive(Default)]
struct State {
    names: Option<BTreeSet<String>>,
    loaded_at: Option<Instant>,
    /// Names inserted while a background listing runs: it may have missed them.
    refreshing: Option<Vec<String>>,
    /// Bumped by [`NameIndex::invalidate`]; a listing started before is discarded.
    generation: u64,
}

impl std::fmt::Debug for NameIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = lock(&self.state).names.as_ref().map(BTreeSet::len);
        f.debug_struct("NameIndex")
            .field("names", &names)
            .finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl NameIndex {
    pub(crate) fn new(loader: Loader, refresh: Duration) -> Self {
        NameIndex {
            state: Arc::default(),
            loading: tokio::sync::Mutex::new(()),
            loader: Arc::new(loader),
            refresh,
        }
    }

    /// Up to `limit` names after `last`, in order.
    pub(crate) async fn page(
        &self,
        last: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<String>> {
        if lock(&self.state).names.is_none() {
            let _first = self.loading.lock().await;
            let generation = lock(&self.state).generation;
            if lock(&self.state).names.is_none() {
                let names = (self.loader)().await?;
                let mut state = lock(&self.state);
                if state.generation == generation {
                    state.names = Some(names);
                    state.loaded_at = Some(Instant::now());
                }
            }
        }
        let page = {
            let mut state = lock(&self.state);
            let stale = state
                .loaded_at
                .is_some_and(|at| at.elapsed() >= self.refresh);
            if stale && state.refreshing.is_none() {
                self.spawn_refresh(&mut state);
            }
            state.names.as_ref().map(|names| slice(names, last, limit))
        };
        match page {
            Some(page) => Ok(page),
            // Invalidated while this request loaded: an empty answer would
            // lie, so this one answers from storage.
            None => Ok(slice(&(self.loader)().await?, last, limit)),
        }
    }

    /// Adds a name this process just recorded.
    pub(crate) fn insert(&self, name: String) {
        let mut state = lock(&self.state);
        if let Some(inserted) = &mut state.refreshing {
            inserted.push(name.clone());
        }
        if let Some(names) = &mut state.names {
            names.insert(name);
        }
    }

    /// Forgets the index (after names were removed): the next request lists again.
    pub(crate) fn invalidate(&self) {
        let mut state = lock(&self.state);
        state.names = None;
        state.loaded_at = None;
        state.refreshing = None;
        state.generation += 1;
    }

    /// Starts a background listing (the caller holds the state's lock).
    fn spawn_refresh(&self, current: &mut State) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        current.refreshing = Some(Vec::new());
        let generation = current.generation;
        let state = Arc::clone(&self.state);
        let loader = Arc::clone(&self.loader);
        runtime.spawn(async move {
            let listed = loader().await;
            let mut state = lock(&state);
            if state.generation != generation {
                return;
            }
            let inserted = state.refreshing.take().unwrap_or_default();
            match listed {
                Ok(mut names) => {
                    names.extend(inserted);
                    state.names = Some(names);
                    state.loaded_at = Some(Instant::now());
                }
                Err(e) => {
                    // Keep serving the old index; the next request tries again.
                    tracing::warn!(error = %crate::ErrorChain(&e), "refreshing the repository list failed");
                }
            }
        });
    }
}

fn slice(names: &BTreeSet<String>, last: Option<&str>, limit: Option<usize>) -> Vec<String> {
    let start = match last {
        Some(last) => Bound::Excluded(last.to_owned()),
        None => Bound::Unbounded,
    };
    names
        .range((start, Bound::Unbounded))
        .take(limit.unwrap_or(usize::MAX))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt;

    use super::*;

    fn counting(names: &[&str]) -> (NameIndex, Arc<AtomicUsize>, Arc<Mutex<BTreeSet<String>>>) {
        let listings = Arc::new(AtomicUsize::new(0));
        let stored = Arc::new(Mutex::new(
            names
                .iter()
                .map(|n| (*n).to_owned())
                .collect::<BTreeSet<_>>(),
        ));
        let (count, source) = (Arc::clone(&listings), Arc::clone(&stored));
        let loader: Loader = Box::new(move || {
            count.fetch_add(1, Ordering::SeqCst);
            let names = source.lock().unwrap().clone();
            async move { Ok(names) }.boxed()
        });
        (NameIndex::new(loader, REFRESH), listings, stored)
    }

    #[tokio::test]
    async fn one_listing_serves_every_page_and_inserts() {
        let (index, listings, _) = counting(&["b/x", "a/y", "c/z"]);
        assert_eq!(index.page(None, None).await.unwrap(), ["a/y", "b/x", "c/z"]);
        assert_eq!(index.page(Some("a/y"), Some(1)).await.unwrap(), ["b/x"]);
        index.insert("a/z".to_owned());
        assert_eq!(
            index.page(Some("a/y"), Some(2)).await.unwrap(),
            ["a/z", "b/x"]
        );
        assert_eq!(listings.load(Ordering::SeqCst), 1);
        index.invalidate();
        assert_eq!(index.page(None, Some(1)).await.unwrap(), ["a/y"]);
        assert_eq!(listings.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_stale_index_is_refreshed_in_the_background_with_what_others_stored() {
        let (index, listings, stored) = counting(&["a/x"]);
        let index = NameIndex {
            refresh: Duration::ZERO,
            ..index
        };
        assert_eq!(index.page(None, None).await.unwrap(), ["a/x"]);
        // Another process sharing the storage cached a repository.
        stored.lock().unwrap().insert("b/y".to_owned());
        tokio::time::timeout(Duration::from_secs(5), async {
            while index.page(None, None).await.unwrap().len() < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert!(listings.load(Ordering::SeqCst) >= 2);
    }
}
