//! Reloading the configuration of a running engine: a new engine over the
//! same stored state and fills under way ([`PullThrough::reconfigured`]).

use std::sync::Arc;

use super::CacheOptions;
use super::{catalog, flight, hot, repository_lister, revalidated, tags, PullThrough, Shared};
use crate::storage::Storage;
use crate::upstream::Upstream;

impl<S: Storage + ?Sized, U: Upstream + ?Sized> PullThrough<S, U> {
    /// The same engine with another upstream and other options, for a
    /// configuration reload: it shares this engine's storage, disk budget,
    /// observer, pull policy, fleet and the blob fills under way (a request
    /// to the new engine joins a fill the old one started, which goes on
    /// from the old upstream), and starts afresh with everything derived
    /// from the options (manifest single flights, tag lists, the hot
    /// manifest cache, the catalog index).
    ///
    /// The disk budget keeps this engine's `max_size` (the evictor holds
    /// it): a changed `max_size` in `options` takes effect on a restart.
    pub fn reconfigured(&self, upstream: Arc<U>, options: CacheOptions) -> Self {
        let old = &self.inner;
        let storage = Arc::clone(&old.storage);
        let catalog = catalog::NameIndex::new(repository_lister(&storage), catalog::REFRESH);
        let fleet = std::sync::OnceLock::new();
        if let Some(joined) = old.fleet.get() {
            let _ = fleet.set(joined.clone());
        }
        PullThrough {
            inner: Arc::new(Shared {
                catalog,
                storage,
                upstream,
                budget: Arc::clone(&old.budget),
                options,
                blob_fills: old.blob_fills.shared(),
                manifest_flights: flight::Flights::new(),
                referrer_flights: flight::Flights::new(),
                tag_lists: tags::TagLists::new(),
                hot: hot::HotCache::new(),
                observer: old.observer.clone(),
                fleet,
                revalidated: revalidated::Revalidated::default(),
                policy: old.policy.clone(),
            }),
        }
    }
}
