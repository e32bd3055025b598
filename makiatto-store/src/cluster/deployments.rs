//! `deployments`: immutable snapshots of a domain's content and configuration (one per
//! `maki sync` of the domain).
//!
//! A deployment owns rows in [`deployment_files`](super::deployment_files),
//! [`functions`](super::functions), [`transforms`](super::transforms) and
//! [`dns_records`](super::dns_records), all keyed by its id and insert-only; nodes report
//! progress in [`deployment_activations`](super::deployment_activations); the domain
//! serves it once [`domains::set_active`](super::domains::set_active) points at it.
//!
//! **Class:** ephemeral (ids from [`new_id`](super::new_id), never re-used).
//! **Owner:** the deploying client; insert-only.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::Result;

/// A deployment.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Random, time-ordered id (primary key).
    pub id: String,
    /// The domain deployed.
    pub domain: String,
    /// When it was created (unix ms).
    pub created_ms: i64,
    /// Who created it (user or node name), for display.
    pub created_by: String,
    /// The domain's configuration as deployed (postcard, format owned by the deployer:
    /// functions, transforms, records, settings). Empty in a row materialised from its key.
    pub config: Vec<u8>,
    /// blake3 (hex) of the file manifest, to tell identical deployments apart cheaply.
    pub manifest_hash: String,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config may hold secrets (function environments).
        f.debug_struct("Deployment")
            .field("id", &self.id)
            .field("domain", &self.domain)
            .field("created_ms", &self.created_ms)
            .field("created_by", &self.created_by)
            .field("config", &format_args!("<{} bytes>", self.config.len()))
            .field("manifest_hash", &self.manifest_hash)
            .finish()
    }
}

const INSERT: &str = "INSERT INTO deployments (id, domain, created_ms, created_by, config, \
     manifest_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING";
const GET: &str = "SELECT id, domain, created_ms, created_by, config, manifest_hash \
     FROM deployments WHERE id = ?1";
const LIST: &str = "SELECT id, domain, created_ms, created_by, config, manifest_hash \
     FROM deployments ORDER BY id";
const LIST_FOR_DOMAIN: &str = "SELECT id, domain, created_ms, created_by, config, manifest_hash \
     FROM deployments WHERE domain = ?1 ORDER BY created_ms DESC, id DESC";
const PRUNABLE: &str = "SELECT id FROM deployments WHERE domain = ?1 \
     AND id IS NOT (SELECT active_deployment FROM domains WHERE name = ?1) \
     ORDER BY created_ms DESC, id DESC LIMIT -1 OFFSET ?2";
const DELETE: &str = "DELETE FROM deployments WHERE id = ?1";
const PURGE_FILES: &str = "DELETE FROM deployment_files WHERE deployment_id = ?1";
const PURGE_ACTIVATIONS: &str = "DELETE FROM deployment_activations WHERE deployment_id = ?1";
const PURGE_FUNCTIONS: &str = "DELETE FROM functions WHERE deployment_id = ?1";
const PURGE_TRANSFORMS: &str = "DELETE FROM transforms WHERE deployment_id = ?1";
const PURGE_RECORDS: &str = "DELETE FROM dns_records WHERE deployment_id = ?1";
const REFERENCED_BLOBS: &str = "SELECT hash FROM deployment_files WHERE hash <> '' \
     UNION SELECT wasm FROM functions WHERE wasm <> '' \
     UNION SELECT wasm FROM transforms WHERE wasm <> '' ORDER BY 1";

fn read(r: &Row<'_>) -> rusqlite::Result<Deployment> {
    Ok(Deployment {
        id: r.get(0)?,
        domain: r.get(1)?,
        created_ms: r.get(2)?,
        created_by: r.get(3)?,
        config: r.get(4)?,
        manifest_hash: r.get(5)?,
    })
}

/// Inserts a deployment; returns false (and changes nothing) if the id exists.
pub fn insert(conn: &Connection, deployment: &Deployment) -> Result<bool> {
    let n = conn.prepare_cached(INSERT)?.execute(params![
        deployment.id,
        deployment.domain,
        deployment.created_ms,
        deployment.created_by,
        deployment.config,
        deployment.manifest_hash,
    ])?;
    Ok(n > 0)
}

/// The deployment with id `id`.
pub fn get(conn: &Connection, id: &str) -> Result<Option<Deployment>> {
    Ok(conn.prepare_cached(GET)?.query_row([id], read).optional()?)
}

