//! A cluster test harness: N mesh nodes, each in its own network namespace, joined by a
//! bridge, running `makiatto-mesh-node` with real boringtun tunnels.
//!
//! - Every name (namespaces, bridge, veths, WireGuard interfaces) starts with a prefix
//!   unique to the test process and cluster, so clusters never collide.
//! - [`Cluster`]'s `Drop` kills the node processes and deletes the namespaces, bridge and
//!   UAPI sockets, also when a test panics.
//! - Waiting is done with [`wait_for`]: poll a condition until it holds or a deadline
//!   passes, then fail with the last observation.
//! - Needs root, `ip`, `wg`, `wireguard-go` and `/dev/net/tun`; [`require_root_tools`]
//!   fails the test with a clear message when something is missing.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use makiatto_mesh::addr::{self, Claimant};
use makiatto_mesh::node::{NodeConfig, TunnelKind};
use makiatto_mesh::{PrivateKey, SeedPeer};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// The node binary built by cargo for these tests.
pub const NODE_BIN: &str = env!("CARGO_BIN_EXE_makiatto-mesh-node");
/// The underlay network every namespace sits on.
pub const UNDERLAY: &str = "10.77.0";
pub const WG_PORT: u16 = 51880;

static CLUSTERS: AtomicU32 = AtomicU32::new(0);
/// Root tests share 2 cores: run one cluster at a time in this process.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Fails (panics) with a clear message when the test cannot run here.
pub fn require_root_tools() {
    // SAFETY-free check of the effective uid through `id -u`.
    let uid = run_out("id", &["-u"]).unwrap_or_default();
    assert_eq!(
        uid.trim(),
        "0",
        "cluster tests need root (network namespaces, TUN devices)"
    );
    assert!(
        Path::new("/dev/net/tun").exists(),
        "cluster tests need /dev/net/tun"
    );
    for tool in ["ip", "wg", "wg-quick", "wireguard-go", "bash", "timeout"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "cluster tests need `{tool}`: run scripts/setup.d/40-mesh.sh (apt: wireguard-tools wireguard-go iproute2)"
        );
    }
}

/// Runs a command, failing the test on error.
pub fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command and returns its stdout, or `None` when it failed.
pub fn run_out(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `args` inside namespace `ns`; returns stdout or `None` on failure.
pub fn in_ns(ns: &str, args: &[&str]) -> Option<String> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run_out("ip", &full)
}

/// Polls `check` every 200 ms until it returns `Ok`, or fails the test after `timeout`
/// with the last error.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "timed out after {timeout:?} waiting for {what}; last: {last}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One node process.
pub struct Node {
    pub index: usize,
    pub name: String,
    pub ns: String,
    pub iface: String,
    pub underlay: Ipv4Addr,
    pub mesh: Ipv4Addr,
    pub key: PrivateKey,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    proc: Option<Proc>,
}

struct Proc {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Node {
    /// Sends one command and returns its `value`; fails the call on `ok: false`.
    pub async fn try_cmd(&mut self, cmd: Value) -> Result<Value, String> {
        let name = self.name.clone();
        let p = self
            .proc
            .as_mut()
            .ok_or_else(|| format!("{name} is not running"))?;
        p.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .map_err(|e| format!("{name}: write: {e}"))?;
        let line = tokio::time::timeout(Duration::from_secs(60), p.lines.next_line())
            .await
            .map_err(|_| format!("{name}: no answer to {cmd} within 60 s"))?
            .map_err(|e| format!("{name}: read: {e}"))?
            .ok_or_else(|| format!("{name} exited"))?;
        let v: Value =
            serde_json::from_str(&line).map_err(|e| format!("{name}: bad answer {line:?}: {e}"))?;
        if v["ok"] == json!(true) {
            Ok(v["value"].clone())
        } else {
            Err(format!("{name}: {}", v["error"]))
        }
    }

