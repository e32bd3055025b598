//! Who is a cluster node: the one authority the mesh services admit peers by.
//!
//! [`ClusterNodes`] holds the mesh address of every node of the cluster, with its name,
//! rebuilt from the store's `nodes` table (and named seeds) on every reconciliation.
//! Replication and blobs admit a connection only from one of those addresses; membership
//! admits a datagram only from one of them, and only when the identity it carries is the
//! node registered at that address ([`ClusterNodes::admits`]).
//!
//! Why an address is enough with WireGuard: boringtun's cryptokey routing hands a packet
//! to the interface only when its source address is inside the `AllowedIPs` of the peer
//! whose key decrypted it, and every peer's `AllowedIPs` is exactly its mesh address as a
//! /32 ([`crate::node::desired_peers`]). A source address that is a node's mesh address
//! therefore proves the sender holds that node's key; external peers (`maki peer add`)
//! have their own /32, which is not in the set. The services' sockets are bound to the
//! tunnel interface, so a packet arriving on another interface with a forged mesh source
//! is never delivered.
//!
//! With the [`crate::Direct`] backend nothing is authenticated: the set is built in
//! [`Admission::Range`] mode (any address of the mesh range except external peers', so
//! nodes join from seeds alone), and the mesh address must be loopback or private unless
//! the operator opts in.
//!
//! Refusals are counted per service ([`ClusterNodes::refusals`]) and logged at debug, at
//! most once a second per service.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tracing::debug;

/// How often a refusal is logged at most, per service.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// A mesh service that admits peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Store replication (TCP 7946).
    Replication,
    /// SWIM membership (UDP 7947).
    Membership,
    /// Blob transfer (TCP 7948).
    Blobs,
}

impl Service {
    fn index(self) -> usize {
        match self {
            Service::Replication => 0,
            Service::Membership => 1,
            Service::Blobs => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Service::Replication => "replication",
            Service::Membership => "membership",
            Service::Blobs => "blobs",
        }
    }
}

/// Who counts as a cluster node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Only the registered nodes' mesh addresses (the WireGuard backend: addresses are
    /// authenticated by the tunnel).
    Nodes,
    /// Any address of this range except external peers' (the `Direct` backend: nothing
    /// is authenticated, and a node joins from its seeds before the others know it).
    Range(Ipv4Net),
}

/// Refused connections and datagrams since start, per service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusals {
    /// Replication connections closed before any byte.
    pub replication: u64,
    /// Membership datagrams dropped.
    pub membership: u64,
    /// Blob connections closed before any byte.
    pub blobs: u64,
}

/// An address filter, as the TCP servers take it.
pub type Allow = Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>;

#[derive(Debug, Default)]
struct Snapshot {
    /// Node mesh address to its name.
    by_addr: BTreeMap<Ipv4Addr, String>,
    by_name: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// External peers' addresses (never nodes, in either mode).
    external: Vec<Ipv4Addr>,
}

#[derive(Debug)]
struct Inner {
    admission: Admission,
    nodes: RwLock<Snapshot>,
    refused: [AtomicU64; 3],
    logged: Mutex<[Option<Instant>; 3]>,
}

/// The set of cluster nodes `(name, mesh address)`, shared by the mesh services; cheap
/// to clone.
#[derive(Debug, Clone)]
pub struct ClusterNodes {
    inner: Arc<Inner>,
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    }
}

impl ClusterNodes {
    /// An empty set admitting as `admission` says.
    pub fn new(admission: Admission) -> Self {
        ClusterNodes {
            inner: Arc::new(Inner {
                admission,
                nodes: RwLock::new(Snapshot::default()),
                refused: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
                logged: Mutex::new([None; 3]),
            }),
        }
    }

