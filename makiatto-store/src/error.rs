//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in `makiatto-store`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file could not be opened or prepared.
    #[error("opening database {path}")]
    Open {
        /// The database path.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// A SQLite statement failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer version of the schema than this binary knows.
    #[error(
        "database schema version {found} is newer than this binary supports ({supported}); \
         upgrade makiatto before opening it"
    )]
    SchemaTooNew {
        /// The version recorded in the database.
        found: u32,
        /// The highest version this binary knows.
        supported: u32,
    },
    /// A table registered for replication breaks a rule of the replication model.
    #[error("table {table} cannot be replicated: {reason}")]
    InvalidTable {
        /// The table name.
        table: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// Another connection changed a replicated table (its columns, or the store's triggers
    /// on it) while the store was open. Writes fail until the store is opened again, which
    /// records what the change did.
    #[error(
        "table {table} was changed outside a migration while the store was open ({reason}); \
         reopen the store to reconcile it"
    )]
    SchemaChanged {
        /// The table.
        table: String,
        /// What changed.
        reason: String,
    },
    /// A frame or message from a peer could not be decoded or is not acceptable.
    #[error("malformed message from peer: {0}")]
    Malformed(String),
    /// A frame was larger than the configured limit.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Announced size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// A peer belongs to another cluster.
    #[error("peer is in cluster {theirs}, we are in cluster {ours}")]
    ClusterMismatch {
        /// Our cluster id.
        ours: String,
        /// The peer's cluster id.
        theirs: String,
    },
    /// A peer speaks an incompatible protocol version.
    #[error("peer speaks protocol {theirs}, we speak {ours}")]
    ProtocolMismatch {
        /// Our protocol version.
        ours: u8,
        /// The peer's protocol version.
        theirs: u8,
    },
    /// The peer is at its concurrent-session limit; try later.
    #[error("peer is busy")]
    Busy,
    /// The connection ended before the exchange completed.
    #[error("connection closed before the exchange completed")]
    Truncated,
    /// An I/O error on a socket or file.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A blob's content does not match the hash it was stored under.
    #[error("blob content hashes to {actual}, expected {expected}")]
    BlobMismatch {
        /// The hash the caller expected.
        expected: String,
        /// The hash of the bytes received.
        actual: String,
    },
    /// A blob exceeded the size the caller allowed.
    #[error("blob exceeds the limit of {limit} bytes")]
    BlobTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// A blob is not in the store.
    #[error("blob {0} not found")]
    BlobNotFound(String),
    /// A value read from the database does not have the expected shape.
    #[error("corrupt value in {table}.{column}: {reason}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// Column.
        column: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The store's writer is gone (the store is closing).
    #[error("store is closed")]
    Closed,
    /// A network operation did not finish in time.
    #[error("{op} timed out after {after_ms} ms")]
    Timeout {
        /// What timed out (`"connect"`, `"sync session"`, ...).
        op: &'static str,
        /// The limit that was exceeded, in milliseconds.
        after_ms: u64,
    },
    /// A peer cannot be reached: unknown, stopped, or across a network partition.
    #[error("peer {peer} is unreachable")]
    Unreachable {
        /// The peer, as its transport names it.
        peer: String,
    },
    /// A background task running store work panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// A string is not a valid blob hash (64 lowercase hexadecimal characters).
    #[error("invalid blob hash {0:?}: expected 64 lowercase hexadecimal characters")]
    InvalidHash(String),
}

/// Shorthand for results in this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
