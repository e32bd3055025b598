//! ACME on a node: the cluster's one orderer (a lease in the store), its account (in the
//! store, one per directory), and issued certificates (inserted into `certificates`, from
//! where every node serves them).
//!
//! Orders: one per domain, for the domain, `*.<domain>`, its aliases and the nameserver
//! hostnames `<node>.ns.<domain>` of every nameserver node. The domain and its aliases are
//! proved over HTTP-01 (any node answers from `acme_challenges`); the wildcard and the
//! nameserver hostnames over DNS-01 through the cluster's own authoritative DNS (the TXT
//! value goes into `acme_challenges`, every node's DNS serves it). Before the CA is asked
//! to validate, the answer must be visible where the CA may look: an HTTP-01 answer on
//! every healthy node's HTTP port ([`Reach::http01_peers`]), a DNS-01 value on every
//! healthy nameserver ([`StoreDns`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use makiatto_http::acme::{
    AcmeAccountStore, AcmeConfig, AcmeManager, CertOrder, CertSink, ChallengeKind, DnsChallenge,
    Http01Peers, Lease,
};
use makiatto_http::{Certificate, ChallengeStore, HttpError};
use makiatto_mesh::membership::MembershipView;
use tokio::sync::watch;

use super::certs::{StoreCerts, StoreChallenges};
use crate::store::Store;
use crate::store::cluster::{acme_accounts, aliases, certificates, domains, leases, nodes};

/// The lease naming the node that orders certificates.
const LEASE: &str = "acme";

