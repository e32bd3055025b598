//! The node: store, mesh, DNS, HTTP and the admin socket composed from a [`NodeConfig`].
//!
//! [`Node::start`] opens the store and blobs (through the mesh, which owns them), records
//! this node in `nodes` (coordinates, addresses, nameserver flag), starts the mesh (the
//! `Direct` tunnel or WireGuard) and then, each as a supervised task:
//! - GeoDNS zones rebuilt from the store on every change of `domains`, `dns_records`,
//!   `aliases`, `nodes` or `acme_challenges` (DNS-01 TXT) and on every membership change
//!   (unhealthy nodes leave the answers);
//! - deployment activation (see [`StoreSites`]): fetch blobs from peers, materialise beside
//!   the previous deployment, switch atomically, report in `deployment_activations`;
//! - the web server on HTTP and HTTPS, with certificates ([`StoreCerts`]) and ACME answers
//!   ([`StoreChallenges`]) from the store;
//! - ACME (when `acme.enabled`): the node holding the `acme` lease orders a certificate
//!   for each domain, `*.<domain>`, its aliases and its nameserver hostnames (HTTP-01
//!   answered by every node, DNS-01 through our own DNS; see `node/acme.rs`) and stores it
//!   for every node;
//! - the admin socket ([`crate::admin::socket`]);
//! - blob garbage collection, and this node's `node_health` row.
//!
//! A task that fails or panics is restarted with backoff ([`Health`] keeps its state, the
//! health row reports it). [`NodeHandle::shutdown`] stops accepting, drains connections,
//! stops DNS, marks the node stopped and leaves the mesh.
//!
//! Mesh ports: replication on `mesh.sync_port`, membership on `sync_port + 1`, blobs on
//! `sync_port + 2`, all on the mesh address. A seed is the mesh address of a node already
//! in the cluster (`"10.44.44.1"`, or `"10.44.44.1:51881"`; the port is ignored).

mod acme;
mod certs;
mod sites;
mod supervise;
mod zones;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use makiatto_dns::{DnsServer, GeoLocator, MmdbLocator, NoLocator, ZoneHandle, ZoneSet};
use makiatto_http::{HttpServer, ServerConfig};
use makiatto_mesh::membership::MembershipView;
use makiatto_mesh::node::{NodeConfig as MeshConfig, TunnelKind};
use makiatto_mesh::{MeshNode, PrivateKey, SeedPeer};
use miette::Diagnostic;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use certs::{SniCerts, StoreCerts, StoreChallenges};
pub use sites::StoreSites;
pub use supervise::{Health, SubsystemState};

use crate::admin::socket::{self as admin_socket, AdminState};
use crate::config::{MeshBackend, NodeConfig};
use crate::store::cluster::node_health::{self, NodeHealth};
use crate::store::cluster::nodes;
use crate::store::{BlobStore, Store};

