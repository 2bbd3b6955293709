//! Replicas on one bucket (issue 24): a miss another replica is filling is
//! streamed from it, not fetched upstream; any trouble means filling alone.

use std::collections::HashMap;
use std::sync::Mutex;

use object_store::memory::InMemory;
use object_store::ObjectStore;

use super::*;
use crate::fleet::{Fleet, FleetIdentity, HeldLease, LeaseTimings, Leases, PeerFills};
use crate::observe::{FillEvent, FillPhase, LeaseOutcome, Observer};
use crate::storage::ObjectStorage;
use crate::testing::CountingStore;

type Replica = PullThrough<ObjectStorage, FakeUpstream>;

/// Short timings so takeovers happen within a test's second.
fn timings() -> LeaseTimings {
    LeaseTimings::default()
        .with_heartbeat(Duration::from_millis(100))
        .with_ttl(Duration::from_millis(300))
        .with_call_timeout(Duration::from_millis(100))
}

fn identity(n: u32) -> FleetIdentity {
    FleetIdentity {
        holder_id: format!("replica-{n}"),
        advertise_url: format!("http://127.0.0.{n}:5000"),
    }
}

/// Lease outcomes and ends of fills, in order.
#[derive(Debug, Default)]
struct Phases(Mutex<Vec<FillPhase>>);

impl Observer for Phases {
    fn fill(&self, event: &FillEvent) {
        if matches!(
            event.phase,
            FillPhase::Lease { .. } | FillPhase::Relayed { .. } | FillPhase::Stored { .. }
        ) {
            self.0.lock().unwrap().push(event.phase.clone());
        }
    }
}

impl Phases {
    fn take(&self) -> Vec<FillPhase> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn lease(outcome: LeaseOutcome) -> FillPhase {
    FillPhase::Lease { outcome }
}

/// Peers reached through in-process engines by URL; a URL with a
/// scripted answer gets that instead, one without either fails (after
/// `silence`: a stopped replica accepts the connection and says nothing
/// until the client's answer timeout).
#[derive(Default)]
struct Peers {
    replicas: Mutex<HashMap<String, Replica>>,
    scripted: Mutex<HashMap<String, BlobScript>>,
    fetches: Mutex<Vec<String>>,
    silence: Mutex<Duration>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

#[async_trait]
impl PeerFills for Peers {
    async fn fetch(&self, holder_url: &str, digest: &Digest) -> Result<FetchedBlob> {
        self.fetches.lock().unwrap().push(holder_url.to_owned());
        let replica = self.replicas.lock().unwrap().get(holder_url).cloned();
        if let Some(replica) = replica {
            let response = replica.blob(&hub(), &repo(), digest, None).await?;
            return Ok(FetchedBlob {
                size: Some(response.size),
                stream: response.stream,
            });
        }
        let scripted = self.scripted.lock().unwrap().get(holder_url).cloned();
        match scripted {
            Some(script) => {
                let fake = FakeUpstream::default();
                let digest = fake.add_blob(script);
                fake.blob_get(&hub(), &repo(), &digest).await
            }
            None => {
                let silence = *self.silence.lock().unwrap();
                tokio::time::sleep(silence).await;
                Err(Error::Storage {
                    backend: "peer",
                    message: format!("{holder_url} did not answer"),
                    source: None,
                })
            }
        }
    }
}

impl Peers {
    fn fetches(&self) -> Vec<String> {
        self.fetches.lock().unwrap().clone()
    }
}

/// Replicas sharing one bucket and one origin.
struct Site {
    bucket: CountingStore,
    origin: Arc<FakeUpstream>,
    peers: Arc<Peers>,
    phases: Arc<Phases>,
}

impl Site {
    fn new() -> Self {
        Self::over(CountingStore::new(Arc::new(InMemory::new())))
    }

    fn over(bucket: CountingStore) -> Self {
        Site {
            bucket,
            origin: Arc::new(FakeUpstream::default()),
            peers: Arc::new(Peers::default()),
            phases: Arc::new(Phases::default()),
        }
    }

    fn storage(&self) -> ObjectStorage {
        ObjectStorage::new(Arc::new(self.bucket.clone()), "cache")
    }

    /// Replica `n`, in fleet mode (the bucket probed as at start).
    async fn replica(&self, n: u32) -> Replica {
        self.replica_with(n, timings()).await
    }

