//! Three in-process nodes on loopback (Direct mesh, no root): a deploy through the admin
//! socket reaches every node, which serves it over HTTP and answers for it in DNS; a second
//! deploy switches atomically and removes files; a rollback brings the first back.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use makiatto::admin::client::Client;
use makiatto::config::NodeConfig;
use makiatto::node::{Node, NodeHandle};
use makiatto::plan::Plan;
use makiatto::project::Project;
use makiatto::store::cluster::acme_challenges;
use makiatto::store::cluster::deployment_activations::{self, ActivationStatus};
use makiatto::{deploy, manifest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

/// A /24 of 127/8 that no other test of this run uses.
fn subnet() -> [u8; 2] {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().rotate_left(16);
    [100 + (seed % 150) as u8, 1 + ((seed >> 8) % 250) as u8]
}

fn config(
    dir: &Path,
    name: &str,
    ip: Ipv4Addr,
    seed: Option<Ipv4Addr>,
    coords: (f64, f64),
) -> NodeConfig {
    let seeds = seed.map_or_else(String::new, |s| format!("\"{s}\""));
    let text = format!(
        r#"
[node]
name = "{name}"
latitude = {lat}
longitude = {lon}
ipv4 = "{ip}"
data_dir = "{data}"

[dns]
addr = "{ip}:0"
geoip_db = "{dir}/none.mmdb"

[web]
http_addr = "{ip}:0"
https_addr = "{ip}:0"

[mesh]
backend = "direct"
cidr = "127.0.0.0/8"
address = "{ip}"
sync_port = 17300
seeds = [{seeds}]

[admin]
socket = "{dir}/{name}.sock"

[acme]
enabled = false
"#,
        lat = coords.0,
        lon = coords.1,
        data = dir.join(name).display(),
        dir = dir.display(),
    );
    NodeConfig::parse(Path::new("test.toml"), &text).unwrap()
}

async fn within<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP/1.1 GET: (status, ETag, body).
async fn get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let etag = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("etag").then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    Some((status, etag, body.to_owned()))
}

