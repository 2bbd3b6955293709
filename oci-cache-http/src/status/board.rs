//! [`StatusBoard`]: what the status page shows that no metric counts —
//! each upstream's last success and last error, the breakers, when each fill
//! started, and which images are pulled — kept small and bounded in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use oci_cache_core::observe::{
    BreakerEvent, FillEvent, FillPhase, Observer, UpstreamEvent, UpstreamOutcome,
};
use oci_cache_core::reference::{ManifestRef, Registry, Repository};
use oci_cache_core::UpstreamErrorKind;

/// Images remembered at most; when full, the least pulled (then the least
/// recently pulled) makes room, so a client inventing names cannot grow it.
pub(crate) const MAX_IMAGES: usize = 512;

/// Health of one upstream, from its attempts.
#[derive(Debug, Clone, Default)]
pub(crate) struct UpstreamHealth {
    pub(crate) last_success: Option<SystemTime>,
    pub(crate) last_error: Option<LastError>,
    /// Endpoints attempts went to, in the order first seen.
    pub(crate) endpoints: Vec<String>,
}

/// The last failed attempt on an upstream.
#[derive(Debug, Clone)]
pub(crate) struct LastError {
    pub(crate) at: SystemTime,
    pub(crate) endpoint: String,
    pub(crate) kind: &'static str,
}

/// How much one image (upstream and repository) is pulled.
#[derive(Debug, Clone)]
pub(crate) struct ImageUse {
    /// Manifest requests by tag: one per pull (a pull resolves its tag
    /// once, then fetches manifests by digest).
    pub(crate) pulls: u64,
    pub(crate) last_pulled: SystemTime,
    /// The tag or digest last asked for.
    pub(crate) last_reference: ManifestRef,
}

#[derive(Debug, Default)]
struct Board {
    upstreams: BTreeMap<String, UpstreamHealth>,
    /// Endpoint → whether its breaker is open.
    breakers: HashMap<String, bool>,
    /// Digest → (upstream, when the fill started).
    fills: HashMap<String, (String, SystemTime)>,
    /// Upstream → repository → its use: looked up by reference, so a
    /// repeated pull allocates nothing.
    images: HashMap<Registry, HashMap<Repository, ImageUse>>,
    /// Entries in `images`, at most [`MAX_IMAGES`].
    image_count: usize,
}

impl Board {
    /// Forgets the least pulled (then least recently pulled) image.
    fn forget_least_pulled(&mut self) {
        let least = self
            .images
            .iter()
            .flat_map(|(upstream, repositories)| {
                repositories
                    .iter()
                    .map(move |(repository, u)| ((u.pulls, u.last_pulled), upstream, repository))
            })
            .min_by_key(|(rank, _, _)| *rank)
            .map(|(_, upstream, repository)| (upstream.clone(), repository.clone()));
        if let Some((upstream, repository)) = least {
            if let Some(repositories) = self.images.get_mut(&upstream) {
                if repositories.remove(&repository).is_some() {
                    self.image_count -= 1;
                }
                if repositories.is_empty() {
                    self.images.remove(&upstream);
                }
            }
        }
    }
}

/// The status page's own memory, fed as an [`Observer`] (and by the service
/// for the images pulled). Every counted figure comes from
/// [`Metrics`](crate::metrics::Metrics) instead.
#[derive(Debug)]
pub struct StatusBoard {
    started: Instant,
    started_at: SystemTime,
    board: Mutex<Board>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard::new()
    }
}

