//! The node daemon's configuration file (`/etc/makiatto/config.toml`).
//!
//! Every section and key but `node.name` has a default, so the smallest file is:
//!
//! ```toml
//! [node]
//! name = "vector"
//! ```
//!
//! An unknown key, a value of the wrong type or out of range is an error that names the key
//! and its line. The shipped example, `node.example.toml`, lists every key with its default.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use miette::Diagnostic;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::diag::{self, InvalidFile, Problem};

/// The node daemon's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node.
    pub node: NodeSection,
    /// The DNS server.
    #[serde(default)]
    pub dns: DnsSection,
    /// The web server.
    #[serde(default)]
    pub web: WebSection,
    /// The WireGuard mesh.
    #[serde(default)]
    pub mesh: MeshSection,
    /// The admin API.
    #[serde(default)]
    pub admin: AdminSection,
    /// Certificates.
    #[serde(default)]
    pub acme: AcmeSection,
    /// Telemetry export (the guide's `[o11y]`).
    #[serde(default)]
    pub o11y: O11ySection,
}

/// `[node]`: who and where this node is.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Node name: one DNS label, used for `<name>.ns.<domain>`.
    pub name: Spanned<String>,
    /// Latitude in degrees (-90 to 90); `None`: detected at start.
    pub latitude: Option<Spanned<f64>>,
    /// Longitude in degrees (-180 to 180); `None`: detected at start.
    pub longitude: Option<Spanned<f64>>,
    /// Public IPv4 address; `None`: detected at start.
    pub ipv4: Option<Ipv4Addr>,
    /// Public IPv6 address, if any.
    pub ipv6: Option<Ipv6Addr>,
    /// Whether this node answers as a nameserver (`<name>.ns.<domain>`).
    #[serde(default = "yes")]
    pub is_nameserver: bool,
    /// Where the store, blobs and deployments live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

/// `[dns]`: the authoritative GeoDNS server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Serve DNS at all.
    pub enabled: bool,
    /// UDP and TCP address.
    pub addr: SocketAddr,
    /// Serve DNS over TLS (with the node's certificates, chosen by SNI).
    pub dot: bool,
    /// DNS over TLS address; `None`: the DNS address's IP on port 853 when DNS is on port
    /// 53, else none (set it to run DoT beside DNS on another port).
    pub dot_addr: Option<SocketAddr>,
    /// GeoIP database (mmdb); `None`: `<data_dir>/geoip.mmdb`.
    pub geoip_db: Option<PathBuf>,
    /// UDP response rate limit per client /24 (IPv4) or /56 (IPv6) and answer, in answers
    /// per second (BIND/Knot-style RRL against reflection); 0: off.
    pub rate_limit: u32,
    /// With `rate_limit`: every n-th limited answer goes out truncated (TC) so real
    /// resolvers retry over TCP; 0: drop them all.
    pub rate_limit_slip: u32,
}

/// `[web]`: the HTTP and HTTPS server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSection {
    /// Serve HTTP(S) at all.
    pub enabled: bool,
    /// HTTP address (ACME HTTP-01 and redirects to HTTPS).
    pub http_addr: SocketAddr,
    /// HTTPS address.
    pub https_addr: SocketAddr,
}

/// Which tunnel carries mesh traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeshBackend {
    /// Userspace WireGuard on a TUN device (needs root or CAP_NET_ADMIN).
    Boringtun,
    /// No tunnel: peers talk directly (loopback demo and tests).
    Direct,
}

/// `[mesh]`: the WireGuard mesh between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshSection {
    /// Tunnel backend.
    pub backend: MeshBackend,
    /// Network the mesh addresses come from.
    pub cidr: Ipv4Cidr,
    /// WireGuard UDP port.
    pub port: u16,
    /// This node's mesh address; `None`: allocated on join.
    pub address: Option<IpAddr>,
    /// Port of the mesh-internal services on the mesh address: replication on it,
    /// membership on `sync_port + 1`, blobs on `sync_port + 2`.
    pub sync_port: u16,
    /// Nodes to join through: their mesh addresses (`"10.44.44.1"`; a `:port` suffix is
    /// accepted and ignored); empty: a new cluster or peers from the store.
    pub seeds: Vec<String>,
    /// Nodes to join through over WireGuard (`[[mesh.seed_nodes]]`), written by
    /// `maki machine init`: each one's name, public key, endpoint and mesh address.
    pub seed_nodes: Vec<SeedNode>,
    /// Let the `direct` backend (no tunnel, nothing authenticated) run on an address that
    /// is neither loopback nor private; off, such a node refuses to start.
    pub allow_public_direct: bool,
}

