//! Replicated-table metadata: introspection, rule checks, and the SQL generated for each
//! table (clock table, capture triggers, merge statements).
//!
//! Every identifier that appears in generated SQL comes from SQLite's own description of
//! a table the embedder's migrations created, and is quoted with [`ident`]; no value ever
//! is: values are always bound parameters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension};

use crate::{Result, StoreError, TableClass};

/// The reserved column id of a row's sentinel (its causal length lives in `cv`).
pub const SENTINEL: &str = "-1";

/// A replicated table as the engine sees it.
#[derive(Debug)]
pub(crate) struct TableInfo {
    pub(crate) name: String,
    /// `name`, `cols` and the sentinel's column id, shared by the cells built from clocks.
    pub(crate) arc_name: Arc<str>,
    pub(crate) arc_cols: Vec<Arc<str>>,
    pub(crate) arc_sentinel: Arc<str>,
    pub(crate) class: TableClass,
    pub(crate) pks: Vec<String>,
    pub(crate) cols: Vec<String>,
    pub(crate) col_index: HashMap<String, usize>,
    pub(crate) sql: TableSql,
}

/// Statements generated once per table.
#[derive(Debug)]
pub(crate) struct TableSql {
    pub(crate) clock_get_row: String,
    pub(crate) clock_delete_cols: String,
    pub(crate) clock_zero_cols: String,
    pub(crate) clock_by_version: String,
    /// The key, column and seq of a version's clock rows, from the version index alone,
    /// and for a column's clock row the row's causal length (its sentinel's `cv`).
    pub(crate) clock_seqs_by_version: String,
    /// One clock row's version and `imp` flag (parameters: pk, cid).
    pub(crate) clock_cv_imp: String,
    /// A row's causal length (its sentinel's `cv`).
    pub(crate) clock_cl: String,
    /// The columns of a row that have a clock row (parameter: the packed key).
    pub(crate) clock_explicit: String,
    pub(crate) clock_range: String,
    /// Writes a row's implicit column clocks as clock rows and clears its `imp` flag
    /// (parameter: the packed key); see [`TableInfo::clock_ddl`].
    pub(crate) materialize: Option<String>,
    pub(crate) clear_imp: String,
    /// [`TableSql::materialize`] and [`TableSql::clear_imp`] for every row of the table:
    /// run after a migration that changed its columns, since implicit clocks stand for the
    /// columns the rows were inserted with.
    pub(crate) materialize_all: Option<String>,
    pub(crate) clear_all_imp: String,
    /// Removes the clock rows of columns the table no longer has (run after a migration
    /// that changed its columns, once the old implicit clocks are written out): a dropped
    /// column's clocks would otherwise stay behind on the replicas that had it, and not on
    /// one that synced later.
    pub(crate) prune_cols: String,
    pub(crate) row_delete: String,
    pub(crate) row_insert_pk: String,
    pub(crate) row_select: String,
    /// `INSERT … ON CONFLICT DO UPDATE` of the key plus a subset of the columns, generated
    /// on first use per subset (a merge writes each row once, with every winning column).
    row_upsert: Mutex<HashMap<Vec<usize>, Arc<str>>>,
    /// Multi-row clock upserts by row count (parameters: pk, site_ord, ver, ts, then
    /// cid, cv, seq per row).
    clock_upsert_rows: Mutex<HashMap<usize, Arc<str>>>,
    /// Multi-row inserts of new rows by (column subset, row count).
    rows_insert: Mutex<HashMap<RowsKey, Arc<str>>>,
    /// Multi-row clock inserts of one origin version by cell count (parameters: site_ord,
    /// ver, ts, then pk, cid, cv, seq per cell).
    clocks_insert: Mutex<HashMap<usize, Arc<str>>>,
    clock: String,
    pk_list: String,
    /// The packed key of a row of the table, with key columns qualified by its name.
    pack_qualified: String,
    pub(crate) backfill_sentinel: String,
    pub(crate) backfill_col: Vec<String>,
    /// Rows with no sentinel at all, which only a migration can make (a rebuilt table's
    /// copy with rows the old one did not have): they replicate like a local insert
    /// (sentinel with implicit column clocks, seqs reserved).
    pub(crate) backfill_unseen: String,
    /// For the rows a migration wrote (`temp.crr_migrated`, parameter: the table name):
    /// their implicit clocks written out ...
    pub(crate) migrated_materialize: Option<String>,
    /// ... their `imp` flags cleared ...
    pub(crate) migrated_clear_imp: String,
    /// ... and a write of every column of each live one in the transaction's version, as
    /// a local update writes it (a column without a clock row goes to 2), unless its
    /// sentinel is of that version already (an insert or re-insert the migration made,
    /// whose implicit clocks hold the row's values).
    pub(crate) migrated_cols: Option<String>,
    /// Rows whose sentinel is a tombstone but which are in the table (a migration, which
    /// fires no capture trigger, brought the key back): they replicate like a local re-insert
    /// (causal length + 1, implicit column clocks, seqs reserved).
    pub(crate) backfill_revived: String,
    /// Remove the column clocks of live rows that are gone from the table (dropped by a
    /// migration, which fires no delete trigger) ...
    pub(crate) vanished_cols: String,
    /// ... then record their deletes, as a local write would.
    pub(crate) vanished_delete: String,
}

