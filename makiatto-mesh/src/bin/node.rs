//! `makiatto-mesh-node`: one mesh node driven over stdin/stdout, for the cluster test
//! harness and the local demo.
//!
//! Run with `makiatto-mesh-node <config.json>` (a [`makiatto_mesh::NodeConfig`] in JSON).
//! It prints `{"event":"ready",...}` once started, then answers one JSON command per
//! stdin line with one JSON line (see `Cmd`). Closing stdin stops the node.

use std::net::SocketAddr;
use std::time::Duration;

use makiatto_mesh::blobs::FetchOptions;
use makiatto_mesh::{MeshNode, NodeConfig, PrivateKey};
use makiatto_store::BlobHash;
use makiatto_store::cluster::{external_peers, nodes};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
enum Cmd {
    /// Upsert rows `domains(name = key, active_deployment = value)`.
    Put { key: String, value: String },
    /// Insert `count` rows named `<prefix><i>` in one transaction.
    PutMany { prefix: String, count: u64 },
    /// Number of `domains` rows.
    Count,
    /// The store's canonical hash.
    Hash,
    /// The membership view.
    Members,
    /// Connections and datagrams refused by the mesh services.
    Refusals,
    /// This node's current mesh address.
    Address,
    /// Record a `nodes` row claiming `mesh_address` (a concurrent joiner).
    PutNode {
        name: String,
        public_key: String,
        mesh_address: String,
    },
    /// WireGuard peers.
    Peers,
    /// Open a TCP connection to `addr`.
    Connect { addr: SocketAddr },
    /// Record an external peer.
    AddExternal {
        name: String,
        public_key: String,
        endpoint: Option<String>,
        mesh_address: String,
    },
    /// Delete an external peer.
    RemoveExternal { name: String },
    /// A wg-quick config for external peer `name`, with `private_key` filled in.
    WgQuick { name: String, private_key: String },
    /// Store a pseudo-random blob of `size` bytes.
    PutBlob { size: usize, seed: u64 },
    /// Fetch blobs by hex hash from the alive peers.
    FetchBlobs { hashes: Vec<String> },
    /// Upsert `domains(key)` and return the commit time (unix µs).
    PutStamped { key: String },
    /// Start watching for `domains(key)`; returns at once.
    Arm { key: String },
    /// When the armed `key` became visible here (unix µs); waits up to `timeout_ms`.
    Seen { key: String, timeout_ms: u64 },
}

type Armed =
    std::sync::Mutex<std::collections::HashMap<String, tokio::sync::watch::Receiver<Option<u128>>>>;

fn now_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

fn has_key(store: &makiatto_store::Store, key: &str) -> bool {
    store
        .read(|c| {
            Ok(
                c.query_row("SELECT count(*) FROM domains WHERE name = ?1", [key], |r| {
                    r.get::<_, i64>(0)
                })?,
            )
        })
        .is_ok_and(|n| n > 0)
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: makiatto-mesh-node <config.json>");
        return std::process::ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&path)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("makiatto-mesh-node: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path)?;
    let config: NodeConfig = serde_json::from_str(&text)?;
    let node = MeshNode::start(config).await?;
    let armed = Armed::default();
    let mut out = tokio::io::stdout();
    let ready = json!({"event": "ready", "mesh_address": node.mesh_address().to_string()});
    out.write_all(format!("{ready}\n").as_bytes()).await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let answer = match serde_json::from_str::<Cmd>(&line) {
            Ok(cmd) => match handle(&node, &armed, cmd).await {
                Ok(v) => json!({"ok": true, "value": v}),
                Err(e) => json!({"ok": false, "error": e.to_string()}),
            },
            Err(e) => json!({"ok": false, "error": format!("bad command: {e}")}),
        };
        out.write_all(format!("{answer}\n").as_bytes()).await?;
        out.flush().await?;
    }
    node.shutdown().await;
    Ok(())
}

