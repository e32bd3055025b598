//! The single writer connection: local transactions (captured by triggers) and merges of
//! remote versions (replication.md §3.5, §3.6).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::functions::FunctionFlags;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{
    Connection, OptionalExtension, Transaction, TransactionBehavior, params, params_from_iter,
};

use crate::events::{CommitEvent, Origin, RowChange, RowChangeKind};
use crate::ids::Hlc;
use crate::known::{Ranges, VersionSet};
use crate::pending::{self, Group, Responder};
use crate::table::{SENTINEL, TableInfo};
use crate::value::{pack_refs, unpack};
use crate::wire::{Cell, Change};
use crate::{Result, SiteId, StoreError, Value};

/// What the capture functions see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Outside `Store::write`: writes to replicated tables fail.
    Idle,
    /// Inside a local write: triggers record clocks.
    Local,
    /// Inside a merge: triggers stay silent.
    Merge,
}

#[derive(Debug)]
struct TxState {
    mode: Mode,
    self_ord: i64,
    next_ver: u64,
    ver: Option<u64>,
    seq: u32,
    ts: u64,
    /// The rows local inserts and the columns local updates wrote, in seq order (see
    /// [`Capture`]).
    caps: Vec<Capture>,
    /// The tables written (`crr_ver(name)`), unless `touched_all`.
    touched: Vec<String>,
    /// A write whose trigger did not say its table (`crr_ver()`, as in a migration).
    touched_all: bool,
    /// The transaction may change the schema of replicated tables and create triggers (a
    /// migration, or the store's own set-up).
    ddl: bool,
    /// The replicated tables, whose schema only migrations change.
    replicated: Arc<std::collections::HashSet<String>>,
}

/// What a capture trigger saw: the seq it reserved and what it wrote. At commit the
/// version's cells are built from these instead of read back from the tables, for every clock row that still carries the capture's seq (a later
/// write to it would have given it a new seq, and a rolled-back statement or savepoint
/// restores the old one; see [`read_local`]).
#[derive(Debug)]
struct Capture {
    seq: u32,
    what: Captured,
}

/// What a [`Capture`] holds.
#[derive(Debug)]
enum Captured {
    /// An inserted row (`crr_cap`): its causal length (`crr_cl` for a re-insert) and its
    /// values in column order. Its sentinel has the seq, its implicit column clocks the
    /// next ones.
    Row { cl: i64, vals: Vec<Value> },
    /// An updated column (`crr_capu`): its index, the clock version it got, its new value.
    /// The row's causal length comes with the commit's scan.
    Col { idx: usize, cv: i64, val: Value },
}

/// Whether the captures of a local transaction describe its version. They do unless the
/// transaction changes the schema (a migration), which can change a table's columns
/// between an insert and the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Captures {
    /// Build the version from the captures where they apply.
    Use,
    /// Read the whole version back from the tables.
    Ignore,
}

