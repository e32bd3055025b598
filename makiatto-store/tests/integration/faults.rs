//! Bad input, schema evolution, snapshots, tombstone GC, buffering and atomicity.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use makiatto_store::{
    Cell, Change, ChunkOutcome, Known, Migration, Options, Replicate, Schema, SiteId, Store,
    StoreError, TableClass, Value, pack,
};

use crate::support::*;

const V1: &[Migration] = SCHEMA.migrations;

const SCHEMA_V2: Schema = Schema {
    migrations: &[
        V1[0],
        Migration {
            version: 2,
            sql: "ALTER TABLE kv ADD COLUMN c TEXT;
                  CREATE TABLE extra (id TEXT PRIMARY KEY NOT NULL, n INTEGER NOT NULL DEFAULT 0) STRICT;",
            replicate: &[Replicate { table: "extra", class: TableClass::Durable }],
        },
    ],
};

fn one_change(store: &Store) -> Change {
    let mut rx = store.subscribe_local();
    exec(store, "INSERT OR REPLACE INTO kv (k, a) VALUES ('m', 'v')");
    (*rx.try_recv().unwrap()).clone()
}

#[test]
fn newer_schema_refuses_to_open_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    drop(Store::open(&path, &SCHEMA_V2, Options::default()).unwrap());
    let err = Store::open(&path, &SCHEMA, Options::default()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 2,
                supported: 1
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade"), "{err}");
}

#[test]
fn another_cluster_id_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    drop(
        Store::open(
            &path,
            &SCHEMA,
            Options {
                cluster_id: "blue".into(),
                ..Options::default()
            },
        )
        .unwrap(),
    );
    let err = Store::open(
        &path,
        &SCHEMA,
        Options {
            cluster_id: "green".into(),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, StoreError::ClusterMismatch { .. }), "{err}");
}

#[test]
fn tables_that_break_the_rules_are_refused() {
    let cases: [(&str, &str); 6] = [
        (
            "CREATE TABLE t (k TEXT PRIMARY KEY NOT NULL, v TEXT)",
            "STRICT",
        ),
        (
            "CREATE TABLE t (k TEXT PRIMARY KEY NOT NULL, v TEXT UNIQUE) STRICT",
            "UNIQUE",
        ),
        (
            "CREATE TABLE t (k TEXT PRIMARY KEY NOT NULL, v TEXT NOT NULL) STRICT",
            "DEFAULT",
        ),
        (
            "CREATE TABLE t (k TEXT PRIMARY KEY NOT NULL, v TEXT REFERENCES t(k)) STRICT",
            "FOREIGN KEY",
        ),
        ("CREATE TABLE t (k TEXT, v TEXT) STRICT", "PRIMARY KEY"),
        (
            // It would rewrite the row after the capture trigger saw it, and run on merges.
            "CREATE TABLE t (k TEXT PRIMARY KEY NOT NULL, v TEXT, n INTEGER NOT NULL DEFAULT 0) STRICT;
             CREATE TRIGGER bump BEFORE UPDATE OF v ON t BEGIN
               UPDATE t SET n = n + 1 WHERE k = NEW.k;
             END;",
            "triggers are not allowed",
        ),
    ];
    for (sql, why) in cases {
        let migrations = vec![Migration {
            version: 1,
            sql: Box::leak(sql.to_owned().into_boxed_str()),
            replicate: &[Replicate {
                table: "t",
                class: TableClass::Durable,
            }],
        }];
        let schema = Schema {
            migrations: Box::leak(migrations.into_boxed_slice()),
        };
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open(dir.path().join("db"), &schema, Options::default()).unwrap_err();
        assert!(
            matches!(&err, StoreError::InvalidTable { reason, .. } if reason.contains(why)),
            "{sql}: {err}"
        );
    }
}

/// Schema changes of replicated tables and triggers come from migrations (which check
/// them); inside a write they are refused, as are writes to the store's own tables and
/// temporary objects that would shadow them, and the write with them.
#[test]
fn a_write_cannot_change_a_replicated_schema_nor_the_stores_tables() {
    let a = node();
    for sql in [
        "CREATE TRIGGER bump AFTER UPDATE OF a ON kv BEGIN UPDATE kv SET b = b + 100 WHERE k = NEW.k; END",
        "CREATE TEMP TRIGGER bump AFTER UPDATE OF a ON kv BEGIN UPDATE kv SET b = b + 100 WHERE k = NEW.k; END",
        "ALTER TABLE kv ADD COLUMN z TEXT",
        "ALTER TABLE kv RENAME COLUMN a TO z",
        "ALTER TABLE kv RENAME TO kv2",
        "DROP TABLE kv",
        "CREATE UNIQUE INDEX kv_a ON kv (a)",
        "DROP TRIGGER kv__crr_ins",
        "DROP INDEX kv__crr_clock_ver",
        "UPDATE kv__crr_clock SET cv = 9",
        "DELETE FROM crr_known",
        "INSERT INTO crr_meta (key, value) VALUES ('self_ver', 0)",
        // Temporary objects that would shadow the store's tables for its own statements.
        "CREATE TEMP TABLE kv__crr_clock (x)",
        "CREATE TEMP TABLE crr_meta (key, value)",
        "CREATE TEMP VIEW kv AS SELECT 1 AS k",
        "CREATE VIRTUAL TABLE temp.kv USING fts5(k)",
    ] {
        let err = a
            .store
            .write(|tx| {
                tx.execute("INSERT INTO kv (k, a) VALUES ('t', 'x')", [])?;
                tx.execute_batch(sql)?;
                Ok(())
            })
            .unwrap_err();
        assert!(err.to_string().contains("not authorized"), "{sql}: {err}");
        assert_eq!(get_kv(&a.store, "t"), None, "the write was rolled back");
    }
    // The embedder's own tables are its business, in the same transaction.
    exec(
        &a.store,
        "INSERT INTO kv (k, a) VALUES ('t', 'x'); UPDATE kv SET a = 'y' WHERE k = 't';
         CREATE TABLE scratch (n INTEGER); CREATE INDEX scratch_n ON scratch (n);
         ALTER TABLE scratch ADD COLUMN m TEXT; DROP TABLE scratch;
         DELETE FROM kv WHERE k = 'none';",
    );
    assert_eq!(get_kv(&a.store, "t"), Some((Some("y".into()), 0)));
}

