//! Per-upstream request budgets: a cap on concurrent requests, an optional
//! request rate, and a queue in which tokens and manifests go ahead of blobs.
//!
//! Every request to an upstream (API, token, blob; a redirect chain is one
//! request) takes a [`Permit`] in `transport::follow` and holds it until its
//! answer is read: a manifest, token or tag list until its body is in, a blob
//! until its body has streamed (or was dropped). So the cap is the number of
//! connections the mirror has open to that upstream, which is what a
//! registry counts.
//!
//! Holding a permit for a 10 GiB body must not starve manifests: blobs may
//! take at most `cap - reserve` permits (`reserve` is a quarter of the cap,
//! at least one), so manifests and tokens always find a free slot after at
//! most one short request, and when a permit frees up, a waiting manifest or
//! token request gets it before any waiting blob.
//!
//! The rate is a token bucket (burst of one second's worth) taken after the
//! permit, so a request waiting for the rate already holds its place.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oci_cache_core::observe::{BudgetEvent, SharedObserver};
use oci_cache_core::reference::Registry;
use tokio::sync::oneshot;

/// Where a request queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Priority {
    /// Tokens, manifests, tag lists: small, and what every pull waits on first.
    Urgent,
    /// Blobs: possibly huge, and may only use the slots not reserved for urgent ones.
    Bulk,
}

/// How much one upstream may be asked at once and per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BudgetLimits {
    /// Requests in flight at most (at least 2).
    pub(crate) max_concurrent: usize,
    /// Requests started per second at most; `None`: unlimited.
    pub(crate) per_second: Option<f64>,
}

impl BudgetLimits {
    /// The slots urgent requests keep for themselves.
    fn reserve(&self) -> usize {
        (self.max_concurrent / 4).max(1)
    }
}

#[derive(Debug)]
struct State {
    in_use: usize,
    bulk_in_use: usize,
    urgent: VecDeque<oneshot::Sender<Permit>>,
    bulk: VecDeque<oneshot::Sender<Permit>>,
    /// Token bucket: tokens left (negative: reserved ahead) as of `refilled`.
    tokens: f64,
    refilled: Instant,
}

impl State {
    fn queued(&self) -> usize {
        self.urgent.len() + self.bulk.len()
    }
}

/// The budget of one upstream.
#[derive(Debug)]
pub(crate) struct Budget {
    upstream: Registry,
    limits: BudgetLimits,
    observer: SharedObserver,
    state: Mutex<State>,
}

/// A slot in an upstream's budget, given back when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    budget: Arc<Budget>,
    bulk: bool,
    /// False for a permit that was never handed out (its waiter was gone).
    armed: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.armed {
            self.budget.release(self.bulk);
        }
    }
}

