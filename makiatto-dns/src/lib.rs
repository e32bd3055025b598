//! Makiatto's authoritative GeoDNS server.
//!
//! This crate will hold a standalone GeoDNS authority built on hickory-server: UDP, TCP,
//! DNS-over-TLS and DNS-over-QUIC listeners, a fast path for hot UDP queries, and the
//! `GeoLocator`, `ZoneSource` and `Selector` traits with their backends. See the README
//! and issue 3 for the plan; nothing is implemented yet.