/// The store's cluster id.
const CLUSTER_ID: &str = "makiatto";
/// How often the health row is rewritten when nothing changes.
const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// How often unreferenced blobs are collected.
const GC_EVERY: Duration = Duration::from_secs(600);
/// Blobs younger than this are never collected (uploaded, deployment not yet created).
const GC_GRACE: Duration = Duration::from_secs(3600);
/// How often pending deployments are retried when nothing changes.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Why a node could not start.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration cannot be used as it is.
    #[error("node configuration: {0}")]
    Config(String),
    /// The mesh (and with it the store) did not start.
    #[error("starting the mesh")]
    Mesh(#[from] makiatto_mesh::MeshError),
    /// The store failed.
    #[error("node store")]
    Store(#[from] crate::store::StoreError),
    /// The DNS server did not start.
    #[error("starting DNS")]
    Dns(#[from] makiatto_dns::DnsError),
    /// The web server did not start.
    #[error("starting the web server")]
    Http(#[from] makiatto_http::HttpError),
    /// A file or socket operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Io { what, source }
}

/// The node.
#[derive(Debug)]
pub struct Node;

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    name: String,
    mesh: MeshNode,
    store: Store,
    dns: Option<DnsServer>,
    dns_addr: Option<SocketAddr>,
    dot_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
    admin_socket: PathBuf,
    sites: Arc<StoreSites>,
    health: Health,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Node {
    /// Starts every subsystem of `config`; errors that prevent serving at all (ports taken,
    /// an unusable data directory) are returned, later failures are retried and reported.
    pub async fn start(config: NodeConfig) -> Result<NodeHandle, NodeError> {
        let name = config.name().to_owned();
        let data_dir = config.node.data_dir.clone();
        std::fs::create_dir_all(&data_dir)
            .map_err(io(format!("creating {}", data_dir.display())))?;
        let mesh = MeshNode::start(mesh_config(&config)?).await?;
        let store = mesh.store().clone();
        let blobs = mesh.blobs().clone();
        record_self(&store, &config)?;
        let health = Health::default();
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let view = mesh.membership();

        // Certificates from the store, for HTTPS and DNS over TLS.
        let certs = Arc::new(StoreCerts::default());
        {
            let (store, certs) = (store.clone(), Arc::clone(&certs));
            tasks.spawn(supervise::supervise(
                "certificates",
                health.clone(),
                cancel.clone(),
                move |token| reload_certs(store.clone(), Arc::clone(&certs), token),
            ));
        }

        // DNS.
        let mut dot_addr = None;
        let geo = config.dns.enabled.then(|| locator(&config.geoip_db()));
        let (dns, dns_addr) = if let Some(geo) = &geo {
            let me = name.clone();
            let alive = view.clone();
            let zones = ZoneHandle::new(Arc::new(ZoneSet::default()))?;
            let caa = config.acme.caa_issuer();
            let first = build_zones(&store, (&me, caa.as_deref()), &alive.borrow())?;
            let broken = zones::set_servable(&zones, first).map_err(NodeError::Config)?;
            if !broken.is_empty() {
                tracing::warn!(?broken, "zones not served: they do not compile");
            }
            let (udp, tcp) = makiatto_dns::bind_udp_tcp(config.dns.addr)?;
            let addr = udp.local_addr().map_err(io("reading the DNS address"))?;
            let mut builder = DnsServer::builder(zones.clone())
                .locator(Arc::clone(geo))
                .udp(udp)
                .tcp(tcp);
            if let Some(rps) = std::num::NonZeroU32::new(config.dns.rate_limit) {
                builder = builder
                    .rate_limit(makiatto_dns::RateLimit::new(rps).slip(config.dns.rate_limit_slip));
            }
            // DNS over TLS with the node's certificates (they cover `<node>.ns.<domain>`).
            if let Some(dot) = config.dns.dot_listen() {
                let listener = std::net::TcpListener::bind(dot)
                    .map_err(io(format!("binding DNS over TLS on {dot}")))?;
                dot_addr = Some(
                    listener
                        .local_addr()
                        .map_err(io("reading the DoT address"))?,
                );
                builder = builder.tls(listener, Arc::new(certs::SniCerts(Arc::clone(&certs))));
            }
            let server = builder.start()?;
            let (store, health_z) = (store.clone(), health.clone());
            tasks.spawn(supervise::supervise(
                "dns-zones",
                health.clone(),
                cancel.clone(),
                move |token| {
                    sync_zones(
                        store.clone(),
                        (me.clone(), caa.clone()),
                        alive.clone(),
                        zones.clone(),
                        health_z.clone(),
                        token,
                    )
                },
            ));
            (Some(server), Some(addr))
        } else {
            (None, None)
        };

        // Sites and their activation.
        let sites = Arc::new(StoreSites::default());
        let mut activator = sites::Activator::new(
            name.clone(),
            store.clone(),
            blobs.clone(),
            Arc::clone(&sites),
            data_dir.join("sites"),
            blob_peers(view.clone(), config.mesh.sync_port.saturating_add(2)),
        );
        activator.load_pointers();
        let activator = Arc::new(tokio::sync::Mutex::new(activator));
        {
            let (health_a, store) = (health.clone(), store.clone());
            tasks.spawn(supervise::supervise(
                "deployments",
                health.clone(),
                cancel.clone(),
                move |token| {
                    activate_loop(
                        Arc::clone(&activator),
                        store.clone(),
                        health_a.clone(),
                        token,
                    )
                },
            ));
        }

        // HTTP and HTTPS, with certificates and ACME answers from the store.
        let (mut http_addr, mut https_addr) = (None, None);
        if config.web.enabled {
            let server = HttpServer::new(
                ServerConfig {
                    http_addrs: vec![config.web.http_addr],
                    https_addrs: vec![config.web.https_addr],
                    https_redirect_port: Some(config.web.https_addr.port()),
                    ..ServerConfig::default()
                },
                Arc::clone(&sites) as Arc<dyn makiatto_http::SiteResolver>,
                Arc::clone(&certs) as Arc<dyn makiatto_http::CertSource>,
                Arc::new(StoreChallenges::new(store.clone())),
            )?;
            for (addr, https) in [(config.web.http_addr, false), (config.web.https_addr, true)] {
                let listener = makiatto_http::bind(addr)?
                    .into_std()
                    .map_err(io(format!("listening on {addr}")))?;
                let bound = listener
                    .local_addr()
                    .map_err(io("reading the web address"))?;
                if https {
                    https_addr = Some(bound);
                } else {
                    http_addr = Some(bound);
                }
                let server = server.clone();
                tasks.spawn(supervise::supervise(
                    if https { "https" } else { "http" },
                    health.clone(),
                    cancel.clone(),
                    move |token| serve_web(server.clone(), listener.try_clone(), https, token),
                ));
            }
            if config.acme.enabled {
                let acme_cfg = makiatto_http::acme::AcmeConfig {
                    directory_url: config.acme.directory.clone(),
                    contact_email: config.acme.email.as_ref().map(|e| e.get_ref().clone()),
                    directory_root_pem: config.acme.directory_root.clone(),
                    ..makiatto_http::acme::AcmeConfig::default()
                };
                let reach = acme::Reach {
                    me: name.clone(),
                    store: store.clone(),
                    view: view.clone(),
                    http: http_addr,
                    dns: dns_addr,
                    dns_port: dns_addr.map_or(config.dns.addr.port(), |a| a.port()),
                };
                let (store, certs) = (store.clone(), Arc::clone(&certs));
                let challenges = StoreChallenges::new(store.clone());
                tasks.spawn(supervise::supervise(
                    "acme",
                    health.clone(),
                    cancel.clone(),
                    move |token| {
                        acme_loop(
                            acme_cfg.clone(),
                            store.clone(),
                            Arc::new(challenges.clone()),
                            Arc::clone(&certs),
                            reach.clone(),
                            token,
                        )
                    },
                ));
            }
        }

        // Admin socket.
        let admin_path = config.admin.socket.clone();
        let first = admin_socket::bind(&admin_path).map_err(io(format!(
            "binding the admin socket {}",
            admin_path.display()
        )))?;
        let state = Arc::new(AdminState {
            store: Arc::new(store.clone()),
            blobs: Arc::new(blobs),
            mesh_cidr: config.mesh.cidr,
            mesh_port: config.mesh.port,
            membership: Some(view.clone()),
            locator: geo,
        });
        let first = Arc::new(std::sync::Mutex::new(Some(first)));
        {
            let path = admin_path.clone();
            tasks.spawn(supervise::supervise(
                "admin",
                health.clone(),
                cancel.clone(),
                move |token| {
                    let listener = first
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take();
                    let (state, path) = (Arc::clone(&state), path.clone());
                    async move {
                        let listener = match listener {
                            Some(l) => l,
                            None => admin_socket::bind(&path).map_err(|e| e.to_string())?,
                        };
                        admin_socket::serve(listener, state, token.cancelled_owned()).await;
                        Ok(())
                    }
                },
            ));
        }

        // Blob garbage collection.
        {
            let (store, blobs) = (store.clone(), mesh.blobs().clone());
            tasks.spawn(supervise::supervise(
                "blob-gc",
                health.clone(),
                cancel.clone(),
                move |token| gc_loop(store.clone(), blobs.clone(), token),
            ));
        }

        // Health row.
        {
            let (store, health_h, me) = (store.clone(), health.clone(), name.clone());
            tasks.spawn(supervise::supervise(
                "health",
                health.clone(),
                cancel.clone(),
                move |token| report_health(store.clone(), me.clone(), health_h.clone(), token),
            ));
        }
        tracing::info!(node = %name, dns = ?dns_addr, http = ?http_addr, admin = %admin_path.display(), "node started");
        Ok(NodeHandle {
            name,
            mesh,
            store,
            dns,
            dns_addr,
            dot_addr,
            http_addr,
            https_addr,
            admin_socket: admin_path,
            sites,
            health,
            cancel,
            tasks,
        })
    }

    /// Starts the node and runs it until `shutdown` completes, then stops it gracefully.
    pub async fn run(
        config: NodeConfig,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), NodeError> {
        let node = Self::start(config).await?;
        shutdown.await;
        tracing::info!("shutting down");
        // Each part bounds its own drain; this bounds the whole, whatever hangs.
        if tokio::time::timeout(Duration::from_secs(20), node.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("shutdown did not finish within 20 s; exiting anyway");
        }
        Ok(())
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

impl NodeHandle {
    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The replicated store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        self.mesh.blobs()
    }

    /// The DNS address (UDP and TCP), when DNS is enabled.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns_addr
    }

    /// The bound DNS over TLS address (`None` when off).
    pub fn dot_addr(&self) -> Option<SocketAddr> {
        self.dot_addr
    }

    /// The HTTP address, when the web server is enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The HTTPS address, when the web server is enabled.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The admin socket.
    pub fn admin_socket(&self) -> &Path {
        &self.admin_socket
    }

    /// The mesh address.
    pub fn mesh_address(&self) -> Ipv4Addr {
        self.mesh.mesh_address()
    }

    /// The membership view.
    pub fn membership(&self) -> watch::Receiver<MembershipView> {
        self.mesh.membership()
    }

    /// The sites served, by host.
    pub fn sites(&self) -> &StoreSites {
        &self.sites
    }

    /// Every subsystem's state.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Stops accepting, lets open connections finish, stops DNS, leaves the mesh.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(15), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.shutdown().await;
        }
        if let Some(dns) = self.dns.take()
            && let Err(e) = dns.shutdown().await
        {
            tracing::warn!(error = %e, "DNS shutdown");
        }
        let row = NodeHealth {
            node: self.name.clone(),
            status: node_health::HealthStatus::Unhealthy,
            detail: "stopped".into(),
            updated_ms: now_ms(),
            version: crate::VERSION.into(),
        };
        let _ = self.store.write(|tx| node_health::upsert(tx, &row));
        self.mesh.shutdown().await;
    }
}

/// The mesh configuration of a node configuration.
fn mesh_config(config: &NodeConfig) -> Result<MeshConfig, NodeError> {
    let m = &config.mesh;
    let v4 = |a: Option<IpAddr>| match a {
        Some(IpAddr::V4(a)) => Ok(Some(a)),
        Some(IpAddr::V6(a)) => Err(NodeError::Config(format!(
            "mesh.address {a}: the mesh is IPv4"
        ))),
        None => Ok(None),
    };
    let mesh_address = match (v4(m.address)?, m.backend) {
        (Some(a), _) => Some(a),
        (None, MeshBackend::Direct) => Some(config.node.ipv4.unwrap_or(Ipv4Addr::LOCALHOST)),
        (None, MeshBackend::Boringtun) => None,
    };
    let tunnel = match m.backend {
        MeshBackend::Direct => TunnelKind::Direct,
        MeshBackend::Boringtun => TunnelKind::WireGuard {
            interface: "makiatto0".into(),
            listen_port: m.port,
            mtu: 1420,
            threads: 1,
        },
    };
    let public = config
        .node
        .ipv4
        .or(mesh_address)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut seeds = Vec::new();
    for s in &m.seeds {
        let host = s
            .parse::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| s.parse::<IpAddr>())
            .map_err(|_| NodeError::Config(format!("mesh.seeds: `{s}` is not an address")))?;
        let IpAddr::V4(mesh_address) = host else {
            return Err(NodeError::Config(format!("mesh.seeds: `{s}` is not IPv4")));
        };
        seeds.push(SeedPeer {
            name: format!("seed-{mesh_address}"),
            public_key: String::new(),
            endpoint: format!("{mesh_address}:{}", m.port),
            mesh_address,
        });
    }
    // Seeds reached over WireGuard: their key and public endpoint are known.
    for p in &m.seed_nodes {
        seeds.push(SeedPeer {
            name: p.name.clone(),
            public_key: p.wg_public_key.clone(),
            endpoint: p.endpoint.clone(),
            mesh_address: p.address,
        });
    }
    let port = |offset: u16| {
        m.sync_port.checked_add(offset).ok_or_else(|| {
            NodeError::Config(format!(
                "mesh.sync_port {} leaves no room for +2",
                m.sync_port
            ))
        })
    };
    Ok(MeshConfig {
        name: config.name().to_owned(),
        cluster_id: CLUSTER_ID.into(),
        data_dir: config.node.data_dir.clone(),
        private_key: private_key(&config.node.data_dir)?,
        tunnel,
        mesh_cidr: ipnet_of(config),
        mesh_address,
        endpoint: format!("{public}:{}", m.port),
        public_ipv4: public,
        persistent_keepalive_secs: Some(25),
        seeds,
        replication_port: port(0)?,
        membership_port: port(1)?,
        blob_port: port(2)?,
        reconcile_every_ms: 2000,
        sync_interval_ms: None,
        allow_public_direct: m.allow_public_direct,
    })
}

