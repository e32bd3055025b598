//! `dns_records`: custom DNS records of a domain (`[[domain.records]]`).
//!
//! Records produced by a deployment carry its id and are live while that deployment is the
//! domain's active one; records without a deployment (added by an operator or by the
//! system) are always live. Automatic records (A/AAAA, NS, SOA, CAA) are not stored: the
//! DNS server derives them from `nodes`.
//!
//! **Class:** ephemeral (random ids from [`new_id`](super::new_id), never re-used).
//! **Owner:** the deployment that produced the record (insert-only), or the operator.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::Result;

/// A DNS record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Random id (primary key).
    pub id: String,
    /// The zone (a served domain), e.g. `example.com`.
    pub domain: String,
    /// Owner name relative to the zone, lower-case; `@` for the apex.
    pub name: String,
    /// Record type, upper-case: `TXT`, `MX`, `CNAME`...
    pub rtype: String,
    /// Record data in presentation form (for MX: the exchange host).
    pub value: String,
    /// Time to live, seconds.
    pub ttl: i64,
    /// Priority (MX, SRV).
    pub priority: Option<i64>,
    /// The deployment that produced it; `None`: not tied to a deployment (always live).
    pub deployment_id: Option<String>,
}

const UPSERT: &str = "INSERT INTO dns_records (id, domain, name, rtype, value, ttl, priority, \
     deployment_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT (id) DO UPDATE SET domain = excluded.domain, name = excluded.name, \
     rtype = excluded.rtype, value = excluded.value, ttl = excluded.ttl, \
     priority = excluded.priority, deployment_id = excluded.deployment_id";
const GET: &str = "SELECT id, domain, name, rtype, value, ttl, priority, deployment_id \
     FROM dns_records WHERE id = ?1";
const LIST: &str = "SELECT id, domain, name, rtype, value, ttl, priority, deployment_id \
     FROM dns_records ORDER BY id";
const LIST_FOR_DOMAIN: &str = "SELECT id, domain, name, rtype, value, ttl, priority, \
     deployment_id FROM dns_records WHERE domain = ?1 ORDER BY name, rtype, id";
const LIST_FOR_DEPLOYMENT: &str = "SELECT id, domain, name, rtype, value, ttl, priority, \
     deployment_id FROM dns_records WHERE deployment_id = ?1 ORDER BY id";
const LIVE_FOR_DOMAIN: &str = "SELECT r.id, r.domain, r.name, r.rtype, r.value, r.ttl, \
     r.priority, r.deployment_id FROM dns_records r WHERE r.domain = ?1 \
     AND (r.deployment_id IS NULL \
          OR r.deployment_id = (SELECT active_deployment FROM domains WHERE name = ?1)) \
     ORDER BY r.name, r.rtype, r.id";
const LOOKUP: &str = "SELECT r.id, r.domain, r.name, r.rtype, r.value, r.ttl, r.priority, \
     r.deployment_id FROM dns_records r WHERE r.domain = ?1 AND r.name = ?2 AND r.rtype = ?3 \
     AND (r.deployment_id IS NULL \
          OR r.deployment_id = (SELECT active_deployment FROM domains WHERE name = ?1)) \
     ORDER BY r.priority, r.value, r.id";
const DELETE: &str = "DELETE FROM dns_records WHERE id = ?1";
const DELETE_FOR_DEPLOYMENT: &str = "DELETE FROM dns_records WHERE deployment_id = ?1";

fn read(r: &Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        id: r.get(0)?,
        domain: r.get(1)?,
        name: r.get(2)?,
        rtype: r.get(3)?,
        value: r.get(4)?,
        ttl: r.get(5)?,
        priority: r.get(6)?,
        deployment_id: r.get(7)?,
    })
}