#[test]
fn malformed_versions_apply_nothing() {
    let a = node();
    let b = node();
    let good = one_change(&a.store);
    let hash = b.store.canonical_hash().unwrap();
    let mut bad_cl = good.clone();
    bad_cl.ver = 2;
    bad_cl
        .cells
        .iter_mut()
        .filter(|c| !c.is_sentinel())
        .for_each(|c| c.cl = 2);
    let mut bad_pk = good.clone();
    bad_pk.ver = 2;
    bad_pk.cells[0].pk = vec![1, 9, 9].into();
    let mut bad_sentinel = good.clone();
    bad_sentinel.ver = 2;
    bad_sentinel
        .cells
        .iter_mut()
        .filter(|c| c.is_sentinel())
        .for_each(|c| c.cv = 7);
    let zero = Change {
        ver: 0,
        ..good.clone()
    };
    for bad in [bad_cl, bad_pk, bad_sentinel, zero] {
        // The good version in the same batch is not applied either.
        let err = b.store.merge(&[good.clone(), bad]).unwrap_err();
        assert!(matches!(err, StoreError::Malformed(_)), "{err}");
        assert_eq!(b.store.canonical_hash().unwrap(), hash);
        assert!(!b.store.is_known(good.site, good.ver));
    }
    // Our own site with a version we never issued means a cloned site id.
    let mut forged = good.clone();
    forged.site = b.store.site();
    forged.ver = 99;
    assert!(matches!(
        b.store.merge(&[forged]),
        Err(StoreError::Malformed(_))
    ));
    b.store.merge(std::slice::from_ref(&good)).unwrap();
    assert!(b.store.is_known(good.site, good.ver));
}