fn ipnet_of(config: &NodeConfig) -> ipnet::Ipv4Net {
    let c = config.mesh.cidr;
    ipnet::Ipv4Net::new(c.network, c.prefix_len)
        .unwrap_or_else(|_| makiatto_mesh::addr::default_mesh_net())
}

/// The public half of the node's WireGuard key (`<data_dir>/wg.key`), creating the key
/// (mode 0600) when it does not exist yet. `makiatto wg-key` prints it: the private key
/// never leaves the machine.
pub fn wg_public_key(data_dir: &Path) -> Result<String, NodeError> {
    std::fs::create_dir_all(data_dir).map_err(io(format!("creating {}", data_dir.display())))?;
    let private = PrivateKey::from_base64(&private_key(data_dir)?)?;
    Ok(private.public_key().to_base64())
}

/// The node's WireGuard key: `<data_dir>/wg.key`, created (mode 0600) on first start.
fn private_key(data_dir: &Path) -> Result<String, NodeError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = data_dir.join("wg.key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let text = text.trim().to_owned();
        PrivateKey::from_base64(&text)?;
        return Ok(text);
    }
    let key = PrivateKey::generate().to_base64();
    let temp = data_dir.join("wg.key.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(io(format!("writing {}", temp.display())))?;
    file.write_all(key.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(format!("writing {}", temp.display())))?;
    std::fs::rename(&temp, &path).map_err(io(format!("writing {}", path.display())))?;
    Ok(key)
}