/// Resets the capture mode to idle however the transaction ends.
struct ModeGuard<'a>(&'a Mutex<TxState>);
impl Drop for ModeGuard<'_> {
    fn drop(&mut self) {
        lock(self.0).mode = Mode::Idle;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Bidirectional site ↔ ordinal map (ordinals are local compression only).
#[derive(Debug, Default, Clone)]
pub(crate) struct Sites {
    by_site: HashMap<SiteId, i64>,
    by_ord: HashMap<i64, SiteId>,
}

impl Sites {
    pub(crate) fn load(conn: &Connection) -> Result<Self> {
        let mut s = Sites::default();
        let mut stmt = conn.prepare("SELECT ord, site FROM crr_sites")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        for row in rows {
            let (ord, bytes) = row?;
            let site = SiteId(bytes.try_into().map_err(|_| StoreError::Corrupt {
                table: "crr_sites",
                column: "site",
                reason: "site id is not 16 bytes".into(),
            })?);
            s.by_site.insert(site, ord);
            s.by_ord.insert(ord, site);
        }
        Ok(s)
    }

    pub(crate) fn site(&self, ord: i64) -> Option<SiteId> {
        self.by_ord.get(&ord).copied()
    }

    pub(crate) fn ord_or_insert(&mut self, conn: &Connection, site: SiteId) -> Result<i64> {
        if let Some(o) = self.by_site.get(&site) {
            return Ok(*o);
        }
        conn.execute("INSERT INTO crr_sites (site) VALUES (?1)", [&site.0[..]])?;
        let ord = conn.last_insert_rowid();
        self.by_site.insert(site, ord);
        self.by_ord.insert(ord, site);
        Ok(ord)
    }
}

/// The outcome of a committed local transaction.
pub(crate) struct LocalCommit<R> {
    pub(crate) value: R,
    pub(crate) change: Option<Change>,
}

/// The outcome of a committed merge batch.
#[derive(Debug, Default)]
pub(crate) struct MergeCommit {
    pub(crate) applied: Vec<(SiteId, u64)>,
    pub(crate) duplicates: usize,
    pub(crate) deferred: usize,
    pub(crate) events: Vec<CommitEvent>,
    pub(crate) known_added: Vec<(SiteId, u64, u64)>,
}

#[derive(Debug, Clone, Copy)]
struct ClockMeta {
    cv: i64,
    site_ord: i64,
    ts: u64,
}

pub(crate) struct Writer {
    pub(crate) conn: Connection,
    state: Arc<Mutex<TxState>>,
    pub(crate) hlc: Hlc,
    pub(crate) sites: Sites,
    pub(crate) self_site: SiteId,
    pub(crate) self_ord: i64,
    pub(crate) self_ver: u64,
    /// Working copy of the known sets, committed to memory only after COMMIT.
    pub(crate) known: BTreeMap<SiteId, Ranges>,
    /// Known versions whose copy may lack cells (see [`crate::pending`]).
    pub(crate) pending: Vec<Group>,
    /// The database's schema cookie as the store last checked it (see
    /// [`Writer::check_schema`]); `None` while the store opens.
    schema_cookie: Option<i64>,
    /// Tables a migration dropped: cells naming them are skipped, not deferred.
    pub(crate) dropped: BTreeSet<String>,
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        hlc: Hlc,
        self_site: SiteId,
        self_ver: u64,
    ) -> Result<Self> {
        let sites = Sites::load(&conn)?;
        let self_ord = *sites
            .by_site
            .get(&self_site)
            .ok_or_else(|| StoreError::Corrupt {
                table: "crr_sites",
                column: "site",
                reason: "own site id missing".into(),
            })?;
        let state = Arc::new(Mutex::new(TxState {
            mode: Mode::Idle,
            self_ord,
            next_ver: self_ver + 1,
            ver: None,
            seq: 0,
            ts: 0,
            caps: Vec::new(),
            touched: Vec::new(),
            touched_all: false,
            ddl: false,
            replicated: Arc::default(),
        }));
        register_functions(&conn, &state)?;
        // Inside `Store::write` the embedder's statements may not create triggers (only
        // migrations do, and `TableInfo::introspect` checks them), change a replicated
        // table's schema (the captures and triggers describe it as it was at open), shadow
        // one or the store's own tables with a temporary one, or write the store's tables
        // except through its triggers.
        let st = state.clone();
        let mut conn = conn;
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            let (name, schema) = match ctx.action {
                AuthAction::CreateTrigger { .. } | AuthAction::CreateTempTrigger { .. } => {
                    (None, true)
                }
                AuthAction::AlterTable { table_name, .. }
                | AuthAction::DropTable { table_name }
                | AuthAction::CreateTable { table_name }
                | AuthAction::CreateTempTable { table_name }
                | AuthAction::CreateIndex { table_name, .. }
                | AuthAction::CreateTempIndex { table_name, .. }
                | AuthAction::DropIndex { table_name, .. }
                | AuthAction::DropTrigger { table_name, .. }
                | AuthAction::CreateVtable { table_name, .. }
                | AuthAction::DropVtable { table_name, .. }
                | AuthAction::CreateView {
                    view_name: table_name,
                }
                | AuthAction::CreateTempView {
                    view_name: table_name,
                } => (Some(table_name), true),
                AuthAction::Insert { table_name }
                | AuthAction::Delete { table_name }
                | AuthAction::Update { table_name, .. } => (Some(table_name), false),
                _ => return Authorization::Allow,
            };
            let s = lock(&st);
            if s.mode != Mode::Local || s.ddl {
                return Authorization::Allow;
            }
            let internal = |t: &str| t.starts_with("crr_") || t.contains("__crr_");
            let deny = match name {
                None => true,
                Some(t) if schema => internal(t) || s.replicated.contains(t),
                // A capture trigger (`<table>__crr_…`) writes the clock tables.
                Some(t) => {
                    internal(t)
                        && !ctx.accessor.is_some_and(|a| {
                            a.split_once("__crr_")
                                .is_some_and(|(table, _)| s.replicated.contains(table))
                        })
                }
            };
            if deny {
                Authorization::Deny
            } else {
                Authorization::Allow
            }
        }))?;
        let known = load_known(&conn, &sites)?;
        let pending = pending::load(&conn, &sites)?;
        Ok(Writer {
            conn,
            state,
            hlc,
            sites,
            self_site,
            self_ord,
            self_ver,
            known,
            pending,
            schema_cookie: None,
            dropped: BTreeSet::new(),
        })
    }

    /// Notes the schema as the store leaves it at open.
    pub(crate) fn note_schema(&mut self) -> Result<()> {
        self.schema_cookie = Some(schema_cookie(&self.conn)?);
        Ok(())
    }

    /// Runs `f` in a local IMMEDIATE transaction with capture on.
    pub(crate) fn local<R>(
        &mut self,
        tables: &BTreeMap<String, Arc<TableInfo>>,
        captures: Captures,
        f: impl FnOnce(&Transaction<'_>) -> Result<R>,
    ) -> Result<LocalCommit<R>> {
        let ts = self.hlc.next();
        {
            let mut st = lock(&self.state);
            let mut caps = std::mem::take(&mut st.caps);
            caps.clear();
            let mut touched = std::mem::take(&mut st.touched);
            touched.clear();
            let replicated = st.replicated.clone();
            *st = TxState {
                mode: Mode::Local,
                self_ord: self.self_ord,
                next_ver: self.self_ver + 1,
                ver: None,
                seq: 0,
                ts,
                caps,
                touched,
                touched_all: false,
                ddl: captures == Captures::Ignore,
                replicated,
            };
        }
        let _guard = ModeGuard(&self.state);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if captures == Captures::Use {
            check_schema(&tx, &mut self.schema_cookie, tables)?;
        }
        let value = f(&tx)?;
        let (ver, mut caps, mut touched) = {
            let mut st = lock(&self.state);
            st.mode = Mode::Idle;
            let touched = (!st.touched_all).then(|| std::mem::take(&mut st.touched));
            (st.ver, std::mem::take(&mut st.caps), touched)
        };
        let Some(ver) = ver else {
            if captures == Captures::Ignore {
                // A migration may remove the last clock rows of an own version (those of a
                // column it drops), from which the version counter is recovered at open.
                write_own_clock(&tx, self.self_ver, self.hlc.last())?;
            }
            tx.commit()?;
            return Ok(LocalCommit {
                value,
                change: None,
            });
        };
        // The schema may have changed: every table is read back whole, as it is now (a
        // column a migration dropped can no longer be read).
        let migrated;
        let tables = if captures == Captures::Ignore {
            caps.clear();
            touched = None;
            migrated = crate::store::load_tables(&tx)?;
            &migrated
        } else {
            tables
        };
        let change = read_local(
            &tx,
            tables,
            TxWrites {
                touched: touched.as_deref(),
                caps: &mut caps,
            },
            self.self_ord,
            self.self_site,
            ver,
            ts,
        )?;
        {
            // Keep the buffer for the next transaction, unless a big one grew it.
            caps.clear();
            caps.shrink_to(1024);
            lock(&self.state).caps = caps;
        }
        let mut ranges = self.known.get(&self.self_site).cloned().unwrap_or_default();
        ranges.insert(ver);
        // This replica's own known set is always 1..=self_ver, so it is not written to
        // crr_known (see `load_known`). Nor are self_ver and the HLC while the version's
        // clock rows carry them (`own_clock`).
        if change.cells.is_empty() {
            write_own_clock(&tx, ver, self.hlc.last())?;
        }
        tx.commit()?;
        self.self_ver = ver;
        self.known.insert(self.self_site, ranges);
        Ok(LocalCommit {
            value,
            change: Some(change),
        })
    }

    /// Merges whole remote versions in one transaction. Malformed input is refused before
    /// anything is written; versions naming unknown tables or columns are deferred.
    pub(crate) fn merge(
        &mut self,
        tables: &BTreeMap<String, Arc<TableInfo>>,
        changes: &[Change],
        cleared: &[(SiteId, u64, u64)],
        mut from_sync: Option<&mut Responder>,
    ) -> Result<MergeCommit> {
        for c in changes {
            validate(c)?;
        }
        {
            let mut st = lock(&self.state);
            st.mode = Mode::Merge;
        }
        let _guard = ModeGuard(&self.state);
        let mut sites = self.sites.clone();
        let mut known = self.known.clone();
        let mut groups = self.pending.clone();
        let mut out = MergeCommit::default();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_schema(&tx, &mut self.schema_cookie, tables)?;
        let mut touched: Vec<SiteId> = Vec::new();
        let mut max_ts = 0;
        for c in changes {
            if c.site == self.self_site && c.ver > self.self_ver {
                // Our own site id with a version we never issued: the id was cloned.
                tracing::error!(site = %c.site, ver = c.ver, "received an unissued version of our own site");
                return Err(StoreError::Malformed(
                    "version of our own site that we never issued".into(),
                ));
            }
            let was_known = known.get(&c.site).is_some_and(|r| r.contains(c.ver));
            // A pending version that comes again in a sync answer is merged again (merging
            // is idempotent): this copy may have the cells the earlier one lacked.
            if was_known && (from_sync.is_none() || !pending::is_pending(&groups, &c.site, c.ver)) {
                out.duplicates += 1;
                continue;
            }
            let ord = sites.ord_or_insert(&tx, c.site)?;
            // Cells of a table a migration dropped are skipped (`merge_change`).
            if !c.cells.iter().all(|cell| {
                tables.get(&*cell.table).map_or_else(
                    || self.dropped.contains(&*cell.table),
                    |t| cell.is_sentinel() || t.col_index.contains_key(&*cell.cid),
                )
            }) {
                let frame =
                    postcard::to_allocvec(c).map_err(|e| StoreError::Malformed(e.to_string()))?;
                tx.execute(
                    "INSERT OR REPLACE INTO crr_deferred (site_ord, ver, frame) VALUES (?1, ?2, ?3)",
                    params![ord, c.ver as i64, frame],
                )?;
                out.deferred += 1;
                continue;
            }
            let changes = merge_change(&tx, tables, &sites, ord, c)?;
            tx.execute(
                "DELETE FROM crr_buffer WHERE site_ord = ?1 AND ver = ?2",
                params![ord, c.ver as i64],
            )?;
            tx.execute(
                "DELETE FROM crr_deferred WHERE site_ord = ?1 AND ver = ?2",
                params![ord, c.ver as i64],
            )?;
            if let Some(resp) = from_sync.as_deref_mut() {
                pending::assign(&mut groups, resp, c.site, c.ver..=c.ver);
            }
            max_ts = max_ts.max(c.ts);
            if !was_known {
                known.entry(c.site).or_default().insert(c.ver);
                touched.push(c.site);
                out.applied.push((c.site, c.ver));
                out.known_added.push((c.site, c.ver, c.ver));
            }
            if !changes.is_empty() {
                out.events.push(CommitEvent {
                    origin: Origin::Remote(c.site, c.ver),
                    changes,
                });
            }
        }
        for &(site, lo, hi) in cleared {
            if site == self.self_site {
                continue;
            }
            sites.ord_or_insert(&tx, site)?;
            if let Some(resp) = from_sync.as_deref_mut() {
                // What is not complete here yet is now pending on this responder.
                let mut fresh = VersionSet::default();
                fresh.insert_range(site, lo..=hi);
                fresh.subtract(&pending::solid(&known, &groups));
                for r in fresh.0.get(&site).map(Ranges::iter).into_iter().flatten() {
                    pending::assign(&mut groups, resp, site, r);
                }
            }
            known.entry(site).or_default().insert_range(lo..=hi);
            touched.push(site);
            out.known_added.push((site, lo, hi));
        }
        touched.sort();
        touched.dedup();
        for site in &touched {
            let ord = sites.ord_or_insert(&tx, *site)?;
            write_known(&tx, ord, &known[site])?;
        }
        if !groups.is_empty() || !self.pending.is_empty() {
            pending::resolve(&known, &mut groups);
            if groups != self.pending {
                pending::write(&tx, &mut sites, &groups)?;
            }
        }
        if max_ts > 0 && !self.hlc.observe(max_ts) {
            tracing::warn!(
                ts = max_ts,
                "remote timestamp too far in the future; not adopted"
            );
        }
        // Merged cells may have overwritten the last clock rows of an own version.
        write_own_clock(&tx, self.self_ver, self.hlc.last())?;
        tx.commit()?;
        self.sites = sites;
        self.known = known;
        self.pending = groups;
        Ok(out)
    }

    /// Ends a complete sync session from `resp` (see [`pending::promote`]).
    pub(crate) fn promote(&mut self, resp: &Responder) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut groups = self.pending.clone();
        pending::promote(&mut groups, resp);
        pending::resolve(&self.known, &mut groups);
        if groups != self.pending {
            let mut sites = self.sites.clone();
            let tx = self.conn.transaction()?;
            pending::write(&tx, &mut sites, &groups)?;
            tx.commit()?;
            self.sites = sites;
            self.pending = groups;
        }
        Ok(())
    }

    /// Names the replicated tables, whose schema `Store::write` may not change.
    pub(crate) fn set_replicated(&mut self, names: impl IntoIterator<Item = String>) {
        lock(&self.state).replicated = Arc::new(names.into_iter().collect());
    }

    /// Drops the cached state after a failed transaction so it is re-read from disk.
    pub(crate) fn reload(&mut self) -> Result<()> {
        self.sites = Sites::load(&self.conn)?;
        self.known = load_known(&self.conn, &self.sites)?;
        self.pending = pending::load(&self.conn, &self.sites)?;
        Ok(())
    }
}

