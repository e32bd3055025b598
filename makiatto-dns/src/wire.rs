//! The request path: parses a raw query by hand and writes the answer from the compiled
//! snapshot. Used by the UDP fast path, by our TCP and DoT listeners and, through
//! hickory-server, by DoQ, so every transport gives the same answers.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use foldhash::fast::RandomState as FoldHasher;
use quick_cache::{
    UnitWeighter,
    sync::{Cache, DefaultLifecycle},
};

use crate::{
    GeoLocator, GeoPoint, NodeSet, Selector, ZoneHandle,
    compile::{Compiled, CompiledZone, Section, TYPE_A, TYPE_AAAA, label_starts, push_record},
    geo::cache_key,
};

const RCODE_NOERROR: u8 = 0;
const RCODE_FORMERR: u8 = 1;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;
const RCODE_REFUSED: u8 = 5;
/// BADVERS is extended rcode 16: 1 in the OPT high bits, 0 in the header.
const RCODE_BADVERS: u16 = 16;

const TYPE_OPT: u16 = 41;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const OPTION_ECS: u16 = 8;

/// Which transport a query came over; UDP answers are truncated to the client's payload size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Stream,
}

#[derive(Clone, Copy, Debug)]
struct Ecs {
    family: u16,
    source: u8,
    addr: [u8; 16],
    addr_len: usize,
}

impl Ecs {
    fn ip(&self) -> IpAddr {
        if self.family == 1 {
            let mut b = [0u8; 4];
            b.copy_from_slice(&self.addr[..4]);
            IpAddr::V4(Ipv4Addr::from(b))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.addr))
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Edns {
    payload: u16,
    dnssec_ok: bool,
    ecs: Option<Ecs>,
}

struct Query<'a> {
    id: u16,
    opcode: u8,
    rd: bool,
    cd: bool,
    /// Question bytes as received (name, type, class), if it parsed.
    question: Option<&'a [u8]>,
    qtype: u16,
    qclass: u16,
    edns: Option<Edns>,
}

enum Parsed<'a> {
    /// Not answerable at all (too short for a header, or a response): drop silently.
    Drop,
    /// Answer with this rcode and no records.
    Error(Query<'a>, u16),
    Ok(Query<'a>),
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Skips a possibly compressed name, returning the offset after it.
fn skip_name(b: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *b.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            l if l & 0xC0 == 0xC0 => return (pos + 2 <= b.len()).then_some(pos + 2),
            l if l & 0xC0 != 0 => return None,
            l => pos += 1 + l as usize,
        }
    }
}

fn parse_ecs(data: &[u8]) -> Option<Ecs> {
    let family = be16(data, 0)?;
    let source = *data.get(2)?;
    let scope = *data.get(3)?;
    let addr = data.get(4..)?;
    let max = match family {
        1 => 32,
        2 => 128,
        _ => return None,
    };
    if source > max || scope != 0 || addr.len() != usize::from(source).div_ceil(8) {
        return None;
    }
    // Bits beyond the source prefix must be zero (RFC 7871 section 6).
    if let Some(last) = addr.last()
        && source % 8 != 0
        && last & (0xFFu8 >> (source % 8)) != 0
    {
        return None;
    }
    let mut full = [0u8; 16];
    full[..addr.len()].copy_from_slice(addr);
    Some(Ecs {
        family,
        source,
        addr: full,
        addr_len: addr.len(),
    })
}

