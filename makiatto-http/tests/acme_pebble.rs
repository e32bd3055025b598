//! ACME against Debian's real Pebble: HTTP-01 and DNS-01 (wildcard) issuance, the issued
//! chain served over TLS and verified against Pebble's root, account persistence,
//! renewal of a certificate that is due, and a failing validation that backs off and
//! keeps the old certificate.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TestServer, exchange, request, start, tls_connect};
use makiatto_http::acme::{
    AcmeConfig, AcmeManager, CertOrder, CertSink, ChallengeKind, DnsChallenge, Lease, LocalLease,
    MemoryAccountStore, NoDns, Outcome, renewal_due,
};
use makiatto_http::{ChallengeStore, HttpError, MemoryChallenges, Site};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Kills the child we started when the test ends.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn need(bin: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()));
    assert!(
        found,
        "`{bin}` is not installed: run scripts/setup.d/30-http.sh (Debian package `pebble`)"
    );
}

/// Waits until `port` accepts connections; `false` if `proc` exited first (a port picked
/// by `free_port` can be taken by someone else before the child binds it).
async fn wait_port(port: u16, what: &str, proc: &mut Proc) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Ok(Some(status)) = proc.0.try_wait() {
            eprintln!("{what} exited ({status}) before listening on {port}; new ports");
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

struct Pebble {
    /// Pebble's output, shown when the test fails (what it validated, and why).
    log: std::path::PathBuf,
    _ca: Proc,
    _chall: Proc,
    dir_url: String,
    mgmt: u16,
    dns: SocketAddr,
    chall_mgmt: u16,
    ca_pem: std::path::PathBuf,
}

async fn start_pebble(srv: &TestServer) -> Pebble {
    need("pebble");
    need("pebble-challtestsrv");
    for _ in 0..3 {
        if let Some(pebble) = try_start_pebble(srv).await {
            return pebble;
        }
    }
    panic!("pebble did not start with three sets of ports");
}

async fn try_start_pebble(srv: &TestServer) -> Option<Pebble> {
    let dir = srv.tree.dir.path();
    let (cert, key) = srv.ca.leaf_pem(&["127.0.0.1", "localhost"]);
    std::fs::write(dir.join("pebble-cert.pem"), cert).unwrap();
    std::fs::write(dir.join("pebble-key.pem"), key).unwrap();
    let ca_pem = dir.join("test-ca.pem");
    std::fs::write(&ca_pem, srv.ca.root_pem()).unwrap();
    let (listen, mgmt, dns, chall_mgmt, tls) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let config = serde_json::json!({ "pebble": {
        "listenAddress": format!("127.0.0.1:{listen}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt}"),
        "certificate": dir.join("pebble-cert.pem"),
        "privateKey": dir.join("pebble-key.pem"),
        "httpPort": srv.http.port(),
        "tlsPort": tls,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false
    }});
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let mut chall = Proc(
        Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{chall_mgmt}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting pebble-challtestsrv"),
    );
    let log_path = dir.join("pebble.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut pebble = Proc(
        Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting pebble"),
    );
    if !(wait_port(listen, "pebble", &mut pebble).await
        && wait_port(mgmt, "pebble management", &mut pebble).await
        && wait_port(chall_mgmt, "pebble-challtestsrv", &mut chall).await)
    {
        return None;
    }
    Some(Pebble {
        log: log_path,
        _ca: pebble,
        _chall: chall,
        dir_url: format!("https://127.0.0.1:{listen}/dir"),
        mgmt,
        dns: format!("127.0.0.1:{dns}").parse().unwrap(),
        chall_mgmt,
        ca_pem,
    })
}

/// Publishes DNS-01 TXT records in pebble-challtestsrv and checks them with a real DNS
/// query, as the CA will.
struct ChallTestDns {
    mgmt: u16,
    dns: SocketAddr,
}

async fn post(port: u16, path: &str, body: &str) -> Result<(), HttpError> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| HttpError::Store(e.to_string()))?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| HttpError::Store(e.to_string()))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .await
        .map_err(|e| HttpError::Store(e.to_string()))?;
    if out.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(HttpError::Store(String::from_utf8_lossy(&out).into_owned()))
    }
}

