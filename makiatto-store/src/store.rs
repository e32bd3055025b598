//! The replicated store: one writer connection, a pool of readers, change notifications.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use tokio::sync::{broadcast, watch};

use crate::events::CommitEvent;
use crate::ids::{Clock, Hlc, SystemClock};
use crate::known::{Known, Ranges, VersionSet};
use crate::pending::{self, Responder};
use crate::table::{SENTINEL, TableInfo, ident};
use crate::wire::{Cell, Change, Chunk, Frame, SyncReq};
use crate::writer::{
    Captures, ClockRow, LocalCommit, MergeCommit, RowReader, Sites, Writer, clock_row_cells,
    get_meta, load_known, local_event, own_clock, select_row, set_meta, write_own_clock,
};
use crate::{Result, Schema, SiteId, StoreError, TableClass, Value};

/// Options for [`Store::open`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The cluster this database belongs to. Stored at creation; opening it with another
    /// id fails, and peers of other clusters are refused.
    pub cluster_id: String,
    /// Wall-clock source (inject a fake one in tests).
    pub clock: Arc<dyn Clock>,
    /// Most idle reader connections kept open.
    pub max_readers: usize,
    /// Capacity of the [`Store::subscribe`] and [`Store::subscribe_local`] channels.
    pub event_capacity: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cluster_id: "default".into(),
            clock: Arc::new(SystemClock),
            max_readers: 8,
            event_capacity: 1024,
        }
    }
}

/// What happened to a received chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// The version was already known, or this part was already buffered: do not forward.
    Duplicate,
    /// Buffered until the rest of the version arrives: forward.
    Buffered,
    /// The version was applied: forward.
    Applied,
    /// The version names a table or column this schema lacks; kept until a migration.
    Deferred,
}

/// Counts from one merge.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MergeReport {
    /// Versions applied.
    pub applied: usize,
    /// Versions skipped as already known.
    pub duplicates: usize,
    /// Versions deferred for an unknown table or column.
    pub deferred: usize,
    /// Versions dropped because they failed to apply (sync fetches them again).
    pub dropped: usize,
}

/// A multi-writer replicated SQLite database (cr-sqlite's model; see the crate docs).
///
/// Cheap to clone; all clones share one writer connection and one reader pool. The methods
/// block on SQLite: from async code call them through `spawn_blocking`.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    site: SiteId,
    cluster_id: String,
    schema_version: u32,
    tables: BTreeMap<String, Arc<TableInfo>>,
    writer: Mutex<Writer>,
    readers: Mutex<Vec<Connection>>,
    max_readers: usize,
    known: RwLock<BTreeMap<SiteId, Ranges>>,
    /// The pending versions, as a request lists them.
    pending: RwLock<Vec<crate::wire::Pending>>,
    events: broadcast::Sender<Arc<CommitEvent>>,
    outbox: broadcast::Sender<Arc<Change>>,
    watches: HashMap<String, watch::Sender<u64>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("site", &self.inner.site)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

const META_DDL: &str = "
CREATE TABLE IF NOT EXISTS crr_meta (key TEXT PRIMARY KEY NOT NULL, value ANY) STRICT;
CREATE TABLE IF NOT EXISTS crr_sites (ord INTEGER PRIMARY KEY, site BLOB NOT NULL UNIQUE) STRICT;
CREATE TABLE IF NOT EXISTS crr_known (site_ord INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
    PRIMARY KEY (site_ord, lo)) WITHOUT ROWID, STRICT;
CREATE TABLE IF NOT EXISTS crr_pending (grp INTEGER NOT NULL, kind INTEGER NOT NULL, site_ord INTEGER NOT NULL,
    lo INTEGER NOT NULL, hi INTEGER NOT NULL, PRIMARY KEY (grp, kind, site_ord, lo)) WITHOUT ROWID, STRICT;