fn parse(b: &[u8]) -> Parsed<'_> {
    if b.len() < 12 || b[2] & 0x80 != 0 {
        return Parsed::Drop;
    }
    let mut q = Query {
        id: u16::from_be_bytes([b[0], b[1]]),
        opcode: (b[2] >> 3) & 0x0F,
        rd: b[2] & 0x01 != 0,
        cd: b[3] & 0x10 != 0,
        question: None,
        qtype: 0,
        qclass: 0,
        edns: None,
    };
    let qd = u16::from_be_bytes([b[4], b[5]]);
    let an = u16::from_be_bytes([b[6], b[7]]);
    let ns = u16::from_be_bytes([b[8], b[9]]);
    let ar = u16::from_be_bytes([b[10], b[11]]);
    if q.opcode != 0 {
        return Parsed::Error(q, u16::from(RCODE_NOTIMP));
    }
    if qd != 1 {
        return Parsed::Error(q, u16::from(RCODE_FORMERR));
    }
    // The question name: uncompressed labels only.
    let mut pos = 12;
    loop {
        let Some(&len) = b.get(pos) else {
            return Parsed::Error(q, u16::from(RCODE_FORMERR));
        };
        if len == 0 {
            pos += 1;
            break;
        }
        if len > 63 || pos + 1 + usize::from(len) > b.len() || pos - 12 + 1 + usize::from(len) > 254
        {
            return Parsed::Error(q, u16::from(RCODE_FORMERR));
        }
        pos += 1 + usize::from(len);
    }
    let (Some(qtype), Some(qclass)) = (be16(b, pos), be16(b, pos + 2)) else {
        return Parsed::Error(q, u16::from(RCODE_FORMERR));
    };
    pos += 4;
    q.question = Some(&b[12..pos]);
    q.qtype = qtype;
    q.qclass = qclass;
    // Skip answer and authority records (not expected in a query, tolerated), then look for OPT.
    let mut seen_opt = false;
    let mut badvers = false;
    for i in 0..u32::from(an) + u32::from(ns) + u32::from(ar) {
        let is_additional = i >= u32::from(an) + u32::from(ns);
        let name_start = pos;
        let Some(after_name) = skip_name(b, pos) else {
            return Parsed::Error(q, u16::from(RCODE_FORMERR));
        };
        let (Some(rtype), Some(class), Some(ttl_hi), Some(ttl_lo), Some(rdlen)) = (
            be16(b, after_name),
            be16(b, after_name + 2),
            be16(b, after_name + 4),
            be16(b, after_name + 6),
            be16(b, after_name + 8),
        ) else {
            return Parsed::Error(q, u16::from(RCODE_FORMERR));
        };
        let rdata_start = after_name + 10;
        let rdata_end = rdata_start + usize::from(rdlen);
        if rdata_end > b.len() {
            return Parsed::Error(q, u16::from(RCODE_FORMERR));
        }
        if rtype == TYPE_OPT {
            if !is_additional || seen_opt || after_name != name_start + 1 || b[name_start] != 0 {
                return Parsed::Error(q, u16::from(RCODE_FORMERR));
            }
            seen_opt = true;
            let version = (ttl_hi & 0xFF) as u8;
            let mut edns = Edns {
                payload: class.max(512),
                dnssec_ok: ttl_lo & 0x8000 != 0,
                ecs: None,
            };
            let mut opt = rdata_start;
            while opt < rdata_end {
                let (Some(code), Some(len)) = (be16(b, opt), be16(b, opt + 2)) else {
                    q.edns = Some(edns);
                    return Parsed::Error(q, u16::from(RCODE_FORMERR));
                };
                let data_end = opt + 4 + usize::from(len);
                if data_end > rdata_end {
                    q.edns = Some(edns);
                    return Parsed::Error(q, u16::from(RCODE_FORMERR));
                }
                if code == OPTION_ECS {
                    match parse_ecs(&b[opt + 4..data_end]) {
                        Some(ecs) if edns.ecs.is_none() => edns.ecs = Some(ecs),
                        _ => {
                            q.edns = Some(edns);
                            return Parsed::Error(q, u16::from(RCODE_FORMERR));
                        }
                    }
                }
                opt = data_end;
            }
            q.edns = Some(edns);
            badvers = version != 0;
        }
        pos = rdata_end;
    }
    if badvers {
        return Parsed::Error(q, RCODE_BADVERS);
    }
    if qclass != CLASS_IN {
        return Parsed::Error(q, u16::from(RCODE_NOTIMP));
    }
    match qtype {
        TYPE_OPT | 0 => Parsed::Error(q, u16::from(RCODE_FORMERR)),
        251..=254 => Parsed::Error(q, u16::from(RCODE_NOTIMP)),
        _ => Parsed::Ok(q),
    }
}

/// What is known about a client prefix: its location, and the node sets chosen for it (A and
/// AAAA) from the snapshot with `serial`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GeoEntry {
    point: Option<GeoPoint>,
    serial: u32,
    sets: [Option<NodeSet>; 2],
}

/// Client prefixes per (locator generation, /24 or /56 prefix, is IPv6).
pub(crate) type GeoCache = Cache<(u64, u128, bool), GeoEntry, UnitWeighter, FoldHasher>;

