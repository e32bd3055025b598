//! Malformed and unusual packets: FORMERR / NOTIMP / BADVERS, never a panic, and the server
//! keeps answering.

use std::{net::IpAddr, sync::Arc, time::Duration};

use hickory_proto::rr::RecordType;
use makiatto_dns::{__private::Responder, NoLocator, ZoneHandle};
use proptest::prelude::*;

use crate::support::{TestServer, query, zone_set};

fn rcode(answer: &[u8]) -> u8 {
    answer[3] & 0x0F
}

fn still_answers(s: &TestServer) {
    let a = s
        .raw_udp(
            &query(4242, "mail.example.com", RecordType::A, false),
            Duration::from_secs(2),
        )
        .expect("the server stopped answering");
    assert_eq!(&a[..2], &4242u16.to_be_bytes());
    assert_eq!(rcode(&a), 0);
}

#[test]
fn malformed_packets_over_udp() {
    let s = TestServer::plain();
    let good = query(0x1234, "example.com", RecordType::A, true);

    // Shorter than a header: dropped silently (there is no id to answer).
    for len in [0, 1, 5, 11] {
        assert!(
            s.raw_udp(&good[..len], Duration::from_millis(200))
                .is_none()
        );
        still_answers(&s);
    }
    // A header saying one question, and no question.
    let mut no_question = good[..12].to_vec();
    no_question[11] = 0; // arcount 0
    let a = s.raw_udp(&no_question, Duration::from_secs(2)).unwrap();
    assert_eq!(rcode(&a), 1, "FORMERR");
    assert_eq!(&a[..2], &good[..2]);
    // Zero questions.
    let mut zero = good[..12].to_vec();
    zero[5] = 0;
    zero[11] = 0;
    assert_eq!(rcode(&s.raw_udp(&zero, Duration::from_secs(2)).unwrap()), 1);
    // The question cut in the middle.
    assert_eq!(
        rcode(&s.raw_udp(&good[..20], Duration::from_secs(2)).unwrap()),
        1
    );
    // Unknown class (CHAOS) and opcode STATUS: NOTIMP.
    let mut chaos = query(9, "example.com", RecordType::A, false);
    let n = chaos.len();
    chaos[n - 1] = 3;
    assert_eq!(
        rcode(&s.raw_udp(&chaos, Duration::from_secs(2)).unwrap()),
        4
    );
    let mut status = query(9, "example.com", RecordType::A, false);
    status[2] = 2 << 3;
    assert_eq!(
        rcode(&s.raw_udp(&status, Duration::from_secs(2)).unwrap()),
        4
    );
    // EDNS version 1: BADVERS (extended rcode 16 = 1 in the OPT TTL's top byte).
    let mut v1 = good.clone();
    let opt_ttl = v1.len() - 6; // OPT: name(1) type(2) class(2) ttl(4) rdlen(2)
    v1[opt_ttl + 1] = 1;
    let a = s.raw_udp(&v1, Duration::from_secs(2)).unwrap();
    assert_eq!(rcode(&a), 0);
    assert_eq!(a[a.len() - 6], 1, "BADVERS in the OPT record: {a:?}");
    // ECS with a non-zero scope in the query is a FORMERR (RFC 7871).
    let out = s.dig(&["example.com", "A", "+subnet=1.2.3.0/24"]);
    assert!(out.contains("NOERROR"));
    let mut bad_ecs = good.clone();
    let ecs = [0u8, 8, 0, 7, 0, 1, 24, 8, 1, 2, 3];
    let rdlen_at = bad_ecs.len() - 2;
    bad_ecs[rdlen_at + 1] = ecs.len() as u8;
    bad_ecs.extend_from_slice(&ecs);
    assert_eq!(
        rcode(&s.raw_udp(&bad_ecs, Duration::from_secs(2)).unwrap()),
        1
    );
    // A response sent to us is never answered (no reflection).
    let mut response = good.clone();
    response[2] |= 0x80;
    assert!(s.raw_udp(&response, Duration::from_millis(200)).is_none());
    // Garbage from a fixed-seed generator.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..300 {
        let len = (i * 7) % 600;
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = s.raw_udp(&junk, Duration::from_millis(5));
    }
    still_answers(&s);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Arbitrary bytes, and mutations of a valid query, never panic; every answer is a response
    /// with the query's id.
    #[test]
    fn request_path_never_panics(
        junk in proptest::collection::vec(any::<u8>(), 0..600),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let zones = ZoneHandle::new(Arc::new(zone_set())).unwrap();
        let r = Responder::new(zones, Arc::new(NoLocator));
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        for udp in [true, false] {
            if let Some(a) = r.answer(&junk, ip, udp) {
                prop_assert!(a.len() >= 12);
                prop_assert_eq!(&a[..2], &junk[..2]);
                prop_assert!(a[2] & 0x80 != 0);
            }
            let mut q = query(77, "www.example.com", RecordType::A, true);
            q.extend_from_slice(&[0, 8, 0, 7, 0, 1, 24, 0, 1, 2, 3]);
            let rdlen = q.len() - 11 - 2;
            q[rdlen + 1] = 11;
            for (at, v) in &flips {
                let i = at.index(q.len());
                q[i] ^= v;
            }
            let q = &q[..cut.index(q.len() + 1)];
            if let Some(a) = r.answer(q, ip, udp) {
                prop_assert_eq!(&a[..2], &q[..2]);
                if udp {
                    prop_assert!(a.len() <= 1232);
                }
            }
        }
    }
}