    /// Like [`Node::try_cmd`], failing the test on error.
    pub async fn cmd(&mut self, cmd: Value) -> Value {
        match self.try_cmd(cmd).await {
            Ok(v) => v,
            Err(e) => panic!("{e}\n--- log of {} ---\n{}", self.name, self.log_tail()),
        }
    }

    pub async fn hash(&mut self) -> String {
        self.cmd(json!({"cmd": "hash"}))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn count(&mut self) -> i64 {
        self.cmd(json!({"cmd": "count"}))
            .await
            .as_i64()
            .unwrap_or(-1)
    }

    /// Names of the members this node sees alive.
    pub async fn alive(&mut self) -> BTreeSet<String> {
        let v = self.cmd(json!({"cmd": "members"})).await;
        v["members"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, info)| info["liveness"] == json!("Alive"))
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let mut child = tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, NODE_BIN])
            .arg(&self.config_path)
            .env("RUST_LOG", "info,makiatto_mesh=debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawning makiatto-mesh-node");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let ok = matches!(&ready, Ok(Ok(Some(l))) if l.contains("\"ready\""));
        if !ok {
            let _ = child.kill().await;
            panic!(
                "{} did not start: {ready:?}\n--- log ---\n{}",
                self.name,
                self.log_tail()
            );
        }
        self.proc = Some(Proc {
            child,
            stdin,
            lines,
        });
    }

    /// Kills the process (SIGKILL: no goodbye to the cluster).
    pub async fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill().await;
        }
    }
}

/// A set of nodes in namespaces on one bridge.
pub struct Cluster {
    pub prefix: String,
    pub bridge: String,
    pub nodes: Vec<Node>,
    pub dir: tempfile::TempDir,
    extra_ns: Vec<String>,
    extra_procs: Vec<std::process::Child>,
    pub mesh_net: ipnet::Ipv4Net,
}

