//! Local capture, sync, delete and re-insert, guards.

use makiatto_store::{Origin, RowChangeKind, Store, StoreError, pack};

use crate::support::*;

#[test]
fn two_replicas_converge_after_pulls() {
    let a = node();
    let b = node();
    exec(
        &a.store,
        "INSERT INTO kv (k, a) VALUES ('x', 'from a'); INSERT INTO pair VALUES (1, 'p', x'00ff');",
    );
    exec(
        &b.store,
        "INSERT INTO kv (k, a, b) VALUES ('y', 'from b', 7);",
    );
    pull(&b.store, &a.store);
    pull(&a.store, &b.store);
    for s in [&a.store, &b.store] {
        assert_eq!(get_kv(s, "x"), Some((Some("from a".into()), 0)));
        assert_eq!(get_kv(s, "y"), Some((Some("from b".into()), 7)));
    }
    assert_eq!(
        a.store.canonical_hash().unwrap(),
        b.store.canonical_hash().unwrap()
    );
    assert_eq!(a.store.known(), b.store.known());
}

#[test]
fn concurrent_updates_of_different_columns_both_survive() {
    let a = node();
    let b = node();
    exec(
        &a.store,
        "INSERT INTO kv (k, a, b) VALUES ('r', 'init', 1);",
    );
    pull(&b.store, &a.store);
    exec(&a.store, "UPDATE kv SET a = 'A' WHERE k = 'r';");
    exec(&b.store, "UPDATE kv SET b = 2 WHERE k = 'r';");
    pull(&b.store, &a.store);
    pull(&a.store, &b.store);
    assert_eq!(get_kv(&a.store, "r"), Some((Some("A".into()), 2)));
    assert_eq!(get_kv(&b.store, "r"), Some((Some("A".into()), 2)));
}

#[test]
fn same_column_more_edits_then_later_clock_wins() {
    let clock_a = TestClock::new(1_000_000);
    let clock_b = TestClock::new(1_000_000);
    let a = node_with(makiatto_store::Options {
        clock: clock_a.clone(),
        ..Default::default()
    });
    let b = node_with(makiatto_store::Options {
        clock: clock_b.clone(),
        ..Default::default()
    });
    exec(&a.store, "INSERT INTO kv (k, a) VALUES ('r', 'init');");
    pull(&b.store, &a.store);
    // Same prior version, B writes later: B wins everywhere.
    exec(&a.store, "UPDATE kv SET a = 'a1' WHERE k = 'r';");
    clock_b.set(1_000_500);
    exec(&b.store, "UPDATE kv SET a = 'b1' WHERE k = 'r';");
    pull(&b.store, &a.store);
    pull(&a.store, &b.store);
    assert_eq!(get_kv(&a.store, "r").unwrap().0.as_deref(), Some("b1"));
    assert_eq!(get_kv(&b.store, "r").unwrap().0.as_deref(), Some("b1"));
    // Two more edits on A beat one later edit on B (causality by column version).
    exec(&a.store, "UPDATE kv SET a = 'a2' WHERE k = 'r'; ");
    exec(&a.store, "UPDATE kv SET a = 'a3' WHERE k = 'r'; ");
    clock_b.set(2_000_000);
    exec(&b.store, "UPDATE kv SET a = 'b2' WHERE k = 'r';");
    pull(&b.store, &a.store);
    pull(&a.store, &b.store);
    assert_eq!(get_kv(&a.store, "r").unwrap().0.as_deref(), Some("a3"));
    assert_eq!(get_kv(&b.store, "r").unwrap().0.as_deref(), Some("a3"));
}

#[test]
fn delete_beats_concurrent_update_and_reinsert_beats_delete() {
    let a = node();
    let b = node();
    exec(
        &a.store,
        "INSERT INTO kv (k, a) VALUES ('r', 'v'), ('q', 'v');",
    );
    pull(&b.store, &a.store);
    exec(&a.store, "DELETE FROM kv WHERE k = 'r';");
    exec(&b.store, "UPDATE kv SET a = 'updated' WHERE k = 'r';");
    // B deletes and re-inserts q while A updates it.
    exec(
        &b.store,
        "DELETE FROM kv WHERE k = 'q'; INSERT INTO kv (k, a) VALUES ('q', 'reborn');",
    );
    exec(&a.store, "UPDATE kv SET a = 'stale' WHERE k = 'q';");
    pull(&b.store, &a.store);
    pull(&a.store, &b.store);
    for s in [&a.store, &b.store] {
        assert_eq!(get_kv(s, "r"), None);
        assert_eq!(get_kv(s, "q").unwrap().0.as_deref(), Some("reborn"));
    }
    assert_eq!(
        a.store.canonical_hash().unwrap(),
        b.store.canonical_hash().unwrap()
    );
}