#[test]
fn versions_naming_unknown_columns_wait_for_the_migration() {
    let dir = tempfile::tempdir().unwrap();
    let new = Store::open(dir.path().join("new"), &SCHEMA_V2, Options::default()).unwrap();
    let old_path = dir.path().join("old");
    let old = Store::open(&old_path, &SCHEMA, Options::default()).unwrap();
    exec(
        &new,
        "INSERT INTO kv (k, a, c) VALUES ('r', 'a', 'new column'); INSERT INTO extra (id, n) VALUES ('e', 5);",
    );
    // An insert writes every column, so new nodes' kv inserts name `c` too; a version that
    // touches only tables the old schema has applies at once.
    exec(
        &new,
        "INSERT INTO pair (x, y) VALUES (1, 'old tables only');",
    );
    let frames = new.serve_sync(&old.sync_request(u64::MAX)).unwrap();
    old.apply_sync(frames).unwrap();
    // The version touching the new column and table is deferred, not known; the other
    // one is applied.
    assert_eq!(get_kv(&old, "r"), None);
    let pairs = |s: &Store| count(s, "SELECT count(*) FROM pair");
    assert_eq!(pairs(&old), 1);
    assert!(!old.is_known(new.site(), 1));
    assert!(old.is_known(new.site(), 2));
    drop(old);
    // After the upgrade the deferred version applies on open.
    let old = Store::open(&old_path, &SCHEMA_V2, Options::default()).unwrap();
    assert!(old.is_known(new.site(), 1));
    let c: String = old
        .read(|c| Ok(c.query_row("SELECT c FROM kv WHERE k = 'r'", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(c, "new column");
    pull(&old, &new);
    pull(&new, &old);
    assert_eq!(old.canonical_hash().unwrap(), new.canonical_hash().unwrap());
}

#[test]
fn rows_inserted_before_a_column_is_added_keep_the_clocks_they_had() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path(), &SCHEMA);
    // Two rows in one version: their seqs are adjacent.
    exec(&a, "INSERT INTO kv (k, a) VALUES ('r1', 'x'), ('r2', 'y')");
    pull(&b, &a);
    let before = a.canonical_hash().unwrap();
    assert_eq!(before, b.canonical_hash().unwrap());
    drop((a, b));
    let (a, b) = pair(dir.path(), &SCHEMA_V2);
    // The new column has no clock on either side: it was never written.
    assert_eq!(a.canonical_hash().unwrap(), b.canonical_hash().unwrap());
    // A replica still on the old schema takes the old version whole from the migrated one.
    let old = node();
    pull(&old.store, &a);
    assert!(old.store.is_known(a.site(), 1));
    assert_eq!(get_kv(&old.store, "r1").unwrap().0.as_deref(), Some("x"));
    assert_eq!(old.store.canonical_hash().unwrap(), before);
}

#[test]
fn rows_a_migration_drops_without_a_trigger_replicate_as_deletes() {
    const REBUILT: Schema = Schema {
        migrations: &[
            V1[0],
            Migration {
                version: 2,
                // A rebuilt table: the rows left behind go without any delete trigger.
                sql: "CREATE TABLE kv_new (k TEXT PRIMARY KEY NOT NULL, a TEXT, b INTEGER NOT NULL DEFAULT 0) STRICT;
                      INSERT INTO kv_new SELECT * FROM kv WHERE k <> 'gone';
                      DROP TABLE kv;
                      ALTER TABLE kv_new RENAME TO kv;",
                replicate: &[],
            },
        ],
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a");
    let a = Store::open(&path, &SCHEMA, Options::default()).unwrap();
    exec(
        &a,
        "INSERT INTO kv (k, a) VALUES ('gone', 'x'), ('kept', 'k')",
    );
    exec(&a, "UPDATE kv SET a = 'y', b = 2 WHERE k = 'gone'");
    let b = node();
    pull(&b.store, &a);
    drop(a);
    let a = Store::open(&path, &REBUILT, Options::default()).unwrap();
    pull(&b.store, &a);
    assert_eq!(get_kv(&b.store, "gone"), None);
    assert_eq!(get_kv(&b.store, "kept"), Some((Some("k".into()), 0)));
    // Inserted again: a new generation whose version carries each column once.
    exec(&a, "INSERT INTO kv (k, a) VALUES ('gone', 'z')");
    pull(&b.store, &a);
    assert_eq!(get_kv(&b.store, "gone"), Some((Some("z".into()), 0)));
    assert_eq!(
        a.canonical_hash().unwrap(),
        b.store.canonical_hash().unwrap()
    );
    let cells = a.local_version(4).unwrap().cells;
    let mut cids: Vec<_> = cells.iter().map(|c| &*c.cid).collect();
    cids.sort_unstable();
    assert_eq!(cids, ["-1", "a", "b"]);
}

/// A rebuilt table's copy may hold rows the old table did not have: with no sentinel,
/// their later updates named causal length 0 and every peer refused those versions.
/// They now replicate like an insert, and a key column named like a clock column (`pk`)
/// is no trouble.
#[test]
fn rows_a_migration_adds_to_a_rebuilt_table_replicate_like_an_insert() {
    const ODD: Schema = Schema {
        migrations: &[
            Migration {
                version: 1,
                sql: "CREATE TABLE odd (pk TEXT PRIMARY KEY NOT NULL, cid TEXT) STRICT;",
                replicate: &[Replicate {
                    table: "odd",
                    class: TableClass::Durable,
                }],
            },
            then(
                "CREATE TABLE odd_new (pk TEXT PRIMARY KEY NOT NULL, cid TEXT) STRICT;
                      INSERT INTO odd_new SELECT * FROM odd;
                      INSERT INTO odd_new VALUES ('seeded', 'by the migration');
                      DROP TABLE odd;
                      ALTER TABLE odd_new RENAME TO odd;",
            ),
        ],
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path(), &ODD);
    exec(
        &a,
        "UPDATE odd SET cid = 'changed on a' WHERE pk = 'seeded'",
    );
    let fresh = Store::open(
        dir.path().join("fresh"),
        &SCHEMA_EMPTY_ODD,
        Options::default(),
    )
    .unwrap();
    // b ran the same migration; fresh never had the row at all.
    pull(&b, &a);
    pull(&fresh, &a);
    let cid = |s: &Store| -> Option<String> {
        s.read(|c| {
            Ok(rusqlite::OptionalExtension::optional(c.query_row(
                "SELECT cid FROM odd WHERE pk = 'seeded'",
                [],
                |r| r.get(0),
            ))?)
        })
        .unwrap()
    };
    assert_eq!(cid(&b).as_deref(), Some("changed on a"));
    assert_eq!(cid(&fresh).as_deref(), Some("changed on a"));
    assert_eq!(a.canonical_hash().unwrap(), b.canonical_hash().unwrap());
}

/// [`ODD`]'s first migration alone.
const SCHEMA_EMPTY_ODD: Schema = Schema {
    migrations: &[Migration {
        version: 1,
        sql: "CREATE TABLE odd (pk TEXT PRIMARY KEY NOT NULL, cid TEXT) STRICT;",
        replicate: &[Replicate {
            table: "odd",
            class: TableClass::Durable,
        }],
    }],
};

#[test]
fn rows_present_before_replication_replicate_like_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE pre (k TEXT PRIMARY KEY NOT NULL, v TEXT) STRICT; INSERT INTO pre VALUES ('x', 'seed');").unwrap();
    }
    let schema = Schema {
        migrations: &[Migration {
            version: 1,
            sql: "CREATE TABLE IF NOT EXISTS pre (k TEXT PRIMARY KEY NOT NULL, v TEXT) STRICT;",
            replicate: &[Replicate {
                table: "pre",
                class: TableClass::Durable,
            }],
        }],
    };
    let a = Store::open(&path, &schema, Options::default()).unwrap();
    let b = Store::open(dir.path().join("b"), &schema, Options::default()).unwrap();
    assert!(a.is_known(a.site(), 1));
    pull(&b, &a);
    let v: String = b
        .read(|c| Ok(c.query_row("SELECT v FROM pre WHERE k = 'x'", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(v, "seed");
}

#[test]
fn chunks_buffer_until_complete_across_a_restart() {
    let a = node();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b");
    let mut rx = a.store.subscribe_local();
    exec(
        &a.store,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40)
         INSERT INTO pair (x, y, v) SELECT i, 'big', zeroblob(500) FROM n",
    );
    let change = rx.try_recv().unwrap();
    let chunks = change.to_chunks(4096, 3);
    assert!(chunks.len() >= 4);
    let b = Store::open(&path, &SCHEMA, Options::default()).unwrap();
    // Out of order, with a duplicate, and a restart half way.
    let mut order: Vec<usize> = (0..chunks.len()).rev().collect();
    let last = order.pop().unwrap();
    assert_eq!(
        b.receive_chunk(&chunks[order[0]]).unwrap(),
        ChunkOutcome::Buffered
    );
    assert_eq!(
        b.receive_chunk(&chunks[order[0]]).unwrap(),
        ChunkOutcome::Duplicate
    );
    drop(b);
    let b = Store::open(&path, &SCHEMA, Options::default()).unwrap();
    for &i in &order[1..] {
        assert_eq!(b.receive_chunk(&chunks[i]).unwrap(), ChunkOutcome::Buffered);
    }
    let n = |s: &Store| count(s, "SELECT count(*) FROM pair");
    assert_eq!(n(&b), 0, "nothing visible before the version is whole");
    assert_eq!(
        b.receive_chunk(&chunks[last]).unwrap(),
        ChunkOutcome::Applied
    );
    assert_eq!(n(&b), 40);
    assert_eq!(
        b.receive_chunk(&chunks[last]).unwrap(),
        ChunkOutcome::Duplicate
    );
    let buffered = count(&b, "SELECT count(*) FROM crr_buffer");
    assert_eq!(buffered, 0);
    // A chunk whose cells lie outside its seq range is refused.
    let mut bad = chunks[0].clone();
    bad.ver += 1;
    bad.seq_hi = 0;
    bad.cells.push(Cell {
        table: "kv".into(),
        pk: pack(&["z".into()]).into(),
        cid: "a".into(),
        val: Value::Null,
        cv: 1,
        cl: 1,
        seq: 9,
    });
    assert!(matches!(
        b.receive_chunk(&bad),
        Err(StoreError::Malformed(_))
    ));
}

#[test]
fn small_budgets_still_complete_over_several_sessions() {
    let a = node();
    let b = node();
    for i in 0..50 {
        a.store
            .write(|tx| {
                Ok(tx.execute(
                    "INSERT INTO kv (k, a) VALUES (?1, 'some value')",
                    [format!("k{i}")],
                )?)
            })
            .unwrap();
    }
    exec(&a.store, "DELETE FROM kv WHERE k IN ('k1', 'k2')");
    let mut sessions = 0;
    loop {
        sessions += 1;
        let frames = a.store.serve_sync(&b.store.sync_request(300)).unwrap();
        let (complete, _) = b.store.apply_sync(frames).unwrap().unwrap();
        if complete {
            break;
        }
        assert!(sessions < 100);
    }
    assert!(
        sessions > 3,
        "budget cut the answer into sessions ({sessions})"
    );
    assert_eq!(
        a.store.canonical_hash().unwrap(),
        b.store.canonical_hash().unwrap()
    );
    assert_eq!(a.store.known(), b.store.known());
}

#[test]
fn snapshot_bootstrap_mints_a_new_site_and_syncs_the_delta() {
    let a = node();
    exec(
        &a.store,
        "INSERT INTO kv (k, a) VALUES ('x', '1'), ('y', '2'); DELETE FROM kv WHERE k = 'y';",
    );
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.db");
    a.store.snapshot(&snap).unwrap();
    exec(
        &a.store,
        "INSERT INTO kv (k, a) VALUES ('after', 'snapshot')",
    );
    let c = Store::open(&snap, &SCHEMA, Options::default()).unwrap();
    assert_ne!(c.site(), a.store.site());
    assert_eq!(get_kv(&c, "x").unwrap().0.as_deref(), Some("1"));
    assert!(c.is_known(a.store.site(), 1));
    assert!(!c.is_known(c.site(), 1));
    exec(&c, "INSERT INTO kv (k, a) VALUES ('from c', 'new')");
    assert_eq!(c.known().0[&c.site()], vec![(1, 1)]);
    pull(&c, &a.store);
    pull(&a.store, &c);
    assert_eq!(
        a.store.canonical_hash().unwrap(),
        c.canonical_hash().unwrap()
    );
    assert!(get_kv(&c, "after").is_some() && get_kv(&a.store, "from c").is_some());
}

#[test]
fn a_store_put_back_from_a_backup_continues_under_a_new_site_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let backup = dir.path().join("backup");
    std::fs::create_dir(&backup).unwrap();
    let files = ["db", "db-wal", "db-shm"];
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        for f in files {
            let _ = std::fs::remove_file(to.join(f));
            if from.join(f).exists() {
                std::fs::copy(from.join(f), to.join(f)).unwrap();
            }
        }
    };
    let b = node();
    let a = Store::open(&db, &SCHEMA, Options::default()).unwrap();
    let site = a.site();
    exec(&a, "INSERT INTO kv (k, a) VALUES ('before', 'backup')");
    pull(&b.store, &a);
    drop(a);
    copy(dir.path(), &backup);
    // The upgraded replica writes version 2 under the same site, and B learns it.
    let a = Store::open(&db, &SCHEMA, Options::default()).unwrap();
    exec(&a, "INSERT INTO kv (k, a) VALUES ('during', 'upgrade')");
    pull(&b.store, &a);
    drop(a);
    // Rolled back: the backup goes back and gives up its identity.
    copy(&backup, dir.path());
    Store::retire_identity(&db).unwrap();
    Store::retire_identity(&db).unwrap();
    let a = Store::open(&db, &SCHEMA, Options::default()).unwrap();
    assert_ne!(a.site(), site);
    assert!(a.is_known(site, 1) && !a.is_known(site, 2));
    // Its next write is not a second, different version 2 of the old site.
    exec(&a, "INSERT INTO kv (k, a) VALUES ('after', 'rollback')");
    pull(&b.store, &a);
    pull(&a, &b.store);
    assert_eq!(
        a.canonical_hash().unwrap(),
        b.store.canonical_hash().unwrap()
    );
    for k in ["before", "during", "after"] {
        assert!(
            get_kv(&a, k).is_some() && get_kv(&b.store, k).is_some(),
            "{k}"
        );
    }
}