/// Completes this node's `nodes` row (the mesh writes keys and addresses) with its
/// coordinates, public addresses and nameserver flag.
fn record_self(store: &Store, config: &NodeConfig) -> Result<(), NodeError> {
    let lat = config.node.latitude.as_ref().map_or(0.0, |l| *l.get_ref());
    let lon = config.node.longitude.as_ref().map_or(0.0, |l| *l.get_ref());
    if config.node.latitude.is_none() || config.node.longitude.is_none() {
        tracing::warn!("no coordinates in the configuration: GeoDNS places this node at 0,0");
    }
    store.write(|tx| {
        let Some(mut row) = nodes::get(tx, config.name())? else {
            return Ok(());
        };
        let before = row.clone();
        row.latitude = lat;
        row.longitude = lon;
        if let Some(a) = config.node.ipv4 {
            row.ipv4 = a.to_string();
        }
        row.ipv6 = config.node.ipv6.map(|a| a.to_string());
        row.is_nameserver = config.node.is_nameserver;
        if row != before {
            nodes::upsert(tx, &row)?;
        }
        Ok(())
    })?;
    Ok(())
}

fn locator(path: &Path) -> Arc<dyn GeoLocator> {
    match MmdbLocator::open(path) {
        Ok(geo) => {
            geo.watch(Duration::from_secs(60));
            Arc::new(geo)
        }
        Err(e) => {
            tracing::warn!(db = %path.display(), error = %e, "no GeoIP database: DNS answers every healthy node");
            Arc::new(NoLocator)
        }
    }
}

