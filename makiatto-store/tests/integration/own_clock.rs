//! A replica's version counter and HLC survive a reopen however its versions' clock rows
//! went away: local commits leave them to the clock rows, so every path that removes the
//! last clock rows of an own version must keep them (a reused version number would be
//! two different versions under one name).

use std::sync::Arc;

use makiatto_store::{Change, Migration, Options, Schema, Store};

use crate::support::*;

fn open(path: &std::path::Path, clock: &Arc<TestClock>) -> Store {
    let options = Options {
        clock: clock.clone(),
        ..Options::default()
    };
    Store::open(path, &SCHEMA, options).unwrap()
}

/// Ends `store` as a crash would: nothing runs at close (a clean close records the
/// counter, see the last test).
fn crash(store: Store) {
    std::mem::forget(store);
}

/// A fresh database file and a settable clock for it.
fn scratch() -> (Arc<TestClock>, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    (TestClock::new(1_800_000_000_000), dir, path)
}

/// Reopens the file with the clock set back and checks that the next write, `sql`, takes
/// the version after `last` and a later time.
fn reopen_follows(
    path: &std::path::Path,
    clock: &Arc<TestClock>,
    last: &Change,
    sql: &str,
) -> Store {
    clock.set(1_700_000_000_000);
    let a = open(path, clock);
    let next = write(&a, sql);
    assert_eq!(next.ver, last.ver + 1, "no version number is issued twice");
    assert!(next.ts > last.ts, "the HLC never goes back");
    a
}

/// The version (and its HLC time) a write of `sql` broadcast.
fn write(store: &Store, sql: &str) -> Change {
    let mut rx = store.subscribe_local();
    exec(store, sql);
    (*rx.try_recv().unwrap()).clone()
}

#[test]
fn versions_overwritten_by_a_merge_are_not_reissued() {
    let (clock, _dir, path) = scratch();
    let b = node_with(Options {
        clock: clock.clone(),
        ..Options::default()
    });
    let last = {
        let a = open(&path, &clock);
        write(&a, "INSERT INTO kv VALUES ('x', 'a1', 1)");
        let last = write(&a, "UPDATE kv SET a = 'a2', b = 2 WHERE k = 'x'");
        // B deletes and re-inserts the row: a newer generation, whose every cell wins,
        // so A keeps no clock row of its own.
        pull(&b.store, &a);
        clock.set(1_800_000_001_000);
        let won = write(
            &b.store,
            "DELETE FROM kv WHERE k = 'x'; INSERT INTO kv VALUES ('x', 'b', 3)",
        );
        a.merge(&[won]).unwrap();
        assert_eq!(get_kv(&a, "x"), Some((Some("b".into()), 3)));
        let own: i64 = a
            .read(|c| {
                Ok(c.query_row(
                    "SELECT count(*) FROM kv__crr_clock c JOIN crr_sites s ON s.ord = c.site_ord \
                     WHERE s.site = ?1",
                    [&a.site().0[..]],
                    |r| r.get(0),
                )?)
            })
            .unwrap();
        assert_eq!(own, 0, "the test needs every own clock row overwritten");
        crash(a);
        last
    };
    let a = reopen_follows(
        &path,
        &clock,
        &last,
        "INSERT INTO kv VALUES ('y', 'after', 4)",
    );
    assert_eq!(a.known().0[&a.site()], vec![(1, last.ver + 1)]);
}

#[test]
fn a_version_left_without_clock_rows_is_not_reissued() {
    let (clock, _dir, path) = scratch();
    let empty = {
        let a = open(&path, &clock);
        write(&a, "INSERT INTO kv VALUES ('x', 'kept', 1)");
        // The version is allocated by the first write, which a savepoint then undoes.
        let empty = write(
            &a,
            "SAVEPOINT s; INSERT INTO kv VALUES ('gone', 'g', 0); ROLLBACK TO s; RELEASE s;",
        );
        assert!(empty.cells.is_empty());
        crash(a);
        empty
    };
    reopen_follows(
        &path,
        &clock,
        &empty,
        "INSERT INTO kv VALUES ('y', 'after', 2)",
    );
}

#[test]
fn versions_whose_tombstones_were_pruned_are_not_reissued() {
    let (clock, _dir, path) = scratch();
    let deleted = {
        let a = open(&path, &clock);
        write(&a, "INSERT INTO ev VALUES ('e1', 'x')");
        let deleted = write(&a, "DELETE FROM ev WHERE id = 'e1'");
        clock.set(1_800_000_000_000 + 8 * 86_400_000);
        assert_eq!(a.gc_tombstones(7 * 86_400_000, &[a.known()]).unwrap(), 1);
        crash(a);
        deleted
    };
    reopen_follows(&path, &clock, &deleted, "INSERT INTO ev VALUES ('e2', 'y')");
}

#[test]
fn a_sync_answer_includes_versions_only_the_clock_rows_record() {
    let a = node();
    for i in 0..5i64 {
        a.store
            .write(|tx| {
                Ok(tx.execute(
                    "INSERT INTO kv VALUES (?1, 'v', ?2)",
                    rusqlite::params![i.to_string(), i],
                )?)
            })
            .unwrap();
    }
    // The answer is built on a reader connection, from what the file says.
    let b = node();
    pull(&b.store, &a.store);
    assert_eq!(b.store.known().0[&a.store.site()], vec![(1, 5)]);
    assert_eq!(
        a.store.canonical_hash().unwrap(),
        b.store.canonical_hash().unwrap()
    );
}

#[test]
fn a_clean_close_leaves_the_version_counter_in_the_file() {
    let (clock, _dir, path) = scratch();
    let last = {
        let a = open(&path, &clock);
        write(&a, "INSERT INTO kv VALUES ('x', 'a', 1)");
        write(&a, "INSERT INTO kv VALUES ('y', 'b', 2)")
    };
    let conn = rusqlite::Connection::open(&path).unwrap();
    let meta = |key: &str| -> i64 {
        conn.query_row("SELECT value FROM crr_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .unwrap()
    };
    assert_eq!(meta("self_ver"), last.ver as i64);
    assert_eq!(meta("hlc_last"), last.ts as i64);
}

#[test]
fn versions_whose_clocks_a_migration_drops_are_not_reissued() {
    const DROP_A: Schema = Schema {
        migrations: &[
            SCHEMA.migrations[0],
            Migration {
                version: 2,
                sql: "ALTER TABLE kv DROP COLUMN a;",
                replicate: &[],
            },
        ],
    };
    let (clock, _dir, path) = scratch();
    let options = || Options {
        clock: clock.clone(),
        ..Options::default()
    };
    let last = {
        let a = open(&path, &clock);
        write(&a, "INSERT INTO kv VALUES ('x', 'a1', 1)");
        // This version's only clock row is x's `a`.
        let last = write(&a, "UPDATE kv SET a = 'a2' WHERE k = 'x'");
        crash(a);
        last
    };
    // The migration drops column `a`, and with it that clock row; it writes nothing else.
    crash(Store::open(&path, &DROP_A, options()).unwrap());
    clock.set(1_700_000_000_000);
    let a = Store::open(&path, &DROP_A, options()).unwrap();
    let next = write(&a, "INSERT INTO kv (k, b) VALUES ('y', 2)");
    assert_eq!(next.ver, last.ver + 1, "no version number is issued twice");
    assert!(next.ts > last.ts, "the HLC never goes back");
}
