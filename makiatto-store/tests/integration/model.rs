//! A pure reference model of the replication semantics (replication.md §3.5-3.6): a map
//! from (table, pk) to the row's sentinel, column clocks and values. The store must equal
//! it after every step.

use std::collections::{BTreeMap, BTreeSet};

use makiatto_store::{Cell, Change, Ranges, SENTINEL, SiteId, Value, pack};

/// A table of the test schema: name and non-key columns with their defaults.
#[derive(Debug, Clone)]
pub(crate) struct TableDef {
    pub(crate) name: &'static str,
    pub(crate) cols: &'static [(&'static str, DefaultValue)],
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum DefaultValue {
    Null,
    Zero,
}

impl DefaultValue {
    fn value(self) -> Value {
        match self {
            DefaultValue::Null => Value::Null,
            DefaultValue::Zero => Value::Int(0),
        }
    }
}

pub(crate) const KV: TableDef = TableDef {
    name: "kv",
    cols: &[("a", DefaultValue::Null), ("b", DefaultValue::Zero)],
};
pub(crate) const PAIR: TableDef = TableDef {
    name: "pair",
    cols: &[("v", DefaultValue::Null)],
};

/// One clock entry: version and origin metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Clock {
    pub(crate) cv: i64,
    pub(crate) site: SiteId,
    pub(crate) ver: u64,
    pub(crate) seq: u32,
    pub(crate) ts: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Row {
    pub(crate) sentinel: Option<Clock>,
    pub(crate) clocks: BTreeMap<String, Clock>,
    /// Column values while the row exists.
    pub(crate) values: Option<BTreeMap<String, Value>>,
}

impl Row {
    fn cl(&self) -> i64 {
        self.sentinel.map_or(0, |s| s.cv)
    }
}

/// A local operation of a test transaction.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// `INSERT OR REPLACE` of a whole row.
    Put {
        table: usize,
        pk: Vec<Value>,
        values: Vec<Value>,
    },
    /// `UPDATE` of one column.
    Set {
        table: usize,
        pk: Vec<Value>,
        col: usize,
        value: Value,
    },
    /// `DELETE`.
    Del { table: usize, pk: Vec<Value> },
}

pub(crate) const TABLES: [TableDef; 2] = [KV, PAIR];

/// A state dump comparable between the store and the model: per (table, pk): sentinel
/// clock, column clocks, values.
pub(crate) type Dump = BTreeMap<(String, Vec<u8>), Row>;

#[derive(Debug, Clone)]
pub(crate) struct Model {
    pub(crate) site: SiteId,
    pub(crate) self_ver: u64,
    pub(crate) rows: Dump,
    pub(crate) known: BTreeMap<SiteId, Ranges>,
}

fn table_def(name: &str) -> &'static TableDef {
    TABLES.iter().find(|t| t.name == name).expect("test table")
}

impl Model {
    pub(crate) fn new(site: SiteId) -> Self {
        Model {
            site,
            self_ver: 0,
            rows: BTreeMap::new(),
            known: BTreeMap::new(),
        }
    }

