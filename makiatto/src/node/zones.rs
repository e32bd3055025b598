//! The DNS zones a node serves, built from the store: one zone per domain with the user's
//! live records, the nodes (coordinates, addresses, nameserver flag) with their health
//! from the membership view, and the domain's aliases under it as geo names.

use rusqlite::Connection;

use crate::store::cluster::{aliases, dns_records, domains, nodes};
use std::sync::Arc;

use makiatto_dns::{NodeEntry, RecordEntry, Zone, ZoneHandle, ZoneSet};

/// Record types whose `priority` column is written before the value (`10 mail.`).
const PRIORITY_FIRST: [&str; 2] = ["MX", "SRV"];

/// The zone set of the store's current state; `healthy` says whether a node is alive;
/// `caa` is the CA domain for each zone's CAA record (none without it).
pub(crate) fn build(
    conn: &Connection,
    healthy: &dyn Fn(&str) -> bool,
    caa: Option<&str>,
) -> crate::store::Result<ZoneSet> {
    let nodes = nodes::list(conn)?
        .into_iter()
        .map(|n| NodeEntry {
            healthy: healthy(&n.name),
            ipv4: n.ipv4.parse().ok(),
            ipv6: n.ipv6.as_deref().and_then(|a| a.parse().ok()),
            latitude: n.latitude,
            longitude: n.longitude,
            nameserver: n.is_nameserver,
            name: n.name,
        })
        .collect();
    let mut zones = Vec::new();
    for domain in domains::list(conn)? {
        let suffix = format!(".{}", domain.name);
        let geo_names = aliases::list_for_domain(conn, &domain.name)?
            .into_iter()
            .filter_map(|a| a.alias.strip_suffix(&suffix).map(str::to_owned))
            .collect();
        let records = dns_records::live_for_domain(conn, &domain.name)?
            .into_iter()
            .map(|r| RecordEntry {
                value: match r.priority {
                    Some(p) if PRIORITY_FIRST.contains(&r.rtype.as_str()) => {
                        format!("{p} {}", r.value)
                    }
                    _ => r.value,
                },
                name: r.name,
                record_type: r.rtype,
                ttl: u32::try_from(r.ttl).ok(),
            })
            .collect();
        zones.push(Zone {
            domain: domain.name,
            geo_names,
            geo_apex: true,
            ttl: 60,
            acme_ca: caa.map(str::to_owned),
            hostmaster: None,
            records,
        });
    }
    Ok(ZoneSet { nodes, zones })
}

/// The zones of `set` that compile, and the names of those that do not (a record the DNS
/// server cannot serve must not stop every other zone from updating).
pub(crate) fn servable(set: &ZoneSet) -> (ZoneSet, Vec<String>) {
    let mut good = ZoneSet {
        nodes: set.nodes.clone(),
        zones: Vec::new(),
    };
    let mut bad = Vec::new();
    for zone in &set.zones {
        let alone = ZoneSet {
            nodes: set.nodes.clone(),
            zones: vec![zone.clone()],
        };
        if ZoneHandle::new(Arc::new(alone)).is_ok() {
            good.zones.push(zone.clone());
        } else {
            bad.push(zone.domain.clone());
        }
    }
    (good, bad)
}

/// Serves `set`, leaving out the zones that do not compile; returns their names.
pub(crate) fn set_servable(handle: &ZoneHandle, set: ZoneSet) -> Result<Vec<String>, String> {
    let set = Arc::new(set);
    if handle.set(Arc::clone(&set)).is_ok() {
        return Ok(Vec::new());
    }
    let (good, bad) = servable(&set);
    handle.set(Arc::new(good)).map_err(|e| e.to_string())?;
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(domain: &str, value: &str) -> Zone {
        Zone {
            domain: domain.into(),
            geo_names: Vec::new(),
            geo_apex: true,
            ttl: 60,
            acme_ca: None,
            hostmaster: None,
            records: vec![RecordEntry {
                name: "mail".into(),
                record_type: "A".into(),
                value: value.into(),
                ttl: None,
            }],
        }
    }

    #[test]
    fn a_broken_zone_does_not_block_the_others() {
        let handle = ZoneHandle::new(Arc::new(ZoneSet::default())).unwrap();
        let set = ZoneSet {
            nodes: Vec::new(),
            zones: vec![
                zone("good.example", "192.0.2.1"),
                zone("bad.example", "not-an-address"),
            ],
        };
        assert!(
            handle.set(Arc::new(set.clone())).is_err(),
            "the bad zone fails alone"
        );
        let serial = handle.serial();
        assert_eq!(set_servable(&handle, set).unwrap(), ["bad.example"]);
        assert_ne!(handle.serial(), serial, "the good zone is served");
    }
}
