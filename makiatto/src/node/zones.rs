//! The DNS zones a node serves, built from the store: one zone per domain with the user's
//! live records, the nodes (coordinates, addresses, nameserver flag) with their health
//! from the membership view, and the domain's aliases under it as geo names.

use rusqlite::Connection;

use crate::store::cluster::{aliases, dns_records, domains, nodes};
use makiatto_dns::{NodeEntry, RecordEntry, Zone, ZoneSet};

/// Record types whose `priority` column is written before the value (`10 mail.`).
const PRIORITY_FIRST: [&str; 2] = ["MX", "SRV"];

/// The zone set of the store's current state; `healthy` says whether a node is alive.
pub(crate) fn build(
    conn: &Connection,
    healthy: &dyn Fn(&str) -> bool,
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
            acme_ca: Some("letsencrypt.org".into()),
            hostmaster: None,
            records,
        });
    }
    Ok(ZoneSet { nodes, zones })
}