CREATE TABLE IF NOT EXISTS crr_tables (name TEXT PRIMARY KEY NOT NULL, class TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS crr_columns (tbl TEXT NOT NULL, pos INTEGER NOT NULL, name TEXT NOT NULL,
    pk INTEGER NOT NULL, PRIMARY KEY (tbl, pos)) WITHOUT ROWID, STRICT;
CREATE TABLE IF NOT EXISTS crr_buffer (site_ord INTEGER NOT NULL, ver INTEGER NOT NULL, seq_lo INTEGER NOT NULL,
    seq_hi INTEGER NOT NULL, last_seq INTEGER NOT NULL, received_ms INTEGER NOT NULL, frame BLOB NOT NULL,
    PRIMARY KEY (site_ord, ver, seq_lo)) WITHOUT ROWID, STRICT;
CREATE TABLE IF NOT EXISTS crr_deferred (site_ord INTEGER NOT NULL, ver INTEGER NOT NULL, frame BLOB NOT NULL,
    PRIMARY KEY (site_ord, ver)) WITHOUT ROWID, STRICT;
CREATE TABLE IF NOT EXISTS crr_dropped (name TEXT PRIMARY KEY NOT NULL) STRICT;
";

/// Node-local `crr_meta` keys, never copied into a snapshot.
const LOCAL_META: [&str; 4] = ["self_site", "self_ver", "hlc_last", "last_contact_ms"];

/// Spells out this replica's own versions (known as `1..=self_ver`) in `crr_known`, then
/// drops the node-local state, all in one transaction. The next open mints a new site id.
fn retire(conn: &Connection) -> Result<()> {
    let tx = conn.unchecked_transaction()?;
    let (self_ver, _) = own_clock(&tx)?;
    tx.execute(
        "INSERT OR REPLACE INTO crr_known (site_ord, lo, hi) SELECT s.ord, 1, ?1 \
         FROM crr_sites s, crr_meta i WHERE i.key = 'self_site' AND s.site = i.value AND ?1 > 0",
        [self_ver as i64],
    )?;
    for key in LOCAL_META {
        tx.execute("DELETE FROM crr_meta WHERE key = ?1", [key])?;
    }
    tx.execute_batch("DELETE FROM crr_buffer; DELETE FROM crr_deferred;")?;
    tx.commit()?;
    Ok(())
}

/// One clock as [`Store::canonical_hash`] hashes it: column id, version, causal length,
/// origin site and time.
type HashEntry = (String, i64, i64, SiteId, i64);

/// Hashes one row's clocks in column order, and empties `row`. `implicit` is the live
/// sentinel's (causal length, site, time) when some column clocks are implicit: every
/// column of `cols` without a clock row in `row` has one at version 1 (a row with implicit
/// clocks never has a demoted, version-0, clock row, which the scan leaves out).
fn hash_row(
    h: &mut blake3::Hasher,
    pk: &[u8],
    row: &mut Vec<HashEntry>,
    implicit: Option<(i64, SiteId, i64)>,
    cols: &[String],
) {
    if let Some((cl, site, ts)) = implicit {
        for c in cols {
            if !row.iter().any(|e| e.0 == *c) {
                row.push((c.clone(), 1, cl, site, ts));
            }
        }
    }
    row.sort_by(|a, b| a.0.cmp(&b.0));
    for (cid, cv, cl, site, ts) in row.drain(..) {
        h.update(pk);
        h.update(cid.as_bytes());
        h.update(&cv.to_le_bytes());
        h.update(&cl.to_le_bytes());
        // Live rows' sentinels may carry either concurrent writer's metadata (see
        // docs/replication.md, "What converges, exactly"); tombstones' and columns'
        // converge exactly.
        if cid != SENTINEL || cl % 2 == 0 {
            h.update(&site.0);
            h.update(&ts.to_le_bytes());
        }
    }
}

impl Store {
    /// Opens (or creates) the database at `path`, runs pending migrations of `schema` and
    /// sets up replication for its tables.
    ///
    /// Fails with [`StoreError::SchemaTooNew`] when the file was written by a newer schema,
    /// and with [`StoreError::ClusterMismatch`] when it belongs to another cluster.
    pub fn open(path: impl AsRef<Path>, schema: &Schema, options: Options) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "trusted_schema", "ON")?;
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        // INSERT OR REPLACE of a live row runs the DELETE trigger, then the INSERT one.
        conn.pragma_update(None, "recursive_triggers", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(512);
        conn.execute_batch(META_DDL)?;

        // Identity: a database without a site id (new, or installed from a snapshot) mints one.
        let site = match get_meta(&conn, "self_site")? {
            Some(Value::Blob(b)) if b.len() == 16 => SiteId(b.try_into().unwrap_or([0; 16])),
            _ => {
                // One transaction: a site id without its crr_sites row would never open.
                let site = SiteId::random();
                let tx = conn.unchecked_transaction()?;
                set_meta(&tx, "self_site", &Value::Blob(site.0.to_vec()))?;
                set_meta(&tx, "self_ver", &Value::Int(0))?;
                tx.execute("INSERT INTO crr_sites (site) VALUES (?1)", [&site.0[..]])?;
                tx.commit()?;
                site
            }
        };
        match get_meta(&conn, "cluster_id")? {
            Some(Value::Text(c)) if c != options.cluster_id => {
                return Err(StoreError::ClusterMismatch {
                    ours: options.cluster_id,
                    theirs: c,
                });
            }
            Some(Value::Text(_)) => {}
            _ => set_meta(
                &conn,
                "cluster_id",
                &Value::Text(options.cluster_id.clone()),
            )?,
        }
        let found = meta_int(&conn, "schema_version")? as u32;
        if found > schema.version() {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: schema.version(),
            });
        }
        let (self_ver, hlc_last) = own_clock(&conn)?;
        let hlc = Hlc::new(options.clock.clone(), hlc_last);
        let mut writer = Writer::new(conn, hlc, site, self_ver)?;

        let mut tables = load_tables(&writer.conn)?;
        for info in tables.values() {
            upgrade_clock(&writer.conn, info)?;
        }
        repair_outside_changes(&mut writer, &tables)?;
        for m in schema.migrations.iter().filter(|m| m.version > found) {
            let commit = writer.local(&tables.clone(), Captures::Ignore, |tx| {
                // The migration runs without capture triggers; what it wrote is recorded
                // below, from the tables.
                for info in tables.values() {
                    info.drop_triggers(tx)?;
                }
                run_migration(tx, m.sql, &tables)?;
                for name in tables.keys() {
                    if !table_exists(tx, name)? {
                        forget_table(tx, name)?;
                    }
                }
                for r in m.replicate {
                    // Cells name tables by name alone: a replica that has not migrated
                    // yet could send cells of the old table into the new one.
                    let dropped: bool = tx.query_row(
                        "SELECT count(*) > 0 FROM crr_dropped WHERE name = ?1",
                        [r.table],
                        |row| row.get(0),
                    )?;
                    if dropped {
                        return Err(StoreError::InvalidTable {
                            table: r.table.to_owned(),
                            reason: "a migration dropped this replicated table before; \
                                     replicate the new one under another name"
                                .into(),
                        });
                    }
                    let info = TableInfo::introspect(tx, r.table, r.class)?;
                    tx.execute_batch(&info.clock_ddl())?;
                    let class = match r.class {
                        TableClass::Durable => "durable",
                        TableClass::Ephemeral => "ephemeral",
                    };
                    tx.execute(
                        "INSERT OR REPLACE INTO crr_tables (name, class) VALUES (?1, ?2)",
                        params![r.table, class],
                    )?;
                    // Rows that existed before replication replicate like a write.
                    tx.execute(&info.sql.backfill_sentinel, [])?;
                    for sql in &info.sql.backfill_col {
                        tx.execute(sql, [])?;
                    }
                }
                let all = load_tables(tx)?;
                reconcile(tx, &tables, &all)?;
                // Rows it wrote in place: each column of each, as a local update would.
                record_migrated_writes(tx, &tables, &all)?;
                for info in all.values() {
                    info.install_triggers(tx)?;
                }
                record_layouts(tx, &all)?;
                set_meta(tx, "schema_version", &Value::Int(i64::from(m.version)))?;
                Ok(all)
            })?;
            // The next migration's version is read back with the tables this one left.
            // Nothing subscribes yet: migration versions reach peers by sync.
            tables = commit.value;
        }
        writer.set_replicated(tables.keys().cloned());
        writer.dropped = load_dropped(&writer.conn)?;
        // Triggers are regenerated on every open, so they always match the current code.
        writer.local(&tables, Captures::Ignore, |tx| {
            for info in tables.values() {
                info.install_triggers(tx)?;
            }
            record_layouts(tx, &tables)
        })?;
        writer.note_schema()?;

        let known = writer.known.clone();
        let pending = RwLock::new(pending::to_wire(&writer.pending));
        let watches = tables
            .keys()
            .map(|t| (t.clone(), watch::channel(0u64).0))
            .collect();
        let store = Store {
            inner: Arc::new(Inner {
                path,
                site,
                cluster_id: options.cluster_id,
                schema_version: schema.version().max(found),
                tables,
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
                max_readers: options.max_readers,
                known: RwLock::new(known),
                pending,
                events: broadcast::channel(options.event_capacity.max(1)).0,
                outbox: broadcast::channel(options.event_capacity.max(1)).0,
                watches,
            }),
        };
        store.retry_deferred()?;
        Ok(store)
    }

    /// This replica's site id.
    pub fn site(&self) -> SiteId {
        self.inner.site
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> &str {
        &self.inner.cluster_id
    }

    /// The schema version of this database.
    pub fn schema_version(&self) -> u32 {
        self.inner.schema_version
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The names of the replicated tables.
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.inner.tables.keys().map(String::as_str)
    }

    /// The versions this replica has applied, per site.
    pub fn known(&self) -> Known {
        let known = self
            .inner
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Known(known.iter().map(|(s, r)| (*s, r.to_pairs())).collect())
    }

    /// Runs `f` in a write transaction. Changes to replicated tables are captured, stamped
    /// with one new version of this site, broadcast to [`Store::subscribe_local`] and
    /// announced to [`Store::subscribe`] and [`Store::watch_table`] after commit. If `f`
    /// fails, everything is rolled back and no version is consumed.
    ///
    /// Do not call `write` from inside `f` (it would deadlock).
    pub fn write<R>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<R>) -> Result<R> {
        let mut w = lock(&self.inner.writer);
        let LocalCommit { value, change } = w.local(&self.inner.tables, Captures::Use, f)?;
        if let Some(change) = change {
            self.set_known(&w);
            drop(w);
            // Row events are built only for someone to receive them (every cell of a local
            // version is a visible change); the table watches need only the tables.
            if self.inner.events.receiver_count() > 0
                && let Some(event) = local_event(&change)
            {
                let _ = self.inner.events.send(Arc::new(event));
            }
            let mut tables: Vec<&str> = Vec::new();
            for cell in &change.cells {
                if !tables.contains(&&*cell.table) {
                    tables.push(&cell.table);
                }
            }
            self.bump_watches(tables);
            let _ = self.inner.outbox.send(Arc::new(change));
        }
        Ok(value)
    }

    /// Runs `f` on a read-only connection. Several reads run in parallel with each other
    /// and with the writer (WAL); each sees one committed snapshot if it opens a
    /// transaction, and never half of an origin version.
    pub fn read<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        let conn = self.reader()?;
        let r = f(&conn);
        // A reader must not hold a transaction open across uses.
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        self.give_back(conn);
        r
    }

    fn reader(&self) -> Result<Connection> {
        if let Some(c) = lock(&self.inner.readers).pop() {
            return Ok(c);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&self.inner.path, flags).map_err(|source| {
            StoreError::Open {
                path: self.inner.path.clone(),
                source,
            }
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(256);
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut pool = lock(&self.inner.readers);
        if pool.len() < self.inner.max_readers {
            pool.push(conn);
        }
    }

    /// Merges whole remote versions (from sync or assembled chunks) in one transaction.
    /// Malformed input is refused with [`StoreError::Malformed`] before anything is applied.
    /// When the batch fails in SQLite it is retried in halves; a single version that still
    /// fails is dropped (not marked known, so sync fetches it again) and logged.
    pub fn merge(&self, changes: &[Change]) -> Result<MergeReport> {
        self.merge_with_cleared(changes, &[], None)
    }

    /// Marks versions as known that have no surviving cells at the responder of a sync
    /// session (a `Cleared` answer).
    fn apply_cleared(
        &self,
        site: SiteId,
        ranges: &[(u64, u64)],
        resp: &mut Responder,
    ) -> Result<()> {
        let cleared: Vec<_> = ranges
            .iter()
            .filter(|(lo, hi)| lo <= hi && *lo >= 1)
            .map(|&(lo, hi)| (site, lo, hi))
            .collect();
        self.merge_with_cleared(&[], &cleared, Some(resp))
            .map(|_| ())
    }

    fn merge_with_cleared(
        &self,
        changes: &[Change],
        cleared: &[(SiteId, u64, u64)],
        resp: Option<&mut Responder>,
    ) -> Result<MergeReport> {
        let mut w = lock(&self.inner.writer);
        let mut report = MergeReport::default();
        let mut events = Vec::new();
        merge_split(
            &mut w,
            &self.inner.tables,
            (changes, cleared),
            resp,
            &mut report,
            &mut events,
        )?;
        self.set_known(&w);
        drop(w);
        self.publish(events);
        Ok(report)
    }

    /// Handles a broadcast chunk: applies the version when it is complete, buffers it
    /// otherwise (in `crr_buffer`, so a restart keeps what arrived).
    pub fn receive_chunk(&self, chunk: &Chunk) -> Result<ChunkOutcome> {
        if self.is_known(chunk.site, chunk.ver) {
            return Ok(ChunkOutcome::Duplicate);
        }
        if chunk.seq_lo > chunk.seq_hi
            || chunk.seq_hi > chunk.last_seq
            || chunk
                .cells
                .iter()
                .any(|c| c.seq < chunk.seq_lo || c.seq > chunk.seq_hi)
        {
            return Err(StoreError::Malformed(
                "chunk seq range does not cover its cells".into(),
            ));
        }
        if chunk.is_complete() {
            let change = Change {
                site: chunk.site,
                ver: chunk.ver,
                ts: chunk.ts,
                cells: chunk.cells.clone(),
            };
            let r = self.merge(&[change])?;
            return Ok(if r.applied > 0 {
                ChunkOutcome::Applied
            } else if r.deferred > 0 {
                ChunkOutcome::Deferred
            } else {
                ChunkOutcome::Duplicate
            });
        }
        let assembled = {
            let mut w = lock(&self.inner.writer);
            let now = w.hlc.now_ms();
            let mut sites = w.sites.clone();
            let tx = w.conn.transaction()?;
            let ord = sites.ord_or_insert(&tx, chunk.site)?;
            let frame =
                postcard::to_allocvec(chunk).map_err(|e| StoreError::Malformed(e.to_string()))?;
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO crr_buffer (site_ord, ver, seq_lo, seq_hi, last_seq, received_ms, frame) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![ord, chunk.ver as i64, chunk.seq_lo, chunk.seq_hi, chunk.last_seq, now as i64, frame],
            )?;
            if inserted == 0 {
                return Ok(ChunkOutcome::Duplicate);
            }
            let mut parts: Vec<Chunk> = Vec::new();
            {
                let mut stmt = tx.prepare(
                    "SELECT frame FROM crr_buffer WHERE site_ord = ?1 AND ver = ?2 ORDER BY seq_lo",
                )?;
                let rows =
                    stmt.query_map(params![ord, chunk.ver as i64], |r| r.get::<_, Vec<u8>>(0))?;
                for row in rows {
                    if let Ok(c) = postcard::from_bytes::<Chunk>(&row?) {
                        parts.push(c);
                    }
                }
            }
            tx.commit()?;
            w.sites = sites;
            assemble(&parts)
        };
        match assembled {
            Some(change) => {
                let r = self.merge(&[change])?;
                Ok(if r.deferred > 0 {
                    ChunkOutcome::Deferred
                } else {
                    ChunkOutcome::Applied
                })
            }
            None => Ok(ChunkOutcome::Buffered),
        }
    }

    /// Drops buffered chunks older than `max_age_ms` (sync fetches those versions instead).
    pub fn expire_buffer(&self, max_age_ms: u64) -> Result<usize> {
        let w = lock(&self.inner.writer);
        let cutoff = w.hlc.now_ms().saturating_sub(max_age_ms) as i64;
        Ok(w.conn
            .execute("DELETE FROM crr_buffer WHERE received_ms < ?1", [cutoff])?)
    }

    /// Whether version `ver` of `site` is known here.
    pub fn is_known(&self, site: SiteId, ver: u64) -> bool {
        let known = self
            .inner
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        known.get(&site).is_some_and(|r| r.contains(ver))
    }

    /// Answers a sync request from one read snapshot: the surviving cells of every version
    /// the requester lacks, then `Cleared` ranges for known versions without cells, until
    /// the byte budget is spent. The last frame is always `SyncDone`.
    pub fn serve_sync(&self, req: &SyncReq) -> Result<Vec<Frame>> {
        let mut out = Vec::new();
        self.serve_sync_into(req, &mut |f| {
            out.push(f);
            Ok(())
        })?;
        Ok(out)
    }

    /// [`Store::serve_sync`], handing each frame to `sink` as soon as it is made, so a
    /// transport can send the answer while it is read (a sink error ends the session).
    pub fn serve_sync_into(
        &self,
        req: &SyncReq,
        sink: &mut dyn FnMut(Frame) -> Result<()>,
    ) -> Result<()> {
        let mut conn = self.reader()?;
        let r = serve_sync(&mut conn, &self.inner.tables, req, sink);
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        self.give_back(conn);
        r
    }

    /// Applies a sync answer (the frames of [`Store::serve_sync`]). Versions are applied
    /// only when all their parts arrived. Returns the responder's `SyncDone` fields.
    pub fn apply_sync(
        &self,
        frames: impl IntoIterator<Item = Frame>,
    ) -> Result<Option<(bool, Known)>> {
        let mut session = SyncSession::default();
        for f in frames {
            if let Some(done) = session.feed(self, f)? {
                return Ok(Some(done));
            }
        }
        session.flush(self)?;
        Ok(None)
    }

    /// A sync request describing everything this replica has.
    pub fn sync_request(&self, byte_budget: u64) -> SyncReq {
        // Both from one moment (the lock order of `set_known`): a version claimed as
        // known while pending and not listed as such could be promoted wrongly.
        let pending = self
            .inner
            .pending
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        SyncReq {
            known: self.known(),
            byte_budget,
            pending: pending.clone(),
        }
    }

    /// Notifications of every committed visible change, local or remote. On
    /// `RecvError::Lagged` a consumer must reload its state fully.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CommitEvent>> {
        self.inner.events.subscribe()
    }

    /// Local versions as they commit, for broadcast to peers.
    pub fn subscribe_local(&self) -> broadcast::Receiver<Arc<Change>> {
        self.inner.outbox.subscribe()
    }

    /// A generation counter bumped after every commit that visibly changed `table`.
    /// `None` for a table that is not replicated.
    pub fn watch_table(&self, table: &str) -> Option<watch::Receiver<u64>> {
        self.inner.watches.get(table).map(watch::Sender::subscribe)
    }

    /// The surviving cells of one version of this replica (for re-broadcast).
    pub fn local_version(&self, ver: u64) -> Result<Change> {
        let w = lock(&self.inner.writer);
        let ts = change_ts(&w.conn, &self.inner.tables, w.self_ord, ver)?;
        crate::writer::read_version(
            &w.conn,
            &self.inner.tables,
            w.self_ord,
            w.self_site,
            ver,
            ts,
        )
    }

    /// Writes a consistent copy of the database to `dest` (`VACUUM INTO`) with node-local
    /// state removed, for bootstrapping a new node. The node that opens it mints a fresh
    /// site id, so no version is ever issued twice.
    pub fn snapshot(&self, dest: impl AsRef<Path>) -> Result<()> {
        let dest = dest.as_ref();
        let dest_str = dest
            .to_str()
            .ok_or_else(|| StoreError::Malformed("snapshot path is not UTF-8".into()))?;
        self.read(|c| Ok(c.execute("VACUUM INTO ?1", [dest_str])?))?;
        let conn = Connection::open(dest).map_err(|source| StoreError::Open {
            path: dest.to_path_buf(),
            source,
        })?;
        retire(&conn)?;
        conn.execute_batch("VACUUM")?;
        Ok(())
    }

    /// Makes the database file at `path` give up its replica identity: its own versions
    /// become known versions of a site it no longer is, and the next [`Store::open`] mints
    /// a fresh site id. Run it on a copy put back from a backup (for example when an
    /// upgrade is rolled back): the replica that ran meanwhile may have issued later
    /// versions under the old id, and reusing that id would issue the same versions twice
    /// with different contents. Works on files of any schema version; the store must not
    /// be open. Retiring twice is harmless.
    pub fn retire_identity(path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(META_DDL)?;
        retire(&conn)
    }

    /// Prunes tombstones of ephemeral tables older than `retention_ms` whose version every
    /// member in `members` (their known sets, this replica's included by the caller) has
    /// contiguously applied. Returns how many were removed.
    pub fn gc_tombstones(&self, retention_ms: u64, members: &[Known]) -> Result<usize> {
        let mut w = lock(&self.inner.writer);
        let cutoff = (w.hlc.now_ms().saturating_sub(retention_ms) << 16) as i64;
        let sites = w.sites.clone();
        let (self_ver, hlc_last) = (w.self_ver, w.hlc.last());
        let heads = |site: &SiteId| {
            members
                .iter()
                .map(|k| k.ranges(site).contiguous_head())
                .min()
                .unwrap_or(0)
        };
        let tx = w.conn.transaction()?;
        let mut removed = 0;
        for info in self
            .inner
            .tables
            .values()
            .filter(|t| t.class == TableClass::Ephemeral)
        {
            let clock = crate::table::clock_table(&info.name);
            let select = "SELECT pk, cv, site_ord, ver FROM ".to_owned()
                + &clock
                + " WHERE cid = '-1' AND cv % 2 = 0 AND ts < ?1";
            let delete =
                "DELETE FROM ".to_owned() + &clock + " WHERE pk = ?1 AND cid = '-1' AND cv = ?2";
            let victims: Vec<(Vec<u8>, i64, i64, i64)> = {
                let mut stmt = tx.prepare(&select)?;
                let rows = stmt.query_map([cutoff], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for (pk, cv, ord, ver) in victims {
                let Some(site) = sites.site(ord) else {
                    continue;
                };
                if ver as u64 <= heads(&site) {
                    removed += tx.execute(&delete, params![pk, cv])?;
                }
            }
        }
        // A removed tombstone may have been the last clock row of an own version.
        write_own_clock(&tx, self_ver, hlc_last)?;
        tx.commit()?;
        Ok(removed)
    }

    /// A canonical hash of the replicated state: every user row and every live column
    /// clock's winner (value, cv, causal length, origin timestamp and site), plus
    /// tombstones. Two replicas that converged have equal hashes.
    pub fn canonical_hash(&self) -> Result<blake3::Hash> {
        self.read(|conn| {
            let tx_guard = conn.unchecked_transaction()?;
            let sites = Sites::load(conn)?;
            let mut h = blake3::Hasher::new();
            for info in self.inner.tables.values() {
                h.update(info.name.as_bytes());
                let clock = crate::table::clock_table(&info.name);
                let sql = "SELECT c.pk, c.cid, c.cv, c.site_ord, c.ts, s.cv, c.imp FROM "
                    .to_owned()
                    + &clock
                    + " c JOIN "
                    + &clock
                    + " s ON s.pk = c.pk AND s.cid = '-1' WHERE c.cv > 0 ORDER BY c.pk, c.cid";
                let mut stmt = conn.prepare(&sql)?;
                let mut rows = stmt.query([])?;
                // One row's clocks, hashed in column order once its last clock row is read
                // (implicit clocks of a sentinel interleave with the row's clock rows).
                let mut row: Vec<HashEntry> = Vec::new();
                let mut row_pk: Vec<u8> = Vec::new();
                let mut implicit = None;
                while let Some(r) = rows.next()? {
                    let pk: Vec<u8> = r.get(0)?;
                    if pk != row_pk {
                        hash_row(&mut h, &row_pk, &mut row, implicit.take(), &info.cols);
                        row_pk = pk;
                    }
                    let cid: String = r.get(1)?;
                    let cl: i64 = r.get(5)?;
                    let site = sites.site(r.get(3)?).unwrap_or(SiteId([0; 16]));
                    let ts: i64 = r.get(4)?;
                    // Implicit column clocks hash like the clock rows they stand for.
                    if r.get::<_, i64>(6)? != 0 && cl % 2 == 1 {
                        implicit = Some((cl, site, ts));
                    }
                    row.push((cid, r.get::<_, i64>(2)?, cl, site, ts));
                }
                hash_row(&mut h, &row_pk, &mut row, implicit, &info.cols);
                let sql = "SELECT * FROM ".to_owned()
                    + &ident(&info.name)
                    + " ORDER BY "
                    + &info
                        .pks
                        .iter()
                        .map(|p| ident(p))
                        .collect::<Vec<_>>()
                        .join(", ");
                let mut stmt = conn.prepare(&sql)?;
                let n = stmt.column_count();
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    for i in 0..n {
                        let v: Value = r.get(i)?;
                        h.update(&postcard::to_allocvec(&v).unwrap_or_default());
                    }
                }
            }
            drop(tx_guard);
            Ok(h.finalize())
        })
    }

    /// Publishes the writer's known and pending sets. Both locks are taken, pending first
    /// (as [`Store::sync_request`] does), so a request sees the two from one moment.
    fn set_known(&self, w: &Writer) {
        let mut pending = self
            .inner
            .pending
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *self
            .inner
            .known
            .write()
            .unwrap_or_else(PoisonError::into_inner) = w.known.clone();
        if !(pending.is_empty() && w.pending.is_empty()) {
            *pending = pending::to_wire(&w.pending);
        }
    }

    fn publish(&self, events: Vec<CommitEvent>) {
        // The watched names, borrowed from the watch map (the events move on).
        let mut tables: Vec<&str> = Vec::new();
        for e in events {
            for c in &e.changes {
                if !tables.contains(&&*c.table)
                    && let Some((name, _)) = self.inner.watches.get_key_value(&*c.table)
                {
                    tables.push(name);
                }
            }
            let _ = self.inner.events.send(Arc::new(e));
        }
        self.bump_watches(tables);
    }

    /// Moves the generation counter of each of `tables` (each named once) that is watched.
    fn bump_watches<'t>(&self, tables: impl IntoIterator<Item = &'t str>) {
        for t in tables {
            if let Some(w) = self.inner.watches.get(t) {
                w.send_modify(|g| *g += 1);
            }
        }
    }

    fn retry_deferred(&self) -> Result<()> {
        let frames: Vec<Vec<u8>> = {
            let w = lock(&self.inner.writer);
            let mut stmt = w
                .conn
                .prepare("SELECT frame FROM crr_deferred ORDER BY site_ord, ver")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let changes: Vec<Change> = frames
            .iter()
            .filter_map(|f| postcard::from_bytes(f).ok())
            .collect();
        if !changes.is_empty() {
            self.merge(&changes)?;
        }
        Ok(())
    }

    /// Row values of a replicated table by packed key (for tests and tools).
    pub fn row(&self, table: &str, pk: &[u8]) -> Result<Option<Vec<Value>>> {
        let info = self
            .inner
            .tables
            .get(table)
            .ok_or_else(|| StoreError::Malformed(format!("no replicated table {table}")))?;
        self.read(|c| select_row(c, info, pk))
    }
}

