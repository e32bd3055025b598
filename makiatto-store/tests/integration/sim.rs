//! A deterministic cluster simulator: many stores, virtual time, a seeded network that
//! loses, duplicates and reorders messages, partitions, restarts. Everything must end in
//! identical canonical hashes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::PathBuf;
use std::sync::Arc;

use makiatto_store::{Change, Chunk, ChunkOutcome, Options, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::broadcast::Receiver;

use crate::support::{SCHEMA, TestClock};

const BASE_MS: u64 = 1_800_000_000_000;

/// In-flight messages: (delivery time, sequence number, destination, encoded chunk).
type Queue = BinaryHeap<Reverse<(u64, u64, usize, Vec<u8>)>>;

struct SimNode {
    path: PathBuf,
    store: Option<Store>,
    outbox: Option<Receiver<Arc<Change>>>,
    next_sync_ms: u64,
}

/// Network and fault parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SimConfig {
    pub(crate) nodes: usize,
    pub(crate) seed: u64,
    pub(crate) duration_ms: u64,
    pub(crate) writes_per_sec: f64,
    pub(crate) loss: f64,
    pub(crate) dup: f64,
    pub(crate) max_delay_ms: u64,
    pub(crate) chunk_bytes: usize,
    pub(crate) sync_budget: u64,
    pub(crate) restarts: usize,
}

#[derive(Debug, Default)]
pub(crate) struct SimReport {
    pub(crate) versions: usize,
    pub(crate) delivered: usize,
    pub(crate) lost: usize,
    pub(crate) sync_sessions: usize,
    pub(crate) heal_rounds: usize,
}

pub(crate) fn simulate(cfg: SimConfig) -> SimReport {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new(BASE_MS);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let open = |path: &PathBuf| {
        Store::open(
            path,
            &SCHEMA,
            Options {
                clock: clock.clone(),
                ..Options::default()
            },
        )
        .unwrap()
    };
    let mut nodes: Vec<SimNode> = (0..cfg.nodes)
        .map(|i| {
            let path = dir.path().join(format!("n{i}.db"));
            let store = open(&path);
            let outbox = Some(store.subscribe_local());
            SimNode {
                path,
                store: Some(store),
                outbox,
                next_sync_ms: BASE_MS + rng.random_range(0..4000),
            }
        })
        .collect();
    // In-flight messages ordered by delivery time (ties broken by a sequence number).
    let mut queue: Queue = BinaryHeap::new();
    let mut msg_seq = 0u64;
    let mut report = SimReport::default();
    // Two partitions during the run: a random half split off, then one node isolated.
    let d = cfg.duration_ms;
    let half: Vec<bool> = (0..cfg.nodes).map(|_| rng.random_bool(0.5)).collect();
    let lonely = rng.random_range(0..cfg.nodes);
    let side = |t: u64, n: usize| -> usize {
        let rel = t - BASE_MS;
        if rel > d / 5 && rel < 2 * d / 5 {
            usize::from(half[n])
        } else if rel > 3 * d / 5 && rel < 4 * d / 5 {
            usize::from(n == lonely)
        } else {
            0
        }
    };
    let restart_at: Vec<(u64, usize)> = (0..cfg.restarts)
        .map(|_| {
            (
                BASE_MS + rng.random_range(0..d),
                rng.random_range(0..cfg.nodes),
            )
        })
        .collect();

    let tick = 50;
    let mut now = BASE_MS;
    let mut keys = 0u32;
    while now < BASE_MS + d {
        now += tick;
        clock.set(now);
        // Restarts: close and reopen a node from its file.
        for &(at, n) in &restart_at {
            if at > now - tick && at <= now {
                nodes[n].store = None;
                nodes[n].outbox = None;
                let store = open(&nodes[n].path);
                nodes[n].outbox = Some(store.subscribe_local());
                nodes[n].store = Some(store);
            }
        }
        // Writes: random rows, updates and deletes on random nodes.
        let writes = (cfg.writes_per_sec * tick as f64 / 1000.0).floor() as usize
            + usize::from(rng.random_bool((cfg.writes_per_sec * tick as f64 / 1000.0).fract()));
        for _ in 0..writes {
            let n = rng.random_range(0..cfg.nodes);
            let store = nodes[n].store.as_ref().unwrap();
            let k = format!("k{}", rng.random_range(0..keys.max(1) + 3));
            keys += 1;
            let v = format!("v{}", rng.random_range(0..1_000_000));
            let id = format!("e{n}-{now}-{}", rng.random_range(0..u32::MAX));
            let choice = rng.random_range(0..10);
            store
                .write(|tx| {
                    match choice {
                        0..=4 => {
                            tx.execute("INSERT INTO kv (k, a) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET a = excluded.a", [&k, &v])?;
                        }
                        5 | 6 => {
                            tx.execute("UPDATE kv SET b = b + 1 WHERE k = ?1", [&k])?;
                        }
                        7 => {
                            tx.execute("DELETE FROM kv WHERE k = ?1", [&k])?;
                        }
                        _ => {
                            // A larger transaction, so versions span several chunks.
                            for i in 0..20 {
                                tx.execute("INSERT OR REPLACE INTO pair (x, y, v) VALUES (?1, ?2, zeroblob(40))", rusqlite::params![i, &id])?;
                            }
                            tx.execute("INSERT INTO ev (id, note) VALUES (?1, ?2)", [&id, &v])?;
                        }
                    }
                    Ok(())
                })
                .unwrap();
        }
        // Broadcast new local versions to 3 random peers.
        for n in 0..cfg.nodes {
            let mut out = Vec::new();
            if let Some(rx) = nodes[n].outbox.as_mut() {
                while let Ok(c) = rx.try_recv() {
                    out.push(c);
                }
            }
            for c in out {
                report.versions += 1;
                for chunk in c.to_chunks(cfg.chunk_bytes, 4) {
                    send(
                        &mut rng,
                        &cfg,
                        &mut queue,
                        &mut msg_seq,
                        &mut report,
                        now,
                        n,
                        &chunk,
                        side,
                    );
                }
            }
        }
        // Deliver what is due; relays forward chunks that were new to them.
        while let Some(Reverse((at, _, to, bytes))) = queue.peek().cloned() {
            if at > now {
                break;
            }
            queue.pop();
            let chunk: Chunk = postcard::from_bytes(&bytes).unwrap();
            let outcome = nodes[to]
                .store
                .as_ref()
                .unwrap()
                .receive_chunk(&chunk)
                .unwrap();
            report.delivered += 1;
            if matches!(outcome, ChunkOutcome::Applied | ChunkOutcome::Buffered) && chunk.hops > 0 {
                let fwd = Chunk {
                    hops: chunk.hops - 1,
                    ..chunk
                };
                send(
                    &mut rng,
                    &cfg,
                    &mut queue,
                    &mut msg_seq,
                    &mut report,
                    now,
                    to,
                    &fwd,
                    side,
                );
            }
        }
        // Anti-entropy: every 2-6 s each node pulls from 2 random peers on its side.
        for n in 0..cfg.nodes {
            if nodes[n].next_sync_ms > now {
                continue;
            }
            nodes[n].next_sync_ms = now + rng.random_range(2000..6000);
            for _ in 0..2 {
                let peer = rng.random_range(0..cfg.nodes);
                if peer == n || side(now, peer) != side(now, n) || rng.random_bool(cfg.loss) {
                    continue;
                }
                pull(&nodes, n, peer, cfg.sync_budget);
                report.sync_sessions += 1;
            }
        }
    }
    // Heal: no more writes or losses; pulls until every node knows everything.
    let stores: Vec<&Store> = nodes.iter().map(|n| n.store.as_ref().unwrap()).collect();
    let hashes = |stores: &[&Store]| {
        stores
            .iter()
            .map(|s| s.canonical_hash().unwrap())
            .collect::<Vec<_>>()
    };
    for round in 1..=20 {
        report.heal_rounds = round;
        for n in 0..stores.len() {
            for k in 1..=2 {
                let peer = (n + k * round) % stores.len();
                if peer != n {
                    pull(&nodes, n, peer, cfg.sync_budget);
                }
            }
        }
        let h = hashes(&stores);
        if h.iter().all(|x| *x == h[0]) && stores.iter().all(|s| s.known() == stores[0].known()) {
            break;
        }
    }
    let h = hashes(&stores);
    let distinct: BTreeMap<_, usize> = h.iter().fold(BTreeMap::new(), |mut m, x| {
        *m.entry(x.to_hex().to_string()).or_default() += 1;
        m
    });
    assert_eq!(
        distinct.len(),
        1,
        "replicas did not converge: {distinct:?} ({report:?})"
    );
    for s in &stores {
        assert_eq!(s.known(), stores[0].known(), "known sets differ");
    }
    report
}

