//! Compiles a [`ZoneSet`] into per-name, per-type wire-format answer sections, so that
//! answering a query is a few hash lookups and a copy.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use hickory_proto::{
    rr::{RData, RecordType},
    serialize::binary::{BinEncodable, BinEncoder},
};
use rustc_hash::FxHashMap;

use crate::{
    Candidate, DnsError, GeoPoint, NodeSet,
    zone::{ZoneSet, normalise_domain},
};

pub(crate) const TYPE_A: u16 = 1;
pub(crate) const TYPE_NS: u16 = 2;
pub(crate) const TYPE_CNAME: u16 = 5;
pub(crate) const TYPE_SOA: u16 = 6;
pub(crate) const TYPE_MX: u16 = 15;
pub(crate) const TYPE_TXT: u16 = 16;
pub(crate) const TYPE_AAAA: u16 = 28;
pub(crate) const TYPE_SRV: u16 = 33;
pub(crate) const TYPE_CAA: u16 = 257;

const SOA_REFRESH: u32 = 3600;
const SOA_RETRY: u32 = 900;
const SOA_EXPIRE: u32 = 1_209_600;
const SOA_MINIMUM: u32 = 300;
const ACME_TTL: u32 = 60;

/// Wire bytes of records following the question, with their section counts. Records owned by
/// the query name use a compression pointer to the question (offset 12); every other name is
/// written in full, so a section can follow any question.
#[derive(Debug, Default, Clone)]
pub(crate) struct Section {
    pub(crate) bytes: Box<[u8]>,
    pub(crate) an: u16,
    pub(crate) ns: u16,
    pub(crate) ar: u16,
}

#[derive(Debug, Default)]
pub(crate) struct NameData {
    /// Answer sections by query type.
    pub(crate) rrsets: Vec<(u16, Section)>,
    pub(crate) cname: Option<Section>,
    pub(crate) geo: bool,
}

impl NameData {
    pub(crate) fn rrset(&self, qtype: u16) -> Option<&Section> {
        self.rrsets
            .iter()
            .find(|(t, _)| *t == qtype)
            .map(|(_, s)| s)
    }
}

#[derive(Debug)]
pub(crate) struct CompiledZone {
    pub(crate) names: FxHashMap<Box<[u8]>, NameData>,
    /// Referral sections at delegation points (NS below the apex).
    pub(crate) cuts: FxHashMap<Box<[u8]>, Section>,
    /// The SOA in the authority section, for NXDOMAIN and NODATA.
    pub(crate) negative: Section,
    pub(crate) apex_len: usize,
    pub(crate) geo_ttl: u32,
}

/// Geo targets of one address family.
#[derive(Debug, Default)]
pub(crate) struct Family<const N: usize> {
    pub(crate) candidates: Vec<Candidate>,
    pub(crate) addrs: Vec<[u8; N]>,
}

/// An immutable compiled snapshot.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) serial: u32,
    pub(crate) zones: Vec<CompiledZone>,
    pub(crate) apexes: FxHashMap<Box<[u8]>, usize>,
    pub(crate) v4: Family<4>,
    pub(crate) v6: Family<16>,
}

/// Lowercase wire form of an absolute or zone-relative name.
pub(crate) fn wire_name(name: &str, origin: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(name.len() + 2);
    let (labels, absolute) = match name {
        "@" => ("", false),
        "." => ("", true),
        n => match n.strip_suffix('.') {
            Some(n) => (n, true),
            None => (n, false),
        },
    };
    if !labels.is_empty() {
        for label in labels.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(format!("name {name:?} has an empty or over-long label"));
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    match (absolute, origin) {
        (false, Some(origin)) => out.extend_from_slice(origin),
        _ => out.push(0),
    }
    if out.len() > 255 {
        return Err(format!("name {name:?} is longer than 255 bytes"));
    }
    Ok(out)
}

/// Whether wire name `name` equals or is below wire name `apex`.
pub(crate) fn is_within(name: &[u8], apex: &[u8]) -> bool {
    let mut pos = 0;
    while pos < name.len() {
        if &name[pos..] == apex {
            return true;
        }
        pos += 1 + name[pos] as usize;
    }
    false
}

/// Start offsets of each suffix of a wire name, from the full name to the root label.
pub(crate) fn label_starts(name: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut pos = Some(0usize);
    std::iter::from_fn(move || {
        let p = pos?;
        if p >= name.len() {
            pos = None;
            return None;
        }
        let len = name[p] as usize;
        pos = if len == 0 { None } else { Some(p + 1 + len) };
        Some(p)
    })
}

pub(crate) fn push_record(
    buf: &mut Vec<u8>,
    owner: Option<&[u8]>,
    rtype: u16,
    ttl: u32,
    rdata: &[u8],
) {
    match owner {
        None => buf.extend_from_slice(&[0xC0, 0x0C]),
        Some(name) => buf.extend_from_slice(name),
    }
    buf.extend_from_slice(&rtype.to_be_bytes());
    buf.extend_from_slice(&1u16.to_be_bytes());
    buf.extend_from_slice(&ttl.to_be_bytes());
    buf.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    buf.extend_from_slice(rdata);
}

type RrMap = BTreeMap<Vec<u8>, BTreeMap<u16, Vec<(u32, Vec<u8>)>>>;

struct ZoneBuilder<'a> {
    domain: &'a str,
    apex: Vec<u8>,
    data: RrMap,
}

