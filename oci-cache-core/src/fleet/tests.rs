//! The lease protocol against `object_store`'s in-memory store (which
//! honours conditional puts), on paused time.

use std::sync::Arc;
use std::time::Duration;

use object_store::memory::InMemory;
use object_store::ObjectStore;

use super::*;
use crate::storage::ObjectStorage;
use crate::testing::CountingStore;

fn identity(n: u32) -> FleetIdentity {
    FleetIdentity {
        holder_id: format!("replica-{n}"),
        advertise_url: format!("http://127.0.0.{n}:5000"),
    }
}

fn bucket() -> ObjectStorage {
    ObjectStorage::new(Arc::new(InMemory::new()), "cache")
}

fn replica(storage: &ObjectStorage, n: u32) -> Leases {
    Leases::new(storage, identity(n), LeaseTimings::default())
}

fn digest() -> Digest {
    Digest::sha256_of(b"a blob being filled")
}

fn mine(claim: Claim) -> lease::HeldLease {
    match claim {
        Claim::Mine(held) => held,
        Claim::Held(seen) => panic!("held by {}", seen.holder_id()),
    }
}

fn held(claim: Claim) -> Observed {
    match claim {
        Claim::Held(seen) => seen,
        Claim::Mine(_) => panic!("expected another holder"),
    }
}

#[tokio::test(start_paused = true)]
async fn acquire_heartbeat_release() {
    let bucket = bucket();
    let (a, b) = (replica(&bucket, 1), replica(&bucket, 2));
    let key = a.fill_key(&digest()).unwrap();
    assert!(
        key.as_ref().starts_with("cache/leases/fill/sha256/"),
        "{key}"
    );

    let mut lease = mine(a.claim(&key, None).await.unwrap());
    assert_eq!(lease.seq(), 0);
    let seen = held(b.claim(&key, None).await.unwrap());
    assert_eq!(seen.holder_url(), "http://127.0.0.1:5000");

    assert!(lease.heartbeat().await.unwrap());
    assert!(lease.heartbeat().await.unwrap());
    assert_eq!(lease.seq(), 2);
    assert!(
        b.changed(&key, &seen).await.unwrap(),
        "a heartbeat changes the lease"
    );

    lease.release().await;
    // Released: the next claimant gets it at once.
    let again = mine(b.claim(&key, None).await.unwrap());
    assert_eq!(again.seq(), 0);
}

#[tokio::test(start_paused = true)]
async fn of_two_contenders_exactly_one_wins() {
    let bucket = bucket();
    let (a, b) = (replica(&bucket, 1), replica(&bucket, 2));
    let key = a.fill_key(&digest()).unwrap();
    let (ca, cb) = tokio::join!(a.claim(&key, None), b.claim(&key, None));
    let winners = [ca.unwrap(), cb.unwrap()]
        .into_iter()
        .filter(|c| matches!(c, Claim::Mine(_)))
        .count();
    assert_eq!(winners, 1);
}