/// Answers queries from the current zone snapshot.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    pub(crate) zones: ZoneHandle,
    pub(crate) locator: Arc<dyn GeoLocator>,
    pub(crate) selector: Arc<dyn Selector>,
    pub(crate) cache: Arc<GeoCache>,
    pub(crate) max_udp_payload: u16,
}

/// What to put in the answer, decided before writing.
enum Body<'a> {
    Empty,
    Section(&'a Section),
    Geo { zone: &'a CompiledZone, qtype: u16 },
}

struct Plan<'a> {
    rcode: u8,
    aa: bool,
    body: Body<'a>,
    /// Negative answers carry the zone's SOA in the authority section.
    soa: Option<&'a Section>,
}

impl Engine {
    pub(crate) fn new(
        zones: ZoneHandle,
        locator: Arc<dyn GeoLocator>,
        selector: Arc<dyn Selector>,
        cache_entries: u64,
        max_udp_payload: u16,
    ) -> Self {
        Self {
            zones,
            locator,
            selector,
            cache: Arc::new(Cache::with(
                cache_entries as usize,
                cache_entries,
                UnitWeighter,
                FoldHasher::default(),
                DefaultLifecycle::default(),
            )),
            max_udp_payload: max_udp_payload.max(512),
        }
    }

    /// The nodes answering a client at `ip` for A (`family` 0) or AAAA (1), from the
    /// per-prefix cache when it holds a choice made on this snapshot.
    fn choose(&self, ip: IpAddr, snap: &Compiled, family: usize) -> NodeSet {
        let (prefix, v6) = cache_key(ip);
        let key = (self.locator.generation(), prefix, v6);
        let mut entry = self.cache.get(&key).unwrap_or_else(|| GeoEntry {
            point: self.locator.locate(ip),
            serial: snap.serial,
            sets: [None, None],
        });
        if entry.serial != snap.serial {
            entry.serial = snap.serial;
            entry.sets = [None, None];
        }
        if let Some(set) = entry.sets[family] {
            return set;
        }
        let candidates = if family == 0 {
            &snap.v4.candidates
        } else {
            &snap.v6.candidates
        };
        let set = self.selector.select(entry.point, candidates);
        entry.sets[family] = Some(set);
        self.cache.insert(key, entry);
        set
    }

    /// Writes the response to `query` into `out` (cleared first). Returns false when the
    /// packet must be dropped without an answer.
    pub(crate) fn respond(
        &self,
        query: &[u8],
        src: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        self.respond_from(&self.zones.snapshot(), query, src, transport, out)
    }

    /// [`Engine::respond`] from a snapshot the caller loaded, so that a batch of queries
    /// loads it once.
    pub(crate) fn respond_from(
        &self,
        snapshot: &Compiled,
        query: &[u8],
        src: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        out.clear();
        // A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; locate and cache them
        // as the IPv4 addresses they are (else every IPv4 client shares one /56 entry).
        let src = src.to_canonical();
        let (q, rcode) = match parse(query) {
            Parsed::Drop => return false,
            Parsed::Error(q, rcode) => (q, rcode),
            Parsed::Ok(q) => {
                self.answer(snapshot, &q, src, transport, out);
                return true;
            }
        };
        let question = if rcode == u16::from(RCODE_NOTIMP) && q.opcode != 0 {
            None
        } else {
            q.question
        };
        write_header(out, &q, rcode, false, question.is_some());
        if let Some(question) = question {
            out.extend_from_slice(question);
        }
        if let Some(edns) = &q.edns {
            write_opt(out, edns, rcode, None);
            set_count(out, 10, 1);
        }
        true
    }

