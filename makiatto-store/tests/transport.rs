//! Transport tests: TCP client and server, the in-memory network, the replicator, and two
//! OS processes replicating over loopback.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use makiatto_store::transport::{
    MemoryNetwork, NodeId, Replicator, ReplicatorOptions, ServeOptions, SyncTransport,
    TcpTransport, serve_tcp,
};
use makiatto_store::wire::{self, Cell, Chunk, Frame, SyncReq};
use makiatto_store::{
    Known, Migration, Options, Replicate, Schema, SiteId, Store, StoreError, TableClass, Value,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The schema of `tests/integration/support.rs`.
const SCHEMA: Schema = Schema {
    migrations: &[Migration {
        version: 1,
        sql: "CREATE TABLE kv (k TEXT PRIMARY KEY NOT NULL, a TEXT, b INTEGER NOT NULL DEFAULT 0) STRICT;
              CREATE TABLE pair (x INTEGER NOT NULL, y TEXT NOT NULL, v BLOB, PRIMARY KEY (x, y)) STRICT;
              CREATE TABLE ev (id TEXT PRIMARY KEY NOT NULL, note TEXT) STRICT;",
        replicate: &[
            Replicate {
                table: "kv",
                class: TableClass::Durable,
            },
            Replicate {
                table: "pair",
                class: TableClass::Durable,
            },
            Replicate {
                table: "ev",
                class: TableClass::Ephemeral,
            },
        ],
    }],
};

const CLUSTER: &str = "transport-test";
const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Helpers

struct Node {
    store: Store,
    _dir: tempfile::TempDir,
}

fn node(cluster: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        cluster_id: cluster.into(),
        ..Options::default()
    };
    let store = Store::open(dir.path().join("db.sqlite"), &SCHEMA, options).unwrap();
    Node { store, _dir: dir }
}

fn put(store: &Store, k: &str, a: &str, b: i64) {
    store
        .write(|tx| {
            Ok(tx.execute(
                "INSERT OR REPLACE INTO kv (k, a, b) VALUES (?1, ?2, ?3)",
                rusqlite::params![k, a, b],
            )?)
        })
        .unwrap();
}

fn get(store: &Store, k: &str) -> Option<String> {
    store
        .read(|c| {
            use rusqlite::OptionalExtension;
            Ok(
                c.query_row("SELECT a FROM kv WHERE k = ?1", [k], |r| r.get(0))
                    .optional()?,
            )
        })
        .unwrap()
}

fn count(store: &Store, sql: &str) -> i64 {
    store
        .read(|c| Ok(c.query_row(sql, [], |r| r.get(0))?))
        .unwrap()
}

fn hash(store: &Store) -> blake3::Hash {
    store.canonical_hash().unwrap()
}

/// Polls `cond` every 20 ms; fails the test after `timeout`.
async fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running `serve_tcp`, stopped on drop of `stop` or by [`Server::stop`].
struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .expect("server stops")
            .unwrap();
    }
}