/// A multi-row clock upsert of `n` rows, each row's VALUES tuple made by `row(i)`, from
/// `cache` or built and cached.
fn cached_clock_upsert(
    cache: &Mutex<HashMap<usize, Arc<str>>>,
    clock: &str,
    n: usize,
    row: impl Fn(usize) -> String,
) -> Arc<str> {
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(sql) = cache.get(&n) {
        return sql.clone();
    }
    let sql: Arc<str> = Arc::from(
        "INSERT INTO ".to_owned()
            + clock
            + " (pk, cid, cv, site_ord, ver, seq, ts) VALUES "
            + &join((0..n).map(row), ", ")
            + " ON CONFLICT (pk, cid) DO UPDATE SET cv = excluded.cv, site_ord = excluded.site_ord, \
               ver = excluded.ver, seq = excluded.seq, ts = excluded.ts",
    );
    cache.insert(n, sql.clone());
    sql
}

/// A multi-row insert's shape: the column subset and the row count.
type RowsKey = (Vec<usize>, usize);

/// Quotes an SQL identifier.
pub(crate) fn ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    s.push_str(&name.replace('"', "\"\""));
    s.push('"');
    s
}

/// Quotes an SQL string literal.
fn literal(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('\'');
    s.push_str(&text.replace('\'', "''"));
    s.push('\'');
    s
}

pub(crate) fn clock_table(table: &str) -> String {
    ident(&(table.to_owned() + "__crr_clock"))
}

/// Whether column `col` of a row changed in an update trigger, exactly: `IS NOT` alone
/// compares with the column's collation (`'abc'` and `'ABC'` are equal under `NOCASE`)
/// and numerically (`1` and `1.0`), and a change it missed would never replicate.
fn differs(col: &str) -> String {
    let (old, new) = (
        "OLD.".to_owned() + &ident(col),
        "NEW.".to_owned() + &ident(col),
    );
    "(".to_owned()
        + &old
        + " IS NOT "
        + &new
        + " COLLATE BINARY OR typeof("
        + &old
        + ") <> typeof("
        + &new
        + "))"
}

/// [`differs`] for a column's value, where a zero real also counts as changed: `0.0` and
/// `-0.0` compare equal but are different bytes in an `ANY` column, so writing one over
/// the other must replicate too (a key packs both the same way).
fn value_differs(col: &str) -> String {
    let new = "NEW.".to_owned() + &ident(col);
    "(".to_owned() + &differs(col) + " OR (typeof(" + &new + ") = 'real' AND " + &new + " = 0))"
}

/// The triggers on `table`, each with whether it is one of the store's (named
/// `<table>__crr_…`).
fn triggers_on(conn: &Connection, table: &str) -> Result<Vec<(String, bool)>> {
    let prefix = table.to_owned() + "__crr_";
    Ok(conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1")?
        .query_map([table], |r| r.get::<_, String>(0))?
        .map(|name| {
            name.map(|n| {
                let ours = n.starts_with(&prefix);
                (n, ours)
            })
        })
        .collect::<rusqlite::Result<_>>()?)
}

fn join(parts: impl IntoIterator<Item = String>, sep: &str) -> String {
    parts.into_iter().collect::<Vec<_>>().join(sep)
}

/// The statement a migration's reconciliation records writes with: for each row `from`
/// yields (its sentinel as `s`) that is live, where `cond` holds, and whose sentinel is not
/// of the transaction's version already (an insert the migration made, whose implicit
/// clocks cover every column), a write of column `cid` (an SQL expression) in that version
/// as a local update writes it (a column without a clock row goes to 2); `conflict` says
/// what to do where the column has a clock row.
fn migrated_write_sql(clock: &str, cid: &str, from: &str, cond: &str, conflict: &str) -> String {
    "INSERT INTO ".to_owned()
        + clock
        + " (pk, cid, cv, site_ord, ver, seq, ts) SELECT s.pk, "
        + cid
        + ", 2, crr_self(), crr_ver(), crr_seq(), crr_ts() FROM "
        + from
        + " WHERE s.cid = '-1' AND s.cv % 2 = 1 \
           AND NOT (s.site_ord = crr_self() AND s.ver = crr_ver()) AND "
        + cond
        + " ON CONFLICT (pk, cid) DO "
        + conflict
}

/// The `INSERT … SELECT` writing the implicit column clocks (see [`TableInfo::clock_ddl`])
/// of the row of table `name` whose packed key is the SQL expression `pk`, without its
/// `ON CONFLICT` clause, which the caller appends after any further condition. Needs at
/// least one column.
fn materialize_sql(name: &str, cols: &[String], pk: &str) -> String {
    let clock = clock_table(name);
    let values = join(
        cols.iter()
            .enumerate()
            .map(|(i, c)| "(".to_owned() + &literal(c) + ", " + &(i + 1).to_string() + ")"),
        ", ",
    );
    "INSERT INTO ".to_owned()
        + &clock
        + " (pk, cid, cv, site_ord, ver, seq, ts) SELECT s.pk, c.column1, 1, s.site_ord, s.ver, \
           s.seq + c.column2, s.ts FROM "
        + &clock
        + " s, (VALUES "
        + &values
        + ") c WHERE s.pk = "
        + pk
        + " AND s.cid = '-1' AND s.imp <> 0"
}

