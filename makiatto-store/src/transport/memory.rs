//! An in-process network of stores, for tests and simulation.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use super::SyncTransport;
use crate::wire::{Chunk, Frame, SyncReq};
use crate::{Result, Store, StoreError};

/// The name of a node on a [`MemoryNetwork`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{}", self.0)
    }
}

/// A simulated network: a registry of stores and their inboxes, with partitions.
///
/// Cheap to clone; clones share the registry. A pull runs the peer's
/// [`Store::serve_sync`] on the blocking pool; a push puts chunks in the peer's bounded
/// inbox, dropping (and counting) those that do not fit, as a congested link would.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    dropped: AtomicU64,
}

#[derive(Default)]
struct State {
    nodes: HashMap<NodeId, Endpoint>,
    /// Severed links, as `(smaller, larger)` pairs.
    cuts: BTreeSet<(NodeId, NodeId)>,
}

struct Endpoint {
    store: Store,
    inbound: mpsc::Sender<Chunk>,
}

impl fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        let mut nodes: Vec<_> = state.nodes.keys().copied().collect();
        nodes.sort();
        f.debug_struct("MemoryNetwork")
            .field("nodes", &nodes)
            .field("cuts", &state.cuts)
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) node `id`, whose chunks arrive on `inbound`, and returns its
    /// transport.
    pub fn join(&self, id: NodeId, store: Store, inbound: mpsc::Sender<Chunk>) -> MemoryTransport {
        self.state().nodes.insert(id, Endpoint { store, inbound });
        MemoryTransport {
            net: self.clone(),
            id,
        }
    }

    /// Removes node `id`; later pulls from and pushes to it fail.
    pub fn leave(&self, id: NodeId) {
        self.state().nodes.remove(&id);
    }

    /// The nodes on the network, ascending.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<_> = self.state().nodes.keys().copied().collect();
        nodes.sort();
        nodes
    }

    /// Every node except `id` (a peer source that ignores partitions, like a membership
    /// layer that has not noticed them yet).
    pub fn others(&self, id: NodeId) -> Vec<NodeId> {
        self.nodes().into_iter().filter(|n| *n != id).collect()
    }

    /// Severs the link between `a` and `b`, in both directions.
    pub fn partition(&self, a: NodeId, b: NodeId) {
        if a != b {
            self.state().cuts.insert(ordered(a, b));
        }
    }

    /// Severs every link of `id` to the nodes currently on the network.
    pub fn isolate(&self, id: NodeId) {
        for other in self.others(id) {
            self.partition(id, other);
        }
    }

    /// Restores every severed link.
    pub fn heal(&self) {
        self.state().cuts.clear();
    }

    /// Whether `from` can currently reach `to`.
    pub fn reachable(&self, from: NodeId, to: NodeId) -> bool {
        let state = self.state();
        state.nodes.contains_key(&to) && !state.cuts.contains(&ordered(from, to))
    }

    /// How many pushed chunks were dropped because an inbox was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The endpoint of `to` as seen from `from`, or an error when it cannot be reached.
    fn route(&self, from: NodeId, to: NodeId) -> Result<(Store, mpsc::Sender<Chunk>)> {
        let state = self.state();
        let unreachable = || StoreError::Unreachable {
            peer: to.to_string(),
        };
        if state.cuts.contains(&ordered(from, to)) {
            return Err(unreachable());
        }
        let ep = state.nodes.get(&to).ok_or_else(unreachable)?;
        Ok((ep.store.clone(), ep.inbound.clone()))
    }
}

/// One node's handle on a [`MemoryNetwork`].
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    net: MemoryNetwork,
    id: NodeId,
}

impl MemoryTransport {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The network this node is on.
    pub fn network(&self) -> &MemoryNetwork {
        &self.net
    }
}

impl SyncTransport for MemoryTransport {
    type Peer = NodeId;

    async fn pull(&self, peer: &NodeId, req: SyncReq) -> Result<Vec<Frame>> {
        let (store, _) = self.net.route(self.id, *peer)?;
        let frames = tokio::task::spawn_blocking(move || store.serve_sync(&req))
            .await
            .map_err(StoreError::Task)??;
        // A partition that formed while the answer was being built swallows it.
        if !self.net.reachable(self.id, *peer) {
            return Err(StoreError::Unreachable {
                peer: peer.to_string(),
            });
        }
        Ok(frames)
    }

    async fn push(&self, peer: &NodeId, chunks: Vec<Chunk>) -> Result<()> {
        let (_, inbound) = self.net.route(self.id, *peer)?;
        for chunk in chunks {
            match inbound.try_send(chunk) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.net.inner.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(StoreError::Unreachable {
                        peer: peer.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

fn ordered(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    if a <= b { (a, b) } else { (b, a) }
}
