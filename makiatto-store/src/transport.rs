//! Sync transports.