#[test]
fn writes_outside_store_write_fail() {
    let a = node();
    // The writer itself outside `write`: the capture function refuses.
    let other = rusqlite::Connection::open(a.store.path()).unwrap();
    let err = other
        .execute("INSERT INTO kv (k) VALUES ('sneaky')", [])
        .unwrap_err();
    assert!(err.to_string().contains("crr_local"), "{err}");
    assert_eq!(get_kv(&a.store, "sneaky"), None);
}

#[test]
fn primary_key_updates_fail() {
    let a = node();
    exec(&a.store, "INSERT INTO kv (k, a) VALUES ('r', 'v');");
    let err = a
        .store
        .write(|tx| Ok(tx.execute("UPDATE kv SET k = 's' WHERE k = 'r'", [])?))
        .unwrap_err();
    assert!(err.to_string().contains("immutable"), "{err}");
    assert!(get_kv(&a.store, "r").is_some());
}

#[test]
fn failed_write_consumes_no_version() {
    let a = node();
    exec(&a.store, "INSERT INTO kv (k) VALUES ('one');");
    let r: Result<(), StoreError> = a.store.write(|tx| {
        tx.execute("INSERT INTO kv (k) VALUES ('two')", [])?;
        Err(StoreError::Malformed("abort".into()))
    });
    assert!(r.is_err());
    exec(&a.store, "INSERT INTO kv (k) VALUES ('three');");
    let known = a.store.known();
    assert_eq!(known.0[&a.store.site()], vec![(1, 2)]);
    assert_eq!(get_kv(&a.store, "two"), None);
}

#[tokio::test]
async fn events_only_for_visible_changes() {
    let a = node();
    let b = node();
    let mut events = b.store.subscribe();
    let mut watch_kv = b.store.watch_table("kv").unwrap();
    let watch_pair = b.store.watch_table("pair").unwrap();
    exec(&a.store, "INSERT INTO kv (k, a) VALUES ('r', 'v');");
    pull(&b.store, &a.store);
    let e = events.try_recv().unwrap();
    assert!(matches!(e.origin, Origin::Remote(s, 1) if s == a.store.site()));
    assert_eq!(e.changes.len(), 1);
    assert_eq!(*e.changes[0].pk, *pack(&["r".into()]));
    assert!(
        matches!(&e.changes[0].kind, RowChangeKind::Upsert(cols) if cols.iter().map(|c| &**c).eq(["a", "b"]))
    );
    assert!(watch_kv.has_changed().unwrap());
    watch_kv.borrow_and_update();
    assert!(!watch_pair.has_changed().unwrap());
    // Re-delivering the same version changes nothing and says nothing.
    pull(&b.store, &a.store);
    let frames = a
        .store
        .serve_sync(&makiatto_store::SyncReq {
            known: makiatto_store::Known::default(),
            byte_budget: u64::MAX,
            pending: Vec::new(),
        })
        .unwrap();
    b.store.apply_sync(frames).unwrap();
    assert!(events.try_recv().is_err());
    assert!(!watch_kv.has_changed().unwrap());
    // A no-op update (same value) makes no version and no event.
    exec(&b.store, "UPDATE kv SET a = 'v' WHERE k = 'r';");
    assert!(events.try_recv().is_err());
    // A local delete is an event.
    exec(&b.store, "DELETE FROM kv WHERE k = 'r';");
    let e = events.try_recv().unwrap();
    assert_eq!(e.origin, Origin::Local);
    assert_eq!(e.changes[0].kind, RowChangeKind::Delete);
}

