//! The `maki health` probes against a running demo cluster (three real daemons on
//! loopback with GeoIP, aliases and Pebble certificates), reached on explicit endpoints
//! instead of over SSH: green on the cluster as it is, red when the expectations are wrong.
//! Needs the `makiatto` daemon beside `maki` (`cargo build -p makiatto-daemon`), pebble and
//! the GeoIP database (scripts/setup.d/20-dns.sh and 30-http.sh).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use makiatto::admin::CertificateSummary;
use makiatto::admin::client::Client;
use makiatto::demo::{self, DemoOptions};
use makiatto::dns::GeoPoint;
use makiatto::health::{
    CLIENT_SUBNETS, Check, ClientPlace, Endpoints, Expectations, ExpectedNode, Site,
    locate_clients, probe,
};

fn top() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The checks of one demo node against `nodes` as expected.
async fn checks(
    node: &demo::DemoNode,
    site: &Site,
    nodes: &[ExpectedNode],
    clients: &[ClientPlace],
    certificates: &[CertificateSummary],
) -> BTreeMap<&'static str, Check> {
    let alive = Client::new(&node.admin).membership().await.unwrap().alive;
    let at = Endpoints {
        dns: node.dns,
        http: node.http,
        https: node.https,
    };
    probe(
        &at,
        &Expectations {
            me: node.name,
            sites: std::slice::from_ref(site),
            nodes,
            alive: &alive,
            clients: Ok(clients),
            certificates: Some(certificates),
        },
    )
    .await
}

#[test]
fn the_health_probes_judge_a_running_demo_cluster() {
    let maki = PathBuf::from(env!("CARGO_BIN_EXE_maki"));
    let mut opts = DemoOptions::new();
    opts.daemon = maki.with_file_name("makiatto");
    assert!(
        opts.daemon.is_file(),
        "no makiatto daemon at {} (cargo build -p makiatto-daemon)",
        opts.daemon.display()
    );
    opts.project = top().join("examples/makiatto.toml");
    opts.first_ip = "127.0.0.47".parse().unwrap();
    opts.port_offset = 3200;
    let cluster = demo::start(&opts, &|line| eprintln!("{line}")).unwrap();
    assert!(
        cluster.ca.is_some(),
        "HTTPS is on: pebble is installed by 30-http.sh ({:?})",
        cluster.https_note
    );
    let truth: Vec<ExpectedNode> = cluster
        .nodes
        .iter()
        .map(|n| ExpectedNode {
            name: n.name.to_owned(),
            ipv4: Some(n.ip),
            location: Some(GeoPoint::new(n.latitude, n.longitude)),
            nameserver: true,
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for node in &cluster.nodes {
            let client = Client::new(&node.admin);
            let site = Site {
                domain: cluster.domain.clone(),
                aliases: client.aliases(&cluster.domain).await.unwrap(),
            };
            assert_eq!(site.aliases, ["www.example.com"]);
            let clients = locate_clients(&client, &CLIENT_SUBNETS).await.unwrap();
            let placed = clients.iter().filter(|c| c.location.is_some()).count();
            assert!(
                placed >= 3,
                "the demo's three continents are placed: {clients:?}"
            );
            let held = client.certificates().await.unwrap();
            assert!(!held.is_empty());

            // The cluster as it is: every check green, nothing skipped.
            let got = checks(node, &site, &truth, &clients, &held).await;
            for (name, check) in &got {
                eprintln!("{} {name}: {}", node.name, check.detail);
                assert!(
                    check.ok && check.note.is_none(),
                    "{} {name}: {check:?}",
                    node.name
                );
            }
            assert_eq!(got.len(), 4);
            let geo = &got["geo"].detail;
            assert!(
                geo.contains("1.1.1.0/24 -> syd")
                    && geo.contains("193.0.6.0/24 -> fra")
                    && geo.contains("8.8.8.0/24 -> nyc"),
                "{geo}"
            );
            // The certificates Pebble issued, read from the handshake, for both names.
            let cert = &got["cert"].detail;
            assert!(
                cert.contains("example.com: ") && cert.contains("www.example.com: "),
                "{cert}"
            );
            assert!(cert.contains(" days left (until "), "{cert}");
            assert!(
                got["http"].detail.contains("www.example.com 308"),
                "{got:?}"
            );

            // Sydney and New York swapped in the expectations: the geo answers are red.
            let mut swapped = truth.clone();
            let (syd, nyc) = (swapped[0].location, swapped[2].location);
            swapped[0].location = nyc;
            swapped[2].location = syd;
            let got = checks(node, &site, &swapped, &clients, &held).await;
            assert!(!got["geo"].ok, "{} geo: {:?}", node.name, got["geo"]);
            assert!(got["geo"].detail.contains("the nearest alive node"));
            assert!(got["dns"].ok);

            // A nameserver the cluster does not publish: the NS set is red.
            let mut extra = truth.clone();
            extra.push(ExpectedNode {
                name: "lon".into(),
                ipv4: None,
                location: None,
                nameserver: true,
            });
            let got = checks(node, &site, &extra, &clients, &held).await;
            assert!(!got["dns"].ok, "{} dns: {:?}", node.name, got["dns"]);
            assert!(got["dns"].detail.contains("lon.ns.example.com"));

            // A name no certificate covers yet: HTTP only, said so, not red.
            let other = Site {
                domain: "example.net".into(),
                aliases: Vec::new(),
            };
            let got = checks(node, &other, &truth, &clients, &held).await;
            assert!(got["cert"].ok, "{:?}", got["cert"]);
            assert_eq!(got["cert"].note.as_deref(), Some("http only"));
            // ... but red when the cluster holds one for it that the node does not serve,
            // or whose newest expired.
            let now_ms = i64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis(),
            )
            .unwrap();
            let day_ms = 86_400_000;
            let mut stray = held[0].clone();
            stray.names = vec!["example.net".into()];
            stray.not_before_ms = now_ms - day_ms;
            stray.not_after_ms = now_ms + 60 * day_ms;
            let got = checks(node, &other, &truth, &clients, &[stray.clone()]).await;
            assert!(!got["cert"].ok, "{:?}", got["cert"]);
            assert!(
                got["cert"].detail.contains("not served"),
                "{:?}",
                got["cert"]
            );
            stray.not_after_ms = now_ms - 1;
            let got = checks(node, &other, &truth, &clients, &[stray]).await;
            assert!(!got["cert"].ok, "{:?}", got["cert"]);
            assert!(
                got["cert"].detail.contains("not renewed"),
                "{:?}",
                got["cert"]
            );
        }
    });
}
