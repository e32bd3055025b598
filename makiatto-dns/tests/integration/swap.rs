//! Zone swaps under query load: no lost and no wrong answers.

use std::{
    net::UdpSocket,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{RData, RecordType},
};
use makiatto_dns::{NoLocator, RecordEntry};

use crate::support::{TestServer, query, zone_set};

fn version(n: u8) -> makiatto_dns::ZoneSet {
    let mut set = zone_set();
    set.zones[0].records.push(RecordEntry {
        name: "v".into(),
        record_type: "A".into(),
        value: format!("10.0.0.{n}"),
        ttl: None,
    });
    set
}

#[test]
fn swap_under_load_loses_nothing() {
    const SWAPS: u8 = 60;
    let server = TestServer::start(version(0), Arc::new(NoLocator));
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let addr = server.addr;
    let clients: Vec<_> = (0..3u16)
        .map(|c| {
            let stop = stop.clone();
            let answered = answered.clone();
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut buf = [0u8; 4096];
                let mut last_seen = 0u8;
                let mut id = c.wrapping_mul(20_000);
                while !stop.load(Ordering::Relaxed) {
                    id = id.wrapping_add(1);
                    sock.send_to(&query(id, "v.example.com", RecordType::A, true), addr)
                        .unwrap();
                    let (n, _) = sock.recv_from(&mut buf).expect("a query got no answer");
                    let m = Message::from_vec(&buf[..n]).unwrap();
                    assert_eq!(m.metadata.id, id);
                    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
                    assert_eq!(m.answers.len(), 1, "{m:?}");
                    let RData::A(a) = &m.answers[0].data else {
                        panic!("{m:?}")
                    };
                    let [10, 0, 0, v] = a.0.octets() else {
                        panic!("wrong answer {a}")
                    };
                    assert!(
                        v <= SWAPS && v >= last_seen,
                        "answer went back from {last_seen} to {v}"
                    );
                    last_seen = v;
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                last_seen
            })
        })
        .collect();
    let mut serial = server.zones.serial();
    for n in 1..=SWAPS {
        // Let some queries through between swaps (a condition, not a sleep).
        let target = answered.load(Ordering::Relaxed) + 20;
        while answered.load(Ordering::Relaxed) < target {
            std::thread::yield_now();
            assert!(
                !clients.iter().any(std::thread::JoinHandle::is_finished),
                "a client failed"
            );
        }
        let next = server.zones.set(Arc::new(version(n))).unwrap();
        assert!(next > serial);
        serial = next;
    }
    let target = answered.load(Ordering::Relaxed) + 50;
    while answered.load(Ordering::Relaxed) < target {
        std::thread::yield_now();
        assert!(
            !clients.iter().any(std::thread::JoinHandle::is_finished),
            "a client failed"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        assert_eq!(
            c.join().expect("client thread panicked"),
            SWAPS,
            "clients end on the last version"
        );
    }
    assert!(answered.load(Ordering::Relaxed) > 1000);
}
