//! `certificates`: TLS certificates obtained through ACME, shared by every node.
//!
//! Rows are insert-only and keyed by the certificate's fingerprint, so a certificate's
//! chain, key and validity can never be mixed with another's; renewing inserts a new row
//! and readers pick the newest valid one ([`valid_for_name`]). Old rows are removed with
//! [`delete_expired`].
//!
//! **Class:** ephemeral (fingerprints are never re-used). **Owner:** the node that obtained
//! the certificate; insert-only.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::cluster::{decode, encode, normalize_name};

/// A certificate chain and its private key, PEM-encoded: stored together in one column.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// The certificate chain, leaf first, PEM.
    pub chain_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field(
                "chain_pem",
                &format_args!("<{} bytes>", self.chain_pem.len()),
            )
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

/// A certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// Hex fingerprint of the leaf certificate (primary key).
    pub id: String,
    /// The served domain it was obtained for.
    pub domain: String,
    /// The names it covers (subject alternative names, lower-case; may include wildcards
    /// such as `*.example.com`).
    pub names: Vec<String>,
    /// Chain and key.
    pub bundle: Bundle,
    /// Start of validity (unix ms).
    pub not_before_ms: i64,
    /// End of validity (unix ms, exclusive).
    pub not_after_ms: i64,
    /// When it was stored (unix ms).
    pub created_ms: i64,
}

impl Certificate {
    /// Whether the certificate is valid at `now_ms`.
    pub fn is_valid_at(&self, now_ms: i64) -> bool {
        self.not_before_ms <= now_ms && now_ms < self.not_after_ms
    }

    /// Whether the certificate covers host `name` (exactly, or through a wildcard).
    pub fn covers(&self, name: &str) -> bool {
        let name = normalize_name(name);
        self.names
            .iter()
            .any(|pattern| name_matches(pattern, &name))
    }
}

/// Whether `pattern` (a certificate name, possibly `*.`-prefixed) covers the normalised
/// host `name`. A wildcard covers exactly one non-empty leftmost label.
fn name_matches(pattern: &str, name: &str) -> bool {
    let pattern = normalize_name(pattern);
    if pattern == name {
        return true;
    }
    match (pattern.strip_prefix("*."), name.split_once('.')) {
        (Some(parent), Some((label, rest))) => !label.is_empty() && rest == parent,
        _ => false,
    }
}

const INSERT: &str = "INSERT INTO certificates (id, domain, names, bundle, not_before_ms, \
     not_after_ms, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING";
const GET: &str = "SELECT id, domain, names, bundle, not_before_ms, not_after_ms, created_ms \
     FROM certificates WHERE id = ?1";
const LIST: &str = "SELECT id, domain, names, bundle, not_before_ms, not_after_ms, created_ms \
     FROM certificates ORDER BY id";
const LIST_FOR_DOMAIN: &str = "SELECT id, domain, names, bundle, not_before_ms, not_after_ms, \
     created_ms FROM certificates WHERE domain = ?1 ORDER BY not_after_ms DESC, id";
/// Candidates valid at ?1, best first: the most recently issued, then the longest-lived.
const VALID_NAMES: &str = "SELECT id, names FROM certificates \
     WHERE not_before_ms <= ?1 AND not_after_ms > ?1 AND length(bundle) > 0 \
     ORDER BY not_before_ms DESC, not_after_ms DESC, created_ms DESC, id";
const ALL_NAMES: &str = "SELECT id, names FROM certificates WHERE length(bundle) > 0 \
     ORDER BY not_after_ms DESC, not_before_ms DESC, created_ms DESC, id";
const DELETE: &str = "DELETE FROM certificates WHERE id = ?1";
const DELETE_EXPIRED: &str = "DELETE FROM certificates WHERE not_after_ms <= ?1";

type Raw = (String, String, Vec<u8>, Vec<u8>, i64, i64, i64);