/// `[[mesh.seed_nodes]]`: a node already in the cluster, reached over WireGuard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedNode {
    /// Its node name.
    pub name: String,
    /// Its WireGuard public key (base64).
    pub wg_public_key: String,
    /// Its WireGuard endpoint, `host:port`.
    pub endpoint: String,
    /// Its mesh address.
    pub address: Ipv4Addr,
}

/// `[admin]`: the admin API (a Unix socket only, never TCP).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// The socket path.
    pub socket: PathBuf,
}

/// `[acme]`: certificate issuance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeSection {
    /// Obtain certificates at all.
    pub enabled: bool,
    /// Contact address given to the CA.
    pub email: Option<Spanned<String>>,
    /// ACME directory URL.
    pub directory: String,
    /// A PEM root to trust for the directory instead of the web PKI (test CAs such as
    /// Pebble).
    pub directory_root: Option<PathBuf>,
    /// The CA's domain for the zones' CAA record (`0 issue "<caa>"`); `None`: derived from
    /// the directory (`letsencrypt.org` for Let's Encrypt's, no CAA record for others).
    pub caa: Option<String>,
}

impl DnsSection {
    /// Where DNS over TLS listens, if anywhere (see [`DnsSection::dot_addr`]).
    pub fn dot_listen(&self) -> Option<SocketAddr> {
        if !self.dot {
            return None;
        }
        self.dot_addr
            .or_else(|| (self.addr.port() == 53).then(|| SocketAddr::new(self.addr.ip(), 853)))
    }
}

impl AcmeSection {
    /// The CAA issuer domain the zones publish, if any.
    pub fn caa_issuer(&self) -> Option<String> {
        if let Some(c) = &self.caa {
            return (!c.is_empty()).then(|| c.clone());
        }
        let host = self
            .directory
            .split("://")
            .nth(1)?
            .split(['/', ':'])
            .next()?;
        (host == "letsencrypt.org" || host.ends_with(".letsencrypt.org"))
            .then(|| "letsencrypt.org".to_owned())
    }
}

/// `[o11y]`: OpenTelemetry export, as in the guide.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct O11ySection {
    /// OTLP endpoint; `None`: discovered from an external peer named with `o11y`.
    pub otlp_endpoint: Option<String>,
    /// Share of traces sampled (0 to 1); errors and slow requests are always kept.
    pub sampling_ratio: Spanned<f64>,
    /// Export traces.
    pub tracing_enabled: bool,
    /// Export metrics.
    pub metrics_enabled: bool,
    /// Export logs.
    pub logging_enabled: bool,
}

/// An IPv4 network such as `10.44.44.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// The network address (host bits zero).
    pub network: Ipv4Addr,
    /// Prefix length, 0 to 32.
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    /// Whether `addr` lies in the network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        u32::from(addr) & mask == u32::from(self.network)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not address/prefix, e.g. 10.44.44.0/24"))?;
        let network: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("prefix `/{len}` is not 0 to 32"))?;
        let cidr = Self {
            network,
            prefix_len,
        };
        if !cidr.contains(network) {
            return Err(format!("`{s}` has host bits set"));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a node configuration could not be used.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the node configuration {}", path.display())]
    #[diagnostic(help("pass the configuration file with --config"))]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file holds mistakes.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(Box<InvalidFile>),
}

