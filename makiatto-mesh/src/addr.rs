//! Mesh address allocation: pure functions over the claims the store holds.
//!
//! A node (or external peer) is a [`Claimant`], identified by `(name, public key)`. Its
//! first choice is derived from a hash of that pair, so concurrent joiners rarely pick the
//! same address; taken addresses are skipped by linear probing. When two claimants end up
//! with the same address anyway (both allocated before seeing each other's row),
//! [`resolve_collisions`] decides on every node identically: the lowest `(name, public
//! key)` keeps the address, the others move to the next free address in that same order.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::{MeshError, Result};

/// The default mesh range.
pub const DEFAULT_MESH_CIDR: &str = "10.44.44.0/24";

/// The default mesh range, parsed.
pub fn default_mesh_net() -> Ipv4Net {
    // A constant that parses: checked by the `default_cidr_parses` test.
    DEFAULT_MESH_CIDR.parse().unwrap_or_default()
}

/// Who holds (or wants) a mesh address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Claimant {
    /// Node or external peer name.
    pub name: String,
    /// WireGuard public key (base64).
    pub public_key: String,
}

/// One claim as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Who claims.
    pub claimant: Claimant,
    /// The address claimed.
    pub address: Ipv4Addr,
}

/// A claimant that must move, and where to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassignment {
    /// Who moves.
    pub claimant: Claimant,
    /// The address it gave up.
    pub from: Ipv4Addr,
    /// Its new address.
    pub to: Ipv4Addr,
}

/// How many host addresses `net` has (network and broadcast excluded). Zero for
/// prefixes longer than /30.
pub fn host_count(net: Ipv4Net) -> u32 {
    if net.prefix_len() > 30 {
        return 0;
    }
    (1u32 << (32 - u32::from(net.prefix_len()))) - 2
}

/// The `index`-th host of `net` (0-based, skipping the network address).
fn host(net: Ipv4Net, index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1 + index)
}

/// Whether `addr` is a usable host address of `net`.
pub fn is_host(net: Ipv4Net, addr: Ipv4Addr) -> bool {
    net.contains(&addr) && addr != net.network() && addr != net.broadcast()
}

/// The claimant's first choice in `net`: a hash of `(name, public key)` onto the hosts.
pub fn preferred_address(net: Ipv4Net, claimant: &Claimant) -> Result<Ipv4Addr> {
    let hosts = host_count(net);
    if hosts == 0 {
        return Err(MeshError::Config(format!(
            "mesh CIDR {net} is too small: use a prefix of /30 or shorter"
        )));
    }
    let mut h = blake3::Hasher::new();
    h.update(claimant.name.as_bytes());
    h.update(&[0]);
    h.update(claimant.public_key.as_bytes());
    let digest = h.finalize();
    let mut word = [0u8; 8];
    word.copy_from_slice(&digest.as_bytes()[..8]);
    let index = (u64::from_le_bytes(word) % u64::from(hosts)) as u32;
    Ok(host(net, index))
}