impl Drop for Writer {
    /// Leaves `crr_meta` current on a clean close, so that the file alone says what
    /// version and time this replica reached (for tools, and for a binary from before
    /// `own_clock` that reads only `crr_meta`).
    fn drop(&mut self) {
        if let Err(e) = write_own_clock(&self.conn, self.self_ver, self.hlc.last()) {
            tracing::warn!(error = %e, "could not record the version counter at close");
        }
    }
}

fn schema_cookie(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached("PRAGMA schema_version")?
        .query_row([], |r| r.get(0))?)
}

/// Checks, at the start of a write or merge, that no other connection changed a
/// replicated table since the store last looked: the captures, triggers and generated SQL
/// describe the tables as they were at open. SQLite's schema cookie moves with every schema
/// change; when it has, each table is looked at again (another change, such as a table of
/// the embedder's, is fine).
fn check_schema(
    conn: &Connection,
    cookie: &mut Option<i64>,
    tables: &BTreeMap<String, Arc<TableInfo>>,
) -> Result<()> {
    let Some(known) = *cookie else {
        return Ok(());
    };
    let now = schema_cookie(conn)?;
    if now == known {
        return Ok(());
    }
    for info in tables.values() {
        let changed = match TableInfo::introspect(conn, &info.name, info.class) {
            Err(e) => Some(e.to_string()),
            Ok(t) if t.pks != info.pks || t.cols != info.cols => Some("its columns changed".into()),
            Ok(_) if !info.triggers_in_place(conn)? => {
                Some("the store's triggers on it are gone".into())
            }
            Ok(_) => None,
        };
        if let Some(reason) = changed {
            return Err(StoreError::SchemaChanged {
                table: info.name.clone(),
                reason,
            });
        }
    }
    *cookie = Some(now);
    Ok(())
}

fn validate(c: &Change) -> Result<()> {
    let bad = |why: &str| {
        Err(StoreError::Malformed(format!(
            "version {} of {}: {why}",
            c.ver, c.site
        )))
    };
    if c.ver == 0 {
        return bad("version 0");
    }
    for cell in &c.cells {
        if cell.cl < 1 {
            return bad("causal length < 1");
        }
        if cell.is_sentinel() {
            if cell.cv != cell.cl {
                return bad("sentinel cv differs from cl");
            }
        } else if cell.cl % 2 == 0 || cell.cv < 1 {
            return bad("column cell of a deleted row or with version < 1");
        }
        unpack(&cell.pk)?;
    }
    Ok(())
}