    /// Replica `n`, in fleet mode with `timings`.
    async fn replica_with(&self, n: u32, timings: LeaseTimings) -> Replica {
        let storage = self.storage();
        let peers: Arc<dyn PeerFills> = Arc::clone(&self.peers) as _;
        let fleet = Fleet::connect(&storage, identity(n), timings, peers).await;
        let replica = PullThrough::observed(
            Arc::new(storage),
            Arc::clone(&self.origin),
            CacheOptions::default(),
            Arc::clone(&self.phases) as _,
        )
        .with_fleet(fleet);
        let url = identity(n).advertise_url;
        self.peers
            .replicas
            .lock()
            .unwrap()
            .insert(url, replica.clone());
        replica
    }

    /// The lease of `digest` taken in the name of replica `n`, which then
    /// never renews it (a replica that died after taking it).
    async fn dead_holder(&self, n: u32, digest: &Digest) {
        drop(self.holder(n, digest, timings()).await);
    }

    /// The lease of `digest` taken in the name of replica `n`.
    async fn holder(&self, n: u32, digest: &Digest, timings: LeaseTimings) -> HeldLease {
        let leases = Leases::new(&self.storage(), identity(n), timings);
        let key = leases.fill_key(digest).unwrap();
        match leases.claim(&key, None).await.unwrap() {
            crate::fleet::Claim::Mine(held) => held,
            crate::fleet::Claim::Held(seen) => panic!("held by {}", seen.holder_url()),
        }
    }

