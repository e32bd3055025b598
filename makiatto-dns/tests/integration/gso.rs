//! UDP segmentation offload on the fast path: answers of one size to one client leave as one
//! segmented send, and the client still reads one datagram per answer, each exactly the answer
//! it gets on its own. The queries are queued on the server's sockets before the server starts,
//! so its first `recvmmsg` takes them all in one batch. In a network namespace of its own, the
//! loopback device's packet counter shows the coalescing: a segmented send crosses it as one
//! packet (without GSO, the 96 answers here are 96 packets).
//! Needs root (ip netns); skipped with a message otherwise.

use std::{
    collections::HashMap,
    net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket},
    os::fd::AsRawFd,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_proto::rr::RecordType;
use makiatto_dns::{DnsServer, ZoneHandle};
use nix::sched::{CloneFlags, setns};

use crate::{
    pktinfo::{bind_in, ip, is_root},
    support::{query, zone_set},
};

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// Packets sent on the namespace's loopback device.
fn lo_tx_packets(ns: &str) -> u64 {
    let out = Command::new("ip")
        .args(["-n", ns, "-s", "link", "show", "dev", "lo"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    lines.find(|l| l.trim_start().starts_with("TX:")).unwrap();
    lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no TX packet count in:\n{text}"))
}

/// The query kinds of the test: three answer sizes.
const KINDS: [(&str, RecordType, bool); 3] = [
    ("example.com.", RecordType::A, false),
    ("example.com.", RecordType::TXT, true),
    ("example.com.", RecordType::MX, true),
];

fn kind_query(id: u16) -> Vec<u8> {
    let (name, rtype, edns) = KINDS[usize::from(id) % KINDS.len()];
    query(id, name, rtype, edns)
}

/// Reads datagrams on `socket` until `count` have arrived or 5 s have passed.
fn read_answers(socket: &UdpSocket, count: usize) -> Vec<Vec<u8>> {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 65536];
    while answers.len() < count && Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            answers.push(buf[..n].to_vec());
        }
    }
    answers
}

