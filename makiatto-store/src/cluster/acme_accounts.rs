//! `acme_accounts`: ACME accounts, one per directory, shared by every node so that the
//! cluster registers once.
//!
//! **Class:** durable (keyed by the directory URL, which is re-used). **Owner:** the node
//! that registered the account. The credentials (account key and URL) are one column, so
//! concurrent registrations resolve to one whole account.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::Result;

/// An ACME account.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The ACME directory URL (primary key).
    pub id: String,
    /// Account credentials (key and account URL), in the ACME client's own encoding.
    /// Empty in a row materialised from its key.
    pub credentials: Vec<u8>,
    /// Contact e-mail addresses, comma-separated (may be empty).
    pub contact: String,
    /// When the account was registered (unix ms).
    pub created_ms: i64,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id)
            .field("credentials", &format_args!("<redacted>"))
            .field("contact", &self.contact)
            .field("created_ms", &self.created_ms)
            .finish()
    }
}

const UPSERT: &str = "INSERT INTO acme_accounts (id, credentials, contact, created_ms) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO UPDATE SET credentials = excluded.credentials, \
     contact = excluded.contact, created_ms = excluded.created_ms";
const GET: &str = "SELECT id, credentials, contact, created_ms FROM acme_accounts WHERE id = ?1";
const LIST: &str = "SELECT id, credentials, contact, created_ms FROM acme_accounts ORDER BY id";
const DELETE: &str = "DELETE FROM acme_accounts WHERE id = ?1";

fn read(r: &Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        id: r.get(0)?,
        credentials: r.get(1)?,
        contact: r.get(2)?,
        created_ms: r.get(3)?,
    })
}

/// Inserts or replaces an account.
pub fn upsert(conn: &Connection, account: &Account) -> Result<()> {
    conn.prepare_cached(UPSERT)?.execute(params![
        account.id,
        account.credentials,
        account.contact,
        account.created_ms
    ])?;
    Ok(())
}

/// The account for directory `id`.
pub fn get(conn: &Connection, id: &str) -> Result<Option<Account>> {
    Ok(conn.prepare_cached(GET)?.query_row([id], read).optional()?)
}

/// Every account, by directory URL.
pub fn list(conn: &Connection) -> Result<Vec<Account>> {
    let mut stmt = conn.prepare_cached(LIST)?;
    let rows = stmt.query_map([], read)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Deletes an account; returns whether it existed.
pub fn delete(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn.prepare_cached(DELETE)?.execute([id])? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_db;

    #[test]
    fn roundtrip_list_and_delete() {
        let conn = test_db();
        let le = Account {
            id: "https://acme-v02.api.letsencrypt.org/directory".into(),
            credentials: b"secret".to_vec(),
            contact: "ops@example.com".into(),
            created_ms: 3,
        };
        let staging = Account {
            id: "https://acme-staging-v02.api.letsencrypt.org/directory".into(),
            credentials: vec![9],
            contact: String::new(),
            created_ms: 4,
        };
        upsert(&conn, &staging).unwrap();
        upsert(&conn, &le).unwrap();
        assert_eq!(get(&conn, &le.id).unwrap(), Some(le.clone()));
        assert_eq!(get(&conn, "x").unwrap(), None);
        assert_eq!(list(&conn).unwrap(), vec![staging.clone(), le.clone()]);
        let rotated = Account {
            credentials: b"new".to_vec(),
            ..le.clone()
        };
        upsert(&conn, &rotated).unwrap();
        assert_eq!(get(&conn, &le.id).unwrap(), Some(rotated));
        assert!(!format!("{le:?}").contains("115")); // no raw credential bytes
        assert!(delete(&conn, &le.id).unwrap());
        assert!(!delete(&conn, &le.id).unwrap());
        assert_eq!(list(&conn).unwrap(), vec![staging]);
    }
}
