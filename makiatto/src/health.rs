//! `maki health`: every machine of the profile checked from the user's side.
//!
//! Per machine: SSH reachable, the `makiatto` service active, the admin API answering (and
//! its version), the node's membership view (it must see every other machine alive), store
//! replication (the node's active deployment of each domain is the same as every other
//! node's), and the node's public services probed as a visitor would:
//!
//! - `dns`: each domain's SOA answered authoritatively and its NS set exactly the
//!   nameserver nodes (`<node>.ns.<domain>`);
//! - `geo`: for client subnets on several continents ([`CLIENT_SUBNETS`], sent as EDNS
//!   Client Subnet) the A answer of the apex and of each alias inside the domain is the
//!   node nearest by great-circle distance among those this node sees alive, the subnet
//!   placed by the node's own GeoIP data (`GET /v1/geo/{ip}`); a subnet the data does not
//!   place is skipped, not failed;
//! - `http`: `GET /` on port 80 for each domain and each alias answers below 500;
//! - `cert`: a TLS handshake on port 443 with SNI = each domain and alias; the served
//!   leaf must name the host and be valid for at least [`CERT_MIN_DAYS`] more days. A host
//!   without a certificate yet (the handshake is refused) is "HTTP only", not a failure.
//!   The chain's trust is not judged (staging and test CAs are fine).
//!
//! A machine that cannot be reached is red in every column it could not check. The
//! probes ([`probe`]) take explicit endpoints and expectations, so they also run against
//! clusters reached without SSH (the local demo).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::admin::CertificateSummary;
use crate::admin::client::{Client, ClientError};
use crate::machine::{AdminLink, options_for};
use crate::profile::{Machine, Profile};
use crate::ssh::Target;
use makiatto_dns::GeoPoint;

/// How long one network check may take.
const PROBE: Duration = Duration::from_secs(3);

/// A served certificate with fewer days left than this is red.
pub const CERT_MIN_DAYS: i64 = 7;

/// Client subnets the `geo` check asks for (EDNS Client Subnet): Sydney, Amsterdam,
/// Mountain View, São Paulo and Tokyo by common GeoIP data.
pub const CLIENT_SUBNETS: [&str; 5] = [
    "1.1.1.0/24",
    "193.0.6.0/24",
    "8.8.8.0/24",
    "200.160.0.0/24",
    "202.12.27.0/24",
];

/// One check's outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    /// Whether it passed.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
    /// A short word for the table instead of `ok` when the check passed without checking
    /// everything (`skipped`, `http only`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Check {
    fn ok(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            detail: detail.into(),
            note: None,
        }
    }

    fn bad(detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            detail: detail.into(),
            note: None,
        }
    }

    fn noted(note: &str, detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            detail: detail.into(),
            note: Some(note.to_owned()),
        }
    }
}

/// One machine's checks.
#[derive(Debug, Clone, Serialize)]
pub struct MachineHealth {
    /// Machine name.
    pub name: String,
    /// Public address.
    pub ipv4: Ipv4Addr,
    /// Checks by name: `ssh`, `service`, `api`, `membership`, `dns`, `geo`, `http`,
    /// `cert`, `store`.
    pub checks: BTreeMap<&'static str, Check>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Per machine, in profile order.
    pub machines: Vec<MachineHealth>,
}

const COLUMNS: [&str; 9] = [
    "ssh",
    "service",
    "api",
    "membership",
    "dns",
    "geo",
    "http",
    "cert",
    "store",
];

impl Report {
    /// Whether every check of every machine passed (and there is at least one machine).
    pub fn all_green(&self) -> bool {
        !self.machines.is_empty()
            && self
                .machines
                .iter()
                .all(|m| m.checks.values().all(|c| c.ok))
    }

    /// The machines with a failed check, by name.
    pub fn red(&self) -> Vec<&str> {
        self.machines
            .iter()
            .filter(|m| m.checks.values().any(|c| !c.ok))
            .map(|m| m.name.as_str())
            .collect()
    }

