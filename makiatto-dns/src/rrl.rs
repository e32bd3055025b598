//! Response rate limiting (RRL) for UDP, in the style of BIND, NSD and Knot: answers are
//! counted per (client /24 or /56, answer class) in a token bucket; over the rate an answer
//! is dropped, except every `slip`-th, which goes out empty with TC=1 so a real client
//! retries over TCP (which is not limited).
//!
//! Answer classes, from the response itself: a positive answer per (name, type), NODATA and
//! referrals per name, NXDOMAIN per zone (so random subdomains share one bucket), errors
//! (REFUSED, FORMERR...) per client prefix alone.
//!
//! The table is a fixed array of atomic cells, one GCRA ("virtual scheduling") timestamp per
//! bucket tagged with 16 bits of its key; a cell taken by another key is reset, as in Knot's
//! fixed-size table. Threads answering the same sockets share it without locks.

use std::{
    hash::BuildHasher,
    net::IpAddr,
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use foldhash::fast::RandomState;

use crate::geo::cache_key;

/// Response rate limiting settings for UDP answers (see [`DnsServerBuilder::rate_limit`]).
///
/// [`DnsServerBuilder::rate_limit`]: crate::DnsServerBuilder::rate_limit
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    responses_per_second: NonZeroU32,
    slip: u32,
    table_size: usize,
}

impl RateLimit {
    /// `responses_per_second` identical answers per client prefix (/24, /56) and second, with
    /// a burst of one second's worth; `slip` 2 and a 131 072-cell table by default.
    #[must_use]
    pub fn new(responses_per_second: NonZeroU32) -> Self {
        Self {
            responses_per_second,
            slip: 2,
            table_size: 1 << 17,
        }
    }

    /// Every `slip`-th answer over the rate is sent truncated (TC=1, no records) instead of
    /// dropped; 0 drops them all, 1 truncates them all (default 2, as BIND and NSD).
    #[must_use]
    pub fn slip(mut self, slip: u32) -> Self {
        self.slip = slip;
        self
    }

    /// Cells in the bucket table (rounded up to a power of two, at least 1024); 8 bytes each.
    #[must_use]
    pub fn table_size(mut self, cells: usize) -> Self {
        self.table_size = cells;
        self
    }
}

/// What to do with an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Send,
    /// Over the rate: drop, or slip (see [`Limiter::over`]).
    Limited,
}

const TAG_SHIFT: u32 = 48;
const TIME_MASK: u64 = (1 << TAG_SHIFT) - 1;

/// The shared bucket table.
#[derive(Debug)]
pub(crate) struct Limiter {
    cells: Box<[AtomicU64]>,
    mask: usize,
    /// Microseconds between two answers at the rate.
    interval_us: u64,
    /// How far ahead of now a bucket's schedule may run: the burst.
    tolerance_us: u64,
    slip: u32,
    hasher: RandomState,
    epoch: Instant,
}

const KIND_POSITIVE: u8 = 1;
const KIND_NODATA: u8 = 2;
const KIND_REFERRAL: u8 = 3;
const KIND_NXDOMAIN: u8 = 4;
const KIND_ERROR: u8 = 5;

impl Limiter {
    pub(crate) fn new(config: RateLimit) -> Self {
        let size = config.table_size.clamp(1024, 1 << 26).next_power_of_two();
        let interval_us = (1_000_000 / u64::from(config.responses_per_second.get())).max(1);
        Self {
            cells: (0..size).map(|_| AtomicU64::new(0)).collect(),
            mask: size - 1,
            interval_us,
            tolerance_us: 1_000_000u64.saturating_sub(interval_us),
            slip: config.slip,
            hasher: RandomState::default(),
            epoch: Instant::now(),
        }
    }