#[test]
fn ephemeral_tombstones_are_pruned_only_when_every_member_has_them() {
    let clock = TestClock::new(1_800_000_000_000);
    let opts = || Options {
        clock: clock.clone(),
        ..Options::default()
    };
    let a = node_with(opts());
    let b = node_with(opts());
    exec(
        &a.store,
        "INSERT INTO ev (id, note) VALUES ('e1', 'x'), ('e2', 'y')",
    );
    exec(&a.store, "DELETE FROM ev WHERE id = 'e1'");
    let tombstones = |s: &Store| {
        count(
            s,
            "SELECT count(*) FROM ev__crr_clock WHERE cid = '-1' AND cv % 2 = 0",
        )
    };
    assert_eq!(tombstones(&a.store), 1);
    clock.set(1_800_000_000_000 + 8 * 86_400_000);
    // B has not seen the delete yet: nothing is pruned.
    let members = [a.store.known(), b.store.known()];
    assert_eq!(a.store.gc_tombstones(7 * 86_400_000, &members).unwrap(), 0);
    pull(&b.store, &a.store);
    // Too young: nothing pruned.
    let members = [a.store.known(), b.store.known()];
    assert_eq!(a.store.gc_tombstones(30 * 86_400_000, &members).unwrap(), 0);
    assert_eq!(a.store.gc_tombstones(7 * 86_400_000, &members).unwrap(), 1);
    assert_eq!(tombstones(&a.store), 0);
    // A fresh node syncing from the pruned replica never sees the row come back.
    let c = node_with(opts());
    pull(&c.store, &a.store);
    let n = count(&c.store, "SELECT count(*) FROM ev");
    assert_eq!(n, 1);
    assert!(c.store.known().is_superset(&a.store.known()));
    // Durable tables keep their tombstones.
    exec(
        &a.store,
        "INSERT INTO kv (k) VALUES ('d'); DELETE FROM kv WHERE k = 'd';",
    );
    clock.set(1_800_000_000_000 + 100 * 86_400_000);
    let members = [a.store.known()];
    assert_eq!(a.store.gc_tombstones(0, &members).unwrap(), 0);
    let _ = Known::default();
    let _ = SiteId([0; 16]);
}

