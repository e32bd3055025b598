//! Run with `cargo run -p makiatto-store --example cluster_demo` (or `./scripts/demo`).
//!
//! Three replicas of the store, each serving the replication protocol on its own loopback
//! TCP port with a [`Replicator`] running push broadcast and anti-entropy pulls: writes on
//! every node spread to all; one node is cut off and both sides keep accepting writes,
//! including to the same key; after the heal every replica holds the same state, with the
//! last writer winning the contested key.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use makiatto_store::transport::{
    Replicator, ReplicatorOptions, ServeOptions, TcpTransport, serve_tcp,
};
use makiatto_store::{Migration, Options, Replicate, Schema, Store, TableClass};
use rusqlite::OptionalExtension;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

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

const NAMES: [&str; 3] = ["sydney", "frankfurt", "newyork"];
/// How long any one step may take before the demo gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    // The "network": who listens where, and whether newyork is cut off.
    let addrs: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
    let partitioned = Arc::new(AtomicBool::new(false));

    println!("== three replicas on loopback TCP");
    let mut stores = Vec::new();
    let mut tasks = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let store = Store::open(
            dir.path().join(format!("{name}.db")),
            &SCHEMA,
            Options {
                cluster_id: "demo".into(),
                ..Options::default()
            },
        )?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        addrs.lock().map_err(|_| "poisoned")?.push(addr);
        let (inbound_tx, inbound_rx) = mpsc::channel(1024);
        tokio::spawn(serve_tcp(
            listener,
            store.clone(),
            inbound_tx,
            ServeOptions::default(),
            stopped(),
        ));
        let (peer_addrs, cut) = (addrs.clone(), partitioned.clone());
        // Peers this node can reach now: everyone else, unless the partition separates
        // newyork (index 2) from the others.
        let peers = Arc::new(move || {
            let cut = cut.load(Ordering::SeqCst);
            peer_addrs
                .lock()
                .map(|a| {
                    a.iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i && !(cut && (i == 2 || *j == 2)))
                        .map(|(_, a)| *a)
                        .collect()
                })
                .unwrap_or_default()
        });
        let replicator = Replicator::new(
            store.clone(),
            TcpTransport::for_store(&store),
            peers,
            inbound_rx,
            ReplicatorOptions {
                sync_interval_min: Duration::from_millis(200),
                sync_interval_max: Duration::from_millis(400),
                ..ReplicatorOptions::default()
            },
        );
        tasks.push(tokio::spawn(replicator.run(stopped())));
        println!("{name:>10}: site {} on {addr}", store.site());
        stores.push(store);
    }

    println!("\n== every node writes; pushes spread the writes");
    for (store, name) in stores.iter().zip(NAMES) {
        put(store, &format!("hello-from-{name}"), "hi")?;
    }
    for (store, name) in stores.iter().zip(NAMES) {
        wait_for(store, |s| Ok(count(s)? == 3)).await?;
        println!("{name:>10}: {} rows", count(store)?);
    }

    println!("\n== newyork is cut off; both sides keep writing, to the same key too");
    partitioned.store(true, Ordering::SeqCst);
    put(&stores[1], "greeting", "hallo from frankfurt")?;
    put(
        &stores[2],
        "only-in-newyork",
        "written during the partition",
    )?;
    // Written last, so it is the newest write of the key (last writer wins after the heal).
    put(&stores[2], "greeting", "hello from newyork")?;
    wait_for(&stores[0], |s| Ok(get(s, "greeting")?.is_some())).await?;
    for (store, name) in stores.iter().zip(NAMES) {
        println!(
            "{name:>10}: {} rows, greeting = {:?}",
            count(store)?,
            get(store, "greeting")?
        );
    }

    println!("\n== heal: anti-entropy pulls bring everyone to the same state");
    partitioned.store(false, Ordering::SeqCst);
    let target = stores[2].clone();
    for store in &stores {
        let target = target.clone();
        wait_for(store, move |s| {
            Ok(count(s)? == 5 && s.known().is_superset(&target.known()))
        })
        .await?;
    }
    let hash = stores[0].canonical_hash()?;
    for (store, name) in stores.iter().zip(NAMES) {
        println!(
            "{name:>10}: {} rows, greeting = {:?}, state hash {}",
            count(store)?,
            get(store, "greeting")?,
            &store.canonical_hash()?.to_hex()[..16]
        );
        if store.canonical_hash()? != hash {
            return Err(format!("{name} did not converge").into());
        }
    }
    println!("\nall three replicas converged.");

    let _ = stop_tx.send(true);
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// Waits until `cond` holds on `store`, re-checking on every change of the `kv` table and
/// at least every 100 ms (the table may already be in the wanted state).
async fn wait_for(
    store: &Store,
    cond: impl Fn(&Store) -> makiatto_store::Result<bool>,
) -> Result<(), Error> {
    let mut changes = store.watch_table("kv").ok_or("kv is not replicated")?;
    tokio::time::timeout(STEP_TIMEOUT, async {
        while !cond(store)? {
            let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
        }
        Ok::<_, Error>(())
    })
    .await
    .map_err(|_| "timed out waiting for replication")?
}

fn put(store: &Store, k: &str, v: &str) -> makiatto_store::Result<()> {
    store.write(|tx| {
        tx.execute(
            "INSERT INTO kv (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            [k, v],
        )?;
        Ok(())
    })
}

fn count(store: &Store) -> makiatto_store::Result<i64> {
    store.read(|c| Ok(c.query_row("SELECT count(*) FROM kv", [], |r| r.get(0))?))
}

fn get(store: &Store, k: &str) -> makiatto_store::Result<Option<String>> {
    store.read(|c| {
        Ok(
            c.query_row("SELECT v FROM kv WHERE k = ?1", [k], |r| r.get(0))
                .optional()?,
        )
    })
}