fn merge_split(
    w: &mut Writer,
    tables: &BTreeMap<String, Arc<TableInfo>>,
    (changes, cleared): (&[Change], &[(SiteId, u64, u64)]),
    mut resp: Option<&mut Responder>,
    report: &mut MergeReport,
    events: &mut Vec<CommitEvent>,
) -> Result<()> {
    match w.merge(tables, changes, cleared, resp.as_deref_mut()) {
        Ok(MergeCommit {
            applied,
            duplicates,
            deferred,
            events: ev,
            ..
        }) => {
            report.applied += applied.len();
            report.duplicates += duplicates;
            report.deferred += deferred;
            events.extend(ev);
            Ok(())
        }
        Err(StoreError::Sqlite(e)) => {
            w.reload()?;
            if changes.len() <= 1 {
                if let Some(c) = changes.first() {
                    tracing::warn!(site = %c.site, ver = c.ver, error = %e, "dropping a version that fails to apply");
                    report.dropped += 1;
                }
                if !cleared.is_empty() {
                    return Err(StoreError::Sqlite(e));
                }
                return Ok(());
            }
            let (a, b) = changes.split_at(changes.len() / 2);
            merge_split(w, tables, (a, cleared), resp.as_deref_mut(), report, events)?;
            merge_split(w, tables, (b, &[]), resp, report, events)
        }
        Err(e) => {
            w.reload()?;
            Err(e)
        }
    }
}

