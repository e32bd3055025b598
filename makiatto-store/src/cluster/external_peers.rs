//! `external_peers`: WireGuard peers that are not Makiatto nodes (`maki peer add`), such as
//! an observability server; a peer whose name starts or ends with `o11y` is the telemetry
//! endpoint ([`telemetry_peer`]).
//!
//! **Class:** durable (a peer may be removed and re-added under its name). **Owner:** the
//! operator (`maki peer add/remove`, through any node).

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::Result;

/// An external WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalPeer {
    /// Peer name (primary key).
    pub name: String,
    /// WireGuard public key (base64).
    pub wg_public_key: String,
    /// Public endpoint (`host` or `host:port`), if the peer is reachable.
    pub endpoint: Option<String>,
    /// Address inside the mesh (bare, no prefix length), e.g. `10.44.44.5`.
    pub mesh_address: String,
    /// When it was added (unix ms).
    pub created_ms: i64,
}

const UPSERT: &str = "INSERT INTO external_peers (name, wg_public_key, endpoint, mesh_address, \
     created_ms) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (name) DO UPDATE SET \
     wg_public_key = excluded.wg_public_key, endpoint = excluded.endpoint, \
     mesh_address = excluded.mesh_address, created_ms = excluded.created_ms";
const GET: &str = "SELECT name, wg_public_key, endpoint, mesh_address, created_ms \
     FROM external_peers WHERE name = ?1";
const LIST: &str = "SELECT name, wg_public_key, endpoint, mesh_address, created_ms \
     FROM external_peers ORDER BY name";
const TELEMETRY: &str = "SELECT name, wg_public_key, endpoint, mesh_address, created_ms \
     FROM external_peers WHERE (substr(name, 1, 4) = 'o11y' OR substr(name, -4) = 'o11y') \
     AND mesh_address <> '' ORDER BY name LIMIT 1";
const DELETE: &str = "DELETE FROM external_peers WHERE name = ?1";

fn read(r: &Row<'_>) -> rusqlite::Result<ExternalPeer> {
    Ok(ExternalPeer {
        name: r.get(0)?,
        wg_public_key: r.get(1)?,
        endpoint: r.get(2)?,
        mesh_address: r.get(3)?,
        created_ms: r.get(4)?,
    })
}

/// Inserts or updates a peer.
pub fn upsert(conn: &Connection, peer: &ExternalPeer) -> Result<()> {
    conn.prepare_cached(UPSERT)?.execute(params![
        peer.name,
        peer.wg_public_key,
        peer.endpoint,
        peer.mesh_address,
        peer.created_ms
    ])?;
    Ok(())
}

/// The peer called `name`.
pub fn get(conn: &Connection, name: &str) -> Result<Option<ExternalPeer>> {
    Ok(conn
        .prepare_cached(GET)?
        .query_row([name], read)
        .optional()?)
}

/// Every peer, by name.
pub fn list(conn: &Connection) -> Result<Vec<ExternalPeer>> {
    let mut stmt = conn.prepare_cached(LIST)?;
    let rows = stmt.query_map([], read)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The telemetry (OTLP) peer: the first by name whose name starts or ends with `o11y`.
pub fn telemetry_peer(conn: &Connection) -> Result<Option<ExternalPeer>> {
    Ok(conn
        .prepare_cached(TELEMETRY)?
        .query_row([], read)
        .optional()?)
}

/// Deletes a peer; returns whether it existed.
pub fn delete(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.prepare_cached(DELETE)?.execute([name])? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_db;

    fn peer(name: &str, mesh: &str) -> ExternalPeer {
        ExternalPeer {
            name: name.into(),
            wg_public_key: format!("key-{name}"),
            endpoint: Some("198.51.100.7".into()),
            mesh_address: mesh.into(),
            created_ms: 1,
        }
    }

    #[test]
    fn roundtrip_list_telemetry_and_delete() {
        let conn = test_db();
        let backup = peer("backup", "10.44.44.9");
        let grafana = peer("metrics-o11y", "10.44.44.5");
        let noo11y = peer("o11", "10.44.44.6");
        for p in [&grafana, &backup, &noo11y] {
            upsert(&conn, p).unwrap();
        }
        assert_eq!(get(&conn, "backup").unwrap(), Some(backup.clone()));
        assert_eq!(get(&conn, "x").unwrap(), None);
        assert_eq!(
            list(&conn).unwrap(),
            vec![backup.clone(), grafana.clone(), noo11y.clone()]
        );
        assert_eq!(telemetry_peer(&conn).unwrap(), Some(grafana.clone()));
        let first = ExternalPeer {
            endpoint: None,
            ..peer("a-o11y", "10.44.44.4")
        };
        upsert(&conn, &first).unwrap();
        assert_eq!(telemetry_peer(&conn).unwrap(), Some(first.clone()));
        assert_eq!(get(&conn, "a-o11y").unwrap(), Some(first));

        assert!(delete(&conn, "a-o11y").unwrap());
        assert!(delete(&conn, "metrics-o11y").unwrap());
        assert!(!delete(&conn, "metrics-o11y").unwrap());
        assert_eq!(telemetry_peer(&conn).unwrap(), None);
        assert_eq!(list(&conn).unwrap(), vec![backup, noo11y]);
    }
}