impl NodeConfig {
    /// Reads and validates the configuration at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validates `text`, read from `path` (used in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let invalid =
            |problems| ConfigError::Invalid(Box::new(InvalidFile::new(path, text, problems)));
        let config: Self = toml::from_str(text).map_err(|e| invalid(vec![diag::from_toml(&e)]))?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(invalid(problems))
        }
    }

    /// The node name.
    pub fn name(&self) -> &str {
        self.node.name.get_ref()
    }

    /// The GeoIP database path.
    pub fn geoip_db(&self) -> PathBuf {
        self.dns
            .geoip_db
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("geoip.mmdb"))
    }

    /// Cross-field rules, each problem placed at its key.
    fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let name = self.node.name.get_ref();
        let label_ok = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !label_ok {
            problems.push(
                Problem::new(format!("node name `{name}` is not one lower-case DNS label"), Some(self.node.name.span()), "invalid name")
                    .help("use 1 to 63 lower-case letters, digits and hyphens: it becomes <name>.ns.<domain>"),
            );
        }
        let mut degrees = |value: &Option<Spanned<f64>>, key: &str, limit: f64| {
            if let Some(v) = value
                .as_ref()
                .filter(|v| !(-limit..=limit).contains(v.get_ref()))
            {
                problems.push(
                    Problem::new(
                        format!("{key} {} is out of range", v.get_ref()),
                        Some(v.span()),
                        "out of range",
                    )
                    .help(format!("{key} is in degrees, from -{limit} to {limit}")),
                );
            }
        };
        degrees(&self.node.latitude, "latitude", 90.0);
        degrees(&self.node.longitude, "longitude", 180.0);
        if let Some(email) = &self.acme.email {
            let e = email.get_ref();
            let ok = e
                .split_once('@')
                .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'));
            if !ok {
                problems.push(
                    Problem::new(
                        format!("`{e}` is not an email address"),
                        Some(email.span()),
                        "invalid email",
                    )
                    .help("the CA writes to this address about expiring certificates"),
                );
            }
        }
        let ratio = &self.o11y.sampling_ratio;
        if !(0.0..=1.0).contains(ratio.get_ref()) {
            problems.push(
                Problem::new(
                    format!("sampling_ratio {} is not between 0 and 1", ratio.get_ref()),
                    Some(ratio.span()),
                    "out of range",
                )
                .help("0.1 samples 10% of traces"),
            );
        }
        problems
    }
}

fn yes() -> bool {
    true
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/makiatto")
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
}

impl Default for DnsSection {
    fn default() -> Self {
        Self {
            enabled: true,
            addr: any(53),
            dot: true,
            dot_addr: None,
            geoip_db: None,
            rate_limit: 0,
            rate_limit_slip: 2,
        }
    }
}

impl Default for WebSection {
    fn default() -> Self {
        Self {
            enabled: true,
            http_addr: any(80),
            https_addr: any(443),
        }
    }
}

impl Default for MeshSection {
    fn default() -> Self {
        Self {
            backend: MeshBackend::Boringtun,
            cidr: Ipv4Cidr {
                network: Ipv4Addr::new(10, 44, 44, 0),
                prefix_len: 24,
            },
            port: 51880,
            address: None,
            sync_port: 51881,
            seeds: Vec::new(),
            seed_nodes: Vec::new(),
            allow_public_direct: false,
        }
    }
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/makiatto/admin.sock"),
        }
    }
}

impl Default for AcmeSection {
    fn default() -> Self {
        Self {
            enabled: true,
            email: None,
            directory: "https://acme-v02.api.letsencrypt.org/directory".into(),
            directory_root: None,
            caa: None,
        }
    }
}