/// Joins buffered chunks into a whole version when their seq ranges tile `0..=last_seq`.
fn assemble(parts: &[Chunk]) -> Option<Change> {
    let first = parts.first()?;
    let mut next = 0u32;
    let mut cells: Vec<Cell> = Vec::new();
    for p in parts {
        if p.last_seq != first.last_seq || p.seq_lo > next {
            return None;
        }
        if p.seq_hi + 1 > next {
            cells.extend(p.cells.iter().filter(|c| c.seq >= next).cloned());
            next = p.seq_hi + 1;
        }
    }
    if next <= first.last_seq {
        return None;
    }
    cells.sort_by_key(|c| c.seq);
    Some(Change {
        site: first.site,
        ver: first.ver,
        ts: first.ts,
        cells,
    })
}

fn change_ts(
    conn: &Connection,
    tables: &BTreeMap<String, Arc<TableInfo>>,
    ord: i64,
    ver: u64,
) -> Result<u64> {
    for info in tables.values() {
        let sql = "SELECT ts FROM ".to_owned()
            + &crate::table::clock_table(&info.name)
            + " WHERE site_ord = ?1 AND ver = ?2 LIMIT 1";
        if let Some(ts) = conn
            .query_row(&sql, params![ord, ver as i64], |r| r.get::<_, i64>(0))
            .optional()?
        {
            return Ok(ts as u64);
        }
    }
    Ok(0)
}

