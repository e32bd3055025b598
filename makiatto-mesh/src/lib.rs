//! Makiatto's node-to-node mesh.
//!
//! How nodes find each other, talk privately, know who is alive, and replicate the store
//! and the content blobs.
//!
//! # Design
//! - [`tunnel`]: the [`Tunnel`] trait with a userspace WireGuard backend
//!   ([`WireGuardTunnel`], boringtun on a TUN device, `wg show` compatible) and
//!   [`Direct`] (no tunnel). Peers are reconciled live from a desired set.
//! - [`addr`]: mesh address allocation in a CIDR and deterministic collision resolution.
//! - [`membership`]: SWIM (foca) over UDP on the mesh; the alive/suspect/down view is a
//!   `tokio::sync::watch` channel.
//! - [`replication`]: makiatto-store's `Replicator` over TCP on mesh addresses, refusing
//!   connections from outside the mesh CIDR.
//! - [`blobs`]: fetching content blobs by hash from peers: verified, resumable, several
//!   at once from different peers, with bounded concurrency.
//! - [`node`]: [`MeshNode`] wires them together from the store's `nodes` and
//!   `external_peers` tables; [`wg_quick_config`] writes a standard config for an
//!   external peer.

pub mod addr;
pub mod blobs;
mod error;
pub mod keys;
pub mod membership;
pub mod node;
pub mod replication;
pub mod tunnel;

pub use error::{MeshError, Result};
pub use keys::{PrivateKey, PublicKey};
pub use node::{MeshNode, NodeConfig, SeedPeer, wg_quick_config};
pub use tunnel::{Direct, PeerConfig, PeerStatus, Tunnel, WireGuardConfig, WireGuardTunnel};