impl ZoneBuilder<'_> {
    fn err(&self, message: impl Into<String>) -> DnsError {
        DnsError::InvalidZone {
            domain: self.domain.to_string(),
            message: message.into(),
        }
    }

    fn add(&mut self, name: Vec<u8>, rtype: u16, ttl: u32, rdata: Vec<u8>) -> Result<(), DnsError> {
        if rdata.len() > usize::from(u16::MAX) {
            return Err(self.err("record data longer than 65535 bytes"));
        }
        let set = self.data.entry(name).or_default().entry(rtype).or_default();
        if !set.iter().any(|(_, r)| *r == rdata) {
            set.push((ttl, rdata));
        }
        Ok(())
    }

    fn name(&self, name: &str) -> Result<Vec<u8>, DnsError> {
        let wire = wire_name(name, Some(&self.apex)).map_err(|m| self.err(m))?;
        if !is_within(&wire, &self.apex) {
            return Err(self.err(format!("name {name:?} is outside the zone")));
        }
        Ok(wire)
    }

    /// Appends the zone to a relative target name in presentation-form record data.
    fn absolute_target(&self, value: &str) -> String {
        let value = value.trim();
        let (head, last) = match value.rsplit_once(char::is_whitespace) {
            Some((h, l)) => (format!("{h} "), l),
            None => (String::new(), value),
        };
        let last = match last {
            "@" => format!("{}.", self.domain),
            l if l.ends_with('.') => l.to_string(),
            l => format!("{l}.{}.", self.domain),
        };
        format!("{head}{last}")
    }

    fn rdata(&self, rtype: RecordType, value: &str) -> Result<Vec<u8>, DnsError> {
        let bad = |e: &dyn std::fmt::Display| self.err(format!("{rtype} record {value:?}: {e}"));
        Ok(match rtype {
            RecordType::A => Ipv4Addr::from_str(value.trim())
                .map_err(|e| bad(&e))?
                .octets()
                .to_vec(),
            RecordType::AAAA => Ipv6Addr::from_str(value.trim())
                .map_err(|e| bad(&e))?
                .octets()
                .to_vec(),
            RecordType::TXT => txt_rdata(value),
            _ => {
                let text = match rtype {
                    RecordType::CNAME | RecordType::NS | RecordType::MX | RecordType::SRV => {
                        self.absolute_target(value)
                    }
                    _ => value.to_string(),
                };
                let rdata = RData::try_from_str(rtype, &text).map_err(|e| bad(&e))?;
                let mut buf = Vec::new();
                let mut encoder = BinEncoder::new(&mut buf);
                encoder.set_canonical_form(true);
                rdata.emit(&mut encoder).map_err(|e| bad(&e))?;
                buf
            }
        })
    }
}

/// TXT data split into character-strings of at most 255 bytes.
fn txt_rdata(value: &str) -> Vec<u8> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 255 + 1);
    if bytes.is_empty() {
        out.push(0);
    }
    for chunk in bytes.chunks(255) {
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
    out
}

/// Target name inside NS/MX/SRV/CNAME rdata (uncompressed, canonical).
fn rdata_target(rtype: u16, rdata: &[u8]) -> Option<&[u8]> {
    match rtype {
        TYPE_NS | TYPE_CNAME => Some(rdata),
        TYPE_MX => rdata.get(2..),
        TYPE_SRV => rdata.get(6..),
        _ => None,
    }
}

fn glue(data: &RrMap, targets: impl Iterator<Item = Vec<u8>>, out: &mut Vec<u8>) -> u16 {
    let mut count = 0;
    let mut seen = BTreeSet::new();
    for target in targets {
        if !seen.insert(target.clone()) {
            continue;
        }
        let Some(types) = data.get(&target) else {
            continue;
        };
        for t in [TYPE_A, TYPE_AAAA] {
            for (ttl, rdata) in types.get(&t).into_iter().flatten() {
                push_record(out, Some(&target), t, *ttl, rdata);
                count += 1;
            }
        }
    }
    count
}