/// What a migration (or a change outside one) did to the replicated tables, recorded from
/// the tables and their clocks, `before` and `after` it.
///
/// Implicit column clocks stand for the columns a table had when its rows were inserted:
/// where the columns changed, they are written out with the old list (the statements read
/// only the clock table, which survives), then the clocks of columns the table no longer
/// has go. Rows that are gone replicate like a delete, keys brought back from a tombstone
/// like a re-insert, rows without a sentinel like an insert, as rows that predate
/// replication replicate like a write.
fn reconcile(
    tx: &Connection,
    before: &BTreeMap<String, Arc<TableInfo>>,
    after: &BTreeMap<String, Arc<TableInfo>>,
) -> Result<()> {
    for (name, old) in before {
        if let Some(new) = after.get(name).filter(|new| new.cols != old.cols) {
            if let Some(sql) = &old.sql.materialize_all {
                tx.execute(sql, [])?;
            }
            tx.execute(&old.sql.clear_all_imp, [])?;
            tx.execute(&new.sql.prune_cols, [])?;
        }
    }
    for info in after.values().filter(|i| before.contains_key(&i.name)) {
        tx.execute(&info.sql.vanished_cols, [])?;
        tx.execute(&info.sql.vanished_delete, [])?;
        tx.execute(&info.sql.backfill_revived, [])?;
    }
    for info in after.values() {
        tx.execute(&info.sql.backfill_unseen, [])?;
    }
    // Columns a table did not have: values other than the default were written (a rename,
    // or a copy into a rebuilt table) and must reach replicas that sync later.
    for (name, old) in before {
        let Some(new) = after.get(name) else { continue };
        for col in new.cols.iter().filter(|c| !old.cols.contains(c)) {
            let default: Option<String> = tx.query_row(
                "SELECT dflt_value FROM pragma_table_info(?1) WHERE name = ?2",
                [name, col],
                |r| r.get(0),
            )?;
            tx.execute(&new.new_column_sql(col, default.as_deref()), [])?;
        }
    }
    Ok(())
}

