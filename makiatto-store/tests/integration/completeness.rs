//! Sync completeness across byte-budgeted sessions: after a complete session, the
//! requester dominates the responder, whatever earlier sessions were cut short
//! (docs/replication.md, "Pending versions").

use makiatto_store::{Options, Store, Value};

use crate::model::Op;
use crate::props::{Step, run};
use crate::support::*;

/// Replica A takes a session from B cut by the budget after version 1 of S, whose cell
/// `a` B had already superseded by version 2; then a complete session from C, which holds
/// version 1 but not version 2. A must end with C's value.
#[test]
fn a_cut_session_then_a_complete_one_from_a_third_replica_leaves_nothing_missing() {
    let (s, a, b, c) = (node(), node(), node(), node());
    let mut outbox = s.store.subscribe_local();
    exec(
        &s.store,
        "INSERT INTO kv (k, a, b) VALUES ('r', 'v', 1), ('q', 'x', 2);",
    );
    let v1 = outbox.try_recv().unwrap();
    exec(&s.store, "UPDATE kv SET a = 'w' WHERE k = 'r';");
    let v2 = outbox.try_recv().unwrap();
    b.store.merge(&[(*v1).clone(), (*v2).clone()]).unwrap();
    c.store.merge(&[(*v1).clone()]).unwrap();

    // A one-byte budget: the answer carries version 1 (without r.a) and stops.
    let frames = b.store.serve_sync(&a.store.sync_request(1)).unwrap();
    let (complete, _) = a.store.apply_sync(frames).unwrap().expect("SyncDone");
    assert!(!complete);
    assert_eq!(get_kv(&a.store, "q"), Some((Some("x".into()), 2)));
    assert_eq!(
        get_kv(&a.store, "r").and_then(|r| r.0),
        None,
        "r.a was superseded at B"
    );
    let pending = a.store.sync_request(1).pending;
    assert_eq!(pending.len(), 1, "version 1 is pending: {pending:?}");
    // Pending versions are written with the data: a restart keeps them.
    let Node { store, _dir: dir } = a;
    drop(store);
    let a = Node {
        store: Store::open(dir.path().join("db.sqlite"), &SCHEMA, Options::default()).unwrap(),
        _dir: dir,
    };
    assert_eq!(a.store.sync_request(1).pending, pending);

    // C holds version 1 whole and not version 2: it sends version 1 again.
    pull(&a.store, &c.store);
    assert_eq!(get_kv(&a.store, "r"), Some((Some("v".into()), 1)));
    assert!(a.store.known().is_superset(&c.store.known()));
    // C held everything it sent completely: nothing is pending any more.
    assert!(a.store.sync_request(1).pending.is_empty());

    // And B's version 2 still arrives and wins.
    pull(&a.store, &b.store);
    assert_eq!(get_kv(&a.store, "r"), Some((Some("w".into()), 1)));
    assert_eq!(
        a.store.canonical_hash().unwrap(),
        b.store.canonical_hash().unwrap()
    );
}

/// A replica whose own copy is pending passes its deps on: A, fed by B's cut session,
/// serves D; D must keep asking until it holds what superseded the missing cell.
#[test]
fn deps_travel_with_a_pending_copy() {
    let (s, a, b, d) = (node(), node(), node(), node());
    let mut outbox = s.store.subscribe_local();
    exec(
        &s.store,
        "INSERT INTO kv (k, a, b) VALUES ('r', 'v', 1), ('q', 'x', 2);",
    );
    let v1 = outbox.try_recv().unwrap();
    exec(&s.store, "UPDATE kv SET a = 'w' WHERE k = 'r';");
    let v2 = outbox.try_recv().unwrap();
    b.store.merge(&[(*v1).clone(), (*v2).clone()]).unwrap();
    let frames = b.store.serve_sync(&a.store.sync_request(1)).unwrap();
    a.store.apply_sync(frames).unwrap();

    // D pulls everything A has, completely: version 1 stays pending at D (A's copy was).
    pull(&d.store, &a.store);
    assert_eq!(d.store.sync_request(1).pending.len(), 1);
    // Once A completes from B, D's next complete pull from A brings version 2, and
    // nothing is pending anywhere.
    pull(&a.store, &b.store);
    pull(&d.store, &a.store);
    assert!(a.store.sync_request(1).pending.is_empty());
    assert!(d.store.sync_request(1).pending.is_empty());
    assert_eq!(get_kv(&d.store, "r"), Some((Some("w".into()), 1)));
}

