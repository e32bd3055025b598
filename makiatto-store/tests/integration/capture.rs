//! A local version as broadcast at commit (built from what the insert triggers captured)
//! is exactly the version as read back from the tables afterwards, whatever the
//! transaction did: updates after inserts, re-inserts, savepoints rolled back, statements
//! that failed half-way.

use makiatto_store::{Change, Store};

use crate::support::*;

/// Runs `f` as one local write and returns the version it broadcast, after checking it
/// against the version read back from the tables.
fn write_and_check(
    store: &Store,
    what: &str,
    f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
) -> Change {
    let mut rx = store.subscribe_local();
    store.write(|tx| Ok(f(tx)?)).unwrap();
    let sent = (*rx.try_recv().expect("a version was broadcast")).clone();
    let read = store.local_version(sent.ver).unwrap();
    assert_eq!(
        sent, read,
        "{what}: broadcast version differs from the read-back one"
    );
    assert!(!sent.cells.is_empty(), "{what}: the version has cells");
    sent
}

fn batch(tx: &rusqlite::Transaction<'_>, sql: &str) -> rusqlite::Result<()> {
    tx.execute_batch(sql)
}

#[test]
fn broadcast_versions_equal_their_read_back() {
    let src = node();
    let mut sent = Vec::new();
    sent.push(write_and_check(
        &src.store,
        "inserts, defaults, NULL, type conversion",
        |tx| {
            batch(
                tx,
                "INSERT INTO kv (k, a) VALUES ('a', NULL);
             INSERT INTO kv VALUES ('b', 'x', '7');
             INSERT INTO pair VALUES (1, 'p', x'00ff'), (2, 'q', NULL);
             INSERT INTO ev VALUES ('e1', 'note');",
            )
        },
    ));
    sent.push(write_and_check(
        &src.store,
        "insert then update one column",
        |tx| {
            batch(
                tx,
                "INSERT INTO kv VALUES ('c', '1', 1);
             UPDATE kv SET a = '2' WHERE k = 'c';
             INSERT INTO kv VALUES ('c2', 'keep', 4);",
            )
        },
    ));
    sent.push(write_and_check(
        &src.store,
        "insert then update every column twice",
        |tx| {
            batch(
                tx,
                "INSERT INTO kv VALUES ('d', '1', 1);
             UPDATE kv SET a = '2', b = 2 WHERE k = 'd';
             UPDATE kv SET a = '3', b = 3 WHERE k = 'd';",
            )
        },
    ));
    sent.push(write_and_check(
        &src.store,
        "insert, delete, re-insert",
        |tx| {
            batch(
                tx,
                "INSERT INTO kv VALUES ('r', 'first', 1);
             DELETE FROM kv WHERE k = 'r';
             INSERT INTO kv VALUES ('r', 'again', 3);
             INSERT INTO pair VALUES (3, 'z', x'01');
             DELETE FROM pair WHERE x = 3;",
            )
        },
    ));
    sent.push(write_and_check(
        &src.store,
        "replace of rows from earlier versions",
        |tx| {
            batch(
                tx,
                "INSERT OR REPLACE INTO kv VALUES ('a', 'replaced', 5);
             INSERT OR REPLACE INTO kv VALUES ('c', 'replaced too', 6);",
            )
        },
    ));
    sent.push(write_and_check(&src.store, "savepoint rolled back", |tx| {
        batch(
            tx,
            "INSERT INTO kv VALUES ('s1', 'kept', 1);
             SAVEPOINT sp;
             INSERT INTO kv VALUES ('s2', 'gone', 2);
             UPDATE kv SET a = 'gone too' WHERE k = 's1';
             DELETE FROM kv WHERE k = 'b';
             INSERT INTO kv VALUES ('r', 'gone', 9) ON CONFLICT (k) DO UPDATE SET a = 'gone';
             ROLLBACK TO sp;
             INSERT INTO kv VALUES ('s3', 'after', 3);
             RELEASE sp;",
        )
    }));
    sent.push(write_and_check(
        &src.store,
        "a statement that failed half-way",
        |tx| {
            batch(tx, "INSERT INTO kv VALUES ('h0', 'before', 0)")?;
            // The third row breaks the key: the statement's first two rows are undone.
            let failed = tx.execute(
                "INSERT INTO kv (k, a) VALUES ('h1', 'undone'), ('h2', 'undone'), ('h1', 'dup')",
                [],
            );
            assert!(failed.is_err(), "the duplicate key fails the statement");
            batch(tx, "INSERT INTO kv VALUES ('h3', 'after', 3)")
        },
    ));
    sent.push(write_and_check(
        &src.store,
        "updates and deletes of older rows",
        |tx| {
            batch(
                tx,
                "UPDATE kv SET b = 9 WHERE k = 'b';
             DELETE FROM pair WHERE x = 1;
             UPDATE kv SET a = 'new' WHERE k = 'c2';
             DELETE FROM ev WHERE id = 'e1';",
            )
        },
    ));
    sent.push(write_and_check(
        &src.store,
        "re-insert of rows deleted earlier",
        |tx| {
            batch(
                tx,
                "INSERT INTO pair VALUES (1, 'p', x'02');
             INSERT INTO ev VALUES ('e1', 'back');",
            )
        },
    ));
    sent.push(write_and_check(
        &src.store,
        "many rows over two tables",
        |tx| {
            for i in 0..200 {
                tx.execute(
                    "INSERT INTO kv VALUES (?1, ?2, ?3)",
                    rusqlite::params![format!("m{i}"), format!("v{i}"), i],
                )?;
                tx.execute(
                    "INSERT INTO pair VALUES (?1, 'm', randomblob(8))",
                    rusqlite::params![100 + i],
                )?;
                if i % 7 == 0 {
                    tx.execute(
                        "UPDATE kv SET a = 'changed' WHERE k = ?1",
                        [format!("m{}", i / 2)],
                    )?;
                }
            }
            Ok(())
        },
    ));

    // A replica that receives the broadcasts alone ends up identical.
    let dst = node();
    dst.store.merge(&sent).unwrap();
    assert_eq!(
        src.store.canonical_hash().unwrap(),
        dst.store.canonical_hash().unwrap()
    );
    assert_eq!(get_kv(&dst.store, "r"), Some((Some("again".into()), 3)));
    assert_eq!(get_kv(&dst.store, "s1"), Some((Some("kept".into()), 1)));
    assert_eq!(get_kv(&dst.store, "s2"), None);
    assert_eq!(get_kv(&dst.store, "h1"), None);
    assert_eq!(get_kv(&dst.store, "b"), Some((Some("x".into()), 9)));
}