    fn answer(
        &self,
        snap: &Compiled,
        q: &Query<'_>,
        src: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) {
        let Some(question) = q.question else { return };
        let qname = &question[..question.len() - 4];
        let mut lower = [0u8; 256];
        let lower = &mut lower[..qname.len()];
        for (d, s) in lower.iter_mut().zip(qname) {
            *d = s.to_ascii_lowercase();
        }
        let lower: &[u8] = lower;
        let plan = plan(snap, lower, q.qtype);
        let mut ecs_scope = None;
        write_header(out, q, u16::from(plan.rcode), plan.aa, true);
        out.extend_from_slice(question);
        let (mut an, mut ns, mut ar) = (0u16, 0u16, 0u16);
        match plan.body {
            Body::Empty => {}
            Body::Section(s) => {
                out.extend_from_slice(&s.bytes);
                (an, ns, ar) = (s.an, s.ns, s.ar);
                if q.edns.is_some_and(|e| e.ecs.is_some()) {
                    ecs_scope = Some(0);
                }
            }
            Body::Geo { zone, qtype } => {
                let (client, scope) = match q.edns.and_then(|e| e.ecs) {
                    Some(ecs) if ecs.source > 0 => {
                        let scope = if ecs.family == 1 { 24 } else { 56 };
                        (ecs.ip(), Some(scope))
                    }
                    Some(_) => (src, Some(0)),
                    None => (src, None),
                };
                ecs_scope = scope;
                an = if qtype == TYPE_A {
                    let set = self.choose(client, snap, 0);
                    write_geo(out, set, &snap.v4.addrs, TYPE_A, zone.geo_ttl)
                } else {
                    let set = self.choose(client, snap, 1);
                    write_geo(out, set, &snap.v6.addrs, TYPE_AAAA, zone.geo_ttl)
                };
                if an == 0 {
                    // No node has an address of this family: NODATA.
                    let soa = &zone.negative;
                    out.extend_from_slice(&soa.bytes);
                    ns = soa.ns;
                }
            }
        }
        if let Some(soa) = plan.soa {
            out.extend_from_slice(&soa.bytes);
            ns += soa.ns;
        }
        if let Some(edns) = &q.edns {
            write_opt(out, edns, u16::from(plan.rcode), ecs_scope);
            ar += 1;
        }
        set_count(out, 6, an);
        set_count(out, 8, ns);
        set_count(out, 10, ar);
        if transport == Transport::Udp {
            let limit = match &q.edns {
                Some(e) => usize::from(e.payload.min(self.max_udp_payload)),
                None => 512,
            };
            if out.len() > limit {
                out.truncate(12 + question.len());
                out[2] |= 0x02;
                set_count(out, 6, 0);
                set_count(out, 8, 0);
                set_count(out, 10, 0);
                if let Some(edns) = &q.edns {
                    write_opt(out, edns, u16::from(plan.rcode), ecs_scope);
                    set_count(out, 10, 1);
                }
            }
        }
    }
}

fn plan<'a>(snap: &'a Compiled, lower: &[u8], qtype: u16) -> Plan<'a> {
    let refused = Plan {
        rcode: RCODE_REFUSED,
        aa: false,
        body: Body::Empty,
        soa: None,
    };
    // Longest zone apex that is a suffix of the name.
    let Some((zone, _apex_start)) = label_starts(lower).find_map(|start| {
        snap.apexes
            .get(&lower[start..])
            .and_then(|&i| snap.zones.get(i))
            .map(|z| (z, start))
    }) else {
        return refused;
    };
    // Delegations: a cut at or above the name (below the apex) gives a referral.
    if !zone.cuts.is_empty() {
        for start in label_starts(lower) {
            if lower.len() - start <= zone.apex_len {
                break;
            }
            if let Some(referral) = zone.cuts.get(&lower[start..]) {
                return Plan {
                    rcode: RCODE_NOERROR,
                    aa: false,
                    body: Body::Section(referral),
                    soa: None,
                };
            }
        }
    }
    let nodata = Plan {
        rcode: RCODE_NOERROR,
        aa: true,
        body: Body::Empty,
        soa: Some(&zone.negative),
    };
    let data = if let Some(d) = zone.names.get(lower) {
        d
    } else {
        {
            // Wildcard: the closest encloser is the longest existing ancestor; `*.<encloser>`
            // answers when it exists, otherwise the name does not exist.
            let mut found = None;
            for start in label_starts(lower).skip(1) {
                if lower.len() - start < zone.apex_len {
                    break;
                }
                let encloser = &lower[start..];
                if zone.names.contains_key(encloser) {
                    let mut wildcard = [0u8; 256];
                    let len = 2 + encloser.len();
                    if len <= 255 {
                        wildcard[0] = 1;
                        wildcard[1] = b'*';
                        wildcard[2..len].copy_from_slice(encloser);
                        found = zone.names.get(&wildcard[..len]);
                    }
                    break;
                }
            }
            match found {
                Some(d) => d,
                None => {
                    return Plan {
                        rcode: RCODE_NXDOMAIN,
                        aa: true,
                        body: Body::Empty,
                        soa: Some(&zone.negative),
                    };
                }
            }
        }
    };
    let positive = |body| Plan {
        rcode: RCODE_NOERROR,
        aa: true,
        body,
        soa: None,
    };
    if let Some(cname) = &data.cname {
        return positive(Body::Section(cname));
    }
    if data.geo && matches!(qtype, TYPE_A | TYPE_AAAA) {
        return positive(Body::Geo { zone, qtype });
    }
    if qtype == TYPE_ANY {
        // RFC 8482: answer with one RRset rather than everything.
        if data.geo {
            return positive(Body::Geo {
                zone,
                qtype: TYPE_A,
            });
        }
        return match data.rrsets.first() {
            Some((_, s)) => positive(Body::Section(s)),
            None => nodata,
        };
    }
    match data.rrset(qtype) {
        Some(s) => positive(Body::Section(s)),
        None => nodata,
    }
}

