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
//! - [`replication`]: makiatto-store's `Replicator` over TCP on mesh addresses, admitting
//!   only cluster nodes.
//! - [`trust`]: who is a cluster node ([`trust::ClusterNodes`]), the one authority the
//!   replication, membership and blob services admit peers by.
//! - [`blobs`]: fetching content blobs by hash from peers: verified, resumable, several
//!   at once from different peers, with bounded concurrency.
//! - [`node`]: [`MeshNode`] wires them together from the store's `nodes` and
//!   `external_peers` tables; [`wg_quick_config`] writes a standard config for an
//!   external peer.
//!
//! # Example
//! ```no_run
//! # async fn run() -> makiatto_mesh::Result<()> {
//! use makiatto_mesh::node::{NodeConfig, TunnelKind};
//! use makiatto_mesh::{MeshNode, PrivateKey};
//!
//! let node = MeshNode::start(NodeConfig {
//!     name: "ams1".into(),
//!     cluster_id: "prod".into(),
//!     data_dir: "/var/lib/makiatto".into(),
//!     private_key: PrivateKey::generate().to_base64(),
//!     tunnel: TunnelKind::WireGuard { interface: "wg-maki".into(), listen_port: 51880, mtu: 1420, threads: 1 },
//!     mesh_cidr: makiatto_mesh::addr::default_mesh_net(),
//!     mesh_address: None, // allocated from the store
//!     endpoint: "ams1.example.net:51880".into(),
//!     public_ipv4: "192.0.2.1".into(),
//!     persistent_keepalive_secs: Some(25),
//!     seeds: vec![],
//!     replication_port: 7946,
//!     membership_port: 7947,
//!     blob_port: 7948,
//!     reconcile_every_ms: 2000,
//!     sync_interval_ms: None,
//!     allow_public_direct: false,
//! })
//! .await?;
//! let alive: Vec<String> = node.membership().borrow().alive().map(|(n, _)| n.to_owned()).collect();
//! # let _ = alive;
//! node.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//! None.

pub mod addr;
pub mod blobs;
mod error;
pub mod keys;
pub mod membership;
pub mod node;
pub mod replication;
pub mod trust;
pub mod tunnel;

pub use error::{MeshError, Result};
pub use keys::{PrivateKey, PublicKey};
pub use node::{MeshNode, NodeConfig, RETIRE_MARKER, SeedPeer, retire_if_marked, wg_quick_config};
pub use tunnel::{Direct, PeerConfig, PeerStatus, Tunnel, WireGuardConfig, WireGuardTunnel};