impl DnsChallenge for ChallTestDns {
    async fn publish(&self, name: &str, value: &str) -> Result<(), HttpError> {
        let body = serde_json::json!({ "host": format!("{name}."), "value": value }).to_string();
        post(self.mgmt, "/set-txt", &body).await
    }
    async fn is_visible(&self, name: &str, value: &str) -> Result<bool, HttpError> {
        // A TXT query over UDP; the answer must contain the value.
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 16, 0, 1]);
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| HttpError::Store(e.to_string()))?;
        sock.send_to(&q, self.dns)
            .await
            .map_err(|e| HttpError::Store(e.to_string()))?;
        let mut buf = [0u8; 1500];
        let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await
        else {
            return Ok(false);
        };
        Ok(buf[..n].windows(value.len()).any(|w| w == value.as_bytes()))
    }
    async fn remove(&self, name: &str, _value: &str) -> Result<(), HttpError> {
        let body = serde_json::json!({ "host": format!("{name}.") }).to_string();
        post(self.mgmt, "/clear-txt", &body).await
    }
}

/// Stores correct answers for the manager's own visibility check but serves wrong ones
/// to the CA, so validation fails at the CA.
#[derive(Debug)]
struct Sabotage {
    served: Arc<MemoryChallenges>,
    own: MemoryChallenges,
    puts: AtomicUsize,
}

