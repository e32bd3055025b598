//! Sync transports: how replicas exchange pushes and pulls, and the driver that runs them.
//!
//! - [`SyncTransport`] is the seam between the engine and the network: `pull` fetches one
//!   sync session's answer from a peer, `push` delivers broadcast chunks (replication.md
//!   §3.7-3.9).
//! - [`MemoryNetwork`] / [`MemoryTransport`] connect stores inside one process, with
//!   partitions and bounded inboxes, for tests and simulation.
//! - [`TcpTransport`] and [`serve_tcp`] speak the framed protocol of [`crate::wire`] over
//!   TCP: each connection opens with a `Hello` in both directions, then carries sync
//!   requests or pushed chunks. Peers of another cluster or protocol are refused; every
//!   read is timed and every limit a peer could abuse is bounded.
//! - [`Replicator`] is what a node runs: it broadcasts local versions, relays chunks it
//!   receives and pulls from random peers every few seconds.
//!
//! # Example
//! ```no_run
//! use std::sync::Arc;
//!
//! use makiatto_store::transport::{
//!     Replicator, ReplicatorOptions, ServeOptions, TcpTransport, serve_tcp,
//! };
//! # async fn run(store: makiatto_store::Store, peers: Vec<std::net::SocketAddr>) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:7946").await?;
//! let (inbound_tx, inbound_rx) = tokio::sync::mpsc::channel(1024);
//! let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
//! let mut stop = stop_rx.clone();
//! tokio::spawn(serve_tcp(listener, store.clone(), inbound_tx, ServeOptions::default(), async move {
//!     let _ = stop.wait_for(|s| *s).await;
//! }));
//! let replicator = Replicator::new(
//!     store.clone(),
//!     TcpTransport::for_store(&store),
//!     Arc::new(move || peers.clone()),
//!     inbound_rx,
//!     ReplicatorOptions::default(),
//! );
//! let mut stop = stop_rx;
//! replicator.run(async move { let _ = stop.wait_for(|s| *s).await; }).await;
//! # drop(stop_tx); Ok(()) }
//! ```

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;

use crate::wire::{Chunk, Frame, SyncReq};
use crate::{Known, Result, Store, StoreError};

mod memory;
mod replicator;
mod tcp;

pub use memory::{MemoryNetwork, MemoryTransport, NodeId};
pub use replicator::{Replicator, ReplicatorOptions, SyncStats};
pub use tcp::{ServeOptions, TcpTransport, serve_tcp};

/// What one applied sync session brought.
#[derive(Debug, Clone, Default)]
pub struct Pulled {
    /// The `SyncDone` fields (complete, responder's known set); `None` when the answer
    /// ended before it (what arrived whole was applied).
    pub done: Option<(bool, Known)>,
    /// Frames received.
    pub frames: usize,
    /// Whole versions received.
    pub versions: usize,
}

impl Pulled {
    /// Counts one received frame.
    pub fn count(&mut self, f: &Frame) {
        self.frames += 1;
        if matches!(
            f,
            Frame::Version {
                last_part: true,
                ..
            }
        ) {
            self.versions += 1;
        }
    }
}

/// A way to reach peers for replication.
///
/// Implementations must be cheap to share (the [`Replicator`] calls them from several tasks)
/// and must never panic on what a peer sends.
pub trait SyncTransport: Send + Sync + 'static {
    /// How a peer is named (a socket address, a node id...).
    type Peer: Clone + Eq + Hash + Debug + Send + Sync + 'static;

    /// Runs one sync session with `peer`: sends `req` and returns the whole answer, whose
    /// last frame is `SyncDone` (the request's byte budget bounds its size). A peer at its
    /// session limit fails with [`crate::StoreError::Busy`].
    fn pull(
        &self,
        peer: &Self::Peer,
        req: SyncReq,
    ) -> impl Future<Output = Result<Vec<Frame>>> + Send;

    /// Runs one sync session with `peer` and applies the answer to `store`. The default
    /// applies it once whole; a transport that streams applies it while it arrives.
    fn pull_apply(
        &self,
        peer: &Self::Peer,
        req: SyncReq,
        store: &Store,
    ) -> impl Future<Output = Result<Pulled>> + Send {
        let store = store.clone();
        async move {
            let frames = self.pull(peer, req).await?;
            let mut pulled = Pulled::default();
            for f in &frames {
                pulled.count(f);
            }
            pulled.done = tokio::task::spawn_blocking(move || store.apply_sync(frames))
                .await
                .map_err(StoreError::Task)??;
            Ok(pulled)
        }
    }

    /// Delivers broadcast chunks to `peer`. Delivery is best effort: a chunk may be dropped
    /// on the way (sync repairs it), so `Ok` does not mean it was applied.
    fn push(
        &self,
        peer: &Self::Peer,
        chunks: Vec<Chunk>,
    ) -> impl Future<Output = Result<()>> + Send;
}
