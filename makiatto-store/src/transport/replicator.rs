//! The replication driver a node runs: broadcast, relay and periodic pull.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, trace, warn};

use super::SyncTransport;
use crate::wire::{Change, Chunk};
use crate::{ChunkOutcome, Known, Result, Store, StoreError};

/// Tuning of a [`Replicator`] (replication.md §3.8-3.9).
#[derive(Debug, Clone)]
pub struct ReplicatorOptions {
    /// Peers each new or relayed chunk goes to (default 6: with each node relaying a new
    /// chunk once, about e^-6 of the nodes miss it and wait for a pull). With at most
    /// `fanout + 1` peers, chunks go to all of them.
    pub fanout: usize,
    /// Relay hops of a new local version (default 8). Nodes relay only chunks new to them, so
    /// hops bound pathological cases, not the normal spread.
    pub hops: u8,
    /// Approximate size of one broadcast chunk, in bytes (default 64 KiB).
    pub chunk_bytes: usize,
    /// Shortest pause between two sync rounds (default 250 ms).
    pub sync_interval_min: Duration,
    /// Longest pause between two sync rounds (default 750 ms); the pause is drawn uniformly.
    /// A round between replicas that agree costs one small request and no database scan.
    pub sync_interval_max: Duration,
    /// Peers pulled from in each sync round (default 2).
    pub sync_peers: usize,
    /// Byte budget of one sync session (default 8 MiB).
    pub byte_budget: u64,
    /// Most sessions of one [`Replicator::sync_once`] while answers come back incomplete
    /// (default 64).
    pub max_sync_rounds: u32,
    /// Most pushes in flight; a broadcast beyond it is skipped (sync repairs it)
    /// (default 256).
    pub max_pushes_in_flight: usize,
    /// Seed of the peer choice and interval jitter, for reproducible simulations (default
    /// `None`: seeded from the OS).
    pub rng_seed: Option<u64>,
}

impl Default for ReplicatorOptions {
    fn default() -> Self {
        ReplicatorOptions {
            fanout: 6,
            hops: 8,
            chunk_bytes: 64 << 10,
            sync_interval_min: Duration::from_millis(250),
            sync_interval_max: Duration::from_millis(750),
            sync_peers: 2,
            byte_budget: 8 << 20,
            max_sync_rounds: 64,
            max_pushes_in_flight: 256,
            rng_seed: None,
        }
    }
}

/// What one [`Replicator::sync_once`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Sessions run (more than one when the byte budget cut answers short).
    pub rounds: u32,
    /// Frames received.
    pub frames: usize,
    /// Whole versions received (some may have been known already).
    pub versions: usize,
    /// Whether the last answer was complete: this replica then knows everything the peer
    /// knew when it answered.
    pub complete: bool,
    /// The peer's known versions at its last answer (for the GC frontier).
    pub responder_known: Known,
}

/// Keeps a store in step with its peers: pushes each local version to a few random peers,
/// relays chunks received from others, and pulls from random peers every few seconds.
///
/// The transport, the live peer list and the inbound chunk queue are supplied by the
/// caller (for TCP, the queue that [`super::serve_tcp`] fills).
pub struct Replicator<T: SyncTransport> {
    shared: Arc<Shared<T>>,
    inbound: mpsc::Receiver<Chunk>,
    local: broadcast::Receiver<Arc<Change>>,
}

struct Shared<T: SyncTransport> {
    store: Store,
    transport: T,
    peers: Arc<dyn Fn() -> Vec<T::Peer> + Send + Sync>,
    options: ReplicatorOptions,
    rng: Mutex<SmallRng>,
}

impl<T: SyncTransport + fmt::Debug> fmt::Debug for Replicator<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replicator")
            .field("store", &self.shared.store)
            .field("transport", &self.shared.transport)
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl<T: SyncTransport> Replicator<T> {
    /// A replicator for `store`. `peers` returns the peers currently alive (never this
    /// node); `inbound` yields chunks pushed to this node. Local writes from now on are
    /// broadcast once [`Replicator::run`] runs.
    pub fn new(
        store: Store,
        transport: T,
        peers: Arc<dyn Fn() -> Vec<T::Peer> + Send + Sync>,
        inbound: mpsc::Receiver<Chunk>,
        options: ReplicatorOptions,
    ) -> Self {
        let rng = match options.rng_seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_rng(&mut rand::rng()),
        };
        let local = store.subscribe_local();
        Replicator {
            shared: Arc::new(Shared {
                store,
                transport,
                peers,
                options,
                rng: Mutex::new(rng),
            }),
            inbound,
            local,
        }
    }

    /// The store being replicated.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.shared.transport
    }

    /// Pulls from `peer` until an answer is complete (at most
    /// [`ReplicatorOptions::max_sync_rounds`] sessions) and applies what arrives. Use it
    /// for an immediate catch-up, e.g. when joining a cluster.
    ///
    /// Fails on the first transport or store error; what was applied before stays applied.
    pub async fn sync_once(&self, peer: &T::Peer) -> Result<SyncStats> {
        self.shared.sync_once(peer).await
    }

    /// Runs until `shutdown` completes: broadcasts local versions, applies and relays
    /// inbound chunks, and pulls from [`ReplicatorOptions::sync_peers`] random peers every
    /// `sync_interval_min..=sync_interval_max`. Errors are logged, never fatal.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let Replicator {
            shared,
            mut inbound,
            mut local,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let sync_task = tokio::spawn(shared.clone().sync_loop(stop_rx));
        let mut pushes: JoinSet<()> = JoinSet::new();
        let (mut local_open, mut inbound_open) = (true, true);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                change = local.recv(), if local_open => match change {
                    Ok(change) => {
                        let chunks =
                            change.to_chunks(shared.options.chunk_bytes, shared.options.hops);
                        trace!(ver = change.ver, chunks = chunks.len(), "broadcasting a local version");
                        shared.broadcast(&mut pushes, &chunks);
                    }
                    Err(RecvError::Lagged(missed)) => {
                        debug!(missed, "local versions lagged; sync will carry them");
                    }
                    Err(RecvError::Closed) => local_open = false,
                },
                chunk = inbound.recv(), if inbound_open => match chunk {
                    Some(chunk) => shared.receive(&mut pushes, chunk).await,
                    None => inbound_open = false,
                },
                Some(done) = pushes.join_next(), if !pushes.is_empty() => {
                    if let Err(error) = done
                        && error.is_panic()
                    {
                        warn!(%error, "a push task panicked");
                    }
                }
            }
        }
        let _ = stop_tx.send(true);
        pushes.shutdown().await;
        if let Err(error) = sync_task.await
            && error.is_panic()
        {
            warn!(%error, "the sync task panicked");
        }
    }
}