    /// The report as JSON (one document).
    pub fn json(&self) -> String {
        let mut out = serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into());
        out.push('\n');
        out
    }

    /// The report as a table, then the failures spelled out, then what was skipped.
    pub fn table(&self) -> String {
        let name_width = self
            .machines
            .iter()
            .map(|m| m.name.len())
            .max()
            .unwrap_or(0)
            .max(15);
        let width = |c: &str| c.len().max(9);
        let mut out = String::new();
        let _ = write!(out, "{:<name_width$}", "NAME");
        for c in COLUMNS {
            let _ = write!(out, " {c:<w$}", w = width(c));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        let (mut problems, mut notes) = (String::new(), String::new());
        for m in &self.machines {
            let _ = write!(out, "{:<name_width$}", m.name);
            for c in COLUMNS {
                let cell = match m.checks.get(c) {
                    Some(check) if check.ok => match &check.note {
                        Some(note) => {
                            let _ = writeln!(notes, "  {} {c}: {}", m.name, check.detail);
                            note.as_str()
                        }
                        None => "ok",
                    },
                    Some(check) => {
                        let _ = writeln!(problems, "  {} {c}: {}", m.name, check.detail);
                        "FAIL"
                    }
                    None => "-",
                };
                let _ = write!(out, " {cell:<w$}", w = width(c));
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
        }
        if self.machines.is_empty() {
            out.push_str("no machines in this profile\n");
        } else if problems.is_empty() {
            out.push_str("all green\n");
        } else {
            out.push_str("problems:\n");
            out.push_str(&problems);
        }
        if !notes.is_empty() {
            out.push_str("not checked everywhere:\n");
            out.push_str(&notes);
        }
        out
    }
}

/// Where a node's public services listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    /// DNS (UDP).
    pub dns: SocketAddr,
    /// HTTP.
    pub http: SocketAddr,
    /// HTTPS.
    pub https: SocketAddr,
}

impl Endpoints {
    /// The standard ports (53, 80, 443) at `ip`.
    pub fn standard(ip: IpAddr) -> Self {
        Self {
            dns: SocketAddr::new(ip, 53),
            http: SocketAddr::new(ip, 80),
            https: SocketAddr::new(ip, 443),
        }
    }
}

/// A node as the cluster should publish it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedNode {
    /// Node name.
    pub name: String,
    /// Public IPv4 address (what its A answers carry); `None`: never in A answers.
    pub ipv4: Option<Ipv4Addr>,
    /// Where it stands; `None`: unknown (the `geo` check is then skipped).
    pub location: Option<GeoPoint>,
    /// Whether it is a nameserver (`<name>.ns.<domain>` in every NS set).
    pub nameserver: bool,
}

/// A served domain and its aliases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The domain.
    pub domain: String,
    /// Its aliases.
    pub aliases: Vec<String>,
}

impl Site {
    /// The domain, then its aliases.
    fn hosts(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.domain.as_str()).chain(self.aliases.iter().map(String::as_str))
    }

    /// The names its zone answers by location: the apex and the aliases inside the domain
    /// (others are CNAMEs kept elsewhere).
    fn geo_names(&self) -> impl Iterator<Item = &str> {
        self.hosts().filter(|h| {
            *h == self.domain
                || h.strip_suffix(self.domain.as_str())
                    .is_some_and(|label| label.len() > 1 && label.ends_with('.'))
        })
    }
}

/// A client subnet and where the probed node's GeoIP data places it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientPlace {
    /// The subnet, `a.b.c.d/len`.
    pub subnet: String,
    /// Its location; `None` when the node does not know it.
    pub location: Option<GeoPoint>,
}

/// What one node's answers are checked against.
#[derive(Debug, Clone, Copy)]
pub struct Expectations<'a> {
    /// The node's name.
    pub me: &'a str,
    /// The domains the cluster serves.
    pub sites: &'a [Site],
    /// Every node of the cluster.
    pub nodes: &'a [ExpectedNode],
    /// The nodes this node sees alive (itself counts as alive regardless).
    pub alive: &'a [String],
    /// Client subnets placed by this node's GeoIP data; `None` when the node cannot say
    /// (the `geo` check is then skipped with that reason).
    pub clients: Result<&'a [ClientPlace], &'a str>,
    /// The certificates the cluster holds (`GET /v1/certificates`), to tell a host
    /// without a certificate yet from one whose certificate expired or is not served;
    /// `None`: unknown (a host without one served is then "HTTP only").
    pub certificates: Option<&'a [CertificateSummary]>,
}

/// Where the node behind `client` places each of `subnets` (by their network address).
pub async fn locate_clients(
    client: &Client,
    subnets: &[&str],
) -> Result<Vec<ClientPlace>, ClientError> {
    let mut out = Vec::new();
    for subnet in subnets {
        let ip: IpAddr = subnet
            .split_once('/')
            .map_or(*subnet, |(ip, _)| ip)
            .parse()
            .map_err(|_| ClientError::Protocol {
                what: "locate".into(),
                reason: format!("`{subnet}` is not a subnet"),
            })?;
        let location = tokio::time::timeout(PROBE, client.locate(ip))
            .await
            .map_err(|_| ClientError::Protocol {
                what: "/v1/geo".into(),
                reason: "no answer".into(),
            })??;
        out.push(ClientPlace {
            subnet: (*subnet).to_owned(),
            location: location.map(|l| GeoPoint::new(l.latitude, l.longitude)),
        });
    }
    Ok(out)
}