#[test]
fn readers_never_see_half_of_a_version() {
    let a = node();
    let b = Arc::new(node());
    let mut rx = a.store.subscribe_local();
    let mut changes = Vec::new();
    for i in 0..60 {
        let tag = format!("t{i}");
        a.store
            .write(|tx| {
                for x in 0..8 {
                    tx.execute(
                        "INSERT INTO pair (x, y) VALUES (?1, ?2)",
                        rusqlite::params![x, &tag],
                    )?;
                }
                Ok(())
            })
            .unwrap();
        changes.push((*rx.try_recv().unwrap()).clone());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (b, stop) = (b.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut checks = 0;
            while !stop.load(Ordering::Relaxed) || checks == 0 {
                let bad = count(
                    &b.store,
                    "SELECT count(*) FROM (SELECT y FROM pair GROUP BY y HAVING count(*) <> 8)",
                );
                assert_eq!(bad, 0, "a reader saw part of a version");
                checks += 1;
            }
            checks
        })
    };
    for c in &changes {
        b.store.merge(std::slice::from_ref(c)).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(
        a.store.canonical_hash().unwrap(),
        b.store.canonical_hash().unwrap()
    );
}

#[test]
fn a_column_added_after_an_update_keeps_the_clocks_rows_had() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path(), &SCHEMA);
    exec(&a, "INSERT INTO kv (k, a, b) VALUES ('r', 'x', 1)");
    exec(&a, "UPDATE kv SET b = 2 WHERE k = 'r'");
    // Column b has its own clock row; a is still implicit.
    assert_eq!(
        kv_clocks(&a, "r"),
        [("-1".into(), 1, 0, 1), ("b".into(), 2, 0, 0)]
    );
    // The insert's version now carries the sentinel and a alone (b's cell was superseded).
    let v1 = a.local_version(1).unwrap();
    let cids: Vec<(&str, u32)> = v1.cells.iter().map(|c| (&*c.cid, c.seq)).collect();
    assert_eq!(cids, [("-1", 0), ("a", 1)]);
    pull(&b, &a);
    drop((a, b));
    let (a, b) = pair(dir.path(), &SCHEMA_V2);
    // The migration wrote a's implicit clock out with the old column list; c has none.
    assert_eq!(
        kv_clocks(&a, "r"),
        [
            ("-1".into(), 1, 0, 0),
            ("a".into(), 1, 1, 0),
            ("b".into(), 2, 0, 0)
        ]
    );
    assert_eq!(a.canonical_hash().unwrap(), b.canonical_hash().unwrap());
}

#[test]
fn a_table_listed_again_by_a_later_migration_keeps_its_implicit_clocks() {
    const RELISTED: Schema = Schema {
        migrations: &[
            V1[0],
            Migration {
                version: 2,
                sql: "",
                replicate: &[Replicate {
                    table: "kv",
                    class: TableClass::Durable,
                }],
            },
        ],
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path(), &SCHEMA);
    exec(
        &a,
        "INSERT INTO kv (k, a, b) VALUES ('r1', 'x', 1), ('r2', 'y', 2)",
    );
    exec(&a, "UPDATE kv SET b = 3 WHERE k = 'r2'");
    pull(&b, &a);
    drop((a, b));
    let (a, b) = pair(dir.path(), &RELISTED);
    assert_eq!(a.canonical_hash().unwrap(), b.canonical_hash().unwrap());
    pull(&b, &a);
    pull(&a, &b);
    assert_eq!(a.canonical_hash().unwrap(), b.canonical_hash().unwrap());
}

/// The table the migration tests below start from: `m (k, a, b)`, replicated.
const M1: Migration = Migration {
    version: 1,
    sql: "CREATE TABLE m (k TEXT PRIMARY KEY NOT NULL, a TEXT, b TEXT) STRICT;",
    replicate: &[Replicate {
        table: "m",
        class: TableClass::Durable,
    }],
};

/// [`M1`] alone: a replica that has not migrated.
const S1: Schema = Schema { migrations: &[M1] };

/// Migration 2, replicating no new table.
const fn then(sql: &'static str) -> Migration {
    Migration {
        version: 2,
        sql,
        replicate: &[],
    }
}

/// The store at `path` written by `before` under [`S1`], then opened with `s2` (migrated),
/// with what `before` returned.
fn migrated<R>(
    path: &std::path::Path,
    s2: &Schema,
    before: impl FnOnce(&Store) -> R,
) -> (Store, R) {
    let r = before(&Store::open(path, &S1, Options::default()).unwrap());
    (Store::open(path, s2, Options::default()).unwrap(), r)
}

/// Column `b` of row `k` of table `m`.
fn m_b(st: &Store, k: &str) -> Option<String> {
    st.read(|c| Ok(c.query_row("SELECT b FROM m WHERE k = ?1", [k], |r| r.get(0))?))
        .unwrap()
}

/// A column a migration drops leaves no clocks behind, implicit or written out: a replica
/// that synced after the migration must hold the same state as one that had the column.
#[test]
fn a_column_a_migration_drops_leaves_no_clocks_behind() {
    const DROP: Schema = Schema {
        migrations: &[M1, then("ALTER TABLE m DROP COLUMN a;")],
    };
    const REBUILD: Schema = Schema {
        migrations: &[
            M1,
            then(
                "CREATE TABLE m_new (k TEXT PRIMARY KEY NOT NULL, b TEXT) STRICT;
                      INSERT INTO m_new SELECT k, b FROM m;
                      DROP TABLE m;
                      ALTER TABLE m_new RENAME TO m;",
            ),
        ],
    };
    for (drop_a, s2) in [("drop column", &DROP), ("rebuild", &REBUILD)] {
        let dir = tempfile::tempdir().unwrap();
        let (s, ()) = migrated(&dir.path().join("db"), s2, |s| {
            // One row with implicit clocks, one whose `a` has a clock row of its own.
            exec(s, "INSERT INTO m VALUES ('implicit', 'a1', 'b1')");
            exec(s, "INSERT INTO m VALUES ('explicit', 'a2', 'b2')");
            exec(s, "UPDATE m SET a = 'a3' WHERE k = 'explicit'");
        });
        let clocks = count(&s, "SELECT count(*) FROM m__crr_clock WHERE cid = 'a'");
        assert_eq!(clocks, 0, "{drop_a}");
        let fresh = Store::open(dir.path().join("fresh"), s2, Options::default()).unwrap();
        pull(&fresh, &s);
        assert_eq!(
            s.canonical_hash().unwrap(),
            fresh.canonical_hash().unwrap(),
            "{drop_a}"
        );
    }
}

