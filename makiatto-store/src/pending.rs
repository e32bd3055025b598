//! Pending versions: known versions whose copy may lack cells (docs/replication.md,
//! "Pending versions").
//!
//! A sync answer carries the *surviving* cells of each version: a cell the responder has
//! superseded is left out. The requester therefore records every version received in a
//! session as pending, with the versions that may hold what is missing (`deps`: the
//! responder's known set, plus the responder's own deps when its copy was pending too).
//! A pending version becomes complete when
//! - every version of its deps is complete here (whatever superseded its cells arrived), or
//! - a complete session from a replica that holds it completely ends (after it, this
//!   replica dominates that one).
//!
//! A request claims pending versions as known, so they are not sent again and small
//! budgets still make progress, but lists them with their deps; a responder that lacks
//! part of the deps sends them again (after what is missing), with its own surviving
//! cells.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicI64, Ordering};

use rusqlite::{Connection, params};

use crate::known::{Ranges, VersionSet};
use crate::wire::Pending;
use crate::writer::Sites;
use crate::{Result, SiteId};

/// The next group id (see `group_for`).
static NEXT_ID: AtomicI64 = AtomicI64::new(1);

/// Pending versions sharing their deps.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Group {
    pub(crate) id: i64,
    pub(crate) versions: VersionSet,
    pub(crate) deps: VersionSet,
}

/// The responder of a sync session, as its `SyncStart` described it, and the groups this
/// session has filled so far.
#[derive(Debug, Default)]
pub(crate) struct Responder {
    pub(crate) known: VersionSet,
    pub(crate) groups: Vec<(VersionSet, VersionSet)>,
    /// Our group for each responder group (`None`: versions complete at the responder).
    ours: HashMap<Option<usize>, i64>,
}

impl Responder {
    pub(crate) fn new(known: VersionSet, pending: &[Pending]) -> Self {
        Responder {
            known,
            groups: pending
                .iter()
                .map(|p| {
                    (
                        VersionSet::from_known(&p.versions),
                        VersionSet::from_known(&p.deps),
                    )
                })
                .collect(),
            ours: HashMap::new(),
        }
    }

    /// The versions the responder holds completely.
    pub(crate) fn solid(&self) -> VersionSet {
        let mut s = self.known.clone();
        for (v, _) in &self.groups {
            s.subtract(v);
        }
        s
    }
}

/// Every version in a pending group.
pub(crate) fn members(groups: &[Group]) -> VersionSet {
    let mut all = VersionSet::default();
    for g in groups {
        all.union_with(&g.versions);
    }
    all
}

/// Whether `ver` of `site` is pending.
pub(crate) fn is_pending(groups: &[Group], site: &SiteId, ver: u64) -> bool {
    groups.iter().any(|g| g.versions.contains(site, ver))
}

/// The known versions that are complete.
pub(crate) fn solid(known: &BTreeMap<SiteId, Ranges>, groups: &[Group]) -> VersionSet {
    let mut s = VersionSet(known.clone());
    s.subtract(&members(groups));
    s
}

/// Records versions `range` of `site`, just received from `resp`, as pending: out of any
/// earlier group (this copy replaces the earlier one) and into this session's group for
/// the responder's group that holds them.
pub(crate) fn assign(
    groups: &mut Vec<Group>,
    resp: &mut Responder,
    site: SiteId,
    range: RangeInclusive<u64>,
) {
    for g in groups.iter_mut() {
        g.versions.remove_range(&site, range.clone());
    }
    let mut rest = VersionSet::default();
    rest.insert_range(site, range);
    for i in 0..resp.groups.len() {
        if rest.is_empty() {
            return;
        }
        let part = rest.intersection(&resp.groups[i].0);
        if part.is_empty() {
            continue;
        }
        rest.subtract(&part);
        let g = group_for(groups, resp, Some(i));
        groups[g].versions.union_with(&part);
    }
    if !rest.is_empty() {
        let g = group_for(groups, resp, None);
        groups[g].versions.union_with(&rest);
    }
}

fn group_for(groups: &mut Vec<Group>, resp: &mut Responder, key: Option<usize>) -> usize {
    if let Some(id) = resp.ours.get(&key)
        && let Some(i) = groups.iter().position(|g| g.id == *id)
    {
        return i;
    }
    // Ids are never reused in a process: a session that still names a group dropped
    // since (resolved, or its transaction rolled back) must not find another one.
    let floor = groups.iter().map(|g| g.id).max().unwrap_or(0) + 1;
    NEXT_ID.fetch_max(floor, Ordering::Relaxed);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut deps = resp.known.clone();
    if let Some((_, d)) = key.and_then(|i| resp.groups.get(i)) {
        deps.union_with(d);
    }
    groups.push(Group {
        id,
        versions: VersionSet::default(),
        deps,
    });
    resp.ours.insert(key, id);
    groups.len() - 1
}

/// After a complete session from `resp`: this replica now dominates it, so what the
/// responder holds completely is complete here, and this session's groups depend only on
/// the responder's own deps.
pub(crate) fn promote(groups: &mut [Group], resp: &Responder) {
    let solid_r = resp.solid();
    for g in groups.iter_mut() {
        g.versions.subtract(&solid_r);
    }
    for (key, id) in &resp.ours {
        if let Some(g) = groups.iter_mut().find(|g| g.id == *id) {
            g.deps = key
                .and_then(|i| resp.groups.get(i))
                .map(|(_, d)| d.clone())
                .unwrap_or_default();
        }
    }
}