/// Probes one node's public services: the `dns`, `geo`, `http` and `cert` checks.
pub async fn probe(at: &Endpoints, expect: &Expectations<'_>) -> BTreeMap<&'static str, Check> {
    let mut checks = BTreeMap::new();
    checks.insert("dns", dns_check(at.dns, expect.sites, expect.nodes).await);
    checks.insert("geo", geo_check(at.dns, expect).await);
    checks.insert("http", http_check(at.http, expect.sites).await);
    checks.insert(
        "cert",
        cert_check(
            at.https,
            expect.sites,
            expect.certificates,
            SystemTime::now(),
        )
        .await,
    );
    checks
}

/// What one node says about the cluster.
#[derive(Debug, Default)]
struct NodeView {
    domains: Vec<String>,
    active: BTreeMap<String, Option<String>>,
    aliases: BTreeMap<String, Vec<String>>,
    nodes: Vec<ExpectedNode>,
    alive: Option<Vec<String>>,
    clients: Option<Result<Vec<ClientPlace>, String>>,
    certificates: Option<Vec<CertificateSummary>>,
}

/// Checks every machine of `profile`.
pub async fn check(profile: &Profile, key: Option<&Path>) -> Report {
    let mut machines = Vec::new();
    let mut views: Vec<Option<NodeView>> = Vec::new();
    let names: Vec<&str> = profile.machines.iter().map(|m| m.name.as_str()).collect();
    for m in &profile.machines {
        let (health, view) = check_machine(m, &names, key).await;
        machines.push(health);
        views.push(view);
    }
    // Domains and aliases known anywhere; the nodes as the profile places them (the
    // cluster's rows for what the profile does not say).
    let mut sites: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for v in views.iter().flatten() {
        for d in &v.domains {
            sites.entry(d.clone()).or_default();
        }
        for (d, a) in &v.aliases {
            sites
                .entry(d.clone())
                .or_default()
                .extend(a.iter().cloned());
        }
    }
    let domains: Vec<String> = sites.keys().cloned().collect();
    let sites: Vec<Site> = sites
        .into_iter()
        .map(|(domain, aliases)| Site {
            domain,
            aliases: aliases.into_iter().collect(),
        })
        .collect();
    let nodes = expected_nodes(profile, &views);
    let certificates = views
        .iter()
        .flatten()
        .find_map(|v| v.certificates.as_deref());
    for (m, (health, view)) in profile.machines.iter().zip(machines.iter_mut().zip(&views)) {
        // Without the node's membership view its geo answers cannot be predicted.
        let alive = view.as_ref().and_then(|v| v.alive.clone());
        let clients = match (view.as_ref().and_then(|v| v.clients.as_ref()), &alive) {
            (None, _) => Err("the node's admin API did not answer"),
            (Some(_), None) => Err("the node's membership view is unknown"),
            (Some(Ok(c)), Some(_)) => Ok(c.as_slice()),
            (Some(Err(e)), Some(_)) => Err(e.as_str()),
        };
        let alive = alive.unwrap_or_default();
        let expect = Expectations {
            me: &m.name,
            sites: &sites,
            nodes: &nodes,
            alive: &alive,
            clients,
            certificates,
        };
        health
            .checks
            .extend(probe(&Endpoints::standard(IpAddr::V4(m.ipv4)), &expect).await);
        health
            .checks
            .insert("store", store_check(view.as_ref(), &views, &domains));
    }
    Report { machines }
}

/// The profile's machines (their coordinates, or the cluster's when the profile has
/// none), then the cluster's nodes the profile does not list.
fn expected_nodes(profile: &Profile, views: &[Option<NodeView>]) -> Vec<ExpectedNode> {
    let cluster: Vec<&ExpectedNode> = views.iter().flatten().flat_map(|v| &v.nodes).collect();
    let mut out: Vec<ExpectedNode> = Vec::new();
    for m in &profile.machines {
        let row = cluster.iter().find(|n| n.name == m.name);
        let location = match (m.latitude, m.longitude) {
            (Some(lat), Some(lon)) => Some(GeoPoint::new(lat, lon)),
            _ => row.and_then(|r| r.location),
        };
        out.push(ExpectedNode {
            name: m.name.clone(),
            ipv4: Some(m.ipv4),
            location,
            nameserver: m.is_nameserver,
        });
    }
    for n in cluster {
        if !out.iter().any(|o| o.name == n.name) {
            out.push(n.clone());
        }
    }
    out
}

async fn check_machine(
    m: &Machine,
    names: &[&str],
    key: Option<&Path>,
) -> (MachineHealth, Option<NodeView>) {
    let mut checks = BTreeMap::new();
    let health = |checks: BTreeMap<&'static str, Check>| MachineHealth {
        name: m.name.clone(),
        ipv4: m.ipv4,
        checks,
    };
    let unchecked = |checks: &mut BTreeMap<&'static str, Check>, from: &[&'static str]| {
        for c in from {
            checks.insert(*c, Check::bad("not checked: the machine cannot be reached"));
        }
    };
    let target: Target = match m.ssh_target.parse() {
        Ok(t) => t,
        Err(e) => {
            checks.insert("ssh", Check::bad(e.to_string()));
            unchecked(&mut checks, &["service", "api", "membership"]);
            return (health(checks), None);
        }
    };
    let mut options = options_for(m, key);
    options.interactive = false;
    let ssh = match tokio::time::timeout(
        Duration::from_secs(20),
        crate::ssh::Ssh::connect(&target, &options),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            checks.insert("ssh", Check::bad(e.to_string()));
            unchecked(&mut checks, &["service", "api", "membership"]);
            return (health(checks), None);
        }
        Err(_) => {
            checks.insert("ssh", Check::bad("SSH timed out"));
            unchecked(&mut checks, &["service", "api", "membership"]);
            return (health(checks), None);
        }
    };
    checks.insert("ssh", Check::ok(format!("{target}:{}", m.ssh_port)));
    let service = ssh
        .user_output("systemctl is-active makiatto.service")
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    checks.insert(
        "service",
        match service {
            Ok(s) if s == "active" => Check::ok("active"),
            Ok(s) => Check::bad(format!("makiatto.service is {s}")),
            Err(e) => Check::bad(e.to_string()),
        },
    );
    let link = match AdminLink::over(ssh).await {
        Ok(l) => l,
        Err(e) => {
            checks.insert("api", Check::bad(e.to_string()));
            checks.insert("membership", Check::bad("not checked: no admin API"));
            return (health(checks), None);
        }
    };
    let view = node_view(&link, m, names, &mut checks).await;
    link.close().await;
    (health(checks), view)
}

