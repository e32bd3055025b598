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

use crate::Result;
use crate::wire::{Chunk, Frame, SyncReq};

mod memory;
mod replicator;
mod tcp;

pub use memory::{MemoryNetwork, MemoryTransport, NodeId};
pub use replicator::{Replicator, ReplicatorOptions, SyncStats};
pub use tcp::{ServeOptions, TcpTransport, serve_tcp};

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

    /// Delivers broadcast chunks to `peer`. Delivery is best effort: a chunk may be dropped
    /// on the way (sync repairs it), so `Ok` does not mean it was applied.
    fn push(
        &self,
        peer: &Self::Peer,
        chunks: Vec<Chunk>,
    ) -> impl Future<Output = Result<()>> + Send;
}
