//! Makiatto's node-to-node mesh.
//!
//! This crate will hold the `Tunnel` trait (userspace WireGuard with boringtun, and a
//! `Direct` backend), mesh address allocation, SWIM membership with foca, and the
//! transport that runs `makiatto-store` replication and blob transfer between nodes.
//! Nothing is implemented yet.
