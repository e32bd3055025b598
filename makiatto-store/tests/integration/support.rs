//! Shared helpers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use makiatto_store::{Clock, Migration, Options, Replicate, Schema, Store, TableClass};

/// A test schema: a durable key-value table, a durable two-column-key table, and an
/// ephemeral table.
pub(crate) const SCHEMA: Schema = Schema {
    migrations: &[Migration {
        version: 1,
        sql: "CREATE TABLE kv (k TEXT PRIMARY KEY NOT NULL, a TEXT, b INTEGER NOT NULL DEFAULT 0) STRICT;
              CREATE TABLE pair (x INTEGER NOT NULL, y TEXT NOT NULL, v BLOB, PRIMARY KEY (x, y)) STRICT;
              CREATE TABLE ev (id TEXT PRIMARY KEY NOT NULL, note TEXT) STRICT;",
        replicate: &[
            Replicate { table: "kv", class: TableClass::Durable },
            Replicate { table: "pair", class: TableClass::Durable },
            Replicate { table: "ev", class: TableClass::Ephemeral },
        ],
    }],
};

/// A settable clock.
#[derive(Debug)]
pub(crate) struct TestClock(pub(crate) AtomicU64);

impl TestClock {
    pub(crate) fn new(ms: u64) -> Arc<Self> {
        Arc::new(TestClock(AtomicU64::new(ms)))
    }
    pub(crate) fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub(crate) struct Node {
    pub(crate) store: Store,
    pub(crate) _dir: tempfile::TempDir,
}

pub(crate) fn node() -> Node {
    node_with(Options::default())
}

pub(crate) fn node_with(options: Options) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db.sqlite"), &SCHEMA, options).unwrap();
    Node { store, _dir: dir }
}

/// One complete pull of `from` into `to`.
pub(crate) fn pull(to: &Store, from: &Store) {
    let frames = from.serve_sync(&to.sync_request(u64::MAX)).unwrap();
    let done = to.apply_sync(frames).unwrap().expect("SyncDone");
    assert!(done.0, "sync with an unlimited budget is complete");
}

pub(crate) fn exec(s: &Store, sql: &str) {
    s.write(|tx| Ok(tx.execute_batch(sql)?)).unwrap();
}

/// The integer one query returns (a `count(*)`), read from `s`.
pub(crate) fn count(s: &Store, sql: &str) -> i64 {
    s.read(|c| Ok(c.query_row(sql, [], |r| r.get(0))?)).unwrap()
}

pub(crate) fn get_kv(s: &Store, k: &str) -> Option<(Option<String>, i64)> {
    s.read(|c| {
        use rusqlite::OptionalExtension;
        Ok(c.query_row("SELECT a, b FROM kv WHERE k = ?1", [k], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?)
    })
    .unwrap()
}

/// Clock rows of `k` in `kv`, by column: (cid, cv, seq, imp).
pub(crate) fn kv_clocks(s: &Store, k: &str) -> Vec<(String, i64, i64, i64)> {
    s.read(|c| {
        let mut stmt =
            c.prepare("SELECT cid, cv, seq, imp FROM kv__crr_clock WHERE pk = ?1 ORDER BY cid")?;
        let rows = stmt.query_map([makiatto_store::pack(&[k.into()])], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    })
    .unwrap()
}

/// Two stores on the files `a` and `b` in `dir`, opened with `schema` (again after a drop,
/// to migrate them).
pub(crate) fn pair(dir: &std::path::Path, schema: &Schema) -> (Store, Store) {
    let open = |f: &str| Store::open(dir.join(f), schema, Options::default()).unwrap();
    (open("a"), open("b"))
}