/// The shrunk property-test case that found the gap (three replicas, budgets of 200
/// bytes). Whether it hit depended on the random site ids (about 40 % of runs failed
/// before the fix), so it runs twenty times.
#[test]
fn the_saved_property_case_holds() {
    for _ in 0..20 {
        let steps: Vec<Step> = saved_steps();
        run(steps, SKEWS).unwrap();
    }
}

const SKEWS: [i64; 3] = [2_320_799, -1_874_996, -2_126_072];

#[allow(clippy::too_many_lines, clippy::unreadable_literal)]
fn saved_steps() -> Vec<Step> {
    vec![
        Step::Sync {
            from: 2,
            to: 2,
            budget: 200,
        },
        Step::Deliver {
            from: 0,
            to: 2,
            pick: 4280177019788618397,
        },
        Step::Local {
            node: 0,
            ops: vec![
                Op::Put {
                    table: 0,
                    pk: vec![Value::Text("q".into())],
                    values: vec![Value::Null, Value::Int(1)],
                },
                Op::Set {
                    table: 0,
                    pk: vec![Value::Text("q".into())],
                    col: 0,
                    value: Value::Text("cc".into()),
                },
            ],
            advance_ms: 1541,
        },
        Step::Local {
            node: 1,
            ops: vec![
                Op::Put {
                    table: 0,
                    pk: vec![Value::Text("p".into())],
                    values: vec![Value::Text("a".into()), Value::Int(0)],
                },
                Op::Del {
                    table: 0,
                    pk: vec![Value::Text("q".into())],
                },
                Op::Set {
                    table: 0,
                    pk: vec![Value::Text("r".into())],
                    col: 0,
                    value: Value::Null,
                },
            ],
            advance_ms: 1180,
        },
        Step::Sync {
            from: 1,
            to: 1,
            budget: 18446744073709551615,
        },
        Step::Batch {
            to: 2,
            picks: vec![(0, 16529566979823688312), (0, 2878398771848925397)],
        },
        Step::Local {
            node: 2,
            ops: vec![
                Op::Put {
                    table: 0,
                    pk: vec![Value::Text("p".into())],
                    values: vec![Value::Text("cb".into()), Value::Int(2)],
                },
                Op::Del {
                    table: 0,
                    pk: vec![Value::Text("p".into())],
                },
                Op::Put {
                    table: 0,
                    pk: vec![Value::Text("p".into())],
                    values: vec![Value::Text("bc".into()), Value::Int(1)],
                },
            ],
            advance_ms: 2068,
        },
        Step::Local {
            node: 2,
            ops: vec![
                Op::Set {
                    table: 0,
                    pk: vec![Value::Text("q".into())],
                    col: 0,
                    value: Value::Null,
                },
                Op::Set {
                    table: 0,
                    pk: vec![Value::Text("q".into())],
                    col: 0,
                    value: Value::Null,
                },
            ],
            advance_ms: 1297,
        },
        Step::Deliver {
            from: 0,
            to: 2,
            pick: 12637693961178292684,
        },
        Step::Local {
            node: 2,
            ops: vec![
                Op::Set {
                    table: 1,
                    pk: vec![Value::Int(1), Value::Text("x".into())],
                    col: 0,
                    value: Value::Null,
                },
                Op::Set {
                    table: 0,
                    pk: vec![Value::Text("q".into())],
                    col: 0,
                    value: Value::Text("c".into()),
                },
            ],
            advance_ms: 5,
        },
        Step::Batch {
            to: 1,
            picks: vec![
                (2, 9619098689613703355),
                (2, 4965282230726792944),
                (0, 1119252497622848707),
                (2, 6802700935687479800),
            ],
        },
        Step::Deliver {
            from: 0,
            to: 0,
            pick: 14300835895625735264,
        },
        Step::Sync {
            from: 0,
            to: 2,
            budget: 200,
        },
        Step::Sync {
            from: 1,
            to: 0,
            budget: 18446744073709551615,
        },
        Step::Deliver {
            from: 0,
            to: 0,
            pick: 4076156982264502147,
        },
        Step::Local {
            node: 0,
            ops: vec![
                Op::Put {
                    table: 0,
                    pk: vec![Value::Text("p".into())],
                    values: vec![Value::Null, Value::Int(1)],
                },
                Op::Set {
                    table: 0,
                    pk: vec![Value::Text("r".into())],
                    col: 1,
                    value: Value::Int(2),
                },
            ],
            advance_ms: 1485,
        },
        Step::Local {
            node: 2,
            ops: vec![
                Op::Put {
                    table: 0,
                    pk: vec![Value::Text("q".into())],
                    values: vec![Value::Null, Value::Int(0)],
                },
                Op::Set {
                    table: 1,
                    pk: vec![Value::Int(1), Value::Text("y".into())],
                    col: 0,
                    value: Value::Null,
                },
                Op::Put {
                    table: 0,
                    pk: vec![Value::Text("p".into())],
                    values: vec![Value::Text("a".into()), Value::Int(1)],
                },
            ],
            advance_ms: 2865,
        },
        Step::Sync {
            from: 2,
            to: 1,
            budget: 200,
        },
        Step::Local {
            node: 1,
            ops: vec![
                Op::Put {
                    table: 1,
                    pk: vec![Value::Int(0), Value::Text("x".into())],
                    values: vec![Value::Blob(vec![0, 1])],
                },
                Op::Set {
                    table: 0,
                    pk: vec![Value::Text("q".into())],
                    col: 1,
                    value: Value::Int(1),
                },
            ],
            advance_ms: 1992,
        },
        Step::Deliver {
            from: 2,
            to: 0,
            pick: 4081638332459692436,
        },
        Step::Local {
            node: 2,
            ops: vec![
                Op::Del {
                    table: 1,
                    pk: vec![Value::Int(0), Value::Text("x".into())],
                },
                Op::Set {
                    table: 0,
                    pk: vec![Value::Text("p".into())],
                    col: 0,
                    value: Value::Text("a".into()),
                },
            ],
            advance_ms: 1199,
        },
        Step::Sync {
            from: 2,
            to: 1,
            budget: 18446744073709551615,
        },
        Step::Local {
            node: 0,
            ops: vec![Op::Del {
                table: 1,
                pk: vec![Value::Int(0), Value::Text("y".into())],
            }],
            advance_ms: 1439,
        },
        Step::Local {
            node: 0,
            ops: vec![
                Op::Put {
                    table: 1,
                    pk: vec![Value::Int(0), Value::Text("x".into())],
                    values: vec![Value::Null],
                },
                Op::Set {
                    table: 0,
                    pk: vec![Value::Text("r".into())],
                    col: 0,
                    value: Value::Text("a".into()),
                },
                Op::Put {
                    table: 0,
                    pk: vec![Value::Text("q".into())],
                    values: vec![Value::Null, Value::Int(0)],
                },
            ],
            advance_ms: 2543,
        },
        Step::Local {
            node: 1,
            ops: vec![
                Op::Set {
                    table: 0,
                    pk: vec![Value::Text("p".into())],
                    col: 0,
                    value: Value::Text("ba".into()),
                },
                Op::Put {
                    table: 1,
                    pk: vec![Value::Int(1), Value::Text("y".into())],
                    values: vec![Value::Blob(vec![2, 0])],
                },
            ],
            advance_ms: 279,
        },
        Step::Batch {
            to: 0,
            picks: vec![
                (1, 9069590488060596795),
                (0, 8081613765353963733),
                (0, 16531334100383655208),
            ],
        },
        Step::Local {
            node: 0,
            ops: vec![
                Op::Set {
                    table: 0,
                    pk: vec![Value::Text("q".into())],
                    col: 0,
                    value: Value::Text("a".into()),
                },
                Op::Del {
                    table: 1,
                    pk: vec![Value::Int(1), Value::Text("y".into())],
                },
            ],
            advance_ms: 577,
        },
        Step::Sync {
            from: 1,
            to: 0,
            budget: 200,
        },
        Step::Local {
            node: 1,
            ops: vec![Op::Put {
                table: 0,
                pk: vec![Value::Text("q".into())],
                values: vec![Value::Null, Value::Int(2)],
            }],
            advance_ms: 392,
        },
        Step::Local {
            node: 1,
            ops: vec![Op::Set {
                table: 0,
                pk: vec![Value::Text("q".into())],
                col: 0,
                value: Value::Null,
            }],
            advance_ms: 1412,
        },
        Step::Sync {
            from: 2,
            to: 0,
            budget: 200,
        },
    ]
}