#[test]
fn reopen_keeps_versions_and_identity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let (site, known) = {
        let s = Store::open(&path, &SCHEMA, makiatto_store::Options::default()).unwrap();
        exec(&s, "INSERT INTO kv (k) VALUES ('a'); ");
        exec(&s, "INSERT INTO kv (k) VALUES ('b'); ");
        (s.site(), s.known())
    };
    let s = Store::open(&path, &SCHEMA, makiatto_store::Options::default()).unwrap();
    assert_eq!(s.site(), site);
    assert_eq!(s.known(), known);
    exec(&s, "INSERT INTO kv (k) VALUES ('c'); ");
    assert_eq!(s.known().0[&site], vec![(1, 3)]);
}

/// Clock rows of `k` in `kv`: (cid, cv, imp).
fn kv_clock_rows(s: &Store, k: &str) -> Vec<(String, i64, i64)> {
    kv_clocks(s, k)
        .into_iter()
        .map(|(cid, cv, _, imp)| (cid, cv, imp))
        .collect()
}

#[test]
fn an_inserted_row_keeps_one_clock_row_until_a_column_changes() {
    let a = node();
    let b = node();
    exec(&a.store, "INSERT INTO kv (k, a, b) VALUES ('r', 'x', 1);");
    // Only the sentinel is stored; the columns' clocks are implicit in it.
    assert_eq!(kv_clock_rows(&a.store, "r"), [("-1".into(), 1, 1)]);
    // They still travel as cells, and the receiver ends up with the same state.
    pull(&b.store, &a.store);
    assert_eq!(get_kv(&b.store, "r"), Some((Some("x".into()), 1)));
    assert_eq!(
        a.store.canonical_hash().unwrap(),
        b.store.canonical_hash().unwrap()
    );
    // A change writes the changed column's clock alone, at version 2; the other stays
    // implicit, and so does the sentinel.
    exec(&a.store, "UPDATE kv SET b = 2 WHERE k = 'r';");
    assert_eq!(
        kv_clock_rows(&a.store, "r"),
        [("-1".into(), 1, 1), ("b".into(), 2, 0)]
    );
    pull(&b.store, &a.store);
    assert_eq!(get_kv(&b.store, "r"), Some((Some("x".into()), 2)));
    assert_eq!(
        a.store.canonical_hash().unwrap(),
        b.store.canonical_hash().unwrap()
    );
    // The other column's first change gives it a clock row too, at version 2.
    exec(&a.store, "UPDATE kv SET a = 'y' WHERE k = 'r';");
    assert_eq!(
        kv_clock_rows(&a.store, "r"),
        [("-1".into(), 1, 1), ("a".into(), 2, 0), ("b".into(), 2, 0)]
    );
    pull(&b.store, &a.store);
    assert_eq!(get_kv(&b.store, "r"), Some((Some("y".into()), 2)));
    assert_eq!(
        a.store.canonical_hash().unwrap(),
        b.store.canonical_hash().unwrap()
    );
    // A merge into a row whose clocks are implicit writes them out first.
    exec(&b.store, "INSERT INTO kv (k, a) VALUES ('s', 'from b');");
    pull(&a.store, &b.store);
    exec(&a.store, "UPDATE kv SET a = 'from a' WHERE k = 's';");
    pull(&b.store, &a.store);
    assert_eq!(kv_clock_rows(&b.store, "s").len(), 3);
    assert_eq!(get_kv(&b.store, "s"), Some((Some("from a".into()), 0)));
    assert_eq!(
        a.store.canonical_hash().unwrap(),
        b.store.canonical_hash().unwrap()
    );
}