impl TableInfo {
    /// Reads a table's shape from SQLite and checks the replication rules.
    pub(crate) fn introspect(conn: &Connection, name: &str, class: TableClass) -> Result<Self> {
        let invalid = |reason: String| StoreError::InvalidTable {
            table: name.to_owned(),
            reason,
        };
        if name.contains("__crr") || name.starts_with("crr_") || name.starts_with("sqlite_") {
            return Err(invalid("the name is reserved".into()));
        }
        let strict: Option<i64> = conn
            .query_row(
                "SELECT strict FROM pragma_table_list WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        match strict {
            None => return Err(invalid("no such table".into())),
            Some(0) => return Err(invalid("it must be STRICT".into())),
            Some(_) => {}
        }
        let mut stmt = conn.prepare(
            "SELECT name, \"notnull\", dflt_value IS NOT NULL, pk FROM pragma_table_info(?1) ORDER BY cid",
        )?;
        let mut pks: Vec<(i64, String)> = Vec::new();
        let mut cols = Vec::new();
        let rows = stmt.query_map([name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (col, notnull, has_default, pk) = row?;
            if col == SENTINEL {
                return Err(invalid(format!("column name {col} is reserved")));
            }
            if pk > 0 {
                if !notnull {
                    return Err(invalid(format!(
                        "primary key column {col} must be NOT NULL"
                    )));
                }
                pks.push((pk, col));
            } else {
                if notnull && !has_default {
                    return Err(invalid(format!("NOT NULL column {col} needs a DEFAULT")));
                }
                cols.push(col);
            }
        }
        if pks.is_empty() {
            return Err(invalid("it needs an explicit PRIMARY KEY".into()));
        }
        if pks.len() > 32 {
            return Err(invalid("too many primary key columns".into()));
        }
        pks.sort();
        let pks: Vec<String> = pks.into_iter().map(|(_, c)| c).collect();
        let unique: i64 = conn.query_row(
            "SELECT count(*) FROM pragma_index_list(?1) WHERE \"unique\" AND origin <> 'pk'",
            [name],
            |r| r.get(0),
        )?;
        if unique > 0 {
            return Err(invalid(
                "UNIQUE constraints other than the primary key are not allowed".into(),
            ));
        }
        let fks: i64 = conn.query_row(
            "SELECT count(*) FROM pragma_foreign_key_list(?1)",
            [name],
            |r| r.get(0),
        )?;
        if fks > 0 {
            return Err(invalid("FOREIGN KEY clauses are not allowed".into()));
        }
        // A trigger of the embedder's would run on merged writes too (uncaptured), and one
        // that rewrites a row after the capture trigger saw it would make the broadcast
        // differ from the table.
        if let Some((trigger, _)) = triggers_on(conn, name)?.into_iter().find(|(_, ours)| !ours) {
            return Err(invalid(format!(
                "triggers are not allowed on replicated tables (found {trigger})"
            )));
        }
        Ok(Self::from_parts(name, class, pks, cols))
    }

    /// A table of this shape (no checks: [`TableInfo::introspect`] made them, or the
    /// shape is one it recorded).
    pub(crate) fn from_parts(
        name: &str,
        class: TableClass,
        pks: Vec<String>,
        cols: Vec<String>,
    ) -> Self {
        let sql = TableSql::generate(name, &pks, &cols);
        let col_index = cols
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), i))
            .collect();
        TableInfo {
            name: name.to_owned(),
            arc_name: Arc::from(name),
            arc_cols: cols.iter().map(|c| Arc::from(c.as_str())).collect(),
            arc_sentinel: Arc::from(SENTINEL),
            class,
            pks,
            cols,
            col_index,
            sql,
        }
    }

    /// Records the table's columns in `crr_columns`, as the store last saw them: a change
    /// made outside a migration is found (and reconciled) at the next open.
    pub(crate) fn record_layout(&self, conn: &Connection) -> Result<()> {
        conn.execute("DELETE FROM crr_columns WHERE tbl = ?1", [&self.name])?;
        let mut insert = conn.prepare_cached(
            "INSERT INTO crr_columns (tbl, pos, name, pk) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let keys = (1i64..).zip(&self.pks).map(|(i, p)| (p, i));
        for (pos, (col, pk)) in (0i64..).zip(keys.chain(self.cols.iter().map(|c| (c, 0)))) {
            insert.execute(rusqlite::params![&self.name, pos, col, pk])?;
        }
        Ok(())
    }

    /// The table as [`TableInfo::record_layout`] recorded it, if it did.
    pub(crate) fn recorded(
        conn: &Connection,
        name: &str,
        class: TableClass,
    ) -> Result<Option<Self>> {
        let mut pks: Vec<(i64, String)> = Vec::new();
        let mut cols = Vec::new();
        let mut stmt =
            conn.prepare("SELECT name, pk FROM crr_columns WHERE tbl = ?1 ORDER BY pos")?;
        for row in stmt.query_map([name], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })? {
            let (col, pk) = row?;
            if pk > 0 {
                pks.push((pk, col));
            } else {
                cols.push(col);
            }
        }
        if pks.is_empty() {
            return Ok(None);
        }
        pks.sort();
        let pks = pks.into_iter().map(|(_, c)| c).collect();
        Ok(Some(Self::from_parts(name, class, pks, cols)))
    }

    /// Whether every capture trigger of the table is in place under its name.
    pub(crate) fn triggers_in_place(&self, conn: &Connection) -> Result<bool> {
        let ours: std::collections::HashSet<String> = triggers_on(conn, &self.name)?
            .into_iter()
            .filter_map(|(name, ours)| ours.then_some(name))
            .collect();
        let prefix = self.name.clone() + "__crr_";
        let want = ["ins".to_owned(), "del".to_owned(), "pk".to_owned()]
            .into_iter()
            .chain((0..self.cols.len()).map(|i| "upd_".to_owned() + &i.to_string()));
        Ok(want
            .into_iter()
            .all(|w| ours.contains(&(prefix.clone() + &w)))
            && ours.len() == self.cols.len() + 3)
    }

    /// DDL for the clock table and its index.
    pub(crate) fn clock_ddl(&self) -> String {
        let clock = clock_table(&self.name);
        let index = ident(&(self.name.clone() + "__crr_clock_ver"));
        // "cid" is the column name or the sentinel; "cv" the column version (for the
        // sentinel: the causal length). "imp" (sentinels only): the row's column clocks
        // are implicit where they have no clock row, as the insert that began this
        // generation wrote them: column i has version 1 and the sentinel's origin with
        // seq + 1 + i. A local update writes the changed column's clock row alone (at
        // version 2) and leaves the flag. imp = 0: every column's clock is a row (or
        // absent). A merge into a row with implicit clocks writes the missing ones out
        // ("materialises") and clears the flag. (Stores before this rule set imp = 2 on
        // a local update; 1 and 2 mean the same.)
        let mut s = String::new();
        s.push_str("CREATE TABLE IF NOT EXISTS ");
        s.push_str(&clock);
        s.push_str(
            " (pk BLOB NOT NULL, cid TEXT NOT NULL, cv INTEGER NOT NULL, site_ord INTEGER NOT NULL, \
             ver INTEGER NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL, \
             imp INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (pk, cid)) \
             WITHOUT ROWID, STRICT;\nCREATE INDEX IF NOT EXISTS ",
        );
        s.push_str(&index);
        s.push_str(" ON ");
        s.push_str(&clock);
        s.push_str(" (site_ord, ver, seq);");
        s
    }

    /// SQL adding the `imp` column to a clock table made before it existed.
    pub(crate) fn clock_upgrade_sql(&self) -> String {
        "ALTER TABLE ".to_owned()
            + &clock_table(&self.name)
            + " ADD COLUMN imp INTEGER NOT NULL DEFAULT 0"
    }

    /// Drops every capture trigger of the table (whatever columns it had when they were
    /// made) and creates the current ones (run after any schema change).
    pub(crate) fn install_triggers(&self, conn: &Connection) -> Result<()> {
        self.drop_triggers(conn)?;
        conn.execute_batch(&self.trigger_ddl())?;
        Ok(())
    }

    /// Puts in place, if `table` exists and they are not, the triggers a migration runs
    /// with instead of the capture triggers: they name only the key (a migration may drop
    /// any other column) and note the key of each row an `UPDATE` or `INSERT` (a
    /// `REPLACE` too) wrote in `temp.crr_migrated`; [`TableSql::migrated_cols`] then
    /// records those rows' columns. Run before each statement of a migration, so a table
    /// the migration rebuilt gets them again under its name.
    pub(crate) fn arm_migration_triggers(conn: &Connection, table: &str) -> Result<()> {
        let (upd, ins) = (
            table.to_owned() + "__crr_migrated_upd",
            table.to_owned() + "__crr_migrated_ins",
        );
        // On this table: `ALTER TABLE … RENAME TO` takes triggers along to the new name.
        let armed: i64 = conn.query_row(
            "SELECT count(*) FROM temp.sqlite_schema \
             WHERE type = 'trigger' AND name IN (?1, ?2) AND tbl_name = ?3",
            [&upd, &ins, &table.to_owned()],
            |r| r.get(0),
        )?;
        if armed == 2 {
            return Ok(());
        }
        let mut key: Vec<(i64, String)> = conn
            .prepare("SELECT pk, name FROM main.pragma_table_info(?1) WHERE pk > 0")?
            .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        if key.is_empty() {
            // Not there (dropped, or not yet renamed back), or a table without a key.
            return Ok(());
        }
        key.sort();
        let key = join(key.iter().map(|(_, p)| "NEW.".to_owned() + &ident(p)), ", ");
        let note = " ON ".to_owned()
            + &ident(table)
            + " BEGIN INSERT OR IGNORE INTO temp.crr_migrated (tbl, pk) VALUES ("
            + &literal(table)
            + ", crr_pack("
            + &key
            + ")); END;\n";
        conn.execute_batch(
            &("CREATE TEMP TABLE IF NOT EXISTS crr_migrated (tbl TEXT NOT NULL, pk BLOB NOT NULL, \
               PRIMARY KEY (tbl, pk)) WITHOUT ROWID;\n"
                .to_owned()
                + &Self::disarm_migration_triggers_sql(table)
                + "CREATE TEMP TRIGGER "
                + &ident(&upd)
                + " AFTER UPDATE"
                + &note
                + "CREATE TEMP TRIGGER "
                + &ident(&ins)
                + " AFTER INSERT" + &note),
        )?;
        Ok(())
    }

    /// Drops the triggers of [`TableInfo::arm_migration_triggers`] if the migration left
    /// them.
    pub(crate) fn disarm_migration_triggers_sql(table: &str) -> String {
        "DROP TRIGGER IF EXISTS temp.".to_owned()
            + &ident(&(table.to_owned() + "__crr_migrated_upd"))
            + ";\nDROP TRIGGER IF EXISTS temp."
            + &ident(&(table.to_owned() + "__crr_migrated_ins"))
            + ";\n"
    }

    /// The statement recording, for a column `col` the table did not have before a
    /// migration, a write of it in every live row where its value is not the column's
    /// default (a renamed column, or one a rebuild copied values into), unless the row's
    /// sentinel is of the migration's version (its implicit clocks cover the column) or the
    /// column has a clock row already. A column added with its default needs nothing: every
    /// replica computes the same value. `default` is SQLite's text of the column's `DEFAULT`
    /// expression, from the table's own description.
    pub(crate) fn new_column_sql(&self, col: &str, default: Option<&str>) -> String {
        let t = ident(&self.name);
        migrated_write_sql(
            &self.sql.clock,
            &literal(col),
            &(t.clone() + " JOIN " + &self.sql.clock + " s ON s.pk = " + &self.sql.pack_qualified),
            &(t + "." + &ident(col) + " IS NOT (" + default.unwrap_or("NULL") + ")"),
            "NOTHING",
        )
    }

    /// Drops every capture trigger of the table. A migration runs without them (they name
    /// the columns, so SQLite would refuse `ALTER TABLE … DROP COLUMN`); what it wrote is
    /// found by comparing the table with its clocks afterwards.
    pub(crate) fn drop_triggers(&self, conn: &Connection) -> Result<()> {
        for (name, ours) in triggers_on(conn, &self.name)? {
            if ours {
                conn.execute_batch(&("DROP TRIGGER ".to_owned() + &ident(&name)))?;
            }
        }
        Ok(())
    }

    /// DDL creating the capture triggers (see [`TableInfo::install_triggers`]).
    ///
    /// The triggers pass the table's name to `crr_ver`, so a commit reads back only the
    /// tables it wrote.
    fn trigger_ddl(&self) -> String {
        let t = ident(&self.name);
        let clock = clock_table(&self.name);
        let trig = |suffix: &str| ident(&(self.name.clone() + "__crr_" + suffix));
        let pack = |row: &str| {
            let args = join(
                self.pks.iter().map(|p| row.to_owned() + "." + &ident(p)),
                ", ",
            );
            "crr_pack(".to_owned() + &args + ")"
        };
        let ver = "crr_ver(".to_owned() + &literal(&self.name) + ")";
        let meta = &("crr_self(), ".to_owned() + &ver + ", crr_seq(), crr_ts()");
        let set_meta = "site_ord = excluded.site_ord, ver = excluded.ver, seq = excluded.seq, ts = excluded.ts";
        let insert_clock =
            "INSERT INTO ".to_owned() + &clock + " (pk, cid, cv, site_ord, ver, seq, ts) ";

        let mut s = String::new();
        // INSERT (also the second half of INSERT OR REPLACE): a new generation of the row.
        s += &("CREATE TRIGGER ".to_owned()
            + &trig("ins")
            + " AFTER INSERT ON "
            + &t
            + " WHEN crr_local() BEGIN\n");
        // Only the sentinel is written: the columns' clocks are implicit (see `clock_ddl`),
        // and their seqs are reserved. The writer runs with recursive_triggers on, so an
        // INSERT OR REPLACE of a live row runs the DELETE trigger first and the row here is
        // always new or dead.
        // crr_cap reserves the seqs and hands the row's values to the writer, which builds
        // the version from them at commit; crr_cl tells it the causal length of a
        // re-inserted row.
        let cap = join(
            std::iter::once((self.cols.len() + 1).to_string())
                .chain(self.cols.iter().map(|c| "NEW.".to_owned() + &ident(c))),
            ", ",
        );
        s += &("INSERT INTO ".to_owned()
            + &clock
            + " (pk, cid, cv, site_ord, ver, seq, ts, imp) VALUES ("
            + &pack("NEW")
            + ", '-1', 1, crr_self(), "
            + &ver
            + ", crr_cap("
            + &cap
            + "), crr_ts(), 1) ON CONFLICT (pk, cid) DO UPDATE SET cv = crr_cl(cv + (CASE WHEN cv % 2 = 0 THEN 1 ELSE 2 END)), imp = 1, "
            + set_meta
            + ";\n");
        s += "END;\n";
        // UPDATE: one trigger per column, which SQLite fires only for updates that set
        // that column, loading only it and the key. A changed column's clock goes up by
        // one; a column without a clock row (implicit at version 1, or never written)
        // gets one at version 2. The sentinel is not touched (see `clock_ddl`). crr_capu
        // reserves the seq and hands the writer the column's new value, crr_cv the version
        // an existing clock row goes to, so the commit does not read them back.
        for (i, c) in self.cols.iter().enumerate() {
            s += &("CREATE TRIGGER ".to_owned()
                + &trig(&("upd_".to_owned() + &i.to_string()))
                + " AFTER UPDATE OF "
                + &ident(c)
                + " ON "
                + &t
                + " WHEN crr_local() AND "
                + &value_differs(c)
                + " BEGIN\n"
                + &insert_clock
                + "VALUES ("
                + &pack("NEW")
                + ", "
                + &literal(c)
                + ", 2, crr_self(), "
                + &ver
                + ", crr_capu("
                + &i.to_string()
                + ", NEW."
                + &ident(c)
                + "), crr_ts()) ON CONFLICT (pk, cid) DO UPDATE SET cv = crr_cv(cv + 1), "
                + set_meta
                + ";\nEND;\n");
        }
        // DELETE: the sentinel becomes even; column clocks go (values are gone).
        s += &("CREATE TRIGGER ".to_owned()
            + &trig("del")
            + " AFTER DELETE ON "
            + &t
            + " WHEN crr_local() BEGIN\n");
        s += &(insert_clock
            + "VALUES ("
            + &pack("OLD")
            + ", '-1', 2, "
            + meta
            + ") ON CONFLICT (pk, cid) DO UPDATE SET cv = cv + (CASE WHEN cv % 2 = 1 THEN 1 ELSE 2 END), imp = 0, "
            + set_meta
            + ";\n");
        s += &("DELETE FROM ".to_owned()
            + &clock
            + " WHERE pk = "
            + &pack("OLD")
            + " AND cid <> '-1';\nEND;\n");
        // Primary keys are immutable, whoever writes.
        let changed = join(self.pks.iter().map(|p| differs(p)), " OR ");
        let msg = literal(
            &("primary key of ".to_owned()
                + &self.name
                + " is immutable; delete and re-insert the row"),
        );
        s += &("CREATE TRIGGER ".to_owned()
            + &trig("pk")
            + " BEFORE UPDATE OF "
            + &join(self.pks.iter().map(|p| ident(p)), ", ")
            + " ON "
            + &t
            + " WHEN "
            + &changed
            + " BEGIN SELECT RAISE(ABORT, "
            + &msg
            + "); END;\n");
        s
    }
}