    /// Microseconds since the limiter started (for [`Self::check`]; read once per batch).
    pub(crate) fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX) & TIME_MASK
    }

    /// Counts `response` (a complete answer we are about to send to `client`) in its bucket.
    pub(crate) fn check(&self, client: IpAddr, response: &[u8], now_us: u64) -> Verdict {
        let hash = self.key(client, response);
        let cell = &self.cells[usize::try_from(hash).unwrap_or(0) & self.mask];
        let tag = (hash >> TAG_SHIFT) << TAG_SHIFT;
        let mut current = cell.load(Ordering::Relaxed);
        loop {
            // A cell of another key, or a bucket idle long enough to be full, starts at now.
            let scheduled = if current & !TIME_MASK == tag {
                (current & TIME_MASK).max(now_us)
            } else {
                now_us
            };
            if scheduled > now_us + self.tolerance_us {
                return Verdict::Limited;
            }
            let next = tag | ((scheduled + self.interval_us) & TIME_MASK);
            match cell.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Verdict::Send,
                Err(now) => current = now,
            }
        }
    }

    /// For the `n`-th limited answer of a thread (from 1): true when it slips out truncated.
    pub(crate) fn slips(&self, n: u64) -> bool {
        self.slip != 0 && n.is_multiple_of(u64::from(self.slip))
    }

    fn key(&self, client: IpAddr, r: &[u8]) -> u64 {
        let (prefix, v6) = cache_key(client.to_canonical());
        let mut name = [0u8; 256];
        let (kind, name_len, qtype) = classify(r, &mut name);
        self.hasher
            .hash_one((prefix, v6, kind, &name[..name_len], qtype))
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    match (b.get(at), b.get(at + 1)) {
        (Some(&h), Some(&l)) => u16::from_be_bytes([h, l]),
        _ => 0,
    }
}

/// Copies an uncompressed name starting at `at`, lower-cased, into `out`; returns its length
/// and the offset after it (0, 0 when it is not a plain name).
fn copy_name(r: &[u8], at: usize, out: &mut [u8; 256]) -> (usize, usize) {
    let mut pos = at;
    let mut len = 0;
    loop {
        let Some(&l) = r.get(pos) else { return (0, 0) };
        let l = usize::from(l);
        if l & 0xC0 != 0 || len + l + 1 > out.len() {
            return (0, 0);
        }
        let Some(label) = r.get(pos..=pos + l) else {
            return (0, 0);
        };
        for (d, s) in out[len..=len + l].iter_mut().zip(label) {
            *d = s.to_ascii_lowercase();
        }
        len += l + 1;
        pos += l + 1;
        if l == 0 {
            return (len, pos);
        }
    }
}

/// The answer class of response `r`: kind, the name it is counted under (copied into
/// `name`), and the query type for positive answers.
fn classify(r: &[u8], name: &mut [u8; 256]) -> (u8, usize, u16) {
    let rcode = r.get(3).map_or(0, |b| b & 0x0F);
    let aa = r.get(2).is_some_and(|b| b & 0x04 != 0);
    if be16(r, 4) != 1 || !matches!(rcode, 0 | 3) {
        return (KIND_ERROR, 0, 0);
    }
    let (qname_len, after) = copy_name(r, 12, name);
    if after == 0 {
        return (KIND_ERROR, 0, 0);
    }
    let qtype = be16(r, after);
    if rcode == 3 {
        // NXDOMAIN: the zone, from the SOA owner in the authority section.
        let (zone_len, _) = copy_name(r, after + 4, name);
        return (KIND_NXDOMAIN, zone_len, 0);
    }
    if be16(r, 6) > 0 {
        (KIND_POSITIVE, qname_len, qtype)
    } else if aa {
        (KIND_NODATA, qname_len, 0)
    } else {
        (KIND_REFERRAL, qname_len, 0)
    }
}