async fn start_server(store: &Store, options: ServeOptions) -> (Server, mpsc::Receiver<Chunk>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(1024);
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(serve_tcp(
        listener,
        store.clone(),
        tx,
        options,
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    (Server { addr, stop, task }, rx)
}

fn shutdown_signal(rx: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

fn quiet_sync() -> ReplicatorOptions {
    ReplicatorOptions {
        sync_interval_min: Duration::from_secs(3600),
        sync_interval_max: Duration::from_secs(3600),
        ..ReplicatorOptions::default()
    }
}

fn static_peers<P: Clone + Send + Sync + 'static>(
    peers: Vec<P>,
) -> Arc<dyn Fn() -> Vec<P> + Send + Sync> {
    Arc::new(move || peers.clone())
}

fn hello(cluster: &str) -> Frame {
    Frame::Hello {
        cluster_id: cluster.into(),
        site: SiteId::random(),
        schema_version: 1,
    }
}

fn frame_bytes(frame: &Frame) -> Vec<u8> {
    let payload = wire::encode(frame).unwrap();
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&payload);
    out
}

/// A chunk that would insert row `k` if applied.
fn foreign_chunk(k: &str) -> Chunk {
    let pk = makiatto_store::pack(&[Value::Text(k.into())]);
    let cell = |cid: &str, val: Value, seq: u32| Cell {
        table: "kv".into(),
        pk: pk.clone().into(),
        cid: cid.into(),
        val,
        cv: 1,
        cl: 1,
        seq,
    };
    Chunk {
        site: SiteId::random(),
        ver: 1,
        ts: 1 << 40,
        seq_lo: 0,
        seq_hi: 1,
        last_seq: 1,
        hops: 0,
        cells: vec![
            cell(makiatto_store::SENTINEL, Value::Null, 0),
            cell("a", Value::Text("evil".into()), 1),
        ],
    }
}

/// Connects a raw socket, sends `bytes` (closing our side when `close` is set) and reads
/// the server's frames until it closes the connection. Returns the frames received.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8], close: bool) -> Vec<Frame> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if close {
        s.shutdown().await.unwrap();
    }
    let mut frames = Vec::new();
    let read_all = async {
        loop {
            match wire::read_frame(&mut s, wire::DEFAULT_MAX_FRAME).await {
                Ok(Some(f)) => frames.push(f),
                // A clean close, or a reset because the server left our bytes unread.
                Ok(None) | Err(StoreError::Io(_) | StoreError::Truncated) => break,
                Err(e) => panic!("unexpected error reading from the server: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .expect("the server closes the connection");
    frames
}

// ---------------------------------------------------------------------------------------
// TCP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_pulls_both_ways_converge() {
    let a = node(CLUSTER);
    let b = node(CLUSTER);
    for i in 0..40 {
        put(&a.store, &format!("a{i}"), &"x".repeat(40), i);
        put(&b.store, &format!("b{i}"), &"y".repeat(40), i);
    }
    // Concurrent writes to the same rows, and a delete.
    put(&a.store, "shared", "from a", 1);
    put(&b.store, "shared", "from b", 2);
    a.store
        .write(|tx| Ok(tx.execute("DELETE FROM kv WHERE k = 'a3'", [])?))
        .unwrap();
    assert_ne!(hash(&a.store), hash(&b.store));

    let (server_a, _in_a) = start_server(&a.store, ServeOptions::default()).await;
    let (server_b, _in_b) = start_server(&b.store, ServeOptions::default()).await;
    // A small budget forces several sessions per sync.
    let options = ReplicatorOptions {
        byte_budget: 2000,
        ..quiet_sync()
    };
    let (_, inbound) = mpsc::channel(1);
    let rep_a = Replicator::new(
        a.store.clone(),
        TcpTransport::for_store(&a.store),
        static_peers(vec![server_b.addr]),
        inbound,
        options.clone(),
    );
    let (_, inbound) = mpsc::channel(1);
    let rep_b = Replicator::new(
        b.store.clone(),
        TcpTransport::for_store(&b.store),
        static_peers(vec![server_a.addr]),
        inbound,
        options,
    );

    let stats = rep_a.sync_once(&server_b.addr).await.unwrap();
    assert!(stats.complete, "{stats:?}");
    assert!(stats.rounds > 1, "the budget splits the sync: {stats:?}");
    assert_eq!(stats.versions, 41);
    assert_eq!(stats.responder_known, b.store.known());
    assert!(a.store.known().is_superset(&b.store.known()));
    assert_eq!(
        get(&a.store, "b7").as_deref(),
        Some("y".repeat(40).as_str())
    );

    let stats = rep_b.sync_once(&server_a.addr).await.unwrap();
    assert!(stats.complete, "{stats:?}");
    assert_eq!(a.store.known(), b.store.known());
    assert_eq!(hash(&a.store), hash(&b.store));
    assert_eq!(get(&b.store, "a3"), None);
    assert_eq!(count(&b.store, "SELECT count(*) FROM kv"), 80);

    // Nothing left to send: one round, no versions.
    let stats = rep_a.sync_once(&server_b.addr).await.unwrap();
    assert_eq!((stats.rounds, stats.versions, stats.complete), (1, 0, true));

    server_a.stop().await;
    server_b.stop().await;
}

/// The answer streams into the requester and is merged as it arrives; a connection lost
/// in the middle of a version leaves the versions that arrived whole applied and nothing
/// of the cut one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_answer_cut_mid_version_applies_whole_versions_only() {
    let a = node(CLUSTER);
    let b = node(CLUSTER);
    put(&a.store, "small", "x", 1);
    // One transaction over a MiB: its answer comes in several parts.
    a.store
        .write(|tx| {
            for i in 0..300 {
                tx.execute(
                    "INSERT INTO kv (k, a, b) VALUES (?1, ?2, ?3)",
                    rusqlite::params![format!("big{i}"), "z".repeat(4000), i],
                )?;
            }
            Ok(())
        })
        .unwrap();
    let frames = a.store.serve_sync(&b.store.sync_request(u64::MAX)).unwrap();
    let cut = frames
        .iter()
        .position(|f| {
            matches!(
                f,
                Frame::Version {
                    ver: 2,
                    part: 0,
                    last_part: false,
                    ..
                }
            )
        })
        .expect("version 2 in several parts")
        + 1;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(&frame_bytes(&hello(CLUSTER))).await.unwrap();
        for _ in 0..2 {
            // The client's Hello, then its request.
            wire::read_frame(&mut s, wire::DEFAULT_MAX_FRAME)
                .await
                .unwrap();
        }
        for f in &frames[..cut] {
            s.write_all(&frame_bytes(f)).await.unwrap();
        }
        // ... and the connection drops.
    });
    let err = TcpTransport::for_store(&b.store)
        .pull_apply(&addr, b.store.sync_request(u64::MAX), &b.store)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Truncated), "{err:?}");
    server.await.unwrap();
    assert_eq!(get(&b.store, "small").as_deref(), Some("x"));
    assert_eq!(
        count(&b.store, "SELECT count(*) FROM kv WHERE k LIKE 'big%'"),
        0
    );
    let site = a.store.site();
    assert_eq!(b.store.known().ranges(&site).to_pairs(), vec![(1, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_push_reaches_peer_without_pull() {
    let a = node(CLUSTER);
    let b = node(CLUSTER);
    let (server_a, in_a) = start_server(&a.store, ServeOptions::default()).await;
    let (server_b, in_b) = start_server(&b.store, ServeOptions::default()).await;
    // No periodic sync within the test; small chunks so that a big version is split.
    let options = ReplicatorOptions {
        chunk_bytes: 256,
        ..quiet_sync()
    };
    let rep_a = Replicator::new(
        a.store.clone(),
        TcpTransport::for_store(&a.store),
        static_peers(vec![server_b.addr]),
        in_a,
        options.clone(),
    );
    let rep_b = Replicator::new(
        b.store.clone(),
        TcpTransport::for_store(&b.store),
        static_peers(vec![server_a.addr]),
        in_b,
        options,
    );
    let (stop, stop_rx) = watch::channel(false);
    let run_a = tokio::spawn(rep_a.run(shutdown_signal(&stop_rx)));
    let run_b = tokio::spawn(rep_b.run(shutdown_signal(&stop_rx)));

    put(&a.store, "hello", "world", 1);
    wait_until(TIMEOUT, "the row to reach b", || {
        get(&b.store, "hello").is_some()
    })
    .await;
    assert_eq!(get(&b.store, "hello").as_deref(), Some("world"));

    // One version of 50 rows, cut into many chunks.
    a.store
        .write(|tx| {
            for i in 0..50 {
                tx.execute(
                    "INSERT INTO kv (k, a) VALUES (?1, ?2)",
                    rusqlite::params![format!("bulk{i}"), "z".repeat(30)],
                )?;
            }
            Ok(())
        })
        .unwrap();
    let mut watch_b = b.store.watch_table("kv").unwrap();
    wait_until(TIMEOUT, "the big version to reach b", || {
        watch_b.borrow_and_update();
        count(&b.store, "SELECT count(*) FROM kv WHERE k LIKE 'bulk%'") == 50
    })
    .await;

    // And the other way.
    put(&b.store, "reply", "from b", 2);
    wait_until(TIMEOUT, "b's row to reach a", || {
        get(&a.store, "reply").is_some()
    })
    .await;
    assert_eq!(a.store.known(), b.store.known());
    assert_eq!(hash(&a.store), hash(&b.store));

    stop.send(true).unwrap();
    tokio::time::timeout(TIMEOUT, run_a).await.unwrap().unwrap();
    tokio::time::timeout(TIMEOUT, run_b).await.unwrap().unwrap();
    server_a.stop().await;
    server_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_refuses_another_cluster() {
    let s = node(CLUSTER);
    put(&s.store, "k", "v", 1);
    let before = hash(&s.store);
    let (server, mut inbound) = start_server(&s.store, ServeOptions::default()).await;

    let stranger = node("another-cluster");
    put(&stranger.store, "intruder", "x", 1);
    let client = TcpTransport::for_store(&stranger.store);
    let err = client
        .pull(&server.addr, stranger.store.sync_request(1 << 20))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::ClusterMismatch { ours, theirs }
            if ours == "another-cluster" && theirs == CLUSTER),
        "{err:?}"
    );
    let err = client
        .push(&server.addr, vec![foreign_chunk("pushed")])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ClusterMismatch { .. }), "{err:?}");

    // A client that ignores the server's Hello and pushes anyway is cut off.
    let mut bytes = frame_bytes(&hello("another-cluster"));
    bytes.extend(frame_bytes(&Frame::Chunk(foreign_chunk("raw"))));
    bytes.extend(frame_bytes(&Frame::SyncReq(SyncReq {
        known: Known::default(),
        byte_budget: 1 << 20,
        pending: Vec::new(),
    })));
    let frames = raw_exchange(server.addr, &bytes, true).await;
    assert!(
        matches!(frames.as_slice(), [Frame::Hello { .. }]),
        "only the server's Hello: {frames:?}"
    );

    assert!(inbound.try_recv().is_err(), "no chunk was forwarded");
    assert_eq!(hash(&s.store), before);
    assert_eq!(get(&stranger.store, "k"), None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_server_survives_bad_input() {
    let s = node(CLUSTER);
    for i in 0..10 {
        put(&s.store, &format!("k{i}"), "v", i);
    }
    let before = hash(&s.store);
    let options = ServeOptions {
        read_timeout: Duration::from_millis(300),
        max_frame: 64 << 10,
        ..ServeOptions::default()
    };
    let (server, mut inbound) = start_server(&s.store, options).await;
    let good_hello = frame_bytes(&hello(CLUSTER));
    let with_hello = |rest: &[u8]| [good_hello.as_slice(), rest].concat();

    let mut garbage: Vec<u8> = 40u32.to_be_bytes().to_vec();
    garbage.extend((0..40u8).map(|i| i.wrapping_mul(37)));
    let mut bad_postcard = 3u32.to_be_bytes().to_vec();
    bad_postcard.extend([wire::PROTOCOL, 0xff, 0xff]);
    let mut other_protocol = frame_bytes(&hello(CLUSTER));
    other_protocol[4] = wire::PROTOCOL + 1;
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend([1, 2, 3]);
    let unexpected = frame_bytes(&Frame::SyncDone {
        complete: true,
        responder_known: Known::default(),
    });

    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("oversized length prefix", vec![0xff; 4], true),
        (
            "oversized after hello",
            with_hello(&[0x7f, 0xff, 0xff, 0xff]),
            true,
        ),
        (
            "just over the limit",
            with_hello(&((64u32 << 10) + 1).to_be_bytes()),
            false,
        ),
        ("garbage", garbage.clone(), true),
        ("garbage after hello", with_hello(&garbage), true),
        ("bad postcard", with_hello(&bad_postcard), true),
        ("other protocol", other_protocol, true),
        ("truncated frame", with_hello(&truncated), true),
        ("silent client", Vec::new(), false),
        ("truncated and stalled", with_hello(&truncated), false),
        (
            "request before hello",
            frame_bytes(&Frame::SyncReq(SyncReq {
                known: Known::default(),
                byte_budget: 1 << 20,
                pending: Vec::new(),
            })),
            true,
        ),
        ("answer frame from a client", with_hello(&unexpected), true),
        (
            "chunk with a lying hello",
            [
                frame_bytes(&Frame::Busy),
                frame_bytes(&Frame::Chunk(foreign_chunk("x"))),
            ]
            .concat(),
            true,
        ),
    ];
    for (name, bytes, close) in &cases {
        let frames = raw_exchange(server.addr, bytes, *close).await;
        assert!(
            matches!(frames.as_slice(), [Frame::Hello { cluster_id, .. }] if cluster_id == CLUSTER),
            "{name}: the server sends its Hello and nothing else: {frames:?}"
        );
    }
    assert!(inbound.try_recv().is_err(), "no chunk was forwarded");
    assert_eq!(hash(&s.store), before, "bad clients changed nothing");

    // The server is still up and serves a good client.
    let c = node(CLUSTER);
    let frames = TcpTransport::for_store(&c.store)
        .pull(&server.addr, c.store.sync_request(1 << 20))
        .await
        .unwrap();
    let done = c.store.apply_sync(frames).unwrap().unwrap();
    assert!(done.0);
    assert_eq!(hash(&c.store), before);
    assert_eq!(hash(&s.store), before);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_busy_refused_and_bounded() {
    let s = node(CLUSTER);
    put(&s.store, "k", "v", 1);
    let c = node(CLUSTER);
    let client = TcpTransport::for_store(&c.store);

    // No session slots: Busy.
    let (busy, _in) = start_server(
        &s.store,
        ServeOptions {
            max_sync_sessions: 0,
            ..ServeOptions::default()
        },
    )
    .await;
    let err = client
        .pull(&busy.addr, c.store.sync_request(1 << 20))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Busy), "{err:?}");
    busy.stop().await;

    // Outside the allowed set: closed before Hello.
    let (refusing, _in) = start_server(
        &s.store,
        ServeOptions {
            allow: Some(Arc::new(|addr: SocketAddr| !addr.ip().is_loopback())),
            ..ServeOptions::default()
        },
    )
    .await;
    let err = client
        .pull(&refusing.addr, c.store.sync_request(1 << 20))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Truncated | StoreError::Io(_)),
        "{err:?}"
    );
    refusing.stop().await;

    // One connection at most: a second client is closed while the first is open.
    let (single, _in) = start_server(
        &s.store,
        ServeOptions {
            max_connections: 1,
            ..ServeOptions::default()
        },
    )
    .await;
    let mut first = TcpStream::connect(single.addr).await.unwrap();
    let greeting = wire::read_frame(&mut first, 1 << 20).await.unwrap();
    assert!(matches!(greeting, Some(Frame::Hello { .. })));
    let err = client
        .pull(&single.addr, c.store.sync_request(1 << 20))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Truncated | StoreError::Io(_)),
        "{err:?}"
    );
    drop(first);
    // The slot frees once the first connection is gone.
    let mut pulled = None;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while pulled.is_none() {
        match client
            .pull(&single.addr, c.store.sync_request(1 << 20))
            .await
        {
            Ok(frames) => pulled = Some(frames),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the slot never freed: {e}"),
        }
    }
    c.store.apply_sync(pulled.unwrap()).unwrap();
    assert_eq!(hash(&c.store), hash(&s.store));
    single.stop().await;
    assert_eq!(count(&c.store, "SELECT count(*) FROM kv"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_client_times_out_on_a_silent_server() {
    // A listener that accepts but never speaks.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(socket);
    });
    let c = node(CLUSTER);
    let client = TcpTransport {
        session_timeout: Duration::from_millis(200),
        ..TcpTransport::for_store(&c.store)
    };
    let err = client
        .pull(&addr, c.store.sync_request(1 << 20))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Timeout { .. }), "{err:?}");
    hold.abort();
}