fn store_err(e: &crate::store::StoreError) -> HttpError {
    HttpError::Store(e.to_string())
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The orderer lease in the store's `leases` table.
#[derive(Debug, Clone)]
pub(crate) struct StoreLease {
    pub(crate) store: Store,
    pub(crate) holder: String,
}

impl Lease for StoreLease {
    async fn acquire(&self, ttl: Duration) -> Result<bool, HttpError> {
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let now = ms(SystemTime::now());
        self.store
            .write(|tx| leases::try_acquire(tx, LEASE, &self.holder, now, ttl))
            .map_err(|e| store_err(&e))
    }

    async fn release(&self) -> Result<(), HttpError> {
        let now = ms(SystemTime::now());
        self.store
            .write(|tx| leases::release(tx, LEASE, &self.holder, now))
            .map(|_| ())
            .map_err(|e| store_err(&e))
    }
}

/// The account of one directory in `acme_accounts`.
#[derive(Debug, Clone)]
pub(crate) struct StoreAccounts {
    pub(crate) store: Store,
    pub(crate) directory: String,
    pub(crate) contact: String,
}

impl AcmeAccountStore for StoreAccounts {
    fn load(&self) -> Result<Option<String>, HttpError> {
        let row = self
            .store
            .read(|c| acme_accounts::get(c, &self.directory))
            .map_err(|e| store_err(&e))?;
        Ok(row
            .filter(|a| !a.credentials.is_empty())
            .and_then(|a| String::from_utf8(a.credentials).ok()))
    }

    fn save(&self, credentials: &str) -> Result<(), HttpError> {
        let row = acme_accounts::Account {
            id: self.directory.clone(),
            credentials: credentials.as_bytes().to_vec(),
            contact: self.contact.clone(),
            created_ms: ms(SystemTime::now()),
        };
        self.store
            .write(|tx| acme_accounts::upsert(tx, &row))
            .map_err(|e| store_err(&e))
    }
}

/// Issued certificates go into the store; the current ones are what this node serves.
#[derive(Debug)]
pub(crate) struct StoreSink {
    pub(crate) store: Store,
    pub(crate) certs: Arc<StoreCerts>,
}

impl CertSink for StoreSink {
    fn current(&self, primary: &str) -> Option<Arc<Certificate>> {
        self.certs.get(primary)
    }

    fn install(
        &self,
        names: &[String],
        cert: Certificate,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<(), HttpError> {
        let row = certificates::Certificate {
            id: blake3::hash(chain_pem.as_bytes()).to_hex().to_string(),
            domain: names.first().cloned().unwrap_or_default(),
            names: names.to_vec(),
            bundle: certificates::Bundle {
                chain_pem: chain_pem.to_owned(),
                key_pem: key_pem.to_owned(),
            },
            not_before_ms: ms(cert.not_before),
            not_after_ms: ms(cert.not_after),
            created_ms: ms(SystemTime::now()),
        };
        self.store
            .write(|tx| certificates::insert(tx, &row).map(|_| ()))
            .map_err(|e| store_err(&e))?;
        // Serve it here at once; the others reload when the row reaches them.
        self.certs
            .reload(&self.store, ms(SystemTime::now()))
            .map_err(|e| store_err(&e))?;
        Ok(())
    }
}

/// Two orders per domain, so that one challenge type failing does not cost the other's
/// names their certificate: the domain and its aliases over HTTP-01 (any node answers),
/// and `*.<domain>` with `<node>.ns.<domain>` for every nameserver node over DNS-01
/// through our own DNS (a wildcard needs it, and a nameserver hostname resolves to its own
/// node, which may be down).
pub(crate) fn orders(store: &Store) -> Vec<CertOrder> {
    let read = store.read(|c| Ok((domains::list(c)?, aliases::list(c)?, nodes::nameservers(c)?)));
    let Ok((domains, aliases, nameservers)) = read else {
        return Vec::new();
    };
    let dedup = |mut names: Vec<String>| {
        let mut seen = std::collections::BTreeSet::new();
        names.retain(|n| seen.insert(n.to_ascii_lowercase()));
        names
    };
    let mut out = Vec::new();
    for d in domains {
        let mut web = vec![d.name.clone()];
        web.extend(
            aliases
                .iter()
                .filter(|a| a.domain == d.name)
                .map(|a| a.alias.clone()),
        );
        out.push(CertOrder {
            names: dedup(web),
            challenge: ChallengeKind::Http01,
            dns01_names: Vec::new(),
        });
        let mut dns = vec![format!("*.{}", d.name)];
        dns.extend(
            nameservers
                .iter()
                .map(|n| format!("{}.ns.{}", n.name, d.name)),
        );
        let dns = dedup(dns);
        out.push(CertOrder {
            names: dns.clone(),
            challenge: ChallengeKind::Dns01,
            dns01_names: dns,
        });
    }
    out
}

/// Where this node's servers listen and which nodes are healthy: the addresses a CA may
/// reach for a challenge. Other nodes are assumed to listen on the same ports as this one
/// (53 and 80 in production) at their public IPv4 address.
#[derive(Debug, Clone)]
pub(crate) struct Reach {
    /// This node's name.
    pub(crate) me: String,
    /// The store with the `nodes` table.
    pub(crate) store: Store,
    /// Membership: which nodes are alive.
    pub(crate) view: watch::Receiver<MembershipView>,
    /// This node's bound HTTP address, if it serves HTTP.
    pub(crate) http: Option<SocketAddr>,
    /// This node's bound DNS address, if it serves DNS.
    pub(crate) dns: Option<SocketAddr>,
    /// The DNS port of the other nodes.
    pub(crate) dns_port: u16,
}

/// An address to reach a server bound to `a` from this machine (a wildcard bind is reached
/// on loopback).
fn local(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, a.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, a.port()).into(),
        _ => a,
    }
}

impl Reach {
    /// The healthy nodes other than this one (only nameservers when `nameservers`), with
    /// their public IPv4 address.
    fn others(&self, nameservers: bool) -> Vec<Ipv4Addr> {
        let rows = if nameservers {
            self.store.read(nodes::nameservers)
        } else {
            self.store.read(nodes::list)
        };
        let view = self.view.borrow();
        rows.unwrap_or_default()
            .into_iter()
            .filter(|n| n.name != self.me && view.is_alive(&n.name))
            .filter_map(|n| n.ipv4.parse().ok())
            .collect()
    }

