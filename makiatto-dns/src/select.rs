//! Choosing which nodes answer: the [`Selector`] trait and the default [`Nearest`] policy.

use std::{fmt, num::NonZeroUsize};

use crate::GeoPoint;

/// A node that could be returned for a geo name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Where the node is.
    pub point: GeoPoint,
    /// Whether the node is currently healthy.
    pub healthy: bool,
}

/// A set of candidate positions (bit `i` = `candidates[i]`). Geo answers consider at most
/// [`NodeSet::CAPACITY`] nodes per address family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeSet(u64);

impl NodeSet {
    /// How many candidates a set can hold.
    pub const CAPACITY: usize = 64;

    /// The empty set.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// The first `n` candidates.
    pub fn first(n: usize) -> Self {
        if n >= Self::CAPACITY {
            Self(u64::MAX)
        } else {
            Self((1u64 << n) - 1)
        }
    }

    /// Adds candidate `i` (ignored beyond the capacity).
    pub fn insert(&mut self, i: usize) {
        if i < Self::CAPACITY {
            self.0 |= 1 << i;
        }
    }

    /// Whether candidate `i` is in the set.
    pub fn contains(self, i: usize) -> bool {
        i < Self::CAPACITY && self.0 & (1 << i) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Number of members.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Members in ascending order.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(i)
        })
    }
}

/// Picks the answer set for a client. Runs on the hot path: synchronous, no I/O.
pub trait Selector: fmt::Debug + Send + Sync + 'static {
    /// Chooses among `candidates` (at most [`NodeSet::CAPACITY`]) for a client at `client`
    /// (`None` when its location is unknown). Returning an empty set means "no answer records".
    fn select(&self, client: Option<GeoPoint>, candidates: &[Candidate]) -> NodeSet;
}

/// The default policy: the `k` healthy nodes nearest to the client by great-circle distance.
/// Unknown client location gives all healthy nodes; when no node is healthy, all nodes are
/// returned (fail open) rather than an empty answer.
#[derive(Clone, Copy, Debug)]
pub struct Nearest {
    k: NonZeroUsize,
}

impl Default for Nearest {
    fn default() -> Self {
        Self {
            k: NonZeroUsize::MIN,
        }
    }
}

impl Nearest {
    /// The single nearest node.
    pub fn new() -> Self {
        Self::default()
    }

    /// The `k` nearest nodes.
    pub fn k(k: NonZeroUsize) -> Self {
        Self { k }
    }
}

impl Selector for Nearest {
    fn select(&self, client: Option<GeoPoint>, candidates: &[Candidate]) -> NodeSet {
        let candidates = &candidates[..candidates.len().min(NodeSet::CAPACITY)];
        let mut healthy = NodeSet::empty();
        for (i, c) in candidates.iter().enumerate() {
            if c.healthy {
                healthy.insert(i);
            }
        }
        if healthy.is_empty() {
            return NodeSet::first(candidates.len());
        }
        let Some(client) = client else {
            return healthy;
        };
        if self.k.get() == 1 {
            let mut best: Option<(f64, usize)> = None;
            for i in healthy.iter() {
                let d = client.distance_m(&candidates[i].point);
                if best.is_none_or(|(bd, _)| d < bd) {
                    best = Some((d, i));
                }
            }
            let mut set = NodeSet::empty();
            if let Some((_, i)) = best {
                set.insert(i);
            }
            return set;
        }
        let mut by_distance: Vec<(f64, usize)> = healthy
            .iter()
            .map(|i| (client.distance_m(&candidates[i].point), i))
            .collect();
        by_distance.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut set = NodeSet::empty();
        for (_, i) in by_distance.into_iter().take(self.k.get()) {
            set.insert(i);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<Candidate> {
        vec![
            Candidate {
                point: GeoPoint::new(-33.87, 151.21),
                healthy: true,
            },
            Candidate {
                point: GeoPoint::new(50.11, 8.68),
                healthy: true,
            },
            Candidate {
                point: GeoPoint::new(40.71, -74.0),
                healthy: true,
            },
        ]
    }

    #[test]
    fn nearest_by_distance() {
        let s = Nearest::new();
        let paris = GeoPoint::new(48.85, 2.35);
        let tokyo = GeoPoint::new(35.68, 139.69);
        let lima = GeoPoint::new(-12.05, -77.04);
        assert_eq!(
            s.select(Some(paris), &nodes()).iter().collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(
            s.select(Some(tokyo), &nodes()).iter().collect::<Vec<_>>(),
            [0]
        );
        assert_eq!(
            s.select(Some(lima), &nodes()).iter().collect::<Vec<_>>(),
            [2]
        );
    }

    #[test]
    fn unknown_location_all_healthy_and_fail_open() {
        let s = Nearest::new();
        let mut n = nodes();
        n[1].healthy = false;
        assert_eq!(s.select(None, &n).iter().collect::<Vec<_>>(), [0, 2]);
        // Nearest healthy skips the unhealthy Frankfurt node for Paris.
        let paris = GeoPoint::new(48.85, 2.35);
        assert_eq!(s.select(Some(paris), &n).iter().collect::<Vec<_>>(), [2]);
        for c in &mut n {
            c.healthy = false;
        }
        assert_eq!(
            s.select(Some(paris), &n).iter().collect::<Vec<_>>(),
            [0, 1, 2]
        );
    }

    #[test]
    fn k_nearest() {
        let s = Nearest::k(NonZeroUsize::new(2).unwrap());
        let paris = GeoPoint::new(48.85, 2.35);
        assert_eq!(
            s.select(Some(paris), &nodes()).iter().collect::<Vec<_>>(),
            [1, 2]
        );
    }
}