/// The A records for `name` from the DNS server at `addr`.
async fn dns_a(addr: SocketAddr, name: &str) -> Vec<Ipv4Addr> {
    use hickory_proto::rr::{RData, RecordType};
    dns(addr, name, RecordType::A)
        .await
        .into_iter()
        .filter_map(|r| match r {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// The TXT strings for `name`.
async fn dns_txt(addr: SocketAddr, name: &str) -> Vec<String> {
    use hickory_proto::rr::{RData, RecordType};
    dns(addr, name, RecordType::TXT)
        .await
        .into_iter()
        .filter_map(|r| match r {
            RData::TXT(t) => Some(t.to_string()),
            _ => None,
        })
        .collect()
}

/// The answer records of one UDP query.
async fn dns(
    addr: SocketAddr,
    name: &str,
    rtype: hickory_proto::rr::RecordType,
) -> Vec<hickory_proto::rr::RData> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::Name;
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&m.to_vec().unwrap(), addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await else {
        return Vec::new();
    };
    let reply = Message::from_vec(&buf[..n]).unwrap();
    reply.answers.into_iter().map(|r| r.data).collect()
}

async fn deploy_dir(client: &Client, project_file: &Path) -> String {
    let project = Project::load(project_file).unwrap();
    let plan = Plan::build(&project, &manifest::Options::default(), &|_, _| {}).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let id = makiatto::store::cluster::new_id(now);
    deploy::push(client, &plan.domains[0], &id, now, "test", &|_| {})
        .await
        .unwrap();
    id
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn etag_of(bytes: &[u8]) -> String {
    format!("\"{}\"", &blake3::hash(bytes).to_hex()[..32])
}

async fn all_serve(nodes: &[NodeHandle], path: &str, want: &str) {
    for n in nodes {
        let addr = n.http_addr().unwrap();
        within(&format!("{} serves {path}", n.name()), async || {
            get(addr, "example.com", path)
                .await
                .filter(|(s, _, b)| *s == 200 && b == want)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_deploy_serve_switch_and_roll_back() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = subnet();
    let ips: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(127, a, b, i)).collect();
    let places = [(-33.87, 151.21), (50.11, 8.68), (40.71, -74.01)];
    let mut nodes = Vec::new();
    for (i, name) in ["syd", "fra", "nyc"].iter().enumerate() {
        let seed = (i > 0).then_some(ips[0]);
        let c = config(dir.path(), name, ips[i], seed, places[i]);
        nodes.push(Node::start(c).await.unwrap());
    }
    let mut view = nodes[0].membership();
    tokio::time::timeout(
        WAIT,
        view.wait_for(|v| v.is_alive("fra") && v.is_alive("nyc")),
    )
    .await
    .expect("membership")
    .unwrap();

    // First deploy: the example site, through node 1's admin socket.
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let site = dir.path().join("project");
    copy_dir(&repo.join("examples/site"), &site.join("site"));
    std::fs::copy(
        repo.join("examples/makiatto.toml"),
        site.join("makiatto.toml"),
    )
    .unwrap();
    let client = Client::new(nodes[0].admin_socket());
    let first = deploy_dir(&client, &site.join("makiatto.toml")).await;
    let index_v1 = std::fs::read_to_string(site.join("site/index.html")).unwrap();
    let about = std::fs::read_to_string(site.join("site/about.html")).unwrap();
    all_serve(&nodes, "/", &index_v1).await;
    all_serve(&nodes, "/about.html", &about).await;
    for n in &nodes {
        let (_, etag, _) = get(n.http_addr().unwrap(), "www.example.com", "/")
            .await
            .unwrap();
        assert_eq!(
            etag,
            etag_of(index_v1.as_bytes()),
            "alias and ETag on {}",
            n.name()
        );
    }
    let store = nodes[0].store().clone();
    within("every node reports the deployment active", async || {
        let acts = store
            .read(|c| deployment_activations::list_for_deployment(c, &first))
            .unwrap();
        (acts.len() == 3 && acts.iter().all(|a| a.status == ActivationStatus::Active)).then_some(())
    })
    .await;

    within("the admin API counts 3/3 nodes", async || {
        let r = client.rollout(&first).await.ok()?;
        (r.is_complete() && r.active.len() == 3).then_some(())
    })
    .await;

    // ACME HTTP-01: an answer published on one node is served by every node.
    store
        .write(|tx| {
            acme_challenges::upsert(
                tx,
                &acme_challenges::Challenge {
                    token: "tok-1".into(),
                    kind: acme_challenges::ChallengeKind::Http01,
                    name: "example.com".into(),
                    value: "tok-1.thumbprint".into(),
                    expires_ms: i64::MAX,
                },
            )
        })
        .unwrap();
    for n in &nodes {
        let addr = n.http_addr().unwrap();
        within("every node answers the HTTP-01 challenge", async || {
            get(addr, "example.com", "/.well-known/acme-challenge/tok-1")
                .await
                .filter(|(s, _, b)| *s == 200 && b == "tok-1.thumbprint")
        })
        .await;
    }

    // ACME DNS-01: a value published on one node is in every node's zone.
    store
        .write(|tx| {
            acme_challenges::upsert(
                tx,
                &acme_challenges::Challenge {
                    token: "dns-1".into(),
                    kind: acme_challenges::ChallengeKind::Dns01,
                    name: "example.com".into(),
                    value: "digest-1".into(),
                    expires_ms: i64::MAX,
                },
            )
        })
        .unwrap();
    for n in &nodes {
        let addr = n.dns_addr().unwrap();
        within("every node publishes the DNS-01 value", async || {
            dns_txt(addr, "_acme-challenge.example.com.")
                .await
                .iter()
                .any(|t| t == "digest-1")
                .then_some(())
        })
        .await;
    }

    // Every node's row and health, from any node.
    // (A node's first rows, written before it had peers, travel by anti-entropy.)
    let statuses = within("every node is listed healthy", async || {
        let statuses = client.nodes().await.ok()?;
        let names: Vec<&str> = statuses.iter().map(|s| s.node.name.as_str()).collect();
        let healthy = statuses
            .iter()
            .all(|s| s.health.as_ref().map(|h| h.status.as_str()) == Some("healthy"));
        (names == ["fra", "nyc", "syd"] && healthy).then_some(statuses)
    })
    .await;
    assert!(statuses.iter().all(|s| s.node.is_nameserver));
    let syd = &statuses[2].node;
    assert_eq!((syd.latitude, syd.longitude), places[0]);
    assert_eq!(syd.ipv4, ips[0].to_string());

    // DNS: every node answers the apex with node addresses (127/8 has no location: all).
    for n in &nodes {
        let addr = n.dns_addr().unwrap();
        let answers = within("DNS answers the apex with all nodes", async || {
            let mut a = dns_a(addr, "example.com.").await;
            a.sort_unstable();
            (a.len() == 3).then_some(a)
        })
        .await;
        assert_eq!(answers, ips);
    }

    // Second deploy: index changed, about.html removed. Node 3 serves old then new, never
    // anything else, and never old again after new.
    let index_v2 = format!("{index_v1}<!-- v2 -->\n");
    std::fs::write(site.join("site/index.html"), &index_v2).unwrap();
    std::fs::remove_file(site.join("site/about.html")).unwrap();
    let watcher = {
        let addr = nodes[2].http_addr().unwrap();
        let (old, new) = (index_v1.clone(), index_v2.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                let Some((status, _, body)) = get(addr, "example.com", "/").await else {
                    continue;
                };
                assert_eq!(status, 200);
                if body == new {
                    // A few more reads after the switch.
                    for _ in 0..20 {
                        let (_, _, b) = get(addr, "example.com", "/").await.unwrap();
                        assert_eq!(b, new, "old content after the switch");
                    }
                    return;
                }
                assert_eq!(body, old, "neither old nor new content");
            }
            panic!("never switched");
        })
    };
    let second = deploy_dir(&client, &site.join("makiatto.toml")).await;
    watcher.await.unwrap();
    all_serve(&nodes, "/", &index_v2).await;
    for n in &nodes {
        let (status, _, _) = get(n.http_addr().unwrap(), "example.com", "/about.html")
            .await
            .unwrap();
        assert_eq!(status, 404, "removed file on {}", n.name());
    }
    assert_ne!(first, second);

    // Rollback through node 2: the first deployment again, everywhere.
    let back = Client::new(nodes[1].admin_socket())
        .rollback("example.com", None)
        .await
        .unwrap();
    assert_eq!(back, first);
    all_serve(&nodes, "/", &index_v1).await;
    all_serve(&nodes, "/about.html", &about).await;

    // A restarted node (same data directory) serves its active deployment as soon as it
    // is up, before it has heard from anyone, and rejoins.
    let fra = nodes.remove(1);
    fra.shutdown().await;
    let fra = Node::start(config(dir.path(), "fra", ips[1], Some(ips[0]), places[1]))
        .await
        .unwrap();
    let (status, _, body) = get(fra.http_addr().unwrap(), "example.com", "/")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, index_v1.as_str()));
    nodes.insert(1, fra);
    let mut view = nodes[0].membership();
    tokio::time::timeout(WAIT, view.wait_for(|v| v.is_alive("fra")))
        .await
        .expect("fra rejoins")
        .unwrap();

    // A node that stops leaves the DNS answers of the others within seconds.
    let nyc = nodes.pop().unwrap();
    nyc.shutdown().await;
    let dns = nodes[0].dns_addr().unwrap();
    within("nyc leaves the DNS answers", async || {
        let a = dns_a(dns, "example.com.").await;
        (!a.is_empty() && !a.contains(&ips[2])).then_some(())
    })
    .await;

    // A domain removed from the cluster stops being served and answered.
    assert_eq!(client.domains().await.unwrap(), ["example.com"]);
    client.remove_domain("example.com").await.unwrap();
    for n in &nodes {
        let addr = n.http_addr().unwrap();
        within("the removed domain is not served", async || {
            get(addr, "example.com", "/")
                .await
                .filter(|(s, _, _)| *s == 404)
        })
        .await;
        let dns = n.dns_addr().unwrap();
        within("the removed domain's zone is gone", async || {
            dns_a(dns, "example.com.").await.is_empty().then_some(())
        })
        .await;
    }
    for n in nodes {
        n.shutdown().await;
    }
}