    /// Applies a local transaction the way the capture triggers do. Returns whether a
    /// version was allocated.
    pub(crate) fn local(&mut self, ops: &[Op], ts: u64) -> bool {
        let ver = self.self_ver + 1;
        let mut seq = 0u32;
        let site = self.site;
        let mut stamp = |cv: i64| {
            let c = Clock {
                cv,
                site,
                ver,
                seq,
                ts,
            };
            seq += 1;
            c
        };
        let mut wrote = false;
        for op in ops {
            match op {
                Op::Put { table, pk, values } => {
                    let def = &TABLES[*table];
                    let row = self.rows.entry((def.name.into(), pack(pk))).or_default();
                    let cl = match row.sentinel.map(|s| s.cv) {
                        None => 1,
                        Some(cl) if cl % 2 == 0 => cl + 1,
                        Some(cl) => {
                            // Replacing a live row deletes it first (the delete's clock is
                            // overwritten by the insert's, but takes a seq) and starts a new
                            // generation: its columns start again at version 1.
                            let _delete = stamp(cl + 1);
                            row.clocks.clear();
                            cl + 2
                        }
                    };
                    row.sentinel = Some(stamp(cl));
                    for (col, _) in def.cols {
                        let cv = row.clocks.get(*col).map_or(1, |c| c.cv + 1);
                        row.clocks.insert((*col).into(), stamp(cv));
                    }
                    row.values = Some(
                        def.cols
                            .iter()
                            .zip(values)
                            .map(|((c, _), v)| ((*c).into(), v.clone()))
                            .collect(),
                    );
                    wrote = true;
                }
                Op::Set {
                    table,
                    pk,
                    col,
                    value,
                } => {
                    let def = &TABLES[*table];
                    let Some(row) = self.rows.get_mut(&(def.name.into(), pack(pk))) else {
                        continue;
                    };
                    let Some(values) = row.values.as_mut() else {
                        continue;
                    };
                    let name = def.cols[*col].0;
                    if values.get(name) == Some(value) {
                        continue;
                    }
                    values.insert(name.into(), value.clone());
                    // A column without a clock row (implicit at version 1, or never
                    // written) goes to version 2.
                    let cv = row.clocks.get(name).map_or(2, |c| c.cv + 1);
                    row.clocks.insert(name.into(), stamp(cv));
                    wrote = true;
                }
                Op::Del { table, pk } => {
                    let def = &TABLES[*table];
                    let Some(row) = self.rows.get_mut(&(def.name.into(), pack(pk))) else {
                        continue;
                    };
                    if row.values.is_none() {
                        continue;
                    }
                    let cl = match row.sentinel.map(|s| s.cv) {
                        None => 2,
                        Some(cl) if cl % 2 == 1 => cl + 1,
                        Some(cl) => cl + 2,
                    };
                    row.sentinel = Some(stamp(cl));
                    row.clocks.clear();
                    row.values = None;
                    wrote = true;
                }
            }
        }
        if wrote {
            self.self_ver = ver;
            self.known.entry(self.site).or_default().insert(ver);
        }
        wrote
    }

    /// Merges one whole version (replication.md §3.6). Returns false for a duplicate.
    pub(crate) fn merge(&mut self, c: &Change) -> bool {
        if self.known.get(&c.site).is_some_and(|r| r.contains(c.ver)) {
            return false;
        }
        self.merge_again(c);
        true
    }

    /// Merges a version even when it is known: a sync answer sends a version again only
    /// when the requester's copy may lack cells, and merging is idempotent.
    pub(crate) fn merge_again(&mut self, c: &Change) {
        let mut order: Vec<(String, Vec<u8>)> = Vec::new();
        let mut groups: BTreeMap<(String, Vec<u8>), Vec<&Cell>> = BTreeMap::new();
        for cell in &c.cells {
            let key = (cell.table.to_string(), cell.pk.to_vec());
            if !groups.contains_key(&key) {
                order.push(key.clone());
            }
            groups.entry(key).or_default().push(cell);
        }
        for key in order {
            let mut cells = groups.remove(&key).unwrap_or_default();
            cells.sort_by_key(|c| (!c.is_sentinel(), c.seq));
            let def = table_def(&key.0);
            let row = self.rows.entry(key).or_default();
            for cell in cells {
                merge_cell(row, def, c, cell);
            }
        }
        self.known.entry(c.site).or_default().insert(c.ver);
    }

    pub(crate) fn clear(&mut self, site: SiteId, ranges: &[(u64, u64)]) {
        if site == self.site {
            return;
        }
        let r = self.known.entry(site).or_default();
        for &(lo, hi) in ranges {
            r.insert_range(lo..=hi);
        }
    }

