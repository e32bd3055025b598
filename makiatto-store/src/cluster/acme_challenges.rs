//! `acme_challenges`: pending ACME challenges, so that whichever node the CA reaches can
//! answer: HTTP-01 (`/.well-known/acme-challenge/<token>` → key authorization) or DNS-01
//! (TXT `_acme-challenge.<name>` → digest).
//!
//! **Class:** ephemeral (ACME tokens are never re-used). **Owner:** the node running the
//! order; it deletes the row when the order completes, and [`delete_expired`] sweeps the
//! rest.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::cluster::normalize_name;

text_enum! {
    /// The ACME challenge type.
    ChallengeKind {
        /// HTTP-01.
        Http01 = "http-01",
        /// DNS-01.
        Dns01 = "dns-01",
    }
}

/// A pending challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The ACME challenge token (primary key).
    pub token: String,
    /// Challenge type.
    pub kind: ChallengeKind,
    /// The identifier being validated, e.g. `www.example.com` (for DNS-01 the TXT record
    /// lives at `_acme-challenge.<name>`).
    pub name: String,
    /// HTTP-01: the key authorization; DNS-01: the TXT value.
    pub value: String,
    /// When to stop answering (unix ms).
    pub expires_ms: i64,
}

const UPSERT: &str = "INSERT INTO acme_challenges (token, kind, name, value, expires_ms) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (token) DO UPDATE SET kind = excluded.kind, \
     name = excluded.name, value = excluded.value, expires_ms = excluded.expires_ms";
const GET: &str =
    "SELECT token, kind, name, value, expires_ms FROM acme_challenges WHERE token = ?1";
const LIST: &str =
    "SELECT token, kind, name, value, expires_ms FROM acme_challenges ORDER BY token";
const HTTP_ANSWER: &str = "SELECT value FROM acme_challenges \
     WHERE token = ?1 AND kind = 'http-01' AND expires_ms > ?2";
const DNS_ANSWERS: &str = "SELECT value FROM acme_challenges \
     WHERE name = ?1 AND kind = 'dns-01' AND expires_ms > ?2 ORDER BY value";
const DELETE: &str = "DELETE FROM acme_challenges WHERE token = ?1";
const DELETE_EXPIRED: &str = "DELETE FROM acme_challenges WHERE expires_ms <= ?1";

fn read(r: &Row<'_>) -> rusqlite::Result<Challenge> {
    Ok(Challenge {
        token: r.get(0)?,
        kind: r.get(1)?,
        name: r.get(2)?,
        value: r.get(3)?,
        expires_ms: r.get(4)?,
    })
}

/// Inserts or updates a challenge.
pub fn upsert(conn: &Connection, challenge: &Challenge) -> Result<()> {
    conn.prepare_cached(UPSERT)?.execute(params![
        challenge.token,
        challenge.kind,
        challenge.name,
        challenge.value,
        challenge.expires_ms,
    ])?;
    Ok(())
}

/// The challenge with token `token`, expired or not.
pub fn get(conn: &Connection, token: &str) -> Result<Option<Challenge>> {
    Ok(conn
        .prepare_cached(GET)?
        .query_row([token], read)
        .optional()?)
}

/// Every challenge, by token.
pub fn list(conn: &Connection) -> Result<Vec<Challenge>> {
    let mut stmt = conn.prepare_cached(LIST)?;
    let rows = stmt.query_map([], read)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The key authorization to answer `GET /.well-known/acme-challenge/<token>` with, if an
/// unexpired HTTP-01 challenge has that token.
pub fn http_answer(conn: &Connection, token: &str, now_ms: i64) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(HTTP_ANSWER)?
        .query_row(params![token, now_ms], |r| r.get(0))
        .optional()?)
}

/// The TXT values to answer for `_acme-challenge.<name>` (pass `name` without the
/// `_acme-challenge.` label; it is normalised): the unexpired DNS-01 challenges, sorted.
pub fn dns_answers(conn: &Connection, name: &str, now_ms: i64) -> Result<Vec<String>> {
    let name = normalize_name(name);
    let mut stmt = conn.prepare_cached(DNS_ANSWERS)?;
    let rows = stmt.query_map(params![name, now_ms], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Deletes a challenge; returns whether it existed.
pub fn delete(conn: &Connection, token: &str) -> Result<bool> {
    Ok(conn.prepare_cached(DELETE)?.execute([token])? > 0)
}

/// Deletes the challenges expired at `now_ms`; returns how many.
pub fn delete_expired(conn: &Connection, now_ms: i64) -> Result<usize> {
    Ok(conn.prepare_cached(DELETE_EXPIRED)?.execute([now_ms])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_db;

    fn ch(token: &str, kind: ChallengeKind, name: &str, value: &str, expires_ms: i64) -> Challenge {
        Challenge {
            token: token.into(),
            kind,
            name: name.into(),
            value: value.into(),
            expires_ms,
        }
    }

    #[test]
    fn roundtrip_list_answers_and_expiry() {
        let conn = test_db();
        let h = ch(
            "tok-h",
            ChallengeKind::Http01,
            "www.example.com",
            "tok-h.thumb",
            100,
        );
        let d1 = ch("tok-d1", ChallengeKind::Dns01, "example.com", "zzz", 100);
        let d2 = ch("tok-d2", ChallengeKind::Dns01, "example.com", "aaa", 50);
        for c in [&h, &d1, &d2] {
            upsert(&conn, c).unwrap();
        }
        assert_eq!(get(&conn, "tok-h").unwrap(), Some(h.clone()));
        assert_eq!(get(&conn, "nope").unwrap(), None);
        assert_eq!(
            list(&conn).unwrap(),
            vec![d1.clone(), d2.clone(), h.clone()]
        );

        assert_eq!(
            http_answer(&conn, "tok-h", 99).unwrap().as_deref(),
            Some("tok-h.thumb")
        );
        assert_eq!(http_answer(&conn, "tok-h", 100).unwrap(), None);
        assert_eq!(http_answer(&conn, "tok-d1", 0).unwrap(), None);
        assert_eq!(
            dns_answers(&conn, "Example.com.", 10).unwrap(),
            ["aaa", "zzz"]
        );
        assert_eq!(dns_answers(&conn, "example.com", 60).unwrap(), ["zzz"]);
        assert_eq!(
            dns_answers(&conn, "www.example.com", 10).unwrap(),
            Vec::<String>::new()
        );

        assert_eq!(delete_expired(&conn, 50).unwrap(), 1);
        assert!(delete(&conn, "tok-h").unwrap());
        assert!(!delete(&conn, "tok-h").unwrap());
        assert_eq!(list(&conn).unwrap(), vec![d1]);
    }
}
