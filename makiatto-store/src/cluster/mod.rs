//! Makiatto's cluster schema: the tables every node replicates, and typed accessors.
//!
//! [`SCHEMA`] is the list of embedded, numbered migrations; migration 1 creates every
//! table. Each submodule covers one table with a typed row struct and plain SQL accessor
//! functions taking a [`rusqlite::Connection`]. Reads work on any connection; writes must
//! run inside [`Store::write`](crate::Store::write) (a `Transaction` derefs to a
//! `Connection`), whose capture triggers turn them into replicated changes:
//!
//! ```no_run
//! # use makiatto_store::{cluster, Options, Store};
//! # fn main() -> makiatto_store::Result<()> {
//! let store = Store::open("/var/makiatto/cluster.db", &cluster::SCHEMA, Options::default())?;
//! let domain = cluster::domains::Domain {
//!     name: "example.com".into(),
//!     active_deployment: None,
//!     updated_ms: 1_700_000_000_000,
//! };
//! store.write(|tx| cluster::domains::upsert(tx, &domain))?;
//! # Ok(()) }
//! ```
//!
//! # Conventions (replication.md §3.2)
//! Merges are per column, last writer wins, so the tables follow these rules (checked by
//! a test over every migration):
//! - `STRICT`, an explicit `NOT NULL` primary key, no `UNIQUE` besides it, no foreign keys,
//!   no `AUTOINCREMENT`, no triggers, a `DEFAULT` on every non-key `NOT NULL` column (a row
//!   must be materialisable from its key alone: readers tolerate default values and
//!   dangling references).
//! - Primary keys are immutable: to rename, delete and re-insert.
//! - Values that must stay consistent together live in one column (a postcard BLOB with a
//!   version tag first), or in insert-only rows keyed by a unique id. Deployments are
//!   immutable: their files, functions, transforms and DNS records are insert-only rows
//!   keyed by the deployment id, and a domain switches deployment by a single column
//!   ([`domains::Domain::active_deployment`]).
//! - Rows written by one node only (health, activations) are keyed by that node and are
//!   conflict-free.
//! - Timestamps are INTEGER unix milliseconds (`i64`).
//! - Names (domains, hosts) are stored lower-case without a trailing dot; query helpers
//!   that take a name from the wire normalise it with [`normalize_name`].
//! - SQL is constant text with `?` parameters, never built by formatting.
//!
//! # Classes
//! Durable tables (tombstones kept, keys may be reused): `nodes`, `domains`, `aliases`,
//! `acme_accounts`, `external_peers`, `node_health`, `leases`. Ephemeral tables (keys never
//! reused): `dns_records`, `deployments`, `deployment_files`, `deployment_activations`,
//! `certificates`, `acme_challenges`, `functions`, `transforms`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Migration, Replicate, Result, Schema, StoreError, TableClass};

/// Declares a TEXT-stored enum: known values plus `Other` for values this version does not
/// know (written by a newer version), so that mixed-version clusters keep reading.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A value this version does not know (written by a newer version).
            Other(String),
        }

        impl $name {
            /// The text stored in the database.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)*
                    Self::Other(text) => text,
                }
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $($text => Self::$variant,)*
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                value.as_str().map(Self::from)
            }
        }
    };
}

pub mod acme_accounts;
pub mod acme_challenges;
pub mod aliases;
pub mod certificates;
pub mod deployment_activations;
pub mod deployment_files;
pub mod deployments;
pub mod dns_records;
pub mod domains;
pub mod external_peers;
pub mod functions;
pub mod leases;
pub mod mesh;
pub mod node_health;
pub mod nodes;
pub mod transforms;

