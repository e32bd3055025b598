//! Connection caps and timeouts of TCP, and response rate limiting on UDP.
//! Clients use other loopback addresses (127.0.0.2, 127.0.1.1) as second sources.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    num::NonZeroU32,
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_proto::rr::RecordType;
use makiatto_dns::{NoLocator, RateLimit};
use socket2::{Domain, Socket, Type};

use crate::support::{TestServer, flags, query, run, status, zone_set};

/// A TCP connection to `server` from `source`.
fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let source: IpAddr = source.parse().unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    socket.connect(&server.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    stream
}

/// Sends one framed query and reads the framed answer; `None` when the server closed.
fn tcp_query(stream: &mut TcpStream, id: u16) -> Option<Vec<u8>> {
    let q = query(id, "example.com.", RecordType::NS, false);
    let mut frame = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&q);
    stream.write_all(&frame).ok()?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).ok()?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut answer).ok()?;
    assert_eq!(answer[..2], id.to_be_bytes());
    Some(answer)
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn dig_from(s: &TestServer, source: &str, args: &[&str]) -> String {
    let port = s.port();
    run(
        "dig",
        &[
            &[
                "@127.0.0.1",
                "-p",
                &port,
                "-b",
                source,
                "+tries=1",
                "+time=3",
            ],
            args,
        ]
        .concat(),
    )
}

#[test]
fn tcp_connection_caps_per_client_and_listener() {
    let s = TestServer::start_with(zone_set(), Arc::new(NoLocator), |b| {
        b.max_connections_per_client(3).max_connections(5)
    });
    // Three connections from 127.0.0.1 are served, several queries each.
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.1", s.addr)).collect();
    for (i, c) in held.iter_mut().enumerate() {
        let id = u16::try_from(i).unwrap();
        assert!(tcp_query(c, id).is_some(), "connection {i}");
        assert!(
            tcp_query(c, id + 100).is_some(),
            "connection {i}, second query"
        );
    }
    // The fourth from the same address is closed at once.
    let mut over = connect_from("127.0.0.1", s.addr);
    assert!(
        tcp_query(&mut over, 9).is_none(),
        "4th connection from one address"
    );
    let out = dig_from(&s, "127.0.0.1", &["example.com", "NS", "+tcp"]);
    assert!(
        !out.contains("status:"),
        "dig +tcp over the per-client cap:\n{out}"
    );
    // Another address still gets answers over TCP.
    let out = dig_from(&s, "127.0.0.2", &["example.com", "NS", "+tcp"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    // Two held from 127.0.0.2 fill the listener (5): a third address is closed too.
    let mut second: Vec<TcpStream> = (0..2).map(|_| connect_from("127.0.0.2", s.addr)).collect();
    for c in &mut second {
        assert!(tcp_query(c, 1).is_some());
    }
    let mut third = connect_from("127.0.0.3", s.addr);
    assert!(tcp_query(&mut third, 3).is_none(), "listener full");
    // Closing connections gives their slots back.
    held.clear();
    second.clear();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = connect_from("127.0.0.1", s.addr);
        if tcp_query(&mut c, 7).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "slots never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tcp_idle_and_slow_clients_are_cut_off() {
    let s = TestServer::start_with(zone_set(), Arc::new(NoLocator), |b| {
        b.stream_timeout(Duration::from_millis(300))
            .stream_io_timeout(Duration::from_millis(300))
    });
    // Answered, then idle: closed after the idle timeout.
    let mut idle = connect_from("127.0.0.1", s.addr);
    assert!(tcp_query(&mut idle, 1).is_some());
    let t = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(3)), "idle");
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    // One byte of a length, then nothing: closed after the read timeout.
    let mut slow = connect_from("127.0.0.1", s.addr);
    slow.write_all(&[0]).unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(3)),
        "stalled query"
    );
}

/// Sends `n` identical queries from `source` at once and counts (full answers, TC answers).
fn burst(s: &TestServer, source: &str, n: u16) -> (usize, usize) {
    let sock = UdpSocket::bind((source, 0)).unwrap();
    for id in 0..n {
        sock.send_to(&query(id, "example.com.", RecordType::NS, true), s.addr)
            .unwrap();
    }
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let (mut full, mut tc) = (0, 0);
    let mut buf = [0u8; 4096];
    while let Ok(len) = sock.recv(&mut buf) {
        assert!(len >= 12);
        if buf[2] & 0x02 != 0 {
            assert_eq!(buf[6..12], [0; 6], "a slip answer carries no records");
            tc += 1;
        } else {
            full += 1;
        }
    }
    (full, tc)
}

#[test]
fn rate_limit_drops_and_slips_per_prefix() {
    let s = TestServer::start_with(zone_set(), Arc::new(NoLocator), |b| {
        b.rate_limit(RateLimit::new(NonZeroU32::new(10).unwrap()).slip(2))
    });
    let (full, tc) = burst(&s, "127.0.0.1", 100);
    // A burst of one second's worth (10), then every second limited answer slips with TC.
    assert!((10..=12).contains(&full), "full answers: {full}");
    assert!((43..=46).contains(&tc), "truncated answers: {tc}");
    // Another /24 is not limited.
    let out = dig_from(&s, "127.0.1.1", &["example.com", "NS", "+ignore"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(!flags(&out).contains(&"tc".to_string()), "{out}");
    // TCP from the limited prefix is not limited.
    let out = dig_from(&s, "127.0.0.1", &["example.com", "NS", "+tcp"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    // Another answer (name) from the limited prefix has its own bucket.
    let out = dig_from(&s, "127.0.0.1", &["mail.example.com", "A", "+ignore"]);
    assert!(!flags(&out).contains(&"tc".to_string()), "{out}");
    // It is a rate, not a ban: the bucket refills.
    let deadline = Instant::now() + Duration::from_secs(5);
    while burst(&s, "127.0.0.1", 1).0 == 0 {
        assert!(Instant::now() < deadline, "bucket never refilled");
    }
}

#[test]
fn rate_limited_clients_retry_over_tcp() {
    let s = TestServer::start_with(zone_set(), Arc::new(NoLocator), |b| {
        b.rate_limit(RateLimit::new(NonZeroU32::MIN).slip(1))
    });
    let (full, tc) = burst(&s, "127.0.0.1", 20);
    assert_eq!((full, tc), (1, 19));
    // kdig gets the slip's TC and retries over TCP, as a resolver would: the answer it
    // prints came over TCP.
    let out = s.kdig(&["example.com", "NS"]);
    assert!(out.contains("(TCP)"), "{out}");
    assert_eq!(status(&out), "NOERROR", "{out}");
}
