//! `deployment_files`: the file manifest of each deployment (path → content hash). File
//! contents live in the blob store under their hash, never in the database.
//!
//! **Class:** ephemeral (keyed by a never-reused deployment id). **Owner:** the deploying
//! client; insert-only.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::Result;

/// One file of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentFile {
    /// The deployment (primary key, part 1).
    pub deployment_id: String,
    /// Path relative to the domain directory, `/`-separated, no leading `/` (primary key,
    /// part 2).
    pub path: String,
    /// blake3 of the content, hex.
    pub hash: String,
    /// Size in bytes.
    pub size: i64,
    /// Unix permission bits.
    pub mode: i64,
}

const INSERT: &str = "INSERT INTO deployment_files (deployment_id, path, hash, size, mode) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (deployment_id, path) DO NOTHING";
const GET: &str = "SELECT deployment_id, path, hash, size, mode FROM deployment_files \
     WHERE deployment_id = ?1 AND path = ?2";
const LIST: &str = "SELECT deployment_id, path, hash, size, mode FROM deployment_files \
     ORDER BY deployment_id, path";
const LIST_FOR_DEPLOYMENT: &str = "SELECT deployment_id, path, hash, size, mode \
     FROM deployment_files WHERE deployment_id = ?1 ORDER BY path";
const ACTIVE: &str = "SELECT f.deployment_id, f.path, f.hash, f.size, f.mode \
     FROM domains d JOIN deployment_files f ON f.deployment_id = d.active_deployment \
     WHERE d.name = ?1 AND f.path = ?2";
const DELETE: &str = "DELETE FROM deployment_files WHERE deployment_id = ?1 AND path = ?2";

fn read(r: &Row<'_>) -> rusqlite::Result<DeploymentFile> {
    Ok(DeploymentFile {
        deployment_id: r.get(0)?,
        path: r.get(1)?,
        hash: r.get(2)?,
        size: r.get(3)?,
        mode: r.get(4)?,
    })
}

/// Inserts a file; returns false (and changes nothing) if the deployment already has it.
pub fn insert(conn: &Connection, file: &DeploymentFile) -> Result<bool> {
    let n = conn.prepare_cached(INSERT)?.execute(params![
        file.deployment_id,
        file.path,
        file.hash,
        file.size,
        file.mode
    ])?;
    Ok(n > 0)
}

/// Inserts many files (one prepared statement); returns how many were new.
pub fn insert_many(conn: &Connection, files: &[DeploymentFile]) -> Result<usize> {
    let mut stmt = conn.prepare_cached(INSERT)?;
    let mut n = 0;
    for file in files {
        n += stmt.execute(params![
            file.deployment_id,
            file.path,
            file.hash,
            file.size,
            file.mode
        ])?;
    }
    Ok(n)
}

/// The file `path` of deployment `deployment_id`.
pub fn get(conn: &Connection, deployment_id: &str, path: &str) -> Result<Option<DeploymentFile>> {
    Ok(conn
        .prepare_cached(GET)?
        .query_row([deployment_id, path], read)
        .optional()?)
}

/// Every file of every deployment, by deployment and path.
pub fn list(conn: &Connection) -> Result<Vec<DeploymentFile>> {
    let mut stmt = conn.prepare_cached(LIST)?;
    let rows = stmt.query_map([], read)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The files of one deployment, by path.
pub fn list_for_deployment(conn: &Connection, deployment_id: &str) -> Result<Vec<DeploymentFile>> {
    let mut stmt = conn.prepare_cached(LIST_FOR_DEPLOYMENT)?;
    let rows = stmt.query_map([deployment_id], read)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The file `path` of `domain`'s active deployment: what the HTTP server serves.
pub fn active(conn: &Connection, domain: &str, path: &str) -> Result<Option<DeploymentFile>> {
    Ok(conn
        .prepare_cached(ACTIVE)?
        .query_row([domain, path], read)
        .optional()?)
}

/// Deletes one file row; returns whether it existed.
pub fn delete(conn: &Connection, deployment_id: &str, path: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(DELETE)?
        .execute([deployment_id, path])?
        > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{domains, test_db};

    fn file(dep: &str, path: &str, hash: &str) -> DeploymentFile {
        DeploymentFile {
            deployment_id: dep.into(),
            path: path.into(),
            hash: hash.into(),
            size: 42,
            mode: 0o644,
        }
    }

    #[test]
    fn roundtrip_list_and_delete() {
        let conn = test_db();
        let a = file("d2", "index.html", "h1");
        let b = file("d1", "style.css", "h2");
        let c = file("d1", "index.html", "h3");
        assert!(insert(&conn, &a).unwrap());
        assert_eq!(
            insert_many(&conn, &[b.clone(), c.clone(), a.clone()]).unwrap(),
            2
        );
        assert!(!insert(&conn, &file("d2", "index.html", "other")).unwrap());
        assert_eq!(get(&conn, "d2", "index.html").unwrap(), Some(a.clone()));
        assert_eq!(get(&conn, "d2", "nope").unwrap(), None);
        assert_eq!(list(&conn).unwrap(), vec![c.clone(), b.clone(), a.clone()]);
        assert_eq!(
            list_for_deployment(&conn, "d1").unwrap(),
            vec![c.clone(), b.clone()]
        );

        assert_eq!(active(&conn, "example.com", "index.html").unwrap(), None);
        domains::set_active(&conn, "example.com", Some("d1"), 1).unwrap();
        assert_eq!(
            active(&conn, "example.com", "index.html").unwrap(),
            Some(c.clone())
        );
        domains::set_active(&conn, "example.com", Some("d2"), 2).unwrap();
        assert_eq!(
            active(&conn, "example.com", "index.html").unwrap(),
            Some(a.clone())
        );
        assert_eq!(active(&conn, "example.com", "style.css").unwrap(), None);

        assert!(delete(&conn, "d1", "style.css").unwrap());
        assert!(!delete(&conn, "d1", "style.css").unwrap());
        assert_eq!(list(&conn).unwrap(), vec![c, a]);
    }
}