impl ChallengeStore for Sabotage {
    fn http01(&self, token: &str) -> Option<String> {
        self.own.http01(token)
    }
    fn put_http01(&self, token: &str, ka: &str) -> Result<(), HttpError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.served.put_http01(token, "wrong-answer")?;
        self.own.put_http01(token, ka)
    }
    fn remove_http01(&self, token: &str) -> Result<(), HttpError> {
        self.served.remove_http01(token)?;
        self.own.remove_http01(token)
    }
    fn dns01(&self, name: &str) -> Vec<String> {
        self.own.dns01(name)
    }
    fn put_dns01(&self, name: &str, value: &str) -> Result<(), HttpError> {
        self.own.put_dns01(name, value)
    }
    fn remove_dns01(&self, name: &str, value: &str) -> Result<(), HttpError> {
        self.own.remove_dns01(name, value)
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("--- pebble's last output lines ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn pebble_root(p: &Pebble) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(&p.ca_pem)
        .arg(format!("https://127.0.0.1:{}/roots/0", p.mgmt))
        .output()
        .expect("curl is required");
    assert!(
        out.status.success(),
        "fetching pebble's root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn client_trusting(root_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

fn acme_cfg(p: &Pebble, probe: Option<SocketAddr>) -> AcmeConfig {
    AcmeConfig {
        directory_url: p.dir_url.clone(),
        contact_email: Some("ops@acme.test".into()),
        directory_root_pem: Some(p.ca_pem.clone()),
        http01_probe: probe,
        visibility_timeout_ms: 10_000,
        order_timeout_ms: 30_000,
        retry_initial_ms: 50,
        retry_max_ms: 200,
        retry_budget: 1,
        ..AcmeConfig::default()
    }
}

async fn https_home(srv: &TestServer, cfg: Arc<rustls::ClientConfig>, sni: &str) -> Vec<u8> {
    let c = tls_connect(srv.https, sni, cfg)
        .await
        .unwrap_or_else(|e| panic!("TLS to {sni}: {e}"));
    exchange(c, &request("GET", sni, "/", &[])).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_http01_dns01_renewal_and_backoff() {
    let srv = start(|_| {}).await;
    let p = start_pebble(&srv).await;
    srv.sites.insert(
        Site::new("acme.test", srv.tree.root()),
        &["www.acme.test", "x.wild.acme.test"],
    );
    let accounts = Arc::new(MemoryAccountStore::default());
    let certs: Arc<dyn CertSink> = srv.certs.clone();
    let lease = LocalLease::new("node-a");

    // HTTP-01 for a domain and its alias, answered by our port 80.
    let mgr = AcmeManager::new(
        acme_cfg(&p, Some(srv.http)),
        accounts.clone(),
        srv.challenges.clone(),
        certs.clone(),
        lease.clone(),
        ChallTestDns {
            mgmt: p.chall_mgmt,
            dns: p.dns,
        },
    );
    let order = CertOrder {
        names: vec!["acme.test".into(), "www.acme.test".into()],
        challenge: ChallengeKind::Http01,
        dns01_names: Vec::new(),
    };
    assert_eq!(mgr.ensure(&order).await.unwrap(), Outcome::Issued);
    assert!(
        makiatto_http::acme::AcmeAccountStore::load(&*accounts)
            .unwrap()
            .is_some(),
        "account credentials were not persisted"
    );
    let root = pebble_root(&p);
    let verified = client_trusting(&root);
    for sni in ["acme.test", "www.acme.test"] {
        let out = https_home(&srv, verified.clone(), sni).await;
        assert!(
            out.starts_with(b"HTTP/1.1 200") && out.ends_with(b"<h1>home</h1>\n"),
            "{sni}"
        );
    }
    // Same answer through real curl, verifying against Pebble's root.
    let root_file = srv.tree.dir.path().join("pebble-root.pem");
    std::fs::write(&root_file, &root).unwrap();
    let resolve = format!("acme.test:{}:127.0.0.1", srv.https.port());
    let url = format!("https://acme.test:{}/about", srv.https.port());
    let (body, code) = common::curl(&[
        "--http2",
        "--cacert",
        root_file.to_str().unwrap(),
        "--resolve",
        &resolve,
        &url,
    ])
    .await;
    assert_eq!(
        (body.as_slice(), code.as_str()),
        (&b"<h1>about</h1>\n"[..], "200 2")
    );
    // HTTP-01 answers were withdrawn.
    assert_eq!(srv.challenges.http01_count(), 0);
    // Port 80 now redirects the domain.
    assert_eq!(
        common::get(srv.http, "acme.test", "/", &[]).await.status,
        308
    );
    // A fresh certificate is left alone.
    assert_eq!(mgr.ensure(&order).await.unwrap(), Outcome::Fresh);
    let issued = certs.current("acme.test").unwrap();
    assert!(!renewal_due(&issued, std::time::SystemTime::now()));
    // A name added to the order is not left waiting for the renewal.
    let wider = CertOrder {
        names: vec![
            "acme.test".into(),
            "www.acme.test".into(),
            "api.acme.test".into(),
        ],
        challenge: ChallengeKind::Http01,
        dns01_names: Vec::new(),
    };
    assert_eq!(mgr.ensure(&wider).await.unwrap(), Outcome::Issued);
    let widened = certs.current("acme.test").unwrap();
    assert!(
        widened.names.iter().any(|n| n == "api.acme.test"),
        "{:?}",
        widened.names
    );
    assert_eq!(mgr.ensure(&wider).await.unwrap(), Outcome::Fresh);

    // The persisted account is reused by another manager (another node).
    let mgr2 = AcmeManager::new(
        acme_cfg(&p, Some(srv.http)),
        accounts.clone(),
        srv.challenges.clone(),
        certs.clone(),
        lease.handle("node-b"),
        NoDns,
    );
    assert_eq!(
        mgr2.account().await.unwrap().id(),
        mgr.account().await.unwrap().id()
    );

    // DNS-01 for a wildcard (and HTTP-01 for the base name in the same order).
    let wild = CertOrder {
        names: vec!["wild.acme.test".into(), "*.wild.acme.test".into()],
        challenge: ChallengeKind::Http01,
        dns01_names: Vec::new(),
    };
    srv.sites
        .insert(Site::new("wild.acme.test", srv.tree.root()), &[]);
    assert_eq!(mgr.ensure(&wild).await.unwrap(), Outcome::Issued);
    let out = https_home(&srv, verified.clone(), "x.wild.acme.test").await;
    assert!(out.starts_with(b"HTTP/1.1 200"));

    // Renewal: a certificate past two thirds of its life is replaced.
    let due = srv.ca.due_leaf(&["renew.acme.test"]);
    let due_der = due.key.cert[0].as_ref().to_vec();
    srv.certs.insert(due);
    srv.sites
        .insert(Site::new("renew.acme.test", srv.tree.root()), &[]);
    let renew = CertOrder {
        names: vec!["renew.acme.test".into()],
        challenge: ChallengeKind::Http01,
        dns01_names: Vec::new(),
    };
    assert_eq!(mgr.ensure(&renew).await.unwrap(), Outcome::Issued);
    let renewed = certs.current("renew.acme.test").unwrap();
    assert_ne!(renewed.key.cert[0].as_ref(), due_der.as_slice());
    let out = https_home(&srv, verified.clone(), "renew.acme.test").await;
    assert!(out.starts_with(b"HTTP/1.1 200"));

    // ensure() took the lease for its orders; node-a gives it up.
    lease.release().await.unwrap();
    // run(): while another node holds the lease nothing is ordered; once its lease
    // expires this node takes over and issues.
    let other = lease.handle("node-x");
    assert!(other.acquire(Duration::from_millis(400)).await.unwrap());
    srv.sites
        .insert(Site::new("run.acme.test", srv.tree.root()), &[]);
    let runner = AcmeManager::new(
        AcmeConfig {
            check_interval_ms: 50,
            ..acme_cfg(&p, Some(srv.http))
        },
        accounts.clone(),
        srv.challenges.clone(),
        certs.clone(),
        lease.handle("node-b"),
        NoDns,
    );
    let token = tokio_util::sync::CancellationToken::new();
    let t2 = token.clone();
    let started = Instant::now();
    let task = tokio::spawn(async move {
        let orders = || {
            vec![CertOrder {
                names: vec!["run.acme.test".into()],
                challenge: ChallengeKind::Http01,
                dns01_names: Vec::new(),
            }]
        };
        runner.run(orders, t2).await;
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while certs.current("run.acme.test").is_none() {
        assert!(
            Instant::now() < deadline,
            "run() never issued after the lease expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "ordered while another node held the lease"
    );
    assert!(
        !other.acquire(Duration::from_secs(1)).await.unwrap(),
        "node-b should hold the lease now"
    );
    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    // Stopping released the lease.
    assert!(other.acquire(Duration::from_secs(5)).await.unwrap());
    // ensure() itself does not order while another node holds the lease.
    let blocked = AcmeManager::new(
        acme_cfg(&p, Some(srv.http)),
        accounts.clone(),
        srv.challenges.clone(),
        certs.clone(),
        lease.handle("node-b"),
        NoDns,
    );
    srv.sites
        .insert(Site::new("blocked.acme.test", srv.tree.root()), &[]);
    let r = blocked
        .ensure(&CertOrder {
            names: vec!["blocked.acme.test".into()],
            challenge: ChallengeKind::Http01,
            dns01_names: Vec::new(),
        })
        .await;
    assert!(r.is_err(), "ordered while another node held the lease");
    assert!(certs.current("blocked.acme.test").is_none());
    other.release().await.unwrap();

    // Failing validation: retried with backoff within the budget, then an error; the
    // valid certificate stays and the wrong answers are withdrawn.
    srv.certs
        .insert(srv.ca.due_leaf(&["acme.test", "www.acme.test"]));
    let before = certs.current("acme.test").unwrap();
    let sabotage = Arc::new(Sabotage {
        served: srv.challenges.clone(),
        own: MemoryChallenges::new(),
        puts: AtomicUsize::new(0),
    });
    let bad = AcmeManager::new(
        AcmeConfig {
            retry_budget: 2,
            ..acme_cfg(&p, None)
        },
        accounts.clone(),
        sabotage.clone(),
        certs.clone(),
        lease.clone(),
        NoDns,
    );
    // One name, so each attempt publishes exactly one answer.
    let single = CertOrder {
        names: vec!["acme.test".into()],
        challenge: ChallengeKind::Http01,
        dns01_names: Vec::new(),
    };
    let started = Instant::now();
    let err = bad.ensure(&single).await.unwrap_err();
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "no backoff between attempts"
    );
    assert!(
        sabotage.puts.load(Ordering::SeqCst) == 2,
        "expected exactly two attempts (the retry budget): {err}"
    );
    let after = certs.current("acme.test").unwrap();
    assert_eq!(after.key.cert[0].as_ref(), before.key.cert[0].as_ref());
    assert_eq!(srv.challenges.http01_count(), 0);
}

/// A two-node cluster's challenge store: the orderer's copy is written at once, the other
/// node's copy only after `lag` (replication in flight).
#[derive(Debug)]
struct Lagging {
    here: Arc<MemoryChallenges>,
    there: Arc<MemoryChallenges>,
    lag: Duration,
}

impl ChallengeStore for Lagging {
    fn http01(&self, token: &str) -> Option<String> {
        self.here.http01(token)
    }
    fn put_http01(&self, token: &str, ka: &str) -> Result<(), HttpError> {
        let (there, lag) = (self.there.clone(), self.lag);
        let (token2, ka2) = (token.to_owned(), ka.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(lag).await;
            there.put_http01(&token2, &ka2).unwrap();
        });
        self.here.put_http01(token, ka)
    }
    fn remove_http01(&self, token: &str) -> Result<(), HttpError> {
        self.there.remove_http01(token)?;
        self.here.remove_http01(token)
    }
    fn dns01(&self, name: &str) -> Vec<String> {
        self.here.dns01(name)
    }
    fn put_dns01(&self, name: &str, value: &str) -> Result<(), HttpError> {
        self.here.put_dns01(name, value)
    }
    fn remove_dns01(&self, name: &str, value: &str) -> Result<(), HttpError> {
        self.here.remove_dns01(name, value)
    }
}

/// Issue 13: the CA may reach any node (GeoDNS), not the one that ordered. Here it reaches
/// node B, where the answer arrives 1.5 s after the orderer A wrote it; the order must
/// wait until B serves it instead of failing validation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_waits_until_every_peer_serves_the_answer() {
    let b = start(|_| {}).await;
    let a = start(|_| {}).await;
    let p = start_pebble(&b).await;
    for srv in [&a, &b] {
        srv.sites
            .insert(Site::new("lag.acme.test", srv.tree.root()), &[]);
    }
    let lagging = Arc::new(Lagging {
        here: a.challenges.clone(),
        there: b.challenges.clone(),
        lag: Duration::from_millis(1500),
    });
    let b_http = b.http;
    let mgr = AcmeManager::new(
        acme_cfg(&p, Some(a.http)),
        Arc::new(MemoryAccountStore::default()),
        lagging,
        a.certs.clone(),
        LocalLease::new("node-a"),
        NoDns,
    )
    .with_http01_peers(Arc::new(move || vec![b_http]));
    let order = CertOrder {
        names: vec!["lag.acme.test".into()],
        challenge: ChallengeKind::Http01,
        dns01_names: Vec::new(),
    };
    let started = Instant::now();
    let outcome = mgr.ensure(&order).await;
    assert_eq!(
        outcome.unwrap(),
        Outcome::Issued,
        "the CA validated at node B before B served the answer"
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let verified = client_trusting(&pebble_root(&p));
    let out = https_home(&a, verified, "lag.acme.test").await;
    assert!(out.starts_with(b"HTTP/1.1 200"));
    assert_eq!(b.challenges.http01_count(), 0, "answers withdrawn on B too");
}