impl Budget {
    /// The budget of `upstream`, reporting its queue to `observer`.
    pub(super) fn new(upstream: Registry, limits: BudgetLimits, observer: SharedObserver) -> Self {
        let limits = BudgetLimits {
            max_concurrent: limits.max_concurrent.max(2),
            per_second: limits.per_second.filter(|r| r.is_finite() && *r > 0.0),
        };
        Budget {
            upstream,
            observer,
            state: Mutex::new(State {
                in_use: 0,
                bulk_in_use: 0,
                urgent: VecDeque::new(),
                bulk: VecDeque::new(),
                tokens: limits.per_second.map_or(0.0, burst),
                refilled: Instant::now(),
            }),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one still holds counts.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn may_start(&self, state: &State, priority: Priority) -> bool {
        let free = state.in_use < self.limits.max_concurrent;
        match priority {
            Priority::Urgent => free,
            Priority::Bulk => {
                free && state.bulk_in_use < self.limits.max_concurrent - self.limits.reserve()
            }
        }
    }

    fn take(self: &Arc<Self>, state: &mut State, bulk: bool) -> Permit {
        state.in_use += 1;
        if bulk {
            state.bulk_in_use += 1;
        }
        Permit {
            budget: Arc::clone(self),
            bulk,
            armed: true,
        }
    }

    /// Waits for a slot (urgent requests first), then for the rate.
    pub(super) async fn acquire(self: &Arc<Self>, priority: Priority) -> Permit {
        let started = Instant::now();
        let bulk = priority == Priority::Bulk;
        let waiting = {
            let mut state = self.lock();
            let nobody_ahead = state.urgent.is_empty() && (!bulk || state.bulk.is_empty());
            if nobody_ahead && self.may_start(&state, priority) {
                Ok(self.take(&mut state, bulk))
            } else {
                let (sender, receiver) = oneshot::channel();
                match priority {
                    Priority::Urgent => state.urgent.push_back(sender),
                    Priority::Bulk => state.bulk.push_back(sender),
                }
                Err((receiver, state.queued()))
            }
        };
        let permit = match waiting {
            Ok(permit) => permit,
            Err((receiver, queued)) => {
                self.report(queued, None);
                match receiver.await {
                    Ok(permit) => permit,
                    // Only when the budget itself is gone, which the Arc we hold prevents.
                    Err(_) => {
                        let mut state = self.lock();
                        self.take(&mut state, bulk)
                    }
                }
            }
        };
        if let Some(wait) = self.reserve_rate() {
            tokio::time::sleep(wait).await;
        }
        let queued = self.lock().queued();
        self.report(queued, Some(started.elapsed()));
        permit
    }

    /// Takes one token of the rate; how long to wait before sending, if at all.
    fn reserve_rate(&self) -> Option<Duration> {
        let rate = self.limits.per_second?;
        let mut state = self.lock();
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
        state.tokens = (state.tokens + elapsed * rate).min(burst(rate));
        state.refilled = now;
        state.tokens -= 1.0;
        (state.tokens < 0.0).then(|| Duration::from_secs_f64(-state.tokens / rate))
    }

    /// A permit came back: hands free slots to waiters, urgent ones first.
    fn release(self: &Arc<Self>, bulk: bool) {
        let mut state = self.lock();
        state.in_use = state.in_use.saturating_sub(1);
        if bulk {
            state.bulk_in_use = state.bulk_in_use.saturating_sub(1);
        }
        loop {
            let next = if self.may_start(&state, Priority::Urgent) && !state.urgent.is_empty() {
                state.urgent.pop_front().map(|s| (s, false))
            } else if self.may_start(&state, Priority::Bulk) {
                state.bulk.pop_front().map(|s| (s, true))
            } else {
                None
            };
            let Some((sender, bulk)) = next else { break };
            let permit = self.take(&mut state, bulk);
            if let Err(mut unsent) = sender.send(permit) {
                // The waiter gave up (its request was cancelled): undo here,
                // under the lock, instead of in the permit's drop.
                unsent.armed = false;
                state.in_use = state.in_use.saturating_sub(1);
                if bulk {
                    state.bulk_in_use = state.bulk_in_use.saturating_sub(1);
                }
            }
        }
    }

    fn report(&self, queued: usize, waited: Option<Duration>) {
        self.observer.budget(&BudgetEvent {
            upstream: self.upstream.clone(),
            queued,
            waited,
        });
    }
}

/// Tokens a full bucket holds: one second's worth, at least one request.
fn burst(rate: f64) -> f64 {
    rate.max(1.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use oci_cache_core::observe;

    fn budget(max_concurrent: usize, per_second: Option<f64>) -> Arc<Budget> {
        Arc::new(Budget::new(
            Registry::docker_hub(),
            BudgetLimits {
                max_concurrent,
                per_second,
            },
            observe::noop(),
        ))
    }

    #[tokio::test]
    async fn blobs_leave_the_reserve_to_urgent_requests() {
        let b = budget(4, None);
        let blobs: Vec<Permit> = vec![
            b.acquire(Priority::Bulk).await,
            b.acquire(Priority::Bulk).await,
            b.acquire(Priority::Bulk).await,
        ];
        // The fourth blob waits; a manifest still gets the reserved slot.
        let fourth = tokio::spawn({
            let b = b.clone();
            async move { b.acquire(Priority::Bulk).await }
        });
        let manifest = tokio::time::timeout(Duration::from_secs(1), b.acquire(Priority::Urgent))
            .await
            .expect("a manifest is not kept waiting by blobs");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!fourth.is_finished());
        drop(manifest);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!fourth.is_finished(), "blobs never take the reserved slot");
        drop(blobs);
        let _fourth = tokio::time::timeout(Duration::from_secs(1), fourth)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.lock().in_use, 1);
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_a_waiting_manifest_before_waiting_blobs() {
        let b = budget(2, None);
        let held = [
            b.acquire(Priority::Urgent).await,
            b.acquire(Priority::Urgent).await,
        ];
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (name, priority) in [("blob", Priority::Bulk), ("manifest", Priority::Urgent)] {
            let (b, order) = (b.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let permit = b.acquire(priority).await;
                order.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(permit);
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(held);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["manifest", "blob"]);
        assert_eq!(b.lock().in_use, 0);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_gives_its_slot_back() {
        let b = budget(2, None);
        let held = [
            b.acquire(Priority::Urgent).await,
            b.acquire(Priority::Urgent).await,
        ];
        let cancelled =
            tokio::time::timeout(Duration::from_millis(10), b.acquire(Priority::Urgent));
        assert!(cancelled.await.is_err());
        drop(held);
        assert_eq!(b.lock().in_use, 0);
        let _again = b.acquire(Priority::Urgent).await;
        assert_eq!(b.lock().in_use, 1);
    }

    #[tokio::test]
    async fn the_rate_spaces_requests() {
        let b = budget(8, Some(20.0));
        let started = Instant::now();
        for _ in 0..40 {
            drop(b.acquire(Priority::Urgent).await);
        }
        // A burst of 20, then 20 more at 20/s: about one second.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(900), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
}