/// The address `claimant` should take given the addresses already `used` by others: its
/// preferred address, or the next free one after it (wrapping around). Addresses outside
/// `net` in `used` are ignored.
pub fn allocate(net: Ipv4Net, claimant: &Claimant, used: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr> {
    let hosts = host_count(net);
    let first = preferred_address(net, claimant)?;
    let start = u32::from(first) - u32::from(net.network()) - 1;
    (0..hosts)
        .map(|i| host(net, (start + i) % hosts))
        .find(|a| !used.contains(a))
        .ok_or(MeshError::AddressesExhausted(net))
}

/// Resolves addresses claimed more than once, and claims outside `net`.
///
/// For each shared address the lowest claimant `(name, public key)` keeps it; every other
/// claimant, taken in ascending order, is given [`allocate`]'s choice among the addresses
/// still free. A claimant holding several claims keeps only its lowest address. Every node
/// computing this from the same claims gets the same answer, and applying it leaves no
/// collision.
pub fn resolve_collisions(net: Ipv4Net, claims: &[Claim]) -> Result<Vec<Reassignment>> {
    // One claim per claimant: the lowest address.
    let mut by_claimant: BTreeMap<&Claimant, Ipv4Addr> = BTreeMap::new();
    for c in claims {
        by_claimant
            .entry(&c.claimant)
            .and_modify(|a| *a = (*a).min(c.address))
            .or_insert(c.address);
    }
    let mut owners: BTreeMap<Ipv4Addr, &Claimant> = BTreeMap::new();
    let mut losers = Vec::new();
    for (claimant, addr) in &by_claimant {
        if !is_host(net, *addr) {
            losers.push((*claimant, *addr));
            continue;
        }
        // Claimants iterate in ascending order, so the first one seen keeps the address.
        if owners.contains_key(addr) {
            losers.push((*claimant, *addr));
        } else {
            owners.insert(*addr, claimant);
        }
    }
    let mut used: BTreeSet<Ipv4Addr> = owners.keys().copied().collect();
    let mut out = Vec::with_capacity(losers.len());
    for (claimant, from) in losers {
        let to = allocate(net, claimant, &used)?;
        used.insert(to);
        out.push(Reassignment {
            claimant: claimant.clone(),
            from,
            to,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn who(name: &str, key: &str) -> Claimant {
        Claimant {
            name: name.into(),
            public_key: key.into(),
        }
    }

    #[test]
    fn default_cidr_parses() {
        let net: Ipv4Net = DEFAULT_MESH_CIDR.parse().unwrap();
        assert_eq!(default_mesh_net(), net);
        assert_eq!(host_count(net), 254);
    }

    #[test]
    fn preferred_is_stable_and_inside() {
        let net: Ipv4Net = "10.44.0.0/16".parse().unwrap();
        let a = preferred_address(net, &who("ams", "k1")).unwrap();
        assert_eq!(a, preferred_address(net, &who("ams", "k1")).unwrap());
        assert!(is_host(net, a));
        assert!(preferred_address("10.0.0.0/31".parse().unwrap(), &who("a", "k")).is_err());
    }

    #[test]
    fn allocate_skips_used_and_reports_full() {
        let net: Ipv4Net = "10.9.9.0/30".parse().unwrap(); // hosts .1 and .2
        let c = who("x", "k");
        let first = allocate(net, &c, &BTreeSet::new()).unwrap();
        let second = allocate(net, &c, &BTreeSet::from([first])).unwrap();
        assert_ne!(first, second);
        assert!(is_host(net, second));
        assert!(matches!(
            allocate(net, &c, &BTreeSet::from([first, second])),
            Err(MeshError::AddressesExhausted(_))
        ));
    }

    #[test]
    fn lowest_name_then_key_keeps_a_shared_address() {
        let net = default_mesh_net();
        let addr: Ipv4Addr = "10.44.44.7".parse().unwrap();
        let claims = vec![
            Claim {
                claimant: who("b", "k0"),
                address: addr,
            },
            Claim {
                claimant: who("a", "k9"),
                address: addr,
            },
            Claim {
                claimant: who("a", "k1"),
                address: addr,
            },
        ];
        let moves = resolve_collisions(net, &claims).unwrap();
        let moved: Vec<_> = moves.iter().map(|m| m.claimant.clone()).collect();
        assert_eq!(moved, vec![who("a", "k9"), who("b", "k0")]);
        assert!(moves.iter().all(|m| m.to != addr && m.from == addr));
        assert_ne!(moves[0].to, moves[1].to);
    }

    fn claims_strategy(prefix: u8) -> impl Strategy<Value = (Ipv4Net, Vec<Claim>)> {
        let net = Ipv4Net::new(Ipv4Addr::new(10, 44, 0, 0), prefix)
            .unwrap()
            .trunc();
        let hosts = host_count(net);
        prop::collection::vec((0u8..6, 0u8..3, 0..hosts.min(12) + 2), 0..24).prop_map(move |raw| {
            let claims = raw
                .into_iter()
                .map(|(n, k, i)| Claim {
                    claimant: who(&format!("n{n}"), &format!("k{k}")),
                    // `i` may reach the network or broadcast address: claims outside
                    // the host range must be moved too.
                    address: Ipv4Addr::from(u32::from(net.network()) + i),
                })
                .collect();
            (net, claims)
        })
    }

    proptest! {
        #[test]
        fn resolution_leaves_unique_host_addresses((net, claims) in prop_oneof![claims_strategy(24), claims_strategy(16), claims_strategy(29)]) {
            let moves = match resolve_collisions(net, &claims) {
                Ok(m) => m,
                Err(MeshError::AddressesExhausted(_)) => {
                    let distinct: BTreeSet<_> = claims.iter().map(|c| &c.claimant).collect();
                    prop_assert!(distinct.len() as u32 > host_count(net));
                    return Ok(());
                }
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            };
            // Final address per claimant.
            let mut last: BTreeMap<Claimant, Ipv4Addr> = BTreeMap::new();
            for c in &claims {
                last.entry(c.claimant.clone()).and_modify(|a| *a = (*a).min(c.address)).or_insert(c.address);
            }
            for m in &moves {
                last.insert(m.claimant.clone(), m.to);
            }
            let addrs: BTreeSet<_> = last.values().copied().collect();
            prop_assert_eq!(addrs.len(), last.len(), "two claimants share an address");
            prop_assert!(last.values().all(|a| is_host(net, *a)));
            // The lowest claimant of each valid address did not move.
            for (claimant, addr) in &last {
                let _ = (claimant, addr);
            }
            let final_claims: Vec<Claim> = last.into_iter().map(|(claimant, address)| Claim { claimant, address }).collect();
            prop_assert!(resolve_collisions(net, &final_claims).unwrap().is_empty(), "not idempotent");
            // Same answer whatever the order of the claims.
            let mut reversed = claims.clone();
            reversed.reverse();
            prop_assert_eq!(resolve_collisions(net, &reversed).unwrap(), moves.clone());
            // Winners keep their address.
            for c in &claims {
                if is_host(net, c.address) {
                    let lowest = claims.iter().filter(|o| o.address == c.address).map(|o| &o.claimant).min().unwrap();
                    let lowest_own_min = claims.iter().filter(|o| &o.claimant == lowest).map(|o| o.address).min().unwrap();
                    if lowest_own_min == c.address {
                        prop_assert!(!moves.iter().any(|m| &m.claimant == lowest));
                    }
                }
            }
        }
    }
}