/// The cluster schema: every migration, in order.
pub const SCHEMA: Schema = Schema {
    migrations: &[Migration {
        version: 1,
        sql: include_str!("migrations/0001_initial.sql"),
        replicate: &[
            Replicate {
                table: "nodes",
                class: TableClass::Durable,
            },
            Replicate {
                table: "domains",
                class: TableClass::Durable,
            },
            Replicate {
                table: "aliases",
                class: TableClass::Durable,
            },
            Replicate {
                table: "dns_records",
                class: TableClass::Ephemeral,
            },
            Replicate {
                table: "deployments",
                class: TableClass::Ephemeral,
            },
            Replicate {
                table: "deployment_files",
                class: TableClass::Ephemeral,
            },
            Replicate {
                table: "deployment_activations",
                class: TableClass::Ephemeral,
            },
            Replicate {
                table: "certificates",
                class: TableClass::Ephemeral,
            },
            Replicate {
                table: "acme_challenges",
                class: TableClass::Ephemeral,
            },
            Replicate {
                table: "acme_accounts",
                class: TableClass::Durable,
            },
            Replicate {
                table: "functions",
                class: TableClass::Ephemeral,
            },
            Replicate {
                table: "transforms",
                class: TableClass::Ephemeral,
            },
            Replicate {
                table: "external_peers",
                class: TableClass::Durable,
            },
            Replicate {
                table: "node_health",
                class: TableClass::Durable,
            },
            Replicate {
                table: "leases",
                class: TableClass::Durable,
            },
        ],
    }],
};

/// A fresh random identifier for rows whose key is never reused (DNS records, deployments):
/// 32 lower-case hex digits, the first 12 the creation time (`now_ms`, 48 bits) so ids sort
/// by creation time, the other 20 random (80 bits).
pub fn new_id(now_ms: i64) -> String {
    let time = (now_ms.max(0) as u64) & 0xFFFF_FFFF_FFFF;
    let random: [u8; 10] = rand::random();
    format!("{time:012x}{}", hex::encode(random))
}

/// A DNS or host name in the stored form: ASCII lower-case, without a trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Envelope of every postcard BLOB this module writes: a version tag first, so a later
/// layout can be added as a new variant without breaking old rows.
#[derive(Serialize, Deserialize)]
enum Envelope<T> {
    V1(T),
}

/// Encodes a value as an enveloped postcard BLOB.
fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(&Envelope::V1(value))
        .map_err(|e| StoreError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))
}

/// Decodes an enveloped postcard BLOB read from `table.column`.
fn decode<T: DeserializeOwned>(
    table: &'static str,
    column: &'static str,
    bytes: &[u8],
) -> Result<T> {
    match postcard::from_bytes::<Envelope<T>>(bytes) {
        Ok(Envelope::V1(value)) => Ok(value),
        Err(e) => Err(StoreError::Corrupt {
            table,
            column,
            reason: e.to_string(),
        }),
    }
}