async fn node_view(
    link: &AdminLink,
    m: &Machine,
    names: &[&str],
    checks: &mut BTreeMap<&'static str, Check>,
) -> Option<NodeView> {
    let c = &link.client;
    let within = |f| tokio::time::timeout(PROBE, f);
    match within(c.version()).await {
        Ok(Ok(v)) => checks.insert("api", Check::ok(format!("version {v}"))),
        Ok(Err(e)) => checks.insert("api", Check::bad(e.to_string())),
        Err(_) => checks.insert("api", Check::bad("the admin API did not answer")),
    };
    if !checks["api"].ok {
        checks.insert("membership", Check::bad("not checked: no admin API"));
        return None;
    }
    let mut alive = None;
    match tokio::time::timeout(PROBE, c.membership()).await {
        Ok(Ok(view)) => {
            alive = Some(view.alive.clone());
            let missing: Vec<&str> = names
                .iter()
                .filter(|n| **n != m.name && !view.alive.iter().any(|a| a == *n))
                .copied()
                .collect();
            let seen = format!("sees alive: {}", view.alive.join(", "));
            checks.insert(
                "membership",
                if missing.is_empty() {
                    Check::ok(seen)
                } else {
                    Check::bad(format!(
                        "does not see {} alive ({seen})",
                        missing.join(", ")
                    ))
                },
            );
        }
        Ok(Err(e)) => {
            checks.insert("membership", Check::bad(e.to_string()));
        }
        Err(_) => {
            checks.insert("membership", Check::bad("no answer"));
        }
    }
    let domains = tokio::time::timeout(PROBE, c.domains()).await.ok()?.ok()?;
    let mut view = NodeView {
        alive: alive.map(|mut a| {
            a.push(m.name.clone());
            a
        }),
        ..NodeView::default()
    };
    for d in &domains {
        let list = tokio::time::timeout(PROBE, c.deployments(d))
            .await
            .ok()?
            .ok()?;
        view.active
            .insert(d.clone(), list.into_iter().find(|x| x.active).map(|x| x.id));
        if let Ok(Ok(aliases)) = tokio::time::timeout(PROBE, c.aliases(d)).await {
            view.aliases.insert(d.clone(), aliases);
        }
    }
    view.domains = domains;
    if let Ok(Ok(nodes)) = tokio::time::timeout(PROBE, c.nodes()).await {
        view.nodes = nodes
            .into_iter()
            .map(|s| ExpectedNode {
                ipv4: s.node.ipv4.parse().ok(),
                location: Some(GeoPoint::new(s.node.latitude, s.node.longitude)),
                nameserver: s.node.is_nameserver,
                name: s.node.name,
            })
            .collect();
    }
    view.certificates = tokio::time::timeout(PROBE, c.certificates())
        .await
        .ok()
        .and_then(Result::ok);
    view.clients = Some(match locate_clients(c, &CLIENT_SUBNETS).await {
        Ok(places) => Ok(places),
        Err(ClientError::Refused { status: 404, .. }) => {
            Err("the node cannot say where addresses are (an older version)".to_owned())
        }
        Err(e) => Err(e.to_string()),
    });
    Some(view)
}

