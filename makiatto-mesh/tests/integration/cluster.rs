//! Real clusters: nodes in network namespaces over boringtun WireGuard (root).

use std::collections::BTreeSet;
use std::time::Duration;

use makiatto_mesh::PrivateKey;
use makiatto_mesh::addr::{self, Claimant};
use serde_json::json;

use crate::harness::{Cluster, SERIAL, in_ns, run_out, sh, wait_for};

const FORM: Duration = Duration::from_secs(60);

/// Waits until every running node sees every other running node alive.
async fn wait_all_alive(c: &mut Cluster) {
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
    let v = node.cmd(json!({"cmd": "peers"})).await;
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["public_key"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
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
    let x_key = PrivateKey::generate();
    let x_iface = format!("{}wx", c.prefix);
    let used: BTreeSet<_> = c.nodes.iter().map(|n| n.mesh).collect();
    let x_mesh = addr::allocate(
        c.mesh_net,
        &Claimant {
            name: "o11y".into(),
            public_key: x_key.public_key().to_base64(),
        },
        &used,
    )
    .unwrap();
    let x_ns = c.add_namespace("x", "10.77.0.50".parse().unwrap());
    c.nodes[1]
        .cmd(json!({"cmd": "add_external", "name": "o11y", "public_key": x_key.public_key().to_base64(),
                    "endpoint": "10.77.0.50:51820", "mesh_address": x_mesh.to_string()}))
        .await;
    // Every node adds it live (the store replicates the row, the tunnel reconciles).
    let x_pub = x_key.public_key().to_base64();
    for i in 0..3 {
        let node = &mut c.nodes[i];
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !peers_of(node).await.contains(&x_pub) {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never added the external peer",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let conf = c.nodes[2]
        .cmd(json!({"cmd": "wg_quick", "name": "o11y", "private_key": x_key.to_base64()}))
        .await;
    let conf = conf.as_str().unwrap().to_owned();
    let conf_path = c.dir.path().join(format!("{x_iface}.conf"));
    std::fs::write(&conf_path, &conf).unwrap();
    let stripped = run_out("wg-quick", &["strip", conf_path.to_str().unwrap()])
        .expect("wg-quick strip accepts our config");
    let stripped_path = c.dir.path().join("stripped.conf");
    std::fs::write(&stripped_path, stripped).unwrap();
    c.spawn_in(
        &x_ns,
        "wireguard-go",
        &["-f", &x_iface],
        &[("WG_PROCESS_FOREGROUND", "1")],
    );
    let sock = format!("/var/run/wireguard/{x_iface}.sock");
    wait_for(
        "wireguard-go's UAPI socket",
        Duration::from_secs(10),
        || {
            let sock = sock.clone();
            async move {
                if std::path::Path::new(&sock).exists() {
                    Ok(())
                } else {
                    Err("missing".to_owned())
                }
            }
        },
    )
    .await;
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &x_ns,
            "wg",
            "setconf",
            &x_iface,
            stripped_path.to_str().unwrap(),
        ],
    );
    // What `wg-quick up` does with the rest of the file: Address, MTU, a route per
    // AllowedIPs (done by hand so wireguard-go is used even where the kernel module is).
    let value = |key: &str| -> Vec<String> {
        conf.lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    };
    let address = value("Address");
    assert_eq!(address, vec![format!("{x_mesh}/32")], "{conf}");
    let ns_ip = |args: &[&str]| {
        let mut full = vec!["netns", "exec", x_ns.as_str(), "ip"];
        full.extend_from_slice(args);
        sh("ip", &full);
    };
    ns_ip(&["addr", "add", &address[0], "dev", &x_iface]);
    ns_ip(&["link", "set", &x_iface, "mtu", &value("MTU")[0], "up"]);
    let allowed = value("AllowedIPs");
    assert_eq!(allowed.len(), 3, "{conf}");
    for route in &allowed {
        ns_ip(&["route", "add", route, "dev", &x_iface]);
    }
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