fn build_zones(
    store: &Store,
    (me, caa): (&str, Option<&str>),
    view: &MembershipView,
) -> Result<ZoneSet, NodeError> {
    Ok(store.read(|c| zones::build(c, &|n| n == me || view.is_alive(n), caa))?)
}

/// Rebuilds the zones on every change of the tables they come from and of membership.
async fn sync_zones(
    store: Store,
    (me, caa): (String, Option<String>),
    mut view: watch::Receiver<MembershipView>,
    zones: ZoneHandle,
    health: Health,
    cancel: CancellationToken,
) -> Result<(), String> {
    let mut watches: Vec<_> = [
        "domains",
        "dns_records",
        "aliases",
        "nodes",
        "acme_challenges",
    ]
    .iter()
    .filter_map(|t| store.watch_table(t))
    .collect();
    let mut published = std::collections::BTreeSet::new();
    let alive_of = |v: &MembershipView| -> std::collections::BTreeSet<String> {
        v.alive().map(|(n, _)| n.to_owned()).collect()
    };
    loop {
        let (set, alive) = {
            let v = view.borrow_and_update();
            let set = build_zones(&store, (&me, caa.as_deref()), &v).map_err(|e| e.to_string())?;
            (set, alive_of(&v))
        };
        let broken = zones::set_servable(&zones, set)?;
        if broken.is_empty() {
            health.set("dns-zones", SubsystemState::Running);
        } else {
            let why = format!(
                "zones not served (they do not compile): {}",
                broken.join(", ")
            );
            health.set("dns-zones", SubsystemState::Degraded(why));
        }
        publish_dns01(&store, &zones, &mut published).map_err(|e| e.to_string())?;
        // Membership churn that leaves the set of live nodes as it was (suspicions
        // cleared, incarnations, addresses learnt) changes no answer: nothing is rebuilt.
        loop {
            let any_table = async {
                let futures = watches.iter_mut().map(|w| Box::pin(w.changed()));
                futures_select_all(futures).await;
            };
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                r = view.changed() => {
                    if r.is_err() {
                        return Err("membership ended".into());
                    }
                    if alive_of(&view.borrow_and_update()) != alive {
                        break;
                    }
                }
                () = any_table => break,
            }
        }
    }
}

