//! Tag lists: one upstream fetch for concurrent identical requests, a short
//! cache behind it, and the cached tags when upstream fails.
//!
//! A tag list is the one upstream answer whose size the client chooses (by
//! repository), so identical requests arriving together must not each hold
//! their own copy: they share one flight, and for [`TAG_LIST_TTL`] after it
//! the same answer is reused. The cache holds at most [`MAX_CACHED_LISTS`]
//! answers, so made-up repository names cannot grow it without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::warn;

use super::{flight, PullThrough};
use crate::error::ErrorChain;
use crate::observe::CacheOutcome;
use crate::reference::{Registry, Repository};
use crate::storage::Storage;
use crate::upstream::{TagList, Upstream};
use crate::Result;

/// How long an upstream tag list is reused. Short: tags move, but a burst of
/// identical requests (a CI fleet listing tags) makes one upstream call.
pub(super) const TAG_LIST_TTL: Duration = Duration::from_secs(5);

/// Most tag lists kept for [`TAG_LIST_TTL`].
pub(super) const MAX_CACHED_LISTS: usize = 256;

/// What one upstream tag-list request is: registry, repository, `n`, `last`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct TagsKey {
    registry: Registry,
    repository: Repository,
    n: Option<usize>,
    last: Option<String>,
}

/// The tag-list single flight and its short cache.
pub(super) struct TagLists {
    flights: flight::Flights<TagsKey, Arc<TagList>>,
    recent: Mutex<HashMap<TagsKey, (Instant, Arc<TagList>)>>,
}

impl std::fmt::Debug for TagLists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TagLists")
            .field("flights", &self.flights)
            .finish_non_exhaustive()
    }
}

impl TagLists {
    pub(super) fn new() -> Self {
        TagLists {
            flights: flight::Flights::new(),
            recent: Mutex::new(HashMap::new()),
        }
    }

    fn recent(&self, key: &TagsKey) -> Option<Arc<TagList>> {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent
            .get(key)
            .filter(|(at, _)| at.elapsed() < TAG_LIST_TTL)
            .map(|(_, list)| Arc::clone(list))
    }

    fn remember(&self, key: TagsKey, list: Arc<TagList>) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.retain(|_, (at, _)| at.elapsed() < TAG_LIST_TTL);
        if recent.len() >= MAX_CACHED_LISTS {
            let oldest = recent
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                recent.remove(&oldest);
            }
        }
        recent.insert(key, (Instant::now(), list));
    }

    #[cfg(test)]
    pub(super) fn cached(&self) -> usize {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl<S, U> PullThrough<S, U>
where
    S: Storage + ?Sized + 'static,
    U: Upstream + ?Sized + 'static,
{
    /// Tags of a repository, `n` at most after `last` (both forwarded
    /// upstream): upstream first, the cached tags when upstream fails.
    pub async fn tags(
        &self,
        registry: &Registry,
        repository: &Repository,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<(TagList, CacheOutcome)> {
        self.allowed(registry, repository, None)?;
        let key = TagsKey {
            registry: registry.clone(),
            repository: repository.clone(),
            n,
            last: last.map(str::to_owned),
        };
        let lists = &self.inner.tag_lists;
        let fetched = match lists.recent(&key) {
            Some(list) => Ok(list),
            None => {
                let engine = Arc::clone(&self.inner);
                let task_key = key.clone();
                let (result, _) = lists
                    .flights
                    .run(key.clone(), move || async move {
                        let list = engine
                            .upstream
                            .tag_list(
                                &task_key.registry,
                                &task_key.repository,
                                task_key.n,
                                task_key.last.as_deref(),
                            )
                            .await?;
                        Ok(Arc::new(list))
                    })
                    .await;
                if let Ok(list) = &result {
                    lists.remember(key, Arc::clone(list));
                }
                result
            }
        };
        let upstream_error = match fetched {
            Ok(list) => return Ok((TagList::clone(&list), CacheOutcome::Miss)),
            Err(e) => e,
        };
        let cached = self.inner.storage.tag_list(registry, repository).await?;
        if cached.is_empty() {
            return Err(upstream_error);
        }
        warn!(%registry, %repository, error = %ErrorChain(&upstream_error), "tag list from upstream failed; serving cached tags");
        let list = TagList {
            name: repository.to_string(),
            tags: cached.iter().map(|t| t.to_string()).collect(),
        };
        Ok((list, CacheOutcome::Stale))
    }
}
