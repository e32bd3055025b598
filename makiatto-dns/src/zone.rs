//! Zone data: the serde model, the [`ZoneSource`] trait with a TOML file source, and the
//! [`ZoneHandle`] through which an embedder pushes new snapshots.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use serde::Deserialize;

use crate::{DnsError, compile::Compiled};

/// Everything the server answers for: the nodes and the zones. Immutable once handed over.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSet {
    /// The CDN nodes that geo names resolve to.
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
    /// The zones served (TOML: `[[zone]]`).
    #[serde(default, rename = "zone")]
    pub zones: Vec<Zone>,
}

/// A node of the CDN.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Short name; nameserver nodes are published as `<name>.ns.<domain>`.
    pub name: String,
    /// IPv4 address, if any.
    #[serde(default)]
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address, if any.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// Latitude in degrees.
    pub latitude: f64,
    /// Longitude in degrees.
    pub longitude: f64,
    /// Whether the node may be returned (unhealthy nodes are skipped unless all are).
    #[serde(default = "yes")]
    pub healthy: bool,
    /// Whether the node is a nameserver (gets NS and glue records).
    #[serde(default = "yes")]
    pub nameserver: bool,
}

const fn yes() -> bool {
    true
}

const fn default_ttl() -> u32 {
    300
}

#[allow(clippy::unnecessary_wraps)] // serde default for an optional field
fn default_acme_ca() -> Option<String> {
    Some("letsencrypt.org".into())
}

/// One authoritative zone.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    /// The apex, e.g. `example.com`.
    pub domain: String,
    /// Names (relative to the apex, `@` for the apex) whose A/AAAA are geo answers. The apex is
    /// always geo unless `geo_apex = false`.
    #[serde(default)]
    pub geo_names: Vec<String>,
    /// Whether the apex A/AAAA are geo answers.
    #[serde(default = "yes")]
    pub geo_apex: bool,
    /// TTL of geo answers and default TTL of other records, in seconds.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// CA domain published in the apex CAA record (none when empty or when the user sets a CAA
    /// at the apex).
    #[serde(default = "default_acme_ca")]
    pub acme_ca: Option<String>,
    /// SOA RNAME; `hostmaster.<domain>` by default.
    #[serde(default)]
    pub hostmaster: Option<String>,
    /// The user's records.
    #[serde(default)]
    pub records: Vec<RecordEntry>,
}

/// A user record. `value` is the presentation form of the RDATA (`10 mail.example.com.` for MX,
/// `0 issue "letsencrypt.org"` for CAA), except TXT, whose value is the raw text (split into
/// 255-byte strings automatically). Names without a trailing dot are relative to the zone.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordEntry {
    /// Owner name, relative to the zone (`@` for the apex, `*.x` for a wildcard).
    pub name: String,
    /// Record type: A, AAAA, CNAME, MX, TXT, SRV, CAA or NS.
    #[serde(rename = "type")]
    pub record_type: String,
    /// The record data.
    pub value: String,
    /// TTL in seconds; the zone's `ttl` by default.
    #[serde(default)]
    pub ttl: Option<u32>,
}

impl ZoneSet {
    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

/// Produces zone snapshots.
pub trait ZoneSource: Send + Sync {
    /// Reads the current snapshot.
    fn load(&self) -> Result<Arc<ZoneSet>, DnsError>;
}

/// A TOML file holding a [`ZoneSet`] (`[[nodes]]` and `[[zone]]` tables).
#[derive(Clone, Debug)]
pub struct TomlZoneFile {
    path: PathBuf,
}

impl TomlZoneFile {
    /// A source reading `path` on every [`load`](ZoneSource::load).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl ZoneSource for TomlZoneFile {
    fn load(&self) -> Result<Arc<ZoneSet>, DnsError> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| DnsError::ReadZone {
            path: self.path.clone(),
            source,
        })?;
        let set = ZoneSet::from_toml(&text).map_err(|source| DnsError::ParseZone {
            path: self.path.clone(),
            source: Box::new(source),
        })?;
        Ok(Arc::new(set))
    }
}

struct HandleState {
    base: Arc<ZoneSet>,
    challenges: BTreeMap<String, BTreeSet<String>>,
    serial: u32,
}

struct HandleInner {
    current: ArcSwap<Compiled>,
    state: Mutex<HandleState>,
}

/// The live zone data of a server. Cloning gives another handle to the same data.
///
/// Every change ([`set`](Self::set), ACME challenge add/remove) compiles a new snapshot beside
/// the current one and swaps it in atomically: queries in flight finish on the old snapshot,
/// sockets are not touched, and the SOA serial increases.
#[derive(Clone)]
pub struct ZoneHandle {
    inner: Arc<HandleInner>,
}

