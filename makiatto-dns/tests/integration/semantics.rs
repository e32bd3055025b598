//! Answer semantics over UDP, TCP and DoT, checked with dig and kdig.

use std::{net::IpAddr, sync::Arc};

use hickory_proto::{op::Message, rr::RecordType};
use makiatto_dns::{__private::Responder, NoLocator, ZoneHandle};

use crate::support::{TestServer, flags, query, section, status, zone_set};

#[test]
fn positive_answers_are_authoritative() {
    let s = TestServer::plain();
    let out = s.dig(&["example.com", "SOA"]);
    assert_eq!(status(&out), "NOERROR");
    assert!(flags(&out).contains(&"aa".to_string()), "{out}");
    let soa = section(&out, "ANSWER");
    assert_eq!(soa[0].1, "SOA");
    assert!(
        soa[0]
            .2
            .starts_with("syd.ns.example.com. hostmaster.example.com. "),
        "{out}"
    );

    let ns: Vec<String> = section(&s.dig(&["example.com", "NS"]), "ANSWER")
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(
        ns,
        [
            "syd.ns.example.com.",
            "fra.ns.example.com.",
            "nyc.ns.example.com."
        ]
    );
    let out = s.dig(&["example.com", "NS"]);
    let glue = section(&out, "ADDITIONAL");
    assert!(
        glue.iter()
            .any(|r| r.0 == "fra.ns.example.com." && r.1 == "A" && r.2 == "198.51.100.1"),
        "{out}"
    );
    assert!(
        glue.iter()
            .any(|r| r.0 == "fra.ns.example.com." && r.1 == "AAAA"),
        "{out}"
    );
    let out = s.dig(&["nyc.ns.example.com", "A"]);
    assert_eq!(section(&out, "ANSWER")[0].2, "192.0.2.1");

    let caa = section(&s.dig(&["example.com", "CAA"]), "ANSWER");
    assert_eq!(caa[0].2, "0 issue \"letsencrypt.org\"");
    let mx = section(&s.dig(&["example.com", "MX"]), "ANSWER");
    assert_eq!(mx[0].2, "10 mail.example.com.");
    let srv = section(&s.kdig(&["_sip._udp.example.com", "SRV"]), "ANSWER");
    assert_eq!(srv[0].2, "10 5 5060 sip.example.com.");
    let aaaa = section(&s.dig(&["mail.example.com", "AAAA"]), "ANSWER");
    assert_eq!(aaaa[0].2, "2001:db8::25");
}