impl Cluster {
    /// Creates `n` namespaces with their nodes and starts every node.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, false).await
    }

    /// Like [`Cluster::start`]; with `host_names`, every WireGuard endpoint is a host name
    /// (`n<i>.underlay.test:51880`), resolved through `/etc/netns/<ns>/hosts` (which
    /// `ip netns exec` mounts over `/etc/hosts`).
    pub async fn start_with(n: usize, host_names: bool) -> Cluster {
        Self::start_opts(n, host_names, &[]).await
    }

    /// Like [`Cluster::start_with`]; the nodes in `auto_address` have no mesh address in
    /// their configuration (they take the allocator's choice, the one the harness
    /// expects, and move when they lose a collision).
    pub async fn start_opts(n: usize, host_names: bool, auto_address: &[usize]) -> Cluster {
        require_root_tools();
        let id = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        let prefix = format!(
            "mk{:04x}{}",
            std::process::id() & 0xffff,
            char::from(b'a' + (id % 26) as u8)
        );
        let bridge = format!("{prefix}br");
        let mut cluster = Cluster {
            prefix: prefix.clone(),
            bridge: bridge.clone(),
            nodes: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            extra_ns: Vec::new(),
            extra_procs: Vec::new(),
            mesh_net: addr::default_mesh_net(),
        };
        // Remove leftovers of an earlier run with the same pid (rare, but cheap).
        cluster.cleanup();
        sh("ip", &["link", "add", &bridge, "type", "bridge"]);
        sh("ip", &["link", "set", &bridge, "up"]);
        let keys: Vec<PrivateKey> = (0..n).map(|_| PrivateKey::generate()).collect();
        // Mesh addresses through the allocator, in order, as joining nodes would.
        let mut used = BTreeSet::new();
        let mut meshes = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let claimant = Claimant {
                name: format!("n{i}"),
                public_key: key.public_key().to_base64(),
            };
            let a = addr::allocate(cluster.mesh_net, &claimant, &used).expect("allocate");
            used.insert(a);
            meshes.push(a);
        }
        for i in 0..n {
            let underlay: Ipv4Addr = format!("{UNDERLAY}.{}", 10 + i).parse().expect("addr");
            let ns = cluster.add_namespace(&format!("n{i}"), underlay);
            let node = Node {
                index: i,
                name: format!("n{i}"),
                ns,
                iface: format!("{prefix}w{i}"),
                underlay,
                mesh: meshes[i],
                key: keys[i].clone(),
                config_path: cluster.dir.path().join(format!("n{i}.json")),
                log_path: cluster.dir.path().join(format!("n{i}.log")),
                proc: None,
            };
            cluster.nodes.push(node);
        }
        // Every node starts knowing the others' keys and endpoints, as `maki machine add`
        // gives a new node the cluster's peers (WireGuard needs the key on both sides
        // before anything, replication included, can flow).
        let endpoint = |n: &Node| {
            if host_names {
                format!("{}.underlay.test:{WG_PORT}", n.name)
            } else {
                format!("{}:{WG_PORT}", n.underlay)
            }
        };
        if host_names {
            let mut hosts = String::from("127.0.0.1 localhost\n");
            for n in &cluster.nodes {
                let _ = writeln!(hosts, "{} {}.underlay.test", n.underlay, n.name);
            }
            for n in &cluster.nodes {
                let dir = PathBuf::from("/etc/netns").join(&n.ns);
                std::fs::create_dir_all(&dir).expect("creating /etc/netns/<ns>");
                std::fs::write(dir.join("hosts"), &hosts).expect("writing the namespace's hosts");
            }
        }
        let seeds: Vec<SeedPeer> = cluster
            .nodes
            .iter()
            .map(|n| SeedPeer {
                name: n.name.clone(),
                public_key: n.key.public_key().to_base64(),
                endpoint: endpoint(n),
                mesh_address: n.mesh,
            })
            .collect();
        for node in &cluster.nodes {
            let config = NodeConfig {
                name: node.name.clone(),
                cluster_id: format!("test-{prefix}"),
                data_dir: cluster.dir.path().join(&node.name),
                private_key: node.key.to_base64(),
                tunnel: TunnelKind::WireGuard {
                    interface: node.iface.clone(),
                    listen_port: WG_PORT,
                    mtu: 1420,
                    threads: 1,
                },
                mesh_cidr: cluster.mesh_net,
                // Explicit, so a rare collision between two concurrent first choices
                // cannot make the test flaky (allocation is covered by unit tests).
                mesh_address: (!auto_address.contains(&node.index)).then_some(node.mesh),
                endpoint: endpoint(node),
                public_ipv4: node.underlay.to_string(),
                persistent_keepalive_secs: Some(5),
                seeds: seeds
                    .iter()
                    .filter(|s| s.name != node.name)
                    .cloned()
                    .collect(),
                replication_port: 7946,
                membership_port: 7947,
                blob_port: 7948,
                reconcile_every_ms: 1000,
                sync_interval_ms: Some(500),
                allow_public_direct: false,
            };
            std::fs::write(
                &node.config_path,
                serde_json::to_vec_pretty(&config).expect("json"),
            )
            .expect("write config");
        }
        for i in 0..n {
            cluster.nodes[i].start().await;
        }
        cluster
    }

    /// A namespace `<prefix>-<suffix>` with a veth to the bridge at `underlay`/24.
    pub fn add_namespace(&mut self, suffix: &str, underlay: Ipv4Addr) -> String {
        let ns = format!("{}-{suffix}", self.prefix);
        let host_if = self.veth(suffix);
        sh("ip", &["netns", "add", &ns]);
        self.extra_ns.push(ns.clone());
        sh(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        );
        sh(
            "ip",
            &["link", "set", &host_if, "master", &self.bridge, "up"],
        );
        let cidr = format!("{underlay}/24");
        sh(
            "ip",
            &[
                "netns", "exec", &ns, "ip", "addr", "add", &cidr, "dev", "eth0",
            ],
        );
        sh(
            "ip",
            &["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"],
        );
        sh(
            "ip",
            &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"],
        );
        ns
    }

    fn veth(&self, suffix: &str) -> String {
        format!("{}v{suffix}", self.prefix)
    }

    /// Cuts node `i` off the underlay (its bridge port goes down).
    pub fn partition(&self, i: usize) {
        sh("ip", &["link", "set", &self.veth(&format!("n{i}")), "down"]);
    }

    /// Reconnects node `i`.
    pub fn heal(&self, i: usize) {
        sh("ip", &["link", "set", &self.veth(&format!("n{i}")), "up"]);
    }

    pub async fn kill(&mut self, i: usize) {
        self.nodes[i].kill().await;
    }

    pub async fn restart(&mut self, i: usize) {
        self.nodes[i].start().await;
    }

    /// Starts `program args` inside `ns`, killed when the cluster drops.
    pub fn spawn_in(&mut self, ns: &str, program: &str, args: &[&str], envs: &[(&str, &str)]) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        self.extra_procs.push(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawning {program}: {e}")),
        );
    }

    /// Waits until every running node's hash equals node `reference`'s.
    pub async fn wait_converged(&mut self, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut hashes = Vec::new();
            for n in self.nodes.iter_mut().filter(|n| n.is_running()) {
                hashes.push((n.name.clone(), n.hash().await));
            }
            if hashes.windows(2).all(|w| w[0].1 == w[1].1) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {hashes:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn cleanup(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut p) = n.proc.take() {
                let pid = p.child.id();
                let _ = p.child.start_kill();
                // Wait (bounded) for the process to go, so its namespace can be freed.
                if let Some(pid) = pid {
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                        let _ = p.child.try_wait();
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        for p in &mut self.extra_procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        self.extra_procs.clear();
        // Namespaces named with our prefix (also from a crashed earlier run of this pid).
        if let Some(list) = run_out("ip", &["netns", "list"]) {
            for line in list.lines() {
                let name = line.split_whitespace().next().unwrap_or_default();
                if name.starts_with(&format!("{}-", self.prefix)) {
                    let _ = run_out("ip", &["netns", "del", name]);
                }
            }
        }
        // Host ends of the veths (normally gone with their namespaces) and the bridge.
        if let Some(links) = run_out("ip", &["-o", "link", "show"]) {
            for line in links.lines() {
                let name = line.split(':').nth(1).unwrap_or_default().trim();
                let name = name.split('@').next().unwrap_or_default();
                if name.starts_with(&format!("{}v", self.prefix)) {
                    let _ = run_out("ip", &["link", "del", name]);
                }
            }
        }
        let _ = run_out("ip", &["link", "del", &self.bridge]);
        if let Ok(dir) = std::fs::read_dir("/etc/netns") {
            for e in dir.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{}-", self.prefix))
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir("/var/run/wireguard") {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().starts_with(&self.prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// An external WireGuard peer (Debian's wireguard-go) in its own namespace, configured
/// from the store with `wg_quick_config`, as `maki peer add` would.
pub struct External {
    pub name: String,
    pub ns: String,
    pub iface: String,
    pub mesh: Ipv4Addr,
    pub key: PrivateKey,
    /// The `wg-quick` configuration it was set up from.
    pub conf: String,
}

impl Node {
    /// Public keys of this node's WireGuard peers.
    pub async fn peer_keys(&mut self) -> BTreeSet<String> {
        let v = self.cmd(json!({"cmd": "peers"})).await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["public_key"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Connections and datagrams this node's mesh services refused so far.
    pub async fn refusals(&mut self) -> makiatto_mesh::trust::Refusals {
        let v = self.cmd(json!({"cmd": "refusals"})).await;
        serde_json::from_value(v).expect("refusals")
    }
}

impl Cluster {
    /// Records external peer `name` (underlay `underlay`, a fresh mesh address) through
    /// node `via`, waits until every node has it as a WireGuard peer, then brings up
    /// wireguard-go in a new namespace from the `wg_quick_config` node `conf_from`
    /// writes, doing by hand what `wg-quick up` does with the rest of the file.
    pub async fn add_wireguard_go_peer(
        &mut self,
        name: &str,
        underlay: Ipv4Addr,
        via: usize,
        conf_from: usize,
    ) -> External {
        let key = PrivateKey::generate();
        let iface = format!("{}w{name}", self.prefix);
        let used: BTreeSet<_> = self.nodes.iter().map(|n| n.mesh).collect();
        let mesh = addr::allocate(
            self.mesh_net,
            &Claimant {
                name: name.into(),
                public_key: key.public_key().to_base64(),
            },
            &used,
        )
        .expect("allocate");
        let ns = self.add_namespace(name, underlay);
        self.nodes[via]
            .cmd(json!({"cmd": "add_external", "name": name, "public_key": key.public_key().to_base64(),
                        "endpoint": format!("{underlay}:51820"), "mesh_address": mesh.to_string()}))
            .await;
        // Every node adds it live (the store replicates the row, the tunnel reconciles).
        let public = key.public_key().to_base64();
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            let deadline = Instant::now() + Duration::from_secs(20);
            while !node.peer_keys().await.contains(&public) {
                assert!(
                    Instant::now() < deadline,
                    "{} never added the external peer",
                    node.name
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let conf = self.nodes[conf_from]
            .cmd(json!({"cmd": "wg_quick", "name": name, "private_key": key.to_base64()}))
            .await;
        let conf = conf.as_str().expect("a config").to_owned();
        let conf_path = self.dir.path().join(format!("{iface}.conf"));
        std::fs::write(&conf_path, &conf).expect("writing the config");
        let stripped = run_out("wg-quick", &["strip", conf_path.to_str().expect("utf-8")])
            .expect("wg-quick strip accepts our config");
        let stripped_path = self.dir.path().join(format!("{iface}.stripped.conf"));
        std::fs::write(&stripped_path, stripped).expect("writing the config");
        self.spawn_in(
            &ns,
            "wireguard-go",
            &["-f", &iface],
            &[("WG_PROCESS_FOREGROUND", "1")],
        );
        let sock = format!("/var/run/wireguard/{iface}.sock");
        wait_for(
            "wireguard-go's UAPI socket",
            Duration::from_secs(10),
            || {
                let sock = sock.clone();
                async move {
                    if Path::new(&sock).exists() {
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
                &ns,
                "wg",
                "setconf",
                &iface,
                stripped_path.to_str().expect("utf-8"),
            ],
        );
        // Address, MTU, a route per AllowedIPs (by hand, so wireguard-go is used even
        // where the kernel module is).
        let value = |k: &str| -> Vec<String> {
            conf.lines()
                .filter_map(|l| l.split_once('='))
                .filter(|(key, _)| key.trim() == k)
                .map(|(_, v)| v.trim().to_owned())
                .collect()
        };
        let address = value("Address");
        assert_eq!(address, vec![format!("{mesh}/32")], "{conf}");
        let ns_ip = |args: &[&str]| {
            let mut full = vec!["netns", "exec", ns.as_str(), "ip"];
            full.extend_from_slice(args);
            sh("ip", &full);
        };
        ns_ip(&["addr", "add", &address[0], "dev", &iface]);
        ns_ip(&["link", "set", &iface, "mtu", &value("MTU")[0], "up"]);
        let allowed = value("AllowedIPs");
        assert_eq!(allowed.len(), self.nodes.len(), "{conf}");
        for route in &allowed {
            ns_ip(&["route", "add", route, "dev", &iface]);
        }
        External {
            name: name.into(),
            ns,
            iface,
            mesh,
            key,
            conf,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!("--- log of {} ---\n{}", n.name, n.log_tail());
            }
        }
        self.cleanup();
    }
}