#[test]
fn coalesced_answers_reach_the_client_as_separate_datagrams() {
    if !is_root() {
        eprintln!(
            "SKIPPED coalesced_answers_reach_the_client_as_separate_datagrams: needs root for ip netns"
        );
        return;
    }
    let ns = Namespace(format!("mkdns-g-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
    // A socket on an address (plain sendmmsg) and a wildcard one (packet info with every send).
    let server_v4 = bind_in(&ns.0, "127.0.0.1:0".parse().unwrap());
    let server_wild = bind_in(&ns.0, "[::]:0".parse().unwrap());
    let wild_port = server_wild.local_addr().unwrap().port();
    // The wildcard socket is dual-stack: IPv4 clients reach it as ::ffff:127.0.0.1.
    let targets: [SocketAddr; 3] = [
        server_v4.local_addr().unwrap(),
        SocketAddr::new("::1".parse().unwrap(), wild_port),
        SocketAddr::new("127.0.0.1".parse().unwrap(), wild_port),
    ];
    // Per target, two clients: 24 queries of three sizes interleaved, and 8 of one size.
    let mut clients = Vec::new();
    for target in targets {
        let local: SocketAddr = if target.is_ipv4() {
            "127.0.0.1:0".parse().unwrap()
        } else {
            "[::1]:0".parse().unwrap()
        };
        for ids in [0..24u16, 24..32] {
            let client = bind_in(&ns.0, local);
            client.connect(target).unwrap();
            for id in ids.clone() {
                client.send(&kind_query(id)).unwrap();
            }
            clients.push((client, ids));
        }
    }
    let before = lo_tx_packets(&ns.0);
    let zones = ZoneHandle::new(Arc::new(zone_set())).unwrap();
    let server = DnsServer::builder(zones)
        .udp(server_v4)
        .udp(server_wild)
        .start()
        .unwrap();
    let mut received: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
    for (c, (client, ids)) in clients.iter().enumerate() {
        received.push((c, read_answers(client, ids.len())));
    }
    let answer_packets = lo_tx_packets(&ns.0) - before;

    // Each kind's answer on its own, from a fresh client, as the reference.
    let reference: HashMap<(usize, usize), Vec<u8>> = (0..targets.len())
        .flat_map(|t| (0..KINDS.len()).map(move |k| (t, k)))
        .map(|(t, k)| {
            let local = clients[2 * t].0.local_addr().unwrap().ip();
            let client = bind_in(&ns.0, SocketAddr::new(local, 0));
            client.connect(targets[t]).unwrap();
            client.send(&kind_query(u16::try_from(k).unwrap())).unwrap();
            let answer = read_answers(&client, 1);
            assert_eq!(answer.len(), 1, "no answer to a lone query of kind {k}");
            ((t, k), answer[0].clone())
        })
        .collect();

    for (c, answers) in &received {
        let (client, ids) = &clients[*c];
        assert_eq!(
            answers.len(),
            ids.len(),
            "client {c} ({:?}) got {} datagrams for {} queries",
            client.local_addr(),
            answers.len(),
            ids.len()
        );
        let mut seen: Vec<u16> = Vec::new();
        for answer in answers {
            assert!(answer.len() >= 12, "short datagram {answer:?}");
            let id = u16::from_be_bytes([answer[0], answer[1]]);
            assert!(ids.contains(&id), "client {c}: unexpected id {id}");
            seen.push(id);
            let mut expected = reference[&(c / 2, usize::from(id) % KINDS.len())].clone();
            expected[..2].copy_from_slice(&id.to_be_bytes());
            assert_eq!(
                answer, &expected,
                "client {c}, id {id}: the datagram is not exactly the answer"
            );
        }
        seen.sort_unstable();
        assert_eq!(seen, ids.clone().collect::<Vec<_>>(), "client {c}");
    }
    // 96 answers; without coalescing they are 96 loopback packets.
    assert!(
        answer_packets < 96,
        "{answer_packets} loopback packets for 96 answers: none was coalesced"
    );
    eprintln!("96 answers crossed loopback as {answer_packets} packets");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(server.shutdown()).unwrap();
}

/// When the kernel refuses a segmented send, the answers still arrive, one datagram each. Here
/// the loopback MTU (1000) is below the answer size (about 1100 bytes), which GSO refuses
/// (segments are never fragmented) and a plain send fragments.
#[test]
fn refused_segmentation_falls_back_to_one_datagram_per_answer() {
    if !is_root() {
        eprintln!(
            "SKIPPED refused_segmentation_falls_back_to_one_datagram_per_answer: needs root for ip netns"
        );
        return;
    }
    let ns = Namespace(format!("mkdns-f-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "link", "set", "lo", "mtu", "1000", "up"]);
    let server_socket = bind_in(&ns.0, "127.0.0.1:0".parse().unwrap());
    let target = server_socket.local_addr().unwrap();
    let mut set = zone_set();
    set.zones[0].records.push(makiatto_dns::RecordEntry {
        name: "mid".into(),
        record_type: "TXT".into(),
        value: "m".repeat(1050),
        ttl: None,
    });
    let client = bind_in(&ns.0, "127.0.0.1:0".parse().unwrap());
    client.connect(target).unwrap();
    let burst = |first: u16| {
        for id in first..first + 8 {
            client
                .send(&query(id, "mid.example.com.", RecordType::TXT, true))
                .unwrap();
        }
    };
    burst(0);
    let zones = ZoneHandle::new(Arc::new(set)).unwrap();
    let server = DnsServer::builder(zones)
        .udp(server_socket)
        .start()
        .unwrap();
    let first = read_answers(&client, 8);
    // A second burst once the first is answered: it meets the sender after the refusal.
    burst(8);
    let second = read_answers(&client, 8);
    for (answers, ids) in [(first, 0..8u16), (second, 8..16)] {
        assert_eq!(answers.len(), 8, "answers to queries {ids:?}");
        for answer in &answers {
            assert!(
                answer.len() > 1000,
                "expected a ~1100-byte answer, got {} bytes",
                answer.len()
            );
            let id = u16::from_be_bytes([answer[0], answer[1]]);
            assert!(ids.contains(&id), "unexpected id {id}");
            assert_eq!(answers[0][2..], answer[2..], "answers differ beyond the id");
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(server.shutdown()).unwrap();
}

/// The Internet checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap()
}

/// Sends, inside namespace `ns`, what a router whose next hop has a small MTU sends about
/// the UDP datagrams of `len` bytes from `from` to `to`, addressed to `from`'s host, and what
/// anyone can forge who guesses the two addresses and ports: an ICMP "fragmentation needed"
/// with MTU 576 (IPv4), an ICMPv6 "packet too big" with MTU 1280 (IPv6).
fn forge_path_mtu(ns: &str, from: SocketAddr, to: SocketAddr, len: u16) {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6, sendto,
        socket,
    };
    let udp_len = len + 8;
    let mut udp = Vec::new();
    udp.extend_from_slice(&from.port().to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    let message = match (from, to) {
        (SocketAddr::V4(from), SocketAddr::V4(to)) => {
            // The quoted header of the datagram that "did not fit": IPv4 (DF set), then UDP.
            let mut quoted = vec![0x45, 0];
            quoted.extend_from_slice(&(udp_len + 20).to_be_bytes());
            quoted.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
            quoted.extend_from_slice(&from.ip().octets());
            quoted.extend_from_slice(&to.ip().octets());
            let sum = checksum(&quoted);
            quoted[10..12].copy_from_slice(&sum.to_be_bytes());
            // Type 3 (unreachable), code 4 (fragmentation needed), next-hop MTU 576.
            let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x02, 0x40];
            icmp.extend_from_slice(&quoted);
            icmp.extend_from_slice(&udp);
            let sum = checksum(&icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            icmp
        }
        (SocketAddr::V6(from), SocketAddr::V6(to)) => {
            // Type 2 (packet too big), MTU 1280, then the IPv6 and UDP headers quoted. The
            // kernel fills in the checksum of ICMPv6 raw sockets.
            let mut icmp = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00, 0x60, 0, 0, 0];
            icmp.extend_from_slice(&udp_len.to_be_bytes());
            icmp.extend_from_slice(&[17, 64]);
            icmp.extend_from_slice(&from.ip().octets());
            icmp.extend_from_slice(&to.ip().octets());
            icmp.extend_from_slice(&udp);
            icmp
        }
        _ => panic!("{from} and {to} are not of one family"),
    };
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        setns(&f, CloneFlags::CLONE_NEWNET).unwrap();
        let (family, protocol) = if from.is_ipv4() {
            (AddressFamily::Inet, SockProtocol::Icmp)
        } else {
            (AddressFamily::Inet6, SockProtocol::IcmpV6)
        };
        let raw = socket(family, SockType::Raw, SockFlag::empty(), protocol).unwrap();
        let sent = match from {
            SocketAddr::V4(a) => sendto(
                raw.as_raw_fd(),
                &message,
                &SockaddrIn::from(SocketAddrV4::new(*a.ip(), 0)),
                MsgFlags::empty(),
            ),
            SocketAddr::V6(a) => sendto(
                raw.as_raw_fd(),
                &message,
                &SockaddrIn6::from(SocketAddrV6::new(*a.ip(), 0, 0, 0)),
                MsgFlags::empty(),
            ),
        };
        sent.unwrap();
    })
    .join()
    .unwrap();
}

/// A query for `name` TXT advertising a 4096-byte EDNS payload.
fn large_query(id: u16, name: &str) -> Vec<u8> {
    use hickory_proto::{
        op::{Edns, Message, Query},
        rr::Name,
    };
    let mut m = Message::query();
    m.metadata.id = id;
    m.add_query(Query::query(
        Name::from_ascii(name).unwrap(),
        RecordType::TXT,
    ));
    let mut e = Edns::new();
    e.set_max_payload(4096);
    m.set_edns(e);
    m.to_vec().unwrap()
}

/// Review finding: the path MTU that a forged ICMP "fragmentation needed" or ICMPv6 "packet
/// too big" sets (down to 552 bytes for IPv4, 1280 for IPv6) must not reach the server's
/// sockets, or the kernel fragments answers to that client and refuses their segmented sends.
/// The forged messages are first shown to work on plain sockets (their datagrams then leave
/// in fragments, and the routes to the clients keep the lowered MTU); the server's answers to
/// those same clients still leave whole: ~1100 bytes over IPv4, from a socket on an address
/// and from a dual-stack wildcard one (whose IPv4 clients take the IPv4 path), and ~1400 bytes
/// over IPv6 (the server allows 4096-byte answers here; at the default 1232 they always fit
/// IPv6's minimum MTU).
#[test]
fn forged_path_mtu_messages_do_not_fragment_answers() {
    if !is_root() {
        eprintln!(
            "SKIPPED forged_path_mtu_messages_do_not_fragment_answers: needs root for ip netns"
        );
        return;
    }
    let ns = Namespace(format!("mkdns-p-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
    let client4 = bind_in(&ns.0, "127.0.0.1:0".parse().unwrap());
    let client6 = bind_in(&ns.0, "[::1]:0".parse().unwrap());

    // The forgeries work on sockets that follow path MTU discovery (the default).
    for (client, bind, len) in [
        (&client4, "127.0.0.1:0", 1100u16),
        (&client6, "[::1]:0", 1400),
    ] {
        let plain = bind_in(&ns.0, bind.parse().unwrap());
        let to = client.local_addr().unwrap();
        forge_path_mtu(&ns.0, plain.local_addr().unwrap(), to, len);
        let before = lo_tx_packets(&ns.0);
        plain.send_to(&vec![7u8; usize::from(len)], to).unwrap();
        let packets = lo_tx_packets(&ns.0) - before;
        assert!(
            packets >= 2,
            "the forged message did not lower the path MTU of a plain socket to {to} \
             ({packets} packet)"
        );
        assert_eq!(read_answers(client, 1).len(), 1);
    }

    let server_v4 = bind_in(&ns.0, "127.0.0.1:0".parse().unwrap());
    let server_wild = bind_in(&ns.0, "[::]:0".parse().unwrap());
    let wild_port = server_wild.local_addr().unwrap().port();
    let cases = [
        (server_v4.local_addr().unwrap(), &client4, "mid", 1000),
        (
            SocketAddr::new("127.0.0.1".parse().unwrap(), wild_port),
            &client4,
            "mid",
            1000,
        ),
        (
            SocketAddr::new("::1".parse().unwrap(), wild_port),
            &client6,
            "mid6",
            1300,
        ),
    ];
    let mut set = zone_set();
    for (name, len) in [("mid", 1050), ("mid6", 1350)] {
        set.zones[0].records.push(makiatto_dns::RecordEntry {
            name: name.into(),
            record_type: "TXT".into(),
            value: "m".repeat(len),
            ttl: None,
        });
    }
    let zones = ZoneHandle::new(Arc::new(set)).unwrap();
    let server = DnsServer::builder(zones)
        .max_udp_payload(4096)
        .udp(server_v4)
        .udp(server_wild)
        .start()
        .unwrap();
    for (target, client, name, min_len) in cases {
        let answer_len = u16::try_from(min_len + 100).unwrap();
        forge_path_mtu(&ns.0, target, client.local_addr().unwrap(), answer_len);
        let before = lo_tx_packets(&ns.0);
        for id in 0..8 {
            client
                .send_to(&large_query(id, &format!("{name}.example.com.")), target)
                .unwrap();
        }
        let answers = read_answers(client, 8);
        let packets = lo_tx_packets(&ns.0) - before;
        assert_eq!(answers.len(), 8, "answers from {target}");
        for answer in &answers {
            assert!(
                answer.len() > min_len,
                "a {}-byte answer from {target}",
                answer.len()
            );
        }
        // 8 queries, and at most one packet per answer (fewer when segmented sends coalesce
        // them); fragmented at the forged MTU, the answers alone would be 16 packets or more.
        assert!(
            packets <= 16,
            "{packets} loopback packets for 8 queries and 8 answers from {target}: answers were \
             fragmented after a forged ICMP message"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(server.shutdown()).unwrap();
}
