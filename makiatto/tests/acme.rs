//! A node obtains a certificate from Pebble (a test ACME CA) for a deployed domain, its
//! wildcard, its alias and its nameserver hostname, and serves it over HTTPS. Pebble
//! resolves every name through the node's own GeoDNS and validates the domain and the
//! alias over HTTP-01, the wildcard and the nameserver hostname over DNS-01 (TXT values the
//! node publishes in its own authoritative DNS). Needs `pebble` and `curl`
//! (scripts/setup.d/30-http.sh); fails with a message naming the setup script when pebble
//! is missing.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use makiatto::admin::client::Client;
use makiatto::config::NodeConfig;
use makiatto::node::Node;
use makiatto::plan::Plan;
use makiatto::project::Project;
use makiatto::{deploy, manifest};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn curl(args: &[&str]) -> Option<String> {
    let out = Command::new("curl").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_obtains_and_serves_a_certificate_from_pebble() {
    assert!(
        Command::new("pebble").arg("-version").output().is_ok(),
        "pebble is not installed: run scripts/setup.d/30-http.sh (or ./scripts/test)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id();
    let ip = Ipv4Addr::new(
        127,
        60 + (seed % 40) as u8,
        1 + ((seed >> 8) % 250) as u8,
        1,
    );
    let http = free_port(ip);

    // Pebble, serving its directory over TLS with a self-signed certificate.
    let key =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let ca_pem = d.join("pebble-cert.pem");
    std::fs::write(&ca_pem, key.cert.pem()).unwrap();
    std::fs::write(d.join("pebble-key.pem"), key.signing_key.serialize_pem()).unwrap();
    let listen = free_port(Ipv4Addr::LOCALHOST);
    // Pebble's other ports; picked again if Pebble exits because one was taken meanwhile.
    let pebble_config = |mgmt: u16, tls: u16| {
        let text = format!(
            r#"{{"pebble": {{"listenAddress": "127.0.0.1:{listen}", "managementListenAddress": "127.0.0.1:{mgmt}",
        "certificate": "{cert}", "privateKey": "{key}", "httpPort": {http}, "tlsPort": {tls},
        "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}"#,
            cert = ca_pem.display(),
            key = d.join("pebble-key.pem").display(),
        );
        std::fs::write(d.join("pebble.json"), text).unwrap();
    };

    // The node: DNS on a port Pebble asks, HTTP on the port Pebble validates.
    let text = format!(
        r#"
[node]
name = "solo"
latitude = 52.5
longitude = 13.4
ipv4 = "{ip}"
data_dir = "{data}"
[dns]
addr = "{ip}:0"
dot_addr = "{ip}:0"
[web]
http_addr = "{ip}:{http}"
https_addr = "{ip}:0"
[mesh]
backend = "direct"
cidr = "127.0.0.0/8"
sync_port = 17500
[admin]
socket = "{dir}/admin.sock"
[acme]
email = "ops@example.com"
directory = "https://127.0.0.1:{listen}/dir"
directory_root = "{ca}"
"#,
        data = d.join("data").display(),
        dir = d.display(),
        ca = ca_pem.display(),
    );
    let node = Node::start(NodeConfig::parse(Path::new("node.toml"), &text).unwrap())
        .await
        .unwrap();
    let dns: SocketAddr = node.dns_addr().unwrap();
    let mut started = None;
    for _ in 0..3 {
        let (mgmt, tls) = (
            free_port(Ipv4Addr::LOCALHOST),
            free_port(Ipv4Addr::LOCALHOST),
        );
        pebble_config(mgmt, tls);
        let mut pebble = Proc(
            Command::new("pebble")
                .arg("-config")
                .arg(d.join("pebble.json"))
                .args(["-dnsserver", &dns.to_string()])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting pebble"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let up = |port| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        while !(up(listen) && up(mgmt)) && pebble.0.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "pebble did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if up(listen) && up(mgmt) {
            started = Some((pebble, mgmt));
            break;
        }
        eprintln!("pebble exited before listening on {listen} and {mgmt}; new ports");
    }
    let (_pebble, mgmt) = started.expect("pebble started with one of three sets of ports");

    // Deploy: the new domain starts an order.
    std::fs::create_dir_all(d.join("project/site")).unwrap();
    let index = "<h1>example.test over Pebble</h1>\n";
    std::fs::write(d.join("project/site/index.html"), index).unwrap();
    std::fs::write(
        d.join("project/makiatto.toml"),
        "[[domain]]\nname = \"example.test\"\npath = \"./site\"\naliases = [\"www.example.test\"]\n",
    )
    .unwrap();
    let project = Project::load(&d.join("project/makiatto.toml")).unwrap();
    let plan = Plan::build(&project, &manifest::Options::default(), &|_, _| {}).unwrap();
    let client = Client::new(node.admin_socket());
    deploy::push(
        &client,
        &plan.domains[0],
        "0000000000000000000000000000acme",
        1,
        "test",
        &|_| {},
    )
    .await
    .unwrap();

    // HTTPS with a certificate that chains to Pebble's root, for the domain and its alias.
    let root = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = format!("https://127.0.0.1:{mgmt}/roots/0");
            if let Some(r) = curl(&["-sS", "--fail", "--cacert", ca_pem.to_str().unwrap(), &url]) {
                break r;
            }
            assert!(Instant::now() < deadline, "no pebble root");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let root_pem = d.join("root.pem");
    std::fs::write(&root_pem, root).unwrap();
    let https = node.https_addr().unwrap();
    for host in ["example.test", "www.example.test"] {
        let resolve = format!("{host}:{}:{ip}", https.port());
        let url = format!("https://{host}:{}/", https.port());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = curl(&[
                "-sS",
                "--fail",
                "--cacert",
                root_pem.to_str().unwrap(),
                "--resolve",
                &resolve,
                &url,
            ]);
            if got.as_deref() == Some(index) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{host} not served over HTTPS with a Pebble certificate; health {:?}",
                node.health().summary()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // A second certificate, ordered over DNS-01 through the node's own DNS, covers any
    // name below the domain (`*.example.test`) and the node's nameserver hostname: the TLS
    // handshake verifies against Pebble's root for each SNI name; the host itself is not a
    // site (404/421 is fine).
    for host in ["anything.example.test", "solo.ns.example.test"] {
        let resolve = format!("{host}:{}:{ip}", https.port());
        let url = format!("https://{host}:{}/", https.port());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let code = curl(&[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
                root_pem.to_str().unwrap(),
                "--resolve",
                &resolve,
                &url,
            ]);
            if code.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no certificate for {host} chaining to Pebble's root; health {:?}",
                node.health().summary()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // DNS over TLS with that certificate, chosen by the nameserver name (SNI), verified
    // by kdig against Pebble's root; the answer is the node (the only one, so the nearest).
    let dot = node.dot_addr().expect("DoT is on");
    let out = Command::new("kdig")
        .args([
            &format!("@{}", dot.ip()),
            "-p",
            &dot.port().to_string(),
            "+tls",
            &format!("+tls-ca={}", root_pem.display()),
            "+tls-hostname=solo.ns.example.test",
            "example.test",
            "A",
            "+short",
        ])
        .output()
        .expect("kdig (knot-dnsutils, scripts/setup.d/20-dns.sh)");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        ip.to_string(),
        "DoT answer; kdig said {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = node
        .store()
        .read(makiatto::store::cluster::certificates::list)
        .unwrap()
        .into_iter()
        .flat_map(|c| c.names)
        .collect::<Vec<_>>();
    assert!(
        names.iter().any(|n| n == "*.example.test"),
        "certificates in the store: {names:?}"
    );
    // DNS-01 values are withdrawn once the order is done.
    let open = node
        .store()
        .read(makiatto::store::cluster::acme_challenges::list)
        .unwrap();
    assert!(open.is_empty(), "challenges left open: {open:?}");
    node.shutdown().await;
}