fn store_check(mine: Option<&NodeView>, all: &[Option<NodeView>], domains: &[String]) -> Check {
    let Some(mine) = mine else {
        return Check::bad("not checked: no admin API");
    };
    let mut differ = Vec::new();
    for d in domains {
        let here = mine.active.get(d).cloned().flatten();
        let others: Vec<Option<String>> = all
            .iter()
            .flatten()
            .map(|v| v.active.get(d).cloned().flatten())
            .collect();
        if others.iter().any(|o| *o != here) {
            differ.push(format!("{d}: active {}", here.as_deref().unwrap_or("none")));
        }
    }
    if differ.is_empty() {
        Check::ok(format!("{} domains in step", domains.len()))
    } else {
        Check::bad(format!("differs from other nodes: {}", differ.join("; ")))
    }
}

/// `dns`: each domain's SOA answered authoritatively and its NS set exactly the
/// nameserver nodes. Without domains, any answer for the root counts (a refusal too).
async fn dns_check(addr: SocketAddr, sites: &[Site], nodes: &[ExpectedNode]) -> Check {
    use hickory_proto::rr::{RData, RecordType};
    if sites.is_empty() {
        return match dns_query(addr, ".", RecordType::SOA, None).await {
            Ok(_) => Check::ok("no domains; the server answers"),
            Err(e) => Check::bad(format!("{addr}: {e}")),
        };
    }
    for site in sites {
        let name = &site.domain;
        match dns_query(addr, name, RecordType::SOA, None).await {
            Ok(reply) if reply.metadata.authoritative && !reply.answers.is_empty() => {}
            Ok(_) => return Check::bad(format!("{addr} gave no authoritative SOA for {name}")),
            Err(e) => return Check::bad(format!("{addr}: {e}")),
        }
        let reply = match dns_query(addr, name, RecordType::NS, None).await {
            Ok(r) => r,
            Err(e) => return Check::bad(format!("{addr}: NS {name}: {e}")),
        };
        let got: BTreeSet<String> = reply
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::NS(ns) => Some(normal_name(&ns.0.to_ascii())),
                _ => None,
            })
            .collect();
        let want: BTreeSet<String> = nodes
            .iter()
            .filter(|n| n.nameserver)
            .map(|n| normal_name(&format!("{}.ns.{name}", n.name)))
            .collect();
        if got != want {
            return Check::bad(format!(
                "{addr}: NS {name} is [{}], expected [{}]",
                join(&got),
                join(&want)
            ));
        }
    }
    Check::ok(format!("{} zones: SOA and NS as expected", sites.len()))
}

fn normal_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn join<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    items
        .into_iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `geo`: per domain and client subnet, the apex A answer is the nearest alive node.
async fn geo_check(addr: SocketAddr, expect: &Expectations<'_>) -> Check {
    use hickory_proto::rr::{RData, RecordType};
    let clients = match expect.clients {
        Ok(c) => c,
        Err(why) => return Check::noted("skipped", format!("not checked: {why}")),
    };
    if expect.sites.is_empty() {
        return Check::noted("skipped", "no domains");
    }
    // The candidates the node's DNS chooses from: nodes with an IPv4 address that it
    // sees alive (itself always).
    let candidates: Vec<&ExpectedNode> = expect
        .nodes
        .iter()
        .filter(|n| n.ipv4.is_some())
        .filter(|n| n.name == expect.me || expect.alive.contains(&n.name))
        .collect();
    if let Some(n) = candidates.iter().find(|n| n.location.is_none()) {
        return Check::noted("skipped", format!("no location for node {}", n.name));
    }
    let (mut checked, mut skipped) = (Vec::new(), Vec::new());
    for client in clients {
        let Some(place) = client.location else {
            skipped.push(format!("no location for {}", client.subnet));
            continue;
        };
        let Some(nearest) = candidates
            .iter()
            .filter_map(|n| Some((n.location?.distance_m(&place), *n)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, n)| n)
        else {
            return Check::bad("no node to answer with");
        };
        let want: BTreeSet<Ipv4Addr> = nearest.ipv4.into_iter().collect();
        for name in expect.sites.iter().flat_map(Site::geo_names) {
            let reply = match dns_query(addr, name, RecordType::A, Some(&client.subnet)).await {
                Ok(r) => r,
                Err(e) => return Check::bad(format!("{addr}: A {name}: {e}")),
            };
            let got: BTreeSet<Ipv4Addr> = reply
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect();
            if got != want {
                let got: Vec<String> = got.iter().map(ToString::to_string).collect();
                return Check::bad(format!(
                    "{addr}: A {name} for a client in {} is [{}], expected {} ({}), the nearest alive node",
                    client.subnet,
                    got.join(", "),
                    nearest.ipv4.map(|a| a.to_string()).unwrap_or_default(),
                    nearest.name
                ));
            }
        }
        checked.push(format!("{} -> {}", client.subnet, nearest.name));
    }
    if checked.is_empty() {
        return Check::noted("skipped", skipped.join("; "));
    }
    let mut detail = checked.join(", ");
    if !skipped.is_empty() {
        let _ = write!(detail, " ({})", skipped.join("; "));
    }
    Check::ok(detail)
}

