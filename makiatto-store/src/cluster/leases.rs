//! `leases`: named, time-limited claims so that one node at a time does cluster-wide work
//! (ACME orders, garbage collection, mesh address allocation).
//!
//! Leases are best effort: replication is asynchronous, so two nodes that cannot see each
//! other may both acquire a lease; after they reconnect the row converges to one holder
//! and the loser sees it has lost on its next [`try_acquire`]. Work guarded by a lease must
//! therefore be idempotent. The holder and the expiry are one column, so a merge never
//! pairs one node's name with another's expiry. Releasing writes an expired lease rather
//! than deleting the row, so a release never undoes a concurrent acquisition.
//!
//! **Class:** durable (names are re-used). **Owner:** the current holder.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::cluster::{decode, encode};

/// A lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The lease name (primary key), e.g. `acme:example.com`.
    pub name: String,
    /// Who holds it (a node name); empty for none.
    pub holder: String,
    /// When it lapses (unix ms, exclusive).
    pub expires_ms: i64,
}

impl Lease {
    /// The holder at `now_ms`, if the lease has not lapsed.
    pub fn holder_at(&self, now_ms: i64) -> Option<&str> {
        (!self.holder.is_empty() && now_ms < self.expires_ms).then_some(self.holder.as_str())
    }
}

/// The stored value of the `state` column.
#[derive(Serialize, Deserialize)]
struct State {
    holder: String,
    expires_ms: i64,
}

const UPSERT: &str = "INSERT INTO leases (name, state) VALUES (?1, ?2) \
     ON CONFLICT (name) DO UPDATE SET state = excluded.state";
const GET: &str = "SELECT name, state FROM leases WHERE name = ?1";
const LIST: &str = "SELECT name, state FROM leases ORDER BY name";
const DELETE: &str = "DELETE FROM leases WHERE name = ?1";

fn from_raw((name, state): (String, Vec<u8>)) -> Result<Lease> {
    // A row materialised from its key alone has an empty state: nobody holds it.
    if state.is_empty() {
        return Ok(Lease {
            name,
            holder: String::new(),
            expires_ms: 0,
        });
    }
    let State { holder, expires_ms } = decode("leases", "state", &state)?;
    Ok(Lease {
        name,
        holder,
        expires_ms,
    })
}

/// Writes a lease as given.
pub fn upsert(conn: &Connection, lease: &Lease) -> Result<()> {
    let state = encode(&State {
        holder: lease.holder.clone(),
        expires_ms: lease.expires_ms,
    })?;
    conn.prepare_cached(UPSERT)?
        .execute(params![lease.name, state])?;
    Ok(())
}

/// The lease called `name`, lapsed or not.
pub fn get(conn: &Connection, name: &str) -> Result<Option<Lease>> {
    conn.prepare_cached(GET)?
        .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .map(from_raw)
        .transpose()
}

/// Every lease, by name.
pub fn list(conn: &Connection) -> Result<Vec<Lease>> {
    let mut stmt = conn.prepare_cached(LIST)?;
    let raws = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    raws.into_iter().map(from_raw).collect()
}

/// Deletes a lease row; returns whether it existed. Prefer [`release`] to give a lease
/// up.
pub fn delete(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.prepare_cached(DELETE)?.execute([name])? > 0)
}

/// Acquires lease `name` for `holder` until `now_ms + ttl_ms` if it is free, lapsed, or
/// already held by `holder` (a renewal); returns whether `holder` now holds it. Run it
/// inside a write transaction so that the check and the write are atomic locally.
pub fn try_acquire(
    conn: &Connection,
    name: &str,
    holder: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<bool> {
    if let Some(current) = get(conn, name)?
        && current
            .holder_at(now_ms)
            .is_some_and(|other| other != holder)
    {
        return Ok(false);
    }
    upsert(
        conn,
        &Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            expires_ms: now_ms.saturating_add(ttl_ms.max(0)),
        },
    )?;
    Ok(true)
}

/// The holder of lease `name` at `now_ms`, if it is held and has not lapsed.
pub fn holder(conn: &Connection, name: &str, now_ms: i64) -> Result<Option<String>> {
    Ok(get(conn, name)?.and_then(|l| l.holder_at(now_ms).map(str::to_owned)))
}

/// Gives lease `name` up if `holder` holds it at `now_ms` (it lapses immediately); returns
/// whether it did.
pub fn release(conn: &Connection, name: &str, holder: &str, now_ms: i64) -> Result<bool> {
    match get(conn, name)? {
        Some(current) if current.holder_at(now_ms) == Some(holder) => {
            upsert(
                conn,
                &Lease {
                    name: name.to_owned(),
                    holder: String::new(),
                    expires_ms: now_ms,
                },
            )?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_db;

    #[test]
    fn acquire_renew_expire_and_contend() {
        let conn = test_db();
        assert_eq!(holder(&conn, "acme", 0).unwrap(), None);
        assert!(try_acquire(&conn, "acme", "vector", 1_000, 500).unwrap());
        assert_eq!(
            holder(&conn, "acme", 1_499).unwrap().as_deref(),
            Some("vector")
        );
        // Contention: another node cannot take a live lease.
        assert!(!try_acquire(&conn, "acme", "klukai", 1_200, 500).unwrap());
        assert_eq!(
            holder(&conn, "acme", 1_200).unwrap().as_deref(),
            Some("vector")
        );
        // Renewal by the holder extends it.
        assert!(try_acquire(&conn, "acme", "vector", 1_400, 500).unwrap());
        assert_eq!(
            get(&conn, "acme").unwrap(),
            Some(Lease {
                name: "acme".into(),
                holder: "vector".into(),
                expires_ms: 1_900
            })
        );
        assert!(!try_acquire(&conn, "acme", "klukai", 1_899, 500).unwrap());
        // Expiry (exclusive): anyone may take it.
        assert_eq!(holder(&conn, "acme", 1_900).unwrap(), None);
        assert!(try_acquire(&conn, "acme", "klukai", 1_900, 500).unwrap());
        assert_eq!(
            holder(&conn, "acme", 2_000).unwrap().as_deref(),
            Some("klukai")
        );
        // Leases are independent.
        assert!(try_acquire(&conn, "gc", "vector", 2_000, 10).unwrap());
    }

    #[test]
    fn release_list_and_delete() {
        let conn = test_db();
        assert!(try_acquire(&conn, "b", "vector", 0, 100).unwrap());
        assert!(try_acquire(&conn, "a", "klukai", 0, 100).unwrap());
        assert!(!release(&conn, "b", "klukai", 10).unwrap());
        assert!(release(&conn, "b", "vector", 10).unwrap());
        assert!(!release(&conn, "b", "vector", 10).unwrap());
        assert_eq!(holder(&conn, "b", 10).unwrap(), None);
        assert!(try_acquire(&conn, "b", "klukai", 11, 100).unwrap());
        assert_eq!(
            list(&conn)
                .unwrap()
                .into_iter()
                .map(|l| (l.name, l.holder))
                .collect::<Vec<_>>(),
            [("a".into(), "klukai".into()), ("b".into(), "klukai".into())]
        );
        assert!(delete(&conn, "a").unwrap());
        assert!(!delete(&conn, "a").unwrap());
        assert_eq!(get(&conn, "a").unwrap(), None);
        // A row materialised from its key alone is free.
        conn.execute("INSERT INTO leases (name) VALUES ('bare')", [])
            .unwrap();
        assert_eq!(holder(&conn, "bare", 0).unwrap(), None);
        assert!(try_acquire(&conn, "bare", "vector", 0, 5).unwrap());
    }
}
