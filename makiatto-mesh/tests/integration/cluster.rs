//! Real clusters: nodes in network namespaces over boringtun WireGuard (root).

use std::collections::BTreeSet;
use std::time::Duration;

use makiatto_mesh::addr::{self, Claim, Claimant};
use serde_json::json;

use crate::harness::{Cluster, SERIAL, in_ns, run_out, wait_for};

const FORM: Duration = Duration::from_secs(60);

/// Waits until every running node sees every other running node alive.
pub(crate) async fn wait_all_alive(c: &mut Cluster) {
    let running: BTreeSet<String> = c
        .nodes
        .iter()
        .filter(|n| n.is_running())
        .map(|n| n.name.clone())
        .collect();
    for i in 0..c.nodes.len() {
        if !c.nodes[i].is_running() {
            continue;
        }
        let want: BTreeSet<String> = running
            .iter()
            .filter(|n| **n != c.nodes[i].name)
            .cloned()
            .collect();
        let node = &mut c.nodes[i];
        let name = node.name.clone();
        let mut last;
        let deadline = std::time::Instant::now() + FORM;
        loop {
            let alive = node.alive().await;
            if alive == want {
                break;
            }
            last = alive;
            assert!(
                std::time::Instant::now() < deadline,
                "{name} sees {last:?} alive, wanted {want:?}\n{}",
                node.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Every node opens a TCP connection to every other node's mesh address.
async fn tcp_between_every_pair(c: &mut Cluster) {
    let meshes: Vec<_> = c.nodes.iter().map(|n| n.mesh).collect();
    for i in 0..c.nodes.len() {
        for (j, mesh) in meshes.iter().enumerate() {
            if i != j {
                let addr = format!("{mesh}:7946");
                c.nodes[i]
                    .cmd(json!({"cmd": "connect", "addr": addr}))
                    .await;
            }
        }
    }
}

/// `wg show <iface> dump` lists `expected` peers of this node, each with a handshake.
fn wg_show_handshakes(iface: &str, expected: &BTreeSet<String>) -> Result<(), String> {
    let dump = run_out("wg", &["show", iface, "dump"])
        .ok_or_else(|| format!("`wg show {iface} dump` failed"))?;
    let mut lines = dump.lines();
    lines.next(); // the interface line
    let mut with_handshake = BTreeSet::new();
    let mut listed = BTreeSet::new();
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 8 {
            continue;
        }
        listed.insert(f[0].to_owned());
        // boringtun reports the time since the handshake in this field
        // (cloudflare/boringtun#447): non-zero once a handshake is at least 1 s old.
        if f[4] != "0" {
            with_handshake.insert(f[0].to_owned());
        }
    }
    if &listed != expected {
        return Err(format!("peers listed {listed:?}, expected {expected:?}"));
    }
    if &with_handshake != expected {
        return Err(format!("handshakes with {with_handshake:?} only\n{dump}"));
    }
    Ok(())
}

async fn peers_of(node: &mut crate::harness::Node) -> BTreeSet<String> {
    node.peer_keys().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_mesh_replicates_and_admits_a_wireguard_go_peer() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3).await;
    wait_all_alive(&mut c).await;
    tcp_between_every_pair(&mut c).await;

    // `wg show` (wireguard-tools) reads our UAPI socket: both peers, with handshakes.
    let keys: Vec<String> = c
        .nodes
        .iter()
        .map(|n| n.key.public_key().to_base64())
        .collect();
    for i in 0..3 {
        let iface = c.nodes[i].iface.clone();
        let expected: BTreeSet<String> = keys
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, k)| k.clone())
            .collect();
        wait_for(&format!("wg show {iface}"), Duration::from_secs(20), || {
            let (iface, expected) = (iface.clone(), expected.clone());
            async move { wg_show_handshakes(&iface, &expected) }
        })
        .await;
    }

    // 10k rows written on one node reach all three.
    c.nodes[0]
        .cmd(json!({"cmd": "put_many", "prefix": "row-", "count": 10_000}))
        .await;
    c.nodes[1]
        .cmd(json!({"cmd": "put", "key": "from-n1", "value": "v"}))
        .await;
    c.wait_converged("10k rows on 3 nodes", Duration::from_secs(60))
        .await;
    for n in &mut c.nodes {
        assert_eq!(n.count().await, 10_001, "{}", n.name);
    }

    // Blobs: 100 MiB (4 x 25 MiB) made on n0, fetched by n1, then by n2 from n0 and n1
    // in parallel; each is verified against its hash before it is kept.
    let mut hashes = Vec::new();
    for seed in 1..=4u64 {
        let h = c.nodes[0]
            .cmd(json!({"cmd": "put_blob", "size": 25 << 20, "seed": seed}))
            .await;
        hashes.push(h);
    }
    for i in [1, 2] {
        let bytes = c.nodes[i]
            .cmd(json!({"cmd": "fetch_blobs", "hashes": hashes}))
            .await;
        assert_eq!(
            bytes.as_u64(),
            Some(4 * (25 << 20)),
            "node {i} received every byte"
        );
    }

    // An external peer running Debian's wireguard-go, configured from the store.
    let x = c
        .add_wireguard_go_peer("o11y", "10.77.0.50".parse().unwrap(), 1, 2)
        .await;
    let (x_ns, x_pub) = (x.ns.clone(), x.key.public_key().to_base64());
    // The tunnel works: TCP reaches every node over the mesh (the mesh services accept
    // and close at once: an external peer is not a cluster node).
    for n in &c.nodes {
        let target = format!("exec 3<>/dev/tcp/{}/7946", n.mesh);
        wait_for(
            &format!("wireguard-go peer reaching {} over the mesh", n.name),
            Duration::from_secs(20),
            || {
                let (ns, target) = (x_ns.clone(), target.clone());
                async move {
                    in_ns(&ns, &["timeout", "3", "bash", "-c", &target])
                        .map(drop)
                        .ok_or_else(|| "connect failed".to_owned())
                }
            },
        )
        .await;
    }
    // Removing it from the store removes it from every tunnel, live.
    c.nodes[0]
        .cmd(json!({"cmd": "remove_external", "name": "o11y"}))
        .await;
    for i in 0..3 {
        let node = &mut c.nodes[i];
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while peers_of(node).await.contains(&x_pub) {
            assert!(
                std::time::Instant::now() < deadline,
                "{} kept the removed peer",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The node-to-node mesh was not disturbed by the changes.
    tcp_between_every_pair(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_heal_and_restart_converge() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3).await;
    wait_all_alive(&mut c).await;

    // Cut n2 off: the others notice, and keep replicating between themselves.
    c.partition(2);
    let n2 = c.nodes[2].name.clone();
    {
        let node = &mut c.nodes[0];
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while node.alive().await.contains(&n2) {
            assert!(
                std::time::Instant::now() < deadline,
                "n0 still sees n2 alive"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    c.nodes[0]
        .cmd(json!({"cmd": "put", "key": "during-partition-n0", "value": "a"}))
        .await;
    c.nodes[2]
        .cmd(json!({"cmd": "put", "key": "during-partition-n2", "value": "b"}))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (h0, h1) = (c.nodes[0].hash().await, c.nodes[1].hash().await);
        if h0 == h1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n0 and n1 stopped replicating during the partition"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(
        c.nodes[2].hash().await,
        c.nodes[0].hash().await,
        "the partition did not isolate n2"
    );

    // Heal: n2 rejoins on its own and everything converges.
    c.heal(2);
    wait_all_alive(&mut c).await;
    c.wait_converged("convergence after healing", Duration::from_secs(60))
        .await;
    assert_eq!(c.nodes[1].count().await, 2);

    // Kill n1, write while it is down, restart it: it rejoins and catches up.
    c.kill(1).await;
    let n1 = c.nodes[1].name.clone();
    {
        let node = &mut c.nodes[0];
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while node.alive().await.contains(&n1) {
            assert!(
                std::time::Instant::now() < deadline,
                "n0 still sees the killed n1 alive"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    c.nodes[0]
        .cmd(json!({"cmd": "put_many", "prefix": "while-down-", "count": 1000}))
        .await;
    c.restart(1).await;
    wait_all_alive(&mut c).await;
    c.wait_converged("catch-up after restart", Duration::from_secs(60))
        .await;
    assert_eq!(c.nodes[1].count().await, 1002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_node_mesh_with_host_name_endpoints_forms_and_converges() {
    let _serial = SERIAL.lock().await;
    // Endpoints are host names, resolved when the peers are applied.
    let mut c = Cluster::start_with(5, true).await;
    wait_all_alive(&mut c).await;
    tcp_between_every_pair(&mut c).await;
    for i in 0..5 {
        c.nodes[i]
            .cmd(json!({"cmd": "put", "key": format!("from-{i}"), "value": "v"}))
            .await;
    }
    c.wait_converged("5 nodes", Duration::from_secs(60)).await;
    assert_eq!(c.nodes[4].count().await, 5);
}

/// Replication latency on 3 real nodes: a write on n0 visible on n1 and n2. A benchmark,
/// run by `bench/mesh/latency.sh` (`cargo test ... -- --ignored replication_latency`);
/// it fails when p99 misses the goal of 500 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by bench/mesh/latency.sh"]
async fn replication_latency() {
    let _serial = SERIAL.lock().await;
    let samples: usize = std::env::var("LATENCY_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut c = Cluster::start(3).await;
    wait_all_alive(&mut c).await;
    let us = |v: serde_json::Value| v.as_str().and_then(|s| s.parse::<u128>().ok()).unwrap_or(0);
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let key = format!("lat-{i}");
        for n in [1, 2] {
            c.nodes[n].cmd(json!({"cmd": "arm", "key": key})).await;
        }
        let written = us(c.nodes[0]
            .cmd(json!({"cmd": "put_stamped", "key": key}))
            .await);
        let mut last = 0;
        for n in [1, 2] {
            last = last.max(us(c.nodes[n]
                .cmd(json!({"cmd": "seen", "key": key, "timeout_ms": 10_000}))
                .await));
        }
        latencies.push(last.saturating_sub(written));
    }
    latencies.sort_unstable();
    let pct =
        |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)] as f64 / 1000.0;
    let (p50, p99, max) = (
        pct(50),
        pct(99),
        *latencies.last().unwrap_or(&0) as f64 / 1000.0,
    );
    eprintln!("LATENCY samples={samples} p50_ms={p50:.2} p99_ms={p99:.2} max_ms={max:.2}");
    assert!(p99 < 500.0, "p99 {p99} ms misses the 500 ms goal");
}

/// A node whose address was allocated (not configured) and that loses it to a concurrent
/// joiner moves at run time: the tunnel address, the services and its identity in SWIM,
/// with every other node routing and admitting it at the new address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_its_address_moves_while_running() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_opts(3, false, &[1]).await;
    wait_all_alive(&mut c).await;
    c.wait_converged("the nodes table", Duration::from_secs(60))
        .await;
    let old = c.nodes[1].mesh;
    assert_eq!(
        c.nodes[1].cmd(json!({"cmd": "address"})).await,
        json!(old.to_string())
    );

    // "a0" (a lower name: it keeps the address) registered at n1's address while n1 is
    // cut off: n0 and n2 apply the resolution before n1 can hear of a0.
    c.partition(1);
    let thief = makiatto_mesh::PrivateKey::generate()
        .public_key()
        .to_base64();
    c.nodes[0]
        .cmd(json!({"cmd": "put_node", "name": "a0", "public_key": thief, "mesh_address": old.to_string()}))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while c.nodes[0].hash().await != c.nodes[2].hash().await {
        assert!(
            std::time::Instant::now() < deadline,
            "n2 did not learn of a0"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.heal(1);
    let mut claims: Vec<Claim> = c
        .nodes
        .iter()
        .map(|n| Claim {
            claimant: Claimant {
                name: n.name.clone(),
                public_key: n.key.public_key().to_base64(),
            },
            address: n.mesh,
        })
        .collect();
    claims.push(Claim {
        claimant: Claimant {
            name: "a0".into(),
            public_key: thief,
        },
        address: old,
    });
    let moves = addr::resolve_collisions(c.mesh_net, &claims).unwrap();
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert_eq!(moves[0].claimant.name, "n1");
    let to = moves[0].to;

    let want = json!(to.to_string());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while c.nodes[1].cmd(json!({"cmd": "address"})).await != want {
        assert!(
            std::time::Instant::now() < deadline,
            "n1 did not move to {to}\n{}",
            c.nodes[1].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shown = in_ns(
        &c.nodes[1].ns,
        &[
            "ip",
            "-4",
            "-o",
            "address",
            "show",
            "dev",
            &c.nodes[1].iface,
        ],
    )
    .unwrap_or_default();
    assert!(
        shown.contains(&format!("{to}/")) && !shown.contains(&format!("{old}/")),
        "{shown}"
    );
    // The others see n1 alive at its new address; everyone sees everyone.
    let at = json!(format!("{to}:7947"));
    for i in [0, 2] {
        let deadline = std::time::Instant::now() + FORM;
        loop {
            let v = c.nodes[i].cmd(json!({"cmd": "members"})).await;
            let m = &v["members"]["n1"];
            if m["addr"] == at && m["liveness"] == json!("Alive") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "n{i} does not see n1 alive at {to}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    wait_all_alive(&mut c).await;
    // Replication both ways and TCP through the new address.
    c.nodes[1]
        .cmd(json!({"cmd": "put", "key": "from-n1", "value": "v"}))
        .await;
    c.nodes[0]
        .cmd(json!({"cmd": "put", "key": "from-n0", "value": "v"}))
        .await;
    c.wait_converged("convergence after the move", Duration::from_secs(60))
        .await;
    assert_eq!(c.nodes[2].count().await, 2);
    c.nodes[0]
        .cmd(json!({"cmd": "connect", "addr": format!("{to}:7946")}))
        .await;
}