/// Asks `addr` one question over UDP, with `subnet` as EDNS Client Subnet when given.
async fn dns_query(
    addr: SocketAddr,
    name: &str,
    rtype: hickory_proto::rr::RecordType,
    subnet: Option<&str>,
) -> Result<hickory_proto::op::Message, String> {
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::Name;
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    use std::str::FromStr;
    let qname = Name::from_ascii(name).map_err(|e| e.to_string())?;
    let mut msg = Message::query();
    let id = rand_id();
    msg.metadata.id = id;
    msg.add_query(Query::query(qname, rtype));
    if let Some(subnet) = subnet {
        let ecs = ClientSubnet::from_str(subnet).map_err(|e| format!("{subnet}: {e}"))?;
        let mut edns = Edns::new();
        edns.options_mut().insert(EdnsOption::Subnet(ecs));
        msg.set_edns(edns);
    }
    let bytes = msg.to_vec().map_err(|e| e.to_string())?;
    let bind: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    socket.connect(addr).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(PROBE, async {
        socket.send(&bytes).await.map_err(|e| e.to_string())?;
        loop {
            let n = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
            // Anything that is not the answer to this question is ignored.
            if let Ok(reply) = Message::from_vec(&buf[..n])
                && reply.metadata.id == id
            {
                return Ok(reply);
            }
        }
    })
    .await
    .map_err(|_| "no DNS answer".to_owned())?
}

fn rand_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ (nanos >> 16)) as u16
}

/// `http`: `GET /` for each domain and alias answers below 500.
async fn http_check(addr: SocketAddr, sites: &[Site]) -> Check {
    let hosts: Vec<&str> = if sites.is_empty() {
        vec!["localhost"]
    } else {
        sites.iter().flat_map(Site::hosts).collect()
    };
    let mut seen = Vec::new();
    for host in hosts {
        match http_status(addr, host).await {
            Ok(code) if code < 500 => seen.push(format!("{host} {code}")),
            Ok(code) => return Check::bad(format!("{addr} answered {host} with {code}")),
            Err(e) => return Check::bad(format!("{addr} ({host}): {e}")),
        }
    }
    Check::ok(seen.join(", "))
}

/// The status code of `GET /` for `host` at `addr`.
async fn http_status(addr: SocketAddr, host: &str) -> Result<u16, String> {
    // Names come from the node; one that is not a host name never reaches a request line.
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
    {
        return Err(format!("{host:?} is not a host name"));
    }
    tokio::time::timeout(PROBE, async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = vec![0u8; 64];
        let n = s.read(&mut head).await.map_err(|e| e.to_string())?;
        let line = String::from_utf8_lossy(&head[..n]).into_owned();
        line.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
    })
    .await
    .map_err(|_| "no HTTP answer".to_owned())?
}

/// `cert`: the certificate served for each domain and alias names it and has at least
/// [`CERT_MIN_DAYS`] left at `now`; hosts without one yet are noted, not failed, but a
/// host the cluster `held` a certificate for (expired, or valid and not served) is red.
async fn cert_check(
    addr: SocketAddr,
    sites: &[Site],
    held: Option<&[CertificateSummary]>,
    now: SystemTime,
) -> Check {
    if sites.is_empty() {
        return Check::noted("skipped", "no domains");
    }
    let (mut good, mut none) = (Vec::new(), Vec::new());
    for host in sites.iter().flat_map(Site::hosts) {
        match served_leaf(addr, host).await {
            Ok(Some(der)) => match judge_leaf(&der, host, now) {
                Ok(fine) => good.push(fine),
                Err(bad) => return Check::bad(format!("{addr}: {bad}")),
            },
            Ok(None) => {
                if let Some(bad) = held.and_then(|h| unserved(h, host, now)) {
                    return Check::bad(format!("{addr}: {bad}"));
                }
                none.push(host);
            }
            Err(e) => return Check::bad(format!("{addr} ({host}): {e}")),
        }
    }
    if good.is_empty() {
        return Check::noted(
            "http only",
            format!("HTTP only, no certificate yet for {}", none.join(", ")),
        );
    }
    let mut detail = good.join("; ");
    if !none.is_empty() {
        let _ = write!(detail, "; no certificate yet for {}", none.join(", "));
    }
    Check::ok(detail)
}

