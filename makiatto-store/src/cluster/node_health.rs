//! `node_health`: each node's own report of its health, for `maki health` and for GeoDNS
//! to skip unhealthy nodes.
//!
//! **Class:** durable (keyed by node name, which may be re-used). **Owner:** the node named
//! in the key: single-owner rows, conflict-free. Readers judge staleness from
//! `updated_ms` ([`list_fresh`]).

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::Result;

text_enum! {
    /// A node's health.
    HealthStatus {
        /// Not reported yet.
        Unknown = "unknown",
        /// Serving normally.
        Healthy = "healthy",
        /// Serving, with problems (see the detail).
        Degraded = "degraded",
        /// Not serving.
        Unhealthy = "unhealthy",
    }
}

/// A node's health report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealth {
    /// The node (primary key), the only writer of the row.
    pub node: String,
    /// Overall status.
    pub status: HealthStatus,
    /// Free-form detail for operators.
    pub detail: String,
    /// When the report was written (unix ms).
    pub updated_ms: i64,
    /// The node's Makiatto version.
    pub version: String,
}

const UPSERT: &str = "INSERT INTO node_health (node, status, detail, updated_ms, version) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (node) DO UPDATE SET status = excluded.status, \
     detail = excluded.detail, updated_ms = excluded.updated_ms, version = excluded.version";
const GET: &str =
    "SELECT node, status, detail, updated_ms, version FROM node_health WHERE node = ?1";
const LIST: &str =
    "SELECT node, status, detail, updated_ms, version FROM node_health ORDER BY node";
const LIST_FRESH: &str = "SELECT node, status, detail, updated_ms, version FROM node_health \
     WHERE updated_ms >= ?1 ORDER BY node";
const DELETE: &str = "DELETE FROM node_health WHERE node = ?1";

fn read(r: &Row<'_>) -> rusqlite::Result<NodeHealth> {
    Ok(NodeHealth {
        node: r.get(0)?,
        status: r.get(1)?,
        detail: r.get(2)?,
        updated_ms: r.get(3)?,
        version: r.get(4)?,
    })
}

/// Inserts or updates a node's report.
pub fn upsert(conn: &Connection, health: &NodeHealth) -> Result<()> {
    conn.prepare_cached(UPSERT)?.execute(params![
        health.node,
        health.status,
        health.detail,
        health.updated_ms,
        health.version
    ])?;
    Ok(())
}

/// The report of `node`.
pub fn get(conn: &Connection, node: &str) -> Result<Option<NodeHealth>> {
    Ok(conn
        .prepare_cached(GET)?
        .query_row([node], read)
        .optional()?)
}

/// Every report, by node.
pub fn list(conn: &Connection) -> Result<Vec<NodeHealth>> {
    let mut stmt = conn.prepare_cached(LIST)?;
    let rows = stmt.query_map([], read)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The reports written at or after `since_ms`, by node.
pub fn list_fresh(conn: &Connection, since_ms: i64) -> Result<Vec<NodeHealth>> {
    let mut stmt = conn.prepare_cached(LIST_FRESH)?;
    let rows = stmt.query_map([since_ms], read)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Deletes a node's report; returns whether it existed.
pub fn delete(conn: &Connection, node: &str) -> Result<bool> {
    Ok(conn.prepare_cached(DELETE)?.execute([node])? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_db;

    fn report(node: &str, status: HealthStatus, updated_ms: i64) -> NodeHealth {
        NodeHealth {
            node: node.into(),
            status,
            detail: String::new(),
            updated_ms,
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn roundtrip_list_fresh_and_delete() {
        let conn = test_db();
        let a = report("vector", HealthStatus::Healthy, 100);
        let b = report("klukai", HealthStatus::Degraded, 10);
        upsert(&conn, &a).unwrap();
        upsert(&conn, &b).unwrap();
        assert_eq!(get(&conn, "vector").unwrap(), Some(a.clone()));
        assert_eq!(get(&conn, "x").unwrap(), None);
        assert_eq!(list(&conn).unwrap(), vec![b.clone(), a.clone()]);
        assert_eq!(list_fresh(&conn, 50).unwrap(), vec![a.clone()]);
        let down = NodeHealth {
            detail: "disk full".into(),
            ..report("vector", HealthStatus::Unhealthy, 200)
        };
        upsert(&conn, &down).unwrap();
        assert_eq!(get(&conn, "vector").unwrap(), Some(down));
        assert!(delete(&conn, "vector").unwrap());
        assert!(!delete(&conn, "vector").unwrap());
        assert_eq!(list(&conn).unwrap(), vec![b]);

        conn.execute("INSERT INTO node_health (node) VALUES ('bare')", [])
            .unwrap();
        assert_eq!(
            get(&conn, "bare").unwrap().unwrap().status,
            HealthStatus::Unknown
        );
        assert_eq!(
            HealthStatus::from("melting"),
            HealthStatus::Other("melting".into())
        );
        assert_eq!(HealthStatus::Degraded.to_string(), "degraded");
    }
}
