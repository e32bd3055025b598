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
        "updates of older rows: twice, rolled back, undone half-way, equal values, then deleted",
        |tx| {
            batch(
                tx,
                "UPDATE kv SET a = 'u1' WHERE k = 'c2';
             UPDATE kv SET a = 'u2', b = b + 1 WHERE k = 'c2';
             SAVEPOINT sp;
             UPDATE kv SET a = 'rolled back' WHERE k = 'c2';
             UPDATE kv SET b = 100 WHERE k = 'h3';
             ROLLBACK TO sp;
             RELEASE sp;
             UPDATE kv SET a = a, b = b WHERE k = 'h0';
             UPDATE kv SET b = 7 WHERE k = 's3';
             DELETE FROM kv WHERE k = 's3';
             UPDATE pair SET v = x'0a0b' WHERE x = 2;",
            )?;
            // h0 is updated, then h3 breaks NOT NULL: the statement's update of h0 is undone.
            let failed = tx.execute(
                "UPDATE kv SET b = CASE k WHEN 'h3' THEN NULL ELSE 50 END WHERE k IN ('h0', 'h3')",
                [],
            );
            assert!(
                failed.is_err(),
                "NULL in a NOT NULL column fails the statement"
            );
            batch(tx, "UPDATE kv SET b = 8 WHERE k = 'h3'")
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
    assert_eq!(get_kv(&dst.store, "c2"), Some((Some("u2".into()), 5)));
    assert_eq!(get_kv(&dst.store, "h0"), Some((Some("before".into()), 0)));
    assert_eq!(get_kv(&dst.store, "h3"), Some((Some("after".into()), 8)));

    // Rows a merge wrote have a clock row per column: updates there bump them.
    let back = write_and_check(&dst.store, "updates of merged rows", |tx| {
        batch(
            tx,
            "UPDATE kv SET a = 'from dst' WHERE k = 'a';
             UPDATE kv SET b = b + 1 WHERE k IN ('c2', 'h3');",
        )
    });
    assert!(
        back.cells.iter().all(|c| c.cv >= 2),
        "every updated clock went up from the merged one: {:?}",
        back.cells
    );
    src.store.merge(&[back]).unwrap();
    assert_eq!(
        src.store.canonical_hash().unwrap(),
        dst.store.canonical_hash().unwrap()
    );
}

const EXACT: makiatto_store::Schema = makiatto_store::Schema {
    migrations: &[makiatto_store::Migration {
        version: 1,
        sql:
            "CREATE TABLE ci (k TEXT PRIMARY KEY NOT NULL, name TEXT COLLATE NOCASE, v ANY) STRICT;
              CREATE TABLE cik (k TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, v TEXT) STRICT;",
        replicate: &[
            makiatto_store::Replicate {
                table: "ci",
                class: makiatto_store::TableClass::Durable,
            },
            makiatto_store::Replicate {
                table: "cik",
                class: makiatto_store::TableClass::Durable,
            },
        ],
    }],
};

/// Changes that SQLite's `IS NOT` calls equal (a column's collation, 1 and 1.0) are
/// changes to replicate: a peer must end up with the same bytes.
#[test]
fn changes_equal_under_a_collation_or_numerically_replicate() {
    let open = |dir: &tempfile::TempDir| {
        Store::open(
            dir.path().join("db"),
            &EXACT,
            makiatto_store::Options::default(),
        )
        .unwrap()
    };
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(&da), open(&db));
    let row = |s: &Store, k: &str| -> (String, String) {
        s.read(|c| {
            Ok(
                c.query_row("SELECT name, typeof(v) FROM ci WHERE k = ?1", [k], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?,
            )
        })
        .unwrap()
    };
    let mut sent = vec![write_and_check(&a, "case-only update of a new row", |tx| {
        batch(
            tx,
            "INSERT INTO ci VALUES ('x', 'abc', 1); UPDATE ci SET name = 'ABC', v = 1.0 WHERE k = 'x';
             INSERT INTO ci VALUES ('y', 'def', 2);",
        )
    })];
    sent.push(write_and_check(
        &a,
        "case-only update of an older row",
        |tx| batch(tx, "UPDATE ci SET name = 'DEF', v = 2.0 WHERE k = 'y'"),
    ));
    // 0.0 and -0.0 compare equal; an ANY column keeps the sign.
    sent.push(write_and_check(
        &a,
        "a zero real's sign, twice in one write",
        |tx| {
            batch(
                tx,
                "INSERT INTO ci VALUES ('z', 'zero', 0.0); UPDATE ci SET v = -0.0 WHERE k = 'z';
             UPDATE ci SET v = 0.0 WHERE k = 'y'; UPDATE ci SET v = -0.0 WHERE k = 'y';",
            )
        },
    ));
    sent.push(write_and_check(&a, "a zero real's sign, alone", |tx| {
        batch(tx, "UPDATE ci SET v = 0.0 WHERE k = 'z'")
    }));
    b.merge(&sent).unwrap();
    for k in ["x", "y", "z"] {
        assert_eq!(row(&b, k), row(&a, k), "row {k} on the peer");
    }
    let negative = |s: &Store, k: &str| -> bool {
        s.read(|c| Ok(c.query_row("SELECT v FROM ci WHERE k = ?1", [k], |r| r.get::<_, f64>(0))?))
            .unwrap()
            .is_sign_negative()
    };
    assert!(negative(&a, "y") && negative(&b, "y"), "-0.0 on both");
    assert!(!negative(&a, "z") && !negative(&b, "z"), "0.0 on both");
    assert_eq!(row(&b, "x"), ("ABC".into(), "real".into()));
    assert_eq!(a.canonical_hash().unwrap(), b.canonical_hash().unwrap());
    // A key's case is part of the key: changing it is a key change, refused.
    exec(&a, "INSERT INTO cik VALUES ('key', 'v')");
    let err = a
        .write(|tx| Ok(tx.execute("UPDATE cik SET k = 'KEY'", [])?))
        .unwrap_err();
    assert!(err.to_string().contains("immutable"), "{err}");
}

/// Another process that migrated the file (and so regenerated the triggers) does not make
/// this one miss a table it wrote.
#[test]
fn a_commit_finds_its_tables_after_another_store_migrated_the_file() {
    const WITH_AA: makiatto_store::Schema = makiatto_store::Schema {
        migrations: &[
            SCHEMA.migrations[0],
            makiatto_store::Migration {
                version: 2,
                sql: "CREATE TABLE aa (id TEXT PRIMARY KEY NOT NULL, v TEXT) STRICT;",
                replicate: &[makiatto_store::Replicate {
                    table: "aa",
                    class: makiatto_store::TableClass::Durable,
                }],
            },
        ],
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let a = Store::open(&path, &SCHEMA, makiatto_store::Options::default()).unwrap();
    exec(&a, "INSERT INTO pair VALUES (1, 'p', x'01')");
    let b = Store::open(&path, &WITH_AA, makiatto_store::Options::default()).unwrap();
    drop(b);
    write_and_check(&a, "a write after the other store's migration", |tx| {
        batch(
            tx,
            "INSERT INTO pair VALUES (2, 'q', x'02'); INSERT INTO kv VALUES ('k', 'v', 1);",
        )
    });
}
