//! Review finding #16: on a host with several addresses, a server bound to a wildcard address
//! answers from the address each query was sent to. Two network namespaces joined by a veth
//! pair: the server's side has two IPv4 and two IPv6 addresses, the client's one of each. An
//! answer from another source than the one asked never reaches `dig` (its UDP socket is
//! connected to the server address), so dig times out: that is what this test saw with
//! packet info turned off, for the second address.
//! Needs root (ip netns); skipped with a message otherwise.

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
    sync::Arc,
};

use makiatto_dns::{DnsServer, ZoneHandle};
use nix::sched::{CloneFlags, setns};

use crate::support::{status, zone_set};

pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

pub(crate) fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip (iproute2) is not available ({e})"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The two namespaces, deleted on drop.
struct Namespaces {
    server: String,
    client: String,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

fn setup() -> Namespaces {
    let id = std::process::id();
    let ns = Namespaces {
        server: format!("mkdns-s-{id}"),
        client: format!("mkdns-c-{id}"),
    };
    let (s, c) = (ns.server.as_str(), ns.client.as_str());
    ip(&["netns", "add", s]);
    ip(&["netns", "add", c]);
    ip(&[
        "link", "add", "mkd0", "netns", s, "type", "veth", "peer", "name", "mkd1", "netns", c,
    ]);
    for (n, dev, addrs) in [
        (
            s,
            "mkd0",
            ["10.77.0.1/24", "10.77.0.2/24", "fd77::1/64", "fd77::2/64"].as_slice(),
        ),
        (c, "mkd1", ["10.77.0.100/24", "fd77::100/64"].as_slice()),
    ] {
        for a in addrs {
            let mut args = vec!["-n", n, "addr", "add", a, "dev", dev];
            if a.contains(':') {
                args.push("nodad");
            }
            ip(&args);
        }
        ip(&["-n", n, "link", "set", dev, "up"]);
        ip(&["-n", n, "link", "set", "lo", "up"]);
    }
    ns
}

/// Binds `addr` inside network namespace `ns` (from a thread that joins it).
pub(crate) fn bind_in(ns: &str, addr: SocketAddr) -> UdpSocket {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        setns(&f, CloneFlags::CLONE_NEWNET).unwrap();
        UdpSocket::bind(addr).unwrap()
    })
    .join()
    .unwrap()
}

fn dig_in(ns: &str, server: &str, port: u16) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "dig", &format!("@{server}"), "-p"])
        .arg(port.to_string())
        .args(["example.com", "NS", "+tries=1", "+time=2"])
        .output()
        .expect("dig is not available: run scripts/setup.d/20-dns.sh");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn wildcard_socket_answers_from_the_queried_address() {
    if !is_root() {
        eprintln!(
            "SKIPPED wildcard_socket_answers_from_the_queried_address: needs root for ip netns"
        );
        return;
    }
    let ns = setup();
    let v4 = bind_in(&ns.server, "0.0.0.0:0".parse().unwrap());
    // Dual-stack: IPv6 clients, and IPv4 clients as ::ffff:a.b.c.d.
    let v6 = bind_in(&ns.server, "[::]:0".parse().unwrap());
    let (p4, p6) = (
        v4.local_addr().unwrap().port(),
        v6.local_addr().unwrap().port(),
    );
    let zones = ZoneHandle::new(Arc::new(zone_set())).unwrap();
    let server = DnsServer::builder(zones).udp(v4).udp(v6).start().unwrap();
    for (addr, port) in [
        ("10.77.0.1", p4),
        ("10.77.0.2", p4),
        ("10.77.0.1", p6),
        ("10.77.0.2", p6),
        ("fd77::1", p6),
        ("fd77::2", p6),
    ] {
        let out = dig_in(&ns.client, addr, port);
        assert!(
            !out.contains("unexpected source"),
            "{addr} port {port}:\n{out}"
        );
        assert_eq!(status(&out), "NOERROR", "{addr} port {port}:\n{out}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(server.shutdown()).unwrap();
}
