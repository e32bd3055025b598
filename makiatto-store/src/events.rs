//! Change notifications, emitted only after commit and only for visible changes.

use std::sync::Arc;

use crate::SiteId;

/// Where a committed change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A local [`crate::Store::write`].
    Local,
    /// A merged remote version.
    Remote(SiteId, u64),
}

/// What happened to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowChangeKind {
    /// The row was inserted or some of its columns changed (the names of the columns whose
    /// value changed; empty when only the row came into existence).
    Upsert(Vec<Arc<str>>),
    /// The row was deleted.
    Delete,
}

/// A change to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    /// Table name.
    pub table: Arc<str>,
    /// Packed primary key ([`crate::unpack`] gives the values).
    pub pk: Arc<[u8]>,
    /// What happened.
    pub kind: RowChangeKind,
}

/// One committed transaction's visible changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitEvent {
    /// Local or remote.
    pub origin: Origin,
    /// The rows that changed.
    pub changes: Vec<RowChange>,
}
