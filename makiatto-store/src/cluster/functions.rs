//! `functions`: the WASM HTTP handlers of each deployment (`[[domain.functions]]`).
//!
//! Rows belong to a deployment and are insert-only, so a handler's module and settings can
//! never mix with another deployment's; the live handlers are those of the domain's active
//! deployment ([`active_for_route`]).
//!
//! **Class:** ephemeral (keyed by a never-reused deployment id). **Owner:** the deploying
//! client; insert-only.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::cluster::{decode, encode};

/// Runtime settings of a handler (`methods`, `env` with `env_file` merged in, limits).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionConfig {
    /// Allowed HTTP methods, upper-case; empty: all.
    pub methods: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Execution timeout; `None`: the node's default.
    pub timeout_ms: Option<u64>,
    /// Memory limit; `None`: the node's default.
    pub max_memory_mb: Option<u64>,
}

impl std::fmt::Debug for FunctionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Environment values may be secrets: show the keys only.
        f.debug_struct("FunctionConfig")
            .field("methods", &self.methods)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("timeout_ms", &self.timeout_ms)
            .field("max_memory_mb", &self.max_memory_mb)
            .finish()
    }
}

/// A handler of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Function {
    /// The deployment (primary key, part 1).
    pub deployment_id: String,
    /// The route, derived from the module path (`api/hello.wasm` → `/api/hello`)
    /// (primary key, part 2).
    pub route: String,
    /// blake3 (hex) of the WASM component.
    pub wasm: String,
    /// Settings.
    pub config: FunctionConfig,
}

const INSERT: &str = "INSERT INTO functions (deployment_id, route, wasm, config) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (deployment_id, route) DO NOTHING";
const GET: &str = "SELECT deployment_id, route, wasm, config FROM functions \
     WHERE deployment_id = ?1 AND route = ?2";
const LIST: &str = "SELECT deployment_id, route, wasm, config FROM functions \
     ORDER BY deployment_id, route";
const LIST_FOR_DEPLOYMENT: &str = "SELECT deployment_id, route, wasm, config FROM functions \
     WHERE deployment_id = ?1 ORDER BY route";
const ACTIVE_FOR_DOMAIN: &str = "SELECT f.deployment_id, f.route, f.wasm, f.config \
     FROM domains d JOIN functions f ON f.deployment_id = d.active_deployment \
     WHERE d.name = ?1 ORDER BY f.route";
const ACTIVE_FOR_ROUTE: &str = "SELECT f.deployment_id, f.route, f.wasm, f.config \
     FROM domains d JOIN functions f ON f.deployment_id = d.active_deployment \
     WHERE d.name = ?1 AND f.route = ?2";
const DELETE: &str = "DELETE FROM functions WHERE deployment_id = ?1 AND route = ?2";

type Raw = (String, String, String, Vec<u8>);

fn read(r: &Row<'_>) -> rusqlite::Result<Raw> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn from_raw((deployment_id, route, wasm, config): Raw) -> Result<Function> {
    Ok(Function {
        deployment_id,
        route,
        wasm,
        config: decode("functions", "config", &config)?,
    })
}

fn query(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Function>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let raws = stmt
        .query_map(args, read)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    raws.into_iter().map(from_raw).collect()
}

fn query_one(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Option<Function>> {
    conn.prepare_cached(sql)?
        .query_row(args, read)
        .optional()?
        .map(from_raw)
        .transpose()
}

/// Inserts a handler; returns false (and changes nothing) if the deployment already has
/// that route.
pub fn insert(conn: &Connection, function: &Function) -> Result<bool> {
    let n = conn.prepare_cached(INSERT)?.execute(params![
        function.deployment_id,
        function.route,
        function.wasm,
        encode(&function.config)?,
    ])?;
    Ok(n > 0)
}

/// The handler for `route` in deployment `deployment_id`.
pub fn get(conn: &Connection, deployment_id: &str, route: &str) -> Result<Option<Function>> {
    query_one(conn, GET, [deployment_id, route])
}

/// Every handler, by deployment and route.
pub fn list(conn: &Connection) -> Result<Vec<Function>> {
    query(conn, LIST, [])
}

/// The handlers of one deployment, by route.
pub fn list_for_deployment(conn: &Connection, deployment_id: &str) -> Result<Vec<Function>> {
    query(conn, LIST_FOR_DEPLOYMENT, [deployment_id])
}

/// The handlers of `domain`'s active deployment, by route.
pub fn active_for_domain(conn: &Connection, domain: &str) -> Result<Vec<Function>> {
    query(conn, ACTIVE_FOR_DOMAIN, [domain])
}

/// The handler serving `route` on `domain` (from its active deployment).
pub fn active_for_route(conn: &Connection, domain: &str, route: &str) -> Result<Option<Function>> {
    query_one(conn, ACTIVE_FOR_ROUTE, [domain, route])
}

/// Deletes one handler row; returns whether it existed.
pub fn delete(conn: &Connection, deployment_id: &str, route: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(DELETE)?
        .execute([deployment_id, route])?
        > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{domains, test_db};

    fn func(dep: &str, route: &str) -> Function {
        Function {
            deployment_id: dep.into(),
            route: route.into(),
            wasm: format!("w{dep}{route}"),
            config: FunctionConfig {
                methods: vec!["GET".into(), "POST".into()],
                env: BTreeMap::from([("API_KEY".into(), "secret".into())]),
                timeout_ms: Some(5_000),
                max_memory_mb: None,
            },
        }
    }

    #[test]
    fn roundtrip_list_active_and_delete() {
        let conn = test_db();
        let a = func("d1", "/api/hello");
        let b = func("d1", "/api/bye");
        let c = func("d2", "/api/hello");
        for f in [&a, &b, &c] {
            assert!(insert(&conn, f).unwrap());
        }
        assert!(!insert(&conn, &func("d1", "/api/hello")).unwrap());
        assert_eq!(get(&conn, "d1", "/api/hello").unwrap(), Some(a.clone()));
        assert_eq!(get(&conn, "d1", "/nope").unwrap(), None);
        assert_eq!(list(&conn).unwrap(), vec![b.clone(), a.clone(), c.clone()]);
        assert_eq!(
            list_for_deployment(&conn, "d1").unwrap(),
            vec![b.clone(), a.clone()]
        );

        assert_eq!(active_for_domain(&conn, "example.com").unwrap(), vec![]);
        domains::set_active(&conn, "example.com", Some("d2"), 1).unwrap();
        assert_eq!(
            active_for_domain(&conn, "example.com").unwrap(),
            vec![c.clone()]
        );
        assert_eq!(
            active_for_route(&conn, "example.com", "/api/hello").unwrap(),
            Some(c)
        );
        assert_eq!(
            active_for_route(&conn, "example.com", "/api/bye").unwrap(),
            None
        );

        assert!(delete(&conn, "d1", "/api/bye").unwrap());
        assert!(!delete(&conn, "d1", "/api/bye").unwrap());
        assert_eq!(list_for_deployment(&conn, "d1").unwrap(), vec![a.clone()]);
        assert!(!format!("{a:?}").contains("secret"));
    }
}