/// Publishes the store's open DNS-01 values as `_acme-challenge` TXT records of their
/// zones and withdraws those that closed. `published` is what the handle holds.
fn publish_dns01(
    store: &Store,
    zones: &ZoneHandle,
    published: &mut std::collections::BTreeSet<(String, String)>,
) -> crate::store::Result<()> {
    use crate::store::cluster::acme_challenges::{self, ChallengeKind};
    let now = now_ms();
    let open: std::collections::BTreeSet<(String, String)> = store
        .read(acme_challenges::list)?
        .into_iter()
        .filter(|c| c.kind == ChallengeKind::Dns01 && c.expires_ms > now)
        .map(|c| (c.name, c.value))
        .collect();
    if open == *published {
        return Ok(());
    }
    // Few values are ever open: withdraw all, then publish the open ones.
    for (name, value) in std::mem::take(published) {
        let _ = zones.remove_acme_challenge(&name, &value);
    }
    for (name, value) in open {
        match zones.add_acme_challenge(&name, &value) {
            Ok(_) => {
                published.insert((name, value));
            }
            Err(e) => tracing::debug!(%name, error = %e, "DNS-01 value not published"),
        }
    }
    Ok(())
}

/// Waits for the first of `futures` (a small `select_all` without the futures crate).
async fn futures_select_all<F: Future + Unpin>(futures: impl Iterator<Item = F>) {
    let mut futures: Vec<F> = futures.collect();
    if futures.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for f in &mut futures {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await;
}

/// The blob servers of the alive peers.
fn blob_peers(
    view: watch::Receiver<MembershipView>,
    port: u16,
) -> Arc<dyn Fn() -> Vec<SocketAddr> + Send + Sync> {
    Arc::new(move || {
        view.borrow()
            .alive()
            .map(|(_, m)| SocketAddr::new(m.addr.ip(), port))
            .collect()
    })
}

async fn activate_loop(
    activator: Arc<tokio::sync::Mutex<sites::Activator>>,
    store: Store,
    health: Health,
    cancel: CancellationToken,
) -> Result<(), String> {
    let mut watches: Vec<_> = ["domains", "deployments", "deployment_files", "aliases"]
        .iter()
        .filter_map(|t| store.watch_table(t))
        .collect();
    let mut activator = activator.lock().await;
    loop {
        let problems = activator.pass().await?;
        if problems.is_empty() {
            health.set("deployments", SubsystemState::Running);
        } else {
            health.set("deployments", SubsystemState::Degraded(problems.join("; ")));
        }
        let any_table = async {
            let futures = watches.iter_mut().map(|w| Box::pin(w.changed()));
            futures_select_all(futures).await;
        };
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(RETRY_EVERY) => {}
            () = any_table => {}
        }
    }
}