    /// Our own port 80, for the manager's `http01_probe`.
    pub(crate) fn own_http(&self) -> Option<SocketAddr> {
        self.http.map(local)
    }

    /// The other healthy nodes' HTTP ports.
    pub(crate) fn http01_peers(&self) -> Http01Peers {
        let me = self.clone();
        Arc::new(move || {
            let Some(port) = me.http.map(|a| a.port()) else {
                return Vec::new();
            };
            me.others(false)
                .into_iter()
                .map(|ip| SocketAddr::from((ip, port)))
                .collect()
        })
    }

    /// Every healthy nameserver's DNS address, this node's first.
    fn nameservers(&self) -> Vec<SocketAddr> {
        let mine = self.store.read(|c| nodes::get(c, &self.me)).ok().flatten();
        let mut out: Vec<SocketAddr> = self
            .dns
            .filter(|_| mine.is_some_and(|n| n.is_nameserver))
            .map(local)
            .into_iter()
            .collect();
        out.extend(
            self.others(true)
                .into_iter()
                .map(|ip| SocketAddr::from((ip, self.dns_port))),
        );
        out
    }
}

/// DNS-01 through the cluster's own authoritative DNS: the value is written to the store's
/// `acme_challenges` (every node's DNS serves it as TXT) and is visible once every healthy
/// nameserver answers it.
#[derive(Debug, Clone)]
pub(crate) struct StoreDns {
    pub(crate) challenges: StoreChallenges,
    pub(crate) reach: Reach,
}

impl DnsChallenge for StoreDns {
    async fn publish(&self, name: &str, value: &str) -> Result<(), HttpError> {
        self.challenges.put_dns01(name, value)
    }

