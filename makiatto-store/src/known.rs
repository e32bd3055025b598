//! Sets of known origin versions, per site, as coalesced ranges.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use rangemap::RangeInclusiveSet;
use serde::{Deserialize, Serialize};

use crate::SiteId;

/// The versions of one site that a replica has applied or knows to be cleared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(RangeInclusiveSet<u64>);

impl Ranges {
    /// Whether `ver` is in the set.
    pub fn contains(&self, ver: u64) -> bool {
        self.0.contains(&ver)
    }
    /// Adds one version.
    pub fn insert(&mut self, ver: u64) {
        self.0.insert(ver..=ver);
    }
    /// Adds a range.
    pub fn insert_range(&mut self, r: RangeInclusive<u64>) {
        if r.start() <= r.end() {
            self.0.insert(r);
        }
    }
    /// Removes a range.
    pub fn remove_range(&mut self, r: RangeInclusive<u64>) {
        if r.start() <= r.end() {
            self.0.remove(r);
        }
    }
    /// The coalesced ranges, ascending.
    pub fn iter(&self) -> impl Iterator<Item = RangeInclusive<u64>> + '_ {
        self.0.iter().cloned()
    }
    /// Ranges in `self` that are not in `other`.
    pub fn difference(&self, other: &Ranges) -> Vec<RangeInclusive<u64>> {
        let mut out = Vec::new();
        for r in self.0.iter() {
            out.extend(other.0.gaps(r));
        }
        out
    }
    /// Whether every version in `other` is in `self`.
    pub fn is_superset(&self, other: &Ranges) -> bool {
        other.difference(self).is_empty()
    }
    /// The highest version `h` such that `1..=h` is fully contained (0 if 1 is missing).
    pub fn contiguous_head(&self) -> u64 {
        match self.0.iter().next() {
            Some(r) if *r.start() <= 1 => *r.end(),
            _ => 0,
        }
    }
    /// The highest version in the set.
    pub fn max(&self) -> u64 {
        self.0.iter().next_back().map_or(0, |r| *r.end())
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// As a vector of `(lo, hi)` pairs.
    pub fn to_pairs(&self) -> Vec<(u64, u64)> {
        self.0.iter().map(|r| (*r.start(), *r.end())).collect()
    }
    /// From `(lo, hi)` pairs; empty or inverted pairs are ignored.
    pub fn from_pairs(pairs: &[(u64, u64)]) -> Self {
        let mut r = Ranges::default();
        for &(lo, hi) in pairs {
            r.insert_range(lo..=hi);
        }
        r
    }
}

/// A replica's known versions for every site it has heard of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known(pub BTreeMap<SiteId, Vec<(u64, u64)>>);

impl Known {
    /// The ranges of one site.
    pub fn ranges(&self, site: &SiteId) -> Ranges {
        self.0
            .get(site)
            .map(|p| Ranges::from_pairs(p))
            .unwrap_or_default()
    }
    /// Whether every version known by `other` is known here.
    pub fn is_superset(&self, other: &Known) -> bool {
        other
            .0
            .keys()
            .all(|s| self.ranges(s).is_superset(&other.ranges(s)))
    }
}

/// Versions of several sites: the in-memory form of [`Known`], with set operations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VersionSet(pub(crate) BTreeMap<SiteId, Ranges>);

impl VersionSet {
    /// Whether no version is in the set.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.values().all(Ranges::is_empty)
    }
    /// Whether `ver` of `site` is in the set.
    pub(crate) fn contains(&self, site: &SiteId, ver: u64) -> bool {
        self.0.get(site).is_some_and(|r| r.contains(ver))
    }
    /// Adds versions `r` of `site`.
    pub(crate) fn insert_range(&mut self, site: SiteId, r: RangeInclusive<u64>) {
        self.0.entry(site).or_default().insert_range(r);
    }
    /// Removes versions `r` of `site`.
    pub(crate) fn remove_range(&mut self, site: &SiteId, r: RangeInclusive<u64>) {
        if let Some(x) = self.0.get_mut(site) {
            x.remove_range(r);
            if x.is_empty() {
                self.0.remove(site);
            }
        }
    }
    /// Adds every version of `other`.
    pub(crate) fn union_with(&mut self, other: &VersionSet) {
        for (site, r) in &other.0 {
            for range in r.iter() {
                self.insert_range(*site, range);
            }
        }
    }
    /// Removes every version of `other`.
    pub(crate) fn subtract(&mut self, other: &VersionSet) {
        for (site, r) in &other.0 {
            for range in r.iter() {
                self.remove_range(site, range);
            }
        }
    }
    /// The versions in both sets.
    pub(crate) fn intersection(&self, other: &VersionSet) -> VersionSet {
        let mut out = self.clone();
        let mut outside = self.clone();
        outside.subtract(other);
        out.subtract(&outside);
        out
    }
    /// Whether every version of `self` is in `other`.
    pub(crate) fn is_subset(&self, other: &VersionSet) -> bool {
        self.0
            .iter()
            .all(|(site, r)| r.is_empty() || other.0.get(site).is_some_and(|o| o.is_superset(r)))
    }
    /// The wire form.
    pub(crate) fn to_known(&self) -> Known {
        Known(
            self.0
                .iter()
                .filter(|(_, r)| !r.is_empty())
                .map(|(s, r)| (*s, r.to_pairs()))
                .collect(),
        )
    }
    /// From the wire form (empty or inverted pairs are ignored).
    pub(crate) fn from_known(k: &Known) -> Self {
        let mut out = VersionSet::default();
        for (site, pairs) in &k.0 {
            let r = Ranges::from_pairs(pairs);
            if !r.is_empty() {
                out.0.insert(*site, r);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_coalesce_and_diff() {
        let mut a = Ranges::default();
        for v in [1, 2, 3, 5, 6, 9] {
            a.insert(v);
        }
        assert_eq!(a.to_pairs(), vec![(1, 3), (5, 6), (9, 9)]);
        assert_eq!(a.contiguous_head(), 3);
        assert_eq!(a.max(), 9);
        let b = Ranges::from_pairs(&[(2, 5)]);
        assert_eq!(a.difference(&b), vec![1..=1, 6..=6, 9..=9]);
        assert_eq!(b.difference(&a), vec![4..=4]);
        assert!(!a.is_superset(&b));
        a.insert(4);
        assert!(a.is_superset(&b));
    }

    #[test]
    #[allow(clippy::many_single_char_names)]
    fn version_sets() {
        let (s, t) = (SiteId([1; 16]), SiteId([2; 16]));
        let mut a = VersionSet::default();
        a.insert_range(s, 1..=10);
        a.insert_range(t, 5..=6);
        let mut b = VersionSet::default();
        b.insert_range(s, 4..=12);
        let i = a.intersection(&b);
        assert_eq!(i.to_known().0.get(&s), Some(&vec![(4, 10)]));
        assert!(!i.0.contains_key(&t));
        assert!(i.is_subset(&a) && i.is_subset(&b) && !a.is_subset(&b));
        let mut d = a.clone();
        d.subtract(&b);
        assert_eq!(d.to_known().0.get(&s), Some(&vec![(1, 3)]));
        d.union_with(&b);
        assert!(a.is_subset(&d) && b.is_subset(&d));
        assert_eq!(VersionSet::from_known(&a.to_known()), a);
        assert!(VersionSet::default().is_subset(&VersionSet::default()));
    }
}