/// A migration runs without the capture triggers; afterwards the store records what it
/// wrote from the tables: a row it adds replicates with every column it has then (one
/// added by the same migration too), a key it brings back from a tombstone like a
/// re-insert, a row it deletes like a delete.
#[test]
fn what_a_migration_writes_replicates_like_a_write() {
    const S2: Schema = Schema {
        migrations: &[
            M1,
            then(
                "ALTER TABLE m ADD COLUMN c TEXT;
                      INSERT INTO m (k, a, b, c) VALUES ('new', 'a', 'b', 'c');
                      INSERT INTO m (k, c) VALUES ('dead', 'back');
                      DELETE FROM m WHERE k = 'gone';",
            ),
        ],
    };
    let dir = tempfile::tempdir().unwrap();
    let (s, before) = migrated(&dir.path().join("db"), &S2, |s| {
        exec(s, "INSERT INTO m VALUES ('gone', 'a1', 'b1')");
        exec(s, "INSERT INTO m VALUES ('dead', 'a2', 'b2')");
        exec(s, "DELETE FROM m WHERE k = 'dead'");
        s.known()
    });
    // The migration's version: the one version this replica made since.
    let own = |k: &Known| {
        k.0.get(&s.site())
            .and_then(|r| r.iter().map(|&(_, hi)| hi).max())
            .unwrap_or(0)
    };
    let ver = own(&s.known());
    assert_eq!(ver, own(&before) + 1);
    let cells = s.local_version(ver).unwrap().cells;
    let has = |k: &str, cid: &str| {
        cells
            .iter()
            .any(|c| *c.pk == *pack(&[Value::Text(k.into())]) && &*c.cid == cid)
    };
    assert!(has("new", "c"), "{cells:?}");
    assert!(has("dead", "c"), "{cells:?}");
    assert!(has("gone", "-1"), "{cells:?}");
    // A replica that never had the rows, which ran the same migration on its own.
    let fresh = Store::open(dir.path().join("fresh"), &S2, Options::default()).unwrap();
    pull(&fresh, &s);
    pull(&s, &fresh);
    let rows = |st: &Store| {
        st.read(|c| {
            let mut q = c.prepare("SELECT k, a, b, c FROM m ORDER BY k")?;
            let v: Vec<[Option<String>; 4]> = q
                .query_map([], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(v)
        })
        .unwrap()
    };
    let want = |k: &str, a: Option<&str>, b: Option<&str>, c: &str| {
        [Some(k), a, b, Some(c)].map(|v| v.map(str::to_owned))
    };
    assert_eq!(
        rows(&s),
        vec![
            want("dead", None, None, "back"),
            want("new", Some("a"), Some("b"), "c")
        ]
    );
    assert_eq!(rows(&fresh), rows(&s));
    assert_eq!(s.canonical_hash().unwrap(), fresh.canonical_hash().unwrap());
}

/// Rows a migration writes in place replicate: every column of each, in the migration's
/// version, whether it updates them, replaces them, deletes and re-inserts them, or
/// updates them after rebuilding the table; and even when the same migration drops a
/// column (which the capture triggers, which name every column, would make SQLite refuse).
#[test]
fn rows_a_migration_writes_in_place_replicate() {
    const S2: Schema = Schema {
        migrations: &[
            M1,
            then(
                "ALTER TABLE m DROP COLUMN a;
                      UPDATE m SET b = 'updated' WHERE k = 'x';
                      REPLACE INTO m (k, b) VALUES ('y', 'replaced');
                      DELETE FROM m WHERE k = 'z';
                      INSERT INTO m (k, b) VALUES ('z', 'reinserted');
                      CREATE TABLE m_new (k TEXT PRIMARY KEY NOT NULL, b TEXT) STRICT;
                      INSERT INTO m_new SELECT k, b FROM m;
                      DROP TABLE m;
                      ALTER TABLE m_new RENAME TO m;
                      UPDATE m SET b = 'after the rebuild' WHERE k = 'w';",
            ),
        ],
    };
    let dir = tempfile::tempdir().unwrap();
    // A replica that has not migrated yet.
    let old = Store::open(dir.path().join("old"), &S1, Options::default()).unwrap();
    let (s, ()) = migrated(&dir.path().join("db"), &S2, |s| {
        for k in ["v", "w", "x", "y", "z"] {
            s.write(|tx| {
                let (a, b) = (["a-", k].concat(), ["b-", k].concat());
                Ok(tx.execute("INSERT INTO m VALUES (?1, ?2, ?3)", [k, &a, &b])?)
            })
            .unwrap();
        }
        pull(&old, s);
    });
    pull(&old, &s);
    for (k, want) in [
        ("v", "b-v"),
        ("w", "after the rebuild"),
        ("x", "updated"),
        ("y", "replaced"),
        ("z", "reinserted"),
    ] {
        assert_eq!(m_b(&s, k).as_deref(), Some(want), "{k} here");
        assert_eq!(m_b(&old, k).as_deref(), Some(want), "{k} on the replica");
    }
    // Only the rows written are in the migration's version.
    let ver = s.known().0[&s.site()]
        .iter()
        .map(|&(_, hi)| hi)
        .max()
        .unwrap();
    let cells = s.local_version(ver).unwrap().cells;
    let keys: std::collections::BTreeSet<Vec<u8>> = cells.iter().map(|c| c.pk.to_vec()).collect();
    let want: std::collections::BTreeSet<Vec<u8>> = ["w", "x", "y", "z"]
        .iter()
        .map(|k| pack(&[Value::Text((*k).into())]))
        .collect();
    assert_eq!(keys, want, "{cells:?}");
    assert!(cells.iter().all(|c| &*c.cid == "b"), "{cells:?}");
}

/// A rebuild that first renames the old table away (`ALTER TABLE m RENAME TO m_old`, which
/// takes triggers along) still records what the migration then writes to the new `m`.
#[test]
fn a_rebuild_that_renames_the_old_table_first_records_writes_to_the_new_one() {
    const S2: Schema = Schema {
        migrations: &[
            M1,
            then(
                "ALTER TABLE m RENAME TO m_old;
                      CREATE TABLE m (k TEXT PRIMARY KEY NOT NULL, b TEXT) STRICT;
                      INSERT INTO m SELECT k, b FROM m_old;
                      UPDATE m SET b = 'updated' WHERE k = 'w';
                      DROP TABLE m_old;",
            ),
        ],
    };
    let dir = tempfile::tempdir().unwrap();
    let old = Store::open(dir.path().join("old"), &S1, Options::default()).unwrap();
    let (s, ()) = migrated(&dir.path().join("db"), &S2, |s| {
        exec(
            s,
            "INSERT INTO m VALUES ('v', 'a-v', 'b-v'), ('w', 'a-w', 'b-w')",
        );
        pull(&old, s);
    });
    pull(&old, &s);
    assert_eq!(m_b(&old, "w").as_deref(), Some("updated"));
    assert_eq!(m_b(&old, "v").as_deref(), Some("b-v"));
    assert_eq!(m_b(&s, "v").as_deref(), Some("b-v"));
}

/// A column a migration renames keeps its values on replicas that sync later: they were
/// written under the old name, so the migration records them under the new one. A column
/// added with its default gets no clocks (every replica computes the same value).
#[test]
fn a_renamed_column_reaches_replicas_that_sync_later() {
    const S2: Schema = Schema {
        migrations: &[
            M1,
            then(
                "ALTER TABLE m RENAME COLUMN a TO c;
                      ALTER TABLE m ADD COLUMN d TEXT NOT NULL DEFAULT 'dd';",
            ),
        ],
    };
    let dir = tempfile::tempdir().unwrap();
    let (s, ()) = migrated(&dir.path().join("db"), &S2, |s| {
        exec(
            s,
            "INSERT INTO m VALUES ('x', 'a-x', 'b-x'), ('n', NULL, 'b-n')",
        );
        exec(s, "UPDATE m SET a = 'a-x2' WHERE k = 'x'");
    });
    let fresh = Store::open(dir.path().join("fresh"), &S2, Options::default()).unwrap();
    pull(&fresh, &s);
    let row = |st: &Store, k: &str| -> (Option<String>, String, String) {
        st.read(|c| {
            Ok(c.query_row("SELECT c, b, d FROM m WHERE k = ?1", [k], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?)
        })
        .unwrap()
    };
    assert_eq!(
        row(&fresh, "x"),
        (Some("a-x2".into()), "b-x".into(), "dd".into())
    );
    assert_eq!(row(&fresh, "n"), (None, "b-n".into(), "dd".into()));
    assert_eq!(s.canonical_hash().unwrap(), fresh.canonical_hash().unwrap());
    let d_clocks = count(&s, "SELECT count(*) FROM m__crr_clock WHERE cid = 'd'");
    assert_eq!(d_clocks, 0);
}

/// A migration that fails leaves the ones before it recorded: the columns they left are
/// the store's record of the table, so the next open does not take their changes for
/// changes made outside a migration (and rewrite the clocks of rows they inserted).
#[test]
fn migrations_before_one_that_fails_stay_recorded() {
    const M2: Migration = Migration {
        version: 2,
        // A rebuild without `a` that adds a row: the new table has no trigger, so the row
        // is found afterwards and keeps implicit clocks (for `b` alone).
        sql: "CREATE TABLE m_new (k TEXT PRIMARY KEY NOT NULL, b TEXT) STRICT;
              INSERT INTO m_new SELECT k, b FROM m;
              INSERT INTO m_new VALUES ('new', 'b');
              DROP TABLE m;
              ALTER TABLE m_new RENAME TO m;",
        replicate: &[],
    };
    const BROKEN: Schema = Schema {
        migrations: &[
            M1,
            M2,
            Migration {
                version: 3,
                sql: "this is not SQL",
                replicate: &[],
            },
        ],
    };
    const FIXED: Schema = Schema {
        migrations: &[
            M1,
            M2,
            Migration {
                version: 3,
                sql: "CREATE TABLE unrelated (x INTEGER);",
                replicate: &[],
            },
        ],
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    drop(Store::open(&path, &S1, Options::default()).unwrap());
    assert!(Store::open(&path, &BROKEN, Options::default()).is_err());
    let s = Store::open(&path, &FIXED, Options::default()).unwrap();
    // The row migration 2 inserted: its sentinel, then `b`, the one column it had.
    let new = pack(&[Value::Text("new".into())]);
    let ver = s.known().0[&s.site()]
        .iter()
        .map(|&(_, hi)| hi)
        .max()
        .unwrap();
    let cells = s.local_version(ver).unwrap().cells;
    let seqs: Vec<(&str, u32)> = cells
        .iter()
        .filter(|c| *c.pk == *new)
        .map(|c| (&*c.cid, c.seq))
        .collect();
    let base = seqs.first().map_or(0, |&(_, seq)| seq);
    assert_eq!(seqs, [("-1", base), ("b", base + 1)], "{cells:?}");
}

/// Another connection that changes a replicated table's columns while the store is open
/// stops its writes (the captures and triggers describe the table as it was) until the
/// store is opened again, which reconciles the change as a migration would: the rows'
/// implicit clocks keep standing for the columns they were written with. Another schema
/// change (a table of the embedder's) is fine.
#[test]
fn a_column_another_connection_adds_is_reconciled_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = Store::open(&path, &SCHEMA, Options::default()).unwrap();
    exec(&store, "INSERT INTO kv (k, a, b) VALUES ('x', 'ax', 1)");
    let written = store.local_version(1).unwrap().cells;
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("CREATE TABLE notes (n TEXT)").unwrap();
    exec(&store, "INSERT INTO kv (k, a) VALUES ('y', 'ay')");
    other
        .execute_batch("ALTER TABLE kv ADD COLUMN c TEXT")
        .unwrap();
    let err = store
        .write(|tx| Ok(tx.execute("INSERT INTO kv (k, a) VALUES ('z', 'az')", [])?))
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::SchemaChanged { table, .. } if table == "kv"),
        "{err}"
    );
    assert!(err.to_string().contains("reopen"), "{err}");
    drop(store);
    let store = Store::open(&path, &SCHEMA, Options::default()).unwrap();
    assert_eq!(store.local_version(1).unwrap().cells, written);
    exec(&store, "INSERT INTO kv (k, a, c) VALUES ('z', 'az', 'cz')");
    // A replica that synced after the change holds the same state.
    let fresh = Store::open(dir.path().join("fresh"), &SCHEMA, Options::default()).unwrap();
    let other = rusqlite::Connection::open(dir.path().join("fresh")).unwrap();
    other
        .execute_batch("ALTER TABLE kv ADD COLUMN c TEXT")
        .unwrap();
    drop((fresh, other));
    let fresh = Store::open(dir.path().join("fresh"), &SCHEMA, Options::default()).unwrap();
    pull(&fresh, &store);
    assert_eq!(
        store.canonical_hash().unwrap(),
        fresh.canonical_hash().unwrap()
    );
}