/// Why it is wrong that no certificate is served for `host` when the cluster holds
/// `held`: the newest covering it expired (renewal failed), or is valid and not served.
fn unserved(held: &[CertificateSummary], host: &str, now: SystemTime) -> Option<String> {
    let now_ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let newest = held
        .iter()
        .filter(|c| c.names.iter().any(|n| covers(n, host)))
        .max_by_key(|c| c.not_after_ms)?;
    let until = format_ms(newest.not_after_ms);
    if newest.not_after_ms <= now_ms {
        Some(format!(
            "{host}: its newest certificate expired on {until} and was not renewed"
        ))
    } else if newest.not_before_ms <= now_ms {
        Some(format!(
            "{host}: the cluster holds a certificate valid until {until}, but it is not served"
        ))
    } else {
        None
    }
}

/// Whether certificate name `pattern` covers `host`: equal, or a `*.` wildcard for exactly
/// one non-empty leftmost label (case-insensitive).
fn covers(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    pattern == host
        || pattern.strip_prefix("*.").is_some_and(|parent| {
            host.split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent)
        })
}

/// A unix time in ms as a certificate date (`Nov 25 21:58:05 2031 +00:00`).
fn format_ms(ms: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(ms.div_euclid(1000))
        .map_or_else(|_| format!("{ms} ms"), |t| t.to_string())
}

/// Records the leaf a server presents and accepts it: the check judges names and dates
/// itself, not the chain (signatures over the handshake are still verified).
#[derive(Debug)]
struct LeafCatcher {
    leaf: Mutex<Option<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for LeafCatcher {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self
            .leaf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(end_entity.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The leaf certificate (DER) `addr` serves for SNI `host`; `None` when the server
/// refuses the handshake with an alert (it has no certificate for the name).
async fn served_leaf(addr: SocketAddr, host: &str) -> Result<Option<Vec<u8>>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let catcher = Arc::new(LeafCatcher {
        leaf: Mutex::new(None),
        provider: Arc::clone(&provider),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&catcher) as _)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| format!("`{host}` is not a server name"))?;
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        match tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(rustls::Error::AlertReceived(_)) => Ok(false),
                _ => Err(format!("TLS handshake: {e}")),
            },
        }
    };
    let served = tokio::time::timeout(PROBE, handshake)
        .await
        .map_err(|_| "no TLS answer".to_owned())??;
    if !served {
        return Ok(None);
    }
    let leaf = catcher
        .leaf
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    leaf.map(Some)
        .ok_or_else(|| "the handshake finished without a certificate".to_owned())
}