#[tokio::test(start_paused = true)]
async fn a_silent_holder_is_taken_over_by_exactly_one_taker_after_the_ttl() {
    let bucket = bucket();
    let holder = replica(&bucket, 1);
    let takers: Vec<Leases> = (2..=4).map(|n| replica(&bucket, n)).collect();
    let key = holder.fill_key(&digest()).unwrap();
    let mut lease = mine(holder.claim(&key, None).await.unwrap());

    let mut seen = Vec::new();
    for taker in &takers {
        seen.push(held(taker.claim(&key, None).await.unwrap()));
    }
    // Renewed within the TTL: never taken over, however long it runs.
    for _ in 0..10 {
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(lease.heartbeat().await.unwrap());
        for (taker, seen) in takers.iter().zip(seen.iter_mut()) {
            *seen = held(taker.claim(&key, Some(seen.clone())).await.unwrap());
        }
    }
    // The holder stops. Just before the TTL on the takers' clocks: still held.
    tokio::time::advance(Duration::from_millis(9_900)).await;
    for (taker, seen) in takers.iter().zip(seen.iter_mut()) {
        *seen = held(taker.claim(&key, Some(seen.clone())).await.unwrap());
    }
    tokio::time::advance(Duration::from_millis(100)).await;
    let claims = futures::future::join_all(
        takers
            .iter()
            .zip(seen.iter())
            .map(|(taker, seen)| taker.claim(&key, Some(seen.clone()))),
    )
    .await;
    let mut winners = Vec::new();
    for claim in claims {
        match claim.unwrap() {
            Claim::Mine(won) => winners.push(won),
            Claim::Held(seen) => assert_eq!(seen.holder_id(), "replica-2"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one taker wins");
    assert_eq!(winners[0].seq(), 11, "the taker continues the sequence");

    // The old holder wakes up: its heartbeat fails and it stops for good.
    assert!(!lease.heartbeat().await.unwrap());
    assert!(lease.is_lost());
    assert!(!lease.heartbeat().await.unwrap());
    // Its release leaves the taker's lease alone.
    lease.release().await;
    let mut won = winners.pop().unwrap();
    assert!(won.heartbeat().await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_kept_lease_renews_itself_until_released() {
    let bucket = bucket();
    let (a, b) = (replica(&bucket, 1), replica(&bucket, 2));
    let key = a.fill_key(&digest()).unwrap();
    let kept = mine(a.claim(&key, None).await.unwrap()).keep();
    let mut seen = held(b.claim(&key, None).await.unwrap());
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        seen = held(b.claim(&key, Some(seen)).await.unwrap());
    }
    kept.release().await;
    mine(b.claim(&key, None).await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_keeper_stops_renewing_and_is_taken_over() {
    let bucket = bucket();
    let (a, b) = (replica(&bucket, 1), replica(&bucket, 2));
    let key = a.fill_key(&digest()).unwrap();
    let kept = mine(a.claim(&key, None).await.unwrap()).keep();
    let seen = held(b.claim(&key, None).await.unwrap());
    drop(kept);
    tokio::time::sleep(Duration::from_secs(11)).await;
    mine(b.claim(&key, Some(seen)).await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn the_probe_passes_on_a_store_with_conditional_writes() {
    let counting = CountingStore::new(Arc::new(InMemory::new()));
    let storage = ObjectStorage::new(Arc::new(counting.clone()), "");
    replica(&storage, 1).probe().await.unwrap();
    // Two creates, two updates, and the cleanup.
    assert_eq!(counting.total(), 5, "{:?}", counting.counts());
    let left: Vec<_> = futures::StreamExt::collect::<Vec<_>>(counting.list(None)).await;
    assert!(left.is_empty(), "the probe cleans up: {left:?}");
}

#[tokio::test(start_paused = true)]
async fn a_store_without_conditional_writes_turns_leases_off() {
    let ignoring = CountingStore::new(Arc::new(InMemory::new())).ignoring_conditions();
    let storage = ObjectStorage::new(Arc::new(ignoring), "");
    let error = replica(&storage, 1).probe().await.unwrap_err();
    assert!(error.to_string().contains("conditional writes"), "{error}");
    let fleet = Fleet::connect(
        &storage,
        identity(1),
        LeaseTimings::default(),
        Arc::new(NoPeers),
    )
    .await;
    assert!(!fleet.leases_enabled());
    assert!(fleet.leases().is_none());

    // LocalFileSystem knows If-None-Match but not If-Match.
    let dir = tempfile::tempdir().unwrap();
    let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    let storage = ObjectStorage::new(Arc::new(local), "");
    assert!(replica(&storage, 1).probe().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_slow_lease_call_is_cut_at_the_call_timeout() {
    let slow = CountingStore::new(Arc::new(InMemory::new()))
        .with_conditional_delay(Duration::from_secs(30));
    let storage = ObjectStorage::new(Arc::new(slow), "");
    let leases = replica(&storage, 1);
    let key = leases.fill_key(&digest()).unwrap();
    let started = tokio::time::Instant::now();
    let error = leases.claim(&key, None).await.unwrap_err();
    assert_eq!(started.elapsed(), LeaseTimings::default().call_timeout);
    assert!(
        error.to_string().contains("working without the lease"),
        "{error}"
    );
}

#[test]
fn timings_that_would_take_over_a_live_holder_are_refused() {
    let short = LeaseTimings::default().with_ttl(Duration::from_secs(5));
    assert!(short
        .validate()
        .unwrap_err()
        .to_string()
        .contains("three heartbeats"));
    let slow = LeaseTimings::default().with_call_timeout(Duration::from_secs(5));
    assert!(slow.validate().is_err());
}

/// A fleet whose peers are never reachable.
#[derive(Debug)]
pub(crate) struct NoPeers;

#[async_trait]
impl PeerFills for NoPeers {
    async fn fetch(&self, holder_url: &str, _digest: &Digest) -> Result<FetchedBlob> {
        Err(crate::Error::Storage {
            backend: "peer",
            message: format!("{holder_url} unreachable"),
            source: None,
        })
    }
}
