//! Multi-writer replicated SQLite on cr-sqlite's model, and a content-addressed blob store.
//!
//! Every replica holds the whole database and any replica may write. Tables registered for
//! replication become conflict-free replicated relations: each cell (row × column) is a
//! last-writer-wins register ordered by *(causal length, column version, HLC timestamp,
//! site id)*, and each row carries a causal length (odd: alive, even: deleted) so deletes
//! and re-inserts merge predictably. Merges are commutative, associative and idempotent,
//! so replicas converge whatever the delivery order, duplication or partitions.
//!
//! # Design
//! - Local writes go through [`Store::write`] on the single writer connection; generated
//!   triggers call Rust functions registered only on that connection, so a write to a
//!   replicated table from any other connection fails (one that drops the triggers first
//!   stops the store's writes until it is reopened; see `docs/replication.md`). Primary
//!   keys are immutable.
//! - Each local transaction that touches replicated tables becomes one **origin version**
//!   `(site, ver)`, dense per site and never re-stamped. Remote versions are applied whole
//!   ([`Store::merge`]) or not at all, and the set of known versions is persisted in the
//!   same transaction as the data.
//! - Push: [`Store::subscribe_local`] yields each new local version, cut into [`Chunk`]s for
//!   peers; [`Store::receive_chunk`] buffers or applies them.
//! - Pull (anti-entropy): [`Store::serve_sync`] answers a [`SyncReq`] with the *surviving*
//!   cells of every version the requester lacks, from one read snapshot, and `Cleared`
//!   ranges for versions with nothing left; catch-up costs the data, not the history.
//! - [`Store::subscribe`] and [`Store::watch_table`] announce visible changes after commit.
//! - [`BlobStore`] keeps file contents by blake3 hash, written atomically.
//! - [`cluster`] is Makiatto's own schema; the engine does not depend on it.
//!
//! The full design, with the reasons behind each choice, is in the repository's
//! `docs/replication.md`.
//!
//! # Example
//! ```
//! use makiatto_store::{Migration, Options, Replicate, Schema, Store, TableClass};
//!
//! const SCHEMA: Schema = Schema { migrations: &[Migration {
//!     version: 1,
//!     sql: "CREATE TABLE kv (k TEXT PRIMARY KEY NOT NULL, v TEXT) STRICT;",
//!     replicate: &[Replicate { table: "kv", class: TableClass::Durable }],
//! }] };
//!
//! # fn main() -> makiatto_store::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let a = Store::open(dir.path().join("a.db"), &SCHEMA, Options::default())?;
//! let b = Store::open(dir.path().join("b.db"), &SCHEMA, Options::default())?;
//! a.write(|tx| Ok(tx.execute("INSERT INTO kv VALUES ('greeting', 'hello')", [])?))?;
//! b.write(|tx| Ok(tx.execute("INSERT INTO kv VALUES ('other', 'world')", [])?))?;
//! // One pull in each direction (over any transport: see `transport`).
//! b.apply_sync(a.serve_sync(&b.sync_request(8 << 20))?)?;
//! a.apply_sync(b.serve_sync(&a.sync_request(8 << 20))?)?;
//! assert_eq!(a.canonical_hash()?, b.canonical_hash()?);
//! # Ok(()) }
//! ```

pub mod blob;
pub mod cluster;
mod error;
mod events;
mod ids;
mod known;
mod pending;
pub mod schema;
mod store;
mod table;
pub mod transport;
mod value;
pub mod wire;
mod writer;

pub use blob::{BlobHash, BlobStore, GcStats, Partial};
pub use error::{Result, StoreError};
pub use events::{CommitEvent, Origin, RowChange, RowChangeKind};
pub use ids::{Clock, MAX_DRIFT_MS, SiteId, SystemClock};
pub use known::{Known, Ranges};
pub use schema::{Migration, Replicate, Schema, TableClass};
pub use store::{ChunkOutcome, MergeReport, Options, Store, SyncSession};
pub use table::SENTINEL;
pub use value::{Value, pack, unpack};
pub use wire::{Cell, Change, Chunk, Frame, Pending, SyncReq};