/// Finds what another connection changed in the replicated tables since the store last
/// ran (columns added, dropped or reordered; capture triggers dropped, by which its writes
/// went uncaptured) and records it in one version, as [`reconcile`] does for a migration.
/// The shape each table had is the one [`TableInfo::record_layout`] left (a table from
/// before that record is taken as it is). A changed primary key cannot be reconciled.
fn repair_outside_changes(
    writer: &mut Writer,
    tables: &BTreeMap<String, Arc<TableInfo>>,
) -> Result<()> {
    let mut before = BTreeMap::new();
    let mut changed = false;
    for (name, info) in tables {
        let old = match TableInfo::recorded(&writer.conn, name, info.class)? {
            Some(old) => Arc::new(old),
            None => info.clone(),
        };
        if old.pks != info.pks {
            return Err(StoreError::InvalidTable {
                table: name.clone(),
                reason: "its primary key was changed outside a migration".into(),
            });
        }
        changed |= old.cols != info.cols || !info.triggers_in_place(&writer.conn)?;
        before.insert(name.clone(), old);
    }
    if changed {
        writer.local(tables, Captures::Ignore, |tx| {
            reconcile(tx, &before, tables)?;
            for info in tables.values() {
                info.install_triggers(tx)?;
            }
            record_layouts(tx, tables)
        })?;
    }
    Ok(())
}

/// Records every replicated table's columns (see [`TableInfo::record_layout`]), in the
/// transaction that made them so, and forgets tables no longer replicated.
fn record_layouts(tx: &Connection, tables: &BTreeMap<String, Arc<TableInfo>>) -> Result<()> {
    tx.execute(
        "DELETE FROM crr_columns WHERE tbl NOT IN (SELECT name FROM crr_tables)",
        [],
    )?;
    for info in tables.values() {
        info.record_layout(tx)?;
    }
    Ok(())
}

/// Runs a migration's SQL statement by statement, with the triggers that note the rows it
/// writes (see [`TableInfo::arm_migration_triggers`]) put in place again before each, on
/// every table replicated before it that exists then, and dropped after.
fn run_migration(
    tx: &Connection,
    sql: &str,
    before: &BTreeMap<String, Arc<TableInfo>>,
) -> Result<()> {
    use rusqlite::fallible_iterator::FallibleIterator as _;
    let mut batch = rusqlite::Batch::new(tx, sql);
    loop {
        for name in before.keys() {
            TableInfo::arm_migration_triggers(tx, name)?;
        }
        let Some(mut stmt) = batch.next()? else {
            break;
        };
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
    }
    for name in before.keys() {
        tx.execute_batch(&TableInfo::disarm_migration_triggers_sql(name))?;
    }
    Ok(())
}

