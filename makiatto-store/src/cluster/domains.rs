//! `domains`: the root domains the cluster serves, and which deployment each serves.
//!
//! **Class:** durable (a domain may be removed and added again). **Owner:** whoever deploys
//! (`maki sync` through any node). Switching a domain to another deployment is one write
//! of [`Domain::active_deployment`]: concurrent deploys resolve, last writer wins, to one
//! whole deployment, since everything a deployment contains is immutable and keyed by its
//! id.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::cluster::normalize_name;

/// A served root domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// The domain name, e.g. `example.com` (primary key).
    pub name: String,
    /// The deployment being served ([`deployments`](super::deployments) id), if any.
    pub active_deployment: Option<String>,
    /// When the row was last written (unix ms).
    pub updated_ms: i64,
}

const UPSERT: &str = "INSERT INTO domains (name, active_deployment, updated_ms) VALUES (?1, ?2, ?3) \
     ON CONFLICT (name) DO UPDATE SET active_deployment = excluded.active_deployment, \
     updated_ms = excluded.updated_ms";
const GET: &str = "SELECT name, active_deployment, updated_ms FROM domains WHERE name = ?1";
const LIST: &str = "SELECT name, active_deployment, updated_ms FROM domains ORDER BY name";
const DELETE: &str = "DELETE FROM domains WHERE name = ?1";
const ZONE_FOR: &str = "SELECT name FROM domains WHERE name = ?1 \
     OR (length(?1) > length(name) AND substr(?1, -length(name) - 1) = '.' || name) \
     ORDER BY length(name) DESC, name LIMIT 1";
const RESOLVE_HOST: &str = "SELECT name FROM domains WHERE name = ?1 \
     UNION ALL SELECT domain FROM aliases WHERE alias = ?1 AND domain <> '' LIMIT 1";

fn read(r: &Row<'_>) -> rusqlite::Result<Domain> {
    Ok(Domain {
        name: r.get(0)?,
        active_deployment: r.get(1)?,
        updated_ms: r.get(2)?,
    })
}

/// Inserts or updates a domain.
pub fn upsert(conn: &Connection, domain: &Domain) -> Result<()> {
    conn.prepare_cached(UPSERT)?.execute(params![
        domain.name,
        domain.active_deployment,
        domain.updated_ms
    ])?;
    Ok(())
}

/// Points `name` at deployment `deployment_id` (or at nothing), creating the domain row if
/// needed.
pub fn set_active(
    conn: &Connection,
    name: &str,
    deployment_id: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    conn.prepare_cached(UPSERT)?
        .execute(params![name, deployment_id, now_ms])?;
    Ok(())
}

/// The domain called `name`.
pub fn get(conn: &Connection, name: &str) -> Result<Option<Domain>> {
    Ok(conn
        .prepare_cached(GET)?
        .query_row([name], read)
        .optional()?)
}

/// Every domain, by name.
pub fn list(conn: &Connection) -> Result<Vec<Domain>> {
    let mut stmt = conn.prepare_cached(LIST)?;
    let rows = stmt.query_map([], read)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Deletes the domain row (not its aliases, records or deployments); returns whether it
/// existed.
pub fn delete(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.prepare_cached(DELETE)?.execute([name])? > 0)
}

/// The served domain whose zone contains `qname` (the domain itself or a name under it),
/// the longest match if domains nest. `qname` is normalised first.
pub fn zone_for(conn: &Connection, qname: &str) -> Result<Option<String>> {
    let qname = normalize_name(qname);
    Ok(conn
        .prepare_cached(ZONE_FOR)?
        .query_row([qname], |r| r.get(0))
        .optional()?)
}

/// The domain whose content serves HTTP host `host`: the domain itself, or the domain an
/// alias points at. `host` is normalised first (a port is not stripped).
pub fn resolve_host(conn: &Connection, host: &str) -> Result<Option<String>> {
    let host = normalize_name(host);
    Ok(conn
        .prepare_cached(RESOLVE_HOST)?
        .query_row([host], |r| r.get(0))
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{aliases, test_db};

    fn domain(name: &str) -> Domain {
        Domain {
            name: name.into(),
            active_deployment: None,
            updated_ms: 1,
        }
    }

    #[test]
    fn roundtrip_list_and_delete() {
        let conn = test_db();
        upsert(&conn, &domain("zuccherocat.cafe")).unwrap();
        upsert(&conn, &domain("example.com")).unwrap();
        assert_eq!(
            get(&conn, "example.com").unwrap(),
            Some(domain("example.com"))
        );
        assert_eq!(
            list(&conn)
                .unwrap()
                .into_iter()
                .map(|d| d.name)
                .collect::<Vec<_>>(),
            ["example.com", "zuccherocat.cafe"]
        );
        set_active(&conn, "example.com", Some("dep1"), 9).unwrap();
        assert_eq!(
            get(&conn, "example.com").unwrap(),
            Some(Domain {
                name: "example.com".into(),
                active_deployment: Some("dep1".into()),
                updated_ms: 9
            })
        );
        set_active(&conn, "new.org", None, 3).unwrap();
        assert_eq!(
            get(&conn, "new.org").unwrap(),
            Some(Domain {
                name: "new.org".into(),
                active_deployment: None,
                updated_ms: 3
            })
        );
        assert!(delete(&conn, "example.com").unwrap());
        assert!(!delete(&conn, "example.com").unwrap());
        assert_eq!(get(&conn, "example.com").unwrap(), None);
    }

    #[test]
    fn zones_and_hosts_resolve() {
        let conn = test_db();
        upsert(&conn, &domain("example.com")).unwrap();
        upsert(&conn, &domain("ample.com")).unwrap();
        aliases::upsert(
            &conn,
            &aliases::Alias {
                alias: "www.example.com".into(),
                domain: "example.com".into(),
            },
        )
        .unwrap();
        assert_eq!(
            zone_for(&conn, "example.com").unwrap().as_deref(),
            Some("example.com")
        );
        assert_eq!(
            zone_for(&conn, "A.B.Example.COM.").unwrap().as_deref(),
            Some("example.com")
        );
        assert_eq!(
            zone_for(&conn, "ample.com").unwrap().as_deref(),
            Some("ample.com")
        );
        assert_eq!(zone_for(&conn, "xample.com").unwrap(), None);
        assert_eq!(zone_for(&conn, "com").unwrap(), None);

        assert_eq!(
            resolve_host(&conn, "WWW.example.com").unwrap().as_deref(),
            Some("example.com")
        );
        assert_eq!(
            resolve_host(&conn, "example.com").unwrap().as_deref(),
            Some("example.com")
        );
        assert_eq!(resolve_host(&conn, "blog.example.com").unwrap(), None);
    }
}