/// Rewrites answer `out` in place as the truncated slip answer: header and question only,
/// TC set.
pub(crate) fn truncate_for_slip(out: &mut Vec<u8>) {
    let mut name = [0u8; 256];
    let keep = if be16(out, 4) == 1 {
        match copy_name(out, 12, &mut name) {
            (_, 0) => 12,
            (_, after) => (after + 4).min(out.len()),
        }
    } else {
        12
    };
    out.truncate(keep);
    if out.len() < 12 {
        return;
    }
    if keep == 12 {
        out[4..6].fill(0);
    }
    out[2] |= 0x02;
    out[6..12].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(name: &[u8], qtype: u16, rcode: u8, an: u16) -> Vec<u8> {
        let mut r = vec![0x12, 0x34, 0x84, rcode, 0, 1, 0, 0, 0, 0, 0, 0];
        r[6..8].copy_from_slice(&an.to_be_bytes());
        r.extend_from_slice(name);
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r
    }

    #[test]
    fn burst_then_rate() {
        let l = Limiter::new(RateLimit::new(NonZeroU32::new(10).unwrap()));
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let r = answer(b"\x03www\x07example\x03com\x00", 1, 0, 1);
        let sent = (0..100)
            .filter(|_| l.check(client, &r, 5_000_000) == Verdict::Send)
            .count();
        assert_eq!(sent, 10, "a burst of one second's worth");
        // 100 ms later one more token.
        assert_eq!(l.check(client, &r, 5_100_000), Verdict::Send);
        assert_eq!(l.check(client, &r, 5_100_000), Verdict::Limited);
        // Another /24 has its own bucket; the same /24 shares one.
        let other: IpAddr = "192.0.3.7".parse().unwrap();
        let same: IpAddr = "192.0.2.200".parse().unwrap();
        assert_eq!(l.check(other, &r, 5_100_000), Verdict::Send);
        assert_eq!(l.check(same, &r, 5_100_000), Verdict::Limited);
        // Another name is another class.
        let r2 = answer(b"\x04mail\x07example\x03com\x00", 1, 0, 1);
        assert_eq!(l.check(client, &r2, 5_100_000), Verdict::Send);
        // NXDOMAIN for different names of one zone share a bucket; case does not matter.
        let mut nx = answer(b"\x02x1\x07EXAMPLE\x03com\x00", 1, 3, 0);
        nx.extend_from_slice(b"\x07example\x03com\x00");
        let mut nx2 = answer(b"\x02x2\x07example\x03com\x00", 1, 3, 0);
        nx2.extend_from_slice(b"\x07Example\x03com\x00");
        let mut name = [0u8; 256];
        let (k1, n1, _) = classify(&nx, &mut name);
        let a = name[..n1].to_vec();
        let (k2, n2, _) = classify(&nx2, &mut name);
        assert_eq!((k1, a.as_slice()), (k2, &name[..n2]));
    }

    #[test]
    fn ipv6_clients_share_a_56_and_mapped_ipv4_is_ipv4() {
        let l = Limiter::new(RateLimit::new(NonZeroU32::MIN));
        let r = answer(b"\x03www\x07example\x03com\x00", 1, 0, 1);
        let at = |ip: &str| l.check(ip.parse().unwrap(), &r, 9_000_000);
        assert_eq!(at("2001:db8:0:ab::1"), Verdict::Send);
        assert_eq!(at("2001:db8:0:ff:1::9"), Verdict::Limited, "same /56");
        assert_eq!(at("2001:db8:0:100::1"), Verdict::Send, "next /56");
        assert_eq!(at("198.51.100.1"), Verdict::Send);
        assert_eq!(
            at("::ffff:198.51.100.2"),
            Verdict::Limited,
            "same /24, via a dual-stack socket"
        );
    }

    #[test]
    fn slip_answer_is_header_and_question_with_tc() {
        let mut r = answer(b"\x03www\x07example\x03com\x00", 1, 0, 1);
        let question_end = r.len();
        r.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        truncate_for_slip(&mut r);
        assert_eq!(r.len(), question_end);
        assert_eq!(r[2] & 0x02, 0x02);
        assert_eq!(be16(&r, 4), 1);
        assert_eq!(be16(&r, 6), 0);
        // Garbage does not panic.
        let mut short = vec![1, 2, 3];
        truncate_for_slip(&mut short);
        let mut bad = vec![0, 0, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x3F];
        truncate_for_slip(&mut bad);
        assert_eq!(bad.len(), 12);
    }
}