/// Records the rows a migration wrote (noted by the triggers of
/// [`TableInfo::arm_migration_triggers`]): each current column of each row that is still
/// live and that the migration did not insert anew gets a write in the migration's
/// version. Which columns changed is not known (the triggers cannot name columns the
/// migration may drop), so all of them are written.
fn record_migrated_writes(
    tx: &Connection,
    before: &BTreeMap<String, Arc<TableInfo>>,
    after: &BTreeMap<String, Arc<TableInfo>>,
) -> Result<()> {
    let noted: bool = tx.query_row(
        "SELECT count(*) > 0 FROM temp.sqlite_schema WHERE name = 'crr_migrated'",
        [],
        |r| r.get(0),
    )?;
    if !noted {
        return Ok(());
    }
    for info in after.values().filter(|i| before.contains_key(&i.name)) {
        // The rows' implicit clocks first (the columns the write leaves alone keep theirs);
        // a no-op where the migration changed the columns (written out already).
        if let Some(sql) = &info.sql.migrated_materialize {
            tx.execute(sql, [&info.name])?;
        }
        tx.execute(&info.sql.migrated_clear_imp, [&info.name])?;
        if let Some(sql) = &info.sql.migrated_cols {
            tx.execute(sql, [&info.name])?;
        }
    }
    tx.execute_batch("DROP TABLE temp.crr_migrated")?;
    Ok(())
}

/// Whether `name` is a table of the main database.
fn table_exists(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT count(*) > 0 FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )?)
}

/// Stops replicating a table a migration dropped (or renamed away): its clock table and
/// registry rows go, and its name is kept in `crr_dropped`, so that cells naming it, from
/// replicas that have not run the migration yet, are skipped instead of deferred. Every
/// replica runs the same migration, so the rows it had are not recorded as deletes.
fn forget_table(tx: &Connection, name: &str) -> Result<()> {
    tx.execute_batch(&("DROP TABLE IF EXISTS ".to_owned() + &crate::table::clock_table(name)))?;
    // (Its `crr_columns` rows go with `record_layouts`, later in the transaction.)
    tx.execute("DELETE FROM crr_tables WHERE name = ?1", [name])?;
    tx.execute(
        "INSERT OR IGNORE INTO crr_dropped (name) VALUES (?1)",
        [name],
    )?;
    Ok(())
}

/// The tables migrations dropped (see [`forget_table`]).
fn load_dropped(conn: &Connection) -> Result<BTreeSet<String>> {
    Ok(conn
        .prepare("SELECT name FROM crr_dropped")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Adds the `imp` column to a clock table written by an older version of this crate.
fn upgrade_clock(conn: &Connection, info: &TableInfo) -> Result<()> {
    let has_imp: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = 'imp'",
        [info.name.clone() + "__crr_clock"],
        |r| r.get(0),
    )?;
    if !has_imp {
        conn.execute_batch(&info.clock_upgrade_sql())?;
    }
    Ok(())
}

fn meta_int(conn: &Connection, key: &str) -> Result<i64> {
    Ok(match get_meta(conn, key)? {
        Some(Value::Int(i)) => i,
        _ => 0,
    })
}

pub(crate) fn load_tables(conn: &Connection) -> Result<BTreeMap<String, Arc<TableInfo>>> {
    let mut stmt = conn.prepare("SELECT name, class FROM crr_tables ORDER BY name")?;
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = BTreeMap::new();
    for (name, class) in rows {
        let class = if class == "ephemeral" {
            TableClass::Ephemeral
        } else {
            TableClass::Durable
        };
        out.insert(
            name.clone(),
            Arc::new(TableInfo::introspect(conn, &name, class)?),
        );
    }
    Ok(out)
}

/// Per-session state of a sync requester: parts of versions until their last part.
#[derive(Debug, Default)]
pub struct SyncSession {
    responder: Option<Responder>,
    /// Whether a version of this answer was deferred or dropped: the requester then does
    /// not dominate the responder, and nothing is promoted.
    incomplete: bool,
    partial: HashMap<(SiteId, u64), Vec<Cell>>,
    ready: Vec<Change>,
    ready_bytes: usize,
}

const APPLY_BATCH_BYTES: usize = 4 << 20;

impl SyncSession {
    /// Feeds one frame of a sync answer. Returns the `SyncDone` contents at the end.
    pub fn feed(&mut self, store: &Store, frame: Frame) -> Result<Option<(bool, Known)>> {
        if self.responder.is_none() && !matches!(frame, Frame::SyncStart { .. } | Frame::Busy) {
            return Err(StoreError::Malformed(format!(
                "sync answer starts with {}, not SyncStart",
                frame_name(&frame)
            )));
        }
        match frame {
            Frame::SyncStart {
                responder_known,
                responder_pending,
            } => {
                if self.responder.is_some() {
                    return Err(StoreError::Malformed("a second SyncStart".into()));
                }
                self.responder = Some(Responder::new(
                    VersionSet::from_known(&responder_known),
                    &responder_pending,
                ));
                Ok(None)
            }
            Frame::Version {
                site,
                ver,
                ts,
                part: _,
                last_part,
                cells,
            } => {
                let entry = self.partial.entry((site, ver)).or_default();
                entry.extend(cells);
                if last_part {
                    let cells = self.partial.remove(&(site, ver)).unwrap_or_default();
                    self.ready_bytes += cells.iter().map(Cell::encoded_len).sum::<usize>();
                    self.ready.push(Change {
                        site,
                        ver,
                        ts,
                        cells,
                    });
                    if self.ready_bytes >= APPLY_BATCH_BYTES {
                        self.flush(store)?;
                    }
                }
                Ok(None)
            }
            Frame::Cleared { site, ranges } => {
                self.flush(store)?;
                if let Some(resp) = self.responder.as_mut() {
                    store.apply_cleared(site, &ranges, resp)?;
                }
                Ok(None)
            }
            Frame::SyncDone {
                complete,
                responder_known,
            } => {
                self.flush(store)?;
                if complete
                    && !self.incomplete
                    && let Some(resp) = &self.responder
                {
                    let mut w = lock(&store.inner.writer);
                    w.promote(resp)?;
                    store.set_known(&w);
                }
                Ok(Some((complete, responder_known)))
            }
            Frame::Busy => Err(StoreError::Busy),
            other => Err(StoreError::Malformed(format!(
                "unexpected frame in a sync answer: {}",
                frame_name(&other)
            ))),
        }
    }

    /// Applies the versions completed so far.
    pub fn flush(&mut self, store: &Store) -> Result<()> {
        if !self.ready.is_empty() {
            let batch = std::mem::take(&mut self.ready);
            self.ready_bytes = 0;
            let report = store.merge_with_cleared(&batch, &[], self.responder.as_mut())?;
            self.incomplete |= report.deferred > 0 || report.dropped > 0;
        }
        Ok(())
    }
}

pub(crate) fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello { .. } => "Hello",
        Frame::Chunk(_) => "Chunk",
        Frame::SyncReq(_) => "SyncReq",
        Frame::Version { .. } => "Version",
        Frame::Cleared { .. } => "Cleared",
        Frame::SyncStart { .. } => "SyncStart",
        Frame::SyncDone { .. } => "SyncDone",
        Frame::Busy => "Busy",
    }
}