impl std::fmt::Debug for ZoneHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneHandle")
            .field("serial", &self.serial())
            .finish_non_exhaustive()
    }
}

fn next_serial(previous: u32) -> u32 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32);
    now.max(previous.wrapping_add(1))
}

impl ZoneHandle {
    /// Compiles `zones` and returns a handle serving them.
    pub fn new(zones: Arc<ZoneSet>) -> Result<Self, DnsError> {
        let serial = next_serial(0);
        let challenges = BTreeMap::new();
        let compiled = Compiled::build(&zones, &challenges, serial)?;
        Ok(Self {
            inner: Arc::new(HandleInner {
                current: ArcSwap::from_pointee(compiled),
                state: Mutex::new(HandleState {
                    base: zones,
                    challenges,
                    serial,
                }),
            }),
        })
    }

    /// Loads a snapshot from `source` and returns a handle serving it.
    pub fn from_source(source: &dyn ZoneSource) -> Result<Self, DnsError> {
        Self::new(source.load()?)
    }

    fn rebuild(
        &self,
        change: impl FnOnce(&mut HandleState) -> Result<(), DnsError>,
    ) -> Result<u32, DnsError> {
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = HandleState {
            base: state.base.clone(),
            challenges: state.challenges.clone(),
            serial: next_serial(state.serial),
        };
        change(&mut next)?;
        let compiled = Compiled::build(&next.base, &next.challenges, next.serial)?;
        self.inner.current.store(Arc::new(compiled));
        *state = next;
        Ok(state.serial)
    }

    /// Replaces all zones and nodes. On error the previous data stays in service.
    /// Returns the new SOA serial.
    pub fn set(&self, zones: Arc<ZoneSet>) -> Result<u32, DnsError> {
        self.rebuild(|s| {
            s.base = zones;
            s.challenges
                .retain(|name, _| zone_of(&s.base, name).is_some());
            Ok(())
        })
    }

    /// Publishes `value` as a TXT record at `_acme-challenge.<domain>` (TTL 60). `domain`
    /// is the name being validated: a zone apex or any name inside a served zone (a
    /// leading `*.` of a wildcard order is dropped, as ACME validates the base name).
    pub fn add_acme_challenge(&self, domain: &str, value: &str) -> Result<u32, DnsError> {
        let key = challenge_key(domain);
        self.rebuild(|s| {
            if zone_of(&s.base, &key).is_none() {
                return Err(DnsError::UnknownZone(domain.to_string()));
            }
            s.challenges
                .entry(key)
                .or_default()
                .insert(value.to_string());
            Ok(())
        })
    }

    /// Removes a value added by [`add_acme_challenge`](Self::add_acme_challenge).
    pub fn remove_acme_challenge(&self, domain: &str, value: &str) -> Result<u32, DnsError> {
        let key = challenge_key(domain);
        self.rebuild(|s| {
            if let Some(values) = s.challenges.get_mut(&key) {
                values.remove(value);
                if values.is_empty() {
                    s.challenges.remove(&key);
                }
            }
            Ok(())
        })
    }

    /// The current SOA serial (the same for every zone).
    pub fn serial(&self) -> u32 {
        self.inner.current.load().serial
    }

    /// The current compiled snapshot.
    pub(crate) fn snapshot(&self) -> arc_swap::Guard<Arc<Compiled>> {
        self.inner.current.load()
    }
}

pub(crate) fn normalise_domain(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

fn challenge_key(domain: &str) -> String {
    let d = normalise_domain(domain);
    d.strip_prefix("*.").map_or(d.clone(), str::to_owned)
}

/// The most specific served zone containing `name` (normalised), if any.
pub(crate) fn zone_of<'a>(set: &'a ZoneSet, name: &str) -> Option<&'a str> {
    set.zones
        .iter()
        .map(|z| z.domain.trim_end_matches('.'))
        .filter(|z| {
            let (n, z) = (name.as_bytes(), z.as_bytes());
            n.len() >= z.len()
                && n[n.len() - z.len()..].eq_ignore_ascii_case(z)
                && (n.len() == z.len() || n[n.len() - z.len() - 1] == b'.')
        })
        .max_by_key(|z| z.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_always_moves() {
        assert!(next_serial(u32::MAX - 1) == u32::MAX || next_serial(5) > 5);
        let s = next_serial(0);
        assert!(next_serial(s) > s);
    }

    #[test]
    fn parses_the_example_zone() {
        let text = include_str!("../examples/zone.toml");
        let set = ZoneSet::from_toml(text).unwrap();
        assert_eq!(set.nodes.len(), 3);
        assert_eq!(set.zones[0].domain, "example.com");
        ZoneHandle::new(Arc::new(set)).unwrap();
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(ZoneSet::from_toml("[[zone]]\ndomain = \"a.b\"\nttl_typo = 3\n").is_err());
    }
}