/// Merges one complete origin version (replication.md §3.6). Returns the visible changes.
fn merge_change(
    tx: &Transaction<'_>,
    tables: &BTreeMap<String, Arc<TableInfo>>,
    sites: &Sites,
    ord: i64,
    c: &Change,
) -> Result<Vec<RowChange>> {
    // Group cells by row, keeping first-appearance order; the sentinel goes first.
    let mut order: Vec<(&str, &[u8])> = Vec::new();
    let mut groups: HashMap<(&str, &[u8]), Vec<&Cell>> = HashMap::new();
    for cell in &c.cells {
        let key = (&*cell.table, &*cell.pk);
        let g = groups.entry(key).or_insert_with(|| {
            order.push(key);
            Vec::new()
        });
        g.push(cell);
    }
    let mut out = Vec::new();
    let mut fresh = FreshRows::default();
    for key in order {
        let mut cells = groups.remove(&key).unwrap_or_default();
        cells.sort_by_key(|c| (!c.is_sentinel(), c.seq));
        let Some(info) = tables.get(key.0) else {
            continue;
        };
        let mut clocks = load_clocks(tx, info, key.1)?;
        if clocks.implicit {
            // The first merge into a row whose column clocks are implicit writes them out.
            if let Some(sql) = &info.sql.materialize {
                tx.prepare_cached(sql)?.execute([key.1])?;
            }
            tx.prepare_cached(&info.sql.clear_imp)?.execute([key.1])?;
            clocks = load_clocks(tx, info, key.1)?;
        }
        let clocks = clocks.by_cid;
        if clocks.is_empty() && is_insert(&cells) {
            // A row never seen here, arriving whole: its cells win and are written in
            // multi-row statements with the version's other new rows.
            fresh.add(info, key.1, &cells)?;
            out.push(RowChange {
                table: info.arc_name.clone(),
                pk: Arc::from(key.1),
                kind: RowChangeKind::Upsert(info.arc_cols.clone()),
            });
            continue;
        }
        if let Some(kind) = merge_row(tx, info, sites, (ord, c), key.1, &cells, clocks)? {
            out.push(RowChange {
                table: info.arc_name.clone(),
                pk: Arc::from(key.1),
                kind,
            });
        }
    }
    fresh.write(tx, ord, c)?;
    Ok(out)
}

/// Whether a row's cells (sentinel first) are a plain insert: a live sentinel, then at most
/// one cell per column, all of that generation. Merged into a row with no local clocks,
/// such cells all win: the row is written with exactly these values and clocks.
fn is_insert(cells: &[&Cell]) -> bool {
    let Some((first, cols)) = cells.split_first() else {
        return false;
    };
    if !first.is_sentinel() || first.cl % 2 == 0 {
        return false;
    }
    let mut seen: Vec<&str> = Vec::with_capacity(cols.len());
    for c in cols {
        if c.is_sentinel() || c.cl != first.cl || seen.contains(&&*c.cid) {
            return false;
        }
        seen.push(&c.cid);
    }
    true
}

/// Rows new to this replica from one version, written together (see [`is_insert`]).
#[derive(Default)]
struct FreshRows<'a> {
    /// Per table: its info, the rows by column subset (each row's parameters: key values
    /// then column values), and the clock cells (pk, cid, cv, seq).
    tables: BTreeMap<&'a str, FreshTable<'a>>,
}

struct FreshTable<'a> {
    info: &'a TableInfo,
    rows: BTreeMap<Vec<usize>, Vec<Vec<Value>>>,
    clocks: Vec<(&'a [u8], &'a str, i64, u32)>,
}

/// Rows per multi-row insert, and clock cells per multi-row clock insert.
const FRESH_ROWS: usize = 64;
const FRESH_CLOCKS: usize = 128;