impl Compiled {
    pub(crate) fn build(
        set: &ZoneSet,
        challenges: &BTreeMap<String, BTreeSet<String>>,
        serial: u32,
    ) -> Result<Self, DnsError> {
        let mut v4 = Family::<4>::default();
        let mut v6 = Family::<16>::default();
        for node in &set.nodes {
            let point = GeoPoint::new(node.latitude, node.longitude);
            let candidate = Candidate {
                point,
                healthy: node.healthy,
            };
            if let Some(ip) = node.ipv4
                && v4.addrs.len() < NodeSet::CAPACITY
            {
                v4.candidates.push(candidate);
                v4.addrs.push(ip.octets());
            }
            if let Some(ip) = node.ipv6
                && v6.addrs.len() < NodeSet::CAPACITY
            {
                v6.candidates.push(candidate);
                v6.addrs.push(ip.octets());
            }
        }
        let mut zones = Vec::new();
        let mut apexes = FxHashMap::default();
        for zone in &set.zones {
            let domain = normalise_domain(&zone.domain);
            let apex = wire_name(&format!("{domain}."), None).map_err(|message| {
                DnsError::InvalidZone {
                    domain: domain.clone(),
                    message,
                }
            })?;
            let compiled = compile_zone(set, zone, &domain, &apex, challenges, serial)?;
            if apexes
                .insert(apex.into_boxed_slice(), zones.len())
                .is_some()
            {
                return Err(DnsError::InvalidZone {
                    domain,
                    message: "zone listed twice".into(),
                });
            }
            zones.push(compiled);
        }
        Ok(Self {
            serial,
            zones,
            apexes,
            v4,
            v6,
        })
    }
}