impl StatusBoard {
    /// An empty board; uptime counts from now.
    pub fn new() -> Self {
        StatusBoard {
            started: Instant::now(),
            started_at: SystemTime::now(),
            board: Mutex::default(),
        }
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        // Every update leaves the board consistent: a panic elsewhere cannot
        // have left it half-written.
        self.board.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the process started serving, and for how long it has.
    pub(crate) fn uptime(&self) -> (SystemTime, std::time::Duration) {
        (self.started_at, self.started.elapsed())
    }

    /// Records a manifest served from `repository` of `upstream`.
    pub(crate) fn record_manifest(
        &self,
        upstream: &Registry,
        repository: &Repository,
        reference: &ManifestRef,
    ) {
        let by_tag = matches!(reference, ManifestRef::Tag(_));
        let now = SystemTime::now();
        let mut board = self.board();
        let known = board
            .images
            .get(upstream)
            .is_some_and(|repositories| repositories.contains_key(repository));
        if !known {
            if board.image_count >= MAX_IMAGES {
                board.forget_least_pulled();
            }
            board.images.entry(upstream.clone()).or_default().insert(
                repository.clone(),
                ImageUse {
                    pulls: 0,
                    last_pulled: now,
                    last_reference: reference.clone(),
                },
            );
            board.image_count += 1;
        }
        let Some(entry) = board
            .images
            .get_mut(upstream)
            .and_then(|repositories| repositories.get_mut(repository))
        else {
            return;
        };
        if by_tag {
            entry.pulls += 1;
        }
        entry.last_pulled = now;
        if entry.last_reference != *reference {
            entry.last_reference = reference.clone();
        }
    }

    /// Images by name, most pulled first (ties: most recent first).
    pub(crate) fn most_pulled(&self, n: usize) -> Vec<(String, ImageUse)> {
        let mut images = self.images();
        images.sort_by(|a, b| {
            b.1.pulls
                .cmp(&a.1.pulls)
                .then(b.1.last_pulled.cmp(&a.1.last_pulled))
                .then(a.0.cmp(&b.0))
        });
        images.truncate(n);
        images
    }

    /// Images by name, most recently pulled first.
    pub(crate) fn most_recent(&self, n: usize) -> Vec<(String, ImageUse)> {
        let mut images = self.images();
        images.sort_by(|a, b| b.1.last_pulled.cmp(&a.1.last_pulled).then(a.0.cmp(&b.0)));
        images.truncate(n);
        images
    }

    fn images(&self) -> Vec<(String, ImageUse)> {
        self.board()
            .images
            .iter()
            .flat_map(|(upstream, repositories)| {
                repositories
                    .iter()
                    .map(move |(repository, u)| (format!("{upstream}/{repository}"), u.clone()))
            })
            .collect()
    }

    /// The health of `upstream` as its attempts showed it.
    pub(crate) fn upstream(&self, upstream: &str) -> UpstreamHealth {
        self.board()
            .upstreams
            .get(upstream)
            .cloned()
            .unwrap_or_default()
    }

    /// Whether `endpoint`'s breaker is open.
    pub(crate) fn breaker_open(&self, endpoint: &str) -> bool {
        self.board()
            .breakers
            .get(endpoint)
            .copied()
            .unwrap_or(false)
    }

    /// The upstream and start of the fill of `digest`, if one is under way.
    pub(crate) fn fill_started(&self, digest: &str) -> Option<(String, SystemTime)> {
        self.board().fills.get(digest).cloned()
    }
}

impl Observer for StatusBoard {
    fn upstream(&self, event: &UpstreamEvent) {
        if event.body_ended {
            return;
        }
        let now = SystemTime::now();
        let mut board = self.board();
        let health = board
            .upstreams
            .entry(event.upstream.to_string())
            .or_default();
        if !health.endpoints.contains(&event.endpoint) {
            health.endpoints.push(event.endpoint.clone());
        }
        match event.outcome {
            // An answer that the content does not exist is a healthy upstream.
            UpstreamOutcome::Ok | UpstreamOutcome::Failed(UpstreamErrorKind::NotFound) => {
                health.last_success = Some(now);
            }
            // Not sent at all (breaker open, offline mode): the error that
            // opened the breaker stays the last one shown.
            UpstreamOutcome::Failed(UpstreamErrorKind::Skipped | UpstreamErrorKind::Offline) => {}
            UpstreamOutcome::Failed(kind) => {
                health.last_error = Some(LastError {
                    at: now,
                    endpoint: event.endpoint.clone(),
                    kind: kind.as_str(),
                });
            }
            // A new outcome is neither.
            _ => {}
        }
    }

    fn breaker(&self, event: &BreakerEvent) {
        self.board()
            .breakers
            .insert(event.endpoint.clone(), event.open);
    }

    fn fill(&self, event: &FillEvent) {
        let digest = event.digest.to_string();
        let mut board = self.board();
        match event.phase {
            FillPhase::Started => {
                board
                    .fills
                    .insert(digest, (event.upstream.to_string(), SystemTime::now()));
            }
            FillPhase::Stored { .. } | FillPhase::Failed { .. } | FillPhase::Relayed { .. } => {
                board.fills.remove(&digest);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use oci_cache_core::reference::Tag;

    fn tag(name: &str) -> ManifestRef {
        ManifestRef::Tag(Tag::new(name).unwrap())
    }

    #[test]
    fn images_are_counted_per_repository_and_bounded() {
        let board = StatusBoard::new();
        let hub = Registry::new("hub").unwrap();
        let repo = |i: usize| Repository::new(&format!("team/app{i}")).unwrap();
        // app0 is pulled twice, then every other one once.
        board.record_manifest(&hub, &repo(0), &tag("v1"));
        board.record_manifest(&hub, &repo(0), &tag("v2"));
        for i in 1..=MAX_IMAGES {
            board.record_manifest(&hub, &repo(i), &tag("v1"));
        }
        let images = board.most_pulled(MAX_IMAGES + 1);
        assert_eq!(images.len(), MAX_IMAGES, "the board stays bounded");
        let (name, top) = &images[0];
        assert_eq!(name, "hub/team/app0");
        assert_eq!(top.pulls, 2);
        assert_eq!(top.last_reference.to_string(), "v2");
        // The one dropped to make room was one pulled once.
        assert!(images[1..].iter().all(|(_, u)| u.pulls == 1));
    }
}
