//! WireGuard mesh address allocation over `nodes` and `external_peers`.
//!
//! Allocation is not atomic across the cluster: allocate under a lease (e.g.
//! [`leases::try_acquire`](super::leases::try_acquire) on `"mesh-address"`) and check
//! [`duplicate_mesh_addresses`] after merges to repair a rare collision.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use rusqlite::Connection;

use crate::Result;

const USED: &str = "SELECT mesh_address FROM nodes WHERE mesh_address <> '' \
     UNION SELECT mesh_address FROM external_peers WHERE mesh_address <> '' ORDER BY 1";
const DUPLICATES: &str = "SELECT mesh_address FROM \
     (SELECT mesh_address FROM nodes WHERE mesh_address <> '' \
      UNION ALL SELECT mesh_address FROM external_peers WHERE mesh_address <> '') \
     GROUP BY mesh_address HAVING count(*) > 1 ORDER BY mesh_address";

/// Every mesh address in use by a node or an external peer, without duplicates, sorted
/// as text.
pub fn used_mesh_addresses(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(USED)?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Mesh addresses claimed by more than one node or peer (a concurrent allocation), sorted.
pub fn duplicate_mesh_addresses(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(DUPLICATES)?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The lowest host address of `network/prefix_len` not in `used`, skipping the network
/// and broadcast addresses. Entries of `used` may carry a `/len` suffix; unparsable ones
/// are ignored. `None` when the network is full or `prefix_len > 30`.
pub fn first_free_ipv4(used: &[String], network: Ipv4Addr, prefix_len: u8) -> Option<Ipv4Addr> {
    if prefix_len > 30 {
        return None;
    }
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    let base = u32::from(network) & mask;
    let size = 1u64 << (32 - u32::from(prefix_len));
    let taken: BTreeSet<u32> = used
        .iter()
        .filter_map(|a| a.split('/').next()?.trim().parse::<Ipv4Addr>().ok())
        .map(u32::from)
        .collect();
    (1..size - 1)
        .map(|offset| base + offset as u32)
        .find(|a| !taken.contains(a))
        .map(Ipv4Addr::from)
}

/// The next free mesh address in `network/prefix_len`, given what nodes and peers use.
pub fn next_free_mesh_address(
    conn: &Connection,
    network: Ipv4Addr,
    prefix_len: u8,
) -> Result<Option<Ipv4Addr>> {
    Ok(first_free_ipv4(
        &used_mesh_addresses(conn)?,
        network,
        prefix_len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{external_peers, nodes, test_db};

    fn node(name: &str, mesh: &str) -> nodes::Node {
        nodes::Node {
            name: name.into(),
            wg_public_key: String::new(),
            wg_endpoint: String::new(),
            mesh_address: mesh.into(),
            ipv4: String::new(),
            ipv6: None,
            latitude: 0.0,
            longitude: 0.0,
            is_nameserver: false,
            site_id: String::new(),
            created_ms: 0,
        }
    }

    fn peer(name: &str, mesh: &str) -> external_peers::ExternalPeer {
        external_peers::ExternalPeer {
            name: name.into(),
            wg_public_key: String::new(),
            endpoint: None,
            mesh_address: mesh.into(),
            created_ms: 0,
        }
    }

    #[test]
    fn used_addresses_span_nodes_and_peers() {
        let conn = test_db();
        let net = Ipv4Addr::new(10, 44, 44, 0);
        assert_eq!(used_mesh_addresses(&conn).unwrap(), Vec::<String>::new());
        assert_eq!(
            next_free_mesh_address(&conn, net, 24).unwrap(),
            Some(Ipv4Addr::new(10, 44, 44, 1))
        );
        nodes::upsert(&conn, &node("vector", "10.44.44.1")).unwrap();
        nodes::upsert(&conn, &node("klukai", "10.44.44.2")).unwrap();
        nodes::upsert(&conn, &node("bare", "")).unwrap();
        external_peers::upsert(&conn, &peer("o11y", "10.44.44.5")).unwrap();
        external_peers::upsert(&conn, &peer("twin", "10.44.44.2")).unwrap();
        assert_eq!(
            used_mesh_addresses(&conn).unwrap(),
            ["10.44.44.1", "10.44.44.2", "10.44.44.5"]
        );
        assert_eq!(duplicate_mesh_addresses(&conn).unwrap(), ["10.44.44.2"]);
        assert_eq!(
            next_free_mesh_address(&conn, net, 24).unwrap(),
            Some(Ipv4Addr::new(10, 44, 44, 3))
        );
    }

    #[test]
    fn first_free_skips_network_broadcast_and_used() {
        let net = Ipv4Addr::new(10, 44, 44, 77); // host bits are ignored
        let used: Vec<String> = ["10.44.44.1/32", "10.44.44.2", "junk"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(
            first_free_ipv4(&used, net, 24),
            Some(Ipv4Addr::new(10, 44, 44, 3))
        );
        // A /30 has two hosts.
        let full: Vec<String> = vec!["10.0.0.1".into(), "10.0.0.2".into()];
        assert_eq!(first_free_ipv4(&full, Ipv4Addr::new(10, 0, 0, 0), 30), None);
        assert_eq!(first_free_ipv4(&[], Ipv4Addr::new(10, 0, 0, 0), 31), None);
        assert_eq!(
            first_free_ipv4(&[], Ipv4Addr::new(10, 0, 0, 0), 0),
            Some(Ipv4Addr::new(0, 0, 0, 1))
        );
    }
}