/// Deletes the blobs no deployment references that are older than `grace` (a blob just
/// uploaded for a deployment not yet created is young).
pub fn collect_blobs(
    store: &Store,
    blobs: &BlobStore,
    grace: Duration,
) -> crate::store::Result<crate::store::GcStats> {
    let referenced: std::collections::HashSet<String> = store
        .read(crate::store::cluster::deployments::referenced_blobs)?
        .into_iter()
        .collect();
    let now = std::time::SystemTime::now();
    blobs.gc(|hash| {
        referenced.contains(&hash.to_string())
            || std::fs::metadata(blobs.path(hash))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_none_or(|age| age < grace)
    })
}

async fn gc_loop(store: Store, blobs: BlobStore, cancel: CancellationToken) -> Result<(), String> {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(GC_EVERY) => {}
        }
        let (store, blobs) = (store.clone(), blobs.clone());
        let stats = tokio::task::spawn_blocking(move || collect_blobs(&store, &blobs, GC_GRACE))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if stats.blobs_removed > 0 {
            tracing::info!(
                removed = stats.blobs_removed,
                bytes = stats.bytes_freed,
                "unreferenced blobs collected"
            );
        }
    }
}

/// Keeps a certificate for every domain and its aliases while this node holds the ACME
/// lease: a round at start, on every change of `domains` or `aliases`, and every
/// `check_interval_ms`.
async fn acme_loop(
    cfg: makiatto_http::acme::AcmeConfig,
    store: Store,
    challenges: Arc<dyn makiatto_http::ChallengeStore>,
    certs: Arc<StoreCerts>,
    reach: acme::Reach,
    cancel: CancellationToken,
) -> Result<(), String> {
    use makiatto_http::acme::Lease as _;
    let lease = acme::StoreLease {
        store: store.clone(),
        holder: reach.me.clone(),
    };
    let (every, ttl) = (
        Duration::from_millis(cfg.check_interval_ms),
        Duration::from_millis(cfg.lease_ttl_ms),
    );
    let manager = acme::manager(cfg, &store, challenges, certs, reach);
    let mut watches: Vec<_> = ["domains", "aliases"]
        .iter()
        .filter_map(|t| store.watch_table(t))
        .collect();
    loop {
        match lease.acquire(ttl).await {
            Ok(true) => {
                for order in acme::orders(&store) {
                    if cancel.is_cancelled() {
                        break;
                    }
                    if let Err(e) = manager.ensure(&order).await {
                        tracing::warn!(names = ?order.names, error = %e, "certificate not obtained; keeping the current one");
                    }
                }
            }
            Ok(false) => tracing::debug!("another node holds the ACME lease"),
            Err(e) => tracing::warn!(error = %e, "ACME lease"),
        }
        let any_table = async {
            let futures = watches.iter_mut().map(|w| Box::pin(w.changed()));
            futures_select_all(futures).await;
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(every.min(ttl / 2)) => {}
            () = any_table => {}
        }
    }
    let _ = lease.release().await;
    Ok(())
}