impl TableSql {
    /// The upsert writing the key and the columns at `cols` (indexes into the table's
    /// non-key columns, ascending): parameters are the key values, then the columns' values.
    pub(crate) fn row_upsert(&self, table: &TableInfo, cols: &[usize]) -> Arc<str> {
        let mut cache = self
            .row_upsert
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(sql) = cache.get(cols) {
            return sql.clone();
        }
        let names: Vec<String> = cols.iter().map(|&i| ident(&table.cols[i])).collect();
        let n = table.pks.len() + cols.len();
        let mut sql = "INSERT INTO ".to_owned()
            + &ident(&table.name)
            + " ("
            + &self.pk_list
            + ", "
            + &names.join(", ")
            + ") VALUES ("
            + &join((1..=n).map(|i| "?".to_owned() + &i.to_string()), ", ")
            + ") ON CONFLICT ("
            + &self.pk_list
            + ") DO UPDATE SET ";
        sql += &join(names.iter().map(|c| c.clone() + " = excluded." + c), ", ");
        let sql: Arc<str> = Arc::from(sql);
        cache.insert(cols.to_vec(), sql.clone());
        sql
    }

    /// The insert of `n` new rows, each with the key and the columns at `cols`: parameters
    /// are each row's key values then its columns' values, row after row. A row that exists
    /// is updated (it cannot, when the caller found no clock for it).
    pub(crate) fn rows_insert(&self, table: &TableInfo, cols: &[usize], n: usize) -> Arc<str> {
        let mut cache = self
            .rows_insert
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(sql) = cache.get(&(cols.to_vec(), n)) {
            return sql.clone();
        }
        let names: Vec<String> = cols.iter().map(|&i| ident(&table.cols[i])).collect();
        let width = table.pks.len() + cols.len();
        let one = "(".to_owned() + &join((0..width).map(|_| "?".to_owned()), ", ") + ")";
        let mut sql = "INSERT INTO ".to_owned() + &ident(&table.name) + " (" + &self.pk_list;
        for n in &names {
            sql += ", ";
            sql += n;
        }
        sql += ") VALUES ";
        sql += &join((0..n).map(|_| one.clone()), ", ");
        if names.is_empty() {
            sql += " ON CONFLICT DO NOTHING";
        } else {
            sql += &(" ON CONFLICT (".to_owned() + &self.pk_list + ") DO UPDATE SET ");
            sql += &join(names.iter().map(|c| c.clone() + " = excluded." + c), ", ");
        }
        let sql: Arc<str> = Arc::from(sql);
        cache.insert((cols.to_vec(), n), sql.clone());
        sql
    }

