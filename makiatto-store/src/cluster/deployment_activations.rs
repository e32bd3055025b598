//! `deployment_activations`: each node's progress with each deployment (fetching its
//! blobs, serving it, or failing), for `maki sync` to report and wait on.
//!
//! **Class:** ephemeral (keyed by a never-reused deployment id). **Owner:** the node named
//! in the key: single-owner rows, conflict-free.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::Result;

text_enum! {
    /// Where a node is with a deployment.
    ActivationStatus {
        /// Known, not started.
        Pending = "pending",
        /// Fetching the deployment's blobs.
        Fetching = "fetching",
        /// Every blob is present: the node can serve the deployment.
        Active = "active",
        /// The node could not activate it (see the error).
        Failed = "failed",
    }
}

/// One node's state for one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    /// The deployment (primary key, part 1).
    pub deployment_id: String,
    /// The node (primary key, part 2), the only writer of the row.
    pub node: String,
    /// When the status was last set (unix ms).
    pub activated_ms: i64,
    /// The status.
    pub status: ActivationStatus,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

const UPSERT: &str = "INSERT INTO deployment_activations (deployment_id, node, activated_ms, \
     status, error) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (deployment_id, node) DO UPDATE \
     SET activated_ms = excluded.activated_ms, status = excluded.status, error = excluded.error";
const GET: &str = "SELECT deployment_id, node, activated_ms, status, error \
     FROM deployment_activations WHERE deployment_id = ?1 AND node = ?2";
const LIST: &str = "SELECT deployment_id, node, activated_ms, status, error \
     FROM deployment_activations ORDER BY deployment_id, node";
const LIST_FOR_DEPLOYMENT: &str = "SELECT deployment_id, node, activated_ms, status, error \
     FROM deployment_activations WHERE deployment_id = ?1 ORDER BY node";
const LIST_FOR_NODE: &str = "SELECT deployment_id, node, activated_ms, status, error \
     FROM deployment_activations WHERE node = ?1 ORDER BY deployment_id";
const DELETE: &str = "DELETE FROM deployment_activations WHERE deployment_id = ?1 AND node = ?2";

fn read(r: &Row<'_>) -> rusqlite::Result<Activation> {
    Ok(Activation {
        deployment_id: r.get(0)?,
        node: r.get(1)?,
        activated_ms: r.get(2)?,
        status: r.get(3)?,
        error: r.get(4)?,
    })
}

fn query(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Activation>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(args, read)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Inserts or updates a node's activation row.
pub fn upsert(conn: &Connection, activation: &Activation) -> Result<()> {
    conn.prepare_cached(UPSERT)?.execute(params![
        activation.deployment_id,
        activation.node,
        activation.activated_ms,
        activation.status,
        activation.error,
    ])?;
    Ok(())
}

/// The activation of `deployment_id` on `node`.
pub fn get(conn: &Connection, deployment_id: &str, node: &str) -> Result<Option<Activation>> {
    Ok(conn
        .prepare_cached(GET)?
        .query_row([deployment_id, node], read)
        .optional()?)
}

/// Every activation, by deployment and node.
pub fn list(conn: &Connection) -> Result<Vec<Activation>> {
    query(conn, LIST, [])
}

/// The activations of one deployment, by node.
pub fn list_for_deployment(conn: &Connection, deployment_id: &str) -> Result<Vec<Activation>> {
    query(conn, LIST_FOR_DEPLOYMENT, [deployment_id])
}

/// The activations one node wrote, by deployment.
pub fn list_for_node(conn: &Connection, node: &str) -> Result<Vec<Activation>> {
    query(conn, LIST_FOR_NODE, [node])
}

/// Deletes one activation row; returns whether it existed.
pub fn delete(conn: &Connection, deployment_id: &str, node: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(DELETE)?
        .execute([deployment_id, node])?
        > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_db;

    fn act(dep: &str, node: &str, status: ActivationStatus) -> Activation {
        Activation {
            deployment_id: dep.into(),
            node: node.into(),
            activated_ms: 5,
            status,
            error: None,
        }
    }

    #[test]
    fn roundtrip_list_and_delete() {
        let conn = test_db();
        let a = act("d1", "vector", ActivationStatus::Fetching);
        let b = act("d1", "klukai", ActivationStatus::Active);
        let c = act("d0", "vector", ActivationStatus::Pending);
        for x in [&a, &b, &c] {
            upsert(&conn, x).unwrap();
        }
        assert_eq!(get(&conn, "d1", "vector").unwrap(), Some(a.clone()));
        assert_eq!(get(&conn, "d1", "tololo").unwrap(), None);
        assert_eq!(list(&conn).unwrap(), vec![c.clone(), b.clone(), a.clone()]);
        assert_eq!(
            list_for_deployment(&conn, "d1").unwrap(),
            vec![b.clone(), a.clone()]
        );
        assert_eq!(
            list_for_node(&conn, "vector").unwrap(),
            vec![c.clone(), a.clone()]
        );

        let failed = Activation {
            status: ActivationStatus::Failed,
            error: Some("blob missing".into()),
            activated_ms: 9,
            ..a.clone()
        };
        upsert(&conn, &failed).unwrap();
        assert_eq!(get(&conn, "d1", "vector").unwrap(), Some(failed));

        assert!(delete(&conn, "d1", "vector").unwrap());
        assert!(!delete(&conn, "d1", "vector").unwrap());
        assert_eq!(list(&conn).unwrap(), vec![c, b]);
    }

    #[test]
    fn unknown_statuses_survive() {
        let conn = test_db();
        conn.execute(
            "INSERT INTO deployment_activations (deployment_id, node, status) \
             VALUES ('d', 'n', 'warming')",
            [],
        )
        .unwrap();
        let got = get(&conn, "d", "n").unwrap().unwrap();
        assert_eq!(got.status, ActivationStatus::Other("warming".into()));
        assert_eq!(got.status.as_str(), "warming");
        upsert(&conn, &got).unwrap();
        assert_eq!(get(&conn, "d", "n").unwrap(), Some(got));
        // A row materialised from its key alone.
        conn.execute(
            "INSERT INTO deployment_activations (deployment_id, node) VALUES ('d', 'm')",
            [],
        )
        .unwrap();
        assert_eq!(
            get(&conn, "d", "m").unwrap().unwrap().status,
            ActivationStatus::Pending
        );
    }
}