async fn handle(
    node: &MeshNode,
    armed: &Armed,
    cmd: Cmd,
) -> Result<Value, Box<dyn std::error::Error>> {
    let store = node.store().clone();
    Ok(match cmd {
        Cmd::PutStamped { key } => {
            store.write(|tx| {
                tx.execute("INSERT OR REPLACE INTO domains (name) VALUES (?1)", [&key])?;
                Ok(())
            })?;
            json!(now_us().to_string())
        }
        Cmd::Arm { key } => {
            let mut changes = store
                .watch_table("domains")
                .ok_or("domains is not replicated")?;
            let (tx, rx) = tokio::sync::watch::channel(None);
            let k = key.clone();
            tokio::spawn(async move {
                loop {
                    if has_key(&store, &k) {
                        let _ = tx.send(Some(now_us()));
                        return;
                    }
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            });
            armed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key, rx);
            Value::Null
        }
        Cmd::Seen { key, timeout_ms } => {
            let rx = armed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&key);
            let mut rx = rx.ok_or("key not armed")?;
            let seen = tokio::time::timeout(
                Duration::from_millis(timeout_ms),
                rx.wait_for(Option::is_some),
            )
            .await??
            .unwrap_or_default();
            json!(seen.to_string())
        }
        Cmd::Put { key, value } => {
            store.write(|tx| {
                tx.execute(
                    "INSERT INTO domains (name, active_deployment) VALUES (?1, ?2) \
                     ON CONFLICT (name) DO UPDATE SET active_deployment = excluded.active_deployment",
                    (&key, &value),
                )?;
                Ok(())
            })?;
            Value::Null
        }
        Cmd::PutMany { prefix, count } => {
            tokio::task::spawn_blocking(move || {
                store.write(|tx| {
                    for i in 0..count {
                        tx.execute(
                            "INSERT OR REPLACE INTO domains (name, active_deployment) VALUES (?1, ?2)",
                            (format!("{prefix}{i}"), "x"),
                        )?;
                    }
                    Ok(())
                })
            })
            .await??;
            Value::Null
        }
        Cmd::Count => {
            let n: i64 = store
                .read(|c| Ok(c.query_row("SELECT count(*) FROM domains", [], |r| r.get(0))?))?;
            json!(n)
        }
        Cmd::Hash => json!(
            tokio::task::spawn_blocking(move || store.canonical_hash())
                .await??
                .to_hex()
                .to_string()
        ),
        Cmd::Members => serde_json::to_value(&*node.membership().borrow())?,
        Cmd::Refusals => serde_json::to_value(node.refusals())?,
        Cmd::Address => json!(node.mesh_address().to_string()),
        Cmd::PutNode {
            name,
            public_key,
            mesh_address,
        } => {
            let row = nodes::Node {
                name,
                wg_public_key: public_key,
                wg_endpoint: String::new(),
                mesh_address,
                ipv4: String::new(),
                ipv6: None,
                latitude: 0.0,
                longitude: 0.0,
                is_nameserver: false,
                site_id: String::new(),
                created_ms: 0,
            };
            store.write(|tx| nodes::upsert(tx, &row))?;
            Value::Null
        }
        Cmd::Peers => {
            let t = node.tunnel().clone();
            let peers = tokio::task::spawn_blocking(move || t.peers()).await??;
            json!(
                peers
                    .iter()
                    .map(|p| json!({
                        "public_key": p.public_key.to_base64(),
                        "handshake": p.since_handshake.is_some(),
                        "rx_bytes": p.rx_bytes,
                    }))
                    .collect::<Vec<_>>()
            )
        }
        Cmd::Connect { addr } => {
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
                .await??;
            Value::Null
        }
        Cmd::AddExternal {
            name,
            public_key,
            endpoint,
            mesh_address,
        } => {
            let peer = external_peers::ExternalPeer {
                name,
                wg_public_key: public_key,
                endpoint,
                mesh_address,
                created_ms: 0,
            };
            store.write(|tx| external_peers::upsert(tx, &peer))?;
            Value::Null
        }
        Cmd::RemoveExternal { name } => json!(store.write(|tx| external_peers::delete(tx, &name))?),
        Cmd::WgQuick { name, private_key } => {
            let key = PrivateKey::from_base64(&private_key)?;
            let (peer, ns) =
                store.read(|c| Ok((external_peers::get(c, &name)?, nodes::list(c)?)))?;
            let peer = peer.ok_or("no such external peer")?;
            json!(makiatto_mesh::wg_quick_config(
                &peer,
                Some(&key),
                &ns,
                Some(25)
            ))
        }
        Cmd::PutBlob { size, seed } => {
            let mut x = seed.wrapping_mul(2).wrapping_add(1);
            let data: Vec<u8> = (0..size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let blobs = node.blobs().clone();
            json!(
                tokio::task::spawn_blocking(move || blobs.put_bytes(&data))
                    .await??
                    .to_string()
            )
        }
        Cmd::FetchBlobs { hashes } => {
            let hashes: Vec<BlobHash> =
                hashes.iter().map(|h| h.parse()).collect::<Result<_, _>>()?;
            let results = node.fetch_blobs(&hashes, &FetchOptions::default()).await;
            let failed: Vec<String> = results
                .iter()
                .filter_map(|(h, r)| r.as_ref().err().map(|e| format!("{h}: {e}")))
                .collect();
            if !failed.is_empty() {
                return Err(failed.join("; ").into());
            }
            json!(
                results
                    .iter()
                    .map(|(_, r)| r.as_ref().map_or(0, |r| r.bytes))
                    .sum::<u64>()
            )
        }
    })
}