impl Default for O11ySection {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sampling_ratio: Spanned::new(0..0, 0.1),
            tracing_enabled: true,
            metrics_enabled: true,
            logging_enabled: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(Path::new("config.toml"), text)
    }

    #[test]
    fn dot_follows_dns_on_port_53_and_caa_follows_the_directory() {
        let minimal = "[node]\nname = \"a\"\nipv4 = \"192.0.2.1\"\n";
        let c = parse(minimal).unwrap();
        assert_eq!(c.dns.dot_listen(), Some("0.0.0.0:853".parse().unwrap()));
        assert_eq!(c.acme.caa_issuer().as_deref(), Some("letsencrypt.org"));
        let c = parse(&(minimal.to_owned() + "[dns]\naddr = \"127.0.0.2:5353\"\n")).unwrap();
        assert_eq!(c.dns.dot_listen(), None);
        let c = parse(&(minimal.to_owned() + "[dns]\ndot = false\n")).unwrap();
        assert_eq!(c.dns.dot_listen(), None);
        let other = "[acme]\ndirectory = \"https://acme.zerossl.com/v2/DV90\"\n";
        assert_eq!(
            parse(&(minimal.to_owned() + other))
                .unwrap()
                .acme
                .caa_issuer(),
            None
        );
        let staging =
            "[acme]\ndirectory = \"https://acme-staging-v02.api.letsencrypt.org/directory\"\n";
        assert_eq!(
            parse(&(minimal.to_owned() + staging))
                .unwrap()
                .acme
                .caa_issuer()
                .as_deref(),
            Some("letsencrypt.org")
        );
        let set =
            "[acme]\ndirectory = \"https://acme.zerossl.com/v2/DV90\"\ncaa = \"sectigo.com\"\n";
        assert_eq!(
            parse(&(minimal.to_owned() + set))
                .unwrap()
                .acme
                .caa_issuer()
                .as_deref(),
            Some("sectigo.com")
        );
    }

    /// The single problem's line and message.
    fn problem(text: &str) -> (usize, String) {
        match parse(text) {
            Err(ConfigError::Invalid(f)) => {
                assert_eq!(f.problems().len(), 1, "{}", f.summary());
                let p = &f.problems()[0];
                (f.line_of(p), p.message().to_owned())
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn the_shipped_example_parses_to_the_defaults() {
        let example = parse(include_str!("../node.example.toml")).unwrap();
        let minimal = parse("[node]\nname = \"vector\"\n").unwrap();
        assert_eq!(example.name(), "vector");
        assert_eq!(example.dns, minimal.dns);
        assert_eq!(example.web, minimal.web);
        assert_eq!(example.mesh, minimal.mesh);
        assert_eq!(example.admin, minimal.admin);
        assert_eq!(example.acme.directory, minimal.acme.directory);
        assert!((example.o11y.sampling_ratio.get_ref() - 0.1).abs() < 1e-12);
        assert!((minimal.o11y.sampling_ratio.get_ref() - 0.1).abs() < 1e-12);
        assert_eq!(minimal.node.data_dir, Path::new("/var/makiatto"));
        assert_eq!(minimal.geoip_db(), Path::new("/var/makiatto/geoip.mmdb"));
        assert!(minimal.node.is_nameserver);
    }

    #[test]
    fn values_override_defaults() {
        let c = parse(
            "[node]\nname = \"n1\"\nlatitude = -33.9\nlongitude = 151.2\n\
             [dns]\naddr = \"127.0.0.2:5353\"\ndot_addr = \"127.0.0.2:8853\"\n\
             [mesh]\nbackend = \"direct\"\ncidr = \"10.9.0.0/16\"\nseeds = [\"127.0.0.1:51881\"]\n",
        )
        .unwrap();
        assert_eq!(c.dns.addr, "127.0.0.2:5353".parse().unwrap());
        assert_eq!(c.mesh.backend, MeshBackend::Direct);
        assert_eq!(c.mesh.cidr.to_string(), "10.9.0.0/16");
        assert!(c.mesh.cidr.contains(Ipv4Addr::new(10, 9, 200, 1)));
        assert!(!c.mesh.cidr.contains(Ipv4Addr::new(10, 10, 0, 1)));
        assert_eq!(c.mesh.seeds, ["127.0.0.1:51881"]);
        assert_eq!(c.node.latitude.as_ref().map(|l| *l.get_ref()), Some(-33.9));
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let (line, message) = problem("[node]\nname = \"n1\"\n\n[web]\nhttp_port = 80\n");
        assert_eq!(line, 5);
        assert!(message.contains("http_port"), "{message}");
        let (line, message) = problem("[node]\nname = \"n1\"\n[dsn]\n");
        assert_eq!(line, 3);
        assert!(message.contains("dsn"), "{message}");
    }

    #[test]
    fn bad_values_are_placed() {
        assert_eq!(
            problem("[node]\nname = \"n1\"\n[dns]\naddr = \"nope\"\n").0,
            4
        );
        assert_eq!(
            problem("[node]\nname = \"n1\"\n[mesh]\ncidr = \"10.44.44.1/24\"\n").0,
            4
        );
        assert_eq!(
            problem("[node]\nname = \"n1\"\n[mesh]\nbackend = \"tun\"\n").0,
            4
        );
        assert_eq!(problem("[node]\nname = \"N_1\"\n").0, 2);
        assert_eq!(problem("[node]\nname = \"n1\"\nlatitude = 91.0\n").0, 3);
        assert_eq!(
            problem("[node]\nname = \"n1\"\n[acme]\nemail = \"nobody\"\n").0,
            4
        );
        assert_eq!(
            problem("[node]\nname = \"n1\"\n[o11y]\nsampling_ratio = 2.0\n").0,
            4
        );
        assert!(problem("").1.contains("node"));
    }

    #[test]
    fn cidr_parsing() {
        assert!("10.44.44.0/24".parse::<Ipv4Cidr>().is_ok());
        assert!(
            "0.0.0.0/0"
                .parse::<Ipv4Cidr>()
                .unwrap()
                .contains(Ipv4Addr::new(1, 2, 3, 4))
        );
        assert!("10.44.44.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.44.44.0".parse::<Ipv4Cidr>().is_err());
    }
}