#[allow(clippy::too_many_arguments)]
fn send(
    rng: &mut StdRng,
    cfg: &SimConfig,
    queue: &mut Queue,
    msg_seq: &mut u64,
    report: &mut SimReport,
    now: u64,
    from: usize,
    chunk: &Chunk,
    side: impl Fn(u64, usize) -> usize,
) {
    let bytes = postcard::to_allocvec(chunk).unwrap();
    let mut sent = 0;
    while sent < 3 {
        let to = rng.random_range(0..cfg.nodes);
        if to == from {
            continue;
        }
        sent += 1;
        if side(now, to) != side(now, from) || rng.random_bool(cfg.loss) {
            report.lost += 1;
            continue;
        }
        let copies = if rng.random_bool(cfg.dup) { 2 } else { 1 };
        for _ in 0..copies {
            *msg_seq += 1;
            let at = now + rng.random_range(1..=cfg.max_delay_ms);
            queue.push(Reverse((at, *msg_seq, to, bytes.clone())));
        }
    }
}

fn pull(nodes: &[SimNode], to: usize, from: usize, budget: u64) {
    let (a, b) = (
        nodes[to].store.as_ref().unwrap(),
        nodes[from].store.as_ref().unwrap(),
    );
    // A budget-limited session continues until complete, as the replicator does.
    for _ in 0..64 {
        let frames = b.serve_sync(&a.sync_request(budget)).unwrap();
        let (complete, _) = a.apply_sync(frames).unwrap().expect("SyncDone");
        if complete {
            return;
        }
    }
    panic!("sync did not complete in 64 sessions");
}

#[test]
fn twenty_four_nodes_converge_through_loss_duplication_reordering_partitions_and_restarts() {
    let report = simulate(SimConfig {
        nodes: 24,
        seed: 0x5eed_0001,
        duration_ms: 60_000,
        writes_per_sec: 8.0,
        loss: 0.05,
        dup: 0.05,
        max_delay_ms: 400,
        chunk_bytes: 1024,
        sync_budget: 32 << 10,
        restarts: 4,
    });
    assert!(report.versions > 300, "{report:?}");
    assert!(report.lost > 0 && report.sync_sessions > 100, "{report:?}");
}

#[test]
fn other_seeds_converge_too() {
    for seed in 1..=3u64 {
        simulate(SimConfig {
            nodes: 8,
            seed,
            duration_ms: 20_000,
            writes_per_sec: 10.0,
            loss: 0.2,
            dup: 0.2,
            max_delay_ms: 2_000,
            chunk_bytes: 512,
            sync_budget: 8 << 10,
            restarts: 2,
        });
    }
}