    async fn is_visible(&self, name: &str, value: &str) -> Result<bool, HttpError> {
        let servers = self.reach.nameservers();
        if servers.is_empty() {
            tracing::warn!(%name, "no healthy nameserver to publish a DNS-01 value on");
            return Ok(false);
        }
        for server in servers {
            match makiatto_http::acme::txt_values(server, name).await {
                Ok(values) if values.iter().any(|v| v == value) => {}
                Ok(_) => {
                    tracing::debug!(%name, %server, "DNS-01 value not served yet");
                    return Ok(false);
                }
                Err(e) => {
                    tracing::debug!(%name, %server, error = %e, "DNS-01 visibility query");
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    async fn remove(&self, name: &str, value: &str) -> Result<(), HttpError> {
        self.challenges.remove_dns01(name, value)
    }
}

/// The manager of a node: HTTP-01 answers checked on every healthy node, DNS-01 values on
/// every healthy nameserver.
pub(crate) fn manager(
    mut cfg: AcmeConfig,
    store: &Store,
    challenges: Arc<dyn ChallengeStore>,
    certs: Arc<StoreCerts>,
    reach: Reach,
) -> AcmeManager<StoreLease, StoreDns> {
    let accounts = StoreAccounts {
        store: store.clone(),
        directory: cfg.directory_url.clone(),
        contact: cfg.contact_email.clone().unwrap_or_default(),
    };
    if cfg.http01_probe.is_none() {
        cfg.http01_probe = reach.own_http();
    }
    let peers = reach.http01_peers();
    AcmeManager::new(
        cfg,
        Arc::new(accounts),
        challenges,
        Arc::new(StoreSink {
            store: store.clone(),
            certs,
        }),
        StoreLease {
            store: store.clone(),
            holder: reach.me.clone(),
        },
        StoreDns {
            challenges: StoreChallenges::new(store.clone()),
            reach,
        },
    )
    .with_http01_peers(peers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Options;
    use crate::store::cluster;

    #[tokio::test]
    async fn one_node_holds_the_lease_until_it_lapses_or_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path().join("s.db"),
            &cluster::SCHEMA,
            Options::default(),
        )
        .unwrap();
        let a = StoreLease {
            store: store.clone(),
            holder: "a".into(),
        };
        let b = StoreLease {
            store: store.clone(),
            holder: "b".into(),
        };
        assert!(a.acquire(Duration::from_secs(60)).await.unwrap());
        assert!(!b.acquire(Duration::from_secs(60)).await.unwrap());
        assert!(a.acquire(Duration::from_secs(60)).await.unwrap(), "renewal");
        a.release().await.unwrap();
        assert!(b.acquire(Duration::ZERO).await.unwrap());
        assert!(a.acquire(Duration::from_secs(60)).await.unwrap(), "lapsed");

        let accounts = StoreAccounts {
            store,
            directory: "https://ca.test/dir".into(),
            contact: String::new(),
        };
        assert_eq!(accounts.load().unwrap(), None);
        accounts.save("{\"k\":1}").unwrap();
        assert_eq!(accounts.load().unwrap().as_deref(), Some("{\"k\":1}"));
    }

    fn node(name: &str, ipv4: &str, nameserver: bool) -> nodes::Node {
        nodes::Node {
            name: name.into(),
            wg_public_key: String::new(),
            wg_endpoint: String::new(),
            mesh_address: String::new(),
            ipv4: ipv4.into(),
            ipv6: None,
            latitude: 0.0,
            longitude: 0.0,
            is_nameserver: nameserver,
            site_id: name.into(),
            created_ms: 0,
        }
    }

    /// The places a CA may reach: every healthy node's HTTP port (issue 13) and every
    /// healthy nameserver's DNS, this node's own servers on the addresses they bound;
    /// orders cover the wildcard and the nameserver hostnames over DNS-01.
    #[test]
    fn challenges_are_checked_on_every_healthy_node_and_nameserver() {
        use makiatto_mesh::membership::{Liveness, MemberInfo};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path().join("s.db"),
            &cluster::SCHEMA,
            Options::default(),
        )
        .unwrap();
        store
            .write(|tx| {
                nodes::upsert(tx, &node("me", "192.0.2.1", true))?;
                nodes::upsert(tx, &node("ns-up", "192.0.2.2", true))?;
                nodes::upsert(tx, &node("edge-up", "192.0.2.3", false))?;
                nodes::upsert(tx, &node("ns-down", "192.0.2.4", true))?;
                domains::upsert(
                    tx,
                    &domains::Domain {
                        name: "example.test".into(),
                        active_deployment: None,
                        updated_ms: 0,
                    },
                )
            })
            .unwrap();
        let member = |liveness| MemberInfo {
            addr: "192.0.2.9:7947".parse().unwrap(),
            liveness,
        };
        let mut view = MembershipView::default();
        view.members.insert("ns-up".into(), member(Liveness::Alive));
        view.members
            .insert("edge-up".into(), member(Liveness::Alive));
        view.members
            .insert("ns-down".into(), member(Liveness::Down));
        let (_tx, view) = watch::channel(view);
        let reach = Reach {
            me: "me".into(),
            store: store.clone(),
            view,
            http: Some("0.0.0.0:8080".parse().unwrap()),
            dns: Some("192.0.2.1:5353".parse().unwrap()),
            dns_port: 5353,
        };
        assert_eq!(reach.own_http(), Some("127.0.0.1:8080".parse().unwrap()));
        let mut http = (reach.http01_peers())();
        http.sort();
        assert_eq!(
            http,
            [
                "192.0.2.2:8080".parse().unwrap(),
                "192.0.2.3:8080".parse().unwrap()
            ]
        );
        assert_eq!(
            reach.nameservers(),
            [
                "192.0.2.1:5353".parse().unwrap(),
                "192.0.2.2:5353".parse().unwrap()
            ]
        );

        let orders = orders(&store);
        assert_eq!(orders.len(), 2);
        assert_eq!(orders[0].names, ["example.test"]);
        assert!(orders[0].dns01_names.is_empty());
        let dns = [
            "*.example.test",
            "me.ns.example.test",
            "ns-down.ns.example.test",
            "ns-up.ns.example.test",
        ];
        assert_eq!(orders[1].names, dns);
        assert_eq!(orders[1].dns01_names, dns);
    }
}