/// Writes another connection makes after dropping the capture triggers are not captured;
/// the next open finds them (rows without a sentinel, live sentinels without a row) and
/// records them like a migration's.
#[test]
fn writes_another_connection_made_without_the_triggers_replicate_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let (store, peer) = (
        Store::open(&path, &SCHEMA, Options::default()).unwrap(),
        Store::open(dir.path().join("peer"), &SCHEMA, Options::default()).unwrap(),
    );
    exec(
        &store,
        "INSERT INTO kv (k, a) VALUES ('x', 'ax'), ('y', 'ay')",
    );
    pull(&peer, &store);
    let other = rusqlite::Connection::open(&path).unwrap();
    let triggers: Vec<String> = other
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'kv'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert!(!triggers.is_empty());
    for t in &triggers {
        other
            .execute_batch(&format!("DROP TRIGGER \"{t}\""))
            .unwrap();
    }
    // While the store is open, its writes stop.
    let err = store
        .write(|tx| Ok(tx.execute("INSERT INTO kv (k) VALUES ('w')", [])?))
        .unwrap_err();
    assert!(matches!(err, StoreError::SchemaChanged { .. }), "{err}");
    other
        .execute_batch("INSERT INTO kv (k, a) VALUES ('z', 'az'); DELETE FROM kv WHERE k = 'y';")
        .unwrap();
    drop((store, other));
    let store = Store::open(&path, &SCHEMA, Options::default()).unwrap();
    pull(&peer, &store);
    assert_eq!(get_kv(&peer, "z"), Some((Some("az".into()), 0)));
    assert_eq!(get_kv(&peer, "y"), None);
    assert_eq!(get_kv(&peer, "x"), Some((Some("ax".into()), 0)));
    assert_eq!(
        store.canonical_hash().unwrap(),
        peer.canonical_hash().unwrap()
    );
}