// ---------------------------------------------------------------------------------------
// Memory network

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_network_partition_and_heal() {
    const N: u64 = 5;
    let net = MemoryNetwork::new();
    let (stop, stop_rx) = watch::channel(false);
    let mut nodes = Vec::new();
    let mut runs = Vec::new();
    for i in 0..N {
        let n = node(CLUSTER);
        let (tx, rx) = mpsc::channel(64);
        let transport = net.join(NodeId(i), n.store.clone(), tx);
        let peers_net = net.clone();
        let replicator = Replicator::new(
            n.store.clone(),
            transport,
            Arc::new(move || peers_net.others(NodeId(i))),
            rx,
            ReplicatorOptions {
                sync_interval_min: Duration::from_millis(30),
                sync_interval_max: Duration::from_millis(90),
                rng_seed: Some(i),
                ..ReplicatorOptions::default()
            },
        );
        runs.push(tokio::spawn(replicator.run(shutdown_signal(&stop_rx))));
        nodes.push(n);
    }
    let stores: Vec<Store> = nodes.iter().map(|n| n.store.clone()).collect();
    let mut rng = SmallRng::seed_from_u64(7);
    let mut write_random = |stores: &[Store], rounds: usize, tag: &str| {
        for r in 0..rounds {
            let s = &stores[rng.random_range(0..stores.len())];
            let key = format!("k{}", rng.random_range(0..30));
            if rng.random_bool(0.15) {
                s.write(|tx| Ok(tx.execute("DELETE FROM kv WHERE k = ?1", [&key])?))
                    .unwrap();
            } else {
                put(s, &key, &format!("{tag}-{r}"), r as i64);
            }
        }
    };
    let converged = |stores: &[Store]| {
        let h = hash(&stores[0]);
        stores
            .iter()
            .all(|s| hash(s) == h && s.known() == stores[0].known())
    };

    write_random(&stores, 60, "before");
    wait_until(TIMEOUT, "all nodes to converge", || converged(&stores)).await;

    // Node 4 is cut off; everyone keeps writing.
    let cut = NodeId(N - 1);
    net.isolate(cut);
    write_random(&stores, 60, "during");
    let last = &stores[(N - 1) as usize];
    put(last, "only-on-the-island", "x", 1);
    put(&stores[0], "only-on-the-mainland", "y", 1);
    let mainland = &stores[..(N - 1) as usize];
    wait_until(TIMEOUT, "the connected nodes to converge", || {
        converged(mainland)
    })
    .await;
    assert_eq!(get(last, "only-on-the-mainland"), None);
    assert_eq!(get(&stores[1], "only-on-the-island"), None);
    assert!(!last.known().is_superset(&stores[0].known()));
    assert_ne!(hash(last), hash(&stores[0]));
    // Pulls and pushes across the partition fail.
    let probe = net.join(NodeId(99), stores[0].clone(), mpsc::channel(1).0);
    net.partition(NodeId(99), cut);
    assert!(matches!(
        probe.pull(&cut, stores[0].sync_request(1024)).await,
        Err(StoreError::Unreachable { .. })
    ));
    assert!(matches!(
        probe.push(&cut, vec![foreign_chunk("z")]).await,
        Err(StoreError::Unreachable { .. })
    ));
    net.leave(NodeId(99));

    net.heal();
    write_random(&stores, 20, "after");
    wait_until(TIMEOUT, "all nodes to converge after the heal", || {
        converged(&stores)
    })
    .await;
    assert_eq!(get(last, "only-on-the-mainland").as_deref(), Some("y"));
    assert_eq!(get(&stores[2], "only-on-the-island").as_deref(), Some("x"));

    stop.send(true).unwrap();
    for run in runs {
        tokio::time::timeout(TIMEOUT, run).await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_push_drops_when_the_inbox_is_full() {
    let net = MemoryNetwork::new();
    let a = node(CLUSTER);
    let b = node(CLUSTER);
    let (tx_b, mut rx_b) = mpsc::channel(2);
    let ta = net.join(NodeId(1), a.store.clone(), mpsc::channel(1).0);
    net.join(NodeId(2), b.store.clone(), tx_b);
    let chunks: Vec<Chunk> = (0..5).map(|i| foreign_chunk(&format!("c{i}"))).collect();
    ta.push(&NodeId(2), chunks).await.unwrap();
    assert_eq!(net.dropped(), 3);
    assert!(rx_b.try_recv().is_ok());
    assert!(rx_b.try_recv().is_ok());
    assert!(rx_b.try_recv().is_err());
    assert!(matches!(
        ta.push(&NodeId(3), Vec::new()).await,
        Err(StoreError::Unreachable { .. })
    ));
}

// ---------------------------------------------------------------------------------------
// Two processes

const CHILD_ENV: &str = "MAKIATTO_TRANSPORT_CHILD";
const PARENT_ADDR_ENV: &str = "MAKIATTO_TRANSPORT_PARENT";
const PORT_MARK: &str = "MAKIATTO_PORT=";
const HASH_MARK: &str = "MAKIATTO_HASH=";
const CHILD_ROWS: usize = 20;

/// The child half of `two_processes_converge` (a no-op in a normal test run): serves its
/// own store over TCP, replicates with the parent, and answers `hash` on stdin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_node() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let parent: SocketAddr = std::env::var(PARENT_ADDR_ENV).unwrap().parse().unwrap();
    let n = node(CLUSTER);
    for i in 0..CHILD_ROWS {
        put(&n.store, &format!("child{i}"), "from the child", i as i64);
    }
    put(&n.store, "both", "child", 1);
    let (server, inbound) = start_server(&n.store, ServeOptions::default()).await;
    let replicator = Replicator::new(
        n.store.clone(),
        TcpTransport::for_store(&n.store),
        static_peers(vec![parent]),
        inbound,
        ReplicatorOptions {
            sync_interval_min: Duration::from_millis(50),
            sync_interval_max: Duration::from_millis(150),
            ..ReplicatorOptions::default()
        },
    );
    let (stop, stop_rx) = watch::channel(false);
    let run = tokio::spawn(replicator.run(shutdown_signal(&stop_rx)));

    let mut out = tokio::io::stdout();
    let say = |line: String| format!("\n{line}\n").into_bytes();
    out.write_all(&say(format!("{PORT_MARK}{}", server.addr.port())))
        .await
        .unwrap();
    out.flush().await.unwrap();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "hash" => {
                out.write_all(&say(format!("{HASH_MARK}{}", hash(&n.store))))
                    .await
                    .unwrap();
                out.flush().await.unwrap();
            }
            "quit" => break,
            _ => {}
        }
    }
    stop.send(true).unwrap();
    run.await.unwrap();
    server.stop().await;
}

