//! Makiatto's web server.
//!
//! This crate will hold the axum/rustls server for ports 80 and 443: host routing with
//! aliases, static files of the active deployment, SNI certificates, and the ACME manager.
//! Nothing is implemented yet.
