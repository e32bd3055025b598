//! A node out of file descriptors: the TCP accept loop backs off instead of spinning, and
//! serves the queued connections once descriptors are free again. Its own test binary
//! because it lowers `RLIMIT_NOFILE` and measures the CPU time of the whole process.
#![cfg(target_os = "linux")]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RecordType},
};
use makiatto_dns::{DnsServer, ZoneHandle, ZoneSet};
use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};
use socket2::{Domain, Socket, Type};

fn cpu_time() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap())
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap())
    };
    micros(usage.user_time()) + micros(usage.system_time())
}

fn tcp_query(stream: &mut TcpStream) -> Option<Message> {
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.add_query(Query::query(
        Name::from_ascii("example.com.").unwrap(),
        RecordType::NS,
    ));
    let q = m.to_vec().unwrap();
    let mut frame = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&q);
    stream.write_all(&frame).ok()?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).ok()?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut answer).ok()?;
    Message::from_vec(&answer).ok()
}

#[test]
fn accept_backs_off_when_out_of_descriptors_and_recovers() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let set = ZoneSet::from_toml(include_str!("../examples/zone.toml")).unwrap();
    let zones = ZoneHandle::new(Arc::new(set)).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = rt
        .block_on(async { DnsServer::builder(zones).tcp(listener).start() })
        .unwrap();
    let mut first = TcpStream::connect(addr).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(tcp_query(&mut first).is_some(), "served before the test");
    drop(first);

    // Client sockets made now, connected once the process is out of descriptors.
    let pending: Vec<Socket> = (0..4)
        .map(|_| Socket::new(Domain::IPV4, Type::STREAM, None).unwrap())
        .collect();
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let open = u64::try_from(std::fs::read_dir("/proc/self/fd").unwrap().count()).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, open + 32, hard).unwrap();
    let mut fillers = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => fillers.push(f),
            Err(e) if e.raw_os_error() == Some(nix::libc::EMFILE) => break,
            Err(e) => panic!("filling descriptors: {e}"),
        }
    }
    let target: SocketAddr = addr;
    for s in &pending {
        // The kernel completes the handshake; the server's accept() gets EMFILE.
        s.connect(&target.into()).unwrap();
    }

    // Over one second the process must stay nearly idle (a spinning accept loop burns a core).
    let before = cpu_time();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_time().saturating_sub(before);

    // Descriptors back: the queued connections are accepted and answered.
    drop(fillers);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    assert!(
        used < Duration::from_millis(200),
        "{used:?} of CPU in 1 s while out of descriptors"
    );
    for (i, s) in pending.into_iter().enumerate() {
        let mut stream: TcpStream = s.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert!(tcp_query(&mut stream).is_some(), "queued connection {i}");
    }
    rt.block_on(server.shutdown()).unwrap();
}