fn compile_zone(
    set: &ZoneSet,
    zone: &crate::Zone,
    domain: &str,
    apex: &[u8],
    challenges: &BTreeMap<String, BTreeSet<String>>,
    serial: u32,
) -> Result<CompiledZone, DnsError> {
    let mut b = ZoneBuilder {
        domain,
        apex: apex.to_vec(),
        data: RrMap::new(),
    };
    let ttl = zone.ttl;

    // Nameservers and glue.
    let mut ns_names = Vec::new();
    for node in set.nodes.iter().filter(|n| n.nameserver) {
        let name = b.name(&format!("{}.ns", node.name))?;
        if let Some(ip) = node.ipv4 {
            b.add(name.clone(), TYPE_A, ttl, ip.octets().to_vec())?;
        }
        if let Some(ip) = node.ipv6 {
            b.add(name.clone(), TYPE_AAAA, ttl, ip.octets().to_vec())?;
        }
        b.add(apex.to_vec(), TYPE_NS, ttl, name.clone())?;
        ns_names.push(name);
    }
    let mname = match ns_names.first() {
        Some(n) => n.clone(),
        None => b.name("ns")?,
    };
    let rname = match &zone.hostmaster {
        Some(h) => wire_name(&h.replacen('@', ".", 1), Some(apex)).map_err(|m| b.err(m))?,
        None => b.name("hostmaster")?,
    };
    let mut soa = mname;
    soa.extend_from_slice(&rname);
    for v in [serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, SOA_MINIMUM] {
        soa.extend_from_slice(&v.to_be_bytes());
    }
    b.add(apex.to_vec(), TYPE_SOA, ttl, soa.clone())?;

    // User records.
    let mut user_caa_at_apex = false;
    for r in &zone.records {
        let rtype = RecordType::from_str(&r.record_type.to_ascii_uppercase())
            .map_err(|e| b.err(format!("record {} type {:?}: {e}", r.name, r.record_type)))?;
        if matches!(rtype, RecordType::SOA | RecordType::OPT | RecordType::ANY) {
            return Err(b.err(format!("record {}: type {rtype} cannot be set", r.name)));
        }
        let name = b.name(&r.name)?;
        if rtype == RecordType::CAA && name == apex {
            user_caa_at_apex = true;
        }
        if rtype == RecordType::NS && name == apex {
            return Err(b.err("NS at the apex comes from the nameserver nodes"));
        }
        let rdata = b.rdata(rtype, &r.value)?;
        b.add(name, u16::from(rtype), r.ttl.unwrap_or(ttl), rdata)?;
    }
    if let Some(ca) = zone.acme_ca.as_deref().filter(|c| !c.is_empty())
        && !user_caa_at_apex
    {
        let rdata = b.rdata(RecordType::CAA, &format!("0 issue \"{ca}\""))?;
        b.add(apex.to_vec(), TYPE_CAA, ttl, rdata)?;
    }
    // Challenges for the apex and for names inside this zone (not inside a more specific
    // served zone), at `_acme-challenge.<name>`.
    for (target, values) in challenges {
        if crate::zone::zone_of(set, target).is_none_or(|z| !z.eq_ignore_ascii_case(domain)) {
            continue;
        }
        let Some(rel) = target.get(..target.len().saturating_sub(domain.len())) else {
            continue;
        };
        let name = b.name(("_acme-challenge.".to_owned() + rel).trim_end_matches('.'))?;
        for v in values {
            b.add(name.clone(), TYPE_TXT, ACME_TTL, txt_rdata(v))?;
        }
    }

    // Geo names.
    let mut geo = BTreeSet::new();
    if zone.geo_apex {
        geo.insert(apex.to_vec());
    }
    for g in &zone.geo_names {
        geo.insert(b.name(g)?);
    }
    for g in &geo {
        if let Some(types) = b.data.get(g)
            && (types.contains_key(&TYPE_A) || types.contains_key(&TYPE_AAAA))
        {
            return Err(b.err("a geo name cannot also have static A/AAAA records"));
        }
    }
    for (name, types) in &b.data {
        if types.contains_key(&TYPE_CNAME) && (types.len() > 1 || geo.contains(name)) {
            return Err(b.err("a CNAME cannot share its name with other records"));
        }
        if name.as_slice() == apex && types.contains_key(&TYPE_CNAME) {
            return Err(b.err("CNAME at the apex"));
        }
    }

    let mut cuts = FxHashMap::default();
    let mut names: FxHashMap<Box<[u8]>, NameData> = FxHashMap::default();
    for (name, types) in &b.data {
        if name.as_slice() != apex
            && let Some(ns) = types.get(&TYPE_NS)
        {
            let mut bytes = Vec::new();
            for (ttl, rdata) in ns {
                push_record(&mut bytes, Some(name), TYPE_NS, *ttl, rdata);
            }
            let ar = glue(&b.data, ns.iter().map(|(_, r)| r.clone()), &mut bytes);
            cuts.insert(
                name.clone().into_boxed_slice(),
                Section {
                    bytes: bytes.into(),
                    an: 0,
                    ns: ns.len() as u16,
                    ar,
                },
            );
        }
        let mut entry = NameData {
            geo: geo.contains(name),
            ..NameData::default()
        };
        for (&rtype, rrs) in types {
            let mut bytes = Vec::new();
            for (ttl, rdata) in rrs {
                push_record(&mut bytes, None, rtype, *ttl, rdata);
            }
            let ar = if matches!(rtype, TYPE_NS | TYPE_MX | TYPE_SRV) {
                let targets = rrs
                    .iter()
                    .filter_map(|(_, r)| rdata_target(rtype, r).map(<[u8]>::to_vec));
                glue(&b.data, targets, &mut bytes)
            } else {
                0
            };
            let section = Section {
                bytes: bytes.into(),
                an: rrs.len() as u16,
                ns: 0,
                ar,
            };
            if rtype == TYPE_CNAME {
                entry.cname = Some(section);
            } else {
                entry.rrsets.push((rtype, section));
            }
        }
        names.insert(name.clone().into_boxed_slice(), entry);
    }
    for g in &geo {
        names.entry(g.clone().into_boxed_slice()).or_default().geo = true;
    }
    // Empty non-terminals: every ancestor between a name and the apex exists.
    let owners: Vec<Vec<u8>> = names.keys().map(|k| k.to_vec()).collect();
    for name in owners {
        for start in label_starts(&name).skip(1) {
            let ancestor = &name[start..];
            if ancestor.len() < apex.len() {
                break;
            }
            names.entry(ancestor.into()).or_default();
        }
    }

    let mut negative = Vec::new();
    push_record(
        &mut negative,
        Some(apex),
        TYPE_SOA,
        ttl.min(SOA_MINIMUM),
        &soa,
    );
    Ok(CompiledZone {
        names,
        cuts,
        negative: Section {
            bytes: negative.into(),
            an: 0,
            ns: 1,
            ar: 0,
        },
        apex_len: apex.len(),
        geo_ttl: ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names() {
        let apex = wire_name("Example.COM.", None).unwrap();
        assert_eq!(apex, b"\x07example\x03com\x00");
        assert_eq!(wire_name("@", Some(&apex)).unwrap(), apex);
        assert_eq!(
            wire_name("WWW", Some(&apex)).unwrap(),
            b"\x03www\x07example\x03com\x00"
        );
        assert!(is_within(&wire_name("a.b", Some(&apex)).unwrap(), &apex));
        assert!(!is_within(&wire_name("example.org.", None).unwrap(), &apex));
        assert!(wire_name("a..b", None).is_err());
        assert_eq!(label_starts(&apex).collect::<Vec<_>>(), [0, 8, 12]);
    }

    #[test]
    fn txt_split() {
        let long = "x".repeat(600);
        let rdata = txt_rdata(&long);
        assert_eq!(rdata.len(), 603);
        assert_eq!(rdata[0], 255);
        assert_eq!(rdata[256], 255);
        assert_eq!(rdata[512], 90);
    }
}
