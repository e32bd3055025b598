//! Run with `cargo run -p makiatto-store --example tcp_sync`
//!
//! Two replicated stores in one process, each serving the replication protocol on a
//! loopback TCP port: they write independently, catch up with one pull in each direction,
//! then keep in step through pushes from their [`Replicator`]s.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use makiatto_store::transport::{
    Replicator, ReplicatorOptions, ServeOptions, TcpTransport, serve_tcp,
};
use makiatto_store::{Migration, Options, Replicate, Schema, Store, TableClass};
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

/// One replica: its store, its server address and its (not yet running) replicator.
struct Replica {
    name: &'static str,
    store: Store,
    addr: SocketAddr,
    replicator: Replicator<TcpTransport>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    // Each replica binds its own port; the peer lists are filled once both are known.
    let peers: Arc<std::sync::Mutex<Vec<(&str, SocketAddr)>>> = Arc::default();
    let mut replicas = Vec::new();
    for name in ["alpha", "beta"] {
        let store = Store::open(
            dir.path().join(format!("{name}.db")),
            &SCHEMA,
            Options {
                cluster_id: "example".into(),
                ..Options::default()
            },
        )?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (inbound_tx, inbound_rx) = mpsc::channel(1024);
        tokio::spawn(serve_tcp(
            listener,
            store.clone(),
            inbound_tx,
            ServeOptions::default(),
            stopped(),
        ));
        peers.lock().map_err(|_| "poisoned")?.push((name, addr));
        let peer_list = peers.clone();
        let replicator = Replicator::new(
            store.clone(),
            TcpTransport::for_store(&store),
            Arc::new(move || {
                peer_list
                    .lock()
                    .map(|p| {
                        p.iter()
                            .filter(|(n, _)| *n != name)
                            .map(|(_, a)| *a)
                            .collect()
                    })
                    .unwrap_or_default()
            }),
            inbound_rx,
            ReplicatorOptions::default(),
        );
        println!("{name}: site {} serving on {addr}", store.site());
        replicas.push(Replica {
            name,
            store,
            addr,
            replicator,
        });
    }

    // Independent writes, including one conflicting row.
    for r in &replicas {
        for i in 0..3 {
            let (k, v) = (format!("{}-{i}", r.name), format!("written by {}", r.name));
            r.store
                .write(|tx| Ok(tx.execute("INSERT INTO kv (k, v) VALUES (?1, ?2)", [&k, &v])?))?;
        }
        let v = format!("{} wins?", r.name);
        r.store.write(|tx| {
            Ok(tx.execute(
                "INSERT OR REPLACE INTO kv (k, v) VALUES ('contested', ?1)",
                [&v],
            )?)
        })?;
        println!("{}: wrote 4 versions, {} rows", r.name, rows(&r.store)?);
    }

    // One pull in each direction over TCP.
    for (me, other) in [(0, 1), (1, 0)] {
        let stats = replicas[me]
            .replicator
            .sync_once(&replicas[other].addr)
            .await?;
        println!(
            "{} pulled from {}: {} session(s), {} version(s), complete: {}; now {} rows",
            replicas[me].name,
            replicas[other].name,
            stats.rounds,
            stats.versions,
            stats.complete,
            rows(&replicas[me].store)?
        );
    }
    let (a, b) = (&replicas[0].store, &replicas[1].store);
    println!(
        "converged: {} (contested = {:?})",
        a.canonical_hash()? == b.canonical_hash()?,
        value(a, "contested")?
    );

    // From here on, writes travel by push.
    let stores: Vec<Store> = replicas.iter().map(|r| r.store.clone()).collect();
    let mut tasks = Vec::new();
    for r in replicas {
        tasks.push(tokio::spawn(r.replicator.run(stopped())));
    }
    stores[0].write(|tx| Ok(tx.execute("INSERT INTO kv (k, v) VALUES ('late', 'pushed')", [])?))?;
    let mut watch = stores[1].watch_table("kv").ok_or("kv is not replicated")?;
    let arrived = tokio::time::timeout(Duration::from_secs(10), async {
        while value(&stores[1], "late").ok().flatten().is_none() {
            if watch.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    println!(
        "beta received alpha's push: {} (late = {:?})",
        arrived.is_ok(),
        value(&stores[1], "late")?
    );

    let _ = stop_tx.send(true);
    for t in tasks {
        t.await?;
    }
    Ok(())
}

fn rows(store: &Store) -> makiatto_store::Result<i64> {
    store.read(|c| Ok(c.query_row("SELECT count(*) FROM kv", [], |r| r.get(0))?))
}

fn value(store: &Store, k: &str) -> makiatto_store::Result<Option<String>> {
    use rusqlite::OptionalExtension;
    store.read(|c| {
        Ok(
            c.query_row("SELECT v FROM kv WHERE k = ?1", [k], |r| r.get(0))
                .optional()?,
        )
    })
}