fn write_geo<const N: usize>(
    out: &mut Vec<u8>,
    chosen: NodeSet,
    addrs: &[[u8; N]],
    rtype: u16,
    ttl: u32,
) -> u16 {
    let mut count = 0;
    for i in chosen.iter() {
        if let Some(addr) = addrs.get(i) {
            push_record(out, None, rtype, ttl, addr);
            count += 1;
        }
    }
    count
}

fn write_header(out: &mut Vec<u8>, q: &Query<'_>, rcode: u16, aa: bool, with_question: bool) {
    out.extend_from_slice(&q.id.to_be_bytes());
    out.push(0x80 | (q.opcode << 3) | (u8::from(aa) << 2) | u8::from(q.rd));
    out.push((u8::from(q.cd) << 4) | (rcode & 0x0F) as u8);
    out.extend_from_slice(&u16::from(with_question).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
}

fn set_count(out: &mut [u8], at: usize, count: u16) {
    out[at..at + 2].copy_from_slice(&count.to_be_bytes());
}

fn write_opt(out: &mut Vec<u8>, edns: &Edns, rcode: u16, ecs_scope: Option<u8>) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&1232u16.to_be_bytes());
    out.push((rcode >> 4) as u8);
    out.push(0);
    out.extend_from_slice(&(if edns.dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
    match (edns.ecs, ecs_scope) {
        (Some(ecs), Some(scope)) => {
            let len = 4 + ecs.addr_len as u16;
            out.extend_from_slice(&(4 + len).to_be_bytes());
            out.extend_from_slice(&OPTION_ECS.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&ecs.family.to_be_bytes());
            out.push(ecs.source);
            out.push(scope);
            out.extend_from_slice(&ecs.addr[..ecs.addr_len]);
        }
        _ => out.extend_from_slice(&0u16.to_be_bytes()),
    }
}

/// The request path without sockets, for benchmarks, fuzzing and comparing transports.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Responder(Engine);

impl Responder {
    /// A responder answering from `zones`, locating clients with `locator`.
    pub fn new(zones: ZoneHandle, locator: Arc<dyn GeoLocator>) -> Self {
        Self(Engine::new(
            zones,
            locator,
            Arc::new(crate::Nearest::new()),
            1024,
            1232,
        ))
    }

    /// The answer to `query` from `src` over UDP (`udp`) or a stream; `None` when dropped.
    pub fn answer(&self, query: &[u8], src: IpAddr, udp: bool) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let transport = if udp {
            Transport::Udp
        } else {
            Transport::Stream
        };
        self.0
            .respond(query, src, transport, &mut out)
            .then_some(out)
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    /// A working set of 10 000 client /24s stays cached (a weak hash once made this miss 35 %).
    #[test]
    fn working_set_stays_cached() {
        let c: GeoCache = Cache::with(
            65_536,
            65_536,
            UnitWeighter,
            FoldHasher::default(),
            DefaultLifecycle::default(),
        );
        for pass in 0..4 {
            let mut hits = 0;
            for i in 0..10_000u32 {
                let ip = IpAddr::V4(Ipv4Addr::from(0x0100_0000 + (i << 8)));
                let (prefix, v6) = cache_key(ip);
                let k = (1u64, prefix, v6);
                if c.get(&k).is_some() {
                    hits += 1;
                } else {
                    c.insert(
                        k,
                        GeoEntry {
                            point: None,
                            serial: 1,
                            sets: [None, None],
                        },
                    );
                }
            }
            assert_eq!(hits, if pass == 0 { 0 } else { 10_000 }, "pass {pass}");
        }
    }
}
