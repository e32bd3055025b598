//! Replicated-store benchmark: ours against plain rusqlite, in one run.
//!
//! Run with `./bench/store/run.sh` (or `cargo run --release -p makiatto-bench --bin store`;
//! add `local` to run the local-write comparison alone, and `insert`/`update` and a
//! number of rows per transaction to run only those shapes).
//! Prints, for the same statements (inserts, then first updates of existing rows), the
//! write throughput of a replicated table and of a
//! plain rusqlite table and their ratio; the merge throughput in cells per second; and the
//! time to sync 100k rows to an empty node over loopback TCP.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use makiatto_store::transport::{ServeOptions, SyncTransport, TcpTransport, serve_tcp};
use makiatto_store::{Change, Migration, Options, Replicate, Schema, Store, TableClass};
use rusqlite::{Connection, params};

const TABLE_SQL: &str = "CREATE TABLE items (id TEXT PRIMARY KEY NOT NULL, name TEXT, size INTEGER NOT NULL DEFAULT 0, body BLOB) STRICT;";
const SCHEMA: Schema = Schema {
    migrations: &[Migration {
        version: 1,
        sql: TABLE_SQL,
        replicate: &[Replicate {
            table: "items",
            class: TableClass::Durable,
        }],
    }],
};
/// Rounds of each local-write shape (plain and ours interleaved; the best of each counts).
const ROUNDS: usize = 3;
const INSERT: &str = "INSERT INTO items (id, name, size, body) VALUES (?1, ?2, ?3, ?4)";
const UPDATE: &str = "UPDATE items SET size = size + 1 WHERE id = ?1";
/// The design's floor: the clock table the store keeps for `items` (as `TableInfo::clock_ddl`
/// makes it), which the floor run writes itself, one row per row written, with no trigger,
/// no capture and no broadcast.
const CLOCK_SQL: &str = "CREATE TABLE items__crr_clock (pk BLOB NOT NULL, cid TEXT NOT NULL, cv INTEGER NOT NULL, \
    site_ord INTEGER NOT NULL, ver INTEGER NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL, \
    imp INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (pk, cid)) WITHOUT ROWID, STRICT; \
    CREATE INDEX items__crr_clock_ver ON items__crr_clock (site_ord, ver, seq);";
/// The sentinel an insert writes (the columns' clocks stay implicit).
const FLOOR_INSERT: &str = "INSERT INTO items__crr_clock (pk, cid, cv, site_ord, ver, seq, ts, imp) \
    VALUES (?1, '-1', 1, 1, ?2, ?3, 1, 1) ON CONFLICT (pk, cid) DO UPDATE SET cv = cv + 1, \
    ver = excluded.ver, seq = excluded.seq";
/// The column clock a first update writes.
const FLOOR_UPDATE: &str = "INSERT INTO items__crr_clock (pk, cid, cv, site_ord, ver, seq, ts) \
    VALUES (?1, 'size', 2, 1, ?2, ?3, 1) ON CONFLICT (pk, cid) DO UPDATE SET cv = cv + 1, \
    ver = excluded.ver, seq = excluded.seq";
/// Rows in the table before the updates are timed.
const PREFILL: usize = 100_000;

/// The statements a local-write run times.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    /// New rows.
    Insert,
    /// One column of rows inserted before (each row's first update).
    Update,
}

fn rows(tx: &Connection, op: Op, from: usize, n: usize) -> rusqlite::Result<()> {
    rows_with_clocks(tx, op, from, n, None)
}