/// `kv` ([`V1`]), then `m` as in [`M1`], both replicated.
const KV_M: [Migration; 2] = [
    V1[0],
    Migration {
        version: 2,
        sql: M1.sql,
        replicate: M1.replicate,
    },
];

/// A migration that drops a replicated table, or renames it away, stops its replication:
/// the store opens (it used to fail, looking for the table), the table's clocks go, and a
/// version from a replica that has not run the migration yet is merged without its cells
/// of that table, instead of waiting for a table that will not come. No later migration
/// may replicate that name again.
#[test]
fn a_table_a_migration_drops_stops_replicating() {
    const OLD: Schema = Schema { migrations: &KV_M };
    const fn third(sql: &'static str) -> Migration {
        Migration {
            version: 3,
            sql,
            replicate: &[],
        }
    }
    const DROPPED: Schema = Schema {
        migrations: &[KV_M[0], KV_M[1], third("DROP TABLE m;")],
    };
    const RENAMED: Schema = Schema {
        migrations: &[KV_M[0], KV_M[1], third("ALTER TABLE m RENAME TO m_old;")],
    };
    const AGAIN: Schema = Schema {
        migrations: &[
            KV_M[0],
            KV_M[1],
            third("DROP TABLE m;"),
            Migration {
                version: 4,
                sql: "CREATE TABLE m (k TEXT PRIMARY KEY NOT NULL, c INTEGER) STRICT;",
                replicate: M1.replicate,
            },
        ],
    };
    let both = "INSERT INTO kv (k, a) VALUES ('k1', 'x'); INSERT INTO m VALUES ('m1', 'a', 'b');";
    for (what, new) in [("drop", &DROPPED), ("rename", &RENAMED)] {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = pair(dir.path(), &OLD);
        exec(&b, both);
        drop(b);
        let b = Store::open(dir.path().join("b"), new, Options::default()).unwrap();
        assert_eq!(
            b.tables().collect::<Vec<_>>(),
            ["ev", "kv", "pair"],
            "{what}"
        );
        let clock_tables = count(
            &b,
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'm\\_\\_crr%' ESCAPE '\\'",
        );
        assert_eq!(clock_tables, 0, "{what}");
        // `a` has not migrated: one version with cells of both tables, one of `m` alone.
        exec(
            &a,
            "INSERT INTO kv (k, a) VALUES ('k2', 'y'); INSERT INTO m VALUES ('m2', 'a', 'b');",
        );
        exec(&a, "UPDATE m SET b = 'c' WHERE k = 'm2'");
        pull(&b, &a);
        assert_eq!(
            get_kv(&b, "k2").map(|r| r.0),
            Some(Some("y".into())),
            "{what}"
        );
        let all_known = |b: &Store| {
            let theirs = &a.known().0[&a.site()];
            b.known().0.get(&a.site()) == Some(theirs)
        };
        assert!(all_known(&b), "{what}: {:?} vs {:?}", b.known(), a.known());
        // Still so after a reopen, for the versions that come next.
        drop(b);
        let b = Store::open(dir.path().join("b"), new, Options::default()).unwrap();
        exec(&a, "DELETE FROM m WHERE k = 'm1'");
        pull(&b, &a);
        assert!(all_known(&b), "{what}");
        if what == "rename" {
            // The renamed table is the embedder's now: written freely, replicated not.
            let known = b.known();
            exec(&b, "INSERT INTO m_old VALUES ('local', 'a', 'b')");
            assert_eq!(b.known(), known);
        }
    }
    // Not replicated again by a later migration: cells name tables by name alone, so the
    // old table's would merge into the new one. The failed migration leaves nothing.
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path().join("b"), &DROPPED, Options::default()).unwrap());
    match Store::open(dir.path().join("b"), &AGAIN, Options::default()) {
        Err(StoreError::InvalidTable { table, .. }) => assert_eq!(table, "m"),
        other => panic!("replicating a dropped table's name again: {other:?}"),
    }
    let b = Store::open(dir.path().join("b"), &DROPPED, Options::default()).unwrap();
    assert_eq!(b.schema_version(), 3);
    assert_eq!(b.tables().collect::<Vec<_>>(), ["ev", "kv", "pair"]);
}