fn query(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Record>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(args, read)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Inserts or updates a record.
pub fn upsert(conn: &Connection, record: &Record) -> Result<()> {
    conn.prepare_cached(UPSERT)?.execute(params![
        record.id,
        record.domain,
        record.name,
        record.rtype,
        record.value,
        record.ttl,
        record.priority,
        record.deployment_id,
    ])?;
    Ok(())
}

/// The record with id `id`.
pub fn get(conn: &Connection, id: &str) -> Result<Option<Record>> {
    Ok(conn.prepare_cached(GET)?.query_row([id], read).optional()?)
}

/// Every record, by id.
pub fn list(conn: &Connection) -> Result<Vec<Record>> {
    query(conn, LIST, [])
}

/// Every record of `domain`, live or not, by name, type and id.
pub fn list_for_domain(conn: &Connection, domain: &str) -> Result<Vec<Record>> {
    query(conn, LIST_FOR_DOMAIN, [domain])
}

/// The records a deployment produced, by id.
pub fn list_for_deployment(conn: &Connection, deployment_id: &str) -> Result<Vec<Record>> {
    query(conn, LIST_FOR_DEPLOYMENT, [deployment_id])
}

/// The live records of `domain` (of its active deployment, or of none), by name, type and
/// id: the custom part of the zone.
pub fn live_for_domain(conn: &Connection, domain: &str) -> Result<Vec<Record>> {
    query(conn, LIVE_FOR_DOMAIN, [domain])
}

/// The live records of `domain` at relative `name` (`@` for the apex) with type `rtype`,
/// by priority and value: what the DNS server answers.
pub fn lookup(conn: &Connection, domain: &str, name: &str, rtype: &str) -> Result<Vec<Record>> {
    query(conn, LOOKUP, params![domain, name, rtype])
}

/// Deletes a record; returns whether it existed.
pub fn delete(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn.prepare_cached(DELETE)?.execute([id])? > 0)
}

/// Deletes the records a deployment produced; returns how many.
pub fn delete_for_deployment(conn: &Connection, deployment_id: &str) -> Result<usize> {
    Ok(conn
        .prepare_cached(DELETE_FOR_DEPLOYMENT)?
        .execute([deployment_id])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{domains, test_db};

    fn record(id: &str, name: &str, rtype: &str, value: &str, dep: Option<&str>) -> Record {
        Record {
            id: id.into(),
            domain: "example.com".into(),
            name: name.into(),
            rtype: rtype.into(),
            value: value.into(),
            ttl: 300,
            priority: (rtype == "MX").then_some(10),
            deployment_id: dep.map(Into::into),
        }
    }

    #[test]
    fn roundtrip_list_and_delete() {
        let conn = test_db();
        let a = record("02", "_dmarc", "TXT", "v=DMARC1; p=none", Some("d1"));
        let b = record("01", "@", "MX", "mail.example.com", Some("d1"));
        let c = record("03", "@", "TXT", "manual", None);
        for r in [&a, &b, &c] {
            upsert(&conn, r).unwrap();
        }
        assert_eq!(get(&conn, "02").unwrap(), Some(a.clone()));
        assert_eq!(get(&conn, "xx").unwrap(), None);
        assert_eq!(list(&conn).unwrap(), vec![b.clone(), a.clone(), c.clone()]);
        assert_eq!(
            list_for_domain(&conn, "example.com").unwrap(),
            vec![b.clone(), c.clone(), a.clone()]
        );
        assert_eq!(
            list_for_deployment(&conn, "d1").unwrap(),
            vec![b.clone(), a.clone()]
        );

        let mut edited = c.clone();
        edited.value = "edited".into();
        upsert(&conn, &edited).unwrap();
        assert_eq!(get(&conn, "03").unwrap(), Some(edited));

        assert!(delete(&conn, "03").unwrap());
        assert!(!delete(&conn, "03").unwrap());
        assert_eq!(delete_for_deployment(&conn, "d1").unwrap(), 2);
        assert_eq!(list(&conn).unwrap(), vec![]);
    }

    #[test]
    fn only_records_of_the_active_deployment_are_live() {
        let conn = test_db();
        let old = record("01", "@", "TXT", "old", Some("d1"));
        let new = record("02", "@", "TXT", "new", Some("d2"));
        let manual = record("03", "@", "TXT", "manual", None);
        let mx = record("04", "@", "MX", "mx", Some("d2"));
        for r in [&old, &new, &manual, &mx] {
            upsert(&conn, r).unwrap();
        }
        // No domain row yet: only deployment-free records are live.
        assert_eq!(
            lookup(&conn, "example.com", "@", "TXT").unwrap(),
            vec![manual.clone()]
        );
        domains::set_active(&conn, "example.com", Some("d1"), 1).unwrap();
        assert_eq!(
            lookup(&conn, "example.com", "@", "TXT").unwrap(),
            vec![manual.clone(), old.clone()]
        );
        domains::set_active(&conn, "example.com", Some("d2"), 2).unwrap();
        assert_eq!(
            lookup(&conn, "example.com", "@", "TXT").unwrap(),
            vec![manual.clone(), new.clone()]
        );
        assert_eq!(
            lookup(&conn, "example.com", "@", "MX").unwrap(),
            vec![mx.clone()]
        );
        assert_eq!(lookup(&conn, "example.com", "www", "TXT").unwrap(), vec![]);
        assert_eq!(
            live_for_domain(&conn, "example.com").unwrap(),
            vec![mx, new, manual]
        );
    }
}
