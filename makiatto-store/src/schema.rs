//! Embedded, numbered schema migrations and the replicated-table registry.

/// How tombstones of a replicated table are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableClass {
    /// Tombstones are kept forever: primary keys may be reused (domains, nodes).
    Durable,
    /// Primary keys are never reused (UUIDs, tokens): tombstones may be pruned once every
    /// member has seen them and the retention has passed.
    Ephemeral,
}

/// A replicated table declared by a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicate {
    /// The table name (must exist after the migration's SQL ran).
    pub table: &'static str,
    /// Tombstone class.
    pub class: TableClass,
}

/// One numbered migration: SQL run once, in order, inside the writer transaction, and the
/// tables it makes replicated.
///
/// Allowed changes (replication.md §3.13): new tables, new nullable or DEFAULT columns,
/// non-unique indexes. Replicated tables must be `STRICT`, have an explicit `NOT NULL`
/// primary key, no `UNIQUE` constraint besides it, no foreign keys, no `AUTOINCREMENT`,
/// and a `DEFAULT` on every non-key `NOT NULL` column.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// 1, 2, 3… without gaps.
    pub version: u32,
    /// SQL statements (a batch).
    pub sql: &'static str,
    /// Tables that become replicated with this migration (an `ALTER TABLE` of an already
    /// replicated table needs no entry: its triggers are regenerated automatically).
    pub replicate: &'static [Replicate],
}

/// An ordered list of migrations: the whole schema of a store.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// The migrations, in version order.
    pub migrations: &'static [Migration],
}

impl Schema {
    /// The highest migration version.
    pub fn version(&self) -> u32 {
        self.migrations.last().map_or(0, |m| m.version)
    }
}
