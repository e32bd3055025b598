//! Tunnels: how this node reaches the mesh addresses of its peers.
//!
//! [`Tunnel`] is synchronous and object-safe (`Arc<dyn Tunnel>`): its calls are short
//! control-plane operations, run from `spawn_blocking` by async callers.
//! - [`WireGuardTunnel`]: userspace WireGuard (boringtun) on a TUN device, configured
//!   through its UAPI socket, so `wg show <iface>` reads it.
//! - [`Direct`]: no tunnel; the mesh address is the node's own address (local demo,
//!   tests without root).

use std::fmt::Debug;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::Result;
use crate::keys::PublicKey;

mod direct;
mod sockbuf;
mod uapi;
mod wireguard;

pub use direct::Direct;
pub use uapi::{UapiPeer, uapi_get};
pub use wireguard::{
    DEFAULT_QUIET_AFTER, DEFAULT_SOCKET_BUFFER, DEFAULT_TX_QUEUE_LEN, WireGuardConfig,
    WireGuardTunnel,
};

/// Default WireGuard listen port.
pub const DEFAULT_LISTEN_PORT: u16 = 51880;
/// Default MTU of the tunnel interface.
pub const DEFAULT_MTU: u32 = 1420;

/// The desired configuration of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// `host:port`; the host may be a name, resolved when applied and again when the peer
    /// goes quiet. `None` for a peer that only dials in.
    pub endpoint: Option<String>,
    /// Addresses routed to the peer (its mesh address as a /32).
    pub allowed_ips: Vec<Ipv4Net>,
    /// Keepalive interval in seconds, if any.
    pub persistent_keepalive: Option<u16>,
}

/// The live state of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// The endpoint in use.
    pub endpoint: Option<SocketAddr>,
    /// Time since the last completed handshake, if any.
    pub since_handshake: Option<Duration>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// What [`Tunnel::set_peers`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerChanges {
    /// Peers added.
    pub added: usize,
    /// Peers removed.
    pub removed: usize,
    /// Peers whose configuration (endpoint, addresses, keepalive) changed.
    pub updated: usize,
}

impl PeerChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added == 0 && self.removed == 0 && self.updated == 0
    }
}

/// A way to reach the mesh.
pub trait Tunnel: Debug + Send + Sync {
    /// Interface name (`None` for [`Direct`]).
    fn interface(&self) -> Option<&str>;
    /// This node's address on the mesh.
    fn mesh_address(&self) -> Ipv4Addr;
    /// The mesh range.
    fn mesh_net(&self) -> Ipv4Net;
    /// Reconciles the peers with `desired`: peers not in it are removed, new ones added,
    /// changed ones updated, without restarting the interface. Host names in endpoints
    /// are resolved here (blocking). Peers whose endpoint does not resolve are skipped
    /// (and reported in the log); the others are still applied.
    fn set_peers(&self, desired: &[PeerConfig]) -> Result<PeerChanges>;
    /// The live state of every peer.
    fn peers(&self) -> Result<Vec<PeerStatus>>;
    /// Moves this node to mesh address `address` (after losing a collision), keeping the
    /// peers. Blocking.
    fn set_mesh_address(&self, address: Ipv4Addr) -> Result<()>;
}