    /// Replaces the set: `nodes` are `(name, mesh address)` of the cluster's nodes,
    /// `external` the external peers' addresses. An address claimed by two names goes to
    /// the lowest name (as [`crate::addr::resolve_collisions`] decides); a name may have
    /// several addresses (a node moving to a new one).
    pub fn set(
        &self,
        nodes: impl IntoIterator<Item = (String, Ipv4Addr)>,
        external: impl IntoIterator<Item = Ipv4Addr>,
    ) {
        let mut next = Snapshot::default();
        let mut pairs: Vec<(String, Ipv4Addr)> = nodes.into_iter().collect();
        pairs.sort();
        for (name, addr) in pairs {
            if next.by_addr.contains_key(&addr) {
                continue;
            }
            next.by_name.entry(name.clone()).or_default().insert(addr);
            next.by_addr.insert(addr, name);
        }
        next.external = external
            .into_iter()
            .filter(|a| !next.by_addr.contains_key(a))
            .collect();
        *self
            .inner
            .nodes
            .write()
            .unwrap_or_else(PoisonError::into_inner) = next;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.inner
            .nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `ip` is a cluster node's mesh address (in `Range` mode: any address of the
    /// range that is not an external peer's).
    pub fn is_node(&self, ip: IpAddr) -> bool {
        let Some(ip) = v4(ip) else {
            return false;
        };
        let s = self.read();
        if s.by_addr.contains_key(&ip) {
            return true;
        }
        match self.inner.admission {
            Admission::Nodes => false,
            Admission::Range(net) => net.contains(&ip) && !s.external.contains(&ip),
        }
    }

    /// Whether a member called `name` may speak from `ip`: `ip` is a node's address and
    /// `name` is the node registered there. In `Range` mode an unregistered name is
    /// admitted from an unregistered address of the range.
    pub fn admits(&self, name: &str, ip: IpAddr) -> bool {
        let Some(ip) = v4(ip) else {
            return false;
        };
        let s = self.read();
        match (s.by_name.get(name), s.by_addr.get(&ip)) {
            (Some(registered), _) => registered.contains(&ip),
            (None, Some(_)) => false,
            (None, None) => match self.inner.admission {
                Admission::Nodes => false,
                Admission::Range(net) => net.contains(&ip) && !s.external.contains(&ip),
            },
        }
    }

    /// A filter for `service`'s listener: admits cluster nodes, counts and logs the rest.
    pub fn allow(&self, service: Service) -> Allow {
        let me = self.clone();
        Arc::new(move |peer: SocketAddr| {
            if me.is_node(peer.ip()) {
                true
            } else {
                me.refuse(service, peer, "not a cluster node");
                false
            }
        })
    }

    /// Counts one refusal by `service` and logs it at debug (at most once a second per
    /// service, with the number refused since the last line).
    pub fn refuse(&self, service: Service, peer: SocketAddr, reason: &str) {
        let i = service.index();
        let total = self.inner.refused[i].fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let mut logged = self
            .inner
            .logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if logged[i].is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
            logged[i] = Some(now);
            drop(logged);
            debug!(service = service.name(), %peer, reason, total, "refused");
        }
    }

    /// Refusals counted so far.
    pub fn refusals(&self) -> Refusals {
        let get = |s: Service| self.inner.refused[s.index()].load(Ordering::Relaxed);
        Refusals {
            replication: get(Service::Replication),
            membership: get(Service::Membership),
            blobs: get(Service::Blobs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nodes_mode_admits_registered_nodes_only() {
        let t = ClusterNodes::new(Admission::Nodes);
        t.set(
            [
                ("a".to_owned(), "10.44.44.1".parse().unwrap()),
                ("b".to_owned(), "10.44.44.2".parse().unwrap()),
            ],
            ["10.44.44.9".parse().unwrap()],
        );
        assert!(t.is_node(ip("10.44.44.1")));
        assert!(t.is_node(ip("::ffff:10.44.44.2")));
        assert!(!t.is_node(ip("10.44.44.9")), "an external peer");
        assert!(!t.is_node(ip("10.44.44.3")), "unknown");
        assert!(t.admits("a", ip("10.44.44.1")));
        assert!(
            !t.admits("a", ip("10.44.44.2")),
            "a speaking from b's address"
        );
        assert!(
            !t.admits("c", ip("10.44.44.2")),
            "an unknown name at b's address"
        );
        assert!(!t.admits("c", ip("10.44.44.3")));
        let allow = t.allow(Service::Blobs);
        assert!(allow("10.44.44.1:5".parse().unwrap()));
        assert!(!allow("10.44.44.9:5".parse().unwrap()));
        assert!(!allow("10.44.44.9:6".parse().unwrap()));
        assert_eq!(
            t.refusals(),
            Refusals {
                blobs: 2,
                ..Refusals::default()
            }
        );
    }

    #[test]
    fn range_mode_admits_unregistered_names_but_not_impostors() {
        let t = ClusterNodes::new(Admission::Range("127.0.0.0/8".parse().unwrap()));
        t.set(
            [("a".to_owned(), "127.0.0.1".parse().unwrap())],
            ["127.0.0.9".parse().unwrap()],
        );
        assert!(t.is_node(ip("127.0.0.5")));
        assert!(!t.is_node(ip("127.0.0.9")));
        assert!(!t.is_node(ip("10.0.0.1")));
        assert!(t.admits("new", ip("127.0.0.5")));
        assert!(!t.admits("a", ip("127.0.0.5")), "a is registered elsewhere");
        assert!(!t.admits("new", ip("127.0.0.1")), "127.0.0.1 is a's");
        assert!(!t.admits("new", ip("127.0.0.9")));
    }

    #[test]
    fn a_shared_address_goes_to_the_lowest_name() {
        let t = ClusterNodes::new(Admission::Nodes);
        let shared: Ipv4Addr = "10.44.44.5".parse().unwrap();
        t.set([("b".to_owned(), shared), ("a".to_owned(), shared)], []);
        assert!(t.admits("a", shared.into()));
        assert!(!t.admits("b", shared.into()));
    }
}