/// Reads the child's stdout until a line carrying `mark`; returns what follows it.
async fn read_mark(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    mark: &str,
) -> String {
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(pos) = line.find(mark) {
                return line[pos + mark.len()..].trim().to_owned();
            }
        }
        panic!("the child exited before printing {mark}");
    };
    tokio::time::timeout(TIMEOUT, read)
        .await
        .expect("the child answers in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_converge() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let p = node(CLUSTER);
    for i in 0..10 {
        put(&p.store, &format!("parent{i}"), "from the parent", i);
    }
    put(&p.store, "both", "parent", 2);
    let (server, inbound) = start_server(&p.store, ServeOptions::default()).await;

    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_process_node",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env(PARENT_ADDR_ENV, server.addr.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = read_mark(&mut lines, PORT_MARK).await.parse().unwrap();
    let child_addr = SocketAddr::from(([127, 0, 0, 1], port));

    // The parent pushes to the child and pulls from it on demand.
    let peers = Arc::new(Mutex::new(vec![child_addr]));
    let peer_list = peers.clone();
    let replicator = Replicator::new(
        p.store.clone(),
        TcpTransport::for_store(&p.store),
        Arc::new(move || peer_list.lock().unwrap().clone()),
        inbound,
        quiet_sync(),
    );
    let stats = replicator.sync_once(&child_addr).await.unwrap();
    assert!(stats.complete);
    assert!(stats.versions > CHILD_ROWS, "{stats:?}");
    assert_eq!(
        count(&p.store, "SELECT count(*) FROM kv WHERE k LIKE 'child%'"),
        CHILD_ROWS as i64
    );
    let (stop, stop_rx) = watch::channel(false);
    let run = tokio::spawn(replicator.run(shutdown_signal(&stop_rx)));
    put(&p.store, "late", "pushed", 3);

    // The child pulls from the parent on its own timer and receives the push; the parent
    // pulls again until both hold the same state.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let client = TcpTransport::for_store(&p.store);
    loop {
        let frames = client
            .pull(&child_addr, p.store.sync_request(8 << 20))
            .await
            .unwrap();
        p.store.apply_sync(frames).unwrap();
        stdin.write_all(b"hash\n").await.unwrap();
        stdin.flush().await.unwrap();
        let child_hash = read_mark(&mut lines, HASH_MARK).await;
        if child_hash == hash(&p.store).to_hex().as_str() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the processes did not converge"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&p.store, "child3").as_deref(), Some("from the child"));
    assert!(get(&p.store, "both").is_some());

    // Ask the child to stop (so it removes its database), and kill it if it does not.
    stdin.write_all(b"quit\n").await.unwrap();
    drop(stdin);
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        child.kill().await.unwrap();
    }
    peers.lock().unwrap().clear();
    stop.send(true).unwrap();
    tokio::time::timeout(TIMEOUT, run).await.unwrap().unwrap();
    server.stop().await;
}
