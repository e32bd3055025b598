//! `transforms`: the WASM file transformers of each deployment (`[[domain.transforms]]`),
//! applied in `ordinal` order (their order in `makiatto.toml`).
//!
//! Rows belong to a deployment and are insert-only; the live transforms are those of the
//! domain's active deployment ([`active_for_domain`]).
//!
//! **Class:** ephemeral (keyed by a never-reused deployment id). **Owner:** the deploying
//! client; insert-only.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::cluster::{decode, encode};

/// Runtime settings of a transform (`env` with `env_file` merged in, limits).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransformConfig {
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Execution timeout; `None`: the node's default.
    pub timeout_ms: Option<u64>,
    /// Memory limit; `None`: the node's default.
    pub max_memory_mb: Option<u64>,
    /// Files larger than this are served untransformed; `None`: no limit.
    pub max_file_size_kb: Option<u64>,
}

impl std::fmt::Debug for TransformConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Environment values may be secrets: show the keys only.
        f.debug_struct("TransformConfig")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("timeout_ms", &self.timeout_ms)
            .field("max_memory_mb", &self.max_memory_mb)
            .field("max_file_size_kb", &self.max_file_size_kb)
            .finish()
    }
}

/// A transform of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transform {
    /// The deployment (primary key, part 1).
    pub deployment_id: String,
    /// Position in the chain, from 0 (primary key, part 2).
    pub ordinal: i64,
    /// blake3 (hex) of the WASM component.
    pub wasm: String,
    /// Glob of the files it applies to, e.g. `**/*.html`.
    pub files: String,
    /// Settings.
    pub config: TransformConfig,
}

const INSERT: &str = "INSERT INTO transforms (deployment_id, ordinal, wasm, files, config) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (deployment_id, ordinal) DO NOTHING";
const GET: &str = "SELECT deployment_id, ordinal, wasm, files, config FROM transforms \
     WHERE deployment_id = ?1 AND ordinal = ?2";
const LIST: &str = "SELECT deployment_id, ordinal, wasm, files, config FROM transforms \
     ORDER BY deployment_id, ordinal";
const LIST_FOR_DEPLOYMENT: &str = "SELECT deployment_id, ordinal, wasm, files, config \
     FROM transforms WHERE deployment_id = ?1 ORDER BY ordinal";
const ACTIVE_FOR_DOMAIN: &str = "SELECT t.deployment_id, t.ordinal, t.wasm, t.files, t.config \
     FROM domains d JOIN transforms t ON t.deployment_id = d.active_deployment \
     WHERE d.name = ?1 ORDER BY t.ordinal";
const DELETE: &str = "DELETE FROM transforms WHERE deployment_id = ?1 AND ordinal = ?2";

type Raw = (String, i64, String, String, Vec<u8>);

fn read(r: &Row<'_>) -> rusqlite::Result<Raw> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn from_raw((deployment_id, ordinal, wasm, files, config): Raw) -> Result<Transform> {
    Ok(Transform {
        deployment_id,
        ordinal,
        wasm,
        files,
        config: decode("transforms", "config", &config)?,
    })
}

fn query(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Transform>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let raws = stmt
        .query_map(args, read)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    raws.into_iter().map(from_raw).collect()
}

/// Inserts a transform; returns false (and changes nothing) if the deployment already has
/// that ordinal.
pub fn insert(conn: &Connection, transform: &Transform) -> Result<bool> {
    let n = conn.prepare_cached(INSERT)?.execute(params![
        transform.deployment_id,
        transform.ordinal,
        transform.wasm,
        transform.files,
        encode(&transform.config)?,
    ])?;
    Ok(n > 0)
}

/// Transform number `ordinal` of deployment `deployment_id`.
pub fn get(conn: &Connection, deployment_id: &str, ordinal: i64) -> Result<Option<Transform>> {
    conn.prepare_cached(GET)?
        .query_row(params![deployment_id, ordinal], read)
        .optional()?
        .map(from_raw)
        .transpose()
}

/// Every transform, by deployment and ordinal.
pub fn list(conn: &Connection) -> Result<Vec<Transform>> {
    query(conn, LIST, [])
}

/// The transforms of one deployment, in order.
pub fn list_for_deployment(conn: &Connection, deployment_id: &str) -> Result<Vec<Transform>> {
    query(conn, LIST_FOR_DEPLOYMENT, [deployment_id])
}

/// The transform chain of `domain`'s active deployment, in order.
pub fn active_for_domain(conn: &Connection, domain: &str) -> Result<Vec<Transform>> {
    query(conn, ACTIVE_FOR_DOMAIN, [domain])
}

/// Deletes one transform row; returns whether it existed.
pub fn delete(conn: &Connection, deployment_id: &str, ordinal: i64) -> Result<bool> {
    Ok(conn
        .prepare_cached(DELETE)?
        .execute(params![deployment_id, ordinal])?
        > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{domains, test_db};

    fn tr(dep: &str, ordinal: i64, files: &str) -> Transform {
        Transform {
            deployment_id: dep.into(),
            ordinal,
            wasm: format!("w{dep}{ordinal}"),
            files: files.into(),
            config: TransformConfig {
                env: BTreeMap::from([("TOKEN".into(), "secret".into())]),
                timeout_ms: None,
                max_memory_mb: Some(64),
                max_file_size_kb: Some(512),
            },
        }
    }

    #[test]
    fn roundtrip_list_active_and_delete() {
        let conn = test_db();
        // Ordinal 10 after 2: ordered numerically.
        let a = tr("d1", 10, "**/*.html");
        let b = tr("d1", 2, "**/*.{js,css}");
        let c = tr("d2", 0, "**/*.html");
        for t in [&a, &b, &c] {
            assert!(insert(&conn, t).unwrap());
        }
        assert!(!insert(&conn, &tr("d1", 2, "other")).unwrap());
        assert_eq!(get(&conn, "d1", 10).unwrap(), Some(a.clone()));
        assert_eq!(get(&conn, "d1", 3).unwrap(), None);
        assert_eq!(list(&conn).unwrap(), vec![b.clone(), a.clone(), c.clone()]);
        assert_eq!(
            list_for_deployment(&conn, "d1").unwrap(),
            vec![b.clone(), a.clone()]
        );

        domains::set_active(&conn, "example.com", Some("d1"), 1).unwrap();
        assert_eq!(
            active_for_domain(&conn, "example.com").unwrap(),
            vec![b.clone(), a.clone()]
        );
        assert_eq!(active_for_domain(&conn, "cat.cafe").unwrap(), vec![]);

        assert!(delete(&conn, "d1", 2).unwrap());
        assert!(!delete(&conn, "d1", 2).unwrap());
        assert_eq!(list(&conn).unwrap(), vec![a.clone(), c]);
        assert!(!format!("{a:?}").contains("secret"));
    }
}
