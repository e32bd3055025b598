//! A mesh node: tunnel, membership, replication and blob service driven by the store.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use makiatto_store::cluster::{self, external_peers, nodes};
use makiatto_store::transport::ReplicatorOptions;
use makiatto_store::{BlobHash, BlobStore, Options, Store};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::addr::{self, Claim, Claimant};
use crate::blobs::{self, FetchOptions, FetchReport};
use crate::membership::{self, Membership, MembershipOptions, MembershipView};
use crate::trust::{Admission, ClusterNodes, Refusals, Service};
use crate::tunnel::{self, Direct, PeerConfig, Tunnel, WireGuardConfig, WireGuardTunnel};
use crate::{MeshError, PrivateKey, PublicKey, Result, replication};

/// Which tunnel a node uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TunnelKind {
    /// Userspace WireGuard (boringtun).
    WireGuard {
        /// Interface name.
        interface: String,
        /// Listen port (default 51880).
        #[serde(default = "default_wg_port")]
        listen_port: u16,
        /// MTU (default 1420).
        #[serde(default = "default_mtu")]
        mtu: u32,
        /// boringtun threads (default 1).
        #[serde(default = "default_threads")]
        threads: usize,
    },
    /// No tunnel: the mesh address is the node's own address.
    Direct,
}

fn default_wg_port() -> u16 {
    tunnel::DEFAULT_LISTEN_PORT
}
fn default_mtu() -> u32 {
    tunnel::DEFAULT_MTU
}
fn default_threads() -> usize {
    1
}
#[allow(clippy::unnecessary_wraps)] // serde's `default` wants the field's type
fn default_keepalive() -> Option<u16> {
    Some(25)
}
fn default_cidr() -> Ipv4Net {
    addr::default_mesh_net()
}
fn default_reconcile_ms() -> u64 {
    2000
}

/// A peer known before the store knows it (how a new node reaches the cluster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedPeer {
    /// Node name.
    pub name: String,
    /// WireGuard public key (base64).
    pub public_key: String,
    /// WireGuard endpoint `host:port`.
    pub endpoint: String,
    /// Its mesh address.
    pub mesh_address: Ipv4Addr,
}

/// Configuration of a [`MeshNode`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// Cluster id of the store.
    pub cluster_id: String,
    /// Where the store (`store.db`) and blobs (`blobs/`) live.
    pub data_dir: PathBuf,
    /// WireGuard private key (base64).
    pub private_key: String,
    /// The tunnel.
    pub tunnel: TunnelKind,
    /// Mesh range (default 10.44.44.0/24).
    #[serde(default = "default_cidr")]
    pub mesh_cidr: Ipv4Net,
    /// Mesh address; when absent, the one in the store for this node, else allocated.
    /// Required for [`TunnelKind::Direct`] (the node's own address).
    #[serde(default)]
    pub mesh_address: Option<Ipv4Addr>,
    /// The WireGuard endpoint other nodes use, `host:port`.
    pub endpoint: String,
    /// Public IPv4 address recorded in the `nodes` row.
    #[serde(default)]
    pub public_ipv4: String,
    /// PersistentKeepalive for every peer (default 25 s).
    #[serde(default = "default_keepalive")]
    pub persistent_keepalive_secs: Option<u16>,
    /// Seed peers.
    #[serde(default)]
    pub seeds: Vec<SeedPeer>,
    /// Replication port (default 7946).
    #[serde(default = "replication_port")]
    pub replication_port: u16,
    /// Membership port (default 7947).
    #[serde(default = "membership_port")]
    pub membership_port: u16,
    /// Blob port (default 7948).
    #[serde(default = "blob_port")]
    pub blob_port: u16,
    /// How often WireGuard peers are reconciled with the store, besides on changes
    /// (default 2000 ms).
    #[serde(default = "default_reconcile_ms")]
    pub reconcile_every_ms: u64,
    /// Shortest pause between anti-entropy rounds, ms (default: the store's).
    #[serde(default)]
    pub sync_interval_ms: Option<u64>,
    /// With [`TunnelKind::Direct`], allow a mesh address that is neither loopback nor
    /// private (RFC 1918). Off by default: `Direct` authenticates nothing, so its
    /// services must not face the internet (default false).
    #[serde(default)]
    pub allow_public_direct: bool,
}

fn replication_port() -> u16 {
    replication::DEFAULT_PORT
}
fn membership_port() -> u16 {
    membership::DEFAULT_PORT
}
fn blob_port() -> u16 {
    blobs::DEFAULT_PORT
}

/// A running node. Dropping it without [`MeshNode::shutdown`] aborts its tasks.
#[derive(Debug)]
pub struct MeshNode {
    config: NodeConfig,
    store: Store,
    blobs: BlobStore,
    tunnel: Arc<dyn Tunnel>,
    view: watch::Receiver<MembershipView>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    mesh_address: watch::Receiver<Ipv4Addr>,
    cluster: ClusterNodes,
}

/// A file in the data directory that says `store.db` was put back from a backup (an
/// upgrade rolled back): at start the store gives up its site id
/// ([`Store::retire_identity`]) before it opens, then the file is removed.
pub const RETIRE_MARKER: &str = "store.retire-identity";

/// When [`RETIRE_MARKER`] is in `data_dir`: gives its `store.db` (if any) a new replica
/// identity and removes the marker. Returns whether a store was retired. The store must
/// not be open.
pub fn retire_if_marked(data_dir: &std::path::Path) -> Result<bool> {
    let marker = data_dir.join(RETIRE_MARKER);
    if !marker.exists() {
        return Ok(false);
    }
    // The store was put back from a backup: its site id may have issued versions since,
    // so this replica continues under a new one. (No store: a new one gets a new id anyway.)
    let db = data_dir.join("store.db");
    let retired = db.exists();
    if retired {
        Store::retire_identity(&db)?;
    }
    std::fs::remove_file(&marker)
        .map_err(|e| MeshError::io(format!("removing {}", marker.display()), e))?;
    Ok(retired)
}