#[test]
fn negative_answers_and_refused() {
    let s = TestServer::plain();
    // NXDOMAIN with the SOA in authority.
    let out = s.dig(&["nothere.example.com", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(flags(&out).contains(&"aa".to_string()));
    assert_eq!(section(&out, "AUTHORITY")[0].1, "SOA", "{out}");
    assert!(section(&out, "ANSWER").is_empty());
    // NODATA: the name exists, the type does not.
    let out = s.kdig(&["mail.example.com", "TXT"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(section(&out, "ANSWER").is_empty(), "{out}");
    assert_eq!(section(&out, "AUTHORITY")[0].1, "SOA", "{out}");
    // Empty non-terminal (`_udp.example.com` exists only as a parent): NODATA, not NXDOMAIN.
    let out = s.dig(&["_udp.example.com", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    // A zone we do not serve.
    let out = s.dig(&["example.org", "A"]);
    assert_eq!(status(&out), "REFUSED", "{out}");
    assert!(!flags(&out).contains(&"aa".to_string()));
    // Case-insensitive, and the question is echoed as asked.
    let out = s.dig(&["MaIl.ExAmPlE.CoM", "A"]);
    assert_eq!(section(&out, "ANSWER")[0].2, "192.0.2.25", "{out}");
    assert!(out.contains("MaIl.ExAmPlE.CoM."), "{out}");
}

#[test]
fn cname_wildcard_delegation_and_any() {
    let s = TestServer::plain();
    for t in ["A", "AAAA", "TXT", "MX"] {
        let out = s.dig(&["blog.example.com", t]);
        let ans = section(&out, "ANSWER");
        assert_eq!(ans[0].1, "CNAME", "{t}: {out}");
        assert_eq!(ans[0].2, "www.example.com.");
    }
    let out = s.dig(&["anything.apps.example.com", "A"]);
    assert_eq!(
        section(&out, "ANSWER")[0],
        (
            "anything.apps.example.com.".into(),
            "A".into(),
            "192.0.2.80".into()
        ),
        "{out}"
    );
    let out = s.dig(&["x.y.apps.example.com", "TXT"]);
    assert_eq!(section(&out, "ANSWER")[0].2, "\"wildcard\"", "{out}");
    let out = s.dig(&["nope.apps.example.com", "MX"]);
    assert_eq!(status(&out), "NOERROR", "wildcard NODATA: {out}");
    // Delegation: a referral without AA, with glue.
    let out = s.dig(&["host.sub.example.com", "A"]);
    assert!(!flags(&out).contains(&"aa".to_string()), "{out}");
    assert_eq!(section(&out, "AUTHORITY")[0].1, "NS", "{out}");
    assert_eq!(section(&out, "ADDITIONAL")[0].2, "192.0.2.53", "{out}");
    // Minimal ANY (RFC 8482): one RRset, not everything.
    let out = s.dig(&["mail.example.com", "ANY"]);
    let types: Vec<String> = section(&out, "ANSWER").into_iter().map(|r| r.1).collect();
    assert_eq!(types, ["A"], "{out}");
}

#[test]
fn truncation_then_tcp_and_long_txt() {
    let s = TestServer::plain();
    let out = s.dig(&["big.example.com", "TXT", "+ignore"]);
    assert!(flags(&out).contains(&"tc".to_string()), "{out}");
    assert!(section(&out, "ANSWER").is_empty());
    // Without +ignore, dig retries over TCP and gets all 3000 bytes in 255-byte strings.
    let out = s.dig(&["big.example.com", "TXT"]);
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    let txt = &section(&out, "ANSWER")[0].2;
    assert_eq!(
        txt.matches('"').count(),
        2 * 12,
        "3000 bytes = 11 x 255 + 195: {out}"
    );
    assert_eq!(txt.matches('b').count(), 3000);
    // No EDNS: the 512-byte limit applies.
    let out = s.kdig(&["example.com", "NS", "+noedns", "+ignore"]);
    assert!(!flags(&out).contains(&"tc".to_string()), "{out}");
}

#[test]
fn dns_over_tls_with_kdig() {
    let s = TestServer::plain();
    let port = s.tls_addr.port().to_string();
    let out = crate::support::run(
        "kdig",
        &[
            "@127.0.0.1",
            "-p",
            &port,
            "+tls",
            "+retry=0",
            "+time=5",
            "mail.example.com",
            "A",
        ],
    );
    assert!(out.contains("TLS session"), "{out}");
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert_eq!(section(&out, "ANSWER")[0].2, "192.0.2.25", "{out}");
    let out = crate::support::run(
        "kdig",
        &[
            "@127.0.0.1",
            "-p",
            &port,
            "+tls",
            "+retry=0",
            "+time=5",
            "nx.example.com",
            "A",
        ],
    );
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
}

#[test]
fn dns_over_quic() {
    use futures_util::StreamExt;
    use hickory_net::{quic::QuicClientStream, xfer::DnsRequestSender};

    let s = TestServer::plain();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(s.cert.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = s.quic_addr;
    let answer = s.rt.block_on(async move {
        let mut stream = QuicClientStream::builder()
            .crypto_config(config)
            .build(addr, Arc::from("localhost"))
            .await
            .expect("DoQ connection");
        // DoQ requires message id 0 (RFC 9250).
        let query = Message::from_vec(&query(0, "mail.example.com", RecordType::A, true)).unwrap();
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.send_message(query.into()).next(),
        )
        .await
        .expect("DoQ answer in time")
        .expect("a response")
        .expect("a valid response");
        response.into_message()
    });
    assert_eq!(
        answer.metadata.response_code,
        hickory_proto::op::ResponseCode::NoError
    );
    assert!(answer.metadata.authoritative);
    assert_eq!(answer.answers.len(), 1);
    assert_eq!(answer.answers[0].data.to_string(), "192.0.2.25");
}

#[test]
fn udp_and_tcp_give_the_same_answers() {
    let s = TestServer::plain();
    for (name, t) in [
        ("example.com", "SOA"),
        ("example.com", "NS"),
        ("example.com", "A"),
        ("blog.example.com", "A"),
        ("nx.example.com", "A"),
        ("mail.example.com", "TXT"),
        ("a.apps.example.com", "A"),
        ("host.sub.example.com", "A"),
        ("example.com", "CAA"),
        ("example.org", "A"),
    ] {
        let udp = s.dig(&[name, t, "+subnet=193.0.6.0/24"]);
        let tcp = s.dig(&[name, t, "+subnet=193.0.6.0/24", "+tcp"]);
        assert_eq!(status(&udp), status(&tcp), "{name} {t}");
        assert_eq!(flags(&udp), flags(&tcp), "{name} {t}");
        for sec in ["ANSWER", "AUTHORITY", "ADDITIONAL"] {
            assert_eq!(
                section(&udp, sec),
                section(&tcp, sec),
                "{name} {t} {sec}\n{udp}\n{tcp}"
            );
        }
    }
}

#[test]
fn serial_moves_and_acme_challenges() {
    let zones = ZoneHandle::new(Arc::new(zone_set())).unwrap();
    let r = Responder::new(zones.clone(), Arc::new(NoLocator));
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let ask = |name: &str, t| {
        Message::from_vec(&r.answer(&query(7, name, t, true), ip, true).unwrap()).unwrap()
    };
    let serial = |m: &Message| match &m.answers[0].data {
        hickory_proto::rr::RData::SOA(soa) => soa.serial,
        other => panic!("{other:?}"),
    };
    let s0 = serial(&ask("example.com", RecordType::SOA));
    assert_eq!(s0, zones.serial());
    let m = ask("_acme-challenge.example.com", RecordType::TXT);
    assert_eq!(
        m.metadata.response_code,
        hickory_proto::op::ResponseCode::NXDomain
    );

    let s1 = zones.add_acme_challenge("Example.COM.", "token-1").unwrap();
    assert!(s1 > s0);
    let m = ask("_acme-challenge.example.com", RecordType::TXT);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].ttl, 60);
    assert_eq!(serial(&ask("example.com", RecordType::SOA)), s1);
    let s2 = zones
        .remove_acme_challenge("example.com", "token-1")
        .unwrap();
    assert!(s2 > s1);
    let m = ask("_acme-challenge.example.com", RecordType::TXT);
    assert_eq!(
        m.metadata.response_code,
        hickory_proto::op::ResponseCode::NXDomain
    );
    assert!(zones.add_acme_challenge("example.org", "x").is_err());
    assert!(zones.add_acme_challenge("notexample.com", "x").is_err());
    // Names below the apex (and wildcard orders, validated at their base name) too.
    zones
        .add_acme_challenge("www.example.com", "token-www")
        .unwrap();
    let m = ask("_acme-challenge.www.example.com", RecordType::TXT);
    assert_eq!(m.answers.len(), 1, "{m:?}");
    assert!(m.answers[0].data.to_string().contains("token-www"), "{m:?}");
    zones
        .add_acme_challenge("*.example.com", "token-wild")
        .unwrap();
    let m = ask("_acme-challenge.example.com", RecordType::TXT);
    assert_eq!(m.answers.len(), 1, "{m:?}");
    assert!(
        m.answers[0].data.to_string().contains("token-wild"),
        "{m:?}"
    );
    zones
        .remove_acme_challenge("www.example.com", "token-www")
        .unwrap();
    zones
        .remove_acme_challenge("*.example.com", "token-wild")
        .unwrap();
    let s2 = zones.serial();
    // A rejected zone keeps the old data and serial.
    let mut bad = zone_set();
    bad.zones[0].records.push(makiatto_dns::RecordEntry {
        name: "blog".into(),
        record_type: "A".into(),
        value: "1.2.3.4".into(),
        ttl: None,
    });
    assert!(zones.set(Arc::new(bad)).is_err());
    assert_eq!(zones.serial(), s2);
}