/// Every deployment, by id.
pub fn list(conn: &Connection) -> Result<Vec<Deployment>> {
    let mut stmt = conn.prepare_cached(LIST)?;
    let rows = stmt.query_map([], read)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The deployments of `domain`, newest first.
pub fn list_for_domain(conn: &Connection, domain: &str) -> Result<Vec<Deployment>> {
    let mut stmt = conn.prepare_cached(LIST_FOR_DOMAIN)?;
    let rows = stmt.query_map([domain], read)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The ids of `domain`'s deployments to garbage-collect: all but the newest `keep` and the
/// active one, newest first.
pub fn prunable(conn: &Connection, domain: &str, keep: usize) -> Result<Vec<String>> {
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(PRUNABLE)?;
    let rows = stmt.query_map(params![domain, keep], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Deletes the deployment row only; returns whether it existed. See [`purge`].
pub fn delete(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn.prepare_cached(DELETE)?.execute([id])? > 0)
}

/// Deletes a deployment and every row keyed by it (files, activations, functions,
/// transforms, DNS records); returns whether the deployment row existed. Does not check
/// whether a domain still points at it.
pub fn purge(conn: &Connection, id: &str) -> Result<bool> {
    for sql in [
        PURGE_FILES,
        PURGE_ACTIVATIONS,
        PURGE_FUNCTIONS,
        PURGE_TRANSFORMS,
        PURGE_RECORDS,
    ] {
        conn.prepare_cached(sql)?.execute([id])?;
    }
    delete(conn, id)
}

/// Every blob hash (blake3 hex) referenced by any deployment's files, functions or
/// transforms, sorted: what the blob store must keep.
pub fn referenced_blobs(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(REFERENCED_BLOBS)?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{
        deployment_activations, deployment_files, dns_records, domains, functions, test_db,
        transforms,
    };

    fn deployment(id: &str, domain: &str, created_ms: i64) -> Deployment {
        Deployment {
            id: id.into(),
            domain: domain.into(),
            created_ms,
            created_by: "alice".into(),
            config: vec![1, 2, 3],
            manifest_hash: format!("m-{id}"),
        }
    }

    #[test]
    fn roundtrip_list_and_delete() {
        let conn = test_db();
        let a = deployment("b", "example.com", 2);
        let b = deployment("a", "example.com", 1);
        let c = deployment("c", "cat.cafe", 3);
        for d in [&a, &b, &c] {
            assert!(insert(&conn, d).unwrap());
        }
        // Insert-only: a second insert of the id changes nothing.
        assert!(!insert(&conn, &deployment("a", "other", 9)).unwrap());
        assert_eq!(get(&conn, "a").unwrap(), Some(b.clone()));
        assert_eq!(get(&conn, "z").unwrap(), None);
        assert_eq!(list(&conn).unwrap(), vec![b.clone(), a.clone(), c.clone()]);
        assert_eq!(
            list_for_domain(&conn, "example.com").unwrap(),
            vec![a.clone(), b.clone()]
        );
        assert!(delete(&conn, "c").unwrap());
        assert!(!delete(&conn, "c").unwrap());
        assert_eq!(list(&conn).unwrap(), vec![b, a]);
        assert!(!format!("{:?}", deployment("x", "y", 0)).contains("[1, 2, 3]"));
    }

    #[test]
    fn prunable_keeps_the_newest_and_the_active() {
        let conn = test_db();
        for (id, t) in [("d1", 1), ("d2", 2), ("d3", 3), ("d4", 4)] {
            insert(&conn, &deployment(id, "example.com", t)).unwrap();
        }
        insert(&conn, &deployment("x1", "cat.cafe", 1)).unwrap();
        assert_eq!(prunable(&conn, "example.com", 2).unwrap(), ["d2", "d1"]);
        domains::set_active(&conn, "example.com", Some("d1"), 5).unwrap();
        assert_eq!(prunable(&conn, "example.com", 2).unwrap(), ["d2"]);
        assert_eq!(
            prunable(&conn, "example.com", 0).unwrap(),
            ["d4", "d3", "d2"]
        );
        assert_eq!(
            prunable(&conn, "example.com", 10).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn purge_removes_every_row_of_the_deployment() {
        let conn = test_db();
        for id in ["d1", "d2"] {
            insert(&conn, &deployment(id, "example.com", 1)).unwrap();
            deployment_files::insert(
                &conn,
                &deployment_files::DeploymentFile {
                    deployment_id: id.into(),
                    path: "index.html".into(),
                    hash: format!("h-{id}"),
                    size: 1,
                    mode: 0o644,
                },
            )
            .unwrap();
            deployment_activations::upsert(
                &conn,
                &deployment_activations::Activation {
                    deployment_id: id.into(),
                    node: "vector".into(),
                    activated_ms: 1,
                    status: deployment_activations::ActivationStatus::Active,
                    error: None,
                },
            )
            .unwrap();
            functions::insert(
                &conn,
                &functions::Function {
                    deployment_id: id.into(),
                    route: "/api/hello".into(),
                    wasm: format!("w-{id}"),
                    config: functions::FunctionConfig::default(),
                },
            )
            .unwrap();
            transforms::insert(
                &conn,
                &transforms::Transform {
                    deployment_id: id.into(),
                    ordinal: 0,
                    wasm: format!("t-{id}"),
                    files: "**/*.html".into(),
                    config: transforms::TransformConfig::default(),
                },
            )
            .unwrap();
            dns_records::upsert(
                &conn,
                &dns_records::Record {
                    id: format!("r-{id}"),
                    domain: "example.com".into(),
                    name: "@".into(),
                    rtype: "TXT".into(),
                    value: "v".into(),
                    ttl: 300,
                    priority: None,
                    deployment_id: Some(id.into()),
                },
            )
            .unwrap();
        }
        assert_eq!(
            referenced_blobs(&conn).unwrap(),
            ["h-d1", "h-d2", "t-d1", "t-d2", "w-d1", "w-d2"]
        );
        assert!(purge(&conn, "d1").unwrap());
        assert!(!purge(&conn, "d1").unwrap());
        assert_eq!(referenced_blobs(&conn).unwrap(), ["h-d2", "t-d2", "w-d2"]);
        assert_eq!(
            deployment_files::list_for_deployment(&conn, "d1").unwrap(),
            vec![]
        );
        assert_eq!(
            deployment_activations::list_for_deployment(&conn, "d1").unwrap(),
            vec![]
        );
        assert_eq!(functions::list_for_deployment(&conn, "d1").unwrap(), vec![]);
        assert_eq!(
            transforms::list_for_deployment(&conn, "d1").unwrap(),
            vec![]
        );
        assert_eq!(
            dns_records::list_for_deployment(&conn, "d1").unwrap(),
            vec![]
        );
        assert_eq!(deployment_files::list(&conn).unwrap().len(), 1);
        assert_eq!(dns_records::list(&conn).unwrap().len(), 1);
    }
}
