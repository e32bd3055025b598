//! Blob store.