/// [`rows`]; with `Some(version)`, each statement is followed by the clock-row upsert the
/// store's trigger would make (the floor run).
fn rows_with_clocks(
    tx: &Connection,
    op: Op,
    from: usize,
    n: usize,
    version: Option<i64>,
) -> rusqlite::Result<()> {
    let clock = |sql, id: &str, seq: usize| -> rusqlite::Result<()> {
        if let Some(ver) = version {
            let pk = makiatto_store::pack(&[makiatto_store::Value::Text(id.into())]);
            tx.prepare_cached(sql)?
                .execute(params![pk, ver, seq as i64])?;
        }
        Ok(())
    };
    if op == Op::Update {
        let mut stmt = tx.prepare_cached(UPDATE)?;
        for i in from..from + n {
            let id = format!("item-{:08}", i % PREFILL);
            stmt.execute([&id])?;
            clock(FLOOR_UPDATE, &id, i - from)?;
        }
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(INSERT)?;
    let body = [7u8; 64];
    for i in from..from + n {
        let id = format!("item-{i:08}");
        stmt.execute(params![&id, format!("name {i}"), i as i64, &body[..]])?;
        clock(FLOOR_INSERT, &id, (i - from) * 4)?;
    }
    Ok(())
}

/// Wall time and this thread's CPU time of a run.
#[derive(Clone, Copy)]
struct Took {
    wall: Duration,
    cpu: Duration,
}

impl Took {
    fn min(self, other: Took) -> Took {
        Took {
            wall: self.wall.min(other.wall),
            cpu: self.cpu.min(other.cpu),
        }
    }
}

/// Time this thread has spent on a CPU (`/proc/thread-self/schedstat`, nanoseconds).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

fn timed(f: impl FnOnce()) -> Took {
    let (t, c) = (Instant::now(), thread_cpu());
    f();
    Took {
        wall: t.elapsed(),
        cpu: thread_cpu().saturating_sub(c),
    }
}

/// One run's shape: what it writes, in how many transactions of how many rows.
#[derive(Clone, Copy)]
struct Run {
    op: Op,
    round: usize,
    tx_count: usize,
    per_tx: usize,
}

impl Run {
    fn file(&self, side: &str) -> String {
        let op = if self.op == Op::Update { "upd" } else { "ins" };
        format!("{side}-{op}-{}-{}.db", self.per_tx, self.round)
    }
}

/// The statements on a plain rusqlite table; with `floor`, each also writes its clock row
/// as the store would (see [`CLOCK_SQL`]): what the store's data layout costs at least.
fn plain(dir: &std::path::Path, run: Run, floor: bool) -> Took {
    let conn = Connection::open(dir.join(run.file(if floor { "floor" } else { "plain" }))).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.execute_batch(TABLE_SQL).unwrap();
    if floor {
        conn.execute_batch(CLOCK_SQL).unwrap();
    }
    let version = |k: usize| floor.then_some(k as i64 + 1);
    if run.op == Op::Update {
        let tx = conn.unchecked_transaction().unwrap();
        rows_with_clocks(&tx, Op::Insert, 0, PREFILL, version(0)).unwrap();
        tx.commit().unwrap();
    }
    timed(|| {
        for k in 0..run.tx_count {
            let tx = conn.unchecked_transaction().unwrap();
            rows_with_clocks(&tx, run.op, k * run.per_tx, run.per_tx, version(k + 1)).unwrap();
            tx.commit().unwrap();
        }
    })
}

fn replicated(dir: &std::path::Path, run: Run) -> Took {
    let store = Store::open(dir.join(run.file("crr")), &SCHEMA, Options::default()).unwrap();
    if run.op == Op::Update {
        store
            .write(|tx| Ok(rows(tx, Op::Insert, 0, PREFILL)?))
            .unwrap();
    }
    timed(|| {
        for k in 0..run.tx_count {
            store
                .write(|tx| Ok(rows(tx, run.op, k * run.per_tx, run.per_tx)?))
                .unwrap();
        }
    })
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!(
        "# makiatto-store benchmark (release build, {} cores)",
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    );

    println!(
        "\n## local writes: replicated table vs plain rusqlite (same statements, WAL, synchronous=NORMAL)"
    );
    println!(
        "(best of {ROUNDS} interleaved rounds; CPU = the writing thread's time on a CPU, which other load on the machine does not inflate;\n\
         floor = the plain statements each followed by the clock-row upsert the store's trigger makes, written by the\n\
         application itself: no trigger, no capture, no broadcast, i.e. what the clock-table layout alone costs)"
    );
    println!(
        "{:<24} {:>14} {:>14} {:>9} {:>13} {:>7}",
        "transaction shape", "plain rows/s", "ours rows/s", "overhead", "CPU overhead", "floor"
    );
    // `store local [insert|update] [rows per tx]` runs only the shapes named.
    let only: Vec<String> = std::env::args().skip(2).collect();
    for op in [Op::Insert, Op::Update] {
        let what = if op == Op::Update { "update" } else { "insert" };
        for (tx_count, per_tx) in [(20_000, 1), (2_000, 10), (100, 1_000)] {
            if only
                .iter()
                .any(|a| a.parse().map_or(a != what, |n: usize| n != per_tx))
            {
                continue;
            }
            let n = tx_count * per_tx;
            let (mut p, mut o, mut f) = (None::<Took>, None::<Took>, None::<Took>);
            for round in 0..ROUNDS {
                let run = Run {
                    op,
                    round,
                    tx_count,
                    per_tx,
                };
                let tp = plain(dir.path(), run, false);
                let to = replicated(dir.path(), run);
                let tf = plain(dir.path(), run, true);
                p = Some(p.map_or(tp, |x| x.min(tp)));
                o = Some(o.map_or(to, |x| x.min(to)));
                f = Some(f.map_or(tf, |x| x.min(tf)));
            }
            let (p, o, f) = (p.unwrap(), o.unwrap(), f.unwrap());
            println!(
                "{:<24} {:>14.0} {:>14.0} {:>8.2}x {:>12.2}x {:>6.2}x",
                format!("{what}, {per_tx} row(s)/tx"),
                rate(n, p.wall),
                rate(n, o.wall),
                o.wall.as_secs_f64() / p.wall.as_secs_f64(),
                o.cpu.as_secs_f64() / p.cpu.as_secs_f64(),
                f.wall.as_secs_f64() / p.wall.as_secs_f64()
            );
        }
    }

    if std::env::args().nth(1).as_deref() == Some("local") {
        return; // `store local`: the local-write comparison only
    }
    println!("\n## merge: applying remote versions (100k rows, 3 columns + sentinel = 400k cells)");
    let src = Store::open(dir.path().join("src.db"), &SCHEMA, Options::default()).unwrap();
    let mut out = src.subscribe_local();
    for k in 0..100 {
        src.write(|tx| Ok(rows(tx, Op::Insert, k * 1_000, 1_000)?))
            .unwrap();
    }
    let mut changes: Vec<Change> = Vec::new();
    while let Ok(c) = out.try_recv() {
        changes.push((*c).clone());
    }
    let cells: usize = changes.iter().map(|c| c.cells.len()).sum();
    let dst = Store::open(dir.path().join("dst.db"), &SCHEMA, Options::default()).unwrap();
    let t = Instant::now();
    for batch in changes.chunks(10) {
        dst.merge(batch).unwrap();
    }
    let d = t.elapsed();
    println!(
        "merged {cells} cells in {:.3} s: {:.0} cells/s (goal >= 200000)",
        d.as_secs_f64(),
        rate(cells, d)
    );
    assert_eq!(src.canonical_hash().unwrap(), dst.canonical_hash().unwrap());

    println!("\n## sync of 100k rows to an empty node over loopback TCP");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (inbound, _inbound_rx) = tokio::sync::mpsc::channel(16);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve_tcp(
        listener,
        src.clone(),
        inbound,
        ServeOptions::default(),
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    let fresh = Store::open(dir.path().join("fresh.db"), &SCHEMA, Options::default()).unwrap();
    let transport = TcpTransport::for_store(&fresh);
    let t = Instant::now();
    let mut sessions = 0;
    loop {
        sessions += 1;
        // As the replicator does: the answer is merged while it streams in.
        let pulled = transport
            .pull_apply(&addr, fresh.sync_request(8 << 20), &fresh)
            .await
            .unwrap();
        if pulled.done.is_some_and(|(complete, _)| complete) {
            break;
        }
    }
    let d = t.elapsed();
    println!(
        "100000 rows ({cells} cells) in {:.3} s over {sessions} session(s) of <= 8 MiB (goal < 2 s)",
        d.as_secs_f64()
    );
    assert_eq!(
        src.canonical_hash().unwrap(),
        fresh.canonical_hash().unwrap()
    );
    let _ = stop_tx.send(true);
    let _ = server.await;

    println!("\n## bootstrap of an empty node from a snapshot (the path a new node takes)");
    let t = Instant::now();
    let snap = dir.path().join("snapshot.db");
    src.snapshot(&snap).unwrap();
    let boot = Store::open(&snap, &SCHEMA, Options::default()).unwrap();
    let d = t.elapsed();
    println!(
        "100000 rows: snapshot ({} bytes) and open in {:.3} s",
        std::fs::metadata(&snap).map_or(0, |m| m.len()),
        d.as_secs_f64()
    );
    assert_eq!(
        src.canonical_hash().unwrap(),
        boot.canonical_hash().unwrap()
    );
    assert_ne!(src.site(), boot.site());
}