fn read(r: &Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn from_raw(
    (id, domain, names, bundle, not_before_ms, not_after_ms, created_ms): Raw,
) -> Result<Certificate> {
    Ok(Certificate {
        id,
        domain,
        names: decode("certificates", "names", &names)?,
        bundle: decode("certificates", "bundle", &bundle)?,
        not_before_ms,
        not_after_ms,
        created_ms,
    })
}

fn query(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Certificate>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let raws = stmt
        .query_map(args, read)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    raws.into_iter().map(from_raw).collect()
}

/// Inserts a certificate; returns false (and changes nothing) if its id exists.
pub fn insert(conn: &Connection, cert: &Certificate) -> Result<bool> {
    let n = conn.prepare_cached(INSERT)?.execute(params![
        cert.id,
        cert.domain,
        encode(&cert.names)?,
        encode(&cert.bundle)?,
        cert.not_before_ms,
        cert.not_after_ms,
        cert.created_ms,
    ])?;
    Ok(n > 0)
}

/// The certificate with id `id`.
pub fn get(conn: &Connection, id: &str) -> Result<Option<Certificate>> {
    conn.prepare_cached(GET)?
        .query_row([id], read)
        .optional()?
        .map(from_raw)
        .transpose()
}

/// Every certificate, by id.
pub fn list(conn: &Connection) -> Result<Vec<Certificate>> {
    query(conn, LIST, [])
}

/// The certificates of `domain`, latest expiry first.
pub fn list_for_domain(conn: &Connection, domain: &str) -> Result<Vec<Certificate>> {
    query(conn, LIST_FOR_DOMAIN, [domain])
}

/// The first certificate of `sql`'s candidates (id, names) whose names cover `name`.
/// Candidates with undecodable names are skipped (a row being materialised).
fn first_covering(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
    name: &str,
) -> Result<Option<Certificate>> {
    let name = normalize_name(name);
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(args)?;
    while let Some(row) = rows.next()? {
        let names: Vec<u8> = row.get(1)?;
        let Ok(names) = decode::<Vec<String>>("certificates", "names", &names) else {
            continue;
        };
        if names.iter().any(|p| name_matches(p, &name)) {
            let id: String = row.get(0)?;
            return get(conn, &id);
        }
    }
    Ok(None)
}

/// The certificate to serve for host `name` at `now_ms`: among the certificates valid at
/// `now_ms` whose names cover `name` (exactly, or by a wildcard one label up), the most
/// recently issued (latest `not_before_ms`, then latest `not_after_ms`, then id). Never an
/// expired or not-yet-valid certificate.
pub fn valid_for_name(conn: &Connection, name: &str, now_ms: i64) -> Result<Option<Certificate>> {
    first_covering(conn, VALID_NAMES, [now_ms], name)
}

/// The certificate covering `name` that expires last, valid or not (for renewal
/// decisions and diagnostics).
pub fn latest_for_name(conn: &Connection, name: &str) -> Result<Option<Certificate>> {
    first_covering(conn, ALL_NAMES, [], name)
}

/// Deletes a certificate; returns whether it existed.
pub fn delete(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn.prepare_cached(DELETE)?.execute([id])? > 0)
}