const VERSION_WINDOW: u64 = 4096;
const FIRST_WINDOW: u64 = 8;
const PART_BYTES: usize = 1 << 20;

fn serve_sync(
    conn: &mut Connection,
    tables: &BTreeMap<String, Arc<TableInfo>>,
    req: &SyncReq,
    out: &mut dyn FnMut(Frame) -> Result<()>,
) -> Result<()> {
    let tx = conn.transaction()?;
    let sites = Sites::load(&tx)?;
    let known_b = load_known(&tx, &sites)?;
    let mut ords: HashMap<SiteId, i64> = HashMap::new();
    for s in known_b.keys() {
        if let Some(o) = tx
            .query_row(
                "SELECT ord FROM crr_sites WHERE site = ?1",
                [&s.0[..]],
                |r| r.get(0),
            )
            .optional()?
        {
            ords.insert(*s, o);
        }
    }
    let groups_b = pending::load(&tx, &sites)?;
    out(Frame::SyncStart {
        responder_known: Known(known_b.iter().map(|(s, r)| (*s, r.to_pairs())).collect()),
        responder_pending: pending::to_wire(&groups_b),
    })?;
    // What the requester lacks first; then, when that is all sent, its pending versions
    // whose deps this replica does not hold completely (see `crate::pending`).
    let mut work: Vec<(SiteId, std::ops::RangeInclusive<u64>)> = Vec::new();
    for (site, ranges_b) in &known_b {
        for want in ranges_b.difference(&req.known.ranges(site)) {
            work.push((*site, want));
        }
    }
    let mut resend = pending::to_resend(&req.pending, &known_b, &groups_b);
    resend.subtract(&VersionSet::from_known(&Known(
        work.iter()
            .map(|(s, r)| (*s, vec![(*r.start(), *r.end())]))
            .collect(),
    )));
    for (site, ranges) in &resend.0 {
        work.extend(ranges.iter().map(|r| (*site, r)));
    }
    let mut used: u64 = 0;
    let mut complete = true;
    // Versions are read a window at a time; windows start small and double, so a session
    // cut short by its byte budget reads at most about twice what it sends.
    let mut window = FIRST_WINDOW;
    'sites: for (site, want) in &work {
        let Some(&ord) = ords.get(site) else { continue };
        {
            let (mut lo, hi) = (*want.start(), *want.end());
            while lo <= hi {
                let win_hi = hi.min(lo.saturating_add(window - 1));
                let mut by_ver: BTreeMap<u64, Vec<(Cell, u64)>> = BTreeMap::new();
                for info in tables.values() {
                    let mut stmt = tx.prepare_cached(&info.sql.clock_range)?;
                    let mut rows = stmt.query(params![ord, lo as i64, win_hi as i64])?;
                    let mut reader = RowReader::new(&tx, info)?;
                    while let Some(r) = rows.next()? {
                        let ver = r.get::<_, i64>(0)? as u64;
                        let ts = r.get::<_, i64>(5)? as u64;
                        let row = ClockRow {
                            pk: r.get(1)?,
                            cid: r.get(2)?,
                            cv: r.get(3)?,
                            seq: r.get(4)?,
                            cl: r.get(6)?,
                            imp: r.get(7)?,
                        };
                        let cells = by_ver.entry(ver).or_default();
                        clock_row_cells(info, &mut reader, row, |c| cells.push((c, ts)))?;
                    }
                }
                let mut cleared: Vec<(u64, u64)> = Vec::new();
                for v in lo..=win_hi {
                    match by_ver.remove(&v) {
                        None => match cleared.last_mut() {
                            Some(last) if last.1 + 1 == v => last.1 = v,
                            _ => cleared.push((v, v)),
                        },
                        Some(mut cells) => {
                            if used >= req.byte_budget {
                                complete = false;
                                push_cleared(out, *site, &mut cleared)?;
                                break 'sites;
                            }
                            cells.sort_by_key(|(c, _)| c.seq);
                            let ts = cells.first().map_or(0, |(_, ts)| *ts);
                            let cells: Vec<Cell> = cells.into_iter().map(|(c, _)| c).collect();
                            let mut parts: Vec<Vec<Cell>> = vec![Vec::new()];
                            let mut size = 0;
                            for c in cells {
                                let len = c.encoded_len();
                                used += len as u64;
                                if size + len > PART_BYTES
                                    && parts.last().is_some_and(|p| !p.is_empty())
                                {
                                    parts.push(Vec::new());
                                    size = 0;
                                }
                                size += len;
                                if let Some(p) = parts.last_mut() {
                                    p.push(c);
                                }
                            }
                            let n = parts.len();
                            for (i, cells) in parts.into_iter().enumerate() {
                                out(Frame::Version {
                                    site: *site,
                                    ver: v,
                                    ts,
                                    part: i as u32,
                                    last_part: i + 1 == n,
                                    cells,
                                })?;
                            }
                        }
                    }
                }
                push_cleared(out, *site, &mut cleared)?;
                if win_hi == u64::MAX {
                    break;
                }
                lo = win_hi + 1;
                window = (window * 2).min(VERSION_WINDOW);
            }
        }
    }
    let responder_known = Known(known_b.iter().map(|(s, r)| (*s, r.to_pairs())).collect());
    out(Frame::SyncDone {
        complete,
        responder_known,
    })
}

fn push_cleared(
    out: &mut dyn FnMut(Frame) -> Result<()>,
    site: SiteId,
    cleared: &mut Vec<(u64, u64)>,
) -> Result<()> {
    if cleared.is_empty() {
        return Ok(());
    }
    out(Frame::Cleared {
        site,
        ranges: std::mem::take(cleared),
    })
}
