//! `aliases`: extra host names served with a domain's content (`aliases = [...]` in
//! `makiatto.toml`): certificates are obtained for them and HTTP requests for them are
//! answered from the domain.
//!
//! **Class:** durable (an alias may move between domains). **Owner:** whoever deploys the
//! domain. An alias names one domain; if two domains claim it, the last writer wins.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::Result;

/// An alias host name of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    /// The alias host name, e.g. `www.example.com` (primary key).
    pub alias: String,
    /// The domain it serves.
    pub domain: String,
}

const UPSERT: &str = "INSERT INTO aliases (alias, domain) VALUES (?1, ?2) \
     ON CONFLICT (alias) DO UPDATE SET domain = excluded.domain";
const GET: &str = "SELECT alias, domain FROM aliases WHERE alias = ?1";
const LIST: &str = "SELECT alias, domain FROM aliases ORDER BY alias";
const LIST_FOR_DOMAIN: &str = "SELECT alias, domain FROM aliases WHERE domain = ?1 ORDER BY alias";
const DELETE: &str = "DELETE FROM aliases WHERE alias = ?1";

fn read(r: &Row<'_>) -> rusqlite::Result<Alias> {
    Ok(Alias {
        alias: r.get(0)?,
        domain: r.get(1)?,
    })
}

/// Inserts or re-points an alias.
pub fn upsert(conn: &Connection, alias: &Alias) -> Result<()> {
    conn.prepare_cached(UPSERT)?
        .execute(params![alias.alias, alias.domain])?;
    Ok(())
}

/// The alias `alias`.
pub fn get(conn: &Connection, alias: &str) -> Result<Option<Alias>> {
    Ok(conn
        .prepare_cached(GET)?
        .query_row([alias], read)
        .optional()?)
}

/// Every alias, by alias name.
pub fn list(conn: &Connection) -> Result<Vec<Alias>> {
    let mut stmt = conn.prepare_cached(LIST)?;
    let rows = stmt.query_map([], read)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The aliases of `domain`, by alias name.
pub fn list_for_domain(conn: &Connection, domain: &str) -> Result<Vec<Alias>> {
    let mut stmt = conn.prepare_cached(LIST_FOR_DOMAIN)?;
    let rows = stmt.query_map([domain], read)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Deletes an alias; returns whether it existed.
pub fn delete(conn: &Connection, alias: &str) -> Result<bool> {
    Ok(conn.prepare_cached(DELETE)?.execute([alias])? > 0)
}

/// Makes `aliases` exactly the aliases of `domain`: deletes the domain's other aliases and
/// upserts these (re-pointing any that named another domain). Writes only what changes.
pub fn replace_for_domain(conn: &Connection, domain: &str, aliases: &[String]) -> Result<()> {
    for old in list_for_domain(conn, domain)? {
        if !aliases.contains(&old.alias) {
            delete(conn, &old.alias)?;
        }
    }
    for alias in aliases {
        let row = Alias {
            alias: alias.clone(),
            domain: domain.to_owned(),
        };
        if get(conn, alias)?.as_ref() != Some(&row) {
            upsert(conn, &row)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_db;

    fn alias(alias: &str, domain: &str) -> Alias {
        Alias {
            alias: alias.into(),
            domain: domain.into(),
        }
    }

    #[test]
    fn roundtrip_list_and_delete() {
        let conn = test_db();
        upsert(&conn, &alias("www.example.com", "example.com")).unwrap();
        upsert(&conn, &alias("old-domain.com", "example.com")).unwrap();
        upsert(&conn, &alias("www.cat.cafe", "cat.cafe")).unwrap();
        assert_eq!(
            get(&conn, "old-domain.com").unwrap(),
            Some(alias("old-domain.com", "example.com"))
        );
        assert_eq!(
            list(&conn).unwrap(),
            vec![
                alias("old-domain.com", "example.com"),
                alias("www.cat.cafe", "cat.cafe"),
                alias("www.example.com", "example.com"),
            ]
        );
        assert_eq!(
            list_for_domain(&conn, "example.com").unwrap(),
            vec![
                alias("old-domain.com", "example.com"),
                alias("www.example.com", "example.com")
            ]
        );
        assert!(delete(&conn, "old-domain.com").unwrap());
        assert!(!delete(&conn, "old-domain.com").unwrap());
        assert_eq!(get(&conn, "old-domain.com").unwrap(), None);
    }

    #[test]
    fn replace_sets_exactly_the_given_aliases() {
        let conn = test_db();
        upsert(&conn, &alias("a.example.com", "example.com")).unwrap();
        upsert(&conn, &alias("b.example.com", "example.com")).unwrap();
        upsert(&conn, &alias("moved.org", "other.org")).unwrap();
        replace_for_domain(
            &conn,
            "example.com",
            &["b.example.com".into(), "moved.org".into()],
        )
        .unwrap();
        assert_eq!(
            list(&conn).unwrap(),
            vec![
                alias("b.example.com", "example.com"),
                alias("moved.org", "example.com")
            ]
        );
        replace_for_domain(&conn, "example.com", &[]).unwrap();
        assert_eq!(list(&conn).unwrap(), vec![]);
    }
}