impl<'a> FreshRows<'a> {
    fn add(&mut self, info: &'a TableInfo, pk: &'a [u8], cells: &[&'a Cell]) -> Result<()> {
        let t = self
            .tables
            .entry(info.name.as_str())
            .or_insert_with(|| FreshTable {
                info,
                rows: BTreeMap::new(),
                clocks: Vec::new(),
            });
        let mut cols: Vec<(usize, &Value)> = Vec::with_capacity(cells.len());
        for cell in cells {
            t.clocks.push((pk, &*cell.cid, cell.cv, cell.seq));
            if !cell.is_sentinel() {
                let idx = *info.col_index.get(&*cell.cid).ok_or_else(|| {
                    StoreError::Malformed(format!("unknown column {} of {}", cell.cid, info.name))
                })?;
                cols.push((idx, &cell.val));
            }
        }
        cols.sort_by_key(|(i, _)| *i);
        let mut params = unpack(pk)?;
        params.extend(cols.iter().map(|(_, v)| (*v).clone()));
        t.rows
            .entry(cols.iter().map(|(i, _)| *i).collect())
            .or_default()
            .push(params);
        Ok(())
    }

    fn write(self, tx: &Transaction<'_>, ord: i64, c: &Change) -> Result<()> {
        for t in self.tables.into_values() {
            for (cols, rows) in &t.rows {
                for chunk in rows.chunks(FRESH_ROWS) {
                    let sql = t.info.sql.rows_insert(t.info, cols, chunk.len());
                    tx.prepare_cached(&sql)?
                        .execute(params_from_iter(chunk.iter().flatten()))?;
                }
            }
            for chunk in t.clocks.chunks(FRESH_CLOCKS) {
                let mut args: Vec<rusqlite::types::Value> = Vec::with_capacity(3 + 4 * chunk.len());
                args.push(ord.into());
                args.push((c.ver as i64).into());
                args.push((c.ts as i64).into());
                for &(pk, cid, cv, seq) in chunk {
                    args.push(rusqlite::types::Value::Blob(pk.to_vec()));
                    args.push(cid.to_owned().into());
                    args.push(cv.into());
                    args.push(i64::from(seq).into());
                }
                tx.prepare_cached(&t.info.sql.clocks_insert(chunk.len()))?
                    .execute(params_from_iter(args))?;
            }
        }
        Ok(())
    }
}

/// The clock rows of one row.
struct RowClocks {
    /// Column (or sentinel) → its clock.
    by_cid: HashMap<String, ClockMeta>,
    /// The sentinel's `imp` flag: the column clocks are implicit.
    implicit: bool,
}

fn load_clocks(tx: &Transaction<'_>, info: &TableInfo, pk: &[u8]) -> Result<RowClocks> {
    let mut clocks = RowClocks {
        by_cid: HashMap::new(),
        implicit: false,
    };
    let mut stmt = tx.prepare_cached(&info.sql.clock_get_row)?;
    let mut rows = stmt.query([pk])?;
    while let Some(r) = rows.next()? {
        let meta = ClockMeta {
            cv: r.get(1)?,
            site_ord: r.get(2)?,
            ts: r.get::<_, i64>(5)? as u64,
        };
        let cid: String = r.get(0)?;
        if cid == SENTINEL {
            clocks.implicit = r.get(6)?;
        }
        clocks.by_cid.insert(cid, meta);
    }
    Ok(clocks)
}

fn merge_row(
    tx: &Transaction<'_>,
    info: &TableInfo,
    sites: &Sites,
    (ord, c): (i64, &Change),
    pk: &[u8],
    cells: &[&Cell],
    mut clocks: HashMap<String, ClockMeta>,
) -> Result<Option<RowChangeKind>> {
    let sql = &info.sql;
    let site_of = |m: &ClockMeta| sites.site(m.site_ord).unwrap_or(SiteId([0; 16]));
    let pk_values = unpack(pk)?;
    let mut cl_l = clocks.get(SENTINEL).map_or(0, |m| m.cv);
    let existed_before = cl_l % 2 == 1;
    let this = |cv: i64| ClockMeta {
        cv,
        site_ord: ord,
        ts: c.ts,
    };
    // Clock writes of this row, issued as one multi-row upsert per row (`flush_clocks`);
    // the latest write of a cell wins, as it would statement by statement.
    let clock_writes: RefCell<BTreeMap<String, (i64, u32)>> = RefCell::default();
    let upsert_clock = |cid: &str, cv: i64, seq: u32| {
        clock_writes.borrow_mut().insert(cid.to_owned(), (cv, seq));
    };
    let flush_clocks = || -> Result<()> {
        let writes = std::mem::take(&mut *clock_writes.borrow_mut());
        if writes.is_empty() {
            return Ok(());
        }
        let mut args: Vec<rusqlite::types::Value> = Vec::with_capacity(4 + 3 * writes.len());
        args.push(rusqlite::types::Value::Blob(pk.to_vec()));
        args.push(ord.into());
        args.push((c.ver as i64).into());
        args.push((c.ts as i64).into());
        let n = writes.len();
        for (cid, (cv, seq)) in writes {
            args.push(cid.into());
            args.push(cv.into());
            args.push(i64::from(seq).into());
        }
        tx.prepare_cached(&sql.clock_upsert_rows(n))?
            .execute(params_from_iter(args))?;
        Ok(())
    };
    // Winning column values, written to the row in one statement per row (`flush`).
    let mut pending: BTreeMap<usize, Value> = BTreeMap::new();
    // Whether the base row exists in the table as far as the writes so far go.
    let mut row_exists = existed_before;
    let mut changed_cols: Vec<Arc<str>> = Vec::new();
    let flush = |pending: &mut BTreeMap<usize, Value>,
                 row_exists: &mut bool,
                 changed: &mut Vec<Arc<str>>|
     -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        // Visible changes of an existing row are told by comparing it before and after,
        // both as SQLite stores them (so type coercion cannot fake a change).
        let before = if *row_exists {
            select_row(tx, info, pk)?
        } else {
            None
        };
        let idx: Vec<usize> = pending.keys().copied().collect();
        let mut args = pk_values.clone();
        args.extend(std::mem::take(pending).into_values());
        tx.prepare_cached(&sql.row_upsert(info, &idx))?
            .execute(params_from_iter(args))?;
        if let Some(before) = before {
            let after = select_row(tx, info, pk)?.unwrap_or_default();
            for i in idx {
                if before.get(i) != after.get(i) {
                    changed.push(info.arc_cols[i].clone());
                }
            }
        }
        *row_exists = true;
        Ok(())
    };
    // A new generation of the row: make it exist (PK only, other columns at their
    // defaults) and demote the previous generation's column clocks to version 0, so that
    // anything of the new generation wins. A row never seen here needs neither.
    let resurrect = |clocks: &mut HashMap<String, ClockMeta>,
                     row_exists: &mut bool,
                     cl: i64,
                     seq: u32|
     -> Result<()> {
        if clocks.is_empty() {
            // Nothing of this row exists locally: the row is written with its columns.
            *row_exists = false;
        } else {
            tx.prepare_cached(&sql.row_insert_pk)?
                .execute(params_from_iter(&pk_values))?;
            *row_exists = true;
            if clocks.keys().any(|k| k != SENTINEL) {
                flush_clocks()?;
                tx.prepare_cached(&sql.clock_zero_cols)?.execute([pk])?;
                for (k, m) in clocks.iter_mut() {
                    if k != SENTINEL {
                        m.cv = 0;
                    }
                }
            }
        }
        upsert_clock(SENTINEL, cl, seq);
        clocks.insert(SENTINEL.into(), this(cl));
        Ok(())
    };
    for cell in cells {
        if cell.is_sentinel() {
            let cl = cell.cv;
            if cl < cl_l {
                continue;
            }
            if cl == cl_l {
                // Same generation: only the metadata converges (to the greatest writer).
                if let Some(local) = clocks.get(SENTINEL).copied()
                    && (c.ts, c.site) > (local.ts, site_of(&local))
                {
                    upsert_clock(SENTINEL, cl, cell.seq);
                    clocks.insert(SENTINEL.into(), this(cl));
                }
                continue;
            }
            flush(&mut pending, &mut row_exists, &mut changed_cols)?;
            if cl % 2 == 0 {
                tx.prepare_cached(&sql.row_delete)?
                    .execute(params_from_iter(&pk_values))?;
                flush_clocks()?;
                tx.prepare_cached(&sql.clock_delete_cols)?.execute([pk])?;
                upsert_clock(SENTINEL, cl, cell.seq);
                clocks.retain(|k, _| k == SENTINEL);
                clocks.insert(SENTINEL.into(), this(cl));
                changed_cols.clear();
                row_exists = false;
            } else {
                resurrect(&mut clocks, &mut row_exists, cl, cell.seq)?;
            }
            cl_l = cl;
            continue;
        }
        if cell.cl < cl_l {
            continue;
        }
        let wins = if cell.cl > cl_l {
            // A column of a newer generation resurrects the row even if its sentinel is late.
            flush(&mut pending, &mut row_exists, &mut changed_cols)?;
            resurrect(&mut clocks, &mut row_exists, cell.cl, cell.seq)?;
            cl_l = cell.cl;
            true
        } else {
            match clocks.get(&*cell.cid) {
                None => true,
                Some(local) => (cell.cv, c.ts, c.site) > (local.cv, local.ts, site_of(local)),
            }
        };
        if !wins {
            continue;
        }
        let idx = *info.col_index.get(&*cell.cid).ok_or_else(|| {
            StoreError::Malformed(format!("unknown column {} of {}", cell.cid, info.name))
        })?;
        pending.insert(idx, cell.val.clone());
        upsert_clock(&cell.cid, cell.cv, cell.seq);
        clocks.insert(cell.cid.to_string(), this(cell.cv));
    }
    let exists_after = cl_l % 2 == 1;
    flush_clocks()?;
    flush(&mut pending, &mut row_exists, &mut changed_cols)?;
    if exists_after && !row_exists {
        // A new row whose version carried none of its columns (all superseded since).
        tx.prepare_cached(&sql.row_insert_pk)?
            .execute(params_from_iter(&pk_values))?;
    }
    changed_cols.sort();
    changed_cols.dedup();
    Ok(match (existed_before, exists_after) {
        (false, false) => None,
        (true, false) => Some(RowChangeKind::Delete),
        // A new row: every column is new.
        (false, true) => Some(RowChangeKind::Upsert(info.arc_cols.clone())),
        (true, true) => (!changed_cols.is_empty()).then_some(RowChangeKind::Upsert(changed_cols)),
    })
}

/// Reads the surviving cells of one version of `site_ord` (inside the caller's transaction).
pub(crate) fn read_version(
    conn: &Connection,
    tables: &BTreeMap<String, Arc<TableInfo>>,
    site_ord: i64,
    site: SiteId,
    ver: u64,
    ts: u64,
) -> Result<Change> {
    let mut cells = Vec::new();
    for info in tables.values() {
        read_table_version(conn, info, site_ord, ver, &mut cells)?;
    }
    cells.sort_by_key(|c| c.seq);
    Ok(Change {
        site,
        ver,
        ts,
        cells,
    })
}

/// Appends the cells of one table's clock rows of version `ver` of `site_ord`, read back
/// from the clock and the table.
fn read_table_version(
    conn: &Connection,
    info: &TableInfo,
    site_ord: i64,
    ver: u64,
    cells: &mut Vec<Cell>,
) -> Result<()> {
    let mut stmt = conn.prepare_cached(&info.sql.clock_by_version)?;
    let mut rows = stmt.query(params![site_ord, ver as i64])?;
    let mut reader = RowReader::new(conn, info)?;
    while let Some(r) = rows.next()? {
        let pk: Vec<u8> = r.get(0)?;
        let cid: String = r.get(1)?;
        let cv: i64 = r.get(2)?;
        let cl = causal_length(conn, info, &pk, &cid, cv)?;
        let row = ClockRow {
            pk,
            cid,
            cv,
            seq: r.get(3)?,
            cl,
            imp: r.get(4)?,
        };
        clock_row_cells(info, &mut reader, row, |c| cells.push(c))?;
    }
    Ok(())
}

