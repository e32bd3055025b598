//! Replication convergence in a 50-node cluster over the in-memory transport.
//!
//! Run with `cargo run --release -p makiatto-bench --bin replication` (or
//! `./bench/store/run.sh`). Fifty replicas (each its own SQLite file) run the store's
//! [`Replicator`] with default options over a [`MemoryNetwork`]; the benchmark writes on
//! random nodes and measures how long until every replica holds every write (identical
//! known-version sets and canonical hashes): once for single writes (push broadcast
//! latency, p50/p99 over the samples) and once after a burst of writes during which a fifth
//! of the nodes was cut off (anti-entropy after a heal). Goal: all converged in < 3 s.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use makiatto_store::transport::{MemoryNetwork, NodeId, Replicator, ReplicatorOptions};
use makiatto_store::{Migration, Options, Replicate, Schema, Store, TableClass};
use tokio::sync::{mpsc, watch};

const NODES: u64 = 50;
const SAMPLES: usize = 40;
const LIMIT: Duration = Duration::from_secs(30);

const SCHEMA: Schema = Schema {
    migrations: &[Migration {
        version: 1,
        sql: "CREATE TABLE kv (k TEXT PRIMARY KEY NOT NULL, v TEXT) STRICT;",
        replicate: &[Replicate {
            table: "kv",
            class: TableClass::Durable,
        }],
    }],
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut stores = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..NODES {
        let store = Store::open(
            dir.path().join(format!("n{i}.db")),
            &SCHEMA,
            Options {
                cluster_id: "bench".into(),
                ..Options::default()
            },
        )
        .unwrap();
        let (tx, rx) = mpsc::channel(1024);
        let transport = net.join(NodeId(i), store.clone(), tx);
        let peers = net.clone();
        let replicator = Replicator::new(
            store.clone(),
            transport,
            Arc::new(move || peers.others(NodeId(i))),
            rx,
            ReplicatorOptions {
                rng_seed: Some(i),
                fanout: env("FANOUT").unwrap_or(ReplicatorOptions::default().fanout),
                hops: env("HOPS").map_or(ReplicatorOptions::default().hops, |h| h as u8),
                sync_interval_min: env("SYNC_MIN_MS")
                    .map_or(ReplicatorOptions::default().sync_interval_min, |v| {
                        Duration::from_millis(v as u64)
                    }),
                sync_interval_max: env("SYNC_MAX_MS")
                    .map_or(ReplicatorOptions::default().sync_interval_max, |v| {
                        Duration::from_millis(v as u64)
                    }),
                ..ReplicatorOptions::default()
            },
        );
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(replicator.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
        stores.push(store);
    }
    println!("# replication convergence, {NODES} replicas over the in-memory transport");
    println!("(default ReplicatorOptions; each replica a SQLite file; 2 tokio workers)");

    // Single writes: time until all 50 hold it.
    let mut lat = Vec::with_capacity(SAMPLES);
    for s in 0..SAMPLES {
        let origin = &stores[(s * 7) % stores.len()];
        let key = format!("single-{s}");
        let t = Instant::now();
        put(origin, &key, "v");
        wait_all(&stores, |st| has(st, &key)).await;
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "\none write visible on all {NODES}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({SAMPLES} samples)",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(lat[lat.len() - 1])
    );

    // A burst during a partition of 10 nodes, then the heal.
    for i in 0..NODES / 5 {
        net.isolate(NodeId(i));
    }
    for w in 0..500usize {
        put(
            &stores[w % stores.len()],
            &format!("burst-{w}"),
            &format!("{w}"),
        );
    }
    let t = Instant::now();
    net.heal();
    wait_all(&stores, |st| {
        converged_with(st, &stores[NODES as usize - 1])
    })
    .await;
    let h = stores[0].canonical_hash().unwrap();
    assert!(stores.iter().all(|s| s.canonical_hash().unwrap() == h));
    println!(
        "500 writes on all nodes while 10 of {NODES} were cut off: all identical {:.0} ms after the heal (goal < 3000 ms)",
        ms(t.elapsed())
    );

    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
}

/// An override of a replicator option from the environment (for tuning runs).
fn env(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn put(store: &Store, k: &str, v: &str) {
    store
        .write(|tx| {
            tx.execute(
                "INSERT INTO kv (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                [k, v],
            )?;
            Ok(())
        })
        .unwrap();
}

fn has(store: &Store, k: &str) -> bool {
    store
        .read(|c| {
            Ok(
                c.query_row("SELECT count(*) FROM kv WHERE k = ?1", [k], |r| {
                    r.get::<_, i64>(0)
                })?,
            )
        })
        .unwrap()
        == 1
}

/// Whether `store` knows every version the reference knows and the reference every
/// version `store` knows.
fn converged_with(store: &Store, reference: &Store) -> bool {
    let (a, b) = (store.known(), reference.known());
    a.is_superset(&b) && b.is_superset(&a)
}

/// Waits until `cond` holds on every store, re-checking on table changes.
async fn wait_all(stores: &[Store], cond: impl Fn(&Store) -> bool) {
    let deadline = Instant::now() + LIMIT;
    for s in stores {
        let mut w = s.watch_table("kv").unwrap();
        while !cond(s) {
            assert!(Instant::now() < deadline, "replication did not converge");
            let _ = tokio::time::timeout(Duration::from_millis(20), w.changed()).await;
        }
    }
}