#[test]
fn a_database_from_before_implicit_clocks_opens_and_keeps_replicating() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    {
        let store = Store::open(&path, &SCHEMA, makiatto_store::Options::default()).unwrap();
        exec(
            &store,
            // Both columns change, so every column has a clock row, as then.
            "INSERT INTO kv (k, a) VALUES ('old', 'u'); UPDATE kv SET a = 'v', b = 3 WHERE k = 'old';",
        );
    }
    // The clock table as the previous release wrote it: no `imp` column.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let triggers: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name LIKE '%crr%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    for t in triggers {
        conn.execute_batch(&("DROP TRIGGER \"".to_owned() + &t + "\""))
            .unwrap();
    }
    conn.execute_batch(
        "ALTER TABLE kv__crr_clock DROP COLUMN imp; ALTER TABLE pair__crr_clock DROP COLUMN imp;
         ALTER TABLE ev__crr_clock DROP COLUMN imp;",
    )
    .unwrap();
    drop(conn);
    let store = Store::open(&path, &SCHEMA, makiatto_store::Options::default()).unwrap();
    exec(&store, "INSERT INTO kv (k, a) VALUES ('new', 'w');");
    assert_eq!(kv_clock_rows(&store, "new"), [("-1".into(), 1, 1)]);
    let b = node();
    pull(&b.store, &store);
    assert_eq!(get_kv(&b.store, "old"), Some((Some("v".into()), 3)));
    assert_eq!(get_kv(&b.store, "new"), Some((Some("w".into()), 0)));
    assert_eq!(
        store.canonical_hash().unwrap(),
        b.store.canonical_hash().unwrap()
    );
}

/// The build before this one marked a row's sentinel `imp = 2` on its first update; such
/// rows read, sync, merge and update as rows with `imp = 1` do now.
#[test]
fn rows_an_earlier_build_marked_imp_2_replicate_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("imp2.sqlite");
    let fresh = node();
    {
        let store = Store::open(&path, &SCHEMA, makiatto_store::Options::default()).unwrap();
        exec(&store, "INSERT INTO kv (k, a, b) VALUES ('r', 'x', 1);");
        exec(&store, "UPDATE kv SET b = 2 WHERE k = 'r';");
        pull(&fresh.store, &store);
    }
    // As that build left it: the sentinel says some column has a clock row.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let marked = conn
        .execute(
            "UPDATE kv__crr_clock SET imp = 2 WHERE cid = '-1' AND imp = 1",
            [],
        )
        .unwrap();
    assert_eq!(marked, 1);
    drop(conn);
    let store = Store::open(&path, &SCHEMA, makiatto_store::Options::default()).unwrap();
    // The insert's version still carries the sentinel and the implicit column a, not b.
    let v1 = store.local_version(1).unwrap();
    let cids: Vec<&str> = v1.cells.iter().map(|c| &*c.cid).collect();
    assert_eq!(cids, ["-1", "a"]);
    // A replica that syncs from scratch and one that merges later changes both agree.
    exec(&store, "UPDATE kv SET a = 'y' WHERE k = 'r';");
    assert_eq!(
        kv_clock_rows(&store, "r"),
        [("-1".into(), 1, 2), ("a".into(), 2, 0), ("b".into(), 2, 0)]
    );
    let b = node();
    pull(&b.store, &store);
    pull(&fresh.store, &store);
    assert_eq!(get_kv(&b.store, "r"), Some((Some("y".into()), 2)));
    let h = store.canonical_hash().unwrap();
    assert_eq!(h, b.store.canonical_hash().unwrap());
    assert_eq!(h, fresh.store.canonical_hash().unwrap());
}

/// With nobody subscribed to row events (as on a node), a local write still moves the
/// watches of exactly the tables it changed.
#[test]
fn local_writes_move_the_watches_of_the_tables_they_changed() {
    let a = node();
    let mut kv = a.store.watch_table("kv").unwrap();
    let pair = a.store.watch_table("pair").unwrap();
    let mut ev = a.store.watch_table("ev").unwrap();
    exec(
        &a.store,
        "INSERT INTO kv (k) VALUES ('x'); INSERT INTO ev (id) VALUES ('e'); \
         INSERT INTO kv (k) VALUES ('y');",
    );
    assert!(kv.has_changed().unwrap());
    assert!(ev.has_changed().unwrap());
    assert!(!pair.has_changed().unwrap());
    assert_eq!(*kv.borrow_and_update(), 1, "one version, one move");
    ev.borrow_and_update();
    exec(&a.store, "UPDATE kv SET a = NULL WHERE k = 'x';");
    assert!(!kv.has_changed().unwrap(), "a write that changed nothing");
    exec(&a.store, "DELETE FROM ev WHERE id = 'e';");
    assert!(ev.has_changed().unwrap());
    assert!(!kv.has_changed().unwrap());
    assert!(!pair.has_changed().unwrap());
}