    /// The upsert of `n` clock rows of one origin version (any keys).
    pub(crate) fn clocks_insert(&self, n: usize) -> Arc<str> {
        cached_clock_upsert(&self.clocks_insert, &self.clock, n, |i| {
            let p = |k: usize| "?".to_owned() + &(4 + 4 * i + k).to_string();
            "(".to_owned() + &p(0) + ", " + &p(1) + ", " + &p(2) + ", ?1, ?2, " + &p(3) + ", ?3)"
        })
    }

    /// The upsert of `n` clock rows of one key, all of one origin version.
    pub(crate) fn clock_upsert_rows(&self, n: usize) -> Arc<str> {
        cached_clock_upsert(&self.clock_upsert_rows, &self.clock, n, |i| {
            let p = |k: usize| "?".to_owned() + &(5 + 3 * i + k).to_string();
            "(?1, ".to_owned() + &p(0) + ", " + &p(1) + ", ?2, ?3, " + &p(2) + ", ?4)"
        })
    }

    fn generate(name: &str, pks: &[String], cols: &[String]) -> Self {
        let t = ident(name);
        let clock = clock_table(name);
        let pk_list = join(pks.iter().map(|p| ident(p)), ", ");
        let pk_where = join(
            pks.iter()
                .enumerate()
                .map(|(i, p)| ident(p) + " = ?" + &(i + 1).to_string()),
            " AND ",
        );
        let pk_params = join(
            (1..=pks.len()).map(|i| "?".to_owned() + &i.to_string()),
            ", ",
        );
        let pack_cols = "crr_pack(".to_owned() + &pk_list + ")";
        // The same, qualified: inside a subquery on the clock table, a key column named
        // like one of its columns (`pk`, `cid`, ...) would resolve to the clock's.
        let pack_qualified = "crr_pack(".to_owned()
            + &join(pks.iter().map(|p| t.clone() + "." + &ident(p)), ", ")
            + ")";
        let backfill_col = cols
            .iter()
            .map(|c| {
                "INSERT INTO ".to_owned()
                    + &clock
                    + " (pk, cid, cv, site_ord, ver, seq, ts) SELECT "
                    + &pack_cols
                    + ", "
                    + &literal(c)
                    + ", 1, crr_self(), crr_ver(), crr_seq(), crr_ts() FROM "
                    + &t
                    // A row already replicated may have its column clocks implicit (a
                    // table listed again by a later migration): they exist, as they are.
                    + " WHERE NOT EXISTS (SELECT 1 FROM "
                    + &clock
                    + " s WHERE s.pk = "
                    + &pack_qualified
                    + " AND s.cid = '-1' AND s.imp <> 0) ON CONFLICT (pk, cid) DO NOTHING"
            })
            .collect();
        TableSql {
            clock_get_row: "SELECT cid, cv, site_ord, ver, seq, ts, imp FROM ".to_owned()
                + &clock
                + " WHERE pk = ?1",
            clock_delete_cols: "DELETE FROM ".to_owned()
                + &clock
                + " WHERE pk = ?1 AND cid <> '-1'",
            clock_zero_cols: "UPDATE ".to_owned()
                + &clock
                + " SET cv = 0 WHERE pk = ?1 AND cid <> '-1'",
            materialize: (!cols.is_empty())
                .then(|| materialize_sql(name, cols, "?1") + " ON CONFLICT (pk, cid) DO NOTHING"),
            clear_imp: "UPDATE ".to_owned()
                + &clock
                + " SET imp = 0 WHERE pk = ?1 AND cid = '-1' AND imp <> 0",
            materialize_all: (!cols.is_empty())
                .then(|| materialize_sql(name, cols, "s.pk") + " ON CONFLICT (pk, cid) DO NOTHING"),
            clear_all_imp: "UPDATE ".to_owned()
                + &clock
                + " SET imp = 0 WHERE cid = '-1' AND imp <> 0",
            prune_cols: "DELETE FROM ".to_owned()
                + &clock
                + " WHERE cid <> '-1'"
                + &if cols.is_empty() {
                    String::new()
                } else {
                    " AND cid NOT IN (".to_owned()
                        + &join(cols.iter().map(|c| literal(c)), ", ")
                        + ")"
                },
            // No join with the sentinel here: with it, SQLite re-prepared the statement on
            // every run on the writer connection (its cost showed in every local commit).
            clock_by_version: "SELECT pk, cid, cv, seq, imp FROM ".to_owned()
                + &clock
                + " WHERE site_ord = ?1 AND ver = ?2",
            clock_seqs_by_version:
                "SELECT c.pk, c.cid, c.seq, CASE WHEN c.cid <> '-1' THEN (SELECT s.cv FROM "
                    .to_owned()
                    + &clock
                    + " s WHERE s.pk = c.pk AND s.cid = '-1') END FROM "
                    + &clock
                    + " c WHERE c.site_ord = ?1 AND c.ver = ?2",
            clock_cv_imp: "SELECT cv, imp FROM ".to_owned()
                + &clock
                + " WHERE pk = ?1 AND cid = ?2",
            clock_cl: "SELECT cv FROM ".to_owned() + &clock + " WHERE pk = ?1 AND cid = '-1'",
            clock_explicit: "SELECT cid FROM ".to_owned()
                + &clock
                + " WHERE pk = ?1 AND cid <> '-1'",
            clock_range: "SELECT c.ver, c.pk, c.cid, c.cv, c.seq, c.ts, s.cv, c.imp FROM "
                .to_owned()
                + &clock
                + " c JOIN "
                + &clock
                + " s ON s.pk = c.pk AND s.cid = '-1' WHERE c.site_ord = ?1 AND c.ver BETWEEN ?2 AND ?3 \
                   AND c.cv > 0 ORDER BY c.ver, c.seq",
            row_delete: "DELETE FROM ".to_owned() + &t + " WHERE " + &pk_where,
            row_insert_pk: "INSERT INTO ".to_owned()
                + &t
                + " ("
                + &pk_list
                + ") VALUES ("
                + &pk_params
                + ") ON CONFLICT DO NOTHING",
            row_select: if cols.is_empty() {
                "SELECT 1 FROM ".to_owned() + &t + " WHERE " + &pk_where
            } else {
                "SELECT ".to_owned()
                    + &join(cols.iter().map(|c| ident(c)), ", ")
                    + " FROM "
                    + &t
                    + " WHERE "
                    + &pk_where
            },
            row_upsert: Mutex::default(),
            clock_upsert_rows: Mutex::default(),
            rows_insert: Mutex::default(),
            clocks_insert: Mutex::default(),
            clock: clock.clone(),
            pk_list,
            pack_qualified: pack_qualified.clone(),
            backfill_sentinel: "INSERT INTO ".to_owned()
                + &clock
                + " (pk, cid, cv, site_ord, ver, seq, ts) SELECT "
                + &pack_cols
                + ", '-1', 1, crr_self(), crr_ver(), crr_seq(), crr_ts() FROM "
                + &t
                + " WHERE true ON CONFLICT (pk, cid) DO NOTHING",
            backfill_col,
            backfill_unseen: "INSERT INTO ".to_owned()
                + &clock
                + " (pk, cid, cv, site_ord, ver, seq, ts, imp) SELECT "
                + &pack_qualified
                + ", '-1', 1, crr_self(), crr_ver(), crr_seqs("
                + &(cols.len() + 1).to_string()
                + "), crr_ts(), 1 FROM "
                + &t
                + " WHERE NOT EXISTS (SELECT 1 FROM "
                + &clock
                + " s WHERE s.pk = "
                + &pack_qualified
                + " AND s.cid = '-1')",
            migrated_materialize: (!cols.is_empty()).then(|| {
                materialize_sql(name, cols, "s.pk")
                    + " AND s.pk IN (SELECT pk FROM temp.crr_migrated WHERE tbl = ?1) \
                       ON CONFLICT (pk, cid) DO NOTHING"
            }),
            migrated_clear_imp: "UPDATE ".to_owned()
                + &clock
                + " SET imp = 0 WHERE cid = '-1' AND imp <> 0 \
                   AND pk IN (SELECT pk FROM temp.crr_migrated WHERE tbl = ?1)",
            migrated_cols: (!cols.is_empty()).then(|| {
                let values = join(
                    cols.iter().map(|c| "(".to_owned() + &literal(c) + ")"),
                    ", ",
                );
                migrated_write_sql(
                    &clock,
                    "c.column1",
                    &(clock.clone() + " s, (VALUES " + &values + ") c"),
                    "s.pk IN (SELECT pk FROM temp.crr_migrated WHERE tbl = ?1)",
                    "UPDATE SET cv = cv + 1, site_ord = excluded.site_ord, ver = excluded.ver, \
                     seq = excluded.seq, ts = excluded.ts",
                )
            }),
            backfill_revived: "UPDATE ".to_owned()
                + &clock
                + " SET cv = cv + 1, site_ord = crr_self(), ver = crr_ver(), seq = crr_seqs("
                + &(cols.len() + 1).to_string()
                + "), ts = crr_ts(), imp = 1 WHERE cid = '-1' AND cv % 2 = 0 AND pk IN (SELECT "
                + &pack_cols
                + " FROM "
                + &t
                + ")",
            vanished_cols: "DELETE FROM ".to_owned()
                + &clock
                + " WHERE cid <> '-1' AND pk IN (SELECT pk FROM "
                + &clock
                + " WHERE cid = '-1' AND cv % 2 = 1 AND pk NOT IN (SELECT "
                + &pack_cols
                + " FROM "
                + &t
                + "))",
            vanished_delete: "UPDATE ".to_owned()
                + &clock
                + " SET cv = cv + 1, site_ord = crr_self(), ver = crr_ver(), seq = crr_seq(),                    ts = crr_ts(), imp = 0 WHERE cid = '-1' AND cv % 2 = 1 AND pk NOT IN (SELECT "
                + &pack_cols
                + " FROM "
                + &t
                + ")",
        }
    }
}