/// A connection holding the whole cluster schema (no replication triggers).
#[cfg(test)]
fn test_db() -> rusqlite::Connection {
    let conn = rusqlite::Connection::open_in_memory().expect("open in-memory database");
    for m in SCHEMA.migrations {
        conn.execute_batch(m.sql).expect("migration runs");
    }
    conn
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn replicated() -> Vec<Replicate> {
        SCHEMA
            .migrations
            .iter()
            .flat_map(|m| m.replicate.iter().copied())
            .collect()
    }

    #[test]
    fn migrations_are_numbered_without_gaps() {
        for (i, m) in SCHEMA.migrations.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
        }
        assert_eq!(SCHEMA.version() as usize, SCHEMA.migrations.len());
    }

    #[test]
    fn every_table_is_replicated_exactly_once() {
        let conn = test_db();
        let mut stmt = conn
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
            )
            .unwrap();
        let tables: BTreeSet<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let listed: Vec<&str> = replicated().iter().map(|r| r.table).collect();
        let listed_set: BTreeSet<String> = listed.iter().map(|t| (*t).to_owned()).collect();
        assert_eq!(listed.len(), listed_set.len(), "a table is listed twice");
        assert_eq!(tables, listed_set);
    }

    /// Checks the replication rules by introspection, so future migrations keep to them.
    #[test]
    fn replicated_tables_follow_the_conventions() {
        let conn = test_db();
        for Replicate { table, .. } in replicated() {
            let strict: i64 = conn
                .query_row(
                    "SELECT strict FROM pragma_table_list WHERE name = ?1 AND schema = 'main'",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(strict, 1, "{table} must be STRICT");

            let mut stmt = conn
                .prepare(
                    "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1) \
                     ORDER BY cid",
                )
                .unwrap();
            let cols: Vec<(String, String, bool, Option<String>, i64)> = stmt
                .query_map([table], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert!(cols.iter().any(|c| c.4 > 0), "{table} needs a PRIMARY KEY");
            for (name, ty, notnull, dflt, pk) in &cols {
                assert!(
                    ["TEXT", "INTEGER", "REAL", "BLOB"].contains(&ty.as_str()),
                    "{table}.{name} has type {ty}"
                );
                assert_ne!(name, "-1", "{table}.{name} is reserved");
                if *pk > 0 {
                    assert!(*notnull, "{table}.{name}: primary key must be NOT NULL");
                    assert!(
                        ty == "TEXT" || ty == "INTEGER",
                        "{table}.{name}: primary key must be TEXT or INTEGER"
                    );
                } else if *notnull {
                    assert!(dflt.is_some(), "{table}.{name}: NOT NULL needs a DEFAULT");
                }
            }

            let unique: i64 = conn
                .query_row(
                    "SELECT count(*) FROM pragma_index_list(?1) WHERE \"unique\" AND origin <> 'pk'",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(unique, 0, "{table} has a UNIQUE constraint besides the key");

            let fks: i64 = conn
                .query_row(
                    "SELECT count(*) FROM pragma_foreign_key_list(?1)",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(fks, 0, "{table} has a FOREIGN KEY");

            let triggers: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(triggers, 0, "{table} has a trigger");

            let sql: String = conn
                .query_row(
                    "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(
                !sql.to_ascii_uppercase().contains("AUTOINCREMENT"),
                "{table} uses AUTOINCREMENT"
            );
        }
        // sqlite_sequence only exists when some table uses AUTOINCREMENT.
        let seq: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_sequence'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(seq, 0);
    }

    /// One row in every table, through the accessors.
    fn fill(conn: &rusqlite::Connection) -> Result<()> {
        nodes::upsert(
            conn,
            &nodes::Node {
                name: "vector".into(),
                wg_public_key: "pk".into(),
                wg_endpoint: "203.0.113.1:51880".into(),
                mesh_address: "10.44.44.1".into(),
                ipv4: "203.0.113.1".into(),
                ipv6: None,
                latitude: 1.5,
                longitude: -2.5,
                is_nameserver: true,
                site_id: "00".into(),
                created_ms: 1,
            },
        )?;
        domains::set_active(conn, "example.com", Some("d1"), 1)?;
        aliases::replace_for_domain(conn, "example.com", &["www.example.com".into()])?;
        dns_records::upsert(
            conn,
            &dns_records::Record {
                id: "r1".into(),
                domain: "example.com".into(),
                name: "@".into(),
                rtype: "MX".into(),
                value: "mail.example.com".into(),
                ttl: 300,
                priority: Some(10),
                deployment_id: Some("d1".into()),
            },
        )?;
        deployments::insert(
            conn,
            &deployments::Deployment {
                id: "d1".into(),
                domain: "example.com".into(),
                created_ms: 1,
                created_by: "alice".into(),
                config: vec![1, 2],
                manifest_hash: "m".into(),
            },
        )?;
        deployment_files::insert_many(
            conn,
            &[deployment_files::DeploymentFile {
                deployment_id: "d1".into(),
                path: "index.html".into(),
                hash: "h".into(),
                size: 3,
                mode: 0o644,
            }],
        )?;
        deployment_activations::upsert(
            conn,
            &deployment_activations::Activation {
                deployment_id: "d1".into(),
                node: "vector".into(),
                activated_ms: 2,
                status: deployment_activations::ActivationStatus::Active,
                error: None,
            },
        )?;
        certificates::insert(
            conn,
            &certificates::Certificate {
                id: "c1".into(),
                domain: "example.com".into(),
                names: vec!["example.com".into(), "*.example.com".into()],
                bundle: certificates::Bundle {
                    chain_pem: "chain".into(),
                    key_pem: "key".into(),
                },
                not_before_ms: 0,
                not_after_ms: 1_000,
                created_ms: 0,
            },
        )?;
        acme_challenges::upsert(
            conn,
            &acme_challenges::Challenge {
                token: "t".into(),
                kind: acme_challenges::ChallengeKind::Http01,
                name: "example.com".into(),
                value: "t.k".into(),
                expires_ms: 100,
            },
        )?;
        acme_accounts::upsert(
            conn,
            &acme_accounts::Account {
                id: "https://acme.test/dir".into(),
                credentials: vec![7],
                contact: String::new(),
                created_ms: 1,
            },
        )?;
        functions::insert(
            conn,
            &functions::Function {
                deployment_id: "d1".into(),
                route: "/api/hello".into(),
                wasm: "w".into(),
                config: functions::FunctionConfig::default(),
            },
        )?;
        transforms::insert(
            conn,
            &transforms::Transform {
                deployment_id: "d1".into(),
                ordinal: 0,
                wasm: "w2".into(),
                files: "**/*.html".into(),
                config: transforms::TransformConfig::default(),
            },
        )?;
        external_peers::upsert(
            conn,
            &external_peers::ExternalPeer {
                name: "o11y".into(),
                wg_public_key: "pk2".into(),
                endpoint: None,
                mesh_address: "10.44.44.5".into(),
                created_ms: 1,
            },
        )?;
        node_health::upsert(
            conn,
            &node_health::NodeHealth {
                node: "vector".into(),
                status: node_health::HealthStatus::Healthy,
                detail: String::new(),
                updated_ms: 1,
                version: "0.1.0".into(),
            },
        )?;
        leases::try_acquire(conn, "acme", "vector", 0, 1_000)?;
        Ok(())
    }

    /// Everything readable, as debug text (secrets are redacted, so also the secrets).
    fn dump(conn: &rusqlite::Connection) -> Result<String> {
        Ok(format!(
            "{:?}",
            (
                (
                    nodes::list(conn)?,
                    domains::list(conn)?,
                    aliases::list(conn)?
                ),
                (dns_records::list(conn)?, deployments::list(conn)?),
                (
                    deployment_files::list(conn)?,
                    deployment_activations::list(conn)?
                ),
                (certificates::list(conn)?, acme_challenges::list(conn)?),
                acme_accounts::list(conn)?
                    .into_iter()
                    .map(|a| a.credentials)
                    .collect::<Vec<_>>(),
                (functions::list(conn)?, transforms::list(conn)?),
                (
                    external_peers::list(conn)?,
                    node_health::list(conn)?,
                    leases::list(conn)?
                ),
                certificates::list(conn)?
                    .into_iter()
                    .map(|c| c.bundle.key_pem)
                    .collect::<Vec<_>>(),
            )
        ))
    }

    fn sync(from: &crate::Store, to: &crate::Store) {
        to.apply_sync(from.serve_sync(&to.sync_request(8 << 20)).unwrap())
            .unwrap();
    }

    fn open(dir: &tempfile::TempDir, name: &str) -> crate::Store {
        crate::Store::open(dir.path().join(name), &SCHEMA, crate::Options::default()).unwrap()
    }

    /// The engine accepts the schema, captures every accessor's writes, and a second
    /// replica reads the same rows back.
    #[test]
    fn accessors_replicate_through_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(&dir, "a.db");
        let b = open(&dir, "b.db");
        a.write(|tx| fill(tx)).unwrap();
        // Idempotent re-run: insert-only rows and unchanged upserts.
        a.write(|tx| fill(tx)).unwrap();
        sync(&a, &b);
        let want = a.read(dump).unwrap();
        assert!(want.contains("vector") && want.contains("/api/hello"));
        assert_eq!(b.read(dump).unwrap(), want);
        assert_eq!(a.canonical_hash().unwrap(), b.canonical_hash().unwrap());
        // Queries over several tables work on the replica.
        b.read(|c| {
            assert_eq!(
                deployment_files::active(c, "example.com", "index.html")?
                    .unwrap()
                    .hash,
                "h"
            );
            assert_eq!(
                certificates::valid_for_name(c, "www.example.com", 5)?
                    .unwrap()
                    .id,
                "c1"
            );
            assert_eq!(
                domains::resolve_host(c, "www.example.com")?.as_deref(),
                Some("example.com")
            );
            Ok(())
        })
        .unwrap();
        // Deletes replicate too.
        a.write(|tx| deployments::purge(tx, "d1")).unwrap();
        sync(&a, &b);
        assert_eq!(b.read(deployment_files::list).unwrap(), vec![]);
        assert_eq!(a.canonical_hash().unwrap(), b.canonical_hash().unwrap());
    }

    /// Concurrent lease acquisitions and deployment switches converge to one whole value.
    #[test]
    fn concurrent_writes_converge_whole() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(&dir, "a.db");
        let b = open(&dir, "b.db");
        a.write(|tx| leases::try_acquire(tx, "acme", "a", 0, 100))
            .unwrap();
        sync(&a, &b);
        // Partition: a renews several times, b takes over after expiry.
        for t in [50, 90, 95] {
            assert!(
                a.write(|tx| leases::try_acquire(tx, "acme", "a", t, 100))
                    .unwrap()
            );
        }
        assert!(
            b.write(|tx| leases::try_acquire(tx, "acme", "b", 150, 100))
                .unwrap()
        );
        a.write(|tx| domains::set_active(tx, "example.com", Some("da"), 10))
            .unwrap();
        b.write(|tx| domains::set_active(tx, "example.com", Some("db"), 20))
            .unwrap();
        sync(&a, &b);
        sync(&b, &a);
        assert_eq!(a.canonical_hash().unwrap(), b.canonical_hash().unwrap());
        let lease = a.read(|c| leases::get(c, "acme")).unwrap().unwrap();
        assert!(
            (lease.holder == "a" && lease.expires_ms == 195)
                || (lease.holder == "b" && lease.expires_ms == 250),
            "holder and expiry mixed: {lease:?}"
        );
        let d = a.read(|c| domains::get(c, "example.com")).unwrap().unwrap();
        assert!(d.active_deployment.is_some());
    }

    #[test]
    fn ids_are_unique_hex_and_time_ordered() {
        let a = new_id(1_000);
        let b = new_id(1_000);
        let c = new_id(2_000);
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(a, b);
        assert!(a < c && b < c);
    }

    #[test]
    fn names_normalise() {
        assert_eq!(normalize_name("WWW.Example.COM."), "www.example.com");
        assert_eq!(normalize_name("example.com"), "example.com");
    }

    #[test]
    fn blobs_roundtrip_and_bad_blobs_are_corrupt() {
        let bytes = encode(&vec!["a".to_owned()]).unwrap();
        let back: Vec<String> = decode("t", "c", &bytes).unwrap();
        assert_eq!(back, vec!["a".to_owned()]);
        assert!(matches!(
            decode::<Vec<String>>("t", "c", &[]),
            Err(StoreError::Corrupt {
                table: "t",
                column: "c",
                ..
            })
        ));
    }
}