    /// The rows whose visible state (existence, values) differs between two dumps.
    pub(crate) fn visible_diff(before: &Dump, after: &Dump) -> BTreeSet<(String, Vec<u8>)> {
        let keys: BTreeSet<_> = before.keys().chain(after.keys()).cloned().collect();
        keys.into_iter()
            .filter(|k| {
                before.get(k).and_then(|r| r.values.as_ref())
                    != after.get(k).and_then(|r| r.values.as_ref())
            })
            .collect()
    }
}

fn merge_cell(row: &mut Row, def: &TableDef, c: &Change, cell: &Cell) {
    let meta = |cv: i64| Clock {
        cv,
        site: c.site,
        ver: c.ver,
        seq: cell.seq,
        ts: c.ts,
    };
    let cl_l = row.cl();
    let resurrect = |row: &mut Row, cl: i64| {
        if row.values.is_none() {
            row.values = Some(
                def.cols
                    .iter()
                    .map(|(n, d)| ((*n).into(), d.value()))
                    .collect(),
            );
        }
        for clock in row.clocks.values_mut() {
            clock.cv = 0;
        }
        row.sentinel = Some(meta(cl));
    };
    if &*cell.cid == SENTINEL {
        let cl = cell.cv;
        if cl < cl_l {
            return;
        }
        if cl == cl_l {
            let local = row.sentinel.expect("cl > 0 has a sentinel");
            if (c.ts, c.site) > (local.ts, local.site) {
                row.sentinel = Some(meta(cl));
            }
            return;
        }
        if cl % 2 == 0 {
            row.values = None;
            row.clocks.clear();
            row.sentinel = Some(meta(cl));
        } else {
            resurrect(row, cl);
        }
        return;
    }
    if cell.cl < cl_l {
        return;
    }
    if cell.cl > cl_l {
        resurrect(row, cell.cl);
    } else if let Some(local) = row.clocks.get(&*cell.cid)
        && (cell.cv, c.ts, c.site) <= (local.cv, local.ts, local.site)
    {
        return;
    }
    if let Some(values) = row.values.as_mut() {
        values.insert(cell.cid.to_string(), cell.val.clone());
    }
    row.clocks.insert(cell.cid.to_string(), meta(cell.cv));
}