/// The causal length of the row a clock row `cid` with version `cv` belongs to: its own
/// `cv` for a sentinel, else the row's sentinel's.
fn causal_length(
    conn: &Connection,
    info: &TableInfo,
    pk: &[u8],
    cid: &str,
    cv: i64,
) -> Result<i64> {
    if cid == SENTINEL {
        return Ok(cv);
    }
    Ok(conn
        .prepare_cached(&info.sql.clock_cl)?
        .query_row([pk], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// The cells of this replica's version `ver` as its transaction commits: each clock row of
/// the version is found by an index-only scan, and the rows the transaction inserted are
/// taken from `caps` instead of being read back. The rest (deletes, and rows or columns
/// written by triggers older than the captures) is read as [`read_version`] does.
///
/// A capture applies to a clock row only through the row's seq: a sentinel that still
/// carries the seq its insert reserved was written by that insert (a later write to it
/// would have given it a new seq, and a rolled-back write restores the old one), so its
/// values are the inserted ones for every column that is still implicit (a column an
/// update changed has a clock row of this version, with its own capture). A column clock
/// row that carries seq + 1 + i (written out by triggers of an older version) was not
/// changed since either. A column clock row that carries an update's seq holds that
/// update's value: a later change to the column fires its trigger again, and a write of
/// an equal value (same type and bytes) does not.
fn read_local(
    conn: &Connection,
    tables: &BTreeMap<String, Arc<TableInfo>>,
    TxWrites { touched, caps }: TxWrites<'_>,
    site_ord: i64,
    site: SiteId,
    ver: u64,
    ts: u64,
) -> Result<Change> {
    let mut cells = Vec::new();
    for info in tables.values() {
        if touched.is_some_and(|t| !t.contains(&info.name)) {
            continue;
        }
        if caps.is_empty() {
            // Nothing was inserted: one scan reads each clock row whole.
            read_table_version(conn, info, site_ord, ver, &mut cells)?;
            continue;
        }
        let mut stmt = conn.prepare_cached(&info.sql.clock_seqs_by_version)?;
        let entries = stmt
            .query_map(params![site_ord, ver as i64], |r| {
                let cid = r.get_ref(1)?.as_str()?;
                let cid = if cid == SENTINEL {
                    Cid::Sentinel
                } else if let Some(&i) = info.col_index.get(cid) {
                    Cid::Col(i)
                } else {
                    Cid::Other(cid.to_owned())
                };
                Ok((
                    Arc::<[u8]>::from(r.get_ref(0)?.as_blob()?),
                    cid,
                    r.get::<_, u32>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if entries.is_empty() {
            continue;
        }
        // The columns with a clock row in this version, by key: for a row inserted here,
        // the ones an update in this transaction changed (the others stay implicit).
        let mut explicit: HashMap<&[u8], Vec<usize>, foldhash::fast::RandomState> =
            HashMap::default();
        for (pk, cid, _, _) in &entries {
            if let Cid::Col(k) = cid {
                explicit.entry(&**pk).or_default().push(*k);
            }
        }
        let n = info.cols.len();
        let mut reader = None;
        for (pk, cid, seq, row_cl) in &entries {
            let i = caps.partition_point(|c| c.seq <= *seq);
            let cap = i.checked_sub(1).map(|i| &mut caps[i]);
            let cell =
                |pk: &Arc<[u8]>, cid: &Arc<str>, val: Value, cv: i64, cl: i64, seq: u32| Cell {
                    table: info.arc_name.clone(),
                    pk: pk.clone(),
                    cid: cid.clone(),
                    val,
                    cv,
                    cl,
                    seq,
                };
            match (cap, cid) {
                (
                    Some(Capture {
                        seq: at,
                        what: Captured::Row { cl, vals },
                    }),
                    Cid::Sentinel,
                ) if at == seq && vals.len() == n => {
                    let sentinel = &info.arc_sentinel;
                    cells.push(cell(pk, sentinel, Value::Null, *cl, *cl, *seq));
                    // The columns an update in this transaction gave a clock row come
                    // as their own entries; the others are still implicit.
                    let own = explicit.get(&**pk).map_or(&[][..], Vec::as_slice);
                    for (k, col) in info.arc_cols.iter().enumerate() {
                        if own.contains(&k) {
                            continue;
                        }
                        let val = std::mem::replace(&mut vals[k], Value::Null);
                        cells.push(cell(pk, col, val, 1, *cl, seq + 1 + k as u32));
                    }
                }
                (
                    Some(Capture {
                        seq: at,
                        what: Captured::Row { cl, vals },
                    }),
                    &Cid::Col(k),
                ) if vals.len() == n && *seq == *at + 1 + k as u32 => {
                    let val = std::mem::replace(&mut vals[k], Value::Null);
                    cells.push(cell(pk, &info.arc_cols[k], val, 1, *cl, *seq));
                }
                (
                    Some(Capture {
                        seq: at,
                        what: Captured::Col { idx, cv, val },
                    }),
                    &Cid::Col(k),
                ) if at == seq && *idx == k => {
                    // The row's causal length: its sentinel's, unchanged since the update
                    // (a delete would have removed this clock row).
                    let cl = row_cl.unwrap_or(0);
                    let val = std::mem::replace(val, Value::Null);
                    cells.push(cell(pk, &info.arc_cols[k], val, *cv, cl, *seq));
                }
                (_, cid) => {
                    let cid = match cid {
                        Cid::Sentinel => SENTINEL,
                        Cid::Col(k) => &info.cols[*k],
                        Cid::Other(c) => c,
                    };
                    let reader = match &mut reader {
                        Some(r) => r,
                        None => reader.insert(RowReader::new(conn, info)?),
                    };
                    let (cv, imp): (i64, i64) = conn
                        .prepare_cached(&info.sql.clock_cv_imp)?
                        .query_row(params![&**pk, cid], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    // A column's row: its sentinel's, from the scan.
                    let cl = if cid == SENTINEL {
                        cv
                    } else {
                        row_cl.unwrap_or(0)
                    };
                    let row = ClockRow {
                        pk: pk.to_vec(),
                        cid: cid.to_owned(),
                        cv,
                        seq: *seq,
                        cl,
                        imp,
                    };
                    clock_row_cells(info, reader, row, |c| cells.push(c))?;
                }
            }
        }
    }
    if !cells.is_sorted_by_key(|c| c.seq) {
        cells.sort_by_key(|c| c.seq);
    }
    Ok(Change {
        site,
        ver,
        ts,
        cells,
    })
}

/// What a local transaction's triggers reported: the tables written (`None`: unknown, read
/// them all) and the inserted rows.
struct TxWrites<'a> {
    touched: Option<&'a [String]>,
    caps: &'a mut [Capture],
}

/// A clock row's column id as [`read_local`] scans them.
#[derive(Debug, PartialEq, Eq)]
enum Cid {
    Sentinel,
    /// Index into the table's columns.
    Col(usize),
    /// Not a column of the table as this replica knows it.
    Other(String),
}

/// Reads a table's rows while clock rows are turned into cells: one prepared statement,
/// and the rows read so far by packed key.
pub(crate) struct RowReader<'c> {
    conn: &'c Connection,
    stmt: rusqlite::CachedStatement<'c>,
    width: usize,
    cache: HashMap<Vec<u8>, Option<Vec<Value>>>,
}

impl<'c> RowReader<'c> {
    pub(crate) fn new(conn: &'c Connection, info: &TableInfo) -> Result<Self> {
        Ok(RowReader {
            conn,
            stmt: conn.prepare_cached(&info.sql.row_select)?,
            width: info.cols.len(),
            cache: HashMap::new(),
        })
    }

    /// The columns of the row at `pk` that have a clock row.
    fn explicit(&self, info: &TableInfo, pk: &[u8]) -> Result<Vec<String>> {
        Ok(self
            .conn
            .prepare_cached(&info.sql.clock_explicit)?
            .query_map([pk], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }

    fn read(&mut self, pk: &[u8]) -> Result<Option<Vec<Value>>> {
        let n = self.width;
        Ok(self
            .stmt
            .query_row(params_from_iter(unpack(pk)?), |r| {
                (0..n)
                    .map(|i| r.get::<_, Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .optional()?)
    }
}

/// One clock row as read for a version (by sync or for broadcast).
pub(crate) struct ClockRow {
    pub(crate) pk: Vec<u8>,
    pub(crate) cid: String,
    pub(crate) cv: i64,
    pub(crate) seq: u32,
    /// The row's causal length (its sentinel's `cv`).
    pub(crate) cl: i64,
    /// The clock row's `imp` flag (sentinels only; see `TableInfo::clock_ddl`).
    pub(crate) imp: i64,
}

/// The cells one clock row stands for: itself, and for the sentinel of a live row whose
/// column clocks are implicit, every column's (version 1, seq after the sentinel's; see
/// `TableInfo::clock_ddl`). Column values are read from the row, once per key.
pub(crate) fn clock_row_cells(
    info: &TableInfo,
    rows: &mut RowReader<'_>,
    r: ClockRow,
    mut push: impl FnMut(Cell),
) -> Result<()> {
    let cell = |pk: &Arc<[u8]>, cid: &Arc<str>, val: Value, cv: i64, seq: u32| Cell {
        table: info.arc_name.clone(),
        pk: pk.clone(),
        cid: cid.clone(),
        val,
        cv,
        cl: r.cl,
        seq,
    };
    if r.cid == SENTINEL {
        let pk: Arc<[u8]> = Arc::from(r.pk);
        if r.imp != 0 && r.cl % 2 == 1 && !info.cols.is_empty() {
            // Not cached: the row's column clock rows, if any, may read it again.
            let values = rows.read(&pk)?.unwrap_or_default();
            let explicit = rows.explicit(info, &pk)?;
            for (i, col) in info.arc_cols.iter().enumerate() {
                if explicit.iter().any(|e| **e == **col) {
                    continue;
                }
                let val = values.get(i).cloned().unwrap_or(Value::Null);
                push(cell(&pk, col, val, 1, r.seq + 1 + i as u32));
            }
        }
        push(cell(&pk, &info.arc_sentinel, Value::Null, r.cv, r.seq));
        return Ok(());
    }
    let Some(&idx) = info.col_index.get(&r.cid) else {
        tracing::warn!(table = %info.name, cid = %r.cid, "clock of an unknown column skipped");
        return Ok(());
    };
    if !rows.cache.contains_key(&r.pk) {
        let row = rows.read(&r.pk)?;
        rows.cache.insert(r.pk.clone(), row);
    }
    let val = rows
        .cache
        .get(&r.pk)
        .and_then(|row| row.as_ref())
        .and_then(|row| row.get(idx).cloned())
        .unwrap_or(Value::Null);
    push(cell(
        &Arc::from(r.pk),
        &info.arc_cols[idx],
        val,
        r.cv,
        r.seq,
    ));
    Ok(())
}

pub(crate) fn select_row(
    conn: &Connection,
    info: &TableInfo,
    pk: &[u8],
) -> Result<Option<Vec<Value>>> {
    let mut stmt = conn.prepare_cached(&info.sql.row_select)?;
    let n = info.cols.len();
    Ok(stmt
        .query_row(params_from_iter(unpack(pk)?), |r| {
            (0..n)
                .map(|i| r.get::<_, Value>(i))
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .optional()?)
}

/// The row events of a local version (every cell of one is a visible change).
pub(crate) fn local_event(change: &Change) -> Option<CommitEvent> {
    let mut rows: Vec<RowChange> = Vec::new();
    // Keys of this replica's own writes: the fast hasher is enough.
    let mut index: HashMap<(&str, &[u8]), usize, foldhash::fast::RandomState> = HashMap::default();
    for cell in &change.cells {
        let key = (&*cell.table, &*cell.pk);
        // A row's cells mostly come one after the other (an insert's are consecutive).
        let i = match rows.last() {
            Some(last) if *last.table == *key.0 && *last.pk == *key.1 => rows.len() - 1,
            _ => *index.entry(key).or_insert_with(|| {
                rows.push(RowChange {
                    table: cell.table.clone(),
                    pk: cell.pk.clone(),
                    kind: RowChangeKind::Upsert(Vec::new()),
                });
                rows.len() - 1
            }),
        };
        if cell.is_sentinel() && cell.cl % 2 == 0 {
            rows[i].kind = RowChangeKind::Delete;
        } else if let RowChangeKind::Upsert(cols) = &mut rows[i].kind
            && !cell.is_sentinel()
        {
            cols.push(cell.cid.clone());
        }
    }
    (!rows.is_empty()).then_some(CommitEvent {
        origin: Origin::Local,
        changes: rows,
    })
}

/// This replica's own version counter and HLC as `conn` sees them committed.
///
/// A local commit does not write them (that was a page of every commit): its version's
/// clock rows carry both, so they are the greater of `crr_meta`'s `self_ver` / `hlc_last`
/// and the newest own clock row of any table (one index seek per table). `crr_meta` is
/// written wherever an own version could lose its last clock row without a newer own one
/// taking its place: a merge (remote cells overwrite), tombstone GC, a local version that
/// ends with no clock rows at all, a transaction of the open (a migration or reconciliation
/// may remove clock rows) that issues no version, and a clean close.
pub(crate) fn own_clock(conn: &Connection) -> Result<(u64, u64)> {
    let meta = |key| -> Result<u64> {
        Ok(match get_meta(conn, key)? {
            Some(Value::Int(i)) => u64::try_from(i).unwrap_or(0),
            _ => 0,
        })
    };
    let (mut ver, mut hlc) = (meta("self_ver")?, meta("hlc_last")?);
    let ord: Option<i64> = conn
        .query_row(
            "SELECT s.ord FROM crr_sites s JOIN crr_meta m ON m.key = 'self_site' AND s.site = m.value",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let Some(ord) = ord else {
        return Ok((ver, hlc));
    };
    let names: Vec<String> = conn
        .prepare_cached("SELECT name FROM crr_tables")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut newest = 0;
    for name in names {
        let sql = "SELECT ver, ts FROM ".to_owned()
            + &crate::table::clock_table(&name)
            + " WHERE site_ord = ?1 ORDER BY ver DESC LIMIT 1";
        let row: Option<(i64, i64)> = conn
            .prepare_cached(&sql)?
            .query_row([ord], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        // Own versions are issued in HLC order: the newest version has the newest time.
        if let Some((v, ts)) = row
            && v > newest
        {
            newest = v;
            hlc = hlc.max(u64::try_from(ts).unwrap_or(0));
        }
    }
    ver = ver.max(u64::try_from(newest).unwrap_or(0));
    Ok((ver, hlc))
}

/// Writes this replica's version counter and HLC to `crr_meta` (see [`own_clock`]).
pub(crate) fn write_own_clock(conn: &Connection, self_ver: u64, hlc_last: u64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO crr_meta (key, value) VALUES ('self_ver', ?1), ('hlc_last', ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![self_ver as i64, hlc_last as i64])?;
    Ok(())
}

/// The known sets as `conn` sees them: `crr_known`, plus this replica's own versions
/// `1..=self_ver` ([`own_clock`]), which local commits do not write to `crr_known`.
pub(crate) fn load_known(conn: &Connection, sites: &Sites) -> Result<BTreeMap<SiteId, Ranges>> {
    let mut known: BTreeMap<SiteId, Ranges> = BTreeMap::new();
    if let Some(Value::Blob(site)) = get_meta(conn, "self_site")?
        && let Ok(site) = <[u8; 16]>::try_from(site)
        && let (ver, _) = own_clock(conn)?
        && ver > 0
    {
        known.entry(SiteId(site)).or_default().insert_range(1..=ver);
    }
    let mut stmt = conn.prepare("SELECT site_ord, lo, hi FROM crr_known")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (ord, lo, hi) = row?;
        let Some(site) = sites.site(ord) else {
            continue;
        };
        known
            .entry(site)
            .or_default()
            .insert_range(lo as u64..=hi as u64);
    }
    Ok(known)
}

fn write_known(conn: &Connection, ord: i64, ranges: &Ranges) -> Result<()> {
    conn.prepare_cached("DELETE FROM crr_known WHERE site_ord = ?1")?
        .execute([ord])?;
    let mut ins =
        conn.prepare_cached("INSERT INTO crr_known (site_ord, lo, hi) VALUES (?1, ?2, ?3)")?;
    for r in ranges.iter() {
        ins.execute(params![ord, *r.start() as i64, *r.end() as i64])?;
    }
    Ok(())
}

pub(crate) fn set_meta(conn: &Connection, key: &str, value: &Value) -> Result<()> {
    conn.prepare_cached("INSERT INTO crr_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")?
        .execute(params![key, value])?;
    Ok(())
}

pub(crate) fn get_meta(conn: &Connection, key: &str) -> Result<Option<Value>> {
    Ok(conn
        .query_row("SELECT value FROM crr_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

fn register_functions(conn: &Connection, state: &Arc<Mutex<TxState>>) -> Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8;
    let st = state.clone();
    conn.create_scalar_function("crr_local", 0, flags, move |_| match lock(&st).mode {
        Mode::Local => Ok(1i64),
        Mode::Merge => Ok(0i64),
        Mode::Idle => Err(rusqlite::Error::UserFunctionError(
            "replicated tables can only be written inside Store::write".into(),
        )),
    })?;
    // crr_ver(): the transaction's version, allocated on first use; crr_ver(name) also
    // records that the table was written.
    let st = state.clone();
    conn.create_scalar_function("crr_ver", 0, flags, move |_| {
        let mut s = lock(&st);
        s.touched_all = true;
        let next = s.next_ver;
        let v = *s.ver.get_or_insert(next);
        Ok(v as i64)
    })?;
    let st = state.clone();
    conn.create_scalar_function("crr_ver", 1, flags, move |ctx| {
        let name = ctx
            .get_raw(0)
            .as_str()
            .map_err(|e| rusqlite::Error::UserFunctionError(format!("crr_ver: {e}").into()))?;
        let mut s = lock(&st);
        if !s.touched.iter().any(|t| t == name) {
            s.touched.push(name.to_owned());
        }
        let next = s.next_ver;
        let v = *s.ver.get_or_insert(next);
        Ok(v as i64)
    })?;
    let st = state.clone();
    conn.create_scalar_function("crr_seq", 0, flags, move |_| {
        let mut s = lock(&st);
        let v = s.seq;
        s.seq += 1;
        Ok(i64::from(v))
    })?;
    let st = state.clone();
    conn.create_scalar_function("crr_seqs", 1, flags, move |ctx| {
        let n: u32 = ctx.get(0)?;
        let mut s = lock(&st);
        let v = s.seq;
        s.seq += n;
        Ok(i64::from(v))
    })?;
    // crr_cap(n, values...): crr_seqs(n) for an inserted row, capturing its values.
    let st = state.clone();
    conn.create_scalar_function("crr_cap", -1, flags, move |ctx| {
        let n: u32 = ctx.get(0)?;
        let vals = (1..ctx.len())
            .map(|i| Value::from(ctx.get_raw(i)))
            .collect();
        let mut s = lock(&st);
        let seq = s.seq;
        s.seq += n;
        s.caps.push(Capture {
            seq,
            what: Captured::Row { cl: 1, vals },
        });
        Ok(i64::from(seq))
    })?;
    // crr_capu(idx, value): crr_seq() for an updated column, capturing its index and new
    // value. Its clock version is 2 unless the clock row existed (crr_cv).
    let st = state.clone();
    conn.create_scalar_function("crr_capu", 2, flags, move |ctx| {
        let idx: usize = ctx.get::<i64>(0)?.try_into().map_err(|_| {
            rusqlite::Error::UserFunctionError("crr_capu: negative column index".into())
        })?;
        let val = Value::from(ctx.get_raw(1));
        let mut s = lock(&st);
        let seq = s.seq;
        s.seq += 1;
        s.caps.push(Capture {
            seq,
            what: Captured::Col { idx, cv: 2, val },
        });
        Ok(i64::from(seq))
    })?;
    // crr_cv(cv): the version an update gave an existing column clock; returns it.
    let st = state.clone();
    conn.create_scalar_function("crr_cv", 1, flags, move |ctx| {
        let new: i64 = ctx.get(0)?;
        if let Some(Capture {
            what: Captured::Col { cv, .. },
            ..
        }) = lock(&st).caps.last_mut()
        {
            *cv = new;
        }
        Ok(new)
    })?;
    // crr_cl(cl): the causal length an insert gave an existing sentinel; returns it.
    let st = state.clone();
    conn.create_scalar_function("crr_cl", 1, flags, move |ctx| {
        let cl: i64 = ctx.get(0)?;
        if let Some(Capture {
            what: Captured::Row { cl: last, .. },
            ..
        }) = lock(&st).caps.last_mut()
        {
            *last = cl;
        }
        Ok(cl)
    })?;
    let st = state.clone();
    conn.create_scalar_function("crr_ts", 0, flags, move |_| Ok(lock(&st).ts as i64))?;
    let st = state.clone();
    conn.create_scalar_function("crr_self", 0, flags, move |_| Ok(lock(&st).self_ord))?;
    conn.create_scalar_function("crr_pack", -1, flags, |ctx| {
        Ok(pack_refs((0..ctx.len()).map(|i| ctx.get_raw(i))))
    })?;
    Ok(())
}