/// Reloads the certificates on every change of the table, and every minute (expiry).
async fn reload_certs(
    store: Store,
    certs: Arc<StoreCerts>,
    cancel: CancellationToken,
) -> Result<(), String> {
    let mut changed = store.watch_table("certificates");
    loop {
        certs.reload(&store, now_ms()).map_err(|e| e.to_string())?;
        let table = async {
            match changed.as_mut() {
                Some(w) => {
                    if w.changed().await.is_err() {
                        changed = None;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = table => {}
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}

async fn serve_web(
    server: HttpServer,
    listener: std::io::Result<std::net::TcpListener>,
    https: bool,
    cancel: CancellationToken,
) -> Result<(), String> {
    let listener = listener
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| e.to_string())?;
    if https {
        server.serve_https(listener, cancel.clone()).await;
    } else {
        server.serve_http(listener, cancel.clone()).await;
    }
    if cancel.is_cancelled() {
        server.drain(Duration::from_secs(10)).await;
    }
    Ok(())
}

/// Writes this node's `node_health` row on every change and every few seconds.
async fn report_health(
    store: Store,
    me: String,
    health: Health,
    cancel: CancellationToken,
) -> Result<(), String> {
    let mut changes = health.subscribe();
    loop {
        let (status, detail) = health.summary();
        let row = NodeHealth {
            node: me.clone(),
            status,
            detail,
            updated_ms: now_ms(),
            version: crate::VERSION.into(),
        };
        store
            .write(|tx| node_health::upsert(tx, &row))
            .map_err(|e| e.to_string())?;
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = changes.changed() => {}
            () = tokio::time::sleep(HEALTH_EVERY) => {}
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Options;
    use crate::store::cluster::{self, deployment_files};

    #[test]
    fn only_unreferenced_blobs_past_the_grace_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path().join("s.db"),
            &cluster::SCHEMA,
            Options::default(),
        )
        .unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        let used = blobs.put_bytes(b"used").unwrap();
        let unused = blobs.put_bytes(b"unused").unwrap();
        store
            .write(|tx| {
                deployment_files::insert(
                    tx,
                    &deployment_files::DeploymentFile {
                        deployment_id: "d1".into(),
                        path: "index.html".into(),
                        hash: used.to_string(),
                        size: 4,
                        mode: 0o644,
                    },
                )
                .map(|_| ())
            })
            .unwrap();
        let young = collect_blobs(&store, &blobs, Duration::from_secs(3600)).unwrap();
        assert_eq!(young.blobs_removed, 0, "both are young");
        let stats = collect_blobs(&store, &blobs, Duration::ZERO).unwrap();
        assert_eq!(stats.blobs_removed, 1);
        assert!(blobs.contains(&used));
        assert!(!blobs.contains(&unused));
    }
}