/// Shared list of the known nodes' mesh addresses (membership seeds).
type Known = Arc<Mutex<BTreeMap<String, Ipv4Addr>>>;

impl MeshNode {
    /// Opens the store, picks the mesh address, brings the tunnel up, records this node in
    /// the `nodes` table and starts membership, replication, the blob server and the peer
    /// reconciliation loop.
    pub async fn start(config: NodeConfig) -> Result<Self> {
        let key = PrivateKey::from_base64(&config.private_key)?;
        let public = key.public_key();
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| MeshError::io(format!("creating {}", config.data_dir.display()), e))?;
        let db = config.data_dir.join("store.db");
        if retire_if_marked(&config.data_dir)? {
            tracing::info!("store restored from a backup: continuing under a new site id");
        }
        let store = Store::open(
            db,
            &cluster::SCHEMA,
            Options {
                cluster_id: config.cluster_id.clone(),
                ..Options::default()
            },
        )?;
        let blobs = BlobStore::open(config.data_dir.join("blobs"))?;
        let net = config.mesh_cidr;
        let me = Claimant {
            name: config.name.clone(),
            public_key: public.to_base64(),
        };
        let mesh_address = match config.mesh_address {
            Some(a) => a,
            None => choose_address(&store, net, &me, &config.seeds)?,
        };
        if !addr::is_host(net, mesh_address)
            && matches!(config.tunnel, TunnelKind::WireGuard { .. })
        {
            return Err(MeshError::Config(format!(
                "mesh address {mesh_address} is not a host of {net}"
            )));
        }
        if matches!(config.tunnel, TunnelKind::Direct) {
            check_direct(mesh_address, net, config.allow_public_direct)?;
        }
        let tunnel: Arc<dyn Tunnel> = match &config.tunnel {
            TunnelKind::Direct => Arc::new(Direct::new(mesh_address, net)),
            TunnelKind::WireGuard {
                interface,
                listen_port,
                mtu,
                threads,
            } => {
                let wg = WireGuardConfig {
                    listen_port: *listen_port,
                    mtu: *mtu,
                    threads: *threads,
                    ..WireGuardConfig::new(interface.clone(), key.clone(), mesh_address, net)
                };
                let t = tokio::task::spawn_blocking(move || WireGuardTunnel::create(wg))
                    .await
                    .map_err(|e| MeshError::Config(format!("tunnel task failed: {e}")))??;
                Arc::new(t)
            }
        };
        // Record ourselves.
        let row = nodes::Node {
            name: config.name.clone(),
            wg_public_key: public.to_base64(),
            wg_endpoint: config.endpoint.clone(),
            mesh_address: mesh_address.to_string(),
            ipv4: config.public_ipv4.clone(),
            ipv6: None,
            latitude: 0.0,
            longitude: 0.0,
            is_nameserver: false,
            site_id: store.site().to_string(),
            created_ms: now_ms(),
        };
        let existing = store.read(|c| nodes::get(c, &config.name))?;
        let unchanged = existing.as_ref().is_some_and(|e| {
            e.wg_public_key == row.wg_public_key
                && e.wg_endpoint == row.wg_endpoint
                && e.mesh_address == row.mesh_address
                && e.site_id == row.site_id
        });
        if !unchanged {
            store.write(|tx| nodes::upsert(tx, &row))?;
        }

        let known: Known = Arc::new(Mutex::new(BTreeMap::new()));
        let cluster = ClusterNodes::new(match config.tunnel {
            TunnelKind::WireGuard { .. } => Admission::Nodes,
            TunnelKind::Direct => Admission::Range(net),
        });
        let mut mesh_address = mesh_address;
        if let Some(moved) = reconcile(&store, &tunnel, &config, &known, &cluster).await {
            move_tunnel(&tunnel, moved).await?;
            mesh_address = moved;
        }
        let (address_tx, address_rx) = watch::channel(mesh_address);
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();

        // Membership, replication and blobs, bound to the mesh address; bound again
        // when the node moves.
        let services = Services {
            store: store.clone(),
            blobs: blobs.clone(),
            config: config.clone(),
            cluster: cluster.clone(),
            known: known.clone(),
            // With WireGuard the services only take packets that came out of the tunnel.
            device: tunnel.interface().map(str::to_owned),
            view: watch::channel(MembershipView::default()).0,
        };
        let view = services.view.subscribe();
        let bound = services.bind(mesh_address).await?;
        tasks.spawn(services.run(bound, address_rx.clone(), stop_rx.clone()));