impl<T: SyncTransport> Shared<T> {
    async fn sync_once(&self, peer: &T::Peer) -> Result<SyncStats> {
        let mut stats = SyncStats::default();
        while stats.rounds < self.options.max_sync_rounds.max(1) {
            stats.rounds += 1;
            let req = self.store.sync_request(self.options.byte_budget);
            let pulled = self.transport.pull_apply(peer, req, &self.store).await?;
            stats.frames += pulled.frames;
            stats.versions += pulled.versions;
            let Some((complete, responder_known)) = pulled.done else {
                return Err(StoreError::Truncated);
            };
            stats.complete = complete;
            stats.responder_known = responder_known;
            if complete {
                break;
            }
        }
        Ok(stats)
    }

    async fn sync_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let pause = self.jitter();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(pause) => {}
            }
            for peer in self.choose(self.options.sync_peers, false) {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    r = self.sync_once(&peer) => match r {
                        Ok(stats) => debug!(
                            peer = ?peer,
                            rounds = stats.rounds,
                            versions = stats.versions,
                            complete = stats.complete,
                            "synced"
                        ),
                        Err(StoreError::Busy) => debug!(peer = ?peer, "peer busy, sync skipped"),
                        Err(error) => warn!(%error, peer = ?peer, "sync failed"),
                    },
                }
            }
        }
    }

    /// Applies an inbound chunk and relays it if it was new here.
    async fn receive(self: &Arc<Self>, pushes: &mut JoinSet<()>, chunk: Chunk) {
        let store = self.store.clone();
        let received = tokio::task::spawn_blocking(move || {
            let outcome = store.receive_chunk(&chunk);
            (outcome, chunk)
        })
        .await;
        let (outcome, mut chunk) = match received {
            Ok(r) => r,
            Err(error) => {
                warn!(%error, "applying a chunk failed");
                return;
            }
        };
        match outcome {
            Ok(ChunkOutcome::Applied | ChunkOutcome::Buffered) if chunk.hops > 0 => {
                chunk.hops -= 1;
                self.broadcast(pushes, std::slice::from_ref(&chunk));
            }
            Ok(outcome) => {
                trace!(site = %chunk.site, ver = chunk.ver, ?outcome, "chunk received");
            }
            Err(error @ StoreError::Malformed(_)) => {
                debug!(%error, site = %chunk.site, ver = chunk.ver, "dropping a malformed chunk");
            }
            Err(error) => {
                warn!(%error, site = %chunk.site, ver = chunk.ver, "applying a chunk failed");
            }
        }
    }

    /// Pushes `chunks` to `fanout` random peers (all when there are few).
    fn broadcast(self: &Arc<Self>, pushes: &mut JoinSet<()>, chunks: &[Chunk]) {
        for peer in self.choose(self.options.fanout, true) {
            if pushes.len() >= self.options.max_pushes_in_flight {
                debug!(peer = ?peer, "too many pushes in flight, skipping one; sync will repair");
                continue;
            }
            let shared = self.clone();
            let chunks = chunks.to_vec();
            pushes.spawn(async move {
                if let Err(error) = shared.transport.push(&peer, chunks).await {
                    debug!(%error, peer = ?peer, "push failed");
                }
            });
        }
    }

    /// `n` distinct random peers; with `all_when_few`, every peer when there are at most
    /// `n + 1`.
    fn choose(&self, n: usize, all_when_few: bool) -> Vec<T::Peer> {
        if n == 0 {
            return Vec::new();
        }
        let peers = (self.peers)();
        if all_when_few && peers.len() <= n + 1 {
            return peers;
        }
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        peers.choose_multiple(&mut *rng, n).cloned().collect()
    }

    fn jitter(&self) -> Duration {
        let lo = self.options.sync_interval_min;
        let hi = self.options.sync_interval_max.max(lo);
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        rng.random_range(lo..=hi)
    }
}
