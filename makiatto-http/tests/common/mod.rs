//! Shared test fixtures: a site tree, certificates from a test CA, a running server on
//! free ports, and minimal raw HTTP clients (so requests reach the server byte for byte).
#![allow(dead_code, unreachable_pub, clippy::missing_panics_doc)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use makiatto_http::{
    Certificate, HttpServer, MemoryCerts, MemoryChallenges, ServerConfig, Site, StaticSites,
};
use rcgen::{CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "TOP-SECRET-OUTSIDE-ROOT";

/// A test certificate authority.
pub struct TestCa {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "makiatto test ca");
        let key = KeyPair::generate().unwrap();
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// A leaf for `names`, as a [`Certificate`] ready to install.
    pub fn leaf(&self, names: &[&str]) -> Certificate {
        let params =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Certificate::from_der(vec![cert.der().clone()], &der).unwrap()
    }

    /// A leaf for `names` as (certificate PEM, key PEM).
    pub fn leaf_pem(&self, names: &[&str]) -> (String, String) {
        let params =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A leaf valid now but past two thirds of its lifetime (due for renewal).
    pub fn due_leaf(&self, names: &[&str]) -> Certificate {
        let mut params =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after =
            rcgen::date_time_ymd(1970, 1, 1) + since_epoch + Duration::from_secs(30 * 86_400);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Certificate::from_der(vec![cert.der().clone()], &der).unwrap()
    }

    /// A leaf whose validity ended in 2021.
    pub fn expired_leaf(&self, names: &[&str]) -> Certificate {
        let mut params =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Certificate::from_der(vec![cert.der().clone()], &der).unwrap()
    }

    pub fn root_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    pub fn root_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root_der()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

/// The site tree every test serves, with a directory outside the root holding a secret.
pub struct Tree {
    pub dir: tempfile::TempDir,
}

impl Tree {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("site");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(dir.path().join("plain")).unwrap();
        let w = |p: &str, c: &[u8]| std::fs::write(root.join(p), c).unwrap();
        w("index.html", b"<h1>home</h1>\n");
        w("about.html", b"<h1>about</h1>\n");
        w("docs/index.html", b"<h1>docs</h1>\n");
        w("style.css", b"body { color: red }\n");
        w("style.css.br", b"BROTLI-BYTES");
        w("style.css.gz", b"GZIP-BYTES");
        w("data.json", b"{\"a\":1}");
        w("long.html", long_html().as_bytes());
        w("404.html", b"<h1>custom not found</h1>\n");
        w("big.bin", &big_content());
        w("mid.bin", &mid_content());
        std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
        std::fs::write(dir.path().join("plain/index.html"), b"plain site\n").unwrap();
        std::os::unix::fs::symlink(root.join("about.html"), root.join("inner-link.html")).unwrap();
        std::os::unix::fs::symlink("../outside/secret.txt", root.join("escape.txt")).unwrap();
        std::os::unix::fs::symlink("../outside", root.join("linkdir")).unwrap();
        Tree { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("site")
    }
    pub fn plain_root(&self) -> PathBuf {
        self.dir.path().join("plain")
    }
}

/// A compressible page with no precompressed sibling.
pub fn long_html() -> String {
    let mut s = String::new();
    for i in 0..100 {
        s.push_str("<p>paragraph ");
        s.push_str(&i.to_string());
        s.push_str(
            " of a long page</p>
",
        );
    }
    s
}

/// 1 MiB + 7 bytes of a position-dependent pattern.
/// 100 KB: in the range the fast path sends with `sendfile` over plain HTTP.
pub fn mid_content() -> Vec<u8> {
    (0..100_003u32).map(|i| (i % 253) as u8).collect()
}

pub fn big_content() -> Vec<u8> {
    (0..(1 << 20) + 7).map(|i: u32| (i % 251) as u8).collect()
}

/// A running server with its fixtures.
pub struct TestServer {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub sites: Arc<StaticSites>,
    pub certs: Arc<MemoryCerts>,
    pub challenges: Arc<MemoryChallenges>,
    pub ca: TestCa,
    pub tree: Tree,
    pub token: CancellationToken,
    pub server: HttpServer,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Starts a server on 127.0.0.1 free ports. Sites: `example.test` (+ `www.example.test`,
/// certificate), `a.wild.test` (wildcard certificate), `plain.test` and `site.test` (+ `www.site.test`), no certificate.
pub async fn start(tune: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let tree = Tree::new();
    let sites = Arc::new(StaticSites::new());
    sites.insert(
        Site::new("example.test", tree.root()),
        &["www.example.test"],
    );
    sites.insert(Site::new("a.wild.test", tree.root()), &[]);
    sites.insert(Site::new("plain.test", tree.plain_root()), &[]);
    sites.insert(Site::new("site.test", tree.root()), &["www.site.test"]);
    let ca = TestCa::new();
    let certs = Arc::new(MemoryCerts::new());
    certs.insert(ca.leaf(&["example.test", "www.example.test"]));
    certs.insert(ca.leaf(&["*.wild.test"]));
    let challenges = Arc::new(MemoryChallenges::new());
    let http_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = http_l.local_addr().unwrap();
    let https = https_l.local_addr().unwrap();
    let mut cfg = ServerConfig {
        https_redirect_port: Some(https.port()),
        revalidate_ms: 0,
        ..ServerConfig::default()
    };
    tune(&mut cfg);
    let server = HttpServer::new(cfg, sites.clone(), certs.clone(), challenges.clone()).unwrap();
    let token = CancellationToken::new();
    let (s1, t1) = (server.clone(), token.clone());
    tokio::spawn(async move { s1.serve_http(http_l, t1).await });
    let (s2, t2) = (server.clone(), token.clone());
    tokio::spawn(async move { s2.serve_https(https_l, t2).await });
    TestServer {
        http,
        https,
        sites,
        certs,
        challenges,
        ca,
        tree,
        token,
        server,
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn parse(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// Sends `req` as is and reads until the server closes.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, req: &[u8]) -> Vec<u8> {
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("server did not close the connection in time")
        .unwrap();
    out
}

/// Like [`exchange`] on a fresh connection, but reports resets and refusals as `None`
/// (for polling a server that may be shedding connections).
pub async fn try_exchange(addr: SocketAddr, req: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(req).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

pub async fn raw(addr: SocketAddr, req: &[u8]) -> Resp {
    let s = TcpStream::connect(addr).await.unwrap();
    parse(&exchange(s, req).await)
}

pub fn request(method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(k);
        r.push_str(": ");
        r.push_str(v);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

pub async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    raw(addr, &request("GET", host, path, headers)).await
}

/// Opens a TLS connection with `sni`, trusting the test CA.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

pub async fn tls_get(srv: &TestServer, sni: &str, host: &str, path: &str) -> Resp {
    let s = tls_connect(srv.https, sni, srv.ca.client_config(&[b"http/1.1"]))
        .await
        .unwrap();
    parse(&exchange(s, &request("GET", host, path, &[])).await)
}

/// Runs real curl off the runtime thread; returns (body, "code http_version").
pub async fn curl(args: &[&str]) -> (Vec<u8>, String) {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || curl_blocking(&args))
        .await
        .unwrap()
}

fn curl_blocking(args: &[String]) -> (Vec<u8>, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .expect("curl is required: install it (scripts/setup.d/30-http.sh)");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut body = out.stdout;
    let pos = body.iter().rposition(|&b| b == b'\n').unwrap();
    let tail = String::from_utf8(body.split_off(pos)).unwrap();
    (body, tail.trim().to_owned())
}

pub fn write(path: &Path, content: &[u8]) {
    std::fs::write(path, content).unwrap();
}