/// Dumps a store in the model's shape (through a read-only connection).
pub(crate) fn dump(store: &makiatto_store::Store) -> Dump {
    store
        .read(|conn| {
            let tx = conn.unchecked_transaction()?;
            let mut sites = BTreeMap::new();
            let mut stmt = tx.prepare("SELECT ord, site FROM crr_sites")?;
            for r in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))? {
                let (o, s) = r?;
                sites.insert(o, SiteId(s.try_into().expect("16 bytes")));
            }
            let mut out: Dump = BTreeMap::new();
            for (def, clock_sql, rows_sql) in [
                (
                    &KV,
                    "SELECT pk, cid, cv, site_ord, ver, seq, ts, imp FROM kv__crr_clock",
                    "SELECT k, a, b FROM kv",
                ),
                (
                    &PAIR,
                    "SELECT pk, cid, cv, site_ord, ver, seq, ts, imp FROM pair__crr_clock",
                    "SELECT x, y, v FROM pair",
                ),
            ] {
                let mut stmt = tx.prepare(clock_sql)?;
                let mut rows = stmt.query([])?;
                // Sentinels with implicit column clocks, expanded once every row is read.
                let mut implicit: Vec<(Vec<u8>, Clock)> = Vec::new();
                while let Some(r) = rows.next()? {
                    let pk: Vec<u8> = r.get(0)?;
                    let cid: String = r.get(1)?;
                    let clock = Clock {
                        cv: r.get(2)?,
                        site: sites[&r.get::<_, i64>(3)?],
                        ver: r.get::<_, i64>(4)? as u64,
                        seq: r.get(5)?,
                        ts: r.get::<_, i64>(6)? as u64,
                    };
                    let row = out.entry((def.name.into(), pk.clone())).or_default();
                    if cid == SENTINEL {
                        row.sentinel = Some(clock);
                        let imp: i64 = r.get(7)?;
                        if imp != 0 && clock.cv % 2 == 1 {
                            implicit.push((pk, clock));
                        }
                    } else {
                        row.clocks.insert(cid, clock);
                    }
                }
                // Implicit column clocks (see the store's clock table docs): those of the
                // columns without a clock row.
                for (pk, clock) in implicit {
                    let row = out
                        .get_mut(&(def.name.into(), pk))
                        .expect("the sentinel's row");
                    // The clock rows of such a row come from local updates.
                    assert!(
                        row.clocks.values().all(|c| c.cv >= 2),
                        "a row with implicit column clocks has a clock row at version 1"
                    );
                    for (i, (c, _)) in def.cols.iter().enumerate() {
                        row.clocks.entry((*c).into()).or_insert(Clock {
                            cv: 1,
                            seq: clock.seq + 1 + i as u32,
                            ..clock
                        });
                    }
                }
                let nkey = if def.name == "kv" { 1 } else { 2 };
                let mut stmt = tx.prepare(rows_sql)?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    let key: Vec<Value> = (0..nkey).map(|i| r.get(i)).collect::<Result<_, _>>()?;
                    let mut values = BTreeMap::new();
                    for (i, (c, _)) in def.cols.iter().enumerate() {
                        values.insert((*c).to_string(), r.get::<_, Value>(nkey + i)?);
                    }
                    out.entry((def.name.into(), pack(&key))).or_default().values = Some(values);
                }
            }
            Ok(out)
        })
        .expect("dump")
}

/// SQL for one op (constant statements, bound values).
pub(crate) fn run_op(tx: &rusqlite::Transaction<'_>, op: &Op) -> rusqlite::Result<usize> {
    use rusqlite::params;
    match op {
        Op::Put {
            table: 0,
            pk,
            values,
        } => tx.execute(
            "INSERT OR REPLACE INTO kv (k, a, b) VALUES (?1, ?2, ?3)",
            params![pk[0], values[0], values[1]],
        ),
        Op::Put { pk, values, .. } => tx.execute(
            "INSERT OR REPLACE INTO pair (x, y, v) VALUES (?1, ?2, ?3)",
            params![pk[0], pk[1], values[0]],
        ),
        Op::Set {
            table: 0,
            pk,
            col: 0,
            value,
        } => tx.execute("UPDATE kv SET a = ?2 WHERE k = ?1", params![pk[0], value]),
        Op::Set {
            table: 0,
            pk,
            value,
            ..
        } => tx.execute("UPDATE kv SET b = ?2 WHERE k = ?1", params![pk[0], value]),
        Op::Set { pk, value, .. } => tx.execute(
            "UPDATE pair SET v = ?3 WHERE x = ?1 AND y = ?2",
            params![pk[0], pk[1], value],
        ),
        Op::Del { table: 0, pk } => tx.execute("DELETE FROM kv WHERE k = ?1", params![pk[0]]),
        Op::Del { pk, .. } => tx.execute(
            "DELETE FROM pair WHERE x = ?1 AND y = ?2",
            params![pk[0], pk[1]],
        ),
    }
}

/// Removes the live-row sentinel metadata, which may legitimately differ between converged
/// replicas (see the crate docs); everything else must be identical.
pub(crate) fn canonical(d: &Dump) -> Dump {
    let mut d = d.clone();
    for row in d.values_mut() {
        row.clocks.retain(|_, c| c.cv > 0);
        if let Some(s) = row.sentinel.as_mut()
            && s.cv % 2 == 1
        {
            *s = Clock {
                cv: s.cv,
                site: SiteId([0; 16]),
                ver: 0,
                seq: 0,
                ts: 0,
            };
        }
    }
    d
}