/// Deletes every certificate whose validity ended at or before `before_ms` (pass
/// `now_ms` minus a grace period); returns how many.
pub fn delete_expired(conn: &Connection, before_ms: i64) -> Result<usize> {
    Ok(conn.prepare_cached(DELETE_EXPIRED)?.execute([before_ms])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreError;
    use crate::cluster::test_db;

    fn cert(id: &str, names: &[&str], not_before_ms: i64, not_after_ms: i64) -> Certificate {
        Certificate {
            id: id.into(),
            domain: "example.com".into(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            bundle: Bundle {
                chain_pem: format!("chain-{id}"),
                key_pem: format!("key-{id}"),
            },
            not_before_ms,
            not_after_ms,
            created_ms: not_before_ms,
        }
    }

    fn id(c: Option<Certificate>) -> Option<String> {
        c.map(|c| c.id)
    }

    #[test]
    fn roundtrip_list_and_delete() {
        let conn = test_db();
        let a = cert("bb", &["example.com", "www.example.com"], 0, 100);
        let b = cert("aa", &["example.com"], 10, 200);
        assert!(insert(&conn, &a).unwrap());
        assert!(insert(&conn, &b).unwrap());
        assert!(!insert(&conn, &cert("aa", &["x"], 0, 1)).unwrap());
        assert_eq!(get(&conn, "bb").unwrap(), Some(a.clone()));
        assert_eq!(get(&conn, "cc").unwrap(), None);
        assert_eq!(list(&conn).unwrap(), vec![b.clone(), a.clone()]);
        assert_eq!(
            list_for_domain(&conn, "example.com").unwrap(),
            vec![b.clone(), a.clone()]
        );
        assert!(delete(&conn, "aa").unwrap());
        assert!(!delete(&conn, "aa").unwrap());
        assert_eq!(list(&conn).unwrap(), vec![a]);
        assert!(!format!("{b:?}").contains("key-aa"));
    }

    #[test]
    fn selection_prefers_valid_and_newest() {
        let conn = test_db();
        // Expired, but issued last and longest-lived on paper.
        insert(&conn, &cert("expired", &["example.com"], 500, 900)).unwrap();
        insert(&conn, &cert("old", &["example.com"], 0, 2_000)).unwrap();
        insert(&conn, &cert("new", &["example.com"], 400, 1_500)).unwrap();
        insert(&conn, &cert("future", &["example.com"], 5_000, 9_000)).unwrap();
        assert_eq!(
            id(valid_for_name(&conn, "example.com", 1_000).unwrap()).as_deref(),
            Some("new")
        );
        // Before "new" starts, and at its end (exclusive), "old" is the valid one.
        assert_eq!(
            id(valid_for_name(&conn, "example.com", 300).unwrap()).as_deref(),
            Some("old")
        );
        assert_eq!(
            id(valid_for_name(&conn, "example.com", 1_500).unwrap()).as_deref(),
            Some("old")
        );
        // Nothing valid: nothing.
        assert_eq!(valid_for_name(&conn, "example.com", 3_000).unwrap(), None);
        assert_eq!(valid_for_name(&conn, "other.org", 1_000).unwrap(), None);
        assert_eq!(
            id(latest_for_name(&conn, "example.com").unwrap()).as_deref(),
            Some("future")
        );
        assert_eq!(latest_for_name(&conn, "other.org").unwrap(), None);
        // The full row comes back.
        let got = valid_for_name(&conn, "EXAMPLE.com.", 1_000)
            .unwrap()
            .unwrap();
        assert_eq!(got.bundle.key_pem, "key-new");
        assert!(got.is_valid_at(1_000) && !got.is_valid_at(1_500));

        assert_eq!(delete_expired(&conn, 1_500).unwrap(), 2);
        assert_eq!(id(get(&conn, "old").unwrap()).as_deref(), Some("old"));
    }

    #[test]
    fn wildcards_cover_one_label() {
        let conn = test_db();
        insert(&conn, &cert("wild", &["*.example.com"], 0, 1_000)).unwrap();
        insert(&conn, &cert("apex", &["example.com"], 0, 1_000)).unwrap();
        assert_eq!(
            id(valid_for_name(&conn, "www.example.com", 5).unwrap()).as_deref(),
            Some("wild")
        );
        assert_eq!(
            id(valid_for_name(&conn, "WWW.Example.com", 5).unwrap()).as_deref(),
            Some("wild")
        );
        assert_eq!(
            id(valid_for_name(&conn, "example.com", 5).unwrap()).as_deref(),
            Some("apex")
        );
        assert_eq!(valid_for_name(&conn, "a.b.example.com", 5).unwrap(), None);
        assert_eq!(valid_for_name(&conn, "wwwexample.com", 5).unwrap(), None);
        assert_eq!(valid_for_name(&conn, ".example.com", 5).unwrap(), None);
        // A newer exact certificate wins over the wildcard; an expired one never does.
        insert(&conn, &cert("www", &["www.example.com"], 10, 1_000)).unwrap();
        insert(&conn, &cert("www-expired", &["www.example.com"], 20, 30)).unwrap();
        assert_eq!(
            id(valid_for_name(&conn, "www.example.com", 50).unwrap()).as_deref(),
            Some("www")
        );
        let w = get(&conn, "wild").unwrap().unwrap();
        assert!(w.covers("x.example.com") && !w.covers("example.com"));
    }

    #[test]
    fn rows_being_materialised_are_skipped_or_corrupt() {
        let conn = test_db();
        conn.execute(
            "INSERT INTO certificates (id, not_after_ms) VALUES ('bare', 10)",
            [],
        )
        .unwrap();
        assert_eq!(valid_for_name(&conn, "example.com", 5).unwrap(), None);
        assert!(matches!(
            get(&conn, "bare"),
            Err(StoreError::Corrupt {
                table: "certificates",
                ..
            })
        ));
    }
}