/// Judges a served leaf for `host` at `now`: `Ok` says how long it has left, `Err` why
/// it is red (unreadable, not naming the host, not yet valid, expired or expiring within
/// [`CERT_MIN_DAYS`]).
fn judge_leaf(der: &[u8], host: &str, now: SystemTime) -> Result<String, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("{host}: unreadable certificate: {e}"))?;
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let host = host.to_ascii_lowercase();
    if !names.iter().any(|n| covers(n, &host)) {
        return Err(format!(
            "{host}: the certificate served is for [{}], not {host}",
            names.join(", ")
        ));
    }
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let validity = cert.validity();
    let (from, until) = (validity.not_before, validity.not_after);
    if from.timestamp() > now {
        return Err(format!(
            "{host}: the certificate is not valid before {from}"
        ));
    }
    let left = until.timestamp() - now;
    if left <= 0 {
        return Err(format!("{host}: the certificate expired on {until}"));
    }
    let days = left / 86_400;
    if days < CERT_MIN_DAYS {
        return Err(format!(
            "{host}: the certificate expires in {days} days ({until}); renewal is overdue"
        ));
    }
    Ok(format!("{host}: {days} days left (until {until})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_red_check_makes_the_report_red_and_is_spelled_out() {
        let mut checks = BTreeMap::new();
        for c in COLUMNS {
            checks.insert(c, Check::ok("fine"));
        }
        let green = MachineHealth {
            name: "vector".into(),
            ipv4: Ipv4Addr::new(192, 0, 2, 1),
            checks: checks.clone(),
        };
        checks.insert("dns", Check::bad("no DNS answer"));
        let red = MachineHealth {
            name: "klukai".into(),
            ipv4: Ipv4Addr::new(192, 0, 2, 2),
            checks,
        };
        let report = Report {
            machines: vec![green.clone()],
        };
        assert!(report.all_green());
        assert!(report.table().contains("all green"));
        let report = Report {
            machines: vec![green, red],
        };
        assert!(!report.all_green());
        assert_eq!(report.red(), ["klukai"]);
        assert!(report.table().contains("klukai dns: no DNS answer"));
        assert!(report.json().contains("\"ok\": false"));
        assert!(!Report { machines: vec![] }.all_green());
    }

    #[test]
    fn a_noted_check_stays_green_and_says_why_in_its_cell() {
        let mut checks = BTreeMap::new();
        for c in COLUMNS {
            checks.insert(c, Check::ok("fine"));
        }
        checks.insert(
            "cert",
            Check::noted("http only", "HTTP only, no certificate yet for example.com"),
        );
        let report = Report {
            machines: vec![MachineHealth {
                name: "vector".into(),
                ipv4: Ipv4Addr::new(192, 0, 2, 1),
                checks,
            }],
        };
        assert!(report.all_green());
        let table = report.table();
        assert!(
            table.lines().nth(1).unwrap().contains("http only"),
            "{table}"
        );
        assert!(
            table.contains("vector cert: HTTP only, no certificate yet"),
            "{table}"
        );
        assert!(report.json().contains("\"note\": \"http only\""));
    }

    #[tokio::test]
    async fn a_host_name_from_the_node_never_reaches_the_request_line_unchecked() {
        let site = Site {
            domain: "example.com\r\nX-Injected: 1".into(),
            aliases: Vec::new(),
        };
        // Nothing listens on the discard port: the name is refused before connecting.
        let check = http_check("127.0.0.1:9".parse().unwrap(), &[site]).await;
        assert!(!check.ok);
        assert!(
            check.detail.contains("is not a host name"),
            "{}",
            check.detail
        );
    }

    #[test]
    fn geo_names_are_the_apex_and_the_aliases_inside_the_domain() {
        let site = Site {
            domain: "example.com".into(),
            aliases: vec![
                "www.example.com".into(),
                "old-domain.com".into(),
                "wwwexample.com".into(),
                "a.b.example.com".into(),
            ],
        };
        let names: Vec<&str> = site.geo_names().collect();
        assert_eq!(names, ["example.com", "www.example.com", "a.b.example.com"]);
        assert_eq!(site.hosts().count(), 5);
    }

    /// Unix time of a day, `days` after 1970-01-01.
    fn day(days: u64) -> SystemTime {
        std::time::UNIX_EPOCH + Duration::from_secs(days * 86_400)
    }

    /// A leaf for `names`, valid 2026-01-01 to 2026-03-01.
    fn leaf(names: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 3, 1);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_served_leaf_is_judged_by_name_and_days_left() {
        const JAN_1: u64 = 20_454; // 2026-01-01
        let der = leaf(&["example.com", "*.example.com"]);
        // Mid-January: 45 days left.
        let fine = judge_leaf(&der, "example.com", day(JAN_1 + 14)).unwrap();
        assert!(fine.starts_with("example.com: 45 days left"), "{fine}");
        // The wildcard covers one label, not two, and not another domain.
        assert!(judge_leaf(&der, "WWW.example.com", day(JAN_1 + 14)).is_ok());
        let wrong = judge_leaf(&der, "a.b.example.com", day(JAN_1 + 14)).unwrap_err();
        assert!(wrong.contains("not a.b.example.com"), "{wrong}");
        assert!(judge_leaf(&der, "example.org", day(JAN_1 + 14)).is_err());
        // Fewer than 7 days left, expired, not yet valid: red.
        let soon = judge_leaf(&der, "example.com", day(JAN_1 + 55)).unwrap_err();
        assert!(soon.contains("expires in 4 days"), "{soon}");
        assert!(judge_leaf(&der, "example.com", day(JAN_1 + 52)).is_ok());
        let expired = judge_leaf(&der, "example.com", day(JAN_1 + 60)).unwrap_err();
        assert!(expired.contains("expired"), "{expired}");
        let early = judge_leaf(&der, "example.com", day(JAN_1 - 1)).unwrap_err();
        assert!(early.contains("not valid before"), "{early}");
        assert!(judge_leaf(b"not a certificate", "example.com", day(JAN_1)).is_err());
    }
}