    async fn stored(&self, digest: &Digest) -> Option<Vec<u8>> {
        match self.storage().blob_read(digest, None).await {
            Ok(read) => Some(collect(read.stream).await.unwrap()),
            Err(e) if e.is_not_found() => None,
            Err(e) => panic!("{e}"),
        }
    }
}

async fn pull(replica: &Replica, digest: &Digest) -> Result<Vec<u8>> {
    let response = replica.blob(&hub(), &repo(), digest, None).await?;
    collect(response.stream).await
}

#[tokio::test]
async fn a_miss_another_replica_is_filling_is_streamed_from_it_not_from_upstream() {
    let site = Site::new();
    let (a, b) = (site.replica(1).await, site.replica(2).await);
    let bytes = pattern(100_000);
    let gate = Arc::new(Semaphore::new(10));
    let digest = site
        .origin
        .add_blob(BlobScript::new(&bytes).chunk(1024).gated(&gate));

    let first = tokio::spawn({
        let (a, digest) = (a.clone(), digest.clone());
        async move { pull(&a, &digest).await }
    });
    // A holds the lease and is part-way through the blob.
    while site.origin.calls().blob_get() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = tokio::spawn({
        let (b, digest) = (b.clone(), digest.clone());
        async move { pull(&b, &digest).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.add_permits(1_000);

    assert_eq!(first.await.unwrap().unwrap(), bytes);
    assert_eq!(second.await.unwrap().unwrap(), bytes);
    fills_settled(&a).await;
    fills_settled(&b).await;
    assert_eq!(
        site.origin.calls().blob_get(),
        1,
        "one upstream fetch for the fleet"
    );
    assert_eq!(site.peers.fetches(), ["http://127.0.0.1:5000"]);
    let mut phases = site.phases.take();
    phases.sort_by_key(|p| format!("{p:?}"));
    assert_eq!(
        phases,
        [
            lease(LeaseOutcome::Acquired),
            lease(LeaseOutcome::Peer),
            FillPhase::Relayed { bytes: 100_000 },
            FillPhase::Stored { bytes: 100_000 },
        ]
    );
    assert_eq!(site.stored(&digest).await.unwrap(), bytes);
    // Released after the commit: the next miss of another digest, or a
    // refill, finds no lease.
    let left: Vec<_> = site.bucket.list(None).collect().await;
    assert!(
        left.iter()
            .all(|m| !m.as_ref().unwrap().location.as_ref().contains("leases")),
        "{left:?}"
    );
}

/// A replica whose storage miss came just before another replica
/// committed the blob and released its lease wins that released lease:
/// it must find the blob in the bucket, not fetch it upstream again.
#[tokio::test]
async fn a_lease_won_just_after_another_replica_committed_reads_the_bucket() {
    let site = Site::new();
    let (a, b) = (site.replica(1).await, site.replica(2).await);
    let bytes = pattern(60_000);
    let digest = site.origin.add_blob(BlobScript::new(&bytes));
    assert_eq!(pull(&a, &digest).await.unwrap(), bytes);
    fills_settled(&a).await;
    site.phases.take();

    site.bucket.hide_next_get(digest.hex());
    assert_eq!(pull(&b, &digest).await.unwrap(), bytes);
    fills_settled(&b).await;
    assert_eq!(site.origin.calls().blob_get(), 1, "fetched upstream once");
    assert_eq!(
        site.phases.take(),
        [FillPhase::Relayed { bytes: 60_000 }],
        "no fill of its own: the stored blob, relayed"
    );
    let left: Vec<_> = site.bucket.list(None).collect().await;
    assert!(
        left.iter()
            .all(|m| !m.as_ref().unwrap().location.as_ref().contains("leases")),
        "the lease is released: {left:?}"
    );
}

/// Under fill leases a large blob comes over one connection: parts fetched
/// ahead of what followers relayed would be lost with a dying holder.
#[tokio::test]
async fn a_leased_fill_fetches_a_large_blob_over_one_connection() {
    let site = Site::new();
    let a = site.replica(1).await;
    let bytes = pattern(20 << 20);
    let digest = site.origin.add_blob(BlobScript::new(&bytes));
    assert_eq!(pull(&a, &digest).await.unwrap(), bytes);
    fills_settled(&a).await;
    assert_eq!(site.origin.blob_offsets(), [0], "one GET from byte 0");
}

#[tokio::test]
async fn an_unreachable_holder_that_stopped_renewing_is_taken_over() {
    let site = Site::new();
    let b = site.replica(2).await;
    let bytes = pattern(50_000);
    let digest = site.origin.add_blob(BlobScript::new(&bytes));
    site.dead_holder(7, &digest).await;

    assert_eq!(pull(&b, &digest).await.unwrap(), bytes);
    fills_settled(&b).await;
    assert_eq!(site.peers.fetches(), ["http://127.0.0.7:5000"]);
    assert_eq!(site.origin.blob_offsets(), [0]);
    assert_eq!(
        site.phases.take(),
        [
            lease(LeaseOutcome::Takeover),
            FillPhase::Stored { bytes: 50_000 }
        ]
    );
    assert_eq!(site.stored(&digest).await.unwrap(), bytes);
}

/// A stopped holder (SIGSTOP): its socket accepts and nothing answers, and
/// its lease is not renewed. Of the replicas waiting for it, exactly one
/// takes the lease over after the TTL on its own clock and fetches the blob
/// once; the others stream from the taker.
#[tokio::test(start_paused = true)]
async fn a_silent_holder_is_taken_over_by_exactly_one_waiting_replica_after_the_ttl() {
    let site = Site::new();
    let timings = LeaseTimings::default();
    *site.peers.silence.lock().unwrap() = timings.ttl / 2;
    let bytes = pattern(200_000);
    let digest = site.origin.add_blob(BlobScript::new(&bytes).chunk(4096));
    drop(site.holder(7, &digest, timings).await);
    let (b, c, d) = (
        site.replica_with(2, timings).await,
        site.replica_with(3, timings).await,
        site.replica_with(4, timings).await,
    );

    let started = tokio::time::Instant::now();
    let (from_b, from_c, from_d) =
        tokio::join!(pull(&b, &digest), pull(&c, &digest), pull(&d, &digest));
    let waited = started.elapsed();
    for got in [from_b, from_c, from_d] {
        assert_eq!(got.unwrap(), bytes);
    }
    for replica in [&b, &c, &d] {
        fills_settled(replica).await;
    }
    // Not before the TTL (a live holder keeps its lease), and within a
    // heartbeat of it (plus the taker's answer to the others).
    assert!(
        waited >= timings.ttl && waited <= timings.ttl + timings.heartbeat * 2,
        "{waited:?}"
    );
    assert_eq!(site.origin.blob_offsets(), [0], "one upstream fetch");
    let phases = site.phases.take();
    let count = |phase: FillPhase| phases.iter().filter(|p| **p == phase).count();
    assert_eq!(count(lease(LeaseOutcome::Takeover)), 1, "{phases:?}");
    assert_eq!(count(lease(LeaseOutcome::Peer)), 2, "{phases:?}");
    assert_eq!(count(lease(LeaseOutcome::Unavailable)), 0, "{phases:?}");
    assert_eq!(count(FillPhase::Stored { bytes: 200_000 }), 1, "{phases:?}");
    assert_eq!(
        count(FillPhase::Relayed { bytes: 200_000 }),
        2,
        "{phases:?}"
    );
    assert_eq!(site.stored(&digest).await.unwrap(), bytes);
}

/// A holder that renews its lease but cannot be reached (a partition
/// between replicas, not between a replica and the bucket) is never taken
/// over: after the bounded wait the replica fills alone.
#[tokio::test(start_paused = true)]
async fn a_live_holder_that_cannot_be_reached_means_filling_alone_after_the_wait() {
    let site = Site::new();
    let timings = LeaseTimings::default();
    let bytes = pattern(30_000);
    let digest = site.origin.add_blob(BlobScript::new(&bytes));
    let renewing = site.holder(7, &digest, timings).await.keep();
    let b = site.replica_with(2, timings).await;

    let started = tokio::time::Instant::now();
    assert_eq!(pull(&b, &digest).await.unwrap(), bytes);
    let waited = started.elapsed();
    fills_settled(&b).await;
    let bound = timings.ttl + timings.heartbeat * 3;
    assert!(waited >= timings.ttl && waited <= bound, "{waited:?}");
    assert_eq!(
        site.phases.take(),
        [
            lease(LeaseOutcome::Unavailable),
            FillPhase::Stored { bytes: 30_000 }
        ]
    );
    // Asked again each time it renewed, never taken over.
    assert!(
        site.peers.fetches().len() >= 3,
        "{:?}",
        site.peers.fetches()
    );
    assert_eq!(site.origin.blob_offsets(), [0]);
    renewing.release().await;
}

#[tokio::test]
async fn a_holder_that_dies_mid_stream_is_taken_over_and_the_taker_resumes_upstream() {
    let site = Site::new();
    let bytes = pattern(120_000);
    let digest = site.origin.add_blob(BlobScript::new(&bytes).chunk(4096));
    // Replica 7 took the lease, sends 60,000 bytes and dies.
    site.dead_holder(7, &digest).await;
    site.peers.scripted.lock().unwrap().insert(
        "http://127.0.0.7:5000".to_owned(),
        BlobScript::new(&bytes).chunk(4096).reset_at(60_000),
    );
    let (b, c) = (site.replica(2).await, site.replica(3).await);

    let (from_b, from_c) = tokio::join!(pull(&b, &digest), pull(&c, &digest));
    assert_eq!(from_b.unwrap(), bytes);
    assert_eq!(from_c.unwrap(), bytes);
    fills_settled(&b).await;
    fills_settled(&c).await;

    // One of the two took over and fetched the rest once, with a range; the
    // other streamed from the taker.
    let offsets = site.origin.blob_offsets();
    assert_eq!(offsets.len(), 1, "one upstream request: {offsets:?}");
    assert!(
        offsets[0] >= 57_344,
        "resumed from the byte reached: {offsets:?}"
    );
    let phases = site.phases.take();
    let count = |phase: FillPhase| phases.iter().filter(|p| **p == phase).count();
    assert_eq!(count(lease(LeaseOutcome::Peer)), 2, "{phases:?}");
    assert_eq!(count(lease(LeaseOutcome::Takeover)), 1, "{phases:?}");
    assert_eq!(count(lease(LeaseOutcome::Unavailable)), 0, "{phases:?}");
    assert_eq!(count(FillPhase::Stored { bytes: 120_000 }), 1, "{phases:?}");
    assert_eq!(site.stored(&digest).await.unwrap(), bytes);
}

#[tokio::test]
async fn without_conditional_writes_every_replica_fills_alone() {
    let site = Site::over(CountingStore::new(Arc::new(InMemory::new())).ignoring_conditions());
    let (a, b) = (site.replica(1).await, site.replica(2).await);
    assert!(!a.fleet().unwrap().leases_enabled());
    let bytes = pattern(30_000);
    let digest = site.origin.add_blob(BlobScript::new(&bytes));
    let (from_a, from_b) = tokio::join!(pull(&a, &digest), pull(&b, &digest));
    assert_eq!(from_a.unwrap(), bytes);
    assert_eq!(from_b.unwrap(), bytes);
    assert!(site.peers.fetches().is_empty());
    assert!(site.origin.calls().blob_get() >= 1);
    assert_eq!(site.stored(&digest).await.unwrap(), bytes);
}

#[tokio::test]
async fn a_slow_bucket_does_not_hold_a_miss_longer_than_the_call_timeout() {
    let slow = CountingStore::new(Arc::new(InMemory::new()));
    let site = Site::over(slow.clone());
    let a = site.replica(1).await;
    assert!(a.fleet().unwrap().leases_enabled());
    // From now on every conditional put (a lease call) hangs for a minute.
    let site = Site {
        bucket: slow.with_conditional_delay(Duration::from_secs(60)),
        ..site
    };
    let a = site.replica(1).await;
    let bytes = pattern(10_000);
    let digest = site.origin.add_blob(BlobScript::new(&bytes));
    let started = std::time::Instant::now();
    assert_eq!(pull(&a, &digest).await.unwrap(), bytes);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// What each miss and hit costs in bucket requests (docs/running.md quotes these).
#[tokio::test]
async fn bucket_requests_per_miss_relay_and_hit() {
    let site = Site::new();
    let (a, b) = (site.replica(1).await, site.replica(2).await);
    let expect = |pairs: &[(&'static str, u64)]| {
        pairs
            .iter()
            .copied()
            .collect::<crate::testing::RequestCounts>()
    };

    // A miss on one replica: the read that missed, the lease, a second read
    // (another replica may have committed and released the lease between
    // the two), the blob (one PUT under a part), the release. No heartbeat:
    // the fill is shorter than one.
    let alone = site.origin.add_blob(BlobScript::new(&pattern(100_000)));
    site.bucket.reset();
    pull(&a, &alone).await.unwrap();
    fills_settled(&a).await;
    let miss = expect(&[("get", 2), ("put_create", 1), ("put", 1), ("delete", 1)]);
    assert_eq!(site.bucket.counts(), miss);

    // A hit: one GET.
    site.bucket.reset();
    pull(&b, &alone).await.unwrap();
    assert_eq!(site.bucket.counts(), expect(&[("get", 1)]), "a hit");

    // The same miss on two replicas at once: the second pays the read that
    // missed, the lease create that found it held, and the lease read.
    let bytes = pattern(90_000);
    let gate = Arc::new(Semaphore::new(10));
    let shared = site
        .origin
        .add_blob(BlobScript::new(&bytes).chunk(1024).gated(&gate));
    site.bucket.reset();
    let first = tokio::spawn({
        let (a, digest) = (a.clone(), shared.clone());
        async move { pull(&a, &digest).await }
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        while site.origin.calls().blob_get() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the first replica did not start its fill");
    let release = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.add_permits(1_000);
    };
    let (relayed, ()) = tokio::join!(pull(&b, &shared), release);
    assert_eq!(relayed.unwrap(), bytes);
    first.await.unwrap().unwrap();
    fills_settled(&a).await;
    fills_settled(&b).await;
    assert_eq!(
        site.phases
            .take()
            .iter()
            .filter(|p| **p == lease(LeaseOutcome::Peer))
            .count(),
        1
    );
    // (The third GET is this test's peer, which asks the holder's engine
    // for the blob, and that engine looks in storage first.)
    let mut both = miss.clone();
    for (kind, n) in [("get", 3), ("put_create", 1)] {
        *both.entry(kind).or_default() += n;
    }
    assert_eq!(site.bucket.counts(), both);
}

/// A holder whose relayed bytes fail verification: the relay's clients get
/// no complete body (the last byte waits for the verdict), the liar is not
/// asked again, and the retry gets upstream's bytes, fetched once.
#[tokio::test]
async fn a_peer_that_sends_wrong_bytes_is_not_relayed_again_and_the_retry_gets_upstreams_bytes() {
    let site = Site::new();
    let bytes = pattern(100_000);
    let digest = site.origin.add_blob(BlobScript::new(&bytes).chunk(4096));
    // Replica 8 holds the lease and answers with one byte flipped.
    let liar = site.holder(8, &digest, timings()).await;
    let mut lie = bytes.clone();
    lie[50_000] ^= 0xff;
    site.peers.scripted.lock().unwrap().insert(
        "http://127.0.0.8:5000".to_owned(),
        BlobScript::new(&lie).chunk(4096),
    );
    let b = site.replica(2).await;

    assert!(pull(&b, &digest).await.is_err(), "the lie never completes");
    fills_settled(&b).await;
    assert_eq!(site.origin.blob_offsets(), Vec::<u64>::new());
    assert_eq!(site.stored(&digest).await, None, "nothing stored");

    assert_eq!(pull(&b, &digest).await.unwrap(), bytes);
    fills_settled(&b).await;
    assert_eq!(site.origin.blob_offsets(), [0], "upstream asked once");
    assert_eq!(
        site.peers.fetches(),
        ["http://127.0.0.8:5000"],
        "the liar asked once"
    );
    let phases = site.phases.take();
    assert!(phases.contains(&lease(LeaseOutcome::BadPeer)), "{phases:?}");
    assert!(
        phases.contains(&FillPhase::Stored { bytes: 100_000 }),
        "{phases:?}"
    );
    assert_eq!(site.stored(&digest).await.unwrap(), bytes);
    drop(liar);
}