        // Peer reconciliation: on changes to nodes / external_peers, and periodically.
        {
            let (store, tunnel, config, known, cluster) = (
                store.clone(),
                tunnel.clone(),
                config.clone(),
                known.clone(),
                cluster.clone(),
            );
            let mut stop = stop_rx.clone();
            let mut nodes_changed = store.watch_table("nodes");
            let mut peers_changed = store.watch_table("external_peers");
            tasks.spawn(async move {
                let every = Duration::from_millis(config.reconcile_every_ms.max(100));
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        () = tokio::time::sleep(every) => {}
                        () = changed(&mut nodes_changed) => {}
                        () = changed(&mut peers_changed) => {}
                    }
                    if let Some(moved) = reconcile(&store, &tunnel, &config, &known, &cluster).await {
                        match move_tunnel(&tunnel, moved).await {
                            Ok(()) => {
                                let _ = address_tx.send(moved);
                            }
                            Err(error) => warn!(%error, to = %moved, "moving the mesh address failed; retrying"),
                        }
                    }
                }
            });
        }
        info!(node = %config.name, %mesh_address, "mesh node started");
        Ok(MeshNode {
            config,
            store,
            blobs,
            tunnel,
            view,
            stop,
            tasks,
            mesh_address: address_rx,
            cluster,
        })
    }

    /// The cluster's nodes as this node admits them on its mesh services.
    pub fn cluster_nodes(&self) -> &ClusterNodes {
        &self.cluster
    }

    /// Connections and datagrams refused by the mesh services since start.
    pub fn refusals(&self) -> Refusals {
        self.cluster.refusals()
    }

    /// The replicated store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The tunnel.
    pub fn tunnel(&self) -> &Arc<dyn Tunnel> {
        &self.tunnel
    }

    /// This node's mesh address (it changes when the node loses an address collision).
    pub fn mesh_address(&self) -> Ipv4Addr {
        *self.mesh_address.borrow()
    }

    /// The membership view.
    pub fn membership(&self) -> watch::Receiver<MembershipView> {
        self.view.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Fetches `hashes` from the alive peers (blob port on their mesh addresses).
    pub async fn fetch_blobs(
        &self,
        hashes: &[BlobHash],
        options: &FetchOptions,
    ) -> Vec<(BlobHash, Result<FetchReport>)> {
        let port = self.config.blob_port;
        let peers: Vec<SocketAddr> = self
            .view
            .borrow()
            .alive()
            .map(|(_, m)| SocketAddr::new(m.addr.ip(), port))
            .collect();
        blobs::fetch_many(&self.blobs, hashes, &peers, options).await
    }

    /// Stops every task (leaving the membership cluster) and waits for them, at most 10 s.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.shutdown().await;
        }
    }
}

/// The services bound to the mesh address: membership, replication, blobs.
struct Services {
    store: Store,
    blobs: BlobStore,
    config: NodeConfig,
    cluster: ClusterNodes,
    known: Known,
    device: Option<String>,
    /// The membership view, kept across moves.
    view: watch::Sender<MembershipView>,
}

/// The services' sockets on one mesh address.
struct Bound {
    address: Ipv4Addr,
    udp: UdpSocket,
    replication: TcpListener,
    blobs: TcpListener,
}

impl Services {
    async fn bind(&self, address: Ipv4Addr) -> Result<Bound> {
        let c = &self.config;
        let device = self.device.as_deref();
        Ok(Bound {
            address,
            udp: bind_udp(SocketAddrV4::new(address, c.membership_port), device).await?,
            replication: bind_tcp(
                SocketAddrV4::new(address, c.replication_port),
                device,
                "replication",
            )?,
            blobs: bind_tcp(SocketAddrV4::new(address, c.blob_port), device, "blob")?,
        })
    }

