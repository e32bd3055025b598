//! `maki health`: every machine of the profile checked from the user's side.
//!
//! Per machine: SSH reachable, the `makiatto` service active, the admin API answering (and
//! its version), the node's membership view (it must see every other machine alive), DNS
//! on its public address (each domain's SOA answered authoritatively), HTTP on its public
//! address (each domain answered below 500), and store replication (the node's active
//! deployment of each domain is the same as every other node's). A machine that cannot be
//! reached is red in every column it could not check.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::machine::{AdminLink, options_for};
use crate::profile::{Machine, Profile};
use crate::ssh::Target;

/// How long one network check may take.
const PROBE: Duration = Duration::from_secs(3);

/// One check's outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    /// Whether it passed.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
}

impl Check {
    fn ok(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            detail: detail.into(),
        }
    }

    fn bad(detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            detail: detail.into(),
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
    /// Checks by name: `ssh`, `service`, `api`, `membership`, `dns`, `http`, `store`.
    pub checks: BTreeMap<&'static str, Check>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Per machine, in profile order.
    pub machines: Vec<MachineHealth>,
}

const COLUMNS: [&str; 7] = [
    "ssh",
    "service",
    "api",
    "membership",
    "dns",
    "http",
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

    /// The report as a table, then the failures spelled out.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = write!(out, "{:<16}", "NAME");
        for c in COLUMNS {
            let _ = write!(out, " {c:<10}");
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        let mut problems = String::new();
        for m in &self.machines {
            let _ = write!(out, "{:<16}", m.name);
            for c in COLUMNS {
                let cell = match m.checks.get(c) {
                    Some(check) if check.ok => "ok",
                    Some(check) => {
                        let _ = writeln!(problems, "  {} {c}: {}", m.name, check.detail);
                        "FAIL"
                    }
                    None => "-",
                };
                let _ = write!(out, " {cell:<10}");
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
        out
    }
}

/// What one node says about the cluster.
#[derive(Debug, Default)]
struct NodeView {
    domains: Vec<String>,
    active: BTreeMap<String, Option<String>>,
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
    // Domains known anywhere; then DNS, HTTP and replication per machine.
    let mut domains: Vec<String> = views
        .iter()
        .flatten()
        .flat_map(|v| v.domains.iter().cloned())
        .collect();
    domains.sort();
    domains.dedup();
    for (m, (health, view)) in profile.machines.iter().zip(machines.iter_mut().zip(&views)) {
        health.checks.insert("dns", dns_check(m, &domains).await);
        health.checks.insert("http", http_check(m, &domains).await);
        health
            .checks
            .insert("store", store_check(view.as_ref(), &views, &domains));
    }
    Report { machines }
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
        .root_output("systemctl is-active makiatto.service", b"")
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
    match tokio::time::timeout(PROBE, c.membership()).await {
        Ok(Ok(view)) => {
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
    let mut view = NodeView::default();
    for d in &domains {
        let list = tokio::time::timeout(PROBE, c.deployments(d))
            .await
            .ok()?
            .ok()?;
        view.active
            .insert(d.clone(), list.into_iter().find(|x| x.active).map(|x| x.id));
    }
    view.domains = domains;
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

async fn dns_check(m: &Machine, domains: &[String]) -> Check {
    let addr = SocketAddr::from((m.ipv4, 53));
    let names: Vec<&str> = if domains.is_empty() {
        vec!["."]
    } else {
        domains.iter().map(String::as_str).collect()
    };
    let mut answered = 0;
    for name in &names {
        match dns_soa(addr, name).await {
            Ok(true) => answered += 1,
            Ok(false) if domains.is_empty() => answered += 1, // a refusal is an answer
            Ok(false) => return Check::bad(format!("{addr} gave no authoritative SOA for {name}")),
            Err(e) => return Check::bad(format!("{addr}: {e}")),
        }
    }
    Check::ok(format!("{answered} zones answered"))
}

/// Asks `addr` for `name`'s SOA over UDP; `Ok(true)` for an authoritative answer.
async fn dns_soa(addr: SocketAddr, name: &str) -> Result<bool, String> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let qname = Name::from_ascii(name).map_err(|e| e.to_string())?;
    let mut msg = Message::query();
    msg.metadata.id = rand_id();
    msg.add_query(Query::query(qname, RecordType::SOA));
    let bytes = msg.to_vec().map_err(|e| e.to_string())?;
    let socket = tokio::net::UdpSocket::bind(("0.0.0.0", 0))
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PROBE, async {
        socket.send_to(&bytes, addr).await?;
        socket.recv(&mut buf).await
    })
    .await
    .map_err(|_| "no DNS answer".to_owned())?
    .map_err(|e| e.to_string())?;
    let reply = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
    Ok(reply.metadata.authoritative && !reply.answers.is_empty())
}

fn rand_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ (nanos >> 16)) as u16
}

async fn http_check(m: &Machine, domains: &[String]) -> Check {
    let addr = SocketAddr::from((m.ipv4, 80));
    let hosts: Vec<&str> = if domains.is_empty() {
        vec!["localhost"]
    } else {
        domains.iter().map(String::as_str).collect()
    };
    let mut seen = Vec::new();
    for host in hosts {
        match http_status(addr, host).await {
            Ok(code) if code < 500 => seen.push(format!("{host} {code}")),
            Ok(code) => return Check::bad(format!("{addr} answered {host} with {code}")),
            Err(e) => return Check::bad(format!("{addr}: {e}")),
        }
    }
    Check::ok(seen.join(", "))
}

/// The status code of `GET /` for `host` at `addr`.
async fn http_status(addr: SocketAddr, host: &str) -> Result<u16, String> {
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
}
