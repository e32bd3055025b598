//! `nodes`: the CDN nodes of the cluster.
//!
//! One row per node, keyed by its name (also its nameserver label: `<name>.ns.<domain>`).
//! **Class:** durable (a removed node's name may be re-used). **Owner:** the node the row
//! describes writes it when it joins and when its addresses or coordinates change;
//! `maki machine remove` deletes it (through any node).

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::Result;

/// A CDN node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Node name (primary key).
    pub name: String,
    /// WireGuard public key (base64).
    pub wg_public_key: String,
    /// WireGuard endpoint, `host:port`.
    pub wg_endpoint: String,
    /// Address inside the WireGuard mesh (bare, no prefix length), e.g. `10.44.44.1`.
    pub mesh_address: String,
    /// Public IPv4 address.
    pub ipv4: String,
    /// Public IPv6 address, if any.
    pub ipv6: Option<String>,
    /// Latitude in degrees (GeoDNS).
    pub latitude: f64,
    /// Longitude in degrees (GeoDNS).
    pub longitude: f64,
    /// Whether the node answers as an authoritative nameserver.
    pub is_nameserver: bool,
    /// Hex site id of the node's store replica.
    pub site_id: String,
    /// When the node joined (unix ms).
    pub created_ms: i64,
}

const UPSERT: &str = "INSERT INTO nodes (name, wg_public_key, wg_endpoint, mesh_address, ipv4, \
     ipv6, latitude, longitude, is_nameserver, site_id, created_ms) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
     ON CONFLICT (name) DO UPDATE SET wg_public_key = excluded.wg_public_key, \
     wg_endpoint = excluded.wg_endpoint, mesh_address = excluded.mesh_address, \
     ipv4 = excluded.ipv4, ipv6 = excluded.ipv6, latitude = excluded.latitude, \
     longitude = excluded.longitude, is_nameserver = excluded.is_nameserver, \
     site_id = excluded.site_id, created_ms = excluded.created_ms";
const GET: &str = "SELECT name, wg_public_key, wg_endpoint, mesh_address, ipv4, ipv6, latitude, \
     longitude, is_nameserver, site_id, created_ms FROM nodes WHERE name = ?1";
const LIST: &str = "SELECT name, wg_public_key, wg_endpoint, mesh_address, ipv4, ipv6, latitude, \
     longitude, is_nameserver, site_id, created_ms FROM nodes ORDER BY name";
const NAMESERVERS: &str = "SELECT name, wg_public_key, wg_endpoint, mesh_address, ipv4, ipv6, \
     latitude, longitude, is_nameserver, site_id, created_ms FROM nodes \
     WHERE is_nameserver <> 0 ORDER BY name";
const BY_SITE: &str = "SELECT name, wg_public_key, wg_endpoint, mesh_address, ipv4, ipv6, \
     latitude, longitude, is_nameserver, site_id, created_ms FROM nodes \
     WHERE site_id = ?1 ORDER BY name LIMIT 1";
const DELETE: &str = "DELETE FROM nodes WHERE name = ?1";

fn read(r: &Row<'_>) -> rusqlite::Result<Node> {
    Ok(Node {
        name: r.get(0)?,
        wg_public_key: r.get(1)?,
        wg_endpoint: r.get(2)?,
        mesh_address: r.get(3)?,
        ipv4: r.get(4)?,
        ipv6: r.get(5)?,
        latitude: r.get(6)?,
        longitude: r.get(7)?,
        is_nameserver: r.get(8)?,
        site_id: r.get(9)?,
        created_ms: r.get(10)?,
    })
}

/// Inserts or replaces (column by column) a node.
pub fn upsert(conn: &Connection, node: &Node) -> Result<()> {
    conn.prepare_cached(UPSERT)?.execute(params![
        node.name,
        node.wg_public_key,
        node.wg_endpoint,
        node.mesh_address,
        node.ipv4,
        node.ipv6,
        node.latitude,
        node.longitude,
        node.is_nameserver,
        node.site_id,
        node.created_ms,
    ])?;
    Ok(())
}

/// The node called `name`.
pub fn get(conn: &Connection, name: &str) -> Result<Option<Node>> {
    Ok(conn
        .prepare_cached(GET)?
        .query_row([name], read)
        .optional()?)
}

/// Every node, by name.
pub fn list(conn: &Connection) -> Result<Vec<Node>> {
    let mut stmt = conn.prepare_cached(LIST)?;
    let rows = stmt.query_map([], read)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The nodes that serve as nameservers, by name.
pub fn nameservers(conn: &Connection) -> Result<Vec<Node>> {
    let mut stmt = conn.prepare_cached(NAMESERVERS)?;
    let rows = stmt.query_map([], read)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The node whose store has site id `site_id` (hex).
pub fn by_site_id(conn: &Connection, site_id: &str) -> Result<Option<Node>> {
    Ok(conn
        .prepare_cached(BY_SITE)?
        .query_row([site_id], read)
        .optional()?)
}

/// Deletes the node called `name`; returns whether it existed.
pub fn delete(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.prepare_cached(DELETE)?.execute([name])? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_db;

    fn node(name: &str, mesh: &str, ns: bool) -> Node {
        Node {
            name: name.into(),
            wg_public_key: format!("key-{name}"),
            wg_endpoint: "203.0.113.1:51880".into(),
            mesh_address: mesh.into(),
            ipv4: "203.0.113.1".into(),
            ipv6: ns.then(|| "2001:db8::1".into()),
            latitude: 51.5,
            longitude: -0.12,
            is_nameserver: ns,
            site_id: format!("site-{name}"),
            created_ms: 7,
        }
    }

    #[test]
    fn roundtrip_list_and_delete() {
        let conn = test_db();
        let b = node("klukai", "10.44.44.2", false);
        let a = node("vector", "10.44.44.1", true);
        upsert(&conn, &a).unwrap();
        upsert(&conn, &b).unwrap();
        assert_eq!(get(&conn, "vector").unwrap(), Some(a.clone()));
        assert_eq!(get(&conn, "nope").unwrap(), None);
        assert_eq!(list(&conn).unwrap(), vec![b.clone(), a.clone()]);
        assert_eq!(nameservers(&conn).unwrap(), vec![a.clone()]);
        assert_eq!(by_site_id(&conn, "site-klukai").unwrap(), Some(b.clone()));

        let mut moved = a.clone();
        moved.latitude = 1.0;
        moved.ipv6 = None;
        upsert(&conn, &moved).unwrap();
        assert_eq!(get(&conn, "vector").unwrap(), Some(moved));

        assert!(delete(&conn, "vector").unwrap());
        assert!(!delete(&conn, "vector").unwrap());
        assert_eq!(list(&conn).unwrap(), vec![b]);
    }

    #[test]
    fn a_row_from_its_key_alone_reads() {
        let conn = test_db();
        conn.execute("INSERT INTO nodes (name) VALUES ('bare')", [])
            .unwrap();
        let n = get(&conn, "bare").unwrap().unwrap();
        assert_eq!(n.mesh_address, "");
        assert!(!n.is_nameserver);
    }
}
