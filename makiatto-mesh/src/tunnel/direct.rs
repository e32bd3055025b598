//! The `Direct` backend: no tunnel at all.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Mutex, PoisonError};

use ipnet::Ipv4Net;

use super::{PeerChanges, PeerConfig, PeerStatus, Tunnel};
use crate::Result;
use crate::keys::PublicKey;

/// No tunnel: the mesh address is the node's own (underlay) address, and peers are
/// reached directly. Peer sets are recorded so callers see the same reconciliation
/// results as with WireGuard.
#[derive(Debug)]
pub struct Direct {
    address: Mutex<Ipv4Addr>,
    net: Ipv4Net,
    peers: Mutex<BTreeMap<PublicKey, PeerConfig>>,
}

impl Direct {
    /// A direct "tunnel" for a node at `address`, with `net` as the range of addresses
    /// treated as the mesh (e.g. `127.0.0.0/8` for tests on loopback).
    pub fn new(address: Ipv4Addr, net: Ipv4Net) -> Self {
        Direct {
            address: Mutex::new(address),
            net,
            peers: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Tunnel for Direct {
    fn interface(&self) -> Option<&str> {
        None
    }

    fn mesh_address(&self) -> Ipv4Addr {
        *self.address.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mesh_net(&self) -> Ipv4Net {
        self.net
    }

    fn set_peers(&self, desired: &[PeerConfig]) -> Result<PeerChanges> {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let (next, changes) = super::wireguard::diff(&peers, desired);
        let next: BTreeMap<PublicKey, PeerConfig> =
            next.into_iter().map(|p| (p.public_key, p)).collect();
        *peers = next;
        Ok(changes)
    }

    fn set_mesh_address(&self, address: Ipv4Addr) -> Result<()> {
        *self.address.lock().unwrap_or_else(PoisonError::into_inner) = address;
        Ok(())
    }

    fn peers(&self) -> Result<Vec<PeerStatus>> {
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(peers
            .values()
            .map(|p| PeerStatus {
                public_key: p.public_key,
                endpoint: None,
                since_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
            })
            .collect())
    }
}