    /// Runs the services on `bound` until `stop`; when `address` changes, stops them
    /// (membership leaves the cluster under the old identity) and starts them again on
    /// the new address.
    async fn run(
        self,
        mut bound: Bound,
        mut address: watch::Receiver<Ipv4Addr>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let (round_tx, round_rx) = watch::channel(false);
            let mut tasks = self.spawn(bound, &round_rx);
            let moved = tokio::select! {
                _ = stop.wait_for(|s| *s) => false,
                changed = address.changed() => changed.is_ok(),
            };
            let _ = round_tx.send(true);
            let drained = tokio::time::timeout(Duration::from_secs(10), async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tasks.shutdown().await;
            }
            if !moved {
                return;
            }
            // Bind the new address; it may take a moment to appear on the interface.
            loop {
                let to = *address.borrow_and_update();
                match self.bind(to).await {
                    Ok(b) => {
                        info!(address = %to, "mesh services moved");
                        bound = b;
                        break;
                    }
                    Err(error) => {
                        warn!(%error, "binding the mesh services on the new address failed; retrying");
                    }
                }
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = address.changed() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    fn spawn(&self, bound: Bound, round: &watch::Receiver<bool>) -> JoinSet<()> {
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let c = &self.config;
        let mut tasks = JoinSet::new();
        let seeds_known = self.known.clone();
        let mport = c.membership_port;
        let seeds: membership::Seeds = Arc::new(move || {
            lock(&seeds_known)
                .values()
                .map(|a| SocketAddr::V4(SocketAddrV4::new(*a, mport)))
                .collect()
        });
        match Membership::new(
            c.name.clone(),
            bound.udp,
            seeds,
            Some(self.cluster.clone()),
            MembershipOptions::default(),
        ) {
            Ok(m) => {
                tasks.spawn(m.publish_to(self.view.clone()).run(stopped(round.clone())));
            }
            Err(error) => warn!(%error, address = %bound.address, "starting membership failed"),
        }
        let rport = c.replication_port;
        let peer_view = self.view.subscribe();
        let peers: replication::Peers = Arc::new(move || {
            peer_view
                .borrow()
                .alive()
                .map(|(_, m)| SocketAddr::new(m.addr.ip(), rport))
                .collect()
        });
        let mut ropts = ReplicatorOptions::default();
        if let Some(ms) = c.sync_interval_ms {
            ropts.sync_interval_min = Duration::from_millis(ms);
            ropts.sync_interval_max = Duration::from_millis(ms * 2);
        }
        let (rstore, rallow, rstop) = (
            self.store.clone(),
            self.cluster.allow(Service::Replication),
            round.clone(),
        );
        let listener = bound.replication;
        tasks.spawn(async move {
            if let Err(error) =
                replication::run(rstore, listener, rallow, peers, ropts, stopped(rstop)).await
            {
                warn!(%error, "replication stopped");
            }
        });
        tasks.spawn(blobs::serve(
            bound.blobs,
            self.blobs.clone(),
            self.cluster.allow(Service::Blobs),
            blobs::ServeOptions::default(),
            stopped(round.clone()),
        ));
        tasks
    }
}

/// Moves the tunnel to `to` (off the async workers: it runs `ip`).
async fn move_tunnel(tunnel: &Arc<dyn Tunnel>, to: Ipv4Addr) -> Result<()> {
    let t = tunnel.clone();
    tokio::task::spawn_blocking(move || t.set_mesh_address(to))
        .await
        .map_err(|e| MeshError::Config(format!("move task failed: {e}")))?
}

async fn changed(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                *rx = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `Direct` authenticates nothing: its services may only listen on a loopback or private
/// (RFC 1918) address, unless `allow_public` (and never on `0.0.0.0`).
/// The ranges a `Direct` mesh may use without opting in: loopback and RFC 1918.
const DIRECT_RANGES: [Ipv4Net; 4] = [
    Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16),
];

/// `Direct` authenticates nothing: it admits peers by source address from the whole mesh
/// range ([`Admission::Range`]). So the node's address must be in that range, and both
/// must be loopback or private unless the operator opts in (`allow_public_direct`).
fn check_direct(address: Ipv4Addr, net: Ipv4Net, allow_public: bool) -> Result<()> {
    if address.is_unspecified() {
        return Err(MeshError::Config(
            "the Direct mesh backend needs a mesh address, not 0.0.0.0".into(),
        ));
    }
    if !net.contains(&address) {
        return Err(MeshError::Config(format!(
            "mesh address {address} is outside the mesh CIDR {net}, the range the Direct \
             backend admits peers from: set the CIDR to the network the nodes share \
             (e.g. 127.0.0.0/8 on one host)"
        )));
    }
    if allow_public {
        return Ok(());
    }
    if !(address.is_loopback() || address.is_private()) {
        return Err(MeshError::Config(format!(
            "the Direct mesh backend would serve the store and blobs unauthenticated on \
             {address}, which is neither loopback nor private: use the WireGuard backend, \
             or set allow_public_direct if that network is trusted"
        )));
    }
    if !DIRECT_RANGES.iter().any(|r| r.contains(&net)) {
        return Err(MeshError::Config(format!(
            "the Direct mesh backend admits the store, blobs and membership from any \
             address of the mesh CIDR {net}, which is not all loopback or private: narrow \
             it to the nodes' network, or set allow_public_direct if that network is \
             trusted"
        )));
    }
    Ok(())
}

/// A TCP listener on `addr`, bound to `device` when set (`SO_BINDTODEVICE`).
fn bind_tcp(addr: SocketAddrV4, device: Option<&str>, what: &str) -> Result<TcpListener> {
    let err = |e| MeshError::io(format!("binding {what} TCP on {addr}"), e);
    let socket = tokio::net::TcpSocket::new_v4().map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    if let Some(d) = device {
        socket.bind_device(Some(d.as_bytes())).map_err(err)?;
    }
    socket.bind(SocketAddr::V4(addr)).map_err(err)?;
    socket.listen(1024).map_err(err)
}

/// A UDP socket on `addr`, bound to `device` when set (`SO_BINDTODEVICE`).
async fn bind_udp(addr: SocketAddrV4, device: Option<&str>) -> Result<UdpSocket> {
    let err = |e| MeshError::io(format!("binding membership UDP on {addr}"), e);
    let socket = UdpSocket::bind(addr).await.map_err(err)?;
    if let Some(d) = device {
        socket.bind_device(Some(d.as_bytes())).map_err(err)?;
    }
    Ok(socket)
}

/// Picks this node's address: the one the store already has for it, else [`addr::allocate`]
/// avoiding every address in the store and the seeds. A collision with a claimant that
/// wins ([`addr::resolve_collisions`]) moves it.
fn choose_address(
    store: &Store,
    net: Ipv4Net,
    me: &Claimant,
    seeds: &[SeedPeer],
) -> Result<Ipv4Addr> {
    let claims = store_claims(store)?;
    let mut claims: Vec<Claim> = claims;
    for s in seeds {
        claims.push(Claim {
            claimant: Claimant {
                name: s.name.clone(),
                public_key: s.public_key.clone(),
            },
            address: s.mesh_address,
        });
    }
    if let Some(mine) = claims.iter().find(|c| &c.claimant == me).map(|c| c.address) {
        let moves = addr::resolve_collisions(net, &claims)?;
        return Ok(moves
            .iter()
            .find(|m| &m.claimant == me)
            .map_or(mine, |m| m.to));
    }
    let used: BTreeSet<Ipv4Addr> = claims.iter().map(|c| c.address).collect();
    addr::allocate(net, me, &used)
}

/// Every mesh address claim in the store (nodes and external peers).
pub fn store_claims(store: &Store) -> Result<Vec<Claim>> {
    let (ns, ps) = store.read(|c| Ok((nodes::list(c)?, external_peers::list(c)?)))?;
    Ok(claims_of(&ns, &ps))
}

/// The mesh address claims of `ns` and `ps` (rows whose address does not parse claim
/// nothing).
fn claims_of(ns: &[nodes::Node], ps: &[external_peers::ExternalPeer]) -> Vec<Claim> {
    ns.iter()
        .map(|n| (&n.name, &n.wg_public_key, &n.mesh_address))
        .chain(
            ps.iter()
                .map(|p| (&p.name, &p.wg_public_key, &p.mesh_address)),
        )
        .filter_map(|(name, key, mesh)| {
            Some(Claim {
                claimant: Claimant {
                    name: name.clone(),
                    public_key: key.clone(),
                },
                address: mesh.parse().ok()?,
            })
        })
        .collect()
}

/// The WireGuard peers this node should have: every other node and external peer in the
/// store, plus seeds the store does not know yet (the store wins for a name it has).
pub fn desired_peers(
    own_name: &str,
    nodes: &[nodes::Node],
    external: &[external_peers::ExternalPeer],
    seeds: &[SeedPeer],
    keepalive: Option<u16>,
) -> Vec<PeerConfig> {
    let node_addresses: BTreeSet<Ipv4Addr> = seeds
        .iter()
        .map(|s| s.mesh_address)
        .chain(nodes.iter().filter_map(|n| n.mesh_address.parse().ok()))
        .collect();
    let mut by_name: BTreeMap<String, PeerConfig> = BTreeMap::new();
    let mut add = |name: &str, key: &str, endpoint: Option<&str>, mesh: &str| {
        if name == own_name {
            return;
        }
        let (Ok(public_key), Ok(mesh)) = (PublicKey::from_base64(key), mesh.parse::<Ipv4Addr>())
        else {
            debug!(
                peer = name,
                "skipping a peer without a valid key or mesh address"
            );
            return;
        };
        by_name.insert(
            name.to_owned(),
            PeerConfig {
                public_key,
                endpoint: endpoint.filter(|e| !e.is_empty()).map(|e| {
                    if e.contains(':') {
                        e.to_owned()
                    } else {
                        format!("{e}:{}", tunnel::DEFAULT_LISTEN_PORT)
                    }
                }),
                allowed_ips: vec![Ipv4Net::from(mesh)],
                persistent_keepalive: keepalive,
            },
        );
    };
    for s in seeds {
        add(
            &s.name,
            &s.public_key,
            Some(&s.endpoint),
            &s.mesh_address.to_string(),
        );
    }
    for n in nodes {
        add(
            &n.name,
            &n.wg_public_key,
            Some(&n.wg_endpoint),
            &n.mesh_address,
        );
    }
    // An external peer never gets a node's address in its AllowedIPs: that address
    // would then authenticate the external peer as the node.
    for p in external {
        if p.mesh_address
            .parse::<Ipv4Addr>()
            .is_ok_and(|a| node_addresses.contains(&a))
        {
            debug!(
                peer = %p.name,
                address = %p.mesh_address,
                "skipping an external peer that claims a node's mesh address"
            );
            continue;
        }
        add(
            &p.name,
            &p.wg_public_key,
            p.endpoint.as_deref(),
            &p.mesh_address,
        );
    }
    // One peer per key: the last name wins (a key moved to a new name).
    let mut by_key: BTreeMap<PublicKey, PeerConfig> = BTreeMap::new();
    for p in by_name.into_values() {
        by_key.insert(p.public_key, p);
    }
    by_key.into_values().collect()
}

/// Applies the store to the tunnel and the cluster set; returns the address this node
/// must move to when it lost a collision (and its address was not configured).
async fn reconcile(
    store: &Store,
    tunnel: &Arc<dyn Tunnel>,
    config: &NodeConfig,
    known: &Known,
    cluster: &ClusterNodes,
) -> Option<Ipv4Addr> {
    let read = store.read(|c| Ok((nodes::list(c)?, external_peers::list(c)?)));
    let (ns, ps) = match read {
        Ok(r) => r,
        Err(error) => {
            warn!(%error, "reading peers from the store failed");
            return None;
        }
    };
    if config.mesh_address.is_none() {
        check_collision(store, config, &ns, &ps);
    }
    // With WireGuard every node applies the same deterministic resolution of shared
    // addresses, so a node that moves is routed and admitted at its new address before
    // its own row reaches anyone.
    let rows = ns.clone();
    let ns = match config.tunnel {
        TunnelKind::WireGuard { .. } => effective_nodes(config.mesh_cidr, ns, &ps),
        TunnelKind::Direct => ns,
    };
    {
        let mut k = lock(known);
        k.clear();
        for s in &config.seeds {
            k.insert(s.name.clone(), s.mesh_address);
        }
        for n in &ns {
            if let Ok(a) = n.mesh_address.parse() {
                k.insert(n.name.clone(), a);
            }
        }
        k.remove(&config.name);
    }
    let mut desired = desired_peers(
        &config.name,
        &ns,
        &ps,
        &config.seeds,
        config.persistent_keepalive_secs,
    );
    let moving = keep_old_routes(&config.name, &rows, &ns, &mut desired);
    let mut members = cluster_members(config, &ns);
    members.retain(|(_, a)| !moving.iter().any(|(_, old)| old == a));
    members.extend(moving);
    cluster.set(
        members,
        ps.iter().filter_map(|p| p.mesh_address.parse().ok()),
    );
    // The tunnel call may resolve names and talk to the UAPI socket: keep it off the
    // async workers.
    let t = tunnel.clone();
    let result = tokio::task::spawn_blocking(move || t.set_peers(&desired))
        .await
        .unwrap_or_else(|e| Err(MeshError::Config(format!("reconcile task failed: {e}"))));
    match result {
        Ok(changes) if !changes.is_empty() => info!(?changes, "WireGuard peers updated"),
        Ok(_) => {}
        Err(error) => warn!(%error, "reconciling WireGuard peers failed"),
    }
    if config.mesh_address.is_some() {
        return None;
    }
    let own: Ipv4Addr = ns
        .iter()
        .find(|n| n.name == config.name)
        .and_then(|n| n.mesh_address.parse().ok())?;
    (own != tunnel.mesh_address()).then_some(own)
}

/// While a node that lost a collision has not recorded its new address yet, it still
/// sends from the old one: its peer keeps the old address besides the new one (taken from
/// whoever else claims it, the winner included, until the row moves), so it is reached,
/// learns that it lost, and moves. Returns those `(name, old address)`.
fn keep_old_routes(
    own_name: &str,
    rows: &[nodes::Node],
    effective: &[nodes::Node],
    desired: &mut Vec<PeerConfig>,
) -> Vec<(String, Ipv4Addr)> {
    let mut moving = Vec::new();
    for (row, eff) in rows.iter().zip(effective) {
        if row.name == own_name || row.mesh_address == eff.mesh_address {
            continue;
        }
        let (Ok(old), Ok(key)) = (
            row.mesh_address.parse::<Ipv4Addr>(),
            PublicKey::from_base64(&row.wg_public_key),
        ) else {
            continue;
        };
        for p in desired.iter_mut() {
            p.allowed_ips.retain(|n| n.addr() != old);
        }
        if let Some(p) = desired.iter_mut().find(|p| p.public_key == key) {
            p.allowed_ips.push(Ipv4Net::from(old));
            moving.push((row.name.clone(), old));
        }
    }
    desired.retain(|p| !p.allowed_ips.is_empty());
    moving
}

/// The `nodes` rows with the addresses [`addr::resolve_collisions`] gives them: a node
/// sharing an address with a claimant that wins (another node or an external peer) gets
/// the address it moves to, as it computes itself. Rows are unchanged when the range is
/// exhausted.
fn effective_nodes(
    net: Ipv4Net,
    mut ns: Vec<nodes::Node>,
    ps: &[external_peers::ExternalPeer],
) -> Vec<nodes::Node> {
    let claims = claims_of(&ns, ps);
    let Ok(moves) = addr::resolve_collisions(net, &claims) else {
        return ns;
    };
    for m in moves {
        if let Some(n) = ns
            .iter_mut()
            .find(|n| n.name == m.claimant.name && n.wg_public_key == m.claimant.public_key)
        {
            n.mesh_address = m.to.to_string();
        }
    }
    ns
}

/// `(name, mesh address)` of every cluster node: the `nodes` rows with a valid key and
/// address (this node included), and the seeds with a valid key the store does not know
/// by name yet.
fn cluster_members(config: &NodeConfig, ns: &[nodes::Node]) -> Vec<(String, Ipv4Addr)> {
    let mut out: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    for s in &config.seeds {
        if PublicKey::from_base64(&s.public_key).is_ok() {
            out.insert(s.name.clone(), s.mesh_address);
        }
    }
    for n in ns {
        if let (Ok(_), Ok(a)) = (
            PublicKey::from_base64(&n.wg_public_key),
            n.mesh_address.parse::<Ipv4Addr>(),
        ) {
            out.insert(n.name.clone(), a);
        }
    }
    out.into_iter().collect()
}

/// Detects that this node lost its mesh address to a concurrent joiner
/// ([`addr::resolve_collisions`]: every node computes the same winner) and records the
/// address it moves to in its `nodes` row; [`reconcile`] then moves the tunnel and the
/// services re-bind.
fn check_collision(
    store: &Store,
    config: &NodeConfig,
    ns: &[nodes::Node],
    ps: &[external_peers::ExternalPeer],
) {
    let Ok(key) = PrivateKey::from_base64(&config.private_key) else {
        return;
    };
    let me = Claimant {
        name: config.name.clone(),
        public_key: key.public_key().to_base64(),
    };
    let claims = claims_of(ns, ps);
    let Ok(moves) = addr::resolve_collisions(config.mesh_cidr, &claims) else {
        return;
    };
    let Some(m) = moves.iter().find(|m| m.claimant == me) else {
        return;
    };
    warn!(from = %m.from, to = %m.to, "mesh address taken by a claimant that wins the tie; moving");
    let moved = store.write(|tx| {
        if let Some(mut row) = nodes::get(tx, &config.name)? {
            row.mesh_address = m.to.to_string();
            nodes::upsert(tx, &row)?;
        }
        Ok(())
    });
    if let Err(error) = moved {
        warn!(%error, "recording the new mesh address failed");
    }
}

/// A standard `wg-quick` configuration for an external peer (e.g. an `o11y` box) that
/// joins the mesh: its `[Interface]` with its mesh address, and one `[Peer]` per node
/// with the node's endpoint and mesh address. `private_key` is left as a placeholder
/// when `None` (the store never holds private keys).
pub fn wg_quick_config(
    peer: &external_peers::ExternalPeer,
    private_key: Option<&PrivateKey>,
    nodes: &[nodes::Node],
    persistent_keepalive: Option<u16>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {} (generated by makiatto)", peer.name);
    let _ = writeln!(s, "[Interface]");
    let _ = writeln!(
        s,
        "PrivateKey = {}",
        private_key.map_or_else(|| "<private-key>".to_owned(), PrivateKey::to_base64)
    );
    // A /32, as in the user guide: wg-quick routes each node's /32 from `AllowedIPs`.
    let _ = writeln!(s, "Address = {}/32", peer.mesh_address);
    // Nodes dial the peer's endpoint port, or the mesh default when it names none.
    let port = peer
        .endpoint
        .as_deref()
        .and_then(|e| e.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(tunnel::DEFAULT_LISTEN_PORT);
    let _ = writeln!(s, "ListenPort = {port}");
    let _ = writeln!(s, "MTU = {}", tunnel::DEFAULT_MTU);
    for n in nodes {
        if n.wg_public_key.is_empty() || n.mesh_address.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n# {}", n.name);
        let _ = writeln!(s, "[Peer]");
        let _ = writeln!(s, "PublicKey = {}", n.wg_public_key);
        if !n.wg_endpoint.is_empty() {
            let _ = writeln!(s, "Endpoint = {}", n.wg_endpoint);
        }
        let _ = writeln!(s, "AllowedIPs = {}/32", n.mesh_address);
        if let Some(k) = persistent_keepalive {
            let _ = writeln!(s, "PersistentKeepalive = {k}");
        }
    }
    s
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_store_gets_a_new_site_and_the_marker_goes() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join(RETIRE_MARKER);
        assert!(!retire_if_marked(dir.path()).unwrap());
        std::fs::write(&marker, "").unwrap();
        // No store yet: nothing to retire, the marker goes all the same.
        assert!(!retire_if_marked(dir.path()).unwrap());
        assert!(!marker.exists());
        let db = dir.path().join("store.db");
        let open = || Store::open(&db, &cluster::SCHEMA, Options::default()).unwrap();
        let site = open().site();
        assert_eq!(open().site(), site);
        std::fs::write(&marker, "").unwrap();
        assert!(retire_if_marked(dir.path()).unwrap());
        assert!(!marker.exists());
        assert_ne!(open().site(), site);
    }

    fn node(name: &str, key: &PublicKey, mesh: &str) -> nodes::Node {
        nodes::Node {
            name: name.into(),
            wg_public_key: key.to_base64(),
            wg_endpoint: format!("{name}.example:51880"),
            mesh_address: mesh.into(),
            ipv4: String::new(),
            ipv6: None,
            latitude: 0.0,
            longitude: 0.0,
            is_nameserver: false,
            site_id: String::new(),
            created_ms: 0,
        }
    }

    #[test]
    fn desired_peers_merge_store_and_seeds() {
        let (a, b, c) = (
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
        );
        let ns = vec![
            node("a", &a, "10.44.44.1"),
            node("b", &b, "10.44.44.2"),
            node("bad", &c, "nope"),
        ];
        let ext = vec![external_peers::ExternalPeer {
            name: "o11y".into(),
            wg_public_key: c.to_base64(),
            endpoint: Some("192.0.2.9".into()),
            mesh_address: "10.44.44.9".into(),
            created_ms: 0,
        }];
        let seeds = vec![SeedPeer {
            name: "b".into(),
            public_key: b.to_base64(),
            endpoint: "old:1".into(),
            mesh_address: "10.44.44.2".parse().unwrap(),
        }];
        let peers = desired_peers("a", &ns, &ext, &seeds, Some(25));
        assert_eq!(peers.len(), 2, "{peers:?}");
        let pb = peers.iter().find(|p| p.public_key == b).unwrap();
        assert_eq!(
            pb.endpoint.as_deref(),
            Some("b.example:51880"),
            "the store wins over the seed"
        );
        let pc = peers.iter().find(|p| p.public_key == c).unwrap();
        assert_eq!(
            pc.endpoint.as_deref(),
            Some("192.0.2.9:51880"),
            "a bare host gets the default port"
        );
        assert_eq!(
            pc.allowed_ips,
            vec!["10.44.44.9/32".parse::<Ipv4Net>().unwrap()]
        );
        // An external peer claiming a node's address is left out: the address stays the
        // node's, and only the node's key may send from it.
        let thief = PrivateKey::generate().public_key();
        let ext = vec![external_peers::ExternalPeer {
            name: "thief".into(),
            wg_public_key: thief.to_base64(),
            endpoint: None,
            mesh_address: "10.44.44.2".into(),
            created_ms: 0,
        }];
        let peers = desired_peers("a", &ns, &ext, &[], None);
        assert!(peers.iter().all(|p| p.public_key != thief), "{peers:?}");
        assert!(peers.iter().any(|p| p.public_key == b));
    }

    #[tokio::test]
    async fn direct_refuses_a_public_address_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let config = |address: &str, cidr: &str, allow_public_direct: bool| NodeConfig {
            name: "a".into(),
            cluster_id: "default".into(),
            data_dir: dir.path().into(),
            private_key: PrivateKey::generate().to_base64(),
            tunnel: TunnelKind::Direct,
            mesh_cidr: cidr.parse().unwrap(),
            mesh_address: Some(address.parse().unwrap()),
            endpoint: String::new(),
            public_ipv4: String::new(),
            persistent_keepalive_secs: None,
            seeds: vec![],
            replication_port: 0,
            membership_port: 0,
            blob_port: 0,
            reconcile_every_ms: 1000,
            sync_interval_ms: None,
            allow_public_direct,
        };
        // A public address, no address, an address outside the range, and (review #24)
        // a private address whose range reaches public addresses.
        for (address, cidr) in [
            ("203.0.113.5", "0.0.0.0/0"),
            ("0.0.0.0", "0.0.0.0/0"),
            ("127.0.0.1", "10.44.44.0/24"),
            ("127.0.0.1", "0.0.0.0/0"),
            ("10.1.2.3", "8.0.0.0/6"),
        ] {
            let refused = MeshNode::start(config(address, cidr, false)).await;
            assert!(
                matches!(&refused, Err(MeshError::Config(m)) if m.contains("Direct")),
                "{address} in {cidr}: {refused:?}"
            );
        }
        for (address, cidr) in [("0.0.0.0", "0.0.0.0/0"), ("127.0.0.1", "10.44.44.0/24")] {
            assert!(matches!(
                MeshNode::start(config(address, cidr, true)).await,
                Err(MeshError::Config(_))
            ));
        }
        // Opting in gets past the check (then fails to bind an address this host lacks).
        let opted = MeshNode::start(config("203.0.113.5", "0.0.0.0/0", true)).await;
        assert!(matches!(&opted, Err(MeshError::Io { .. })), "{opted:?}");
        let node = MeshNode::start(config("127.0.0.1", "0.0.0.0/0", true))
            .await
            .unwrap();
        node.shutdown().await;
        let node = MeshNode::start(config("127.0.0.1", "127.0.0.0/8", false))
            .await
            .unwrap();
        node.shutdown().await;
        let r = MeshNode::start(config("10.1.2.3", "10.0.0.0/8", false)).await;
        assert!(matches!(&r, Err(MeshError::Io { .. })), "10.1.2.3: {r:?}");
    }

    #[test]
    fn the_loser_of_an_address_collision_records_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path().join("s.db"),
            &cluster::SCHEMA,
            Options::default(),
        )
        .unwrap();
        let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
        let shared = "10.44.44.5";
        store
            .write(|tx| {
                nodes::upsert(tx, &node("a", &ka.public_key(), shared))?;
                nodes::upsert(tx, &node("b", &kb.public_key(), shared))
            })
            .unwrap();
        let config = |name: &str, key: &PrivateKey| NodeConfig {
            name: name.into(),
            cluster_id: "default".into(),
            data_dir: dir.path().into(),
            private_key: key.to_base64(),
            tunnel: TunnelKind::Direct,
            mesh_cidr: addr::default_mesh_net(),
            mesh_address: None,
            endpoint: String::new(),
            public_ipv4: String::new(),
            persistent_keepalive_secs: None,
            seeds: vec![],
            replication_port: 0,
            membership_port: 0,
            blob_port: 0,
            reconcile_every_ms: 1000,
            sync_interval_ms: None,
            allow_public_direct: false,
        };
        let read = || store.read(nodes::list).unwrap();
        // "a" < "b": a keeps the address and changes nothing.
        check_collision(&store, &config("a", &ka), &read(), &[]);
        assert!(read().iter().all(|n| n.mesh_address == shared));
        check_collision(&store, &config("b", &kb), &read(), &[]);
        let rows = read();
        assert_eq!(rows[0].mesh_address, shared);
        assert_ne!(rows[1].mesh_address, shared);
        assert!(addr::is_host(
            addr::default_mesh_net(),
            rows[1].mesh_address.parse().unwrap()
        ));
        // Resolved: a second check moves nothing.
        check_collision(&store, &config("b", &kb), &rows, &[]);
        assert_eq!(read(), rows);
    }

    #[test]
    fn every_node_computes_where_the_loser_of_a_collision_goes() {
        let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
        let net = addr::default_mesh_net();
        let shared = "10.44.44.5";
        let ns = vec![node("b", &kb.public_key(), shared)];
        // An external peer named lower than b keeps the address: b moves.
        let ext = vec![external_peers::ExternalPeer {
            name: "a".into(),
            wg_public_key: ka.public_key().to_base64(),
            endpoint: None,
            mesh_address: shared.into(),
            created_ms: 0,
        }];
        let moved = effective_nodes(net, ns.clone(), &ext);
        assert_ne!(moved[0].mesh_address, shared);
        assert!(addr::is_host(net, moved[0].mesh_address.parse().unwrap()));
        // No collision: nothing changes.
        assert_eq!(effective_nodes(net, ns.clone(), &[]), ns);
    }

    #[test]
    fn a_moving_node_keeps_its_old_address_until_its_row_moves() {
        let (ka, kn, ko) = (
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
        );
        let net = addr::default_mesh_net();
        let rows = vec![
            node("a0", &ka, "10.44.44.5"),
            node("n1", &kn, "10.44.44.5"),
            node("n0", &ko, "10.44.44.1"),
        ];
        let effective = effective_nodes(net, rows.clone(), &[]);
        let to: Ipv4Addr = effective[1].mesh_address.parse().unwrap();
        assert_ne!(to.to_string(), "10.44.44.5");
        let mut desired = desired_peers("n0", &effective, &[], &[], None);
        let moving = keep_old_routes("n0", &rows, &effective, &mut desired);
        assert_eq!(
            moving,
            vec![("n1".to_owned(), "10.44.44.5".parse().unwrap())]
        );
        let n1 = desired.iter().find(|p| p.public_key == kn).unwrap();
        assert_eq!(
            n1.allowed_ips,
            vec![Ipv4Net::from(to), "10.44.44.5/32".parse().unwrap()]
        );
        assert!(
            desired.iter().all(|p| p.public_key != ka),
            "the winner waits"
        );
        // Once n1's row has moved, the winner gets the address.
        let rows = effective.clone();
        let mut desired = desired_peers("n0", &rows, &[], &[], None);
        assert!(
            keep_old_routes(
                "n0",
                &rows,
                &effective_nodes(net, rows.clone(), &[]),
                &mut desired
            )
            .is_empty()
        );
        let a0 = desired.iter().find(|p| p.public_key == ka).unwrap();
        assert_eq!(
            a0.allowed_ips,
            vec!["10.44.44.5/32".parse::<Ipv4Net>().unwrap()]
        );
    }

    #[test]
    fn wg_quick_config_lists_every_node() {
        let key = PrivateKey::generate();
        let a = PrivateKey::generate().public_key();
        let peer = external_peers::ExternalPeer {
            name: "o11y".into(),
            wg_public_key: key.public_key().to_base64(),
            endpoint: Some("10.77.0.50:51820".into()),
            mesh_address: "10.44.44.200".into(),
            created_ms: 0,
        };
        let conf = wg_quick_config(&peer, Some(&key), &[node("a", &a, "10.44.44.1")], Some(25));
        assert!(conf.contains(&format!("PrivateKey = {}", key.to_base64())));
        assert!(conf.contains("Address = 10.44.44.200/32"));
        assert!(conf.contains("ListenPort = 51820"));
        assert!(conf.contains(&format!("[Peer]\nPublicKey = {a}\nEndpoint = a.example:51880\nAllowedIPs = 10.44.44.1/32\nPersistentKeepalive = 25")));
        let bare = external_peers::ExternalPeer {
            endpoint: Some("o11y.example".into()),
            ..peer
        };
        let placeholder = wg_quick_config(&bare, None, &[], None);
        assert!(!placeholder.contains(&key.to_base64()));
        assert!(placeholder.contains("PrivateKey = <private-key>"));
        assert!(placeholder.contains("ListenPort = 51880"));
    }
}
