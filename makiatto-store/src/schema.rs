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
/// A migration may add tables, columns and non-unique indexes, drop columns, rebuild a
/// table, and write rows; what it writes to replicated tables is recorded from the tables
/// afterwards (docs/replication.md, "Tables"). Values it changes in kept columns while
/// copying rows into a rebuilt table are not recorded, so they must be deterministic:
/// every node runs the migration. A replicated table it drops (or renames away) stops
/// replicating: its clocks go, cells of it from replicas that have not migrated yet are
/// skipped, and its name cannot be replicated again. Replicated tables must be `STRICT`,
/// have an explicit `NOT NULL` primary key, no `UNIQUE` constraint besides it, no foreign
/// keys, a `DEFAULT` on every non-key `NOT NULL` column, and no triggers of the embedder's
/// (the store checks these). Keys must be unique across nodes: a random or content-derived id, not an
/// auto-incremented integer, which two nodes would hand out alike.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// 1, 2, 3… without gaps.
    pub version: u32,
    /// SQL statements, run one after the other; none may take parameters, and the rows a
    /// statement returns (a `SELECT`, a `PRAGMA`) are read to the end and dropped.
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