/// Drops empty groups and those whose deps are all complete, until nothing changes; deps
/// are trimmed to what is not complete yet. Returns whether a group was dropped.
pub(crate) fn resolve(known: &BTreeMap<SiteId, Ranges>, groups: &mut Vec<Group>) -> bool {
    let mut dropped = false;
    loop {
        let before = groups.len();
        groups.retain(|g| !g.versions.is_empty());
        let solid = solid(known, groups);
        for g in groups.iter_mut() {
            g.deps.subtract(&solid);
        }
        groups.retain(|g| !g.deps.is_empty());
        if groups.len() == before {
            return dropped;
        }
        dropped = true;
    }
}

/// The groups as a request or a `SyncStart` lists them.
pub(crate) fn to_wire(groups: &[Group]) -> Vec<Pending> {
    groups
        .iter()
        .map(|g| Pending {
            versions: g.versions.to_known(),
            deps: g.deps.to_known(),
        })
        .collect()
}

/// Which of the requester's pending versions to send again: those whose deps this
/// responder does not hold completely (its copy may have what the requester's lacks).
pub(crate) fn to_resend(
    requested: &[Pending],
    known: &BTreeMap<SiteId, Ranges>,
    groups: &[Group],
) -> VersionSet {
    let solid = solid(known, groups);
    let known = VersionSet(known.clone());
    let mut out = VersionSet::default();
    for p in requested {
        if !VersionSet::from_known(&p.deps).is_subset(&solid) {
            out.union_with(&VersionSet::from_known(&p.versions).intersection(&known));
        }
    }
    out
}

const KIND_VERSIONS: i64 = 0;
const KIND_DEPS: i64 = 1;

pub(crate) fn load(conn: &Connection, sites: &Sites) -> Result<Vec<Group>> {
    let mut by_id: BTreeMap<i64, Group> = BTreeMap::new();
    let mut stmt = conn.prepare_cached("SELECT grp, kind, site_ord, lo, hi FROM crr_pending")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    for row in rows {
        let (id, kind, ord, lo, hi) = row?;
        let Some(site) = sites.site(ord) else {
            continue;
        };
        let g = by_id.entry(id).or_insert_with(|| Group {
            id,
            ..Group::default()
        });
        let set = if kind == KIND_DEPS {
            &mut g.deps
        } else {
            &mut g.versions
        };
        set.insert_range(site, lo as u64..=hi as u64);
    }
    Ok(by_id.into_values().collect())
}

pub(crate) fn write(conn: &Connection, sites: &mut Sites, groups: &[Group]) -> Result<()> {
    conn.prepare_cached("DELETE FROM crr_pending")?
        .execute([])?;
    let mut ins = conn.prepare_cached(
        "INSERT INTO crr_pending (grp, kind, site_ord, lo, hi) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for g in groups {
        for (kind, set) in [(KIND_VERSIONS, &g.versions), (KIND_DEPS, &g.deps)] {
            for (site, ranges) in &set.0 {
                let ord = sites.ord_or_insert(conn, *site)?;
                for r in ranges.iter() {
                    ins.execute(params![g.id, kind, ord, *r.start() as i64, *r.end() as i64])?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(site: SiteId, lo: u64, hi: u64) -> VersionSet {
        let mut s = VersionSet::default();
        s.insert_range(site, lo..=hi);
        s
    }

    #[test]
    fn a_group_resolves_when_its_deps_are_complete_and_cycles_wait_for_promotion() {
        let (a, b) = (SiteId([1; 16]), SiteId([2; 16]));
        let mut known = BTreeMap::new();
        known.insert(a, Ranges::from_pairs(&[(1, 5)]));
        // Versions 1-2 of a depend on b's 1-3, which is unknown: pending.
        let mut groups = vec![Group {
            id: 1,
            versions: set(a, 1, 2),
            deps: set(b, 1, 3),
        }];
        assert!(!resolve(&known, &mut groups));
        assert_eq!(groups.len(), 1);
        // b's 1-3 arrive complete: the group resolves.
        known.insert(b, Ranges::from_pairs(&[(1, 3)]));
        assert!(resolve(&known, &mut groups));
        assert!(groups.is_empty());
        // A group that depends on its own versions (an incomplete session's responder
        // knew them) waits for a promotion.
        let mut resp = Responder::new(VersionSet(known.clone()), &[]);
        let mut groups = Vec::new();
        assign(&mut groups, &mut resp, a, 3..=4);
        assert!(!resolve(&known, &mut groups));
        assert_eq!(groups[0].versions, set(a, 3, 4));
        promote(&mut groups, &resp);
        resolve(&known, &mut groups);
        assert!(groups.is_empty());
    }

    #[test]
    fn versions_pending_at_the_responder_keep_its_deps() {
        let (a, b) = (SiteId([1; 16]), SiteId([2; 16]));
        let mut known = BTreeMap::new();
        known.insert(a, Ranges::from_pairs(&[(1, 4)]));
        let theirs = Pending {
            versions: set(a, 2, 2).to_known(),
            deps: set(b, 7, 7).to_known(),
        };
        let mut resp = Responder::new(VersionSet(known.clone()), &[theirs]);
        let mut groups = Vec::new();
        assign(&mut groups, &mut resp, a, 1..=4);
        assert_eq!(groups.len(), 2);
        promote(&mut groups, &resp);
        resolve(&known, &mut groups);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].versions, set(a, 2, 2));
        assert_eq!(groups[0].deps, set(b, 7, 7));
        // A responder that lacks b's 7 sends version 2 again; one that holds it does not.
        let wire = to_wire(&groups);
        assert_eq!(to_resend(&wire, &known, &[]), set(a, 2, 2));
        known.insert(b, Ranges::from_pairs(&[(7, 7)]));
        assert!(to_resend(&wire, &known, &[]).is_empty());
    }
}
